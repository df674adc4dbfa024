"""The report's opening: what an engineer choosing between int4 and bf16 weights on this route
needs, per backend, on the Llama-3.2-1B shapes: speed, memory, token agreement, fusion."""

from __future__ import annotations

import dataclasses

from ..backends.spec import BACKENDS
from ..llama.linears import tensor_bytes
from ..llama.shapes import llama32_config
from ..llama.weights import specs
from . import results

MODEL = "llama-3.2-1b"
SHAPES_MODEL = "llama-3.2-1b (shapes)"


def _bench(runs: list[dict], backend: str, mode: str) -> dict | None:
    cases = [(r, c) for r in runs for c in r.get("cases", [])]
    found = [(r, c) for r, c in cases if (c["model"], c["backend"], c["quant"]) == (MODEL, backend, mode)]
    found.sort(key=lambda rc: rc[0]["environment"]["date"])  # the newest run of the case
    return found[-1] if found else None


def _speed(runs: list[dict], backend: str) -> str:
    a, b = _bench(runs, backend, "int4-bf16"), _bench(runs, backend, "bf16")
    if not a or not b:
        return "not measured"
    ca, cb = a[1], b[1]
    ga, gb = ca.get("generate"), cb.get("generate")
    if ga and gb:  # the generate path (device loop) and the best device-bound step of the run
        text = f"generate {ga['tokens_per_s']:.0f} vs {gb['tokens_per_s']:.0f} tok/s"
        text += f" (**{gb['step_s'] / ga['step_s']:.2f}x**, {ga['chunk']} steps per dispatch)"
        da, db = ga["device_bound_step_s"], gb["device_bound_step_s"]
        text += f"; device-bound {1 / da:.0f} vs {1 / db:.0f} tok/s (**{db / da:.2f}x**)"
        return text + f" [{results.where(a[0])}]"
    text = f"{ca['decode']['tokens_per_s']:.1f} vs {cb['decode']['tokens_per_s']:.1f} tok/s synced"
    text += f" (**{ca['decode']['tokens_per_s'] / cb['decode']['tokens_per_s']:.2f}x**)"
    pa, pb = ca["decode"].get("pipelined_step_s"), cb["decode"].get("pipelined_step_s")
    if pa and pb:
        text += f"; device-bound {1 / pa:.0f} vs {1 / pb:.0f} tok/s (**{pb / pa:.2f}x**)"
    return text + f" [{results.where(a[0])}]"


def _fused(rows: list[dict], runs_cuda: list[dict], backend: str) -> str:
    row = next(
        (
            r
            for r in rows
            if (r["model"], r["backend"], r["quant"], r["graph"]) == (SHAPES_MODEL, backend, "int4-bf16", "decode")
        ),
        None,
    )
    if row is None:
        for run in runs_cuda:
            low = run.get("lowering", {}).get(f"{backend}/int4-bf16/decode/{MODEL}")
            if low:
                row = {"fused": low["verdict"], "materialized_bytes": low["materialized_bytes"]}
    if row is None or row.get("fused") is None:
        return "not measured"
    extra = f", {row['materialized_bytes'] / 2**20:.0f} MiB/step rebuilt" if row.get("materialized_bytes") else ""
    return f"{row['fused']}{extra}"


def _agreement(half: dict, runs_cuda: list[dict], backend: str) -> str:
    q = (half.get("bfloat16") or {}).get("int4_vs_dense")
    text = "—" if not q else f"int4 vs bf16 {q['agreement']} (SmolLM2, XLA-CPU)"
    if backend.endswith("cuda"):
        figs = [r["figures"].get(f"{backend}/bf16") for r in runs_cuda if r["figures"].get(f"{backend}/bf16")]
        text += (
            f"; bf16 vs XLA-CPU {figs[-1]['token_agreement_vs_xla_cpu']}" if figs else "; GPU bf16 run: not measured"
        )
    return text


def render(f: dict) -> list[str]:
    cfg = dataclasses.replace(llama32_config(), dtype="bfloat16")
    bf16, int4 = tensor_bytes(specs(cfg, "dense")), tensor_bytes(specs(cfg, "int4"))
    runs, rows, half = f.get("benchmarks", []), f.get("rows", []), f.get("half_precision", {})
    cuda = f.get("cuda_runs", [])
    lines = [
        "",
        "## What to decide: int4 (in-graph dequant) against bf16 weights",
        "",
        f"Llama-3.2-1B shapes, decode batch 1. Weights resident: bf16 {bf16 / 2**30:.2f} GiB, int4 with a bf16 "
        f"embedding/head {int4 / 2**30:.2f} GiB (**{bf16 / int4:.2f}x** less). Speed is int4-bf16 against bf16 "
        "as the dense dot, in the same benchmark run, on the machine its file names (the decision per machine, "
        "against every bf16 form, is the table above); `fused`: the int4-bf16 decode graph's dequant verdict.",
        "",
        "| backend | decode speed, int4 vs bf16 | tokens | dequant in the decode graph |",
        "|---|---|---|---|",
    ]
    for b in BACKENDS:
        lines.append(f"| {b} | {_speed(runs, b)} | {_agreement(half, cuda, b)} | {_fused(rows, cuda, b)} |")
    return lines
