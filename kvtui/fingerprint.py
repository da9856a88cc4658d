"""Prompt fingerprints: tell, without keeping the text, whether a prompt extends a saved one.

A :class:`PromptFingerprint` holds the prompt's length and a short BLAKE2b digest of every
``block``-character slice of it (the last one may be shorter). Comparing a new prompt's slices
with those digests says how far the two agree (``common_prefix_chars``, at block granularity)
and whether the fingerprinted prompt is a prefix of the new one (``is_prefix_of``, exact up to
digest collisions). Sidecars keep one (``SaveMeta.fingerprint``) so a save can be matched to the
chat and character whose prompt it holds; a 500,000-character prompt costs about 2,000 digests.

Chat Completion requests are fingerprinted on :func:`canonical_text` of their ``messages`` (each
message rendered with its role and name, then its text; images and other parts as markers), so
that appending messages appends text. Text-completion ``prompt`` strings are taken as they are;
token-id prompts are rendered as ``id,`` runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BLOCK_CHARS = 256
DIGEST_BYTES = 8
FORMAT_VERSION = 1


def _digest(text: str) -> str:
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


class FingerprintError(ValueError):
    """A stored fingerprint that cannot be read (wrong shape or version)."""


@dataclass(frozen=True)
class PromptFingerprint:
    """The length and per-block digests of one prompt text."""

    length: int
    block: int
    hashes: tuple[str, ...]

    @classmethod
    def of(cls, text: str, *, block: int = BLOCK_CHARS) -> PromptFingerprint:
        if block <= 0:
            raise ValueError("block must be positive")
        hashes = tuple(_digest(text[i : i + block]) for i in range(0, len(text), block))
        return cls(length=len(text), block=block, hashes=hashes)

    def _matching_blocks(self, text: str) -> int:
        """How many leading blocks of this fingerprint ``text`` reproduces exactly."""
        n = 0
        for i, digest in enumerate(self.hashes):
            start = i * self.block
            end = min(start + self.block, self.length)
            if end > len(text) or _digest(text[start:end]) != digest:
                break
            n += 1
        return n

    def common_prefix_chars(self, text: str) -> int:
        """Characters at the start that ``text`` and the fingerprinted prompt certainly share.

        Exact when one is a prefix of the other's blocks; otherwise the start of the first block
        that differs (a lower bound, at most ``block - 1`` short of the true value).
        """
        n = self._matching_blocks(text)
        if n == len(self.hashes):
            return self.length
        return min(n * self.block, len(text))

    def is_prefix_of(self, text: str) -> bool:
        """Whether the fingerprinted prompt is a prefix of ``text`` (or equal to it)."""
        return len(text) >= self.length and self._matching_blocks(text) == len(self.hashes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready object (what sidecars store)."""
        return {
            "v": FORMAT_VERSION,
            "length": self.length,
            "block": self.block,
            "hashes": list(self.hashes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> PromptFingerprint:
        """Read :meth:`to_json`'s object (or its JSON text); raises ``FingerprintError``."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as err:
                raise FingerprintError(f"not JSON: {err}") from err
        if not isinstance(data, Mapping) or data.get("v") != FORMAT_VERSION:
            raise FingerprintError("not a version-1 prompt fingerprint")
        length, block, hashes = data.get("length"), data.get("block"), data.get("hashes")
        ok = (
            isinstance(length, int)
            and isinstance(block, int)
            and block > 0
            and length >= 0
            and isinstance(hashes, list)
            and all(isinstance(h, str) for h in hashes)
            and len(hashes) == -(-length // block)
        )
        if not ok:
            raise FingerprintError("a prompt fingerprint with missing or inconsistent fields")
        assert isinstance(length, int) and isinstance(block, int) and isinstance(hashes, list)
        return cls(length=length, block=block, hashes=tuple(hashes))


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping):
        if isinstance(part.get("text"), str):
            return str(part["text"])
        return f"[{part.get('type', 'part')}]"
    return json.dumps(part, ensure_ascii=False, sort_keys=True, default=str)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(_part_text(p) for p in content)
    return _part_text(content)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence) and prompt and all(isinstance(t, int) for t in prompt):
        return "".join(f"{t}," for t in prompt)
    if isinstance(prompt, Sequence) and prompt:
        return _prompt_text(prompt[0])  # several prompts: the first is the one a slot keeps
    if isinstance(prompt, Mapping) and "prompt_string" in prompt:
        return _prompt_text(prompt["prompt_string"])
    return ""


def canonical_text(body: Mapping[str, Any]) -> str:
    """The text a generation request is fingerprinted on.

    Chat Completion (``messages``): per message ``\\x1e{role}[:{name}]\\x1f{text}``, in order,
    so a longer conversation's text starts with the shorter one's. Text completion: ``prompt``.
    """
    messages = body.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        out: list[str] = []
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            role = str(message.get("role", ""))
            name = message.get("name")
            head = f"{role}:{name}" if isinstance(name, str) and name else role
            out.append(f"\x1e{head}\x1f{_content_text(message.get('content'))}")
        return "".join(out)
    return _prompt_text(body.get("prompt"))
