"""``python -m model_impl characterize``: run the checks live and write the findings.

Writes ``findings.json`` (``{"environment": {...}, "model": {...}, "format": {...},
"rows": [...]}``, one row per backend x quant x graph) and ``findings.md``, and prints
the table. Progress goes to stderr while graphs compile and run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from .. import checkpoints as checkpoint
from .. import checks, env, quant
from ..analyzers import dumps, iree_dispatch, minimal, stablehlo, xla_hlo
from ..backends import generate, iree_compile
from ..backends.spec import for_iree_target
from ..checks import mlx_peer
from ..llama.shapes import LLAMA32_SHAPES, llama32_config, shrunk_llama32_config
from ..llama.weights import (
    LINEAR_NAMES,
    dequantize_weights,
    linear_bytes,
    linear_weight_elements,
    mode_label,
    nbytes,
    parse_mode_label,
    quantize_weights,
)
from ..llama.weights import specs as weight_specs
from . import (
    bench_section,
    fusion_section,
    half_section,
    results,
    tp_section,
    verdict_section,
    versions_section,
    vs_bf16_section,
)
from .markdown import render_markdown
from .results import ROW_KEYS


def log(msg: str) -> None:
    print(f"[characterize {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def model_section(path, cfg, fp32, int4) -> dict:
    linear_fp32, linear_int4 = linear_bytes(fp32), linear_bytes(int4)
    return {
        "source": str(path),
        "config": {k: v for k, v in cfg.__dict__.items() if k != "rope_scaling"}
        | {"rope_scaling": None if cfg.rope_scaling is None else cfg.rope_scaling.__dict__},
        "parameters": int(sum(np.asarray(x).size for x in jax.tree_util.tree_leaves(fp32))),
        "weight_bytes_fp32": nbytes(fp32),
        "weight_bytes_int4": nbytes(int4),
        "linear_bytes_fp32": int(linear_fp32),
        "linear_bytes_int4": int(linear_int4),
        "linear_compression": linear_fp32 / linear_int4,
    }


def format_section(fp32) -> dict:
    """The real model's layer-0 linears through our quantizer and MLX's: bit-identical?"""
    try:
        import mlx.core as mx
    except ImportError:
        return {"mlx": None, "note": "mlx not installed: bit-identity not checked here"}
    layer, identical, worst = fp32.layers[0], True, 0.0
    for name in LINEAR_NAMES:
        w = np.asarray(getattr(layer, name), np.float32)
        ours = quant.quantize(w)
        ref = [np.array(a) for a in mx.quantize(mx.array(w), group_size=64, bits=4)]
        identical &= all(np.array_equal(a, b) for a, b in zip(ours, ref))
        deq = quant.dequantize(*ours)
        identical &= np.array_equal(deq, np.array(mx.dequantize(*map(mx.array, ours), group_size=64, bits=4)))
        step = np.repeat(np.abs(ours[1]), 64, axis=-1)
        worst = max(worst, float(np.max(np.abs(deq - w) / step)))
    return {
        "mlx": env.version("mlx"),
        "layer0_bit_identical": bool(identical),
        "layer0_worst_error_in_scales": worst,
    }


def _row(**fields) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(fields)
    return row


def _parity(parity: dict, backend: str, graph: str) -> dict:
    if backend not in parity:
        return {}
    cmp, reference = parity[backend]
    rows = cmp.per_step_max_abs_diff
    diffs = rows[:1] if graph == "prefill" else rows[1:]
    return {
        "max_abs_logit_diff": max(diffs) if diffs else None,
        "reference": reference,
        "token_agreement": cmp.agreement,
        "first_divergence": cmp.first_divergence,
    }


def lowering_rows(
    name,
    cfg,
    quant_mode,
    graph,
    bucket,
    max_seq,
    *,
    xla_text=None,
    xla_seconds=None,
    iree_cpu_seconds=None,
    parity=None,
    iree_targets=("llvm-cpu", "cuda"),
):
    """One row per backend for this graph: the StableHLO inventory and each compiler's verdict.

    ``parity``: {backend: (Comparison, reference name)} where the graph was also run.
    """
    parity = parity or {}
    specs = weight_specs(cfg, quant_mode)
    elements = linear_weight_elements(cfg)
    inventory = stablehlo.stablehlo_inventory(dumps.stablehlo(cfg, specs, graph, bucket, max_seq))
    label = mode_label(quant_mode, cfg.dtype)
    common = dict(model=name, quant=label, graph=graph, custom_call=inventory.has_custom_call)
    if xla_text is None:
        dump = dumps.xla_hlo(cfg, specs, graph, bucket, max_seq)
        xla_text, xla_seconds = dump.hlo, dump.compile_seconds
    xv = xla_hlo.analyze_xla_hlo(xla_text, elements)
    rows = [
        _row(
            **common,
            backend="xla-cpu",
            fused=xv.verdict,
            materialized_bytes=xv.materialized_bytes,
            compile_seconds=xla_seconds,
            **_parity(parity, "xla-cpu", graph),
        )
    ]
    for target in iree_targets:
        backend = for_iree_target(target).name
        log(f"{name} {label} {graph}: IREE {target} dispatch formation")
        text, seconds = dumps.iree_sources(cfg, specs, graph, bucket, max_seq, target)
        iv = iree_dispatch.analyze_iree_executables(text, elements)
        note = None
        if target == "cuda":
            note = f"compile-only ({iree_compile.DEFAULT_CUDA_TARGET}); seconds to executable-sources"
        elif iree_cpu_seconds is None:
            note = "seconds to executable-sources"
        rows.append(
            _row(
                **common,
                backend=backend,
                fused=iv.verdict,
                dispatches=iv.dispatches,
                materialized_bytes=iv.materialized_bytes,
                compile_seconds=iree_cpu_seconds.get(graph) if (target == "llvm-cpu" and iree_cpu_seconds) else seconds,
                note=note,
                **_parity(parity, backend, graph),
            )
        )
    return rows


def mlx_peer_section(model_path, prompt, n, variants) -> list[dict]:
    """Per mlx-lm checkpoint variant ``(dtype, bits, group)``: agreement and |Δ log-prob| of our
    int4 graph vs mlx_lm."""
    import tempfile

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = mlx_peer.write_hf_dir(model_path, Path(tmp) / "hf")
        for dtype, bits, group in variants:
            path = mlx_peer.convert(hf_dir, Path(tmp) / mlx_peer.variant_name(dtype, bits, group), bits, group, dtype)
            peer = mlx_peer.greedy(path, prompt, n)  # whole: the report shows both runs' agreement
            cfg, weights = checkpoint.load(path, "int4")
            entry = {
                "variant": f"{bits}-bit, group {group}, {dtype}",
                "dtype": dtype,
                "weight_bytes": mlx_peer.weight_bytes(path),
                "config_differences": {k: list(map(str, v)) for k, v in mlx_peer.config_differences(path).items()},
            }
            for backend in ("xla-cpu", "iree-cpu"):
                run = generate.generate(
                    generate.make_runner(cfg, weights, backend),
                    prompt,
                    n,
                    stop_at_eos=False,
                    keep_logits=True,
                )
                pc = mlx_peer.compare(run, peer, dtype)
                entry[backend] = {
                    "agreement": pc.comparison.agreement,
                    "agrees": pc.agrees,
                    "first_divergence": pc.comparison.first_divergence,
                    "top2_gap_at_divergence": pc.top2_gap_at_divergence,
                    "max_abs_logprob_diff": pc.comparison.max_abs_logit_diff,
                }
            out.append(entry)
    return out


def minimal_graph_section() -> list[dict]:
    """Verdicts of each compiler on the one-linear graphs of :mod:`model_impl.minimal`."""
    out = []
    for name in minimal.GRAPHS:
        entry = {
            "graph": name,
            "custom_call": stablehlo.stablehlo_inventory(minimal.stablehlo(name)).has_custom_call,
            "xla-cpu": xla_hlo.analyze_xla_hlo(minimal.xla_hlo(name), minimal.WEIGHT_ELEMENTS).verdict,
        }
        for target, backend in (("llvm-cpu", "iree-cpu"), ("cuda", "iree-cuda")):
            v = iree_dispatch.analyze_iree_executables(minimal.iree_sources(name, target), minimal.WEIGHT_ELEMENTS)
            entry[backend] = v.verdict
        out.append(entry)
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one characterization runs: ``make report`` takes the defaults; the tests run the whole
    path on a 2-layer checkpoint with few tokens, one shape row and two MLX variants."""

    model: str | None = None  # a GGUF or HF directory; None: the embedded SmolLM2-135M
    results_dir: Path = results.RESULTS_DIR  # the measured results the report renders
    tokens: int = checks.GREEDY_TOKENS
    shapes: str = "llama-3.2-1b"  # the synthetic shapes characterized from shapes alone
    shape_modes: tuple[str, ...] = ("fp32", "int4", "bf16", "int4-bf16")
    mlx_variants: tuple = mlx_peer.VARIANTS
    half_dtypes: tuple[str, ...] = half_section.HALF


SHAPE_CONFIGS = {"llama-3.2-1b": (llama32_config, LLAMA32_SHAPES), "tiny": (shrunk_llama32_config, (8, 32))}


def main(out_dir: str = "reports/", model: str | None = None, plan: Plan | None = None) -> int:
    from ..checks import reference

    plan = plan or Plan(model=model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = checkpoint.default_model_path() if plan.model is None else Path(plan.model)
    name = "smollm2-135m" if plan.model is None else path.name
    log(f"loading {path}")
    cfg, fp32 = checkpoint.load(path)
    try:
        int4 = quantize_weights(fp32)
    except quant.QuantizationError as e:
        raise SystemExit(f"error: {path}: --quant int4 impossible: {e}") from None
    tokenizer = checkpoint.load_tokenizer(path)
    prompt = tokenizer(checks.REFERENCE_PROMPT).input_ids
    n = plan.tokens

    findings = {"environment": env.environment(), "model": model_section(path, cfg, fp32, int4)}
    log("format: our quantizer vs mlx.core.quantize on layer 0")
    findings["format"] = format_section(fp32)

    log("transformers reference (torch fp32; its saved outputs where torch is not installed)")
    hf_reference = reference.run(path, "float32", prompt, n)
    hf_run = hf_reference.greedy

    runs, runners = {}, {}
    live = [
        ("xla-cpu", "fp32", fp32),
        ("xla-cpu", "int4", int4),
        ("xla-cpu", "host-dequant", None),
        ("iree-cpu", "fp32", fp32),
        ("iree-cpu", "int4", int4),
    ]
    for backend, mode, weights in live:
        w = dequantize_weights(int4) if mode == "host-dequant" else weights
        log(f"{backend} {mode}: compile prefill + decode, {n} greedy tokens")
        runner = generate.make_runner(cfg, w, backend)
        runs[backend, mode] = generate.generate(runner, prompt, n, stop_at_eos=False, keep_logits=True)
        runners[backend, mode] = runner
    bucket, max_seq = generate.prompt_bucket(len(prompt)), generate.cache_length(len(prompt), n)
    references = {
        ("xla-cpu", "fp32"): (hf_run, "transformers fp32"),
        ("xla-cpu", "int4"): (runs["xla-cpu", "host-dequant"], "host dequant, xla-cpu fp32 graph"),
        ("iree-cpu", "fp32"): (runs["xla-cpu", "fp32"], "xla-cpu fp32"),
        ("iree-cpu", "int4"): (runs["xla-cpu", "int4"], "xla-cpu int4"),
    }
    rows = []
    for mode in ("fp32", "int4"):
        parity = {
            b: (checks.compare(runs[b, mode], references[b, mode][0]), references[b, mode][1])
            for b in ("xla-cpu", "iree-cpu")
        }
        for graph in ("prefill", "decode"):
            xla_runner = runners["xla-cpu", mode]
            rows += lowering_rows(
                name,
                cfg,
                mode,
                graph,
                bucket,
                max_seq,
                xla_text=xla_runner.executable(graph, bucket if graph == "prefill" else 0, max_seq).as_text(),
                xla_seconds=xla_runner.compile_seconds[graph],
                iree_cpu_seconds=runners["iree-cpu", mode].compile_seconds,
                parity=parity,
            )
    make_config, shapes_at = SHAPE_CONFIGS[plan.shapes]
    for mode in plan.shape_modes:
        weights_mode, dtype = parse_mode_label(mode)
        for graph in ("prefill", "decode"):
            log(f"{plan.shapes} shapes {mode} {graph}: export, XLA-CPU compile")
            cfg_mode = dataclasses.replace(make_config(), dtype=dtype)
            rows += lowering_rows(f"{plan.shapes} (shapes)", cfg_mode, weights_mode, graph, *shapes_at)
    cuda_runs = results.load_cuda_results(plan.results_dir) if plan.model is None else []
    findings["rows"] = results.merge_cuda_results(rows, cuda_runs, name, _row)
    findings["cuda_runs"] = [
        {k: r[k] for k in ("file", "environment", "figures", "lowering")}
        | {"tests": f"{sum(t['outcome'] == 'passed' for t in r['tests'])}/{len(r['tests'])} passed"}
        for r in cuda_runs
    ]
    log("MLX peer: mlx_lm.convert variants, mlx_lm greedy vs our int4 graph")
    findings["mlx_peer"] = mlx_peer_section(path, prompt, n, plan.mlx_variants)
    findings["half_precision"] = half_section.gather(cfg, fp32, prompt, n, log, plan.half_dtypes)
    log("one-linear graphs through each compiler")
    findings["minimal_graphs"] = minimal_graph_section()
    int4_vs_fp32 = checks.compare(runs["xla-cpu", "int4"], runs["xla-cpu", "fp32"])
    findings["int4_vs_fp32"] = {
        "token_agreement": int4_vs_fp32.agreement,
        "first_divergence": int4_vs_fp32.first_divergence,
        "degeneracy": checks.degeneracy(runs["xla-cpu", "int4"].tokens).__dict__,
        "coherent": checks.degeneracy(runs["xla-cpu", "int4"].tokens).coherent,
        "fp32_text": tokenizer.decode(runs["xla-cpu", "fp32"].tokens),
        "int4_text": tokenizer.decode(runs["xla-cpu", "int4"].tokens),
    }
    findings["prompt"] = {"text": checks.REFERENCE_PROMPT, "tokens": prompt}
    findings["tolerances"] = {
        "in_graph_vs_host_dequant": checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL,
        "fp32_reordering": checks.FP32_REORDERING_ATOL,
        "cross_compiler_target": checks.CROSS_COMPILER_TARGET_ATOL,
    }

    rdir = plan.results_dir
    findings["benchmarks"] = results.load(rdir, pattern="bench-*.json")
    matrix = fusion_section.load(rdir)
    findings["fusion_matrix"] = fusion_section.findings(matrix)
    vs_bf16 = vs_bf16_section.load(rdir)
    findings["int4_vs_bf16_matrix"] = vs_bf16_section.findings(vs_bf16)
    tp = tp_section.load(rdir)
    iree_md = next(iter(results.load(rdir, "iree-multidevice.json")), None)
    findings["tensor_parallel"] = tp_section.findings(tp)
    verdicts = verdict_section.load(rdir)
    findings["decision"] = verdict_section.table_rows(verdicts)
    (out / "findings.json").write_text(json.dumps(findings, indent=2, default=str) + "\n")
    upstream = verdict_section.load_upstream(rdir)
    opening = verdict_section.render(verdicts, upstream) + ["", *verdict_section.charts(verdicts, out)]
    md = (
        render_markdown(findings, opening)
        + "\n".join(bench_section.render(findings["benchmarks"], out, findings["rows"]))
        + "\n".join(fusion_section.render(matrix))
        + "\n".join(vs_bf16_section.render(vs_bf16, vs_bf16_section.load_related(rdir)))
        + "\n".join(tp_section.render(tp, iree_md))
        + "\n".join(versions_section.render(versions_section.load(rdir)))
        + "\n"
    )
    (out / "findings.md").write_text(md)
    print(md)
    log(f"wrote {out / 'findings.md'} and {out / 'findings.json'}")
    return 0
