"""The half-precision (bf16 compute) int4 graphs at the Llama-3.2-1B shapes: no custom_call, one
unpack per quantized linear, and what each compiler rebuilds (pinned to the pinned compilers)."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from model_impl import expectations
from model_impl.analyzers import dumps, iree_dispatch, stablehlo, xla_hlo
from model_impl.backends.spec import for_iree_target
from model_impl.llama.shapes import LLAMA32_SHAPES, llama32_config
from model_impl.llama.weights import linear_weight_bytes, linear_weight_bytes_f32, linear_weight_elements, specs

CFG = dataclasses.replace(llama32_config(), dtype="bfloat16")
LINEARS = 7 * CFG.num_layers


@functools.cache
def _specs():
    return specs(CFG, "int4")


def test_bf16_int4_decode_graph_has_no_custom_call_and_one_unpack_per_linear():
    inv = stablehlo.stablehlo_inventory(dumps.stablehlo(CFG, _specs(), "decode", *LLAMA32_SHAPES))
    assert not inv.has_custom_call and inv.shifts == LINEARS


def test_xla_cpu_bf16_int4_dequant_is_what_the_table_expects_of_this_jaxlib():
    """jaxlib 0.10.2 (model_impl/expectations.py): XLA-CPU widens bf16 arithmetic to f32, so the
    dequant writes every weight as f32, twice the bf16 bytes the graph asks for."""
    assert linear_weight_bytes_f32(CFG) == 2 * linear_weight_bytes(CFG)
    v = xla_hlo.analyze_xla_hlo(
        dumps.xla_hlo(CFG, _specs(), "decode", *LLAMA32_SHAPES).hlo, linear_weight_elements(CFG)
    )
    observed = expectations.rebuild(v.verdict, v.fused_count, len(v.dequants), v.materialized_bytes, CFG)
    expectations.check(
        ("xla-cpu", expectations.REBUILD, "bfloat16"),
        observed,
        expectations.XLA,
        expectations.compiler_version(expectations.XLA),
    )


@pytest.mark.parametrize("target", ["llvm-cpu", "cuda"])
def test_iree_bf16_int4_dequant_is_what_the_table_expects_of_this_compiler(target):
    """iree-base-compiler 3.13: the unpack writes every weight in bf16 (the compute dtype)."""
    text, _ = dumps.iree_sources(CFG, _specs(), "decode", *LLAMA32_SHAPES, target)
    v = iree_dispatch.analyze_iree_executables(text, linear_weight_elements(CFG))
    observed = expectations.rebuild(
        v.verdict, v.count(iree_dispatch.FUSED_DISPATCH), v.count(iree_dispatch.DEQUANT_ONLY), v.materialized_bytes, CFG
    )
    backend = for_iree_target(target).name
    expectations.check(
        (backend, expectations.REBUILD, "bfloat16"),
        observed,
        expectations.IREE,
        expectations.compiler_version(expectations.IREE),
    )
