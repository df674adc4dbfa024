"""The compilers' own dumps for one graph, from shapes alone (no weights needed).

``stablehlo``: what ``jax.export`` hands to any compiler. ``xla_hlo``: XLA's optimized HLO
and memory analysis for the CPU (or another JAX platform). ``iree_sources``: IREE's module
after dispatch formation, for ``llvm-cpu`` or ``cuda``. Each is analyzed by
:mod:`model_impl.lowering`.
"""

from __future__ import annotations

import dataclasses
import time

import jax

from . import iree_backend
from .config import Config
from .graphs import GRAPH_FUNCTIONS, graph_args
from .iree_backend import DEFAULT_CUDA_TARGET


# Llama-3.2-1B graphs are characterized from shapes alone: 64-token prompt bucket, 512-slot cache.
LLAMA32_SHAPES = (64, 512)


def stablehlo(cfg: Config, specs, graph: str, bucket: int, max_seq: int) -> str:
    return iree_backend.export_stablehlo(cfg, specs, graph, bucket, max_seq)


@dataclasses.dataclass(frozen=True)
class XlaDump:
    hlo: str
    compile_seconds: float
    temp_bytes: int
    argument_bytes: int
    platform: str


def xla_hlo(cfg: Config, specs, graph: str, bucket: int, max_seq: int, platform: str = "cpu") -> XlaDump:
    device = jax.devices(platform)[0]
    fn = jax.jit(GRAPH_FUNCTIONS[graph], static_argnums=0, donate_argnums=4)
    args = graph_args(cfg, specs, graph, bucket, max_seq)
    with jax.default_device(device):
        lowered = fn.lower(cfg, *args)
        start = time.perf_counter()
        compiled = lowered.compile()
        seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    return XlaDump(compiled.as_text(), seconds, int(getattr(mem, "temp_size_in_bytes", -1)),
                   int(getattr(mem, "argument_size_in_bytes", -1)), platform)


def iree_sources(cfg: Config, specs, graph: str, bucket: int, max_seq: int, target: str,
                 cuda_target: str = DEFAULT_CUDA_TARGET) -> tuple[str, float | None]:
    return iree_backend.executable_sources(cfg, specs, graph, bucket, max_seq, target, cuda_target)
