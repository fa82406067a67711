"""Cost profiles for `gamma='auto'`: measured on the speculative loop itself, cached on disk.

A profile (`adaptive.CostProfile`) says what one iteration of the loop costs
at each γ ∈ {0..max_gamma} relative to one at γ = 0 (a plain target step).
`measure_profile` times the very program `gamma='auto'` runs, with γ pinned
(`AutoGamma.forced_gamma`) and a fixed number of iterations: the time of a
long run minus that of `SHORT_RUN` iterations, over their difference,
cancels the encoder, the cache set-up and the dispatch. A long run lasts
`SAMPLE_S` beyond a short one, and at least `LONG_OVER_SHORT` short runs: on
the CPU family at batch 16 with 208-token inputs a short run (mostly the
encoder) takes ~0.7 s and varies by tens of ms, which drowned a 40 ms
difference (γ = 1's cost ranged over 0.89-1.84 in one calibration,
2026-12-03). Rounds time every γ once in a fresh random order and the ratios
are paired within a round (the machine may be shared). The profile's
`start_cost`, the draft's first use in a request, is the draft's `init` (its
encoder and cache) timed on its own, in plain steps: as the difference of two
short runs it was the difference of two ~0.7 s times, and ranged over -7..7
steps. One more decode of the same inputs, at γ = max_gamma and ending at
EOS, measures the acceptance rate α these models reach, from which requests
start (`adaptive.profile_prior`). It takes seconds after compilation, which
the decoding call that follows reuses.

The cost depends on the models, the batch size, the encoder and decode
lengths, the sampling settings and the hardware, which make up the profile's
key (`profile_key`); `cached_profile` keeps one JSON file per key under
`$SPECDEC_CACHE_DIR/gamma_profiles/`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from specdec_t5x import adaptive, paths, speculative_loop
from specdec_t5x import drafters as drafters_lib
from specdec_t5x import sampling as sampling_lib

Array = jax.Array

SHORT_RUN = 1
SAMPLE_S = 0.04
LONG_OVER_SHORT = 1.0
MIN_LONG_RUN = 16
MIN_ITERATION_S = 5e-6
ROUNDS = 7
PROFILE_DIR = 'gamma_profiles'
# How profiles are measured; a cached profile of another method is measured again.
# 2: long runs scale with the short run, and the start is the draft's init timed alone;
# 3: and α, measured on one decode at γ = max_gamma;
# 4: the same, on decode calls whose dense layers are row products (network.cpu_products).
PROFILE_METHOD = 4
# An id no token has: the measured rows never end early.
_NO_EOS = -1


def _arrays_fingerprint(tree: Any) -> list[str]:
  leaves = jax.tree_util.tree_leaves(tree)
  return [f'{jnp.dtype(x.dtype).name}{list(np.shape(x))}' for x in leaves]


def profile_key(target_module: nn.Module, target_params: Any, drafter: Any,
                batch: int, encoder_length: int, *, max_gamma: int, max_decode_len: int,
                sampling: sampling_lib.SamplingConfig) -> str:
  """What a measured profile holds for: a readable prefix and a hash of the rest.

  The hash covers the target's config and parameter shapes, the drafter's
  type, structure and array shapes, the shapes of the call, the sampling
  settings, the backend and device kind, and the jax version.
  """
  device = jax.devices()[0]
  facts = {
      'target': repr(target_module.config), 'target_params': _arrays_fingerprint(target_params),
      'drafter': type(drafter).__name__,
      'drafter_tree': str(jax.tree_util.tree_structure(drafter)),
      'drafter_arrays': _arrays_fingerprint(drafter), 'batch': batch,
      'encoder_length': encoder_length, 'max_gamma': max_gamma,
      'max_decode_len': max_decode_len, 'sampling': repr(sampling),
      'backend': jax.default_backend(), 'device': device.device_kind, 'jax': jax.__version__,
  }
  digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
  return (f'{type(drafter).__name__}-b{batch}-L{encoder_length}-T{max_decode_len}-'
          f'G{max_gamma}-{jax.default_backend()}-{digest}')


def _seconds(fn: Any, *args: Any) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def monotone_costs(costs: list[float]) -> list[float]:
  """The non-decreasing sequence closest to `costs` in least squares (pool adjacent violators).

  An iteration at a larger γ drafts more and scores more positions, so it
  never costs less; a measured dip is noise, which would make the policy
  pick that γ.
  """
  blocks: list[list[float]] = []  # [mean, size]
  for cost in costs:
    blocks.append([cost, 1])
    while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
      (mean_a, size_a), (mean_b, size_b) = blocks.pop(-2), blocks.pop()
      blocks.append([(mean_a * size_a + mean_b * size_b) / (size_a + size_b), size_a + size_b])
  return [mean for mean, size in blocks for _ in range(int(size))]


def _long_run(run: Any, gamma: int) -> int:
  """Iterations at `gamma` that take about max(`SAMPLE_S`, `LONG_OVER_SHORT` short runs) more.

  An iteration is taken to last at least `MIN_ITERATION_S`: on tiny models the
  probe's time can drown in the short run's noise, and a near-zero estimate
  would ask for millions of iterations.
  """
  short = statistics.median(_seconds(run, gamma, SHORT_RUN) for _ in range(3))
  probe = SHORT_RUN + 4 * MIN_LONG_RUN
  per_iteration = max((_seconds(run, gamma, probe) - short) / (probe - SHORT_RUN),
                      MIN_ITERATION_S)
  extra_s = max(SAMPLE_S, LONG_OVER_SHORT * short)
  return SHORT_RUN + max(MIN_LONG_RUN, round(extra_s / per_iteration))


def _timed_rounds(run: Any, long_runs: list[int], rounds: int, seed: int,
                  init: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(short, long, init)`: `[rounds, G + 1]` seconds each γ, in shuffled order per round,
  and `[rounds]` seconds of `init()` (the draft's start), timed in the same rounds."""
  order = random.Random(seed)
  short, long = np.zeros((2, rounds, len(long_runs)))
  init_s = np.zeros(rounds)
  for index in range(rounds):
    gammas = list(range(len(long_runs)))
    order.shuffle(gammas)
    for gamma in gammas:
      short[index, gamma] = _seconds(run, gamma, SHORT_RUN)
      long[index, gamma] = _seconds(run, gamma, long_runs[gamma])
    init_s[index] = _seconds(init)
  return short, long, init_s


def _costs(short: np.ndarray, long: np.ndarray, long_runs: list[int],
           init_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(ratios [rounds, G + 1], starts [rounds])`: per round, each γ's iteration over γ = 0's,
  and the draft's start (`init_s [rounds]` seconds) in plain steps.

  Ratios are paired within a round, so load that drifts between rounds
  cancels; taking each run's fastest over the rounds instead moved γ = 1's
  cost by 0.25 between three calibrations of the same shapes, against 0.08
  for the medians of paired ratios (2026-12-02, cpu_target batch 16).
  """
  per_iteration = (long - short) / (np.asarray(long_runs) - SHORT_RUN)
  per_iteration = np.maximum(per_iteration, 1e-9)
  return per_iteration / per_iteration[:, :1], init_s / per_iteration[:, 0]


def measure_profile(target_module: nn.Module, target_params: Any, drafter: Any,
                    encoder_input_tokens: Array, *, max_gamma: int, max_decode_len: int,
                    sampling: sampling_lib.SamplingConfig, rounds: int = ROUNDS,
                    seed: int = 0, eos_id: int | Array = 1) -> adaptive.CostProfile:
  """Times the loop at each γ on `encoder_input_tokens [B, L]` (see the module docstring).

  The profile's `alpha` is the pooled β of one decode of the same inputs at
  γ = `max_gamma`, ending at `eos_id` as a request does: requests start from
  it (`adaptive.profile_prior`).
  """
  placeholder = adaptive.CostProfile((1.0,) * (max_gamma + 1))
  rng = jax.random.PRNGKey(seed)

  def decode(forced_gamma: int, iterations: int, eos: Array, past_done: bool):
    policy = adaptive.make_policy(placeholder, max_gamma, forced_gamma=forced_gamma,
                                  max_iterations=iterations, run_past_done=past_done)
    return speculative_loop.decode(target_module, target_params, drafter, encoder_input_tokens,
                                   rng, policy, gamma=None, max_decode_len=max_decode_len,
                                   sampling=sampling, eos_id=eos)

  def run(forced_gamma: int, iterations: int):
    return decode(forced_gamma, iterations, jnp.int32(_NO_EOS), True).lengths

  started = time.perf_counter()
  _seconds(run, 0, SHORT_RUN)  # compiles
  compiled_s = time.perf_counter() - started
  request = decode(max_gamma, 2**30, jnp.asarray(eos_id, jnp.int32), False)
  alpha, alpha_positions = adaptive.pooled_beta(request.beta_mean, request.beta_count)
  long_runs = [_long_run(run, gamma) for gamma in range(max_gamma + 1)]
  cache_length = speculative_loop.decode_cache_length(drafter, max_gamma, max_decode_len)
  init = lambda: drafters_lib.jitted_init(drafter, encoder_input_tokens, cache_length)
  jax.block_until_ready(init())  # compiles
  short, long, init_s = _timed_rounds(run, long_runs, rounds, seed, init)
  ratios, starts = _costs(short, long, long_runs, init_s)
  medians = np.median(ratios, axis=0).tolist()
  batch, encoder_length = encoder_input_tokens.shape
  key = profile_key(target_module, target_params, drafter, batch, encoder_length,
                    max_gamma=max_gamma, max_decode_len=max_decode_len, sampling=sampling)
  return adaptive.CostProfile(
      tuple(monotone_costs(medians)), key=key, start_cost=max(float(np.median(starts)), 0.0),
      alpha=alpha, alpha_positions=alpha_positions,
      details={'measured': datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec='seconds'),
               'method': PROFILE_METHOD, 'rounds': rounds,
               'iterations': [SHORT_RUN, long_runs],
               'compile_s': round(compiled_s, 2),
               'measure_s': round(time.perf_counter() - started - compiled_s, 2),
               'ratio_medians': [round(m, 4) for m in medians],
               'ratio_range': np.round(np.stack([ratios.min(axis=0), ratios.max(axis=0)], 1),
                                       3).tolist(),
               'start_cost_range': [round(float(starts.min()), 3),
                                    round(float(starts.max()), 3)],
               'cpu_count': os.cpu_count()})


def cached_profile(target_module: nn.Module, target_params: Any, drafter: Any,
                   encoder_input_tokens: Array, *, max_gamma: int, max_decode_len: int,
                   sampling: sampling_lib.SamplingConfig,
                   eos_id: int | Array = 1) -> adaptive.CostProfile:
  """The profile of this call's key from the cache, measured (and saved) if there is none."""
  batch, encoder_length = encoder_input_tokens.shape
  key = profile_key(target_module, target_params, drafter, batch, encoder_length,
                    max_gamma=max_gamma, max_decode_len=max_decode_len, sampling=sampling)
  path = paths.cache_dir(PROFILE_DIR) / f'{key}.json'
  if path.is_file():
    cached = adaptive.CostProfile.load(path)
    if cached.details.get('method') == PROFILE_METHOD:
      return cached
  profile = measure_profile(target_module, target_params, drafter, encoder_input_tokens,
                            max_gamma=max_gamma, max_decode_len=max_decode_len,
                            sampling=sampling, eos_id=eos_id)
  profile.save(path)
  return profile


class _Checked:
  """The last few (profile, models, shapes) `resolve_profile` checked, held by reference.

  Computing a profile's key reads every parameter's shape (~0.4 ms on CPU,
  ~1% of a short request): a decoding loop that passes the same profile and
  models again skips it. Entries keep their objects alive, so an `id` is never
  reused for another object while its entry exists.
  """

  def __init__(self, size: int = 8):
    self.size, self.entries = size, []

  def __contains__(self, item: tuple[tuple, tuple]) -> bool:
    """`item` is (objects compared by identity, values compared by equality)."""
    objects, values = item
    return any(all(a is b for a, b in zip(e_objects, objects, strict=True)) and e_values == values
               for e_objects, e_values in self.entries)

  def add(self, item: tuple[tuple, tuple]) -> None:
    self.entries = [item] + self.entries[:self.size - 1]


_CHECKED = _Checked()


def resolve_profile(cost_profile: adaptive.CostProfile | str | os.PathLike | None,
                    target_module: nn.Module, target_params: Any, drafter: Any,
                    encoder_input_tokens: Array, *, max_gamma: int, max_decode_len: int,
                    sampling: sampling_lib.SamplingConfig,
                    eos_id: int | Array = 1) -> adaptive.CostProfile:
  """The profile `speculative_decode(gamma='auto')` uses: given, read from a file, or cached.

  Raises:
    ValueError: a profile that does not cover `max_gamma` or was measured for
      other models or shapes, or a file that is not a profile.
  """
  batch, encoder_length = encoder_input_tokens.shape
  if cost_profile is None:
    if isinstance(encoder_input_tokens, jax.core.Tracer):
      raise ValueError("gamma='auto' under jit needs a cost_profile: the loop cannot be timed "
                       'while it is being traced (measure one with '
                       'specdec_t5x.calibration.cached_profile outside jit)')
    profile = cached_profile(target_module, target_params, drafter, encoder_input_tokens,
                             max_gamma=max_gamma, max_decode_len=max_decode_len,
                             sampling=sampling, eos_id=eos_id)
  elif isinstance(cost_profile, adaptive.CostProfile):
    profile = cost_profile
  else:
    profile = adaptive.CostProfile.load(cost_profile)
  checked = ((profile, target_params, drafter),
             (target_module, batch, encoder_length, max_gamma, max_decode_len, sampling))
  if checked in _CHECKED:
    return profile
  if profile.key is not None:
    key = profile_key(target_module, target_params, drafter, batch, encoder_length,
                      max_gamma=profile.max_gamma, max_decode_len=max_decode_len,
                      sampling=sampling)
    profile.check_fits(max_gamma, key)
  else:
    profile.check_fits(max_gamma, '')
  _CHECKED.add(checked)
  return profile
