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
from model_impl.llama import representations
from model_impl.llama.linears import QuantizedLinear, linear
from model_impl.llama.pallas_int4 import PLANES, PallasInt4Linear, to_planar
from model_impl.llama.representations import BASELINE, GROUPED_FORMS, NATIVE_FORMS, convert, convert_linear
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import quantize_weights, synthetic

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
    p = 1024 // PLANES
    for k in range(PLANES):
        np.testing.assert_array_equal((words >> np.uint32(4 * k)) & 15, codes[:, k * p : (k + 1) * p])


@pytest.mark.parametrize("rows", [1, 3])
def test_pallas_gemv_computes_the_host_dequant_linear_in_the_interpreter(rows):
    """M=1 runs the kernel (interpreted off the GPU); M>1 the in-graph planar dequant."""
    rng = np.random.default_rng(1)
    q = _quantized(rng, 32, 1024)
    x = rng.standard_normal((rows, 1024), dtype=np.float32)
    got = np.asarray(PallasInt4Linear.from_mlx(q).matmul(jnp.asarray(x)))
    np.testing.assert_allclose(got, x @ q.dequantize().T, atol=LINEAR_ATOL, rtol=0)


def test_pallas_layout_rejects_an_input_width_it_cannot_plane():
    q = _quantized(np.random.default_rng(0), 16, 576)  # SmolLM2's hidden size
    with pytest.raises(quant.QuantizationError, match=r"multiple of 512.*\[16, 576\]"):
        PallasInt4Linear.from_mlx(q)


def test_convert_names_the_tensor_it_cannot_convert():
    cfg = shrunk_llama32_config(layers=1)
    weights = quantize_weights(synthetic(cfg, 0))  # hidden 256: not a multiple of 512
    with pytest.raises(quant.QuantizationError, match=r"^layers\.0\.wq: .*multiple of 512"):
        convert(weights, representations.PALLAS)
    with pytest.raises(ValueError, match="unknown representation 'int3'"):
        convert(weights, "int3")
