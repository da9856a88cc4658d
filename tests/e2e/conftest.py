"""Fixtures of the real-SillyTavern end-to-end test (``pytest -m e2e tests/e2e``).

The e2e needs SillyTavern 1.19 in the cache (``.ci/sillytavern.sh``), node, Debian's chromium and
the Python playwright package; without them its tests are skipped with the reason. It takes a few
minutes, so it runs only when asked for: ``-m e2e`` (or ``KVTUI_E2E=1``); a plain ``pytest``
skips it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.runner import Run, run_variant


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: drives a real SillyTavern in headless Chromium (see tests/e2e)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = "e2e" in (config.getoption("markexpr", "") or "") or os.environ.get("KVTUI_E2E") == "1"
    if asked:
        return
    skip = pytest.mark.skip(reason="the SillyTavern e2e runs with -m e2e (or KVTUI_E2E=1)")
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", params=["plain", "extension"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The session through kvtui, without ("plain") and with its companion extension."""
    variant = str(request.param)
    workdir = tmp_path_factory.mktemp(f"st-e2e-{variant}")
    yield run_variant(variant, workdir)
    shutil.rmtree(workdir / "profile", ignore_errors=True)


@pytest.fixture(scope="session")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The same session with SillyTavern pointed at llama-server alone (no kvtui)."""
    workdir = tmp_path_factory.mktemp("st-e2e-direct")
    yield run_variant("direct", workdir)
    shutil.rmtree(workdir / "profile", ignore_errors=True)
