"""The table of what compilers do, keyed by compiler, version range and device: an observation
is held to the entry for its version and device, recorded on a device the table does not know
(except where every device measured agrees), and a version outside every entry fails with one
message naming the compiler, the version, the device and what it did instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_impl import expectations as ex
from model_impl.expectations import XLA, Entry, Finding, Unexpected

KEY = ("xla-cuda", "fusion", "u4-affine-io", "default")
TABLE = [
    Entry(XLA, ">=0.11,<0.12", "GPU A", KEY, ("materialized", 48, 112), "a.json"),
    Entry(XLA, ">=0.11,<0.12", "GPU B", KEY, ("materialized", 16, 112), "b.json"),
    Entry(XLA, ">=0.10,<0.11", None, KEY, ("fused", 112, 112), "c.json"),
]


def check(observed, version="0.11.2", device="GPU A", table=TABLE):
    return ex.check(KEY, observed, XLA, version, device, table, everywhere=ex.verdict_of)


def test_an_observation_equal_to_its_devices_entry_passes():
    assert check(("materialized", 48, 112)) is None
    assert check(("materialized", 16, 112), device="GPU B") is None


def test_the_same_compiler_on_another_measured_device_is_held_to_that_devices_entry():
    with pytest.raises(Unexpected) as e:
        check(("materialized", 48, 112), device="GPU B")
    message = str(e.value)
    for part in ("jaxlib 0.11.2 on GPU B", "('materialized', 48, 112)", "expects ('materialized', 16, 112)", "b.json"):
        assert part in message
    assert "\n" not in message


def test_an_unknown_device_is_recorded_with_the_line_to_add_when_the_verdict_holds():
    found = check(("materialized", 32, 112), device="GPU C")
    assert isinstance(found, Finding)
    assert "GPU C" in found.line() and "model_impl/expectations.py" in found.line() and "=0.11.2" in found.line()


def test_an_unknown_device_fails_where_every_measured_device_agrees_on_the_verdict():
    with pytest.raises(Unexpected, match="every device measured gives materialized"):
        check(("fused", 112, 112), device="GPU C")


def test_an_unknown_device_is_only_recorded_where_measured_devices_disagree_on_the_verdict():
    split = [TABLE[0], Entry(XLA, ">=0.11,<0.12", "GPU B", KEY, ("fused", 112, 112), "b.json")]
    assert isinstance(check(("fused", 112, 112), device="GPU C", table=split), Finding)


def test_a_version_outside_every_entry_fails_naming_the_version_the_device_and_what_it_did():
    with pytest.raises(Unexpected) as e:
        check(("fused", 112, 112), version="0.12.0.1")
    message = str(e.value)
    for part in (
        "jaxlib 0.12.0.1 on GPU A",
        "gives ('fused', 112, 112)",
        "jaxlib>=0.11,<0.12",
        "add the new behaviour",
    ):
        assert part in message


def test_an_entry_for_any_device_holds_on_every_device():
    assert check(("fused", 112, 112), version="0.10.2", device="GPU Z") is None
    with pytest.raises(Unexpected, match="any device"):
        check(("materialized", 48, 112), version="0.10.2", device="GPU Z")


def test_a_question_the_table_does_not_hold_is_one_line():
    with pytest.raises(Unexpected, match="no expectation"):
        ex.check(("xla-cuda", "nothing"), 1, XLA, "0.11.2", "GPU A", TABLE)


def test_the_h200_differs_from_the_h100_only_where_it_was_measured_to():
    by = {}
    for e in ex.TABLE:
        if e.key[0] == "xla-cuda":
            by.setdefault(e.key, {})[e.device] = e.expected
    differ = {k for k, d in by.items() if d.get(ex.H100) != d.get(ex.H200)}
    assert differ == {
        ("xla-cuda", ex.FUSION, "u4-affine-io", "default"),
        ("xla-cuda", ex.FUSION_BF16, "u32-word", "default", "reduce"),
        ("xla-cuda", ex.FUSION_BF16, "u32-word", "stacked", "reduce"),
    }
    for key in differ:  # the counts moved, the verdict did not
        assert ex.verdict_of(by[key][ex.H100]) == ex.verdict_of(by[key][ex.H200])
    assert all(set(d) == {ex.H100, ex.H200} for d in by.values())


def test_every_entry_names_its_source_and_parses_and_cpu_entries_name_no_device():
    for e in ex.TABLE:
        assert e.source and e.compiler in (ex.XLA, ex.IREE)
        e.covers("0.11.2")
        host_keyed = e.key[1] == ex.HALF_ROUNDING and e.device in (ex.WITH_FP16, ex.WITHOUT_FP16)
        assert (e.device is None or host_keyed) == (e.key[0] in ("xla-cpu", "iree-cpu", "iree-cuda", "iree"))


def test_a_rebuild_is_named_against_the_configs_linears():
    import dataclasses

    from model_impl.llama.shapes import shrunk_llama32_config
    from model_impl.llama.weights import linear_weight_bytes, linear_weight_bytes_f32

    f32 = shrunk_llama32_config()
    bf16 = dataclasses.replace(f32, dtype="bfloat16")
    per_linear = 7 * f32.num_layers
    assert ex.rebuild("materialized", 0, per_linear, linear_weight_bytes_f32(f32), f32)[2:] == (
        ex.ONE_PER_LINEAR,
        ex.F32_WEIGHTS,
    )
    assert ex.rebuild("materialized", 0, per_linear, linear_weight_bytes(bf16), bf16)[3] == ex.DTYPE_WEIGHTS
    assert ex.rebuild("materialized", 0, per_linear, linear_weight_bytes_f32(bf16), bf16)[3] == ex.F32_WEIGHTS
    assert ex.rebuild("fused", 3, per_linear - 1, 5, bf16)[2:] == (f"{per_linear - 1} kernels", "5 bytes")


@pytest.mark.parametrize("gpu", [ex.H100, ex.H200])
def test_each_gpus_fusion_entries_are_its_committed_runs_records(gpu):
    """One home per fact: the table's XLA-CUDA counts for a GPU are the per-linear records of
    the pytest run on it that the entries name as their source."""
    entries = {e.key: e for e in ex.TABLE if e.key[0] == "xla-cuda" and e.device == gpu}
    (source,) = {e.source.split()[0] for e in entries.values()}
    run = json.loads((Path(__file__).resolve().parents[2] / source).read_text())
    assert run["environment"]["machine"]["gpu"] == gpu
    recorded = {}
    for name, r in run["lowering"].items():
        what, backend, *row = name.split("/")
        if what in (ex.FUSION, ex.FUSION_BF16) and backend == "xla-cuda":
            recorded[("xla-cuda", what, *row)] = (r["verdict"], r["linears_fused"], r["linears_total"])
    assert recorded == {k: e.expected for k, e in entries.items()}
