"""The XLA runner's records that the report reads."""

from __future__ import annotations

from model_impl.backends import generate
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import synthetic


def test_a_graph_generate_never_called_still_has_its_compile_time():
    """generate runs the decode loop, not the one-step decode graph; the report's lowering rows
    ask for both graphs' compile times (a KeyError here once broke `make report`)."""
    cfg = shrunk_llama32_config(layers=1)
    runner = generate.make_runner(cfg, synthetic(cfg, 0))
    generate.generate(runner, [1, 2, 3], 4, stop_at_eos=False)
    assert "decode" not in runner.compile_seconds
    runner.executable("decode", 0, 64)
    assert runner.compile_seconds["decode"] > 0
