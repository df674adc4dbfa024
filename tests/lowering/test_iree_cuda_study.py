"""``python -m model_impl iree-study``: the build compiles for CUDA here without a GPU (real
iree-compile, sm_80) at the 2-layer shapes, and writes the manifest the GPU run and the report
read: per variant its dispatches, transpose dispatches and dequant verdict (held to the table in
model_impl/expectations.py), byte-identical modules carried once, a flag set the compiler
cannot build recorded as a finding; the run's weights match every module's signature; its
record renders in the report with the target verdict either way."""

from __future__ import annotations

import copy
import json

import pytest

from model_impl import expectations
from model_impl.__main__ import main
from model_impl.lab import iree_cuda_study as study
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.report import vs_bf16_section

# One variant of each kind the study holds: the default dot (transposes), O3 (none), a flag set
# whose module is the default's byte for byte, one the compiler rejects, the empty step, the
# [in, out] layout, a fused and a materialized int4 form.
CHECKED = ("dense-dot@default", "dense-dot@O3", "dense-io@default", "s4-grouped@default", "u4-magic@O3")
ONLY = (*CHECKED, "dense-dot@no-vd", "dense-dot@split-reduction", "dense-dot@call-overhead")
IREE = (expectations.IREE, expectations.compiler_version(expectations.IREE))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "bundle"
    argv = ["iree-study", "build", "--shapes", "tiny", "--no-wheel", "--out", str(out), "--only", ",".join(ONLY)]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    return out, manifest, {v["id"]: v for v in manifest["variants"]}


def test_the_manifest_lists_the_variants_in_the_studys_order_with_their_modules(bundle):
    out, manifest, by_id = bundle
    order = [study.variant_id(*v) for v in study.VARIANTS]
    assert [v["id"] for v in manifest["variants"]] == sorted(ONLY, key=order.index)
    assert (manifest["shapes"], manifest["cuda_target"], manifest["dtype"]) == ("tiny", "sm_80", "bfloat16")
    assert "wheel" not in manifest and not (out / "whl").exists()
    for v in manifest["variants"]:
        if "vmfb" in v:
            assert (out / v["vmfb"]).stat().st_size == v["vmfb_bytes"] > 0, v["id"]
    layers = shrunk_llama32_config().num_layers
    assert by_id["dense-dot@call-overhead"]["dispatches"] == 1
    assert all(by_id[i]["dispatches"] > 7 * layers for i in CHECKED)  # at least one per linear


@pytest.mark.parametrize("vid", CHECKED)
def test_each_variants_dequant_and_transposes_are_what_the_table_expects_of_this_compiler(bundle, vid):
    v = bundle[2][vid]
    observed = (v["dequant_verdict"], "transposes" if v["transposes"] else "no transposes")
    assert (v["transposed_bytes_per_step"] > 0) == (v["transposes"] > 0)
    expectations.check(("iree-cuda", expectations.IREE_STUDY, v["form"], v["flag_set"]), observed, *IREE)


def test_the_int4_verdicts_count_every_linear(bundle):
    linears = 7 * shrunk_llama32_config().num_layers
    fused, materialized = bundle[2]["s4-grouped@default"], bundle[2]["u4-magic@O3"]
    assert (fused["fused_dispatches"], fused["dequant_only_dispatches"]) == (linears, 0)
    assert (materialized["fused_dispatches"], materialized["dequant_only_dispatches"]) == (0, linears)


def test_a_byte_identical_module_is_carried_once_and_a_rejected_flag_set_is_a_finding(bundle):
    out, _, by_id = bundle
    same, default = by_id["dense-dot@no-vd"], by_id["dense-dot@default"]
    assert same["same_module_as"] == "dense-dot@default" and "vmfb" not in same
    assert same["vmfb_sha256"] == default["vmfb_sha256"]
    assert by_id["dense-dot@O3"]["vmfb_sha256"] != default["vmfb_sha256"]
    assert "reduction" in by_id["dense-dot@split-reduction"]["error"]
    assert len(list(out.glob("*.vmfb"))) == len(ONLY) - 2


def test_the_runs_host_weights_match_every_module_and_a_stale_bundle_is_named(bundle, tmp_path, capsys):
    out, manifest, _ = bundle
    record = tmp_path / "run.json"
    argv = ["iree-study", "run", "--bundle", str(out), "--out", str(record), "--host-only"]
    assert main(argv) == 0
    run = json.loads(record.read_text())
    built = {v["id"] for v in manifest["variants"] if not (v.get("error") or v.get("same_module_as"))}
    assert {s["id"] for s in run["skipped"] if s["why"] == "host only"} == built
    assert run["failed_to_run"] == [] and [f["id"] for f in run["failed_to_compile"]] == ["dense-dot@split-reduction"]
    stale = copy.deepcopy(manifest)
    next(v for v in stale["variants"] if v["form"] == "dense-io")["weights_signature"] = "0" * 16
    (out / "manifest.json").write_text(json.dumps(stale))
    try:
        assert main(argv) == 0
    finally:
        (out / "manifest.json").write_text(json.dumps(manifest))
    failed = json.loads(record.read_text())["failed_to_run"]
    assert [f["id"] for f in failed] == ["dense-io@default"] and "is not the compiled module's" in failed[0]["error"]


def _timed(manifest: dict, steps: dict, graphs: dict) -> dict:
    """A run's state as :class:`study.Run` leaves it: the manifest's rows with these step times."""
    rows = []
    for v in manifest["variants"]:
        r = {k: v.get(k) for k in study.KEEP} | ({"step_s": steps[v["id"]]} if v["id"] in steps else {})
        r.update({k: v[k] for k in ("same_module_as",) if k in v})
        r.update({"compile_error": v["error"]} if "error" in v else {})
        rows.append(r)
    variants = [{"id": i, "step_s": s} for i, s in graphs.items()]
    return {"xla": {"bfloat16:dot": {"step_s": 1e-3}}, "iree": rows, "cuda_graphs": {"variants": variants}}


def test_the_run_record_renders_in_the_report_and_the_target_verdict_flips(bundle):
    manifest = bundle[1]
    steps = {"dense-dot@default": 8e-3, "dense-dot@O3": 2.5e-3, "dense-dot@call-overhead": 1e-4}
    steps |= {"dense-io@default": 4e-3, "s4-grouped@default": 6e-3, "u4-magic@O3": 5e-3}
    record = study.speed_record(_timed(manifest, steps, {"dense-dot@O3": 3e-3}))
    ids = [v["id"] for v in record["variants"]]
    assert ids[:2] == ["dense-dot@call-overhead", "dense-dot@O3"] and ids[-2:] == [
        "dense-dot@default",
        "dense-dot@no-vd",
    ]
    same = record["variants"][-1]
    assert same["step_s"] == 8e-3 and same["note"] == study.SAME_MODULE
    assert record["best"] == {"id": "dense-dot@O3", "step_s": 2.5e-3, "ratio_vs_xla_bf16": 2.5}  # not the empty step
    assert record["best_int4"]["id"] == "u4-magic@O3"
    assert record["failed_to_compile"][0]["id"] == "dense-dot@split-reduction"
    lines = "\n".join(vs_bf16_section.iree_cuda_lines([record | {"file": "results/x.json", "environment": _ENV}]))
    assert "**not met**: best dense-dot@O3 2.50 ms = 2.5x; best int4 u4-magic@O3" in lines
    assert "dense-dot@no-vd" in lines and "dense-dot@split-reduction fails to compile" in lines
    graphs_faster = study.speed_record(_timed(manifest, steps, {"dense-dot@O3": 2e-3}))
    assert graphs_faster["best"]["id"] == "dense-dot@O3 [cuda graphs]"
    lines = "\n".join(vs_bf16_section.iree_cuda_lines([graphs_faster | {"file": "x", "environment": _ENV}]))
    assert "): met: best dense-dot@O3 [cuda graphs] 2.00 ms = 2.0x" in lines


_ENV = {"date": "2026-12-05", "machine": {"gpu": "NVIDIA H200"}}


@pytest.mark.parametrize(
    "argv, says",
    [
        (["build", "--only", "dense-dot@O3,bogus"], "--only: unknown bogus; known: variant ids"),
        (["build", "--shapes", "huge"], "--shapes: unknown 'huge'; known: llama-3.2-1b"),
        (["run", "--out", "r.json", "--budget-s", "0"], "--budget-s must be positive, got 0"),
        (["run", "--bundle", "nowhere", "--out", "r.json"], "--bundle nowhere: no bundle there"),
    ],
)
def test_bad_options_are_one_error_line_and_exit_2_before_anything_is_built(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "bundle")] if argv[0] == "build" else []
    assert main(["iree-study", *argv, *out]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: ") and says in line, line
    assert not list(tmp_path.iterdir())  # nothing written
