"""Every in-graph int4 representation holds the MLX checkpoint's codes, scales and biases
exactly, and computes the same linear as the host dequant (model-level parity:
tests/parity/test_int4_forms_parity.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_impl import quant
from model_impl.checks import FP32_REORDERING_ATOL
from model_impl.llama import model, representations
from model_impl.llama.linears import DenseIOLinear, DenseReduceLinear, QuantizedLinear, linear
from model_impl.llama.representations import (
    BASELINE,
    DENSE_IO,
    GROUPED_FORMS,
    NATIVE_FORMS,
    convert,
    convert_dense,
    convert_linear,
    to_planar,
)
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import linear_fields, quantize_weights, synthetic

# One linear, inputs ~N(0,1), weights ~N(0, 1/in): outputs ~N(0,1). The forms differ from the
# host dequant only in float32 summation order (and, for s4-, in rounding b + 8s once):
# ~1e-6 relative over <= 1024 terms. 1e-5 absolute leaves 10x and is far below one
# quantization step (~1e-2).
LINEAR_ATOL = 1e-5


def _quantized(rng, out, n_in, group=64):
    w = rng.standard_normal((out, n_in), dtype=np.float32) * np.float32(n_in**-0.5)
    return QuantizedLinear(*quant.quantize(w, group, 4), group, 4)


def _codes(native) -> np.ndarray:
    """The stored codes back in MLX order [out, in], unsigned."""
    c = np.asarray(native.codes).astype(np.int16)
    if native.form in GROUPED_FORMS:
        c = c.transpose(1, 0, 2).reshape(c.shape[1], -1)
    elif native.form == "u4-affine-io":
        c = c.T
    return c + 8 if native.form.startswith("s4") else c


@settings(max_examples=20, deadline=None)
@given(
    out=st.sampled_from([16, 48]),
    groups=st.integers(1, 4),
    group=st.sampled_from([32, 64, 128]),
    form=st.sampled_from(NATIVE_FORMS),
    seed=st.integers(0, 2**16),
)
def test_native_forms_store_exactly_the_mlx_codes_scales_and_biases(out, groups, group, form, seed):
    q = _quantized(np.random.default_rng(seed), out, groups * group, group)
    n = convert_linear(q, form)
    np.testing.assert_array_equal(_codes(n), quant.unpack(q.packed, 4))
    scales = np.asarray(n.scales).T if np.asarray(n.scales).shape[0] != out else np.asarray(n.scales)
    biases = np.asarray(n.biases).T if np.asarray(n.biases).shape[0] != out else np.asarray(n.biases)
    np.testing.assert_array_equal(scales, q.scales)
    want_bias = q.biases + np.float32(8) * q.scales if form.startswith("s4") else q.biases
    np.testing.assert_array_equal(biases, want_bias)


@pytest.mark.parametrize("form", [BASELINE, *NATIVE_FORMS])
def test_each_representation_computes_the_host_dequant_linear(form):
    rng = np.random.default_rng(0)
    q = _quantized(rng, 96, 1024)
    x = rng.standard_normal((3, 1024), dtype=np.float32)
    got = np.asarray(jax.jit(linear)(x, convert_linear(q, form)))
    np.testing.assert_allclose(got, x @ q.dequantize().T, atol=LINEAR_ATOL, rtol=0)


def test_planar_words_hold_input_k_times_p_plus_j_in_nibble_k():
    codes = np.random.default_rng(0).integers(0, 16, (4, 1024)).astype(np.uint8)
    words = to_planar(codes)
    p = 1024 // 8
    for k in range(8):
        np.testing.assert_array_equal((words >> np.uint32(4 * k)) & 15, codes[:, k * p : (k + 1) * p])


def test_convert_names_the_tensor_it_cannot_convert():
    cfg = shrunk_llama32_config(layers=1)
    weights = quantize_weights(synthetic(cfg, 0), group_size=32)  # the kernel takes groups of 64
    with pytest.raises(quant.QuantizationError, match=r"^layers\.0\.wq: .*groups of 64; got 4-bit, group 32"):
        convert(weights, representations.PALLAS)
    with pytest.raises(ValueError, match="unknown representation 'int3'"):
        convert(weights, "int3")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_magic_number_dequant_turns_every_code_into_its_exact_float(dtype):
    codes = jnp.arange(16, dtype=jnp.uint32)
    got = np.asarray(jax.jit(lambda c: representations.magic_codes(c, jnp.dtype(dtype)))(codes))
    assert got.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(got.astype(np.float32), np.arange(16, dtype=np.float32))


def test_magic_number_dequant_of_a_code_wider_than_the_mantissa_is_wrong():
    """The other answer: the trick holds only while the code fits under the exponent (bf16 has
    7 mantissa bits: 129 = 0x81 sets the exponent's low bit and reads as 256 + 2, minus 128)."""
    got = float(representations.magic_codes(jnp.asarray([129], jnp.uint32), jnp.bfloat16)[0])
    assert got == 130.0


def _reduce_codes(r) -> np.ndarray:
    """A reduce or word form's codes back in MLX order [out, in]."""
    c = np.asarray(r.codes if hasattr(r, "codes") else r.packed)
    if c.dtype == jnp.uint4:
        return c.astype(np.uint8)
    if getattr(r, "form", None) == "u32-planar":  # nibble k of word j: input k * p + j
        return np.concatenate([(c >> np.uint32(4 * k)) & 15 for k in range(8)], axis=1).astype(np.uint8)
    return quant.unpack(c, 4)


@settings(max_examples=20, deadline=None)
@given(
    out=st.sampled_from([16, 48]),
    groups=st.integers(1, 4),
    form=st.sampled_from([*representations.REDUCE_FORMS, *representations.WORD_FORMS]),
    seed=st.integers(0, 2**16),
)
def test_reduce_and_word_forms_store_exactly_the_mlx_codes_scales_and_biases(out, groups, form, seed):
    q = _quantized(np.random.default_rng(seed), out, groups * 64)
    r = convert_linear(q, form)
    np.testing.assert_array_equal(_reduce_codes(r), quant.unpack(q.packed, 4))
    np.testing.assert_array_equal(np.asarray(r.scales), q.scales)
    np.testing.assert_array_equal(np.asarray(r.biases), q.biases)


@pytest.mark.parametrize("rows", [1, 3, 20])
@pytest.mark.parametrize("form", [*representations.REDUCE_FORMS, *representations.WORD_FORMS])
def test_reduce_and_word_forms_compute_the_host_dequant_linear(form, rows):
    """1 row: the multiply + reduce GEMV; 3: the word forms' unrolled rows; 20: past
    WORD_MAX_ROWS, the dot of the dequantized weight."""
    rng = np.random.default_rng(0)
    q = _quantized(rng, 96, 1024)
    x = rng.standard_normal((rows, 1024), dtype=np.float32)
    got = np.asarray(jax.jit(linear)(x, convert_linear(q, form)))
    np.testing.assert_allclose(got, x @ q.dequantize().T, atol=LINEAR_ATOL, rtol=0)


@pytest.mark.parametrize("out,n,parts", [(8192, 256, 1), (2048, 256, 4), (512, 256, 16), (512, 8, 8), (100, 3, 1)])
def test_split_reduction_gives_small_linears_enough_rows(out, n, parts):
    assert representations.split_parts(out, n) == parts


def test_dense_reduce_form_is_the_dot_in_another_order_and_the_dot_itself_past_one_row():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 512), dtype=np.float32)
    x = rng.standard_normal((1, 512), dtype=np.float32)
    form = DenseReduceLinear(w)
    np.testing.assert_allclose(np.asarray(linear(x, form)), x @ w.T, atol=LINEAR_ATOL * 10, rtol=0)
    x3 = rng.standard_normal((3, 512), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(linear)(x3, form)), np.asarray(jax.jit(linear)(x3, w)))


def test_dense_io_form_holds_the_weight_laid_in_out_and_computes_the_dot():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 512), dtype=np.float32) * np.float32(512**-0.5)  # outputs ~N(0, 1)
    form = DenseIOLinear.from_dense(w)
    np.testing.assert_array_equal(form.w, w.T)
    assert form.w.flags.c_contiguous  # transposed on the host, once: [in, out] in memory
    spec = DenseIOLinear.from_dense(jax.ShapeDtypeStruct(w.shape, w.dtype)).w
    assert (spec.shape, spec.dtype) == ((512, 64), np.float32)
    for rows in (1, 3):  # the GEMV and a batch: float32 sums in another order than the dot's
        x = rng.standard_normal((rows, 512), dtype=np.float32)
        np.testing.assert_allclose(np.asarray(linear(x, form)), np.asarray(linear(x, w)), atol=LINEAR_ATOL, rtol=0)


def test_dense_io_weights_give_the_dense_models_logits_with_the_head_untied():
    cfg = shrunk_llama32_config()
    dense = synthetic(cfg, 0)
    io = convert_dense(dense, DENSE_IO)
    assert io.embed is dense.embed and dense.lm_head is None  # the table still gathered as loaded
    np.testing.assert_array_equal(io.lm_head.w, np.asarray(dense.embed).T)
    assert all(isinstance(getattr(layer, n), DenseIOLinear) for layer in io.layers for n in linear_fields(layer))
    tokens = jnp.asarray([1, 504, 33, 7, 900], jnp.int32)
    np.testing.assert_allclose(
        np.asarray(model.all_logits(cfg, io, tokens)),
        np.asarray(model.all_logits(cfg, dense, tokens)),
        atol=FP32_REORDERING_ATOL,
        rtol=0,
    )
    with pytest.raises(ValueError, match="head 'io' needs a float head, got QuantizedLinear"):
        convert(quantize_weights(synthetic(cfg, 0), embedding=True), BASELINE, head=DENSE_IO)


def test_int4_head_needs_a_quantized_embedding_and_a_form_that_gathers_rows():
    cfg = shrunk_llama32_config(layers=1)
    with pytest.raises(ValueError, match="needs a quantized embedding"):
        convert(quantize_weights(synthetic(cfg, 0)), "u32-word", head="int4")
    packed = quantize_weights(synthetic(cfg, 0), embedding=True)
    with pytest.raises(TypeError, match="NativeInt4Linear has no row gather"):
        convert(packed, "u4-affine", head="int4").embed.mlx_words()
