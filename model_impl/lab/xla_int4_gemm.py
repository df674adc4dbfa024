"""An anchor, not a representation: XLA's own int4 GEMM on the same codes, with one scale per
output channel instead of MLX's scale and bias per group of 64.

``s4`` codes (MLX's ``q - 8``) go straight into the dot (``convert`` is the only op between the
load and the contraction, the pattern XLA-GPU's int4 GEMM matches), and the per-channel scale
multiplies the ``[t, out]`` result. It computes another function than the checkpoint's (the
per-group scales and biases are not there), so it never qualifies: it says how fast XLA's int4
path is on this device when the format is the one XLA likes best.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..llama.linears import Int4Form, QuantizedLinear, contract
from ..llama.weights import Weights, map_linears
from ..quant import unpack

FORM = "xla-s4-channel"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChannelInt4Linear(Int4Form):
    codes: jax.Array  # int4 [out, in]
    scale: jax.Array  # float32 [out]

    def matmul(self, x: jax.Array, out_dtype=None) -> jax.Array:
        y = contract("ti,oi->to", x, self.codes.astype(x.dtype))
        return (y * self.scale[None, :]).astype(out_dtype or x.dtype)


def channel_linear(w: QuantizedLinear) -> ChannelInt4Linear:
    """MLX's codes as ``int4`` ``q - 8``, the mean of each row's group scales as its scale."""
    q = unpack(np.asarray(w.packed), w.bits).astype(np.int8) - 8
    scale = np.asarray(w.scales, np.float32).mean(axis=1)
    return ChannelInt4Linear(jnp.asarray(q, jnp.int4), jnp.asarray(scale))


def convert(weights: Weights) -> Weights:
    """Every quantized layer linear as :class:`ChannelInt4Linear` (the head stays as it is)."""
    return map_linears(weights, lambda w: channel_linear(w) if isinstance(w, QuantizedLinear) else w)
