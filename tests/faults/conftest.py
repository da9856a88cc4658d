"""The fault suite's tally and shared fixtures: a llama-server of its own (the cases kill it),
and the figures every case adds to, printed once at the end of the run.

Each case runs inside :func:`case` (``async with fault_case("what") as c``): an exception that is
not an assertion counts as a traceback, the case reports the saves it lost and the slots it found
wiped by mistake, and ``tests/faults/test_zz_figures.py`` asserts the zeros.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer

SLOT_CTX = 8192
"""Tokens per slot of the fault server: big enough that a save or restore takes a moment."""


@dataclass
class Tally:
    tried: int = 0
    survived: int = 0
    saves_lost: int = 0
    slots_wiped: int = 0
    tracebacks: int = 0
    kills: int = 0
    kills_mid_operation: int = 0
    """Kills that caught the operation under way (the rest landed just after it ended)."""
    not_tried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (
            f"kvtui fault suite: {self.tried} cases tried, {self.survived} survived, "
            f"{self.saves_lost} saves lost, {self.slots_wiped} slots wiped by mistake, "
            f"{self.tracebacks} tracebacks"
        )
        if self.kills:
            text += f" ({self.kills_mid_operation} of {self.kills} kills landed mid-operation)"
        if self.failed:
            text += f"; failed: {', '.join(self.failed)}"
        if self.not_tried:
            text += f"; not tried here: {', '.join(self.not_tried)}"
        return text


TALLY = Tally()


@dataclass
class Case:
    """One fault case's findings."""

    name: str
    lost: int = 0
    wiped: int = 0
    tracebacks: int = 0

    def killed(self, mid_operation: bool) -> None:
        """A process was killed; ``mid_operation``: the operation was still under way."""
        TALLY.kills += 1
        TALLY.kills_mid_operation += mid_operation


@asynccontextmanager
async def fault_case(name: str) -> AsyncIterator[Case]:
    """Count one case: it survives when its body ends with nothing lost, wiped or crashed."""
    found = Case(name)
    TALLY.tried += 1
    try:
        yield found
    except (AssertionError, pytest.fail.Exception, pytest.skip.Exception):
        TALLY.failed.append(name)
        raise
    except Exception:
        TALLY.tracebacks += 1
        TALLY.failed.append(name)
        raise
    finally:
        TALLY.saves_lost += found.lost
        TALLY.slots_wiped += found.wiped
        TALLY.tracebacks += found.tracebacks
    assert found.lost == 0, f"{name}: {found.lost} save(s) lost"
    assert found.wiped == 0, f"{name}: {found.wiped} slot(s) wiped by mistake"
    assert found.tracebacks == 0, f"{name}: a traceback reached the user"
    TALLY.survived += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.tried or TALLY.not_tried:
        terminalreporter.write_sep("-", "fault figures")
        terminalreporter.write_line(TALLY.line())


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user config file or KVTUI_* variable leaks into the cases' settings."""
    monkeypatch.setenv("KVTUI_CONFIG", str(tmp_path / "config.toml"))
    for name in list(os.environ):
        if name.startswith("KVTUI_") and name not in ("KVTUI_CONFIG", "KVTUI_LLAMA_SERVER"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def fault_llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A llama-server the cases may kill: 2 slots of ``SLOT_CTX`` tokens, its own saves."""
    save_dir = tmp_path_factory.mktemp("fault-suite-saves")
    server = EmbeddedServer(save_dir=save_dir, n_slots=2, n_ctx=2 * SLOT_CTX)
    server.start()
    yield server
    server.stop()
