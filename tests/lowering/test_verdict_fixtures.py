"""Every verdict can give both answers: hand-written dumps, and the smallest real graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_impl import analyzers
from model_impl.analyzers import iree_dispatch, minimal, xla_hlo
from model_impl.backends import iree_compile

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHT = {64 * 128}


def test_xla_fixture_with_dequant_and_dot_in_one_fusion_is_fused():
    v = xla_hlo.analyze_xla_hlo((FIXTURES / "xla_fused.hlo").read_text(), WEIGHT)
    assert v.verdict == analyzers.FUSED and v.materialized_bytes == 0 and v.fused_count == 1


def test_xla_fixture_with_dequant_in_a_strength_reduced_gemv_is_fused():
    """XLA-GPU's decode form: the M=1 dot became multiply + reduce, the dequant inside it."""
    v = xla_hlo.analyze_xla_hlo((FIXTURES / "xla_fused_gemv.hlo").read_text(), WEIGHT)
    assert v.verdict == analyzers.FUSED and v.materialized_bytes == 0 and v.fused_count == 1


def test_xla_a_plain_reduction_is_not_mistaken_for_a_contraction():
    text = (FIXTURES / "xla_fused_gemv.hlo").read_text().replace("dot_general", "reduce_sum")
    assert xla_hlo.analyze_xla_hlo(text, WEIGHT).verdict == analyzers.MATERIALIZED


def test_xla_fixture_with_a_loop_fusion_writing_the_weight_is_materialized():
    v = xla_hlo.analyze_xla_hlo((FIXTURES / "xla_materialized.hlo").read_text(), WEIGHT)
    assert v.verdict == analyzers.MATERIALIZED
    assert v.materialized_bytes == 64 * 128 * 4 and v.dequants[0].output.startswith("f32[64,128]")


def test_iree_fixture_with_unpack_and_contraction_in_one_dispatch_is_fused():
    v = iree_dispatch.analyze_iree_executables((FIXTURES / "iree_fused.mlir").read_text(), WEIGHT)
    assert v.verdict == analyzers.FUSED and v.dispatches == 1 and v.materialized_bytes == 0


def test_iree_fixture_with_a_dequant_only_dispatch_is_materialized():
    v = iree_dispatch.analyze_iree_executables((FIXTURES / "iree_materialized.mlir").read_text(), WEIGHT)
    assert v.verdict == analyzers.MATERIALIZED and v.dispatches == 2
    assert [e.kind for e in v.executables] == [iree_dispatch.DEQUANT_ONLY, iree_dispatch.MATMUL_ONLY]
    assert v.materialized_bytes == 64 * 128 * 4


def test_analyzers_reject_text_that_is_not_their_dump():
    with pytest.raises(ValueError, match="ENTRY"):
        xla_hlo.analyze_xla_hlo("module {}", WEIGHT)
    with pytest.raises(ValueError, match="hal.executable"):
        iree_dispatch.analyze_iree_executables("HloModule m", WEIGHT)


# Real compilers on one linear (model_impl.minimal): the same analyzers, both outcomes.


@pytest.mark.parametrize("target", ["llvm-cpu", "cuda"])
def test_iree_fuses_a_bare_int4_extension_into_the_contraction(target):
    v = iree_dispatch.analyze_iree_executables(
        minimal.iree_sources("native-int4-bare", target), minimal.WEIGHT_ELEMENTS
    )
    assert v.verdict == analyzers.FUSED, (
        f"iree-compile {iree_compile.compiler_version()} {target}: bare i4 -> f32 no longer fused: "
        f"{[(e.exports, e.kind) for e in v.executables]}"
    )


@pytest.mark.parametrize("name", ["native-int4-scale", "packed-u32-scale-bias"])
@pytest.mark.parametrize("target", ["llvm-cpu", "cuda"])
def test_iree_gives_a_scaled_dequant_its_own_dispatch(target, name):
    v = iree_dispatch.analyze_iree_executables(minimal.iree_sources(name, target), minimal.WEIGHT_ELEMENTS)
    assert v.verdict == analyzers.MATERIALIZED, (
        f"iree-compile {iree_compile.compiler_version()} {target} {name}: now {v.verdict}"
    )
    assert v.materialized_bytes == 4 * min(minimal.WEIGHT_ELEMENTS)


@pytest.mark.parametrize("name", list(minimal.GRAPHS))
def test_xla_cpu_materializes_every_minimal_dequant(name):
    v = xla_hlo.analyze_xla_hlo(minimal.xla_hlo(name), minimal.WEIGHT_ELEMENTS)
    assert v.verdict == analyzers.MATERIALIZED and v.materialized_bytes == 4 * min(minimal.WEIGHT_ELEMENTS)
