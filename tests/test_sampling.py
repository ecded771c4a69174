"""The sampler, step by step, against plain reference implementations written differently here.

The references loop in Python over tokens (or use scipy) where sampling.py uses
vectorised numpy; ties, all-equal logits, top_k beyond the vocabulary and the
top_p edges 0 and 2 are covered. The distribution tests draw many tokens from
fixed logits and compare frequencies with the expected probabilities by a
chi-square test that the wrong step order fails.
"""

import math
from collections import Counter

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from scipy.stats import chisquare

from awqinfer import InputError
from awqinfer.engine.text.sampling import (
    History, SamplingParams, draw, frequency_presence_penalty, next_token, probabilities, repetition_penalty,
    softmax, temperature_scale, top_k_filter, top_p_filter,
)

LOGITS = np.array([1.5, -0.5, 3.0, 0.0, -2.0, 3.0, 0.7, -1.0])  # ties at 3.0, a zero, negatives
EQUAL = np.full(6, 0.25)


# ---- references: token-by-token loops ------------------------------------------------------------

def ref_repetition(logits, history, penalty):
    out = list(logits)
    for t in set(history):
        out[t] = out[t] * penalty if out[t] < 0 else out[t] / penalty
    return np.array(out)


def ref_freq_presence(logits, generated, frequency, presence):
    out = list(logits)
    for t, count in Counter(generated).items():
        out[t] -= count * frequency + presence
    return np.array(out)


def ref_top_k(logits, k):
    kth = sorted(logits, reverse=True)[min(k, len(logits)) - 1]
    return np.array([x if x >= kth else -math.inf for x in logits])


def ref_top_p(logits, p):
    if p >= 1:
        return np.array(logits, dtype=float)
    probs = scipy_softmax(logits)
    total, last = 0.0, None
    for prob in sorted(probs, reverse=True):
        total += prob
        last = prob
        if total >= p:
            break
    return np.array([x if q >= last else -math.inf for x, q in zip(logits, probs)])


def ref_distribution(logits, temperature, top_k, top_p):
    x = np.asarray(logits, dtype=float) / temperature
    x = ref_top_k(x, top_k) if top_k else x
    x = ref_top_p(x, top_p)
    finite = np.isfinite(x)
    out = np.zeros_like(x)
    out[finite] = scipy_softmax(x[finite])
    return out


# ---- each step ------------------------------------------------------------------------------------

@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
@pytest.mark.parametrize("history", [[2, 1, 1, 3], [0, 4, 5, 6, 7], []])
def test_repetition_penalty_matches_reference(penalty, history):
    seen = np.zeros(LOGITS.size, bool)
    seen[history] = True
    np.testing.assert_allclose(repetition_penalty(LOGITS, seen, penalty), ref_repetition(LOGITS, history, penalty))


def test_repetition_penalty_zero_and_one_are_off():
    seen = np.ones(LOGITS.size, bool)
    np.testing.assert_array_equal(repetition_penalty(LOGITS, seen, 0.0), LOGITS)
    np.testing.assert_array_equal(repetition_penalty(LOGITS, seen, 1.0), LOGITS)


@pytest.mark.parametrize("frequency,presence", [(0.5, 0.0), (0.0, 1.5), (2.0, 2.0), (0.3, 0.7)])
def test_frequency_presence_penalty_matches_reference(frequency, presence):
    generated = [2, 2, 2, 5, 0, 5]
    counts = np.bincount(generated, minlength=LOGITS.size)
    np.testing.assert_allclose(frequency_presence_penalty(LOGITS, counts, frequency, presence),
                               ref_freq_presence(LOGITS, generated, frequency, presence))


def test_penalties_see_prompt_and_output_as_transformers_and_openai_say():
    """Repetition covers prompt + output; frequency/presence only output."""
    history = History(LOGITS.size, prompt_ids=[0, 3])
    for t in (2, 2):
        history.add(t)
    params = SamplingParams(temperature=0, repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    expected = ref_freq_presence(ref_repetition(LOGITS, [0, 3, 2, 2], 2.0), [2, 2], 0.5, 0.25)
    # greedy picks the argmax of the penalised logits: 5 (3.0) over 2 (3.0/2 - 1 - .25)
    assert int(np.argmax(probabilities(LOGITS, history, params))) == int(np.argmax(expected)) == 5


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 50])
def test_top_k_matches_reference_including_ties_and_k_beyond_vocab(k):
    np.testing.assert_array_equal(top_k_filter(LOGITS, k), ref_top_k(LOGITS, k))
    np.testing.assert_array_equal(top_k_filter(EQUAL, k), EQUAL)  # all equal: all tied, all kept


def test_top_k_one_keeps_both_tied_maxima():
    assert np.isfinite(top_k_filter(LOGITS, 1)).sum() == 2


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.5, 0.75, 0.9, 0.99, 1.0, 1.5, 2.0])
def test_top_p_matches_reference(p):
    np.testing.assert_array_equal(top_p_filter(LOGITS, p), ref_top_p(LOGITS, p))
    np.testing.assert_array_equal(top_p_filter(EQUAL, p), EQUAL)


def test_top_p_edges():
    distinct = np.array([0.1, 2.0, -1.0, 1.0])
    assert np.isfinite(top_p_filter(distinct, 0.0)).tolist() == [False, True, False, False]  # one token kept
    np.testing.assert_array_equal(top_p_filter(distinct, 2.0), distinct)  # >= 1: every token
    np.testing.assert_array_equal(top_p_filter(distinct, 1.0), distinct)


def test_temperature_is_a_division_up_to_a_shift():
    np.testing.assert_allclose(softmax(temperature_scale(LOGITS, 0.7)), scipy_softmax(LOGITS / 0.7))


def test_temperature_zero_is_argmax_with_lowest_id_on_ties():
    probs = probabilities(LOGITS, History(LOGITS.size), SamplingParams(temperature=0))
    assert probs.tolist() == [0, 0, 1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("inputs", [dict(temperature=1e-300), dict(temperature=5e-324),
                                    dict(repetition_penalty=5e-324, temperature=1.0)])
def test_extreme_values_in_range_never_give_nan(inputs):
    history = History(LOGITS.size, prompt_ids=[0, 1, 2])
    probs = probabilities(LOGITS, history, SamplingParams(**inputs))
    assert np.isfinite(probs).all() and math.isclose(probs.sum(), 1.0)
    assert probs[[3, 4, 6, 7]].sum() == 0  # unseen tokens below the maximum vanish in these limits


def test_draw_never_picks_a_masked_token():
    rng = np.random.default_rng(0)
    probs = softmax(np.array([-np.inf, 0.0, -np.inf, 0.0, -np.inf]))
    assert {draw(probs, rng) for _ in range(500)} == {1, 3}


# ---- distributions ------------------------------------------------------------------------------

DIST_LOGITS = np.array([2.0, 1.6, 1.2, 0.8, 0.3, -0.2, -1.0])


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, 1.0), (0.7, 4, 2.0), (2.0, None, 0.8),
                                                     (1.6, 5, 0.75), (0.5, 6, 0.9)])
def test_sampled_frequencies_match_expected_probabilities(temperature, top_k, top_p):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=1234)
    expected = ref_distribution(DIST_LOGITS, temperature, top_k, top_p)
    np.testing.assert_allclose(probabilities(DIST_LOGITS, History(DIST_LOGITS.size), params), expected, atol=1e-12)
    rng, history = np.random.default_rng(params.seed), History(DIST_LOGITS.size)
    n = 20000
    draws = [next_token(DIST_LOGITS, history, params, rng) for _ in range(n)]
    observed = np.bincount(draws, minlength=DIST_LOGITS.size)
    support = expected > 0
    assert observed[~support].sum() == 0
    assert chisquare(observed[support], expected[support] * n).pvalue > 1e-4


def test_the_chi_square_check_catches_a_wrong_order():
    """top-p before temperature keeps fewer tokens at T=2: the frequencies must reject that distribution."""
    params = SamplingParams(temperature=2.0, top_p=0.8, seed=7)
    right = ref_distribution(DIST_LOGITS, 2.0, None, 0.8)
    p = ref_top_p(DIST_LOGITS, 0.8)
    wrong = np.where(np.isfinite(p), scipy_softmax(np.where(np.isfinite(p), p / 2.0, -np.inf)), 0.0)
    assert (right > 0).sum() > (wrong > 0).sum()
    rng = np.random.default_rng(params.seed)
    observed = np.bincount([next_token(DIST_LOGITS, History(7), params, rng) for _ in range(5000)], minlength=7)
    assert observed[wrong == 0].sum() > 0  # tokens the wrong order would never produce


def test_seeded_draws_repeat_and_different_seeds_differ():
    params = SamplingParams(temperature=1.0)

    def run(seed):
        rng = np.random.default_rng(seed)
        return [next_token(DIST_LOGITS, History(7), params, rng) for _ in range(50)]

    assert run(5) == run(5)
    assert run(5) != run(6)


# ---- params ---------------------------------------------------------------------------------------

def test_sampling_params_defaults_follow_the_schema():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed) == (256, 0.6, 1.0, None, None)
    assert (p.repetition_penalty, p.frequency_penalty, p.presence_penalty) == (1.0, 0.0, 0.0)


def test_sampling_params_validate_themselves():
    with pytest.raises(InputError, match=r"temperature: got -1.*0\.\.5"):
        SamplingParams(temperature=-1)
    assert SamplingParams(top_k=3.0).top_k == 3 and isinstance(SamplingParams(top_k=3.0).top_k, int)


def test_greedy_next_token_is_the_argmax_of_the_penalised_logits_without_a_draw():
    """temperature 0 shortcuts the draw: same token as the one-hot distribution, no random number used.

    Without penalties the argmax is taken on the logits as given (a model's float32 row, ties
    included): the same token as on their float64 widening."""
    history = History(LOGITS.size, [5])
    history.add(5)
    for inputs in ({}, {"repetition_penalty": 1.9}, {"frequency_penalty": 2.0, "presence_penalty": 1.0},
                   {"repetition_penalty": 0.0}):
        params = SamplingParams(temperature=0, **inputs)
        for logits in (LOGITS, LOGITS.astype(np.float32), -LOGITS.astype(np.float32)):
            rng = np.random.default_rng(7)
            state = rng.bit_generator.state
            token = next_token(logits, history, params, rng)
            assert token == int(np.argmax(probabilities(logits, history, params)))
            assert rng.bit_generator.state == state
