"""Float32 checkpoints made by mlx-lm's converter run through our in-graph int4 path unchanged
and agree with mlx_lm's own greedy generation (the peer, which fuses its int4 matmul), log-
probabilities included. mlx_lm must first build the same model from the config as we do. The
float16/bfloat16 checkpoints, as mlx-community ships them: test_mlx_peer_half.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_impl import checks
from model_impl.checks import mlx_peer

from .conftest import assert_agrees, assert_loads_packed, variants

pytestmark = pytest.mark.slow
FLOAT32 = variants(["float32"])


@pytest.mark.parametrize(**FLOAT32)
def test_mlx_checkpoint_loads_packed_with_its_own_bits_and_groups(mlx_checkpoint):
    assert_loads_packed(mlx_checkpoint)


@pytest.mark.parametrize(**FLOAT32)
def test_mlx_lm_builds_the_same_model_from_the_checkpoint_as_we_do(mlx_checkpoint):
    assert mlx_peer.config_differences(mlx_checkpoint[0]) == {}


@pytest.mark.parametrize("backend", ["xla-cpu", "iree-cpu"])
@pytest.mark.parametrize(**FLOAT32)
def test_our_int4_graph_agrees_with_mlx_lm_greedy(mlx_checkpoint, backend, our_runs, peer_runs):
    assert_agrees(mlx_checkpoint, backend, our_runs, peer_runs)


@pytest.mark.parametrize("backend", ["xla-cpu", "iree-cpu"])
@pytest.mark.parametrize(**FLOAT32)
def test_our_log_probs_match_mlx_lm_prefill_and_decode(mlx_checkpoint, backend, our_runs, peer_runs):
    path, dtype = mlx_checkpoint[:2]
    ours = our_runs(path, backend)
    cmp = mlx_peer.compare(ours, peer_runs(path, ours), dtype).comparison
    # Row 0 is the prefill's last position; rows up to the first divergence are decode steps.
    assert len(cmp.per_step_max_abs_diff) >= 2
    assert max(cmp.per_step_max_abs_diff) <= checks.logit_atol(dtype), cmp.per_step_max_abs_diff


def test_near_tie_rule_rejects_a_clear_divergence():
    from model_impl.backends.generate import Generation

    logits = np.zeros((2, 8), np.float32)
    logits[:, 3] = 5.0  # token 3 wins by 5 nats: not a tie
    ours = Generation([1], [3, 3], logits)
    peer = Generation([1], [3, 4], mlx_peer.log_softmax(logits))
    pc = mlx_peer.compare(ours, peer)
    assert pc.comparison.first_divergence == 1 and not pc.agrees


def test_a_recorded_run_answers_only_its_own_key(tmp_path):
    key = {"mlx": "1", "mlx-lm": "2", "checkpoint_sha256": "ab", "prompt": [1, 2], "max_new_tokens": 3}
    f = tmp_path / "rec.json"
    f.write_text(json.dumps({"runs": [{"variant": "v", "key": key, "tokens": [5, 6, 7]}]}))
    assert mlx_peer.recorded_tokens(key, f) == [5, 6, 7]
    for field, other in (("mlx", "9"), ("checkpoint_sha256", "cd"), ("prompt", [1]), ("max_new_tokens", 4)):
        assert mlx_peer.recorded_tokens(key | {field: other}, f) is None
    assert mlx_peer.recorded_tokens(key, tmp_path / "none.json") is None


def test_the_checkpoint_key_changes_with_any_weight_byte(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 8)
    a = mlx_peer.greedy_key(tmp_path, [1], 2)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 7 + b"\x01")
    assert mlx_peer.greedy_key(tmp_path, [1], 2)["checkpoint_sha256"] != a["checkpoint_sha256"]
