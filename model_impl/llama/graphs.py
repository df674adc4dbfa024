"""The exported graphs: greedy prefill and greedy decode over the model, and their StableHLO.

Kept apart from the runners: compiled modules are cached under a digest of the files that
define a graph (:data:`GRAPH_SOURCES`), so runner changes do not invalidate them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import model
from .config import Config
from .weights import Weights

# Package files (relative to model_impl/) whose code defines what a graph computes. The
# Pallas form is absent: its graphs carry a custom_call that IREE never compiles.
GRAPH_SOURCES = (
    "quant.py",
    "llama/config.py",
    "llama/linears.py",
    "llama/weights.py",
    "llama/representations.py",
    "llama/model.py",
    "llama/graphs.py",
)


def greedy_prefill(cfg: Config, weights: Weights, tokens, length, cache):
    logits, cache = model.prefill(cfg, weights, tokens, length, cache)
    return jnp.argmax(logits).astype(jnp.int32), logits, cache


def greedy_decode(cfg: Config, weights: Weights, token, pos, cache):
    logits, cache = model.decode_step(cfg, weights, token, pos, cache)
    return jnp.argmax(logits).astype(jnp.int32), logits, cache


GRAPH_FUNCTIONS = {"prefill": greedy_prefill, "decode": greedy_decode}


def graph_args(cfg: Config, specs, graph: str, bucket: int, max_seq: int):
    """Abstract arguments of a graph after ``cfg``: (weights, tokens|token, length|pos, cache)."""
    first = jax.ShapeDtypeStruct((bucket,) if graph == "prefill" else (), jnp.int32)
    kv = jax.eval_shape(lambda: model.KVCache.zeros(cfg, max_seq))
    return (specs, first, jax.ShapeDtypeStruct((), jnp.int32), kv)


def export_stablehlo(cfg: Config, specs, graph: str, bucket: int, max_seq: int) -> str:
    """The graph's StableHLO (MLIR text) as ``jax.export`` produces it: what every compiler gets."""
    fn = jax.jit(GRAPH_FUNCTIONS[graph], static_argnums=0)
    exported = jax.export.export(fn)(cfg, *graph_args(cfg, specs, graph, bucket, max_seq))
    return exported.mlir_module()
