"""XLA through JAX on one device or ``tp`` devices (tensor parallel, GSPMD: the same graphs,
sharded weights and cache, :mod:`model_impl.llama.sharding`): the runner, and lowering a graph
with compiler options."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ..llama import model, sharding
from ..llama.config import Config
from ..llama.graphs import LOOP_GRAPHS, graph_args, graph_function, loop_graph, shape_bucket
from ..llama.weights import Weights
from .spec import XLA_CPU, Backend
from .spec import backend as backend_spec


def jit_graph(graph: str, compiler_options: dict | None = None, donate_cache: bool = True, bucket: int = 0):
    """``jax.jit`` of a graph function with ``cfg`` static and the KV cache donated; ``bucket``
    is a loop graph's chunk."""
    return jax.jit(
        graph_function(graph, bucket),
        static_argnums=0,
        donate_argnums=4 if donate_cache else (),
        compiler_options=compiler_options or None,
    )


def lower(cfg: Config, specs, graph: str, bucket: int, max_seq: int, compiler_options=None, donate_cache=True):
    """The graph lowered for these shapes (on the default device)."""
    fn = jit_graph(graph, compiler_options, donate_cache, bucket)
    return fn.lower(cfg, *graph_args(cfg, specs, graph, bucket, max_seq))


class XlaRunner:
    """JAX/XLA on one device, or on ``tp`` devices with the weights and the cache sharded
    (:func:`sharding.layout`; tokens and positions replicated): weights put there once; the cache
    is donated step to step.

    Steps run through ``jax.jit`` (its C++ dispatch path: an ahead-of-time ``Compiled`` call
    costs milliseconds of Python per step with hundreds of weight arguments). The first call
    of each shape compiles; ``compile_seconds`` keeps that first call's time.
    ``executable()`` gives the ahead-of-time compiled graph for its HLO (and its compile time,
    for a graph no call compiled).
    """

    def __init__(
        self, cfg: Config, weights: Weights, backend: Backend | str = XLA_CPU, compiler_options=None, tp: int = 1
    ):
        self.cfg = cfg
        self.compiler_options = dict(compiler_options or {})
        self.spec = backend_spec(backend)
        self.backend = self.spec.name
        self.tp = tp
        # where tokens and scalars (self._at) and the KV cache go: one device, or the mesh
        if tp == 1:
            self.layout = None
            self._at = self._cache_at = jax.devices(self.spec.platform)[0]
            self.weights = jax.device_put(weights, self._at)
        else:
            self.layout = sharding.layout(cfg, weights, tp, self.spec.platform)
            self.cfg = sharding.graph_config(cfg, tp)
            self._at, self._cache_at = self.layout.replicated, self.layout.cache
            self.weights = jax.device_put(self.layout.prepare(weights), self.layout.weights)
        self.cache = None
        self.compile_seconds: dict[str, float] = {}
        self._executables = {}
        self._jitted = {}
        self._seen = set()

    def _jit(self, graph: str, bucket: int = 0):
        key = (graph, bucket if graph in LOOP_GRAPHS else 0)
        if key not in self._jitted:
            self._jitted[key] = jit_graph(graph, self.compiler_options, bucket=key[1])
        return self._jitted[key]

    def _call(self, graph: str, shape_key, *args, bucket: int = 0):
        first = (graph, shape_key) not in self._seen
        start = time.perf_counter()
        out = self._jit(graph, bucket)(self.cfg, self.weights, *args)
        if first:
            jax.block_until_ready(out)
            self.compile_seconds[graph] = time.perf_counter() - start
            self._seen.add((graph, shape_key))
        return out

    def lowered(self, graph: str, bucket: int, max_seq: int):
        """The jitted ``graph`` ("prefill" or "decode") lowered for these shapes (with the
        runner's shardings: tensor parallel, the partitioner's input)."""
        _, *args = graph_args(self.cfg, None, graph, bucket, max_seq)
        if self.layout is not None:
            *scalars, cache = args[:3]
            at = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
            args = (
                [at(a, self._at) for a in scalars]
                + [jax.tree_util.tree_map(lambda a: at(a, self._cache_at), cache)]
                + [at(a, self._at) for a in args[3:]]
            )
        return self._jit(graph, bucket).lower(self.cfg, self.weights, *args)

    def executable(self, graph: str, bucket: int, max_seq: int):
        """The graph compiled ahead of time for these shapes (for its HLO and memory analysis)."""
        key = (graph, shape_bucket(graph, bucket), max_seq)
        if key not in self._executables:
            start = time.perf_counter()
            self._executables[key] = self.lowered(graph, bucket, max_seq).compile()
            # a graph never called (generate runs the decode loop, not "decode") is timed here
            self.compile_seconds.setdefault(graph, time.perf_counter() - start)
        return self._executables[key]

    def prefill(self, padded_tokens: np.ndarray, length: int, max_seq: int):
        cache = jax.device_put(model.KVCache.zeros(self.cfg, max_seq), self._cache_at)
        tokens = jax.device_put(jnp.asarray(padded_tokens, jnp.int32), self._at)
        self._max_seq = max_seq
        token, logits, self.cache = self._call(
            "prefill",
            (len(padded_tokens), max_seq),
            tokens,
            jax.device_put(np.int32(length), self._at),
            cache,
        )
        return token, logits

    def reset(self, max_seq: int) -> None:
        """An empty KV cache of ``max_seq`` slots, for decoding without a prefill."""
        self._max_seq = max_seq
        self.cache = jax.device_put(model.KVCache.zeros(self.cfg, max_seq), self._cache_at)

    def put_token(self, token_id: int):
        return jax.device_put(np.int32(token_id), self._at)

    def decode(self, token, pos: int):
        token, logits, self.cache = self._call(
            "decode", self._max_seq, token, jax.device_put(np.int32(pos), self._at), self.cache
        )
        return token, logits

    def loop_state(self, token, pos: int, remaining: int, stop_at_eos: bool):
        """The decode loop's state on the device: the last token (a device value), its position,
        the steps still wanted and the EOS switch."""
        put = lambda v: jax.device_put(np.int32(v), self._at)  # noqa: E731
        return (token, put(pos), put(remaining), put(int(stop_at_eos)))

    def decode_chunk(self, state, chunk: int, keep_logits: bool = False):
        """Queue one chunk of the decode loop; returns (its outputs, still on the device; the
        next chunk's state). Nothing is read back: a caller may queue the next chunk first."""
        token, pos, remaining, stop = state
        tokens, steps, (token, pos, remaining), rows, self.cache = self._call(
            loop_graph(keep_logits), (chunk, self._max_seq), token, pos, self.cache, remaining, stop, bucket=chunk
        )
        return (tokens, steps, rows), (token, pos, remaining, stop)

    @staticmethod
    def chunk_to_host(outputs) -> tuple[list[int], np.ndarray | None]:
        """A chunk's chosen ids (and logits rows) on the host: waits for the chunk."""
        tokens, steps, rows = outputs
        n = int(steps)
        ids = [int(t) for t in np.asarray(tokens)[:n]]
        return ids, None if rows is None else np.asarray(rows, np.float32)[:n]

    def cache_to_host(self) -> list[np.ndarray]:
        return [np.asarray(self.cache.k), np.asarray(self.cache.v)]

    @staticmethod
    def token_id(token) -> int:
        return int(token)

    @staticmethod
    def logits_row(logits) -> np.ndarray:
        return np.asarray(logits, np.float32)
