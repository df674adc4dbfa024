"""The fusion matrix, defined: rows, options, cells, and each cell's lowering columns.

Every int4 representation x compiler option, on every backend.

A row is (representation, option); a column is a backend. Each cell answers, from the
compiler's own dumps and from runs on real devices:

- does the exported StableHLO carry a ``custom_call``;
- is the dequant fused into the contraction: the analyzers' verdict, per quantized linear on
  XLA (every kernel that reads a linear's codes also holds its contraction) and per dispatch
  on IREE (dispatches that unpack and contract vs dispatches that only unpack);
- how many bytes of full-size float weights one decode step writes;
- the time of one int4 linear at Llama-3.2-1B size (M=1) and of a whole decode step, each next
  to fp32 on the same backend;
- max |logit - host-dequant logit| (target 1e-4) and greedy tokens against the baseline int4
  run (``u32-affine``, default options) on the same backend.

Lowering and speed use the Llama-3.2-1B shapes with seeded synthetic weights; parity runs on
a real checkpoint where the machine has one, else on those synthetic weights (each cell says
which). :mod:`model_impl.lab.fusion` measures the cells; ``python -m model_impl fusion``
writes ``results/fusion-<machine>.json``.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax

from ..analyzers import iree_dispatch, stablehlo, xla_hlo
from ..backends import iree_compile, xla
from ..backends.spec import BACKENDS
from ..backends.spec import backend as backend_spec
from ..llama.config import Config
from ..llama.graphs import export_stablehlo
from ..llama.representations import BASELINE, PALLAS
from ..llama.weights import Weights, is_stacked, linear_weight_elements, stack_projections

SUBCHANNEL = {"xla_gpu_experimental_enable_subchannel_dequantisation_fusion": True}
REASSOC = ("--iree-global-opt-enable-quantized-matmul-reassociation",)
DATA_TILING = ("--iree-opt-data-tiling",)

# A layout option, not a compiler setting: q|k|v and gate|up stacked at load time
# (:func:`weights.stack_projections`), 4 GEMVs per layer instead of 7, on every backend.
STACKED = "stacked"

# option -> backend -> compiler settings (absent backend: the option does not apply there)
OPTIONS = {
    "default": {b: {} for b in BACKENDS},
    STACKED: {b: {} for b in BACKENDS},
    "xla-subchannel": {"xla-cuda": {"xla_options": SUBCHANNEL}},
    "iree-reassoc": {"iree-cpu": {"iree_flags": REASSOC}, "iree-cuda": {"iree_flags": REASSOC}},
    "iree-data-tiling": {"iree-cpu": {"iree_flags": DATA_TILING}},
}

ROWS = (
    (BASELINE, "default"),
    ("u4-affine", "default"),
    ("u4-affine-io", "default"),
    ("s4-scale-gsum", "default"),
    ("s4-grouped", "default"),
    ("u4-grouped", "default"),
    (BASELINE, "xla-subchannel"),
    ("u4-affine", "xla-subchannel"),
    ("s4-scale-gsum", "xla-subchannel"),
    ("s4-grouped", "xla-subchannel"),
    (BASELINE, "iree-reassoc"),
    ("s4-grouped", "iree-data-tiling"),
    (PALLAS, "default"),
)

# The matrix against half precision (``fusion --dtype bfloat16``): the same cells in bf16
# compute, each set against the fastest dense bf16 form of the same run (the dot and the GEMV
# written as multiply + reduce), with float16 and float32 dense steps beside them. A row's third
# element is the head: the float head as the dot or as multiply + reduce, or "int4" (the tied
# embedding quantized too, in the row's representation, as mlx-community checkpoints ship it).
ROWS_VS_BF16 = (
    (BASELINE, "default", "dot"),
    ("u4-magic", "default", "reduce"),
    ("u4-magic-f32", "default", "reduce"),
    ("u32-word", "default", "reduce"),
    ("u32-word-split", "default", "reduce"),
    ("u32-word-split", "default", "int4"),
    ("u4-magic", STACKED, "reduce"),
    ("u32-word", STACKED, "reduce"),
    ("u32-word-split", STACKED, "reduce"),
    ("u32-word-split", STACKED, "int4"),
    ("u4-magic+word-mlp", STACKED, "reduce"),
    ("s4-grouped", "default", "dot"),  # the one form IREE fuses (the fp32 matrix)
)
# Rows also timed at decode batch 4 and 16 and at a 64-token prefill (XLA-CUDA), with the dense
# forms of the run's dtype beside them: where int4 stops beating bf16.
BATCHES = (4, 16)
PREFILL_BUCKET = 64
BATCH_ROWS = (
    (BASELINE, "default", "dot"),
    ("u4-magic-f32", "default", "reduce"),
    ("u32-word-split", "default", "reduce"),
)


def row_parts(row) -> tuple[str, str, str]:
    """(representation, option, head) of a matrix row (a 2-tuple's head is the dot)."""
    return (*row, "dot") if len(row) == 2 else tuple(row)


MAX_SEQ = 128  # the parity runs' cache length; timing uses the same compiled decode graph
PROMPT_TOKENS = 16


def applicability(representation: str, option: str, backend: str) -> str | None:
    """None when the cell can be measured, else why it cannot."""
    if backend not in OPTIONS[option]:
        return f"option {option} is for {', '.join(OPTIONS[option])}"
    spec = backend_spec(backend)
    if representation == PALLAS and not (spec.is_xla and spec.is_cuda):
        return (
            "a Pallas/Triton kernel: IREE cannot compile its custom_call"
            if spec.is_iree
            else "a GPU kernel (runs on the CPU only in Pallas' interpreter)"
        )
    return None


def settings(option: str, backend: str) -> dict:
    return dict(OPTIONS[option].get(backend, {}))


def layout(weights: Weights, option: str) -> Weights:
    """The weights as the option lays them out: stacked projections for :data:`STACKED`, else as
    loaded. Applied to the checkpoint's form, before any conversion to a representation."""
    return stack_projections(weights) if option == STACKED else weights


# --- timing helpers --------------------------------------------------------------------------


def iree_flags(backend: str, option: str) -> list[str]:
    """iree-compile's flags for an IREE backend's cell: its target, then the option's flags."""
    spec = backend_spec(backend)
    cuda = iree_compile.cuda_target_for_device() if spec.is_cuda else iree_compile.DEFAULT_CUDA_TARGET
    return iree_compile.target_flags(spec.iree_target, cuda) + list(settings(option, backend).get("iree_flags", ()))


def iree_target(backend: str) -> tuple[str, str]:
    """(IREE target, CUDA target) for an IREE backend (the CUDA target is unused on the CPU)."""
    spec = backend_spec(backend)
    cuda = iree_compile.cuda_target_for_device() if spec.is_cuda else iree_compile.DEFAULT_CUDA_TARGET
    return spec.iree_target, cuda


@dataclasses.dataclass
class Cell:
    backend: str
    representation: str
    option: str
    head: str = "dot"  # the head's form (representations.HEAD_FORMS)
    dtype: str = "float32"  # compute dtype
    skipped: str | None = None  # why the cell does not apply
    error: str | None = None  # what failed, if measuring did
    custom_call: bool | None = None
    verdict: str | None = None
    linears_fused: int | None = None  # XLA: per linear; IREE: fused dispatch sites
    linears_total: int | None = None  # XLA: quantized linears; IREE: dispatch sites that unpack
    fused_kernels: dict | None = None  # XLA: fused linears by kernel kind (gemm | dot | reduction)
    materialized_bytes_per_step: int | None = None
    compile_seconds: float | None = None
    linear_seconds: float | None = None
    linear_fp32_seconds: float | None = None
    decode_seconds: float | None = None
    decode_fp32_seconds: float | None = None
    decode_spread: list | None = None  # [min, max] seconds per step over the timed rounds
    decode_per_call_seconds: float | None = None  # xla-cuda: one dispatch per step, queued
    loop_hoisted_dequants: int | None = None  # xla-cuda: dequant kernels XLA moved out of the loop
    decode_bf16_seconds: float | None = None  # the fastest dense bf16 form, same run and loop
    step_linears_seconds: float | None = None  # the step's linears alone (lab.linear_chain.step_linears)
    bytes_per_step: int | None = None  # the least a decode step reads (lab.roofline.decode_bytes_read)
    bandwidth_bytes_per_s: float | None = None  # the run's best copy (anchors' memcpy or XLA's)
    batch_seconds: dict | None = None  # "decode-4", "decode-16": s per batched step; "prefill-64": s
    parity_model: str | None = None
    max_abs_logit_diff_vs_host: float | None = None
    parity_atol: float | None = None  # the bound the cell is held to (lab.fusion.parity_atol)
    parity_within_atol: bool | None = None
    tokens_vs_baseline: str | None = None
    tokens_gap_at_divergence: float | None = None  # this cell's top-2 logit gap where it parted
    tokens_agree_or_near_tie: bool | None = None  # 48/48, or parted at a near-tie (checks.near_tie_gap)

    @property
    def decode_speedup(self) -> float | None:
        if self.decode_seconds and self.decode_fp32_seconds:
            return self.decode_fp32_seconds / self.decode_seconds
        return None

    @property
    def speedup_vs_bf16(self) -> float | None:
        """The fastest dense bf16 step of the run / this cell's step."""
        if self.decode_seconds and self.decode_bf16_seconds:
            return self.decode_bf16_seconds / self.decode_seconds
        return None

    @property
    def roofline_fraction(self) -> float | None:
        """(least bytes a step reads / the run's copy bandwidth) / the step's time."""
        if self.decode_seconds and self.bytes_per_step and self.bandwidth_bytes_per_s:
            return self.bytes_per_step / self.bandwidth_bytes_per_s / self.decode_seconds
        return None


def lowering_cell(cell: Cell, cfg: Config, specs: Weights) -> None:
    """Fill the lowering columns from the decode graph of ``cfg`` (shapes only)."""
    opts = settings(cell.option, cell.backend)
    elements = linear_weight_elements(cfg, is_stacked(specs))
    spec = backend_spec(cell.backend)
    if spec.is_xla:
        with jax.default_device(jax.devices(spec.platform)[0]):
            lowered = _lower_decode(cfg, specs, opts.get("xla_options"))
            # jax.export refuses custom calls without a compatibility guarantee (Pallas'
            # Triton call); the jit lowering is the same StableHLO, checks aside.
            cell.custom_call = stablehlo.stablehlo_inventory(lowered.as_text()).has_custom_call
            t0 = time.perf_counter()
            hlo = lowered.compile().as_text()
            cell.compile_seconds = time.perf_counter() - t0
        verdict = xla_hlo.analyze_xla_hlo(hlo, elements)
        cell.verdict, cell.materialized_bytes_per_step = verdict.verdict, verdict.materialized_bytes
        cell.linears_fused, cell.linears_total, cell.fused_kernels = xla_hlo.xla_linears_fused(hlo)
        return
    text = export_stablehlo(cfg, specs, "decode", 0, MAX_SEQ)
    cell.custom_call = stablehlo.stablehlo_inventory(text).has_custom_call
    target, cuda = iree_target(cell.backend)
    sources, seconds = iree_compile.executable_sources(
        cfg, specs, "decode", 0, MAX_SEQ, target, cuda, opts.get("iree_flags", ())
    )
    verdict = iree_dispatch.analyze_iree_executables(sources, elements)
    cell.verdict, cell.materialized_bytes_per_step = verdict.verdict, verdict.materialized_bytes
    cell.linears_fused = verdict.count(iree_dispatch.FUSED_DISPATCH)
    cell.linears_total = cell.linears_fused + verdict.count(iree_dispatch.DEQUANT_ONLY)
    cell.compile_seconds = seconds


def _lower_decode(cfg, specs, xla_options=None):
    return xla.lower(cfg, specs, "decode", 0, MAX_SEQ, xla_options, donate_cache=False)


def xla_stablehlo(cfg, specs) -> str:
    """The decode graph's StableHLO from the jit lowering (custom calls allowed)."""
    return _lower_decode(cfg, specs).as_text()


_CRASH_CODE = re.compile(r"Error code: -(\d+)")
_CRASHED_PASS = re.compile(r"(\w+Pass)::runOnOperation")


def error_line(e: BaseException) -> str:
    """The exception's type and its most telling line: a compiler's first ``error:`` line, or
    for a crash the signal and the pass it died in (from the backtrace)."""
    text = str(e)
    crash, crashed_in = _CRASH_CODE.search(text), _CRASHED_PASS.search(text)
    if crash and crashed_in:
        return f"{type(e).__name__}: crashed (signal {crash.group(1)}) in {crashed_in.group(1)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return f"{type(e).__name__}: {(errors or lines or [''])[0][:400]}"


def summary_line(cell: Cell) -> str:
    if cell.skipped:
        return f"n/a ({cell.skipped})"
    if cell.error and cell.verdict is None:
        return f"error: {cell.error}"
    parts = [
        f"{cell.verdict} {cell.linears_fused}/{cell.linears_total}",
        f"{(cell.materialized_bytes_per_step or 0) / 2**20:.0f} MiB/step",
    ]
    if cell.linear_seconds:
        parts.append(
            f"linear {cell.linear_seconds * 1e3:.3f} ms ({cell.linear_fp32_seconds / cell.linear_seconds:.2f}x fp32)"
        )
    if cell.decode_seconds:
        lo, hi = cell.decode_spread or (cell.decode_seconds, cell.decode_seconds)
        vs = f"{cell.decode_speedup:.2f}x fp32" if cell.decode_speedup else ""
        if cell.speedup_vs_bf16:
            vs += f", {cell.speedup_vs_bf16:.2f}x bf16"
        if cell.roofline_fraction:
            vs += f", {cell.roofline_fraction:.0%} of roofline"
        parts.append(f"decode {cell.decode_seconds * 1e3:.2f} ms [{lo * 1e3:.2f}-{hi * 1e3:.2f}] ({vs})")
    if cell.step_linears_seconds:
        parts.append(f"linears {cell.step_linears_seconds * 1e3:.2f} ms")
    if cell.batch_seconds:
        parts.append(", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in cell.batch_seconds.items()))
    if cell.loop_hoisted_dequants:
        parts.append(f"{cell.loop_hoisted_dequants} dequants hoisted out of the loop")
    if cell.fused_kernels:
        parts.append("fused in " + ", ".join(f"{k}: {n}" for k, n in sorted(cell.fused_kernels.items())))
    if cell.max_abs_logit_diff_vs_host is not None:
        parts.append(f"|dlogit| {cell.max_abs_logit_diff_vs_host:.2e}, tokens {cell.tokens_vs_baseline}")
    if cell.error:
        parts.append(f"error: {cell.error}")
    return "; ".join(parts)


def cell_record(cell: Cell) -> dict:
    return {
        **dataclasses.asdict(cell),
        "decode_speedup": cell.decode_speedup,
        "speedup_vs_bf16": cell.speedup_vs_bf16,
        "roofline_fraction": cell.roofline_fraction,
    }
