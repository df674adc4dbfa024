"""XLA-CPU's optimized HLO: is the dequant fused into the dot or is the f32 weight rebuilt?"""

from __future__ import annotations

import jaxlib
import pytest

from model_impl import analyzers
from model_impl.analyzers import xla_hlo
from model_impl.llama.weights import linear_weight_bytes_f32, linear_weight_elements

from .conftest import GRAPHS, MODELS


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("model", MODELS)
def test_xla_cpu_int4_rebuilds_every_f32_weight(compiler_dumps, model, graph):
    """Pinned for jaxlib 0.10.2: each dequant is a kLoop fusion writing the full f32 weight,
    and the dot reads it back. If XLA starts fusing, this fails and says so."""
    cfg = compiler_dumps.cfg(model)
    dump = compiler_dumps.xla_cpu(model, "int4", graph)
    v = xla_hlo.analyze_xla_hlo(dump.hlo, linear_weight_elements(cfg))
    where = f"jaxlib {jaxlib.__version__}, {model} {graph}"
    assert v.verdict == analyzers.MATERIALIZED, f"{where}: verdict is now {v.verdict} (was materialized)"
    assert v.fused_count == 0, f"{where}: {v.fused_count} dequant fusions now hold their dot"
    assert len(v.dequants) == 7 * cfg.num_layers, f"{where}: {len(v.dequants)} dequant kernels"
    assert v.materialized_bytes == linear_weight_bytes_f32(cfg), f"{where}: {v.materialized_bytes} bytes"


@pytest.mark.parametrize("model", MODELS)
def test_xla_cpu_fp32_graph_has_no_dequant(compiler_dumps, model):
    dump = compiler_dumps.xla_cpu(model, "fp32", "decode")
    v = xla_hlo.analyze_xla_hlo(dump.hlo, linear_weight_elements(compiler_dumps.cfg(model)))
    assert v.verdict == analyzers.NO_DEQUANT and not v.dequants
