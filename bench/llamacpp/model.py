"""A tiny random-weight GGUF model that llama.cpp serves for real, written with ``gguf``.

Architecture ``llama``, a SentencePiece-style vocabulary (letters, ``▁``, a few common pairs and
256 byte-fallback tokens), F32 tensors, a chat template, and mean pooling declared so that an
embeddings request gets one vector per input. The text it writes is garbage; the serving path
(tokenizer, prompt cache, slots, sampling, streaming) is llama.cpp's own.

Two properties make it usable by tests: it never ends a reply early and never writes a byte
token, so a request yields exactly ``max_tokens`` ASCII tokens. Residual channel 0 carries a
constant that no layer writes to (every output projection's row 0 is zero), and the output
projection gives that channel a large negative weight for the special and byte tokens only.

``python -m bench.llamacpp.model [DIR] [--layers N --width N --heads N --ffn N --context N]``
writes the model (cached by its parameters) and prints its path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

from .paths import cache_root

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
SPECIALS = ("<unk>", "<s>", "</s>")
PAIRS = ("th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPACE = "\u2581"  # SentencePiece's word-start mark
BLOCKED_WEIGHT = -4.0  # channel-0 weight of the tokens never sampled
LAYOUT = 2  # bump when what write() puts in the file changes: cached files are then rewritten

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TinyModel:
    """The model's shape; the defaults give a 327-token vocabulary and about 17 MB."""

    layers: int = 4
    width: int = 256
    heads: int = 4
    ffn: int = 1024
    context: int = 8192
    seed: int = 0

    def key(self) -> str:
        """A short name that changes whenever a parameter (or the layout) changes."""
        text = repr((LAYOUT, sorted(asdict(self).items()), CHAT_TEMPLATE, PAIRS))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, their scores and their types: specials, 256 bytes, then text pieces."""
    pieces = [SPACE, *LETTERS, *(SPACE + c for c in LETTERS), *PAIRS]
    tokens = [*SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(pieces)
    # SentencePiece merges the highest-scored pair first: longer pieces score higher.
    scores = [0.0] * (len(SPECIALS) + 256) + [float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def _weights(spec: TinyModel, n_vocab: int, n_blocked: int) -> dict[str, Floats]:
    rng = np.random.default_rng(spec.seed)

    def normal(*shape: int) -> Floats:
        return rng.normal(0.0, 0.02, size=shape).astype(np.float32)

    embed = normal(n_vocab, spec.width)
    embed[:, 0] = 1.0  # the constant channel (see the module docstring)
    output = normal(n_vocab, spec.width)
    output[:, 0] = 0.0
    output[:n_blocked, 0] = BLOCKED_WEIGHT
    tensors = {
        "token_embd.weight": embed,
        "output_norm.weight": np.ones(spec.width, dtype=np.float32),
        "output.weight": output,
    }
    for i in range(spec.layers):
        attn_out, ffn_down = normal(spec.width, spec.width), normal(spec.width, spec.ffn)
        attn_out[0, :] = 0.0  # no layer writes to the constant channel
        ffn_down[0, :] = 0.0
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(spec.width, dtype=np.float32),
            f"blk.{i}.attn_q.weight": normal(spec.width, spec.width),
            f"blk.{i}.attn_k.weight": normal(spec.width, spec.width),
            f"blk.{i}.attn_v.weight": normal(spec.width, spec.width),
            f"blk.{i}.attn_output.weight": attn_out,
            f"blk.{i}.ffn_norm.weight": np.ones(spec.width, dtype=np.float32),
            f"blk.{i}.ffn_gate.weight": normal(spec.ffn, spec.width),
            f"blk.{i}.ffn_up.weight": normal(spec.ffn, spec.width),
            f"blk.{i}.ffn_down.weight": ffn_down,
        }
    return tensors


def write(spec: TinyModel, path: Path) -> None:
    """Write the GGUF file (atomically: a reader never sees half a model)."""
    tokens, scores, types = vocabulary()
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_block_count(spec.layers)
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.width)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.heads)
    writer.add_rope_dimension_count(spec.width // spec.heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    for name, tensor in _weights(spec, len(tokens), len(SPECIALS) + 256).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, path)


def ensure(spec: TinyModel | None = None, directory: Path | None = None) -> Path:
    """The model file for ``spec``, written on first use into ``directory`` (default: the
    cache beside the built server)."""
    spec = spec or TinyModel()
    folder = directory or cache_root() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny-{spec.key()}.gguf"
    if not path.exists():
        write(spec, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.llamacpp.model")
    parser.add_argument("directory", nargs="?", type=Path)
    default = TinyModel()
    for name in ("layers", "width", "heads", "ffn", "context", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(default, name))
    args = parser.parse_args()
    spec = TinyModel(args.layers, args.width, args.heads, args.ffn, args.context, args.seed)
    print(ensure(spec, args.directory))


if __name__ == "__main__":
    main()
