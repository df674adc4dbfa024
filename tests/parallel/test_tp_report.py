"""The report's tensor-parallel section and IREE-CUDA speed lines: their verdicts can give
either answer, and the committed results render."""

from __future__ import annotations

import copy

from model_impl.report import results, tp_section, vs_bf16_section


def _run(one: float, two: float, shape: str = "llama-3.2-1b") -> dict:
    case = {"shape": shape, "mode": "bf16", "representation": None}
    return {
        "cases": [
            {**case, "tp": 1, "step_seconds": one},
            {**case, "tp": 2, "step_seconds": two},
        ]
    }


def test_tp_pays_off_from_the_smallest_shape_where_every_mode_is_faster():
    slow_1b, fast_8b = _run(1.0, 1.2), _run(4.0, 3.5, "llama-3.1-8b")
    both = {"cases": fast_8b["cases"] + slow_1b["cases"]}
    assert tp_section.pays_off(both)["from_shape"] == "llama-3.1-8b"
    assert tp_section.pays_off(_run(1.0, 0.9))["from_shape"] == "llama-3.2-1b"
    assert tp_section.pays_off(slow_1b)["from_shape"] is None
    mixed = {
        "cases": _run(4.0, 3.5, "llama-3.1-8b")["cases"]
        + [
            {"shape": "llama-3.1-8b", "mode": "int4", "representation": "u4-magic", "tp": t, "step_seconds": s}
            for t, s in ((1, 4.0), (2, 4.4))
        ]
    }
    assert tp_section.pays_off(mixed)["from_shape"] is None  # one mode slower: not every mode pays


def test_committed_tp_results_render_with_the_verdicts():
    runs = tp_section.load()
    lines = "\n".join(tp_section.render(runs, next(iter(results.load(results.RESULTS_DIR, "iree-multidevice.json")))))
    assert "It starts to pay off at" in lines or "pays off at none" in lines
    assert "weights move" not in lines.split("Before the vocab-parallel lookup")[0]  # the table's rows
    assert "IREE 3.13 does not consume" in lines


def test_iree_cuda_target_verdict_flips():
    run = results.load(results.RESULTS_DIR, "iree-cuda-speed-*.json")[-1]
    assert "**not met**" in "\n".join(vs_bf16_section.iree_cuda_lines([run]))
    fast = copy.deepcopy(run)
    fast["best"]["ratio_vs_xla_bf16"] = vs_bf16_section.IREE_TARGET
    assert "): met:" in "\n".join(vs_bf16_section.iree_cuda_lines([fast]))
