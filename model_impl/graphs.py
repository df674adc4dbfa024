"""The exported graphs: greedy prefill and greedy decode over the model.

Kept apart from the runners: compiled modules are cached under a digest of the files that
define a graph (this one, ``model.py``, ``config.py``, ``weights.py``), so runner changes
do not invalidate them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import model
from .config import Config
from .weights import Weights


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
