"""The linear layer in every weight form: float, MLX's packed words, and the other int4 forms.

A float weight is an array ``[out, in]``. Every int4 form is a registered dataclass pytree
deriving from :class:`Int4Form`, whose ``matmul`` computes ``x @ dequant(W).T`` in the graph;
:func:`linear` dispatches on that one base class, so the model never branches on the form.
:class:`QuantizedLinear` is the checkpoint's own form (MLX's uint32 words, documented in
:mod:`model_impl.quant`); :mod:`model_impl.llama.representations` converts it to the others.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import quant as quant_mod

# fp32 matmuls at full precision everywhere: on GPUs the default may use TF32, which
# would make CPU/GPU agreement a property of the backend rather than of the graph.
PRECISION = jax.lax.Precision.HIGHEST

DEFAULT_GROUP_SIZE = 64
DEFAULT_BITS = 4


class Int4Form:
    """Base of every in-graph int4 weight form: one ``matmul``, ``[t, in] -> [t, out]``."""

    def matmul(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError


def dense_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [t, in] @ w [out, in].T``."""
    return jnp.einsum("ti,oi->to", x, w, precision=PRECISION)


def linear(x: jax.Array, w) -> jax.Array:
    """``x [t, in] @ W[out, in].T`` for a float ``W`` or any :class:`Int4Form`."""
    return w.matmul(x) if isinstance(w, Int4Form) else dense_matmul(x, w)


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

    def dequantize(self) -> np.ndarray:
        """Host dequant to float32 (scales upcast first, exact), as the graph computes it."""
        return quant_mod.dequantize(
            self.packed,
            np.asarray(self.scales).astype(np.float32),
            np.asarray(self.biases).astype(np.float32),
            self.group_size,
            self.bits,
        )

    def matmul(self, x: jax.Array) -> jax.Array:
        return dense_matmul(x, dequantize(self))


def dequantize(w: QuantizedLinear) -> jax.Array:
    """In-graph dequant to float32 ``[out, in]``: shift, mask, convert, scale, add."""
    out_features = w.packed.shape[0]
    codes = unpack_codes(w.packed, w.bits).reshape(out_features, -1, w.group_size)
    scales = w.scales.astype(jnp.float32)[:, :, None]
    biases = w.biases.astype(jnp.float32)[:, :, None]
    return (codes.astype(jnp.float32) * scales + biases).reshape(out_features, -1)


def quantized_linear_spec(shape, group_size: int = DEFAULT_GROUP_SIZE, bits: int = DEFAULT_BITS) -> QuantizedLinear:
    """Shape-only packed linear for a float weight of ``shape`` = ``[out, in]``."""
    out, n_in = shape
    if n_in % group_size:
        raise quant_mod.QuantizationError(f"input dimension {n_in} is not divisible by group_size {group_size}")
    groups = jax.ShapeDtypeStruct((out, n_in // group_size), np.dtype(np.float32))
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
