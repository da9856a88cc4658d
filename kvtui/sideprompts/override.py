"""A template's own server (and model): the memory jobs' "second server" mode, per template.

A template with ``server_url`` runs its jobs on that llama-server instead of the main one: the
memory job settings are copied with ``memory_server_url``/``memory_api_key`` set (so the job
runner is in its ``server`` mode and nothing on the main server is touched) and without the
main server's utility slot (a slot number of one server means nothing on another: the second
server picks). A ``model`` name is sent with every completion, which a llama-server serving
several models (router mode) uses to pick one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from kvtui.llama.client import LlamaClient
from kvtui.memory.jobs import JobRunner
from kvtui.memory.settings import MemorySettings
from kvtui.sideprompts.templates import SidePrompt


class ModelClient(LlamaClient):
    """A client that names ``model`` in every streamed completion it sends."""

    def __init__(self, base_url: str, *, model: str | None, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.model = model

    def completion_stream(
        self,
        prompt: str | list[int],
        *,
        n_predict: int = 1,
        id_slot: int | None = None,
        cache_prompt: bool = True,
        **extra: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        if self.model is not None:
            extra.setdefault("model", self.model)
        return super().completion_stream(
            prompt, n_predict=n_predict, id_slot=id_slot, cache_prompt=cache_prompt, **extra
        )


@dataclass
class OverrideRunner(JobRunner):
    """The job runner of a template with its own server (``settings.memory_server_url``)."""

    model: str | None = None
    transport: httpx.AsyncBaseTransport | None = None
    """How the override client reaches the server (tests record the requests through it)."""
    _override: ModelClient | None = field(default=None, init=False, repr=False)

    @property
    def target(self) -> LlamaClient:
        url = self.settings.memory_server_url
        if url is None:
            return self.client
        if self._override is None:
            self._override = ModelClient(
                url, model=self.model, api_key=self.settings.memory_api_key,
                transport=self.transport,
            )  # fmt: skip
        return self._override

    async def aclose(self) -> None:
        if self._override is not None:
            await self._override.aclose()
            self._override = None
        await super().aclose()


def override_settings(settings: MemorySettings, template: SidePrompt) -> MemorySettings:
    """The memory job settings for ``template``'s own server."""
    return settings.model_copy(
        update={
            "memory_server_url": template.server_url,
            "memory_api_key": template.api_key,
            "memory_slot": None,
        }
    )


def override_runner(
    base: JobRunner, settings: MemorySettings, template: SidePrompt,
    transport: httpx.AsyncBaseTransport | None = None,
) -> OverrideRunner:  # fmt: skip
    """A runner for ``template`` with the base runner's main client, gate and ``busy``."""
    return OverrideRunner(
        base.client, override_settings(settings, template), base.gate, base.busy,
        model=template.model, transport=transport,
    )  # fmt: skip
