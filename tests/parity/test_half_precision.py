"""bf16 and f16 end to end on the real model: against transformers in the same dtype (loaded
from a safetensors directory in that dtype, as it would be shipped), in-graph vs host dequant,
int4 against dense weights of the same dtype, and IREE-CPU against XLA-CPU. Every bound comes
from the dtype's unit roundoff (model_impl.checks)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from model_impl import checkpoints, checks
from model_impl.checks import reference
from model_impl.llama import model

pytestmark = pytest.mark.slow

HALF = ["bfloat16", "float16"]


@pytest.fixture(scope="session")
def half_hf_dirs(real_model, tokenizer, tmp_path_factory):
    """The real model as HF safetensors directories in each half dtype (how bf16/f16
    checkpoints ship), made once."""
    cfg, weights = real_model
    return {
        dtype: checkpoints.save_hf_dir(cfg, weights, tmp_path_factory.mktemp(f"smollm2-{dtype}"), dtype=dtype)
        for dtype in HALF
    }


@pytest.fixture(scope="session")
def transformers_half(half_hf_dirs, prompt_ids):
    """transformers in each half dtype: its prompt logits and its greedy run, made once (live, or
    rebuilt from the saved reference where torch is not installed: its measured rebuild distance
    is added to every logit difference below)."""
    return {dtype: reference.run(d, dtype, prompt_ids, checks.GREEDY_TOKENS) for dtype, d in half_hf_dirs.items()}


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_precision_safetensors_directory_loads_as_stored(half_hf_dirs, dtype):
    cfg, weights = checkpoints.load(half_hf_dirs[dtype])
    assert cfg.dtype == dtype
    assert {np.dtype(w.dtype).name for w in (weights.embed, weights.final_norm, weights.layers[0].wq)} == {dtype}


@pytest.mark.parametrize("dtype", HALF)
def test_half_prompt_logits_match_transformers_in_the_same_dtype(
    half_hf_dirs, transformers_half, prompt_ids, record_property, dtype
):
    cfg, weights = checkpoints.load(half_hf_dirs[dtype])
    ours = np.asarray(model.all_logits(cfg, weights, jnp.asarray(prompt_ids, jnp.int32)))
    ref = transformers_half[dtype]
    worst = float(np.max(np.abs(ours - ref.prompt_logits))) + ref.rebuild_atol
    record_property(f"{dtype}_prefill_vs_transformers", worst)
    assert worst <= checks.logit_atol(dtype), f"{dtype}: max |dlogit| {worst:.3g} > {checks.logit_atol(dtype):.3g}"


@pytest.mark.parametrize("dtype", HALF)
def test_half_greedy_agrees_with_transformers_or_parts_at_a_near_tie(greedy_runs, transformers_half, dtype):
    ours = greedy_runs.run("xla-cpu", "dense", dtype)
    ref = transformers_half[dtype]
    verdict = checks.greedy_agreement(ours, ref.greedy, checks.near_tie_gap(dtype))
    assert verdict.agrees, (verdict, ref.source)
    rows = verdict.comparison.per_step_max_abs_diff  # up to and including the divergence
    assert max(rows) + ref.rebuild_atol <= checks.logit_atol(dtype), (rows, ref.source)


@pytest.mark.parametrize("dtype", HALF)
def test_half_in_graph_dequant_matches_host_dequant_in_the_same_dtype(greedy_runs, dtype):
    in_graph, host = greedy_runs.run("xla-cpu", "int4", dtype), greedy_runs.run("xla-cpu", "host-dequant", dtype)
    verdict = checks.greedy_agreement(in_graph, host, checks.near_tie_gap(dtype))
    assert verdict.agrees, verdict
    worst = max(verdict.comparison.per_step_max_abs_diff)
    fma = checks.xla_cpu_half_rounding(dtype) == checks.FMA
    assert worst <= checks.in_graph_vs_host_dequant_atol(dtype, fma), (worst, fma, verdict.comparison)


@pytest.mark.parametrize("dtype", HALF)
def test_half_int4_follows_dense_of_the_same_dtype_and_writes_text(greedy_runs, dtype):
    int4, dense = greedy_runs.run("xla-cpu", "int4", dtype), greedy_runs.run("xla-cpu", "dense", dtype)
    cmp = checks.compare(int4, dense)
    rank = checks.rank_at_divergence(int4, dense)
    assert cmp.first_divergence is None or cmp.first_divergence >= 1, cmp
    assert rank is None or rank < checks.INT4_DIVERGENCE_TOP_K, (cmp.agreement, rank)
    assert checks.degeneracy(int4.tokens).coherent


@pytest.mark.parametrize("weights", ["dense", "int4"])
@pytest.mark.parametrize("dtype", HALF)
def test_half_iree_cpu_agrees_with_xla_cpu_in_the_same_dtype(greedy_runs, dtype, weights):
    iree, xla = greedy_runs.run("iree-cpu", weights, dtype), greedy_runs.run("xla-cpu", weights, dtype)
    verdict = checks.greedy_agreement(iree, xla, checks.near_tie_gap(dtype))
    assert verdict.agrees, verdict
    assert max(verdict.comparison.per_step_max_abs_diff) <= checks.logit_atol(dtype)
