"""IREE with the weights as module globals loaded from a parameter index, not call arguments.

The question it answers (issue 5): does passing every weight buffer as an argument on each
call cost IREE its speed? Measured answer: not the passing itself, but what IREE can do
with a global and not with an argument: its global optimization precomputes weight-only
work once, at initialization (``__hoisted_*`` globals): the transpose it puts in front of
every ``x @ W.T`` for fp32, and for int4 the whole dequant, so that an int4 model with
globals keeps float32 weights resident. The same exported decode graph is wrapped: its ``main`` becomes a
private function, each weight a ``util.global`` initialized from a named parameter
(``#stream.parameter.named<"model"::"w<i>">``), and a new ``main(token, pos, k, v)`` loads the
globals and calls it. The runtime serves the parameters from host buffers
(``iree.runtime.ParameterIndex``); they are uploaded once, when the module initializes.
"""

from __future__ import annotations

import re
import time

import jax
import numpy as np

from ..analyzers import element_count
from ..backends import cache, iree_compile, iree_runtime
from ..backends.generate import make_runner
from ..backends.iree_compile import target_flags, weight_specs, weights_signature
from ..backends.iree_runtime import IreeDevice
from ..llama.config import Config
from ..llama.graphs import GRAPH_FUNCTIONS, GRAPH_SOURCES, export_stablehlo, graph_args
from ..llama.linears import tensor_bytes
from .timing import time_decode

_ELEMENT = {"float32": "f32", "uint32": "ui32", "int32": "i32", "int4": "i4", "uint4": "ui4"}


def tensor_type(shape, dtype) -> str:
    return f"tensor<{''.join(f'{d}x' for d in shape)}{_ELEMENT[np.dtype(dtype).name]}>"


def wrap_with_globals(mlir: str, weight_types: list[str], arg_types: list[str], result_types: list[str]) -> str:
    """``mlir``'s public ``main(weights..., args...)`` as ``main(args...)`` over parameter globals."""
    head = "func.func public @main("
    if mlir.count(head) != 1:
        raise ValueError("expected exactly one public @main in the exported module")
    body = mlir.replace(head, "func.func private @inner(", 1)
    # IREE globals are signless: an unsigned weight is held as its signless twin and bitcast.
    stored = [t.replace("xui", "xi") for t in weight_types]
    lines = [
        f'  util.global private @w{i} = #stream.parameter.named<"model"::"w{i}"> : {t}' for i, t in enumerate(stored)
    ]
    params = ", ".join(f"%a{j}: {t}" for j, t in enumerate(arg_types))
    lines.append(f"  func.func public @main({params}) -> ({', '.join(result_types)}) {{")
    operands = []
    for i, (t, want) in enumerate(zip(stored, weight_types)):
        lines.append(f"    %w{i} = util.global.load @w{i} : {t}")
        if t != want:
            lines.append(f"    %u{i} = stablehlo.bitcast_convert %w{i} : ({t}) -> {want}")
        operands.append(f"%u{i}" if t != want else f"%w{i}")
    operands += [f"%a{j}" for j in range(len(arg_types))]
    signature = f"({', '.join(weight_types + arg_types)}) -> ({', '.join(result_types)})"
    lines.append(f"    %r:{len(result_types)} = func.call @inner({', '.join(operands)}) : {signature}")
    lines.append(f"    return {', '.join(f'%r#{k}' for k in range(len(result_types)))} : {', '.join(result_types)}")
    lines.append("  }")
    at = body.index("\n", body.index("module @")) + 1  # after the module's header line
    return body[:at] + "\n".join(lines) + "\n" + body[at:]


def globals_mlir(cfg: Config, specs, max_seq: int) -> str:
    """The exported decode graph wrapped so that its weights are parameter globals."""
    leaves = jax.tree_util.tree_leaves(specs)
    _, token, pos, kv = graph_args(cfg, specs, "decode", 0, max_seq)
    args = [token, pos, kv.k, kv.v]
    out = jax.eval_shape(lambda w, *a: GRAPH_FUNCTIONS["decode"](cfg, w, *a), specs, token, pos, kv)
    return wrap_with_globals(
        export_stablehlo(cfg, specs, "decode", 0, max_seq),
        [tensor_type(x.shape, x.dtype) for x in leaves],
        [tensor_type(x.shape, x.dtype) for x in args],
        [tensor_type(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(out)],
    )


_HOISTED = re.compile(r"util\.global private @__hoisted\S*\s*(?:\{[^}]*\})?\s*:\s*tensor<([\dx]+)x(\w+)>")
_BITS = {"f32": 32, "i32": 32, "f16": 16, "bf16": 16, "i8": 8, "i4": 4, "i1": 8}


def hoisted_bytes(cfg: Config, specs, max_seq: int) -> int:
    """Bytes of the tensors IREE's global optimization precomputes from the weight globals
    (``__hoisted_*`` globals, filled once by initializers and kept resident)."""
    flags = target_flags("llvm-cpu") + ["--compile-to=global-optimization", "--mlir-print-debuginfo=false"]
    text = iree_compile.compile_mlir(globals_mlir(cfg, specs, max_seq), flags).decode()
    return sum(element_count(dims.split("x")) * _BITS[element] // 8 for dims, element in _HOISTED.findall(text))


def globals_module(cfg: Config, specs, max_seq: int, flags: list[str]):
    """(vmfb path, compile seconds) of the decode graph with its weights as parameter globals."""
    identity = {
        "config": repr(cfg),
        "weights": weights_signature(specs),
        "graph": "decode-globals",
        "max_seq": max_seq,
        "sources": cache.source_digest(*GRAPH_SOURCES, "lab/iree_globals.py"),
    }
    return iree_compile.compile_cached(identity, lambda: globals_mlir(cfg, specs, max_seq), flags)


class IreeGlobalsDecoder:
    """Decode steps on IREE-CPU with the weights resident as module globals: a runner with
    ``reset``/``put_token``/``decode``/``token_id`` (decode only)."""

    def __init__(self, cfg: Config, weights, max_seq: int):
        import iree.runtime as rt

        self.cfg = cfg
        leaves = [np.ascontiguousarray(x) for x in jax.tree_util.tree_leaves(weights)]
        if any(x.dtype.name in ("int4", "uint4") for x in leaves):
            raise ValueError("4-bit arrays need packing for a parameter index; use uint32 words here")
        path, self.compile_seconds = globals_module(cfg, weight_specs(weights), max_seq, target_flags("llvm-cpu"))
        index = rt.ParameterIndex()
        for i, x in enumerate(leaves):
            index.add_buffer(f"w{i}", x.tobytes())
        self.iree = IreeDevice("local-task")
        start = time.perf_counter()
        self.main = self.iree.load(path, parameters=index)
        self.reset(max_seq)
        self.main(self.put_token(1), self.iree.scalar(0), *self.cache)  # initializes the globals (upload)
        self.init_seconds = time.perf_counter() - start

    def reset(self, max_seq: int) -> None:
        cfg = self.cfg
        zeros = np.zeros((cfg.num_layers, cfg.num_kv_heads, max_seq, cfg.head_dim), cfg.jnp_dtype)
        self.cache = [self.iree.put(zeros) for _ in range(2)]

    def put_token(self, token_id: int):
        return self.iree.scalar(token_id)

    def decode(self, token, pos: int):
        token, logits, *self.cache = self.main(token, self.iree.scalar(pos), *self.cache)
        return token, logits

    @staticmethod
    def token_id(token) -> int:
        return int(iree_runtime.to_host(token))


def compare(cfg: Config, weights, steps: int, max_seq: int = 128) -> dict:
    """Per-step decode time on IREE-CPU with the weights passed as arguments on every call and
    with the same weights as module globals; the greedy tokens of both (they must agree)."""
    import statistics

    def timed(runner):
        return time_decode(runner, max_seq, synced_steps=steps, warmup=1)

    args = timed(make_runner(cfg, weights, "iree-cpu"))
    glob = IreeGlobalsDecoder(cfg, weights, max_seq)
    globs = timed(glob)
    return {
        "weight_arguments": len(jax.tree_util.tree_leaves(weights)),
        "steps": steps,
        "arguments_step_s": statistics.median(args.synced),
        "globals_step_s": statistics.median(globs.synced),
        "globals_init_s": glob.init_seconds,
        "tokens_agree": args.tokens == globs.tokens,
        "weight_bytes": tensor_bytes(weights),
        "hoisted_bytes": hoisted_bytes(cfg, weight_specs(weights), max_seq),
    }
