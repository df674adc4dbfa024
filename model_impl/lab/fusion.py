"""The fusion matrix, measured: each cell's timings and parity on a backend, and the run that
writes ``results/fusion-<machine>.json`` (the matrix itself: :mod:`.fusion_matrix`)."""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from pathlib import Path

import jax
import numpy as np

from .. import checkpoints, checks, env
from ..backends import generate
from ..backends.iree_runtime import IreeDevice
from ..backends.spec import backend as backend_spec
from ..llama.config import Config
from ..llama.representations import convert
from ..llama.shapes import llama32_config
from ..llama.weights import Weights, dequantize_weights, quantize_weights, synthetic
from ..llama.weights import specs as weight_specs
from . import linear_chain, timing
from .fusion_matrix import (
    MAX_SEQ,
    PROMPT_TOKENS,
    ROWS,
    Cell,
    applicability,
    cell_record,
    error_line,
    iree_flags,
    lowering_cell,
    settings,
    summary_line,
)
from .linear_chain import LINEAR_CHAIN, LINEAR_SHAPE


def time_linear(
    backend: str, representation: str | None, option: str, repeats: int = 50, budget_s: float = 20.0
) -> float:
    """Seconds for one linear of ``LINEAR_SHAPE`` at M=1 (the chain's median / its length).
    ``representation=None``: the fp32 weight."""
    ws = linear_chain.weights(representation)
    x = np.random.default_rng(1).standard_normal((1, LINEAR_SHAPE[1]), dtype=np.float32)
    opts = settings(option, backend)
    spec = backend_spec(backend)
    if spec.is_xla:
        device = jax.devices(spec.platform)[0]
        fn = jax.jit(linear_chain.chain, compiler_options=opts.get("xla_options") or None)
        args = jax.device_put((x, ws), device)
        call = lambda: fn(*args).block_until_ready()  # noqa: E731
    else:
        iree = IreeDevice(spec.iree_driver)
        main = iree.load(linear_chain.iree_module(representation, iree_flags(backend, option)))
        device_args = [iree.put(a) for a in jax.tree_util.tree_leaves((x, ws))]
        call = lambda: main(*device_args).to_host()  # noqa: E731
    return timing.median_seconds(call, repeats, budget_s) / LINEAR_CHAIN


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


def measure_backend(backend: str, setup: Setup, rows=ROWS, log=print) -> list[Cell]:
    """Every row's cell on ``backend``, plus the fp32 references the cells are set against."""
    fp32_linear = time_linear(backend, None, "default")
    fp32_decode = decode_timing(backend, setup.cfg, setup.fp32, "default", setup.steps)["seconds"]
    gc.collect()
    log(f"{backend}: fp32 linear {fp32_linear * 1e3:.3f} ms, decode {fp32_decode * 1e3:.2f} ms")
    prompt = parity_prompt(setup.parity_cfg)
    host = dequantize_weights(setup.parity_int4)
    host_run = greedy_by_decode(generate.make_runner(setup.parity_cfg, host, backend), prompt, checks.GREEDY_TOKENS)
    baseline_run = greedy_by_decode(
        generate.make_runner(setup.parity_cfg, setup.parity_int4, backend), prompt, checks.GREEDY_TOKENS
    )
    cells = []
    for representation, option in rows:
        cell = Cell(backend, representation, option, linear_fp32_seconds=fp32_linear, decode_fp32_seconds=fp32_decode)
        cell.skipped = applicability(representation, option, backend)
        cells.append(cell)
        if cell.skipped:
            continue
        try:
            _measure_cell(cell, setup, prompt, host_run, baseline_run)
        except Exception as e:  # a compiler or runtime failure is a finding of the cell
            cell.error = error_line(e)
        gc.collect()
        log(f"{backend} {representation} {option}: {summary_line(cell)}")
    return cells


def _measure_cell(cell: Cell, setup: Setup, prompt, host_run, baseline_run) -> None:
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
        cell.parity_model = f"{setup.parity_name}: {error_line(e)}"
        return
    run = greedy_by_decode(
        generate.make_runner(setup.parity_cfg, parity_weights, backend, **settings(option, backend)),
        prompt,
        checks.GREEDY_TOKENS,
    )
    vs_host = checks.compare(host_run, run)
    cell.max_abs_logit_diff_vs_host = vs_host.max_abs_logit_diff
    cell.parity_within_atol = vs_host.max_abs_logit_diff <= checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL
    cell.tokens_vs_baseline = checks.compare(baseline_run, run).agreement


def decode_timing(backend: str, cfg: Config, weights: Weights, option: str, steps: int) -> dict:
    """Per-step decode time as the cells report it. XLA on a GPU: the in-graph loop (device
    time), with the per-call figure (one dispatch per step, queued) beside it. Elsewhere:
    one call per step, each ending with its token on the host (CPU compute dwarfs dispatch;
    IREE-CUDA steps are tens of milliseconds)."""
    spec = backend_spec(backend)
    runner = generate.make_runner(cfg, weights, backend, **settings(option, backend))
    measured = timing.time_decode(
        runner,
        MAX_SEQ,
        start_pos=PROMPT_TOKENS,
        synced_steps=0 if spec.is_cuda else steps,
        queued_rounds=timing.DECODE_ROUNDS if spec.is_cuda else 0,
        steps_per_round=steps,
    ).device_bound
    per_call, spread = float(np.median(measured)), [min(measured), max(measured)]
    del runner
    gc.collect()
    if not (spec.is_xla and spec.is_cuda):
        return {"seconds": per_call, "spread": spread}
    seconds, spread, hoisted = timing.time_xla_decode_loop(
        backend,
        cfg,
        weights,
        steps,
        max_seq=MAX_SEQ,
        start_pos=PROMPT_TOKENS,
        xla_options=settings(option, backend).get("xla_options"),
    )
    return {"seconds": seconds, "spread": spread, "per_call": per_call, "hoisted": hoisted}


def make_setup(parity_model: str | None, steps: int, log=print) -> Setup:
    """Llama-3.2-1B shapes with seeded synthetic weights; parity on ``parity_model`` (a path,
    "default" for the embedded SmolLM2, or "synthetic" for the 1B-shape weights)."""
    cfg = llama32_config()
    t0 = time.perf_counter()
    fp32 = synthetic(cfg, seed=0)
    int4 = quantize_weights(fp32)
    log(f"Llama-3.2-1B synthetic weights made and quantized in {time.perf_counter() - t0:.0f} s")
    if parity_model == "synthetic":
        return Setup(cfg, int4, fp32, "llama-3.2-1b-synthetic", cfg, int4, steps)
    path = None if parity_model in (None, "default") else parity_model
    pcfg, pint4 = checkpoints.load(path, "int4")
    name = "smollm2-135m" if path is None else str(path)
    return Setup(cfg, int4, fp32, name, pcfg, pint4, steps)


def environment(backends) -> dict:
    """The results file's environment record; for IREE-CUDA, which compiler made the modules
    (on the GPU machine they are carried, not compiled) and for which target."""
    specs = [backend_spec(b) for b in backends]
    extra = {}
    if any(s.is_iree and s.is_cuda for s in specs):
        from ..backends import iree_compile

        extra = {
            "iree_compiler_of_modules": iree_compile.compiler_version(),
            "iree_cuda_target": iree_compile.cuda_target_for_device(),
        }
    return env.environment("cuda" if any(s.is_cuda for s in specs) else "cpu", **extra)


def _log(message: str) -> None:
    print(message, flush=True)


def run(backends, out_path, parity_model=None, steps: int = 8, rows=ROWS, log=_log) -> dict:
    setup = make_setup(parity_model, steps, log)
    result = {
        "environment": environment(backends),
        "linear_shape": list(LINEAR_SHAPE),
        "linear_chain": LINEAR_CHAIN,
        "max_seq": MAX_SEQ,
        "decode_steps": steps,
        "parity_atol": checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL,
        "greedy_tokens": checks.GREEDY_TOKENS,
        "cells": [],
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    for backend in backends:
        for cell in measure_backend(backend, setup, rows, log):
            result["cells"].append(cell_record(cell))
            out.write_text(json.dumps(result, indent=1))  # partial results survive a timeout
    return result
