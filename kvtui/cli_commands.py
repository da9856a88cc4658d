"""The built-in ``kvtui`` subcommands, registered with :func:`kvtui.cli.command`.

Each handler gets the loaded settings and the parsed arguments and returns an exit code; async
handlers are run by ``kvtui.cli.main``. A new subcommand is one more decorated function (here or
in its own module imported by ``kvtui.cli.build_parser``).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from kvtui.chatref import ChatRefError, KnownChat, resolve_chat
from kvtui.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, command, warn
from kvtui.llama import LlamaError
from kvtui.service import KvService
from kvtui.settings import Settings, config_problems
from kvtui.store import StoreError


def _fail(message: object) -> int:
    warn(message)
    return EXIT_FAIL


async def _book_kept(service: KvService, done: str) -> bool:
    """Wait for the slot book to reach the disk; say so in one line when it could not.

    The slot's change happened on the server, but a book kvtui cannot write forgets it (and a
    later kvtui would act on the old one), so the command must not look like a success."""
    error = await service.flush()
    if error is None:
        return True
    path = service.settings.book_path
    warn(
        f"{done}, but the slot book could not be written to {path} "
        f"({error.strerror or error}): make {path.parent} writable, or choose another state "
        "directory with --state-dir DIR, then run the command again"
    )
    return False


def _dump(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _listen_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help="the proxy's listen address (default 127.0.0.1:8081)",
    )


CHAT_HELP = "SillyTavern chat id, the group's title, or the chat file name"


# -- chats by title ---------------------------------------------------------------------------


def known_chats(service: KvService) -> list[KnownChat]:
    """Chats in SillyTavern's data directory (with titles), then those only in saves or slots."""
    from kvtui.sillytavern import SillyTavernData

    chats: list[KnownChat] = []
    st_dir = service.settings.st_dir
    if st_dir is not None and st_dir.is_dir():
        for ref in SillyTavernData(st_dir).chats():
            chats.append(KnownChat(ref.chat_id, ref.display_name, ref.path.name))
    if service.store is not None:
        service.store.rescan()
        chats += [KnownChat(entry.chat) for entry in service.store.entries()]
    chats += [KnownChat(row.chat) for row in service.book.snapshot() if row.chat]
    return chats


def chat_from_args(service: KvService, typed: str | None, *, new_ok: bool = False) -> str | None:
    """``--chat`` as a chat id. ``new_ok``: without a SillyTavern data directory, a name kvtui
    has never seen is taken as the name of a new chat (``save --chat``).

    Raises:
        ChatRefError: unknown or ambiguous (the message lists the candidates).
    """
    if typed is None:
        return None
    chats = known_chats(service)
    try:
        return resolve_chat(typed, chats)
    except ChatRefError as err:
        ambiguous = len(err.candidates) > 1 and "names" in str(err)
        if new_ok and not ambiguous and service.settings.st_dir is None:
            return typed.strip()
        raise


# -- the dashboard and the demo --------------------------------------------------------------


def _ui_args(p: argparse.ArgumentParser) -> None:
    _listen_flag(p)


@command("ui", "open the dashboard (the default)", _ui_args, headless=False)
def _ui(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.tui.app import run_dashboard

    config = getattr(args, "config", None)
    return run_dashboard(settings, config_path=config, warnings=config_problems(config))


def _demo_args(p: argparse.ArgumentParser) -> None:
    from kvtui.demo import DEFAULT_SLOTS

    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="slots of the embedded server")
    p.add_argument("--keep", action="store_true", help="keep the demo's files when it quits")
    _listen_flag(p)


@command(
    "demo", "run the dashboard on an embedded server with sample data", _demo_args, headless=False
)
def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.demo import run_demo

    return run_demo(settings, n_slots=args.slots, keep=args.keep)


# -- reading ------------------------------------------------------------------------------------


@command("slots", "show the server's slots and who is in them", _json_flag)
async def _slots(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import ConnectionState

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


def _ls_args(p: argparse.ArgumentParser) -> None:
    _json_flag(p)
    p.add_argument("--chat", help=f"only this chat ({CHAT_HELP})")
    p.add_argument("--character", help="only this character")


@command("ls", "list save files, grouped by chat and character", _ls_args)
async def _ls(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import ServiceError
    from kvtui.store import group_saves
    from kvtui.store.names import normalize

    async with KvService(settings) as service:
        try:
            store = service.require_store()
            store.rescan()
            chat = chat_from_args(service, args.chat)
            groups = group_saves(store.entries(), current_chat=None)
            titles = {c.chat_id: c.title for c in known_chats(service) if c.title}
        except (ServiceError, StoreError) as err:
            return _fail(err)
        except ChatRefError as err:
            warn(err)
            return EXIT_USAGE

    def wanted(shown: str, key: str, query: str | None) -> bool:
        return query is None or query == shown or normalize(query) == key

    data: list[dict[str, Any]] = []
    for g in groups:
        if not wanted(g.chat, g.chat_key, chat):
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
            data.append({"chat": g.chat, "title": titles.get(g.chat), "characters": characters})
    if args.json:
        _dump(data)
        return EXIT_OK
    if not data:
        print("No saves.")
    for item in data:
        title = item["title"]
        print(f"{title}  ({item['chat']})" if title and title != item["chat"] else item["chat"])
        for c in item["characters"]:
            print(f"  {c['character']}")
            for e in c["saves"]:
                tag = f"  [{e['tag']}]" if e["tag"] else ""
                tokens = e["tokens"] if e["tokens"] is not None else "?"
                local = datetime.fromisoformat(e["time"]).astimezone()
                when = f"{local:%Y-%m-%d %H:%M:%S}"
                print(f"    {when}  {tokens:>6} tok  {e['bytes']:>10} B  {e['file']}{tag}")
    return EXIT_OK


# -- changing slots -------------------------------------------------------------------------------


def _save_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("slot", type=int)
    p.add_argument("--chat", help=f"{CHAT_HELP} (defaults to the slot's chat)")
    p.add_argument("--character", help="character name (defaults to the slot's character)")
    p.add_argument("--tag", help="tag: a tagged save is never rotated away")
    _json_flag(p)


@command("save", "save a slot's cache to a new file", _save_args, changes_slots=True)
async def _save(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import ServiceError

    async with KvService(settings) as service:
        try:
            chat = chat_from_args(service, args.chat, new_ok=True)
            outcome = await service.save_slot(
                args.slot, chat=chat, character=args.character, tag=args.tag
            )
        except ChatRefError as err:
            warn(err)
            return EXIT_USAGE
        except (ServiceError, LlamaError, StoreError) as err:
            return _fail(err)
        kept = await _book_kept(service, f"Saved slot {outcome.slot} to {outcome.filename}")
    if args.json:
        _dump(outcome.__dict__)
    else:
        print(f"Saved slot {outcome.slot}: {outcome.n_saved} tokens -> {outcome.filename}")
        for name in outcome.rotated:
            print(f"Rotated away {name}")
    return EXIT_OK if kept else EXIT_FAIL


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="save file name (in the save directory)")
    p.add_argument("--slot", type=int, help="slot (default: the character's slot, else a free one)")
    _json_flag(p)


@command("load", "restore a save file into a slot", _load_args, changes_slots=True)
async def _load(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import ServiceError

    async with KvService(settings) as service:
        try:
            service.require_store().rescan()  # an unreadable directory is said as such
            outcome = await service.load(args.file, args.slot)
        except (ServiceError, LlamaError, StoreError) as err:
            return _fail(err)
        kept = await _book_kept(service, f"Loaded {args.file} into slot {outcome.slot}")
    if args.json:
        _dump(outcome.__dict__)
    else:
        print(
            f"Loaded {outcome.character} ({outcome.chat}) into slot {outcome.slot}: "
            f"{outcome.n_restored} tokens."
        )
    return EXIT_OK if kept else EXIT_FAIL


def _erase_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("slot", type=int)
    _json_flag(p)


@command(
    "erase", "erase a slot's cache on the server (files stay)", _erase_args, changes_slots=True
)
async def _erase(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.service import ServiceError

    async with KvService(settings) as service:
        try:
            n = await service.erase(args.slot)
        except (ServiceError, LlamaError) as err:
            return _fail(err)
        kept = await _book_kept(service, f"Erased slot {args.slot}")
    if args.json:
        _dump({"slot": args.slot, "n_erased": n})
    else:
        print(f"Erased slot {args.slot}: {n} tokens.")
    return EXIT_OK if kept else EXIT_FAIL


@command("doctor", "check the server's set-up and say how to fix it", _json_flag)
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


@command(
    "proxy",
    "run the routing proxy and autosave without the dashboard",
    _listen_flag,
    changes_slots=True,
)
async def _proxy(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.proxy.run import run_proxy_forever

    return await run_proxy_forever(settings)


def _prewarm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat", required=True, help=CHAT_HELP)
    p.add_argument("--character", action="append", default=[], help="a character (repeatable)")
    p.add_argument("--all", action="store_true", help="every member, muted ones included")
    _json_flag(p)


@command(
    "prewarm",
    "warm characters' caches before a conversation",
    _prewarm_args,
    changes_slots=True,
)
async def _prewarm(settings: Settings, args: argparse.Namespace) -> int:
    from kvtui.prewarm_cli import run_prewarm_cli

    async with KvService(settings) as service:
        try:
            args.chat = chat_from_args(service, args.chat)
        except ChatRefError as err:
            warn(err)
            return EXIT_USAGE
    return await run_prewarm_cli(settings, args)
