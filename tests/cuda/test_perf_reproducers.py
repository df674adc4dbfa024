"""The performance reproducers (reproducers/xla-cuda-*, reproducers/iree-cuda-gemv) on this GPU:
each graph is first held to its linear at the real shape (so its timing times that linear),
then timed; the figure lands in the results file's ``reproducers`` (MODEL_IMPL_RESULTS_OUT) and
the test prints whether it moved from the figure its ``expect.json`` records for this GPU.
Speed is never asserted."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.lowering.test_perf_reproducers import BF16_U, F32_U, ROOT, WEIGHT_ROUNDINGS, load, within_bf16

pytestmark = pytest.mark.cuda
MOVED = 0.15  # a figure this far (relative) from the recorded one has moved: above the H200's run-to-run spread


def moved(case: str, figures: dict, device: str) -> str:
    """One line: the figures against those ``expect.json`` records for ``device``."""
    recorded = json.loads((ROOT / case / "expect.json").read_text()).get("measured", {}).get(device)
    if recorded is None:
        return f"{case} on {device}: {figures} (no figure recorded for this GPU: add it to expect.json)"
    shifts = {k: v / recorded["figures"][k] - 1 for k, v in figures.items() if k in recorded["figures"]}
    if any(abs(s) > MOVED for s in shifts.values()):
        return f"{case} on {device}: MOVED {figures} against {recorded['figures']} ({recorded['file']})"
    return f"{case} on {device}: unchanged, {figures} against {recorded['figures']} ({recorded['file']})"


def test_xla_int4_gemv_rate_reproducer(gpu, cuda_record):
    repro = load("xla-cuda-int4-gemv-rate")
    host = repro.weights(repro.SHAPE)
    x = np.random.default_rng(2).standard_normal((1, repro.SHAPE[1]), np.float32).astype(jnp.bfloat16)
    ref = x.astype(np.float32) @ host["w"].astype(np.float32).T
    y = jax.jit(repro.int4_reduce)(*jax.device_put((x, host["q"], host["s"], host["b"]), gpu))
    assert within_bf16(y, ref, x, host["w"], WEIGHT_ROUNDINGS)
    record = repro.run()
    assert record["device"] == gpu.device_kind and record["ratio"] > 0, record
    cuda_record["reproducers"]["xla-cuda-int4-gemv-rate"] = record
    print(moved("xla-cuda-int4-gemv-rate", {"ratio": record["ratio"]}, gpu.device_kind))


def test_xla_s4_dot_reproducer(gpu, cuda_record):
    repro = load("xla-cuda-s4-dot")
    host = repro.weights(repro.SHAPE)
    exact = np.asarray(host["q"], np.float32) * host["c"].astype(np.float32)[:, None]
    for rows in repro.ROWS:
        x = np.random.default_rng(3).standard_normal((rows, repro.SHAPE[1]), np.float32).astype(jnp.bfloat16)
        y = jax.jit(repro.s4_dot)(*jax.device_put((x, host["q"], host["c"]), gpu))
        assert within_bf16(y, x.astype(np.float32) @ exact.T, x, exact, 0), rows
    record = repro.run()
    cuda_record["reproducers"]["xla-cuda-s4-dot"] = record
    speedups = {rows: r["speedup"] for rows, r in record["rows"].items()}
    print(moved("xla-cuda-s4-dot", speedups, gpu.device_kind))


def _iree_gemv_module(tmp_path) -> Path:
    """The reproducer's module: carried (MODEL_IMPL_REPRO_VMFB, built where iree-compile is) or
    compiled here with its expect.json's flags."""
    carried = os.environ.get("MODEL_IMPL_REPRO_VMFB")
    if carried:
        return Path(carried)
    from model_impl.backends import iree_compile

    expect = json.loads((ROOT / "iree-cuda-gemv" / "expect.json").read_text())
    path = tmp_path / "gemv.vmfb"
    path.write_bytes(iree_compile.compile_mlir((ROOT / "iree-cuda-gemv" / "input.mlir").read_text(), expect["flags"]))
    return path


def test_iree_cuda_gemv_reproducer(gpu, cuda_record, tmp_path):
    pytest.importorskip("iree.runtime", reason="the IREE runtime is not installed (carry its wheel)")
    repro = load("iree-cuda-gemv")
    record = repro.run(str(_iree_gemv_module(tmp_path)))
    x, w = repro.inputs()
    mass = np.abs(x.astype(np.float32)) @ np.abs(w.astype(np.float32)).T
    # bf16 output rounding of the float32 sum, plus float32 accumulation over the inputs
    bound = float(np.max(BF16_U * mass + repro.SHAPE[1] * F32_U * mass))
    assert record["max_abs_err"]["iree"] <= bound and record["max_abs_err"]["xla"] <= bound, (record, bound)
    assert math.isfinite(record["ratio"])
    cuda_record["reproducers"]["iree-cuda-gemv"] = record
    print(moved("iree-cuda-gemv", {"ratio": record["ratio"]}, gpu.device_kind))
