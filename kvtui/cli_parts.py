"""Subcommands that live with their parts: ``memory``, ``stats``, ``sillytavern`` (and
``sideprompt``, which registers itself).

Each part defines its own parser (``add_*_parser(subparsers)``) and runner; this module
registers them with :func:`kvtui.cli.command` like the built-in commands.
"""

from __future__ import annotations

import argparse
from typing import Any

import kvtui.sideprompts.cli  # noqa: F401 - registers ``kvtui sideprompt``
from kvtui.cli import command
from kvtui.memory.cli import add_memory_parser, run_memory
from kvtui.settings import Settings
from kvtui.sillytavern.install import add_sillytavern_parser, run_sillytavern
from kvtui.warmth.cli import add_stats_parser, run_stats


class _Into:
    """Hands an ``add_*_parser`` function the parser ``kvtui.cli`` already made for it."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add_parser(self, *_args: Any, **_kwargs: Any) -> argparse.ArgumentParser:
        return self.parser


def _memory_args(p: argparse.ArgumentParser) -> None:
    add_memory_parser(_Into(p))


def _stats_args(p: argparse.ArgumentParser) -> None:
    add_stats_parser(_Into(p))


def _sillytavern_args(p: argparse.ArgumentParser) -> None:
    add_sillytavern_parser(_Into(p))


@command("memory", "make a scene memory of a SillyTavern chat into its lorebook", _memory_args)
def memory(settings: Settings, args: argparse.Namespace) -> int:
    if getattr(args, "chat", None) and settings.st_dir is not None:
        # --chat takes the chat id, the group's title or the chat file name, like every command.
        from kvtui.chatref import ChatRefError, KnownChat, resolve_chat
        from kvtui.cli import EXIT_USAGE, warn
        from kvtui.sillytavern import SillyTavernData

        known = [
            KnownChat(ref.chat_id, ref.display_name, ref.path.name)
            for ref in SillyTavernData(settings.st_dir).chats()
        ]
        try:
            args.chat = resolve_chat(args.chat, known)
        except ChatRefError as err:
            warn(str(err))
            return EXIT_USAGE
    from kvtui.sideprompts.cli import after_memory_hook

    after = after_memory_hook(settings, yes=bool(args.yes)) if settings.st_dir is not None else None
    return run_memory(args, settings, after)


@command("stats", "why turns re-prefilled: hit ratio, tokens saved, losses", _stats_args)
def stats(settings: Settings, args: argparse.Namespace) -> int:
    return run_stats(args, settings)


@command("sillytavern", "install or remove kvtui's SillyTavern extension", _sillytavern_args)
def sillytavern(settings: Settings, args: argparse.Namespace) -> int:
    return run_sillytavern(args, settings)
