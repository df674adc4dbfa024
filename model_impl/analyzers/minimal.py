"""The smallest graphs that show each compiler's dequant verdict flip.

One linear, ``x [1, in] @ W.T``, with W given as: packed uint32 words with per-group scale and
bias (the project's format), native int4 with a per-group scale, native int4 or uint4 alone,
and each in-graph representation of :mod:`model_impl.llama.representations` through the model's
own ``linear``. Measured with iree-base-compiler 3.13: IREE folds a bare 4-bit -> f32
extension into the contraction's dispatch (fused), including the grouped representations
whose scale and bias come after the per-group dot, but gives every form that scales the
weight before the dot a dispatch of its own that writes the f32 weight (materialized).
XLA-CPU materializes all of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..llama.linears import QuantizedLinear, dequantize, linear, quantized_linear_spec
from ..llama.representations import NATIVE_FORMS, convert_linear

OUT, IN, GROUP = 256, 512, 64


def _x():
    return jax.ShapeDtypeStruct((1, IN), jnp.float32)


def packed_u32_scaled(x, packed, scales, biases):
    w = dequantize(QuantizedLinear(packed, scales, biases, GROUP, 4))
    return jnp.einsum("ti,oi->to", x, w)


def native_int4_scaled(x, w, scales):
    wf = w.astype(jnp.float32).reshape(OUT, IN // GROUP, GROUP) * scales[:, :, None]
    return jnp.einsum("ti,oi->to", x, wf.reshape(OUT, IN))


def native_int4_bare(x, w):
    return jnp.einsum("ti,oi->to", x, w.astype(jnp.float32))


def _representation_graph(representation: str):
    """One linear through the model's own ``linear`` in ``representation`` (shapes only)."""
    spec = convert_linear(quantized_linear_spec((OUT, IN), GROUP, 4), representation)
    leaves, tree = jax.tree_util.tree_flatten(spec)
    fn = lambda x, *arrays: linear(x, jax.tree_util.tree_unflatten(tree, arrays))
    return fn, (_x(), *leaves)


GRAPHS = {
    "packed-u32-scale-bias": (
        packed_u32_scaled,
        (
            _x(),
            jax.ShapeDtypeStruct((OUT, IN // 8), jnp.uint32),
            jax.ShapeDtypeStruct((OUT, IN // GROUP), jnp.float32),
            jax.ShapeDtypeStruct((OUT, IN // GROUP), jnp.float32),
        ),
    ),
    "native-int4-scale": (
        native_int4_scaled,
        (
            _x(),
            jax.ShapeDtypeStruct((OUT, IN), jnp.int4),
            jax.ShapeDtypeStruct((OUT, IN // GROUP), jnp.float32),
        ),
    ),
    "native-int4-bare": (native_int4_bare, (_x(), jax.ShapeDtypeStruct((OUT, IN), jnp.int4))),
    # The same bare extension from unsigned codes: IREE fuses it too, and (3.13) reads the
    # codes as signed (see tests/lowering/test_int4_forms_lowering.py).
    "native-uint4-bare": (native_int4_bare, (_x(), jax.ShapeDtypeStruct((OUT, IN), jnp.uint4))),
}
# Each native-int4 representation of model_impl.representations, as one linear (the
# uint32 baseline is "packed-u32-scale-bias" above).
GRAPHS.update({f"linear-{r}": _representation_graph(r) for r in NATIVE_FORMS})
WEIGHT_ELEMENTS = frozenset({OUT * IN})


def stablehlo(name: str) -> str:
    fn, args = GRAPHS[name]
    return jax.export.export(jax.jit(fn))(*args).mlir_module()


def xla_hlo(name: str) -> str:
    fn, args = GRAPHS[name]
    return jax.jit(fn).lower(*args).compile().as_text()


def iree_sources(name: str, target: str) -> str:
    from ..backends import iree_compile

    flags = iree_compile.target_flags(target) + list(iree_compile.SOURCES_FLAGS)
    return iree_compile.compile_mlir(stablehlo(name), flags).decode()
