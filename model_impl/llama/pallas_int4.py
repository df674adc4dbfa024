"""The other route, as a yardstick: a hand-written int4 GEMV in Pallas (Triton on the GPU).

Not the product: its StableHLO carries a ``custom_call`` that only XLA-CUDA can run (IREE
cannot compile it; on the CPU it runs in Pallas' interpreter, for correctness tests only).
Its decode speed is the bar that the fused dequant-in-graph representations are held to.

Layout (converted at load time from MLX's words; same codes, scales and biases): with
``P = in / 8`` words per row, nibble ``k`` of word ``j`` holds the code of input
``k * P + j`` ("planar"), so one loaded block of words serves 8 contiguous input slices and
each 64-word slice of a plane lies in one quantization group. This needs ``P`` to be a
multiple of the group size (``in`` a multiple of 512 at group 64): true for every
Llama-3.2-1B linear.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from .. import quant as quant_mod
from .linears import PRECISION, Int4Form, QuantizedLinear

PLANES = 8  # 4-bit codes per uint32 word
BLOCK_OUT = 16  # output rows per program: 128 programs for a 2048-row linear


def to_planar(codes: np.ndarray) -> np.ndarray:
    """uint8 codes ``[out, in]`` -> planar uint32 words ``[out, in / 8]``."""
    out, n_in = codes.shape
    planes = codes.reshape(out, PLANES, n_in // PLANES).astype(np.uint32)
    shifts = (np.arange(PLANES, dtype=np.uint32) * np.uint32(4))[None, :, None]
    return np.bitwise_or.reduce(planes << shifts, axis=1)


def _check_planar(out: int, n_in: int, group_size: int, where: str = "") -> None:
    if n_in % (PLANES * group_size):
        raise quant_mod.QuantizationError(
            f"{where}the Pallas int4 kernel needs the input dimension to be a multiple of "
            f"{PLANES * group_size} (8 planes x group {group_size}); got [{out}, {n_in}]"
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PallasInt4Linear(Int4Form):
    words: jax.Array  # [out, in / 8] uint32, planar
    scales: jax.Array  # [out, groups] float32
    biases: jax.Array  # [out, groups] float32
    group_size: int = dataclasses.field(metadata=dict(static=True), default=64)

    @staticmethod
    def from_mlx(w: QuantizedLinear) -> PallasInt4Linear:
        if w.bits != 4:
            raise quant_mod.QuantizationError(f"the Pallas int4 kernel needs 4-bit codes, got {w.bits}")
        out, n_in = w.shape
        _check_planar(out, n_in, w.group_size)
        codes = quant_mod.unpack(np.asarray(w.packed), 4)
        return PallasInt4Linear(
            to_planar(codes),
            np.asarray(w.scales).astype(np.float32),
            np.asarray(w.biases).astype(np.float32),
            w.group_size,
        )

    @staticmethod
    def spec_from(w: QuantizedLinear) -> PallasInt4Linear:
        out, n_in = w.shape
        _check_planar(out, n_in, w.group_size)
        groups = jax.ShapeDtypeStruct((out, n_in // w.group_size), jnp.float32)
        return PallasInt4Linear(jax.ShapeDtypeStruct((out, n_in // PLANES), jnp.uint32), groups, groups, w.group_size)

    def dequantize(self) -> jax.Array:
        """In-graph dequant (used for prompts, t > 1, where the kernel does not apply)."""
        out, words = self.words.shape
        shifts = jnp.arange(PLANES, dtype=jnp.uint32) * jnp.uint32(4)
        codes = (self.words[:, None, :] >> shifts[None, :, None]) & jnp.uint32(15)  # [out, 8, P]
        codes = codes.astype(jnp.float32).reshape(out, -1, self.group_size)
        return (codes * self.scales[:, :, None] + self.biases[:, :, None]).reshape(out, words * PLANES)

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        """The kernel computes in float32 whatever ``x``'s dtype; the result is rounded to it."""
        x32 = x.astype(jnp.float32)
        if x.shape[0] != 1:
            return jnp.einsum("ti,oi->to", x32, self.dequantize(), precision=PRECISION).astype(out_dtype or x.dtype)
        return gemv(x32[0], self.words, self.scales, self.biases, self.group_size)[None].astype(out_dtype or x.dtype)


def _kernel(x_ref, w_ref, s_ref, b_ref, o_ref, *, group_size: int, words: int):
    slices = words // group_size  # group-sized slices per plane

    def body(j, acc):
        w = w_ref[:, pl.ds(j * group_size, group_size)]  # [BLOCK_OUT, group] uint32
        for k in range(PLANES):
            xs = x_ref[k, pl.ds(j * group_size, group_size)]  # [group]
            q = ((w >> jnp.uint32(4 * k)) & jnp.uint32(15)).astype(jnp.float32)
            column = k * slices + j  # quantization group of this slice
            s = s_ref[:, pl.ds(column, 1)][:, 0]
            b = b_ref[:, pl.ds(column, 1)][:, 0]
            acc = acc + s * jnp.sum(q * xs[None, :], axis=1) + b * jnp.sum(xs)
        return acc

    acc = jax.lax.fori_loop(0, slices, body, jnp.zeros((w_ref.shape[0],), jnp.float32))
    o_ref[...] = acc


@functools.partial(jax.jit, static_argnames=("group_size",))
def gemv(x, words, scales, biases, group_size: int):
    """``x [in] @ dequant(W).T -> [out]`` in one kernel; interpreted off the GPU."""
    out, n_words = words.shape
    groups = scales.shape[1]
    interpret = jax.default_backend() != "gpu"
    kernel = functools.partial(_kernel, group_size=group_size, words=n_words)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((out,), jnp.float32),
        grid=(out // BLOCK_OUT,),
        in_specs=[
            pl.BlockSpec((PLANES, n_words), lambda i: (0, 0)),
            pl.BlockSpec((BLOCK_OUT, n_words), lambda i: (i, 0)),
            pl.BlockSpec((BLOCK_OUT, groups), lambda i: (i, 0)),
            pl.BlockSpec((BLOCK_OUT, groups), lambda i: (i, 0)),
        ],
        out_specs=pl.BlockSpec((BLOCK_OUT,), lambda i: (i,)),
        interpret=interpret,
    )(x.reshape(PLANES, n_words), words, scales, biases)
