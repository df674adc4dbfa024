"""``python -m model_impl iree-multidevice``: the whole CPU probe runs here (real iree-compile,
real local-task runtime; about 5 s), its record is what the report's tensor-parallel section
prints, today's compiler still gives the committed verdict, and each of the verdict's clauses
flips with the trial outcome it states."""

from __future__ import annotations

import copy
import json

import pytest

from model_impl.__main__ import main
from model_impl.lab import iree_multidevice as md
from model_impl.report import results, tp_section


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    out = tmp_path_factory.mktemp("md") / "iree-multidevice.json"
    assert main(["iree-multidevice", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _committed() -> dict:
    return next(iter(results.load(results.RESULTS_DIR, "iree-multidevice.json")))


def test_todays_compiler_gives_the_committed_verdict_and_the_report_prints_it(probed):
    assert probed["verdict"] == _committed()["verdict"]
    probed["file"] = "results/iree-multidevice.json"
    lines = "\n".join(tp_section.render(tp_section.load(), probed))
    assert f"IREE: {probed['verdict']}" in lines
    assert "IREE 3.13 does not consume GSPMD/Shardy shardings" in lines


def test_the_trials_record_what_the_verdict_states(probed):
    cpu = probed["cpu_probe"]
    assert [t["id"] for t in probed["trials"]] == ["A", "B", "C", "D", "E", "F", "F-cuda", "E-cuda"]
    assert "Dialect `sdy' not found" in cpu["A_shardy_export"]["compile"]["error"]
    b = cpu["B_gspmd_export"]
    assert b["attrs"]["mhlo.sharding"] > 0  # the export holds the shardings ...
    assert b["to_input"]["sharding_attrs_left"]["mhlo.sharding"] == 0  # ... iree-compile drops them
    assert b["two_devices_stream"]["ops"]["devices"] == ["__device_0"]  # one device of the two asked for
    assert b["run_one_local_task_device"] == {"ok": True, "matches_unsharded_numpy": True}
    e = cpu["E_per_device_all_reduce"]
    assert e["to_flow"]["ops"]["collective"] == 1 and not e["run_one_local_task_device"]["ok"]
    f = cpu["F_manual_two_device_tp"]
    assert f["stream"]["dispatches_per_device"] == {"dev0": 1, "dev1": 1}
    assert f["run_two_local_task_devices"]["max_abs_err_vs_numpy"] <= md.MATCH_ATOL
    assert not f["run_one_device_only"]["ok"]  # the program needs both devices it was placed on


def test_each_clause_of_the_verdict_flips_with_its_outcome(probed):
    cpu = probed["cpu_probe"]
    kept = copy.deepcopy(cpu)
    kept["B_gspmd_export"]["two_devices_stream"]["ops"].update(devices=["__device_0", "__device_1"], transfer=2)
    assert md.verdict(kept).startswith("IREE 3.13 consumes GSPMD shardings")
    parses = copy.deepcopy(cpu)
    parses["A_shardy_export"]["compile"] = {"rc": 0}
    assert "Shardy) export compiles" in md.verdict(parses)
    assert "does not consume" in md.verdict(parses)  # the GSPMD export still drops its shardings
    broken = copy.deepcopy(cpu)
    broken["F_manual_two_device_tp"]["run_two_local_task_devices"] = {"ok": False, "error": "x"}
    assert "affinities) fails on CPU and fails at run time on 2 CUDA GPUs" in md.verdict(broken)
    assert "works on CPU but fails at run time on 2 CUDA GPUs" in md.verdict(cpu)


def test_a_keep_path_that_is_a_file_is_one_error_line(tmp_path, capsys):
    plain = tmp_path / "a-file"
    plain.write_text("")
    assert main(["iree-multidevice", "--keep", str(plain)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"error: --keep {plain}: not a directory"]
