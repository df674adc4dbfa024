"""IREE-CPU: weights passed as ~150-370 call arguments on every step vs held as module globals
(a parameter index). Separates the runtime's per-argument cost from the kernels' own time."""

from __future__ import annotations

import pytest

from model_impl import checkpoints, env
from model_impl.lab import iree_globals
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import quantize_weights, synthetic

from .conftest import smoke

STEPS = 16


def _model(name: str, small: bool):
    if name == "smollm2-135m":
        return checkpoints.load()
    # 16 layers of tiny matmuls: the step is dominated by what the runtime does per call.
    cfg = shrunk_llama32_config(layers=2 if small else 16)
    return cfg, synthetic(cfg, seed=0)


@pytest.mark.parametrize("quant", ["fp32", "int4"])
@pytest.mark.parametrize("model_name", ["call-bound-16-tiny-layers", "smollm2-135m"])
def test_iree_cpu_weights_as_arguments_vs_globals(bench_results, request, model_name, quant):
    small = smoke(request.config)
    if env.version("iree-base-compiler") is None:
        pytest.skip("no iree-compile on this machine (a run-only GPU machine): the globals module is compiled here")
    if small and model_name == "smollm2-135m":
        pytest.skip("smoke run: the tiny model covers the code path")
    cfg, weights = _model(model_name, small)
    if quant == "int4":
        weights = quantize_weights(weights)
    figures = iree_globals.compare(cfg, weights, steps=2 if small else STEPS)
    assert figures["tokens_agree"], figures  # the same graph either way: the same tokens
    bench_results.setdefault("iree_globals", []).append({"model": model_name, "quant": quant, **figures})
