"""The architecture's one hard rule: the service layer never imports textual."""

from __future__ import annotations

import subprocess
import sys

SERVICE_MODULES = [
    "kvtui.service",
    "kvtui.cli",
    "kvtui.doctor",
    "kvtui.prewarm",
    "kvtui.prewarm_cli",
    "kvtui.automatic",
    "kvtui.llama",
    "kvtui.store",
    "kvtui.slots",
    "kvtui.sillytavern",
    "kvtui.proxy.app",
    "kvtui.proxy.run",
    "kvtui.embedded.server",
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
