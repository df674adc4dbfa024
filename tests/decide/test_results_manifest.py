"""results/MANIFEST.json: every committed result says what it answers, where and when it was
measured, and whether it is current; superseded files live under results/archive/ and are
never read by the report."""

from __future__ import annotations

import json

from model_impl.report import results

DIR = results.RESULTS_DIR
LISTED = results.manifest(DIR)


def _files():
    top = {p.name for p in DIR.glob("*.json") if p.name != results.MANIFEST}
    archived = {f"archive/{p.name}" for p in (DIR / "archive").glob("*.json")}
    return top, archived


def test_every_results_file_is_in_the_manifest_and_every_entry_exists():
    top, archived = _files()
    assert top | archived == set(LISTED), (top | archived) ^ set(LISTED)


def test_every_file_has_an_environment_record_or_the_manifest_gives_one():
    missing = []
    for name in LISTED:
        data = json.loads((DIR / name).read_text())
        if not (isinstance(data, dict) and data.get("environment")) and not LISTED[name].get("environment"):
            missing.append(name)
    assert not missing, f"no environment record and none in the manifest: {missing}"


def test_top_level_files_are_current_and_archived_ones_name_what_replaced_them():
    top, archived = _files()
    for name in top:
        assert LISTED[name]["status"] == "current", name
    for name in archived:
        status = LISTED[name]["status"]
        assert status.startswith("superseded-by results/"), (name, status)
        assert (DIR.parent / status.split(" ", 1)[1]).exists(), (name, status)


def test_every_entry_says_what_it_answers_where_and_when():
    for name, entry in LISTED.items():
        assert entry["question"] and entry["machine"] and entry["date"], name


def test_the_loaders_skip_what_the_manifest_does_not_call_current(tmp_path):
    manifest = {"fusion-a.json": {"status": "current"}, "fusion-b.json": {"status": "superseded-by results/a.json"}}
    for name in manifest:
        (tmp_path / name).write_text(json.dumps({"environment": {"date": "2026-12-04"}}))
    (tmp_path / results.MANIFEST).write_text(json.dumps({"files": manifest}))
    assert [r["file"] for r in results.load(tmp_path, "fusion-*.json")] == ["results/fusion-a.json"]
