"""The matrix-vs-bf16's own parts that run anywhere: the torch anchors' shapes and their
skip path, the dense baselines' casts, the parity bound a cell is held to."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model_impl import checks
from model_impl.lab import anchors, fusion
from model_impl.llama.shapes import llama32_config, shrunk_llama32_config
from model_impl.llama.weights import LINEAR_NAMES, cast_weights, synthetic


def test_anchor_step_shapes_are_the_models_linears_and_head():
    cfg = llama32_config()
    shapes = anchors.step_shapes(cfg)
    assert len(shapes) == len(LINEAR_NAMES) * cfg.num_layers + 1
    assert shapes[-1] == (cfg.vocab_size, cfg.hidden_size)
    assert shapes[: len(LINEAR_NAMES)] == [
        (cfg.q_size, cfg.hidden_size),
        (cfg.kv_size, cfg.hidden_size),
        (cfg.kv_size, cfg.hidden_size),
        (cfg.hidden_size, cfg.q_size),
        (cfg.intermediate_size, cfg.hidden_size),
        (cfg.intermediate_size, cfg.hidden_size),
        (cfg.hidden_size, cfg.intermediate_size),
    ]


def test_anchor_stacked_step_shapes_are_the_stacked_models_linears():
    from model_impl.llama.weights import linear_fields, specs, stack_projections

    cfg = llama32_config()
    layer = stack_projections(specs(cfg)).layers[0]
    shapes = anchors.step_shapes(cfg, stacked=True)
    assert len(shapes) == 4 * cfg.num_layers + 1
    assert sorted(shapes[:4]) == sorted(tuple(getattr(layer, n).shape) for n in linear_fields(layer))


def test_anchors_say_why_they_were_not_measured_without_a_cuda_torch():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA torch: the anchors are measured (tests/cuda)")
    assert anchors.measure(llama32_config()) == {"skipped": "torch sees no CUDA device"}


def test_dense_baselines_cast_half_precision_weights_to_the_other_half_precision():
    """bf16 arrays are ml_dtypes, not numpy floating types: a cast that tested np.floating kept
    bf16 norms in an f16 model (the f16 baseline then failed to trace)."""
    cfg = dataclasses.replace(shrunk_llama32_config(layers=1), dtype="bfloat16")
    f16 = cast_weights(synthetic(cfg, 0), "float16")
    assert {np.asarray(a).dtype.name for a in (f16.final_norm, f16.layers[0].attn_norm, f16.layers[0].wq)} == {
        "float16"
    }


def test_a_half_precision_cell_is_held_to_the_dtypes_logit_bound_and_fp32_to_the_in_graph_bound():
    assert fusion.parity_atol("float32") == checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL
    assert fusion.parity_atol("bfloat16") == checks.logit_atol("bfloat16")


def _cell(**kw):
    cell = {
        "backend": "xla-cuda",
        "representation": "u4-magic",
        "option": "default",
        "head": "reduce",
        "speedup_vs_bf16": 1.12,
        "roofline_fraction": 0.36,
        "custom_call": False,
        "verdict": "fused",
        "linears_fused": 112,
        "linears_total": 112,
        "parity_within_atol": True,
        "max_abs_logit_diff_vs_host": 0.0,
        "parity_atol": 2.0,
        "tokens_vs_baseline": "48/48",
    }
    return {**cell, **kw}


def _runs(*cells):
    return [{"file": "results/x.json", "environment": {"date": "2026-11-25"}, "cells": list(cells)}]


def test_vs_bf16_target_is_met_by_a_qualifying_cell_and_not_by_a_faster_unqualified_one():
    from model_impl.report import vs_bf16_section as v

    assert v.target(_runs(_cell(speedup_vs_bf16=1.6)))["met"]
    not_met = v.target(_runs(_cell(), _cell(representation="u32-word", speedup_vs_bf16=1.7, linears_fused=48)))
    assert not not_met["met"]
    assert not_met["best_qualifying"]["representation"] == "u4-magic"
    assert not_met["fastest"]["representation"] == "u32-word"
    for spoiler in (
        {"custom_call": True},
        {"max_abs_logit_diff_vs_host": 2.5},
        {"tokens_vs_baseline": "47/48"},
        {"tokens_vs_baseline": "47/48", "tokens_agree_or_near_tie": False},
        {"verdict": "materialized"},
    ):
        assert not v.target(_runs(_cell(speedup_vs_bf16=1.6, **spoiler)))["met"], spoiler
    near_tie = {"tokens_vs_baseline": "20/48", "tokens_agree_or_near_tie": True}
    assert v.target(_runs(_cell(speedup_vs_bf16=1.6, **near_tie)))["met"]


def test_the_half_precision_matrix_files_stay_out_of_the_fp32_matrix():
    from model_impl.report import fusion_section, results, vs_bf16_section

    half = vs_bf16_section.load(results.RESULTS_DIR)
    assert half and all(r["dtype"] == "bfloat16" for r in half)
    fp32_files = {e["file"] for e in fusion_section.load(results.RESULTS_DIR)["environments"].values()}
    assert not fp32_files & {r["file"].removeprefix("results/") for r in half}


def test_the_report_says_the_committed_h100_matrix_misses_the_target_and_shows_why():
    from model_impl.report import results, vs_bf16_section

    runs = vs_bf16_section.load(results.RESULTS_DIR)
    text = "\n".join(vs_bf16_section.render(runs))
    assert not vs_bf16_section.target(runs)["met"]
    assert "**not met**" in text and "What stops it" in text and "torch tinygemm in " in text


def test_the_pallas_sweep_lines_say_whether_the_tuned_kernel_beats_the_in_graph_forms():
    import copy

    from model_impl.report import results, vs_bf16_section

    runs = results.load(results.RESULTS_DIR, "pallas-gemv-*.json")
    both = "\n".join(vs_bf16_section.pallas_gemv_lines(runs))
    assert {r["environment"]["machine"]["gpu"] for r in runs} == {"NVIDIA H100 80GB HBM3", "NVIDIA H200"}
    assert both.count("Pallas int4 GEMV sweep against XLA") == 2  # each machine's run, none hidden
    for run in runs:
        fams = run["step_estimate"]["families"]
        text = "\n".join(vs_bf16_section.pallas_gemv_lines([run]))
        assert "0 wrong against the host dequant" in text and "| 8192x2048 |" in text
        # the committed H100 and H200 runs: the tuned kernel beats XLA's in-graph int4 forms but not 1.5x
        assert fams["pallas-best"]["speedup_vs_xla_bf16"] > fams["xla-u4-magic"]["speedup_vs_xla_bf16"]
        assert "The tuned Pallas GEMV beats the best in-graph int4 form" in text and "misses the 1.5x" in text
    older = {**runs[-1], "environment": {**runs[-1]["environment"], "date": "2000-01-01"}}
    assert "\n".join(vs_bf16_section.pallas_gemv_lines([runs[-1], older])).count("sweep against XLA") == 1
    run = runs[-1]
    slow = copy.deepcopy(run)
    slow["step_estimate"]["families"]["pallas-best"]["speedup_vs_xla_bf16"] = 0.5
    assert "does not beat the best in-graph int4 form" in "\n".join(vs_bf16_section.pallas_gemv_lines([slow]))
    fast = copy.deepcopy(run)
    fast["step_estimate"]["families"]["pallas-best"]["speedup_vs_xla_bf16"] = vs_bf16_section.TARGET
    assert "meets the 1.5x" in "\n".join(vs_bf16_section.pallas_gemv_lines([fast]))


def test_the_stacked_lines_pair_each_form_with_itself_unstacked_in_the_same_run():
    from model_impl.report import vs_bf16_section

    cell = lambda option, seconds: {  # noqa: E731
        "backend": "xla-cuda",
        "representation": "u4-magic",
        "head": "reduce",
        "option": option,
        "decode_seconds": seconds,
    }
    run = {
        "file": "results/x.json",
        "baselines": {"xla-cuda": {"bfloat16:dot": {"seconds": 1.2e-3}, "bfloat16:dot+stacked": {"seconds": 1.1e-3}}},
        "cells": [cell("default", 1.0e-3), cell("stacked", 0.9e-3)],
    }
    (line,) = vs_bf16_section._stacked_lines([run])
    assert "dense bf16 1.20 -> 1.10 ms (-100 us)" in line and "u4-magic (head reduce) 1.00 -> 0.90 ms (-100 us)" in line
    run["baselines"]["xla-cuda"].pop("bfloat16:dot+stacked")
    assert vs_bf16_section._stacked_lines([run]) == []  # no stacked baseline in the run: no claim


def test_the_stacked_gemv_estimate_sums_the_stacked_shapes_and_needs_all_of_them():
    import copy

    from model_impl.report import results, vs_bf16_section

    run = results.load(results.RESULTS_DIR, "gemv-stacked-shapes-*.json")[-1]
    est = vs_bf16_section.stacked_gemv_estimate(run)
    per_shape = {
        s: min(run["best"][s]["xla-dot"]["seconds"], run["best"][s]["xla-reduce"]["seconds"])
        for s in vs_bf16_section.STACKED_STEP
    }
    assert est["bf16-best"] == sum(16 * t for t in per_shape.values())
    assert est["in-graph-best-per-shape"] <= min(est["xla-u4-magic"], est["xla-u32-word"])
    partial = copy.deepcopy(run)
    del partial["best"]["3072x2048"]
    assert vs_bf16_section.stacked_gemv_estimate(partial) is None
    assert vs_bf16_section.stacked_gemv_lines([partial]) == []
