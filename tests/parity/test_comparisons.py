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
