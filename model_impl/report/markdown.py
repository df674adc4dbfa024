"""The findings as markdown: model, format, the lowering/parity table, minimal graphs, the
MLX peer, int4 against fp32 (the benchmark and fusion sections have modules of their own)."""

from __future__ import annotations

from .. import checks, env
from . import decide_section, half_section
from .results import ROW_KEYS


def _fmt(v):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def render_markdown(f: dict, opening: list[str] = ()) -> str:
    """``opening``: the lines that lead the report (the per-machine decision)."""
    environment, m, fmt = f["environment"], f["model"], f["format"]
    cfg = m["config"]
    lines = [
        "# Findings: in-graph int4 dequant through JAX/StableHLO/XLA/IREE",
        "",
        f"Generated {environment['date']} on `{environment['machine']['node']}` "
        f"({env.describe(environment)}). Versions: "
        + ", ".join(f"{k} {v}" for k, v in environment["versions"].items() if v)
        + ".",
        *opening,
        *decide_section.render(f),
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
    cols = [c for c in ROW_KEYS if c != "first_divergence"]
    lines += [
        "",
        "## Lowering, parity and agreement",
        "",
        f"Prompt {f['prompt']['text']!r} ({len(f['prompt']['tokens'])} tokens), "
        f"{checks.GREEDY_TOKENS} greedy tokens. `fused`: does the compiler put the int4 unpack in the "
        f"same kernel as its matmul (`fused`), or does a kernel write the full float weight "
        f"(`materialized`; `materialized_bytes` per call); `no-dequant` for fp32 graphs. `dispatches`: "
        f"IREE dispatches per call. `max_abs_logit_diff` is over the prefill's last position (prefill "
        f"rows) or all decode steps (decode rows), against `reference`. Tolerances: in-graph vs host "
        f"dequant {tol['in_graph_vs_host_dequant']:g}; fp32 reordering (other kernels, same math) "
        f"{tol['fp32_reordering']:g}; cross-compiler target {tol['cross_compiler_target']:g} (see below). "
        f"Llama-3.2-1B rows are exported and compiled from shapes alone (no weights).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in f["rows"]:
        cells = {c: _fmt(r[c]) for c in cols}
        if r["materialized_bytes"]:
            cells["materialized_bytes"] = f"{r['materialized_bytes'] / 2**20:.1f} MiB"
        lines.append("| " + " | ".join(cells[c] for c in cols) + " |")
    for run in f.get("cuda_runs", []):
        e = run["environment"]
        v = e["versions"]
        lines += [
            "",
            f"CUDA rows marked 'measured on' come from `{run['file']}`: {env.describe(e)} "
            f"(compute capability {e['machine'].get('compute_capability')}, driver {e['machine'].get('driver')}), "
            f"{e['date']}, jax {v.get('jax')}, iree-base-runtime {v.get('iree-base-runtime')}, modules "
            f"compiled by iree-base-compiler {e.get('iree_compiler_of_modules')} for "
            f"{e.get('iree_cuda_target')}; `pytest -m cuda` there: {run['tests']}. Other iree-cuda figures "
            f"(dispatches, verdicts) are compile-only, from this machine.",
        ]
    cross = [r for r in f["rows"] if r["backend"] == "iree-cpu" and r["max_abs_logit_diff"] is not None]
    if cross:
        worst = max(r["max_abs_logit_diff"] for r in cross)
        verdict = "within" if worst <= tol["cross_compiler_target"] else "**above**"
        lines += [
            "",
            f"IREE-CPU vs XLA-CPU worst |Δlogit| {worst:.3g}: {verdict} the {tol['cross_compiler_target']:g} "
            f"target. Both compilers run the same fp32 math in different orders; XLA-CPU vs transformers "
            f"differs by the same order, so this is reordering, not a lowering error (tokens agree 48/48).",
        ]
    lines += [
        "",
        "## The smallest graphs (one linear, 256x512, group 64)",
        "",
        "| representation | custom_call | xla-cpu | iree-cpu | iree-cuda |",
        "|---|---|---|---|---|",
    ]
    for m in f.get("minimal_graphs", []):
        lines.append(
            f"| {m['graph']} | {_fmt(m['custom_call'])} | {m['xla-cpu']} | {m['iree-cpu']} | {m['iree-cuda']} |"
        )
    if f.get("mlx_peer"):
        lines += [
            "",
            "## MLX peer",
            "",
            "Checkpoints made by `mlx_lm.convert` from the real model (`--dtype` float32, and float16 / "
            "bfloat16 as mlx-community ships them), run unchanged, in their own dtype, through our in-graph "
            "dequant and compared with mlx_lm's own greedy generation (log-probabilities; mlx_lm fuses its "
            "quantized matmul). Before any token, mlx_lm's effective model arguments are compared with our "
            "config (`config differences`: every field that differs, by name). Agreement counts tokens "
            "before the first divergence; a divergence passes only as a near-tie (our top-2 gap below "
            f"{checks.near_tie_gap('float32'):g} in float32, {checks.near_tie_gap('float16'):g} in float16, "
            f"{checks.near_tie_gap('bfloat16'):g} in bfloat16: twice the dtype's logit bound). At group 128 "
            "mlx_lm leaves the 576-wide inputs (q/k/v, gate/up, the embedding) in float: they do not divide "
            "into groups of 128.",
            "",
            "| variant | weight bytes | config differences | xla-cpu vs mlx_lm | max Δlogprob | iree-cpu vs mlx_lm "
            "| max Δlogprob |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in f["mlx_peer"]:
            diff = e.get("config_differences") or {}
            cells = [
                e["variant"],
                f"{e['weight_bytes'] / 2**20:.1f} MiB",
                ", ".join(f"{k}: ours {v[0]}, mlx_lm {v[1]}" for k, v in diff.items()) or "none",
            ]
            for b in ("xla-cpu", "iree-cpu"):
                r = e[b]
                tie = "" if r["first_divergence"] is None else f" (near-tie gap {_fmt(r['top2_gap_at_divergence'])})"
                cells += [f"{r['agreement']}{tie}", _fmt(r["max_abs_logprob_diff"])]
            lines.append("| " + " | ".join(cells) + " |")
    lines += half_section.render(f.get("half_precision", {}))
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
