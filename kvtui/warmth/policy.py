"""When to restore a character from disk and when to save it: the seed's rules and a better one.

The seed's rules stay the defaults: on a new residency the character's latest save is restored;
an evicted character used at least once is saved first; autosave every N messages.

The RAM-cache-aware policy (two settings, both off by default; names as the settings use them):

- ``skip_restore_when_ram_cached``: when llama-server keeps evicted prompts in host memory
  (``--cache-ram``; see :mod:`kvtui.warmth.ramcache`), a character swapped out and back in soon
  is still there: the server moves its state back into the slot on its own when the prompt
  arrives. A disk restore then only costs a read, and is harmful when the save is older than the
  state in memory (a restored older save matches the prompt well enough that the server does not
  look in its memory). So the restore is skipped when :class:`RamCacheModel` — kvtui's model of
  the server's first-in-first-out cache — says the character's state is still held and is at
  least as long as the save. After a server restart or a chat switch's erase memory holds
  nothing, so the save is restored as before.
- ``save_when_protective``: a save is taken exactly when it protects something: the tokens
  not yet on disk, re-prefilled at the server's measured speed, would cost more than
  ``save_cost_ratio`` times the time to write the whole state (bytes per token over
  ``disk_mb_per_second``). That is after any message (not only every N) when saves are cheap
  next to prefill, as on a CPU; before an eviction only when something is unsaved; never when
  the latest save already holds everything. A restart then costs at most the last reply.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from kvtui.warmth.ramcache import RamCacheInfo


@dataclass(frozen=True)
class WarmthPolicy:
    """The policy settings, read from :class:`kvtui.settings.Settings` when it has them."""

    skip_restore_when_ram_cached: bool = False
    save_when_protective: bool = False
    save_cost_ratio: float = 1.0
    disk_mb_per_second: float = 1000.0
    real_model_bytes_per_token: int = 163_840

    @classmethod
    def from_settings(cls, settings: Any) -> WarmthPolicy:
        """Take each field from ``settings`` when it has an attribute of that name."""
        defaults = cls()
        values = {
            name: getattr(settings, name, getattr(defaults, name))
            for name in cls.__dataclass_fields__
        }
        return cls(**values)


@dataclass(frozen=True)
class Choice:
    """A policy decision and why, for the event log."""

    act: bool
    why: str


def should_restore_from_disk(
    policy: WarmthPolicy,
    *,
    has_save: bool,
    save_tokens: int | None,
    ram: RamCacheInfo | None,
    ram_tokens: int | None,
    server_restarted: bool = False,
    erased: bool = False,
) -> Choice:
    """Restore the character's latest save into its new slot, or leave it to the server's memory?

    ``ram_tokens`` is what :meth:`RamCacheModel.holds` says the server's memory has for the
    character (``None``: nothing).
    """
    if not has_save:
        return Choice(False, "no save to restore")
    if not policy.skip_restore_when_ram_cached:
        return Choice(True, "the seed's rule: restore the latest save on a new residency")
    if ram is None or not ram.enabled:
        return Choice(True, "llama-server keeps no evicted prompts in memory")
    if server_restarted:
        return Choice(True, "llama-server restarted: its memory is empty")
    if erased:
        return Choice(True, "the slots were erased (chat switch): memory does not hold it")
    if ram_tokens is None:
        return Choice(True, "llama-server's memory no longer holds it (pushed out)")
    if save_tokens is not None and ram_tokens < save_tokens:
        return Choice(True, f"the save holds {save_tokens} tokens, memory only {ram_tokens}")
    return Choice(False, f"llama-server's memory holds {ram_tokens} tokens of it: no disk read")


def should_save(
    policy: WarmthPolicy,
    *,
    usage: int,
    tokens: int,
    saved_tokens: int,
    prefill_tokens_per_second: float | None,
    bytes_per_token: float,
    autosave_due: bool = False,
    evicting: bool = False,
) -> Choice:
    """Save now? ``tokens`` are in the slot, ``saved_tokens`` of them are in its latest save.

    The seed's rule: save an evicted character used at least once, and autosave when due.
    ``save_when_protective`` replaces it by the cost rule of the module docstring.
    """
    seed = (evicting and usage >= 1) or autosave_due
    if not policy.save_when_protective:
        return Choice(seed, "the seed's rule" if seed else "not used, not due")
    if usage < 1:
        return Choice(False, "never used: nothing of its own to keep")
    unsaved = max(0, tokens - saved_tokens)
    if unsaved == 0:
        return Choice(False, "its latest save already holds everything")
    if not prefill_tokens_per_second or prefill_tokens_per_second <= 0 or bytes_per_token <= 0:
        return Choice(seed, "prefill speed unknown: the seed's rule")
    prefill_s = unsaved / prefill_tokens_per_second
    write_s = tokens * bytes_per_token / (policy.disk_mb_per_second * 1e6)
    if prefill_s > policy.save_cost_ratio * write_s:
        return Choice(True, f"protects {unsaved} tokens ({prefill_s:.2f} s of prefill)")
    return Choice(
        False,
        f"{unsaved} unsaved tokens re-prefill in {prefill_s:.2f} s, less than the "
        f"{write_s:.2f} s write",
    )


class RamCacheModel:
    """kvtui's model of llama-server's host-memory prompt cache, first in, first out.

    When a slot's occupant changes by a generation, the server moves the old occupant's state to
    memory, and a state brought back into a slot leaves memory. A disk restore or an erase puts
    nothing in memory; a restart empties it. ``capacity`` is in tokens (``None``: unlimited).
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._held: OrderedDict[Hashable, int] = OrderedDict()

    def push(self, key: Hashable, tokens: int) -> None:
        if tokens <= 0:
            return
        self._held.pop(key, None)
        self._held[key] = tokens
        if self.capacity is not None:
            while len(self._held) > 1 and sum(self._held.values()) > self.capacity:
                self._held.popitem(last=False)

    def take(self, key: Hashable) -> int | None:
        return self._held.pop(key, None)

    def holds(self, key: Hashable) -> int | None:
        return self._held.get(key)

    def clear(self) -> None:
        self._held.clear()

    def __len__(self) -> int:
        return len(self._held)
