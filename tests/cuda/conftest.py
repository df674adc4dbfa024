"""The evidence file a GPU run leaves behind.

Set ``MODEL_IMPL_RESULTS_OUT=path.json`` to write the figures of this run (its environment
record, the IREE CUDA target, per-test outcomes and figures); ``scripts/gpu_run.sh`` does.
The greedy runs themselves come from the suite-wide ``greedy_runs`` fixture.
"""

from __future__ import annotations

import json
import os

import pytest

from model_impl.backends.spec import ALL

CUDA_BACKENDS = tuple(b.name for b in ALL if b.is_cuda)
_outcomes: list[dict] = []


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes.append({"test": report.nodeid, "outcome": report.outcome, "seconds": round(report.duration, 2)})


@pytest.fixture(scope="session")
def gpu():
    """The first CUDA device JAX sees (the suite makes the CPU JAX's default: place arrays on it)."""
    import jax

    try:
        return jax.devices("cuda")[0]
    except RuntimeError as e:
        pytest.skip(f"cuda: no CUDA device usable by JAX ({e})")


@pytest.fixture(scope="session")
def cuda_record():
    """Figures the CUDA tests measured, written to MODEL_IMPL_RESULTS_OUT at session end."""
    record = {"figures": {}, "lowering": {}, "loop_vs_per_step": {}, "reproducers": {}}
    yield record
    out = os.environ.get("MODEL_IMPL_RESULTS_OUT")
    if not out:
        return
    from model_impl import env
    from model_impl.backends import iree_compile

    try:  # an XLA-only run carries no IREE modules: then there is no IREE to describe
        iree_compiler, iree_target = iree_compile.compiler_version(), iree_compile.cuda_target_for_device()
    except Exception:  # noqa: BLE001  (no compiler and no MODEL_IMPL_IREE_* set)
        iree_compiler = iree_target = None
    environment = env.environment("cuda", iree_compiler_of_modules=iree_compiler, iree_cuda_target=iree_target)
    with open(out, "w") as f:
        json.dump({"environment": environment, **record, "tests": _outcomes}, f, indent=2, default=str)
