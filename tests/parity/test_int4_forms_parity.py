"""Every in-graph int4 representation runs the model within the in-graph tolerance of host
dequant and greedy-decodes the baseline's tokens; IREE's fused-uint4 miscompile shows at
model scale."""

from __future__ import annotations

import pytest

from model_impl import checks
from model_impl.backends import generate
from model_impl.lab.fusion import greedy_by_decode, parity_prompt
from model_impl.llama.representations import NATIVE_FORMS, convert
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import dequantize_weights, quantize_weights, synthetic


@pytest.fixture(scope="module")
def shrunk_model():
    cfg = shrunk_llama32_config()
    int4 = quantize_weights(synthetic(cfg, 0))
    prompt = parity_prompt(cfg)
    host = greedy_by_decode(generate.make_runner(cfg, dequantize_weights(int4)), prompt, checks.GREEDY_TOKENS)
    baseline = greedy_by_decode(generate.make_runner(cfg, int4), prompt, checks.GREEDY_TOKENS)
    return cfg, int4, prompt, host, baseline


@pytest.mark.parametrize("backend,form", [("xla-cpu", f) for f in NATIVE_FORMS] + [("iree-cpu", "s4-grouped")])
def test_representation_matches_host_dequant_and_baseline_tokens(shrunk_model, backend, form):
    cfg, int4, prompt, host, baseline = shrunk_model
    run = greedy_by_decode(generate.make_runner(cfg, convert(int4, form), backend), prompt, checks.GREEDY_TOKENS)
    vs_host = checks.compare(host, run)
    assert vs_host.max_abs_logit_diff <= checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL, vs_host
    assert checks.compare(baseline, run).agreeing == checks.GREEDY_TOKENS


def test_iree_cpu_u4_grouped_model_diverges_from_the_baseline(shrunk_model):
    """The fused-uint4 miscompile (tests/lowering/test_representations.py) at model scale: the
    parity check gives its other answer."""
    cfg, int4, prompt, host, baseline = shrunk_model
    run = greedy_by_decode(
        generate.make_runner(cfg, convert(int4, "u4-grouped"), "iree-cpu"), prompt, checks.GREEDY_TOKENS
    )
    assert checks.compare(host, run).max_abs_logit_diff > 1.0
