"""The compilers' own dumps for one graph, from shapes alone (no weights needed).

``stablehlo``: what ``jax.export`` hands to any compiler. ``xla_hlo``: XLA's optimized HLO
and memory analysis for the CPU (or another JAX platform). ``iree_sources``: IREE's module
after dispatch formation, for ``llvm-cpu`` or ``cuda``. Each is read by an analyzer of this
package.
"""

from __future__ import annotations

import dataclasses
import time

import jax

from ..backends import iree_compile, xla
from ..llama.config import Config
from ..llama.graphs import export_stablehlo


def stablehlo(cfg: Config, specs, graph: str, bucket: int, max_seq: int) -> str:
    return export_stablehlo(cfg, specs, graph, bucket, max_seq)


@dataclasses.dataclass(frozen=True)
class XlaDump:
    hlo: str
    compile_seconds: float
    temp_bytes: int
    argument_bytes: int
    platform: str


def xla_hlo(
    cfg: Config, specs, graph: str, bucket: int, max_seq: int, platform: str = "cpu", compiler_options=None
) -> XlaDump:
    with jax.default_device(jax.devices(platform)[0]):
        lowered = xla.lower(cfg, specs, graph, bucket, max_seq, compiler_options)
        start = time.perf_counter()
        compiled = lowered.compile()
        seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    return XlaDump(
        compiled.as_text(),
        seconds,
        int(getattr(mem, "temp_size_in_bytes", -1)),
        int(getattr(mem, "argument_size_in_bytes", -1)),
        platform,
    )


def iree_sources(
    cfg: Config,
    specs,
    graph: str,
    bucket: int,
    max_seq: int,
    target: str,
    cuda_target: str = iree_compile.DEFAULT_CUDA_TARGET,
    extra_flags=(),
) -> tuple[str, float | None]:
    return iree_compile.executable_sources(cfg, specs, graph, bucket, max_seq, target, cuda_target, extra_flags)
