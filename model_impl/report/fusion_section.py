"""The fusion matrix in the report: committed ``results/fusion-*.json`` merged into one matrix,
the XLA-CUDA goal checked against it, and what blocked each unfused IREE cell."""

from __future__ import annotations

from pathlib import Path

from .. import checks, env
from ..analyzers import FUSED, MATERIALIZED
from ..backends.spec import BACKENDS
from ..backends.spec import backend as backend_spec
from ..lab.roofline import decode_bytes_read
from ..llama.representations import PALLAS
from ..llama.shapes import llama32_config
from ..llama.weights import specs as weight_specs
from . import results

GOAL_SPEEDUP, STRETCH_SPEEDUP = 1.5, 2.0

# Why IREE 3.13 leaves a representation unfused, from its executable sources (the dequant
# dispatch's body) and the one-linear graphs in tests/lowering/test_int4_forms_lowering.py.
IREE_BLOCKERS = {
    "u32-affine": "dispatch creation: the shift/and/uitofp/mul/add producer is not a pure bit-extend "
    "(u32 -> f32 is not narrower), so it is not cloned into the contraction; it gets a "
    "dequant-only dispatch that stores the f32 weight",
    "u4-affine": "dispatch creation: i4 -> f32 is a bit-extend, but the scale multiply and bias add in the "
    "same generic make the producer more than one; not cloned",
    "u4-affine-io": "as u4-affine; the [in, out] layout changes the dequant's transpose, not the verdict",
    "s4-scale-gsum": "as u4-affine: a scale multiply between the i4 extension and the dot keeps them apart",
    "u4-grouped": "fused, but wrong: convert(ui4 -> f32) + dot_general becomes one linalg contraction with "
    "an i4 operand and the default signed cast (StableHLO input conversion), so codes 8..15 "
    "read as -8..-1",
}


def load(results_dir: Path) -> dict:
    """All fusion results: cells merged by (backend, representation, option), later files win."""
    cells, environments = {}, {}
    for data in results.load(results_dir, "fusion-*.json"):
        if data.get("dtype", "float32") != "float32":
            continue  # the matrix against bf16: vs_bf16_section
        backends = sorted({c["backend"] for c in data["cells"]})
        for b in backends:
            environments[b] = {
                "file": Path(data["file"]).name,
                **data["environment"],
                **{k: data.get(k) for k in ("linear_shape", "linear_chain", "max_seq", "decode_steps")},
            }
        for c in data["cells"]:
            cells[(c["backend"], c["representation"], c["option"])] = c
    rows = []
    for _, r, o in cells:
        if (r, o) not in rows:
            rows.append((r, o))
    tests = results.load(results_dir, "pytest-cuda-fusion-*.json")
    return {"cells": cells, "rows": rows, "environments": environments, "cuda_tests": tests}


def step_bytes(quant: str, pos: int = 32) -> int:
    """Least bytes one Llama-3.2-1B decode step reads (weights, tied fp32 head, KV up to pos)."""
    cfg = llama32_config()
    return decode_bytes_read(cfg, weight_specs(cfg, quant), pos)


def goal(data: dict) -> dict:
    """The XLA-CUDA goal: a configuration >= 1.5x fp32 per decode step, all 112 linears fused,
    logits within 1e-4 of host dequant, 48/48 tokens."""
    qualifying, best = [], None
    for (b, r, o), c in data["cells"].items():
        if b != "xla-cuda" or c.get("skipped") or not c.get("decode_speedup"):
            continue
        ok = (
            c["verdict"] == FUSED
            and c["linears_fused"] == c["linears_total"]
            and c.get("parity_within_atol")
            and c.get("tokens_vs_baseline") == f"{checks.GREEDY_TOKENS}/{checks.GREEDY_TOKENS}"
            and not c.get("custom_call")
        )
        if ok and c["decode_speedup"] >= GOAL_SPEEDUP:
            qualifying.append((r, o, c["decode_speedup"]))
        if ok and (best is None or c["decode_speedup"] > best[2]):
            best = (r, o, c["decode_speedup"])
    return {
        "met": bool(qualifying),
        "qualifying": qualifying,
        "best": best,
        "stretch_met": any(s >= STRETCH_SPEEDUP for *_, s in qualifying),
    }


def _cell_text(c: dict | None) -> str:
    if c is None:
        return "not run"
    if c.get("skipped"):
        return "n/a"
    if c.get("error") and c.get("verdict") is None:
        return f"error: {c['error'][:80]}"
    parts = []
    verdict = c["verdict"] + (" (custom_call)" if c.get("custom_call") else "")
    if c.get("linears_total"):
        verdict += f" {c['linears_fused']}/{c['linears_total']}"
    parts.append(f"**{verdict}**" if c["verdict"] == FUSED else verdict)
    if c.get("materialized_bytes_per_step"):
        parts.append(f"{c['materialized_bytes_per_step'] / 2**20:.0f} MiB/step")
    if c.get("decode_speedup"):
        parts.append(f"step {c['decode_speedup']:.2f}x")
    if c.get("max_abs_logit_diff_vs_host") is not None:
        mark = "ok" if c["parity_within_atol"] else "**over**"
        parts.append(f"Δ {c['max_abs_logit_diff_vs_host']:.1e} {mark}")
    if c.get("tokens_vs_baseline"):
        parts.append(c["tokens_vs_baseline"])
    if c.get("error"):
        parts.append(f"error: {c['error'][:80]}")
    return " · ".join(parts)


def _num(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _ms(s):
    return "—" if s is None else f"{s * 1e3:.4g}"


def render(data: dict) -> list[str]:
    if not data["cells"]:
        return [
            "",
            "## Fusion matrix",
            "",
            "No results/fusion-*.json yet: run `python -m model_impl fusion`.",
        ]
    envs = data["environments"]
    lines = [
        "",
        "## Fusion matrix: which int4 representation each compiler fuses, and what it buys",
        "",
        "Rows: the in-graph representations of the same MLX-format weights "
        "(`model_impl/representations.py`) x compiler options; columns: backends. Each cell, on the "
        "Llama-3.2-1B decode graph (synthetic weights, cache 128): the analyzers' verdict (XLA: "
        "linears whose codes are read only by kernels that also contract, of 112; IREE: dispatches "
        "that unpack and contract, of all that unpack), f32 weight bytes written per step, decode "
        "step time against fp32 on the same backend, max |Δlogit| against host dequant (target "
        f"{checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL:g}) and greedy tokens against the baseline "
        "`u32-affine` run on the same backend.",
        "",
        "| representation | option | " + " | ".join(BACKENDS) + " |",
        "|---|---|" + "---|" * len(BACKENDS),
    ]
    for r, o in data["rows"]:
        lines.append(f"| {r} | {o} | " + " | ".join(_cell_text(data["cells"].get((b, r, o))) for b in BACKENDS) + " |")
    lines += ["", "Where each backend's cells were measured:", ""]
    for b, e in envs.items():
        v = e["versions"]
        lines.append(
            f"- {b}: `{e['file']}`, {env.describe(e)} ({e['machine'].get('node')}), {e['date']}, "
            f"jax {v.get('jax')}"
            + (
                f", iree {e.get('iree_compiler_of_modules') or v.get('iree-base-compiler')}"
                if backend_spec(b).is_iree
                else ""
            )
            + (f" (CUDA target {e['iree_cuda_target']})" if e.get("iree_cuda_target") else "")
            + f"; parity on {_parity_model(data, b)}."
        )
    for t in data.get("cuda_tests", []):
        passed = sum(o["outcome"] == "passed" for o in t["tests"])
        lines.append(
            f"- `pytest tests/cuda -m cuda -k fusion` on {results.where(t)}: {passed}/{len(t['tests'])} passed "
            f"(XLA-CUDA verdict per row pinned; Pallas GEMV vs host dequant max error "
            f"{t['figures'].get('pallas_gemv_max_abs_err', float('nan')):.2g})."
        )
    g = goal(data)
    lines += ["", "### The XLA-CUDA goal", ""]
    if g["met"]:
        names = ", ".join(f"`{r}` ({o}) {s:.2f}x" for r, o, s in sorted(g["qualifying"], key=lambda q: -q[2]))
        lines.append(
            f"**Met** (>= {GOAL_SPEEDUP}x fp32 per decode step, 112/112 linears fused, logits within "
            f"{checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL:g} of host dequant, 48/48 tokens): {names}. "
            f"Stretch ({STRETCH_SPEEDUP}x): {'met' if g['stretch_met'] else 'not met'}."
        )
    else:
        best = g["best"]
        lines.append(
            "**Not met.** Best fully fused, exact configuration: "
            + (f"`{best[0]}` ({best[1]}) {best[2]:.2f}x." if best else "none.")
        )
    lines += _xla_cuda_details(data) + _iree_details(data) + _iree_gap(data) + _timing_table(data)
    return lines


def _iree_gap(data) -> list[str]:
    """What keeps IREE far from its roofline (issue 5), from the fp32 cells of the matrix: the
    speed of one fp32 GEMV, and how much of the step 112 of them account for."""
    lines = []
    weight_bytes = 4 * LINEAR_ELEMENTS
    for iree, xla in (("iree-cpu", "xla-cpu"), ("iree-cuda", "xla-cuda")):
        a = next((c for (b, *_), c in data["cells"].items() if b == iree and c.get("linear_fp32_seconds")), None)
        b = next((c for (b_, *_), c in data["cells"].items() if b_ == xla and c.get("linear_fp32_seconds")), None)
        if not a or not b:
            continue
        ia, xa = a["linear_fp32_seconds"], b["linear_fp32_seconds"]
        lines.append(
            f"- {iree} vs {xla}, fp32: one [8192, 2048] GEMV takes {ia * 1e3:.3g} ms vs {xa * 1e3:.3g} ms "
            f"({weight_bytes / ia / 1e9:.1f} vs {weight_bytes / xa / 1e9:.1f} GB/s, {ia / xa:.1f}x); the decode step "
            f"{a['decode_fp32_seconds'] * 1e3:.4g} ms vs {b['decode_fp32_seconds'] * 1e3:.4g} ms "
            f"({a['decode_fp32_seconds'] / b['decode_fp32_seconds']:.1f}x). The step's weights are "
            f"{step_bytes('fp32') / weight_bytes:.0f} such GEMVs' worth of bytes: at this GEMV's speed they take "
            f"{step_bytes('fp32') / weight_bytes * ia * 1e3:.4g} ms, "
            f"{step_bytes('fp32') / weight_bytes * ia / a['decode_fp32_seconds']:.0%} of IREE's step; the rest is "
            f"the other dispatches and the call itself (see the arguments-vs-globals benchmark)."
        )
    if lines:
        lines = ["", "### What keeps IREE from its roofline", ""] + lines
    return lines


LINEAR_ELEMENTS = 8192 * 2048


def _parity_model(data, backend) -> str:
    models = {c.get("parity_model") for (b, *_), c in data["cells"].items() if b == backend and c.get("parity_model")}
    return ", ".join(sorted(m for m in models if m)) or "—"


def _xla_cuda_details(data) -> list[str]:
    cells = {k[1:]: c for k, c in data["cells"].items() if k[0] == "xla-cuda" and not c.get("skipped")}
    if not cells:
        return []
    fp32 = next(iter(cells.values()))["decode_fp32_seconds"]
    b32, b4 = step_bytes("fp32"), step_bytes("int4")
    lines = [
        "",
        f"Bytes a step must read: fp32 {b32 / 2**30:.2f} GiB, int4 {b4 / 2**30:.2f} GiB (the tied fp32 "
        f"head alone is {4 * 128256 * 2048 / 2**30:.2f} GiB), so int4's ceiling is {b32 / b4:.2f}x fp32. "
        f"fp32 runs at {b32 / fp32 / 1e12:.2f} TB/s.",
    ]
    for (r, o), c in sorted(cells.items(), key=lambda kv: kv[1]["decode_seconds"] or 1e9):
        if c.get("decode_seconds") and r not in CUSTOM_KERNELS:
            lines.append(
                f"- `{r}` ({o}): {c['decode_seconds'] * 1e3:.2f} ms/step = {b4 / c['decode_seconds'] / 1e12:.2f} "
                f"TB/s effective; fused in {c.get('fused_kernels')}."
            )
    name = next((n for n in CUSTOM_KERNELS if (n, "default") in cells), None)
    pallas = cells.get((name, "default"))
    best = goal(data)["best"]
    if pallas and pallas.get("decode_speedup") and best:
        lines.append(
            f"- Reference route `{name}` ({CUSTOM_KERNELS[name]}; a custom_call, prompts "
            f"dequantized in-graph): {pallas['decode_seconds'] * 1e3:.2f} ms/step, "
            f"{pallas['decode_speedup']:.2f}x fp32. The best fused in-graph configuration reaches "
            f"{best[2]:.2f}x: fusion recovers {100 * (best[2] - 1) / max(pallas['decode_speedup'] - 1, 1e-9):.0f}% "
            f"of the kernel's win"
            if pallas["decode_speedup"] > 1
            else f"- Reference route `{name}` ({CUSTOM_KERNELS[name]}): {pallas['decode_seconds'] * 1e3:.2f} ms/step, "
            f"{pallas['decode_speedup']:.2f}x fp32, slower than fp32 and than every fused in-graph cell; "
            f"this kernel sets no bar above what XLA's own fusion already reaches ({best[2]:.2f}x)."
        )
    return lines


# The custom-kernel rows a matrix file may hold: ours, and the one it replaced (older files).
CUSTOM_KERNELS = {
    PALLAS: "our int4 GEMV kernel in Pallas (Triton), the sweep's configuration per shape",
    "pallas-u32": "the planar-layout Pallas/Triton GEMV this suite had until 2026-12-04, untuned: 16 rows per "
    "program, one group-sized slice per step",
}


def _iree_details(data) -> list[str]:
    lines = ["", "### IREE: fused configurations and what blocks the rest", ""]
    for b in ("iree-cpu", "iree-cuda"):
        cells = {k[1:]: c for k, c in data["cells"].items() if k[0] == b and not c.get("skipped")}
        if not cells:
            continue
        fused = [f"`{r}` ({o})" + _parity_note(c) for (r, o), c in cells.items() if c.get("verdict") == FUSED]
        lines.append(f"- {b}: fused: {', '.join(fused) or 'none'}.")
        for (r, o), c in cells.items():
            if c.get("error"):
                lines.append(f"  - `{r}` ({o}): {c['error']}")
            elif c.get("verdict") == MATERIALIZED:
                lines.append(
                    f"  - `{r}` ({o}): materialized, {c['materialized_bytes_per_step'] / 2**20:.0f} MiB/step. "
                    f"{IREE_BLOCKERS.get(r, '')}"
                )
            elif r == "u4-grouped" and not c.get("parity_within_atol"):
                lines.append(
                    f"  - `{r}` ({o}): {IREE_BLOCKERS['u4-grouped']} (|Δlogit| "
                    f"{c['max_abs_logit_diff_vs_host']:.3g}, tokens {c['tokens_vs_baseline']})."
                )
            elif c.get("verdict") == FUSED and not c.get("parity_within_atol") and c.get("max_abs_logit_diff_vs_host"):
                lines.append(
                    f"  - `{r}` ({o}): fused and right to {c['max_abs_logit_diff_vs_host']:.2g} "
                    f"(tokens {c['tokens_vs_baseline']}): over the {checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL:g} "
                    f"target because the grouped contraction reassociates the float32 sums "
                    f"(partial sums per group, then scale)."
                )
    return lines


def _parity_note(c: dict) -> str:
    if c.get("error"):
        return " (lowering only: building the module failed)"
    d = c.get("max_abs_logit_diff_vs_host")
    if d is None or c.get("parity_within_atol"):
        return ""
    if (
        d <= checks.FP32_REORDERING_ATOL
        and c.get("tokens_vs_baseline") == f"{checks.GREEDY_TOKENS}/{checks.GREEDY_TOKENS}"
    ):
        return f" (|Δlogit| {d:.3g}: over the {checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL:g} target, within fp32 reordering)"
    return f" **but wrong** (|Δlogit| {d:.3g}, tokens {c.get('tokens_vs_baseline')})"


def findings(data: dict) -> dict:
    """The matrix as JSON-able findings (cells keyed backend/representation/option)."""
    return {
        "cells": {"/".join(k): c for k, c in data["cells"].items()},
        "environments": data["environments"],
        "xla_cuda_goal": goal(data),
        "cuda_tests": data["cuda_tests"],
    }


def _timing_table(data) -> list[str]:
    lines = [
        "",
        "### Per-cell figures",
        "",
        "`linear`: one [8192, 2048] int4 linear at M=1 (median of a 16-linear chain / 16) and the fp32 one; "
        "`step`: one decode step (XLA-CUDA: a 32-step in-graph loop per dispatch, median of 5; elsewhere one "
        "call per step) and fp32's.",
        "",
        "| backend | representation | option | verdict | fused in | linear ms (fp32) | step ms [min-max] (fp32) | "
        "|Δlogit| | tokens | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (b, r, o), c in data["cells"].items():
        if c.get("skipped"):
            continue
        spread = c.get("decode_spread") or [None, None]
        lines.append(
            f"| {b} | {r} | {o} | {c.get('verdict') or c.get('error', '')[:60]} | {c.get('fused_kernels') or '—'} | "
            f"{_ms(c.get('linear_seconds'))} ({_ms(c.get('linear_fp32_seconds'))}) | "
            f"{_ms(c.get('decode_seconds'))} [{_ms(spread[0])}-{_ms(spread[1])}] "
            f"({_ms(c.get('decode_fp32_seconds'))}) | {_num(c.get('max_abs_logit_diff_vs_host'), '.2g')} | "
            f"{c.get('tokens_vs_baseline') or '—'} | {_num(c.get('compile_seconds'), '.0f')} |"
        )
    return lines
