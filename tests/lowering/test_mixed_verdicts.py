"""A graph where some linears fuse and others do not is `materialized`, with exactly the bytes of
the weights that are rebuilt and the right count of fused linears: on a hand-written XLA dump
and on a real IREE graph whose layers hold different int4 forms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from model_impl import analyzers
from model_impl.analyzers import iree_dispatch, xla_hlo
from model_impl.backends import iree_compile
from model_impl.llama.representations import BASELINE, convert
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import LINEAR_NAMES, expected_shapes, linear_weight_elements, specs

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHT = {64 * 128}


def test_xla_graph_with_one_fused_and_one_materialized_linear_is_materialized():
    text = (FIXTURES / "xla_mixed.hlo").read_text()
    v = xla_hlo.analyze_xla_hlo(text, WEIGHT)
    assert v.verdict == analyzers.MATERIALIZED
    assert sorted(d.kind for d in v.dequants) == [analyzers.FUSED, analyzers.MATERIALIZED]
    assert v.fused_count == 1 and v.materialized_bytes == 64 * 128 * 4  # only linear b's weight
    assert xla_hlo.xla_linears_fused(text) == (1, 2, {"dot": 1})


def _mixed_layers(cfg, fused_form: str):
    """Layer 0 in ``fused_form``, the other layers in MLX's uint32 words (shapes only)."""
    int4 = specs(cfg, "int4")
    fused, words = convert(int4, fused_form), convert(int4, BASELINE)
    return dataclasses.replace(int4, layers=(fused.layers[0], *words.layers[1:]))


def test_iree_cpu_graph_with_grouped_and_word_layers_is_materialized_with_the_word_layers_bytes():
    """IREE fuses the grouped contraction (layer 0) and gives each uint32-word linear a dequant
    dispatch (layer 1): the graph is materialized, and the bytes are layer 1's f32 weights."""
    cfg = shrunk_llama32_config(layers=2)
    text, _ = iree_compile.executable_sources(cfg, _mixed_layers(cfg, "s4-grouped"), "decode", 0, 128, "llvm-cpu")
    v = iree_dispatch.analyze_iree_executables(text, linear_weight_elements(cfg))
    shapes = expected_shapes(cfg)
    one_layer_f32 = 4 * sum(shapes[n][0] * shapes[n][1] for n in LINEAR_NAMES)
    assert v.verdict == analyzers.MATERIALIZED
    assert v.materialized_bytes == one_layer_f32
    # One fused dispatch per grouped linear, one dequant-only dispatch per word linear.
    fused, dequant_only = v.count(iree_dispatch.FUSED_DISPATCH), v.count(iree_dispatch.DEQUANT_ONLY)
    assert (fused, dequant_only) == (len(LINEAR_NAMES), len(LINEAR_NAMES)), [
        (e.exports, e.kind, e.sites) for e in v.executables
    ]
