"""The architecture's hard rules: the service layer never imports textual, and the rest of kvtui
reaches the service through its facade."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kvtui

SERVICE_MODULES = [
    "kvtui.service",
    "kvtui.cli",
    "kvtui.doctor",
    "kvtui.prewarm",
    "kvtui.prewarm_cli",
    "kvtui.llama",
    "kvtui.store",
    "kvtui.slots",
    "kvtui.sillytavern",
    "kvtui.proxy.app",
    "kvtui.proxy.routing",
    "kvtui.proxy.run",
    "kvtui.embedded.server",
    "kvtui.memory.cli",
    "kvtui.recall.hook",
    "kvtui.warmth.cli",
    "kvtui.sideprompts.cli",
    "kvtui.proxy.extras",
]


def test_service_layer_does_not_import_textual() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in SERVICE_MODULES)
        + "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


KVTUI = Path(kvtui.__file__).parent
FACADE_USERS = ["proxy", "prewarm.py", "prewarm_cli.py", "cli.py", "doctor.py"]
INSIDE = re.compile(r"\bservice\.(book|lock|persist|store|client|props|_\w+)\b|\._core\b")


def _sources(*names: str) -> list[Path]:
    found: list[Path] = []
    for name in names:
        path = KVTUI / name
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def test_the_proxy_and_prewarm_talk_to_the_service_facade_only() -> None:
    """The facade is the only way in: no reaching for the service's book, lock, client…"""
    offenders = [
        f"{path.relative_to(KVTUI)}:{n}: {line.strip()}"
        for path in _sources(*FACADE_USERS)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if INSIDE.search(line)
    ]
    assert offenders == []


def test_the_service_alone_builds_sillytavern_data_and_the_prompt_recorder() -> None:
    """One owner each: the service keeps them (and their caches) for everyone else."""
    built = re.compile(r"\b(SillyTavernData|PromptRecorder)\(")
    offenders = [
        f"{path.relative_to(KVTUI)}:{n}"
        for path in _sources(*FACADE_USERS)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if built.search(line)
    ]
    assert offenders == []


HIDE_POSIX_ONLY = """
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {"fcntl", "termios", "tty", "pty", "resource", "grp", "pwd"}
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED:
            raise ImportError(f"No module named {name!r} (hidden: Windows has none)")
        return None
for name in BLOCKED:
    sys.modules.pop(name, None)
sys.meta_path.insert(0, Hide())
import kvtui
names, failed = [], []
for info in pkgutil.walk_packages(kvtui.__path__, "kvtui."):
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as err:
        failed.append(f"{info.name}: {err!r}")
print(len(names))
print("\\n".join(failed))
"""


def test_every_module_imports_without_posix_only_modules() -> None:
    """Windows has no fcntl/termios/pty: every kvtui module (the dashboard too) still imports."""
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", HIDE_POSIX_ONLY],
        capture_output=True,
        text=True,
        check=True,
    )
    count, *failed = out.stdout.strip().splitlines()
    assert int(count) > 50 and failed == []
