"""KV-safe background jobs on llama-server: memory jobs that never cost a character its cache.

A job is one streamed ``/completion`` with a top-level ``json_schema`` (or none, for free-text
side prompts), a bounded ``n_predict``, a low temperature and an explicit ``id_slot``. Where it
runs:

* **utility slot** (``memory_slot`` set): always there. The service never routes a character to
  that slot, so nobody is evicted, and consecutive jobs share their instruction prefix.
* **borrowed slot** (no utility slot): under the service's routing lock (``gate``), so no
  character is routed meanwhile, an idle slot is chosen — an empty one if any, else the one with
  the fewest cached tokens — never one that ``/slots`` shows processing or that ``busy`` reports
  in use. Its occupant is saved to a private file (``private_name("job")``), the job runs, the
  file is restored (checked by ``n_restored`` against ``n_saved``) and deleted. A slot that was
  empty is erased again. This happens on success, failure and cancel alike.
* **second server** (``memory_server_url`` set): jobs go there (to ``memory_slot`` when set);
  nothing on the main server is touched.

Cancel (cancelling the task running :meth:`JobRunner.run`) closes the stream, which makes the
server drop the generation; the parked cache is still restored before the cancel propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtui.errors import KvtuiError
from kvtui.llama.client import LlamaClient
from kvtui.llama.errors import LlamaError
from kvtui.llama.models import SlotState, Timings
from kvtui.memory.settings import MemorySettings
from kvtui.store.names import private_name


class JobError(KvtuiError):
    """A job that could not run or could not leave the slots as they were; says what to do."""


class PromptTooLarge(JobError):
    """The prompt and the reply cannot fit the slot's context."""


Gate = contextlib.AbstractAsyncContextManager[Any]
"""What the service passes to hold routing off during a borrow: its ``asyncio.Lock``."""


@dataclass(frozen=True)
class TokenBudget:
    """A prompt's size against its slot: ``tokens`` + ``n_predict`` must fit ``n_ctx``."""

    tokens: int
    n_ctx: int
    n_predict: int
    warn_at: int

    @property
    def fits(self) -> bool:
        return self.n_ctx <= 0 or self.tokens + self.n_predict <= self.n_ctx

    @property
    def warning(self) -> str | None:
        if not self.fits:
            return (
                f"The prompt has {self.tokens} tokens; with {self.n_predict} for the reply it "
                f"does not fit the slot's {self.n_ctx}. Pick a shorter range, fewer previous "
                "memories, or a lower memory_n_predict."
            )
        if self.tokens > self.warn_at:
            return (
                f"The prompt has {self.tokens} tokens (over the warning threshold of "
                f"{self.warn_at}); the job will take a while."
            )
        return None


@dataclass(frozen=True)
class JobProgress:
    """One step of a running job. ``stage``: tokenizing, waiting, parking, generating,
    restoring, done."""

    stage: str
    detail: str = ""
    tokens: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True)
class JobResult:
    content: str
    stop_type: str | None
    truncated: bool
    timings: Timings
    slot: int | None
    mode: str
    """``utility``, ``borrowed`` or ``server`` (a second server)."""
    parked: str | None = None
    """The private file the borrowed slot's occupant was parked in (already deleted)."""
    n_parked: int = 0
    wall_s: float = 0.0


OnProgress = Callable[[JobProgress], None]


@dataclass(frozen=True)
class Borrowed:
    """A borrowed slot: its occupant parked in ``filename`` (None: it was empty)."""

    slot: int
    filename: str | None
    n_saved: int


@dataclass
class JobRunner:
    """Runs jobs on the main server (``client``) or the memory server from ``settings``."""

    client: LlamaClient
    settings: MemorySettings = field(default_factory=MemorySettings)
    gate: Gate | None = None
    busy: Callable[[int], bool] | None = None
    """True for a slot a routed generation is using or about to use (the service knows)."""
    wait_timeout: float = 600.0
    """Longest wait for an idle slot to borrow."""
    _memory_client: LlamaClient | None = field(default=None, init=False, repr=False)

    async def aclose(self) -> None:
        if self._memory_client is not None:
            await self._memory_client.aclose()
            self._memory_client = None

    async def __aenter__(self) -> JobRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def target(self) -> LlamaClient:
        """The client jobs go to (the memory server when one is set)."""
        url = self.settings.memory_server_url
        if url is None:
            return self.client
        if self._memory_client is None:
            self._memory_client = LlamaClient(url, api_key=self.settings.memory_api_key)
        return self._memory_client

    @property
    def mode(self) -> str:
        if self.settings.memory_server_url is not None:
            return "server"
        return "utility" if self.settings.memory_slot is not None else "borrowed"

    # -- size --------------------------------------------------------------------------------

    async def budget(self, prompt: str, n_predict: int | None = None) -> TokenBudget:
        """The server's token count of ``prompt`` against one slot's context."""
        client = self.target
        tokens = await client.tokenize(prompt, add_special=True)
        props = await client.props()
        n_ctx = props.n_ctx
        if self.settings.memory_slot is not None:
            for slot in await client.slots():
                if slot.id == self.settings.memory_slot and slot.n_ctx:
                    n_ctx = slot.n_ctx
        return TokenBudget(
            len(tokens),
            n_ctx,
            n_predict or self.settings.memory_n_predict,
            self.settings.memory_token_warning,
        )

    # -- running -----------------------------------------------------------------------------

    async def run(
        self,
        prompt: str,
        *,
        json_schema: dict[str, Any] | None = None,
        n_predict: int | None = None,
        on_progress: OnProgress | None = None,
    ) -> JobResult:
        """Run one job; raises ``PromptTooLarge``, ``JobError`` or ``LlamaError``."""
        started = time.monotonic()
        report = _Reporter(on_progress, started)
        n_predict = n_predict or self.settings.memory_n_predict
        report("tokenizing", "Counting the prompt's tokens")
        budget = await self.budget(prompt, n_predict)
        if not budget.fits:
            raise PromptTooLarge(budget.warning or "The prompt does not fit the slot's context.")
        body: dict[str, Any] = {"temperature": self.settings.memory_temperature}
        if json_schema is not None:
            body["json_schema"] = json_schema
        if self.mode != "borrowed":
            slot = self.settings.memory_slot
            content, final = await self._generate(prompt, slot, n_predict, body, report)
            return self._result(content, final, slot, self.mode, None, started)
        async with self._borrowed(report) as park:
            content, final = await self._generate(prompt, park.slot, n_predict, body, report)
        return self._result(content, final, park.slot, "borrowed", park, started)

    def borrow(
        self, on_progress: OnProgress | None = None
    ) -> contextlib.AbstractAsyncContextManager[Borrowed]:
        """Borrow an idle slot of the main server for a request kvtui forwards (the proxy's
        memory and summary jobs): ``async with runner.borrow() as b: … id_slot=b.slot …``.

        Inside the block the gate is held and the occupant is parked; on leaving (also on
        error or cancel) the occupant is restored and the private file deleted.
        """
        return self._borrowed(_Reporter(on_progress, time.monotonic()))

    @contextlib.asynccontextmanager
    async def _borrowed(self, report: _Reporter) -> AsyncIterator[Borrowed]:
        async with contextlib.AsyncExitStack() as held:
            park = await self._park(held, report)  # returns with the gate held
            try:
                yield park
            finally:
                await _shielded(self._unpark(park, report))

    def _result(
        self,
        content: str,
        final: dict[str, Any],
        slot: int | None,
        mode: str,
        park: Borrowed | None,
        started: float,
    ) -> JobResult:
        timings = final.get("timings")
        return JobResult(
            content=content,
            stop_type=final.get("stop_type") if isinstance(final.get("stop_type"), str) else None,
            truncated=bool(final.get("truncated")),
            timings=Timings.model_validate(timings) if isinstance(timings, dict) else Timings(),
            slot=slot,
            mode=mode,
            parked=park.filename if park else None,
            n_parked=park.n_saved if park else 0,
            wall_s=time.monotonic() - started,
        )

    async def _generate(
        self,
        prompt: str,
        slot: int | None,
        n_predict: int,
        body: dict[str, Any],
        report: _Reporter,
    ) -> tuple[str, dict[str, Any]]:
        report("generating", f"Generating in slot {slot}" if slot is not None else "Generating")
        pieces: list[str] = []
        final: dict[str, Any] = {}
        tokens = 0
        stream = self.target.completion_stream(  # an async generator: closeable
            prompt, n_predict=n_predict, id_slot=slot, cache_prompt=True, **body
        )
        try:
            async for event in stream:
                piece = event.get("content")
                if isinstance(piece, str) and piece:
                    pieces.append(piece)
                    tokens += 1
                    if tokens % 16 == 0:
                        report("generating", "Generating", tokens)
                if event.get("stop"):
                    final = event
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # closes the connection: the server stops
        return "".join(pieces), final

    # -- borrowing ---------------------------------------------------------------------------

    def _choose(self, slots: list[SlotState]) -> SlotState | None:
        idle = [s for s in slots if not s.is_processing and not (self.busy and self.busy(s.id))]
        idle.sort(key=lambda s: (s.n_prompt_tokens or 0, s.id))
        return idle[0] if idle else None

    async def _park(self, held: contextlib.AsyncExitStack, report: _Reporter) -> Borrowed:
        """Choose an idle slot and park its occupant; the gate stays held (in ``held``)."""
        client = self.client
        if client.save_dir is None:
            raise JobError(
                "Borrowing a slot needs kvtui's save directory (save_dir) to park its occupant; "
                "set save_dir, or reserve a slot for memory jobs (memory_slot)."
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        while True:
            gate = contextlib.AsyncExitStack()
            if self.gate is not None:
                await gate.enter_async_context(self.gate)
            try:
                chosen = self._choose(await client.slots())
                if chosen is not None:
                    park = await self._save_occupant(chosen, report)
                    held.push_async_exit(gate)
                    return park
            except BaseException:
                await gate.aclose()
                raise
            await gate.aclose()
            if loop.time() >= deadline:
                raise JobError(
                    f"No slot was idle for {self.wait_timeout:.0f} s, so the job did not run; "
                    "retry when the characters are quiet, or set memory_slot."
                )
            report("waiting", "Waiting for an idle slot")
            await asyncio.sleep(0.25)

    async def _save_occupant(self, slot: SlotState, report: _Reporter) -> Borrowed:
        if not slot.n_prompt_tokens:
            return Borrowed(slot.id, None, 0)
        filename = private_name("job")
        report("parking", f"Parking slot {slot.id} ({slot.n_prompt_tokens} tokens)")
        result = await self.client.save(slot.id, filename)
        if result.n_saved == 0:
            self._delete(filename)
            return Borrowed(slot.id, None, 0)
        return Borrowed(slot.id, filename, result.n_saved)

    async def _unpark(self, park: Borrowed, report: _Reporter) -> None:
        report("restoring", f"Restoring slot {park.slot}")
        if park.filename is None:
            await self.client.erase(park.slot)
            return
        try:
            result = await self.client.restore(park.slot, park.filename)
        except LlamaError as err:
            raise JobError(
                f"Slot {park.slot}'s cache could not be restored after the job ({err}); it is "
                f"kept in {park.filename} in the save directory. Load it into slot {park.slot} "
                "with `kvtui load` before that character's next turn."
            ) from err
        if result.n_restored != park.n_saved:
            raise JobError(
                f"Slot {park.slot} got {result.n_restored} tokens back, not the {park.n_saved} "
                f"parked; {park.filename} is kept in the save directory."
            )
        self._delete(park.filename)

    def _delete(self, filename: str) -> None:
        if self.client.save_dir is None:
            return
        with contextlib.suppress(OSError):
            Path(self.client.save_dir, filename).unlink()


class _Reporter:
    def __init__(self, callback: OnProgress | None, started: float) -> None:
        self.callback = callback
        self.started = started

    def __call__(self, stage: str, detail: str = "", tokens: int = 0) -> None:
        if self.callback is not None:
            self.callback(JobProgress(stage, detail, tokens, time.monotonic() - self.started))


async def _shielded(coro: Any) -> None:
    """Await ``coro`` to the end even when the surrounding task is cancelled meanwhile."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError
