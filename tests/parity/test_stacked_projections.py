"""Stacked projections (q|k|v and gate|up as one linear each, stacked at load time): the stack is
the same weights, bit for bit, and the model computes what the unstacked model computes."""

from __future__ import annotations

import numpy as np
import pytest

from model_impl import checks
from model_impl.backends import generate
from model_impl.lab.fusion import greedy_by_decode, parity_prompt
from model_impl.llama import sharding
from model_impl.llama.representations import convert, convert_dense
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import (
    STACKED,
    is_stacked,
    linear_bytes,
    linear_fields,
    quantize_weights,
    specs,
    stack_projections,
    stack_rows,
    synthetic,
)


@pytest.fixture(scope="module")
def shrunk():
    cfg = shrunk_llama32_config()
    w = synthetic(cfg, 0)
    return cfg, w, quantize_weights(w)


def test_stacked_packed_words_dequantize_to_the_parts_dequants_bit_for_bit(shrunk):
    _, w, q = shrunk
    layer = stack_projections(q).layers[0]
    parts = [getattr(q.layers[0], n) for n in STACKED["w_qkv"]]
    for dtype in ("float32", "bfloat16"):
        want = np.concatenate([p.dequantize(dtype) for p in parts])
        assert np.array_equal(layer.w_qkv.dequantize(dtype), want)
    dense = stack_projections(w).layers[0]
    assert np.array_equal(dense.w_gate_up, np.concatenate([w.layers[0].w_gate, w.layers[0].w_up]))


def test_stacking_leaves_the_bytes_and_names_the_stacks(shrunk):
    cfg, w, q = shrunk
    for weights in (w, q, specs(cfg, "int4")):
        stacked = stack_projections(weights)
        assert is_stacked(stacked) and not is_stacked(weights)
        assert linear_fields(stacked.layers[0]) == ("wo", "w_down", "w_qkv", "w_gate_up")
        assert linear_bytes(stacked) == linear_bytes(weights)
        assert stack_projections(stacked) == stacked  # idempotent
    assert specs(cfg, "int4").layers[0].wq.packed.shape[0] == cfg.q_size
    assert stack_projections(specs(cfg, "int4")).layers[0].w_qkv.packed.shape[0] == cfg.q_size + 2 * cfg.kv_size


def test_stacking_a_converted_representation_is_one_line_naming_the_layer(shrunk):
    _, _, q = shrunk
    one_line = r"^layers\.0\.w_qkv: stack_rows: \w+ cannot be stacked; stack the checkpoint"
    with pytest.raises(ValueError, match=one_line) as e:
        stack_projections(convert(q, "u4-magic"))
    assert "\n" not in str(e.value)
    mixed = [q.layers[0].wq, np.zeros((4, 64), np.float32)]
    with pytest.raises(ValueError, match="differ in form"):
        stack_rows(*mixed)


def test_stacked_weights_have_no_tensor_parallel_layout(shrunk):
    cfg, _, q = shrunk
    with pytest.raises(sharding.ShardingError, match=r"layers\.0\.w_qkv is stacked"):
        sharding.check(cfg, stack_projections(q), 2)


# (label, weights, form, backend): dense in both GEMV forms, the checkpoint's int4 form on both
# CPU compilers, and the two reduce-written int4 forms the GPU matrix stacks. The stack is made
# from the loaded weights, then converted to the form (as the matrix does).
CASES = [
    ("dense-dot", "dense", lambda w: w, "xla-cpu"),
    ("dense-reduce", "dense", lambda w: convert_dense(w, "reduce"), "xla-cpu"),
    ("u32-affine", "int4", lambda w: w, "xla-cpu"),
    ("u32-affine", "int4", lambda w: w, "iree-cpu"),
    ("u4-magic", "int4", lambda w: convert(w, "u4-magic"), "xla-cpu"),
    ("u32-word", "int4", lambda w: convert(w, "u32-word"), "xla-cpu"),
    ("u4-magic+word-mlp", "int4", lambda w: convert(w, "u4-magic+word-mlp"), "xla-cpu"),
]


def test_a_mix_gives_each_linear_its_own_form_stacked_or_not(shrunk):
    _, _, q = shrunk
    for weights in (q, stack_projections(q)):
        layer = convert(weights, "u4-magic+word-mlp").layers[0]
        forms = {n: type(getattr(layer, n)).__name__ for n in linear_fields(layer)}
        word, magic = (
            type(convert(q, "u32-word").layers[0].wq).__name__,
            type(convert(q, "u4-magic").layers[0].wq).__name__,
        )
        assert word != magic
        for name, form in forms.items():
            assert form == (word if name in ("w_gate", "w_up", "w_gate_up") else magic), (name, forms)


@pytest.mark.parametrize("label,weights,form,backend", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_stacked_model_matches_the_unstacked_model(shrunk, label, weights, form, backend):
    """48/48 greedy tokens, logits within fp32's reordering bound (a stacked GEMV may block its
    sum differently from three small ones)."""
    cfg, w, q = shrunk
    loaded = w if weights == "dense" else q
    prompt = parity_prompt(cfg)
    runs = [
        greedy_by_decode(generate.make_runner(cfg, form(x), backend), prompt, checks.GREEDY_TOKENS)
        for x in (loaded, stack_projections(loaded))
    ]
    cmp = checks.compare(*runs)
    assert cmp.agreeing == checks.GREEDY_TOKENS, cmp
    assert cmp.max_abs_logit_diff <= checks.logit_atol("float32"), cmp


def test_stacked_real_model_int4_matches_unstacked(greedy_runs, prompt_ids):
    """The real model (SmolLM2-135M), int4 in the checkpoint's form, through the generate loop."""
    cfg, q = greedy_runs.model("int4")
    run = generate.generate(
        generate.make_runner(cfg, stack_projections(q), "xla-cpu"),
        prompt_ids,
        checks.GREEDY_TOKENS,
        stop_at_eos=False,
        keep_logits=True,
    )
    cmp = checks.compare(greedy_runs.run("xla-cpu", "int4"), run)
    assert cmp.agreeing == checks.GREEDY_TOKENS, cmp
    assert cmp.max_abs_logit_diff <= checks.logit_atol("float32"), cmp
