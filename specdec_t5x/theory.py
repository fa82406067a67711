"""The analysis of speculative decoding (Leviathan, Kalman, Matias 2023, section 3).

Notation of the paper:

* `alpha` (α): the acceptance rate, the expectation of β = Σ_x min(p(x), q(x))
  over prefixes, where p is the target's and q the draft's next-token
  distribution. The paper assumes the acceptances are i.i.d. with rate α.
* `gamma` (γ): the number of tokens the draft proposes per iteration.
* `c`: the time of one draft step divided by the time of one target step.
* `c_hat` (ĉ): the same ratio for arithmetic operations instead of time.
* `scoring_cost`: the time of one target call on γ+1 positions divided by the
  time of one target step on 1 position. The paper's formulas take it as 1;
  on real hardware it is a little more (`scripts/bench_scoring_cost.py`
  measures it).

Every function takes floats or NumPy arrays (broadcast elementwise) for
`alpha` and the cost ratios, and a Python integer for `gamma`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

ArrayOrFloat = float | np.ndarray
# Per-γ scoring cost: a constant, a callable `gamma -> cost of scoring γ+1
# positions`, or the benchmark's curve indexed by K (see `optimal_gamma`).
ScoringCost = float | Callable[[int], float] | Sequence[float] | np.ndarray

DEFAULT_MAX_GAMMA = 64


# ------------------------------------------------------------------------------
# Validation at the public boundary.
# ------------------------------------------------------------------------------


def _as_float_array(value: ArrayOrFloat, name: str) -> np.ndarray:
  try:
    array = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise ValueError(f'{name} must be a number or an array of numbers, got {value!r}') from error
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} must be finite, got {value!r}')
  return array


def _check_alpha(alpha: ArrayOrFloat) -> np.ndarray:
  array = _as_float_array(alpha, 'alpha')
  if np.any(array < 0.0) or np.any(array > 1.0):
    raise ValueError(f'alpha (acceptance rate) must lie in [0, 1], got {alpha!r}')
  return array


def _check_gamma(gamma: int) -> int:
  # bool is an int subclass, but `gamma=True` is always a mistake.
  if isinstance(gamma, bool) or not isinstance(gamma, numbers.Integral):
    raise ValueError(f'gamma (draft tokens per iteration) must be an integer, got {gamma!r}')
  if gamma < 1:
    raise ValueError(f'gamma (draft tokens per iteration) must be >= 1, got {gamma}')
  return int(gamma)


def _check_nonnegative(value: ArrayOrFloat, name: str) -> np.ndarray:
  array = _as_float_array(value, name)
  if np.any(array < 0.0):
    raise ValueError(f'{name} must be >= 0, got {value!r}')
  return array


def _check_positive(value: ArrayOrFloat, name: str) -> np.ndarray:
  array = _as_float_array(value, name)
  if np.any(array <= 0.0):
    raise ValueError(f'{name} must be > 0, got {value!r}')
  return array


def _scalar_or_array(array: np.ndarray) -> ArrayOrFloat:
  return float(array) if array.ndim == 0 else array


# ------------------------------------------------------------------------------
# The formulas.
# ------------------------------------------------------------------------------


def beta(p: np.ndarray, q: np.ndarray) -> ArrayOrFloat:
  """β = Σ_x min(p(x), q(x)) = 1 − TV(p, q), the chance a draft token is accepted.

  Args:
    p: target probabilities `[..., vocab]`.
    q: draft probabilities `[..., vocab]`, the same shape as `p`.

  Returns:
    β `[...]` (a float for 1-D inputs), in [0, 1] for normalised inputs.
  """
  p_array = _as_float_array(p, 'p')
  q_array = _as_float_array(q, 'q')
  if p_array.shape != q_array.shape:
    raise ValueError(f'p and q must have the same shape [..., vocab], got {p_array.shape} '
                     f'and {q_array.shape}')
  if p_array.ndim == 0:
    raise ValueError('p and q must have a vocabulary axis, shape [..., vocab]; got scalars')
  if np.any(p_array < 0.0) or np.any(q_array < 0.0):
    raise ValueError('p and q must be probabilities (>= 0)')
  return _scalar_or_array(np.minimum(p_array, q_array).sum(axis=-1))


def expected_tokens_per_iteration(alpha: ArrayOrFloat, gamma: int) -> ArrayOrFloat:
  """E[tokens emitted per iteration] = (1 − α^{γ+1}) / (1 − α); γ+1 at α = 1.

  Computed as the geometric sum Σ_{i=0}^{γ} α^i, which equals the closed form
  for α < 1 and is exact (no 0/0) at α = 1.

  Args:
    alpha: acceptance rate(s) in [0, 1], float or array `[...]`.
    gamma: draft tokens per iteration, >= 1.

  Returns:
    Expected tokens per iteration, in [1, γ+1], shaped like `alpha`.
  """
  alpha_array = _check_alpha(alpha)
  gamma = _check_gamma(gamma)
  powers = alpha_array[..., None] ** np.arange(gamma + 1)
  return _scalar_or_array(powers.sum(axis=-1))


def walltime_improvement(alpha: ArrayOrFloat, gamma: int, c: ArrayOrFloat) -> ArrayOrFloat:
  """The paper's expected walltime factor (1 − α^{γ+1}) / ((1 − α)(γc + 1)).

  Assumes scoring γ+1 positions in one target call costs one target step;
  `walltime_improvement_measured` drops that assumption.

  Args:
    alpha: acceptance rate(s) in [0, 1].
    gamma: draft tokens per iteration, >= 1.
    c: draft step time / target step time, >= 0.

  Returns:
    Speedup over autoregressive decoding with the target (> 1 is faster).
  """
  return walltime_improvement_measured(alpha, gamma, c, scoring_cost=1.0)


def walltime_improvement_measured(alpha: ArrayOrFloat, gamma: int, c: ArrayOrFloat,
                                  scoring_cost: ArrayOrFloat) -> ArrayOrFloat:
  """Walltime factor with a measured scoring cost: E[tokens] / (γc + scoring_cost).

  One iteration costs γ draft steps (γ·c target steps) plus one target call on
  γ+1 positions (`scoring_cost` target steps); the autoregressive baseline
  costs one target step per token. With `scoring_cost=1` this is the paper's
  formula.

  Args:
    alpha: acceptance rate(s) in [0, 1].
    gamma: draft tokens per iteration, >= 1.
    c: draft step time / target step time, >= 0.
    scoring_cost: time of one target call on γ+1 positions / time of one
      target step on 1 position, > 0 (>= 1 in practice).

  Returns:
    Speedup over autoregressive decoding with the target.
  """
  tokens = np.asarray(expected_tokens_per_iteration(alpha, gamma))
  c_array = _check_nonnegative(c, 'c (draft/target step time ratio)')
  cost_array = _check_positive(scoring_cost, 'scoring_cost')
  return _scalar_or_array(tokens / (gamma * c_array + cost_array))


def walltime_improvement_per_request(alpha: ArrayOrFloat, gamma: int, c: ArrayOrFloat,
                                     scoring_cost: ArrayOrFloat, steps: ArrayOrFloat,
                                     setup_cost: ArrayOrFloat,
                                     draft_setup_cost: ArrayOrFloat = 0.0) -> ArrayOrFloat:
  """Walltime factor of whole requests: (E + N) / (E + D + N (γc + scoring_cost) / E[tokens]).

  The paper's formula counts the decoder steps only. A request also pays
  once for its encoder pass and the decode cache (`setup_cost` E, in target
  steps, the same in both decoders) and, speculatively, for the draft's own
  encoder pass and cache (`draft_setup_cost` D). With N = `steps` tokens
  that fixed part bounds the speedup below (E + N) / (E + D) however good
  the draft: it matters where the outputs are short against the inputs.
  With E = D = 0 this is `walltime_improvement_measured`.

  Args:
    alpha, gamma, c, scoring_cost: as in `walltime_improvement_measured`.
    steps: tokens the autoregressive decoder emits for the request (its steps), > 0.
    setup_cost: encoder pass and cache set-up of the target / one target step, >= 0.
    draft_setup_cost: the draft's encoder pass and cache / one target step, >= 0.

  Returns:
    Speedup of the request over autoregressive decoding with the target.
  """
  tokens = np.asarray(expected_tokens_per_iteration(alpha, gamma))
  c_array = _check_nonnegative(c, 'c (draft/target step time ratio)')
  cost_array = _check_positive(scoring_cost, 'scoring_cost')
  n = _check_positive(steps, 'steps')
  setup = _check_nonnegative(setup_cost, 'setup_cost')
  draft_setup = _check_nonnegative(draft_setup_cost, 'draft_setup_cost')
  iteration = gamma * c_array + cost_array
  return _scalar_or_array((setup + n) / (setup + draft_setup + n * iteration / tokens))


def arithmetic_operations_factor(alpha: ArrayOrFloat, gamma: int,
                                 c_hat: ArrayOrFloat) -> ArrayOrFloat:
  """Expected arithmetic operations relative to autoregressive decoding.

  (1 − α)(γĉ + γ + 1) / (1 − α^{γ+1}): per iteration the target scores γ+1
  positions and the draft runs γ steps of ĉ each, for E[tokens] emitted tokens.

  Args:
    alpha: acceptance rate(s) in [0, 1].
    gamma: draft tokens per iteration, >= 1.
    c_hat: draft/target arithmetic operations per token, >= 0.

  Returns:
    The factor by which operations grow (>= 1 unless α = 1 and ĉ = 0).
  """
  tokens = np.asarray(expected_tokens_per_iteration(alpha, gamma))
  c_hat_array = _check_nonnegative(c_hat, 'c_hat (draft/target operations ratio)')
  return _scalar_or_array((gamma * c_hat_array + gamma + 1) / tokens)


def speedup_exists(alpha: ArrayOrFloat, c: ArrayOrFloat) -> bool | np.ndarray:
  """Whether some γ gives a walltime factor above 1: exactly when α > c.

  (Σ_{i=1}^{γ} α^i > γc needs α > c, and γ = 1 already wins when α > c.)
  """
  alpha_array = _check_alpha(alpha)
  c_array = _check_nonnegative(c, 'c (draft/target step time ratio)')
  result = alpha_array > c_array
  return bool(result) if result.ndim == 0 else result


class OptimalGamma(NamedTuple):
  """The γ that maximises the walltime factor, and that factor."""

  gamma: int
  factor: float


def _scoring_costs(scoring_cost: ScoringCost | None, max_gamma: int | None) -> np.ndarray:
  """Relative scoring cost for γ = 1..max_gamma, `[max_gamma]`."""
  if scoring_cost is None or isinstance(scoring_cost, numbers.Real):
    max_gamma = DEFAULT_MAX_GAMMA if max_gamma is None else _check_gamma(max_gamma)
    constant = 1.0 if scoring_cost is None else float(scoring_cost)
    return _check_positive(np.full(max_gamma, constant), 'scoring_cost')
  if callable(scoring_cost):
    max_gamma = DEFAULT_MAX_GAMMA if max_gamma is None else _check_gamma(max_gamma)
    costs = [scoring_cost(gamma) for gamma in range(1, max_gamma + 1)]
    return _check_positive(np.asarray(costs, dtype=np.float64), 'scoring_cost(gamma)')
  by_k = _check_positive(scoring_cost, 'scoring_cost')
  if by_k.ndim != 1 or by_k.size < 2:
    raise ValueError('scoring_cost as an array must be 1-D with the costs of K = 1, 2, ... '
                     f'positions (at least K = 1 and 2), got shape {by_k.shape}')
  measured_max_gamma = by_k.size - 1
  if max_gamma is None:
    max_gamma = measured_max_gamma
  elif _check_gamma(max_gamma) > measured_max_gamma:
    raise ValueError(f'max_gamma={max_gamma} needs the scoring cost of K={max_gamma + 1} '
                     f'positions, but scoring_cost only covers K=1..{by_k.size}')
  # γ draft tokens are scored in one call on K = γ+1 positions: element γ.
  return by_k[1:max_gamma + 1]


def optimal_gamma(alpha: float, c: float, max_gamma: int | None = None,
                  scoring_cost: ScoringCost | None = None) -> OptimalGamma:
  """Searches γ = 1..max_gamma for the largest walltime factor.

  Args:
    alpha: acceptance rate in [0, 1] (a scalar).
    c: draft step time / target step time, >= 0 (a scalar).
    max_gamma: largest γ tried. Defaults to 64, or to the largest γ an
      array `scoring_cost` covers.
    scoring_cost: cost of one target call on γ+1 positions relative to one
      step on 1 position. None: 1 (the paper's assumption). A float: that
      constant. A callable: `scoring_cost(gamma)`. A 1-D array: the measured
      curve indexed by K = 1, 2, ... positions (element 0 is K = 1, as in
      `results/scoring_cost.json`), so γ uses element γ (K = γ+1).

  Returns:
    `OptimalGamma(gamma, factor)`; the smallest γ among ties.
  """
  if np.ndim(alpha) != 0 or np.ndim(c) != 0:
    raise ValueError('optimal_gamma takes scalar alpha and c; loop over arrays yourself')
  costs = _scoring_costs(scoring_cost, max_gamma)
  gammas = range(1, costs.size + 1)
  factors = np.array([walltime_improvement_measured(alpha, gamma, c, cost)
                      for gamma, cost in zip(gammas, costs, strict=True)])
  best = int(np.argmax(factors))
  return OptimalGamma(gamma=best + 1, factor=float(factors[best]))


def _alpha_from_mean_tokens(mean_tokens: float, gamma: int) -> float:
  # E[tokens](α) rises strictly from 1 at α = 0 to γ+1 at α = 1.
  if mean_tokens <= 1.0:
    return 0.0
  if mean_tokens >= gamma + 1:
    return 1.0
  # Imported here so that the formulas above work without scipy installed.
  from scipy.optimize import brentq

  def residual(alpha):
    return expected_tokens_per_iteration(alpha, gamma) - mean_tokens

  return float(brentq(residual, 0.0, 1.0, xtol=1e-12, rtol=1e-12))


def alpha_from_acceptance(accepted_tokens: ArrayOrFloat, iterations: ArrayOrFloat,
                          gamma: int) -> ArrayOrFloat:
  """Estimates α from acceptance counts by inverting E[tokens per iteration].

  Each iteration emits the accepted draft tokens plus one token from the
  target, so the mean tokens per iteration is 1 + accepted/iterations; the α
  whose (1 − α^{γ+1}) / (1 − α) equals it is found with `scipy.optimize.brentq`.
  This relies on the paper's i.i.d. assumption, and iterations cut short by
  EOS or max_decode_len bias it low: count only complete iterations where
  that matters.

  Args:
    accepted_tokens: draft tokens accepted (0..γ per iteration), summed over
      `iterations`; float or array `[...]`.
    iterations: number of iterations (> 0), broadcastable with
      `accepted_tokens`.
    gamma: draft tokens per iteration, >= 1.

  Returns:
    α in [0, 1], shaped like the broadcast inputs.
  """
  gamma = _check_gamma(gamma)
  accepted = _check_nonnegative(accepted_tokens, 'accepted_tokens')
  counts = _check_positive(iterations, 'iterations')
  accepted, counts = np.broadcast_arrays(accepted, counts)
  if np.any(accepted > gamma * counts):
    raise ValueError(f'accepted_tokens cannot exceed gamma * iterations (at most {gamma} '
                     'draft tokens are accepted per iteration)')
  mean_tokens = 1.0 + accepted / counts
  alphas = np.array([_alpha_from_mean_tokens(float(m), gamma) for m in mean_tokens.ravel()])
  return _scalar_or_array(alphas.reshape(mean_tokens.shape))


__all__ = [
    'OptimalGamma',
    'alpha_from_acceptance',
    'arithmetic_operations_factor',
    'beta',
    'expected_tokens_per_iteration',
    'optimal_gamma',
    'speedup_exists',
    'walltime_improvement',
    'walltime_improvement_measured',
]
