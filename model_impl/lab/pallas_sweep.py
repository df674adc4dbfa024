"""Sweep of Pallas (Triton) int4 GEMV kernels against XLA's bf16 GEMV at the Llama-3.2-1B decode
shapes (issue 15, item 3: a tuned Pallas int4 GEMV). One JSON file with every row
(``results/pallas-gemv-*.json``, read by :mod:`model_impl.report.vs_bf16_section`).

    # GPU machine, from the repo root (~3-4 minutes on an H100):
    python3 -m model_impl pallas-sweep --out $OUT/pallas-gemv.json
    # here, on the CPU: every kernel variant in Pallas' interpreter on small shapes against the
    # host dequant, through the same timing loop (the times mean nothing there):
    .venv/bin/python -m model_impl pallas-sweep --interpret --small --out /tmp/pallas-gemv-cpu.json
    # here: lower every GPU-sweep variant to Triton IR (catches Pallas-to-Triton lowering errors):
    .venv/bin/python -m model_impl pallas-sweep --lower-only --out /tmp/pallas-gemv-lower.json
    # here: the timing harness's own checks (every GEMV in the optimized HLO; the bandwidth guard):
    .venv/bin/python -m model_impl pallas-sweep --self-test

Weights: MLX affine int4, group 64 (:mod:`model_impl.quant`): ``words [out, in/8]`` uint32 with
code ``k`` of a row in nibble ``k % 8`` of word ``k // 8``; ``scales``/``biases`` ``[out, in/64]``
(bf16 as an MLX bf16 checkpoint stores them, or float32); ``w = q * s + b``. Random uniform codes
packed by :func:`quant.pack`, as a :class:`QuantizedLinear`; the baselines' int4 forms are the
suite's own (:func:`representations.convert_linear`). Activations bf16 ``[B, in]``, output bf16.

The kernel and every variant it can take (tiles, dequant modes, code-to-float conversions,
split-K, accumulators, the tensor-core ``dot`` mode) are the package's: :class:`pallas_int4.Variant`
in :mod:`model_impl.llama.pallas_int4`, whose docstring describes them; ``--mosaic`` adds the Mosaic
GPU variant (:mod:`model_impl.llama.pallas_int4_mgpu`) with its own configurations. ``--batch B``
times every GEMV at B activation rows (one batch per run and file).

Timing: one jitted ``fori_loop`` runs ``N`` GEMVs over ``C`` distinct weight copies (their bytes
>= ``--footprint-mb``, twice the H100's 50 MB L2, so that each GEMV reads its weights from HBM as
a decode step does). Every GEMV's output is consumed: GEMV ``i``'s inputs (x and its weights) go
through an ``optimization_barrier`` together with GEMV ``i-1``'s output, and that barrier's copy
of the output is what the loop carries and returns (one slot per copy), so no GEMV is dead code,
none is hoisted out of the loop (its x changes every step through the barrier) and none is merged
with another (distinct weights). An earlier version passed the previous output through the
barrier but never used the barrier's copy of it: XLA's algebraic simplifier pruned that unused
barrier operand and DCE then deleted every GEMV but the loop's last, so a loop of ``C`` copies
ran one GEMV per round over one copy (which fit in L2) and was divided by ``C`` (14 TB/s "bf16
GEMVs" on an H200). ``xla-dot-chained`` rows time XLA's dot with a true data dependency instead
(x of every GEMV = ``x + 0 * acc[0]``, acc the float32 sum of all earlier outputs, returned): a
cross-check of the barrier chain that pays one small extra kernel per GEMV. ``Q`` calls are
queued back to back (host dispatch hidden; ``enqueue_frac`` near 1 means it was not) and synced
with ``block_until_ready`` on every output; per GEMV = median over rounds of wall time / (Q * N),
after a warm-up. Guard: the run first measures the device's memory bandwidth itself over a
``--bw-mb`` float32 array (:func:`roofline.copy_bandwidth`, read + written bytes / time, and
:func:`roofline.read_bandwidth`, a ``sum``, read bytes / time); a timing whose bytes / time
exceed 1.1x the larger of the two is physically impossible for weights read from memory, is
marked ``invalid`` and is left out of every selection, ``best`` and ``step_estimate``. Every
variant's output (the loop's last GEMV) is first checked against ``x @ dequant(W).T`` computed
on the host in float64 from the same codes, scales and biases (``QuantizedLinear.dequantize``);
a variant over its tolerance is recorded and not timed. Any failure (lowering, Triton compile, run) is one error line.
``--self-test`` (CPU, seconds): the optimized HLO of the XLA baselines' loops holds one GEMV per
weight copy per round, and the guard drops a planted too-fast timing.

Sweep (per shape, staged, compiles in parallel threads, timing sequential):
  baselines  XLA bf16 dot, XLA bf16 multiply + reduce, the current ``pallas_int4`` kernel
             (``pallas-u32``), XLA's in-graph int4 ``u32-word`` and ``u4-magic`` forms, XLA's dot
             data-chained: each through the suite's :func:`linears.linear`
  stage 1    tiles: (rows, step_words, split) at fac32/magic2, bf16 scales, 4 warps, 3 stages
  stage 2    launch: the 2 best tiles x num_warps x num_stages
  stage 3    dequant: the best config x modes/cvt, 1-d accumulator, float32 scales, x as one
             load split in 8 (``xload=split``), atomic split-K
  final      the 3 best variants and the baselines timed again (less winner's-curse bias)
then a whole-step estimate: sum over the step's linears (7 per layer x 16 + the bf16 head) of
the per-shape times. ``--small`` (the interpreter check) runs stage 1 and every dequant mode on
each shape's first ``--mode-tiles`` tiles, then the final stage, and fails (exit code 1) on any
wrong or failed variant; ``--shapes`` and ``--tiles`` narrow any run.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import env, quant
from ..analyzers import xla_hlo
from ..llama import pallas_int4
from ..llama.linears import DenseReduceLinear, QuantizedLinear, linear, quantized_linear_spec, tensor_bytes
from ..llama.pallas_int4 import GROUP, Variant
from ..llama.representations import convert_linear
from ..llama.shapes import llama32_config
from . import roofline
from .anchors import step_shapes

F32, BF16 = jnp.float32, jnp.bfloat16

# Checks: max |y - ref| / rms(ref), ref = x @ dequant(W).T in float64 on the host. The output is
# bf16 (relative rounding 2^-9 of each element, elements up to ~4x the rms: ~2^-7 rms); float32
# accumulation over <= 8192 terms adds far less. 2^-5 covers that with room, and a variant that
# reads one nibble of eight wrong errs by ~0.3 rms. fac16 rounds each product and each 8-term
# per-word sum to bf16 (~2^-8 of a word's dot, amplified ~1.6x by the bias cancelling the codes'
# mean): 2^-4.
TOL = {
    "fac32": 2.0**-5,
    "deq32": 2.0**-5,
    "deqx": 2.0**-5,
    "dot": 2.0**-5,
    "fac16": 2.0**-4,
    "xla": 2.0**-5,
    "mosaic": 2.0**-5,
}

# Llama-3.2-1B: every linear of one decode step, [out, in] -> count (the head last, bf16).
STEP = collections.Counter(step_shapes(llama32_config()))
HEAD = max(STEP, key=lambda s: s[0])
GPU_SHAPES = [(8192, 2048), (2048, 8192), (2048, 2048), (512, 2048)]
SMALL_SHAPES = [(256, 512), (128, 1024)]

# Stage-1 tiles per shape: (rows per program, words per row per K-step, split-K parts); a step of
# all a part's words is whole-K (no loop). Chosen for 1-8K words per step and >= 128 programs.
TILES = {
    (8192, 2048): [
        (4, 256, 1), (8, 256, 1), (16, 128, 1), (16, 256, 1), (32, 64, 1),
        (32, 128, 1), (32, 256, 1), (64, 64, 1), (64, 128, 1), (128, 64, 1),
    ],
    (2048, 8192): [
        (8, 512, 1), (16, 256, 1), (16, 512, 1), (32, 128, 1), (32, 256, 1), (64, 64, 1),
        (8, 256, 2), (16, 256, 2), (32, 128, 2), (8, 256, 4), (16, 128, 4), (16, 64, 8),
    ],
    (2048, 2048): [
        (4, 256, 1), (8, 128, 1), (8, 256, 1), (16, 128, 1), (16, 256, 1), (32, 64, 1),
        (8, 128, 2), (16, 64, 2), (16, 128, 2), (8, 64, 4), (16, 64, 4),
    ],
    (512, 2048): [
        (4, 256, 1), (8, 128, 1), (8, 256, 1), (16, 128, 1), (4, 128, 2),
        (8, 128, 2), (16, 64, 2), (4, 64, 4), (8, 64, 4), (16, 64, 4),
    ],
}  # fmt: skip
# Interpreter check (--small): every code path on shapes with few groups.
SMALL_TILES = {
    (256, 512): [(16, 64, 1), (16, 16, 1), (32, 32, 2), (8, 8, 4), (128, 16, 1)],
    (128, 1024): [(16, 32, 2), (8, 128, 1), (32, 64, 1)],
}
# Tensor-core tiles (mode dot, x padded to 16 rows), tried at stage 1 beside the FMA tiles at
# every batch: (rows, step_words, split).
DOT_TILES = [(16, 64, 1), (32, 64, 1), (16, 128, 1), (32, 128, 1), (64, 64, 1), (16, 64, 2), (16, 64, 4)]
WARPS_STAGES = [(2, 3), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (8, 3)]
MODES = [  # stage 3: departures from stage 1's fac32 / magic2 / 3d / bf16 scales / strided x
    dict(cvt="magic"),
    dict(cvt="cvt"),
    dict(mode="deq32", cvt="magic"),
    dict(mode="deqx", cvt="magic"),
    dict(mode="deqx", cvt="cvt"),
    dict(mode="fac16", cvt="magic"),
    dict(acc="1d"),
    dict(scales="f32"),
    dict(xload="split"),
    dict(atomic=True),  # split > 1 only
    dict(mode="dot", cvt="magic"),  # rows >= 16 only
]


def pallas_gemv(v: Variant, interpret: bool):
    """``(x [B, in], w: QuantizedLinear) -> y [B, out]`` through the package's kernel in ``v``."""

    def gemv(x, w: QuantizedLinear):
        return pallas_int4.gemv(x, w.packed, w.scales, w.biases, v, interpret)

    return gemv


def mosaic_gemv(c):
    """The same through the Mosaic GPU variant (:mod:`model_impl.llama.pallas_int4_mgpu`)."""
    from ..llama import pallas_int4_mgpu

    def gemv(x, w: QuantizedLinear):
        return pallas_int4_mgpu.gemv(x, w.packed, w.scales, w.biases, config=c)

    return gemv


def mosaic_configs(out: int, n_in: int, batch: int) -> list:
    """The Mosaic GPU variant's configurations tried at one shape: its default and neighbours
    (row block, step, stages, split-K), those it supports."""
    from ..llama import pallas_int4_mgpu as M

    base = M.default_config(out, n_in, batch)
    cands = [base] + [
        dataclasses.replace(base, **d)
        for d in (dict(block_rows=32), dict(step_words=128), dict(stages=2), dict(split_k=base.split_k * 2))
    ]
    return [c for c in dict.fromkeys(cands) if M.supported(out, n_in, batch, c) is None]


# --- the baselines, through the suite's own forms ---------------------------------------------
def form_gemv(x, w):
    """``x [B, in] @ W.T -> [B, out]`` through the suite's :func:`linears.linear` for any weight
    form (a float array is XLA's dot)."""
    return linear(x, w)


BASELINES = {  # name -> (weight format: "dense", "dense-reduce" or a representation; reference dtype)
    "xla-dot": ("dense", "dense"),
    "xla-dot-chained": ("dense", "dense"),  # chain="data": the barrier chain's cross-check
    "xla-reduce": ("dense-reduce", "dense"),
    "xla-u32-word": ("u32-word", "float32"),
    "xla-u4-magic": ("u4-magic", "bfloat16"),  # the dequant in x's dtype
}
DENSE_FORMATS = ("dense", "dense-reduce")


# --- weights ----------------------------------------------------------------------------------
def random_mlx(rng: np.random.Generator, out: int, n_in: int) -> QuantizedLinear:
    """MLX words of uniform random codes (:func:`quant.pack`), bf16 scales of either sign (MLX's
    can be negative) and biases that centre the codes on 0, host arrays."""
    groups = n_in // GROUP
    words = quant.pack(rng.integers(0, 16, (out, n_in), dtype=np.uint8), 4)
    sign = np.where(rng.random((out, groups)) < 0.5, 1.0, -1.0).astype(np.float32)
    s = 0.004 * rng.uniform(0.5, 1.5, (out, groups)).astype(np.float32) * sign
    b = -7.5 * s + 0.002 * rng.standard_normal((out, groups), dtype=np.float32)
    return QuantizedLinear(words, s.astype(BF16), b.astype(BF16), GROUP, 4)


class Weights:
    """Distinct device copies of one shape's weights in every format, made on first use: float
    bf16 (``dense``, ``dense-reduce``), MLX's words with bf16 or float32 scales (``mlx``,
    ``mlx-f32``: the Pallas variants'), and any representation of those words. The MLX copies
    stay on the host too, for the conversions and the reference."""

    def __init__(self, out: int, n_in: int, footprint: int, max_copies: int, seed: int, batch: int = 1):
        self.out, self.n_in, self.batch = out, n_in, batch
        int4_bytes = tensor_bytes(quantized_linear_spec((out, n_in), GROUP, 4, BF16))
        self.copies = {
            "int4": max(1, min(max_copies, math.ceil(footprint / int4_bytes))),
            "dense": max(1, min(max_copies, math.ceil(footprint / (out * n_in * 2)))),
        }
        self.key = jax.random.PRNGKey(seed)
        self.seed = seed
        self._cache = {}

    def get(self, fmt: str):
        if fmt not in self._cache:
            self._cache[fmt] = self._make(fmt)
        return self._cache[fmt]

    @functools.cached_property
    def host_mlx(self) -> tuple[QuantizedLinear, ...]:
        rng = np.random.default_rng([self.seed, self.out, self.n_in])
        return tuple(random_mlx(rng, self.out, self.n_in) for _ in range(self.copies["int4"]))

    def _make(self, fmt: str):
        out, n_in = self.out, self.n_in
        if fmt == "dense":
            keys = jax.random.split(jax.random.fold_in(self.key, 1), self.copies["dense"])
            return tuple(0.02 * jax.random.normal(k, (out, n_in), BF16) for k in keys)
        if fmt == "dense-reduce":
            return tuple(DenseReduceLinear(w) for w in self.get("dense"))
        if fmt == "mlx":
            return jax.device_put(self.host_mlx)
        if fmt == "mlx-f32":
            f32 = lambda w: dataclasses.replace(w, scales=w.scales.astype(F32), biases=w.biases.astype(F32))  # noqa: E731
            return jax.device_put(tuple(f32(w) for w in self.host_mlx))
        return jax.device_put(tuple(convert_linear(w, fmt) for w in self.host_mlx))  # a representation

    def nbytes(self, fmt: str) -> int:
        """Bytes one GEMV reads: its weight (4-bit codes at half a byte) + x + y (bf16)."""
        return tensor_bytes(self.get(fmt)[0]) + 2 * self.batch * (self.n_in + self.out)

    @functools.cached_property
    def x(self):
        return jax.random.normal(jax.random.fold_in(self.key, 3), (self.batch, self.n_in), BF16)

    @functools.cache  # noqa: B019 (one Weights per shape, alive for the whole run)
    def reference(self, kind: str) -> np.ndarray:
        """float64 ``x @ W.T`` ``[B, out]`` of the last copy: ``dense``, or the host dequant in ``kind``."""
        x = np.asarray(self.x).astype(np.float64)
        if kind == "dense":
            return x @ np.asarray(self.get("dense")[-1]).astype(np.float64).T
        return x @ self.host_mlx[-1].dequantize(kind).astype(np.float64).T


# --- compile, check, time ---------------------------------------------------------------------
def looped(gemv, copies: int, outer: int, chain: str = "barrier"):
    """``(x, ws) -> outputs``: ``outer`` rounds of one GEMV per weight copy; every GEMV's output
    is part of what the function returns, and ``outputs[-1]`` is the last copy's last GEMV (the
    one checked). ``chain``: ``barrier`` ties GEMV i's inputs to GEMV i-1's output through an
    optimization barrier whose copy of that output is what the loop carries (a barrier output
    nothing reads is pruned by XLA, and the GEMV feeding it deleted); ``data`` feeds every GEMV
    ``x + 0 * acc[0]``, acc the float32 sum of all earlier outputs (a true data dependency, one
    small extra kernel per GEMV)."""
    one = jax.jit(gemv)

    def run(x, ws):
        assert len(ws) == copies
        y0 = jnp.zeros(jax.eval_shape(one, x, ws[0]).shape, x.dtype)

        if chain == "barrier":
            # carry: x, `old` (the previous round's last output, through this round's first
            # barrier) and one slot per copy (this round's outputs, each through the next barrier)
            def body(_, carry):
                x, _old, ys = carry
                prev, passed = ys[-1], []
                for w in ws:
                    x, w, prev = jax.lax.optimization_barrier((x, w, prev))
                    passed.append(prev)
                    prev = one(x, w)
                return x, passed[0], (*passed[1:], prev)

            init = (x, y0, (y0,) * copies)
            _, old, ys = body(0, init) if outer == 1 else jax.lax.fori_loop(0, outer, body, init)
            return (old, *ys)
        if chain == "data":

            def body(_, carry):
                x, acc, y = carry
                for w in ws:
                    y = one(x + (acc.ravel()[0] * 0).astype(x.dtype), w)  # float * 0 is not folded (NaN)
                    acc = acc + y.astype(F32)
                return x, acc, y

            init = (x, jnp.zeros(y0.shape, F32), y0)
            _, acc, y = body(0, init) if outer == 1 else jax.lax.fori_loop(0, outer, body, init)
            return acc, y
        raise ValueError(chain)

    return jax.jit(run)


GUARD_FACTOR = 1.1
INVALID = "faster than the memory bandwidth measured in this run (1.1x the best of copy and read-only sum)"


def memory_bandwidth(platform_name: str, nbytes: int) -> dict:
    """The device's memory bandwidth, measured here: a copy (:func:`roofline.copy_bandwidth`,
    read + written bytes) and a sum (:func:`roofline.read_bandwidth`, read bytes) over a float32
    array of ``nbytes``, and the limit no weight-reading timing may beat."""
    copy = roofline.copy_bandwidth(platform_name, nbytes) / 1e9
    read = roofline.read_bandwidth(platform_name, nbytes) / 1e9
    return {
        "bytes": nbytes,
        "copy_gb_per_s": copy,
        "read_gb_per_s": read,
        "limit_gb_per_s": GUARD_FACTOR * max(copy, read),
        "method": "best of 10 synced calls each (model_impl.lab.roofline); copy: a + 0, (read + written bytes) "
        f"/ time; read: sum(a), read bytes / time; limit: {GUARD_FACTOR} x the larger",
    }


def guard(res: dict, limit_gb_per_s: float | None) -> dict:
    """Mark a timing ``res`` (``seconds``, ``gb_per_s``) invalid when faster than the limit."""
    if limit_gb_per_s and res.get("gb_per_s", 0) > limit_gb_per_s:
        res["invalid"] = INVALID
    return res


def row_seconds(r: dict) -> float:
    """A timed row's time: its final re-timing if it has one, else its first."""
    return r.get("final", {}).get("seconds", r["seconds"])


def valid(r: dict) -> bool:
    return "seconds" in r and "invalid" not in r


def select_best(rows: list[dict], shapes) -> dict:
    """Per shape and family (each baseline by name, the Pallas variants as ``pallas-best``): the
    fastest valid row."""
    best = collections.defaultdict(dict)
    for s in shapes:
        for r in [r for r in rows if tuple(r["shape"]) == tuple(s) and valid(r)]:
            t = row_seconds(r)
            fam = r["name"] if r["family"] == "xla" else f"{r['family']}-best"
            if fam not in best[s] or t < best[s][fam]["seconds"]:
                best[s][fam] = {"name": r["name"], "seconds": t, "gb_per_s": r["bytes"] / t / 1e9}
    for fams in best.values():
        dense = min((fams[f]["seconds"] for f in ("xla-dot", "xla-reduce") if f in fams), default=None)
        for fam in fams.values():
            if dense:
                fam["speedup_vs_xla_bf16"] = dense / fam["seconds"]
    return best


class OverBudget(Exception):
    """A compile not started because the run's time budget is spent."""


@dataclasses.dataclass
class Job:
    shape: tuple[int, int]
    family: str  # xla | pallas (the Triton kernel's variants) | mosaic (the Mosaic GPU variant's)
    name: str
    stage: str
    gemv: object
    fmt: str
    ref: str
    tol: float
    variant: Variant | None = None
    chain: str = "barrier"
    row: dict = dataclasses.field(default_factory=dict)
    compiled: object = None
    args: tuple = ()
    gemvs: int = 0


class Sweep:
    def __init__(self, args):
        self.a = args
        self.t0 = time.perf_counter()
        self.weights: dict[tuple[int, int], Weights] = {}
        self.rows: list[dict] = []
        self.jobs: list[Job] = []
        self.record = {
            "environment": env.environment("cpu" if args.interpret else "cuda", **self._jax_env()),
            "config": {
                "interpret": args.interpret,
                "batch": args.batch,
                "footprint_mb": args.footprint_mb,
                "min_gemvs_per_call": args.min_gemvs,
                "queued_calls": args.queue,
                "rounds": args.rounds,
                "budget_s": args.budget_s,
                "jobs": args.jobs,
                "timing": (
                    "per GEMV = median over rounds of (wall time of Q queued calls of one jitted "
                    "fori_loop running N GEMVs over C distinct weight copies, synced by "
                    "block_until_ready on every output) / (Q * N); every GEMV's output is returned "
                    "(chain=barrier: GEMV i's x and weights pass an optimization barrier with GEMV "
                    "i-1's output, whose barrier copy the loop carries and returns; chain=data: x "
                    "+ 0 * acc[0], acc the sum of all earlier outputs); C copies span >= "
                    "footprint_mb so weights come from HBM; a time faster than the bandwidth "
                    "measured at the start is marked invalid and left out of best / step_estimate"
                ),
                "tolerances_vs_rms": TOL,
                "options": {k: v for k, v in vars(args).items() if k not in ("command", "func")},
            },
            "rows": self.rows,
        }
        self.limit = None  # GB/s: no timing may beat it (set by measure_bandwidth)

    def measure_bandwidth(self):
        bw = memory_bandwidth(jax.default_backend(), self.a.bw_mb << 20)
        self.record["memory_bandwidth"] = bw
        self.limit = bw["limit_gb_per_s"]
        print(
            f"[{self.elapsed():6.1f} s] memory bandwidth: copy {bw['copy_gb_per_s']:.0f} GB/s, read "
            f"{bw['read_gb_per_s']:.0f} GB/s; timings over {self.limit:.0f} GB/s are invalid",
            flush=True,
        )

    @staticmethod
    def _jax_env():
        extra = {"jax_backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS")}
        try:
            extra["device_kind"] = jax.devices()[0].device_kind
        except RuntimeError as e:
            extra["device_kind"] = str(e)
        return extra

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.a.budget_s > 0 and self.elapsed() > self.a.budget_s

    def w(self, shape) -> Weights:
        if shape not in self.weights:
            self.weights[shape] = Weights(
                *shape, self.a.footprint_mb << 20, self.a.max_copies, self.a.seed, self.a.batch
            )
        return self.weights[shape]

    def save(self):
        if self.a.out:
            Path(self.a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.a.out).write_text(json.dumps(self.record, indent=1, default=str) + "\n")

    # -- jobs --
    def baseline_jobs(self, shape) -> list[Job]:
        jobs = []
        for name, (fmt, ref) in BASELINES.items():
            if shape == HEAD and (fmt not in DENSE_FORMATS or name == "xla-dot-chained"):
                continue  # the head stays bf16
            family = "xla"
            chain = "data" if name == "xla-dot-chained" else "barrier"
            jobs.append(Job(shape, family, name, "baseline", form_gemv, fmt, ref, TOL["xla"], chain=chain))
        return jobs

    def pallas_job(self, shape, v: Variant, stage: str) -> Job | None:
        why = v.invalid(*shape)
        if why:
            return None
        ref = "bfloat16" if v.mode in ("deqx", "dot") else "float32"  # x is bf16 here
        fmt = "mlx-f32" if v.scales == "f32" else "mlx"
        return Job(shape, "pallas", v.name, stage, pallas_gemv(v, self.a.interpret), fmt, ref, TOL[v.mode], v)

    def base(self, tile) -> Variant:
        """Stage 1's variant of a tile: the 3-d accumulator (a register file per activation row)
        at one or two rows, the 1-d one above (as :func:`pallas_int4.config_for` picks)."""
        return Variant(*tile, acc="3d" if self.a.batch <= 2 else "1d")

    def mosaic_job(self, shape, c) -> Job:
        name = f"mgpu-r{c.block_rows}-k{c.step_words}-st{c.stages}-s{c.split_k}"
        return Job(shape, "mosaic", name, "mosaic", mosaic_gemv(c), "mlx", "float32", TOL["mosaic"])

    def prepare(self, job: Job):
        """Compile (on a worker thread): the looped function for this job's copies."""
        if self.over_budget():
            raise OverBudget(f"budget ({self.a.budget_s} s) spent")
        wts = self.w(job.shape)
        ws = wts.get(job.fmt)
        copies = len(ws)
        if self.a.interpret:
            copies, outer = min(copies, 2), 1
            ws = ws[-copies:]
        elif job.shape == HEAD:
            outer = self.a.head_gemvs
        else:
            outer = max(1, math.ceil(self.a.min_gemvs / copies))
        leaves = jax.tree_util.tree_leaves(ws)
        try:
            ptrs = {a.unsafe_buffer_pointer() for a in leaves}
        except Exception:  # an array kind without a single buffer pointer: no check
            ptrs = set(range(len(leaves)))
        if len(ptrs) != len(leaves):
            raise RuntimeError(f"weight copies share buffers: {len(ptrs)} distinct of {len(leaves)}")
        t = time.perf_counter()
        job.compiled = looped(job.gemv, copies, outer, job.chain).lower(wts.x, ws).compile()
        job.row["compile_s"] = round(time.perf_counter() - t, 3)
        job.args, job.gemvs = (wts.x, ws), copies * outer
        job.row["chain"] = job.chain
        if job.family != "xla":
            text = job.compiled.as_text() or ""
            # Triton kernels in the executable: copies (one per GEMV of the loop body) or
            # copies * outer (the loop unrolled); fewer means GEMVs were removed
            job.row["custom_calls"] = {t: text.count(t) for t in ("__gpu$xla.gpu.triton", "mosaic_gpu")}

    def measure(self, job: Job, rounds: int) -> dict:
        fn, args = job.compiled, job.args
        queue = 1 if self.a.interpret else self.a.queue
        jax.block_until_ready(fn(*args))
        times, enqueue = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(queue):
                y = fn(*args)
            t_enq = time.perf_counter()
            jax.block_until_ready(y)  # every output of the last call (each call's are all live)
            t_end = time.perf_counter()
            times.append((t_end - t) / (queue * job.gemvs))
            enqueue.append((t_enq - t) / (t_end - t))
        res = {"seconds": statistics.median(times), "spread": [min(times), max(times)]}
        res["enqueue_frac"] = round(statistics.median(enqueue), 3)  # near 1: host-bound timing
        res["gb_per_s"] = self.w(job.shape).nbytes(job.fmt) / res["seconds"] / 1e9
        return guard(res, self.limit)

    def run_jobs(self, jobs: list[Job]):
        seen = {(tuple(r["shape"]), r["name"]) for r in self.rows}
        jobs = [j for j in jobs if j is not None and not ((j.shape, j.name) in seen or seen.add((j.shape, j.name)))]
        if not jobs:
            return
        if self.over_budget():
            for j in jobs:
                self._finish(j, {"skipped": f"budget ({self.a.budget_s} s) spent"})
            return
        for j in jobs:  # the weights, made on the main thread before the workers share them
            self.w(j.shape).get(j.fmt)
            self.w(j.shape).x  # noqa: B018
        print(f"[{self.elapsed():6.1f} s] compiling {len(jobs)} ({jobs[0].stage})", flush=True)
        errors, retries = {}, 3  # retried alone: a failure from threading, not the kernel (at most 3)
        with concurrent.futures.ThreadPoolExecutor(max(1, self.a.jobs)) as pool:
            futures = {pool.submit(self.prepare, j): j for j in jobs}
            for f in concurrent.futures.as_completed(futures):
                if f.exception() is not None:
                    errors[id(futures[f])] = f.exception()
        for j in jobs:  # timing strictly after compiling: no thread competes for the GIL
            e = errors.get(id(j))
            if e is not None and not isinstance(e, OverBudget) and self.a.jobs > 1 and retries > 0:
                retries -= 1
                try:  # once more alone, in case the failure came from compiling in threads
                    self.prepare(j)
                    j.row["compiled_on_retry"] = f"{type(e).__name__}: {str(e)[:200]}"
                    e = None
                except Exception as again:
                    e = again
            if isinstance(e, OverBudget):
                self._finish(j, {"skipped": str(e)})
            elif e is not None:
                self._finish(j, {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"})
            else:
                self._check_and_time(j)

    def _check_and_time(self, j: Job):
        wts = self.w(j.shape)
        try:
            y = np.asarray(j.compiled(*j.args)[-1]).astype(np.float64)
            ref = wts.reference(j.ref)
            rms = float(np.sqrt(np.mean(ref**2)))
            err = float(np.abs(y - ref).max())
            ok = bool(np.isfinite(err) and err <= j.tol * rms)
            res = {"check": {"max_abs_err": err, "err_over_rms": err / rms, "tol_over_rms": j.tol, "ok": ok}}
            if ok:
                res.update(self.measure(j, self.a.rounds))
                res["bytes"] = wts.nbytes(j.fmt)
        except Exception as e:  # a failure is a finding of the variant
            res = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"}
            if self.a.verbose:
                traceback.print_exc()
        self._finish(j, res)

    def _finish(self, j: Job, res: dict):
        row = {"shape": list(j.shape), "family": j.family, "name": j.name, "stage": j.stage}
        if j.variant is not None:
            row["params"] = dataclasses.asdict(j.variant)
        row.update(j.row)
        row["copies"] = len(j.args[1]) if j.args else None
        row["gemvs_per_call"] = j.gemvs or None
        row.update(res)
        j.row = row
        if not self.a.interpret:
            j.compiled = j.compiled if "seconds" in row else None  # keep executables of timed rows only
        self.rows.append(row)
        self.jobs.append(j)
        self._print(row)
        self.save()

    def _print(self, row):
        shape = "x".join(map(str, row["shape"]))
        head = f"[{self.elapsed():6.1f} s] {shape:>11} {row['name']:<52}"
        if "seconds" in row:
            c = row["check"]
            print(
                f"{head} {row['seconds'] * 1e6:8.2f} us {row['gb_per_s']:7.1f} GB/s"
                f"  err/rms {c['err_over_rms']:.1e}  compile {row.get('compile_s', 0):.1f} s"
                f"  enq {row['enqueue_frac']:.2f}{'  INVALID (faster than memory)' if 'invalid' in row else ''}",
                flush=True,
            )
        elif "check" in row:
            print(
                f"{head} WRONG: err/rms {row['check']['err_over_rms']:.3g} > {row['check']['tol_over_rms']:.3g}",
                flush=True,
            )
        else:
            print(f"{head} {row.get('error') or row.get('skipped')}", flush=True)

    # -- selection --
    def timed(self, shape, family="pallas"):
        rows = [r for r in self.rows if tuple(r["shape"]) == tuple(shape) and r["family"] == family and valid(r)]
        return sorted(rows, key=lambda r: r["seconds"])

    def best_variants(self, shape, k: int, key=lambda v: v) -> list[Variant]:
        seen, out = set(), []
        for r in self.timed(shape):
            v = Variant(**r["params"])
            if key(v) not in seen:
                seen.add(key(v))
                out.append(v)
        return out[:k]

    def tried(self, shape) -> set[str]:
        return {r["name"] for r in self.rows if tuple(r["shape"]) == tuple(shape)}

    # -- phases --
    def tiles(self, shape) -> list[tuple[int, int, int]]:
        """Stage 1's tiles of ``shape``: ``--tiles``, else the shape's list."""
        return self.a.tiles or (SMALL_TILES if self.a.small else TILES).get(shape, default_tiles(*shape))

    def run(self, all_shapes):
        self.run_jobs([j for s in all_shapes for j in self.baseline_jobs(s)])
        shapes = [s for s in all_shapes if s != HEAD]  # the head stays bf16: XLA's baselines only
        stage1 = [self.pallas_job(s, self.base(t), "tiles") for s in shapes for t in self.tiles(s)]
        if not self.a.small:
            stage1 += [
                self.pallas_job(s, Variant(*t, mode="dot", cvt="magic"), "tiles") for s in shapes for t in DOT_TILES
            ]
        if self.a.small:  # the interpreter check: every dequant path once, on each shape's first tiles
            stage1 += [
                self.pallas_job(s, dataclasses.replace(Variant(*t), **d), "modes")
                for s in shapes
                for t in self.tiles(s)[: self.a.mode_tiles]
                for d in MODES
            ]
            stage1 += [
                self.pallas_job(s, Variant(*t, atomic=True), "modes") for s in shapes for t in self.tiles(s) if t[2] > 1
            ]
            self.run_jobs(stage1)
            self.final(all_shapes)
            return
        self.run_jobs(stage1)
        if self.a.mosaic:
            self.run_jobs([self.mosaic_job(s, c) for s in shapes for c in mosaic_configs(*s, self.a.batch)])
        stage2 = []
        for s in shapes:
            for v in self.best_variants(s, 2, key=lambda v: v.tile):
                for warps, stages in WARPS_STAGES:
                    if v.step_words * v.split * 8 == s[1] and stages != v.stages:
                        continue  # whole-K: no loop for num_stages to pipeline
                    cand = dataclasses.replace(v, warps=warps, stages=stages)
                    if cand.name not in self.tried(s):
                        stage2.append(self.pallas_job(s, cand, "launch"))
        self.run_jobs(stage2)
        stage3 = []
        for s in shapes:
            for v in self.best_variants(s, 1):
                for d in MODES:
                    cand = dataclasses.replace(v, **d)
                    if cand.name not in self.tried(s):
                        stage3.append(self.pallas_job(s, cand, "dequant"))
        self.run_jobs(stage3)
        self.final(all_shapes)

    def final(self, shapes):
        """Time again the 3 best Pallas variants and the baselines of every shape (executables kept)."""
        print(f"[{self.elapsed():6.1f} s] final re-timing", flush=True)
        for j in self.jobs:
            if j.compiled is None or not valid(j.row):
                continue
            top = {r["name"] for r in self.timed(j.shape)[:3]}
            if j.family != "pallas" or j.name in top:
                try:
                    j.row["final"] = self.measure(j, self.a.rounds * 2)
                    if "invalid" in j.row["final"]:
                        j.row["invalid"] = j.row["final"]["invalid"]
                except Exception as e:
                    j.row["final"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        invalid = [f"{'x'.join(map(str, r['shape']))} {r['name']}" for r in self.rows if "invalid" in r]
        if invalid:
            print(f"INVALID (faster than memory, left out): {', '.join(invalid)}", flush=True)
        best = select_best(self.rows, shapes)
        self.record["best"] = {"x".join(map(str, s)): v for s, v in best.items()}
        self.record["step_estimate"] = step_estimate(best, self.rows)
        self.save()
        print(json.dumps(self.record["step_estimate"], indent=1), flush=True)


def default_tiles(out: int, n_in: int) -> list[tuple[int, int, int]]:
    """Tiles for a shape without a hand-picked list: whole-K and 64-word steps at 8-32 rows."""
    words = n_in // 8
    return [(r, k, 1) for r in (8, 16, 32) for k in sorted({64, words}) if k <= words]


def step_estimate(best: dict, rows: list[dict]) -> dict:
    """Seconds of one decode step's linears: per-shape best times x the step's counts."""
    shapes = [s for s in STEP if s != HEAD]
    have = lambda fam: all(fam in best.get(s, {}) for s in shapes)
    head = {f: best.get(HEAD, {}).get(f, {}).get("seconds") for f in ("xla-dot", "xla-reduce")}
    head_s = min((t for t in head.values() if t), default=None)
    out = {"counts": {"x".join(map(str, s)): n for s, n in STEP.items()}, "head_bf16_s": head, "families": {}}
    fams = ("xla-dot", "xla-reduce", "xla-dot-chained", "xla-u32-word", "xla-u4-magic", "pallas-best", "mosaic-best")
    for fam in fams:
        if not have(fam):
            continue
        linears = sum(STEP[s] * best[s][fam]["seconds"] for s in shapes)
        out["families"][fam] = {"linears_s": linears, "with_head_s": None if head_s is None else linears + head_s}
    if have("xla-dot") and have("xla-reduce"):
        dense = sum(STEP[s] * min(best[s]["xla-dot"]["seconds"], best[s]["xla-reduce"]["seconds"]) for s in shapes)
        out["families"]["xla-bf16-best"] = {
            "linears_s": dense,
            "with_head_s": None if head_s is None else dense + head_s,
        }
    # One Pallas configuration for every shape (as one kernel in a model would be): the best
    # variant timed at all four shapes.
    per_name = collections.defaultdict(dict)
    for r in rows:
        if r["family"] == "pallas" and valid(r):
            per_name[r["name"]][tuple(r["shape"])] = row_seconds(r)
    single = {n: sum(STEP[s] * t[s] for s in shapes) for n, t in per_name.items() if all(s in t for s in shapes)}
    if single:
        name = min(single, key=single.get)
        out["families"]["pallas-single-config"] = {
            "name": name,
            "linears_s": single[name],
            "with_head_s": None if head_s is None else single[name] + head_s,
        }
    base = out["families"].get("xla-bf16-best", {}).get("with_head_s")
    for fam in out["families"].values():
        if base and fam.get("with_head_s"):
            fam["speedup_vs_xla_bf16"] = base / fam["with_head_s"]
    return out


def lower_only(args, shapes) -> int:
    """Lower every GPU-sweep variant (stage-1 tiles, the tensor-core tiles, and every dequant mode
    on each shape's first tile and first split-K tile) to Triton IR for CUDA, here, without a GPU: Pallas' own lowering
    errors show up."""
    rows = []
    for shape in shapes:
        tiles = args.tiles or TILES.get(shape, default_tiles(*shape))
        vs = [Variant(*t) for t in tiles] + [Variant(*t, mode="dot", cvt="magic") for t in DOT_TILES]
        for t in (tiles[0], next((t for t in tiles if t[2] > 1), None)):
            if t is not None:
                vs += [dataclasses.replace(Variant(*t), **d) for d in MODES]
        for v in dict.fromkeys(vs):
            if v.invalid(*shape):
                continue
            w = quantized_linear_spec(shape, GROUP, 4, F32 if v.scales == "f32" else BF16)
            spec = (jax.ShapeDtypeStruct((args.batch, shape[1]), BF16), w)
            row = {"shape": list(shape), "name": v.name}
            t = time.perf_counter()
            try:
                with pallas_int4.lowering_target():
                    text = jax.jit(pallas_gemv(v, False)).trace(*spec).lower(lowering_platforms=("cuda",)).as_text()
                row["triton_calls"] = text.count("__gpu$xla.gpu.triton")
                row["ok"] = row["triton_calls"] == 1
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
                row["ok"] = False
            row["lower_s"] = round(time.perf_counter() - t, 3)
            rows.append(row)
            print(f"{'x'.join(map(str, shape)):>11} {v.name:<52} {'ok' if row['ok'] else row.get('error')}", flush=True)
    record = {"environment": env.environment("cpu"), "lowered": rows, "all_ok": all(r["ok"] for r in rows)}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} variants lowered to one Triton call each", flush=True)
    return 0 if record["all_ok"] else 1


def self_test() -> int:
    """CPU checks of the timing harness: (1) the optimized HLO of each XLA baseline loop holds
    one GEMV per weight copy per round (``looped`` keeps every GEMV alive); (2) the bandwidth
    guard marks a planted too-fast timing invalid and ``select_best`` / ``step_estimate`` leave
    it out."""
    ok = True
    out, n_in, copies, outer = 256, 512, 3, 2
    x = jax.random.normal(jax.random.PRNGKey(0), (1, n_in), BF16)
    dense = tuple(jax.random.normal(jax.random.PRNGKey(i + 1), (out, n_in), BF16) for i in range(copies))
    ref = np.asarray(x, np.float64) @ np.asarray(dense[-1], np.float64).T
    for name in ("xla-dot", "xla-reduce", "xla-dot-chained"):
        fmt, chain = BASELINES[name][0], "data" if name == "xla-dot-chained" else "barrier"
        ws = dense if fmt == "dense" else tuple(DenseReduceLinear(w) for w in dense)
        f = looped(form_gemv, copies, outer, chain).lower(x, ws).compile()
        n = xla_hlo.loop_contractions(f.as_text())
        y = np.asarray(f(x, ws)[-1], np.float64)
        err = float(np.abs(y - ref).max() / np.sqrt(np.mean(ref**2)))
        good = n == copies and err < TOL["xla"]
        ok &= good
        print(f"self-test: {name:<16} {chain:<8} GEMVs per loop round in the optimized HLO: {n} "
              f"(want {copies}); err/rms {err:.1e}  {'ok' if good else 'FAIL'}")  # fmt: skip
    # the guard, on planted rows: a 2 us GEMV of 32 MB (16 TB/s) against a measured 4 TB/s
    limit = GUARD_FACTOR * 4000.0
    shape, nbytes = (8192, 2048), 8192 * 2048 * 2
    rows = []
    for name, family, t in (("xla-dot", "xla", 9e-6), ("xla-reduce", "xla", 2.3e-6), ("pallas-a", "pallas", 2e-6),
                            ("pallas-b", "pallas", 1e-5)):  # fmt: skip
        res = guard({"seconds": t, "gb_per_s": nbytes / t / 1e9}, limit)
        rows.append({"shape": list(shape), "name": name, "family": family, "bytes": nbytes, **res})
    flagged = sorted(r["name"] for r in rows if "invalid" in r)
    best = select_best(rows, [shape])[shape]
    good = (
        flagged == ["pallas-a", "xla-reduce"]
        and "xla-reduce" not in best
        and best["pallas-best"]["name"] == "pallas-b"
        and best["xla-dot"]["seconds"] == 9e-6
    )
    # a valid first timing whose final re-timing is too fast: the row is invalid (final() does this)
    late = {"shape": list(shape), "name": "xla-dot", "family": "xla", "bytes": nbytes, "seconds": 9e-6}
    late["final"] = guard({"seconds": 1e-6, "gb_per_s": nbytes / 1e-6 / 1e9}, limit)
    late["invalid"] = late["final"].get("invalid")
    good &= "xla-dot" not in select_best([late], [shape])[shape]
    est = step_estimate({shape: best}, rows)
    good &= est["families"].get("pallas-single-config") is None  # shapes missing: no estimate, no crash
    ok &= good
    print(f"self-test: guard at {limit:.0f} GB/s flagged {flagged} (planted: pallas-a 16.8 TB/s, "
          f"xla-reduce 14.6 TB/s); best {sorted((k, v['name']) for k, v in best.items())}  "
          f"{'ok' if good else 'FAIL'}")  # fmt: skip
    print(f"self-test: {'all ok' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


def _dims(flag: str, text: str, parts: int) -> list[tuple[int, ...]]:
    """Comma-separated ``AxB[xC]`` of positive integers, or a ValueError naming the flag."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            dims = tuple(int(n) for n in item.split("x"))
        except ValueError:
            dims = ()
        if len(dims) != parts or min(dims) < 1:
            form = "OUTxIN, e.g. 2048x8192" if parts == 2 else "ROWSxWORDSxSPLIT, e.g. 16x128x2"
            raise ValueError(f"{flag}: {item!r} is not {form}")
        out.append(dims)
    if not out:
        raise ValueError(f"{flag} is empty")
    return out


def run(args) -> int:
    """The ``pallas-sweep`` command: options checked first (one ``error:`` line, exit code 2)."""
    try:
        shapes = _dims("--shapes", args.shapes, 2) if args.shapes else None
        args.tiles = _dims("--tiles", args.tiles, 3) if args.tiles else None
        for out, n_in in shapes or ():
            if n_in % GROUP:
                raise ValueError(f"--shapes: {out}x{n_in}: the input size must be a multiple of the group, {GROUP}")
        if not 1 <= args.batch <= pallas_int4.MAX_ROWS:
            raise ValueError(f"--batch must be 1 to {pallas_int4.MAX_ROWS} (the kernel's rows), got {args.batch}")
        if args.mosaic and args.interpret:
            raise ValueError("--mosaic runs on a GPU only: the Mosaic GPU variant has no interpreter here")
        for flag in ("footprint_mb", "max_copies", "min_gemvs", "head_gemvs", "queue", "rounds", "jobs", "bw_mb"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
        if args.mode_tiles < 0 or args.budget_s < 0:
            raise ValueError("--mode-tiles and --budget-s must not be negative")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message=".*Pallas Triton backend is deprecated.*")
    if args.self_test:
        return self_test()
    if args.lower_only:
        return lower_only(args, shapes or GPU_SHAPES)
    if args.interpret:  # correctness only: two copies, one call, no budget
        args.budget_s, args.rounds, args.max_copies = 0, 1, 2
        args.bw_mb = min(args.bw_mb, 64)
    if shapes is None:
        shapes = SMALL_SHAPES if args.small else GPU_SHAPES + ([] if args.no_head else [HEAD])
    sweep = Sweep(args)
    print(f"jax {jax.__version__} on {sweep.record['environment']['device_kind']}; shapes {shapes}", flush=True)
    sweep.measure_bandwidth()
    sweep.run([s for s in shapes if s != HEAD] + [s for s in shapes if s == HEAD])
    sweep.record["elapsed_s"] = sweep.elapsed()
    sweep.save()
    bad = [r["name"] for r in sweep.rows if "check" in r and not r["check"]["ok"]]
    errors = [r["name"] for r in sweep.rows if "error" in r]
    print(
        f"done in {sweep.elapsed():.0f} s: {len(sweep.rows)} rows, {len(bad)} wrong, {len(errors)} errors", flush=True
    )
    # the interpreter run is a check: a wrong or failed variant fails it; on a GPU they are findings
    return 1 if args.interpret and (bad or errors) else 0


def add_parser(sub) -> None:
    """The ``pallas-sweep`` subcommand of ``python -m model_impl``."""
    p = sub.add_parser("pallas-sweep", help="Pallas (Triton) int4 GEMV kernels against XLA's GEMVs, 1B shapes")
    p.add_argument("--out", default="pallas-gemv.json", help="results JSON, e.g. results/pallas-gemv-h100.json")
    p.add_argument("--interpret", action="store_true", help="run the kernels in Pallas' interpreter (CPU check)")
    p.add_argument("--small", action="store_true", help="small shapes (the interpreter check)")
    p.add_argument("--lower-only", action="store_true", help="only lower the GPU sweep's variants to Triton IR")
    p.add_argument("--shapes", default=None, help="comma-separated OUTxIN (default: the 1B shapes and the head)")
    p.add_argument("--tiles", default=None, help="comma-separated ROWSxWORDSxSPLIT: stage 1's tiles at every shape")
    p.add_argument(
        "--mode-tiles", type=int, default=2, help="--small: every dequant mode on this many first tiles of each shape"
    )
    p.add_argument("--no-head", action="store_true", help="skip the 128256x2048 bf16 head")
    p.add_argument("--batch", type=int, default=1, help="activation rows per GEMV (the kernel takes 1-16)")
    p.add_argument(
        "--mosaic", action="store_true", help="also the Mosaic GPU variant (GPU only; jax >= 0.11's Mosaic GPU API)"
    )
    p.add_argument("--footprint-mb", type=int, default=100, help="weight bytes per timed loop (> L2)")
    p.add_argument("--max-copies", type=int, default=256)
    p.add_argument("--min-gemvs", type=int, default=64, help="GEMVs per timed call, at least")
    p.add_argument("--head-gemvs", type=int, default=8)
    p.add_argument("--queue", type=int, default=8, help="calls queued per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=200.0, help="no new compiles after this (0: none)")
    p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="compile threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bw-mb", type=int, default=1024, help="array size of the bandwidth measurement")
    p.add_argument("--self-test", action="store_true", help="CPU checks of the timing harness only")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)
