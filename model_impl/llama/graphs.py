"""The exported graphs: greedy prefill, greedy decode (one step) and the greedy decode loop
(up to K steps per dispatch, on the device) over the model, and their StableHLO.

Kept apart from the runners: compiled modules are cached under a digest of the files that
define a graph (:data:`GRAPH_SOURCES`), so runner changes do not invalidate them.
"""

from __future__ import annotations

import functools

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


# The decode loop's default chunk: K steps per dispatch. At ~2 ms per step a chunk is ~64 ms of
# device work against one host round trip (~1-2 ms measured on the H100), and the logits rows a
# chunk keeps (K x vocab float32) stay a few MiB for the 128k vocabulary.
DECODE_CHUNK = 32


def loop_step(cfg: Config, weights: Weights, token, pos, cache, barrier: bool = True):
    """One greedy step inside a device loop.

    ``barrier`` ties the weights to this step's token: without it XLA hoists every dequant out
    of the loop as loop-invariant (measured on XLA-CPU; :func:`analyzers.xla_hlo.entry_unpack_kernels`
    finds them) and the loop would run dense weights rebuilt once, not the int4 path."""
    w, token = jax.lax.optimization_barrier((weights, token)) if barrier else (weights, token)
    return greedy_decode(cfg, w, token, pos, cache)


def greedy_decode_loop(
    cfg: Config,
    weights: Weights,
    token,
    pos,
    cache,
    remaining,
    stop_at_eos,
    *,
    chunk: int,
    keep_logits: bool = False,
    barrier: bool = True,
):
    """Up to ``chunk`` greedy decode steps in one dispatch, all state on the device.

    ``token`` (int32) is the last chosen token, at position ``pos``; ``remaining`` the steps the
    caller still wants; ``stop_at_eos`` (int32 0/1) ends the loop after an EOS id of ``cfg``.
    Returns ``(tokens [chunk], steps, (token, pos, remaining), rows, cache)``: the ``steps``
    first entries of ``tokens`` are the chosen ids; the state feeds the next chunk as it is
    (``remaining`` is 0 once an EOS was chosen, so a chunk queued after the end runs no step);
    ``rows`` is ``[chunk, vocab]`` float32 (row k chose ``tokens[k]``) with ``keep_logits``,
    else None. A ``while`` whose bound is data: no ``custom_call``, IREE lowers it too."""
    eos = jnp.asarray(cfg.eos_token_ids, jnp.int32)
    # Buffers of at least 2 slots, sliced to ``chunk`` after the loop: iree-compile 3.13 fails on
    # a while loop whose body overwrites a carried tensor whole, as one step's write into a
    # 1-slot buffer does (reproducers/iree-while-one-element-update).
    slots = max(chunk, 2)
    tokens = jnp.zeros((slots,), jnp.int32)
    rows = jnp.zeros((slots, cfg.vocab_size), jnp.float32) if keep_logits else None

    def cond(carry):
        i, _, _, left, *_ = carry
        return (i < chunk) & (left > 0)

    def body(carry):
        i, token, pos, left, tokens, rows, cache = carry
        token, logits, cache = loop_step(cfg, weights, token, pos, cache, barrier)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, i, 0)
        if rows is not None:
            rows = jax.lax.dynamic_update_index_in_dim(rows, logits, i, 0)
        ended = (stop_at_eos != 0) & jnp.any(token == eos)
        left = jnp.where(ended, 0, left - 1)
        return i + 1, token, pos + 1, left, tokens, rows, cache

    carry = (jnp.int32(0), token, pos, remaining, tokens, rows, cache)
    steps, token, pos, remaining, tokens, rows, cache = jax.lax.while_loop(cond, body, carry)
    rows = None if rows is None else rows[:chunk]
    return tokens[:chunk], steps, (token, pos, remaining), rows, cache


GRAPH_FUNCTIONS = {
    "prefill": greedy_prefill,
    "decode": greedy_decode,
    "decode_loop": greedy_decode_loop,
    "decode_loop_logits": functools.partial(greedy_decode_loop, keep_logits=True),
}
LOOP_GRAPHS = ("decode_loop", "decode_loop_logits")


def loop_graph(keep_logits: bool) -> str:
    """The decode loop's graph name, with or without the logits rows."""
    return LOOP_GRAPHS[1] if keep_logits else LOOP_GRAPHS[0]


def shape_bucket(graph: str, bucket: int) -> int | None:
    """The part of ``bucket`` that shapes ``graph``'s module: prefill's prompt length, a loop's
    chunk; None for decode (one module serves every bucket)."""
    return None if graph == "decode" else bucket


def graph_function(graph: str, bucket: int):
    """The function of ``graph`` with its static shape bound: ``bucket`` is the chunk of a loop
    graph (prefill's bucket is the shape of its tokens argument; decode has none)."""
    if graph not in GRAPH_FUNCTIONS:
        raise ValueError(f"unknown graph {graph!r}; known: {', '.join(GRAPH_FUNCTIONS)}")
    fn = GRAPH_FUNCTIONS[graph]
    return functools.partial(fn, chunk=bucket) if graph in LOOP_GRAPHS else fn


def graph_args(cfg: Config, specs, graph: str, bucket: int, max_seq: int):
    """Abstract arguments of a graph after ``cfg``: (weights, tokens|token, length|pos, cache)
    and, for the loops, (remaining, stop_at_eos)."""
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    first = jax.ShapeDtypeStruct((bucket,), jnp.int32) if graph == "prefill" else scalar
    kv = jax.eval_shape(lambda: model.KVCache.zeros(cfg, max_seq))
    return (specs, first, scalar, kv) + ((scalar, scalar) if graph in LOOP_GRAPHS else ())


def export_stablehlo(cfg: Config, specs, graph: str, bucket: int, max_seq: int) -> str:
    """The graph's StableHLO (MLIR text) as ``jax.export`` produces it: what every compiler gets."""
    fn = jax.jit(graph_function(graph, bucket), static_argnums=0)
    exported = jax.export.export(fn)(cfg, *graph_args(cfg, specs, graph, bucket, max_seq))
    return exported.mlir_module()
