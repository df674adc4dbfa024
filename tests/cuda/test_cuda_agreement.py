"""The same int4 and dense graphs, in float32 and bfloat16, on a real GPU agree with the CPU run:
token for token in float32; in bfloat16 up to a near-tie, logits within the dtype's bound."""

from __future__ import annotations

import numpy as np
import pytest

from model_impl import checks
from model_impl.checks import FP32_REORDERING_ATOL, GREEDY_TOKENS
from model_impl.llama.weights import parse_mode_label

from .conftest import CUDA_BACKENDS

pytestmark = pytest.mark.cuda


MODES = ["int4", "fp32", "int4-bf16", "bf16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_greedy_tokens_agree_with_cpu(greedy_runs, cuda_record, backend, mode):
    """float32: 48/48. bfloat16: 48/48, or equal up to a first divergence at a near-tie."""
    quant, dtype = parse_mode_label(mode)
    run, info = greedy_runs.get(backend, quant, dtype)
    verdict = checks.greedy_agreement(run, greedy_runs.run("xla-cpu", quant, dtype), checks.near_tie_gap(dtype))
    cmp = verdict.comparison
    cuda_record["figures"][f"{backend}/{mode}"] = {
        "token_agreement_vs_xla_cpu": cmp.agreement,
        "first_divergence": cmp.first_divergence,
        "max_abs_logit_diff_prefill": cmp.per_step_max_abs_diff[0] if cmp.per_step_max_abs_diff else None,
        "max_abs_logit_diff_decode": max(cmp.per_step_max_abs_diff[1:], default=None),
        "compile_seconds": info["compile_seconds"],
        "cuda_target": info["cuda_target"],
        "top2_gap_at_divergence": verdict.top2_gap_at_divergence,
        "near_tie_bound": verdict.near_tie_bound,
    }
    if dtype == "float32":
        assert cmp.agreement == f"{GREEDY_TOKENS}/{GREEDY_TOKENS}", cmp
    assert verdict.agrees, verdict


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_logits_match_cpu_every_step_prefill_included(greedy_runs, backend, mode):
    quant, dtype = parse_mode_label(mode)
    cmp = checks.compare(greedy_runs.run(backend, quant, dtype), greedy_runs.run("xla-cpu", quant, dtype))
    assert len(cmp.per_step_max_abs_diff) >= 1
    worst = max(cmp.per_step_max_abs_diff)
    assert worst <= checks.logit_atol(dtype), (backend, mode, cmp.per_step_max_abs_diff)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_prefill_kv_cache_write_lowers_and_runs_on_cuda(real_model_int4, prompt_ids, backend):
    """dynamic_update_slice (not scatter) writes the prompt's K/V; the GPU cache equals the CPU's."""
    from model_impl.backends import generate

    cfg, weights = real_model_int4
    caches = {}
    for b in ("xla-cpu", backend):
        runner = generate.make_runner(cfg, weights, b)
        padded = np.zeros(generate.prompt_bucket(len(prompt_ids)), np.int32)
        padded[: len(prompt_ids)] = prompt_ids
        runner.prefill(padded, len(prompt_ids), generate.cache_length(len(prompt_ids), 8))
        caches[b] = runner.cache_to_host()
    n = len(prompt_ids)
    for cpu, gpu in zip(caches["xla-cpu"], caches[backend]):
        assert np.abs(gpu[:, :, :n]).max() > 0  # the prompt's slots were written
        np.testing.assert_allclose(gpu[:, :, :n], cpu[:, :, :n], atol=FP32_REORDERING_ATOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_decode_loop_equals_per_step_path(greedy_runs, cuda_record, backend, mode):
    """The agreement runs above use the device loop (32 steps per dispatch: a full chunk and a
    short one); the per-step path chooses the same 48 tokens on the same GPU. Logits: inside a
    loop body the compiler may fuse the step differently, so rows are held to the dtype's
    reordering bound and whether they are bit-identical is recorded."""
    quant, dtype = parse_mode_label(mode)
    loop = greedy_runs.run(backend, quant, dtype)
    stepped = greedy_runs.run(backend, quant, dtype, chunk=None)
    verdict = checks.greedy_agreement(loop, stepped, checks.near_tie_gap(dtype))
    cmp = verdict.comparison
    shared = cmp.per_step_max_abs_diff[: (cmp.first_divergence or GREEDY_TOKENS) + 1]  # same context
    cuda_record["loop_vs_per_step"][f"{backend}/{mode}"] = {
        "token_agreement": cmp.agreement,
        "first_divergence": cmp.first_divergence,
        "bit_identical_logits": bool(np.array_equal(loop.logits, stepped.logits)),
        "max_abs_logit_diff_shared_context": max(shared),
    }
    if dtype == "float32":
        assert cmp.agreement == f"{GREEDY_TOKENS}/{GREEDY_TOKENS}", cmp
    assert verdict.agrees, verdict
    assert max(shared) <= checks.logit_atol(dtype), shared
