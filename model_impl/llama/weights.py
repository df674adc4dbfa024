"""The model's weight pytree: per-layer linears (float or any int4 form), norms, embedding.

Also what is derived from a tree alone: shapes for a config, shape-only specs (export needs
no data), seeded synthetic weights, load-time quantization and host dequantization, and
byte counts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import quant as quant_mod
from .config import Config, np_dtype
from .linears import (
    DEFAULT_BITS,
    DEFAULT_GROUP_SIZE,
    Int4Form,
    LinearForm,
    QuantizedLinear,
    quantized_linear_spec,
    tensor_bytes,
)

LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
QUANT_MODES = ("dense", "int4")
QUANT_ALIASES = {"fp32": "dense"}  # the name before half precision: dense weights


def quant_mode(name: str) -> str:
    """``dense`` or ``int4`` (``fp32`` is accepted for ``dense``); one error for anything else."""
    mode = QUANT_ALIASES.get(name, name)
    if mode not in QUANT_MODES:
        raise ValueError(f"quant mode must be one of {QUANT_MODES} (or {', '.join(QUANT_ALIASES)}), got {name!r}")
    return mode


MODE_LABELS = ("fp32", "int4", "bf16", "int4-bf16", "f16", "int4-f16")


def parse_mode_label(label: str) -> tuple[str, str]:
    """``(quant, dtype)`` of a :func:`mode_label`: ``"int4-bf16"`` -> ``("int4", "bfloat16")``."""
    for quant in QUANT_MODES:
        for dtype in ("float32", "bfloat16", "float16"):
            if mode_label(quant, dtype) == label:
                return quant, dtype
    raise ValueError(f"unknown weight mode {label!r}; known: {MODE_LABELS}")


def mode_label(quant: str, dtype: str) -> str:
    """How results and reports name a weight mode: ``fp32``, ``bf16``, ``f16`` for dense weights,
    ``int4`` (float32 compute), ``int4-bf16``, ``int4-f16``."""
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "f16"}[dtype]
    if quant_mode(quant) == "dense":
        return short
    return "int4" if dtype == "float32" else f"int4-{short}"


Linear = np.ndarray | jax.Array | Int4Form

# Linears that read the same input, stacked by output rows at load time (:func:`stack_projections`):
# one GEMV per stack instead of three and two, the fused QKV and gate/up projections serving
# engines ship. stack -> its parts, in row order.
STACKED = {"w_qkv": ("wq", "wk", "wv"), "w_gate_up": ("w_gate", "w_up")}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Layer:
    """One decoder layer. Unstacked (as loaded): the 7 linears of :data:`LINEAR_NAMES`, the
    stacks None. Stacked: ``w_qkv`` and ``w_gate_up`` hold their parts' rows, the parts None."""

    attn_norm: np.ndarray  # [hidden]
    wq: Linear | None  # [heads * head_dim, hidden]
    wk: Linear | None  # [kv_heads * head_dim, hidden]
    wv: Linear | None  # [kv_heads * head_dim, hidden]
    wo: Linear  # [hidden, heads * head_dim]
    mlp_norm: np.ndarray  # [hidden]
    w_gate: Linear | None  # [intermediate, hidden]
    w_up: Linear | None  # [intermediate, hidden]
    w_down: Linear  # [hidden, intermediate]
    w_qkv: Linear | None = None  # [heads * head_dim + 2 * kv_heads * head_dim, hidden]: wq | wk | wv
    w_gate_up: Linear | None = None  # [2 * intermediate, hidden]: w_gate | w_up


def linear_fields(layer: Layer) -> tuple[str, ...]:
    """The names of the linears ``layer`` holds: the 7 of :data:`LINEAR_NAMES`, or with the
    stacks of :data:`STACKED` in place of their parts."""
    return tuple(n for n in (*LINEAR_NAMES, *STACKED) if getattr(layer, n) is not None)


def stack_rows(*parts):
    """One linear whose rows are ``parts``' rows in order: float arrays (or shape specs)
    concatenated, or MLX's packed words with their scales and biases (rows quantize
    independently, so the stack dequantizes to the stacked dequants, bit for bit). A weight
    already converted to another representation is refused: stack the checkpoint's form."""
    first = parts[0]
    if isinstance(first, QuantizedLinear):
        same = lambda p: isinstance(p, QuantizedLinear) and (p.group_size, p.bits) == (first.group_size, first.bits)  # noqa: E731
        if not all(map(same, parts)):
            raise ValueError("stack_rows: the parts differ in form, group size or bits")
        cat = [_cat_rows([getattr(p, f) for p in parts]) for f in ("packed", "scales", "biases")]
        return QuantizedLinear(*cat, first.group_size, first.bits)
    if isinstance(first, LinearForm) or not all(type(p) is type(first) for p in parts):
        raise ValueError(
            f"stack_rows: {type(first).__name__} cannot be stacked; stack the checkpoint's form "
            "(float arrays or MLX's packed words) before converting it to a representation"
        )
    return _cat_rows(parts)


def _cat_rows(arrays):
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) != 1 or len({a.shape[1:] for a in arrays}) != 1:
        raise ValueError(f"stack_rows: parts of different dtypes or widths: {[(a.dtype, a.shape) for a in arrays]}")
    if all(isinstance(a, jax.ShapeDtypeStruct) for a in arrays):
        return jax.ShapeDtypeStruct((sum(a.shape[0] for a in arrays), *arrays[0].shape[1:]), arrays[0].dtype)
    if any(isinstance(a, jax.Array) for a in arrays):
        return jnp.concatenate(arrays, axis=0)
    return np.concatenate([np.asarray(a) for a in arrays], axis=0)


def stack_projections(weights: Weights) -> Weights:
    """Every layer with q|k|v stacked into ``w_qkv`` and gate|up into ``w_gate_up`` (see
    :data:`STACKED`); already-stacked layers pass through."""
    layers = []
    for i, layer in enumerate(weights.layers):
        fields = {}
        for stack, parts in STACKED.items():
            if getattr(layer, stack) is not None:
                continue
            try:
                fields[stack] = stack_rows(*(getattr(layer, n) for n in parts))
            except ValueError as e:
                raise ValueError(f"layers.{i}.{stack}: {e}") from None
            fields.update(dict.fromkeys(parts))
        layers.append(dataclasses.replace(layer, **fields))
    return dataclasses.replace(weights, layers=tuple(layers))


def is_stacked(weights: Weights) -> bool:
    return any(layer.w_qkv is not None or layer.w_gate_up is not None for layer in weights.layers)


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
    """Apply ``fn`` to each per-layer linear (:func:`linear_fields`); embedding and norms untouched."""
    layers = tuple(
        dataclasses.replace(layer, **{n: fn(getattr(layer, n)) for n in linear_fields(layer)})
        for layer in weights.layers
    )
    return dataclasses.replace(weights, layers=layers)


def quantize_weights(
    weights: Weights, group_size: int = DEFAULT_GROUP_SIZE, bits: int = DEFAULT_BITS, embedding: bool = False
) -> Weights:
    """Quantize the 7 linears of every layer with :func:`quant.quantize`, each in its own dtype
    (bfloat16 weights give bfloat16 scales and biases, as ``mlx.core.quantize`` does);
    ``embedding``: the embedding (the tied head) and an untied head too, as mlx-community
    checkpoints ship them."""

    def q(w):
        if isinstance(w, QuantizedLinear):
            return w
        packed, scales, biases = quant_mod.quantize(np.asarray(w), group_size, bits)
        return QuantizedLinear(packed, scales, biases, group_size, bits)

    out = map_linears(weights, q)
    if not embedding:
        return out
    return dataclasses.replace(out, embed=q(out.embed), lm_head=None if out.lm_head is None else q(out.lm_head))


def dequantize_weights(weights: Weights, dtype: str = "float32") -> Weights:
    """Host dequant of every packed tensor in ``dtype``: the dense-graph twin of ``weights``
    in a graph of that compute dtype (the same ``q * s + b`` the in-graph dequant computes)."""

    def deq(w):
        return w.dequantize(dtype) if isinstance(w, QuantizedLinear) else w

    out = map_linears(weights, deq)
    return dataclasses.replace(out, embed=deq(out.embed), lm_head=None if out.lm_head is None else deq(out.lm_head))


def cast_weights(weights: Weights, dtype: str) -> Weights:
    """Every float array in ``dtype``; packed int4 linears untouched (their scales and biases
    stay in the checkpoint's dtype and convert in the graph)."""
    target = np_dtype(dtype)

    def cast(x):
        if isinstance(x, (np.ndarray, jax.Array)) and jnp.issubdtype(np.asarray(x).dtype, jnp.floating):
            return np.asarray(x).astype(target, copy=False)
        if isinstance(x, jax.ShapeDtypeStruct) and x.dtype != np.uint32:
            return jax.ShapeDtypeStruct(x.shape, target)
        return x

    def leaf(x):
        return x if isinstance(x, Int4Form) else cast(x)

    return jax.tree_util.tree_map(leaf, weights, is_leaf=lambda x: isinstance(x, Int4Form))


def float_dtype(weights: Weights) -> str:
    """The dtype name of the tree's unquantized float tensors (the final norm's)."""
    return np.dtype(weights.final_norm.dtype).name


def nbytes(weights: Weights) -> int:
    """Bytes the whole tree occupies on a device (see :func:`linears.tensor_bytes`)."""
    return tensor_bytes(weights)


def linear_bytes(weights: Weights) -> int:
    """Bytes of the linears of every layer, in whatever form (and stacking) they are."""
    return sum(tensor_bytes(getattr(layer, n)) for layer in weights.layers for n in linear_fields(layer))


def synthetic(cfg: Config, seed: int = 0) -> Weights:
    """Seeded random weights for any config (RMS of activations stays ~1): drawn in float32,
    then rounded to ``cfg.dtype``."""
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
    weights = Weights(embed=embed, layers=tuple(layers), final_norm=final_norm, lm_head=head)
    return weights if cfg.dtype == "float32" else cast_weights(weights, cfg.dtype)


def specs(
    cfg: Config,
    quant: str = "dense",
    group_size: int = DEFAULT_GROUP_SIZE,
    bits: int = DEFAULT_BITS,
    embedding: bool = False,
) -> Weights:
    """Shape-only weights (``jax.ShapeDtypeStruct`` leaves): export and compile need no data.
    Float tensors, and the scales of packed ones, in ``cfg.dtype``; ``embedding`` (int4 only):
    the embedding and head packed too (:func:`quantize_weights`)."""
    dense = quant_mode(quant) == "dense"
    dtype = cfg.jnp_dtype

    def leaf(shape):
        return jax.ShapeDtypeStruct(tuple(shape), dtype)

    def linear(shape):
        return leaf(shape) if dense else quantized_linear_spec(shape, group_size, bits, dtype)

    shapes = expected_shapes(cfg)
    layers = tuple(
        Layer(**{n: linear(s) if n in LINEAR_NAMES else leaf(s) for n, s in shapes.items()})
        for _ in range(cfg.num_layers)
    )
    table = (cfg.vocab_size, cfg.hidden_size)
    vocab = linear if embedding and not dense else leaf
    head = None if cfg.tie_word_embeddings else vocab(table)
    return Weights(vocab(table), layers, leaf((cfg.hidden_size,)), head)


def linear_shapes(cfg: Config, stacked: bool = False) -> dict[str, tuple[int, int]]:
    """``[out, in]`` of each of a layer's linears, in :data:`LINEAR_NAMES` order; ``stacked``: the
    stacks of :data:`STACKED` (their parts' rows, the same input) in place of their parts, last."""
    shapes = {n: s for n, s in expected_shapes(cfg).items() if n in LINEAR_NAMES}
    if stacked:
        for stack, parts in STACKED.items():
            shapes[stack] = (sum(shapes.pop(n)[0] for n in parts), cfg.hidden_size)
    return shapes


def _linear_elements(cfg: Config, stacked: bool = False) -> list[int]:
    """Element count (out * in) of each of a layer's linears (``stacked``: the stacks in place
    of their parts)."""
    return [o * i for o, i in linear_shapes(cfg, stacked).values()]


def linear_weight_elements(cfg: Config, stacked: bool = False) -> set[int]:
    """Element counts (out * in) of the quantized linears: the size of a rebuilt weight."""
    return set(_linear_elements(cfg, stacked))


def linear_weight_bytes_f32(cfg: Config) -> int:
    """Bytes of all quantized linears rebuilt as float32 (what full materialization writes)."""
    return 4 * cfg.num_layers * sum(_linear_elements(cfg))


def linear_weight_bytes(cfg: Config) -> int:
    """Bytes of all quantized linears rebuilt in the compute dtype (what materialization writes)."""
    return cfg.jnp_dtype.itemsize * cfg.num_layers * sum(_linear_elements(cfg))
