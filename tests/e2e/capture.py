"""Capture real SillyTavern 1.19 request bodies and state-file changes as test fixtures.

``python -m tests.e2e.capture [--extension] [--out DIR]`` runs the scripted session of the e2e
test once against a real SillyTavern (no kvtui proxy: the tap forwards straight to llama-server,
so what is recorded is exactly what SillyTavern's server sends) and writes, under
``tests/fixtures/sillytavern-1.19/``:

- ``<variant>/NN-<scenario>-<character>.json``: one generation request each (path, body, the
  ``X-KVTUI-*`` headers, the reply's final ``timings``) with what it is (``expected``);
- ``<variant>/manifest.json``: the list of those, the other calls SillyTavern made (tokenize,
  models, props; counted) and, without the extension, ``opens.json``: for each chat open, which
  state files changed and after how many seconds.

This is a measurement tool, not a test: the open probe watches the files for a fixed window.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from kvtui.sillytavern import sample
from kvtui.sillytavern.cards import read_card_json
from tests.e2e.page import StPage, launch
from tests.e2e.session import run_session
from tests.e2e.stack import Stack, chromium_path, missing_requirements

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sillytavern-1.19"
OPEN_WINDOW = 6.0  # seconds each open is watched for state-file changes


def _state(user_dir: Path) -> dict[str, Any]:
    """The values that might say which chat is open, and the mtimes of the files holding them."""
    settings = json.loads((user_dir / "settings.json").read_text(encoding="utf-8"))
    card = read_card_json(user_dir / "characters" / "Seraphina.png")
    group = json.loads(
        (user_dir / "groups" / f"{sample.GROUP_ID}.json").read_text(encoding="utf-8")
    )
    files = [user_dir / "settings.json", user_dir / "characters" / "Seraphina.png",
             user_dir / "groups" / f"{sample.GROUP_ID}.json"]  # fmt: skip
    files += sorted((user_dir / "chats").rglob("*.jsonl"))
    files += sorted((user_dir / "group chats").glob("*.jsonl"))
    return {
        "settings.active_character": settings.get("active_character"),
        "settings.active_group": settings.get("active_group"),
        "card Seraphina.png chat": card.get("chat"),
        "group chat_id": group.get("chat_id"),
        "mtimes": {str(p.relative_to(user_dir)): p.stat().st_mtime_ns for p in files},
    }


class OpenProbe:
    """After each open: which of the state values and files changed, and when."""

    def __init__(self, user_dir: Path) -> None:
        self.user_dir = user_dir
        self.results: list[dict[str, Any]] = []
        self.before = _state(user_dir)

    def __call__(self, what: str, avatar: str | None, group: str | None, chat: str) -> None:
        opened = time.monotonic()
        before = self.before
        first_change: dict[str, float] = {}
        values: dict[str, Any] = {}
        while time.monotonic() - opened < OPEN_WINDOW:
            now = _state(self.user_dir)
            at = round(time.monotonic() - opened, 2)
            for key, value in now.items():
                if key == "mtimes":
                    for name, mtime in value.items():
                        if before["mtimes"].get(name) != mtime:
                            first_change.setdefault(f"file {name}", at)
                elif value != before[key]:
                    first_change.setdefault(key, at)
            values = {k: v for k, v in now.items() if k != "mtimes"}
            time.sleep(0.05)
        self.results.append({
            "opened": what, "avatar": avatar, "group": group, "chat": chat,
            "values_before": {k: v for k, v in before.items() if k != "mtimes"},
            "values_after": values,
            "changed_after_s": first_change,
        })  # fmt: skip
        self.before = _state(self.user_dir)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def capture(out: Path, *, extension: bool) -> None:
    reason = missing_requirements()
    if reason:
        raise SystemExit(reason)
    chromium = chromium_path()
    assert chromium is not None
    variant = "with-extension" if extension else "plain"
    target = out / variant
    work = Path(tempfile.mkdtemp(prefix="kvtui-capture-"))
    try:
        stack = Stack(work, with_proxy=False)
        if extension:
            stack.install_extension = True
        with stack:
            probe = OpenProbe(stack.user_dir)
            with sync_playwright() as pw:
                _, page = launch(pw, chromium, str(work / "profile"))
                st = StPage(page, stack)
                st.open()
                expected = run_session(st, on_open=probe if not extension else _ignore)
                page.context.close()
            assert stack.tap is not None
            records = stack.tap.snapshot()
            events = [r.body for r in records if r.path == "/kvtui/v1/event"]
        gens = [r for r in records if r.is_generation]
        if len(gens) != len(expected):
            raise SystemExit(f"{len(gens)} generation requests for {len(expected)} expected")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        manifest: list[dict[str, Any]] = []
        for n, (rec, exp) in enumerate(zip(gens, expected, strict=True)):
            name = f"{n:02d}-{_slug(exp.scenario)}-{_slug(exp.character)}.json"
            data = {"expected": exp.as_json(), **rec.as_json()}
            (target / name).write_text(
                json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            manifest.append({"file": name, **exp.as_json(), "path": rec.path})
        others = Counter(f"{r.method} {r.path}" for r in records if not r.is_generation)
        (target / "manifest.json").write_text(
            json.dumps({
                "sillytavern": "1.19.0", "variant": variant,
                "generations": manifest, "other_requests": dict(sorted(others.items())),
            }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8",
        )  # fmt: skip
        if extension:
            (target / "events.json").write_text(
                json.dumps(events, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        else:
            (target / "opens.json").write_text(
                json.dumps(probe.results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        print(f"wrote {len(manifest)} requests to {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ignore(what: str, avatar: str | None, group: str | None, chat: str) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extension", action="store_true", help="with kvtui's ST extension")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args()
    capture(args.out, extension=args.extension)


if __name__ == "__main__":
    main()
