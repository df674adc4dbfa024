"""The model's weight pytree: per-layer linears (float or any int4 form), norms, embedding.

Also what is derived from a tree alone: shapes for a config, shape-only specs (export needs
no data), seeded synthetic weights, load-time quantization and host dequantization, and
byte counts.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .. import quant as quant_mod
from .config import Config
from .linears import (
    DEFAULT_BITS,
    DEFAULT_GROUP_SIZE,
    Int4Form,
    QuantizedLinear,
    quantized_linear_spec,
    tensor_bytes,
)

LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
QUANT_MODES = ("fp32", "int4")


Linear = np.ndarray | jax.Array | Int4Form


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Layer:
    attn_norm: np.ndarray  # [hidden]
    wq: Linear  # [heads * head_dim, hidden]
    wk: Linear  # [kv_heads * head_dim, hidden]
    wv: Linear  # [kv_heads * head_dim, hidden]
    wo: Linear  # [hidden, heads * head_dim]
    mlp_norm: np.ndarray  # [hidden]
    w_gate: Linear  # [intermediate, hidden]
    w_up: Linear  # [intermediate, hidden]
    w_down: Linear  # [hidden, intermediate]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Weights:
    embed: Linear  # [vocab, hidden]; packed in MLX checkpoints that quantize the embedding
    layers: tuple[Layer, ...]
    final_norm: np.ndarray  # [hidden]
    lm_head: Linear | None  # [vocab, hidden]; None when tied to embed


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Per-layer linear shapes ``[out, in]`` and norm shapes for ``cfg``."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    return {
        "attn_norm": (h,),
        "wq": (cfg.q_size, h),
        "wk": (cfg.kv_size, h),
        "wv": (cfg.kv_size, h),
        "wo": (h, cfg.q_size),
        "mlp_norm": (h,),
        "w_gate": (i, h),
        "w_up": (i, h),
        "w_down": (h, i),
    }


def map_linears(weights: Weights, fn) -> Weights:
    """Apply ``fn`` to each of the 7 per-layer linears; embedding and norms untouched."""
    layers = tuple(
        dataclasses.replace(layer, **{n: fn(getattr(layer, n)) for n in LINEAR_NAMES}) for layer in weights.layers
    )
    return dataclasses.replace(weights, layers=layers)


def quantize_weights(weights: Weights, group_size: int = DEFAULT_GROUP_SIZE, bits: int = DEFAULT_BITS) -> Weights:
    """Quantize the 7 linears of every layer with :func:`quant.quantize`."""

    def q(w):
        if isinstance(w, QuantizedLinear):
            return w
        packed, scales, biases = quant_mod.quantize(np.asarray(w, np.float32), group_size, bits)
        return QuantizedLinear(packed, scales, biases, group_size, bits)

    return map_linears(weights, q)


def dequantize_weights(weights: Weights) -> Weights:
    """Host dequant of every packed tensor to float32: the fp32-graph twin of ``weights``."""

    def deq(w):
        return w.dequantize() if isinstance(w, QuantizedLinear) else w

    out = map_linears(weights, deq)
    return dataclasses.replace(out, embed=deq(out.embed), lm_head=None if out.lm_head is None else deq(out.lm_head))


def nbytes(weights: Weights) -> int:
    """Bytes the whole tree occupies on a device (see :func:`linears.tensor_bytes`)."""
    return tensor_bytes(weights)


def linear_bytes(weights: Weights) -> int:
    """Bytes of the 7 linears of every layer, in whatever form they are."""
    return sum(tensor_bytes(getattr(layer, n)) for layer in weights.layers for n in LINEAR_NAMES)


def quantized_linears(weights: Weights) -> int:
    """How many of the per-layer linears are in some int4 form (what the analyzers must see)."""
    return sum(isinstance(getattr(layer, n), Int4Form) for layer in weights.layers for n in LINEAR_NAMES)


def synthetic(cfg: Config, seed: int = 0) -> Weights:
    """Seeded random float32 weights for any config (RMS of activations stays ~1)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    shapes = expected_shapes(cfg)
    layers = []
    for _ in range(cfg.num_layers):
        fields = {}
        for name, shape in shapes.items():
            if name.endswith("norm"):
                fields[name] = (1.0 + normal(*shape, std=0.1)).astype(np.float32)
            else:
                fields[name] = normal(*shape, std=1.0 / np.sqrt(shape[1]))
        layers.append(Layer(**fields))
    embed = normal(cfg.vocab_size, cfg.hidden_size, std=0.5)
    head = (
        None if cfg.tie_word_embeddings else normal(cfg.vocab_size, cfg.hidden_size, std=1.0 / np.sqrt(cfg.hidden_size))
    )
    final_norm = (1.0 + normal(cfg.hidden_size, std=0.1)).astype(np.float32)
    return Weights(embed=embed, layers=tuple(layers), final_norm=final_norm, lm_head=head)


def specs(cfg: Config, quant: str = "fp32", group_size: int = DEFAULT_GROUP_SIZE, bits: int = DEFAULT_BITS) -> Weights:
    """Shape-only weights (``jax.ShapeDtypeStruct`` leaves): export and compile need no data."""
    if quant not in QUANT_MODES:
        raise ValueError(f"quant mode must be one of {QUANT_MODES}, got {quant!r}")
    f32 = np.dtype(np.float32)

    def leaf(shape, dtype=f32):
        return jax.ShapeDtypeStruct(tuple(shape), dtype)

    def linear(shape):
        return leaf(shape) if quant == "fp32" else quantized_linear_spec(shape, group_size, bits)

    shapes = expected_shapes(cfg)
    layers = tuple(
        Layer(**{n: linear(s) if n in LINEAR_NAMES else leaf(s) for n, s in shapes.items()})
        for _ in range(cfg.num_layers)
    )
    head = None if cfg.tie_word_embeddings else leaf((cfg.vocab_size, cfg.hidden_size))
    return Weights(leaf((cfg.vocab_size, cfg.hidden_size)), layers, leaf((cfg.hidden_size,)), head)


def linear_weight_elements(cfg: Config) -> set[int]:
    """Element counts (out * in) of the quantized linears: the size of a rebuilt weight."""
    shapes = expected_shapes(cfg)
    return {shapes[n][0] * shapes[n][1] for n in LINEAR_NAMES}


def linear_weight_bytes_f32(cfg: Config) -> int:
    """Bytes of all quantized linears rebuilt as float32 (what full materialization writes)."""
    shapes = expected_shapes(cfg)
    return 4 * cfg.num_layers * sum(shapes[n][0] * shapes[n][1] for n in LINEAR_NAMES)
