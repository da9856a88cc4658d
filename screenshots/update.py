"""Regenerate the SVG snapshots of every screen and copy them here for the README.

Run from the repository root: ``.venv/bin/python screenshots/update.py``. The snapshots come from
``tests/test_tui_snapshots.py`` (fixed data, UTC, 120×40), so they are the same on every machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_tui_snapshots import SCREENSHOTS, SHOTS, SNAPSHOTS  # noqa: E402


def main() -> int:
    tests = [f"tests/test_tui_snapshots.py::{test}" for test in SHOTS]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--snapshot-update", *tests], cwd=ROOT
    )
    if result.returncode != 0:
        return result.returncode
    for test, shot in SHOTS.items():
        shutil.copyfile(SNAPSHOTS / f"{test}.svg", SCREENSHOTS / shot)
        print(f"screenshots/{shot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
