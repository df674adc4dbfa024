"""IREE's compiler side: flags per target, content keys, and the one compile-and-cache recipe.

Every IREE module the suite builds (the model's graphs, the linear chain, the weights-as-globals
variant, executable sources for the analyzers) goes through :func:`compile_cached`, keyed by
what the module is plus the flags, the compiler version and (for ``-target-cpu=host``) the
host CPU. A machine without the compiler finds modules compiled elsewhere under the same key.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from .. import env
from ..llama.config import Config
from ..llama.graphs import GRAPH_SOURCES, export_stablehlo, shape_bucket
from ..llama.linears import QuantizedLinear
from . import cache

DEFAULT_CUDA_TARGET = "sm_80"  # iree-compile 3.13 has no sm_90 target; sm_80 PTX JITs on Hopper
HOST_CPU_FLAG = "--iree-llvmcpu-target-cpu=host"
SOURCES_FLAGS = ("--compile-to=executable-sources", "--mlir-print-debuginfo=false")


def compiler_version() -> str:
    """The iree-base-compiler version; on a run-only machine (no compiler installed) the
    version that compiled the carried modules, from ``MODEL_IMPL_IREE_COMPILER``."""
    found = env.version("iree-base-compiler")
    if found:
        return found
    carried = os.environ.get("MODEL_IMPL_IREE_COMPILER")
    if not carried:
        raise RuntimeError(
            "iree-base-compiler is not installed: install it, or set MODEL_IMPL_IREE_COMPILER "
            "to the version that compiled the carried modules"
        )
    return carried


def target_flags(target: str, cuda_target: str = DEFAULT_CUDA_TARGET) -> list[str]:
    if target == "llvm-cpu":
        return [
            "--iree-hal-target-device=local",
            "--iree-hal-local-target-device-backends=llvm-cpu",
            HOST_CPU_FLAG,
        ]
    if target == "cuda":
        return ["--iree-hal-target-device=cuda", f"--iree-cuda-target={cuda_target}"]
    raise ValueError(f"unknown IREE target {target!r}; known: llvm-cpu, cuda")


def cuda_target_for_device(capability: str | None = None) -> str:
    """The IREE CUDA target for this machine's GPU: ``MODEL_IMPL_IREE_CUDA_TARGET`` if set,
    else the newest target the compiler accepts (or, without a compiler, the targets listed in
    ``MODEL_IMPL_IREE_CUDA_TARGETS``) that is not newer than the device."""
    from . import cuda_target

    override = os.environ.get("MODEL_IMPL_IREE_CUDA_TARGET")
    if override:
        return override
    if capability is None:
        capability = jax.devices("cuda")[0].compute_capability
    listed = os.environ.get("MODEL_IMPL_IREE_CUDA_TARGETS")
    accepted = listed.split(",") if listed else cuda_target.accepted_by_compiler()
    return cuda_target.select(capability, accepted)


def weight_specs(weights):
    """ShapeDtypeStructs of a weights pytree (static bits/group_size kept)."""
    return jax.tree_util.tree_map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        weights,
    )


def weights_signature(specs) -> list:
    """(name, shape, dtype[, bits, group]) of every weight: stable across jax versions, so a
    module compiled on one machine is found on another."""

    def entry(name, x):
        if isinstance(x, QuantizedLinear):
            arrays = (x.packed, x.scales, x.biases)
            return [
                name,
                [list(np.shape(a)) for a in arrays],
                [str(np.dtype(a.dtype)) for a in arrays],
                x.bits,
                x.group_size,
            ]
        if dataclasses.is_dataclass(x):  # another int4 representation: its arrays and statics
            fields = [(f.name, getattr(x, f.name)) for f in dataclasses.fields(x)]
            return [
                name,
                type(x).__name__,
                [[n, list(np.shape(a)), str(np.dtype(a.dtype))] if hasattr(a, "dtype") else [n, a] for n, a in fields],
            ]
        return [name, list(np.shape(x)), str(np.dtype(x.dtype))]

    out = [
        entry("embed", specs.embed),
        entry("final_norm", specs.final_norm),
        entry("lm_head", specs.lm_head) if specs.lm_head is not None else ["lm_head", None],
    ]
    for i, layer in enumerate(specs.layers):
        for field in dataclasses.fields(layer):  # absent linears (stacked or not) leave no entry
            if getattr(layer, field.name) is not None:
                out.append(entry(f"layers.{i}.{field.name}", getattr(layer, field.name)))
    return out


def module_key(identity: dict, flags: list[str]) -> dict:
    """The cache key of a module: what it is, plus everything of the compiler that shapes it."""
    return {
        **identity,
        "flags": list(flags),
        "iree_compiler": compiler_version(),
        "host_cpu": env.host_cpu() if HOST_CPU_FLAG in flags else None,
    }


def graph_identity(cfg: Config, specs, graph: str, bucket: int, max_seq: int) -> dict:
    """What one of the model's graphs is: config, weights, graph, shapes, defining sources."""
    return {
        "config": repr(cfg),
        "weights": weights_signature(specs),
        "graph": graph,
        "bucket": shape_bucket(graph, bucket),
        "max_seq": max_seq,
        "sources": cache.source_digest(*GRAPH_SOURCES),
    }


def graph_key(cfg: Config, specs, graph: str, bucket: int, max_seq: int, flags: list[str]) -> dict:
    return module_key(graph_identity(cfg, specs, graph, bucket, max_seq), flags)


def compile_mlir(mlir: str, flags: list[str]) -> bytes:
    """iree-compile on StableHLO text (no cache: for one-off graphs of a few ops)."""
    import iree.compiler as ic

    return ic.compile_str(mlir, input_type="stablehlo", extra_args=list(flags))


def compile_cached(
    identity: dict, make_mlir: Callable[[], str], flags: list[str], kind: str = "iree", suffix: str = ".vmfb"
):
    """(path, seconds iree-compile took when the entry was made) of the module ``identity``
    names, compiled from ``make_mlir()`` with ``flags`` on a miss."""

    def produce():
        mlir = make_mlir()
        start = time.perf_counter()
        data = compile_mlir(mlir, flags)
        return data, {"compile_seconds": time.perf_counter() - start}

    path, _ = cache.cached_file(kind, module_key(identity, flags), suffix, produce)
    return path, cache.entry_meta(path).get("compile_seconds")


def _graph_flags(target, cuda_target, extra_flags, sources: bool) -> list[str]:
    return target_flags(target, cuda_target) + list(extra_flags) + (list(SOURCES_FLAGS) if sources else [])


def compiled_module(cfg, specs, graph, bucket, max_seq, target, cuda_target=DEFAULT_CUDA_TARGET, extra_flags=()):
    """(vmfb path, compile seconds) of one of the model's graphs."""
    return compile_cached(
        graph_identity(cfg, specs, graph, bucket, max_seq),
        lambda: export_stablehlo(cfg, specs, graph, bucket, max_seq),
        _graph_flags(target, cuda_target, extra_flags, sources=False),
    )


def executable_sources(
    cfg, specs, graph, bucket, max_seq, target, cuda_target=DEFAULT_CUDA_TARGET, extra_flags=()
) -> tuple[str, float | None]:
    """The module after dispatch formation (``--compile-to=executable-sources``), cached."""
    path, seconds = compile_cached(
        graph_identity(cfg, specs, graph, bucket, max_seq),
        lambda: export_stablehlo(cfg, specs, graph, bucket, max_seq),
        _graph_flags(target, cuda_target, extra_flags, sources=True),
        kind="iree-sources",
        suffix=".mlir",
    )
    return path.read_text(), seconds


def executable_sources_path(
    cfg, specs, graph, bucket, max_seq, target, cuda_target=DEFAULT_CUDA_TARGET, extra_flags=()
):
    """Where :func:`executable_sources` caches this graph's sources (to carry them elsewhere)."""
    flags = _graph_flags(target, cuda_target, extra_flags, sources=True)
    return cache.entry_path("iree-sources", graph_key(cfg, specs, graph, bucket, max_seq, flags), ".mlir")
