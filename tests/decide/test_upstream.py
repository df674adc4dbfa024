"""The verdict's citations of the performance reproducers (:func:`decide.upstream`): each
figure as its record holds it, the newest file per machine and reproducer, none from a run that
timed nothing, and the report line naming the folder and the file."""

from __future__ import annotations

from model_impl import decide
from model_impl.report import verdict_section


def case(seconds, weight_bytes):
    return {"seconds": seconds, "weight_bytes": weight_bytes, "bytes_per_s": weight_bytes / seconds}


def rate(ratio=0.45, int4_s=12e-6):
    bf16, int4 = case(13.0e-6, 33554432), case(int4_s, 9437184)
    return {"cases": {"bf16-dot": bf16, "bf16-reduce": case(14e-6, 33554432), "int4-reduce": int4},
            "best_bf16": "bf16-dot", "ratio": ratio, "int4_speedup": 13.0e-6 / int4_s}  # fmt: skip


def s4(*speedups):
    return {"rows": {str(r): {"speedup": s} for r, s in zip((1, 2, 16), speedups)}}


def file(gpu, date, name, **reproducers):
    env = {"machine": {"gpu": gpu}, "date": date}
    return {"environment": env, "file": f"results/{name}", "reproducers": reproducers}


def test_each_reproducer_is_cited_with_the_figures_of_its_record():
    f = file("NVIDIA H200", "2026-12-05", "reproducers-h200.json",
             **{"xla-cuda-int4-gemv-rate": rate(), "xla-cuda-s4-dot": s4(1.1, 1.3, 2.5),
                "iree-cuda-gemv": {"ratio": 6.5}})  # fmt: skip
    got = {u["case"]: u for u in decide.upstream([f])}
    assert list(got) == list(decide.PERFORMANCE_REPRODUCERS)
    assert "at 0.45x the rate" in got["xla-cuda-int4-gemv-rate"]["text"]
    assert f"{13.0 / 12:.2f}x as fast on 3.6x fewer bytes" in got["xla-cuda-int4-gemv-rate"]["text"]
    assert (
        "1.10x / 1.30x / 2.50x" in got["xla-cuda-s4-dot"]["text"] and "1, 2, 16 rows" in got["xla-cuda-s4-dot"]["text"]
    )
    assert "takes 6.5x XLA-CUDA's time" in got["iree-cuda-gemv"]["text"]
    assert {u["file"] for u in got.values()} == {"results/reproducers-h200.json"}


def test_the_fewer_bytes_figure_follows_the_faster_bf16_form():
    r = rate()
    r["best_bf16"] = "bf16-reduce"
    r["cases"]["bf16-reduce"]["weight_bytes"] = 4 * 9437184
    (u,) = decide.upstream([file("G", "2026-12-05", "a.json", **{"xla-cuda-int4-gemv-rate": r})])
    assert "on 4.0x fewer bytes" in u["text"]


def test_the_newest_file_per_machine_and_reproducer_is_cited_and_machines_stay_apart():
    old = file("NVIDIA H200", "2026-12-01", "old.json", **{"iree-cuda-gemv": {"ratio": 9.0}})
    new = file("NVIDIA H200", "2026-12-05", "new.json", **{"iree-cuda-gemv": {"ratio": 5.0}})
    other = file("NVIDIA H100 80GB HBM3", "2026-11-20", "h100.json", **{"iree-cuda-gemv": {"ratio": 7.0}})
    for files in ([old, new, other], [other, new, old]):
        got = {(u["machine"], u["file"]) for u in decide.upstream(files)}
        assert got == {("NVIDIA H200", "results/new.json"), ("NVIDIA H100 80GB HBM3", "results/h100.json")}


def test_a_run_that_timed_nothing_is_not_cited():
    cpu = {"xla-cuda-int4-gemv-rate": {"cases": {}, "rows": 1}, "xla-cuda-s4-dot": {"rows": {"1": {"cases": {}}}}}
    assert decide.upstream([file(None, "2026-12-05", "cpu.json", **cpu)]) == []
    half = {"xla-cuda-s4-dot": {"rows": {"1": {"speedup": 1.2}, "2": {"cases": {}}}}}
    assert decide.upstream([file("G", "2026-12-05", "g.json", **half)]) == []
    unknown = {"some-other-study": {"ratio": 2.0}}
    assert decide.upstream([file("G", "2026-12-05", "g.json", **unknown)]) == []


def test_the_decision_lists_the_citations_under_what_stops_it():
    f = file("NVIDIA H200", "2026-12-05", "reproducers-h200.json", **{"iree-cuda-gemv": {"ratio": 6.0}})
    lines = verdict_section.upstream_lines(decide.upstream([f]))
    assert lines[1].startswith("What stops it")
    assert lines[-1] == (
        "- **NVIDIA H200**: IREE-CUDA's bf16 GEMV at O3 takes 6.0x XLA-CUDA's time on the same linear "
        "(the 1B head, one row) (`reproducers/iree-cuda-gemv`, `results/reproducers-h200.json`)."
    )
    assert verdict_section.upstream_lines([]) == []
