"""Summarize a finished `mutmut run` (see `make mutants`) into results/mutants.json
(``python -m model_impl.report.mutants [MUTATE]``).

Per module: counts per outcome, the surviving mutants by name (`mutmut show NAME` prints the
diff), and the run (commit, date) that mutated it. A run over some modules (`make mutants
MUTATE="model_impl.decide.*"`) replaces those modules' entries and keeps the others' with the
run they came from; the totals are summed over the entries.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

from .. import env

ROOT = Path(__file__).resolve().parents[2]

OUT = ROOT / "results" / "mutants.json"
NOTES = {
    "timeout": "pack/unpack mutants of model_impl/quant.py hang under mutmut's fork isolation "
    "(the forked worker sits idle next to JAX's threads); counted as timeouts, not kills",
    "no tests": "stablehlo.py is exercised by tests/lowering/test_stablehlo.py, which exports real "
    "graphs and is too slow for the mutation selection",
}


def module_of(name: str) -> str:
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]  # mutmut names: module.x_function__mutmut_N


def previous_modules(previous: dict) -> dict:
    """Per-module entries of an earlier summary (older files carry one run for all modules)."""
    if "modules" in previous:
        return previous["modules"]
    run = {"commit": previous["environment"].get("commit"), "date": previous["environment"]["date"]}
    return {
        m: {"outcomes": c, "survivors": previous.get("survivors", {}).get(m, []), "run": run}
        for m, c in previous.get("per_module", {}).items()
    }


def merge(previous: dict, lines: list[str], run: dict, pattern: str | None) -> dict:
    """``lines``: `mutmut results --all true` output ("name: status"); only names matching
    ``pattern`` (a glob, as given to `mutmut run`) belong to this run."""
    import fnmatch

    outcomes = collections.defaultdict(collections.Counter)
    survivors = collections.defaultdict(list)
    for line in lines:
        if ":" not in line:
            continue
        name, status = (part.strip() for part in line.rsplit(":", 1))
        if pattern and not fnmatch.fnmatch(name, pattern):
            continue
        outcomes[module_of(name)][status] += 1
        if status == "survived":
            survivors[module_of(name)].append(name)
    modules = dict(previous_modules(previous)) if previous else {}
    for m in outcomes:
        modules[m] = {"outcomes": dict(outcomes[m]), "survivors": sorted(survivors[m]), "run": run}
    total = collections.Counter()
    for entry in modules.values():
        total.update(entry["outcomes"])
    return {"outcomes": dict(total), "modules": dict(sorted(modules.items()))}


def main() -> int:
    pattern = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
    mutmut = [sys.executable, "-m", "mutmut"]
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    environment = env.environment("cpu", commit=commit)
    run = {"commit": commit, "date": environment["date"], "mutated": pattern or "[tool.mutmut] only_mutate"}
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    summary = {
        "environment": environment,
        "tool": f"mutmut {env.version('mutmut')}",
        "config": "pyproject.toml [tool.mutmut]",
        **merge(previous, out.stdout.splitlines(), run, pattern),
        "notes": NOTES,
    }
    OUT.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["outcomes"]), "->", OUT.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
