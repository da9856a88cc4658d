"""What every save kvtui wrote really holds, asked of the real llama-server.

After the session (kvtui and SillyTavern stopped, llama-server still up), each save file is
restored into a slot of the server and one of the session's own requests for the chat and
character its sidecar names is replayed into that slot (``n_predict`` 1, ``cache_prompt``):
llama-server's ``cache_n`` says how many of the restored tokens are that request's prompt. A
save that holds its own chat's prompt covers all its tokens but the reply generated after that
prompt; one that holds another chat's (or character's) prompt shares at most the card's prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvtui.fingerprint import PromptFingerprint, canonical_text
from kvtui.store.names import is_private_name

if TYPE_CHECKING:
    from tests.e2e.runner import Gen
    from tests.e2e.stack import Stack

PROBE_SLOT = 0
MAX_PROBES = 3  # own requests tried per save (the best fingerprint match first)
#: Restored tokens a save's own prompt may leave uncovered: the reply generated after it (the
#: session's max_tokens, 16), the prompt's last token (always evaluated again) and a few tokens
#: a reply re-tokenised in the next prompt can differ by.
MARGIN = 16 + 1 + 4


@dataclass(frozen=True)
class SaveProbe:
    """One save restored into the server and checked against its own chat's requests."""

    file: str
    chat: str
    character: str
    n_restored: int
    cache_n: int  # the most of it one of its own chat and character's requests reused
    gen: int | None  # that request (the session's generation number)
    tried: int  # how many of its own requests were replayed

    @property
    def covered(self) -> bool:
        return self.n_restored > 0 and self.cache_n >= self.n_restored - MARGIN


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    from tests.e2e.runner import post_json

    return post_json(url, body, timeout=300)


def _replay(llama_url: str, gen: Gen) -> int:
    """``cache_n`` of ``gen``'s own request replayed into the probe slot (one token made)."""
    body = {k: v for k, v in gen.body.items() if k != "kvtui"}
    body.update(id_slot=PROBE_SLOT, cache_prompt=True, stream=False, n_predict=1, max_tokens=1)
    path = "/completion" if gen.expected.api == "text" else "/v1/chat/completions"
    reply = _post(llama_url + path, body)
    timings = reply.get("timings")
    if not isinstance(timings, dict):
        raise AssertionError(f"llama-server gave no timings for a replayed request: {reply}")
    return int(timings.get("cache_n", 0))


def _restore(llama_url: str, filename: str) -> int:
    url = f"{llama_url}/slots/{PROBE_SLOT}?action=restore"
    return int(_post(url, {"filename": filename}).get("n_restored", 0))


def probe_saves(stack: Stack, gens: list[Gen]) -> list[SaveProbe]:
    """Restore every (non-private) save of the session and measure what it holds."""
    assert stack.llama is not None
    url = stack.llama.url
    out: list[SaveProbe] = []
    for side in sorted(stack.save_dir.glob("*.bin.json")):
        name = side.name[: -len(".json")]
        if is_private_name(name) or not (stack.save_dir / name).is_file():
            continue
        meta = json.loads(side.read_text(encoding="utf-8"))
        chat, character = str(meta.get("chat")), str(meta.get("character"))
        own = [g for g in gens if (g.expected.chat, g.expected.character) == (chat, character)]
        fp = meta.get("fingerprint")
        if fp is not None:
            fingerprint = PromptFingerprint.from_json(fp)
            own.sort(key=lambda g: (-fingerprint.common_prefix_chars(canonical_text(g.body)),
                                    -g.n))  # fmt: skip
        else:
            own.sort(key=lambda g: -g.n)
        best, best_gen, tried, n_restored = 0, None, 0, 0
        for gen in own[:MAX_PROBES]:
            n_restored = _restore(url, name)
            tried += 1
            cached = _replay(url, gen)
            if cached > best:
                best, best_gen = cached, gen.n
            if best >= n_restored - MARGIN:
                break
        if not own:
            n_restored = _restore(url, name)
        out.append(SaveProbe(name, chat, character, n_restored, best, best_gen, tried))
    _post(f"{url}/slots/{PROBE_SLOT}?action=erase", {})
    return out
