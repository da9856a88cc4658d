"""Prefill parity: what llama-server prefilled per phase of the e2e session, with and without kvtui.

llama-server's own counter (``llamacpp:prompt_tokens_total`` in ``/metrics``) is read when each
phase of the scripted session begins (``Stack.mark``), so every prompt token it prefilled is
counted, whoever sent it: SillyTavern's requests, and anything kvtui sends on its own. A restart
of llama-server starts its counter again; a phase's tokens are summed per server run.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Mark:
    """llama-server's prompt-token counter when a phase of the session began."""

    phase: str
    server_run: int  # how many times llama-server had been restarted
    prompt_tokens: int  # ``llamacpp:prompt_tokens_total`` (every prompt token it prefilled)


def prompt_tokens_total(llama_url: str) -> int:
    """Every prompt token llama-server has prefilled since it started (its ``/metrics``)."""
    with urllib.request.urlopen(llama_url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("llamacpp:prompt_tokens_total"):
            return int(float(line.split()[-1]))
    raise AssertionError(f"llama-server's /metrics has no prompt_tokens_total:\n{text[:500]}")


def prefill_by_phase(marks: list[Mark], end: Mark) -> dict[str, int]:
    """Tokens llama-server prefilled in each phase (between its mark and the next one of the
    same server run: a restart starts the counter again), phases in session order."""
    out: dict[str, int] = {}
    for here, after in zip(marks, [*marks[1:], end], strict=True):
        out.setdefault(here.phase, 0)
        if here.server_run == after.server_run:
            out[here.phase] += after.prompt_tokens - here.prompt_tokens
    return out
