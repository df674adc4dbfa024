"""Summarize a finished `mutmut run` (see `make mutants`) as results/mutants.json.

Counts per outcome and per module, and the surviving mutants by name (`mutmut show NAME` prints
the diff), with the environment and the commit the run mutated.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_impl import env  # noqa: E402


def main() -> int:
    mutmut = [sys.executable, "-m", "mutmut"]
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True)
    outcomes, survivors = collections.Counter(), collections.defaultdict(list)
    per_module = collections.defaultdict(collections.Counter)
    for line in out.stdout.splitlines():
        if ":" not in line:
            continue
        name, status = (part.strip() for part in line.rsplit(":", 1))
        module = re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]  # mutmut names: module.x_function__mutmut_N
        outcomes[status] += 1
        per_module[module][status] += 1
        if status == "survived":
            survivors[module].append(name)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    summary = {
        "environment": env.environment("cpu", commit=commit),
        "tool": f"mutmut {env.version('mutmut')}",
        "config": "pyproject.toml [tool.mutmut]",
        "outcomes": dict(outcomes),
        "per_module": {m: dict(c) for m, c in sorted(per_module.items())},
        "survivors": {m: sorted(v) for m, v in sorted(survivors.items())},
        "notes": {
            "timeout": "pack/unpack mutants of model_impl/quant.py hang under mutmut's fork isolation "
            "(the forked worker sits idle next to JAX's threads); counted as timeouts, not kills",
            "no tests": "stablehlo.py is exercised by tests/lowering/test_stablehlo.py, which exports real "
            "graphs and is too slow for the mutation selection",
        },
    }
    (ROOT / "results" / "mutants.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["outcomes"]), "->", "results/mutants.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
