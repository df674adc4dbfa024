"""The Pallas int4 GEMV sweep (``python -m model_impl pallas-sweep``) on the CPU: every kernel
variant in Pallas' interpreter against the host dequant, the record the report reads, the
harness's own checks, the Triton lowering, and bad options as one ``error:`` line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import jax
import pytest

from model_impl.__main__ import main
from model_impl.analyzers import xla_hlo
from model_impl.lab import pallas_sweep as ps
from model_impl.lab import roofline
from model_impl.report import vs_bf16_section

# The interpreter check, cut to one shape and two tiles that between them take every path of the
# kernel: split-K with a K loop (16x32x2: 8 groups per part, 4 per step) and whole-K without
# split (8x128x1); every dequant mode (atomic split-K too) on the first.
SHAPE = (128, 1024)
TILES = ((16, 32, 2), (8, 128, 1))


def _sweep_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ps.add_parser(parser.add_subparsers())
    return parser.parse_args(["pallas-sweep", *argv])


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """(exit code, record) of the interpreter check through the command line."""
    out = tmp_path_factory.mktemp("sweep") / "pallas-gemv-cpu.json"
    tiles = ",".join("x".join(map(str, t)) for t in TILES)
    argv = ["pallas-sweep", "--interpret", "--small", "--shapes", "x".join(map(str, SHAPE)), "--tiles", tiles]
    code = main([*argv, "--mode-tiles", "1", "--jobs", "2", "--out", str(out)])
    return code, json.loads(out.read_text())


def test_every_interpreted_variant_matches_the_host_dequant_and_is_timed(interpreted):
    code, record = interpreted
    assert code == 0
    first = ps.Variant(*TILES[0])
    want = {ps.Variant(*t).name for t in TILES} | {dataclasses.replace(first, **d).name for d in ps.MODES}
    rows = {r["name"]: r for r in record["rows"]}
    assert set(rows) == want | set(ps.BASELINES)
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        check = row["check"]
        mode = row.get("params", {}).get("mode", "xla")
        assert check["tol_over_rms"] == ps.TOL[mode]
        assert check["ok"] and check["err_over_rms"] <= check["tol_over_rms"], (name, check)
        assert row["seconds"] > 0 and row["bytes"] > 0, name


def test_the_interpreted_record_renders_in_the_report(interpreted):
    _, record = interpreted
    record["file"] = "results/pallas-gemv-cpu.json"  # what results.load adds
    assert set(record["best"]) == {"128x1024"}
    families = set(record["best"]["128x1024"])
    assert {"xla-dot", "xla-reduce", "xla-u4-magic", "xla-u32-word", "pallas-best"} <= families
    bw = record["memory_bandwidth"]
    assert bw["copy_gb_per_s"] > 0 and bw["read_gb_per_s"] > 0
    assert bw["limit_gb_per_s"] == pytest.approx(ps.GUARD_FACTOR * max(bw["copy_gb_per_s"], bw["read_gb_per_s"]))
    text = "\n".join(vs_bf16_section.pallas_gemv_lines([record]))
    row = next(line for line in text.splitlines() if line.startswith("| 128x1024 |"))
    missing = [f for f in vs_bf16_section.PALLAS_FAMILIES if f not in families]  # current-pallas, mosaic-best
    assert row.count("—") == len(missing) and row.endswith(f"| {record['best']['128x1024']['pallas-best']['name']} |")
    assert f"{len(record['rows'])} rows, 0 wrong against the host dequant" in text


def test_a_gemv_that_misreads_the_nibbles_is_recorded_wrong_and_not_timed():
    args = _sweep_args("--interpret", "--rounds", "1", "--max-copies", "2", "--budget-s", "0", "--out", "")
    sweep = ps.Sweep(args)

    def misread(x, w):  # code k read from nibble k + 1 of its word
        return ps.form_gemv(x, dataclasses.replace(w, packed=w.packed >> 4))

    jobs = [
        ps.Job(SHAPE, "xla", name, "test", gemv, "mlx", "float32", ps.TOL["xla"])
        for name, gemv in (("in-graph", ps.form_gemv), ("misread", misread))
    ]
    sweep.run_jobs(jobs)
    rows = {r["name"]: r for r in sweep.rows}
    assert rows["in-graph"]["check"]["ok"] and "seconds" in rows["in-graph"]
    assert not rows["misread"]["check"]["ok"] and "seconds" not in rows["misread"]


def test_the_loop_count_sees_the_gemvs_that_xla_deleted():
    out, n_in, copies = 64, 128, 3
    x = jax.random.normal(jax.random.PRNGKey(0), (1, n_in), ps.BF16)
    ws = tuple(jax.random.normal(jax.random.PRNGKey(i + 1), (out, n_in), ps.BF16) for i in range(copies))
    kept = ps.looped(ps.form_gemv, copies, 2).lower(x, ws).compile().as_text()

    def pruned(x, ws):  # the sweep's first loop: the barrier's copy of the last output unused
        def body(_, carry):
            x, y = carry
            for w in ws:
                x, w, _ = jax.lax.optimization_barrier((x, w, y))
                y = ps.form_gemv(x, w)
            return x, y

        return jax.lax.fori_loop(0, 2, body, (x, ps.form_gemv(x, ws[0])))[1]

    deleted = jax.jit(pruned).lower(x, ws).compile().as_text()
    assert xla_hlo.loop_contractions(kept) == copies
    assert xla_hlo.loop_contractions(deleted) == 1
    assert xla_hlo.loop_contractions(jax.jit(ps.form_gemv).lower(x, ws[0]).compile().as_text()) is None


def test_the_self_test_passes(capsys):
    assert main(["pallas-sweep", "--self-test"]) == 0
    assert "self-test: all ok" in capsys.readouterr().out


def test_every_gpu_sweep_variant_lowers_to_one_triton_call(tmp_path):
    out = tmp_path / "lower.json"
    assert main(["pallas-sweep", "--lower-only", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    lowered = {(tuple(r["shape"]), r["name"]) for r in record["lowered"]}
    tiles = {(s, ps.Variant(*t).name) for s in ps.GPU_SHAPES for t in ps.TILES[s]}
    assert tiles < lowered and len(lowered) == len(record["lowered"])  # every tile, and modes beside
    assert record["all_ok"] and all(r["triton_calls"] == 1 for r in record["lowered"])


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--shapes", "bogus"], "--shapes: 'bogus' is not OUTxIN"),
        (["--shapes", "64x100"], "--shapes: 64x100: the input size must be a multiple of the group"),
        (["--tiles", "16x128"], "--tiles: '16x128' is not ROWSxWORDSxSPLIT"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--batch", "0"], "--batch must be 1 to 16"),
        (["--batch", "17"], "--batch must be 1 to 16 (the kernel's rows), got 17"),
        (["--mosaic"], "--mosaic runs on a GPU only"),
    ],
)
def test_a_bad_option_is_one_error_line_naming_the_flag_and_exit_2(argv, says, capsys, tmp_path):
    assert main(["pallas-sweep", "--interpret", "--out", str(tmp_path / "x.json"), *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), lines
    assert not (tmp_path / "x.json").exists()


def test_the_step_estimate_sums_the_shapes_counts_as_the_report_reads_it():
    # planted per-GEMV seconds: the tuned kernel at half XLA's bf16 dot at every int4 shape
    times = {"xla-dot": 10e-6, "xla-reduce": 12e-6, "xla-u4-magic": 8e-6, "xla-u32-word": 9e-6, "current-pallas": 20e-6}
    rows = []
    for shape in ps.STEP:
        fams = {"xla-dot": 100e-6, "xla-reduce": 110e-6} if shape == ps.HEAD else {**times, "r16": 5e-6}
        for name, t in fams.items():
            family = "pallas" if name == "r16" else "xla"
            rows.append({"shape": list(shape), "name": name, "family": family, "bytes": 1 << 20, "seconds": t})
    best = ps.select_best(rows, list(ps.STEP))
    record = {
        "best": {"x".join(map(str, s)): v for s, v in best.items()},
        "step_estimate": ps.step_estimate(best, rows),
    }
    n = sum(c for s, c in ps.STEP.items() if s != ps.HEAD)
    fams = record["step_estimate"]["families"]
    assert fams["pallas-best"]["with_head_s"] == pytest.approx(n * 5e-6 + 100e-6)
    assert fams["pallas-best"]["speedup_vs_xla_bf16"] == pytest.approx((n * 10e-6 + 100e-6) / (n * 5e-6 + 100e-6))
    assert fams["pallas-single-config"]["name"] == "r16"
    record |= {"rows": rows, "memory_bandwidth": {"copy_gb_per_s": 4000.0}, "file": "results/planted.json"}
    record["environment"] = {"date": "2026-01-01", "machine": {"gpu": "planted"}}
    record["config"] = {"batch": 1}
    text = "\n".join(vs_bf16_section.pallas_gemv_lines([record]))
    in_graph = (n * 10e-6 + 100e-6) / (n * 8e-6 + 100e-6)
    assert f"beats the best in-graph int4 form ({fams['pallas-best']['speedup_vs_xla_bf16']:.2f}x against " in text
    assert f"against {in_graph:.2f}x)" in text


def test_read_bandwidth_counts_the_array_once_and_copy_bandwidth_twice(monkeypatch):
    counted = []

    def best_rate(fn, nbytes, repeats):
        counted.append(nbytes)
        return real(fn, nbytes, repeats)

    real = roofline.best_rate
    monkeypatch.setattr(roofline, "best_rate", best_rate)
    nbytes = 16 << 20
    rates = [roofline.read_bandwidth("cpu", nbytes, 3), roofline.copy_bandwidth("cpu", nbytes, 3)]
    assert counted == [nbytes, 2 * nbytes]
    assert all(math.isfinite(r) and 1e8 < r < 1e13 for r in rates)  # 0.1 GB/s to 10 TB/s: a CPU's range
