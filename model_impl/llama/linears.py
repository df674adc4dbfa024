"""The linear layer in every weight form: float, MLX's packed words, and the other int4 forms.

A float weight is an array ``[out, in]``. Every other form is a registered dataclass pytree
deriving from :class:`LinearForm`, whose ``matmul`` computes ``x @ W.T`` in the graph (for the
int4 forms, :class:`Int4Form`, ``x @ dequant(W).T``); :func:`linear` dispatches on that one base
class, so the model never branches on the form. :class:`DenseReduceLinear` is a float weight
whose GEMV is written as multiply + reduce; :class:`DenseIOLinear` a float weight laid ``[in, out]``.
:class:`QuantizedLinear` is the checkpoint's own form (MLX's uint32 words, documented in
:mod:`model_impl.quant`); :mod:`model_impl.llama.representations` converts it to the others.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import quant as quant_mod
from .config import np_dtype

# fp32 matmuls at full precision everywhere: on GPUs the default may use TF32, which
# would make CPU/GPU agreement a property of the backend rather than of the graph.
PRECISION = jax.lax.Precision.HIGHEST
# Every matmul accumulates in float32, whatever the compute dtype: a bf16 accumulator over
# 2048 terms would lose ~8 bits; the result is rounded to the compute dtype once.
ACCUMULATE = jnp.float32

DEFAULT_GROUP_SIZE = 64
DEFAULT_BITS = 4


class LinearForm:
    """Base of every weight form with its own ``matmul``, ``[t, in] -> [t, out]``."""

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        """In ``x``'s dtype, or ``out_dtype`` (the head's float32 logits: the float32
        accumulator kept, not rounded)."""
        raise NotImplementedError


class Int4Form(LinearForm):
    """Base of every in-graph int4 weight form."""

    def mlx_words(self) -> QuantizedLinear:
        """The same weight as MLX's words (what an embedding lookup gathers rows of)."""
        raise TypeError(f"{type(self).__name__} has no row gather: it cannot serve as a tied embedding")


def contract(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``einsum(spec, a, b)`` accumulated in float32 (the result stays float32)."""
    return jnp.einsum(spec, a, b, precision=PRECISION, preferred_element_type=ACCUMULATE)


def dense_matmul(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """``x [t, in] @ w [out, in].T`` in ``x``'s dtype or ``out_dtype`` (accumulated in float32)."""
    return contract("ti,oi->to", x, w).astype(out_dtype or x.dtype)


# The GEMV written as multiply + reduce applies at one activation row (decode at batch 1); more
# rows (a batched decode, a prefill) go through the dot (a reduce would read W once per row).
REDUCE_MAX_ROWS = 1
# The name scope of the GEMV's reduce: in XLA's HLO its op_name carries it, which is how the
# analyzers tell this contraction from other reductions (as they tell XLA's own GEMV rewrite
# by the dot's op_name).
REDUCE_SCOPE = "gemv_reduce"


def reduce_matmul(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """``x [t, in] @ w [out, in].T`` as float32 products summed in float32 (every half-precision
    product is exact in float32), in ``x``'s dtype or ``out_dtype``: the same sum as
    :func:`contract` in another order. XLA-GPU runs it as one reduction kernel into which a
    dequant of ``w`` fuses; at ``t > REDUCE_MAX_ROWS`` it is the dot."""
    if x.shape[0] > REDUCE_MAX_ROWS:
        return dense_matmul(x, w, out_dtype)
    f32 = jnp.float32
    with jax.named_scope(REDUCE_SCOPE):
        y = jnp.sum(x.astype(f32)[:, None, :] * w.astype(f32)[None], axis=-1)
    return y.astype(out_dtype or x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseReduceLinear(LinearForm):
    """A float weight ``[out, in]`` whose decode GEMV is written as multiply + reduce
    (:func:`reduce_matmul`): the dense baseline's other form, so int4 is set against the
    fastest dense GEMV, not only the dot."""

    w: jax.Array

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        return reduce_matmul(x, self.w.astype(x.dtype), out_dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseIOLinear(LinearForm):
    """A float weight stored ``[in, out]`` (transposed once, on the host): ``x @ W`` takes it as
    the dot's natural right-hand side, so no compiler has to transpose W before the GEMV
    (IREE-CUDA at its default options writes a transposed copy of every weight each step)."""

    w: jax.Array  # [in, out]

    @classmethod
    def from_dense(cls, w) -> DenseIOLinear:
        """The same linear from a float weight ``[out, in]`` (an array or a shape spec)."""
        if isinstance(w, jax.ShapeDtypeStruct):
            return cls(jax.ShapeDtypeStruct(tuple(reversed(w.shape)), w.dtype))
        return cls(np.ascontiguousarray(np.asarray(w).T))

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        return contract("ti,io->to", x, self.w.astype(x.dtype)).astype(out_dtype or x.dtype)


def linear(x: jax.Array, w) -> jax.Array:
    """``x [t, in] @ W[out, in].T`` for a float ``W`` or any :class:`LinearForm`, in ``x``'s dtype."""
    return w.matmul(x) if isinstance(w, LinearForm) else dense_matmul(x, w)


def unpack_codes(packed: jax.Array, bits: int) -> jax.Array:
    """uint32 words ``[out, words]`` -> codes ``[out, words * 32 // bits]`` (uint32), in-graph."""
    per_word = 32 // bits
    shifts = jnp.arange(per_word, dtype=jnp.uint32) * jnp.uint32(bits)
    codes = (packed[:, :, None] >> shifts) & jnp.uint32((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedLinear(Int4Form):
    """MLX's packed linear: ``bits`` and ``group_size`` are static (they shape the graph)."""

    packed: np.ndarray  # [out, in * bits // 32] uint32
    scales: np.ndarray  # [out, in // group_size] float32 | float16 | bfloat16
    biases: np.ndarray  # same as scales
    group_size: int = dataclasses.field(metadata=dict(static=True), default=DEFAULT_GROUP_SIZE)
    bits: int = dataclasses.field(metadata=dict(static=True), default=DEFAULT_BITS)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.packed.shape[1] * quant_mod.codes_per_word(self.bits))

    def mlx_words(self) -> QuantizedLinear:
        return self

    def dequantize(self, dtype="float32") -> np.ndarray:
        """Host dequant in ``dtype``: scales and biases converted to it, then ``q * s + b`` with
        one rounding per op, as the graph (and MLX, when the dtypes agree) computes it."""
        dtype = np_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
        return quant_mod.dequantize(
            self.packed,
            np.asarray(self.scales).astype(dtype),
            np.asarray(self.biases).astype(dtype),
            self.group_size,
            self.bits,
        )

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        return dense_matmul(x, dequantize(self, x.dtype), out_dtype)


def dequantize(w: QuantizedLinear, dtype=jnp.float32) -> jax.Array:
    """In-graph dequant to ``dtype`` ``[out, in]``: shift, mask, convert, scale, add; the scales
    and biases are converted from the checkpoint's dtype in the graph."""
    out_features = w.packed.shape[0]
    codes = unpack_codes(w.packed, w.bits).reshape(out_features, -1, w.group_size)
    scales = w.scales.astype(dtype)[:, :, None]
    biases = w.biases.astype(dtype)[:, :, None]
    return (codes.astype(dtype) * scales + biases).reshape(out_features, -1)


def quantized_linear_spec(
    shape, group_size: int = DEFAULT_GROUP_SIZE, bits: int = DEFAULT_BITS, scale_dtype=np.float32
) -> QuantizedLinear:
    """Shape-only packed linear for a float weight of ``shape`` = ``[out, in]``; scales and
    biases in ``scale_dtype`` (the quantized weight's own dtype)."""
    out, n_in = shape
    if n_in % group_size:
        raise quant_mod.QuantizationError(f"input dimension {n_in} is not divisible by group_size {group_size}")
    groups = jax.ShapeDtypeStruct((out, n_in // group_size), np.dtype(scale_dtype))
    packed = jax.ShapeDtypeStruct((out, n_in * bits // 32), np.dtype(np.uint32))
    return QuantizedLinear(packed, groups, groups, group_size, bits)


def tensor_bytes(x) -> int:
    """Bytes a weight occupies on a device: every array of its pytree, 4-bit arrays at
    half a byte per element (the host holds them one per byte)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(x):
        dtype = np.dtype(leaf.dtype)
        size = int(np.prod(np.shape(leaf), dtype=np.int64))
        total += size // 2 if dtype.name in ("int4", "uint4") else size * dtype.itemsize
    return total


# A 4-bit code q placed in the low mantissa bits under a fixed exponent reads as ``2^m + q``
# exactly (m = mantissa bits: the unit in the last place is 1 there); subtracting ``2^m`` is
# exact too. dtype -> (unsigned type of its width, the exponent's bits, 2^m). The trick fused int4
# kernels use in place of an integer-to-float convert (a quarter-rate instruction on GPUs).
MAGIC = {
    np.dtype(np.float32): (jnp.uint32, 0x4B000000, 2.0**23),
    np.dtype(jnp.bfloat16): (jnp.uint16, 0x4300, 2.0**7),
    np.dtype(np.float16): (jnp.uint16, 0x6400, 2.0**10),
}


def magic_codes(codes: jax.Array, dtype) -> jax.Array:
    """Integer codes in ``[0, 16)`` as exact floats of ``dtype``, by bit manipulation: or-ed into
    the mantissa under the exponent of :data:`MAGIC`, bitcast, minus that exponent's value."""
    utype, bits, offset = MAGIC[np.dtype(dtype)]
    v = jax.lax.bitcast_convert_type(codes.astype(utype) | utype(bits), dtype)
    return v - jnp.asarray(offset, dtype)
