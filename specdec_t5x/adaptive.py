"""`gamma='auto'`: γ chosen every iteration, inside the jitted loop, from measured α and costs.

Speculation pays only when the draft agrees often enough for what a draft
token and a wider verification call cost, and both change with the request,
the batch size and the hardware. With `gamma='auto'` the loop picks, before
each iteration, the γ in {0, ..., max_gamma} that maximises the expected
tokens per unit of time,

    speed(γ) = E[tokens | α, γ] / cost(γ),   E = 1 + α + ... + α^γ,

where γ = 0 is one plain target step (speed 1, the autoregressive loop), α is
a running estimate of the acceptance rate over the verified positions of the
request so far (all rows pooled: one γ serves the whole batch), and `cost(γ)`
is one loop iteration at γ over one at γ = 0, from a cost profile
(`specdec_t5x.calibration`: measured on the loop itself, or built from c and
the scoring-cost curve with `CostProfile.from_theory`). Leaving γ = 0 (and
so starting to speculate) also pays the profile's `start_cost` once, the
draft's first use: it is worth it only if the tokens left can win it back,
so from γ = 0 a γ > 0 counts at speed(γ) / (1 + speed(γ)·start_cost / H),
with H the positions the longest-running row may still emit.

The estimate starts from a prior (`alpha_prior`, worth `prior_weight`
verified positions): by default the α the calibration measured for these
models (`profile_prior`), else 0.5 worth 4 positions. It forgets old
positions at rate `1 / memory`. While γ is 0 nothing is verified, so the
estimate cannot move: with `probe_every` > 0, after that many iterations at
γ = 0 the loop spends one iteration at γ = 1 to look again, and each probe
that does not change its mind doubles the wait. Probes are off by default:
on the CPU family a probe (the draft's first use in the request, its
catching up, one γ = 1 iteration) cost ~3 target steps, 7% of a 25-token
request that then stayed at γ = 0 (measured 2026-12-02); a request that
starts at γ = 0 stays there. A caller that decodes many requests carries the
estimate from one to the next with `carry_alpha`. The
current γ is kept unless another is expected to be `switch_margin` faster.

Outputs stay exact whatever γ is chosen: speculative sampling returns the
target's distribution for any γ, and here γ depends only on the past.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from specdec_t5x.cost_profile import PROFILE_FORMAT, CostProfile, below_one, prior_settings

Array = jax.Array

__all__ = ['AUTO', 'PROFILE_FORMAT', 'AutoGamma', 'CostProfile', 'PolicyState', 'alpha_estimate',
           'cached_policy', 'carry_alpha', 'choose_gamma', 'expected_speed', 'init_state',
           'keep_going', 'make_policy', 'pooled_beta', 'profile_prior', 'stays_plain', 'update']

# The value of `gamma` that asks for the automatic choice.
AUTO = 'auto'
DEFAULT_MAX_GAMMA = 8
# Probes at γ = 0 come at most this many times `probe_every` plain steps apart.
MAX_PROBE_BACKOFF = 8


@struct.dataclass
class AutoGamma:
  """The policy's settings, traced (a new profile or prior needs no recompilation).

  `forced_gamma >= 0` pins γ (calibration measures each γ this way) and
  `run_past_done` keeps iterating after every row has finished, up to
  `max_iterations`, so that a measurement has a fixed number of iterations.
  """

  iteration_cost: Array  # [max_gamma + 1] float32
  start_cost: Array      # [] float32, in plain steps (`CostProfile.start_cost`)
  alpha_prior: Array     # [] float32
  prior_weight: Array    # [] float32, in verified positions
  memory: Array          # [] float32, in verified positions
  probe_every: Array     # [] int32; 0 never probes
  switch_margin: Array   # [] float32: keep the current γ unless another is this much faster
  forced_gamma: Array    # [] int32; -1 chooses
  max_iterations: Array  # [] int32
  run_past_done: Array   # [] bool

  @property
  def max_gamma(self) -> int:
    return self.iteration_cost.shape[0] - 1


def make_policy(profile: CostProfile, max_gamma: int, *, alpha_prior: float = 0.5,
                prior_weight: float = 4.0, memory: float = 32.0, probe_every: int = 0,
                switch_margin: float = 0.03, forced_gamma: int = -1, max_iterations: int = 2**30,
                run_past_done: bool = False) -> AutoGamma:
  """An `AutoGamma` over γ ∈ {0..max_gamma}, checked; see the module docstring for the knobs."""
  if not 0.0 <= alpha_prior < 1.0:
    raise ValueError(f'alpha_prior must be in [0, 1), got {alpha_prior!r}')
  if prior_weight <= 0 or memory <= 0:
    raise ValueError(f'prior_weight and memory must be > 0, got {prior_weight!r}, {memory!r}')
  if not 0.0 <= switch_margin < 1.0:
    raise ValueError(f'switch_margin must be in [0, 1), got {switch_margin!r}')
  if int(probe_every) != probe_every or probe_every < 0:
    raise ValueError(f'probe_every must be an integer >= 0, got {probe_every!r}')
  if not -1 <= forced_gamma <= max_gamma:
    raise ValueError(f'forced_gamma must be -1 (choose) or in [0, {max_gamma}], got '
                     f'{forced_gamma!r}')
  # NumPy first, so that a policy made while a function is traced holds no tracer.
  costs = np.asarray(profile.iteration_cost[:max_gamma + 1], np.float32)
  return AutoGamma(
      iteration_cost=jnp.asarray(costs / costs[0]),
      start_cost=jnp.float32(profile.start_cost), alpha_prior=jnp.float32(alpha_prior),
      prior_weight=jnp.float32(prior_weight), memory=jnp.float32(memory),
      probe_every=jnp.int32(probe_every), switch_margin=jnp.float32(switch_margin),
      forced_gamma=jnp.int32(forced_gamma),
      max_iterations=jnp.int32(max_iterations), run_past_done=jnp.bool_(run_past_done))


_POLICY_DEFAULTS = {name: parameter.default
                    for name, parameter in inspect.signature(make_policy).parameters.items()
                    if parameter.default is not inspect.Parameter.empty}


@functools.lru_cache(maxsize=64)
def _cached_policy(iteration_cost: tuple[float, ...], start_cost: float, max_gamma: int,
                   settings: tuple[tuple[str, Any], ...]) -> AutoGamma:
  return make_policy(CostProfile(iteration_cost, start_cost=start_cost), max_gamma,
                     **dict(settings))


def cached_policy(profile: CostProfile, max_gamma: int, **settings: Any) -> AutoGamma:
  """`make_policy`, built once per (costs, max_gamma, settings): its arrays stay on the device.

  Building the eight scalars anew costs ~0.3 ms a call on CPU, ~1% of a short request.
  """
  return _cached_policy(profile.iteration_cost, profile.start_cost, max_gamma,
                        tuple(sorted(settings.items())))


def _effective_speed(speed: Any, start_cost: Any, remaining: Any) -> Any:
  """`speed [G + 1]` from γ = 0: a γ > 0 pays `start_cost` once over `remaining` positions.

  `remaining` tokens take `remaining / speed` plain steps speculating, plus
  the start: the speed over both is `speed / (1 + speed·start_cost/remaining)`.
  (NumPy or jnp alike: `_stays_plain` runs it in NumPy, the loop in jnp.)
  """
  paid = speed / (1.0 + speed * start_cost / (remaining + 1e-6))
  speculates = np.arange(speed.shape[0]) > 0  # [G + 1]: γ > 0
  return paid * speculates + speed * ~speculates


@functools.lru_cache(maxsize=64)
def _stays_plain(iteration_cost: tuple[float, ...], start_cost: float, max_gamma: int,
                 max_decode_len: int, settings: tuple[tuple[str, Any], ...]) -> bool:
  _cached_policy(iteration_cost, start_cost, max_gamma, settings)  # checks the settings
  # In NumPy (the arithmetic of `init_state`'s first choice): this may run under a trace.
  options = {**_POLICY_DEFAULTS, **dict(settings)}
  if options['forced_gamma'] >= 0:
    return options['forced_gamma'] == 0 and not options['run_past_done']
  if options['probe_every']:
    return False
  costs = np.asarray(iteration_cost[:max_gamma + 1], np.float32)
  powers = np.float32(options['alpha_prior']) ** np.arange(costs.size, dtype=np.float32)
  speed = _effective_speed(np.cumsum(powers) / (costs / costs[0]), np.float32(start_cost),
                           np.float32(max_decode_len))
  return bool(speed[0] * (1.0 + options['switch_margin']) >= speed.max())


def stays_plain(profile: CostProfile, max_gamma: int, max_decode_len: int,
                **settings: Any) -> bool:
  """Whether the policy picks γ = 0 first and can never leave it (no probes, α frozen).

  Then the whole request is plain target steps: the autoregressive loop, which
  `decoding.speculative_decode` runs instead (the same program, so the same
  speed as the baseline).
  """
  return _stays_plain(profile.iteration_cost, profile.start_cost, max_gamma, max_decode_len,
                      tuple(sorted(settings.items())))


def profile_prior(profile: CostProfile, settings: Mapping[str, Any] | None = None,
                  ) -> dict[str, Any]:
  """`settings` whose prior is the profile's measured α, unless they give one (`prior_settings`)."""
  return prior_settings(profile, settings or {}, _POLICY_DEFAULTS['memory'])


def pooled_beta(beta_mean: Any, beta_count: Any) -> tuple[float | None, float]:
  """`(α, positions)`: the mean β over a request's verified positions (None if it verified none).

  Args:
    beta_mean, beta_count: `[B]` each, from the request's `SpeculativeOutput`.
  """
  count = np.asarray(beta_count, np.float64)
  positions = float(count.sum())
  if not positions:
    return None, 0.0
  return float(np.sum(np.asarray(beta_mean, np.float64) * count)) / positions, positions


def carry_alpha(beta_mean: Any, beta_count: Any, settings: Mapping[str, Any] | None = None,
                ) -> dict[str, Any]:
  """`settings` for the next request: its prior is this request's running estimate of α.

  The estimate continues as the loop keeps it: the prior (`alpha_prior`,
  worth `prior_weight` positions) decays by `1 - 1/memory` per verified
  position, and the request's n positions (each row's `beta_mean` over its
  `beta_count`) join with their decayed weight, `memory·(1 - (1 - 1/memory)^n)`,
  at their pooled mean (the loop weighs its latest positions a little more;
  the outputs do not say which those were). The weight tends to `memory`.
  A request with no verified positions (it stayed at γ = 0) leaves
  the prior as it was.

  Args:
    beta_mean, beta_count: `[B]` each, from the request's `SpeculativeOutput`.
    settings: the request's `auto_settings` (None: the defaults).

  Returns:
    `settings` with `alpha_prior` and `prior_weight` replaced.
  """
  options = {**_POLICY_DEFAULTS, **(settings or {})}
  request_alpha, positions = pooled_beta(beta_mean, beta_count)
  if request_alpha is None:
    return dict(settings or {})
  memory, prior_weight = float(options['memory']), float(options['prior_weight'])
  keep = (1.0 - 1.0 / memory) ** positions
  request_weight = memory * (1.0 - keep)
  weight = keep * prior_weight + request_weight
  alpha = (keep * prior_weight * float(options['alpha_prior'])
           + request_weight * request_alpha) / weight
  return {**(settings or {}), 'alpha_prior': below_one(alpha), 'prior_weight': float(weight)}


@struct.dataclass
class PolicyState:
  """The running estimate of α and the loop's position, carried by the loop."""

  beta_sum: Array    # [] float32: decayed Σβ, prior included
  beta_weight: Array  # [] float32: decayed count of verified positions, prior included
  zero_run: Array    # [] int32: consecutive iterations at γ = 0
  probe_interval: Array  # [] int32: plain steps before the next probe
  steps: Array       # [] int32: iterations so far
  remaining: Array   # [] float32: positions the longest-running row may still emit
  gamma: Array       # [] int32: the γ of the next iteration (`choose_gamma`)


def init_state(policy: AutoGamma, max_decode_len: int) -> PolicyState:
  state = PolicyState(beta_sum=policy.alpha_prior * policy.prior_weight,
                      beta_weight=policy.prior_weight, zero_run=jnp.int32(0),
                      probe_interval=policy.probe_every, steps=jnp.int32(0),
                      remaining=jnp.float32(max_decode_len), gamma=jnp.int32(0))
  return state.replace(gamma=choose_gamma(policy, state))


def alpha_estimate(state: PolicyState) -> Array:
  return state.beta_sum / state.beta_weight


def expected_speed(alpha: Array, iteration_cost: Array) -> Array:
  """`[max_gamma + 1]` tokens per plain-step time at each γ: (1 + α + ... + α^γ) / cost(γ)."""
  powers = alpha ** jnp.arange(iteration_cost.shape[0], dtype=jnp.float32)
  return jnp.cumsum(powers) / iteration_cost


def _decide(policy: AutoGamma, state: PolicyState) -> tuple[Array, Array, Array]:
  """`(gamma, best, probe)`: the next γ, the fastest by the estimate, whether γ is a probe."""
  speed = expected_speed(alpha_estimate(state), policy.iteration_cost)
  # From γ = 0 (also at the start) speculating first pays the draft's start.
  speed = jnp.where(state.gamma == 0,
                    _effective_speed(speed, policy.start_cost, state.remaining), speed)
  best = jnp.argmax(speed).astype(jnp.int32)
  best = jnp.where(speed[state.gamma] * (1.0 + policy.switch_margin) >= speed[best],
                   state.gamma, best)
  probe = (policy.probe_every > 0) & (best == 0) & (state.zero_run >= state.probe_interval)
  gamma = jnp.where(probe, jnp.minimum(1, policy.max_gamma), best)
  return (jnp.where(policy.forced_gamma >= 0, policy.forced_gamma, gamma).astype(jnp.int32),
          best, probe)


def choose_gamma(policy: AutoGamma, state: PolicyState) -> Array:
  """The γ of the next iteration `[]` int32: the fastest one, a probe, or the forced one.

  The current γ (`state.gamma`) stays unless another is expected to be more
  than `switch_margin` faster: every change of γ costs the loop a copy of
  its state (`speculative_loop.auto_segment`), and the estimate is noisy.
  Probes back off: each doubles the plain steps before the next (up to
  `MAX_PROBE_BACKOFF` times `probe_every`) until the estimate itself picks
  a γ > 0 again.
  """
  return _decide(policy, state)[0]


def update(policy: AutoGamma, state: PolicyState, gamma: int, remaining: Array,
           beta_sum: Array | float = 0.0, beta_count: Array | int = 0) -> PolicyState:
  """Folds an iteration at `gamma` in (`beta_sum`, `beta_count`: batch totals); picks the next γ.

  `remaining []` is how many positions the longest-running row may still emit.

  The choice is made here, in the loop's body, and read by its condition: a
  condition that computes it costs XLA:CPU ~0.08 ms per iteration (measured
  on cpu_target, 2026-12-02), a body that does ~nothing.
  """
  count = jnp.asarray(beta_count, jnp.float32)
  keep = (1.0 - 1.0 / policy.memory) ** count
  new = PolicyState(beta_sum=keep * state.beta_sum + beta_sum,
                    beta_weight=keep * state.beta_weight + count,
                    zero_run=state.zero_run + 1 if gamma == 0 else jnp.int32(0),
                    probe_interval=state.probe_interval, steps=state.steps + 1,
                    remaining=jnp.asarray(remaining, jnp.float32), gamma=state.gamma)
  choice, best, probe = _decide(policy, new)
  backed_off = jnp.minimum(2 * new.probe_interval, MAX_PROBE_BACKOFF * policy.probe_every)
  interval = jnp.where(probe, backed_off, jnp.where(best > 0, policy.probe_every,
                                                    new.probe_interval))
  return new.replace(gamma=choice, probe_interval=interval)


def keep_going(policy: AutoGamma, state: PolicyState, all_done: Array) -> Array:
  """The loop's condition: rows left (or `run_past_done`) and fewer than `max_iterations`."""
  return (~all_done | policy.run_past_done) & (state.steps < policy.max_iterations)
