"""specdec_t5x.theory against the numbers of Leviathan et al. 2023 and its own identities."""

import numpy as np
import pytest

from specdec_t5x import paper, theory

# Table 2 of the paper (T5-XXL target, TPU-v4): (task, Mq, temperature, γ, α, measured speedup);
# PAPER_C is the measured draft/target time ratio c of each draft.
PAPER_TABLE_2 = paper.PAPER_TABLE2
PAPER_C = paper.PAPER_C
# (1 − α^{γ+1}) / ((1 − α)(γc + 1)) for each row above, worked out by hand (to 3 decimals).
TABLE_2_THEORY = [3.158, 3.251, 2.497, 2.258, 2.347, 1.934,
                  2.402, 2.619, 2.025, 1.891, 1.803, 1.541]


def test_paper_example_alpha_08_gamma_5_c_0():
  # Section 3.5 of the paper: α = 0.8, γ = 5, negligible c -> 3.69x.
  assert round(theory.walltime_improvement(0.8, 5, 0.0), 2) == 3.69
  assert theory.expected_tokens_per_iteration(0.8, 5) == pytest.approx(3.68928)


def test_table_2_theory_values():
  for row, expected in zip(PAPER_TABLE_2, TABLE_2_THEORY, strict=True):
    _, draft, _, gamma, alpha, _ = row
    got = theory.walltime_improvement(alpha, gamma, PAPER_C[draft])
    assert got == pytest.approx(expected, abs=1e-3), row


def test_table_2_measured_speeds_against_theory():
  # The formula is an i.i.d. model, not a bound: 9 of the 12 measured speeds EXCEED it (the
  # acceptances of real text are correlated, and the T5X baseline is not the paper's formula's
  # unit step). What does hold: every row has α > c and a real speedup, and theory and
  # measurement agree within a factor of 1.5 either way.
  exceeding = 0
  for row in PAPER_TABLE_2:
    _, draft, _, gamma, alpha, measured = row
    c = PAPER_C[draft]
    predicted = theory.walltime_improvement(alpha, gamma, c)
    assert theory.speedup_exists(alpha, c) and measured > 1.0 and predicted > 1.0, row
    assert 1 / 1.5 < measured / predicted < 1.5, row
    exceeding += measured > predicted
  assert exceeding == 9


def test_bigram_draft_ceiling():
  # Table 3: a bigram draft (α = 0.20 on EnDe, c ≈ 0) gave about 1.25x = 1 / (1 − α), the limit
  # of the walltime factor as γ grows.
  best = theory.optimal_gamma(0.20, 0.0)
  assert best.factor == pytest.approx(1.25, rel=1e-9)
  assert theory.walltime_improvement(0.20, 3, 0.0) < 1.25


def test_expected_tokens_limits():
  for gamma in (1, 3, 7):
    assert theory.expected_tokens_per_iteration(0.0, gamma) == 1.0
    assert theory.expected_tokens_per_iteration(1.0, gamma) == gamma + 1
    # Approaching α = 1 continuously, without a 0/0.
    assert theory.expected_tokens_per_iteration(1 - 1e-12, gamma) == pytest.approx(gamma + 1)


def test_expected_tokens_matches_closed_form_and_vectorises():
  alphas = np.linspace(0.0, 0.99, 23)
  got = theory.expected_tokens_per_iteration(alphas, 6)
  assert got.shape == alphas.shape
  np.testing.assert_allclose(got, (1 - alphas ** 7) / (1 - alphas), rtol=1e-12)
  assert np.all(np.diff(got) > 0)


def test_walltime_measured_reduces_to_paper_and_penalises_scoring():
  alpha, gamma, c = 0.7, 4, 0.05
  paper = theory.walltime_improvement(alpha, gamma, c)
  assert theory.walltime_improvement_measured(alpha, gamma, c, 1.0) == pytest.approx(paper)
  slower = theory.walltime_improvement_measured(alpha, gamma, c, 1.3)
  assert slower == pytest.approx(theory.expected_tokens_per_iteration(alpha, gamma) / 1.5)
  assert slower < paper


def test_arithmetic_operations_factor():
  # (1 − α)(γĉ + γ + 1) / (1 − α^{γ+1}) at α = 0.8, γ = 5, ĉ = 0.01: 6.05 / 3.68928.
  assert theory.arithmetic_operations_factor(0.8, 5, 0.01) == pytest.approx(6.05 / 3.68928)
  # Every proposal accepted and a free draft: the target does exactly one position per token.
  assert theory.arithmetic_operations_factor(1.0, 5, 0.0) == pytest.approx(1.0)
  # Nothing accepted: γ+1 target positions and γ draft steps per emitted token.
  assert theory.arithmetic_operations_factor(0.0, 3, 0.1) == pytest.approx(4.3)


def test_optimal_gamma_grows_as_c_falls():
  gammas = [theory.optimal_gamma(0.8, c).gamma for c in (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)]
  assert gammas == sorted(gammas) and gammas[0] < gammas[-1]
  assert gammas[0] == 2  # (1 + .8 + .64) / 2 = 1.22 beats γ = 1 and γ = 3.


def test_optimal_gamma_is_the_argmax_of_the_factor():
  alpha, c = 0.75, 0.02
  best = theory.optimal_gamma(alpha, c, max_gamma=30)
  factors = [theory.walltime_improvement(alpha, g, c) for g in range(1, 31)]
  assert best.gamma == 1 + int(np.argmax(factors)) == 9
  assert best.factor == pytest.approx(max(factors))
  assert theory.optimal_gamma(alpha, c, max_gamma=5).gamma == 5


def test_optimal_gamma_with_scoring_cost():
  alpha, c = 0.8, 0.02
  paper = theory.optimal_gamma(alpha, c, max_gamma=7)
  # A constant 1 and the default are the paper's assumption.
  assert theory.optimal_gamma(alpha, c, max_gamma=7, scoring_cost=1.0) == paper
  # A curve indexed by K = γ+1 positions that makes K > 4 expensive caps γ at 3.
  by_k = np.array([1.0, 1.05, 1.1, 1.15, 3.0, 3.0, 3.0, 3.0])
  capped = theory.optimal_gamma(alpha, c, scoring_cost=by_k)
  assert capped.gamma == 3
  assert capped.factor == pytest.approx(
      theory.walltime_improvement_measured(alpha, 3, c, 1.15))
  # The same curve as a callable of γ.
  assert theory.optimal_gamma(alpha, c, max_gamma=7, scoring_cost=lambda g: by_k[g]) == capped
  with pytest.raises(ValueError, match='max_gamma=9'):
    theory.optimal_gamma(alpha, c, max_gamma=9, scoring_cost=by_k)


def test_speedup_exists_iff_alpha_above_c():
  assert theory.speedup_exists(0.5, 0.1)
  assert not theory.speedup_exists(0.1, 0.1)
  assert not theory.speedup_exists(0.05, 0.3)
  for alpha in np.linspace(0.0, 1.0, 11):
    for c in (0.0, 0.05, 0.25, 0.5, 0.95, 1.5):
      wins = theory.optimal_gamma(alpha, c, max_gamma=40).factor > 1.0 + 1e-12
      assert wins == theory.speedup_exists(alpha, c), (alpha, c)
  np.testing.assert_array_equal(theory.speedup_exists(np.array([0.2, 0.6]), 0.4), [False, True])


def test_beta():
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(17), size=(3, 4))
  np.testing.assert_allclose(theory.beta(p, p), np.ones((3, 4)), rtol=1e-12)
  disjoint_p = np.array([0.5, 0.5, 0.0, 0.0])
  disjoint_q = np.array([0.0, 0.0, 0.25, 0.75])
  assert theory.beta(disjoint_p, disjoint_q) == 0.0
  q = rng.dirichlet(np.ones(17), size=(3, 4))
  total_variation = 0.5 * np.abs(p - q).sum(-1)
  np.testing.assert_allclose(theory.beta(p, q), 1 - total_variation, rtol=1e-12)
  assert theory.beta(np.array([0.7, 0.3]), np.array([0.4, 0.6])) == pytest.approx(0.7)


def test_alpha_from_acceptance_inverts_expected_tokens():
  for gamma in (1, 3, 7):
    for alpha in (0.0, 0.13, 0.5, 0.8, 0.97, 1.0):
      iterations = 1000.0
      accepted = (theory.expected_tokens_per_iteration(alpha, gamma) - 1) * iterations
      assert theory.alpha_from_acceptance(accepted, iterations, gamma) == pytest.approx(
          alpha, abs=1e-9)
  # 1 + 1/1 = 2 tokens per iteration at γ = 3 solves 1 + α + α² + α³ = 2.
  estimated = theory.alpha_from_acceptance(np.array([0, 10, 30]), 10, 3)
  np.testing.assert_allclose(estimated, [0.0, 0.5436890127, 1.0], atol=1e-9)


def test_alpha_from_acceptance_on_simulated_counts():
  # i.i.d. acceptances with rate α: per iteration, accept draft tokens until the first rejection.
  rng = np.random.default_rng(1)
  alpha, gamma, iterations = 0.7, 4, 20000
  accepted = sum(int(np.argmin(np.append(rng.random(gamma) < alpha, False)))
                 for _ in range(iterations))
  assert theory.alpha_from_acceptance(accepted, iterations, gamma) == pytest.approx(alpha, abs=0.01)


@pytest.mark.parametrize('call, match', [
    (lambda: theory.expected_tokens_per_iteration(1.2, 3), 'alpha'),
    (lambda: theory.expected_tokens_per_iteration(-0.1, 3), 'alpha'),
    (lambda: theory.expected_tokens_per_iteration(np.array([0.5, np.nan]), 3), 'alpha'),
    (lambda: theory.expected_tokens_per_iteration(0.5, 0), 'gamma'),
    (lambda: theory.expected_tokens_per_iteration(0.5, 2.5), 'gamma'),
    (lambda: theory.expected_tokens_per_iteration(0.5, True), 'gamma'),
    (lambda: theory.walltime_improvement(0.5, 3, -0.1), 'c'),
    (lambda: theory.walltime_improvement_measured(0.5, 3, 0.1, 0.0), 'scoring_cost'),
    (lambda: theory.arithmetic_operations_factor(0.5, 3, -1.0), 'c_hat'),
    (lambda: theory.optimal_gamma(0.5, -0.1), 'c'),
    (lambda: theory.optimal_gamma(0.5, 0.1, max_gamma=0), 'gamma'),
    (lambda: theory.optimal_gamma(np.array([0.5, 0.6]), 0.1), 'scalar'),
    (lambda: theory.optimal_gamma(0.5, 0.1, scoring_cost=[1.0]), 'K = 1, 2'),
    (lambda: theory.speedup_exists(2.0, 0.1), 'alpha'),
    (lambda: theory.beta(np.ones(3) / 3, np.ones(4) / 4), 'same shape'),
    (lambda: theory.beta(np.array([1.5, -0.5]), np.array([0.5, 0.5])), 'probabilities'),
    (lambda: theory.alpha_from_acceptance(5, 0, 3), 'iterations'),
    (lambda: theory.alpha_from_acceptance(-1, 10, 3), 'accepted_tokens'),
    (lambda: theory.alpha_from_acceptance(31, 10, 3), 'exceed'),
    (lambda: theory.alpha_from_acceptance(3, 10, 0), 'gamma'),
])
def test_bad_inputs_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_per_request_walltime_adds_the_set_up_of_both_decoders():
  alpha, gamma, c, cost = 0.7, 3, 0.05, 1.2
  per_step = theory.walltime_improvement_measured(alpha, gamma, c, cost)
  assert theory.walltime_improvement_per_request(alpha, gamma, c, cost, 20.0, 0.0) == (
      pytest.approx(per_step))
  tokens = theory.expected_tokens_per_iteration(alpha, gamma)
  expected = (5.0 + 20.0) / (5.0 + 1.0 + 20.0 * (gamma * c + cost) / tokens)
  assert theory.walltime_improvement_per_request(alpha, gamma, c, cost, 20.0, 5.0, 1.0) == (
      pytest.approx(expected))
  with pytest.raises(ValueError, match='steps'):
    theory.walltime_improvement_per_request(alpha, gamma, c, cost, 0.0, 5.0)
  with pytest.raises(ValueError, match='setup_cost'):
    theory.walltime_improvement_per_request(alpha, gamma, c, cost, 20.0, -1.0)
