"""Our int4 GEMV kernel (the custom-kernel route, :mod:`model_impl.llama.pallas_int4`) computes
the host dequant linear from MLX's words as stored, at every batch it takes and in every
configuration the sweep may pick, here in Pallas' interpreter; it lowers for CUDA to one Triton
call per linear. On the GPU: tests/cuda/test_pallas_int4_cuda.py."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_impl import checks, quant
from model_impl.llama import pallas_int4 as P
from model_impl.llama.linears import QuantizedLinear, quantized_linear_spec
from model_impl.llama.representations import PALLAS, convert_linear

warnings.filterwarnings("ignore", message=".*Pallas Triton backend is deprecated.*")

U32 = checks.UNIT_ROUNDOFF["float32"]
U16 = checks.UNIT_ROUNDOFF["bfloat16"]
# Float32 summation of the kernel's terms (a code's product, a word's scale and bias terms, the
# partial sums across steps and split-K parts) runs through fewer than 2 * in + 16 additions per
# output, so |y - exact| <= (2 * in + 16) * u32 * sum(|q s| + |b|) |x| (the gamma_n bound on the
# absolute terms; |q s| + |b| rather than |q s + b| because the factored form adds the scale and
# bias terms separately). A nibble read from the wrong place errs by O(rms(y)), thousands of times more.
SUM_TERMS = lambda n_in: 2 * n_in + 16  # noqa: E731
# fac16 rounds each code-times-activation product and each 8-term per-word sum to bf16: at most
# 8 bf16 roundings on a word's dot, each <= u16 of the word's absolute sum, times |s|.
FAC16_ROUNDINGS = 8
# deqx dequantizes ``q*s + b`` in x's half dtype with one rounding per op, as the host's dequant
# of that dtype; a compiler may fuse the two ops into one rounding (XLA-CPU does on some hosts,
# checks.xla_cpu_half_rounding): the weights may then differ by the product's rounding, and the
# sum's rounding may land on the other side: at most 2 roundings (u of the dtype) of |q s| + |b|.
DEQX_ROUNDINGS = 2

VARIANTS = [  # every path of the kernel: dequant modes, code conversions, split-K, accumulators
    P.Variant(8, 16),
    P.Variant(8, 16, cvt="magic"),
    P.Variant(8, 8, cvt="cvt", acc="1d"),
    P.Variant(16, 16, 2),
    P.Variant(8, 8, 2, atomic=True, cvt="magic"),
    P.Variant(8, 16, mode="deq32", cvt="magic"),
    P.Variant(8, 16, mode="deqx", cvt="magic"),
    P.Variant(8, 16, mode="fac16", cvt="cvt", xload="split"),
    P.Variant(16, 16, mode="dot", cvt="magic"),
    P.Variant(16, 16, 2, mode="dot", cvt="cvt"),
]
HALF_ONLY = ("dot",)  # tensor-core dots of half-precision operands


def _random_mlx(rng, out: int, n_in: int) -> QuantizedLinear:
    """A real quantization (:func:`quant.quantize`) of Gaussian weights, scales and biases in
    bf16 as an MLX bf16 checkpoint stores them."""
    w = rng.standard_normal((out, n_in), dtype=np.float32) * np.float32(n_in**-0.5)
    packed, s, b = quant.quantize(w, P.GROUP, 4)
    return QuantizedLinear(packed, np.asarray(s).astype(jnp.bfloat16), np.asarray(b).astype(jnp.bfloat16), P.GROUP, 4)


def _bounds(w: QuantizedLinear, x64: np.ndarray, v: P.Variant, out_dtype) -> tuple[np.ndarray, np.ndarray]:
    """(reference, bound) per output element: the host dequant linear in float64 (deqx: the
    host's dequant in x's dtype, ``q*s+b`` rounded per op) and the kernel's rounding bound in
    float32, plus bf16 products in fac16, the half dequant's roundings and the output's rounding."""
    half = np.dtype(out_dtype).name if np.dtype(out_dtype) != np.dtype(np.float32) else None
    deq_half = v.mode in ("deqx", "dot") and half
    ref = x64 @ w.dequantize(half if deq_half else "float32").astype(np.float64).T
    codes = quant.unpack(np.asarray(w.packed), 4).astype(np.float64)
    s = np.repeat(np.asarray(w.scales, np.float64), P.GROUP, axis=1)
    b = np.repeat(np.asarray(w.biases, np.float64), P.GROUP, axis=1)
    n_in = codes.shape[1]
    bound = SUM_TERMS(n_in) * U32 * (np.abs(x64) @ (np.abs(codes * s) + np.abs(b)).T)
    if v.mode == "fac16":
        bound += FAC16_ROUNDINGS * U16 * (np.abs(x64) @ np.abs(codes * s).T)
    if deq_half:
        bound += DEQX_ROUNDINGS * checks.UNIT_ROUNDOFF[half] * (np.abs(x64) @ (np.abs(codes * s) + np.abs(b)).T)
    if half:
        bound += checks.UNIT_ROUNDOFF[half] * np.abs(ref)
    return ref, bound


def _gemv(x, w: QuantizedLinear, v: P.Variant):
    return np.asarray(P.gemv(jnp.asarray(x), w.packed, w.scales, w.biases, v, interpret=True)).astype(np.float64)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
@settings(max_examples=3, deadline=None)
@given(
    blocks=st.integers(1, 3),
    groups=st.sampled_from([4, 8, 12]),
    batch=st.sampled_from([1, 2, 4, 16]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]),
    seed=st.integers(0, 2**16),
)
def test_every_kernel_variant_computes_the_host_dequant_linear_within_its_rounding_bound(
    variant, blocks, groups, batch, dtype, seed
):
    if variant.mode in HALF_ONLY and dtype == jnp.float32:
        dtype = jnp.bfloat16
    out, n_in = variant.rows * blocks * 2, groups * P.GROUP
    if variant.invalid(out, n_in):
        groups = 8  # 8 groups divide into every variant's steps and parts
        n_in = groups * P.GROUP
    assert variant.invalid(out, n_in) is None
    rng = np.random.default_rng(seed)
    w = _random_mlx(rng, out, n_in)
    x = jnp.asarray(rng.standard_normal((batch, n_in), dtype=np.float32), dtype)
    ref, bound = _bounds(w, np.asarray(x, np.float64), variant, dtype)
    got = _gemv(x, w, variant)
    assert got.shape == (batch, out)
    assert np.all(np.abs(got - ref) <= bound), float(np.max(np.abs(got - ref) - bound))


def test_a_nibble_read_from_the_wrong_place_breaks_the_bound():
    """The bound can fail: the same words with two codes of each word swapped (what a kernel that
    walked the nibbles in another order would compute) are far outside it."""
    rng = np.random.default_rng(3)
    w = _random_mlx(rng, 16, 512)
    codes = quant.unpack(np.asarray(w.packed), 4)
    swapped = codes.reshape(16, -1, 8)[:, :, [1, 0, 2, 3, 4, 5, 6, 7]].reshape(16, 512)
    wrong = QuantizedLinear(quant.pack(swapped, 4), w.scales, w.biases, P.GROUP, 4)
    x = rng.standard_normal((1, 512), dtype=np.float32)
    ref, bound = _bounds(w, x.astype(np.float64), P.Variant(8, 16), jnp.float32)
    assert np.all(np.abs(_gemv(x, w, P.Variant(8, 16)) - ref) <= bound)
    assert np.max(np.abs(_gemv(x, wrong, P.Variant(8, 16)) - ref) / bound) > 100


@pytest.mark.parametrize("out,n_in", [(8192, 2048), (2048, 8192), (2048, 2048), (512, 2048), (1536, 576), (24, 576)])
@pytest.mark.parametrize("batch", [1, 2, 4, 16])
def test_every_linear_shape_gets_a_configuration_that_divides_it(out, n_in, batch):
    v = P.config_for(out, n_in, batch)
    assert v.invalid(out, n_in) is None
    if (out, n_in) in P.TUNED:
        assert v.tile == P.TUNED[(out, n_in)].tile
    assert v.acc == ("3d" if batch <= 2 else "1d")
    assert v.mode == "fac32" and P.config_for(out, n_in, batch, jnp.bfloat16).mode == "deqx"


def test_the_form_holds_mlx_words_as_stored_and_takes_the_kernel_up_to_max_rows():
    rng = np.random.default_rng(4)
    w = _random_mlx(rng, 32, 576)  # SmolLM2's hidden size: 9 groups, one per step
    form = convert_linear(w, PALLAS)
    assert form.words is w.packed and form.scales is w.scales and form.biases is w.biases
    for rows in (1, P.MAX_ROWS, P.MAX_ROWS + 1):  # the last through the in-graph dequant and XLA's dot
        x = rng.standard_normal((rows, 576), dtype=np.float32)
        ref, bound = _bounds(w, x.astype(np.float64), P.config_for(32, 576, rows), jnp.float32)
        assert np.all(np.abs(np.asarray(form.matmul(jnp.asarray(x)), np.float64) - ref) <= bound), rows


def test_the_dot_mode_refuses_float32_and_more_rows_than_it_pads_to():
    w = _random_mlx(np.random.default_rng(5), 16, 256)
    v = P.Variant(16, 16, mode="dot", cvt="magic")
    for x in (jnp.zeros((1, 256), jnp.float32), jnp.zeros((P.DOT_ROWS + 1, 256), jnp.bfloat16)):
        with pytest.raises(ValueError, match="the dot mode takes half-precision x of at most 16 rows"):
            P.gemv(x, w.packed, w.scales, w.biases, v, interpret=True)
    assert "at least 16" in P.Variant(8, 16, mode="dot").invalid(16, 256)


def test_the_kernel_refuses_a_group_it_was_not_written_for():
    w = QuantizedLinear(*quant.quantize(np.ones((8, 256), np.float32), 32, 4), 32, 4)
    with pytest.raises(quant.QuantizationError, match="groups of 64; got 4-bit, group 32"):
        convert_linear(w, PALLAS)


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_the_kernel_lowers_for_cuda_to_one_triton_call_at_the_1b_shapes(batch):
    """Pallas' lowering to Triton IR runs here without a GPU: each tuned configuration, at the
    batches the verdict times, is one Triton custom_call."""
    for (out, n_in), _ in P.TUNED.items():
        w = quantized_linear_spec((out, n_in), P.GROUP, 4, jnp.bfloat16)
        x = jax.ShapeDtypeStruct((batch, n_in), jnp.bfloat16)
        v = P.config_for(out, n_in, batch)
        fn = jax.jit(lambda x, w, v=v: P.gemv(x, w.packed, w.scales, w.biases, v, interpret=False))
        with P.lowering_target():
            text = fn.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == 1, (out, n_in, batch)
