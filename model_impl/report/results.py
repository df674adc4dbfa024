"""The committed results under ``results/``: one loader for every kind of file, and the CUDA
runs merged into the report's rows. Every file carries an ``environment`` record
(:mod:`model_impl.env`)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import env
from ..backends.spec import BACKENDS
from ..backends.spec import backend as backend_spec

# The columns of one lowering/parity row of the report (one per model x backend x mode x graph).
ROW_KEYS = (
    "model",
    "backend",
    "quant",
    "graph",
    "custom_call",
    "fused",
    "dispatches",
    "materialized_bytes",
    "max_abs_logit_diff",
    "reference",
    "token_agreement",
    "first_divergence",
    "compile_seconds",
    "note",
)

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"


MANIFEST = "MANIFEST.json"


def manifest(results_dir: Path = RESULTS_DIR) -> dict:
    """``{path under results/: {"question", "machine", "date", "status", ...}}``; empty where the
    directory has no manifest (a test's fixture directory)."""
    path = Path(results_dir) / MANIFEST
    return json.loads(path.read_text())["files"] if path.exists() else {}


def is_current(name: str, listed: dict) -> bool:
    """A file the report may read: listed as current, or in a directory without a manifest."""
    return not listed or listed.get(name, {}).get("status") == "current"


def load(results_dir: Path = RESULTS_DIR, pattern: str = "bench-*.json") -> list[dict]:
    """The current result files matching ``pattern`` (superseded ones live under
    ``results/archive/`` and are never read), each marked with its path."""
    runs, listed = [], manifest(results_dir)
    for f in sorted(Path(results_dir).glob(pattern)):
        if f.name == MANIFEST or not is_current(f.name, listed):
            continue
        data = json.loads(f.read_text())
        data["file"] = f"results/{f.name}"
        runs.append(data)
    return runs


def where(run: dict) -> str:
    """The machine, date and file a result came from, for a report line."""
    e = run["environment"]
    return f"{env.describe(e)} ({e['date'][:10]}, `{run['file']}`)"


def load_cuda_results(results_dir: Path = RESULTS_DIR) -> list[dict]:
    """GPU runs of ``pytest -m cuda`` committed under ``results/`` (``scripts/gpu_run.sh``)."""
    return load(results_dir, "cuda-*.json")


def merge_cuda_results(rows: list[dict], runs: list[dict], model_name: str, make_row) -> list[dict]:
    """Fill the CUDA rows with what a GPU run measured, marked with the machine it ran on."""
    for run in runs:
        machine = where(run)
        for key, fig in run["figures"].items():
            backend, quant_mode = key.split("/")
            for graph in ("prefill", "decode"):
                diff = fig[f"max_abs_logit_diff_{graph}"]
                parity = {
                    "max_abs_logit_diff": diff,
                    "token_agreement": fig["token_agreement_vs_xla_cpu"],
                    "first_divergence": fig["first_divergence"],
                    "reference": f"xla-cpu {quant_mode} (same machine)",
                }
                note = f"measured on {machine}" + (
                    f"; IREE target {fig['cuda_target']}" if fig.get("cuda_target") else ""
                )
                existing = [
                    r
                    for r in rows
                    if (r["model"], r["backend"], r["quant"], r["graph"]) == (model_name, backend, quant_mode, graph)
                ]
                if existing:
                    existing[0].update(parity, note=note)
                    continue
                low = run["lowering"].get(f"{backend}/{quant_mode}/{graph}/smollm2-135m", {})
                seconds = (fig.get("compile_seconds") or {}).get(graph)
                rows.append(
                    make_row(
                        model=model_name,
                        backend=backend,
                        quant=quant_mode,
                        graph=graph,
                        custom_call=False if backend_spec(backend).is_xla else None,
                        fused=low.get("verdict", "no-dequant" if quant_mode == "fp32" else None),
                        materialized_bytes=low.get("materialized_bytes", 0 if quant_mode == "fp32" else None),
                        compile_seconds=round(seconds, 2) if seconds else None,
                        note=note,
                        **parity,
                    )
                )
        for key, low in run["lowering"].items():
            backend, quant_mode, graph, model = key.split("/")
            if model == "llama-3.2-1b":
                rows.append(
                    make_row(
                        model="llama-3.2-1b (shapes)",
                        backend=backend,
                        quant=quant_mode,
                        graph=graph,
                        custom_call=False,
                        fused=low["verdict"],
                        materialized_bytes=low["materialized_bytes"],
                        compile_seconds=low["compile_seconds"],
                        note=f"measured on {machine}",
                    )
                )
    order = {b: i for i, b in enumerate(BACKENDS)}
    return sorted(
        rows,
        key=lambda r: (
            r["model"] != model_name,
            r["quant"],
            r["graph"] != "prefill",
            order.get(r["backend"], 9),
        ),
    )
