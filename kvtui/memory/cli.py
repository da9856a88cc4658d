"""``kvtui memory``: make a scene memory headless, and manage memory presets.

``kvtui memory --chat CHAT [--range X-Y] [--preset NAME] [--previous N] [--yes] [--json]``
runs one memory job and shows the preview: accept, edit, retry or cancel at the terminal, or
``--yes`` to accept. Without ``--yes`` and without a terminal nothing is saved.
``kvtui memory presets list|show|add|edit|duplicate|delete|import|export|reset`` manages
presets. The lead wires it into ``kvtui.cli``: ``add_memory_parser(sub, common)`` and
``run_memory(args, settings, after_save)``; ``after_save`` (``kvtui.cli_parts`` passes the side
prompts' after-memory batch) runs on the saved scene with the same job runner, and each line it
returns is printed (``--json``: its records under ``"sideprompts"``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from kvtui.llama import LlamaError
from kvtui.llama.client import LlamaClient
from kvtui.memory.contract import MemoryReplyError
from kvtui.memory.jobs import JobError, JobProgress, JobRunner
from kvtui.memory.library import LibraryError
from kvtui.memory.lorebook import BookError
from kvtui.memory.preview import Preview, PreviewState
from kvtui.memory.prompt import Preset, RegexError, preset_library
from kvtui.memory.scene import SceneError
from kvtui.memory.settings import MemorySettings, memory_dir
from kvtui.memory.workflow import MemoryPlan, MemoryWorkflow

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

AfterSave = Callable[[JobRunner, str, int, int], Awaitable[list[dict[str, Any]]]]
"""Runs after a memory of chat ``chat_id``'s messages ``start``-``end`` is saved, with the
memory's job runner; returns one record per run, each with a ``line`` to print."""
_FAILURES = (
    SceneError,
    LibraryError,
    BookError,
    JobError,
    LlamaError,
    MemoryReplyError,
    RegexError,
    OSError,
)


def add_memory_parser(
    subparsers: Any, common: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.ArgumentParser:
    """Add ``memory`` (and ``memory presets …``) to ``kvtui``'s subcommands.

    ``common`` adds the global options to each new parser (``kvtui.cli`` passes its own).
    """
    text = "make a scene memory of a SillyTavern chat into its lorebook"
    p: argparse.ArgumentParser = subparsers.add_parser("memory", help=text, description=text)
    if common is not None:
        common(p)
    p.add_argument("--chat", help="SillyTavern chat id (group chat id or chat file name)")
    p.add_argument("--range", metavar="X-Y", help="message range (default: since the last memory)")
    p.add_argument("--preset", help="memory preset (default: Synopsis)")
    p.add_argument("--previous", type=int, metavar="N", help="earlier memories as context (0-7)")
    p.add_argument("--yes", action="store_true", help="accept the memory without asking")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-side-prompts", action="store_true",
                   help="do not run the after-memory side prompts on the saved scene")  # fmt: skip
    sub = p.add_subparsers(dest="memory_command", metavar="presets")
    presets = sub.add_parser("presets", help="manage memory presets")
    if common is not None:
        common(presets)
    actions = presets.add_subparsers(dest="preset_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        if common is not None:
            common(parser)
        return parser

    a = action("list", "list presets")
    a.add_argument("--json", action="store_true", help="print JSON")
    action("show", "print a preset's prompt").add_argument("name")
    a = action("add", "add a preset")
    a.add_argument("name")
    a.add_argument("--prompt", help="prompt text (default: read from --file or stdin)")
    a.add_argument("--file", type=Path, help="read the prompt from this file")
    a.add_argument("--description", default="")
    a = action("edit", "change a preset's prompt, description or name")
    a.add_argument("name")
    a.add_argument("--prompt")
    a.add_argument("--file", type=Path)
    a.add_argument("--description")
    a.add_argument("--rename", metavar="NEW")
    a = action("duplicate", "copy a preset")
    a.add_argument("name")
    a.add_argument("new_name", nargs="?")
    action("delete", "delete a preset").add_argument("name")
    action("import", "add presets from a JSON file (taken names are renamed)").add_argument(
        "file", type=Path
    )
    a = action("export", "write presets as JSON")
    a.add_argument("names", nargs="*", help="presets to export (default: all)")
    a.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    action("reset", "restore the built-in presets (your own stay)")
    return p


def run_memory(args: argparse.Namespace, settings: Any, after_save: AfterSave | None = None) -> int:
    """Run ``kvtui memory …`` with ``settings`` (a ``kvtui.settings.Settings``); ``after_save``
    runs once a memory is saved (not with ``--no-side-prompts``)."""
    try:
        ms = MemorySettings.from_settings(settings)
    except ValueError as err:
        return _fail(f"bad memory setting: {err}", EXIT_USAGE)
    if getattr(args, "memory_command", None) == "presets":
        try:
            return _presets(args, memory_dir(settings.state_dir))
        except (LibraryError, OSError) as err:
            return _fail(err)
    if not args.chat:
        return _fail("give the chat: kvtui memory --chat CHAT (see kvtui memory -h)", EXIT_USAGE)
    if settings.st_dir is None:
        return _fail("memories are made from SillyTavern chats: set st_dir (or --st-dir)")
    lock = None
    if ms.memory_slot is None and ms.memory_server_url is None:
        from kvtui.statelock import StateLock

        lock = StateLock(settings.state_dir)
        if not lock.acquire("kvtui memory"):
            return _fail(
                f"{lock.holder()} is routing characters on this server; make the memory from "
                "its Memory screen, or reserve a slot for memory jobs (memory_slot)."
            )
    try:
        if getattr(args, "no_side_prompts", False):
            after_save = None
        return asyncio.run(_make(args, settings, ms, after_save))
    except KeyboardInterrupt:
        print("kvtui: cancelled; nothing was saved", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()


def _fail(message: object, code: int = EXIT_FAIL) -> int:
    print(f"kvtui: {message}", file=sys.stderr)
    return code


async def _make(
    args: argparse.Namespace, settings: Any, ms: MemorySettings, after_save: AfterSave | None
) -> int:
    from kvtui.sillytavern import SillyTavernData

    client = LlamaClient(settings.server_url, api_key=settings.api_key, save_dir=settings.save_dir)
    async with client, JobRunner(client, ms) as runner:
        flow = MemoryWorkflow(SillyTavernData(settings.st_dir), settings.state_dir, ms, runner)
        try:
            plan = flow.plan(args.chat, args.range, args.preset, previous=args.previous)
            budget = await flow.estimate(plan)
            if budget.warning:
                print(f"kvtui: {budget.warning}", file=sys.stderr)
            if not budget.fits:
                return EXIT_FAIL
            if not args.json:
                print(_plan_text(plan, budget.tokens), file=sys.stderr)
            preview = await flow.generate(plan, None if args.json else _progress)
            if not await _decide(flow, plan, preview, args):
                return _report(args, plan, preview, None, budget.tokens)
            saved = await flow.save(plan, preview)
        except _FAILURES as err:
            return _fail(err)
        if after_save is None:
            return _report(args, plan, preview, saved, budget.tokens)
        if not args.json:  # the memory's line first: the side prompts take a while
            _report(args, plan, preview, saved, budget.tokens, after=True)
        records = await after_save(runner, plan.ref.chat_id, plan.scene.start, plan.scene.end)
        if args.json:
            return _report(args, plan, preview, saved, budget.tokens, sideprompts=records)
        for record in records:
            print(record["line"], flush=True)
        return EXIT_OK


def _plan_text(plan: MemoryPlan, tokens: int) -> str:
    source = {"kvtui": "after kvtui's last memory", "stmb": "after MemoryBooks' last memory"}
    where = source.get(plan.start_point.source, "from the start")
    return (
        f"Chat {plan.ref.chat_id}: messages {plan.scene.range_text} "
        f"({len(plan.scene.lines)} visible, default start {where}), preset {plan.preset.name}, "
        f"{len(plan.previous)} earlier memories, {tokens} tokens."
    )


def _progress(step: JobProgress) -> None:
    if step.stage != "generating" or not step.tokens:
        print(f"  {step.detail}…", file=sys.stderr)


async def _decide(
    flow: MemoryWorkflow, plan: MemoryPlan, preview: Preview, args: argparse.Namespace
) -> bool:
    """Drive the preview to accepted (True) or cancelled/failed (False)."""
    interactive = not args.yes and sys.stdin.isatty()
    while True:
        if preview.state is PreviewState.READY and args.yes:
            preview.accept()
            return True
        if not interactive:
            if preview.state is PreviewState.FAILED and preview.error is not None:
                raise preview.error
            return False
        _show(preview, sys.stderr)
        choices = "[a]ccept [e]dit [r]etry [c]ancel" if preview.memory else "[r]etry [c]ancel"
        answer = (await asyncio.to_thread(input, f"{choices}? ")).strip().lower()[:1]
        if answer == "a" and preview.memory is not None:
            preview.accept()
            return True
        if answer == "e" and preview.memory is not None:
            await asyncio.to_thread(_edit, preview)
        elif answer == "r":
            preview.retry()
            await flow.regenerate(plan, preview, _progress)
        elif answer == "c":
            preview.cancel()
            return False


def _show(preview: Preview, out: TextIO) -> None:
    if preview.memory is None:
        assert preview.error is not None
        print(f"\nThe reply is not a memory: {preview.error}", file=out)
        return
    m = preview.memory
    print(f"\nTitle: {m.title}\n\n{m.content}\n\nKeywords: {', '.join(m.keywords)}\n", file=out)


def _edit(preview: Preview) -> None:
    assert preview.memory is not None
    m = preview.memory
    title = input(f"Title [{m.title}]: ").strip() or None
    content = input("Memory text (one line; empty keeps it): ").strip() or None
    words = input(f"Keywords, comma-separated [{', '.join(m.keywords)}]: ").strip()
    try:
        preview.edit(title=title, content=content, keywords=words.split(",") if words else None)
    except MemoryReplyError as err:
        print(f"kvtui: {err}", file=sys.stderr)


def _report(
    args: argparse.Namespace, plan: MemoryPlan, preview: Preview, saved: Any, tokens: int,
    *, after: bool = False, sideprompts: list[dict[str, Any]] | None = None,
) -> int:  # fmt: skip
    if args.json:
        data: dict[str, Any] = {
            "chat": plan.ref.chat_id,
            "range": [plan.scene.start, plan.scene.end],
            "preset": plan.preset.name,
            "tokens": tokens,
            "memory": preview.memory.to_json() if preview.memory else None,
            "edited": preview.edited,
            "saved": saved is not None,
            "book": plan.book_name,
            "book_path": str(plan.book_path),
        }
        if saved is not None:
            data["entry"] = {"uid": saved.stored.uid, "number": saved.stored.number,
                             "title": saved.stored.title}  # fmt: skip
            data["hint"] = saved.hint
        if sideprompts is not None:
            data["sideprompts"] = sideprompts
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif saved is not None:
        print(f"Memory {saved.stored.title!r} saved. {saved.hint}", flush=True)
        if after:
            print("Running the after-memory side prompts on that scene…", flush=True)
    else:
        if not args.yes and preview.memory is not None and not sys.stdin.isatty():
            _show(preview, sys.stdout)
        print("Nothing was saved" + ("" if args.yes else " (rerun with --yes to save)") + ".")
    return EXIT_OK


# -- presets ----------------------------------------------------------------------------------


def _prompt_text(args: argparse.Namespace) -> str | None:
    if getattr(args, "prompt", None):
        return str(args.prompt)
    if getattr(args, "file", None):
        return Path(args.file).read_text(encoding="utf-8")
    return None


def _presets(args: argparse.Namespace, directory: Path) -> int:
    library = preset_library(directory)
    action = args.preset_action
    if action == "list":
        items = library.all()
        if getattr(args, "json", False):
            print(json.dumps([p.model_dump() for p in items], indent=2, ensure_ascii=False))
        for p in [] if getattr(args, "json", False) else items:
            mark = " (built-in)" if p.builtin else ""
            print(f"{p.name}{mark}: {p.description}")
    elif action == "show":
        print(library.get(args.name).prompt)
    elif action == "add":
        text = _prompt_text(args) or sys.stdin.read()
        library.add(Preset(name=args.name, prompt=text.strip(), description=args.description))
        print(f"Added the preset {args.name!r}.")
    elif action == "edit":
        changes: dict[str, Any] = {}
        text = _prompt_text(args)
        if text is not None:
            changes["prompt"] = text.strip()
        if args.description is not None:
            changes["description"] = args.description
        if args.rename:
            changes["name"] = args.rename
        if not changes:
            return _fail("nothing to change: give --prompt, --file, --description or --rename")
        print(f"Changed the preset {library.update(args.name, **changes).name!r}.")
    elif action == "duplicate":
        print(f"Copied to {library.duplicate(args.name, args.new_name).name!r}.")
    elif action == "delete":
        print(f"Deleted the preset {library.delete(args.name).name!r}.")
    elif action == "import":
        added = library.import_json(Path(args.file).read_text(encoding="utf-8"))
        print(f"Imported {len(added)}: {', '.join(p.name for p in added) or 'none'}.")
    elif action == "export":
        text = library.export(args.names or None)
        if args.output:
            args.output.write_text(text + "\n", encoding="utf-8")
            print(f"Wrote {args.output}.")
        else:
            print(text)
    elif action == "reset":
        library.reset_builtins()
        print("The built-in presets are back as shipped; your own presets are unchanged.")
    return EXIT_OK
