"""Timers shared by the benchmarks, the fusion matrix and the experiments.

Every timer warms up first (compiles, caches, clocks) and ends each timed unit with a device
sync (a token id read back, or ``block_until_ready``). A runner is anything with
``reset``/``prefill``/``decode``/``put_token``/``token_id`` (:mod:`model_impl.backends`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..analyzers import xla_hlo
from ..backends import generate
from ..backends.spec import backend as backend_spec
from ..llama import sharding
from ..llama.config import Config
from ..llama.graphs import greedy_prefill, loop_step
from ..llama.model import KVCache, decode_batch
from ..llama.weights import Weights

DECODE_ROUNDS = 5  # device-bound timing: rounds of queued steps, median of rounds


def median_seconds(fn, repeats: int, budget_s: float, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over up to ``repeats`` calls (at least 3) within ``budget_s``."""
    for _ in range(warmup):
        fn()
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def best_rate(fn, nbytes: int, repeats: int) -> float:
    """``nbytes`` / the best of ``repeats`` timed calls of ``fn()``, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


@dataclasses.dataclass
class DecodeTiming:
    """Seconds per decode step, measured two ways on one runner."""

    synced: list[float]  # one per step, each step ending with its token id on the host
    queued: list[float]  # one per round: steps queued back to back, one sync per round
    tokens: list[int]  # the synced steps' token ids (what a caller may check)

    @property
    def device_bound(self) -> list[float]:
        """The figures that time the device, not the host: queued rounds where measured."""
        return self.queued or self.synced

    def summary(self) -> dict:
        s = sorted(self.synced)
        med = statistics.median(s)
        piped = statistics.median(self.queued) if self.queued else None
        q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
        return {
            "steps": len(s),
            "median_s": med,
            "p10_s": q(0.1),
            "p90_s": q(0.9),
            "stdev_s": statistics.pstdev(s),
            "tokens_per_s": 1.0 / med,
            "pipelined_step_s": piped,
            "harness_overhead": None if piped is None else med / piped - 1,
        }


def start(runner, prompt_len: int, max_seq: int):
    """Prefill a synthetic prompt of ``prompt_len`` tokens; the first token, synced."""
    padded = np.zeros(generate.prompt_bucket(prompt_len), np.int32)
    padded[:prompt_len] = np.arange(1, prompt_len + 1) % runner.cfg.vocab_size
    token, _ = runner.prefill(padded, prompt_len, max_seq)
    runner.token_id(token)
    return token


def time_decode(
    runner,
    max_seq: int,
    *,
    synced_steps: int,
    queued_rounds: int = 0,
    steps_per_round: int = 0,
    warmup: int = 2,
    prompt_len: int | None = None,
    start_pos: int = 0,
) -> DecodeTiming:
    """Decode steps after a prefill of ``prompt_len`` synthetic tokens (or, without one, from an
    empty cache at ``start_pos``): ``warmup`` synced steps, ``synced_steps`` timed one by one,
    then ``queued_rounds`` rounds of ``steps_per_round`` steps with the token kept on the device
    (on a GPU a per-step host sync costs as much as the step). Positions cycle inside the cache."""
    if prompt_len is not None:
        token, first = start(runner, prompt_len, max_seq), prompt_len
    else:
        runner.reset(max_seq)
        token, first = runner.put_token(1), start_pos
    positions = (first + k % (max_seq - first) for k in itertools.count())
    for _ in range(warmup):
        token, _ = runner.decode(token, next(positions))
        runner.token_id(token)
    synced, tokens = [], []
    for _ in range(synced_steps):
        t0 = time.perf_counter()
        token, _ = runner.decode(token, next(positions))
        tokens.append(runner.token_id(token))
        synced.append(time.perf_counter() - t0)
    queued = []
    for _ in range(queued_rounds):
        t0 = time.perf_counter()
        for _ in range(steps_per_round):
            token, _ = runner.decode(token, next(positions))
        runner.token_id(token)
        queued.append((time.perf_counter() - t0) / steps_per_round)
    return DecodeTiming(synced, queued, tokens)


@dataclasses.dataclass
class GenerateTiming:
    """Seconds per decode step of the generate path (:func:`generate.stream`: the device loop,
    ``chunk`` steps per dispatch, chunks queued ahead, token ids streamed back), one figure
    per round: from the prefill's token on the host to the last token on the host."""

    chunk: int
    new_tokens: int
    rounds: list[float]
    tokens: list[int]  # the last round's ids, prefill's first

    def summary(self, device_bound_s: float | None) -> dict:
        step = statistics.median(self.rounds)
        return {
            "chunk": self.chunk,
            "new_tokens": self.new_tokens,
            "step_s": step,
            "tokens_per_s": 1.0 / step,
            "rounds": len(self.rounds),
            "device_bound_step_s": device_bound_s,
            "harness_overhead": None if not device_bound_s else step / device_bound_s - 1,
        }


def time_generate(runner, prompt_len: int, new_tokens: int, max_seq: int, chunk: int, rounds: int = 3):
    """:class:`GenerateTiming` of ``rounds`` greedy runs of ``new_tokens`` after a synthetic
    prompt of ``prompt_len`` tokens in a ``max_seq`` cache, after one warm-up run (compiles)."""
    prompt = [1 + k % (runner.cfg.vocab_size - 1) for k in range(prompt_len)]
    times, tokens = [], []
    for _ in range(rounds + 1):
        parts = generate.stream(runner, prompt, new_tokens, stop_at_eos=False, chunk=chunk, max_seq=max_seq)
        tokens = list(next(parts)[0])  # the prefill's token, on the host: the clock starts
        t0 = time.perf_counter()
        for ids, _ in parts:
            tokens.extend(ids)
        times.append((time.perf_counter() - t0) / (len(tokens) - 1))
    return GenerateTiming(chunk, new_tokens, times[1:], tokens)


def time_prefill(runner, prompt_len: int, max_seq: int, repeats: int) -> list[float]:
    start(runner, prompt_len, max_seq)  # compile + warm
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        start(runner, prompt_len, max_seq)
        out.append(time.perf_counter() - t0)
    return out


def decode_loop(cfg: Config, steps: int, barrier: bool, weights, token, pos, cache):
    """``steps`` greedy decode steps in one ``fori_loop`` with a static trip count: one dispatch
    for all of them and no condition for the host to read, the device's own figure (the generate
    path's loop, :func:`graphs.greedy_decode_loop`, runs the same step under a data bound).

    ``token [b]`` and a cache with a leading batch axis decode ``b`` sequences at once: the step
    is :func:`model.decode_batch` (every linear sees ``b`` activation rows), all at ``pos``."""
    batched = token.ndim == 1

    def body(i, carry):
        token, cache = carry
        if not batched:
            token, _, cache = loop_step(cfg, weights, token, pos + i, cache, barrier)
            return token, cache
        w, token = jax.lax.optimization_barrier((weights, token)) if barrier else (weights, token)
        positions = jnp.full(token.shape, pos + i, jnp.int32)
        logits, cache = decode_batch(cfg, w, token, positions, cache)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

    return jax.lax.fori_loop(0, steps, body, (token, cache))


def time_xla_decode_loop(
    backend: str,
    cfg: Config,
    weights: Weights,
    steps: int,
    *,
    max_seq: int,
    start_pos: int,
    xla_options: dict | None = None,
    rounds: int = DECODE_ROUNDS,
    barrier: bool = True,
    batch: int | None = None,
    tp: int = 1,
    placed: bool = False,
) -> tuple[float, list[float], int]:
    """(median seconds per step, [min, max], dequant kernels hoisted out of the loop) for
    ``steps`` greedy decode steps inside one jitted :func:`decode_loop`: one dispatch per round,
    so the figure is the device's, not the host's. A dequant XLA hoisted out of the loop would
    run once per round instead of once per step; the count says whether that happened.
    ``batch``: that many sequences per step (:func:`decode_loop`), seconds per batched step.
    ``tp``: on that many devices, weights and cache sharded (:func:`sharding.layout`; batch 1);
    ``placed``: the weights are already where ``tp`` puts them (made on the devices)."""
    fn = xla_decode_loop(sharding.graph_config(cfg, tp), steps, barrier, xla_options)
    loop = DecodeLoop(fn, *decode_loop_args(backend, cfg, weights, max_seq, start_pos, batch, tp, placed))
    hoisted = xla_hlo.entry_unpack_kernels(loop.compiled_text())
    return (*loop.seconds_per_step(steps, rounds), hoisted)


def xla_decode_loop(cfg: Config, steps: int, barrier: bool = True, xla_options: dict | None = None):
    """The jitted :func:`decode_loop` (``steps`` static, the cache donated)."""
    return jax.jit(
        functools.partial(decode_loop, cfg, steps, barrier),
        donate_argnums=(3,),
        compiler_options=xla_options or None,
    )


class DecodeLoop:
    """A jitted :func:`decode_loop` and its state on the device: each call runs one dispatch
    (its steps), the token and the donated cache carried to the next call."""

    def __init__(self, fn, weights, token, pos, cache):
        self.fn, self.weights, self.token, self.pos, self.cache = fn, weights, token, pos, cache

    def __call__(self):
        self.token, self.cache = self.fn(self.weights, self.token, self.pos, self.cache)
        return self.token

    def compiled_text(self) -> str:
        """The optimized (for several devices: partitioned) HLO of the loop."""
        return self.fn.lower(self.weights, self.token, self.pos, self.cache).compile().as_text()

    def seconds_per_step(self, steps: int, rounds: int = DECODE_ROUNDS) -> tuple[float, list[float]]:
        """(median seconds per step over ``rounds`` synced dispatches, [min, max]) after one
        warm-up dispatch (it compiles)."""
        self().block_until_ready()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            self().block_until_ready()
            times.append((time.perf_counter() - t0) / steps)
        return statistics.median(times), [min(times), max(times)]


def decode_loop_args(
    backend: str, cfg: Config, weights: Weights, max_seq: int, start_pos: int, batch=None, tp: int = 1, placed=False
):
    """(weights, token, pos, cache) of :func:`decode_loop` on the backend's first device, or
    sharded over ``tp`` devices; ``placed`` weights stay where they are."""
    platform = backend_spec(backend).platform
    token = np.int32(1) if batch is None else np.arange(1, batch + 1, dtype=np.int32)
    cache = KVCache.zeros(cfg, max_seq)
    if batch is not None:
        if tp != 1:
            raise sharding.ShardingError(f"--tp {tp}: the batched decode loop runs on one device")
        cache = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), cache)
    if tp == 1:
        device = jax.devices(platform)[0]
        at, cache_at, weights_at = device, device, device
    else:
        layout = sharding.layout(cfg, weights, tp, platform)
        at, cache_at, weights_at = layout.replicated, layout.cache, layout.weights
        weights = layout.prepare(weights)
    w = weights if placed else jax.device_put(weights, weights_at)
    return w, jax.device_put(token, at), jax.device_put(np.int32(start_pos), at), jax.device_put(cache, cache_at)


def time_xla_prefill(
    backend: str, cfg: Config, weights: Weights, bucket: int, max_seq: int, xla_options=None, rounds: int = 10
) -> float:
    """Median seconds of one jitted greedy prefill of ``bucket`` tokens (synced by
    ``block_until_ready``; a prefill is long enough that one dispatch per call is its cost)."""
    device = jax.devices(backend_spec(backend).platform)[0]
    fn = jax.jit(functools.partial(greedy_prefill, cfg), compiler_options=xla_options or None)
    args = jax.device_put(
        (weights, np.arange(1, bucket + 1, dtype=np.int32), np.int32(bucket), KVCache.zeros(cfg, max_seq)), device
    )
    return median_seconds(lambda: jax.block_until_ready(fn(*args)), rounds, float("inf"), warmup=1)
