"""IREE's dispatches (llvm-cpu, and cuda compile-only): where does the dequant land?"""

from __future__ import annotations

import pytest

from model_impl import analyzers
from model_impl.analyzers import iree_dispatch
from model_impl.backends import iree_compile
from model_impl.llama.weights import linear_weight_bytes_f32, linear_weight_elements

from .conftest import GRAPHS, IREE_TARGETS, MODELS


@pytest.mark.parametrize("target", IREE_TARGETS)
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("model", MODELS)
def test_iree_int4_unpack_is_its_own_dispatch(compiler_dumps, model, graph, target):
    """Pinned for iree-base-compiler 3.13: each quantized linear's unpack is a dispatch of its
    own that writes the codes as a full-size f32 tensor; no dispatch holds unpack + contraction."""
    cfg = compiler_dumps.cfg(model)
    v = iree_dispatch.analyze_iree_executables(
        compiler_dumps.iree(model, "int4", graph, target), linear_weight_elements(cfg)
    )
    where = f"iree-compile {iree_compile.compiler_version()} {target}, {model} {graph}"
    assert v.verdict == analyzers.MATERIALIZED, f"{where}: verdict is now {v.verdict} (was materialized)"
    assert v.count(iree_dispatch.FUSED_DISPATCH) == 0, (
        f"{where}: {v.count(iree_dispatch.FUSED_DISPATCH)} fused dispatches"
    )
    assert v.count(iree_dispatch.DEQUANT_ONLY) == 7 * cfg.num_layers, f"{where}: {v.count(iree_dispatch.DEQUANT_ONLY)}"
    assert v.materialized_bytes == linear_weight_bytes_f32(cfg), f"{where}: {v.materialized_bytes} bytes"


@pytest.mark.parametrize("target", IREE_TARGETS)
@pytest.mark.parametrize("model", MODELS)
def test_iree_fp32_graph_has_no_dequant_dispatch(compiler_dumps, model, target):
    v = iree_dispatch.analyze_iree_executables(compiler_dumps.iree(model, "fp32", "decode", target))
    assert v.verdict == analyzers.NO_DEQUANT
    assert v.count(iree_dispatch.MATMUL_ONLY) >= 7 * compiler_dumps.cfg(model).num_layers
