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
from ..llama.representations import BASELINE, DENSE_FORMS, convert, convert_dense
from ..llama.shapes import llama32_config
from ..llama.weights import Weights, cast_weights, dequantize_weights, quantize_weights, synthetic
from ..llama.weights import specs as weight_specs
from . import anchors, linear_chain, roofline, timing
from .fusion_matrix import (
    BATCH_ROWS,
    BATCHES,
    MAX_SEQ,
    PREFILL_BUCKET,
    PROMPT_TOKENS,
    ROWS,
    STACKED,
    Cell,
    applicability,
    cell_record,
    error_line,
    iree_flags,
    layout,
    lowering_cell,
    row_parts,
    settings,
    summary_line,
)
from .linear_chain import LINEAR_CHAIN, LINEAR_SHAPE
from .protocol import NotMeasurable, Protocol, protocol


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

    cfg: Config  # Llama-3.2-1B shapes, in the run's compute dtype
    int4: Weights  # synthetic, quantized (MLX format)
    fp32: Weights  # the same, float (in the run's compute dtype: the name is historical)
    parity_name: str
    parity_cfg: Config
    parity_int4: Weights
    steps: int  # decode steps timed per cell
    int4_head: Weights | None = None  # int4 with the embedding (tied head) quantized too
    parity_int4_head: Weights | None = None

    def quantized(self, head: str, parity: bool = False) -> Weights:
        if head != "int4":
            return self.parity_int4 if parity else self.int4
        if self.int4_head is None:  # made on first use (packed linears pass through unchanged)
            self.int4_head = quantize_weights(self.int4, embedding=True)
            self.parity_int4_head = quantize_weights(self.parity_int4, embedding=True)
        return self.parity_int4_head if parity else self.int4_head


# The dense steps every run sets its cells against: the run's dtype in every dense form, and the
# other two dtypes as the dot (the "f16 and fp32 kept as columns" of the matrix vs bf16).
BASELINE_DTYPES = ("float32", "float16", "bfloat16")


def dense_baselines(proto: Protocol, setup: Setup, log=print, stacked: bool = False) -> dict:
    """``{"<dtype>:<form>": {"seconds", "spread"}}``: dense decode steps on ``backend``;
    ``stacked``: the run's dtype also with stacked projections (``"<dtype>:<form>+stacked"``),
    so that stacked int4 cells are held to the fastest dense layout too."""
    out = {}
    dtypes = ("float32",) if setup.cfg.dtype == "float32" else BASELINE_DTYPES  # fp32: its one reference
    for dtype in dtypes:
        forms = DENSE_FORMS if dtype == setup.cfg.dtype else ("dot",)
        options = ("default", STACKED) if stacked and dtype == setup.cfg.dtype else ("default",)
        cfg = dataclasses.replace(setup.cfg, dtype=dtype)
        weights = cast_weights(setup.fp32, dtype)
        for option in options:
            for form in forms:
                dense = convert_dense(layout(weights, option), form)
                t = decode_timing(proto, cfg, dense, "default", setup.steps, per_call=False)
                key = f"{dtype}:{form}" + ("" if option == "default" else f"+{option}")
                out[key] = {"seconds": t["seconds"], "spread": t["spread"]}
                log(f"{proto.backend}: dense {key} decode {t['seconds'] * 1e3:.3f} ms")
        del weights
        gc.collect()
    return out


def best_dense(baselines: dict, dtype: str) -> float | None:
    """The fastest dense form's step of ``dtype`` in the run."""
    times = [v["seconds"] for k, v in baselines.items() if k.split(":")[0] == dtype and v.get("seconds")]
    return min(times) if times else None


def measure_backend(
    backend: str, setup: Setup, rows=ROWS, log=print, bandwidth: float | None = None, on_cell=lambda cell: None
):
    """Every row's cell on ``backend``, plus the dense references the cells are set against:
    (cells, dense baselines)."""
    proto = protocol(backend, MAX_SEQ, PROMPT_TOKENS)  # the backend resolved once, its timing handed down
    fp32 = setup.cfg.dtype == "float32"
    fp32_linear = time_linear(backend, None, "default") if fp32 else None
    baselines = dense_baselines(proto, setup, log, stacked=any(row_parts(r)[1] == STACKED for r in rows))
    fp32_decode = best_dense(baselines, "float32")
    bf16_decode = best_dense(baselines, "bfloat16")
    gc.collect()
    prompt = parity_prompt(setup.parity_cfg)
    references = make_references(backend, setup, prompt)
    cells = []
    for row in rows:
        representation, option, head = row_parts(row)
        cell = Cell(
            backend,
            representation,
            option,
            head,
            setup.cfg.dtype,
            linear_fp32_seconds=fp32_linear,
            decode_fp32_seconds=fp32_decode,
            decode_bf16_seconds=bf16_decode,
            bandwidth_bytes_per_s=bandwidth,
        )
        cell.skipped = applicability(representation, option, backend)
        cells.append(cell)
        if cell.skipped:
            continue
        try:
            _measure_cell(proto, cell, setup, prompt, references)
        except Exception as e:  # a compiler or runtime failure is a finding of the cell
            cell.error = error_line(e)
        gc.collect()
        log(f"{backend} {representation} {option} head={head}: {summary_line(cell)}")
        on_cell(cell)
    return cells, baselines


def make_references(backend: str, setup: Setup, prompt: list[int]):
    """``references(head)``: (host-dequant run, baseline-representation run) of the parity
    model on ``backend``, each made once."""
    runs = {}

    def references(head):
        if head not in runs:
            q = setup.quantized(head, parity=True)
            host = dequantize_weights(q, setup.parity_cfg.dtype)
            greedy = lambda w: greedy_by_decode(  # noqa: E731
                generate.make_runner(setup.parity_cfg, w, backend), prompt, checks.GREEDY_TOKENS
            )
            runs[head] = (greedy(host), greedy(q))
        return runs[head]

    return references


def _measure_cell(proto: Protocol, cell: Cell, setup: Setup, prompt, references) -> None:
    backend, representation, option, head = cell.backend, cell.representation, cell.option, cell.head
    int4_head = head == "int4"
    specs = convert(layout(weight_specs(setup.cfg, "int4", embedding=int4_head), option), representation, head)
    lowering_cell(cell, setup.cfg, specs)
    if setup.cfg.dtype == "float32" and head == "dot":
        cell.linear_seconds = time_linear(backend, representation, option)
    weights = convert(layout(setup.quantized(head), option), representation, head)
    cell.bytes_per_step = roofline.decode_bytes_read(setup.cfg, weights, PROMPT_TOKENS)
    timing = decode_timing(proto, setup.cfg, weights, option, setup.steps, per_call=setup.cfg.dtype == "float32")
    cell.decode_seconds, cell.decode_spread = timing["seconds"], timing["spread"]
    cell.decode_per_call_seconds, cell.loop_hoisted_dequants = timing.get("per_call"), timing.get("hoisted")
    if setup.cfg.dtype != "float32" and proto.spec.is_xla:  # IREE compiles the exported graphs whole
        cell.step_linears_seconds = proto.linears(setup.cfg, weights, setup.steps, **_xla(option, backend))
    del weights
    gc.collect()
    parity_cell(cell, setup, prompt, references)


def parity_cell(cell: Cell, setup: Setup, prompt, references) -> None:
    """The cell's parity columns: its greedy run of the parity model against the host dequant
    (logits) and against the baseline form (tokens, with the near-tie rule)."""
    backend, representation, option, head = cell.backend, cell.representation, cell.option, cell.head
    cell.parity_model = setup.parity_name
    try:
        parity_weights = convert(layout(setup.quantized(head, parity=True), option), representation, head)
    except Exception as e:  # e.g. the Pallas layout needs in % 512 == 0
        cell.parity_model = f"{setup.parity_name}: {error_line(e)}"
        return
    run = greedy_by_decode(
        generate.make_runner(setup.parity_cfg, parity_weights, backend, **settings(option, backend)),
        prompt,
        checks.GREEDY_TOKENS,
    )
    host_run, baseline_run = references(head)
    vs_host = checks.compare(host_run, run)
    cell.max_abs_logit_diff_vs_host = vs_host.max_abs_logit_diff
    cell.parity_atol = parity_atol(setup.cfg.dtype)
    cell.parity_within_atol = vs_host.max_abs_logit_diff <= cell.parity_atol
    cell.tokens_vs_baseline = checks.compare(baseline_run, run).agreement
    greedy = checks.greedy_agreement(run, baseline_run, checks.near_tie_gap(setup.cfg.dtype))
    cell.tokens_gap_at_divergence, cell.tokens_agree_or_near_tie = greedy.top2_gap_at_divergence, greedy.agrees


def parity_atol(dtype: str) -> float:
    """A cell's bound against host dequant: fp32, the in-graph-vs-host bound (1e-4); in half
    precision the dtype's logit parity bound, since most forms reorder the GEMV's sum (or keep
    the dequantized weight in float32) and one reordered half-precision rounding inside the
    network moves the logits by more than the same-order bound."""
    return checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL if dtype == "float32" else checks.logit_atol(dtype)


# IREE's batched figure: a 64-token prefill (its decode graphs take one sequence); the uint32
# words and the one form IREE fuses.
IREE_BATCH_ROWS = ((BASELINE, "default", "dot"), ("s4-grouped", "default", "dot"))


def batch_timings(backend: str, setup: Setup, rows=None, log=print) -> dict:
    """``{"<representation>:<option>:<head>" | "dense:dot": {"decode-B": s, "prefill-64": s}}``:
    the batched decode step (:data:`BATCHES` rows; where the backend cannot batch, as IREE's
    one-sequence graphs, the figure says why) and a 64-token prefill, on the backend's protocol."""
    proto = protocol(backend, MAX_SEQ, PROMPT_TOKENS)
    rows = rows or (BATCH_ROWS if proto.spec.is_xla else IREE_BATCH_ROWS)
    # the dense dot only: at more than one row the multiply + reduce form is the dot
    cases = [("dense:dot", lambda: setup.fp32, "default")]
    for row in rows:
        representation, option, head = row_parts(row)
        make = lambda r=representation, o=option, h=head: convert(layout(setup.quantized(h), o), r, h)  # noqa: E731
        cases.append((f"{representation}:{option}:{head}", make, option))
    out = {}
    for name, make, option in cases:
        weights, figures = make(), {}
        opts = _options(option, backend)
        try:
            for b in BATCHES:
                try:
                    figures[f"decode-{b}"] = proto.decode(setup.cfg, weights, setup.steps, b, **opts)["seconds"]
                except NotMeasurable as e:
                    figures[f"decode-{b}"] = None
                    figures["not_measurable"] = str(e)
            figures[f"prefill-{PREFILL_BUCKET}"] = proto.prefill(setup.cfg, weights, PREFILL_BUCKET, **opts)["seconds"]
        except Exception as e:  # a failure is a finding of the case
            figures["error"] = error_line(e)
        out[name] = figures
        log(f"{backend} batch {name}: {figures}")
        del weights
        gc.collect()
    return out


def _xla(option: str, backend: str) -> dict:
    return {"xla_options": settings(option, backend).get("xla_options")}


def _options(option: str, backend: str) -> dict:
    """The option's compiler settings as the protocol takes them (each compiler reads its own)."""
    return _xla(option, backend) | {"iree_flags": tuple(settings(option, backend).get("iree_flags", ()))}


def decode_timing(
    proto: Protocol, cfg: Config, weights: Weights, option: str, steps: int, per_call: bool = True
) -> dict:
    """Per-step decode time as the cells report it: the protocol's step (XLA: the in-graph
    loop; IREE: one call per step), and on XLA-CUDA with ``per_call`` the figure of one dispatch
    per step, queued, beside it."""
    t = proto.decode(cfg, weights, steps, 1, **_options(option, proto.backend))
    out = {"seconds": t["seconds"], "spread": t["spread"], "hoisted": t.get("hoisted_dequants")}
    if per_call and proto.spec.is_xla and proto.spec.is_cuda:
        out["per_call"] = proto.per_call(cfg, weights, steps, **_xla(option, proto.backend))
    return out


def make_setup(
    parity_model: str | None, steps: int, log=print, dtype: str = "float32", cfg: Config | None = None
) -> Setup:
    """``cfg``'s shapes (default Llama-3.2-1B) with seeded synthetic weights in compute
    ``dtype``; parity on ``parity_model`` (a path, "default" for the embedded SmolLM2, or
    "synthetic" for the same synthetic weights), in the same dtype."""
    cfg = dataclasses.replace(cfg or llama32_config(), dtype=dtype)
    t0 = time.perf_counter()
    fp32 = synthetic(cfg, seed=0)
    int4 = quantize_weights(fp32)
    log(f"synthetic weights ({cfg.num_layers} layers, hidden {cfg.hidden_size}) made and quantized in "
        f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    if parity_model == "synthetic":
        name = "llama-3.2-1b-synthetic" if cfg.num_layers == llama32_config().num_layers else "synthetic"
        return Setup(cfg, int4, fp32, name, cfg, int4, steps)
    path = None if parity_model in (None, "default") else parity_model
    pcfg, pint4 = checkpoints.load(path, "int4", dtype)
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


PARTS = ("anchors", "cells", "batch")


def run(
    backends,
    out_path,
    parity_model=None,
    steps: int = 8,
    rows=ROWS,
    log=_log,
    dtype: str = "float32",
    parts=PARTS,
    cfg: Config | None = None,
) -> dict:
    """The matrix on ``backends``, written to ``out_path`` after every cell. In half precision
    (the matrix vs bf16) a GPU run also records the torch anchors (:mod:`.anchors`), the
    run's copy bandwidth (the better of a memcpy-class copy and XLA's own) and the batched
    figures (:func:`batch_timings`). ``parts``: which of :data:`PARTS` to measure (a GPU run
    of ten minutes at most holds a part of the matrix; the report merges the files)."""
    setup = make_setup(parity_model, steps, log, dtype, cfg)
    result = {
        "environment": environment(backends),
        "dtype": dtype,
        "linear_shape": list(LINEAR_SHAPE),
        "linear_chain": LINEAR_CHAIN,
        "max_seq": MAX_SEQ,
        "decode_steps": steps,
        "parity_atol": parity_atol(dtype),
        "parts": list(parts),
        "greedy_tokens": checks.GREEDY_TOKENS,
        "baselines": {},
        "batched": {},
        "cells": [],
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write = lambda: out.write_text(json.dumps(result, indent=1))  # noqa: E731  (partial results survive a timeout)
    cuda = [b for b in backends if backend_spec(b).is_cuda]
    bandwidth = None
    if dtype != "float32" and cuda and "anchors" in parts:
        result["anchors"] = anchors.measure(setup.cfg, batches=(1, *BATCHES, PREFILL_BUCKET))
        xla_copy = roofline.copy_bandwidth("cuda")
        result["xla_copy_bytes_per_s"] = xla_copy
        bandwidth = max(xla_copy, result["anchors"].get("bandwidth_bytes_per_s") or 0.0)
        result["bandwidth_bytes_per_s"] = bandwidth
        log(f"bandwidth: memcpy {result['anchors'].get('bandwidth_bytes_per_s')}, XLA copy {xla_copy}")
        write()

    def on_cell(cell):
        result["cells"].append(cell_record(cell))
        write()

    for backend in backends:
        if "cells" in parts:
            _, result["baselines"][backend] = measure_backend(
                backend, setup, rows, log, bandwidth if backend in cuda else None, on_cell
            )
            write()
        if dtype != "float32" and "batch" in parts:
            result["batched"][backend] = batch_timings(backend, setup, log=log)
            write()
    return result
