"""Version sets and what changed between them (:mod:`model_impl.lab.versions`): which sets are
neighbours, a junit file read into outcomes, and the changes listed per neighbouring pair, on
fixtures that give both answers (a test that flips, one whose failure line changes, one present
in one set only, one the same everywhere)."""

from __future__ import annotations

import pytest

from model_impl.lab import versions
from model_impl.lab.versions import VersionSet

A, B, C = (
    VersionSet("3.11", "0.10.2", "3.11.0"),
    VersionSet("3.11", "0.10.2", "3.12.0"),
    VersionSet("3.11", "0.10.2", "3.13.0"),
)
J1, J2 = VersionSet("3.12", "0.11.2", "3.13.0"), VersionSet("3.12", "0.12.0.1", "3.13.0")


def test_neighbours_differ_in_one_axis_with_nothing_measured_between():
    assert versions.neighbours(versions.SETS) == [(A, B), (B, C), (C, J1), (J1, J2)]
    assert versions.neighbours([A, C, J2]) == [(A, C), (C, J2)]  # what was measured decides
    assert versions.neighbours([A, J1]) == []  # both axes moved: no one package to blame
    assert versions.neighbours([VersionSet("3.12", "0.12.0.1", "3.11.0"), J2]) == [
        (VersionSet("3.12", "0.12.0.1", "3.11.0"), J2)
    ]


UNEXPECTED = "model_impl.expectations.Unexpected: iree-base-compiler 3.11.0 on any device: gives fixed"
JUNIT = (
    '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
    '<testcase classname="tests.lowering.test_iree" name="test_ok" time="1.0"/>'
    '<testcase classname="tests.lowering.test_iree" name="test_bad[x]" time="1.0">'
    f'<failure message="{UNEXPECTED}&#10;more">tb</failure></testcase>'
    '<testcase classname="tests.lowering.test_xla_cpu" name="test_skip" time="0">'
    '<skipped message="no kernel" type="pytest.skip">s</skipped></testcase>'
    '<testcase classname="tests.lowering.test_xla_cpu" name="test_err" time="0">'
    '<error message="fixture broke">e</error></testcase>'
    "</testsuite></testsuites>"
)


def test_a_junit_file_reads_as_outcomes_with_the_failures_first_line():
    got = versions.outcomes(JUNIT)
    assert got == {
        "tests/lowering/test_iree.py::test_ok": {"outcome": "passed", "message": None},
        "tests/lowering/test_iree.py::test_bad[x]": {
            "outcome": "failed",
            "message": UNEXPECTED,
        },
        "tests/lowering/test_xla_cpu.py::test_skip": {"outcome": "skipped", "message": "no kernel"},
        "tests/lowering/test_xla_cpu.py::test_err": {"outcome": "error", "message": "fixture broke"},
    }


def _set(vs, observations=None, **tests):
    tests = {k: {"outcome": o, "message": m} for k, (o, m) in tests.items()}
    return {"name": vs.name, "tests": tests, "observations": observations or {}}


def test_changes_lists_flips_new_failure_lines_and_tests_of_one_set_only():
    run = {
        "sets": [
            _set(A, same=("passed", None), flips=("failed", "x"), line=("failed", "fails"), only_a=("passed", None)),
            _set(B, same=("passed", None), flips=("passed", None), line=("failed", "gives crashes")),
            _set(C, same=("passed", None), flips=("passed", None), line=("failed", "gives crashes")),
        ]
    }
    pairs = versions.changes(run)
    assert [(p["from"], p["to"]) for p in pairs] == [(A.name, B.name), (B.name, C.name)]
    first, second = pairs
    assert [c["what"] for c in first["changed"]] == ["flips", "line", "only_a"]
    assert {c["kind"] for c in first["changed"]} == {"test"}
    assert first["changed"][2]["to"] is None and first["same"] == 1
    assert second["changed"] == [] and second["same"] == 3


def test_changes_lists_each_compiler_answer_that_differs_even_where_every_test_passes():
    """Both sets pass (the table knows both versions); what the compiler did still changed."""
    passed = {"t": ("passed", None)}
    run = {
        "sets": [
            _set(A, {"iree reproducer x": "crashes", "kept": ["fused", 1]}, **passed),
            _set(B, {"iree reproducer x": "fails", "kept": ["fused", 1], "new": "present"}, **passed),
        ]
    }
    (pair,) = versions.changes(run)
    assert pair["changed"] == [
        {"kind": "observation", "what": "iree reproducer x", "from": "crashes", "to": "fails"},
        {"kind": "observation", "what": "new", "from": None, "to": "present"},
    ]
    assert pair["same"] == 2


def test_observations_keep_one_answer_per_question_and_show_disagreement():
    lines = "\n".join(
        [
            '{"key": "q", "observed": ["a", 1], "compiler": "c", "version": "1", "device": null}',
            '{"key": "q", "observed": ["a", 1], "compiler": "c", "version": "1", "device": null}',
            '{"key": "r", "observed": "x", "compiler": "c", "version": "1", "device": null}',
            '{"key": "r", "observed": "y", "compiler": "c", "version": "1", "device": null}',
        ]
    )
    assert versions.observations(lines) == {"q": ["a", 1], "r": {"several": ["x", "y"]}}


def test_the_table_check_appends_what_it_observed_where_asked(tmp_path, monkeypatch):
    from model_impl import expectations as ex

    path = tmp_path / "seen.jsonl"
    monkeypatch.setenv(ex.OBSERVATIONS, str(path))
    key = ("xla-cpu", ex.KERNEL, ex.BATCHED_BF16_DOT)
    ex.check(key, "missing", ex.XLA, "0.10.2")
    with pytest.raises(ex.Unexpected):
        ex.check(key, "present", ex.XLA, "0.10.2")
    what = f"xla-cpu kernel {ex.BATCHED_BF16_DOT}"
    assert versions.observations(path.read_text()) == {what: {"several": ["missing", "present"]}}


def test_an_unknown_set_is_one_error_line_and_exit_2(capsys):
    from model_impl.__main__ import main

    assert main(["versions", "--sets", "py3.11-jax9-iree1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --sets: unknown py3.11-jax9-iree1")


@pytest.mark.parametrize("vs", versions.SETS, ids=lambda s: s.name)
def test_every_set_pins_jax_with_jaxlib_and_the_iree_compiler_with_its_runtime(vs):
    pins = vs.pins()
    assert pins["jax"] == pins["jaxlib"] and pins["iree-base-compiler"] == pins["iree-base-runtime"]


def test_the_report_lists_each_neighbouring_pairs_changes_with_both_outcomes():
    from model_impl.report import versions_section

    run = {
        "file": "results/versions-cpu.json",
        "suite": ["tests/lowering"],
        "environment": {"date": "2026-12-05T03:00:00+00:00"},
        "sets": [
            _set(A, same=("passed", None), t=("failed", "Unexpected: 3.11.0 gives crashes")),
            _set(B, same=("passed", None), t=("passed", None)),
        ],
    }
    lines = versions_section.render(run)
    assert f"{A.name} (1/2 passed), {B.name} (2/2 passed)" in "\n".join(lines)
    assert f"**{A.name} -> {B.name}**: 1 changed, 1 the same." in lines
    assert "| test: `t` | failed: Unexpected: 3.11.0 gives crashes | passed |" in lines
    assert versions_section.render(None) == []
