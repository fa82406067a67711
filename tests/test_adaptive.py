"""The gamma='auto' policy (`specdec_t5x.adaptive`) and cost profiles, without decoding."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from specdec_t5x import adaptive, calibration, theory

COSTS = (1.0, 1.3, 1.5, 1.7, 1.9)


def _state(policy, alpha, weight=1e6, gamma=0, zero_run=0):
  state = adaptive.init_state(policy, 64)
  return state.replace(beta_sum=jnp.float32(alpha * weight), beta_weight=jnp.float32(weight),
                       gamma=jnp.int32(gamma), zero_run=jnp.int32(zero_run))


def _choose(policy, alpha, **state):
  return int(adaptive.choose_gamma(policy, _state(policy, alpha, **state)))


def test_expected_speed_is_the_papers_expectation_over_the_cost():
  costs = jnp.asarray(COSTS)
  for alpha in (0.0, 0.3, 0.8, 0.999):
    speed = np.asarray(adaptive.expected_speed(jnp.float32(alpha), costs))
    want = [float(theory.expected_tokens_per_iteration(alpha, g)) / COSTS[g] if g else 1.0
            for g in range(len(COSTS))]
    np.testing.assert_allclose(speed, want, rtol=1e-5)


def test_the_choice_follows_alpha_and_the_costs():
  policy = adaptive.make_policy(adaptive.CostProfile(COSTS), 4)
  assert _choose(policy, 0.05) == 0           # drafts that never agree: plain steps
  assert _choose(policy, 0.6) == 2            # 1.96/1.5 beats 1.6/1.3 and 2.18/1.7
  assert _choose(policy, 0.95) == 4           # nearly always right: the longest draft
  free = adaptive.make_policy(adaptive.CostProfile((1.0,) * 5), 4)
  assert _choose(free, 0.05) == 4             # free drafting always pays a little


def test_the_current_gamma_stays_within_the_switch_margin():
  policy = adaptive.make_policy(adaptive.CostProfile(COSTS), 4, switch_margin=0.08)
  speed = np.asarray(adaptive.expected_speed(jnp.float32(0.6), jnp.asarray(COSTS)))
  assert speed[2] / speed[1] < 1.08           # γ=2 is better, but by less than the margin
  assert _choose(policy, 0.6, gamma=1) == 1
  assert _choose(policy, 0.6, gamma=0) == 2   # plain steps are 30% worse: leave them


def test_probes_after_plain_steps_and_backs_off():
  policy = adaptive.make_policy(adaptive.CostProfile(COSTS), 4, probe_every=3)
  state = _state(policy, 0.05)
  gammas = []
  for _ in range(40):
    gamma = int(state.gamma)
    gammas.append(gamma)
    # A probe that verifies one rejected position leaves the estimate low.
    state = adaptive.update(policy, state, gamma, 64, 0.0, 1 if gamma else 0)
  probes = [i for i, g in enumerate(gammas) if g]
  # 3, then 6, then 12 plain steps before each probe at γ = 1 (then 24, the cap of 8 x 3).
  assert probes == [3, 10, 23]
  assert all(gammas[i] == 1 for i in probes)


def test_forced_gamma_and_no_probes():
  forced = adaptive.make_policy(adaptive.CostProfile(COSTS), 4, forced_gamma=3)
  assert _choose(forced, 0.0) == 3 and _choose(forced, 0.99) == 3
  quiet = adaptive.make_policy(adaptive.CostProfile(COSTS), 4, probe_every=0)
  assert _choose(quiet, 0.05, zero_run=1000) == 0


def test_the_estimate_forgets_old_positions():
  policy = adaptive.make_policy(adaptive.CostProfile(COSTS), 4, alpha_prior=0.5,
                                prior_weight=4.0, memory=8.0)
  state = adaptive.init_state(policy, 64)
  assert float(adaptive.alpha_estimate(state)) == pytest.approx(0.5)
  for _ in range(20):
    state = adaptive.update(policy, state, 2, 64, 2.0, 2)  # every verified position agrees
  assert float(adaptive.alpha_estimate(state)) > 0.99
  state = adaptive.update(policy, state, 0, 64)            # a plain step changes nothing
  assert float(adaptive.alpha_estimate(state)) > 0.99


def test_profile_checks_and_round_trip(tmp_path):
  with pytest.raises(ValueError, match='at least γ = 1'):
    adaptive.CostProfile((1.0,))
  with pytest.raises(ValueError, match='finite and > 0'):
    adaptive.CostProfile((1.0, 0.0))
  profile = adaptive.CostProfile.from_theory(0.1, [1.0, 1.2, 1.4])
  np.testing.assert_allclose(profile.iteration_cost, [1.0, 1.3, 1.6])
  with pytest.raises(ValueError, match='start_cost'):
    adaptive.CostProfile(COSTS, start_cost=-1.0)
  with pytest.raises(ValueError, match='alpha must be'):
    adaptive.CostProfile(COSTS, alpha=1.5)
  with pytest.raises(ValueError, match='alpha_positions'):
    adaptive.CostProfile(COSTS, alpha=0.5, alpha_positions=-1.0)
  measured = adaptive.CostProfile(COSTS, key='models-a', details={'rounds': 3}, start_cost=2.5,
                                  alpha=0.4, alpha_positions=90.0)
  measured.save(tmp_path / 'p.json')
  assert adaptive.CostProfile.load(tmp_path / 'p.json') == measured
  # A file from before α was measured reads as one without α.
  (tmp_path / 'old.json').write_text(
      json.dumps({'format': adaptive.PROFILE_FORMAT, 'iteration_cost': [1, 2], 'key': None}))
  assert adaptive.CostProfile.load(tmp_path / 'old.json').alpha is None
  (tmp_path / 'other.json').write_text('{"iteration_cost": [1, 2]}')
  with pytest.raises(ValueError, match='not a cost profile'):
    adaptive.CostProfile.load(tmp_path / 'other.json')
  with pytest.raises(ValueError, match='cannot read'):
    adaptive.CostProfile.load(tmp_path / 'missing.json')
  with pytest.raises(ValueError, match='covers γ ≤ 4 but max_gamma is 6'):
    measured.check_fits(6, 'models-a')
  with pytest.raises(ValueError, match='other models or shapes'):
    measured.check_fits(4, 'models-b')
  measured.check_fits(3, 'models-a')


def test_policy_settings_are_checked():
  profile = adaptive.CostProfile(COSTS)
  for bad in (dict(alpha_prior=1.0), dict(memory=0.0), dict(probe_every=-1),
              dict(forced_gamma=5), dict(switch_margin=1.5)):
    with pytest.raises(ValueError):
      adaptive.make_policy(profile, 4, **bad)


def test_measured_costs_are_made_non_decreasing():
  assert calibration.monotone_costs([1.0, 1.6, 1.5, 1.9, 1.7, 2.3]) == pytest.approx(
      [1.0, 1.55, 1.55, 1.8, 1.8, 2.3])
  assert calibration.monotone_costs([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]


def test_carried_alpha_continues_the_running_estimate():
  settings = dict(alpha_prior=0.5, prior_weight=4.0, memory=32.0, switch_margin=0.05)
  # Nothing verified (the request stayed at γ = 0): the prior is kept.
  assert adaptive.carry_alpha(np.zeros(3), np.zeros(3, int), settings) == settings
  # A few positions move it part of the way, weighted as the loop weighs them.
  few = adaptive.carry_alpha(np.array([0.1, 0.1]), np.array([2, 2]), settings)
  keep = (1 - 1 / 32) ** 4
  weight = 4 * keep + 32 * (1 - keep)
  assert few['prior_weight'] == pytest.approx(weight)
  assert few['alpha_prior'] == pytest.approx((2 * keep + 0.1 * 32 * (1 - keep)) / weight)
  assert few['switch_margin'] == 0.05  # other settings pass through
  # Many positions: the request's pooled mean (rows weighted by their counts), weight -> memory.
  many = adaptive.carry_alpha(np.array([0.2, 0.6]), np.array([3000, 1000]), few)
  assert many['alpha_prior'] == pytest.approx(0.3, abs=1e-6)
  assert many['prior_weight'] == pytest.approx(32.0)
  # A draft that always agrees still gives a prior make_policy takes.
  perfect = adaptive.carry_alpha(np.ones(2), np.array([500, 500]))
  assert 0.999 < perfect['alpha_prior'] < 1.0
  adaptive.make_policy(adaptive.CostProfile(COSTS), 4, **perfect)


def test_speculating_from_plain_steps_must_win_back_the_start():
  """A start of 6 plain steps: worth paying with 200 positions left, not with 12."""
  profile = adaptive.CostProfile(COSTS, start_cost=6.0)
  policy = adaptive.make_policy(profile, 4)
  long, short = _state(policy, 0.6), _state(policy, 0.6).replace(remaining=jnp.float32(12))
  assert int(adaptive.choose_gamma(policy, long.replace(remaining=jnp.float32(200)))) == 2
  assert int(adaptive.choose_gamma(policy, short)) == 0
  # Once speculating, the start is paid: the short horizon no longer holds γ back.
  assert int(adaptive.choose_gamma(policy, short.replace(gamma=jnp.int32(2)))) == 2
  # The effective speed is tokens over time, the start included: 12 / (6 + 12 / s).
  speed = np.asarray(adaptive.expected_speed(jnp.float32(0.6), jnp.asarray(COSTS)))
  paid = np.asarray(adaptive._effective_speed(jnp.asarray(speed), jnp.float32(6.0),
                                              jnp.float32(12.0)))
  np.testing.assert_allclose(paid[1:], 12 / (6 + 12 / speed[1:]), rtol=1e-5)
  assert paid[0] == speed[0] == 1.0
  # stays_plain (NumPy, before the loop) agrees with the loop's first choice.
  assert adaptive.stays_plain(profile, 4, 12) and not adaptive.stays_plain(profile, 4, 200,
                                                                          alpha_prior=0.6)


def test_profile_prior_starts_requests_from_the_measured_alpha():
  # Costs at which the bare prior α = 0.5 speculates but a measured α = 0.2 does not.
  costs = (1.0, 1.3, 1.6, 1.9, 2.2)
  assert not adaptive.stays_plain(adaptive.CostProfile(costs), 4, 64)
  measured = adaptive.CostProfile(costs, alpha=0.2, alpha_positions=500.0)
  settings = adaptive.profile_prior(measured)
  assert settings['alpha_prior'] == pytest.approx(0.2)
  assert settings['prior_weight'] == 32.0  # at most `memory` positions
  assert adaptive.stays_plain(measured, 4, 64, **settings)
  assert adaptive.profile_prior(measured, {'memory': 8.0})['prior_weight'] == 8.0
  few = adaptive.CostProfile(costs, alpha=0.9, alpha_positions=3.0)
  assert adaptive.profile_prior(few)['prior_weight'] == 3.0
  assert not adaptive.stays_plain(few, 4, 64, **adaptive.profile_prior(few))
  # A prior the caller gives wins; a profile without α leaves the settings alone.
  assert adaptive.profile_prior(measured, {'alpha_prior': 0.7}) == {'alpha_prior': 0.7}
  assert adaptive.profile_prior(adaptive.CostProfile(costs), {'memory': 8.0}) == {'memory': 8.0}
  # A draft that always agreed measures α = 1, which make_policy takes just below 1.
  always = adaptive.CostProfile(costs, alpha=1.0, alpha_positions=40.0)
  adaptive.make_policy(always, 4, **adaptive.profile_prior(always))
