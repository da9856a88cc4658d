"""The fault suite's figures, asserted: runs after every other case in ``tests/faults/`` (files
run in name order) and prints the one summary line the terminal summary repeats at the end."""

from __future__ import annotations

import pytest

from tests.faults.conftest import TALLY


def test_zz_no_save_lost_no_slot_wiped_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    if TALLY.tried == 0:
        pytest.skip("no fault case ran in this session (run tests/faults/ as a whole)")
    with capsys.disabled():
        print(f"\n{TALLY.line()}")
    assert TALLY.saves_lost == 0, TALLY.line()
    assert TALLY.slots_wiped == 0, TALLY.line()
    assert TALLY.tracebacks == 0, TALLY.line()
    assert TALLY.survived == TALLY.tried, TALLY.line()
