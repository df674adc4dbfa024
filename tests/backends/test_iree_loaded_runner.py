"""A runner over weights already on the device and a module already loaded (what a machine
without the compiler runs, :meth:`IreeRunner.loaded`) decodes what the compiling runner decodes,
on a device of a driver of its own (``IreeDevice(fresh_driver=True)``), and through the suite's
decode timer as the IREE-CUDA study times it; a graph it was not given is named, not compiled."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from model_impl.backends import iree_compile
from model_impl.backends.iree_runtime import IreeDevice, IreeRunner
from model_impl.lab import iree_cuda_study
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import synthetic

MAX_SEQ = iree_cuda_study.MAX_SEQ
STEPS = 4


def _decode(runner, steps: int = STEPS):
    runner.reset(MAX_SEQ)
    token, rows = runner.put_token(1), []
    for pos in range(steps):
        token, logits = runner.decode(token, pos)
        rows.append(runner.logits_row(logits))
    return np.stack(rows)


@pytest.fixture(scope="module")
def model():
    cfg = shrunk_llama32_config()
    return cfg, synthetic(cfg, seed=0)


@pytest.fixture(scope="module")
def carried(model):
    """The decode module compiled for llvm-cpu, loaded on a device of a fresh local-task driver
    with the weights uploaded to it: the runner the study builds on the GPU machine."""
    cfg, weights = model
    specs = iree_compile.weight_specs(weights)
    path, _ = iree_compile.compiled_module(cfg, specs, "decode", 0, MAX_SEQ, "llvm-cpu")
    device = IreeDevice("local-task", fresh_driver=True)
    device_weights = [device.put(x) for x in jax.tree_util.tree_leaves(weights)]
    functions = {("decode", 0, MAX_SEQ): device.load(path)}
    return device, IreeRunner.loaded(cfg, device, device_weights, functions, "iree-cpu")


def test_a_fresh_driver_gives_a_device_of_its_own(carried):
    cached = IreeDevice("local-task")
    assert cached.device is IreeDevice("local-task").device  # the runtime's one device per driver name
    assert carried[0].device is not cached.device


def test_a_runner_over_loaded_modules_decodes_what_the_compiling_runner_decodes(model, carried):
    cfg, weights = model
    compiling = IreeRunner(cfg, weights, "iree-cpu")
    np.testing.assert_array_equal(_decode(carried[1]), _decode(compiling))  # one module, one device kind


def test_the_studys_timer_runs_the_loaded_runner_through_the_same_tokens(model, carried):
    cfg, weights = model
    timed = iree_cuda_study.time_variant(carried[1])
    again = iree_cuda_study.time_variant(IreeRunner(cfg, weights, "iree-cpu"))
    assert timed["tokens"] == again["tokens"] and len(timed["tokens"]) == 8  # a fast step: 8 synced steps
    assert 0 < timed["step_s"] <= timed["spread_s"][1] and timed["rounds"] == 5


def test_a_graph_the_loaded_runner_was_not_given_is_named(carried):
    with pytest.raises(KeyError, match="prefill at bucket 16, max_seq 128: not among this runner's loaded modules"):
        carried[1].prefill(np.zeros(16, np.int32), 3, MAX_SEQ)
