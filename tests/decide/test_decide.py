"""The deciding policy (:mod:`model_impl.decide`): each rule gives both answers on fixtures,
including the combinations a planted bug would slip through (a near-tie cell that is also over
the bound or unfused, a padded dense form being the fastest, a faster form that does not
qualify)."""

from __future__ import annotations

import itertools

import pytest

from model_impl import checks, decide

B = "xla-cuda"
ALL = f"{checks.GREEDY_TOKENS}/{checks.GREEDY_TOKENS}"


def check(form="u4-magic", layout="default", head="reduce", **over):
    c = {
        "kind": "check",
        "backend": B,
        "form": form,
        "layout": layout,
        "head": head,
        "custom_call": False,
        "verdict": "fused",
        "linears_fused": 112,
        "linears_total": 112,
        "max_abs_logit_diff_vs_host": 0.0,
        "parity_atol": 2.0,
        "tokens_vs_baseline": ALL,
        "tokens_gap_at_divergence": None,
        "tokens_agree_or_near_tie": True,
    }
    return {**c, **over}


def step(weights, seconds, rows=1, form="dot", layout="default", head="dot", phase="decode", dtype="bfloat16", **kw):
    return {
        "kind": "step",
        "backend": B,
        "weights": weights,
        "dtype": dtype,
        "form": form,
        "layout": layout,
        "head": head,
        "rows": rows,
        "phase": phase,
        "seconds": seconds,
        "weight_bytes": kw.get("weight_bytes", 2_000 if weights == "dense" else 500),
        "bytes_per_step": kw.get("bytes_per_step", 1e9 if weights == "dense" else 3e8),
    }


def run(*records):
    return {"records": list(records)}


# --- the qualifying rule: every combination of the four conditions ----------------------------

FAILURES = {
    "custom_call": {"custom_call": True},
    "unfused": {"verdict": "materialized", "linears_fused": 48},
    "over the bound": {"max_abs_logit_diff_vs_host": 2.5},
    "tokens off a near-tie": {
        "tokens_vs_baseline": "30/48",
        "tokens_agree_or_near_tie": False,
        "tokens_gap_at_divergence": 3.0,
    },
}


@pytest.mark.parametrize(
    "failing", [c for n in range(len(FAILURES) + 1) for c in itertools.combinations(FAILURES, n)], ids=str
)
@pytest.mark.parametrize("near_tie", [False, True], ids=["48of48", "parted-at-near-tie"])
def test_a_form_qualifies_exactly_when_no_condition_fails_whatever_the_combination(failing, near_tie):
    over = {}
    if near_tie:  # tokens parted at a near-tie: excused, and excuses nothing else
        over.update(tokens_vs_baseline="40/48", tokens_agree_or_near_tie=True, tokens_gap_at_divergence=0.01)
    for name in failing:
        over.update(FAILURES[name])
    c = check(**over)
    reasons = decide.why_not(c)
    assert decide.qualifies(c) == (not failing)
    assert len(reasons) == len(failing), reasons


def test_a_half_fused_form_does_not_qualify_even_when_the_analyzer_says_fused():
    assert not decide.qualifies(check(linears_fused=111))


def test_an_unchecked_or_failed_form_does_not_qualify():
    assert decide.why_not(None) == ["not checked"]
    assert not decide.qualifies(check(error="XlaRuntimeError: boom"))
    assert not decide.qualifies(check(max_abs_logit_diff_vs_host=None))
    assert not decide.qualifies(check(custom_call=None))


def test_the_parity_bound_is_inclusive():
    assert decide.qualifies(check(max_abs_logit_diff_vs_host=2.0))
    assert not decide.qualifies(check(max_abs_logit_diff_vs_host=2.0000001))


# --- the dense reference: the fastest form serving the batch, padded ones included ---------------


def test_the_best_dense_is_the_fastest_form_not_the_first_or_the_slowest():
    r = run(step("dense", 1.2e-3), step("dense", 1.0e-3, form="reduce", head="reduce"),
            step("dense", 1.1e-3, layout="stacked"))  # fmt: skip
    assert decide.best_dense(r, B, 1)["seconds"] == 1.0e-3
    assert decide.best_dense(r, B, 1)["form"] == "reduce"


def test_a_padded_dense_batch_is_the_reference_when_it_is_the_fastest():
    r = run(step("dense", 1.0e-3, rows=1), step("dense", 0.8e-3, rows=2), step("dense", 1.2e-3, rows=4))
    assert decide.best_dense(r, B, 1)["rows"] == 2  # batch 1 served by the 2-row graph
    assert decide.best_dense(r, B, 2)["rows"] == 2
    assert decide.best_dense(r, B, 4)["rows"] == 4  # a 2-row graph cannot serve 4 sequences
    assert decide.best_dense(r, B, 8) is None


def test_the_best_dense_ignores_other_dtypes_prefills_and_missing_times():
    r = run(
        step("dense", 0.5e-3, dtype="float16"),
        step("dense", 0.1e-3, rows=64, phase="prefill"),
        step("dense", None, rows=2),
        step("dense", 1.0e-3),
    )
    assert decide.best_dense(r, B, 1)["seconds"] == 1.0e-3


# --- int4 against it ---------------------------------------------------------------------------


def test_a_faster_form_that_does_not_qualify_does_not_carry_the_verdict():
    r = run(
        check("u4-magic"),
        check("u32-word", verdict="materialized", linears_fused=32),
        step("dense", 1.0e-3),
        step("int4", 0.9e-3, form="u4-magic", head="reduce"),
        step("int4", 0.5e-3, form="u32-word", head="reduce"),
    )
    d = decide.decide_backend(r, B)
    (one,) = d["batches"]
    assert one["best_int4"]["form"] == "u4-magic (head reduce)"
    assert one["fastest_int4"]["form"] == "u32-word (head reduce)"
    assert one["ratio"] == pytest.approx(1.0 / 0.9)
    assert d["not_qualifying"] == {"u32-word (head reduce)": ["dequant materialized (32/112 linears fused)"]}


def test_int4_is_set_against_the_fastest_dense_of_the_same_batch():
    r = run(
        check(),
        step("dense", 1.0e-3, rows=1),
        step("dense", 0.9e-3, rows=2),
        step("dense", 2.0e-3, rows=4),
        step("int4", 1.1e-3, form="u4-magic", head="reduce", rows=1),
        step("int4", 2.3e-3, form="u4-magic", head="reduce", rows=2),
        step("int4", 1.6e-3, form="u4-magic", head="reduce", rows=4),
    )
    rows = {b["batch"]: b for b in decide.decide_backend(r, B)["batches"]}
    assert rows[1]["ratio"] == pytest.approx(0.9 / 1.1)  # against the padded 2-row dense step
    # int4 pads too: its 4-row graph (1.6 ms) serves 2 sequences faster than its 2-row one
    assert rows[2]["best_int4"]["rows"] == 4 and rows[2]["ratio"] == pytest.approx(0.9 / 1.6)
    assert rows[4]["ratio"] == pytest.approx(2.0 / 1.6)
    assert rows[1]["weight_bytes_saved"] == 1500


def test_the_crossover_is_the_first_batch_int4_loses_or_has_no_qualifying_form():
    def rows(*ratios):
        return [{"batch": b, "ratio": q} for b, q in zip((1, 2, 4, 16), ratios)]

    assert decide.crossover(rows(1.2, 1.1, 0.9, 0.5)) == 4
    assert decide.crossover(rows(0.92, 0.46)) == 1
    assert decide.crossover(rows(1.2, 1.1, 1.05, 1.01)) is None
    assert decide.crossover(rows(1.2, None, 1.3)) == 2
    assert decide.crossover(rows(1.0)) is None  # a tie is not a loss


def test_the_target_is_met_only_by_the_ratio_at_batch_one():
    assert decide.target({"ratio": 1.5})["met"] and not decide.target({"ratio": 1.5})["stretch_met"]
    assert not decide.target({"ratio": 1.49})["met"]
    assert not decide.target(None)["met"]
    assert decide.target({"ratio": 2.0})["stretch_met"]


# --- the roofline --------------------------------------------------------------------------------


def test_the_roofline_divides_by_the_fastest_copy_whatever_its_order():
    copies = [
        {"kind": "bandwidth", "backend": B, "name": "graph memcpy", "kernel_class": False, "bytes_per_s": 2.74e12},
        {"kind": "bandwidth", "backend": B, "name": "eager copy_", "kernel_class": True, "bytes_per_s": 4.24e12},
        {"kind": "bandwidth", "backend": B, "name": "XLA copy", "kernel_class": True, "bytes_per_s": 3.22e12},
        {"kind": "bandwidth", "backend": B, "name": "torch", "kernel_class": True, "bytes_per_s": None},
    ]
    r = run(*copies, check(), step("dense", 1e-3), step("int4", 0.5e-3, form="u4-magic", head="reduce"))
    d = decide.decide_backend(r, B)
    assert d["bandwidth"]["name"] == "eager copy_"
    (one,) = d["batches"]
    assert one["roofline_dense"] == pytest.approx(1e9 / 4.24e12 / 1e-3)
    assert one["roofline_int4"] == pytest.approx(3e8 / 4.24e12 / 0.5e-3)


# --- what stops it -------------------------------------------------------------------------------


def test_what_stops_names_the_failing_conditions_when_nothing_qualifies():
    r = run(check(custom_call=True, max_abs_logit_diff_vs_host=9.0), step("dense", 1e-3),
            step("int4", 0.5e-3, form="u4-magic", head="reduce"))  # fmt: skip
    (one,) = decide.decide_backend(r, B)["batches"]
    assert one["ratio"] is None
    assert "custom_call" in one["what_stops"] and "over the bound" in one["what_stops"]


def test_what_stops_reads_the_profiles_rates_when_int4_loses():
    def prof(of, nbytes, seconds):
        kernels = [{"name": "k", "seconds": seconds, "bytes": nbytes}, {"name": "gemm", "seconds": 1.0, "bytes": None}]
        return {"kind": "profile", "backend": B, "of": of, "rows": 1, "kernels": kernels}

    r = run(check(), step("dense", 1e-3), step("int4", 1.1e-3, form="u4-magic", head="reduce"),
            prof("dense", 2.5e9, 1e-3), prof("int4", 1e9, 1e-3))  # fmt: skip
    (one,) = decide.decide_backend(r, B)["batches"]
    assert one["what_stops"].startswith("int4 is slower")
    assert "1.00 TB/s of their bytes, bf16's 2.50" in one["what_stops"]
    r2 = run(check(), step("dense", 1e-3), step("int4", 0.8e-3, form="u4-magic", head="reduce"))
    (one,) = decide.decide_backend(r2, B)["batches"]
    assert one["what_stops"].startswith("below the 1.5x target")


# --- machines without a verdict run: the matrix files --------------------------------------------


def matrix_file():
    cell = {
        "backend": B,
        "representation": "u4-magic",
        "option": "default",
        "head": "reduce",
        "dtype": "bfloat16",
        "decode_seconds": 1.0e-3,
        "bytes_per_step": 3e8,
        **{k: v for k, v in check().items() if k in decide._CHECK_FIELDS},
    }
    return {
        "environment": {"date": "2026-11-26T00:00:00+00:00", "machine": {"gpu": "NVIDIA H100 80GB HBM3"}},
        "file": "results/fusion-h100-x.json",
        "dtype": "bfloat16",
        "baselines": {B: {"bfloat16:dot": {"seconds": 1.2e-3}, "bfloat16:dot+stacked": {"seconds": 1.1e-3},
                          "float16:dot": {"seconds": 0.5e-3}}},
        "cells": [cell, {**cell, "representation": "pallas-u32", "skipped": "n/a"}],
        "batched": {B: {"dense:dot": {"decode-4": 1.3e-3, "prefill-64": 2e-3},
                        "u4-magic:default:reduce": {"decode-4": 1.4e-3, "prefill-64": 4e-3, "error": "x"}}},
        "bandwidth_bytes_per_s": 3e12,
    }  # fmt: skip


def test_a_matrix_file_decides_within_its_own_run():
    d = decide.decide(decide.from_matrix(matrix_file()))[B]
    rows = {b["batch"]: b for b in d["batches"]}
    assert rows[1]["best_dense"]["form"] == "dot [stacked]"  # f16 is a column, not the reference
    assert rows[1]["ratio"] == pytest.approx(1.1 / 1.0)
    assert rows[4]["ratio"] == pytest.approx(1.3 / 1.4)
    assert d["crossover"] == 4
    assert d["prefill"]["ratio"] == pytest.approx(0.5)


def test_the_other_routes_are_set_beside_the_verdict_and_never_carry_it():
    torch_rows = {
        "1": {"torch-bf16": {"step_linears_seconds": 1.0e-3}, "torch-int4-tinygemm": {"step_linears_seconds": 0.5e-3}}
    }
    r = run(
        check("pallas-u32", head="dot", custom_call=True),
        check(),
        step("dense", 1.0e-3),
        step("int4", 1.25e-3, form="u4-magic", head="reduce"),
        step("int4", 0.4e-3, form="pallas-u32"),  # a custom kernel: fastest, and not the verdict's
        step("anchor", 0.8e-3, form="xla-s4-channel"),
        {"kind": "anchor", "backend": B, "name": "torch", "batches": torch_rows},
    )
    d = decide.decide_backend(r, B)
    assert d["batches"][0]["best_int4"]["form"] == "u4-magic (head reduce)" and d["batches"][0]["ratio"] == 0.8
    got = {a["name"]: (a["route"], a["ratio"]) for a in d["anchors"]}
    assert got == {
        "pallas-u32": ("custom kernel", pytest.approx(2.5)),
        "xla-s4-channel": ("XLA int4 GEMM", pytest.approx(1.25)),
        "torch tinygemm": ("custom kernel (torch)", pytest.approx(2.0)),
    }


def test_a_machine_is_decided_by_its_newest_full_verdict_run_never_a_mix():
    def v(date, quick=False, gpu="NVIDIA H200"):
        return {"kind": "verdict", "quick": quick, "environment": {"date": date, "machine": {"gpu": gpu}}}

    old, new, newer_quick = v("2026-12-01"), v("2026-12-04"), v("2026-12-05", quick=True)
    other = v("2026-11-01", gpu="NVIDIA H100 80GB HBM3")
    matrix = {"environment": {"date": "2026-12-09", "machine": {"gpu": "NVIDIA H200"}}}
    chosen = decide.deciding_runs([old, newer_quick, new, other, matrix])
    assert chosen == {"NVIDIA H200": new, "NVIDIA H100 80GB HBM3": other}
    assert decide.deciding_runs([newer_quick])["NVIDIA H200"] is newer_quick
