"""XLA-CUDA's int4 GEMM (signed 4-bit codes straight into the dot) against its bf16 dot on the
same linear, at 1, 2 and 16 activation rows.

One linear of Llama-3.2-1B's MLP (out 8192, in 2048), bf16 activations:

* ``bf16-dot``:    ``y = x @ w.T``, ``w`` bf16 ``[8192, 2048]`` (33.6 MB)
* ``bf16-reduce``: the same as multiply + reduce (XLA's other bf16 GEMV)
* ``s4-dot``:      ``y = (x @ q.T) * c``, ``q`` int4 ``[8192, 2048]`` (8.4 MB), one bf16 scale ``c``
  per output channel: ``convert`` is the only op between the codes and the dot, the pattern
  XLA-GPU's int4 GEMM matches.

Prints per-call device time from JAX's profiler for each case at each row count and, per row
count, ``speedup``: the faster bf16's time over the int4 dot's. A GEMM bound by memory runs the
int4 dot up to ~4x faster than bf16 here (4x fewer weight bytes).

    python reproducers/xla-cuda-s4-dot/repro.py [--out result.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gpu_kernel_time  # noqa: E402

SHAPE = (8192, 2048)  # [out, in]
ROWS = (1, 2, 16)
F32 = jnp.float32

bf16_dot, bf16_reduce = gpu_kernel_time.bf16_dot, gpu_kernel_time.bf16_reduce


def s4_dot(x, q, c):
    y = jnp.einsum("ti,oi->to", x, q.astype(x.dtype), preferred_element_type=F32)
    return (y * c.astype(F32)[None, :]).astype(x.dtype)


def weights(shape) -> dict:
    """Random int4 codes, per-channel scales, and the bf16 weight ``q * c`` (rounded to bf16)."""
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, shape, dtype=np.int8)
    c = (rng.random(shape[0], np.float32) * 0.02 + 0.001).astype(jnp.bfloat16)
    w = (q.astype(np.float32) * c.astype(np.float32)[:, None]).astype(jnp.bfloat16)
    return {"q": q.astype(jnp.int4), "c": c, "w": w}


def run(shape=SHAPE, rows=ROWS) -> dict:
    host = weights(shape)
    dense_bytes, int4_bytes = shape[0] * shape[1] * 2, shape[0] * shape[1] // 2 + shape[0] * 2
    record = {"reproducer": "xla-cuda-s4-dot", **gpu_kernel_time.environment(), "shape": list(shape), "rows": {}}
    put = gpu_kernel_time.put
    for t in rows:
        x = put(np.random.default_rng(1).standard_normal((t, shape[1]), np.float32).astype(jnp.bfloat16))
        dense = gpu_kernel_time.copies(lambda i, x=x: (x, put(host["w"])), dense_bytes)
        packed = gpu_kernel_time.copies(lambda i, x=x: (x, *put((host["q"], host["c"]))), int4_bytes)
        cases = {
            "bf16-dot": gpu_kernel_time.case(jax.jit(bf16_dot), dense, dense_bytes),
            "bf16-reduce": gpu_kernel_time.case(jax.jit(bf16_reduce), dense, dense_bytes),
            "s4-dot": gpu_kernel_time.case(jax.jit(s4_dot), packed, int4_bytes),
        }
        row = {"cases": cases}
        if all(c["seconds"] for c in cases.values()):
            best = gpu_kernel_time.faster_bf16(cases)
            row |= {"best_bf16": best, "speedup": cases[best]["seconds"] / cases["s4-dot"]["seconds"]}
        record["rows"][str(t)] = row
    return record


if __name__ == "__main__":
    sys.exit(gpu_kernel_time.main(run, __doc__))
