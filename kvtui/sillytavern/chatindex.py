"""An index of every chat's latest messages, to tell which chat a prompt was built from.

SillyTavern never says which chat a generation is for, and opening a chat writes no chat file,
so "the newest chat file" is not the open chat. What a prompt does show is the chat itself: its
latest visible messages. :class:`ChatIndex` keeps, per chat file (1:1 and group), the last
:data:`RECENT` visible messages, and a map from each message line to the chats holding it.
:meth:`ChatIndex.match` splits a prompt into lines and looks them up, so matching costs one
pass over the prompt's end whatever the number of chats.

:meth:`ChatIndex.refresh` re-reads only files whose ``(mtime, size)`` changed, and only their
ends (a big chat costs a small read). It also snapshots SillyTavern's own state
(:class:`SillyTavernState`): ``settings.json`` ``active_character``/``active_group`` (saved
debounced, about a second after a click), each card's ``chat`` and each group's ``chat_id``.
Opening a chat from the chat list rewrites those at once (``openCharacterChat`` edits the card,
``openGroupChat`` edits the group: SillyTavern 1.19 ``public/script.js``, ``group-chats.js``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtui.sillytavern.data import SillyTavernData
from kvtui.sillytavern.layout import CHATS_DIR, GROUP_CHATS_DIR, SETTINGS_FILE, is_chat_file_name
from kvtui.sillytavern.models import ChatRef, Group
from kvtui.sillytavern.recent import MISS_RUN, RECENT, SCAN_LINES, RecentMessage, read_recent
from kvtui.sillytavern.recent import prompt_keys as prompt_keys
from kvtui.sillytavern.ststate import SillyTavernState as SillyTavernState
from kvtui.sillytavern.ststate import user_name_of
from kvtui.sillytavern.templates import ControlPrompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexedChat:
    """A chat file and its latest visible messages (oldest first)."""

    ref: ChatRef
    recent: tuple[RecentMessage, ...]
    avatars: tuple[str, ...]
    """The characters it belongs to: a 1:1 chat's avatar, or a group's members."""
    mtime: float = 0.0
    rewritten: bool | None = None
    """The file's last change (as the index saw it) rewrote a message before the newest one or
    removed messages: an edit or delete, not a reply or swipe. None when read for the first time."""


def grew(old: tuple[RecentMessage, ...], new: tuple[RecentMessage, ...], window: int) -> bool:
    """``new`` is ``old`` with messages added, or its newest reply changed (a swipe, a continue):
    nothing before it was edited or deleted. Both are a chat's latest ``window`` messages."""
    if not old:
        return True
    for shift in range(max(len(old) - 1, 1)):
        # The window moves on only when it was full and stays full (messages were added), and
        # at least one message before the newest must still line up.
        if shift and not len(old) == len(new) == window:
            break
        kept = old[shift:]
        if len(new) < len(kept) or new[: len(kept) - 1] != kept[:-1]:
            continue
        last, now = kept[-1], new[len(kept) - 1]
        if last == now or (not last.is_user and (now.name, now.is_user) == (last.name, False)):
            return True
    return False


@dataclass(frozen=True)
class ChatMatch:
    """How much of one chat's latest messages a prompt contains."""

    chat: IndexedChat
    found: frozenset[int]
    """Positions from the end (0 = the newest message) of the messages found in the prompt."""

    @property
    def unseen(self) -> tuple[RecentMessage, ...]:
        """The indexable messages newer than the newest one found (a swipe hides the last)."""
        newest = min(self.found)
        recent = self.chat.recent
        return tuple(m for m in recent[len(recent) - newest :] if m.indexable)

    @property
    def plausible(self) -> bool:
        """Only replies are unseen: the prompt is this chat as it stands, or with its last
        reply (or group round) taken back for a swipe or regenerate. A missing user message
        means the prompt is not this chat's present."""
        return not any(m.is_user for m in self.unseen)

    @property
    def rank(self) -> tuple[int, int, int]:
        """Smaller is better: plausible first, then fewer unseen, then more found."""
        return (0 if self.plausible else 1, len(self.unseen), -len(self.found))


def _stat_chat_files(user_dir: Path) -> dict[str, tuple[int, int]]:
    """``(mtime_ns, size)`` of every chat file by path string (strings: cheaper than Paths)."""
    stamps: dict[str, tuple[int, int]] = {}
    folders = [str(user_dir / GROUP_CHATS_DIR)]
    try:
        folders += [e.path for e in os.scandir(user_dir / CHATS_DIR) if e.is_dir()]
    except OSError:
        pass
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not is_chat_file_name(entry.name):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            stamps[entry.path] = (st.st_mtime_ns, st.st_size)
    return stamps


class ChatIndex:
    """The latest messages of every chat in one SillyTavern user directory.

    Not thread-safe by itself: hold :attr:`lock` around :meth:`refresh` and :meth:`match`
    (``kvtui.proxy.chatidentity.refresh_and_identify`` does).
    """

    def __init__(self, user_dir: Path, *, recent: int = RECENT) -> None:
        self.user_dir = Path(user_dir)
        self.lock = threading.Lock()
        self.data = SillyTavernData(self.user_dir)
        self.recent = recent
        self._chats: dict[str, tuple[tuple[int, int], IndexedChat]] = {}
        self._postings: dict[str, set[tuple[str, int]]] = {}
        self._layout: tuple[int, ...] = ()  # identities of the cached groups and cards
        self._card_ids: tuple[int, ...] = ()
        self._settings: tuple[tuple[int, int], Mapping[str, Any]] | None = None
        self._state = SillyTavernState()
        self._entries: list[IndexedChat] | None = None

    @property
    def state(self) -> SillyTavernState:
        """SillyTavern's state as of the last :meth:`refresh`."""
        return self._state

    def chats(self) -> list[IndexedChat]:
        """Every indexed chat (the same list object until something changes)."""
        if self._entries is None:
            self._entries = [entry for _stamp, entry in self._chats.values()]
        return self._entries

    def chat(self, chat_id: str, group_id: str | None = None) -> IndexedChat | None:
        """The indexed chat SillyTavern calls ``chat_id`` (restricted to a group's, if given)."""
        for _stamp, entry in self._chats.values():
            if entry.ref.chat_id == chat_id and (
                group_id is None or entry.ref.group_id == group_id
            ):
                return entry
        return None

    # -- refreshing ----------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the index and the state up to date (stats everything, reads what changed)."""
        state = self._read_state()
        by_chat: dict[str, Group] = {}
        for group in sorted(state.groups.values(), key=lambda g: g.id):
            for chat_id in group.chats:
                by_chat.setdefault(chat_id, group)
        stamps = _stat_chat_files(self.user_dir)
        for key in [p for p in self._chats if p not in stamps]:
            self._drop(key)
        # Cached cards and groups are the same objects until their files change.
        layout = (*map(id, state.groups.values()), *self._card_ids)
        same_layout = layout == self._layout
        self._layout = layout
        for key, stamp in stamps.items():
            known = self._chats.get(key)
            if same_layout and known is not None and known[0] == stamp:
                continue
            path = Path(key)
            ref = self._ref(path, stamp, by_chat, state)
            if ref is None:
                self._drop(key)
                continue
            avatars = (ref.avatar,) if ref.avatar else by_chat[ref.chat_id].members
            rewritten = known[1].rewritten if known is not None else None
            if known is not None and known[0] == stamp:
                recent = known[1].recent  # only the groups or names changed
            else:
                try:
                    recent = read_recent(path, self.recent)
                except OSError as err:
                    log.warning("Cannot read chat %s: %s", path, err)
                    self._drop(key)
                    continue
                if known is not None:
                    rewritten = not grew(known[1].recent, recent, self.recent)
            self._drop(key)
            entry = IndexedChat(ref, recent, tuple(avatars), stamp[0] / 1e9, rewritten)
            self._add(key, stamp, entry)
        self._state = state

    def _ref(
        self,
        path: Path,
        stamp: tuple[int, int],
        by_chat: Mapping[str, Group],
        state: SillyTavernState,
    ) -> ChatRef | None:
        mtime = stamp[0] / 1e9
        if path.parent.name != GROUP_CHATS_DIR or path.parent.parent != self.user_dir:
            avatar = path.parent.name + ".png"
            name = state.names.get(avatar, path.parent.name)
            return ChatRef(path.stem, path, None, avatar, name, mtime)
        group = by_chat.get(path.stem)
        if group is None:
            return None  # no group lists it: not a chat SillyTavern can open
        return ChatRef(path.stem, path, group.id, None, group.name, mtime)

    def _add(self, path: str, stamp: tuple[int, int], entry: IndexedChat) -> None:
        self._entries = None
        self._chats[path] = (stamp, entry)
        last = len(entry.recent) - 1
        for i, message in enumerate(entry.recent):
            for key in message.keys:
                self._postings.setdefault(key, set()).add((path, last - i))

    def _drop(self, path: str) -> None:
        known = self._chats.pop(path, None)
        if known is None:
            return
        self._entries = None
        for message in known[1].recent:
            for key in message.keys:
                postings = self._postings.get(key)
                if postings is None:
                    continue
                postings.difference_update({p for p in postings if p[0] == path})
                if not postings:
                    del self._postings[key]

    def _read_settings(self) -> Mapping[str, Any]:
        path = self.user_dir / SETTINGS_FILE
        try:
            st = path.stat()
        except OSError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if self._settings is not None and self._settings[0] == stamp:
            return self._settings[1]
        try:
            obj = json.loads(path.read_bytes().decode("utf-8-sig"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            log.warning("Cannot read %s: %s", path, err)
            obj = {}
        settings: Mapping[str, Any] = obj if isinstance(obj, dict) else {}
        self._settings = (stamp, settings)
        return settings

    def _read_state(self) -> SillyTavernState:
        settings = self._read_settings()
        cards = self.data.characters()
        self._card_ids = tuple(map(id, cards))

        def text(key: str) -> str | None:
            value = settings.get(key)
            return str(value) if isinstance(value, str | int) and value != "" else None

        return SillyTavernState(
            active_character=text("active_character"),
            active_group=text("active_group"),
            card_chats={c.avatar: c.chat for c in cards if c.chat},
            names={c.avatar: c.name for c in cards},
            groups={g.id: g for g in self.data.groups()},
            user_name=user_name_of(settings),
            prompts=ControlPrompts.from_settings(settings),
        )

    # -- matching ------------------------------------------------------------------------

    def match(self, text: str, avatars: Collection[str] | None = None) -> list[ChatMatch]:
        """The chats whose latest messages ``text`` contains, best first (see
        :attr:`ChatMatch.rank`); only chats of ``avatars`` (1:1 or as group members) when
        given."""
        found: dict[str, set[int]] = {}
        postings = self._postings
        looked = misses = 0
        for variants in prompt_keys(text):
            if not variants:
                continue
            looked += 1
            hit = False
            for key in variants:
                if (hits := postings.get(key)) is not None:
                    hit = True
                    for path, position in hits:
                        found.setdefault(path, set()).add(position)
            misses = 0 if hit else misses + 1
            if (found and misses >= MISS_RUN) or (not found and looked >= SCAN_LINES):
                break
        matches: list[ChatMatch] = []
        for path, positions in found.items():
            entry = self._chats[path][1]
            if avatars is not None and not any(a in entry.avatars for a in avatars):
                continue
            matches.append(ChatMatch(entry, frozenset(positions)))
        matches.sort(key=lambda m: (m.rank, -m.chat.mtime, str(m.chat.ref.path)))
        return matches


def seconds_since(entry: IndexedChat, now: float | None = None) -> float:
    """How long ago the chat file was last written."""
    return (time.time() if now is None else now) - entry.mtime
