"""IREE-CPU with the weights as module globals (model_impl.lab.iree_globals) runs the same graph."""

from __future__ import annotations

from model_impl.lab import iree_globals
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import quantize_weights, synthetic


def test_iree_globals_module_decodes_the_same_tokens_as_the_argument_module():
    """Weights as parameter globals (model_impl.iree_globals) change where they live, not the graph."""
    cfg = shrunk_llama32_config(layers=2)
    figures = iree_globals.compare(cfg, quantize_weights(synthetic(cfg, 0)), steps=4)
    assert figures["tokens_agree"] and figures["weight_arguments"] == 2 * (7 * 3 + 2) + 2
