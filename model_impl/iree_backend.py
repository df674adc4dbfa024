"""IREE: export with ``jax.export``, compile with iree-base-compiler, run with iree-base-runtime.

Weights are uploaded to the device once and passed as resident buffers on every call; the
KV cache returned by one step is fed to the next without leaving the device; only the
chosen token id is read back. Compiled modules are cached on disk under a key of what the
graph is (see :mod:`model_impl.cache`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import time

import jax
import numpy as np

from . import cache
from .config import Config
from .graphs import GRAPH_FUNCTIONS, graph_args
DEFAULT_CUDA_TARGET = "sm_80"  # iree-compile 3.13 has no sm_90 target; sm_80 PTX JITs on Hopper
# pallas_int4.py is absent: its graphs carry a custom_call that IREE never compiles.
GRAPH_SOURCES = ("model.py", "graphs.py", "config.py", "weights.py", "representations.py")


def compiler_version() -> str:
    """The iree-base-compiler version; on a run-only machine (no compiler installed) the
    version that compiled the carried modules, from ``MODEL_IMPL_IREE_COMPILER``."""
    try:
        return importlib.metadata.version("iree-base-compiler")
    except importlib.metadata.PackageNotFoundError:
        version = os.environ.get("MODEL_IMPL_IREE_COMPILER")
        if not version:
            raise RuntimeError(
                "iree-base-compiler is not installed: install it, or set MODEL_IMPL_IREE_COMPILER "
                "to the version that compiled the carried modules"
            ) from None
        return version


def target_flags(target: str, cuda_target: str = DEFAULT_CUDA_TARGET) -> list[str]:
    if target == "llvm-cpu":
        return [
            "--iree-hal-target-device=local",
            "--iree-hal-local-target-device-backends=llvm-cpu",
            "--iree-llvmcpu-target-cpu=host",
        ]
    if target == "cuda":
        return ["--iree-hal-target-device=cuda", f"--iree-cuda-target={cuda_target}"]
    raise ValueError(f"unknown IREE target {target!r}; known: llvm-cpu, cuda")


def weight_specs(weights):
    """ShapeDtypeStructs of a weights pytree (static bits/group_size kept)."""
    return jax.tree_util.tree_map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        weights,
    )


def export_stablehlo(cfg: Config, specs, graph: str, bucket: int, max_seq: int) -> str:
    """The graph's StableHLO (MLIR text) as ``jax.export`` produces it."""
    fn = jax.jit(GRAPH_FUNCTIONS[graph], static_argnums=0)
    exported = jax.export.export(fn)(cfg, *graph_args(cfg, specs, graph, bucket, max_seq))
    return exported.mlir_module()


def graph_key(cfg: Config, specs, graph: str, bucket: int, max_seq: int, flags: list[str]) -> dict:
    return {
        "config": repr(cfg),
        "weights": weights_signature(specs),
        "graph": graph,
        "bucket": bucket if graph == "prefill" else None,
        "max_seq": max_seq,
        "flags": flags,
        "iree_compiler": compiler_version(),
        "sources": cache.source_digest(*GRAPH_SOURCES),
        "host_cpu": _host_cpu() if "--iree-llvmcpu-target-cpu=host" in flags else None,
    }


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


def weights_signature(specs) -> list:
    """(name, shape, dtype[, bits, group]) of every weight: stable across jax versions, so a
    module compiled on one machine is found on another."""
    from .weights import QuantizedLinear

    def entry(name, x):
        if isinstance(x, QuantizedLinear):
            return [name, [list(np.shape(a)) for a in (x.packed, x.scales, x.biases)],
                    [str(np.dtype(a.dtype)) for a in (x.packed, x.scales, x.biases)], x.bits, x.group_size]
        if dataclasses.is_dataclass(x):  # another int4 representation: its arrays and statics
            fields = [(f.name, getattr(x, f.name)) for f in dataclasses.fields(x)]
            return [name, type(x).__name__,
                    [[n, list(np.shape(a)), str(np.dtype(a.dtype))] if hasattr(a, "dtype") else [n, a]
                     for n, a in fields]]
        return [name, list(np.shape(x)), str(np.dtype(x.dtype))]

    out = [entry("embed", specs.embed), entry("final_norm", specs.final_norm),
           entry("lm_head", specs.lm_head) if specs.lm_head is not None else ["lm_head", None]]
    for i, layer in enumerate(specs.layers):
        for field in dataclasses.fields(layer):
            out.append(entry(f"layers.{i}.{field.name}", getattr(layer, field.name)))
    return out


def _host_cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _compile(mlir: str, flags: list[str]) -> bytes:
    import iree.compiler as ic

    return ic.compile_str(mlir, input_type="stablehlo", extra_args=flags)


def _cached_compile(kind, suffix, cfg, specs, graph, bucket, max_seq, flags):
    """(path, seconds the compile took when it was made) for this graph and flags."""
    key = graph_key(cfg, specs, graph, bucket, max_seq, flags)

    def produce():
        mlir = export_stablehlo(cfg, specs, graph, bucket, max_seq)
        start = time.perf_counter()
        data = _compile(mlir, flags)
        return data, {"compile_seconds": time.perf_counter() - start}

    path, _ = cache.cached_file(kind, key, suffix, produce)
    return path, cache.entry_meta(path).get("compile_seconds")


def compiled_module(cfg, specs, graph, bucket, max_seq, target, cuda_target=DEFAULT_CUDA_TARGET,
                    extra_flags=()):
    """(vmfb path, compile seconds)."""
    flags = target_flags(target, cuda_target) + list(extra_flags)
    return _cached_compile("iree", ".vmfb", cfg, specs, graph, bucket, max_seq, flags)


def _sources_flags(target, cuda_target, extra_flags) -> list[str]:
    return target_flags(target, cuda_target) + list(extra_flags) + [
        "--compile-to=executable-sources",
        "--mlir-print-debuginfo=false",
    ]


def executable_sources(cfg, specs, graph, bucket, max_seq, target, cuda_target=DEFAULT_CUDA_TARGET,
                       extra_flags=()) -> tuple[str, float | None]:
    """The module after dispatch formation (``--compile-to=executable-sources``), cached."""
    flags = _sources_flags(target, cuda_target, extra_flags)
    path, seconds = _cached_compile("iree-sources", ".mlir", cfg, specs, graph, bucket, max_seq, flags)
    return path.read_text(), seconds


def executable_sources_path(cfg, specs, graph, bucket, max_seq, target, cuda_target=DEFAULT_CUDA_TARGET,
                            extra_flags=()):
    """Where :func:`executable_sources` caches this graph's sources (to carry them elsewhere)."""
    flags = _sources_flags(target, cuda_target, extra_flags)
    return cache.entry_path("iree-sources", graph_key(cfg, specs, graph, bucket, max_seq, flags), ".mlir")


_FOUR_BIT = {"int4": "SINT_4", "uint4": "UINT_4"}


def device_array(device, x):
    """A host array on an IREE device. 4-bit arrays (``jnp.int4``/``jnp.uint4``, one byte per
    element on the host) are packed two per byte, element 0 in the low nibble, as IREE's i4
    buffers are laid out."""
    import iree.runtime as rt

    x = np.ascontiguousarray(x)
    if x.dtype.name not in _FOUR_BIT:
        return rt.asdevicearray(device, x)
    if x.size % 2:
        raise ValueError(f"a 4-bit array needs an even element count to pack, got shape {x.shape}")
    nibbles = x.view(np.uint8).reshape(-1, 2) & np.uint8(15)
    packed = nibbles[:, 0] | (nibbles[:, 1] << np.uint8(4))
    buffer = device.allocator.allocate_buffer_copy(
        memory_type=rt.MemoryType.DEVICE_LOCAL, allowed_usage=rt.BufferUsage.DEFAULT, device=device,
        buffer=packed)
    element_type = getattr(rt.HalElementType, _FOUR_BIT[x.dtype.name])
    view = rt.HalBufferView(buffer, list(x.shape), element_type)
    return rt.DeviceArray(device, view)


class IreeRunner:
    """A compiled prefill/decode pair on one IREE device (``local-task`` CPU or ``cuda``)."""

    def __init__(self, cfg: Config, weights, target: str = "llvm-cpu", driver: str = "local-task",
                 cuda_target: str = DEFAULT_CUDA_TARGET, backend: str = "iree-cpu", extra_flags=()):
        import iree.runtime as rt

        self.cfg, self.target, self.cuda_target, self.backend = cfg, target, cuda_target, backend
        self.extra_flags = tuple(extra_flags)
        self.specs = weight_specs(weights)
        self._rt = rt
        self.config = rt.Config(driver)
        self.device = self.config.device
        start = time.perf_counter()
        self.weights = [device_array(self.device, x) for x in jax.tree_util.tree_leaves(weights)]
        self.upload_seconds = time.perf_counter() - start
        self.compile_seconds: dict[str, float | None] = {}
        self._functions = {}
        self.cache = None

    def function(self, graph: str, bucket: int, max_seq: int):
        key = (graph, bucket if graph == "prefill" else None, max_seq)
        if key not in self._functions:
            path, seconds = compiled_module(
                self.cfg, self.specs, graph, bucket, max_seq, self.target, self.cuda_target,
                self.extra_flags,
            )
            self.compile_seconds[graph] = seconds
            module = self._rt.VmModule.mmap(self.config.vm_instance, str(path))
            # One context per module: every prefill bucket's module has the same name.
            context = self._rt.SystemContext(config=self.config)
            context.add_vm_module(module)
            self._functions[key] = context.modules[module.name]["main"]
        return self._functions[key]

    def _scalar(self, value: int):
        return self._rt.asdevicearray(self.device, np.asarray(value, np.int32))

    put_token = _scalar

    def _zero_cache(self, max_seq: int):
        zeros = np.zeros((self.cfg.num_layers, self.cfg.num_kv_heads, max_seq, self.cfg.head_dim), np.float32)
        return [self._rt.asdevicearray(self.device, zeros) for _ in range(2)]

    def reset(self, max_seq: int) -> None:
        """An empty KV cache of ``max_seq`` slots, for decoding without a prefill."""
        self._decode = self.function("decode", 0, max_seq)
        self.cache = self._zero_cache(max_seq)

    def prefill(self, padded_tokens: np.ndarray, length: int, max_seq: int):
        fn = self.function("prefill", len(padded_tokens), max_seq)
        self._decode = self.function("decode", 0, max_seq)
        k, v = self._zero_cache(max_seq)
        tokens = self._rt.asdevicearray(self.device, np.asarray(padded_tokens, np.int32))
        token, logits, *self.cache = fn(*self.weights, tokens, self._scalar(length), k, v)
        return token, logits

    def decode(self, token, pos: int):
        token, logits, *self.cache = self._decode(*self.weights, token, self._scalar(pos), *self.cache)
        return token, logits

    @staticmethod
    def token_id(token) -> int:
        return int(token.to_host())

    @staticmethod
    def logits_row(logits) -> np.ndarray:
        return np.asarray(logits.to_host(), np.float32)
