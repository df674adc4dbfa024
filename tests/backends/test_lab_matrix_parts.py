"""The matrix-vs-bf16's own parts that run anywhere: the torch anchors' shapes and their
skip path, the dense baselines' casts, the parity bound a cell is held to."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model_impl import checks
from model_impl.lab import anchors, fusion
from model_impl.llama.shapes import llama32_config, shrunk_llama32_config
from model_impl.llama.weights import LINEAR_NAMES, cast_weights, synthetic


def test_anchor_step_shapes_are_the_models_linears_and_head():
    cfg = llama32_config()
    shapes = anchors.step_shapes(cfg)
    assert len(shapes) == len(LINEAR_NAMES) * cfg.num_layers + 1
    assert shapes[-1] == (cfg.vocab_size, cfg.hidden_size)
    assert shapes[: len(LINEAR_NAMES)] == [
        (cfg.q_size, cfg.hidden_size),
        (cfg.kv_size, cfg.hidden_size),
        (cfg.kv_size, cfg.hidden_size),
        (cfg.hidden_size, cfg.q_size),
        (cfg.intermediate_size, cfg.hidden_size),
        (cfg.intermediate_size, cfg.hidden_size),
        (cfg.hidden_size, cfg.intermediate_size),
    ]


def test_anchors_say_why_they_were_not_measured_without_a_cuda_torch():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA torch: the anchors are measured (tests/cuda)")
    assert anchors.measure(llama32_config()) == {"skipped": "torch sees no CUDA device"}


def test_dense_baselines_cast_half_precision_weights_to_the_other_half_precision():
    """bf16 arrays are ml_dtypes, not numpy floating types: a cast that tested np.floating kept
    bf16 norms in an f16 model (the f16 baseline then failed to trace)."""
    cfg = dataclasses.replace(shrunk_llama32_config(layers=1), dtype="bfloat16")
    f16 = cast_weights(synthetic(cfg, 0), "float16")
    assert {np.asarray(a).dtype.name for a in (f16.final_norm, f16.layers[0].attn_norm, f16.layers[0].wq)} == {
        "float16"
    }


def test_a_half_precision_cell_is_held_to_the_dtypes_logit_bound_and_fp32_to_the_in_graph_bound():
    assert fusion.parity_atol("float32") == checks.IN_GRAPH_VS_HOST_DEQUANT_ATOL
    assert fusion.parity_atol("bfloat16") == checks.logit_atol("bfloat16")
