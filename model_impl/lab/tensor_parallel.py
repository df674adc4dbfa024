"""The tensor-parallel study: the decode step at TP 1 and TP N on real Llama shapes, dense and
int4, with the collectives XLA's partitioner added (from the partitioned HLO) and their share
of the device's kernel time (from the profiler).

Weights are seeded synthetic ones made on the devices, already sharded (an 8B model's weights
are never built on the host): random codes, per-group scales and biases that keep ``q * s + b``
zero-mean, unit norms, small normal dense weights. Timing is the suite's device loop
(:class:`timing.DecodeLoop`, ``steps`` per dispatch); greedy tokens of TP N are set against TP 1
on the same weights where ``parity`` asks for them.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import checks
from ..analyzers import collectives, xla_hlo
from ..backends import generate
from ..backends.spec import backend as backend_spec
from ..llama import representations, sharding
from ..llama.config import Config
from ..llama.shapes import REAL_SHAPES, shrunk_llama32_config
from ..llama.weights import specs as weight_specs
from . import timing

# (label, quant, representation): the dense bf16 baseline, MLX's words dequantized before XLA's
# dot (the route's baseline form) and the best in-graph form against bf16 on one H100
# (results/fusion-h100-xla-cuda-bf16-*.json: u4-magic, multiply + reduce).
MODES = (("bf16", "dense", None), ("int4-u32-affine", "int4", "u32-affine"), ("int4-u4-magic", "int4", "u4-magic"))
DTYPE = "bfloat16"
MAX_SEQ = 256
START_POS = 16
STEPS = 32
PARITY_TOKENS = checks.GREEDY_TOKENS
# The real shapes, and the shrunk 1B layout (2 layers) that the CPU tests run the study on.
SHAPES = {**REAL_SHAPES, "shrunk-llama-3.2-1b": shrunk_llama32_config}
_COLLECTIVE_KERNEL = re.compile(r"nccl|all.?reduce|all.?gather|reduce.?scatter|all.?to.?all|collective", re.I)


def _kind(path) -> str:
    name = jax.tree_util.keystr(path)
    for kind in ("norm", ".scales", ".biases"):
        if name.endswith(kind):
            return kind
    return "values"


@functools.cache
def _maker(kind: str, shape: tuple, dtype, hidden: int, out):
    """A jitted maker of one leaf (one per distinct kind, shape, dtype and sharding: the layers
    share them, so an 8B model compiles a handful of small functions, not one huge one)."""
    dtype = np.dtype(dtype)
    scale = np.float32(1.0 / (8 * np.sqrt(hidden)))  # q in [0, 16): |q * s| ~ 1 / sqrt(hidden)

    def make(key):
        if dtype == np.uint32:
            return jax.random.bits(key, shape, jnp.uint32)
        if dtype.name in ("uint4", "int4"):
            low = -8 if dtype.name == "int4" else 0
            return jax.random.randint(key, shape, low, low + 16, jnp.int32).astype(dtype)
        if kind == "norm":
            return jnp.ones(shape, dtype)
        if kind == ".scales":
            return jnp.full(shape, scale, dtype)
        if kind == ".biases":
            return jnp.full(shape, -7.5 * scale, dtype)
        return (jax.random.normal(key, shape, jnp.float32) / np.sqrt(shape[-1])).astype(dtype)

    return jax.jit(make, out_shardings=out)


def device_weights(cfg: Config, quant: str, representation: str | None, backend: str, tp: int, seed: int = 0):
    """Seeded synthetic weights of ``cfg`` in the mode's form, made on the devices where ``tp``
    puts them, leaf by leaf (each leaf's key folded from ``seed`` and its index)."""
    shapes = weight_specs(cfg, quant)
    if representation is not None:
        shapes = representations.convert(shapes, representation)
    platform = backend_spec(backend).platform
    if tp == 1:
        one = jax.sharding.SingleDeviceSharding(jax.devices(platform)[0])
        out = jax.tree_util.tree_map(lambda _: one, shapes)
    else:
        out = sharding.layout(cfg, shapes, tp, platform).weights
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    base = jax.random.key(seed)
    made = [
        _maker(_kind(path), tuple(s.shape), np.dtype(s.dtype), cfg.hidden_size, o)(jax.random.fold_in(base, i))
        for i, ((path, s), o) in enumerate(zip(leaves, jax.tree_util.tree_leaves(out)))
    ]
    return jax.block_until_ready(jax.tree_util.tree_unflatten(tree, made))


def collective_share(loop: timing.DecodeLoop, steps: int) -> dict:
    """Kernel seconds per step on the first device, and the share of it in collective kernels
    (NCCL's), from the profiler (:func:`profile.kernel_seconds`)."""
    from .profile import kernel_seconds

    calls = 3
    kernels, _ = kernel_seconds(loop, calls=calls, plane="/device:GPU:0")
    total = sum(s for _, s in kernels.values())
    coll = {k: v for k, v in kernels.items() if _COLLECTIVE_KERNEL.search(k)}
    coll_s = sum(s for _, s in coll.values())
    per_step = calls * steps
    return {
        "kernel_seconds_per_step": total / per_step,
        "collective_seconds_per_step": coll_s / per_step,
        "collective_share": coll_s / total if total else None,
        "collective_kernels": sorted(coll, key=lambda k: -coll[k][1])[:4],
    }


def greedy_run(cfg: Config, weights, backend: str, tp: int) -> generate.Generation:
    """Greedy tokens (and logits) of the generate path on ``tp`` devices: a fixed synthetic prompt."""
    runner = generate.make_runner(cfg, weights, backend, tp=tp)
    prompt = [1 + (7 * k) % (cfg.vocab_size - 1) for k in range(16)]
    return generate.generate(runner, prompt, PARITY_TOKENS, stop_at_eos=False, keep_logits=True)


def measure(backend: str, shape: str, mode: tuple, tp: int, steps: int, parity: dict | None, log=print) -> dict:
    """One case: the step at ``tp`` (seconds, collectives per step, their kernel share)."""
    label, quant, representation = mode
    cfg = dataclasses.replace(SHAPES[shape](), dtype=DTYPE)
    case = {"backend": backend, "shape": shape, "mode": label, "tp": tp, "representation": representation}
    t0 = time.perf_counter()
    try:
        weights = device_weights(cfg, quant, representation, backend, tp)
        loop = timing.DecodeLoop(
            timing.xla_decode_loop(sharding.graph_config(cfg, tp), steps),
            *timing.decode_loop_args(backend, cfg, weights, MAX_SEQ, START_POS, tp=tp, placed=True),
        )
        text = loop.compiled_text()
        case["collectives"] = collectives.summary(text)
        case["hoisted_dequants"] = xla_hlo.entry_unpack_kernels(text)
        step, spread = loop.seconds_per_step(steps)
        case.update(step_seconds=step, step_spread=spread)
        if backend_spec(backend).is_cuda and tp > 1:
            case.update(collective_share(loop, steps))
        if parity is not None:
            run = greedy_run(cfg, weights, backend, tp)
            if tp == 1:
                parity[(shape, label)] = run
            elif (shape, label) in parity:
                agreement = checks.greedy_agreement(run, parity[shape, label], checks.near_tie_gap(DTYPE))
                case["tokens_vs_tp1"] = agreement.comparison.agreement
                case["tokens_agree_or_near_tie"] = agreement.agrees
                case["max_abs_logit_diff_vs_tp1"] = agreement.comparison.max_abs_logit_diff
    except Exception as e:  # noqa: BLE001 - one line per failed case, the study goes on
        case["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    case["seconds"] = time.perf_counter() - t0
    log(json.dumps({k: v for k, v in case.items() if k != "collectives"}, default=str))
    gc.collect()
    return case


def run(
    backend: str,
    out: str,
    shapes,
    modes=MODES,
    tps=(1, 2),
    steps: int = STEPS,
    parity_shapes=("llama-3.2-1b",),
    log=print,
):
    """Every (shape, mode, tp) case, TP 1 first (the baseline of the same run); one JSON."""
    from .fusion import environment

    platform = backend_spec(backend).platform
    result = {
        "environment": environment([backend]),
        "devices": [str(d) for d in jax.devices(platform)],
        "dtype": DTYPE,
        "max_seq": MAX_SEQ,
        "start_pos": START_POS,
        "steps_per_dispatch": steps,
        "cases": [],
    }
    parity: dict = {}
    for shape in shapes:
        for mode in modes:
            for tp in sorted(tps):
                wants = parity if shape in parity_shapes else None
                result["cases"].append(measure(backend, shape, mode, tp, steps, wants, log))
                Path(out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def speedups(result: dict) -> list[dict]:
    """TP N against TP 1 of the same shape and mode, from one results file."""
    base = {(c["shape"], c["mode"]): c for c in result["cases"] if c["tp"] == 1 and "step_seconds" in c}
    rows = []
    for c in result["cases"]:
        b = base.get((c["shape"], c["mode"]))
        if c["tp"] == 1 or b is None or "step_seconds" not in c:
            continue
        rows.append(
            {**{k: c[k] for k in ("shape", "mode", "tp")}, "speedup_vs_tp1": b["step_seconds"] / c["step_seconds"]}
        )
    return rows
