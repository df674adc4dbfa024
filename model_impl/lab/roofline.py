"""Bytes and bandwidth: the least a decode step must read, the copy bandwidth measured on a
device, and memory in use. A roofline is bandwidth / bytes per step."""

from __future__ import annotations

import concurrent.futures
import os
import resource

import jax
import jax.numpy as jnp
import numpy as np

from ..backends.spec import backend as backend_spec
from ..llama.config import Config
from ..llama.linears import tensor_bytes
from ..llama.weights import Weights
from .timing import best_rate


def decode_bytes_read(cfg: Config, weights: Weights, pos: int, rows: int = 1) -> int:
    """The least a decode step of ``rows`` sequences must read: every layer weight, the head
    (the whole embedding when tied), the final norm, and per sequence one embedding row and the
    K/V of ``pos + 1`` positions (in the compute dtype). ``weights`` may be arrays or specs."""
    layers = sum(tensor_bytes(layer) for layer in weights.layers)
    head = weights.lm_head if weights.lm_head is not None else weights.embed
    row = tensor_bytes(weights.embed) // cfg.vocab_size
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * (pos + 1) * cfg.head_dim * cfg.jnp_dtype.itemsize
    return layers + tensor_bytes(head) + tensor_bytes(weights.final_norm) + rows * (row + kv)


QUEUED = 4  # kernels per timed unit on a GPU (a copy's outputs: QUEUED arrays of nbytes live)


def copy_bandwidth(platform_name: str, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes/s of a large array copy on this device (read + write counted), best of repeats
    (:func:`_stream_rate`)."""
    return _stream_rate(platform_name, nbytes, repeats, read_only=False)


def read_bandwidth(platform_name: str, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes/s of a large array's sum on this device (only the read bytes counted), best of
    repeats: the figure of a kernel that reads far more than it writes, as a GEMV does; it
    can exceed the copy's, whose writes share the memory bus with its reads."""
    return _stream_rate(platform_name, nbytes, repeats, read_only=True)


def _stream_rate(platform_name: str, nbytes: int, repeats: int, read_only: bool) -> float:
    """Bytes/s of one pass over a float32 array of ``nbytes``: a copy (``a + 0``: one read and
    one write of every element) or a sum (one read).

    GPU: one jitted kernel, :data:`QUEUED` calls queued back to back and the last one synced
    per timed unit: a synced call of a sub-millisecond kernel times the host's round trip too
    (on the H200 a 0.13 ms GEMV took 0.59 ms per synced call; reproducers/iree-cuda-gemv). CPU:
    numpy over one chunk per core in threads (numpy releases the GIL), because a
    single-threaded pass understates what the matmuls, which use every core, can stream.
    """
    n = nbytes // 4
    moved = (1 if read_only else 2) * n * 4
    if platform_name == "cpu":
        src = np.ones(n, np.float32)
        dst = None if read_only else np.empty(n, np.float32)
        workers = os.cpu_count() or 1
        bounds = np.linspace(0, n, workers + 1).astype(int)
        chunks = list(zip(bounds, bounds[1:]))

        def one(chunk):
            a, b = chunk
            return src[a:b].sum() if dst is None else np.copyto(dst[a:b], src[a:b])

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return best_rate(lambda: list(pool.map(one, chunks)), moved, repeats)
    device = jax.devices(platform_name)[0]
    x = jax.device_put(jnp.arange(n, dtype=jnp.float32), device)
    kernel = jax.jit(jnp.sum if read_only else lambda a: a + 0.0)

    def queued():
        for _ in range(QUEUED - 1):
            kernel(x)
        kernel(x).block_until_ready()

    return best_rate(queued, QUEUED * moved, repeats)


def rss_bytes() -> dict:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        current = None
    return {"current_rss": current, "process_peak_rss": peak}


def device_peak_bytes(backend: str) -> int | None:
    spec = backend_spec(backend)
    if spec.is_xla and spec.is_cuda:
        stats = jax.devices("cuda")[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    return None
