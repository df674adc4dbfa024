"""The packed int4 format: round trips, error bounds, and bit-identity with MLX."""

from __future__ import annotations

import itertools

import jax
import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_impl import quant
from model_impl.llama import linears
from model_impl.llama.linears import QuantizedLinear

DTYPES = {
    "float32": (np.float32, mx.float32),
    "float16": (np.float16, mx.float16),
    "bfloat16": (ml_dtypes.bfloat16, mx.bfloat16),
}

# Worst-case reconstruction error of MLX's quantizer, in units of the group's own |scale|.
# One endpoint is exact by construction; re-deriving the scale from it (scale = edge / q0,
# |q0| >= 7.5 for 4 bits) can push the far endpoint past the last code by up to one step,
# which clipping turns into an error of up to 1 scale (measured worst 0.9996). float32
# rounding of the affine map adds a few ulp of the group's magnitude.
QUANT_ERROR_BOUND_SCALES = 1.0
FLOAT32_ROUNDING_SLACK = 8 * np.finfo(np.float32).eps


def to_mlx(w: np.ndarray, dtype: str):
    return mx.array(w.astype(np.float32)).astype(DTYPES[dtype][1])


def from_mlx(a) -> np.ndarray:
    return np.array(a.astype(mx.float32)) if a.dtype != mx.uint32 else np.array(a)


@st.composite
def weight_matrices(draw, dtypes=tuple(DTYPES)):
    bits = draw(st.sampled_from(quant.SUPPORTED_BITS))
    group = draw(st.sampled_from(quant.SUPPORTED_GROUP_SIZES))
    rows = draw(st.sampled_from([1, 2, 7, 33, 67]))
    groups = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["normal", "uniform", "shifted", "wide", "sparse", "symmetric"]))
    rng = np.random.default_rng(seed)
    shape = (rows, groups * group)
    magnitude = 10.0 ** rng.uniform(-4, 2)
    if kind == "normal":
        w = rng.standard_normal(shape) * magnitude
    elif kind == "uniform":
        w = rng.uniform(-magnitude, magnitude, shape)
    elif kind == "shifted":  # all one sign: edge far from zero
        w = rng.uniform(0, magnitude, shape) + rng.choice([-1, 1]) * 3 * magnitude
    elif kind == "wide":
        w = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape)
    elif kind == "sparse":  # mostly zeros, with constant and all-zero groups
        w = rng.standard_normal(shape) * magnitude * (rng.random(shape) < 0.1)
        w[0, :group] = 0.0
        if rows > 1:
            w[1, :group] = magnitude
    else:  # symmetric: every group's max == -min, the tie of the quantizer's edge rule
        w = rng.standard_normal(shape) * magnitude
        g = w.reshape(rows, groups, group)
        edge = np.abs(g).max(axis=-1)
        lo, hi = rng.integers(0, group // 2, (rows, groups)), rng.integers(group // 2, group, (rows, groups))
        np.put_along_axis(g, lo[..., None], -edge[..., None], axis=-1)
        np.put_along_axis(g, hi[..., None], edge[..., None], axis=-1)
        w = g.reshape(shape)
    w = w.astype(DTYPES[dtype][0])
    if kind == "symmetric":  # the tie must survive the cast: -x is exact in every float dtype
        g = w.reshape(rows, groups, group).astype(np.float32)
        assert (g.max(axis=-1) == -g.min(axis=-1)).all()
    return w, group, bits, dtype


# --- packing ---------------------------------------------------------------------------


@given(
    bits=st.sampled_from(quant.SUPPORTED_BITS),
    rows=st.integers(1, 5),
    words=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_then_unpack_returns_the_codes(bits, rows, words, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (rows, words * 32 // bits))
    packed = quant.pack(codes, bits)
    assert packed.dtype == np.uint32 and packed.shape == (rows, words)
    np.testing.assert_array_equal(quant.unpack(packed, bits), codes)


@pytest.mark.parametrize("bits", quant.SUPPORTED_BITS)
def test_every_code_in_every_slot_packs_to_its_bit_field(bits):
    """Exhaustive over the small domain: code c in slot k is bits [k*bits, (k+1)*bits)."""
    per_word = 32 // bits
    for code, slot in itertools.product(range(1 << bits), range(per_word)):
        codes = np.zeros((1, per_word), np.int64)
        codes[0, slot] = code
        assert int(quant.pack(codes, bits)[0, 0]) == code << (slot * bits)


@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from(quant.SUPPORTED_BITS))
def test_in_graph_unpack_equals_host_unpack_exactly(seed, bits):
    packed = np.random.default_rng(seed).integers(0, 2**32, (5, 16), dtype=np.uint32)
    in_graph = np.asarray(jax.jit(linears.unpack_codes, static_argnums=1)(packed, bits))
    np.testing.assert_array_equal(in_graph, quant.unpack(packed, bits))


@given(weight_matrices())
def test_in_graph_dequant_equals_host_dequant(case):
    """The graph's q*scale+bias (float32) equals numpy's, up to an FMA contraction."""
    w, group, bits, dtype = case
    wq, scales, biases = quant.quantize(w, group, bits)
    layer = QuantizedLinear(wq, scales, biases, group, bits)
    host = layer.dequantize()
    in_graph = np.asarray(jax.jit(linears.dequantize)(layer))
    # One FMA rounding instead of two: <= 1 ulp of the largest term of the affine map.
    s32, b32 = scales.astype(np.float32), biases.astype(np.float32)
    terms = np.abs(np.repeat(s32, group, -1)) * ((1 << bits) - 1) + np.abs(np.repeat(b32, group, -1))
    np.testing.assert_array_less(np.abs(in_graph - host), terms * np.finfo(np.float32).eps + 1e-30)


# --- the quantizer ---------------------------------------------------------------------


@given(weight_matrices(dtypes=("float32",)))
def test_quantization_error_is_bounded_by_the_group_scale(case):
    w, group, bits, _ = case
    wq, scales, biases = quant.quantize(w, group, bits)
    err = np.abs(quant.dequantize(wq, scales, biases, group, bits) - w)
    step = np.repeat(np.abs(scales), group, axis=-1)
    magnitude = np.repeat(np.abs(w).reshape(*scales.shape, group).max(-1), group, axis=-1)
    assert np.all(err <= QUANT_ERROR_BOUND_SCALES * step + FLOAT32_ROUNDING_SLACK * magnitude)


@given(weight_matrices())
def test_quantize_is_bit_identical_to_mlx(case):
    w, group, bits, dtype = case
    ref_q, ref_s, ref_b = mx.quantize(to_mlx(w, dtype), group_size=group, bits=bits)
    wq, scales, biases = quant.quantize(w, group, bits)
    assert scales.dtype == biases.dtype == w.dtype
    np.testing.assert_array_equal(wq, from_mlx(ref_q))
    np.testing.assert_array_equal(scales.astype(np.float32), from_mlx(ref_s))
    np.testing.assert_array_equal(biases.astype(np.float32), from_mlx(ref_b))


@given(weight_matrices())
def test_dequantize_is_bit_identical_to_mlx(case):
    w, group, bits, dtype = case
    wq, scales, biases = quant.quantize(w, group, bits)
    mlx_args = [mx.array(wq), to_mlx(scales, dtype), to_mlx(biases, dtype)]
    ref = mx.dequantize(*mlx_args, group_size=group, bits=bits)
    ours = quant.dequantize(wq, scales, biases, group, bits)
    assert ours.dtype == w.dtype and ref.dtype == DTYPES[dtype][1]
    np.testing.assert_array_equal(ours.astype(np.float32), from_mlx(ref))


def _tie_groups(dtype) -> np.ndarray:
    """Two rows, one group of 64 each, built so that 15 inputs sit exactly halfway between two
    codes: max edge 15 and min 0 give scale -1 and bias 15 (row 0), min edge -15 and max 0 give
    scale 1 and bias -15 (row 1); the halves 0.5 .. 14.5 then map to codes k + 0.5."""
    halves = np.arange(15, dtype=np.float32) + np.float32(0.5)
    fill = np.arange(64 - 2 - 15, dtype=np.float32) % 15
    row = np.concatenate([[15.0, 0.0], halves, fill]).astype(np.float32)
    return np.stack([row, -row]).astype(dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_exact_half_ties_round_to_even_as_mlx_does(dtype):
    w = _tie_groups(DTYPES[dtype][0])
    wq, scales, biases = quant.quantize(w, 64, 4)
    # The ties are real: (w - bias) / scale lands on k + 0.5 for the 15 halves of each row.
    x = (w.astype(np.float32) - biases.astype(np.float32)) / scales.astype(np.float32)
    assert ((x - np.floor(x)) == 0.5).sum(axis=1).tolist() == [15, 15]
    ref = [from_mlx(a) for a in mx.quantize(to_mlx(w, dtype), group_size=64, bits=4)]
    np.testing.assert_array_equal(quant.unpack(wq), quant.unpack(ref[0]))
    np.testing.assert_array_equal(scales.astype(np.float32), ref[1])
    # Rounding ties away from zero (C's round) would give other codes: the test can tell.
    away = np.clip(np.floor(np.abs(x) + 0.5) * np.sign(x), 0, 15).astype(np.uint8)
    assert (away != quant.unpack(wq)).sum() >= 15


def test_mlx_comparison_can_see_a_one_code_difference():
    """The bit-identity checks are not vacuous: flipping one code is detected."""
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    ref_q = from_mlx(mx.quantize(to_mlx(w, "float32"), group_size=64, bits=4)[0])
    wq = quant.quantize(w, 64, 4)[0].copy()
    wq[2, 3] ^= np.uint32(1 << 8)
    assert not np.array_equal(wq, ref_q)


# --- bad arguments ---------------------------------------------------------------------


def test_input_dim_not_divisible_by_group_is_rejected():
    with pytest.raises(quant.QuantizationError, match="not divisible by group_size 64"):
        quant.quantize(np.zeros((4, 96), np.float32), 64, 4)


def test_codes_out_of_range_are_rejected():
    codes = np.zeros((1, 8), np.int64)
    codes[0, 5] = 16
    with pytest.raises(quant.QuantizationError, match=r"codes out of range for 4 bits"):
        quant.pack(codes, 4)
    codes[0, 5] = -1
    with pytest.raises(quant.QuantizationError, match=r"codes out of range"):
        quant.pack(codes, 4)


@pytest.mark.parametrize("bits, group", [(3, 64), (4, 48)])
def test_unsupported_bits_or_group_are_rejected(bits, group):
    with pytest.raises(quant.QuantizationError, match="must be one of"):
        quant.quantize(np.zeros((2, 192), np.float32), group, bits)


def test_non_finite_weights_are_rejected():
    w = np.zeros((2, 64), np.float32)
    w[1, 7] = np.nan
    with pytest.raises(quant.QuantizationError, match="NaN or Inf"):
        quant.quantize(w, 64, 4)


def test_mismatched_scales_shape_is_rejected():
    wq, scales, biases = quant.quantize(np.ones((2, 128), np.float32), 64, 4)
    with pytest.raises(quant.QuantizationError, match=r"needs scales and biases of shape \(2, 2\)"):
        quant.dequantize(wq, scales[:, :1], biases, 64, 4)
