"""The matrix's measuring path (``lab/fusion.py``: ``measure_backend``, the cell, the dense
baselines, the step-linears timer, the batched figures) end to end on XLA-CPU at tiny shapes,
through the same protocol a GPU run uses; the record's arithmetic recomputed from its fields."""

from __future__ import annotations

import json

import pytest

from model_impl.lab import fusion
from model_impl.lab.fusion_matrix import STACKED
from model_impl.llama.representations import BASELINE
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.report import vs_bf16_section

ROWS = ((BASELINE, "default", "dot"), ("u4-magic", STACKED, "reduce"))


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion") / "fusion-cpu-bf16.json"
    fusion.run(
        ["xla-cpu"], out, "synthetic", steps=1, rows=ROWS, log=lambda m: None, dtype="bfloat16",
        parts=("cells", "batch"), cfg=shrunk_llama32_config(),
    )  # fmt: skip
    return json.loads(out.read_text())


def test_every_cell_is_measured_and_set_against_the_fastest_dense_bf16_of_the_run(matrix):
    base = matrix["baselines"]["xla-cpu"]
    assert {"bfloat16:dot", "bfloat16:reduce", "bfloat16:dot+stacked", "float16:dot", "float32:dot"} <= set(base)
    best = min(v["seconds"] for k, v in base.items() if k.startswith("bfloat16:"))
    assert len(matrix["cells"]) == len(ROWS)
    for c in matrix["cells"]:
        assert not c.get("error"), c["error"]
        assert c["decode_bf16_seconds"] == best
        assert c["speedup_vs_bf16"] == pytest.approx(best / c["decode_seconds"])
        assert c["step_linears_seconds"] > 0  # the step-linears timer runs on XLA-CPU too
        assert c["verdict"] == "materialized" and c["tokens_vs_baseline"]
        assert not vs_bf16_section.qualifies(c)  # XLA-CPU rebuilds the weights: never qualifies


def test_the_batched_figures_come_from_the_same_protocol(matrix):
    cases = matrix["batched"]["xla-cpu"]
    assert set(cases) == {"dense:dot", *(f"{r}:{o}:{h}" for r, o, h in fusion.BATCH_ROWS)}
    for name, figures in cases.items():
        assert not figures.get("error"), (name, figures)
        assert all(figures[f"decode-{b}"] > 0 for b in fusion.BATCHES) and figures["prefill-64"] > 0
