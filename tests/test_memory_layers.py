"""The memory package is service layer: importing all of it never imports textual."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import kvtui.memory


def test_memory_package_does_not_import_textual() -> None:
    modules = [f"kvtui.memory.{m.name}" for m in pkgutil.iter_modules(kvtui.memory.__path__)]
    assert {"kvtui.memory.jobs", "kvtui.memory.cli", "kvtui.memory.workflow"} <= set(modules)
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'textual')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
