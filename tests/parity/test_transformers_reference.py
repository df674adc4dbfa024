"""Our fp32 graph against transformers' LlamaForCausalLM (torch, fp32) on the same weights."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from model_impl import checkpoints, checks
from model_impl.checks import FP32_REORDERING_ATOL, reference
from model_impl.llama import model
from model_impl.llama.config import load_hf_config, rope_inv_freq
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import synthetic

pytestmark = pytest.mark.slow


# Against a reference rebuilt from its saved outputs (no torch here) the rebuild's own measured
# distance from transformers' logits is added: |ours - transformers| <= |ours - rebuilt| + it.


def test_real_model_prefill_logits_match_transformers(real_model, hf_reference, prompt_ids):
    cfg, weights = real_model
    ours = np.asarray(model.all_logits(cfg, weights, jnp.asarray(prompt_ids, jnp.int32)))
    ref = hf_reference.prompt_logits
    assert ours.shape == ref.shape == (len(prompt_ids), cfg.vocab_size)
    worst = float(np.max(np.abs(ours - ref))) + hf_reference.rebuild_atol
    assert worst <= FP32_REORDERING_ATOL, f"max |dlogit| vs transformers {worst:.3g} ({hf_reference.source})"


def test_real_model_greedy_48_tokens_match_transformers(greedy_runs, hf_reference):
    fp32_run = greedy_runs.run("xla-cpu", "fp32")
    cmp = checks.compare(fp32_run, hf_reference.greedy)
    assert cmp.agreement == f"{checks.GREEDY_TOKENS}/{checks.GREEDY_TOKENS}", (cmp, hf_reference.source)


def test_real_model_decode_logits_match_transformers(greedy_runs, hf_reference):
    fp32_run = greedy_runs.run("xla-cpu", "fp32")
    cmp = checks.compare(fp32_run, hf_reference.greedy)
    worst = cmp.max_abs_logit_diff + hf_reference.rebuild_atol
    assert worst <= FP32_REORDERING_ATOL, (cmp.per_step_max_abs_diff, hf_reference.source)


def test_decode_steps_match_full_recompute(greedy_runs, real_model):
    """The KV-cache path (prefill + decode steps) equals a cacheless forward on the whole text."""
    fp32_run = greedy_runs.run("xla-cpu", "fp32")
    cfg, weights = real_model
    text = fp32_run.prompt_tokens + fp32_run.tokens[:-1]
    full = np.asarray(model.all_logits(cfg, weights, jnp.asarray(text, jnp.int32)))
    cached = fp32_run.logits  # row k predicts tokens[k], from position len(prompt)-1+k
    start = len(fp32_run.prompt_tokens) - 1
    worst = float(np.max(np.abs(full[start:] - cached)))
    assert worst <= FP32_REORDERING_ATOL, worst


@pytest.fixture(scope="module")
def llama32_layout_checkpoint(tmp_path_factory):
    """A synthetic checkpoint with the Llama-3.2-1B layout (llama3 RoPE, GQA 4:1, tied
    embeddings, bf16 safetensors), shrunk to 2 layers so transformers runs it quickly."""
    cfg = shrunk_llama32_config()
    weights = synthetic(cfg, seed=3)
    directory = tmp_path_factory.mktemp("llama32_layout")
    import ml_dtypes

    checkpoints.save_hf_dir(cfg, weights, directory, dtype=ml_dtypes.bfloat16)
    return directory


LAYOUT_IDS = [int(i) for i in np.random.default_rng(0).integers(0, shrunk_llama32_config().vocab_size, 40)]


@pytest.fixture(scope="module")
def layout_reference(llama32_layout_checkpoint):
    """transformers in fp32 on the bf16 checkpoint: its logits at 40 random prompt ids."""
    return reference.run(llama32_layout_checkpoint, "float32", LAYOUT_IDS)


def test_llama32_layout_checkpoint_logits_match_transformers(llama32_layout_checkpoint, layout_reference):
    cfg, weights = checkpoints.load(llama32_layout_checkpoint, "dense", "float32")  # stored bf16, run in fp32
    assert cfg.rope_scaling is not None and cfg.tie_word_embeddings and weights.lm_head is None
    ids = LAYOUT_IDS
    ours = np.asarray(model.all_logits(cfg, weights, jnp.asarray(ids, jnp.int32)))
    ref = layout_reference.prompt_logits
    worst = float(np.max(np.abs(ours - ref))) + layout_reference.rebuild_atol
    assert worst <= FP32_REORDERING_ATOL, (worst, layout_reference.source)

    # The comparison is sensitive to the RoPE variant: without llama3 scaling it fails.
    plain = dataclasses.replace(cfg, rope_scaling=None)
    assert not np.allclose(rope_inv_freq(plain), rope_inv_freq(cfg))
    unscaled = np.asarray(model.all_logits(plain, weights, jnp.asarray(ids, jnp.int32)))
    assert float(np.max(np.abs(unscaled - ref))) > FP32_REORDERING_ATOL + layout_reference.rebuild_atol


def test_llama32_layout_query_heads_read_kv_heads_as_transformers_does(
    llama32_layout_checkpoint, layout_reference, monkeypatch
):
    """Query head h reads KV head h // (heads / kv_heads). With two KV heads a wrong mapping
    (h % kv_heads, the interleaved one) must disagree with transformers."""
    cfg, weights = checkpoints.load(llama32_layout_checkpoint, "dense", "float32")  # stored bf16, run in fp32
    heads, kv = cfg.num_heads, cfg.num_kv_heads
    groups = heads // kv
    assert kv >= 2 and groups >= 2, "the mapping is only exercised with several KV heads and groups"
    # Model order j holds query head h so that the model's j // groups is h % kv.
    order = np.array([(h % kv) * groups + h // kv for h in range(heads)])
    assert (order != np.arange(heads)).any()
    real_attention = model.attention

    def interleaved_attention(cfg, q, k_cache, v_cache, positions):
        t = q.shape[0]
        out = real_attention(cfg, q.at[:, order].set(q), k_cache, v_cache, positions)
        return out.reshape(t, heads, cfg.head_dim)[:, order].reshape(t, -1)

    ref = layout_reference.prompt_logits
    monkeypatch.setattr(model, "attention", interleaved_attention)
    wrong = np.asarray(model.all_logits(cfg, weights, jnp.asarray(LAYOUT_IDS, jnp.int32)))
    assert float(np.max(np.abs(wrong - ref))) > FP32_REORDERING_ATOL + layout_reference.rebuild_atol


def test_shrunk_config_keeps_the_llama32_layout(llama32_layout_checkpoint):
    from model_impl.llama.config import LLAMA32_CONFIG_PATH

    real = json.loads(LLAMA32_CONFIG_PATH.read_text())
    ours = json.loads((llama32_layout_checkpoint / "config.json").read_text())
    assert ours["rope_scaling"] == {**real["rope_scaling"]}
    assert ours["tie_word_embeddings"] is real["tie_word_embeddings"] is True
    assert ours["head_dim"] == real["head_dim"]
    assert (
        ours["num_attention_heads"] // ours["num_key_value_heads"]
        == real["num_attention_heads"] // real["num_key_value_heads"]
    )
    assert load_hf_config(LLAMA32_CONFIG_PATH).num_layers == 16
