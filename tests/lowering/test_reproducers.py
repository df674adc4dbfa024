"""Each compiler reproducer in reproducers/ still shows its bug with today's compiler: this
fails the day the compiler is fixed, and names the workaround that can then go."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2] / "reproducers"
CASES = sorted(p.parent.name for p in ROOT.glob("*/expect.json") if "kind" not in json.loads(p.read_text()))


def test_every_reproducer_folder_is_checked():
    """Compiler bugs here; the performance reproducers (``"kind": "performance"``) in
    test_perf_reproducers.py and, timed, tests/cuda/test_perf_reproducers.py."""
    from tests.lowering.test_perf_reproducers import PERFORMANCE

    folders = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(CASES + PERFORMANCE) and CASES
    assert {_expect(c)["today"] for c in CASES} <= {"fails", "miscompiles"}


def _expect(case: str) -> dict:
    return json.loads((ROOT / case / "expect.json").read_text())


def _diagnostic(text: str) -> str:
    """The line of a compiler failure that says what failed (its first ``error``), else its last."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    named = [line for line in lines if "error" in line.lower() and not line.startswith("Error invoking")]
    return (named or lines)[0 if named else -1][:200]


def _observe(case: str) -> str:
    """What today's iree-compile does with the reproducer: "fails" (with the recorded error),
    "crashes" (killed by a signal without it), "miscompiles" (the recorded wrong output), "fixed"
    (the expected output, or it compiles), or what else it did."""
    from iree.compiler.tools.binaries import CompilerToolError

    from model_impl.backends import iree_compile
    from model_impl.backends.iree_runtime import IreeDevice

    expect = _expect(case)
    source = (ROOT / case / "input.mlir").read_text()
    module = None
    for _ in range(expect.get("attempts", 1)):  # a crash that does not come every time: the first
        try:
            module = iree_compile.compile_mlir(source, expect["flags"])
        except CompilerToolError as e:
            if expect.get("error") and expect["error"] in str(e):
                return "fails"
            if re.search(r"Error code: -\d+", str(e)):  # killed by a signal
                return "crashes"
            return f"fails differently: {_diagnostic(str(e))}"
    if "inputs" not in expect:
        return "fixed"
    inputs = [
        np.broadcast_to(np.asarray(a["values"], a["dtype"]).reshape(-1), np.prod(a["shape"])) for a in expect["inputs"]
    ]
    inputs = [np.ascontiguousarray(v).reshape(a["shape"]) for v, a in zip(inputs, expect["inputs"])]
    device = IreeDevice(expect["driver"])
    got = np.asarray(device.load(module)(*[device.put(v) for v in inputs]).to_host())
    if np.array_equal(got, np.asarray(expect["expected"], got.dtype)):
        return "fixed"
    if np.array_equal(got, np.asarray(expect["actual"], got.dtype)):
        return "miscompiles"
    return f"computes {got.tolist()}"


@pytest.mark.parametrize("case", CASES)
def test_each_reproducer_does_what_the_table_expects_of_todays_compiler(case):
    """model_impl/expectations.py per iree-compile version: with 3.13 each shows its bug; a
    version that fixes one (or breaks it differently) fails naming the version and what it did,
    and the README of the folder says which workaround can then go."""
    from model_impl import expectations

    version = expectations.compiler_version(expectations.IREE)
    expectations.check(("iree", expectations.REPRODUCER, case), _observe(case), expectations.IREE, version)


def test_the_table_and_each_folder_agree_on_what_the_pinned_compiler_does():
    from model_impl import expectations

    for case in CASES:
        expect = _expect(case)
        pinned = expect["compiler"].split()[-1] + ".0"
        entries = [e for e in expectations.TABLE if e.key == ("iree", expectations.REPRODUCER, case)]
        assert [e.expected for e in entries if e.covers(pinned)] == [expect["today"]], case


def test_the_one_element_update_compiles_once_the_buffer_has_two_slots():
    """The suite's workaround, on the reproducer itself: the same loop over 2 slots compiles."""
    import jax
    import jax.numpy as jnp

    from model_impl.backends import iree_compile

    def f(n, t):
        body = lambda c: (c[0] + 1, jax.lax.dynamic_update_index_in_dim(c[1], c[0], c[0], 0))  # noqa: E731
        return jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), t))

    expect = json.loads((ROOT / "iree-while-one-element-update" / "expect.json").read_text())
    args = (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.int32))
    assert iree_compile.compile_mlir(jax.export.export(jax.jit(f))(*args).mlir_module(), expect["flags"])
