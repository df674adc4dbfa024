"""``python -m model_impl characterize``: run the checks live and write the findings.

Writes ``findings.json`` (``{"environment": {...}, "model": {...}, "format": {...},
"rows": [...]}``, one row per backend x quant x graph) and ``findings.md``, and prints
the table. Progress goes to stderr while graphs compile and run.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint, checks, generate, quant
from .weights import LINEAR_NAMES, QuantizedLinear, dequantize_weights, nbytes, quantize_weights

PACKAGES = ("jax", "jaxlib", "iree-base-compiler", "iree-base-runtime", "numpy", "transformers",
            "torch", "mlx", "gguf", "safetensors")


def log(msg: str) -> None:
    print(f"[characterize {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"node": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions,
    }


def model_section(path, cfg, fp32, int4) -> dict:
    linear_fp32 = sum(np.asarray(getattr(l, n)).nbytes for l in fp32.layers for n in LINEAR_NAMES)
    linear_int4 = sum(
        sum(np.asarray(a).nbytes for a in (w.packed, w.scales, w.biases))
        for l in int4.layers for w in (getattr(l, n) for n in LINEAR_NAMES)
    )
    return {
        "source": str(path),
        "config": {k: v for k, v in cfg.__dict__.items() if k != "rope_scaling"}
        | {"rope_scaling": None if cfg.rope_scaling is None else cfg.rope_scaling.__dict__},
        "parameters": int(sum(np.asarray(x).size for x in __import__("jax").tree_util.tree_leaves(fp32))),
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
    return {"mlx": importlib.metadata.version("mlx"), "layer0_bit_identical": bool(identical),
            "layer0_worst_error_in_scales": worst}


def _row(backend, quant_mode, graph, runner, cmp: checks.Comparison, reference: str, stablehlo: str):
    rows = cmp.per_step_max_abs_diff
    diffs = rows[:1] if graph == "prefill" else rows[1:]
    return {
        "backend": backend, "quant": quant_mode, "graph": graph,
        "custom_call": "custom_call" in stablehlo,
        "fused": None, "dispatches": None, "materialized_bytes": None,
        "max_abs_logit_diff": max(diffs) if diffs else None,
        "reference": reference,
        "token_agreement": cmp.agreement,
        "first_divergence": cmp.first_divergence,
        "compile_seconds": round(runner.compile_seconds[graph], 2),
    }


def main(out_dir: str = "reports/", model: str | None = None) -> int:
    from . import reference

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = checkpoint.default_model_path() if model is None else Path(model)
    log(f"loading {path}")
    cfg, fp32 = checkpoint.load(path)
    try:
        int4 = quantize_weights(fp32)
    except quant.QuantizationError as e:
        raise SystemExit(f"error: {path}: --quant int4 impossible: {e}")
    tokenizer = checkpoint.load_tokenizer(path)
    prompt = tokenizer(checks.REFERENCE_PROMPT).input_ids
    n = checks.GREEDY_TOKENS

    findings = {"environment": environment(), "model": model_section(path, cfg, fp32, int4)}
    log("format: our quantizer vs mlx.core.quantize on layer 0")
    findings["format"] = format_section(fp32)

    log("transformers reference (torch fp32)")
    hf = reference.transformers_model(path)
    hf_run = reference.greedy(hf, prompt, n)
    del hf

    runs, rows = {}, []
    for mode, weights in (("fp32", fp32), ("int4", int4), ("host-dequant", None)):
        w = dequantize_weights(int4) if mode == "host-dequant" else weights
        log(f"xla-cpu {mode}: compile prefill + decode, {n} greedy tokens")
        runner = generate.make_runner(cfg, w, "xla-cpu")
        runs[mode] = (runner, generate.generate(runner, prompt, n, stop_at_eos=False, keep_logits=True))
    bucket, max_seq = generate.prompt_bucket(len(prompt)), generate.cache_length(len(prompt), n)
    for mode, ref_name, ref in (("fp32", "transformers fp32", hf_run),
                                ("int4", "host dequant + fp32 graph", runs["host-dequant"][1])):
        runner, run = runs[mode]
        cmp = checks.compare(run, ref)
        for graph in ("prefill", "decode"):
            text = runner.lowered(graph, bucket, max_seq).as_text()
            rows.append(_row("xla-cpu", mode, graph, runner, cmp, ref_name, text))
    findings["rows"] = rows
    int4_vs_fp32 = checks.compare(runs["int4"][1], runs["fp32"][1])
    findings["int4_vs_fp32"] = {
        "token_agreement": int4_vs_fp32.agreement,
        "first_divergence": int4_vs_fp32.first_divergence,
        "degeneracy": checks.degeneracy(runs["int4"][1].tokens).__dict__,
        "coherent": checks.degeneracy(runs["int4"][1].tokens).coherent,
        "fp32_text": tokenizer.decode(runs["fp32"][1].tokens),
        "int4_text": tokenizer.decode(runs["int4"][1].tokens),
    }
    findings["prompt"] = {"text": checks.REFERENCE_PROMPT, "tokens": prompt}

    (out / "findings.json").write_text(json.dumps(findings, indent=2, default=str) + "\n")
    md = render_markdown(findings)
    (out / "findings.md").write_text(md)
    print(md)
    log(f"wrote {out / 'findings.md'} and {out / 'findings.json'}")
    return 0


def _fmt(v):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def render_markdown(f: dict) -> str:
    env, m, fmt = f["environment"], f["model"], f["format"]
    cfg = m["config"]
    lines = [
        "# Findings: in-graph int4 dequant through JAX/StableHLO/XLA/IREE",
        "",
        f"Generated {env['date']} on `{env['machine']['node']}` ({env['machine']['cpu']}, "
        f"{env['machine']['cores']} cores). Versions: "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + ".",
        "",
        "## Model",
        "",
        f"`{m['source']}`: {cfg['num_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{cfg['num_heads']} heads / {cfg['num_kv_heads']} KV heads, intermediate "
        f"{cfg['intermediate_size']}, vocab {cfg['vocab_size']}, "
        f"{'tied' if cfg['tie_word_embeddings'] else 'untied'} embeddings, "
        f"rope {'llama3-scaled' if cfg['rope_scaling'] else 'default'} (theta {cfg['rope_theta']:g}); "
        f"{m['parameters'] / 1e6:.1f} M parameters.",
        "",
        f"Weight bytes: fp32 {m['weight_bytes_fp32'] / 2**20:.1f} MiB, int4 {m['weight_bytes_int4'] / 2**20:.1f} MiB "
        f"(embedding and norms stay fp32). The 7 quantized linears per layer: "
        f"{m['linear_bytes_fp32'] / 2**20:.1f} MiB -> {m['linear_bytes_int4'] / 2**20:.1f} MiB, "
        f"**{m['linear_compression']:.2f}x** (not the nominal 8x: one fp32 scale and bias per 64 weights "
        f"add 1 bit per weight).",
        "",
        "## Format",
        "",
    ]
    if fmt.get("mlx"):
        lines.append(
            f"Layer 0's seven linears quantized by `model_impl.quant` and by `mlx.core.quantize` "
            f"(mlx {fmt['mlx']}): bit-identical codes, scales, biases and dequantized values: "
            f"**{_fmt(fmt['layer0_bit_identical'])}**. Worst reconstruction error "
            f"{fmt['layer0_worst_error_in_scales']:.5f} x the group's scale (bound: 1.0)."
        )
    else:
        lines.append(fmt["note"])
    cols = ["backend", "quant", "graph", "custom_call", "fused", "dispatches", "materialized_bytes",
            "max_abs_logit_diff", "token_agreement", "reference", "compile_seconds"]
    lines += ["", "## Parity and agreement", "",
              f"Prompt {f['prompt']['text']!r} ({len(f['prompt']['tokens'])} tokens), "
              f"{checks.GREEDY_TOKENS} greedy tokens. `max_abs_logit_diff` is over the prefill's last "
              f"position (prefill rows) or over all decode steps (decode rows), against `reference`. "
              f"Tolerances: in-graph vs host dequant {checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL:g}, "
              f"fp32 vs transformers {checks.TRANSFORMERS_LOGIT_ATOL:g}. "
              f"`fused`/`dispatches`/`materialized_bytes` come from the lowering analysis (— where "
              f"not analyzed).", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in f["rows"]:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    q = f["int4_vs_fp32"]
    lines += [
        "",
        "## int4 against fp32",
        "",
        f"Greedy int4 (group 64) vs fp32 on the same prompt: {q['token_agreement']} tokens agree "
        f"before the first divergence (at generated token {_fmt(q['first_divergence'])}). "
        f"Non-degenerate by the suite's criterion: **{_fmt(q['coherent'])}** "
        f"(largest token share {q['degeneracy']['max_token_share']:.2f}, longest repeat run "
        f"{q['degeneracy']['longest_repeat_run']}, {q['degeneracy']['distinct_tokens']} distinct tokens).",
        "",
        f"- fp32: {q['fp32_text']!r}",
        f"- int4: {q['int4_text']!r}",
        "",
    ]
    return "\n".join(lines)
