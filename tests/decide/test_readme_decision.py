"""The README's decision table is generated from the committed results and cannot go stale:
it must equal what ``python -m model_impl decision --readme`` writes now."""

from __future__ import annotations

import re
from pathlib import Path

from model_impl.report import verdict_section

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_one_the_committed_results_give():
    text = README.read_text()
    pattern = re.escape(verdict_section.README_START) + ".*?" + re.escape(verdict_section.README_END)
    (found,) = re.findall(pattern, text, flags=re.S)
    assert found == verdict_section.readme_block(verdict_section.load(), verdict_section.load_upstream()), (
        "README's decision table is stale: run `python -m model_impl decision --readme`"
    )


def test_the_decision_leads_the_readme():
    headings = [line for line in README.read_text().splitlines() if line.startswith("## ")]
    assert headings[0] == "## The decision"
    assert README.read_text().index(verdict_section.README_START) < 3000


def test_every_row_names_files_that_exist():
    for row in verdict_section.table_rows(verdict_section.load()):
        assert row["files"], row
        for f in row["files"]:
            assert (README.parent / f).exists(), f
