"""The mutation summary: a run over one module replaces that module's entry and keeps the
others with the run they came from; totals are the sum of the entries."""

from __future__ import annotations

from model_impl.report import mutants as summary

OLD = {
    "environment": {"date": "2026-11-25", "commit": "c0"},
    "per_module": {"model_impl.quant": {"killed": 3}, "model_impl.decide": {"killed": 1, "survived": 1}},
    "survivors": {"model_impl.decide": ["model_impl.decide.x_f__mutmut_1"]},
}


def test_a_run_over_one_module_replaces_only_that_module():
    lines = [
        "model_impl.decide.x_f__mutmut_1: killed",
        "model_impl.decide.x_g__mutmut_2: survived",
        "model_impl.quant.x_h__mutmut_1: not checked",  # not mutated by this run: ignored
    ]
    run = {"commit": "c1", "date": "2026-12-05"}
    merged = summary.merge(OLD, lines, run, "model_impl.decide.*")
    decide, quant = merged["modules"]["model_impl.decide"], merged["modules"]["model_impl.quant"]
    assert decide == {
        "outcomes": {"killed": 1, "survived": 1},
        "survivors": ["model_impl.decide.x_g__mutmut_2"],
        "run": run,
    }
    assert quant["outcomes"] == {"killed": 3} and quant["run"]["commit"] == "c0"
    assert merged["outcomes"] == {"killed": 4, "survived": 1}


def test_a_full_run_replaces_every_module_it_mutated():
    lines = ["model_impl.quant.x_h__mutmut_1: killed", "model_impl.quant.x_h__mutmut_2: timeout"]
    merged = summary.merge(summary.merge(OLD, [], {"commit": "c1"}, None), lines, {"commit": "c2"}, None)
    assert merged["modules"]["model_impl.quant"]["outcomes"] == {"killed": 1, "timeout": 1}
    assert merged["modules"]["model_impl.decide"]["run"]["commit"] == "c0"
