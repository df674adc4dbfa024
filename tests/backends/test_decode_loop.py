"""The device decode loop (up to K greedy steps per dispatch; argmax, position, cache and step
budget on the device) chooses exactly what the per-step path chooses, on every CPU backend:
at chunk boundaries, with EOS inside a chunk, and on the real model (tests/cuda: on the GPU)."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pytest

from model_impl import checks
from model_impl.backends import generate
from model_impl.checks import GREEDY_TOKENS
from model_impl.llama.graphs import DECODE_CHUNK
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import quantize_weights, synthetic

BACKENDS = ("xla-cpu", "iree-cpu")
PROMPT = [1, 2, 3]
NEW_TOKENS = 20  # the prefill's token + 19 decode steps
# 1: a dispatch per step; 4: four full chunks and a short one; 19: exactly one full chunk, no
# chunk queued after it; 32: one chunk longer than the request.
CHUNKS = (1, 4, 19, 32)


def small_config(**changes):
    # An untied random head: its greedy run wanders over the vocabulary (a tied random model
    # repeats one token), so every EOS position below is a token's first appearance.
    return dataclasses.replace(shrunk_llama32_config(), tie_word_embeddings=False, **changes)


@pytest.fixture(scope="module")
def small_int4():
    cfg = small_config()
    return cfg, quantize_weights(synthetic(cfg, seed=0))


@pytest.fixture(scope="module")
def runners(small_int4):
    return {b: generate.make_runner(*small_int4, b) for b in BACKENDS}


@pytest.fixture(scope="module")
def per_step(runners):
    """The reference: one dispatch and one token read back per step, logits kept."""
    return {
        b: generate.generate(r, PROMPT, NEW_TOKENS, stop_at_eos=False, keep_logits=True, chunk=None)
        for b, r in runners.items()
    }


def assert_same_run(loop, reference):
    assert loop.tokens == reference.tokens
    if reference.logits is not None:
        assert loop.logits.shape == reference.logits.shape
        # The loop runs the step's own graph in its body: same kernels, same numbers.
        np.testing.assert_array_equal(loop.logits, reference.logits)


def test_small_model_run_wanders_so_eos_positions_are_first_appearances(per_step):
    tokens = per_step["xla-cpu"].tokens
    assert len(set(tokens[:14])) == 14, tokens


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_equals_per_step_path_at_every_chunk_boundary(runners, per_step, backend, chunk):
    run = generate.generate(runners[backend], PROMPT, NEW_TOKENS, stop_at_eos=False, keep_logits=True, chunk=chunk)
    assert_same_run(run, per_step[backend])


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_without_logits_rows_chooses_the_same_tokens(runners, per_step, backend):
    run = generate.generate(runners[backend], PROMPT, NEW_TOKENS, stop_at_eos=False, chunk=4)
    assert run.logits is None
    assert run.tokens == per_step[backend].tokens


def test_stream_yields_the_prefill_token_then_one_part_per_chunk(runners, per_step):
    parts = list(generate.stream(runners["xla-cpu"], PROMPT, NEW_TOKENS, stop_at_eos=False, chunk=4))
    assert [len(ids) for ids, _ in parts] == [1, 4, 4, 4, 4, 3]
    assert [t for ids, _ in parts for t in ids] == per_step["xla-cpu"].tokens


# EOS at: the prefill's token; inside a chunk of 4 (step 3 of chunk 3); a chunk's last step
# (then the chunk queued after it must run no step); a chunk's first step.
EOS_AT = {"prefill": 0, "inside_a_chunk": 11, "last_of_a_chunk": 12, "first_of_a_chunk": 13}


@pytest.mark.parametrize("where", EOS_AT)
@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_stops_at_eos_where_the_per_step_path_stops(small_int4, per_step, backend, where):
    cfg, weights = small_int4
    reference = per_step[backend]
    at = EOS_AT[where]
    eos_cfg = dataclasses.replace(cfg, eos_token_ids=(reference.tokens[at],))
    runner = generate.make_runner(eos_cfg, weights, backend)
    stepped = generate.generate(runner, PROMPT, NEW_TOKENS, keep_logits=True, chunk=None)
    looped = generate.generate(runner, PROMPT, NEW_TOKENS, keep_logits=True, chunk=4)
    assert stepped.tokens == reference.tokens[: at + 1]
    assert_same_run(looped, stepped)
    np.testing.assert_array_equal(looped.logits, reference.logits[: at + 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_stops_at_whichever_of_several_eos_ids_comes_first(small_int4, per_step, backend):
    # Llama-3 ends on any of three ids (128001, 128008, 128009): here three ids of the small
    # vocabulary, listed with the one reached (inside a chunk of 4) in the middle, one reached
    # later, and one the run never emits.
    cfg, weights = small_int4
    reference = per_step[backend]
    at, later = EOS_AT["inside_a_chunk"], EOS_AT["first_of_a_chunk"] + 2
    assert reference.tokens[later] not in reference.tokens[: at + 1]  # a later id, not an earlier one
    never = next(t for t in range(cfg.vocab_size - 1, 0, -1) if t not in reference.tokens)
    eos_cfg = dataclasses.replace(cfg, eos_token_ids=(never, reference.tokens[at], reference.tokens[later]))
    runner = generate.make_runner(eos_cfg, weights, backend)
    looped = generate.generate(runner, PROMPT, NEW_TOKENS, keep_logits=True, chunk=4)
    stepped = generate.generate(runner, PROMPT, NEW_TOKENS, keep_logits=True, chunk=None)
    assert stepped.tokens == reference.tokens[: at + 1]
    assert_same_run(looped, stepped)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_runs_past_eos_when_told_not_to_stop(small_int4, per_step, backend):
    cfg, weights = small_int4
    reference = per_step[backend]
    eos_cfg = dataclasses.replace(cfg, eos_token_ids=(reference.tokens[EOS_AT["inside_a_chunk"]],))
    run = generate.generate(generate.make_runner(eos_cfg, weights, backend), PROMPT, NEW_TOKENS, stop_at_eos=False)
    assert run.tokens == reference.tokens


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_chunk_queued_after_the_end_runs_no_step(runners, backend):
    runner = runners[backend]
    padded = np.zeros(generate.prompt_bucket(len(PROMPT)), np.int32)
    padded[: len(PROMPT)] = PROMPT
    max_seq = generate.cache_length(len(PROMPT), NEW_TOKENS)
    token, _ = runner.prefill(padded, len(PROMPT), max_seq)
    before = runner.cache_to_host()
    outputs, state = runner.decode_chunk(runner.loop_state(token, len(PROMPT), 0, True), 4)
    assert runner.chunk_to_host(outputs) == ([], None)
    for a, b in zip(before, runner.cache_to_host()):
        np.testing.assert_array_equal(a, b)


def test_chunk_below_one_is_one_clear_error(runners):
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        generate.stream(runners["xla-cpu"], PROMPT, NEW_TOKENS, chunk=0)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["int4", "fp32"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_model_loop_equals_per_step_path(greedy_runs, backend, quant):
    """48 tokens of the real model: the prefill, a full chunk of 32 and a short one of 15."""
    assert GREEDY_TOKENS - 1 > DECODE_CHUNK
    loop = greedy_runs.run(backend, quant)
    stepped = greedy_runs.run(backend, quant, chunk=None)
    cmp = checks.compare(loop, stepped)
    assert cmp.agreement == f"{GREEDY_TOKENS}/{GREEDY_TOKENS}", cmp
    assert_same_run(loop, stepped)


def test_generate_timing_counts_the_decode_steps_after_the_prefill_token(runners, per_step):
    from model_impl.lab import timing

    runner = runners["xla-cpu"]
    max_seq = generate.cache_length(len(PROMPT), NEW_TOKENS)
    measured = timing.time_generate(runner, len(PROMPT), NEW_TOKENS, max_seq, chunk=4, rounds=2)
    assert len(measured.tokens) == NEW_TOKENS and len(measured.rounds) == 2
    bound = min(measured.rounds) / 2
    summary = measured.summary(device_bound_s=bound)
    assert summary["chunk"] == 4 and summary["step_s"] == statistics.median(measured.rounds)
    assert summary["harness_overhead"] == pytest.approx(summary["step_s"] / bound - 1)


def test_max_seq_below_the_request_is_one_clear_error(runners):
    with pytest.raises(ValueError, match="max_seq 8 is below the 23 cache slots"):
        generate.stream(runners["xla-cpu"], PROMPT, NEW_TOKENS, max_seq=8)
