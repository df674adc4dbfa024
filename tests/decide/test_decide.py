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
        "cells": [cell, {**cell, "representation": "pallas-triton", "skipped": "n/a"}],
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
        check("pallas-triton", head="dot", custom_call=True),
        check(),
        step("dense", 1.0e-3),
        step("int4", 1.25e-3, form="u4-magic", head="reduce"),
        step("int4", 0.4e-3, form="pallas-triton"),  # a custom kernel: fastest, and not the verdict's
        step("anchor", 0.8e-3, form="xla-s4-channel"),
        {"kind": "anchor", "backend": B, "name": "torch", "batches": torch_rows},
    )
    d = decide.decide_backend(r, B)
    assert d["batches"][0]["best_int4"]["form"] == "u4-magic (head reduce)" and d["batches"][0]["ratio"] == 0.8
    got = {a["name"]: (a["route"], a["ratio"]) for a in d["anchors"]}
    assert got == {
        "pallas-triton": ("custom kernel", pytest.approx(2.5)),
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


# --- survivors of `make mutants MUTATE="model_impl.decide.*"` (results/mutants.json) -------------


def test_each_backend_is_decided_from_its_own_records_only():
    """A run with two backends: the other's faster dense form, its qualifying check and faster int4
    step, and its faster copy change nothing of this backend's decision."""
    other = "iree-cuda"

    def there(record):
        return {**record, "backend": other}

    copy = {"kind": "bandwidth", "backend": B, "name": "eager copy_", "kernel_class": True, "bytes_per_s": 4e12}
    mine = [check(), step("dense", 1.0e-3), step("int4", 0.9e-3, form="u4-magic", head="reduce"), copy]
    theirs = [
        there(check("u32-affine", head="dot")),
        there(step("dense", 0.1e-3)),
        there(step("int4", 0.05e-3, form="u32-affine", head="dot")),
        there({**copy, "bytes_per_s": 9e12}),
    ]
    alone = decide.decide(run(*mine))
    both = decide.decide(run(*mine, *theirs))
    assert set(both) == {B, other} and both[B] == alone[B]
    assert both[other]["batches"][0]["best_int4"]["form"] == "u32-affine"
    assert both[B]["bandwidth"]["bytes_per_s"] == 4e12 and both[other]["bandwidth"]["bytes_per_s"] == 9e12


def test_a_step_record_without_a_phase_is_a_decode_step():
    record = step("dense", 1e-3)
    del record["phase"]
    assert decide.serves(record, 1) and not decide.serves(record, 2)
    assert not decide.serves(step("dense", 1e-3, phase="prefill"), 1)


def test_a_kernel_launched_twice_a_step_moves_its_bytes_twice():
    one = {"kernels": [{"name": "k", "seconds": 1e-3, "bytes": 1e9}]}
    two = {"kernels": [{"name": "k", "seconds": 1e-3, "bytes": 1e9, "launches_per_step": 2}]}
    assert decide.kernel_rate(one) == pytest.approx(1e12)
    assert decide.kernel_rate(two) == pytest.approx(2e12)
    assert decide.kernel_rate({"kernels": [{"name": "k", "seconds": 1e-3, "bytes": None}]}) is None


def test_each_failing_condition_is_named_in_the_words_the_report_prints():
    cases = [
        ({"custom_call": True}, ["custom_call"]),
        ({"custom_call": None}, ["custom_call not checked"]),
        ({"verdict": "materialized", "linears_fused": 48}, ["dequant materialized (48/112 linears fused)"]),
        # the analyzer's verdict and the per-linear count must both say fused
        ({"verdict": "materialized"}, ["dequant materialized (112/112 linears fused)"]),
        ({"verdict": None, "linears_fused": None}, ["dequant not analyzed (None/112 linears fused)"]),
        ({"max_abs_logit_diff_vs_host": None}, ["parity not measured"]),
        ({"parity_atol": None}, ["parity not measured"]),
        ({"max_abs_logit_diff_vs_host": 2.5}, ["|dlogit| 2.5 over the bound 2"]),
        ({"tokens_vs_baseline": "30/48", "tokens_agree_or_near_tie": False}, ["tokens 30/48 parted off a near-tie"]),
        (
            {"tokens_vs_baseline": "30/48", "tokens_agree_or_near_tie": False, "tokens_gap_at_divergence": 3.0},
            ["tokens 30/48 parted off a near-tie (top-2 gap 3)"],
        ),
    ]
    for over, reasons in cases:
        assert decide.why_not(check(**over)) == reasons, over
    assert decide.why_not(None) == ["not checked"]
    assert decide.why_not(check(skipped="heads do not divide")) == ["n/a: heads do not divide"]
    assert decide.why_not(check(error="compile failed")) == ["error: compile failed"]


def test_the_best_prefill_is_the_fastest_prefill_of_the_backend_weights_dtype_and_forms():
    pre = dict(phase="prefill", rows=64)
    r = run(
        step("dense", 9e-3, **pre),
        step("dense", 5e-3, **pre),
        {**step("dense", 1e-3, **pre), "backend": "iree-cuda"},
        step("dense", 2e-3),  # a decode step
        step("dense", None, **pre),
        step("dense", 3e-3, dtype="float16", **pre),
        step("int4", 4e-3, form="u4-magic", head="reduce", **pre),
        step("int4", 1e-3, form="u32-word", head="reduce", **pre),
    )
    assert decide.best_prefill(r, B, "dense")["seconds"] == 5e-3
    assert decide.best_prefill(r, B, "int4", {("u4-magic", "default", "reduce")})["seconds"] == 4e-3
    assert decide.best_prefill(r, B, "int4")["seconds"] == 1e-3
    assert decide.best_prefill(r, B, "int4", set()) is None


def test_the_target_reports_its_thresholds_the_ratio_and_whether_each_is_met():
    assert decide.target({"ratio": decide.STRETCH}) == {
        "target": decide.TARGET,
        "stretch": decide.STRETCH,
        "ratio": decide.STRETCH,
        "met": True,
        "stretch_met": True,
    }
    assert decide.target(None) == {
        "target": decide.TARGET,
        "stretch": decide.STRETCH,
        "ratio": None,
        "met": False,
        "stretch_met": False,
    }
    below = decide.target({"ratio": decide.TARGET * 0.99})
    assert not below["met"] and not below["stretch_met"]


def test_a_record_without_layout_or_head_is_the_default_layout_and_the_dot_head():
    assert decide.form_key({"form": "u4-magic"}) == ("u4-magic", "default", "dot")
    assert decide.form_key({"form": "u4-magic", "layout": "stacked", "head": "reduce"}) == (
        "u4-magic",
        "stacked",
        "reduce",
    )


# --- a full run: every record kind, its decision worked out by hand ------------------------------


def full(backend, scale=1.0):
    """Every record kind a verdict run writes, for one backend; times multiplied by ``scale``."""

    def on(record):
        return {**record, "backend": backend}

    def prof(of, nbytes, seconds):
        kernels = [
            {"name": "k", "seconds": seconds * scale, "bytes": nbytes},
            {"name": "gemm", "seconds": 1e-4, "bytes": None},
        ]
        return on({"kind": "profile", "of": of, "rows": 1, "kernels": kernels})

    pre = dict(phase="prefill", rows=64)
    anchor = {
        "batches": {
            "1": {
                "torch-bf16": {"step_linears_seconds": 0.6e-3 * scale},
                "torch-int4-tinygemm": {"step_linears_seconds": 0.4e-3 * scale},
            }
        }
    }
    return [on(r) for r in (
        check("u4-magic"),
        check("u32-word", verdict="materialized", linears_fused=32),
        check("pallas-triton", head="reduce", custom_call=True),
        step("dense", 1.0e-3 * scale), step("dense", 1.2e-3 * scale, rows=2),
        step("dense", 8e-3 * scale, **pre),
        step("int4", 0.9e-3 * scale, form="u4-magic", head="reduce"),
        step("int4", 1.6e-3 * scale, form="u4-magic", head="reduce", rows=2),
        step("int4", 12e-3 * scale, form="u4-magic", head="reduce", **pre),
        step("int4", 0.5e-3 * scale, form="u32-word", head="reduce"),
        step("int4", 0.7e-3 * scale, form="pallas-triton", head="reduce"),
        step("anchor", 0.95e-3 * scale, form="xla-s4-channel"),
        {"kind": "bandwidth", "name": "eager copy_", "kernel_class": True, "bytes_per_s": 4e12 / scale},
        prof("dense", 2.5e9, 1e-3), prof("int4", 1e9, 1e-3),
        {"kind": "anchor", **anchor},
        {"kind": "generate", "of": "dense", "form": "dot", "seconds": 1.1e-3 * scale, "bytes_per_step": 1e9},
        {"kind": "generate", "of": "int4", "form": "u4-magic", "seconds": 1.0e-3 * scale, "bytes_per_step": 3e8},
    )]  # fmt: skip


def rounded(x):
    if isinstance(x, float):
        return float(f"{x:.9g}")
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


def brief(form, rows, seconds, weight_bytes):
    return {"form": form, "rows": rows, "seconds": seconds, "weight_bytes": weight_bytes}


MAGIC = "u4-magic (head reduce)"
FULL_DECISION = {
    "bandwidth": {"name": "eager copy_", "bytes_per_s": 4e12, "kernel_class": True},
    "batches": [
        {
            "batch": 1,
            "best_dense": brief("dot", 1, 1.0e-3, 2000),
            "best_int4": brief(MAGIC, 1, 0.9e-3, 500),
            "fastest_int4": brief("u32-word (head reduce)", 1, 0.5e-3, 500),  # faster, not qualifying
            "ratio": 1.0 / 0.9,
            "weight_bytes_saved": 1500,
            "roofline_int4": (3e8 / 4e12) / 0.9e-3,
            "roofline_dense": (1e9 / 4e12) / 1.0e-3,
            "what_stops": "below the 1.5x target: int4 reaches 8% of its byte floor, bf16 25%; "
            "int4's kernels move 1.00 TB/s of their bytes, bf16's 2.50",
        },
        {
            "batch": 2,
            "best_dense": brief("dot", 2, 1.2e-3, 2000),
            "best_int4": brief(MAGIC, 2, 1.6e-3, 500),
            "fastest_int4": brief(MAGIC, 2, 1.6e-3, 500),
            "ratio": 1.2 / 1.6,
            "weight_bytes_saved": 1500,
            "roofline_int4": (3e8 / 4e12) / 1.6e-3,
            "roofline_dense": (1e9 / 4e12) / 1.2e-3,
            "what_stops": "int4 is slower: int4 reaches 5% of its byte floor, bf16 21%",
        },
    ],
    "prefill": {
        "tokens": 64,
        "best_dense": brief("dot", 64, 8e-3, 2000),
        "best_int4": brief(MAGIC, 64, 12e-3, 500),
        "ratio": 8 / 12,
    },
    "crossover": 2,
    "qualifying_forms": [MAGIC],
    "not_qualifying": {
        "u32-word (head reduce)": ["dequant materialized (32/112 linears fused)"],
        "pallas-triton (head reduce)": ["custom_call"],
    },
    "target": {"target": 1.5, "stretch": 2.0, "ratio": 1.0 / 0.9, "met": False, "stretch_met": False},
    "anchors": [
        {"batch": 1, "name": "pallas-triton (head reduce)", "route": "custom kernel", "seconds": 0.7e-3,
         "ratio": 1.0 / 0.7, "versus": "best bf16 step"},
        {"batch": 1, "name": "xla-s4-channel", "route": "XLA int4 GEMM", "seconds": 0.95e-3, "ratio": 1.0 / 0.95,
         "versus": "best bf16 step"},
        {"batch": 1, "name": "torch tinygemm", "route": "custom kernel (torch)", "seconds": 0.4e-3, "ratio": 1.5,
         "versus": "torch cuBLAS bf16, the step's linears alone"},
    ],
    "routes": [  # ratios against the best bf16 step of the batch; the floor: the int4 step's bytes at 4 TB/s
        {"batch": 1, "best_dense": brief("dot", 1, 1.0e-3, 2000),
         "in_graph": {**brief(MAGIC, 1, 0.9e-3, 500), "ratio": 1.0 / 0.9},
         "custom": {**brief("pallas-triton (head reduce)", 1, 0.7e-3, 500), "ratio": 1.0 / 0.7,
                    "roofline": 3e8 / 4e12 / 0.7e-3},
         "tinygemm": {"name": "tinygemm", "seconds": 0.4e-3, "ratio": 0.6 / 0.4},
         "floor": {"seconds": 3e8 / 4e12, "ratio": 1.0e-3 / (3e8 / 4e12), "of": "pallas-triton (head reduce)"}},
        {"batch": 2, "best_dense": brief("dot", 2, 1.2e-3, 2000),
         "in_graph": {**brief(MAGIC, 2, 1.6e-3, 500), "ratio": 1.2 / 1.6},
         "custom": None, "tinygemm": None,  # the custom kernel timed at one row only here; torch at one
         "floor": {"seconds": 3e8 / 4e12, "ratio": 1.2e-3 / (3e8 / 4e12), "of": MAGIC}},
    ],
    "generate": {
        "dense": {"form": "dot", "seconds": 1.1e-3},
        "int4": {"form": "u4-magic", "seconds": 1.0e-3},
        "ratio": 1.1,
        "roofline_dense": (1e9 / 4e12) / 1.1e-3,
        "roofline_int4": (3e8 / 4e12) / 1.0e-3,
    },
}  # fmt: skip


def test_a_full_run_is_decided_as_worked_out_by_hand():
    assert rounded(decide.decide_backend(run(*full(B)), B)) == rounded(FULL_DECISION)


def test_a_second_backends_full_run_changes_nothing_of_the_first():
    """The other backend measured everything twice as fast (and a faster copy): each backend is
    decided from its own records alone, whatever kind."""
    other = "iree-cuda"
    extra = [  # forms, checks and batches only the other backend has
        {**check("s4-grouped", verdict="materialized", linears_fused=0), "backend": other},
        {**step("int4", 0.1e-3, form="s4-grouped", head="reduce"), "backend": other},
        {**step("dense", 0.1e-3, rows=4), "backend": other},
        {**check("u32-affine", head="dot"), "backend": other},
        {**step("int4", 0.2e-3, form="u32-affine", head="dot"), "backend": other},
    ]
    both = decide.decide(run(*full(B), *full(other, scale=0.5), *extra))
    assert list(both) == [B, "iree-cuda"]
    assert rounded(both[B]) == rounded(FULL_DECISION)
    assert both["iree-cuda"]["bandwidth"]["bytes_per_s"] == 8e12


def test_a_matrix_file_becomes_the_records_a_verdict_run_would_hold():
    """Each baseline a batch-1 dense step, each cell a check and an int4 step (the skipped cell
    nothing), each batched figure a step of its rows and phase, the file's copy as the bandwidth
    (not kernel-class: the matrix took the better of two copies)."""
    out = decide.from_matrix(matrix_file())
    assert out["method"] == "matrix" and out["file"] == "results/fusion-h100-x.json"
    assert out["records"] == MATRIX_RECORDS


def matrix_step(weights, seconds, bytes_per_step=None, **kw):
    """A step as the matrix file gives it: no weight bytes, no step bytes unless the cell has them."""
    return {**step(weights, seconds, **kw), "weight_bytes": None, "bytes_per_step": bytes_per_step}


MAGIC_ROW = dict(form="u4-magic", head="reduce")
MATRIX_RECORDS = [
    matrix_step("dense", 1.2e-3),
    matrix_step("dense", 1.1e-3, layout="stacked"),
    matrix_step("dense", 0.5e-3, dtype="float16"),
    {**check("u4-magic"), "error": None},
    matrix_step("int4", 1.0e-3, bytes_per_step=3e8, **MAGIC_ROW),
    matrix_step("dense", 1.3e-3, rows=4),
    matrix_step("dense", 2e-3, rows=64, phase="prefill"),
    matrix_step("int4", 1.4e-3, rows=4, **MAGIC_ROW),
    matrix_step("int4", 4e-3, rows=64, phase="prefill", **MAGIC_ROW),
    {
        "kind": "bandwidth",
        "backend": B,
        "name": "best of a graph-replayed torch copy_ and XLA's copy",
        "kernel_class": False,
        "bytes_per_s": 3e12,
    },
]


def test_what_stops_says_each_case_in_its_own_words():
    dense, int4 = step("dense", 1e-3), step("int4", 1e-3, form="u4-magic", head="reduce")
    copy = {"bytes_per_s": 1e12}

    def ws(best=int4, d=dense, fastest=None, checks_=None, bandwidth=None, profiles=()):
        checks_ = [check()] if checks_ is None else list(checks_)
        return decide.what_stops(best, d, fastest, checks_, bandwidth, list(profiles))

    assert ws(d=None) == "no dense step measured"
    assert ws(best=None, checks_=()) == "no int4 form measured"
    assert ws(best=None) == "no form qualifies"
    failing = check("u32-word", head="reduce", custom_call=True, verdict="materialized", linears_fused=1)
    fastest = step("int4", 0.5e-3, form="u32-word", head="reduce")
    assert ws(best=None, fastest=fastest, checks_=(failing,)) == (
        "no form qualifies; the fastest, u32-word (head reduce), fails: "
        "custom_call; dequant materialized (1/112 linears fused)"
    )
    assert ws(best=None, fastest=fastest, checks_=(check(),)) == (
        "no form qualifies; the fastest, u32-word (head reduce), fails: not checked"
    )
    # at exactly 1.0 int4 is not slower; at exactly the target the target is met
    assert ws() == "below the 1.5x target"
    assert ws(best=step("int4", 1e-3 / 1.5, form="u4-magic", head="reduce")) == "target met"
    fast = step("int4", 0.5e-3, form="u4-magic", head="reduce", rows=2, bytes_per_step=1e8)
    assert ws(best=fast, bandwidth=copy) == (
        "target met (int4 reaches 20% of its byte floor, bf16 100%; int4 served from 2 rows, bf16 from 1)"
    )
    slow = step("int4", 2e-3, form="u4-magic", head="reduce", rows=2)
    assert ws(best=slow) == "int4 is slower: int4 served from 2 rows, bf16 from 1"
    prof = [
        {"of": "int4", "rows": 1, "kernels": [{"seconds": 1e-3, "bytes": 1.5e9}]},
        {"of": "dense", "rows": 1, "kernels": [{"seconds": 1e-3, "bytes": 2.5e9}]},
    ]
    assert ws(profiles=prof) == "below the 1.5x target: int4's kernels move 1.50 TB/s of their bytes, bf16's 2.50"
    assert ws(profiles=prof[:1]) == "below the 1.5x target"


# --- the custom-kernel route beside the verdict (issue 27) -------------------------------------


@pytest.mark.parametrize(
    "failing", [c for n in range(len(FAILURES) + 1) for c in itertools.combinations(FAILURES, n)], ids=str
)
def test_a_custom_kernel_is_exact_when_only_its_nature_keeps_it_from_qualifying(failing):
    """Being a custom_call and having no compiler fusion are what a custom kernel is; parity and
    tokens are what it must still meet. Every combination: exact iff it is a custom_call and
    neither parity nor tokens fail."""
    c = check(custom_call=True, verdict="no-dequant", linears_fused=0)
    for name in failing:
        c.update(FAILURES[name])
    if "custom_call" not in failing:  # the custom_call condition is the kernel's own: test its absence
        c["custom_call"] = False
    want = "custom_call" in failing and not {"over the bound", "tokens off a near-tie"} & set(failing)
    assert decide.exact_custom_kernel(c) is want
    assert not decide.qualifies(c) or not c["custom_call"]  # a custom kernel never qualifies


def test_the_routes_side_by_side_take_each_batch_from_the_same_run():
    ours, wrong = dict(form="pallas-triton", head="dot"), dict(form="pallas-fast-wrong", head="dot")
    torch_rows = {
        "1": {"torch-bf16": {"step_linears_seconds": 1.0e-3}, "torch-int4-tinygemm": {"step_linears_seconds": 0.5e-3},
              "torch-bf16-stacked": {"step_linears_seconds": 0.8e-3},
              "torch-int4-tinygemm-stacked": {"step_linears_seconds": 0.45e-3}},
    }  # fmt: skip
    r = run(
        {"kind": "bandwidth", "backend": B, "name": "eager copy_", "kernel_class": True, "bytes_per_s": 4e12},
        check(),
        check(custom_call=True, verdict="no-dequant", linears_fused=0, **ours),
        check(custom_call=True, max_abs_logit_diff_vs_host=3.0, **wrong),  # fastest, over the bound
        step("dense", 1.0e-3),
        step("dense", 1.1e-3, rows=4),
        step("int4", 1.25e-3, form="u4-magic", head="reduce"),
        step("int4", 2.0e-3, rows=4, form="u4-magic", head="reduce"),
        step("int4", 0.5e-3, bytes_per_step=4e8, **ours),
        step("int4", 0.55e-3, rows=4, bytes_per_step=4.1e8, **ours),
        step("int4", 0.1e-3, **wrong),
        {"kind": "anchor", "backend": B, "name": "torch", "batches": torch_rows},
    )
    got = {x["batch"]: x for x in decide.decide_backend(r, B)["routes"]}
    assert sorted(got) == [1, 4]
    one, four = got[1], got[4]
    assert one["best_dense"]["seconds"] == 1.0e-3 and one["in_graph"]["ratio"] == pytest.approx(0.8)
    assert one["custom"]["form"] == "pallas-triton" and one["custom"]["ratio"] == pytest.approx(2.0)
    assert one["custom"]["roofline"] == pytest.approx(4e8 / 4e12 / 0.5e-3)
    assert one["tinygemm"] == {"name": "tinygemm (stacked)", "seconds": 0.45e-3, "ratio": pytest.approx(0.8 / 0.45)}
    assert one["floor"]["seconds"] == pytest.approx(1e-4) and one["floor"]["ratio"] == pytest.approx(10.0)
    assert four["custom"]["ratio"] == pytest.approx(1.1 / 0.55) and four["in_graph"]["ratio"] == pytest.approx(0.55)
    assert four["tinygemm"] is None and four["floor"]["seconds"] == pytest.approx(4.1e8 / 4e12)
    # without an exact custom kernel the column is empty and the floor is the in-graph form's bytes
    plain = run(*[x for x in r["records"] if x.get("form") not in ("pallas-triton",)])
    p1 = decide.decide_backend(plain, B)["routes"][0]
    assert p1["custom"] is None and p1["floor"]["of"] == "u4-magic (head reduce)"
    from model_impl.report import verdict_section

    text = "\n".join(verdict_section.routes_lines(decide.decide_backend(r, B)["routes"]))
    assert (
        "| 1 | dot: 1.000 ms | u4-magic (head reduce): 1.250 ms = **0.80x** | pallas-triton: 0.500 ms = **2.00x** |"
        in text
    )
    assert "tinygemm (stacked): 0.450 ms = **1.78x** | 0.100 ms = **10.00x** |" in text
