"""Checkpoint loaders: GGUF (the embedded default), HF safetensors directories, mlx-lm
quantized directories; :func:`load` picks one from the path.

Every loader validates every tensor before it builds anything and reports the first
problem as one :class:`CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import numpy as np

from ..llama.config import Config, ConfigError, load_hf_config, np_dtype
from ..llama.linears import DEFAULT_BITS, DEFAULT_GROUP_SIZE
from ..llama.weights import (
    LINEAR_NAMES,
    Weights,
    cast_weights,
    dequantize_weights,
    float_dtype,
    quant_mode,
    quantize_weights,
)
from .common import GGUF, HF, LAYER_NAMES, CheckpointError, default_model_path
from .gguf import load_gguf
from .safetensors_dirs import is_mlx_quantized_dir, load_hf_dir, load_mlx_dir, save_hf_dir

__all__ = [
    "CheckpointError",
    "default_model_path",
    "load",
    "load_config",
    "load_gguf",
    "load_hf_dir",
    "load_mlx_dir",
    "load_tokenizer",
    "tokenizer_cache_key",
    "save_hf_dir",
]


def load(path: str | Path | None = None, quant: str = "dense", dtype: str | None = None) -> tuple[Config, Weights]:
    """Load a GGUF file or an HF directory (default: the embedded SmolLM2-135M GGUF).

    ``dtype`` (float32, bfloat16, float16) is the compute dtype; None keeps the checkpoint's:
    a GGUF decodes to float32, a safetensors directory keeps its stored float dtype (an HF
    bf16 checkpoint runs in bf16, an mlx-community f16 one in f16). Float tensors are cast to
    it; packed scales and biases stay as stored and convert in the graph.

    ``quant="int4"`` quantizes the 7 linears of every layer at load time, after the cast
    (``quant.quantize(w, 64, 4)``, as ``mlx_lm.convert --dtype`` does). An mlx-lm quantized
    directory is already packed: ``"int4"`` keeps its codes (whatever its bits and groups,
    embedding included), ``"dense"`` (alias ``"fp32"``) dequantizes them on the host in the
    compute dtype.
    """
    quant = quant_mode(quant)
    path = default_model_path() if path is None else Path(path)
    if path.is_dir() and is_mlx_quantized_dir(path):
        cfg, weights = _in_dtype(*load_mlx_dir(path), dtype)
        # Already packed: "int4" runs the stored codes in-graph; "dense" their host dequant.
        return cfg, (weights if quant == "int4" else dequantize_weights(weights, cfg.dtype))
    if path.is_dir():
        cfg, weights = load_hf_dir(path)
    elif path.suffix == ".gguf":
        cfg, weights = load_gguf(path)
    elif not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    else:
        raise CheckpointError(f"{path}: expected a .gguf file or an HF checkpoint directory")
    cfg, weights = _in_dtype(cfg, weights, dtype)
    if quant == "int4":
        weights = _quantize_named(path, weights, GGUF if path.suffix == ".gguf" else HF)
    return cfg, weights


def load_config(path: str | Path | None = None) -> Config:
    """The :class:`Config` of a checkpoint (its ``config.json``, or a GGUF's metadata) alone."""
    path = default_model_path() if path is None else Path(path)
    if path.is_dir():
        try:
            return load_hf_config(path / "config.json")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    if path.suffix == ".gguf":
        from .gguf import _gguf_reader, gguf_config

        return gguf_config(_gguf_reader(path), path)
    raise CheckpointError(f"{path}: expected a .gguf file or an HF checkpoint directory")


def _in_dtype(cfg: Config, weights: Weights, dtype: str | None) -> tuple[Config, Weights]:
    """The config and weights in ``dtype`` (None: the dtype the float tensors are stored in)."""
    dtype = float_dtype(weights) if dtype is None else dtype
    np_dtype(dtype)  # one clear error for a name that is not a compute dtype
    return dataclasses.replace(cfg, dtype=dtype), cast_weights(weights, dtype)


def _quantize_named(path: Path, weights: Weights, fmt: int) -> Weights:
    """quantize_weights, with a failure reported against the checkpoint's tensor name."""
    for i, layer in enumerate(weights.layers):
        for field in LINEAR_NAMES:
            shape = np.shape(getattr(layer, field))
            if shape[-1] % DEFAULT_GROUP_SIZE:
                name = LAYER_NAMES[field][fmt].format(i=i)
                raise CheckpointError(
                    f"{path}: tensor {name!r} of shape {shape} cannot be quantized: its input "
                    f"dimension {shape[-1]} is not divisible by group_size {DEFAULT_GROUP_SIZE}"
                )
    return quantize_weights(weights, DEFAULT_GROUP_SIZE, DEFAULT_BITS)


def load_tokenizer(path: str | Path | None = None, cached: bool = True):
    """The checkpoint's own tokenizer via transformers (GGUF-embedded or tokenizer files). Where
    torch is not installed (transformers' GGUF reader imports it) a GGUF's tokenizer is built by
    transformers' own GGUF converter from metadata the ``gguf`` package reads
    (:func:`gguf_tokenizer_without_torch`).

    A GGUF's tokenizer takes ~8 s to build (its 49k-token vocabulary and merges parsed field by
    field, twice by transformers) and ~0.6 s to load saved, the file's digest included: with
    ``cached``, the tokenizer built once is kept in the artifact cache (``.cache/tokenizer/``)
    under the file's SHA-256 and the versions of transformers and tokenizers, its saved files
    checked by digest on every hit (tests/loaders/test_checkpoints.py holds the cached tokenizer
    equal to a fresh build)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = default_model_path() if path is None else Path(path)
    try:
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path))
        return _cached_gguf_tokenizer(path) if cached and path.is_file() else _gguf_tokenizer(path)
    except ImportError as e:
        raise CheckpointError(
            f"{path}: transformers cannot read this GGUF's tokenizer ({e}); pass --token-ids"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: no usable tokenizer ({e}); pass --token-ids") from None


def _gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError:
        if importlib.util.find_spec("torch") is not None:
            raise
        return gguf_tokenizer_without_torch(path)


def _cached_gguf_tokenizer(path: Path):
    """:func:`_gguf_tokenizer`, built once per file content and versions: its ``save_pretrained``
    files are one cache entry (a JSON of name -> text), loaded back through AutoTokenizer."""
    import json
    import tempfile

    from transformers import AutoTokenizer

    from ..backends import cache

    def produce() -> bytes:
        with tempfile.TemporaryDirectory() as d:
            _gguf_tokenizer(path).save_pretrained(d)
            return json.dumps({f.name: f.read_text() for f in sorted(Path(d).iterdir())}).encode()

    entry, _ = cache.cached_file("tokenizer", tokenizer_cache_key(path), ".tokenizer", produce)  # .json: the sidecar
    with tempfile.TemporaryDirectory() as d:
        for name, text in json.loads(entry.read_bytes()).items():
            (Path(d) / name).write_text(text)
        return AutoTokenizer.from_pretrained(d)


def tokenizer_cache_key(path: Path) -> dict:
    """What a GGUF's cached tokenizer depends on: the file's bytes, the builders' versions."""
    from .. import env
    from ..backends import cache

    return {
        "gguf_sha256": cache.file_sha256(path),
        "transformers": env.version("transformers"),
        "tokenizers": env.version("tokenizers"),
        "builder": "transformers" if importlib.util.find_spec("torch") is not None else "gguf-without-torch",
        "source": cache.source_digest("checkpoints/__init__.py"),
    }


# transformers' GGUF tokenizer: the metadata keys it reads (its GGUF_TOKENIZER_MAPPING) and the
# special tokens it names from their ids (as its get_gguf_tokenizer does).
_GGUF_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                        "pad_token": "padding_token_id"}  # fmt: skip


def gguf_tokenizer_without_torch(path: Path):
    """The tokenizer ``AutoTokenizer.from_pretrained(..., gguf_file=...)`` builds, without torch:
    the metadata read by the ``gguf`` package, converted by transformers' own GGUF converter
    (tests/loaders/test_checkpoints.py holds it equal to transformers' where torch is installed)."""
    from gguf import GGUFReader
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    fields = GGUFReader(str(path)).fields
    metadata = {k: f.contents() for k, f in fields.items() if k.startswith(("tokenizer.", "general.architecture"))}
    grouped = {
        group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in metadata}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)
    for name, key in _GGUF_SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
