"""XLA-CPU's optimized HLO: is the dequant fused into the dot or is the f32 weight rebuilt?"""

from __future__ import annotations

import pytest

from model_impl import analyzers, expectations
from model_impl.analyzers import xla_hlo
from model_impl.llama.weights import linear_weight_elements

from .conftest import GRAPHS, MODELS

XLA_CPU = (expectations.XLA, expectations.compiler_version(expectations.XLA))


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("model", MODELS)
def test_xla_cpu_int4_dequant_is_what_the_table_expects_of_this_jaxlib(compiler_dumps, model, graph):
    """jaxlib 0.10.2 (model_impl/expectations.py): each dequant is a kLoop fusion writing the full
    f32 weight, and the dot reads it back. A jaxlib that fuses fails naming what it did."""
    cfg = compiler_dumps.cfg(model)
    dump = compiler_dumps.xla_cpu(model, "int4", graph)
    v = xla_hlo.analyze_xla_hlo(dump.hlo, linear_weight_elements(cfg))
    observed = expectations.rebuild(v.verdict, v.fused_count, len(v.dequants), v.materialized_bytes, cfg)
    expectations.check(("xla-cpu", expectations.REBUILD, cfg.dtype), observed, *XLA_CPU)


@pytest.mark.parametrize("model", MODELS)
def test_xla_cpu_fp32_graph_has_no_dequant(compiler_dumps, model):
    dump = compiler_dumps.xla_cpu(model, "fp32", "decode")
    v = xla_hlo.analyze_xla_hlo(dump.hlo, linear_weight_elements(compiler_dumps.cfg(model)))
    assert v.verdict == analyzers.NO_DEQUANT and not v.dequants
