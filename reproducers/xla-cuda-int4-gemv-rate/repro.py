"""XLA-CUDA's fused int4 GEMV reads its bytes at a fraction of the rate of its bf16 GEMV.

One linear of Llama-3.2-1B's MLP (out 8192, in 2048), one activation row, bf16:

* ``bf16-dot``:    ``y = x @ w.T``, ``w`` bf16 ``[8192, 2048]`` (33.6 MB)
* ``bf16-reduce``: the same as multiply + reduce (XLA's other bf16 GEMV: one reduction kernel)
* ``int4-reduce``: ``w = q * s + b`` with ``q`` uint4 ``[8192, 2048]``, ``s``, ``b`` bf16 per group
  of 64 inputs (MLX's affine int4), the code made a float by bit manipulation (``q | 0x4300``
  as bf16, minus 128: exact), multiply + reduce in float32. XLA fuses the dequant into the
  reduction: one kernel reading 9.4 MB.

Prints per-call device time from JAX's profiler and bytes/s of each case's weights; ``ratio`` is
int4's bytes/s over the faster bf16's. A kernel bound by memory reads int4 and bf16 at about the
same rate (ratio near 1, int4 ~3.5x faster); XLA's int4 kernel is bound by instruction issue.

    python reproducers/xla-cuda-int4-gemv-rate/repro.py [--out result.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gpu_kernel_time  # noqa: E402

SHAPE = (8192, 2048)  # Llama-3.2-1B's gate and up projections: [out, in]
GROUP = 64

bf16_dot, bf16_reduce = gpu_kernel_time.bf16_dot, gpu_kernel_time.bf16_reduce


def dequant(q, s, b):
    """``q * s + b`` in bf16 ``[out, in]``; ``q`` uint4 ``[out, in]``, ``s``/``b`` ``[out, in/64]``."""
    out, n_in = q.shape
    w = jax.lax.bitcast_convert_type(q.astype(jnp.uint16) | jnp.uint16(0x4300), jnp.bfloat16) - jnp.bfloat16(128)
    return (w.reshape(out, -1, GROUP) * s[:, :, None] + b[:, :, None]).reshape(out, n_in)


def int4_reduce(x, q, s, b):
    return bf16_reduce(x, dequant(q, s, b))


def weights(shape, seed: int = 0) -> dict:
    """Random codes, scales and biases, and the bf16 weight they dequantize to (on the host)."""
    rng = np.random.default_rng(seed)
    out, n_in = shape
    q = rng.integers(0, 16, shape, dtype=np.uint8)
    s = (rng.random((out, n_in // GROUP), np.float32) * 0.02 + 0.001).astype(jnp.bfloat16)
    b = (rng.standard_normal((out, n_in // GROUP), np.float32) * 0.05).astype(jnp.bfloat16)
    qf = q.astype(jnp.bfloat16).reshape(out, -1, GROUP)
    w = (qf * s[..., None] + b[..., None]).reshape(shape)  # bf16, rounded after each op as the graph's
    return {"q": q.astype(jnp.uint4), "s": s, "b": b, "w": w}


def int4_bytes(shape) -> int:
    out, n_in = shape
    return out * n_in // 2 + 2 * out * (n_in // GROUP) * 2


def run(shape=SHAPE, rows: int = 1) -> dict:
    put = gpu_kernel_time.put
    x = put(np.random.default_rng(1).standard_normal((rows, shape[1]), np.float32).astype(jnp.bfloat16))
    host = weights(shape)  # one content, many buffers: the L2 caches by address
    dense = gpu_kernel_time.copies(lambda i: (x, put(host["w"])), shape[0] * shape[1] * 2)
    packed = gpu_kernel_time.copies(lambda i: (x, *put((host["q"], host["s"], host["b"]))), int4_bytes(shape))
    cases = {
        "bf16-dot": gpu_kernel_time.case(jax.jit(bf16_dot), dense, shape[0] * shape[1] * 2),
        "bf16-reduce": gpu_kernel_time.case(jax.jit(bf16_reduce), dense, shape[0] * shape[1] * 2),
        "int4-reduce": gpu_kernel_time.case(jax.jit(int4_reduce), packed, int4_bytes(shape)),
    }
    record = {"reproducer": "xla-cuda-int4-gemv-rate", **gpu_kernel_time.environment(), "shape": list(shape)}
    record |= {"rows": rows, "cases": cases}
    if all(c["seconds"] for c in cases.values()):
        best = gpu_kernel_time.faster_bf16(cases)
        record |= {
            "best_bf16": best,
            "ratio": cases["int4-reduce"]["bytes_per_s"] / cases[best]["bytes_per_s"],
            "int4_speedup": cases[best]["seconds"] / cases["int4-reduce"]["seconds"],
        }
    return record


if __name__ == "__main__":
    sys.exit(gpu_kernel_time.main(run, __doc__))
