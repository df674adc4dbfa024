"""Tensor parallelism with XLA's partitioner (GSPMD): the sharded graphs compute what one device
computes, their collectives are activations only, and what cannot be sharded says so.

On the CPU the suite runs with two host devices (conftest.py); the same tests run on two GPUs
with ``-m cuda`` (the device tool's nvidia-h100-x2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from model_impl import checks
from model_impl.analyzers import collectives
from model_impl.backends import generate
from model_impl.lab import tensor_parallel
from model_impl.lab.fusion import greedy_by_decode, parity_prompt
from model_impl.llama import model, sharding
from model_impl.llama.linears import dequantize
from model_impl.llama.representations import PALLAS, convert, convert_dense
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import quantize_weights, specs, synthetic

TP = 2
BACKENDS = ["xla-cpu", pytest.param("xla-cuda", marks=pytest.mark.cuda)]
# (label, weights of the shrunk model): dense in both GEMV forms, and int4 in the forms that
# shard (every one but u32-planar), one with a quantized head; our Pallas kernel (in shard_map,
# Pallas' interpreter on the CPU), one with its int4 head.
FORMS = {
    "dense-dot": lambda w, q: w,
    "dense-reduce": lambda w, q: convert_dense(w, "reduce"),
    "u32-affine": lambda w, q: q,
    "u4-affine": lambda w, q: convert(q, "u4-affine"),
    "u4-affine-io": lambda w, q: convert(q, "u4-affine-io"),
    "s4-grouped": lambda w, q: convert(q, "s4-grouped"),
    "u4-magic": lambda w, q: convert(q, "u4-magic"),
    "u32-word-split": lambda w, q: convert(q, "u32-word-split"),
    "u32-word-split+int4-head": lambda w, q: convert(quantize_weights(w, embedding=True), "u32-word-split", "int4"),
    PALLAS: lambda w, q: convert(q, PALLAS),
    f"{PALLAS}+int4-head": lambda w, q: convert(quantize_weights(w, embedding=True), PALLAS, "int4"),
}


def devices(backend: str):
    platform = "cpu" if backend == "xla-cpu" else "cuda"
    try:
        found = jax.devices(platform)
    except RuntimeError as e:
        pytest.skip(f"{backend}: no devices ({str(e).splitlines()[0]})")
    if len(found) < TP:
        pytest.skip(f"{backend}: needs {TP} devices, found {len(found)} (GPUs: the device tool's nvidia-h100-x2)")
    return found


@pytest.fixture(scope="module")
def shrunk():
    cfg = shrunk_llama32_config()
    w = synthetic(cfg, 0)
    return cfg, w, quantize_weights(w)


def _pair(cfg, weights, backend):
    prompt = parity_prompt(cfg)
    one = greedy_by_decode(generate.make_runner(cfg, weights, backend), prompt, checks.GREEDY_TOKENS)
    sharded = greedy_by_decode(generate.make_runner(cfg, weights, backend, tp=TP), prompt, checks.GREEDY_TOKENS)
    return one, sharded


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
def test_sharded_decode_matches_one_device_in_fp32(shrunk, backend, form):
    """48/48 greedy tokens, logits within fp32's reordering bound (the all-reduce sums the
    shards' partial products in another order)."""
    devices(backend)
    cfg, w, q = shrunk
    one, sharded = _pair(cfg, FORMS[form](w, q), backend)
    cmp = checks.compare(one, sharded)
    assert cmp.agreeing == checks.GREEDY_TOKENS, cmp
    assert cmp.max_abs_logit_diff <= checks.logit_atol("float32"), cmp


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharded_generate_loop_matches_one_device_and_keeps_the_cache_sharded(shrunk, backend):
    """The generate path (the on-device decode loop, chunks queued) on TP devices: the same
    tokens and logits rows, and the KV cache still sharded by KV head after every chunk."""
    devices(backend)
    cfg, _, q = shrunk
    prompt = parity_prompt(cfg)
    runs = {}
    for tp in (1, TP):
        runner = generate.make_runner(cfg, q, backend, tp=tp)
        runs[tp] = generate.generate(
            runner, prompt, checks.GREEDY_TOKENS, stop_at_eos=False, keep_logits=True, chunk=16
        )
    cmp = checks.compare(runs[1], runs[TP])
    assert cmp.agreeing == checks.GREEDY_TOKENS and cmp.max_abs_logit_diff <= checks.logit_atol("float32"), cmp
    assert runner.cache.k.sharding.is_equivalent_to(runner.layout.cache, runner.cache.k.ndim)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("form", ["dense-dot", "u4-magic"])
def test_sharded_half_precision_agrees_by_the_near_tie_rule(backend, dtype, form):
    """In half precision each shard rounds its partial product before the all-reduce: tokens
    may part, but only at a near-tie, and logits up to there stay within the dtype's bound."""
    devices(backend)
    cfg = dataclasses.replace(shrunk_llama32_config(), dtype=dtype)
    w = synthetic(cfg, 0)
    one, sharded = _pair(cfg, FORMS[form](w, quantize_weights(w)), backend)
    agreement = checks.greedy_agreement(sharded, one, checks.near_tie_gap(dtype))
    assert agreement.agrees, agreement
    assert agreement.comparison.max_abs_logit_diff <= checks.logit_atol(dtype), agreement


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("graph", ["decode", "prefill", "decode_loop"])
@pytest.mark.parametrize("form", ["dense-dot", "u32-affine", "u4-magic", "u32-word-split+int4-head", PALLAS])
def test_partitioned_graph_keeps_weights_local(shrunk, backend, graph, form):
    """Per step: two all-reduces per layer (after o and down) and the embedding rows' (one per
    array of the table that XLA does not combine: a packed table has words, scales and
    biases); the rest is the argmax's pairs; no collective moves weights; no custom_call but our
    kernel's (in shard_map: the same collectives as GSPMD's forms; interpreted on the CPU)."""
    devices(backend)
    cfg, w, q = shrunk
    runner = generate.make_runner(cfg, FORMS[form](w, q), backend, tp=TP)
    text = runner.executable(graph, 16, 128).as_text()
    found = collectives.summary(text)
    assert found["verdict"] == collectives.STAYS_LOCAL, found["weight_collectives"]
    assert found["custom_calls"] == 0 or (form == PALLAS and backend == "xla-cuda")
    reduces = found["collectives"]["all-reduce"]
    rows = sum(n for op, n in reduces["by_op"].items() if model.VOCAB_PARALLEL_SCOPE in op)  # embedding rows
    assert reduces["count"] - rows == 2 * cfg.num_layers and 1 <= rows <= 3, found
    assert set(found["collectives"]) <= {"all-reduce", "all-gather"}, found
    gathers = found["collectives"].get("all-gather", {"bytes": 0})
    assert gathers["bytes"] <= 16 * 8, found  # at most the prefill's (max, index) pairs


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.uint32])
def test_vocab_parallel_lookup_is_the_plain_gather(dtype):
    """Every row of every block, the blocks' first and last rows included, bit for bit."""
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((64, 5)) * 1e3).astype(dtype)
    tokens = jnp.asarray([0, 15, 16, 31, 32, 47, 48, 63, 7, 7], jnp.int32)
    want = np.asarray(jnp.take(table, tokens, axis=0))
    for shards in (1, 2, 4):
        got = np.asarray(model.take_rows(jnp.asarray(table), tokens, shards))
        assert got.dtype == want.dtype and np.array_equal(got, want), shards


# --- the analyzer's other answer: real partitioned graphs in which weights do move ----------


def _mesh():
    return sharding.mesh(TP, "cpu")


def _analyze(fn, *args) -> dict:
    return collectives.summary(jax.jit(fn).lower(*args).compile().as_text())


@pytest.fixture(scope="module")
def two_linears():
    """Two int4 linears sharded by output rows, and an activation, on the CPU mesh."""
    m = _mesh()
    rng = np.random.default_rng(0)
    q = quantize_weights(synthetic(shrunk_llama32_config(), 0))
    pair = (q.layers[0].w_gate, q.layers[0].w_up)
    specs_ = tuple(sharding.linear_specs(w, "out") for w in pair)
    put = lambda w, s: jax.device_put(w, jax.tree_util.tree_map(lambda p: NamedSharding(m, p), s))  # noqa: E731
    weights = tuple(put(w, s) for w, s in zip(pair, specs_))
    x = jax.device_put(rng.standard_normal((1, 256), dtype=np.float32), NamedSharding(m, P()))
    return m, weights, x


def _gemv(w, x, gather: bool, m):
    d = dequantize(w, jnp.float32)
    if gather:  # the whole dequantized weight on every device: the partitioner all-gathers it
        d = jax.lax.with_sharding_constraint(d, NamedSharding(m, P()))
    return x @ d.T


def test_analyzer_finds_a_gathered_dequantized_weight(two_linears):
    m, (gate, _), x = two_linears
    found = _analyze(lambda weights, x: _gemv(weights, x, True, m), gate, x)
    assert found["verdict"] == collectives.WEIGHTS_MOVE
    (moved,) = found["weight_collectives"]
    assert moved["kind"] == "all-gather"
    assert moved["weights"] == ["weights.biases", "weights.packed", "weights.scales"]


def _gathered_product(w, x, m):
    """The GEMV's output rows computed where the weight lies, then gathered: an activation moves.
    (A replicated constraint on the product alone propagates back through the dot, and XLA
    gathers the weight instead: the analyzer sees that too.)"""
    y = jax.lax.with_sharding_constraint(_gemv(w, x, False, m), NamedSharding(m, P(None, sharding.AXIS)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(m, P()))


def test_analyzer_names_only_the_linear_whose_weight_moves(two_linears):
    """Mixed: one linear's weight gathered, the other's product gathered (an activation)."""
    m, pair, x = two_linears

    def fn(weights, x):
        gate, up = weights
        return _gemv(gate, x, True, m) + _gathered_product(up, x, m)

    found = _analyze(fn, pair, x)
    assert found["verdict"] == collectives.WEIGHTS_MOVE
    moved = {n for c in found["weight_collectives"] for n in c["weights"]}
    assert moved == {"weights[0].packed", "weights[0].scales", "weights[0].biases"}
    assert found["collectives"]["all-gather"]["count"] > len(found["weight_collectives"])


def test_analyzer_keeps_a_gathered_activation_local(two_linears):
    m, (gate, _), x = two_linears
    found = _analyze(lambda weights, x: _gathered_product(weights, x, m), gate, x)
    assert found["collectives"]["all-gather"]["count"] >= 1
    assert found["verdict"] == collectives.STAYS_LOCAL


def test_analyzer_finds_weights_gathered_inside_a_loop_body(two_linears):
    """The decode loop's shape: the weights enter a while loop through its carried tuple."""
    m, (gate, _), x = two_linears

    def fn(weights, x):
        def body(_, carry):
            w, x = jax.lax.optimization_barrier(carry)
            return w, _gemv(w, x, True, m)[:, :256] + x

        return jax.lax.fori_loop(0, 3, body, (weights, x))[1]

    found = _analyze(fn, gate, x)
    assert found["verdict"] == collectives.WEIGHTS_MOVE
    assert {"weights.packed"} <= {n for c in found["weight_collectives"] for n in c["weights"]}


def test_analyzer_finds_a_gathered_embedding_table():
    """The naive layout the first prototype hit: the whole vocab-sharded table on every device."""
    m = _mesh()
    table = jax.device_put(np.ones((1024, 64), np.float32), NamedSharding(m, P(sharding.AXIS, None)))
    tokens = jax.device_put(np.array([3, 900], np.int32), NamedSharding(m, P()))
    gathered = lambda weights, t: jnp.take(jax.lax.with_sharding_constraint(weights, NamedSharding(m, P())), t, axis=0)  # noqa: E731
    assert _analyze(gathered, table, tokens)["verdict"] == collectives.WEIGHTS_MOVE
    local = lambda weights, t: jnp.take(weights, t, axis=0)  # noqa: E731
    assert _analyze(local, table, tokens)["verdict"] == collectives.STAYS_LOCAL


# --- what cannot be sharded -------------------------------------------------------------------


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "change,tp,expected",
    [
        (dict(num_kv_heads=3, num_heads=9), 2, "num_attention_heads 9 is not divisible by 2"),
        (dict(num_kv_heads=2), 4, "num_key_value_heads 2 is not divisible by 4"),
        (dict(num_kv_heads=8, intermediate_size=384), 4, "layers.0.w_down's shard of 96 input columns"),
        ({}, 0, "--tp must be at least 1"),
    ],
)
def test_unshardable_configs_fail_in_one_line(change, tp, expected):
    cfg = dataclasses.replace(shrunk_llama32_config(), **change)
    with pytest.raises(sharding.ShardingError) as e:
        sharding.check(cfg, specs(cfg, "int4"), tp)
    assert expected in _one_line(e)


@pytest.mark.parametrize("form,expected", [("u32-planar", "u32-planar cannot be sharded")])
def test_unshardable_forms_fail_in_one_line(form, expected):
    cfg = dataclasses.replace(shrunk_llama32_config(), hidden_size=512)
    with pytest.raises(sharding.ShardingError) as e:
        sharding.check(cfg, convert(specs(cfg, "int4"), form), TP)
    assert _one_line(e).startswith("layers.0.wq: ") and expected in str(e.value)


def test_too_few_devices_and_iree_fail_in_one_line(shrunk):
    cfg, _, q = shrunk
    wide = dataclasses.replace(cfg, num_kv_heads=8)  # shards over 4
    with pytest.raises(sharding.ShardingError) as e:
        generate.make_runner(wide, quantize_weights(synthetic(wide, 0)), "xla-cpu", tp=len(jax.devices("cpu")) * 2)
    assert "xla_force_host_platform_device_count" in _one_line(e)
    with pytest.raises(sharding.ShardingError) as e:
        generate.make_runner(cfg, q, "iree-cpu", tp=TP)
    assert "XLA backends only" in _one_line(e)


def test_the_study_runs_and_records_its_cases(tmp_path):
    """The TP study (`python -m model_impl tp`) end to end on the CPU's two devices, shrunk."""
    out = tmp_path / "tp.json"
    result = tensor_parallel.run(
        "xla-cpu",
        str(out),
        ["shrunk-llama-3.2-1b"],
        tensor_parallel.MODES[1:2],
        (1, TP),
        steps=2,
        parity_shapes=("shrunk-llama-3.2-1b",),
        log=lambda _: None,
    )
    one, two = result["cases"]
    assert "error" not in one and "error" not in two, (one, two)
    assert one["collectives"]["collectives"] == {} and two["collectives"]["verdict"] == collectives.STAYS_LOCAL
    assert two["tokens_agree_or_near_tie"] and one["hoisted_dequants"] == two["hoisted_dequants"] == 0
    assert [r["tp"] for r in tensor_parallel.speedups(result)] == [TP]
