"""CUDA runs of the real model, and the evidence file a GPU run leaves behind.

Set ``MODEL_IMPL_RESULTS_OUT=path.json`` to write the figures of this run (device, driver,
versions, CUDA target, per-test outcomes and figures); ``scripts/gpu_run.sh`` does.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess

import pytest

CUDA_BACKENDS = ("xla-cuda", "iree-cuda")
_outcomes: list[dict] = []


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes.append({"test": report.nodeid, "outcome": report.outcome,
                          "seconds": round(report.duration, 2)})


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@pytest.fixture(scope="session")
def cuda_record():
    """Figures the CUDA tests measured, written to MODEL_IMPL_RESULTS_OUT at session end."""
    record = {"figures": {}, "lowering": {}}
    yield record
    out = os.environ.get("MODEL_IMPL_RESULTS_OUT")
    if not out:
        return
    import jax

    from model_impl import iree_backend

    device = jax.devices("cuda")[0]
    try:  # an XLA-only run carries no IREE modules: then there is no IREE to describe
        iree_compiler, iree_target = iree_backend.compiler_version(), iree_backend.cuda_target_for_device()
    except Exception:  # noqa: BLE001  (no compiler and no MODEL_IMPL_IREE_* set)
        iree_compiler = iree_target = None
    record.update({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": device.device_kind, "compute_capability": device.compute_capability,
                    "nvidia_smi": _driver(), "node": platform.node(), "python": platform.python_version()},
        "versions": {n: _version(n) for n in ("jax", "jaxlib", "jax-cuda13-plugin", "iree-base-runtime",
                                              "numpy", "transformers", "torch")}
        | {"iree-base-compiler (compiled the modules)": iree_compiler},
        "iree_cuda_target": iree_target,
        "tests": _outcomes,
    })
    with open(out, "w") as f:
        json.dump(record, f, indent=2, default=str)


class CudaRuns:
    """Greedy runs on each CUDA backend, made once per session and kept with their runner."""

    def __init__(self, models, prompt_ids):
        self.models, self.prompt_ids, self._runs = models, prompt_ids, {}

    def get(self, backend, quant):
        if (backend, quant) not in self._runs:
            from model_impl import generate
            from model_impl.checks import GREEDY_TOKENS

            cfg, weights = self.models[quant]
            runner = generate.make_runner(cfg, weights, backend)
            run = generate.generate(runner, self.prompt_ids, GREEDY_TOKENS, stop_at_eos=False, keep_logits=True)
            self._runs[backend, quant] = (runner, run)
        return self._runs[backend, quant]


@pytest.fixture(scope="session")
def cuda_runs(real_model, real_model_int4, prompt_ids):
    return CudaRuns({"fp32": real_model, "int4": real_model_int4}, prompt_ids)


@pytest.fixture(scope="session")
def cpu_runs(request):
    return {"fp32": request.getfixturevalue("fp32_run"), "int4": request.getfixturevalue("int4_run")}
