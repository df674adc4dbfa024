"""IREE's runtime side: arrays onto a device, the one module loader, and the model runner.

Weights are uploaded to the device once and passed as resident buffers on every call; the
KV cache returned by one step is fed to the next without leaving the device; only the
chosen token id is read back.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from ..llama.config import Config
from ..llama.graphs import loop_graph, shape_bucket
from . import cache, iree_compile
from .spec import IREE_CPU, Backend
from .spec import backend as backend_spec

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
        memory_type=rt.MemoryType.DEVICE_LOCAL,
        allowed_usage=rt.BufferUsage.DEFAULT,
        device=device,
        buffer=packed,
    )
    element_type = getattr(rt.HalElementType, _FOUR_BIT[x.dtype.name])
    view = rt.HalBufferView(buffer, list(x.shape), element_type)
    return rt.DeviceArray(device, view)


def to_host(array) -> np.ndarray:
    """A host copy of an IREE device array. ``DeviceArray.to_host()`` on a local (CPU) device
    maps the device buffer instead of copying it: the mapping outlives the buffer, whose memory
    the runtime hands to a later call (measured: the decode loop's logits rows of one chunk
    showed a later chunk's rows), so every read copies."""
    return np.array(array.to_host(), copy=True)


class IreeDevice:
    """One IREE runtime device (a driver: ``local-task`` or ``cuda``) and its modules.

    ``fresh_driver``: the device of a driver created now, under the runtime flags parsed so far
    (``iree.runtime.flags.parse_flags``); otherwise the runtime's cached driver of that name,
    created once per process, which flags parsed after its creation do not reach."""

    def __init__(self, driver: str, fresh_driver: bool = False):
        import iree.runtime as rt

        self._rt = rt
        if fresh_driver:  # the runtime's public getters all return the cached driver
            self.config = rt.Config(device=rt._binding.create_hal_driver(driver).create_default_device())
        else:
            self.config = rt.Config(driver)
        self.device = self.config.device

    def put(self, x):
        return device_array(self.device, x)

    def scalar(self, value: int):
        return self._rt.asdevicearray(self.device, np.asarray(value, np.int32))

    def load(self, vmfb: Path | bytes, parameters=None, function: str = "main"):
        """``function`` of the module ``vmfb`` (a file, mapped; or bytes), in a context of its
        own (modules of one graph at several shapes share a name). ``parameters``: an
        ``iree.runtime.ParameterIndex`` serving the module's ``#stream.parameter`` globals."""
        rt = self._rt
        instance = self.config.vm_instance
        if isinstance(vmfb, (bytes, bytearray)):
            module = rt.VmModule.copy_buffer(instance, vmfb)
        else:
            module = rt.VmModule.mmap(instance, str(vmfb))
        if parameters is None:
            context = rt.SystemContext(config=self.config)
            context.add_vm_module(module)
        else:
            params = rt.create_io_parameters_module(instance, parameters.create_provider(scope="model"))
            hal = rt.create_hal_module(instance, self.device)
            context = rt.SystemContext(vm_modules=[params, hal, module], config=self.config)
        return context.modules[module.name][function]


def load_or_rebuild(iree: IreeDevice, path: Path, compile_):
    """``main`` of the cached module at ``path``; a module the runtime rejects (one its digest
    cannot catch, e.g. made by another runtime's compiler) is dropped and compiled again with
    ``compile_()``, or named in a :class:`cache.CacheError` where no compiler is installed."""
    try:
        return iree.load(path)
    except (RuntimeError, ValueError) as e:  # "Error creating vm module from aligned memory: ..."
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        cache.drop(path)
        try:
            path, _ = compile_()
        except ImportError:
            raise cache.CacheError(
                f"{path}: the IREE runtime rejects this cached module ({reason}) and no compiler is installed "
                f"here to rebuild it: {cache.CLEAR}, then carry it again"
            ) from None
        return iree.load(path)


class IreeRunner:
    """A compiled prefill/decode pair on one IREE device (``local-task`` CPU or ``cuda``)."""

    def __init__(
        self,
        cfg: Config,
        weights,
        backend: Backend | str = IREE_CPU,
        cuda_target: str = iree_compile.DEFAULT_CUDA_TARGET,
        extra_flags=(),
    ):
        self._describe(cfg, backend, cuda_target, extra_flags)
        self.specs = iree_compile.weight_specs(weights)
        self.iree = IreeDevice(self.spec.iree_driver)
        start = time.perf_counter()
        self.weights = [self.iree.put(x) for x in jax.tree_util.tree_leaves(weights)]
        self.upload_seconds = time.perf_counter() - start
        self._functions = {}

    def _describe(self, cfg: Config, backend, cuda_target: str, extra_flags) -> None:
        self.spec = backend_spec(backend)
        self.cfg, self.backend, self.cuda_target = cfg, self.spec.name, cuda_target
        self.target = self.spec.iree_target
        self.extra_flags = tuple(extra_flags)
        self.compile_seconds: dict[str, float | None] = {}
        self.cache = None

    @classmethod
    def loaded(
        cls,
        cfg: Config,
        iree: IreeDevice,
        device_weights: list,
        functions: dict,
        backend: Backend | str,
        cuda_target: str = iree_compile.DEFAULT_CUDA_TARGET,
    ) -> IreeRunner:
        """A runner over weights already on ``iree`` (the tree's leaves in order, shared with
        other runners) and modules already loaded, ``{(graph, bucket, max_seq): function}``
        (e.g. carried from a machine with the compiler): nothing compiled, no cache key. It runs
        only the graphs it is given."""
        runner = cls.__new__(cls)
        runner._describe(cfg, backend, cuda_target, ())
        runner.specs, runner.iree, runner.weights, runner.upload_seconds = None, iree, device_weights, None
        runner._functions = {(g, shape_bucket(g, b), m): fn for (g, b, m), fn in functions.items()}
        return runner

    def function(self, graph: str, bucket: int, max_seq: int):
        key = (graph, shape_bucket(graph, bucket), max_seq)
        if key not in self._functions and self.specs is None:
            raise KeyError(f"{graph} at bucket {key[1]}, max_seq {max_seq}: not among this runner's loaded modules")
        if key not in self._functions:
            compile_ = lambda: iree_compile.compiled_module(  # noqa: E731
                self.cfg, self.specs, graph, bucket, max_seq, self.target, self.cuda_target, self.extra_flags
            )
            path, seconds = compile_()
            self.compile_seconds[graph] = seconds
            self._functions[key] = load_or_rebuild(self.iree, path, compile_)
        return self._functions[key]

    def put_token(self, token_id: int):
        return self.iree.scalar(token_id)

    def _zero_cache(self, max_seq: int):
        cfg = self.cfg
        zeros = np.zeros((cfg.num_layers, cfg.num_kv_heads, max_seq, cfg.head_dim), cfg.jnp_dtype)
        return [self.iree.put(zeros) for _ in range(2)]

    def reset(self, max_seq: int) -> None:
        """An empty KV cache of ``max_seq`` slots, for decoding without a prefill."""
        self._max_seq = max_seq
        self.cache = self._zero_cache(max_seq)

    def prefill(self, padded_tokens: np.ndarray, length: int, max_seq: int):
        fn = self.function("prefill", len(padded_tokens), max_seq)
        self._max_seq = max_seq
        k, v = self._zero_cache(max_seq)
        tokens = self.iree.put(np.asarray(padded_tokens, np.int32))
        token, logits, *self.cache = fn(*self.weights, tokens, self.iree.scalar(length), k, v)
        return token, logits

    def decode(self, token, pos: int):
        decode = self.function("decode", 0, self._max_seq)
        token, logits, *self.cache = decode(*self.weights, token, self.iree.scalar(pos), *self.cache)
        return token, logits

    def loop_state(self, token, pos: int, remaining: int, stop_at_eos: bool):
        """The decode loop's state on the device (see ``XlaRunner.loop_state``)."""
        return (token, self.iree.scalar(pos), self.iree.scalar(remaining), self.iree.scalar(int(stop_at_eos)))

    def decode_chunk(self, state, chunk: int, keep_logits: bool = False):
        """One chunk of the decode loop (see ``XlaRunner.decode_chunk``). IREE evaluates the
        loop's condition in its VM, on the host, so the call returns when the chunk is done."""
        fn = self.function(loop_graph(keep_logits), chunk, self._max_seq)
        token, pos, remaining, stop = state
        tokens, steps, token, pos, remaining, *rest = fn(*self.weights, token, pos, *self.cache, remaining, stop)
        rows = rest.pop(0) if keep_logits else None
        self.cache = rest
        return (tokens, steps, rows), (token, pos, remaining, stop)

    @staticmethod
    def chunk_to_host(outputs) -> tuple[list[int], np.ndarray | None]:
        tokens, steps, rows = outputs
        n = int(to_host(steps))
        ids = [int(t) for t in to_host(tokens)[:n]]
        return ids, None if rows is None else to_host(rows)[:n]

    def cache_to_host(self) -> list[np.ndarray]:
        return [to_host(c) for c in self.cache]

    @staticmethod
    def token_id(token) -> int:
        return int(to_host(token))

    @staticmethod
    def logits_row(logits) -> np.ndarray:
        return to_host(logits).astype(np.float32, copy=False)
