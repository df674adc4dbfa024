"""What each compiler makes of each int4 representation, on one linear (model_impl.minimal),
and the IREE miscompile the fusion matrix met: fused uint4 codes read as signed."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_impl import analyzers
from model_impl.analyzers import iree_dispatch, minimal, xla_hlo
from model_impl.backends import iree_compile
from model_impl.backends.iree_runtime import IreeDevice
from model_impl.lab import timing

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHT = {64 * 128}

GROUPED = ("linear-s4-grouped", "linear-u4-grouped")
SCALED_BEFORE_DOT = ("linear-u4-affine", "linear-u4-affine-io", "linear-s4-scale-gsum")


@pytest.mark.parametrize("name", GROUPED)
@pytest.mark.parametrize("target", ["llvm-cpu", "cuda"])
def test_iree_fuses_the_grouped_contraction_with_scale_and_bias_after_the_dot(target, name):
    """Codes [groups, out, g] go straight into a batch contraction; the f32 weight never exists."""
    v = iree_dispatch.analyze_iree_executables(minimal.iree_sources(name, target), minimal.WEIGHT_ELEMENTS)
    assert v.verdict == analyzers.FUSED and v.materialized_bytes == 0, (
        f"iree-compile {iree_compile.compiler_version()} {target} {name}: "
        f"{[(e.exports, e.kind) for e in v.executables]}"
    )


@pytest.mark.parametrize("name", SCALED_BEFORE_DOT)
@pytest.mark.parametrize("target", ["llvm-cpu", "cuda"])
def test_iree_materializes_every_representation_that_scales_before_the_dot(target, name):
    v = iree_dispatch.analyze_iree_executables(minimal.iree_sources(name, target), minimal.WEIGHT_ELEMENTS)
    assert v.verdict == analyzers.MATERIALIZED, f"{target} {name}: now {v.verdict}"
    assert v.materialized_bytes == 4 * min(minimal.WEIGHT_ELEMENTS)


def _run_iree_cpu(fn, *args):
    mlir = jax.export.export(jax.jit(fn))(*args).mlir_module()
    iree = IreeDevice("local-task")
    main = iree.load(iree_compile.compile_mlir(mlir, iree_compile.target_flags("llvm-cpu")))
    return main(*[iree.put(a) for a in args]).to_host()


def _bare(x, w):
    return jnp.einsum("ti,oi->to", x, w.astype(jnp.float32), precision="highest")


# A 512-term f32 dot of N(0,1) inputs and codes in [-8, 15]: outputs ~ +-200, summation-order
# differences ~1e-4. A sign error moves an output by 16 x (sum of x over the affected codes),
# i.e. by tens.
BARE_DOT_ATOL = 1e-3


def test_iree_cpu_computes_a_fused_signed_int4_contraction_exactly():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 512), dtype=np.float32)
    w = rng.integers(-8, 8, (256, 512)).astype(jnp.int4)
    np.testing.assert_allclose(_run_iree_cpu(_bare, x, w), np.asarray(_bare(x, w)), atol=BARE_DOT_ATOL, rtol=0)


def test_iree_cpu_reads_fused_uint4_codes_as_signed():
    """iree-compile 3.13 lowers convert(ui4 -> f32) + dot_general to one linalg contraction
    with an i4 operand and the default signed cast: codes 8..15 count as -8..-1. The same
    codes through a dequant of their own (u4-affine) are right. This test pins the bug; when
    it fails, IREE has fixed it and the fusion matrix's u4-grouped cells should agree again
    (standalone: reproducers/iree-fused-uint4-read-as-signed)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 512), dtype=np.float32)
    codes = rng.integers(0, 16, (256, 512))
    got = _run_iree_cpu(_bare, x, codes.astype(jnp.uint4))
    as_signed = x @ np.where(codes >= 8, codes - 16, codes).T.astype(np.float32)
    correct = x @ codes.T.astype(np.float32)
    np.testing.assert_allclose(got, as_signed, atol=BARE_DOT_ATOL, rtol=0)
    assert np.abs(got - correct).max() > 1.0


def test_iree_fixture_of_a_contraction_reading_i4_with_indexing_maps_is_fused():
    """IREE prints ``indexing_maps = [...]`` between a named contraction and its ``ins``."""
    v = iree_dispatch.analyze_iree_executables((FIXTURES / "iree_grouped_i4_batch_matmul.mlir").read_text(), WEIGHT)
    assert v.verdict == analyzers.FUSED and [e.kind for e in v.executables] == [iree_dispatch.FUSED_DISPATCH]


def test_iree_fixture_moving_i4_codes_without_widening_them_is_not_an_unpack():
    text = (FIXTURES / "iree_grouped_i4_batch_matmul.mlir").read_text()
    text = text.replace("linalg.batch_matmul", "linalg.generic")  # the codes only pass through
    assert iree_dispatch.analyze_iree_executables(text, WEIGHT).verdict == analyzers.NO_DEQUANT


def test_iree_fixture_of_a_data_tiled_dequant_counts_the_encoded_weight_it_writes():
    v = iree_dispatch.analyze_iree_executables((FIXTURES / "iree_data_tiled_dequant.mlir").read_text(), WEIGHT)
    assert v.verdict == analyzers.MATERIALIZED and v.materialized_bytes == 64 * 128 * 4


@pytest.mark.parametrize(
    "fixture,want",
    [
        ("xla_fused.hlo", (1, 1, {"dot": 1})),
        ("xla_fused_gemv.hlo", (1, 1, {"reduction": 1})),
        ("xla_materialized.hlo", (0, 1, {})),
    ],
)
def test_xla_per_linear_verdict_follows_each_codes_parameter_to_its_kernels(fixture, want):
    assert xla_hlo.xla_linears_fused((FIXTURES / fixture).read_text()) == want


@pytest.mark.parametrize("marker", ["__triton_gemm", "__cublas$gemm"])
def test_xla_per_linear_verdict_names_a_library_or_triton_gemm_kernel(marker):
    """A fused linear whose kernel is a Triton or cuBLAS gemm (XLA-GPU's prefill form) is counted
    as ``gemm``, not as a plain ``dot`` fusion."""
    text = (FIXTURES / "xla_fused.hlo").read_text()
    text = text.replace("kind=kCustom,", f'kind=kCustom, backend_config={{"kind":"{marker}"}},')
    assert xla_hlo.xla_linears_fused(text) == (1, 1, {"gemm": 1})


def test_xla_per_linear_verdict_counts_a_linear_read_by_a_non_contracting_kernel_as_unfused():
    """Linear 1's codes read by its fused gemm and also by a kernel that only unpacks them: not
    fused; linear 2's codes read by nothing: not fused either."""
    text = (FIXTURES / "xla_mixed.hlo").read_text()
    text = text.replace("fusion(%biases.2, %scales.2, %packed.2)", "fusion(%biases.2, %scales.2, %packed.1)")
    fused, total, _ = xla_hlo.xla_linears_fused(text)
    assert (fused, total) == (0, 2)


@pytest.mark.parametrize("barrier,hoisted", [(True, 0), (False, 2 * 7)])
def test_xla_decode_loop_timing_keeps_every_dequant_inside_the_loop(barrier, hoisted):
    """The XLA-CUDA step figure comes from an in-graph decode loop; without the optimization
    barrier XLA hoists each loop-invariant dequant out of it (and would time fp32 math)."""
    from model_impl.llama.shapes import shrunk_llama32_config
    from model_impl.llama.weights import quantize_weights, synthetic

    cfg = shrunk_llama32_config()
    weights = quantize_weights(synthetic(cfg, 0))
    *_, found = timing.time_xla_decode_loop(
        "xla-cpu", cfg, weights, steps=2, max_seq=128, start_pos=16, rounds=1, barrier=barrier
    )
    assert found == hoisted


@pytest.mark.parametrize("barrier,hoisted", [(True, 0), (False, 2 * 7)])
def test_generate_decode_loop_keeps_every_dequant_inside_the_loop(barrier, hoisted):
    """The generate path's loop graph carries the same guard: with it, no dequant sits outside
    the loop in XLA's compiled graph; without it, XLA hoists all 14 (the check can see them)."""
    import functools

    import jax

    from model_impl.analyzers import xla_hlo
    from model_impl.llama.graphs import graph_args, greedy_decode_loop
    from model_impl.llama.shapes import shrunk_llama32_config
    from model_impl.llama.weights import quantize_weights, synthetic

    cfg = shrunk_llama32_config()
    weights = quantize_weights(synthetic(cfg, 0))
    fn = jax.jit(functools.partial(greedy_decode_loop, chunk=4, barrier=barrier), static_argnums=0)
    _, *args = graph_args(cfg, None, "decode_loop", 4, 128)
    hlo = fn.lower(cfg, weights, *args).compile().as_text()
    assert xla_hlo.entry_unpack_kernels(hlo) == hoisted


@pytest.mark.parametrize(
    "op_name,want",
    [
        ("jit(decode_loop)/while/body/gemv_reduce/reduce_sum", (1, 1, {"reduction": 1})),
        ("jit(greedy_decode)/reduce_sum", (0, 1, {})),
    ],
)
def test_xla_per_linear_verdict_counts_the_models_own_multiply_reduce_gemv_and_no_other_reduce(op_name, want):
    """The GEMV written as multiply + reduce (linears.reduce_matmul) runs under a name scope that
    XLA keeps in the reduce's op_name: that reduce is the linear's contraction. Any other
    reduce_sum reading the codes (a norm, a softmax) is not."""
    text = (FIXTURES / "xla_fused_gemv.hlo").read_text()
    text = text.replace(
        'to_apply=%region_add, metadata={op_name="jit(greedy_decode)/ti,oi->to/dot_general"}',
        f'to_apply=%region_add, metadata={{op_name="{op_name}"}}',
    )
    assert xla_hlo.xla_linears_fused(text) == want
