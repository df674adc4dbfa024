"""The exported StableHLO: no custom_call, and the dequant as standard ops, once per linear."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from model_impl.analyzers import stablehlo

from .conftest import GRAPHS, MODELS, QUANTS


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("model", MODELS)
def test_exported_graph_has_no_custom_call(compiler_dumps, model, quant, graph):
    inv = compiler_dumps.stablehlo(model, quant, graph)
    assert not inv.has_custom_call, f"jax {jax.__version__} export now emits custom_calls {inv.custom_calls}"
    assert inv.op_counts["dot_general"] > 0


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("model", MODELS)
def test_int4_dequant_appears_once_per_quantized_linear(compiler_dumps, model, graph):
    linears = 7 * compiler_dumps.cfg(model).num_layers
    inv = compiler_dumps.stablehlo(model, "int4", graph)
    assert inv.shifts == linears, f"{inv.shifts} shift_right_logical for {linears} quantized linears"
    assert inv.u32_to_f32_converts == linears
    assert inv.masks >= linears
    assert inv.op_counts["multiply"] >= linears and inv.op_counts["add"] >= linears


@pytest.mark.parametrize("graph", GRAPHS)
def test_fp32_graph_has_no_unpack_ops(compiler_dumps, graph):
    inv = compiler_dumps.stablehlo("smollm2-135m", "fp32", graph)
    assert inv.shifts == 0 and inv.u32_to_f32_converts == 0


def test_custom_call_detector_sees_a_real_one():
    """The no-custom_call verdict can flip: a CPU Cholesky exports as a LAPACK custom_call."""
    spec = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    text = jax.export.export(jax.jit(jnp.linalg.cholesky))(spec).mlir_module()
    inv = stablehlo.stablehlo_inventory(text)
    assert inv.has_custom_call and any("potrf" in t for t in inv.custom_calls), inv.custom_calls


@pytest.mark.parametrize("model", MODELS)
def test_decode_loop_exports_one_while_with_each_dequant_once_and_no_custom_call(model_configs, model):
    """The generate path's graph: a ``while`` (its bound is data: the step budget and EOS), the
    same dequant per quantized linear as the one-step graph, in its body, and no custom_call."""
    from model_impl.analyzers import dumps
    from model_impl.llama.graphs import DECODE_CHUNK
    from model_impl.llama.weights import specs

    cfg, (_, max_seq) = model_configs[model]
    inv = stablehlo.stablehlo_inventory(dumps.stablehlo(cfg, specs(cfg, "int4"), "decode_loop", DECODE_CHUNK, max_seq))
    assert not inv.has_custom_call, inv.custom_calls
    assert inv.op_counts["while"] == 1
    assert inv.shifts == 7 * cfg.num_layers
