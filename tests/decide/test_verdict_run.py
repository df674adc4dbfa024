"""``verdict``'s measuring path end to end on XLA-CPU at tiny shapes (2 layers, 1 step per
timed loop): the same code a GPU run takes (:mod:`model_impl.lab.protocol` hands the timing
down), producing a real file whose arithmetic is then recomputed from its own records, a resume
that measures nothing twice, and the decision table rendered from it."""

from __future__ import annotations

import json

import pytest

from model_impl import decide
from model_impl.__main__ import main
from model_impl.lab import verdict
from model_impl.llama.representations import BASELINE
from model_impl.report import verdict_section

FORMS = ((BASELINE, "default", "dot"), ("u4-magic", "default", "reduce"))
PLAN = verdict.Plan(
    "tiny",
    "bfloat16",
    1,
    "synthetic",
    False,
    ("bandwidth", "dense", "int4", "profile", "generate"),
    FORMS,
    (1, 2),
    (1, 2),
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("verdict") / "verdict-cpu.json"
    data = verdict.run(["xla-cpu"], out, PLAN, log=lambda m: None)
    return out, data


def test_the_file_is_written_with_its_environment_and_every_record_kind(tiny_run):
    out, data = tiny_run
    on_disk = json.loads(out.read_text())
    assert on_disk["records"] == data["records"]
    assert on_disk["environment"]["machine"]["cores"] and on_disk["machine"] == "cpu"
    kinds = {r["kind"] for r in data["records"]}
    assert kinds == {"bandwidth", "step", "check", "profile", "generate"}
    steps = [r for r in data["records"] if r["kind"] == "step"]
    assert all(r["seconds"] > 0 for r in steps if r["phase"] == "decode"), steps
    # the dense forms at every planned row count, the other dtypes at one row, the prefill
    dense = {(r["dtype"], r["form"], r["layout"], r["rows"], r["phase"]) for r in steps if r["weights"] == "dense"}
    assert ("bfloat16", "dot", "default", 2, "decode") in dense and ("bfloat16", "dot", "stacked", 2, "decode") in dense
    assert ("float32", "dot", "default", 1, "decode") in dense and ("float16", "dot", "default", 1, "decode") in dense
    assert ("bfloat16", "dot", "default", 64, "prefill") in dense
    # XLA's int4 GEMM anchor was timed and is never an int4 candidate
    assert any(r["weights"] == "anchor" for r in steps)


def test_the_decision_in_the_file_is_the_policy_applied_to_its_records(tiny_run):
    _, data = tiny_run
    assert data["decision"] == json.loads(json.dumps(decide.decide(data)))


def test_ratios_rooflines_and_qualifying_flags_recompute_from_the_records(tiny_run):
    _, data = tiny_run
    records = data["records"]
    d = data["decision"]["xla-cpu"]
    copies = [r["bytes_per_s"] for r in records if r["kind"] == "bandwidth"]
    assert d["bandwidth"]["bytes_per_s"] == max(copies)
    checks_ = {decide.form_key(r): r for r in records if r["kind"] == "check"}
    # XLA-CPU rebuilds the int4 weights every step (pinned elsewhere): no form qualifies here
    assert all(not decide.qualifies(c) for c in checks_.values())
    assert all(c["verdict"] == "materialized" for c in checks_.values())
    for row in d["batches"]:
        dense = [
            r["seconds"]
            for r in records
            if r["kind"] == "step"
            and r["weights"] == "dense"
            and r["dtype"] == "bfloat16"
            and r["phase"] == "decode"
            and r["rows"] >= row["batch"]
        ]
        assert row["best_dense"]["seconds"] == min(dense)
        assert row["ratio"] is None and "no form qualifies" in row["what_stops"]
        assert row["roofline_dense"] == pytest.approx(
            next(
                r["bytes_per_step"]
                for r in records
                if r["kind"] == "step" and r["seconds"] == row["best_dense"]["seconds"]
            )
            / max(copies)
            / row["best_dense"]["seconds"]
        )
    # a form that does not qualify is timed at one row only
    int4_rows = {r["rows"] for r in records if r["kind"] == "step" and r["weights"] == "int4"}
    assert int4_rows == {1}
    # the profile is a CUDA figure: recorded as not measurable here, with why
    assert all("XLA-CUDA only" in r["skipped"] for r in records if r["kind"] == "profile")
    # the generate path of the best dense form (no int4 form qualifies here, so none for int4)
    (gen,) = [r for r in records if r["kind"] == "generate"]
    assert gen["of"] == "dense" and gen["seconds"] > 0 and gen["form"] == d["batches"][0]["best_dense"]["form"]
    assert d["generate"]["dense"]["seconds"] == gen["seconds"] and d["generate"]["ratio"] is None


def test_a_resumed_run_measures_nothing_it_has(tiny_run, tmp_path):
    out, data = tiny_run
    again = verdict.run(["xla-cpu"], tmp_path / "resumed.json", PLAN, resume=out, log=lambda m: None)
    assert len(again["records"]) == len(data["records"])
    assert len(again["runs"]) == 2


def test_the_report_renders_the_numbers_the_file_holds(tiny_run):
    out, data = tiny_run
    data = {**data, "file": str(out)}
    (row,) = verdict_section.table_rows([data])
    assert row["machine"].startswith("CPU") and row["backend"] == "xla-cpu" and row["files"] == [str(out)]
    text = "\n".join(verdict_section.render_table([row]) + verdict_section.render_run(data))
    d = data["decision"]["xla-cpu"]
    for b in d["batches"]:
        assert f"{b['best_dense']['seconds'] * 1e3:.3f}" in text
    assert d["bandwidth"]["name"] in text


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--backend", "bogus"], "--backend: unknown bogus"),
        (["--backend", "xla-cuda"], "backend xla-cuda"),
        (["--parts", "dense,bogus"], "--parts: unknown bogus"),
        (["--shapes", "llama-9"], "--shapes: unknown 'llama-9'"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--forms", "u4-magic,int3"], "--forms: 'int3' is not representation[:layout[:head]]"),
        (["--forms", "u4-magic:sideways"], "--forms: 'u4-magic:sideways' is not"),
        (["--forms", "u4-magic:stacked:reduce:x"], "--forms: 'u4-magic:stacked:reduce:x' is not"),
        (["--forms", ","], "--forms: no form given"),
        (["--resume", "/nonexistent.json"], "--resume /nonexistent.json"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2_before_anything_is_built(argv, says, capsys, tmp_path):
    assert main(["verdict", "--out", str(tmp_path / "v.json"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "v.json").exists()


def test_forms_name_the_candidates_with_layout_and_head_defaulted():
    from model_impl.lab import verdict

    got = verdict.parse_forms("pallas-triton, pallas-triton:stacked,u4-magic:stacked:reduce")
    assert got == (("pallas-triton", "default", "dot"), ("pallas-triton", "stacked", "dot"),
                   ("u4-magic", "stacked", "reduce"))  # fmt: skip


def test_an_existing_results_file_is_not_overwritten_or_resumed_silently(tiny_run, capsys):
    out, data = tiny_run
    before = out.read_text()
    assert main(["verdict", "--backend", "xla-cpu", "--shapes", "tiny", "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {out}: exists; pass --resume") and out.read_text() == before


def test_a_resume_with_another_plan_is_refused_before_anything_is_measured(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    argv = ["verdict", "--backend", "xla-cpu", "--shapes", "tiny", "--steps", "3", "--resume", str(out)]
    assert main([*argv, "--out", str(tmp_path / "x.json")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "measured with another plan or machine: steps 1 (asked: 3)" in line
    assert not (tmp_path / "x.json").exists()


def test_resuming_a_file_that_is_not_a_verdict_is_refused(tmp_path, capsys):
    other = tmp_path / "fusion.json"
    other.write_text(json.dumps({"cells": []}))
    assert main(["verdict", "--resume", str(other)]) == 2
    assert "not a verdict file" in capsys.readouterr().err


def test_the_charts_are_drawn_from_the_verdict_run(tiny_run, tmp_path):
    out, data = tiny_run
    lines = verdict_section.charts([{**data, "file": str(out)}], tmp_path)
    assert [line for line in lines if line.startswith("![")] == [
        "![int4 against the best bf16 by batch](verdict-ratio.png)",
        "![the batch-1 step against its byte floor](verdict-roofline.png)",
    ]
    for name in ("verdict-ratio.png", "verdict-roofline.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
