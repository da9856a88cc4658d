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
  empty is erased again. This happens on success, failure and cancel alike. The parking is
  :func:`kvtui.slots.lending.lent_slot`, the one the service's ``borrowed_slot`` uses too.
* **second server** (``memory_server_url`` set): jobs go there (to ``memory_slot`` when set);
  nothing on the main server is touched.

Cancel (cancelling the task running :meth:`JobRunner.run`) closes the stream, which makes the
server drop the generation; the parked cache is still restored before the cancel propagates.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from kvtui.errors import KvtuiError
from kvtui.llama.client import LlamaClient
from kvtui.llama.models import Timings
from kvtui.memory.settings import MemorySettings
from kvtui.slots.lending import Borrowed, Gate, LendError, lent_slot

__all__ = [
    "Borrowed",
    "Gate",
    "JobError",
    "JobProgress",
    "JobResult",
    "JobRunner",
    "OnProgress",
    "PromptTooLarge",
    "TokenBudget",
]


class JobError(KvtuiError):
    """A job that could not run or could not leave the slots as they were; says what to do."""


class PromptTooLarge(JobError):
    """The prompt and the reply cannot fit the slot's context."""


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
        lending = lent_slot(
            self.client,
            gate=self.gate,
            busy=self.busy,
            wait_timeout=self.wait_timeout,
            report=report,
        )
        try:
            async with lending as park:  # returns with the gate held, occupant parked
                yield park
        except LendError as err:
            raise JobError(err.message, err.hint) from err

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


class _Reporter:
    def __init__(self, callback: OnProgress | None, started: float) -> None:
        self.callback = callback
        self.started = started

    def __call__(self, stage: str, detail: str = "", tokens: int = 0) -> None:
        if self.callback is not None:
            self.callback(JobProgress(stage, detail, tokens, time.monotonic() - self.started))
