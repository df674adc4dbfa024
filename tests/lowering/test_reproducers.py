"""Each compiler reproducer in reproducers/ still shows its bug with today's compiler: this
fails the day the compiler is fixed, and names the workaround that can then go."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2] / "reproducers"
CASES = sorted(p.parent.name for p in ROOT.glob("*/expect.json"))


def test_every_reproducer_folder_is_checked():
    folders = sorted(p.name for p in ROOT.iterdir() if p.is_dir())
    assert folders == CASES and CASES
    assert {_expect(c)["today"] for c in CASES} <= {"fails", "miscompiles"}


def _expect(case: str) -> dict:
    return json.loads((ROOT / case / "expect.json").read_text())


@pytest.mark.parametrize("case", [c for c in CASES if _expect(c)["today"] == "fails"])
def test_reproducer_shows_its_bug_with_todays_compiler(case):
    from iree.compiler.tools.binaries import CompilerToolError

    from model_impl.backends import iree_compile

    expect = _expect(case)
    failures = []
    for _ in range(expect.get("attempts", 1)):  # a crash that does not come every time: any attempt
        try:
            iree_compile.compile_mlir((ROOT / case / "input.mlir").read_text(), expect["flags"])
        except CompilerToolError as e:
            failures.append(str(e))
            break
    assert failures, f"{case}: iree-compile {iree_compile.compiler_version()} compiled it; see its README"
    assert expect["error"] in failures[0], (
        f"{case}: iree-compile {iree_compile.compiler_version()} now fails differently; see its README"
    )


@pytest.mark.parametrize("case", [c for c in CASES if _expect(c)["today"] == "miscompiles"])
def test_reproducer_computes_the_recorded_wrong_answer_with_todays_compiler(case):
    """The module compiles and runs, and returns the recorded actual output, not the expected
    one: the day it returns the expected one, the bug is fixed."""
    from model_impl.backends import iree_compile
    from model_impl.backends.iree_runtime import IreeDevice

    expect = _expect(case)
    inputs = [
        np.broadcast_to(np.asarray(a["values"], a["dtype"]).reshape(-1), np.prod(a["shape"])) for a in expect["inputs"]
    ]
    inputs = [np.ascontiguousarray(v).reshape(a["shape"]) for v, a in zip(inputs, expect["inputs"])]
    device = IreeDevice(expect["driver"])
    main = device.load(iree_compile.compile_mlir((ROOT / case / "input.mlir").read_text(), expect["flags"]))
    got = np.asarray(main(*[device.put(v) for v in inputs]).to_host())
    assert not np.array_equal(got, np.asarray(expect["expected"], got.dtype)), f"{case}: fixed; see its README"
    np.testing.assert_array_equal(got, np.asarray(expect["actual"], got.dtype))


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
