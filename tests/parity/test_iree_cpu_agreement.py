"""IREE-CPU (llvm-cpu, local-task) runs the same exported graphs as XLA-CPU and agrees."""

from __future__ import annotations

import pytest

from model_impl import checks
from model_impl.checks import FP32_REORDERING_ATOL, GREEDY_TOKENS

pytestmark = pytest.mark.slow


@pytest.fixture(params=["fp32", "int4"])
def pair(request, greedy_runs):
    return greedy_runs.run("iree-cpu", request.param), greedy_runs.run("xla-cpu", request.param)


def test_iree_cpu_greedy_tokens_equal_xla_cpu_48_of_48(pair):
    cmp = checks.compare(*pair)
    assert cmp.agreement == f"{GREEDY_TOKENS}/{GREEDY_TOKENS}", cmp


def test_iree_cpu_logits_equal_xla_cpu_up_to_fp32_reordering(pair):
    cmp = checks.compare(*pair)
    # Row 0 is the prefill; rows 1.. are decode steps.
    assert len(cmp.per_step_max_abs_diff) == GREEDY_TOKENS
    worst = max(cmp.per_step_max_abs_diff)
    assert worst <= FP32_REORDERING_ATOL, (worst, cmp.per_step_max_abs_diff)
