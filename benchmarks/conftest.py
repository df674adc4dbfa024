"""Benchmark set-up: which models and backends run here, and the results file they leave.

``make bench`` runs them for real and writes ``results/bench-<machine>.json``; ``make test``
runs each once with benchmarking disabled (small shapes), so they never rot.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import pytest

from model_impl import checkpoints, env
from model_impl.backends.spec import ALL
from model_impl.backends.spec import backend as backend_spec
from model_impl.lab import roofline
from model_impl.llama.shapes import llama32_config, shrunk_llama32_config
from model_impl.llama.weights import mode_label, parse_mode_label, quantize_weights, synthetic

ROOT = Path(__file__).resolve().parents[1]


def smoke(config) -> bool:
    return bool(config.getoption("benchmark_disable", False)) or os.environ.get("BENCH_SMOKE") == "1"


def available_backends() -> list[str]:
    wanted = os.environ.get("BENCH_BACKENDS")
    try:
        gpu = bool(jax.devices("cuda"))
    except RuntimeError:
        gpu = False
    found = [b.name for b in ALL if gpu or not b.is_cuda]
    return [b for b in found if not wanted or b in wanted.split(",")]


# Models whose heads shard over 2 devices (SmolLM2-135M has 9 heads and 3 KV heads: it does not).
TP_MODELS = ("llama-3.2-1b",)


def pytest_generate_tests(metafunc):
    if "bench_case" in metafunc.fixturenames:
        models = os.environ.get("BENCH_MODELS", "smollm2-135m,llama-3.2-1b").split(",")
        modes = os.environ.get("BENCH_MODES", "fp32,int4,bf16,int4-bf16").split(",")
        # Tensor-parallel degrees (XLA backends, TP_MODELS); the smoke run keeps one TP-2 case alive.
        tps = [int(t) for t in os.environ.get("BENCH_TP", "1").split(",")]
        cases = [(m, b, q, 1) for m in models for b in available_backends() for q in modes if 1 in tps]
        cases += [
            (m, b, q, tp)
            for tp in tps
            if tp > 1
            for m in models
            if m in TP_MODELS
            for b in available_backends()
            if backend_spec(b).is_xla
            for q in modes
        ]
        if smoke(metafunc.config) and "BENCH_TP" not in os.environ and "llama-3.2-1b" in models:
            cases.append(("llama-3.2-1b", "xla-cpu", modes[-1], 2))
        if smoke(metafunc.config) and "BENCH_MODES" not in os.environ:
            # The smoke run keeps the real model's loader branch alive in fp32 and int4 only: the
            # half modes' path is the same code, run by the 2-layer Llama cases, and compiling
            # the 30-layer model twice more per backend is 80 s of a cold `make test`.
            cases = [c for c in cases if c[0] != "smollm2-135m" or c[2] in ("fp32", "int4")]
        ids = ["-".join(c[:3]) + (f"-tp{c[3]}" if c[3] > 1 else "") for c in cases]
        metafunc.parametrize("bench_case", cases, ids=ids)


class Models:
    """The real model, and Llama-3.2-1B with seeded synthetic weights made here (never shipped)."""

    def __init__(self, small: bool):
        self.small, self._cache = small, {}

    def get(self, name: str, mode: str):
        """(Config, Weights) of ``name`` in weight mode ``mode`` (``fp32``, ``int4``, ``bf16``,
        ``int4-bf16``, ...): dense weights of the dtype, or int4 quantized from them."""
        key = (name, mode)
        if key not in self._cache:
            if not any(k[0] == name for k in self._cache):
                self._cache.clear()  # one model's weights in memory at a time
            quant, dtype = parse_mode_label(mode)
            dense = mode_label("dense", dtype)
            if (name, dense) in self._cache:
                cfg, weights = self._cache[name, dense]
            elif name == "smollm2-135m":
                cfg, weights = checkpoints.load(None, "dense", dtype)
            elif name == "llama-3.2-1b":
                base = shrunk_llama32_config() if self.small else llama32_config()
                cfg = dataclasses.replace(base, dtype=dtype)
                weights = synthetic(cfg, seed=0)
            else:
                raise ValueError(f"unknown benchmark model {name!r}")
            self._cache[name, dense] = (cfg, weights)
            self._cache[key] = (cfg, quantize_weights(weights) if quant == "int4" else weights)
        return self._cache[key]


@pytest.fixture(scope="session")
def models(request):
    return Models(small=smoke(request.config))


@pytest.fixture(scope="session")
def bandwidth(request):
    """Measured copy bandwidth per platform (bytes/s), in the same run as the timings."""
    cache = {}

    def get(platform_name):
        if platform_name not in cache:
            size = (64 << 20) if smoke(request.config) else (1 << 30)
            cache[platform_name] = roofline.copy_bandwidth(
                platform_name, size, repeats=3 if smoke(request.config) else 10
            )
        return cache[platform_name]

    return get


@pytest.fixture(scope="session")
def bench_results(request):
    results = {"cases": []}
    yield results
    if smoke(request.config) or not (results["cases"] or results.get("iree_globals")):
        return
    gpu = any(backend_spec(c["backend"]).is_cuda for c in results["cases"])
    results = {"environment": env.environment("cuda" if gpu else "cpu"), **results}
    name = os.environ.get("BENCH_RESULTS_NAME") or ("bench-gpu" if gpu else "bench-cpu")
    out = Path(os.environ.get("BENCH_RESULTS_DIR", ROOT / "results")) / f"{name}.json"
    out.write_text(json.dumps(results, indent=1, default=float) + "\n")
