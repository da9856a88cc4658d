"""The house rules that keep kvtui's rooms small: no module in ``kvtui/`` over 400 lines."""

from __future__ import annotations

from pathlib import Path

import kvtui

KVTUI = Path(kvtui.__file__).parent
MAX_LINES = 400

KNOWN_EXCEPTIONS: frozenset[str] = frozenset()
"""Modules allowed over the limit for now (relative to ``kvtui/``), each split by its owner."""


def oversized(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Every ``*.py`` under ``root`` with more than ``limit`` lines, by path relative to it."""
    found: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found[path.relative_to(root).as_posix()] = lines
    return found


def test_no_module_in_kvtui_is_over_400_lines() -> None:
    offenders = {name: n for name, n in oversized(KVTUI).items() if name not in KNOWN_EXCEPTIONS}
    listing = ", ".join(f"kvtui/{name} ({n} lines)" for name, n in sorted(offenders.items()))
    assert not offenders, f"over {MAX_LINES} lines, split along a seam: {listing}"


def test_known_exceptions_are_still_over_the_limit() -> None:
    """An exception that is no longer needed is removed, so the list cannot hide a regrowth."""
    over = oversized(KVTUI)
    stale = sorted(name for name in KNOWN_EXCEPTIONS if name not in over)
    assert not stale, f"no longer over {MAX_LINES} lines, drop from KNOWN_EXCEPTIONS: {stale}"


def test_the_check_finds_a_long_module(tmp_path: Path) -> None:
    """The control: a 401-line module is reported with its count, a 400-line one is not."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 401, encoding="utf-8")
    (tmp_path / "fits.py").write_text("x = 1\n" * 400, encoding="utf-8")
    assert oversized(tmp_path) == {"pkg/long.py": 401}


BLOCK_PLAYWRIGHT = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "playwright" or name.startswith("playwright."):
            raise ImportError("playwright is not installed here")
sys.meta_path.insert(0, Block())
import pytest
sys.exit(pytest.main(["-q", "--collect-only", "-p", "no:cacheprovider", "tests/e2e"]))
"""


def test_the_suite_collects_without_playwright() -> None:
    """CI runs ``pytest -q`` before it installs the browser tests' playwright."""
    import subprocess
    import sys

    root = KVTUI.parent
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_PLAYWRIGHT], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
