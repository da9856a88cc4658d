"""The ``kvtui`` command: the dashboard by default, and headless commands for scripts.

Every command accepts the same global options (``--server``, ``--api-key``, ``--save-dir``,
``--st-dir``, ``--state-dir``, ``--config``), before or after the command name. Data commands
take ``--json``. Exit codes: 0 success, 1 the operation failed (the message says why), 2 bad usage.

Commands are registered with :func:`command` (a decorator on the handler, with a function that
adds the command's own arguments), so a new subcommand is one function here or in its own module
(see :mod:`kvtui.cli_commands`). ``--chat`` everywhere accepts SillyTavern's chat id, the group's
title or the chat file's name (:mod:`kvtui.chatref`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kvtui import __version__
from kvtui.errors import KvtuiError
from kvtui.settings import ConfigError, Settings, config_problems, human_error, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int] | int]
Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """One subcommand: its handler, its arguments and whether it changes slots."""

    name: str
    help: str
    handler: Handler
    arguments: Arguments | None = None
    changes_slots: bool = False
    """Takes the state directory's lock (one kvtui at a time changes the slot book)."""
    headless: bool = True
    """Runs without the dashboard (pointed at a running demo's server, it uses its state)."""


COMMANDS: dict[str, Command] = {}
"""Every subcommand by name, in registration order (the order ``--help`` lists them)."""


def command(
    name: str,
    help_text: str,
    arguments: Arguments | None = None,
    *,
    changes_slots: bool = False,
    headless: bool = True,
) -> Callable[[Handler], Handler]:
    """Register ``handler`` as ``kvtui <name>``; ``arguments`` adds its own options."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, help_text, handler, arguments, changes_slots, headless)
        return handler

    return register


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
    group.add_argument(
        "--state-dir", metavar="DIR", type=Path, default=d, help="kvtui's slot book and prompts"
    )
    group.add_argument("--config", metavar="FILE", type=Path, default=d, help="config file")


def build_parser() -> argparse.ArgumentParser:
    import kvtui.cli_commands  # noqa: F401 - registers the commands
    import kvtui.cli_parts  # noqa: F401 - and those of memory, stats, sillytavern

    parser = argparse.ArgumentParser(
        prog="kvtui",
        description="Keep every roleplay character's llama.cpp KV cache warm.",
    )
    parser.add_argument("--version", action="version", version=f"kvtui {__version__}")
    _global_options(parser, defaults=True)
    listen_help = "proxy listen address HOST:PORT (default 127.0.0.1:8081)"
    parser.add_argument("--listen", metavar="HOST:PORT", default=None, help=listen_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        _global_options(p, defaults=False)
        if cmd.arguments is not None:
            cmd.arguments(p)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(
        getattr(args, "config", None),
        server_url=getattr(args, "server", None),
        api_key=getattr(args, "api_key", None),
        save_dir=getattr(args, "save_dir", None),
        st_dir=getattr(args, "st_dir", None),
        state_dir=getattr(args, "state_dir", None),
        proxy_listen=getattr(args, "listen", None),
    )


def warn(message: object) -> None:
    print(f"kvtui: {message}", file=sys.stderr)


def _readable_dir(path: Path) -> bool:
    """Whether ``path`` is a directory kvtui can list (an unreadable save directory is said
    once, by the command that needs it, not also by the start-up repair)."""
    try:
        os.scandir(path).close()
    except OSError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that left shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # ``kvtui ls | head``: the reader left. Say so once; the rest of the output goes nowhere.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        warn("output closed early (broken pipe); nothing else was affected")
        return EXIT_FAIL


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = getattr(args, "config", None)
    if config is not None and not config.expanduser().is_file():
        warn(f"no config file at {config} (check the path, or leave out --config)")
        return EXIT_USAGE
    try:
        settings = settings_from_args(args)
    except ConfigError as err:
        warn(f"bad config file: {err}")
        return EXIT_USAGE
    except ValidationError as err:
        warn(f"bad setting: {human_error(err)}")
        return EXIT_USAGE
    except ValueError as err:
        warn(f"bad setting: {err}")
        return EXIT_USAGE
    problems = config_problems(config)
    name = args.command or "ui"
    cmd = COMMANDS[name]
    if not cmd.headless:
        result = cmd.handler(settings, args)
        assert isinstance(result, int)
        return result
    for problem in problems:
        warn(problem)
    from kvtui.demo import redirect_to_demo

    settings, demo = redirect_to_demo(settings)
    if demo is not None:
        warn(f"using the running demo's state ({demo.root}); it quits when the demo does")
    lock = None
    if cmd.changes_slots:
        from kvtui.statelock import StateLock

        lock = StateLock(settings.state_dir)
        if not lock.acquire(f"kvtui {name}"):
            where = "the demo" if demo is not None else "there"
            warn(
                f"{lock.holder()} is running with the same state directory and keeps "
                f"the slot book; run this from {where} (or stop it first). "
                f"State directory: {settings.state_dir}"
            )
            return EXIT_FAIL
        save_dir = settings.save_dir
        if save_dir is not None and _readable_dir(save_dir):  # this process keeps the book: tidy
            from kvtui.service import repair_save_dir
            from kvtui.store import SaveStore

            for note in repair_save_dir(SaveStore(save_dir)):
                warn(note)
    try:
        outcome = cmd.handler(settings, args)
        if isinstance(outcome, int):
            return outcome
        return asyncio.run(outcome)
    except KvtuiError as err:  # an expected failure a handler did not word itself
        warn(err)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("kvtui: interrupted", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    # Run as ``python -m kvtui.cli``: use the imported module, where the commands register.
    from kvtui.cli import main as _entry

    sys.exit(_entry())
