"""Device time of one call of a jitted function on a GPU, read from JAX's own profiler (CUPTI):
the kernels one call launches, summed, the host's dispatch left out. Shared by the XLA
performance reproducers beside this file, with the two bf16 GEMVs XLA offers (the faster is each
reproducer's baseline) and their command line; needs jax and numpy only, so it repeats on purpose
what ``model_impl/lab/profile.py`` does for the suite (a compiler engineer copies two files).

Each timed call reads its weights from HBM, as a decode step does: the calls rotate over copies
of the weights whose bytes together are many times the L2 cache (50 MB on the H100 and H200).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

FOOTPRINT = 512 << 20  # bytes of weight copies rotated over: ~10x the L2 cache
CALLS = 64  # timed calls (each kernel's median over them is taken)


def bf16_dot(x, w):
    """``x @ w.T`` with ``w`` ``[out, in]``, accumulated in float32, in ``x``'s dtype."""
    return jnp.einsum("ti,oi->to", x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def bf16_reduce(x, w):
    """The same as multiply + reduce in float32 (XLA's other GEMV: one reduction kernel)."""
    return jnp.sum(x.astype(jnp.float32)[:, None, :] * w.astype(jnp.float32)[None], axis=-1).astype(x.dtype)


BF16_FORMS = ("bf16-dot", "bf16-reduce")


def faster_bf16(cases: dict) -> str:
    """The bf16 form of ``cases`` that took least time."""
    return min(BF16_FORMS, key=lambda k: cases[k]["seconds"])


def device():
    """The first GPU (explicitly: a caller may have made the CPU JAX's default), else the CPU."""
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return jax.devices("cpu")[0]


def on_gpu() -> bool:
    return device().platform == "gpu"


def put(x):
    """``x`` (an array or a tuple of them) on :func:`device`; a jitted call runs where its
    arguments are."""
    return jax.device_put(x, device())


def copies(make, nbytes: int) -> list:
    """``make(i)`` for as many ``i`` as fill :data:`FOOTPRINT` with ``nbytes`` each (one where
    nothing is timed: off a GPU)."""
    return [make(i) for i in range(max(2, -(-FOOTPRINT // nbytes)) if on_gpu() else 1)]


def device_seconds(fn, arg_sets: list, calls: int = CALLS) -> dict | None:
    """``{"seconds": per call, "kernels": {name: [launches per call, median seconds]}}`` over
    ``calls`` calls of ``fn(*arg_sets[i % len(arg_sets)])`` after a warm-up of each set; ``None``
    where the trace holds no GPU kernels (a CPU run)."""
    for args in arg_sets:
        jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            out = [fn(*arg_sets[i % len(arg_sets)]) for i in range(calls)]
            jax.block_until_ready(out)
        (path,) = Path(d).rglob("*.xplane.pb")
        data = jax.profiler.ProfileData.from_file(str(path))
    durations = collections.defaultdict(list)
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU:"):
            continue
        for line in plane.lines:
            if line.name.startswith("Stream"):  # kernel lines; the others summarize them
                for event in line.events:
                    durations[event.name].append(event.duration_ns * 1e-9)
    if not durations:
        return None
    kernels = {k: [len(v) / calls, statistics.median(v)] for k, v in durations.items()}
    return {"seconds": sum(n * s for n, s in kernels.values()), "kernels": kernels}


def case(fn, arg_sets: list, weight_bytes: int) -> dict:
    """One timed case: device seconds per call and its weights' bytes per second (no time off
    a GPU)."""
    timed = device_seconds(fn, arg_sets) if on_gpu() else None
    if timed is None:
        return {"weight_bytes": weight_bytes, "seconds": None, "bytes_per_s": None, "kernels": {}}
    return {"weight_bytes": weight_bytes, "bytes_per_s": weight_bytes / timed["seconds"], **timed}


def environment() -> dict:
    d = device()
    return {"device": d.device_kind, "platform": d.platform, "jax": jax.__version__}


def emit(record: dict, out: str | None) -> None:
    """The record as JSON on stdout, and in ``out`` where given."""
    text = json.dumps(record, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    sys.stdout.write(text + "\n")


def main(run, doc: str, argv=None) -> int:
    """A reproducer's command line: ``run()``'s record printed, and written to ``--out``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", help="also write the JSON record here")
    args = p.parse_args(argv)
    emit(run(), args.out)
    return 0
