"""int4 weights dequantized in the graph agree with the same weights dequantized on the host."""

from __future__ import annotations

import numpy as np
import pytest

from model_impl import checks
from model_impl.checks import IN_GRAPH_VS_HOST_DEQUANT_ATOL, PARITY_DECODE_STEPS

pytestmark = pytest.mark.slow


def test_in_graph_dequant_matches_host_dequant_prefill_and_decode(greedy_runs):
    int4_run = greedy_runs.run("xla-cpu", "int4")
    host_dequant_run = greedy_runs.run("xla-cpu", "host-dequant")
    cmp = checks.compare(int4_run, host_dequant_run)
    # Row 0 is the prefill's last position, rows 1.. are decode steps.
    assert cmp.first_divergence is None or cmp.first_divergence > PARITY_DECODE_STEPS, cmp
    assert len(cmp.per_step_max_abs_diff) >= 1 + PARITY_DECODE_STEPS
    worst = max(cmp.per_step_max_abs_diff)
    assert worst <= IN_GRAPH_VS_HOST_DEQUANT_ATOL, (
        f"in-graph vs host dequant: max |dlogit| {worst:.3g} > {IN_GRAPH_VS_HOST_DEQUANT_ATOL} "
        f"(per step: {cmp.per_step_max_abs_diff})"
    )


def test_in_graph_dequant_agrees_48_of_48_tokens_with_host_dequant(greedy_runs):
    int4_run = greedy_runs.run("xla-cpu", "int4")
    host_dequant_run = greedy_runs.run("xla-cpu", "host-dequant")
    cmp = checks.compare(int4_run, host_dequant_run)
    assert cmp.agreement == f"{checks.GREEDY_TOKENS}/{checks.GREEDY_TOKENS}", cmp


def test_parity_check_detects_a_one_code_change(greedy_runs, real_model_int4, prompt_ids):
    """The comparison can fail: changing one packed word of one linear moves the logits."""
    int4_run = greedy_runs.run("xla-cpu", "int4")
    import dataclasses

    from model_impl.backends import generate
    from model_impl.llama.weights import dequantize_weights

    cfg, weights = real_model_int4
    layer = weights.layers[0]
    packed = np.array(layer.wq.packed)
    packed[0, 0] ^= np.uint32(0xF)  # one group's first code flipped
    wq = dataclasses.replace(layer.wq, packed=packed)
    tampered = dataclasses.replace(weights, layers=(dataclasses.replace(layer, wq=wq),) + weights.layers[1:])
    runner = generate.make_runner(cfg, dequantize_weights(tampered), "xla-cpu")
    run = generate.generate(runner, prompt_ids, 1, stop_at_eos=False, keep_logits=True)
    diff = float(np.max(np.abs(run.logits[0] - int4_run.logits[0])))
    assert diff > IN_GRAPH_VS_HOST_DEQUANT_ATOL, diff
