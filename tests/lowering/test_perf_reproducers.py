"""The performance reproducers under reproducers/ compute what they say, on the CPU: each timed
graph equals the linear it stands for (so a GPU timing of it times that linear), the IREE one's
``input.mlir`` is the export of its script's function and compiles for CUDA here, and IREE's
codegen of it is the table's for this iree-compile. Their timings are the ``-m cuda`` tests'
(tests/cuda/test_perf_reproducers.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2] / "reproducers"
PERFORMANCE = sorted(p.parent.name for p in ROOT.glob("*/expect.json") if json.loads(p.read_text()).get("kind"))
SMALL = (96, 256)  # [out, in]: four groups of 64 per row, a shape that runs in milliseconds here
# bf16 unit roundoff: the graph's dequant rounds q * s and + b (2 roundings of w), its output one
# more; the float32 sum of n products carries at most n * 2^-24 of the sum of |products| (the
# order of summation is the compiler's), which matters where the sum cancels.
BF16_U = 2.0**-8
F32_U = 2.0**-24
WEIGHT_ROUNDINGS = 2


def load(case: str):
    spec = importlib.util.spec_from_file_location(f"repro_{case.replace('-', '_')}", ROOT / case / "repro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def within_bf16(y, ref, x, w, weight_roundings: int) -> bool:
    """|y - ref| <= the rounding ``y`` may carry: of the weight (``weight_roundings`` times u of
    each |x_i w_i|), of the float32 sum, and of its own bf16 output. Prints the worst element's
    share of its bound where it is exceeded."""
    y, ref = np.asarray(y, np.float32), np.asarray(ref, np.float32)
    mass = np.abs(np.asarray(x, np.float32)) @ np.abs(np.asarray(w, np.float32)).T
    bound = (weight_roundings * BF16_U + x.shape[-1] * F32_U) * mass + BF16_U * np.abs(ref)
    share = np.abs(y - ref) / bound
    if share.max() > 1:
        i = np.unravel_index(share.argmax(), share.shape)
        print(f"worst {i}: y {y[i]}, ref {ref[i]}, mass {mass[i]}, {share[i]:.1f}x its bound")
    return bool(share.max() <= 1)


def test_the_performance_reproducers_are_the_three_the_verdict_cites():
    from model_impl import decide

    assert sorted(decide.PERFORMANCE_REPRODUCERS) == PERFORMANCE
    for case in PERFORMANCE:
        assert {"README.md", "expect.json", "repro.py"} <= {p.name for p in (ROOT / case).iterdir()}


@pytest.mark.parametrize("rows", [1, 3])
def test_int4_rate_reproducer_graphs_compute_the_linear_of_its_codes(rows):
    repro = load("xla-cuda-int4-gemv-rate")
    host = repro.weights(SMALL)
    x = np.random.default_rng(2).standard_normal((rows, SMALL[1]), np.float32).astype(jnp.bfloat16)
    ref = x.astype(np.float32) @ host["w"].astype(np.float32).T  # the host's bf16 dequant, exact sums
    for y in (repro.bf16_dot(x, host["w"]), repro.bf16_reduce(x, host["w"])):
        assert within_bf16(y, ref, x, host["w"], 0)
    assert within_bf16(repro.int4_reduce(x, host["q"], host["s"], host["b"]), ref, x, host["w"], WEIGHT_ROUNDINGS)
    assert repro.int4_bytes(repro.SHAPE) == 8192 * 2048 // 2 + 2 * 8192 * 32 * 2  # 9.4 MB, the profile's


def test_int4_rate_reproducer_dequant_is_the_host_dequant_bit_for_bit():
    """The magic-number code (``q | 0x4300`` as bf16, minus 128) is exact: with the scales and
    biases the graph's weight is the host's bf16 dequant, element for element."""
    repro = load("xla-cuda-int4-gemv-rate")
    host = repro.weights(SMALL)
    assert np.array_equal(np.asarray(repro.dequant(host["q"], host["s"], host["b"])), host["w"])
    codes = np.arange(16, dtype=np.uint8).astype(jnp.uint4).reshape(1, 16)
    one = np.ones((1, 1), jnp.bfloat16)
    assert np.asarray(repro.dequant(np.tile(codes, (1, 4)), one, 0 * one)).ravel()[:16].tolist() == list(range(16))


@pytest.mark.parametrize("rows", [1, 2, 16])
def test_s4_dot_reproducer_graph_is_the_linear_of_its_codes_and_channel_scales(rows):
    repro = load("xla-cuda-s4-dot")
    host = repro.weights(SMALL)
    x = np.random.default_rng(3).standard_normal((rows, SMALL[1]), np.float32).astype(jnp.bfloat16)
    exact = np.asarray(host["q"], np.float32) * host["c"].astype(np.float32)[:, None]
    ref = x.astype(np.float32) @ exact.T
    assert within_bf16(repro.s4_dot(x, host["q"], host["c"]), ref, x, exact, 0)
    assert within_bf16(repro.bf16_dot(x, host["w"]), ref, x, exact, 1)  # w = q * c rounded once


def test_every_timed_case_is_recorded_with_its_bytes_and_no_time_off_a_gpu():
    for case, shape in (("xla-cuda-int4-gemv-rate", SMALL), ("xla-cuda-s4-dot", SMALL)):
        record = load(case).run(shape=shape)
        assert record["reproducer"] == case and record["platform"] == "cpu"
        rows = record["rows"].values() if isinstance(record["rows"], dict) else [record]
        for row in rows:
            assert set(row["cases"]) >= {"bf16-dot", "bf16-reduce"}
            assert all(c["seconds"] is None and c["weight_bytes"] > 0 for c in row["cases"].values())
            assert "speedup" not in row and "ratio" not in row  # no figure without a time


def test_iree_gemv_input_is_the_export_of_the_reproducers_function():
    repro = load("iree-cuda-gemv")
    text = (ROOT / "iree-cuda-gemv" / "input.mlir").read_text()
    assert text == repro.export()
    assert "/" not in "".join(re.findall(r'loc\("[^"]*"\)', text))  # no machine's paths


def test_iree_gemv_compiles_for_cuda_at_o3_into_the_kernel_the_table_expects(tmp_path):
    """The reproducer's command, compile-only (no GPU here): one dispatch, whose codegen
    (pipeline and workgroup size, from iree-compile's own dump) is the table's for this
    iree-compile version."""
    from model_impl import expectations
    from model_impl.backends import iree_compile

    expect = json.loads((ROOT / "iree-cuda-gemv" / "expect.json").read_text())
    dump = tmp_path / "dump"
    flags = [*expect["flags"], f"--iree-hal-dump-executable-files-to={dump}"]
    assert iree_compile.compile_mlir((ROOT / "iree-cuda-gemv" / "input.mlir").read_text(), flags)
    (source,) = dump.glob("configured_*dispatch_0.mlir")
    text = source.read_text()
    (name,) = re.findall(r"func\.func @main_dispatch_0_(\w+)\(", text)
    # 3.12 and 3.13 spell it `#iree_gpu.pipeline<VectorDistribute>`, 3.11 `LLVMGPUVectorDistribute`
    pipeline = re.search(r"pipeline = (?:#iree_gpu\.pipeline<)?(?:LLVMGPU)?(\w+)", text).group(1)
    size = tuple(int(v) for v in re.search(r"workgroup_size = \[([\d, ]+)\]", text).group(1).split(","))
    assert not list(dump.glob("configured_*dispatch_1.mlir"))
    version = expectations.compiler_version(expectations.IREE)
    key = ("iree-cuda", expectations.KERNEL_CONFIG, "iree-cuda-gemv")
    expectations.check(key, (name, pipeline, size), expectations.IREE, version)


def test_each_recorded_figure_is_its_results_files_figure():
    """expect.json's ``measured`` per GPU (what the README's "Actual" quotes) rounds the figure of
    the results file it names; the -m cuda tests compare a new run with it."""
    from model_impl import decide

    root = ROOT.parent
    for case in PERFORMANCE:
        for device, m in json.loads((ROOT / case / "expect.json").read_text())["measured"].items():
            run = json.loads((root / m["file"]).read_text())
            record = run["reproducers"][case]
            assert record["device"] == device == run["environment"]["machine"]["gpu"]
            if case == "xla-cuda-s4-dot":
                got = {rows: r["speedup"] for rows, r in record["rows"].items()}
            else:
                got = {"ratio": record["ratio"]}
            assert got.keys() == m["figures"].keys()
            assert all(round(got[k], 3) == m["figures"][k] for k in got), (case, got, m["figures"])
        assert case in decide.PERFORMANCE_REPRODUCERS
