"""Tensor parallelism in the report: the decode step at TP 1 and TP N per shape and mode
(``results/tp-*.json`` from ``python -m model_impl tp``), the collectives XLA's partitioner put
in each step, whether any of them moves weights, their share of the device's kernel time, the
tokens against TP 1, where TP N starts to pay off, and what IREE 3.13 can do instead
(``results/iree-multidevice.json``)."""

from __future__ import annotations

from pathlib import Path

from ..lab.tensor_parallel import speedups
from . import results

SHAPE_ORDER = ("llama-3.2-1b", "llama-3.1-8b")  # smallest first: where TP starts to pay off


def load(results_dir: Path = results.RESULTS_DIR) -> list[dict]:
    return sorted(results.load(results_dir, "tp-*.json"), key=lambda r: r["environment"]["date"])


def pays_off(run: dict) -> dict:
    """Per shape, the range of TP-N speedups over its modes, and the smallest shape from which
    every mode runs faster at TP N than at TP 1 (None when none does)."""
    rows = speedups(run)
    shapes = {}
    for r in rows:
        lo, hi = shapes.get(r["shape"], (float("inf"), 0.0))
        shapes[r["shape"]] = (min(lo, r["speedup_vs_tp1"]), max(hi, r["speedup_vs_tp1"]))
    ordered = sorted(shapes, key=lambda s: SHAPE_ORDER.index(s) if s in SHAPE_ORDER else len(SHAPE_ORDER))
    first = next((s for s in ordered if shapes[s][0] > 1.0), None)
    return {"ranges": shapes, "from_shape": first}


def _ms(s) -> str:
    return "—" if not s else f"{s * 1e3:.2f}"


def _collectives(c: dict) -> str:
    found = (c.get("collectives") or {}).get("collectives") or {}
    return ", ".join(f"{v['count']} {k} ({v['bytes'] / 1024:.0f} KiB)" for k, v in found.items()) or "none"


def render(runs: list[dict], iree: dict | None = None) -> list[str]:
    lines = ["", "## Tensor parallelism (XLA GSPMD over NCCL)", ""]
    if not runs:
        return lines + ["No tensor-parallel results committed."]
    run = runs[-1]
    lines += [
        f"{results.where(run)}; devices {', '.join(run['devices'])}; {run['dtype']} compute, batch 1, "
        f"cache {run['max_seq']} slots. Megatron layout (llama/sharding.py): q/k/v/gate/up and the head by output "
        "rows, o/down by input columns (whole quantization groups), the embedding by vocabulary rows looked up in "
        "the vocab-parallel form, the KV cache by KV head. Steps: the device loop, TP 1 of the same shape and mode "
        "measured on the same machine. Collectives per step from the partitioned HLO "
        "(analyzers/collectives.py); their share: NCCL kernels of GPU 0's kernel time (profiler; an NCCL "
        "kernel's time includes waiting for the other GPU, so the share also counts imbalance).",
        "",
        "| shape | mode | TP | step ms | vs TP 1 | collectives per step | weights | custom_call | collective share "
        "| tokens vs TP 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["shape"], r["mode"], r["tp"]): r["speedup_vs_tp1"] for r in speedups(run)}
    for c in run["cases"]:
        if c.get("error"):
            lines.append(f"| {c['shape']} | {c['mode']} | {c['tp']} | error: {c['error']} |||||||")
            continue
        vs = by_key.get((c["shape"], c["mode"], c["tp"]))
        share = c.get("collective_share")
        tokens = c.get("tokens_vs_tp1") or "—"
        if c.get("tokens_vs_tp1") and c["tokens_vs_tp1"].split("/")[0] != c["tokens_vs_tp1"].split("/")[1]:
            tokens += " (near-tie)" if c.get("tokens_agree_or_near_tie") else " (**not a near-tie**)"
        coll = c.get("collectives") or {}
        lines.append(
            f"| {c['shape']} | {c['mode']} | {c['tp']} | {_ms(c.get('step_seconds'))} | "
            f"{'—' if vs is None else f'**{vs:.2f}x**'} | {_collectives(c)} | {coll.get('verdict', '—')} | "
            f"{coll.get('custom_calls', '—')} | {'—' if share is None else f'{share:.0%}'} | {tokens} |"
        )
    p = pays_off(run)
    ranges = "; ".join(f"{s} {lo:.2f}-{hi:.2f}x" for s, (lo, hi) in p["ranges"].items())
    lines += [
        "",
        f"TP {max(c['tp'] for c in run['cases'])} against TP 1 by shape (over the modes): {ranges}. "
        + (
            f"It starts to pay off at {p['from_shape']}."
            if p["from_shape"]
            else "It pays off at none of the measured shapes."
        ),
    ]
    plain = run.get("plain_gather_cases") or []
    moved = [c for c in plain if (c.get("collectives") or {}).get("verdict") == "weights move"]
    if moved:
        c = moved[0]
        w = c["collectives"]["weight_collectives"][0]
        lines += [
            "",
            f"Before the vocab-parallel lookup (an earlier run, another machine of the same kind; plain `jnp.take` "
            "from the vocab-sharded table): "
            f"{len(moved)}/{len(plain)} sharded cases moved weights: {w['kind']} of {', '.join(w['weights'])} "
            f"`{w['shape']}` ({w['bytes'] / 2**20:.0f} MiB per device per step, at `{w['op_name']}`); "
            f"{c['shape']} {c['mode']} TP {c['tp']} took {_ms(c['step_seconds'])} ms "
            f"({c.get('collective_share', 0):.0%} of kernel time in collectives). XLA-CPU (jaxlib 0.10.2) "
            "partitions the same gather locally; the graphs now use the vocab-parallel form on every backend.",
        ]
    if iree:
        lines += ["", f"IREE: {iree['verdict']} (`{iree['file']}`)"]
    return lines


def findings(runs: list[dict]) -> dict:
    if not runs:
        return {}
    return {"file": runs[-1]["file"], "speedups": speedups(runs[-1]), "pays_off": pays_off(runs[-1])}
