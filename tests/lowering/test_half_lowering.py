"""The half-precision (bf16 compute) int4 graphs at the Llama-3.2-1B shapes: no custom_call, one
unpack per quantized linear, and what each compiler rebuilds (pinned to the pinned compilers)."""

from __future__ import annotations

import dataclasses
import functools

import jaxlib
import pytest

from model_impl import analyzers
from model_impl.analyzers import dumps, iree_dispatch, stablehlo, xla_hlo
from model_impl.backends import iree_compile
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


def test_xla_cpu_rebuilds_bf16_int4_weights_in_float32():
    """XLA-CPU widens bf16 arithmetic to f32: the dequant writes every weight as f32, twice the
    bf16 bytes the graph asks for."""
    v = xla_hlo.analyze_xla_hlo(
        dumps.xla_hlo(CFG, _specs(), "decode", *LLAMA32_SHAPES).hlo, linear_weight_elements(CFG)
    )
    where = f"jaxlib {jaxlib.__version__}"
    assert v.verdict == analyzers.MATERIALIZED, f"{where}: {v.verdict}"
    assert v.materialized_bytes == linear_weight_bytes_f32(CFG) == 2 * linear_weight_bytes(CFG), where


@pytest.mark.parametrize("target", ["llvm-cpu", "cuda"])
def test_iree_rebuilds_bf16_int4_weights_in_bf16(target):
    text, _ = dumps.iree_sources(CFG, _specs(), "decode", *LLAMA32_SHAPES, target)
    v = iree_dispatch.analyze_iree_executables(text, linear_weight_elements(CFG))
    where = f"iree-compile {iree_compile.compiler_version()} {target}"
    assert v.verdict == analyzers.MATERIALIZED, f"{where}: {v.verdict}"
    assert v.materialized_bytes == linear_weight_bytes(CFG), f"{where}: {v.materialized_bytes}"
