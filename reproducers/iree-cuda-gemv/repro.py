"""IREE-CUDA's bf16 GEMV at ``--iree-opt-level=O3`` against XLA-CUDA's on the same linear.

One linear, one activation row: Llama-3.2-1B's head, ``y = x @ w.T`` with ``x`` bf16 ``[1, 2048]``
and ``w`` bf16 ``[128256, 2048]`` (525 MB: one call's kernel outlasts the host's call overhead,
and no cache holds the weight), accumulated in float32, ``y`` bf16. ``input.mlir`` is this
function exported by JAX (``python repro.py export`` writes it again); IREE compiles it, XLA
runs the same function through ``jax.jit``.

    iree-compile input.mlir --iree-input-type=stablehlo --iree-hal-target-device=cuda \\
        --iree-cuda-target=sm_80 --iree-opt-level=O3 -o gemv.vmfb
    python repro.py run --vmfb gemv.vmfb [--out result.json]   # needs iree-base-runtime and a GPU

Both sides are timed the same two ways after a warm-up: each call's result synced (median of
``CALLS``), and ``CALLS`` calls queued with the last one synced; each side's figure is the faster
of its two. XLA's kernel time from its profiler is printed beside (on the H200 its synced call
took 6x its kernel: host time). ``ratio`` is IREE's seconds over XLA's; IREE's kernel alone is
Nsight Compute's to read (the README's command).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import gpu_kernel_time  # noqa: E402

SHAPE = (128256, 2048)  # [out, in]
CALLS = 50


def gemv(x, w):
    return jnp.einsum("ti,oi->to", x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def specs(shape=SHAPE):
    return jax.ShapeDtypeStruct((1, shape[1]), jnp.bfloat16), jax.ShapeDtypeStruct(shape, jnp.bfloat16)


def export(shape=SHAPE) -> str:
    """The StableHLO module IREE compiles (``input.mlir``)."""
    text = jax.export.export(jax.jit(gemv))(*specs(shape)).mlir_module()
    lines = [re.sub(r" loc\([^()]*\)$", "", line) for line in text.splitlines() if not line.startswith("#loc")]
    return "\n".join(lines) + "\n"  # without locations: they name this machine's paths


def inputs(shape=SHAPE):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, shape[1]), np.float32).astype(jnp.bfloat16)
    w = (rng.standard_normal(shape, np.float32) * shape[1] ** -0.5).astype(jnp.bfloat16)
    return x, w


def per_call(call, sync, calls: int = CALLS) -> dict:
    """Seconds per call two ways: each call's result synced (``synced``: the host's round trip
    included) and ``calls`` calls queued back to back with the last one synced (``queued``: the
    device's time where the runtime returns before the work is done)."""
    for _ in range(3):
        sync(call())
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(calls - 1):
        call()
    sync(call())
    return {"synced": statistics.median(times), "queued": (time.perf_counter() - t0) / calls}


def run(vmfb: str, shape=SHAPE) -> dict:
    import iree.runtime as rt

    x, w = inputs(shape)
    config = rt.Config("cuda")
    module = rt.VmModule.mmap(config.vm_instance, vmfb)
    context = rt.SystemContext(config=config)
    context.add_vm_module(module)
    main = context.modules[module.name]["main"]
    xi, wi = rt.asdevicearray(config.device, x), rt.asdevicearray(config.device, w)
    iree_y = np.asarray(main(xi, wi).to_host())
    iree_t = per_call(lambda: main(xi, wi), lambda y: y.to_host())

    xj, wj = gpu_kernel_time.put((x, w))
    f = jax.jit(gemv)
    xla_y = np.asarray(f(xj, wj))
    xla_t = per_call(lambda: f(xj, wj), lambda y: np.asarray(y))
    kernel = gpu_kernel_time.device_seconds(f, [(xj, wj)])
    # the fastest each side was timed at; XLA's own kernel time bounds how far host time hides it
    iree_s, xla_s = min(iree_t.values()), min(xla_t.values())
    nbytes = shape[0] * shape[1] * 2
    ref = x.astype(np.float32) @ w.astype(np.float32).T
    return {
        "reproducer": "iree-cuda-gemv",
        **gpu_kernel_time.environment(),
        "iree_runtime": importlib.metadata.version("iree-base-runtime"),
        "shape": list(shape),
        "iree": {"seconds": iree_s, "bytes_per_s": nbytes / iree_s, "timings": iree_t},
        "xla": {"seconds": xla_s, "bytes_per_s": nbytes / xla_s, "timings": xla_t, "kernel": kernel},
        "max_abs_err": {
            "iree": float(np.max(np.abs(iree_y.astype(np.float32) - ref))),
            "xla": float(np.max(np.abs(xla_y.astype(np.float32) - ref))),
        },
        "ratio": iree_s / xla_s,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write input.mlir")
    e.add_argument("--out", default=str(HERE / "input.mlir"))
    r = sub.add_parser("run", help="time IREE's module and XLA on this GPU")
    r.add_argument("--vmfb", required=True)
    r.add_argument("--out", help="also write the JSON record here")
    args = p.parse_args(argv)
    if args.command == "export":
        Path(args.out).write_text(export())
        return 0
    gpu_kernel_time.emit(run(args.vmfb), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
