"""The ``kvtui`` command: the dashboard by default, and headless commands for scripts.

Every command accepts the same global options (``--server``, ``--api-key``, ``--save-dir``,
``--st-dir``, ``--config``), before or after the command name. Data commands take ``--json``.
Exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kvtui.llama import LlamaError
from kvtui.settings import ConfigError, Settings, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # In subcommands the defaults are SUPPRESS, so a global option given before the command
    # name is not overwritten by the subparser's default.
    d: Any = None if defaults else argparse.SUPPRESS
    group = parser.add_argument_group("global options")
    group.add_argument("--server", metavar="URL", default=d, help="llama-server URL")
    group.add_argument("--api-key", metavar="KEY", default=d, help="llama-server API key")
    group.add_argument(
        "--save-dir", metavar="DIR", type=Path, default=d, help="the server's --slot-save-path"
    )
    group.add_argument(
        "--st-dir", metavar="DIR", type=Path, default=d, help="SillyTavern data/<user> directory"
    )
    group.add_argument("--config", metavar="FILE", type=Path, default=d, help="config file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvtui",
        description="Keep every roleplay character's llama.cpp KV cache warm.",
    )
    _global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(p, defaults=False)
        return p

    command("ui", "open the dashboard (the default)")
    p = command("slots", "show the server's slots and who is in them")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("ls", "list save files, grouped by chat and character")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--chat", help="only this chat")
    p.add_argument("--character", help="only this character")
    p = command("save", "save a slot's cache to a new file")
    p.add_argument("slot", type=int)
    p.add_argument("--chat", help="chat name (defaults to the slot's chat)")
    p.add_argument("--character", help="character name (defaults to the slot's character)")
    p.add_argument("--tag", help="tag: a tagged save is never rotated away")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("load", "restore a save file into a slot")
    p.add_argument("file", help="save file name (in the save directory)")
    p.add_argument("--slot", type=int, help="slot (default: the character's slot, else a free one)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("erase", "erase a slot's cache on the server (files stay)")
    p.add_argument("slot", type=int)
    p = command("doctor", "check the server's set-up and say how to fix it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command("demo", "run the dashboard on an embedded server with sample data")
    p.add_argument("--slots", type=int, default=4, help="slots of the embedded server")
    p = command("proxy", "run the routing proxy and autosave without the dashboard")
    p.add_argument("--listen", metavar="HOST:PORT", help="listen address (default 127.0.0.1:8081)")
    p = command("prewarm", "warm characters' caches before a conversation")
    p.add_argument("--chat", required=True, help="SillyTavern chat id (group chat id or file name)")
    p.add_argument("--character", action="append", default=[], help="a character (repeatable)")
    p.add_argument("--all", action="store_true", help="every member, muted ones included")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(
        getattr(args, "config", None),
        server_url=getattr(args, "server", None),
        api_key=getattr(args, "api_key", None),
        save_dir=getattr(args, "save_dir", None),
        st_dir=getattr(args, "st_dir", None),
        proxy_listen=getattr(args, "listen", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ConfigError, ValidationError, ValueError) as err:
        print(f"kvtui: bad setting: {err}", file=sys.stderr)
        return EXIT_USAGE
    command = args.command or "ui"
    if command == "ui":
        from kvtui.tui.app import run_dashboard

        return run_dashboard(settings, config_path=getattr(args, "config", None))
    if command == "demo":
        from kvtui.demo import run_demo

        return run_demo(settings, n_slots=args.slots)
    handler = _HANDLERS[command]
    lock = None
    if command in _CHANGES_SLOTS:
        from kvtui.statelock import StateLock

        lock = StateLock(settings.state_dir)
        if not lock.acquire(f"kvtui {command}"):
            print(
                f"kvtui: {lock.holder()} is running with the same state directory and keeps "
                f"the slot book; run this from there (or stop it first). "
                f"State directory: {settings.state_dir}",
                file=sys.stderr,
            )
            return EXIT_FAIL
    try:
        return asyncio.run(handler(settings, args))
    except KeyboardInterrupt:
        print("kvtui: interrupted", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()


Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def _fail(message: object) -> int:
    print(f"kvtui: {message}", file=sys.stderr)
    return EXIT_FAIL


def _dump(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


async def _slots(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import ConnectionState, KvService

    async with KvService(settings) as service:
        snap = await service.refresh()
        if snap.state is not ConnectionState.CONNECTED:
            return _fail(snap.error or snap.state)
        if args.json:
            _dump(
                {
                    "server": snap.server_url,
                    "model": snap.model,
                    "build_info": snap.build_info,
                    "slots": [row.__dict__ for row in snap.rows],
                }
            )
            return EXIT_OK
        print(f"{snap.server_url}  model {snap.model}  build {snap.build_info}")
        print(f"{'slot':>4}  {'state':<10} {'tokens':>7}  {'usage':>5}  character (chat)")
        for row in snap.rows:
            state = "processing" if row.processing else "idle"
            tokens = "-" if row.tokens is None else str(row.tokens)
            who = f"{row.character} ({row.chat})" if row.character else "-"
            print(f"{row.slot:>4}  {state:<10} {tokens:>7}  {row.usage:>5}  {who}")
    return EXIT_OK


async def _ls(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import KvService, ServiceError
    from kvtui.store import group_saves
    from kvtui.store.names import normalize

    async with KvService(settings) as service:
        try:
            store = service.require_store()
        except ServiceError as err:
            return _fail(err)
        store.rescan()
        groups = group_saves(store.entries(), current_chat=None)

    def wanted(shown: str, key: str, query: str | None) -> bool:
        return query is None or query == shown or normalize(query) == key

    data: list[dict[str, Any]] = []
    for g in groups:
        if not wanted(g.chat, g.chat_key, args.chat):
            continue
        characters = [
            {
                "character": c.character,
                "saves": [
                    {
                        "file": e.filename,
                        "time": e.timestamp.isoformat(),
                        "tag": e.tag,
                        "tokens": e.n_saved,
                        "bytes": e.size,
                    }
                    for e in c.saves
                ],
            }
            for c in g.characters
            if wanted(c.character, c.character_key, args.character)
        ]
        if characters:
            data.append({"chat": g.chat, "characters": characters})
    if args.json:
        _dump(data)
        return EXIT_OK
    if not data:
        print("No saves.")
    for chat in data:
        print(chat["chat"])
        for c in chat["characters"]:
            print(f"  {c['character']}")
            for e in c["saves"]:
                tag = f"  [{e['tag']}]" if e["tag"] else ""
                tokens = e["tokens"] if e["tokens"] is not None else "?"
                local = datetime.fromisoformat(e["time"]).astimezone()
                when = f"{local:%Y-%m-%d %H:%M:%S}"
                print(f"    {when}  {tokens:>6} tok  {e['bytes']:>10} B  {e['file']}{tag}")
    return EXIT_OK


async def _save(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import KvService, ServiceError

    async with KvService(settings) as service:
        try:
            outcome = await service.save_slot(
                args.slot, chat=args.chat, character=args.character, tag=args.tag
            )
        except (ServiceError, LlamaError) as err:
            return _fail(err)
    if args.json:
        _dump(outcome.__dict__)
    else:
        print(f"Saved slot {outcome.slot}: {outcome.n_saved} tokens -> {outcome.filename}")
        for name in outcome.rotated:
            print(f"Rotated away {name}")
    return EXIT_OK


async def _load(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import KvService, ServiceError
    from kvtui.store import InvalidSaveName

    async with KvService(settings) as service:
        try:
            outcome = await service.load(args.file, args.slot)
        except (ServiceError, LlamaError, InvalidSaveName) as err:
            return _fail(err)
    if args.json:
        _dump(outcome.__dict__)
    else:
        print(
            f"Loaded {outcome.character} ({outcome.chat}) into slot {outcome.slot}: "
            f"{outcome.n_restored} tokens."
        )
    return EXIT_OK


async def _erase(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import KvService, ServiceError

    async with KvService(settings) as service:
        try:
            n = await service.erase(args.slot)
        except (ServiceError, LlamaError) as err:
            return _fail(err)
    print(f"Erased slot {args.slot}: {n} tokens.")
    return EXIT_OK


async def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.doctor import Status, run_doctor, worst

    checks = await run_doctor(settings)
    if args.json:
        _dump([c.as_dict() for c in checks])
    else:
        marks = {Status.OK: "ok  ", Status.WARN: "warn", Status.FAIL: "FAIL", Status.SKIP: "skip"}
        for c in checks:
            print(f"[{marks[c.status]}] {c.name}: {c.detail}")
            if c.fix and c.status is not Status.OK:
                print(f"       fix: {c.fix}")
    return EXIT_FAIL if worst(checks) is Status.FAIL else EXIT_OK


async def _proxy(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.proxy.run import run_proxy_forever

    return await run_proxy_forever(settings)


async def _prewarm(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.prewarm_cli import run_prewarm_cli

    return await run_prewarm_cli(settings, args)


# Commands that change slots and the slot book: one kvtui at a time per state directory.
_CHANGES_SLOTS = frozenset({"save", "load", "erase", "proxy", "prewarm"})

_HANDLERS: dict[str, Handler] = {
    "slots": _slots,
    "ls": _ls,
    "save": _save,
    "load": _load,
    "erase": _erase,
    "doctor": _doctor,
    "proxy": _proxy,
    "prewarm": _prewarm,
}


if __name__ == "__main__":
    sys.exit(main())
