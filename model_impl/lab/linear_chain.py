"""One int4 linear at Llama-3.2-1B size, timed as a chain: the fusion matrix's per-linear figure.

``[8192, 2048]`` (w_gate / w_up), M=1. ``LINEAR_CHAIN`` distinct weights per call, each output
folded back to the input width by a sum (a slice would let XLA compute only the rows it
keeps), so that launch overhead is amortized and the int4 weights (8 MiB each) cannot all sit
in a GPU's L2 cache (50 MiB on an H100) between calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import quant
from ..backends import cache, iree_compile
from ..llama.graphs import GRAPH_SOURCES
from ..llama.linears import QuantizedLinear, linear, quantized_linear_spec
from ..llama.representations import convert_linear
from ..llama.weights import linear_fields, linear_shapes

LINEAR_SHAPE = (8192, 2048)
LINEAR_CHAIN = 16
GROUP = 64


def chain(x, ws):
    for w in ws:
        y = linear(x, w)
        x = y.reshape(1, -1, x.shape[1]).sum(axis=1) * np.float32(0.05)
    return x


def weights(representation: str | None, seed: int = 0) -> list:
    """Seeded weights (float32 when ``representation`` is None, else int4 in that form)."""
    rng = np.random.default_rng(seed)
    out, n_in = LINEAR_SHAPE
    ws = []
    for _ in range(LINEAR_CHAIN):
        w = rng.standard_normal((out, n_in), dtype=np.float32) * np.float32(n_in**-0.5)
        if representation is not None:
            w = convert_linear(QuantizedLinear(*quant.quantize(w, GROUP, 4), GROUP, 4), representation)
        ws.append(w)
    return ws


def specs(representation: str | None) -> list:
    if representation is None:
        return [jax.ShapeDtypeStruct(LINEAR_SHAPE, jnp.float32)] * LINEAR_CHAIN
    return [convert_linear(quantized_linear_spec(LINEAR_SHAPE, GROUP, 4), representation)] * LINEAR_CHAIN


def iree_module(representation: str | None, flags: list[str]):
    """The chain's IREE module (cached under what it is: shapes, representation, flags, the
    defining sources), so a machine without the compiler finds modules compiled elsewhere."""
    identity = {
        "graph": "linear-chain",
        "shape": list(LINEAR_SHAPE),
        "chain": LINEAR_CHAIN,
        "representation": representation,
        "sources": cache.source_digest(*GRAPH_SOURCES, "lab/linear_chain.py"),
    }

    def export():
        x = jax.ShapeDtypeStruct((1, LINEAR_SHAPE[1]), jnp.float32)
        leaves, tree = jax.tree_util.tree_flatten((x, specs(representation)))
        flat = lambda *a: chain(*jax.tree_util.tree_unflatten(tree, a))  # noqa: E731
        return jax.export.export(jax.jit(flat))(*leaves).mlir_module()

    path, _ = iree_compile.compile_cached(identity, export, flags)
    return path


def step_linears(cfg, batch: int, steps: int, barrier: bool = True):
    """A function of the weights timing a decode step's linears alone: those of every layer (7,
    or 4 stacked) and the head, at ``batch`` activation rows, ``steps`` times in one ``fori_loop``. Inputs are
    fixed per width; every output is carried (nothing is dead), and the weights pass an
    optimization barrier with the carry each step (XLA cannot hoist a dequant out of the loop)."""
    widths = {n: shape[1] for n, shape in {**linear_shapes(cfg), **linear_shapes(cfg, stacked=True)}.items()}
    rng = np.random.default_rng(0)
    xs = {
        w: jnp.asarray(rng.standard_normal((batch, w), dtype=np.float32)).astype(cfg.jnp_dtype)
        for w in {*widths.values(), cfg.hidden_size}
    }

    def one_step(w, xs):
        ys = [linear(xs[widths[n]], getattr(layer, n)) for layer in w.layers for n in linear_fields(layer)]
        return [*ys, linear(xs[cfg.hidden_size], w.embed if w.lm_head is None else w.lm_head)]

    def fn(w):
        ys0 = [jnp.zeros(y.shape, y.dtype) for y in jax.eval_shape(one_step, w, xs)]

        def body(_, carry):
            ww, xx, _ = jax.lax.optimization_barrier((w, xs, carry)) if barrier else (w, xs, carry)
            return one_step(ww, xx)

        return jax.lax.fori_loop(0, steps, body, ys0)

    return fn
