"""Measurements for the benchmarks: bandwidth, decode and prefill timing, bytes and rooflines.

Timings warm up first and include a device sync (the token id read back, or
``block_until_ready``); the machine is recorded with every figure.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import generate
from .config import Config
from .weights import QuantizedLinear, Weights


def machine(backend: str) -> dict:
    info = {"node": platform.node(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if backend.endswith("cuda"):
        dev = jax.devices("cuda")[0]
        info["gpu"] = dev.device_kind
        info["compute_capability"] = dev.compute_capability
    return info


def tensor_bytes(x) -> int:
    if isinstance(x, QuantizedLinear):
        return sum(np.asarray(a).nbytes for a in (x.packed, x.scales, x.biases))
    return int(np.asarray(x).nbytes)


def resident_weight_bytes(weights: Weights) -> int:
    return sum(tensor_bytes(x) for x in _tensors(weights))


def _tensors(weights: Weights):
    yield weights.embed
    yield weights.final_norm
    if weights.lm_head is not None:
        yield weights.lm_head
    for layer in weights.layers:
        for f in dataclasses.fields(layer):
            yield getattr(layer, f.name)


def decode_bytes_read(cfg: Config, weights: Weights, pos: int) -> int:
    """The least a decode step must read: every layer weight, the head (the whole embedding
    when tied), the final norm, one embedding row, and the K/V of the ``pos + 1`` positions."""
    layers = sum(tensor_bytes(getattr(l, f.name)) for l in weights.layers for f in dataclasses.fields(l))
    head = weights.lm_head if weights.lm_head is not None else weights.embed
    row = tensor_bytes(weights.embed) // cfg.vocab_size
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * (pos + 1) * cfg.head_dim * 4
    return layers + tensor_bytes(head) + tensor_bytes(weights.final_norm) + row + kv


def copy_bandwidth(platform_name: str, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes/s of a large array copy on this device (read + write counted), best of repeats.

    GPU: one jitted copy kernel. CPU: numpy copies of one chunk per core in threads (numpy
    releases the GIL), because a single-threaded copy understates what the matmuls, which
    use every core, can stream.
    """
    n = nbytes // 4
    if platform_name == "cpu":
        import concurrent.futures

        src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
        workers = os.cpu_count() or 1
        bounds = np.linspace(0, n, workers + 1).astype(int)
        chunks = [(dst[a:b], src[a:b]) for a, b in zip(bounds, bounds[1:])]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            def run():
                list(pool.map(lambda c: np.copyto(*c), chunks))

            return _best_rate(run, 2 * n * 4, repeats)
    device = jax.devices(platform_name)[0]
    x = jax.device_put(jnp.arange(n, dtype=jnp.float32), device)
    copy = jax.jit(lambda a: a + 0.0)  # one read and one write of every element
    return _best_rate(lambda: copy(x).block_until_ready(), 2 * n * 4, repeats)


def _best_rate(fn, nbytes: int, repeats: int) -> float:
    fn()  # warm up (compile, page in)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def rss_bytes() -> dict:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        current = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        current = None
    return {"current_rss": current, "process_peak_rss": peak}


def device_peak_bytes(backend: str) -> int | None:
    if backend == "xla-cuda":
        stats = jax.devices("cuda")[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    return None


@dataclasses.dataclass
class DecodeTiming:
    step_seconds: list[float]  # one per timed step, each ending in the token id on the host
    pipelined_seconds: float | None  # per step with steps queued back to back, one sync at the end

    def summary(self) -> dict:
        s = sorted(self.step_seconds)
        q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
        med = statistics.median(s)
        return {"steps": len(s), "median_s": med, "p10_s": q(0.1), "p90_s": q(0.9),
                "stdev_s": statistics.pstdev(s), "tokens_per_s": 1.0 / med,
                "pipelined_step_s": self.pipelined_seconds,
                "harness_overhead": None if self.pipelined_seconds is None else med / self.pipelined_seconds - 1}


def start(runner, prompt_len: int, max_seq: int):
    padded = np.zeros(generate.prompt_bucket(prompt_len), np.int32)
    padded[:prompt_len] = np.arange(1, prompt_len + 1) % runner.cfg.vocab_size
    token, _ = runner.prefill(padded, prompt_len, max_seq)
    runner.token_id(token)
    return token


def time_decode(runner, prompt_len: int, max_seq: int, warmup: int, steps: int,
                pipelined: bool = True) -> DecodeTiming:
    token = start(runner, prompt_len, max_seq)
    pos = prompt_len
    for _ in range(warmup):
        token, _ = runner.decode(token, pos)
        runner.token_id(token)
        pos += 1
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        token, _ = runner.decode(token, pos)
        runner.token_id(token)  # sync: the token id is on the host
        times.append(time.perf_counter() - t0)
        pos += 1
    piped = None
    if pipelined:
        token = start(runner, prompt_len, max_seq)
        pos = prompt_len
        t0 = time.perf_counter()
        for _ in range(steps):  # the token stays on the device from step to step
            token, _ = runner.decode(token, pos)
            pos += 1
        runner.token_id(token)
        piped = (time.perf_counter() - t0) / steps
    return DecodeTiming(times, piped)


def time_prefill(runner, prompt_len: int, max_seq: int, repeats: int) -> list[float]:
    start(runner, prompt_len, max_seq)  # compile + warm
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        start(runner, prompt_len, max_seq)
        out.append(time.perf_counter() - t0)
    return out
