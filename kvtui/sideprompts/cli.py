"""``kvtui sideprompt``: run a side prompt headless, and manage the templates.

``kvtui sideprompt "NAME" [X-Y] --chat CHAT [--yes] [--json]`` runs one template (without a
range: the messages since its checkpoint) and shows the reply; ``--yes`` (or no terminal with
``--yes``) accepts it into the chat's lorebook. ``kvtui sideprompt list|show|add|edit|duplicate|
enable|disable|delete|import|export|recreate-builtins …`` manages templates.
:func:`after_memory_hook` is the after-memory batch ``kvtui memory`` runs on a saved scene.
Registered with :func:`kvtui.cli.command`; ``kvtui.cli_parts`` imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kvtui.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, command, warn
from kvtui.memory.jobs import JobRunner
from kvtui.memory.library import LibraryError
from kvtui.memory.preview import PreviewState, TextPreview
from kvtui.memory.settings import MemorySettings
from kvtui.settings import Settings
from kvtui.sideprompts.service import FAILURES, SideOutcome, SidePromptService, SideRun
from kvtui.sideprompts.templates import LoreMode, SidePrompt, template_library

ACTIONS = (
    "list", "show", "add", "edit", "duplicate", "enable", "disable", "delete", "import",
    "export", "recreate-builtins",
)  # fmt: skip


def _on_off(value: str) -> bool:
    if value.lower() in ("on", "yes", "true", "1"):
        return True
    if value.lower() in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError("write on or off")


def _interval(value: str) -> int | None:
    if value.lower() in ("off", "0", "none"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of messages, or off") from None


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="+", metavar="NAME|ACTION",
                   help=f"a template name [X-Y], or one of: {', '.join(ACTIONS)}")  # fmt: skip
    p.add_argument("--chat", help="SillyTavern chat id (for a run)")
    p.add_argument("--yes", action="store_true", help="accept the reply without asking")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prompt", help="instruction text (add/edit)")
    p.add_argument("--file", type=Path, help="read the instruction text from this file")
    p.add_argument("--format", dest="response_format", help="response-format guidance")
    p.add_argument("--after-memory", type=_on_off, metavar="on|off")
    p.add_argument("--interval", type=_interval, metavar="N|off", default=argparse.SUPPRESS)
    p.add_argument("--manual", type=_on_off, metavar="on|off")
    p.add_argument("--previous", type=int, metavar="0-7", help="earlier memories as context")
    p.add_argument("--server-url", metavar="URL",
                   help='another llama-server for this template ("" clears it)')  # fmt: skip
    p.add_argument("--model", metavar="NAME", help='the model on that server ("" clears it)')
    p.add_argument("--mode", choices=[m.value for m in LoreMode], help="lorebook mode")
    p.add_argument("--position", type=int, help="World Info position (0-3, 5-7)")
    p.add_argument("--order", type=int, help="entry order (0-9999)")
    p.add_argument("--prevent-recursion", type=_on_off, metavar="on|off")
    p.add_argument("--delay-until-recursion", type=_on_off, metavar="on|off")
    p.add_argument("--rename", metavar="NEW", help="new name (edit)")
    p.add_argument("--output", "-o", type=Path, help="file to write (export)")


@command("sideprompt", "run a side-prompt tracker on a chat, or manage the templates", arguments)
def sideprompt_command(settings: Settings, args: argparse.Namespace) -> int:
    words: list[str] = args.words
    try:
        if words[0] in ACTIONS:
            return _manage(settings.state_dir, words[0], words[1:], args)
        return _run(settings, words, args)
    except ValidationError as err:
        first = err.errors()[0]
        warn(f"{'.'.join(str(p) for p in first['loc']) or 'template'}: {first['msg']}")
        return EXIT_FAIL
    except (LibraryError, OSError, ValueError) as err:
        warn(err)
        return EXIT_FAIL


def _changes(args: argparse.Namespace, base: SidePrompt | None) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    text = args.prompt or (args.file.read_text(encoding="utf-8") if args.file else None)
    if text is not None:
        changes["prompt"] = text.strip()
    if args.response_format is not None:
        changes["response_format"] = args.response_format
    if args.previous is not None:
        changes["previous_memories"] = args.previous
    if args.server_url is not None:
        changes["server_url"] = args.server_url
        if not args.server_url.strip():
            changes["model"] = None  # no other server: no model on it
    if args.model is not None:
        changes["model"] = args.model
    triggers = (base.triggers if base else SidePrompt(name="x", prompt="x").triggers).model_dump()
    for name in ("after_memory", "manual", "interval"):
        if getattr(args, name, None) is not None or (name == "interval" and "interval" in args):
            triggers[name] = getattr(args, name)
    changes["triggers"] = triggers
    lore = (base.lore if base else SidePrompt(name="x", prompt="x").lore).model_dump()
    for arg, field in (("mode", "mode"), ("position", "position"), ("order", "order_value"),
                       ("prevent_recursion", "prevent_recursion"),
                       ("delay_until_recursion", "delay_until_recursion")):  # fmt: skip
        if getattr(args, arg) is not None:
            lore[field] = getattr(args, arg)
    changes["lore"] = lore
    return changes


def _manage(state_dir: Path, action: str, rest: list[str], args: argparse.Namespace) -> int:
    library = template_library(state_dir)

    def need(n: int, what: str) -> str | None:
        if len(rest) < n:
            warn(f"give {what}: kvtui sideprompt {action} {what.upper()}")
            return None
        return rest[n - 1]

    if action == "list":
        items = library.all()
        if args.json:
            print(json.dumps([t.model_dump(mode="json") for t in items], indent=2))
            return EXIT_OK
        for t in items:
            on = [w for w, flag in (("after memory", t.triggers.after_memory),
                  (f"every {t.triggers.interval}", bool(t.triggers.interval)),
                  ("manual", t.triggers.manual)) if flag]  # fmt: skip
            state = "on " if t.enabled else "off"
            mark = " (built-in)" if t.builtin else ""
            where = (
                f" @ {t.server_url}" + (f" ({t.model})" if t.model else "") if t.server_url else ""
            )
            print(f"[{state}] {t.name}{mark}: {', '.join(on) or 'no triggers'}{where}")
        return EXIT_OK
    if action == "recreate-builtins":
        library.reset_builtins()
        print("The built-in side prompts are back as shipped; your own are unchanged.")
        return EXIT_OK
    if action == "import":
        path = need(1, "file")
        if path is None:
            return EXIT_USAGE
        added = library.import_json(Path(path).read_text(encoding="utf-8"))
        print(f"Imported {len(added)}: {', '.join(t.name for t in added) or 'none'}.")
        return EXIT_OK
    if action == "export":
        text = library.export(rest or None)
        if args.output:
            args.output.write_text(text + "\n", encoding="utf-8")
            print(f"Wrote {args.output}.")
        else:
            print(text)
        return EXIT_OK
    name = need(1, "name")
    if name is None:
        return EXIT_USAGE
    if action == "show":
        t = library.get(name)
        print(json.dumps(t.model_dump(mode="json"), indent=2) if args.json else t.prompt)
    elif action == "add":
        data = _changes(args, None)
        if "prompt" not in data:
            warn("give the instruction text: --prompt TEXT or --file FILE")
            return EXIT_USAGE
        print(f"Added the side prompt {library.add(SidePrompt(name=name, **data)).name!r}.")
    elif action == "edit":
        changes = _changes(args, library.get(name))
        if args.rename:
            changes["name"] = args.rename
        print(f"Changed the side prompt {library.update(name, **changes).name!r}.")
    elif action in ("enable", "disable"):
        t = library.update(name, enabled=action == "enable")
        print(f"{t.name!r} is {'enabled' if t.enabled else 'disabled'}.")
    elif action == "duplicate":
        print(f"Copied to {library.duplicate(name, rest[1] if len(rest) > 1 else None).name!r}.")
    elif action == "delete":
        print(f"Deleted the side prompt {library.delete(name).name!r}.")
    return EXIT_OK


def _run(settings: Settings, words: list[str], args: argparse.Namespace) -> int:
    if len(words) > 2:
        warn('quote a name with spaces: kvtui sideprompt "Plot points" 10-40 --chat CHAT')
        return EXIT_USAGE
    if not args.chat:
        warn('give the chat: kvtui sideprompt "NAME" [X-Y] --chat CHAT')
        return EXIT_USAGE
    if settings.st_dir is None:
        warn("side prompts read SillyTavern chats: set st_dir (or --st-dir)")
        return EXIT_FAIL
    ms = MemorySettings.from_settings(settings)
    lock = None
    if ms.memory_slot is None and ms.memory_server_url is None:
        from kvtui.statelock import StateLock

        lock = StateLock(settings.state_dir)
        if not lock.acquire("kvtui sideprompt"):
            warn(
                f"{lock.holder()} is routing characters on this server; run the side prompt "
                "from its dashboard, or reserve a slot for memory jobs (memory_slot)."
            )
            return EXIT_FAIL
    try:
        return asyncio.run(run_headless(settings, ms, words[0],
                                        words[1] if len(words) > 1 else None, args))  # fmt: skip
    except KeyboardInterrupt:
        warn("cancelled; nothing was saved")
        return 130
    finally:
        if lock is not None:
            lock.release()


async def run_headless(
    settings: Settings, ms: MemorySettings, name: str, range_text: str | None,
    args: argparse.Namespace,
) -> int:  # fmt: skip
    """One manual run with a real client; what ``kvtui sideprompt NAME [X-Y]`` does."""
    from kvtui.llama.client import LlamaClient

    assert settings.st_dir is not None
    client = LlamaClient(settings.server_url, api_key=settings.api_key, save_dir=settings.save_dir)
    async with client, JobRunner(client, ms) as runner:
        service = SidePromptService.from_settings(settings, runner)
        interactive = not args.yes and sys.stdin.isatty()

        async def decide(run: SideRun, preview: TextPreview) -> None:
            await _decide(service, run, preview, yes=args.yes, interactive=interactive)

        try:
            outcome = await service.run_manual(name, args.chat, range_text, decide)
        except FAILURES as err:
            warn(err)
            return EXIT_FAIL
    return _report(outcome, args)


async def _decide(
    service: SidePromptService, run: SideRun, preview: TextPreview, *, yes: bool,
    interactive: bool,
) -> None:  # fmt: skip
    while True:
        if preview.state is PreviewState.READY and yes:
            preview.accept()
            return
        if not interactive:
            if preview.state is PreviewState.READY:
                print(preview.text, file=sys.stderr)
            preview.cancel()
            return
        print(f"\n{preview.text or preview.error}\n", file=sys.stderr)
        choices = "[a]ccept [e]dit [r]etry [c]ancel" if preview.text else "[r]etry [c]ancel"
        answer = (await asyncio.to_thread(input, f"{choices}? ")).strip().lower()[:1]
        if answer == "a" and preview.state is PreviewState.READY:
            preview.accept()
            return
        if answer == "e":
            text = await asyncio.to_thread(input, "New text (one line; empty keeps it): ")
            if text.strip():
                preview.edit(text)
        elif answer == "r":
            preview.retry()
            await service.regenerate(run, preview)
        elif answer == "c":
            preview.cancel()
            return


def _report(outcome: SideOutcome, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(outcome.__dict__, indent=2, ensure_ascii=False))
    elif outcome.status == "saved":
        print(f"{outcome.message} {outcome.hint}")
    elif outcome.status == "cancelled":
        print("Nothing was saved" + ("" if args.yes else " (rerun with --yes to save)") + ".")
    else:
        warn(outcome.message)
    return EXIT_FAIL if outcome.status == "failed" else EXIT_OK


def after_memory_hook(
    settings: Settings, *, yes: bool
) -> Callable[[JobRunner, str, int, int], Awaitable[list[dict[str, Any]]]]:
    """What ``kvtui memory`` runs once a memory is saved: every enabled after-memory template on
    that scene, with the memory's job runner (so the same slot rules hold); one record per
    template, with the ``line`` the CLI prints. With ``--yes`` (or previews off) each reply is
    saved as it comes; at a terminal each one is shown to accept, edit, retry or cancel."""
    from kvtui.sideprompts.settings import SidePromptSettings

    previews = SidePromptSettings.from_settings(settings).sideprompt_previews
    interactive = previews and not yes and sys.stdin.isatty()

    async def hook(runner: JobRunner, chat_id: str, start: int, end: int) -> list[dict[str, Any]]:
        try:
            service = SidePromptService.from_settings(settings, runner)
        except FAILURES as err:
            return [{"template": "side prompts", "status": "failed", "message": str(err),
                     "line": f"✗ side prompts: {err}"}]  # fmt: skip
        asking = asyncio.Lock()  # a batch's previews one at a time

        async def decide(run: SideRun, preview: TextPreview) -> None:
            async with asking:
                print(f"\nSide prompt {run.template.name}:", file=sys.stderr)
                await _decide(service, run, preview, yes=False, interactive=True)

        outcomes = await service.run_after_memory(
            chat_id, start, end, decide if interactive else None
        )
        return [dict(o.__dict__, line=o.line) for o in outcomes]

    return hook
