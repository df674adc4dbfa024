"""IREE's dispatches (llvm-cpu, and cuda compile-only): where does the dequant land?"""

from __future__ import annotations

import pytest

from model_impl import analyzers, expectations
from model_impl.analyzers import iree_dispatch
from model_impl.backends.spec import for_iree_target
from model_impl.llama.weights import linear_weight_elements

from .conftest import GRAPHS, IREE_TARGETS, MODELS

IREE = (expectations.IREE, expectations.compiler_version(expectations.IREE))


@pytest.mark.parametrize("target", IREE_TARGETS)
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("model", MODELS)
def test_iree_int4_dequant_is_what_the_table_expects_of_this_compiler(compiler_dumps, model, graph, target):
    """iree-base-compiler 3.13 (model_impl/expectations.py): each quantized linear's unpack is a
    dispatch of its own that writes the codes as a full-size tensor; no dispatch holds unpack +
    contraction. A compiler that fuses fails naming what it did."""
    cfg = compiler_dumps.cfg(model)
    v = iree_dispatch.analyze_iree_executables(
        compiler_dumps.iree(model, "int4", graph, target), linear_weight_elements(cfg)
    )
    observed = expectations.rebuild(
        v.verdict, v.count(iree_dispatch.FUSED_DISPATCH), v.count(iree_dispatch.DEQUANT_ONLY), v.materialized_bytes, cfg
    )
    backend = for_iree_target(target).name
    expectations.check((backend, expectations.REBUILD, cfg.dtype), observed, *IREE)


@pytest.mark.parametrize("target", IREE_TARGETS)
@pytest.mark.parametrize("model", MODELS)
def test_iree_fp32_graph_has_no_dequant_dispatch(compiler_dumps, model, target):
    v = iree_dispatch.analyze_iree_executables(compiler_dumps.iree(model, "fp32", "decode", target))
    assert v.verdict == analyzers.NO_DEQUANT
    assert v.count(iree_dispatch.MATMUL_ONLY) >= 7 * compiler_dumps.cfg(model).num_layers
