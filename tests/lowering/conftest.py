"""Graphs whose lowering is characterized: the real model and the exact Llama-3.2-1B shapes.

Export and compile each graph once per session (and once per machine for IREE, whose
modules are cached on disk); tests only read the dumps.
"""

from __future__ import annotations

import functools

import pytest

from model_impl.analyzers import dumps, stablehlo
from model_impl.backends.generate import cache_length, prompt_bucket
from model_impl.llama.shapes import LLAMA32_SHAPES, llama32_config
from model_impl.llama.weights import specs

# The real model's graphs at the shapes the parity tests run (7-token prompt + 48 tokens).
REAL_SHAPES = (prompt_bucket(7), cache_length(7, 48))
MODELS = ("smollm2-135m", "llama-3.2-1b")
QUANTS = ("fp32", "int4")
GRAPHS = ("prefill", "decode")
IREE_TARGETS = ("llvm-cpu", "cuda")


@pytest.fixture(scope="session")
def model_configs(real_model):
    return {"smollm2-135m": (real_model[0], REAL_SHAPES), "llama-3.2-1b": (llama32_config(), LLAMA32_SHAPES)}


class Dumps:
    """Memoized dumps of (model, quant, graph) for each compiler."""

    def __init__(self, configs):
        self.configs = configs

    def cfg(self, model):
        return self.configs[model][0]

    def _args(self, model, quant, graph):
        cfg, (bucket, max_seq) = self.configs[model]
        return cfg, specs(cfg, quant), graph, bucket, max_seq

    @functools.cache
    def stablehlo(self, model, quant, graph):
        return stablehlo.stablehlo_inventory(dumps.stablehlo(*self._args(model, quant, graph)))

    @functools.cache
    def xla_cpu(self, model, quant, graph):
        return dumps.xla_hlo(*self._args(model, quant, graph))

    @functools.cache
    def iree(self, model, quant, graph, target):
        text, _ = dumps.iree_sources(*self._args(model, quant, graph), target)
        return text


@pytest.fixture(scope="session")
def compiler_dumps(model_configs):
    return Dumps(model_configs)
