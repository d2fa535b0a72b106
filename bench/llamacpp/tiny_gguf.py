"""A tiny random-weight llama model in GGUF, for running the real ``llama-server`` in tests.

The text it writes is garbage; the serving path (slots, prompt cache, streaming, metrics) is
the real one. The vocabulary is SentencePiece style: ``<unk>``, ``<s>``, ``</s>``, the 256
byte-fallback pieces and a few hundred word and character pieces. Only the word and character
pieces get output weights: every other row of ``output.weight`` is zero, so their logit sits in
the middle of the others and top-k sampling never picks them. Generation therefore never stops
early on ``</s>`` and never emits half a UTF-8 character, so one output token is one streamed
chunk, as on a real model that is asked for more tokens than it wants to say.

    python -m bench.llamacpp.tiny_gguf OUT.gguf
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

LAYERS = 4
WIDTH = 256
HEADS = 4
FFN = 512
CONTEXT = 8192
SEED = 20250101
WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "as", "with", "by", "he", "at",
    "from", "his", "it", "an", "were", "are", "which", "this", "be", "or", "has", "had", "not",
    "but", "first", "one", "their", "its", "new", "after", "who", "they", "have", "her", "she",
    "two", "been", "other", "when", "there", "all", "during", "into", "school", "time", "may",
    "years", "more", "most", "only", "over", "city", "some", "world", "would", "where", "later",
    "up", "such", "used", "many", "can", "state", "about", "national", "out", "known",
    "university", "united", "then", "made", "these", "team", "three", "part", "while", "under",
    "him", "game", "war", "well", "system",
)  # fmt: skip
SPECIALS = ("<unk>", "<s>", "</s>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Pieces, their scores (longer pieces score higher, so they win merges) and types."""
    pieces: list[str] = list(SPECIALS)
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    words = dict.fromkeys("\u2581" + w for w in WORDS)
    chars = string.ascii_letters + string.digits + string.punctuation
    normal = ["\u2581", *words, *chars, *("\u2581" + c for c in chars)]
    pieces += list(dict.fromkeys(normal))
    types += [TokenType.NORMAL] * (len(pieces) - len(types))
    scores = [0.0] * (len(SPECIALS) + 256) + [float(len(p)) for p in pieces[len(SPECIALS) + 256 :]]
    return pieces, scores, [int(t) for t in types]


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.05).astype(np.float32)


def _add_tensors(writer: GGUFWriter, vocab_size: int, sampled_from: int) -> None:
    rng = np.random.default_rng(SEED)
    writer.add_tensor("token_embd.weight", _weights(rng, vocab_size, WIDTH))
    for i in range(LAYERS):
        block = f"blk.{i}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", _weights(rng, WIDTH, WIDTH))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", _weights(rng, FFN, WIDTH))
        writer.add_tensor(f"{block}.ffn_up.weight", _weights(rng, FFN, WIDTH))
        writer.add_tensor(f"{block}.ffn_down.weight", _weights(rng, WIDTH, FFN))
    writer.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=np.float32))
    output = (rng.standard_normal((vocab_size, WIDTH)) * 2.0).astype(np.float32)
    output[:sampled_from] = 0.0
    writer.add_tensor("output.weight", output)


def write_tiny_model(path: Path, name: str = "tiny") -> Path:
    """Write the model to ``path`` (deterministic: same bytes every time) and return it."""
    pieces, scores, types = vocabulary()
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    _add_tensors(writer, len(pieces), len(SPECIALS) + 256)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.llamacpp.tiny_gguf")
    parser.add_argument("out", type=Path)
    print(write_tiny_model(parser.parse_args().out))


if __name__ == "__main__":
    main()
