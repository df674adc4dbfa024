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

import jax
import numpy as np

from . import checkpoint, checks, generate, quant
from .weights import LINEAR_NAMES, dequantize_weights, linear_weight_elements, nbytes, quantize_weights

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
    return {"mlx": importlib.metadata.version("mlx"), "layer0_bit_identical": bool(identical),
            "layer0_worst_error_in_scales": worst}


ROW_KEYS = ("model", "backend", "quant", "graph", "custom_call", "fused", "dispatches",
            "materialized_bytes", "max_abs_logit_diff", "reference", "token_agreement",
            "first_divergence", "compile_seconds", "note")


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
    return {"max_abs_logit_diff": max(diffs) if diffs else None, "reference": reference,
            "token_agreement": cmp.agreement, "first_divergence": cmp.first_divergence}


def lowering_rows(name, cfg, quant_mode, graph, bucket, max_seq, *, xla_text=None,
                  xla_seconds=None, iree_cpu_seconds=None, parity=None, iree_targets=("llvm-cpu", "cuda")):
    """One row per backend for this graph: the StableHLO inventory and each compiler's verdict.

    ``parity``: {backend: (Comparison, reference name)} where the graph was also run.
    """
    from . import dumps, iree_backend, lowering
    from .weights import specs as weight_specs

    parity = parity or {}
    specs = weight_specs(cfg, quant_mode)
    elements = linear_weight_elements(cfg)
    inventory = lowering.stablehlo_inventory(dumps.stablehlo(cfg, specs, graph, bucket, max_seq))
    common = dict(model=name, quant=quant_mode, graph=graph, custom_call=inventory.has_custom_call)
    if xla_text is None:
        dump = dumps.xla_hlo(cfg, specs, graph, bucket, max_seq)
        xla_text, xla_seconds = dump.hlo, dump.compile_seconds
    xv = lowering.analyze_xla_hlo(xla_text, elements)
    rows = [_row(**common, backend="xla-cpu", fused=xv.verdict, materialized_bytes=xv.materialized_bytes,
                 compile_seconds=xla_seconds, **_parity(parity, "xla-cpu", graph))]
    for target in iree_targets:
        backend = {"llvm-cpu": "iree-cpu", "cuda": "iree-cuda"}[target]
        log(f"{name} {quant_mode} {graph}: IREE {target} dispatch formation")
        text, seconds = dumps.iree_sources(cfg, specs, graph, bucket, max_seq, target)
        iv = lowering.analyze_iree_executables(text, elements)
        note = None
        if target == "cuda":
            note = f"compile-only ({iree_backend.DEFAULT_CUDA_TARGET}); seconds to executable-sources"
        elif iree_cpu_seconds is None:
            note = "seconds to executable-sources"
        rows.append(_row(
            **common, backend=backend, fused=iv.verdict, dispatches=iv.dispatches,
            materialized_bytes=iv.materialized_bytes,
            compile_seconds=iree_cpu_seconds.get(graph) if (target == "llvm-cpu" and iree_cpu_seconds) else seconds,
            note=note, **_parity(parity, backend, graph),
        ))
    return rows


def mlx_peer_section(model_path, prompt, n) -> list[dict]:
    """Per mlx-lm checkpoint variant: agreement and |Δ log-prob| of our int4 graph vs mlx_lm."""
    import tempfile

    from . import mlx_peer

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = mlx_peer.write_hf_dir(model_path, Path(tmp) / "hf")
        for bits, group in mlx_peer.VARIANTS:
            path = mlx_peer.convert(hf_dir, Path(tmp) / f"q{bits}g{group}", bits, group)
            peer = mlx_peer.greedy(path, prompt, n)
            cfg, weights = checkpoint.load(path, "int4")
            entry = {"variant": f"{bits}-bit, group {group}", "weight_bytes": mlx_peer.weight_bytes(path)}
            for backend in ("xla-cpu", "iree-cpu"):
                run = generate.generate(generate.make_runner(cfg, weights, backend), prompt, n,
                                        stop_at_eos=False, keep_logits=True)
                pc = mlx_peer.compare(run, peer)
                entry[backend] = {"agreement": pc.comparison.agreement, "agrees": pc.agrees,
                                  "first_divergence": pc.comparison.first_divergence,
                                  "top2_gap_at_divergence": pc.top2_gap_at_divergence,
                                  "max_abs_logprob_diff": pc.comparison.max_abs_logit_diff}
            out.append(entry)
    return out


def minimal_graph_section() -> list[dict]:
    """Verdicts of each compiler on the one-linear graphs of :mod:`model_impl.minimal`."""
    from . import lowering, minimal

    out = []
    for name in minimal.GRAPHS:
        entry = {"graph": name, "custom_call": lowering.stablehlo_inventory(minimal.stablehlo(name)).has_custom_call,
                 "xla-cpu": lowering.analyze_xla_hlo(minimal.xla_hlo(name), minimal.WEIGHT_ELEMENTS).verdict}
        for target, backend in (("llvm-cpu", "iree-cpu"), ("cuda", "iree-cuda")):
            v = lowering.analyze_iree_executables(minimal.iree_sources(name, target), minimal.WEIGHT_ELEMENTS)
            entry[backend] = v.verdict
        out.append(entry)
    return out


RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def load_cuda_results(results_dir: Path = RESULTS_DIR) -> list[dict]:
    """GPU runs committed under ``results/`` (written by ``scripts/gpu_run.sh``)."""
    from . import bench_report

    return bench_report.load(results_dir, "cuda-*.json")


def merge_cuda_results(rows: list[dict], runs: list[dict], model_name: str) -> list[dict]:
    """Fill the CUDA rows with what a GPU run measured, marked with the machine it ran on."""
    for run in runs:
        machine = f"{run['machine']['device']} ({run['date'][:10]}, {run['file']})"
        for key, fig in run["figures"].items():
            backend, quant_mode = key.split("/")
            for graph in ("prefill", "decode"):
                diff = fig[f"max_abs_logit_diff_{graph}"]
                parity = {"max_abs_logit_diff": diff, "token_agreement": fig["token_agreement_vs_xla_cpu"],
                          "first_divergence": fig["first_divergence"],
                          "reference": f"xla-cpu {quant_mode} (same machine)"}
                note = f"measured on {machine}" + (
                    f"; IREE target {fig['cuda_target']}" if fig.get("cuda_target") else "")
                existing = [r for r in rows if (r["model"], r["backend"], r["quant"], r["graph"])
                            == (model_name, backend, quant_mode, graph)]
                if existing:
                    existing[0].update(parity, note=note)
                    continue
                low = run["lowering"].get(f"{backend}/{quant_mode}/{graph}/smollm2-135m", {})
                seconds = (fig.get("compile_seconds") or {}).get(graph)
                rows.append(_row(model=model_name, backend=backend, quant=quant_mode, graph=graph,
                                 custom_call=False if backend.startswith("xla") else None,
                                 fused=low.get("verdict", "no-dequant" if quant_mode == "fp32" else None),
                                 materialized_bytes=low.get("materialized_bytes", 0 if quant_mode == "fp32" else None),
                                 compile_seconds=round(seconds, 2) if seconds else None, note=note, **parity))
        for key, low in run["lowering"].items():
            backend, quant_mode, graph, model = key.split("/")
            if model == "llama-3.2-1b":
                rows.append(_row(model="llama-3.2-1b (shapes)", backend=backend, quant=quant_mode, graph=graph,
                                 custom_call=False, fused=low["verdict"], materialized_bytes=low["materialized_bytes"],
                                 compile_seconds=low["compile_seconds"], note=f"measured on {machine}"))
    order = {"xla-cpu": 0, "iree-cpu": 1, "xla-cuda": 2, "iree-cuda": 3}
    return sorted(rows, key=lambda r: (r["model"] != model_name, r["quant"], r["graph"] != "prefill",
                                       order.get(r["backend"], 9)))


def main(out_dir: str = "reports/", model: str | None = None) -> int:
    from . import reference
    from .config import LLAMA32_CONFIG_PATH, load_hf_config
    from .dumps import LLAMA32_SHAPES

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = checkpoint.default_model_path() if model is None else Path(model)
    name = "smollm2-135m" if model is None else path.name
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

    runs, runners = {}, {}
    plan = [("xla-cpu", "fp32", fp32), ("xla-cpu", "int4", int4), ("xla-cpu", "host-dequant", None),
            ("iree-cpu", "fp32", fp32), ("iree-cpu", "int4", int4)]
    for backend, mode, weights in plan:
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
        parity = {b: (checks.compare(runs[b, mode], references[b, mode][0]), references[b, mode][1])
                  for b in ("xla-cpu", "iree-cpu")}
        for graph in ("prefill", "decode"):
            xla_runner = runners["xla-cpu", mode]
            rows += lowering_rows(
                name, cfg, mode, graph, bucket, max_seq,
                xla_text=xla_runner.executable(graph, bucket if graph == "prefill" else 0, max_seq).as_text(),
                xla_seconds=xla_runner.compile_seconds[graph],
                iree_cpu_seconds=runners["iree-cpu", mode].compile_seconds, parity=parity,
            )
    llama = load_hf_config(LLAMA32_CONFIG_PATH)
    for mode in ("fp32", "int4"):
        for graph in ("prefill", "decode"):
            log(f"llama-3.2-1b shapes {mode} {graph}: export, XLA-CPU compile")
            rows += lowering_rows("llama-3.2-1b (shapes)", llama, mode, graph, *LLAMA32_SHAPES)
    cuda_runs = load_cuda_results() if model is None else []
    findings["rows"] = merge_cuda_results(rows, cuda_runs, name)
    findings["cuda_runs"] = [{k: r[k] for k in ("file", "date", "machine", "versions", "iree_cuda_target")}
                             | {"tests": f"{sum(t['outcome'] == 'passed' for t in r['tests'])}/{len(r['tests'])} passed"}
                             for r in cuda_runs]
    log("MLX peer: mlx_lm.convert variants, mlx_lm greedy vs our int4 graph")
    findings["mlx_peer"] = mlx_peer_section(path, prompt, n)
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

    from . import bench_report

    findings["benchmarks"] = bench_report.load(RESULTS_DIR)
    from . import fusion_report

    matrix = fusion_report.load(RESULTS_DIR)
    findings["fusion_matrix"] = fusion_report.findings(matrix)
    (out / "findings.json").write_text(json.dumps(findings, indent=2, default=str) + "\n")
    md = (render_markdown(findings) + "\n".join(bench_report.render(findings["benchmarks"], out, findings["rows"]))
          + "\n".join(fusion_report.render(matrix)) + "\n")
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
            f"{fmt['layer0_worst_error_in_scales']:.6f} x the group's scale (bound: 1.0)."
        )
    else:
        lines.append(fmt["note"])
    tol = f["tolerances"]
    cols = ["model", "backend", "quant", "graph", "custom_call", "fused", "dispatches", "materialized_bytes",
            "max_abs_logit_diff", "token_agreement", "reference", "compile_seconds", "note"]
    lines += ["", "## Lowering, parity and agreement", "",
              f"Prompt {f['prompt']['text']!r} ({len(f['prompt']['tokens'])} tokens), "
              f"{checks.GREEDY_TOKENS} greedy tokens. `fused`: does the compiler put the int4 unpack in the "
              f"same kernel as its matmul (`fused`), or does a kernel write the full float weight "
              f"(`materialized`; `materialized_bytes` per call); `no-dequant` for fp32 graphs. `dispatches`: "
              f"IREE dispatches per call. `max_abs_logit_diff` is over the prefill's last position (prefill "
              f"rows) or all decode steps (decode rows), against `reference`. Tolerances: in-graph vs host "
              f"dequant {tol['in_graph_vs_host_dequant']:g}; fp32 reordering (other kernels, same math) "
              f"{tol['fp32_reordering']:g}; cross-compiler target {tol['cross_compiler_target']:g} (see below). "
              f"Llama-3.2-1B rows are exported and compiled from shapes alone (no weights).", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in f["rows"]:
        cells = {c: _fmt(r[c]) for c in cols}
        if r["materialized_bytes"]:
            cells["materialized_bytes"] = f"{r['materialized_bytes'] / 2**20:.1f} MiB"
        lines.append("| " + " | ".join(cells[c] for c in cols) + " |")
    for run in f.get("cuda_runs", []):
        v = run["versions"]
        lines += ["", f"CUDA rows marked 'measured on' come from `{run['file']}`: {run['machine']['device']} "
                  f"(compute capability {run['machine']['compute_capability']}, {run['machine']['nvidia_smi']}), "
                  f"{run['date']}, jax {v.get('jax')}, iree-base-runtime {v.get('iree-base-runtime')}, modules "
                  f"compiled by iree-base-compiler {v.get('iree-base-compiler (compiled the modules)')} for "
                  f"{run['iree_cuda_target']}; `pytest -m cuda` there: {run['tests']}. Other iree-cuda figures "
                  f"(dispatches, verdicts) are compile-only, from this machine."]
    cross = [r for r in f["rows"] if r["backend"] == "iree-cpu" and r["max_abs_logit_diff"] is not None]
    if cross:
        worst = max(r["max_abs_logit_diff"] for r in cross)
        verdict = "within" if worst <= tol["cross_compiler_target"] else "**above**"
        lines += ["", f"IREE-CPU vs XLA-CPU worst |Δlogit| {worst:.3g}: {verdict} the {tol['cross_compiler_target']:g} "
                  f"target. Both compilers run the same fp32 math in different orders; XLA-CPU vs transformers "
                  f"differs by the same order, so this is reordering, not a lowering error (tokens agree 48/48)."]
    lines += ["", "## The smallest graphs (one linear, 256x512, group 64)", "",
              "| representation | custom_call | xla-cpu | iree-cpu | iree-cuda |", "|---|---|---|---|---|"]
    for m in f.get("minimal_graphs", []):
        lines.append(f"| {m['graph']} | {_fmt(m['custom_call'])} | {m['xla-cpu']} | {m['iree-cpu']} | {m['iree-cuda']} |")
    if f.get("mlx_peer"):
        lines += ["", "## MLX peer", "",
                  "Checkpoints made by `mlx_lm.convert` (float32 scales) from the real model, run unchanged "
                  "through our in-graph dequant and compared with mlx_lm's own greedy generation "
                  "(log-probabilities; mlx_lm fuses its quantized matmul). Agreement counts tokens before the "
                  "first divergence; a divergence passes only as a near-tie (our top-2 gap below "
                  f"{2 * checks.FP32_REORDERING_ATOL:g}). At group 128 mlx_lm leaves the 576-wide inputs (q/k/v, "
                  "gate/up, the embedding) in float: they do not divide into groups of 128.", "",
                  "| variant | weight bytes | xla-cpu vs mlx_lm | max Δlogprob | iree-cpu vs mlx_lm | max Δlogprob |",
                  "|---|---|---|---|---|---|"]
        for e in f["mlx_peer"]:
            cells = [e["variant"], f"{e['weight_bytes'] / 2**20:.1f} MiB"]
            for b in ("xla-cpu", "iree-cpu"):
                r = e[b]
                tie = "" if r["first_divergence"] is None else f" (near-tie gap {_fmt(r['top2_gap_at_divergence'])})"
                cells += [f"{r['agreement']}{tie}", _fmt(r["max_abs_logprob_diff"])]
            lines.append("| " + " | ".join(cells) + " |")
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
