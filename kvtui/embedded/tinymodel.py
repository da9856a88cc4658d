"""A deterministic tiny llama model, generated on the spot, for the demo and the tests.

No small GGUF model ships on a package registry, so kvtui writes its own: a 2-layer llama with
random weights (fixed seed) and a GPT-2 byte-level tokenizer, about half a megabyte. It speaks
gibberish, but it is a real model: llama-server loads it, fills slots with it, and saves and
restores its KV cache exactly as it would a large one.

Two details matter:
- Token id == byte value for ids 0..255, so any UTF-8 input tokenizes, and a list of ids 32..126
  is a prompt of exactly that many ASCII tokens.
- The output is biased to printable ASCII. A random model otherwise emits lone non-ASCII bytes,
  which some server builds reject with HTTP 500 ("does not match the expected Content-only
  format"). Embedding dimension 0 carries a constant +1 and the output row of every printable
  token has +5 there (-5 for the rest), so only printable ASCII is ever sampled.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
CONTEXT_LENGTH = 16384
SEED = 20261123

# A small English/Russian/Chinese corpus for the BPE merges, so common words become one token.
_CORPUS = (
    "hello world the forest party seraphina kael mira brann said smiled "
    "the glade the river the light the night where am i you are safe here "
    "привет мир лес река свет ночь 你好世界 森林 河流"
)
_N_MERGES = 123


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (the byte-level BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _train_merges(byte_char: dict[int, str]) -> list[tuple[str, str]]:
    """Plain BPE on the corpus, words split on spaces with the leading space kept (GPT-2 style)."""
    words: list[list[str]] = []
    for i, word in enumerate(_CORPUS.split(" ")):
        text = word if i == 0 else " " + word
        words.append([byte_char[b] for b in text.encode("utf-8")])
    merges: list[tuple[str, str]] = []
    for _ in range(_N_MERGES):
        pairs: Counter[tuple[str, str]] = Counter()
        for w in words:
            pairs.update(zip(w, w[1:], strict=False))
        if not pairs:
            break
        # Deterministic: highest count, then lexical order.
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        merged = best[0] + best[1]
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i : i + 2] = [merged]
                else:
                    i += 1
    return merges


def write_tiny_model(path: Path) -> Path:
    """Write the tiny model to ``path`` (idempotent: the same bytes every time) and return it."""
    import gguf
    import numpy as np

    byte_char = _bytes_to_unicode()
    char_byte = {c: b for b, c in byte_char.items()}
    merges = _train_merges(byte_char)
    tokens = [byte_char[b] for b in range(256)]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    bos_id = len(tokens)
    eos_id = bos_id + 1
    tokens += ["<|bos|>", "<|endoftext|>"]
    token_types = [gguf.TokenType.NORMAL] * bos_id + [gguf.TokenType.CONTROL] * 2
    n_vocab = len(tokens)

    def printable(tok: str) -> bool:
        if tok.startswith("<|"):
            return False
        raw = bytes(char_byte[c] for c in tok)
        return all(32 <= b < 127 for b in raw)

    rng = np.random.default_rng(SEED)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("kvtui-tiny")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    writer.add_bos_token_id(bos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(True)

    embd = rand(n_vocab, N_EMBD)
    embd[:, 0] += 1.0
    writer.add_tensor("token_embd.weight", embd)
    for layer in range(N_LAYER):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(prefix + name + ".weight", rand(N_EMBD, N_EMBD))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_gate.weight", rand(N_FF, N_EMBD))
        writer.add_tensor(prefix + "ffn_up.weight", rand(N_FF, N_EMBD))
        writer.add_tensor(prefix + "ffn_down.weight", rand(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = rand(n_vocab, N_EMBD)
    output[:, 0] = [5.0 if printable(t) else -5.0 for t in tokens]
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
