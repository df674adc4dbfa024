"""The same int4 (and fp32) graphs on a real GPU agree with the CPU run, token for token."""

from __future__ import annotations

import numpy as np
import pytest

from model_impl import checks
from model_impl.checks import FP32_REORDERING_ATOL, GREEDY_TOKENS

from .conftest import CUDA_BACKENDS

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("quant", ["int4", "fp32"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_greedy_tokens_equal_cpu_48_of_48(greedy_runs, cuda_record, backend, quant):
    run, info = greedy_runs.get(backend, quant)
    cmp = checks.compare(run, greedy_runs.run("xla-cpu", quant))
    cuda_record["figures"][f"{backend}/{quant}"] = {
        "token_agreement_vs_xla_cpu": cmp.agreement,
        "first_divergence": cmp.first_divergence,
        "max_abs_logit_diff_prefill": cmp.per_step_max_abs_diff[0] if cmp.per_step_max_abs_diff else None,
        "max_abs_logit_diff_decode": max(cmp.per_step_max_abs_diff[1:], default=None),
        "compile_seconds": info["compile_seconds"],
        "cuda_target": info["cuda_target"],
    }
    assert cmp.agreement == f"{GREEDY_TOKENS}/{GREEDY_TOKENS}", cmp


@pytest.mark.parametrize("quant", ["int4", "fp32"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_logits_match_cpu_every_step_prefill_included(greedy_runs, backend, quant):
    cmp = checks.compare(greedy_runs.run(backend, quant), greedy_runs.run("xla-cpu", quant))
    assert len(cmp.per_step_max_abs_diff) >= 1
    worst = max(cmp.per_step_max_abs_diff)
    assert worst <= FP32_REORDERING_ATOL, (backend, quant, cmp.per_step_max_abs_diff)


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
