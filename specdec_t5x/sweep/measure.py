"""One cell's measurement: speculative against autoregressive decoding, α, c, scoring, theory.

A cell decodes its inputs batch by batch with the jitted `speculative_decode`
and the jitted `autoregressive_decode`, interleaved (which goes first
alternates), after compilation and warm-up; then `bench.timing.step_costs`
times one target step, one scoring call and one proposal on its first batch.
`summarize_cell` turns the per-batch figures into the record the store keeps.
An auto cell measures its cost profile first and carries α from batch to
batch (`_carry_alpha_over`), as a caller decoding a stream of requests would.

Each batch's inputs keep their padding only up to its longest row, rounded up
to `INPUT_LENGTH_QUANTUM` (a few compiled programs per cell), as a server
bucketing requests by length would: padded to the longest of all the cell's
inputs, a 16-token input was encoded at 96 (EnDe) or 208 (summarisation)
positions, and that encoder pass, the same in both decoders, cost up to 6
target steps of a request that emits 8 to 30 tokens.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specdec_t5x import adaptive, calibration, decoding, theory
from specdec_t5x import sampling as sampling_lib
from specdec_t5x.bench import timing
from specdec_t5x.drafters import registry
from specdec_t5x.sweep import loading
from specdec_t5x.sweep.cells import Cell
from specdec_t5x.sweep.config import EOS_ID, max_gamma
from specdec_t5x.sweep.loading import LoadedModel, SweepContext

# The per-batch figures of a cell (`record['per_batch']`).
ROW_NAMES = ('autoregressive_s', 'speculative_s', 'autoregressive_tokens', 'speculative_tokens',
             'iterations', 'draft_iterations', 'accepted', 'beta_sum', 'beta_weight',
             'beta_count', 'mismatched_rows')

# An auto cell's iterations at each γ per batch (`SpeculativeOutput.gamma_iterations`).
AUTO_ROW_NAMES = ('gamma_iterations',)

Run = Callable[[int], tuple[float, Any]]  # batch index -> (seconds, decoder output)

# A batch's inputs are cut to its longest row rounded up to a multiple of this.
INPUT_LENGTH_QUANTUM = 32


def _decode_rng(seed: int, index: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def _decoder_runs(cell: Cell, context: SweepContext, target: LoadedModel, drafter: Any,
                  batches: Sequence[np.ndarray], profile: adaptive.CostProfile | None = None,
                  auto_settings: Sequence[Mapping[str, Any]] = ()) -> tuple[Run, Run]:
  """Timed calls of both decoders on batch `index` of `batches` (each `[B, L_i]`).

  An auto cell decodes batch `index` with `auto_settings[index]` (read at
  call time), or the defaults past its end.
  """
  config = context.config
  common = dict(max_decode_len=config.tasks[cell.task].max_decode_len, eos_id=EOS_ID,
                temperature=cell.temperature, top_k=config.top_k, top_p=config.top_p)
  auto = dict(max_gamma=cell.max_gamma, cost_profile=profile) if cell.is_auto else {}
  # Made before any timing: an eager fold_in costs ~0.3 ms, which would be timed into both
  # decoders and pull a short request's ratio towards 1.
  rngs = [_decode_rng(config.seed, index) for index in range(len(batches))]

  def settings(index: int) -> dict[str, Any]:
    if not cell.is_auto:
      return {}
    return {'auto_settings': auto_settings[index] if index < len(auto_settings) else {}}

  def autoregressive(index: int) -> tuple[float, Any]:
    return timing.timed(lambda: decoding.autoregressive_decode(
        target.module, target.params, batches[index], rng=rngs[index],
        **common))

  def speculative(index: int) -> tuple[float, Any]:
    return timing.timed(lambda: decoding.speculative_decode(
        target.module, target.params, drafter, batches[index], gamma=cell.gamma,
        rng=rngs[index], **auto, **settings(index), **common))

  return autoregressive, speculative


def _carry_alpha_over(cell: Cell, speculative: Run, auto_settings: list[dict[str, Any]],
                      profile: adaptive.CostProfile) -> None:
  """Fills `auto_settings` (one per batch) as a caller decoding the batches in turn would.

  Batch i's prior is the running estimate of α after batches 0..i-1
  (`adaptive.carry_alpha`), from one untimed pass in order; batch 0 starts
  from the α the calibration measured on its own inputs
  (`adaptive.profile_prior`). The estimate never sees the batch it is used on.
  """
  auto_settings[:] = [adaptive.profile_prior(profile)]
  for index in range(cell.num_batches - 1):
    _, out = speculative(index)
    auto_settings.append(adaptive.carry_alpha(out.beta_mean, out.beta_count,
                                              auto_settings[index]))


def add_batch(rows: dict[str, list], ar_s: float, ar: decoding.DecodeOutput, spec_s: float,
              spec: decoding.SpeculativeOutput, greedy: bool) -> None:
  """Appends one batch's figures to `rows` (lists keyed by `ROW_NAMES`).

  Args:
    rows: the cell's per-batch figures so far.
    ar_s, ar: the autoregressive decode's seconds and output (`[B, T]` tokens).
    spec_s, spec: the speculative decode's, on the same batch.
    greedy: temperature 0, where both outputs must agree token for token.
  """
  beta_count = np.asarray(spec.beta_count)
  rows['autoregressive_s'].append(ar_s)
  rows['speculative_s'].append(spec_s)
  rows['autoregressive_tokens'].append(int(np.sum(ar.lengths)))
  rows['speculative_tokens'].append(int(np.sum(spec.lengths)))
  rows['iterations'].append(int(np.sum(spec.iterations)))
  rows['draft_iterations'].append(int(np.sum(spec.draft_iterations)))
  rows['accepted'].append(int(np.sum(spec.accepted)))
  # Each row's beta_mean is over its beta_count verified positions: weight it by them.
  rows['beta_sum'].append(float(np.sum(np.asarray(spec.beta_mean) * beta_count)))
  # 'beta_weight' is what 'beta_sum' is weighted by; records before beta_count existed have
  # accepted + iterations there, and no 'beta_count' (see `pooled_alpha`).
  rows['beta_weight'].append(int(beta_count.sum()))
  rows['beta_count'].append(int(beta_count.sum()))
  if greedy:
    same = np.all(np.asarray(ar.tokens) == np.asarray(spec.tokens), axis=1)
    rows['mismatched_rows'].append(int((~same).sum()))
  if 'gamma_iterations' in rows:
    rows['gamma_iterations'].append(np.asarray(spec.gamma_iterations).sum(axis=0).tolist())


def _interleaved(cell: Cell, autoregressive: Run, speculative: Run,
                 min_samples: int = 1) -> dict[str, list]:
  """Both decoders on every batch, in passes until there are `min_samples` pairs.

  Which decoder goes first alternates from batch to batch and pass to pass, so
  drifting load hits both. Greedy outputs are compared in the first pass.
  """
  rows: dict[str, list] = {name: [] for name in ROW_NAMES + AUTO_ROW_NAMES * cell.is_auto}
  passes = -(-min_samples // cell.num_batches)
  for pass_index in range(passes):
    for index in range(cell.num_batches):
      if (index + pass_index) % 2 == 0:
        ar_s, ar = autoregressive(index)
        spec_s, spec = speculative(index)
      else:
        spec_s, spec = speculative(index)
        ar_s, ar = autoregressive(index)
      add_batch(rows, ar_s, ar, spec_s, spec,
                greedy=cell.temperature == 0.0 and pass_index == 0)
  return rows


def _cell_profile(cell: Cell, context: SweepContext, target: LoadedModel, drafter: Any,
                  length: int) -> tuple[adaptive.CostProfile, float]:
  """An auto cell's cost profile, and the seconds it took.

  It is measured on a batch of the cell's shape from inputs no cell times
  (`SweepContext.calibration_inputs`), as a user calibrates before serving,
  at the width of its widest inputs, and serves every input width of the
  cell (its key, which names one width, is dropped): the iteration costs are
  differences of runs that cancel the encoder pass, the only part that
  grows with the input.
  """
  config = context.config
  batch = context.calibration_inputs(cell.task, cell.batch, length)
  started = time.perf_counter()
  profile = calibration.measure_profile(
      target.module, target.params, drafter, jnp.asarray(batch), max_gamma=cell.max_gamma,
      max_decode_len=config.tasks[cell.task].max_decode_len,
      sampling=sampling_lib.make_sampling_config(cell.temperature, config.top_k, config.top_p),
      seed=config.seed, eos_id=EOS_ID)
  return dataclasses.replace(profile, key=None), time.perf_counter() - started


def _step_costs(cell: Cell, context: SweepContext, target: LoadedModel, drafter: Any,
                batch: np.ndarray, first: Any) -> dict[str, Any]:
  config = context.config
  task = config.tasks[cell.task]
  return timing.step_costs(
      target.module, target.params, drafter, batch, np.asarray(first.tokens),
      gamma=cell.gamma,
      sampling=sampling_lib.make_sampling_config(cell.temperature, config.top_k, config.top_p),
      max_decode_len=task.max_decode_len,
      # Room for γ+1 positions and as many look-ahead ones (see `registry.for_gamma`).
      cache_length=task.max_decode_len + 2 * max_gamma(config) + 1,
      rounds=config.timing.step_rounds, sample_ms=config.timing.step_sample_ms,
      prefix=config.timing.step_prefix, seed=config.seed)


def measure_cell(cell: Cell, context: SweepContext) -> dict[str, Any]:
  """Runs one cell: speculative vs autoregressive on the same inputs, α, c, scoring, theory.

  An auto cell first measures its cost profile and prior α on a batch of
  untimed inputs (after compiling, before any timed decode) and has no step
  costs or theory.

  Returns the record (JSON-able) that `CellStore` keeps; see `specdec_t5x.sweep`.
  """
  config = context.config
  task = config.tasks[cell.task]
  target = context.target(cell.task)
  drafter = registry.for_gamma(context.drafter(cell.draft, cell.task),
                               cell.max_gamma if cell.is_auto else cell.gamma)
  inputs = context.inputs(cell.task, cell.num_inputs)
  batches = [loading.trim_padding(batch, INPUT_LENGTH_QUANTUM)
             for batch in inputs.reshape(cell.num_batches, cell.batch, inputs.shape[1])]
  started = time.perf_counter()
  profile, calibration_s = (_cell_profile(cell, context, target, drafter, inputs.shape[1])
                            if cell.is_auto else (None, None))
  auto_settings: list[dict[str, Any]] = []
  autoregressive, speculative = _decoder_runs(cell, context, target, drafter, batches, profile,
                                              auto_settings)
  # The first call compiles (or loads from the persistent cache); then warm up.
  first_autoregressive_s, first = autoregressive(0)
  first_speculative_s, _ = speculative(0)
  if cell.is_auto:
    _carry_alpha_over(cell, speculative, auto_settings, profile)
  for _ in range(config.timing.warmup_runs):
    autoregressive(0)
    speculative(0)
  for index in _first_of_each_width(batches)[1:]:  # compiles the other input widths
    autoregressive(index)
    speculative(index)
  rows = _interleaved(cell, autoregressive, speculative, config.timing.min_samples)
  step_costs = ({} if cell.is_auto
                else _step_costs(cell, context, target, drafter, batches[0], first))
  record = summarize_cell(cell, rows, step_costs)
  record.update(
      first_call_s={'autoregressive': first_autoregressive_s, 'speculative': first_speculative_s},
      draft_kind=config.drafts[cell.draft].kind, target_params=target.num_params,
      draft_params=context.draft_params(cell.draft, cell.task),
      input_length=int(inputs.shape[1]), max_decode_len=task.max_decode_len,
      wall_s=time.perf_counter() - started)
  if cell.is_auto:
    record.update(cost_profile=profile.to_json(), calibration_s=calibration_s,
                  alpha_priors=[settings.get('alpha_prior') for settings in auto_settings])
  return record


def _first_of_each_width(batches: Sequence[np.ndarray]) -> list[int]:
  """The index of the first batch of each input width, in order."""
  first: dict[int, int] = {}
  for index, batch in enumerate(batches):
    first.setdefault(batch.shape[-1], index)
  return list(first.values())


def pooled_alpha(rows: Mapping[str, Sequence[Any]]) -> float:
  """α (mean β) pooled over a cell's batches: Σ β over Σ verified positions.

  Records measured before `SpeculativeOutput` had `beta_count` lack the
  'beta_count' rows; their `beta_sum` was weighted by accepted + iterations (the
  'beta_weight' rows), so they pool by that old weight (which biases α low).
  """
  weights = rows['beta_count'] if 'beta_count' in rows else rows['beta_weight']
  return sum(rows['beta_sum']) / max(sum(weights), 1)


def acceptance_alpha(rows: Mapping[str, Sequence[Any]], gamma: int) -> float:
  """`theory.alpha_from_acceptance` over the iterations that verified γ draft tokens.

  A look-ahead drafter's draft-less first call accepts nothing and is not counted;
  records without 'draft_iterations' rows (older ones) count every iteration.
  """
  iterations = sum(rows['draft_iterations'] if 'draft_iterations' in rows
                   else rows['iterations'])
  return float(theory.alpha_from_acceptance(sum(rows['accepted']), max(iterations, 1), gamma))


def _gamma_summary(rows: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
  """An auto cell's iterations at each γ (summed over rows and batches) and their mean γ."""
  counts = np.sum(np.asarray(rows['gamma_iterations']), axis=0)
  return {'gamma_iterations': counts.tolist(),
          'mean_gamma': float(np.dot(np.arange(counts.size), counts) / max(counts.sum(), 1))}


def summarize_cell(cell: Cell, rows: Mapping[str, Sequence[Any]],
                   step_costs: Mapping[str, Any]) -> dict[str, Any]:
  """A cell's record from its per-batch figures and step costs (speedup, α, theory).

  An auto cell (no fixed γ) has no theory, c or scoring cost; it records how
  many iterations ran at each γ instead.
  """
  ar_rate = np.asarray(rows['autoregressive_tokens']) / np.asarray(rows['autoregressive_s'])
  spec_rate = np.asarray(rows['speculative_tokens']) / np.asarray(rows['speculative_s'])
  speedup = timing.quantiles(spec_rate / ar_rate)
  alpha_beta = pooled_alpha(rows)
  record = {
      'key': cell.key, **dataclasses.asdict(cell),
      'per_batch': {name: list(values) for name, values in rows.items()},
      'speedup': speedup['median'], 'speedup_q25': speedup['q25'],
      'speedup_q75': speedup['q75'],
      'autoregressive_tokens_per_s': float(sum(rows['autoregressive_tokens'])
                                           / sum(rows['autoregressive_s'])),
      'speculative_tokens_per_s': float(sum(rows['speculative_tokens'])
                                        / sum(rows['speculative_s'])),
      'alpha_beta': float(alpha_beta),
      'tokens_per_iteration': sum(rows['speculative_tokens']) / max(sum(rows['iterations']), 1),
      'greedy_mismatched_rows': (sum(rows['mismatched_rows']) if rows['mismatched_rows']
                                 else None),
  }
  if cell.is_auto:
    return {**record, **_gamma_summary(rows)}
  theory_paper = float(theory.walltime_improvement(alpha_beta, cell.gamma, step_costs['c']))
  theory_measured = float(theory.walltime_improvement_measured(
      alpha_beta, cell.gamma, step_costs['c'], step_costs['scoring_cost']))
  theory_request = request_theory(cell, rows, alpha_beta, step_costs)
  return {
      **record, 'alpha_acceptance': acceptance_alpha(rows, cell.gamma),
      'expected_tokens_per_iteration': float(theory.expected_tokens_per_iteration(
          alpha_beta, cell.gamma)),
      **step_costs,
      'theory_paper': theory_paper, 'theory_measured': theory_measured,
      'measured_over_theory_paper': speedup['median'] / theory_paper,
      'measured_over_theory_measured': speedup['median'] / theory_measured,
      **({'theory_request': theory_request,
          'measured_over_theory_request': speedup['median'] / theory_request}
         if theory_request is not None else {}),
  }


def request_theory(cell: Cell, rows: Mapping[str, Sequence[Any]], alpha: float,
                   step_costs: Mapping[str, Any]) -> float | None:
  """`theory.walltime_improvement_per_request` per batch (its tokens per row), median over batches.

  The median matches the measured speed's. None for records without the set-up costs.
  """
  if 'setup_steps' not in step_costs:
    return None
  steps = np.maximum(np.asarray(rows['autoregressive_tokens']) / cell.batch, 1.0)
  return float(np.median(theory.walltime_improvement_per_request(
      alpha, cell.gamma, step_costs['c'], step_costs['scoring_cost'], steps,
      step_costs['setup_steps'], step_costs['draft_setup_steps'])))
