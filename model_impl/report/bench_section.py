"""The benchmark section of the report: a table per machine, a chart, and the targets."""

from __future__ import annotations

from pathlib import Path

from .. import env
from ..backends.spec import backend as backend_spec

TARGETS = (
    ("XLA-CUDA fp32 decode on Llama-3.2-1B at >= 85% of its roofline", "roofline"),
    ("IREE-CUDA within 1.5x of XLA-CUDA per mode", ("iree-cuda", "xla-cuda", 1.5)),
    ("IREE-CPU within 2x of XLA-CPU per mode", ("iree-cpu", "xla-cpu", 2.0)),
)


def _find(cases, model, backend, quant):
    return next((c for c in cases if (c["model"], c["backend"], c["quant"]) == (model, backend, quant)), None)


def _pipelined_fraction(c: dict) -> float | None:
    piped = c["decode"].get("pipelined_step_s")
    return None if not piped else (1.0 / piped) / c["roofline_tokens_per_s"]


def targets(runs: list[dict]) -> list[str]:
    cases = [c for run in runs for c in run["cases"]]
    lines = []
    fp32 = _find(cases, "llama-3.2-1b", "xla-cuda", "fp32")
    if fp32:
        frac = fp32["fraction_of_roofline"]
        piped = _pipelined_fraction(fp32)
        lines.append(
            f"- {TARGETS[0][0]}: with the token id read back every step **{'met' if frac >= 0.85 else 'not met'}** "
            f"({frac:.0%}); the device-bound step (steps queued, one sync) reaches "
            f"**{piped:.0%}**: the gap is the host's per-step sync and dispatch, not the kernels."
        )
    else:
        lines.append(f"- {TARGETS[0][0]}: not measured (no XLA-CUDA Llama-3.2-1B result).")
    generated = [c for c in cases if c.get("generate") and c["model"] == "llama-3.2-1b" and c["backend"] == "xla-cuda"]
    for c in generated:
        over = c["generate"]["harness_overhead"]
        verdict = "met" if over <= HARNESS_TARGET else "not met"
        lines.append(
            f"- generate path within {HARNESS_TARGET:.0%} of the device-bound step, llama-3.2-1b xla-cuda "
            f"{c['quant']}: **{verdict}** ({over:+.1%} against {c['generate']['device_bound_source']})."
        )
    for text, (slow, fast, bound) in (t for t in TARGETS[1:]):
        for model in sorted({c["model"] for c in cases}):
            for quant in ("fp32", "int4", "bf16", "int4-bf16"):
                a, b = _find(cases, model, slow, quant), _find(cases, model, fast, quant)
                if a and b:
                    ratio = b["decode"]["tokens_per_s"] / a["decode"]["tokens_per_s"]
                    verdict = "met" if ratio <= bound else "not met"
                    lines.append(f"- {text}, {model} {quant}: **{verdict}** ({slow} is {ratio:.2f}x slower).")
    return lines


def explanations(runs: list[dict], rows: list[dict]) -> list[str]:
    """Why int4 decode is far from its roofline, from the lowering verdict of the same graph."""
    lines = []
    for run in runs:
        for c in run["cases"]:
            if not c["quant"].startswith("int4"):
                continue
            model = c["model"] if c["model"] == "smollm2-135m" else "llama-3.2-1b (shapes)"
            low = next(
                (
                    r
                    for r in rows
                    if (r["model"], r["backend"], r["quant"], r["graph"]) == (model, c["backend"], c["quant"], "decode")
                ),
                None,
            )
            if not low or low["fused"] is None:
                continue
            extra = ""
            if low["fused"] == "materialized" and low["materialized_bytes"]:
                extra = (
                    f": every step also writes {low['materialized_bytes'] / 2**20:.0f} MiB of f32 weights "
                    f"(and reads them back), {low['materialized_bytes'] / c['decode_bytes_read']:.1f}x "
                    f"the packed bytes the roofline counts"
                )
            lines.append(
                f"- {c['model']} {c['backend']} int4 at {c['fraction_of_roofline']:.0%} of its roofline: "
                f"dequant {low['fused']}{extra}."
            )
    return lines


def render(runs: list[dict], out_dir: Path, rows: list[dict] | None = None) -> list[str]:
    if not runs:
        return ["", "## Performance", "", "No benchmark results under `results/` yet: run `make bench`."]
    lines = ["", "## Performance (decode batch 1, weights resident, KV cache on the device)", ""]
    for run in runs:
        if not run["cases"]:
            continue
        e = run["environment"]
        lines += [
            f"Machine: **{env.describe(e)}**, {e['date']} (`{run['file']}`), "
            + ", ".join(f"{k} {v}" for k, v in e["versions"].items() if v)
            + ".",
            "",
            "| model | backend | quant | tok/s | ms/token p10-p90 | roofline tok/s | of roofline | "
            "bytes read/step | resident weights | prefill 16 / 64 (ms) | compile prefill / decode (s) | "
            "per-step sync overhead | device-bound tok/s (of roofline) |",
            "|" + "---|" * 13,
        ]
        for c in run["cases"]:
            d = c["decode"]
            comp = c.get("compile_seconds") or {}
            over = d.get("harness_overhead")
            lines.append(
                f"| {c['model']} | {c['backend']} | {c['quant']} | {d['tokens_per_s']:.1f} | "
                f"{d['p10_s'] * 1e3:.2f}-{d['p90_s'] * 1e3:.2f} | {c['roofline_tokens_per_s']:.1f} | "
                f"{c['fraction_of_roofline']:.0%} | {c['decode_bytes_read'] / 2**20:.0f} MiB | "
                f"{c['weight_bytes_resident'] / 2**20:.0f} MiB | "
                f"{c['prefill_seconds']['16'] * 1e3:.1f} / {c['prefill_seconds']['64'] * 1e3:.1f} | "
                f"{_s(comp.get('prefill'))} / {_s(comp.get('decode'))} | "
                f"{'—' if over is None else f'{over:+.1%}'} | {_piped(c)} |"
            )
        lines += generate_table(run["cases"])
        bw = {backend_spec(c["backend"]).platform: c["bandwidth_bytes_per_s"] for c in run["cases"]}
        lines += [
            "",
            "Measured copy bandwidth in the same run: "
            + ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in bw.items())
            + ". Per-step sync overhead: "
            "per-step time with the token id read back every step, against the same steps queued "
            "on the device with one sync at the end (CUDA backends; an IREE call returns when its work "
            "is done, so there both are the same). Compile seconds: XLA, the first call of the graph "
            "(compile and one run); IREE, iree-compile's time when the module was made.",
            "",
        ]
    lines += ["Targets (benchmarks, never asserted in tests):", ""] + targets([r for r in runs if r["cases"]])
    lines += iree_globals_section(runs)
    why = explanations(runs, rows or [])
    if why:
        lines += [
            "",
            "Where int4 stands against its roofline, with the lowering verdict of the same decode graph:",
            "",
        ] + why
    return lines


def iree_globals_section(runs: list[dict]) -> list[str]:
    """IREE-CPU decode with weights as call arguments vs as module globals (parameters)."""
    rows = [(run, g) for run in runs for g in run.get("iree_globals", [])]
    if not rows:
        return []
    lines = [
        "",
        "### IREE-CPU: weights as call arguments vs module globals",
        "",
        "The same decode graph, its weights either passed on every call (what the suite's IREE runner "
        "does) or held as `util.global`s loaded once from a parameter index (`model_impl/iree_globals.py`). "
        "Median per step; tokens agree in every case.",
        "",
        "| machine | model | quant | weight arguments | arguments ms/step | globals ms/step | speed-up | "
        "weights | precomputed at init (hoisted) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, g in rows:
        lines.append(
            f"| {env.describe(run['environment'])} | {g['model']} | {g['quant']} | {g['weight_arguments']} | "
            f"{g['arguments_step_s'] * 1e3:.1f} | {g['globals_step_s'] * 1e3:.1f} | "
            f"{g['arguments_step_s'] / g['globals_step_s']:.2f}x | {g['weight_bytes'] / 2**20:.0f} MiB | "
            f"{g['hoisted_bytes'] / 2**20:.0f} MiB |"
        )
    lines += [
        "",
        "The speed-up is not the cost of passing arguments: with globals, IREE's global optimization "
        "precomputes weight-only work once (`__hoisted_*` tensors): for fp32 the transpose it puts in front "
        "of every `x @ W.T` (with arguments, each step rewrites every weight transposed), for int4 parts of "
        "the dequant (unpacked codes, float weights: 17x the packed bytes on the tiny model), so an int4 "
        "model with globals no longer keeps only its int4 bytes resident.",
    ]
    return lines


def _piped(c: dict) -> str:
    piped = c["decode"].get("pipelined_step_s")
    if not piped:
        return "—"
    return f"{1.0 / piped:.1f} ({_pipelined_fraction(c):.0%})"


def _s(v):
    return "—" if v is None else f"{v:.1f}"


HARNESS_TARGET = 0.10  # issue 14: the generate path within 10% of the device-bound step


def generate_table(cases: list[dict]) -> list[str]:
    """The generate path (device loop, K steps per dispatch, ids streamed back) per case, against
    the best device-bound step of the same run."""
    rows = [c for c in cases if c.get("generate")]
    if not rows:
        return []
    lines = [
        "",
        "Generate path (`generate`: the decode loop on the device, K steps per dispatch, the next "
        "chunk queued before the current one is read; clock from the prefill's token on the host to "
        "the last token on the host) against the best device-bound step measured in the same run:",
        "",
        "| model | backend | quant | K | tokens | generate ms/step | tok/s | device-bound ms/step (source) | "
        f"harness overhead (target <= {HARNESS_TARGET:.0%}) |",
        "|" + "---|" * 9,
    ]
    for c in rows:
        g = c["generate"]
        over = g.get("harness_overhead")
        verdict = "" if over is None else (" ✓" if over <= HARNESS_TARGET else " ✗")
        bound = g.get("device_bound_step_s")
        lines.append(
            f"| {c['model']} | {c['backend']} | {c['quant']} | {g['chunk']} | {g['new_tokens']} | "
            f"{g['step_s'] * 1e3:.2f} | {g['tokens_per_s']:.1f} | "
            f"{'—' if bound is None else f'{bound * 1e3:.2f}'} ({g.get('device_bound_source', '—')}) | "
            f"{'—' if over is None else f'{over:+.1%}'}{verdict} |"
        )
    return lines
