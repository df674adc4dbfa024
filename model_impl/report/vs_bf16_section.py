"""The matrix against half precision in the report: int4 forms set against the fastest dense
bf16 form of the same run (``results/fusion-*.json`` with ``"dtype": "bfloat16"``), the torch
anchors and the copy bandwidth of the same run, the batched figures, and the target's verdict."""

from __future__ import annotations

import collections
from pathlib import Path

from .. import checks, decide
from ..llama.shapes import llama32_config
from ..llama.weights import linear_shapes
from . import results

TARGET, STRETCH, ROOFLINE_TARGET = decide.TARGET, decide.STRETCH, decide.ROOFLINE_TARGET


def load(results_dir: Path = results.RESULTS_DIR) -> list[dict]:
    """The half-precision matrix files, oldest first."""
    runs = [r for r in results.load(results_dir, "fusion-*.json") if r.get("dtype", "float32") != "float32"]
    return sorted(runs, key=lambda r: r["environment"]["date"])


def qualifies(cell: dict) -> bool:
    """A timed matrix cell that passes :func:`model_impl.decide.qualifies` (the one rule)."""
    return bool(not cell.get("skipped") and cell.get("speedup_vs_bf16") and decide.qualifies(cell))


def target(runs: list[dict]) -> dict:
    """The best qualifying XLA-CUDA cell and the fastest cell at all, with whether each target
    is met."""
    cells = [(r, c) for r in runs for c in r["cells"] if c["backend"] == "xla-cuda" and c.get("speedup_vs_bf16")]
    ok = [(r, c) for r, c in cells if qualifies(c)]
    best = max(ok, key=lambda rc: rc[1]["speedup_vs_bf16"], default=None)
    fastest = max(cells, key=lambda rc: rc[1]["speedup_vs_bf16"], default=None)

    def brief(rc):
        if rc is None:
            return None
        r, c = rc
        return {
            "representation": c["representation"],
            "option": c["option"],
            "head": c["head"],
            "speedup_vs_bf16": c["speedup_vs_bf16"],
            "roofline_fraction": c.get("roofline_fraction"),
            "file": r["file"],
        }

    s = best[1]["speedup_vs_bf16"] if best else 0.0
    return {
        "best_qualifying": brief(best),
        "fastest": brief(fastest),
        "met": s >= TARGET,
        "stretch_met": s >= STRETCH,
        "roofline_met": bool(best and (best[1].get("roofline_fraction") or 0) >= ROOFLINE_TARGET),
    }


def _ms(s) -> str:
    return "—" if not s else f"{s * 1e3:.2f}"


def _tokens(cell: dict) -> str:
    text = cell.get("tokens_vs_baseline") or "—"
    gap = cell.get("tokens_gap_at_divergence")
    if gap is not None:
        text += f" ({'near-tie' if cell.get('tokens_agree_or_near_tie') else 'not a near-tie'}, gap {gap:.2g})"
    return text


def _anchor_lines(run: dict) -> list[str]:
    a = run.get("anchors") or {}
    if not a or a.get("skipped"):
        return [f"Torch anchors: not measured ({a.get('skipped', 'no GPU in the run')})."]
    layouts = [s for s in ("", "-stacked") if all(f"torch-bf16{s}" in row for row in a["batches"].values())]
    names = {"": "7 per layer", "-stacked": "stacked: q|k|v and gate|up as one each, 4 per layer"}
    lines = [
        f"Torch anchors, same run ({a['device']}, torch {a['torch']}; tinygemm checked against a bf16 dequant: "
        f"max error {a['tinygemm_check']['max_abs_err']:g}); the step's linears alone "
        f"({'; '.join(names[s] for s in layouts)}; + the head), one CUDA graph:",
        "",
        "| batch | layout | torch bf16 (cuBLAS) ms | torch int4 tinygemm ms | tinygemm vs torch bf16 |",
        "|---|---|---|---|---|",
    ]
    for b, row in a["batches"].items():
        for s in layouts:
            t, i = row[f"torch-bf16{s}"], row[f"torch-int4-tinygemm{s}"]
            lines.append(
                f"| {b} | {'stacked' if s else 'unstacked'} | {_ms(t['step_linears_seconds'])} | "
                f"{_ms(i['step_linears_seconds'])} | {i['speedup_vs_torch_bf16']:.2f}x |"
            )
    return lines


def _batch_lines(run: dict) -> list[str]:
    rows = [(b, v) for b, v in (run.get("batched") or {}).items() if isinstance(v, dict) and "skipped" not in v]
    if not rows:
        return []
    lines = [
        "",
        f"Batched decode (per batched step) and a 64-token prefill, same run (`{run['file']}`); "
        "ratio = dense bf16 / int4:",
        "",
    ]
    for backend, cases in rows:
        dense = cases.get("dense:dot", {})
        keys = [k for k in dense if k != "error"]
        lines += ["| " + backend + " form | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, figs in cases.items():
            cols = []
            for k in keys:
                v = figs.get(k)
                ratio = f" ({dense[k] / v:.2f}x)" if v and name != "dense:dot" else ""
                cols.append(f"{_ms(v)}{ratio}")
            lines.append(f"| {name} | " + " | ".join(cols) + " |")
    return lines


def load_related(results_dir: Path = results.RESULTS_DIR) -> dict:
    """The other studies the section renders beside the matrix (loaded here, rendered there)."""
    return {
        "pallas": results.load(results_dir, "pallas-gemv-*.json"),
        "stacked": results.load(results_dir, "gemv-stacked-shapes-*.json"),
        "iree_speed": results.load(results_dir, "iree-cuda-speed-*.json"),
    }


def render(runs: list[dict], related: dict | None = None) -> list[str]:
    related = related or {}
    if not runs:
        return ["", "## int4 against bf16: the matrix", "", "No half-precision matrix results committed."]
    t = target(runs)
    lines = [
        "",
        "## int4 against bf16: the matrix (Llama-3.2-1B shapes, bf16 compute, decode batch 1)",
        "",
        "Each cell's `vs bf16` is the fastest dense bf16 form measured in the same run (the dot and the GEMV "
        "written as multiply + reduce) / the cell's step, both in the same 32-step in-graph loop; the roofline "
        "uses the run's best copy (a memcpy-class torch copy or XLA's own, whichever moved more). `linears`: the "
        "step's linears alone. Parity: max |Δlogit| against the host dequant in bf16, held to the bf16 logit "
        f"bound ({checks.logit_atol('bfloat16'):g}); tokens against the baseline form (u32-affine).",
        "",
    ]
    for run in runs:
        base = run.get("baselines", {})
        for backend, b in base.items():
            parts = ", ".join(f"{k} {_ms(v['seconds'])} ms" for k, v in b.items())
            lines.append(f"- `{run['file']}` {backend} dense steps: {parts}")
        if run.get("bandwidth_bytes_per_s"):
            memcpy = (run.get("anchors") or {}).get("bandwidth_bytes_per_s")
            lines.append(
                f"  bandwidth {run['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s "
                f"(memcpy {memcpy / 1e12 if memcpy else 0:.2f}, XLA copy {run['xla_copy_bytes_per_s'] / 1e12:.2f})"
            )
    lines += [
        "",
        "| backend | form | head | step ms | vs bf16 | roofline | linears ms | dequant | |Δlogit| vs host | tokens "
        "| file |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for c in run["cells"]:
            if c.get("skipped"):
                continue
            rep = c["representation"] + ("" if c["option"] == "default" else f" [{c['option']}]")
            if c.get("error"):
                lines.append(f"| {c['backend']} | {rep} | {c['head']} | error: {c['error']} |||||||`{run['file']}` |")
                continue
            vs = f"**{c['speedup_vs_bf16']:.2f}x**" if c.get("speedup_vs_bf16") else "—"
            roof = f"{c['roofline_fraction']:.0%}" if c.get("roofline_fraction") else "—"
            diff = c.get("max_abs_logit_diff_vs_host")
            within = "" if c.get("parity_within_atol") else " (over)"
            lines.append(
                f"| {c['backend']} | {rep} | {c['head']} | {_ms(c['decode_seconds'])} | {vs} | {roof} | "
                f"{_ms(c.get('step_linears_seconds'))} | {c['verdict']} {c['linears_fused']}/{c['linears_total']} | "
                f"{'—' if diff is None else f'{diff:.2g}'}{within} | {_tokens(c)} | "
                f"`{run['file']}` |"
            )
    best, fastest = t["best_qualifying"], t["fastest"]
    verdict = "met" if t["met"] else "**not met**"
    lines += [
        "",
        f"Target (XLA-CUDA): int4 >= {TARGET}x the best bf16 (stretch {STRETCH}x), every linear fused, no custom_call, "
        f"parity within bound, 48/48: {verdict}. "
        + (
            f"Best qualifying: {best['representation']} (head {best['head']}) {best['speedup_vs_bf16']:.2f}x. "
            if best
            else "No cell qualifies. "
        )
        + (
            f"Fastest of all: {fastest['representation']} (head {fastest['head']}) {fastest['speedup_vs_bf16']:.2f}x."
            if fastest
            else ""
        ),
        "",
    ]
    if not t["met"]:
        lines += _what_stops(runs)
    with_anchors = [r for r in runs if (r.get("anchors") or {}).get("batches")] or runs[-1:]
    measured = lambda r: any(isinstance(v, dict) and "skipped" not in v for v in r.get("batched", {}).values())  # noqa: E731
    with_batches = [r for r in runs if measured(r)]
    lines += _anchor_lines(with_anchors[-1]) + [x for r in with_batches for x in _batch_lines(r)]
    return (
        lines
        + pallas_gemv_lines(related.get("pallas", []))
        + stacked_gemv_lines(related.get("stacked", []))
        + iree_cuda_lines(related.get("iree_speed", []))
    )


IREE_TARGET = 2.0  # IREE-CUDA's decode step within this factor of XLA-CUDA's (bf16)


def iree_cuda_lines(runs: list[dict], top: int = 12) -> list[str]:
    """IREE-CUDA's decode step against XLA-CUDA bf16 of the same machine: every layout, form and
    IREE option timed (byte-identical modules folded into one row), and the target's verdict."""
    if not runs:
        return []
    run = runs[-1]
    xla = run["xla_cuda_bf16_step_s"]
    best = run["best"]
    lines = [
        "",
        f"IREE-CUDA against XLA-CUDA (bf16 decode step, batch 1; {results.where(run)}; IREE {run['iree_compiler']}, "
        f"target {run['cuda_target']}): XLA bf16 "
        + ", ".join(f"{k.split(':')[1]} {_ms(v)} ms" for k, v in xla.items())
        + ". IREE runs one synced call per step; its empty-step floor is the `call-overhead` row.",
        "",
        "| IREE variant | step ms | vs XLA bf16 | dispatches | transposes | dequant |",
        "|---|---|---|---|---|---|",
    ]
    shown = [v for v in run["variants"] if not v.get("same_module_as")][:top]
    for v in shown:
        lines.append(
            f"| {v['id']} | {_ms(v['step_s'])} | {v['ratio_vs_xla_bf16']:.1f}x | {v['dispatches']} | "
            f"{v['transposes']} | {v['dequant_verdict']} |"
        )
    same = [v["id"] for v in run["variants"] if v.get("same_module_as")]
    failed = run.get("failed_to_compile") or []
    met = best["ratio_vs_xla_bf16"] <= IREE_TARGET
    lines += [
        "",
        f"Target (within {IREE_TARGET:g}x of XLA-CUDA): {'met' if met else '**not met**'}: best {best['id']} "
        f"{_ms(best['step_s'])} ms = {best['ratio_vs_xla_bf16']:.1f}x; best int4 {run['best_int4']['id']} "
        f"{run['best_int4']['ratio_vs_xla_bf16']:.1f}x."
        + (f" Options that compile to a byte-identical module: {', '.join(same)}." if same else "")
        + "".join(f" {f['id']} fails to compile: {f['error']}" for f in failed),
    ]
    return lines


# current-pallas: the planar-layout kernel that the Triton kernel replaced (runs before 2026-12-05);
# pallas-best: the Triton kernel's best variant; mosaic-best: the Mosaic GPU variant's
PALLAS_FAMILIES = (
    "xla-dot", "xla-reduce", "xla-u4-magic", "xla-u32-word", "current-pallas", "pallas-best", "mosaic-best"
)  # fmt: skip


def pallas_gemv_lines(runs: list[dict]) -> list[str]:
    """The tuned Pallas int4 GEMV sweep (``python -m model_impl pallas-sweep``), each machine's
    newest run per batch (:func:`_pallas_run_lines`)."""
    newest = {}
    for run in runs:
        gpu = (run["environment"]["machine"].get("gpu"), run["config"].get("batch", 1))
        if gpu not in newest or run["environment"]["date"] > newest[gpu]["environment"]["date"]:
            newest[gpu] = run
    return [line for run in newest.values() for line in _pallas_run_lines(run)]


def _pallas_run_lines(run: dict) -> list[str]:
    """One sweep: per Llama-3.2-1B linear shape the best of each family against XLA's bf16 GEMV
    of the same run, the step's linears summed over the shapes' counts, and whether the tuned
    kernel beats the in-graph forms."""
    bw = run["memory_bandwidth"]
    invalid = sum(1 for r in run["rows"] if r.get("invalid"))
    wrong = sum(1 for r in run["rows"] if not (r.get("check") or {}).get("ok", True))
    lines = [
        "",
        f"Pallas int4 GEMV sweep against XLA ({results.where(run)}; every GEMV of a timed loop consumed, weights "
        f"from HBM; {len(run['rows'])} rows, {wrong} wrong against the host dequant, {invalid} faster than the "
        f"run's own bandwidth ({bw['copy_gb_per_s']:.0f} GB/s copy) and left out). Per GEMV at "
        f"{run['config'].get('batch', 1)} activation row(s), us (vs XLA bf16 dot):",
        "",
        "| shape [out, in] | " + " | ".join(PALLAS_FAMILIES) + " | best Pallas variant |",
        "|---|" + "---|" * (len(PALLAS_FAMILIES) + 1),
    ]
    for shape, best in run["best"].items():
        cols = [
            f"{best[f]['seconds'] * 1e6:.2f} ({best[f]['speedup_vs_xla_bf16']:.2f}x)" if f in best else "—"
            for f in PALLAS_FAMILIES
        ]
        lines.append(f"| {shape} | " + " | ".join(cols) + f" | {best.get('pallas-best', {}).get('name', '—')} |")
    fams = run["step_estimate"]["families"]
    step = ", ".join(
        f"{f} {_ms(fams[f]['with_head_s'])} ms ({fams[f]['speedup_vs_xla_bf16']:.2f}x)"
        for f in PALLAS_FAMILIES
        if f in fams
    )
    in_graph = max((fams[f]["speedup_vs_xla_bf16"] for f in ("xla-u4-magic", "xla-u32-word") if f in fams), default=0.0)
    tuned = fams.get("pallas-best", {}).get("speedup_vs_xla_bf16", 0.0)
    lines += [
        "",
        f"The step's linears (each shape's count, bf16 head): {step}. The tuned Pallas GEMV "
        + (
            f"beats the best in-graph int4 form ({tuned:.2f}x against {in_graph:.2f}x)"
            if tuned > in_graph
            else f"does not beat the best in-graph int4 form ({tuned:.2f}x against {in_graph:.2f}x)"
        )
        + f" and {'meets' if tuned >= TARGET else 'misses'} the {TARGET}x target on the linears alone.",
    ]
    return lines


def _stacked_lines(runs: list[dict]) -> list[str]:
    """Stacked projections against the same forms unstacked, within one run: the dense bf16
    step and every int4 form measured both ways."""
    out = []
    for run, (backend, dense) in ((r, b) for r in runs for b in r.get("baselines", {}).items()):
        plain = [v["seconds"] for k, v in dense.items() if k.startswith("bfloat16:") and "+" not in k]
        stacked = [v["seconds"] for k, v in dense.items() if k.startswith("bfloat16:") and k.endswith("+stacked")]
        if not (plain and stacked):
            continue
        cells = {
            (c["representation"], c["head"], c["option"]): c
            for c in run["cells"]
            if c.get("decode_seconds") and c["backend"] == backend
        }
        pairs = []
        for (r, h, o), c in cells.items():
            if o == "default" and (r, h, "stacked") in cells:
                a, b = c["decode_seconds"], cells[r, h, "stacked"]["decode_seconds"]
                pairs.append(f"{r} (head {h}) {_ms(a)} -> {_ms(b)} ms ({(b - a) * 1e6:+.0f} us)")
        a, b = min(plain), min(stacked)
        out.append(
            f"- Stacked projections (q|k|v and gate|up as one GEMV each, {backend}, `{run['file']}`): dense bf16 "
            f"{_ms(a)} -> {_ms(b)} ms ({(b - a) * 1e6:+.0f} us)" + (f"; int4 {', '.join(pairs)}" if pairs else "") + "."
        )
    return out


# GEMVs per decode step of Llama-3.2-1B with stacked projections, by shape "OUTxIN" (the sweep's keys)
STACKED_STEP = collections.Counter(
    f"{o}x{i}"
    for o, i in linear_shapes(llama32_config(), stacked=True).values()
    for _ in range(llama32_config().num_layers)
)


def stacked_gemv_estimate(run: dict) -> dict | None:
    """The step's linears (no head) summed over the stacked shapes from a GEMV sweep of those
    shapes (``results/gemv-stacked-shapes-*.json``): seconds per family, the dense bf16 best of
    the dot and the reduce per shape, and the in-graph int4 best per shape (a per-linear mix)."""
    best = run["best"]
    if not all(s in best for s in STACKED_STEP):
        return None
    t = lambda s, f: best[s][f]["seconds"] if f in best[s] else None  # noqa: E731
    total = lambda pick: sum(n * pick(s) for s, n in STACKED_STEP.items())  # noqa: E731
    out = {"bf16-best": total(lambda s: min(t(s, "xla-dot"), t(s, "xla-reduce")))}
    for fam in ("xla-u4-magic", "xla-u32-word", "pallas-best"):
        if all(t(s, fam) for s in STACKED_STEP):
            out[fam] = total(lambda s, f=fam: t(s, f))
    out["in-graph-best-per-shape"] = total(lambda s: min(t(s, "xla-u4-magic"), t(s, "xla-u32-word")))
    return out


def stacked_gemv_lines(runs: list[dict]) -> list[str]:
    if not runs or not (est := stacked_gemv_estimate(runs[-1])):
        return []
    base = est["bf16-best"]
    parts = ", ".join(f"{k} {v * 1e3:.2f} ms ({base / v:.2f}x)" for k, v in est.items() if k != "bf16-best")
    return [
        "",
        f"The same sweep on the stacked shapes ({results.where(runs[-1])}), the step's linears without the head: "
        f"bf16 best {base * 1e3:.2f} ms; {parts}.",
    ]


# The cases int4 is set against bf16 in, smallest first (the matrix's batched keys: fusion_matrix.BATCHES
# and PREFILL_BUCKET)
def _what_stops(runs: list[dict]) -> list[str]:
    """The measurements that say why the target is missed: the step's linears alone against
    tinygemm in the same run, and how many of them the whole step fuses (the per-kernel rates
    are the verdict's profile and the performance reproducers', :mod:`.verdict_section`)."""
    lines = ["What stops it, from these runs:", ""]
    cells = [(r, c) for r in runs for c in r["cells"] if c.get("step_linears_seconds")]
    if cells:
        r, c = min(cells, key=lambda rc: rc[1]["step_linears_seconds"])
        key = "torch-int4-tinygemm" + ("-stacked" if c["option"] == "stacked" else "")  # the same layout
        tiny = lambda run: (((run.get("anchors") or {}).get("batches") or {}).get("1") or {}).get(key)  # noqa: E731
        other = next((x for x in reversed(runs) if tiny(x)), None)
        if tiny(r):
            versus = f" (torch tinygemm in the same run: {_ms(tiny(r)['step_linears_seconds'])} ms)"
        elif other:
            versus = (
                f" (torch tinygemm in another run on the same kind of machine, `{other['file']}`: "
                f"{_ms(tiny(other)['step_linears_seconds'])} ms)"
            )
        else:
            versus = ""
        lines.append(
            f"- The fastest int4 linears alone: {c['representation']}"
            + ("" if c["option"] == "default" else f" [{c['option']}]")
            + f" (head {c['head']}{'; tinygemm keeps a bf16 head' if c['head'] == 'int4' and versus else ''}) "
            f"{_ms(c['step_linears_seconds'])} ms{versus}; in the whole decode step XLA fuses "
            f"{c['linears_fused']} of its {c['linears_total']} linears that way and the step takes "
            f"{_ms(c['decode_seconds'])} ms ({c['speedup_vs_bf16']:.2f}x)."
        )
    lines += _stacked_lines(runs)
    return lines + [""]


def findings(runs: list[dict]) -> dict:
    """The matrix files' target verdict (per machine, the decision is :mod:`.verdict_section`'s)."""
    return {"files": [r["file"] for r in runs], "target": target(runs) if runs else None}
