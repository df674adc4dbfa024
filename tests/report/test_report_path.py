"""`make report`'s whole path (``characterize``) on a 2-layer checkpoint, reading the committed
results: every section renders, and the numbers it prints are the ones in the runs and files it
names. The live parts are cut to what the path needs (6 tokens, one shape row, one float32 and
one bfloat16 MLX variant, bfloat16 for the half-precision runs); the rendering of the results
files is the one ``make report`` does."""

from __future__ import annotations

import json
import re

import pytest

from model_impl import checks
from model_impl.report import bench_section, characterize, decide_section, half_section, markdown, results

TOKENS = 6


@pytest.fixture(scope="module")
def report(tiny_hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    plan = characterize.Plan(
        model=str(tiny_hf_dir),
        tokens=TOKENS,
        shapes="tiny",
        shape_modes=("int4",),
        mlx_variants=(("float32", 4, 64), ("bfloat16", 4, 64)),
        half_dtypes=("bfloat16",),
    )
    assert characterize.main(str(out), plan=plan) == 0
    return json.loads((out / "findings.json").read_text()), (out / "findings.md").read_text(), out


def _lines(md: str, *cells: str) -> list[str]:
    """The table lines holding every cell."""
    return [line for line in md.splitlines() if line.startswith("|") and all(f"| {c} |" in line for c in cells)]


def _line(md: str, *cells: str) -> str:
    """The one table line holding every cell."""
    found = _lines(md, *cells)
    assert len(found) == 1, (cells, found)
    return found[0]


def test_every_section_renders(report):
    findings, md, out = report
    for heading in (
        "# Findings",
        "## Model",
        "## Format",
        "## Lowering, parity and agreement",
        "## The smallest graphs",
        "## MLX peer",
        "## Half precision",
        "## int4 against fp32",
        "## Performance",
    ):
        assert re.search(f"^{re.escape(heading)}", md, re.M), heading
    assert findings["decision"], "the decision table from the committed verdict files"
    assert (out / "findings.json").stat().st_size and list(out.glob("*.png"))


def test_the_lowering_table_prints_each_row_of_the_findings(report):
    findings, md, _ = report
    rows = findings["rows"]
    assert {r["backend"] for r in rows} == {"xla-cpu", "iree-cpu", "iree-cuda"}
    assert {r["model"] for r in rows} == {"hf", "tiny (shapes)"}
    table = [line for line in md.splitlines() if line.startswith("| hf |") or line.startswith("| tiny (shapes) |")]
    assert len(table) == len(rows)
    for r, line in zip(rows, table):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [r["model"], r["backend"], r["quant"], r["graph"]]
        assert r["fused"] in cells
        if r["max_abs_logit_diff"] is not None:
            assert markdown._fmt(r["max_abs_logit_diff"]) in cells


def test_the_runs_agree_as_the_tests_require(report):
    """The live figures the report prints hold the suite's own bounds on the tiny model."""
    findings, _, _ = report
    for r in findings["rows"]:
        if r["token_agreement"] is not None:
            assert r["token_agreement"] == f"{TOKENS}/{TOKENS}", r
    for e in findings["mlx_peer"]:
        assert e["config_differences"] == {}
        assert e["xla-cpu"]["agrees"] and e["iree-cpu"]["agrees"], e
    bf16 = findings["half_precision"]["bfloat16"]
    assert bf16["prefill_vs_transformers"] <= checks.logit_atol("bfloat16")
    assert bf16["logit_atol"] == checks.logit_atol("bfloat16")


def test_the_mlx_and_half_tables_print_the_findings_numbers(report):
    findings, md, _ = report
    for e in findings["mlx_peer"]:
        line = _line(md, e["variant"])
        for b in ("xla-cpu", "iree-cpu"):
            assert e[b]["agreement"] in line
            assert markdown._fmt(e[b]["max_abs_logprob_diff"]) in line
    assert half_section.render(findings["half_precision"])[-1] in md
    e = findings["half_precision"]["bfloat16"]
    line = next(line for line in md.splitlines() if line.startswith("| bfloat16 |"))
    assert f"| {e['prefill_vs_transformers']:.3g} |" in line
    assert f"max Δ {e['in_graph_vs_host']['max_abs_logit_diff']:.3g}" in line


def test_the_benchmark_tables_print_the_committed_files_figures(report):
    findings, md, _ = report
    runs = results.load(results.RESULTS_DIR, "bench-*.json")
    assert findings["benchmarks"] == json.loads(json.dumps(runs, default=str))
    assert any(run["cases"] for run in runs)
    for run in runs:
        if run["cases"]:
            assert f"(`{run['file']}`)" in md
        for c in run["cases"]:  # a case measured in several files has a line in each table
            figures = (f"| {c['decode']['tokens_per_s']:.1f} |", f"| {c['fraction_of_roofline']:.0%} |")
            assert any(all(f in line for f in figures) for line in _lines(md, c["model"], c["backend"], c["quant"]))
    for target in bench_section.targets([r for r in runs if r["cases"]]):
        assert target in md


def test_the_opening_summary_is_rendered_from_the_findings_it_wrote(report):
    findings, md, _ = report
    lines = [line for line in decide_section.render(findings) if line.strip()]
    assert lines and all(line in md for line in lines)


def test_gpu_runs_fill_their_rows_and_name_the_machine():
    """The committed ``pytest -m cuda`` run lands in the rows of the model it measured."""
    runs = results.load_cuda_results()
    assert runs
    rows = results.merge_cuda_results([], runs, "smollm2-135m", characterize._row)
    for run in runs:
        for key, fig in run["figures"].items():
            backend, quant = key.split("/")
            row = next(
                r
                for r in rows
                if (r["model"], r["backend"], r["quant"], r["graph"]) == ("smollm2-135m", backend, quant, "decode")
            )
            assert row["token_agreement"] == fig["token_agreement_vs_xla_cpu"]
            assert row["max_abs_logit_diff"] == fig["max_abs_logit_diff_decode"]
            assert run["file"] in row["note"]
