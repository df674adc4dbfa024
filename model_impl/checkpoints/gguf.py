"""GGUF checkpoints (the embedded default model): metadata to :class:`Config`, tensors decoded
to float32, llama.cpp's q/k row permutation undone."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..llama.config import Config, ConfigError
from ..llama.weights import Weights
from .common import GGUF, CheckpointError, assemble, checked


class _TruncatedTensor(Exception):
    def __init__(self, name: str, end: int, size: int):
        super().__init__(f"tensor {name!r} is truncated: its data ends at byte {end}, the file has {size}")


def _checked_reader_class():
    """gguf's reader, checking every tensor's extent against the file before it maps the data
    (the stock reader fails on a short file with a reshape error that names no tensor)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

    class CheckedReader(GGUFReader):
        def _build_tensors(self, start_offs, fields):
            size = len(self.data)
            for field in fields:
                _, name, _, dims, raw_dtype, offset = field.parts
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_dtype[0]))]
                end = int(start_offs + offset[0]) + int(np.prod(dims)) * type_size // block
                if end > size:
                    raise _TruncatedTensor(bytes(name).decode(), end, size)
            super()._build_tensors(start_offs, fields)

    return CheckedReader


def _gguf_reader(path: Path):
    """The file's reader, read once per process while the file stays the same (the ``gguf``
    package parses every metadata field in Python: ~3.5 s for the embedded model's vocabulary)."""
    try:
        st = Path(path).stat()
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e.strerror})") from None
    return _gguf_reader_of(Path(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=4)
def _gguf_reader_of(path: Path, size: int, mtime_ns: int, inode: int):
    try:
        reader = _checked_reader_class()(path)
    except _TruncatedTensor as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # the reader raises many kinds on a damaged file
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    for t in reader.tensors:
        if t.data.nbytes != t.n_bytes:
            raise CheckpointError(f"{path}: tensor {t.name!r} is truncated ({t.data.nbytes} of {t.n_bytes} bytes)")
    return reader


def _gguf_field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader, path) -> Config:
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: general.architecture is {arch!r}, expected 'llama'")

    def need(key):
        value = _gguf_field(reader, f"llama.{key}")
        if value is None:
            raise CheckpointError(f"{path}: metadata llama.{key} is missing")
        return value

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    names = {t.name for t in reader.tensors}
    vocab = _gguf_field(reader, "llama.vocab_size") or len(_gguf_field(reader, "tokenizer.ggml.tokens"))
    eos = _gguf_field(reader, "tokenizer.ggml.eos_token_id")
    rope_dims = _gguf_field(reader, "llama.rope.dimension_count", hidden // heads)
    try:
        return Config(
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(need("feed_forward_length")),
            num_layers=int(need("block_count")),
            num_heads=heads,
            num_kv_heads=int(_gguf_field(reader, "llama.attention.head_count_kv", heads)),
            head_dim=int(rope_dims),
            rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(_gguf_field(reader, "llama.rope.freq_base", 10000.0)),
            rope_scaling=None,
            tie_word_embeddings="output.weight" not in names,
            max_position_embeddings=int(need("context_length")),
            bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_ids=() if eos is None else (int(eos),),
        )
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (its RoPE pairs (2j, 2j+1); HF pairs (j, j+d/2))."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str | Path) -> tuple[Config, Weights]:
    from gguf import dequantize

    path = Path(path)
    reader = _gguf_reader(path)
    cfg = gguf_config(reader, path)
    tensors = {t.name: t for t in reader.tensors}

    def get(name, shape):
        t = tensors.get(name)
        if t is None:
            raise CheckpointError(f"{path}: tensor {name!r} is missing")
        # GGUF lists dims fastest-first; numpy wants them slowest-first.
        gguf_shape = tuple(int(d) for d in reversed(t.shape))
        if gguf_shape != tuple(shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {gguf_shape}, expected {tuple(shape)}")
        try:
            w = dequantize(t.data, t.tensor_type).reshape(shape)
        except Exception as e:
            raise CheckpointError(f"{path}: tensor {name!r} cannot be decoded: {e}") from None
        if ".attn_q." in name:
            w = _unpermute_rope_rows(w, cfg.num_heads)
        elif ".attn_k." in name:
            w = _unpermute_rope_rows(w, cfg.num_kv_heads)
        # GGUF blocks (Q4_1, Q8_0, F16, ...) decode to float32: that is "the model as stored".
        return checked(path, name, np.asarray(w, np.float32), shape)

    return cfg, assemble(cfg, get, GGUF)
