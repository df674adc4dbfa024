"""The fusion matrix: every int4 representation x compiler option, on every backend.

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
which). ``python -m model_impl fusion`` writes ``results/fusion-<machine>.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import bench, checks, generate, linear_chain, lowering
from .config import Config
from .linear_chain import LINEAR_CHAIN, LINEAR_SHAPE
from .representations import BASELINE, PALLAS, convert
from .weights import Weights, dequantize_weights, linear_weight_elements, quantize_weights, synthetic

SUBCHANNEL = {"xla_gpu_experimental_enable_subchannel_dequantisation_fusion": True}
REASSOC = ("--iree-global-opt-enable-quantized-matmul-reassociation",)
DATA_TILING = ("--iree-opt-data-tiling",)

# option -> backend -> compiler settings (absent backend: the option does not apply there)
OPTIONS = {
    "default": {b: {} for b in generate.BACKENDS},
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

MAX_SEQ = 128  # the parity runs' cache length; timing uses the same compiled decode graph
PROMPT_TOKENS = 16


def applicability(representation: str, option: str, backend: str) -> str | None:
    """None when the cell can be measured, else why it cannot."""
    if backend not in OPTIONS[option]:
        return f"option {option} is for {', '.join(OPTIONS[option])}"
    if representation == PALLAS and backend != "xla-cuda":
        return ("a Pallas/Triton kernel: IREE cannot compile its custom_call" if backend.startswith("iree")
                else "a GPU kernel (runs on the CPU only in Pallas' interpreter)")
    return None


def settings(option: str, backend: str) -> dict:
    return dict(OPTIONS[option].get(backend, {}))


# --- timing helpers --------------------------------------------------------------------------

def _median_time(fn, repeats: int, budget_s: float) -> float:
    fn()
    fn()  # warm: compile, caches, clocks
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_linear(backend: str, representation: str | None, option: str, repeats: int = 50,
                budget_s: float = 20.0) -> float:
    """Seconds for one linear of ``LINEAR_SHAPE`` at M=1 (the chain's median / its length).
    ``representation=None``: the fp32 weight."""
    ws = linear_chain.weights(representation)
    x = np.random.default_rng(1).standard_normal((1, LINEAR_SHAPE[1]), dtype=np.float32)
    opts = settings(option, backend)
    if backend.startswith("xla"):
        device = jax.devices(backend.split("-")[1])[0]
        fn = jax.jit(linear_chain.chain, compiler_options=opts.get("xla_options") or None)
        args = jax.device_put((x, ws), device)
        call = lambda: fn(*args).block_until_ready()  # noqa: E731
    else:
        path = linear_chain_module(backend, representation, option)
        call = _iree_callable(backend, path, jax.tree_util.tree_leaves((x, ws)))
    return _median_time(call, repeats, budget_s) / LINEAR_CHAIN


def _iree_target(backend: str) -> tuple[str, str]:
    """(IREE target, CUDA target) for an IREE backend (the CUDA target is unused on the CPU)."""
    from . import iree_backend

    if backend == "iree-cpu":
        return "llvm-cpu", iree_backend.DEFAULT_CUDA_TARGET
    return "cuda", iree_backend.cuda_target_for_device()


def linear_chain_module(backend: str, representation: str | None, option: str):
    """The IREE module of the linear chain, compiled once (cached under what it is: shapes,
    representation, flags, compiler, the defining sources), so a machine without the compiler
    finds modules compiled elsewhere."""
    from . import cache, iree_backend

    target, cuda = _iree_target(backend)
    flags = iree_backend.target_flags(target, cuda) + list(settings(option, backend).get("iree_flags", ()))
    key = {"graph": "linear-chain", "shape": list(LINEAR_SHAPE), "chain": LINEAR_CHAIN,
           "representation": representation, "flags": flags, "iree_compiler": iree_backend.compiler_version(),
           "sources": cache.source_digest(*iree_backend.GRAPH_SOURCES, "linear_chain.py"),
           "host_cpu": iree_backend._host_cpu() if target == "llvm-cpu" else None}

    def produce():
        ws = linear_chain.specs(representation)
        x = jax.ShapeDtypeStruct((1, LINEAR_SHAPE[1]), jnp.float32)
        leaves, tree = jax.tree_util.tree_flatten((x, ws))
        flat = lambda *a: linear_chain.chain(*jax.tree_util.tree_unflatten(tree, a))  # noqa: E731
        mlir = jax.export.export(jax.jit(flat))(*leaves).mlir_module()
        return iree_backend._compile(mlir, flags), {}

    path, _ = cache.cached_file("iree", key, ".vmfb", produce)
    return path


def _iree_callable(backend: str, path, leaves):
    """A call that runs the module at ``path`` on device-resident ``leaves`` and reads back."""
    import iree.runtime as rt

    from . import iree_backend

    driver = "local-task" if backend == "iree-cpu" else "cuda"
    config = rt.Config(driver)
    context = rt.SystemContext(config=config)
    module = rt.VmModule.mmap(config.vm_instance, str(path))
    context.add_vm_module(module)
    main = context.modules[module.name]["main"]
    device_args = [iree_backend.device_array(config.device, a) for a in leaves]
    return lambda: main(*device_args).to_host()


# --- cells -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Cell:
    backend: str
    representation: str
    option: str
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
    parity_model: str | None = None
    max_abs_logit_diff_vs_host: float | None = None
    parity_within_atol: bool | None = None
    tokens_vs_baseline: str | None = None

    @property
    def decode_speedup(self) -> float | None:
        if self.decode_seconds and self.decode_fp32_seconds:
            return self.decode_fp32_seconds / self.decode_seconds
        return None


def lowering_cell(cell: Cell, cfg: Config, specs: Weights) -> None:
    """Fill the lowering columns from the decode graph of ``cfg`` (shapes only)."""
    from . import iree_backend

    opts = settings(cell.option, cell.backend)
    elements = linear_weight_elements(cfg)
    if cell.backend.startswith("xla"):
        device = jax.devices(cell.backend.split("-")[1])[0]
        with jax.default_device(device):
            lowered = _lower_decode(cfg, specs, opts.get("xla_options"))
            # jax.export refuses custom calls without a compatibility guarantee (Pallas'
            # Triton call); the jit lowering is the same StableHLO, checks aside.
            cell.custom_call = lowering.stablehlo_inventory(lowered.as_text()).has_custom_call
            t0 = time.perf_counter()
            hlo = lowered.compile().as_text()
            cell.compile_seconds = time.perf_counter() - t0
        verdict = lowering.analyze_xla_hlo(hlo, elements)
        cell.verdict, cell.materialized_bytes_per_step = verdict.verdict, verdict.materialized_bytes
        cell.linears_fused, cell.linears_total, cell.fused_kernels = lowering.xla_linears_fused(hlo)
        return
    text = iree_backend.export_stablehlo(cfg, specs, "decode", 0, MAX_SEQ)
    cell.custom_call = lowering.stablehlo_inventory(text).has_custom_call
    target, cuda = _iree_target(cell.backend)
    sources, seconds = iree_backend.executable_sources(cfg, specs, "decode", 0, MAX_SEQ, target, cuda,
                                                       opts.get("iree_flags", ()))
    verdict = lowering.analyze_iree_executables(sources, elements)
    cell.verdict, cell.materialized_bytes_per_step = verdict.verdict, verdict.materialized_bytes
    cell.linears_fused = verdict.count(lowering.FUSED_DISPATCH)
    cell.linears_total = cell.linears_fused + verdict.count(lowering.DEQUANT_ONLY)
    cell.compile_seconds = seconds


def _lower_decode(cfg, specs, xla_options=None):
    from .graphs import GRAPH_FUNCTIONS, graph_args

    fn = jax.jit(GRAPH_FUNCTIONS["decode"], static_argnums=0, compiler_options=xla_options or None)
    return fn.lower(cfg, *graph_args(cfg, specs, "decode", 0, MAX_SEQ))


def xla_stablehlo(cfg, specs) -> str:
    """The decode graph's StableHLO from the jit lowering (custom calls allowed)."""
    return _lower_decode(cfg, specs).as_text()


def greedy_by_decode(runner, prompt: list[int], new_tokens: int) -> generate.Generation:
    """Greedy decoding that feeds the prompt through the decode graph one token at a time: the
    matrix compiles one graph per cell (no prefill) and still compares whole generations."""
    runner.reset(MAX_SEQ)
    for pos, t in enumerate(prompt):
        token, logits = runner.decode(runner.put_token(t), pos)
    out, rows = [], []
    for step in range(new_tokens):
        out.append(runner.token_id(token))
        rows.append(runner.logits_row(logits))
        if step < new_tokens - 1:
            token, logits = runner.decode(token, len(prompt) + step)
    return generate.Generation(list(prompt), out, np.stack(rows))


DECODE_ROUNDS = 5  # device-bound timing: rounds of ``steps`` queued steps, median of rounds


def time_decode(runner, steps: int, queued: bool) -> tuple[float, list[float]]:
    """(median seconds per decode step, [min, max]) at ``PROMPT_TOKENS`` positions into an
    empty cache.

    ``queued``: rounds of ``steps`` steps queued back to back, the token kept on the device,
    one sync per round (on a GPU a per-step host sync adds ~2 ms); else every step ends with
    its token id on the host."""
    runner.reset(MAX_SEQ)
    token = runner.put_token(1)
    for pos in range(2):  # warm-up (the first call compiles)
        token, _ = runner.decode(token, pos)
        runner.token_id(token)
    times = []
    for r in range(DECODE_ROUNDS if queued else steps):
        pos = PROMPT_TOKENS + (r % 2) * steps  # stay inside the cache
        t0 = time.perf_counter()
        for k in range(steps if queued else 1):
            token, _ = runner.decode(token, pos + k)
        runner.token_id(token)
        times.append((time.perf_counter() - t0) / (steps if queued else 1))
    return statistics.median(times), [min(times), max(times)]


def _decode_loop(cfg, steps, barrier, weights, token, pos, cache):
    from .graphs import greedy_decode

    def body(i, carry):
        token, cache = carry
        # Tie the weights to this step's token: without it XLA hoists every dequant out of
        # the loop as loop-invariant (measured on XLA-CPU), and the loop would time fp32.
        w, token = jax.lax.optimization_barrier((weights, token)) if barrier else (weights, token)
        token, _, cache = greedy_decode(cfg, w, token, pos + i, cache)
        return token, cache

    return jax.lax.fori_loop(0, steps, body, (token, cache))


def time_xla_decode_loop(backend: str, cfg: Config, weights: Weights, option: str, steps: int,
                         rounds: int = DECODE_ROUNDS, barrier: bool = True) -> tuple[float, list[float], int]:
    """(median seconds per step, [min, max], dequant kernels hoisted out of the loop) for
    ``steps`` greedy decode steps inside one jitted ``fori_loop``: one dispatch per round, so
    the figure is the device's, not the host's. A dequant XLA hoisted out of the loop would run
    once per round instead of once per step; the count says whether that happened."""
    from .model import KVCache

    device = jax.devices(backend.split("-")[1])[0]
    fn = jax.jit(functools.partial(_decode_loop, cfg, steps, barrier), donate_argnums=(3,),
                 compiler_options=settings(option, backend).get("xla_options") or None)
    w = jax.device_put(weights, device)
    token, pos = jax.device_put(np.int32(1), device), jax.device_put(np.int32(PROMPT_TOKENS), device)
    cache = jax.device_put(KVCache.zeros(cfg, MAX_SEQ), device)
    hlo = fn.lower(w, token, pos, cache).compile().as_text()
    hoisted = lowering.entry_unpack_kernels(hlo)
    token, cache = fn(w, token, pos, cache)
    token.block_until_ready()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        token, cache = fn(w, token, pos, cache)
        token.block_until_ready()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times), [min(times), max(times)], hoisted


def parity_prompt(cfg: Config) -> list[int]:
    """Seven fixed token ids (the length of the suite's reference prompt)."""
    return [int(t) for t in (np.arange(7) * 7919 + 11) % cfg.vocab_size]


@dataclasses.dataclass
class Setup:
    """What every cell of one backend shares: the 1B-shape weights, the parity model, baselines."""

    cfg: Config  # Llama-3.2-1B shapes
    int4: Weights  # synthetic, quantized (MLX format)
    fp32: Weights  # the same, float
    parity_name: str
    parity_cfg: Config
    parity_int4: Weights
    steps: int  # decode steps timed per cell


_CRASH_CODE = re.compile(r"Error code: -(\d+)")
_CRASHED_PASS = re.compile(r"(\w+Pass)::runOnOperation")


def _error(e: BaseException) -> str:
    """The exception's type and its most telling line: a compiler's first ``error:`` line, or
    for a crash the signal and the pass it died in (from the backtrace)."""
    text = str(e)
    crash, crashed_in = _CRASH_CODE.search(text), _CRASHED_PASS.search(text)
    if crash and crashed_in:
        return f"{type(e).__name__}: crashed (signal {crash.group(1)}) in {crashed_in.group(1)}"
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    errors = [l for l in lines if "error:" in l]
    return f"{type(e).__name__}: {(errors or lines or [''])[0][:400]}"


def measure_backend(backend: str, setup: Setup, rows=ROWS, log=print) -> list[Cell]:
    """Every row's cell on ``backend``, plus the fp32 references the cells are set against."""
    fp32_linear = time_linear(backend, None, "default")
    fp32_decode = decode_timing(backend, setup.cfg, setup.fp32, "default", setup.steps)["seconds"]
    gc.collect()
    log(f"{backend}: fp32 linear {fp32_linear * 1e3:.3f} ms, decode {fp32_decode * 1e3:.2f} ms")
    prompt = parity_prompt(setup.parity_cfg)
    host = dequantize_weights(setup.parity_int4)
    host_run = greedy_by_decode(generate.make_runner(setup.parity_cfg, host, backend), prompt,
                                checks.GREEDY_TOKENS)
    baseline_run = greedy_by_decode(generate.make_runner(setup.parity_cfg, setup.parity_int4, backend),
                                    prompt, checks.GREEDY_TOKENS)
    cells = []
    for representation, option in rows:
        cell = Cell(backend, representation, option, linear_fp32_seconds=fp32_linear,
                    decode_fp32_seconds=fp32_decode)
        cell.skipped = applicability(representation, option, backend)
        cells.append(cell)
        if cell.skipped:
            continue
        try:
            _measure_cell(cell, setup, prompt, host_run, baseline_run)
        except Exception as e:  # a compiler or runtime failure is a finding of the cell
            cell.error = _error(e)
        gc.collect()
        log(f"{backend} {representation} {option}: {summary_line(cell)}")
    return cells


def _measure_cell(cell: Cell, setup: Setup, prompt, host_run, baseline_run) -> None:
    from .weights import specs as weight_specs

    backend, representation, option = cell.backend, cell.representation, cell.option
    lowering_cell(cell, setup.cfg, convert(weight_specs(setup.cfg, "int4"), representation))
    cell.linear_seconds = time_linear(backend, representation, option)
    weights = convert(setup.int4, representation)
    timing = decode_timing(backend, setup.cfg, weights, option, setup.steps)
    cell.decode_seconds, cell.decode_spread = timing["seconds"], timing["spread"]
    cell.decode_per_call_seconds, cell.loop_hoisted_dequants = timing.get("per_call"), timing.get("hoisted")
    del weights
    gc.collect()
    cell.parity_model = setup.parity_name
    try:
        parity_weights = convert(setup.parity_int4, representation)
    except Exception as e:  # e.g. the Pallas layout needs in % 512 == 0
        cell.parity_model = f"{setup.parity_name}: {_error(e)}"
        return
    run = greedy_by_decode(generate.make_runner(setup.parity_cfg, parity_weights, backend,
                                                **settings(option, backend)), prompt, checks.GREEDY_TOKENS)
    vs_host = checks.compare(host_run, run)
    cell.max_abs_logit_diff_vs_host = vs_host.max_abs_logit_diff
    cell.parity_within_atol = vs_host.max_abs_logit_diff <= checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL
    cell.tokens_vs_baseline = checks.compare(baseline_run, run).agreement


def decode_timing(backend: str, cfg: Config, weights: Weights, option: str, steps: int) -> dict:
    """Per-step decode time as the cells report it. XLA on a GPU: the in-graph loop (device
    time), with the per-call figure (one dispatch per step, queued) beside it. Elsewhere:
    one call per step, each ending with its token on the host (CPU compute dwarfs dispatch;
    IREE-CUDA steps are tens of milliseconds)."""
    runner = generate.make_runner(cfg, weights, backend, **settings(option, backend))
    per_call, spread = time_decode(runner, steps, queued=backend.endswith("cuda"))
    del runner
    gc.collect()
    if backend != "xla-cuda":
        return {"seconds": per_call, "spread": spread}
    seconds, spread, hoisted = time_xla_decode_loop(backend, cfg, weights, option, steps)
    return {"seconds": seconds, "spread": spread, "per_call": per_call, "hoisted": hoisted}


def summary_line(cell: Cell) -> str:
    if cell.skipped:
        return f"n/a ({cell.skipped})"
    if cell.error and cell.verdict is None:
        return f"error: {cell.error}"
    parts = [f"{cell.verdict} {cell.linears_fused}/{cell.linears_total}",
             f"{(cell.materialized_bytes_per_step or 0) / 2**20:.0f} MiB/step"]
    if cell.linear_seconds:
        parts.append(f"linear {cell.linear_seconds * 1e3:.3f} ms ({cell.linear_fp32_seconds / cell.linear_seconds:.2f}x fp32)")
    if cell.decode_seconds:
        lo, hi = cell.decode_spread or (cell.decode_seconds, cell.decode_seconds)
        parts.append(f"decode {cell.decode_seconds * 1e3:.2f} ms [{lo * 1e3:.2f}-{hi * 1e3:.2f}] "
                     f"({cell.decode_speedup:.2f}x fp32)")
    if cell.loop_hoisted_dequants:
        parts.append(f"{cell.loop_hoisted_dequants} dequants hoisted out of the loop")
    if cell.fused_kernels:
        parts.append("fused in " + ", ".join(f"{k}: {n}" for k, n in sorted(cell.fused_kernels.items())))
    if cell.max_abs_logit_diff_vs_host is not None:
        parts.append(f"|dlogit| {cell.max_abs_logit_diff_vs_host:.2e}, tokens {cell.tokens_vs_baseline}")
    if cell.error:
        parts.append(f"error: {cell.error}")
    return "; ".join(parts)


def make_setup(parity_model: str | None, steps: int, log=print) -> Setup:
    """Llama-3.2-1B shapes with seeded synthetic weights; parity on ``parity_model`` (a path,
    "default" for the embedded SmolLM2, or "synthetic" for the 1B-shape weights)."""
    from . import checkpoint
    from .config import LLAMA32_CONFIG_PATH, load_hf_config

    cfg = load_hf_config(LLAMA32_CONFIG_PATH)
    t0 = time.perf_counter()
    fp32 = synthetic(cfg, seed=0)
    int4 = quantize_weights(fp32)
    log(f"Llama-3.2-1B synthetic weights made and quantized in {time.perf_counter() - t0:.0f} s")
    if parity_model == "synthetic":
        return Setup(cfg, int4, fp32, "llama-3.2-1b-synthetic", cfg, int4, steps)
    path = None if parity_model in (None, "default") else parity_model
    pcfg, pint4 = checkpoint.load(path, "int4")
    name = "smollm2-135m" if path is None else str(path)
    return Setup(cfg, int4, fp32, name, pcfg, pint4, steps)


def environment(backends) -> dict:
    import datetime
    import importlib.metadata

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    env = {"date": datetime.date.today().isoformat(), "machine": bench.machine(backends[0]),
           "jax": jax.__version__, "jaxlib": version("jaxlib"),
           "iree_compiler": version("iree-base-compiler"), "iree_runtime": version("iree-base-runtime")}
    if "iree-cuda" in backends:
        from .iree_backend import compiler_version, cuda_target_for_device

        env["iree_compiler"] = compiler_version()
        env["iree_cuda_target"] = cuda_target_for_device()
    return env


def cell_record(cell: Cell) -> dict:
    return {**dataclasses.asdict(cell), "decode_speedup": cell.decode_speedup}


def _log(message: str) -> None:
    print(message, flush=True)


def run(backends, out_path, parity_model=None, steps: int = 8, rows=ROWS, log=_log) -> dict:
    import json
    from pathlib import Path

    setup = make_setup(parity_model, steps, log)
    result = {"environment": environment(backends), "linear_shape": list(LINEAR_SHAPE),
              "linear_chain": LINEAR_CHAIN, "max_seq": MAX_SEQ, "decode_steps": steps,
              "parity_atol": checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL, "greedy_tokens": checks.GREEDY_TOKENS,
              "cells": []}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    for backend in backends:
        for cell in measure_backend(backend, setup, rows, log):
            result["cells"].append(cell_record(cell))
            out.write_text(json.dumps(result, indent=1))  # partial results survive a timeout
    return result
