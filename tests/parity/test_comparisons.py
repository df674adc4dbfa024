"""The comparison helpers count what the report prints: agreement is the prefix before the
first divergence (never the count of equal positions), and logits rows are compared only up to
that divergence."""

from __future__ import annotations

import numpy as np

from model_impl import checks
from model_impl.backends.generate import Generation
from model_impl.checks import mlx_peer

STEPS = checks.GREEDY_TOKENS


def _diverging_at(k: int) -> tuple[Generation, Generation]:
    """Two runs of STEPS tokens that differ at position k only (they re-agree after it)."""
    a = list(range(100, 100 + STEPS))
    b = list(a)
    b[k] = 7
    return Generation([1, 2], a), Generation([1, 2], b)


def test_agreement_is_the_prefix_before_a_divergence_that_re_agrees_later():
    a, b = _diverging_at(5)
    cmp = checks.compare(a, b)
    assert cmp.first_divergence == 5
    assert cmp.agreeing == 5 and cmp.agreement == f"5/{STEPS}"  # not 47/48 equal positions


def test_full_agreement_has_no_divergence():
    a, _ = _diverging_at(5)
    cmp = checks.compare(a, Generation(a.prompt_tokens, list(a.tokens)))
    assert cmp.first_divergence is None and cmp.agreement == f"{STEPS}/{STEPS}"


def test_a_shorter_run_diverges_where_it_stops():
    a, _ = _diverging_at(5)
    cmp = checks.compare(a, Generation(a.prompt_tokens, a.tokens[:10]))
    assert cmp.first_divergence == 10 and cmp.agreement == f"10/{STEPS}"


def test_logit_rows_are_compared_up_to_and_including_the_first_divergence():
    a, b = _diverging_at(5)
    rows = np.zeros((STEPS, 4), np.float32)
    later = rows.copy()
    later[6:] += 100.0  # after the divergence the prefixes differ: not comparable
    cmp = checks.compare(Generation(a.prompt_tokens, a.tokens, rows), Generation(b.prompt_tokens, b.tokens, later))
    assert len(cmp.per_step_max_abs_diff) == 6 and cmp.max_abs_logit_diff == 0.0


def test_mlx_peer_table_counts_the_same_prefix():
    a, b = _diverging_at(5)
    logits = np.zeros((STEPS, 200), np.float32)
    logits[np.arange(STEPS), a.tokens] = 5.0  # clear winners: no near-tie
    ours = Generation(a.prompt_tokens, a.tokens, logits)
    peer = Generation(b.prompt_tokens, b.tokens, mlx_peer.log_softmax(logits))
    pc = mlx_peer.compare(ours, peer)
    assert pc.comparison.agreement == f"5/{STEPS}" and pc.comparison.first_divergence == 5 and not pc.agrees


def test_runs_of_different_prompts_are_refused():
    import pytest

    with pytest.raises(ValueError, match="runs of different prompts cannot be compared"):
        checks.compare(Generation([1], [5]), Generation([2], [5]))


def test_logit_rows_of_agreeing_runs_are_all_compared_by_their_difference():
    a, _ = _diverging_at(5)
    rows = np.tile(np.arange(4, dtype=np.float32), (STEPS, 1)) + 10.0  # equal, far from zero
    shifted = rows.copy()
    shifted[STEPS - 1, 2] += 0.5
    cmp = checks.compare(Generation(a.prompt_tokens, a.tokens, rows), Generation(a.prompt_tokens, a.tokens, shifted))
    assert len(cmp.per_step_max_abs_diff) == STEPS
    assert cmp.per_step_max_abs_diff[:-1] == (0.0,) * (STEPS - 1) and cmp.max_abs_logit_diff == 0.5


def test_rank_at_divergence_of_a_run_that_stops_early_is_none():
    logits = np.tile(np.arange(10, dtype=np.float32), (3, 1))
    reference = Generation([1], [9, 9, 9], logits)
    assert checks.rank_at_divergence(Generation([1], [9]), reference) is None  # parted by stopping
    assert checks.rank_at_divergence(Generation([1], [9, 8]), Generation([1], [9, 9, 9])) is None  # no logits


def test_degeneracy_measures_share_longest_run_and_distinct_tokens():
    d = checks.degeneracy([1, 2, 2, 2, 3])
    assert (d.max_token_share, d.longest_repeat_run, d.distinct_tokens) == (0.6, 3, 3)
    empty = checks.degeneracy([])
    assert (empty.max_token_share, empty.longest_repeat_run, empty.distinct_tokens) == (1.0, 0, 0)
    assert not empty.coherent


def test_degeneracy_repeat_run_bound_is_inclusive():
    varied = list(range(100, 100 + 40))
    at_bound = varied[:10] + [7] * checks.MAX_REPEAT_RUN + varied[10:]
    over = varied[:10] + [7] * (checks.MAX_REPEAT_RUN + 1) + varied[10:]
    assert checks.degeneracy(at_bound).coherent
    assert not checks.degeneracy(over).coherent
