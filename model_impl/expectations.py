"""What each compiler does to the suite's graphs, in one table keyed by compiler, version range
and device: ``(compiler, versions, device) -> expected``.

A compiler's choices depend on its version, and on a GPU on the device it compiles for (XLA-CUDA
of jaxlib 0.11.2 fuses fewer int4 linears of some forms for the H200 than for the H100, both
compute capability 9.0). The tests ask :func:`check` with what they observed:

- an entry for this compiler version and device (or for any device, ``device=None``): the
  observation must equal it, else :class:`Unexpected` says, in one line, what the compiler did
  instead and what the table expects, for which versions and devices, from which measurement;
- entries for this version, none for this device: the observation is new knowledge, not a
  failure; :func:`check` returns a :class:`Finding` (the test records it) with the line to add;
- no entry for this version at all: :class:`Unexpected`, naming the versions the table knows.

What must hold everywhere (no custom_call; a verdict that is the same on every device measured)
is an entry with ``device=None``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from packaging.specifiers import SpecifierSet
from packaging.version import Version

XLA = "jaxlib"
IREE = "iree-base-compiler"
ANY_DEVICE = None


@dataclasses.dataclass(frozen=True)
class Entry:
    compiler: str  # XLA or IREE: the distribution whose version decides
    versions: str  # a PEP 440 specifier set, e.g. ">=0.11,<0.12"
    device: str | None  # the GPU's name where the choice depends on it; None: any device
    key: tuple  # the question: (backend, what, *arguments)
    expected: object
    source: str  # the measurement it comes from: a results file, or the run that made it

    def covers(self, version: str) -> bool:
        return Version(version) in SpecifierSet(self.versions)

    def describe(self) -> str:
        where = "any device" if self.device is None else self.device
        return f"{self.expected} for {self.compiler}{self.versions} on {where} ({self.source})"


@dataclasses.dataclass(frozen=True)
class Finding:
    """An observation on a device the table does not know for this version."""

    key: tuple
    observed: object
    compiler: str
    version: str
    device: str

    def line(self) -> str:
        return (
            f"{self.compiler} {self.version} on {self.device}: {_what(self.key)} gives {self.observed}, a device the "
            f"table does not know; add Entry({self.compiler!r}, '=={self.version}', {self.device!r}, "
            f"{self.key!r}, {self.observed!r}, source=...) to model_impl/expectations.py"
        )


class Unexpected(AssertionError):
    """One line: the compiler, version and device, what it did, what the table expects."""


def _what(key: tuple) -> str:
    return " ".join(str(k) for k in key)


OBSERVATIONS = "MODEL_IMPL_OBSERVATIONS"  # a file: every observation held to the table is appended


def _record(key: tuple, observed, compiler: str, version: str, device: str | None) -> None:
    """One JSON line per observation into ``$MODEL_IMPL_OBSERVATIONS`` where set (the versions
    study reads what each version did, whether or not the table expected it); one ``write`` of
    one line to a file opened for appending, so two test workers do not interleave."""
    path = os.environ.get(OBSERVATIONS)
    if path:
        line = json.dumps({"key": _what(key), "observed": observed, "compiler": compiler, "version": version,
                           "device": device}, default=str)  # fmt: skip
        with open(path, "a") as f:
            f.write(line + "\n")


def check(
    key: tuple, observed, compiler: str, version: str, device: str | None = None, table=None, everywhere=None
) -> Finding | None:
    """Hold ``observed`` (what ``compiler`` ``version`` did on ``device`` for ``key``) to the table.
    Returns None when an entry agrees, a :class:`Finding` on an unknown device; raises
    :class:`Unexpected` otherwise. ``everywhere``: the part of an expectation that must hold on
    any device where every device measured agrees on it (e.g. the verdict of a (verdict, fused,
    total) triple): held on an unknown device too."""
    if table is None:
        _record(key, observed, compiler, version, device)
    entries = [e for e in (TABLE if table is None else table) if e.key == key and e.compiler == compiler]
    if not entries:
        raise Unexpected(f"{_what(key)}: no expectation in model_impl/expectations.py for {compiler}")
    this_version = [e for e in entries if e.covers(version)]
    on = "any device" if device is None else device
    if not this_version:
        known = "; ".join(e.describe() for e in entries)
        raise Unexpected(
            f"{compiler} {version} on {on}: {_what(key)} gives {observed}; the table knows other versions only "
            f"(expects {known}): add the new behaviour"
        )
    matching = [e for e in this_version if e.device is None or e.device == device]
    if not matching:
        parts = {everywhere(e.expected) for e in this_version} if everywhere else set()
        if len(parts) == 1 and everywhere(observed) not in parts:
            raise Unexpected(
                f"{compiler} {version} on {on}: {_what(key)} gives {observed}; every device measured gives "
                f"{parts.pop()} ({'; '.join(e.describe() for e in this_version)}): add the new behaviour"
            )
        return Finding(key, observed, compiler, version, on)
    entry = matching[0]
    if observed != entry.expected:
        raise Unexpected(
            f"{compiler} {version} on {on}: {_what(key)} gives {observed}; the table expects "
            f"{entry.describe()}: add the new behaviour"
        )
    return None


def _xla_cuda_fusion(rows: dict, device: str, source: str, what: str) -> list[Entry]:
    return [
        Entry(XLA, ">=0.11.2,<0.12", device, ("xla-cuda", what, *row), expected, source)
        for row, expected in rows.items()
    ]


H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
H100_FUSION = "results/pytest-cuda-fusion-xla-cuda.json (H100, jax 0.11.2, 2026-11-26)"
H200_FUSION = "results/pytest-cuda-fusion-xla-cuda-h200.json (H200, jax 0.11.2, 2026-12-05)"

# XLA-CUDA's (verdict, linears whose codes only fused kernels read, linears) per fusion-matrix row
# on the Llama-3.2-1B decode graph in float32: (representation, option).
_FP32_H100 = {
    ("u32-affine", "default"): ("fused", 112, 112),
    ("u4-affine", "default"): ("fused", 112, 112),
    ("u4-affine-io", "default"): ("materialized", 48, 112),
    ("s4-scale-gsum", "default"): ("fused", 112, 112),
    ("s4-grouped", "default"): ("fused", 112, 112),
    ("u4-grouped", "default"): ("fused", 112, 112),
    ("u32-affine", "xla-subchannel"): ("fused", 112, 112),
    ("u4-affine", "xla-subchannel"): ("fused", 112, 112),
    ("s4-scale-gsum", "xla-subchannel"): ("fused", 112, 112),
    ("s4-grouped", "xla-subchannel"): ("fused", 112, 112),
}
_FP32_H200 = _FP32_H100 | {("u4-affine-io", "default"): ("materialized", 16, 112)}

# The same in bfloat16 compute: (representation, option, head). The word forms are the mixed
# case: XLA keeps gate/up/down's straight-line word products inside the reduction but gives
# q/k/v/o (and, split, down too) a loop fusion that writes the per-word products.
_BF16_H100 = {
    ("u32-affine", "default", "dot"): ("fused", 112, 112),
    ("u4-magic", "default", "reduce"): ("fused", 112, 112),
    ("u4-magic-f32", "default", "reduce"): ("fused", 112, 112),
    ("u32-word", "default", "reduce"): ("materialized", 48, 112),
    ("u32-word-split", "default", "reduce"): ("materialized", 32, 112),
    ("u32-word-split", "default", "int4"): ("materialized", 32, 113),
    ("u4-magic", "stacked", "reduce"): ("fused", 64, 64),
    ("u4-magic+word-mlp", "stacked", "reduce"): ("fused", 64, 64),
    ("u32-word", "stacked", "reduce"): ("materialized", 32, 64),
    ("u32-word-split", "stacked", "reduce"): ("materialized", 16, 64),
    ("u32-word-split", "stacked", "int4"): ("materialized", 16, 65),
}
_BF16_H200 = _BF16_H100 | {
    ("u32-word", "default", "reduce"): ("materialized", 32, 112),
    ("u32-word", "stacked", "reduce"): ("materialized", 16, 64),
}

FUSION = "fusion"
FUSION_BF16 = "fusion-bf16"

# What a CPU compile of the suite's int4 model does with the dequant (no device: the CPU
# backends' choices do not depend on the machine's GPU), and IREE's CUDA target compiled here:
# (verdict, linears fused, dequant kernels, what they write), from :func:`rebuild`.
REBUILD = "int4 dequant"
ONE_PER_LINEAR = "one kernel per linear"
F32_WEIGHTS = "every weight as float32"
DTYPE_WEIGHTS = "every weight in the compute dtype"
CPU_PINS = "tests/lowering on the 2-core CPU (AMD EPYC)"


def rebuild(verdict: str, fused: int, kernels: int, written: int, cfg) -> tuple:
    """An analyzer's verdict of an int4 graph in the table's terms: (verdict, linears fused,
    dequant kernels, bytes they write), the last two named against the config's linears."""
    from .llama.weights import linear_weight_bytes, linear_weight_bytes_f32

    per_linear = ONE_PER_LINEAR if kernels == 7 * cfg.num_layers else f"{kernels} kernels"
    names = {linear_weight_bytes(cfg): DTYPE_WEIGHTS, linear_weight_bytes_f32(cfg): F32_WEIGHTS}  # f32: one name
    return (verdict, fused, per_linear, names.get(written, f"{written} bytes"))


VERSIONS_RUN = "results/versions-cpu.json (python -m model_impl versions on the 2-core CPU, 2026-12-05)"
_MATERIALIZED_F32 = ("materialized", 0, ONE_PER_LINEAR, F32_WEIGHTS)
_MATERIALIZED_DTYPE = ("materialized", 0, ONE_PER_LINEAR, DTYPE_WEIGHTS)
_CPU = [
    # XLA-CPU: each dequant a loop fusion writing the float32 weight, the dot reading it back;
    # in bfloat16 compute too (XLA-CPU widens bf16 arithmetic to f32: twice the bytes asked for).
    Entry(XLA, ">=0.10.2,<0.11", None, ("xla-cpu", REBUILD, "float32"), _MATERIALIZED_F32, CPU_PINS),
    Entry(XLA, ">=0.10.2,<0.11", None, ("xla-cpu", REBUILD, "bfloat16"), _MATERIALIZED_F32, CPU_PINS),
    # jaxlib 0.11.2 and 0.12.0.1 (Python 3.12) make the same choice
    Entry(XLA, ">=0.11.2,<0.13", None, ("xla-cpu", REBUILD, "float32"), _MATERIALIZED_F32, VERSIONS_RUN),
    Entry(XLA, ">=0.11.2,<0.13", None, ("xla-cpu", REBUILD, "bfloat16"), _MATERIALIZED_F32, VERSIONS_RUN),
    # IREE: the unpack a dispatch of its own writing the weight in the compute dtype.
    *(
        Entry(IREE, versions, None, (backend, REBUILD, dtype), expected, source)
        # 3.11 and 3.12 from the registry make the same choice
        for versions, source in ((">=3.13,<3.14", CPU_PINS), (">=3.11,<3.13", VERSIONS_RUN))
        for backend in ("iree-cpu", "iree-cuda")
        for dtype, expected in (("float32", _MATERIALIZED_F32), ("bfloat16", _MATERIALIZED_DTYPE))
    ),
]

# What each compiler reproducer under reproducers/ does with the installed iree-compile: "fails"
# (the recorded error), "crashes" (killed by a signal without it), "miscompiles" (the recorded
# wrong output), "fails differently: <its error line>", "fixed" (compiles, or computes the
# expected output). Older releases were run with
# their wheels from the registry (PYTHONPATH=<their pip --target dir>, the same tests).
REPRODUCER = "reproducer"
IREE_OLDER = (
    "tests/lowering/test_reproducers.py with iree-base-compiler 3.11.0 and 3.12.0 from the registry, 2026-12-05"
)
_REPRODUCERS = [
    Entry(IREE, versions, None, ("iree", REPRODUCER, case), status, source)
    for case, versions, status, source in (
        # nondeterministic in every release measured: 2 of 12 compiles of 3.11.0 crashed, 7 of 12
        # of 3.12.0, about 5 of 6 of 3.13.0 (the test tries up to expect.json's attempts)
        ("iree-data-tiling-sigsegv", ">=3.13,<3.14", "fails", "reproducers/iree-data-tiling-sigsegv/expect.json"),
        ("iree-data-tiling-sigsegv", ">=3.11,<3.13", "fails", IREE_OLDER),
        (
            "iree-fused-uint4-read-as-signed",
            ">=3.13,<3.14",
            "miscompiles",
            "reproducers/iree-fused-uint4-read-as-signed/expect.json",
        ),
        ("iree-fused-uint4-read-as-signed", ">=3.11,<3.13", "miscompiles", IREE_OLDER),
        (
            "iree-while-one-element-update",
            ">=3.13,<3.14",
            "fails",
            "reproducers/iree-while-one-element-update/expect.json",
        ),
        ("iree-while-one-element-update", ">=3.12,<3.13", "fails", IREE_OLDER),
        # 3.11 is killed on the same input (SIGSEGV in 5 of 6 compiles, SIGABRT "LLVM ERROR: out
        # of memory" in the dialect conversion's signature conversion in 1)
        ("iree-while-one-element-update", ">=3.11,<3.12", "crashes", IREE_OLDER),
    )
]

# How XLA-CPU rounds a half-precision multiply-add (checks.xla_cpu_half_rounding): it depends on
# the host CPU XLA compiles for, so the "device" here is the host's half-precision arithmetic
# (:func:`host_half_arithmetic`): with AVX512-FP16, LLVM contracts float16 multiplies and adds
# into FMAs; without it every float16 op is promoted to float32 and rounded back. No x86 CPU has
# bfloat16 arithmetic (AVX512-BF16 has conversions and dot products only): per op everywhere.
HALF_ROUNDING = "half-precision multiply-add"
WITH_FP16, WITHOUT_FP16 = "x86-64 with avx512fp16", "x86-64 without avx512fp16"
_HALF_ROUNDINGS = [
    Entry(XLA, ">=0.10.2,<0.11", WITH_FP16, ("xla-cpu", HALF_ROUNDING, "float16"), "fused multiply-add",
          "tests/parity/test_half_reference.py on an Intel Xeon (AVX512-FP16, AMX), 2026-12-05"),
    Entry(XLA, ">=0.10.2,<0.11", WITHOUT_FP16, ("xla-cpu", HALF_ROUNDING, "float16"), "rounded per op",
          "tests/parity/test_half_reference.py on the AMD EPYC, 2026-12-04"),
    Entry(XLA, ">=0.10.2,<0.11", None, ("xla-cpu", HALF_ROUNDING, "bfloat16"), "rounded per op",
          "tests/parity/test_half_reference.py on the AMD EPYC and the Intel Xeon"),
    Entry(XLA, ">=0.11,<0.13", WITH_FP16, ("xla-cpu", HALF_ROUNDING, "float16"), "fused multiply-add",
          "tests/parity/test_half_reference.py, jaxlib 0.11.2 and 0.12.0.1, Intel Xeon (AVX512-FP16), 2026-12-05"),
    Entry(XLA, ">=0.11,<0.13", WITH_FP16, ("xla-cpu", HALF_ROUNDING, "bfloat16"), "rounded per op",
          "tests/parity/test_half_reference.py, jaxlib 0.11.2 and 0.12.0.1, Intel Xeon (AVX512-FP16), 2026-12-05"),
]  # fmt: skip


def host_half_arithmetic() -> str:
    """The host CPU's half-precision arithmetic, as :data:`_HALF_ROUNDINGS` keys it."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return WITH_FP16 if "avx512_fp16" in flags.split() or "avx512fp16" in flags.split() else WITHOUT_FP16


# Kernels a compiler has or lacks. XLA-CPU has no BF16 x BF16 = F32 batched dot (the attention's
# einsums in bf16 with a float32 result fail UNIMPLEMENTED; the model widens them to f32).
KERNEL = "kernel"
BATCHED_BF16_DOT = "BF16 x BF16 = F32 batched dot"
_KERNELS = [
    Entry(XLA, ">=0.10.2,<0.11", None, ("xla-cpu", KERNEL, BATCHED_BF16_DOT), "missing", CPU_PINS),
    Entry(XLA, ">=0.11.2,<0.13", None, ("xla-cpu", KERNEL, BATCHED_BF16_DOT), "missing", VERSIONS_RUN),
]

# What IREE's CUDA codegen makes of the performance reproducer's GEMV (reproducers/iree-cuda-gemv,
# --iree-opt-level=O3, sm_80): the dispatch's pipeline and workgroup size, read from its dump.
KERNEL_CONFIG = "kernel-config"
_KERNEL_CONFIGS = [
    Entry(
        IREE,
        ">=3.11,<3.14",  # 3.11 and 3.12 from the registry: the same configuration (IREE_OLDER's run)
        None,
        ("iree-cuda", KERNEL_CONFIG, "iree-cuda-gemv"),
        ("matvec_like_128256x2048_bf16xbf16xf32", "VectorDistribute", (32, 1, 1)),
        "reproducers/iree-cuda-gemv/README.md",
    )
]

# IREE-CUDA's decode step as ``python -m model_impl iree-study build`` compiles it (sm_80, bf16,
# compile-only: no device): (dequant verdict, whether transpose dispatches copy weights each step)
# per (form, flag set). The same at the Llama-3.2-1B shapes and the 2-layer test shapes.
IREE_STUDY = "iree-study"
_IREE_STUDY_SOURCE = "results/iree-cuda-speed-h200.json (1B shapes) and tests/lowering/test_iree_cuda_study.py"
_IREE_STUDY = [
    Entry(IREE, versions, None, ("iree-cuda", IREE_STUDY, form, flags), expected, source)
    # 3.11 and 3.12 from the registry compile every variant the same way
    for versions, source in ((">=3.13,<3.14", _IREE_STUDY_SOURCE), (">=3.11,<3.13", VERSIONS_RUN))
    for (form, flags), expected in {
        ("dense-dot", "default"): ("no-dequant", "transposes"),  # W^T copied before every GEMV
        ("dense-dot", "O3"): ("no-dequant", "no transposes"),
        ("dense-io", "default"): ("no-dequant", "no transposes"),  # W laid [in, out]: nothing to copy
        ("s4-grouped", "default"): ("fused", "transposes"),
        ("u4-magic", "O3"): ("materialized", "no transposes"),
    }.items()
]

TABLE: list[Entry] = [
    *_xla_cuda_fusion(_FP32_H100, H100, H100_FUSION, FUSION),
    *_xla_cuda_fusion(_FP32_H200, H200, H200_FUSION, FUSION),
    *_xla_cuda_fusion(_BF16_H100, H100, H100_FUSION, FUSION_BF16),
    *_xla_cuda_fusion(_BF16_H200, H200, H200_FUSION, FUSION_BF16),
    *_CPU,
    *_REPRODUCERS,
    *_KERNELS,
    *_HALF_ROUNDINGS,
    *_KERNEL_CONFIGS,
    *_IREE_STUDY,
]


def verdict_of(counts: tuple) -> str:
    """The verdict of a (verdict, fused, total) expectation: the part every device must share."""
    return counts[0]


def compiler_version(compiler: str) -> str:
    from . import env

    version = env.version(compiler)
    if version is None:
        raise Unexpected(f"{compiler} is not installed: no version to look up")
    return version
