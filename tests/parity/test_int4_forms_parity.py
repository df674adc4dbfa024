"""Every in-graph int4 representation runs the model within the in-graph tolerance of host
dequant and greedy-decodes the baseline's tokens; IREE's fused-uint4 miscompile shows at
model scale."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from model_impl import checks
from model_impl.backends import generate
from model_impl.lab.fusion import greedy_by_decode, parity_prompt
from model_impl.llama import model
from model_impl.llama.representations import NATIVE_FORMS, PALLAS, REDUCE_FORMS, WORD_FORMS, convert
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


GEMV_FORMS = (*REDUCE_FORMS, *WORD_FORMS)


@pytest.mark.parametrize(
    "backend,form",
    [("xla-cpu", f) for f in (*NATIVE_FORMS, *GEMV_FORMS, PALLAS)] + [("iree-cpu", "s4-grouped")],
)  # PALLAS: our kernel, in Pallas' interpreter (its float32 mode, fac32)
def test_representation_matches_host_dequant_and_baseline_tokens(shrunk_model, backend, form):
    cfg, int4, prompt, host, baseline = shrunk_model
    run = greedy_by_decode(generate.make_runner(cfg, convert(int4, form), backend), prompt, checks.GREEDY_TOKENS)
    vs_host = checks.compare(host, run)
    assert vs_host.max_abs_logit_diff <= checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL, vs_host
    assert checks.compare(baseline, run).agreeing == checks.GREEDY_TOKENS


def test_iree_cpu_u4_grouped_model_diverges_from_the_baseline(shrunk_model):
    """The fused-uint4 miscompile (tests/lowering/test_int4_forms_lowering.py) at model scale: the
    parity check gives its other answer."""
    cfg, int4, prompt, host, baseline = shrunk_model
    run = greedy_by_decode(
        generate.make_runner(cfg, convert(int4, "u4-grouped"), "iree-cpu"), prompt, checks.GREEDY_TOKENS
    )
    assert checks.compare(host, run).max_abs_logit_diff > 1.0


@pytest.fixture(scope="module")
def shrunk_bf16_model():
    cfg = dataclasses.replace(shrunk_llama32_config(), dtype="bfloat16")
    int4 = quantize_weights(synthetic(cfg, 0), embedding=True)
    prompt = parity_prompt(cfg)
    host = greedy_by_decode(
        generate.make_runner(cfg, dequantize_weights(int4, "bfloat16")), prompt, checks.GREEDY_TOKENS
    )
    baseline = greedy_by_decode(generate.make_runner(cfg, int4), prompt, checks.GREEDY_TOKENS)
    return cfg, int4, prompt, host, baseline


@pytest.mark.parametrize(
    "form,head", [(f, "reduce") for f in GEMV_FORMS] + [(f, "int4") for f in (*WORD_FORMS, PALLAS)]
)  # an int4 head in the form needs its row gather: the word forms and our kernel hold MLX's words
def test_gemv_forms_in_bf16_stay_within_the_half_precision_bound_of_host_dequant(shrunk_bf16_model, form, head):
    """bf16 compute, the tied embedding quantized too (``head="int4"`` runs the head in the form;
    ``"reduce"``: the head dequantized whole, as a QuantizedLinear): the logits within the bf16
    parity bound of the host dequant, greedy tokens equal to the baseline form's up to a near-tie."""
    cfg, int4, prompt, host, baseline = shrunk_bf16_model
    run = greedy_by_decode(generate.make_runner(cfg, convert(int4, form, head)), prompt, checks.GREEDY_TOKENS)
    assert checks.compare(host, run).max_abs_logit_diff <= checks.logit_atol("bfloat16")
    agreement = checks.greedy_agreement(run, baseline, checks.near_tie_gap("bfloat16"))
    assert agreement.agrees, agreement


def test_batched_decode_gives_each_sequence_its_own_decode_step():
    """:func:`model.decode_batch` (the linears see every sequence's row at once; the cache write
    and attention stay per sequence) equals one decode step per sequence, for three sequences at
    different positions, dense and int4 (a word form, whose rows unroll)."""
    cfg = shrunk_llama32_config()
    dense = synthetic(cfg, 0)
    for weights in (dense, convert(quantize_weights(dense), "u32-word")):
        caches, tokens, positions = [], [], []
        for prompt in ([5, 6, 7], [9, 10, 11, 12], [3]):
            logits, cache = model.prefill(
                cfg, weights, np.asarray(prompt, np.int32), len(prompt), model.KVCache.zeros(cfg, 16)
            )
            caches.append(cache)
            tokens.append(int(np.argmax(logits)))
            positions.append(len(prompt))
        want = [
            model.decode_step(cfg, weights, np.int32(t), np.int32(p), c) for t, p, c in zip(tokens, positions, caches)
        ]
        stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *caches)
        got, cache = model.decode_batch(
            cfg, weights, np.asarray(tokens, np.int32), np.asarray(positions, np.int32), stacked
        )
        np.testing.assert_allclose(
            np.asarray(got), np.stack([np.asarray(w[0]) for w in want]), atol=checks.FP32_REORDERING_ATOL, rtol=0
        )
        for b, (_, c) in enumerate(want):
            np.testing.assert_allclose(
                np.asarray(cache.k[b]), np.asarray(c.k), atol=checks.FP32_REORDERING_ATOL, rtol=0
            )
