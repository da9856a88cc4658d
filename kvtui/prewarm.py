"""Prewarm: give every chosen character of a chat a ready cache before the conversation starts.

For each character: take a slot by the seed's allocation (saving an evicted character first),
process the character's prompt into the cache with one generated token, save it as an autosave
(counted and rotated like any other) and check that the save holds tokens. The prompt is the last
one the proxy recorded for that character in that chat (an exact prefix of what SillyTavern will
send next), else one assembled from the SillyTavern chat file and card (approximate), else the
character is skipped with that reason.

A per-character timeout marks the character failed and the run goes on. Cancelling the run
cancels the in-flight request, which closes its connection, so llama-server stops the task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kvtui.events import Kind
from kvtui.llama import LlamaError
from kvtui.recall.warm import warm_prompt
from kvtui.service import KvService, PromptRecorder, ServiceError
from kvtui.sillytavern import Chat, Member, SillyTavernData, SillyTavernError, assemble_prompt
from kvtui.slots import GenType


class Outcome(StrEnum):
    WARMED = "warmed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class PromptChoice:
    """The prompt for one character and where it came from ("recorded" or "assembled")."""

    character: str
    prompt: str | None
    source: str
    reason: str = ""
    timeout: float | None = None
    """This character's own limit in seconds (else the run's per-character timeout)."""


@dataclass(frozen=True)
class CharacterResult:
    character: str
    outcome: Outcome
    tokens: int = 0
    seconds: float = 0.0
    filename: str | None = None
    source: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Progress:
    """One step of a run: ``current`` is being warmed; ``done`` results so far."""

    total: int
    current: str | None
    done: tuple[CharacterResult, ...]
    elapsed: float
    finished: bool = False
    cancelled: bool = False


@dataclass
class PrewarmReport:
    results: list[CharacterResult] = field(default_factory=list)
    elapsed: float = 0.0
    cancelled: bool = False

    def with_outcome(self, outcome: Outcome) -> list[CharacterResult]:
        return [r for r in self.results if r.outcome is outcome]

    @property
    def ok(self) -> bool:
        return not self.cancelled and not self.with_outcome(Outcome.FAILED)


PromptSource = Callable[[str, str], PromptChoice]
ProgressCallback = Callable[[Progress], None]


async def prewarm(
    service: KvService,
    chat: str,
    prompts: Sequence[PromptChoice],
    *,
    per_character_timeout: float | None = None,
    concurrency: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> PrewarmReport:
    """Warm each character in ``prompts`` (in order) for ``chat``.

    ``per_character_timeout`` (seconds) and ``concurrency`` default to the settings. Cancelling
    the task that awaits this cancels the in-flight requests and re-raises after the report's
    last progress message has been sent.
    """
    settings = service.settings
    timeout = (
        per_character_timeout
        if per_character_timeout is not None
        else settings.prewarm_timeout_minutes * 60
    )
    concurrency = max(1, concurrency or settings.prewarm_concurrency)
    report = PrewarmReport()
    started = time.monotonic()
    total = len(prompts)
    in_flight: set[int] = set()
    slot_of: dict[str, int] = {}
    current: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)

    def emit(finished: bool = False) -> None:
        if on_progress is not None:
            on_progress(
                Progress(
                    total=total,
                    current=current[-1] if current else None,
                    done=tuple(report.results),
                    elapsed=time.monotonic() - started,
                    finished=finished,
                    cancelled=report.cancelled,
                )
            )

    async def warm_one(choice: PromptChoice) -> None:
        async with semaphore:
            if choice.prompt is None:
                report.results.append(
                    CharacterResult(choice.character, Outcome.SKIPPED, reason=choice.reason)
                )
                emit()
                return
            current.append(choice.character)
            emit()
            t0 = time.monotonic()
            limit = choice.timeout if choice.timeout is not None else timeout
            try:
                result = await asyncio.wait_for(
                    _warm(service, chat, choice, in_flight, slot_of), timeout=limit
                )
            except TimeoutError:
                # The request was cancelled; let the server drop it before the next one starts.
                await _wait_idle(service, slot_of.get(choice.character))
                result = CharacterResult(
                    choice.character,
                    Outcome.FAILED,
                    seconds=time.monotonic() - t0,
                    source=choice.source,
                    reason=f"timed out after {limit:.0f} s",
                )
            except (ServiceError, LlamaError) as err:
                result = CharacterResult(
                    choice.character,
                    Outcome.FAILED,
                    seconds=time.monotonic() - t0,
                    source=choice.source,
                    reason=str(err),
                )
            finally:
                if choice.character in current:
                    current.remove(choice.character)
            report.results.append(result)
            if result.outcome is Outcome.FAILED:
                service.events.error(
                    Kind.PREWARM, f"Prewarm of {choice.character} failed: {result.reason}"
                )
            emit()

    service.events.info(Kind.PREWARM, f"Prewarm of {total} character(s) in {chat} started.")
    emit()
    tasks = [asyncio.create_task(warm_one(choice)) for choice in prompts]
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        report.cancelled = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The final message promises that nothing kvtui started is still running on the server.
        for slot in set(slot_of.values()):
            await _wait_idle(service, slot)
        done = {r.character for r in report.results}
        for choice in prompts:
            if choice.character not in done:
                report.results.append(CharacterResult(choice.character, Outcome.CANCELLED))
        report.elapsed = time.monotonic() - started
        _log_summary(service, report)
        emit(finished=True)
        raise
    report.elapsed = time.monotonic() - started
    _log_summary(service, report)
    emit(finished=True)
    return report


async def _warm(
    service: KvService,
    chat: str,
    choice: PromptChoice,
    in_flight: set[int],
    slot_of: dict[str, int],
) -> CharacterResult:
    assert choice.prompt is not None
    t0 = time.monotonic()
    decision = await service.route(
        chat, choice.character, GenType.QUIET, protected=in_flight, prompt=choice.prompt
    )
    in_flight.add(decision.slot)
    slot_of[choice.character] = decision.slot
    restored = decision.restored
    if restored is not None:
        # Its latest save already holds the whole prompt: restored, nothing to warm or save
        # (a new autosave would only push an older one out of the rotation).
        needed = len(await service.tokenize(choice.prompt, add_special=True))
        if restored.n_restored >= needed:
            in_flight.discard(decision.slot)
            return CharacterResult(
                choice.character,
                Outcome.WARMED,
                tokens=restored.n_restored,
                seconds=time.monotonic() - t0,
                filename=restored.filename,
                source=choice.source,
                reason="restored: its save already covers the prompt",
            )
    try:
        completion = await service.complete(choice.prompt, slot=decision.slot)
        saved = await service.save_slot(decision.slot, autosave=True)
    finally:
        in_flight.discard(decision.slot)
    tokens = completion.timings.prompt_n + completion.timings.cache_n
    return CharacterResult(
        choice.character,
        Outcome.WARMED,
        tokens=max(tokens, saved.n_saved),
        seconds=time.monotonic() - t0,
        filename=saved.filename,
        source=choice.source,
    )


async def _wait_idle(service: KvService, slot: int | None, limit: float = 30.0) -> None:
    """Wait (bounded) until ``slot`` stops processing after its request was cancelled.

    llama-server notices a closed connection between batches, so a long prompt stops within
    one batch's time; a server that cannot be asked is not waited for.
    """
    if slot is None:
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        asked = time.monotonic()
        try:
            states = await service.slot_states()
        except LlamaError:
            if time.monotonic() - asked < 1.0:
                return  # refused at once: the server is gone
            continue  # too busy to answer in time (a long prompt's batch): still working
        if not any(s.id == slot and s.is_processing for s in states):
            return
        await asyncio.sleep(0.05)


def _log_summary(service: KvService, report: PrewarmReport) -> None:
    warmed = [r.character for r in report.with_outcome(Outcome.WARMED)]
    failed = [r.character for r in report.with_outcome(Outcome.FAILED)]
    skipped = [r.character for r in report.with_outcome(Outcome.SKIPPED)]
    missed = [r.character for r in report.with_outcome(Outcome.CANCELLED)]
    parts = [f"warmed {', '.join(warmed) or 'none'}"]
    if failed:
        parts.append(f"failed {', '.join(failed)}")
    if skipped:
        parts.append(f"skipped {', '.join(skipped)}")
    if missed:
        parts.append(f"not warmed {', '.join(missed)}")
    verb = "cancelled" if report.cancelled else "finished"
    service.events.info(
        Kind.PREWARM, f"Prewarm {verb} in {report.elapsed:.1f} s: {'; '.join(parts)}."
    )


@dataclass(frozen=True)
class PrewarmPlan:
    """Who can be warmed in a chat: every member (muted ones flagged) and their prompts."""

    chat: str
    display_name: str
    members: tuple[Member, ...]
    choices: dict[str, PromptChoice]

    def default_selection(self) -> list[str]:
        """The seed's default: every member that is not muted."""
        return [m.name for m in self.members if not m.muted]

    def selected(self, names: Sequence[str]) -> list[PromptChoice]:
        return [self.choices[n] for n in names if n in self.choices]


class PlanError(ServiceError):
    """The chat to prewarm cannot be found or read."""


def plan_prewarm(
    chat_id: str,
    st_data: SillyTavernData | None,
    recorder: PromptRecorder | None,
    settings: Any = None,
) -> PrewarmPlan:
    """Find the chat's members and choose each one's prompt (recorded, else assembled).

    With kvtui's ``settings``, a recorded prompt holding recall macros is replayed as the next
    turn begins (:func:`kvtui.recall.warm.warm_prompt`)."""
    if st_data is None:
        raise PlanError(
            "No SillyTavern data directory is set: give it with --st-dir DIR (data/<user>)."
        )
    ref = st_data.find_chat(chat_id)
    if ref is None:
        raise PlanError(f"No SillyTavern chat {chat_id!r} in {st_data.user_dir}.")
    members = st_data.members(ref)
    chat: Chat | None
    try:
        chat = st_data.read_chat(ref)
    except SillyTavernError:
        chat = None
    user = st_data.user_name()
    choices: dict[str, PromptChoice] = {}
    for member in members:
        recorded = recorder.last(ref.chat_id, member.name) if recorder else None
        if recorded:
            if settings is not None:
                recorded = warm_prompt(settings, ref.chat_id, member.name, recorded)
            choices[member.name] = PromptChoice(member.name, recorded, "recorded")
            continue
        card = st_data.card(member.avatar)
        if card is None or chat is None:
            missing = "character card" if card is None else "chat file"
            choices[member.name] = PromptChoice(
                member.name,
                None,
                "",
                f"no recorded prompt and no readable {missing} to assemble one from",
            )
            continue
        prompt = assemble_prompt(card, chat, user, speaker=member.name)
        choices[member.name] = PromptChoice(member.name, prompt, "assembled")
    return PrewarmPlan(
        chat=ref.chat_id,
        display_name=ref.display_name,
        members=tuple(members),
        choices=choices,
    )
