"""Whether a request with earlier turns' recall kept in it still fits the slot's context.

``recall_keep_in_history`` puts back up to ``recall_keep_budget`` tokens that SillyTavern did not
count when it sized the prompt to its context. Before such a request is forwarded, kvtui checks
the prompt and the reply it asks for against the slot's context (``n_ctx`` of one slot): first
with a bound that needs no server (a token is at least one byte of UTF-8), then with the
characters per token of the character's last turn and a margin, and only when neither settles it
with the server's own tokenizer (a Chat Completion body rendered by its chat template first). A
request that would not fit is sent without the kept recall
(:attr:`kvtui.recall.RecallOutcome.fallback`). When the tokenizer cannot answer, the answer is
no; a server that does not report its context (``n_ctx``) cannot be checked against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvtui.service import KvService

_MARGIN = 1.15
"""How far a prompt's tokens may exceed the estimate from the last turn's characters per token
(the same chat and tokenizer: the new text is more of the same)."""
_PER_MESSAGE = 16
"""Template tokens a Chat Completion message may add around its content (a generous bound)."""


@dataclass(frozen=True)
class Fit:
    ok: bool
    tokens: int | None = None  # the prompt's, when they were counted
    reply: int = 0  # tokens the request asks to generate
    limit: int | None = None  # the slot's context


def reply_tokens(body: Mapping[str, Any]) -> int:
    for key in ("n_predict", "max_tokens", "max_new_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


async def prompt_fits(
    service: KvService,
    body: Mapping[str, Any],
    chars_per_token: float | None = None,
    *,
    spare: int = 0,
) -> Fit:
    """Whether ``body`` and its reply (and ``spare`` tokens more) fit one slot.
    ``chars_per_token``: measured on the character's last turn; an estimate from it with a
    margin settles most requests unasked."""
    limit = service.snapshot().n_ctx
    reply = reply_tokens(body) + spare
    if not limit:
        return Fit(True, reply=reply)  # the server did not say: nothing to check against
    prompt, messages = body.get("prompt"), body.get("messages")
    if isinstance(prompt, str):
        bound = len(prompt.encode("utf-8", "surrogatepass")) + 2
    elif isinstance(messages, list):
        text = json.dumps(messages, ensure_ascii=False).encode("utf-8", "surrogatepass")
        bound = len(text) + _PER_MESSAGE * len(messages)
    else:
        return Fit(True, reply=reply, limit=limit)
    if bound + reply <= limit:
        return Fit(True, reply=reply, limit=limit)
    if chars_per_token and isinstance(prompt, str):
        estimate = len(prompt) / chars_per_token * _MARGIN
        if estimate + reply <= limit:
            return Fit(True, reply=reply, limit=limit)
    try:
        if not isinstance(prompt, str):
            prompt = await service.render_chat(list(messages or []))
        tokens = len(await service.tokenize(prompt, add_special=True))
    except Exception:  # noqa: BLE001 - unknown: the safe answer
        return Fit(False, reply=reply, limit=limit)
    return Fit(tokens + reply <= limit, tokens, reply, limit)
