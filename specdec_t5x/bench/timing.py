"""The timing harness every benchmark and the sweep use.

Three rules make CPU timings on a shared, noisy machine comparable:

* Calls are chained inside ONE jitted loop (`chained_target_calls`,
  `chained_proposals`): each call's output feeds the next, so XLA can neither
  hoist nor drop calls, and the per-call Python dispatch vanishes. The call
  count is traced, so one compiled program serves every sample length.
* A sample lasts long enough to swamp the timer (`calls_for`), and samples of
  the things compared are taken in interleaved rounds in a fresh random order
  each round (`interleaved_rounds`), so slow phases of the machine hit all of
  them alike.
* Ratios are paired within a round (`paired_ratios`): the two samples of a
  ratio saw the same load.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from specdec_t5x import cache as cache_lib
from specdec_t5x import drafters
from specdec_t5x import sampling as sampling_lib

Array = jax.Array


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """Runs `fn()` to completion (`block_until_ready`); returns (seconds, its output)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


def calls_for(run: Callable[[int], float], sample_s: float, probes: int = 3) -> int:
  """How many chained calls make one sample of `run(calls) -> seconds` last about `sample_s`.

  `run(1)` must already be compiled; the median of `probes` single calls sizes it.
  """
  one = statistics.median(run(1) for _ in range(probes))
  return max(1, round(sample_s / max(one, 1e-7)))


def interleaved_rounds(runs: Mapping[str, Callable[[], float]], rounds: int, seed: int,
                       progress: Any = None) -> dict[str, list[float]]:
  """`rounds` rounds; each runs every entry of `runs` once, in a fresh random order.

  Args:
    runs: name -> a function returning one sample (e.g. seconds per call).
    rounds: how many samples each entry gets.
    seed: seeds the orders.
    progress: optional tqdm-like object, `update()`d after every sample.

  Returns:
    name -> its samples, in round order (so sample i of two entries are paired).
  """
  order_rng = np.random.default_rng(seed)
  names = list(runs)
  samples: dict[str, list[float]] = {name: [] for name in names}
  for _ in range(rounds):
    for index in order_rng.permutation(len(names)):
      samples[names[index]].append(runs[names[index]]())
      if progress is not None:
        progress.update()
  return samples


def quantiles(values: Sequence[float]) -> dict[str, float]:
  """`{'median', 'q25', 'q75'}` of `values`."""
  array = np.asarray(values, np.float64)
  return {'median': float(np.median(array)), 'q25': float(np.quantile(array, 0.25)),
          'q75': float(np.quantile(array, 0.75))}


def paired_ratios(samples: Mapping[str, Sequence[float]],
                  reference: str) -> dict[str, np.ndarray]:
  """Each entry's samples over `reference`'s, round by round: name -> `[rounds]`."""
  base = np.asarray(samples[reference], np.float64)
  return {name: np.asarray(values, np.float64) / base for name, values in samples.items()}


def release_compiled_programs() -> None:
  """Frees every compiled XLA program held by jax's caches (a cell's programs are its own).

  XLA:CPU maps the code of each compiled kernel into memory regions of its own; a sweep
  builds hundreds of distinct programs (one per draft, γ, temperature and batch), and kept
  alive they exhaust the kernel's limit on memory maps per process (`vm.max_map_count`,
  65,530 by default): LLVM then aborts the process with "Unable to allocate section memory"
  (or the unwinder crashes in libgcc_s) about 40-60 cells into the default grid. Recompiling
  a cell's baseline afterwards is a load from the persistent compilation cache.
  """
  jax.clear_caches()
  gc.collect()


@functools.partial(jax.jit, static_argnames=('module', 'cache_length'))
def target_cache(module: nn.Module, params: Any, encoder_input_tokens: Array,
                 cache_length: int) -> tuple[Array, Any]:
  """The encoder output `[B, L, E]` and a fresh decode cache of `cache_length` positions."""
  encoded = cache_lib.encode(module, params, encoder_input_tokens)
  return encoded, cache_lib.init_decode_cache(module, params, encoded, encoder_input_tokens,
                                              cache_length)


@functools.partial(jax.jit, static_argnames=('module',))
def chained_target_calls(module: nn.Module, params: Any, cache: Any, encoded: Array,
                         encoder_input_tokens: Array, tokens: Array, positions: Array,
                         calls: Array) -> Array:
  """`calls` decoder calls on `tokens [B, K]` at `positions [B]`, each fed the last argmax.

  Every call writes at the same positions (the cache is rewound to them first),
  so all see the same cache length. Feeding each call's output to the next
  keeps XLA from hoisting or dropping calls.

  Returns:
    the last call's argmax tokens `[B, K]`.
  """

  def body(_, carry):
    cache, tokens = carry
    logits, cache = cache_lib.decode_step(module, params, cache_lib.rewind(cache, positions),
                                          encoded, encoder_input_tokens, tokens)
    return cache, sampling_lib.first_argmax(logits)

  return jax.lax.fori_loop(0, calls, body, (cache, tokens))[1]


@functools.partial(jax.jit, static_argnames=('gamma', 'sampling', 'vocab_size'))
def chained_proposals(drafter: drafters.Drafter, state: Any, sequences: Array, lengths: Array,
                      rng: Array, calls: Array, *, gamma: int,
                      sampling: sampling_lib.SamplingConfig, vocab_size: int) -> Array:
  """`calls` proposals of γ tokens after `lengths [B]`, each followed by `accept`.

  Each proposal's first token is written back as the last known input, and the
  probabilities enter a checksum, so no proposal is dead code.

  Returns:
    the checksum (a float32 scalar).
  """
  rows = jnp.arange(sequences.shape[0])

  def body(i, carry):
    state, sequences, checksum = carry
    tokens, probs, state = drafter.propose(state, sequences, lengths, gamma, sampling,
                                           vocab_size, jax.random.fold_in(rng, i))
    state = drafter.accept(state, sequences, lengths)
    sequences = sequences.at[rows, lengths].set(tokens[:, 0])
    return state, sequences, checksum + jnp.sum(probs[:, :, 0])

  return jax.lax.fori_loop(0, calls, body, (state, sequences, jnp.float32(0.0)))[2]


def _iqr(values: np.ndarray) -> list[float]:
  return [float(np.quantile(values, 0.25)), float(np.quantile(values, 0.75))]


def scoring_costs(module: nn.Module, params: Any, encoder_input_tokens: Array,
                  ks: Sequence[int], *, prefix: int, cache_length: int, rounds: int,
                  sample_ms: float, seed: int, warmup: int = 0,
                  progress: Any = None) -> dict[str, Any]:
  """The cost of one cached decoder call on K positions, for each K in `ks` (1 must be there).

  Args:
    module, params: the model.
    encoder_input_tokens: `[B, L]`.
    ks: the call widths K to time.
    prefix: the decoder position every call writes at (the cache length it attends over).
    cache_length: positions of the cache (>= prefix + max(ks)).
    rounds: interleaved rounds (one sample per K per round).
    sample_ms: how long one sample lasts (chained calls).
    seed: for the tokens fed and the round order.
    warmup: extra untimed calls per K after compiling.
    progress: optional tqdm-like object, `update()`d after every sample.

  Returns:
    Lists aligned with `k` (element 0 is K=1, the layout `theory.optimal_gamma`
    takes): `median_ms` per call, `ratio_median`, `ratio_q25`, `ratio_q75` over
    K=1 (paired within rounds), `samples_ms`, and `calls_per_sample`.
  """
  ks = [int(k) for k in ks]
  if 1 not in ks or prefix + max(ks) > cache_length:
    raise ValueError(f'ks must include 1 and prefix {prefix} + max K {max(ks)} must fit in '
                     f'cache_length {cache_length}')
  batch = encoder_input_tokens.shape[0]
  vocab_size = module.config.vocab_size
  encoded, cache = target_cache(module, params, encoder_input_tokens, cache_length)
  positions = jnp.full((batch,), prefix, jnp.int32)
  token_rng = np.random.default_rng(seed)
  tokens = {k: jnp.asarray(token_rng.integers(2, vocab_size, (batch, k)), jnp.int32) for k in ks}

  def run(k: int, calls: int) -> float:
    return timed(lambda: chained_target_calls(module, params, cache, encoded,
                                              encoder_input_tokens, tokens[k], positions,
                                              jnp.int32(calls)))[0]

  for k in ks:
    for _ in range(1 + warmup):
      run(k, 1)  # the first compiles: the call count is traced, so one program per K
  calls = calls_for(lambda n: run(1, n), sample_ms / 1e3, probes=5)
  samples = interleaved_rounds({k: functools.partial(lambda k: run(k, calls) / calls, k)
                                for k in ks}, rounds, seed, progress)
  ratios = paired_ratios(samples, 1)
  return dict(
      k=ks, calls_per_sample=calls,
      median_ms=[1e3 * float(np.median(samples[k])) for k in ks],
      ratio_median=[float(np.median(ratios[k])) for k in ks],
      ratio_q25=[float(np.quantile(ratios[k], 0.25)) for k in ks],
      ratio_q75=[float(np.quantile(ratios[k], 0.75)) for k in ks],
      samples_ms=[[1e3 * s for s in samples[k]] for k in ks])


def step_costs(module: nn.Module, params: Any, drafter: drafters.Drafter,
               encoder_input_tokens: np.ndarray, decoded_tokens: np.ndarray, *, gamma: int,
               sampling: sampling_lib.SamplingConfig, max_decode_len: int, cache_length: int,
               rounds: int, sample_ms: float, prefix: int, seed: int) -> dict[str, Any]:
  """Times one target step (K=1), one scoring call (K=γ+1) and one proposal of γ tokens.

  Args:
    module, params: the target.
    drafter: the draft.
    encoder_input_tokens: `[B, L]`.
    decoded_tokens: `[B, T]`, what the target decoded for them (the prefix the
      drafter and target are timed after).
    gamma, sampling, max_decode_len: as in the decoding timed.
    cache_length: positions of the caches timed (>= max_decode_len + scored positions).
      One length for all γ lets every γ share the target's compiled programs;
      the attention over a few more masked positions is a negligible part of a step.
    rounds, sample_ms: interleaved rounds, and how long one sample lasts.
    prefix: the decoder position timed at (capped at max_decode_len - 1).
    seed: for the round order and the draft's sampling.

  A drafter with look-ahead positions (PaSS) makes no draft calls of its own:
  its proposal only samples from logits the scoring call produced, and its
  cost is in the scoring call, timed on γ+1 plus its look-ahead positions.

  Returns:
    Medians over interleaved rounds: `target_step_ms`, `scoring_ms`,
    `propose_ms`, and the ratios `c` (proposal / γ / target step) and
    `scoring_cost` (scoring / target step), with their interquartile ranges;
    `setup_steps` (the target's encoder pass and decode cache for the batch,
    in target steps) and `draft_setup_steps` (the drafter's `init`), the
    fixed costs of a request (`theory.walltime_improvement_per_request`).
  """
  scored = gamma + 1 + drafters.num_extra_positions(drafter)
  prefix = min(prefix, max_decode_len - 1)
  if cache_length < max_decode_len + scored or prefix + scored > cache_length:
    raise ValueError(f'cache_length {cache_length} cannot hold max_decode_len '
                     f'{max_decode_len} + {scored} scored positions')
  run = _step_cost_runs(module, params, drafter, jnp.asarray(encoder_input_tokens),
                        decoded_tokens, gamma=gamma, sampling=sampling, scored=scored,
                        max_decode_len=max_decode_len, cache_length=cache_length,
                        prefix=prefix, seed=seed)
  kinds = ('step', 'score', 'propose', 'setup', 'draft_setup')
  calls = {}
  for kind in kinds:
    run(kind, 1)  # compiles (the call count is traced: one program per kind)
    calls[kind] = calls_for(functools.partial(run, kind), sample_ms / 1e3)
  samples = interleaved_rounds(
      {kind: functools.partial(lambda kind: run(kind, calls[kind]) / calls[kind], kind)
       for kind in kinds}, rounds, seed)
  step, score, propose, setup, draft_setup = (np.asarray(samples[kind]) for kind in kinds)
  # Ratios are paired within a round: the samples saw the same machine load.
  c_rounds = propose / gamma / step
  scoring_rounds = score / step
  return {
      'setup_steps': float(np.median(setup / step)),
      'draft_setup_steps': float(np.median(draft_setup / step)),
      'target_step_ms': 1e3 * float(np.median(step)),
      'scoring_ms': 1e3 * float(np.median(score)),
      'propose_ms': 1e3 * float(np.median(propose)),
      'c': float(np.median(c_rounds)), 'c_iqr': _iqr(c_rounds),
      'scoring_cost': float(np.median(scoring_rounds)), 'scoring_cost_iqr': _iqr(scoring_rounds),
      'step_calls_per_sample': calls, 'scored_positions': scored,
  }


def _step_cost_runs(module: nn.Module, params: Any, drafter: drafters.Drafter,
                    encoder_tokens: Array, decoded_tokens: np.ndarray, *, gamma: int,
                    sampling: sampling_lib.SamplingConfig, scored: int, max_decode_len: int,
                    cache_length: int, prefix: int, seed: int) -> Callable[[str, int], float]:
  """`run(kind, calls) -> seconds` for kind 'step' (K=1), 'score' (K=scored), 'propose',
  'setup' (the target's encoder pass and cache) or 'draft_setup' (the drafter's `init`)."""
  batch = encoder_tokens.shape[0]
  encoded, cache = target_cache(module, params, encoder_tokens, cache_length)
  positions = jnp.full((batch,), prefix, jnp.int32)
  sequences = np.zeros((batch, max_decode_len + gamma + 2), np.int32)
  sequences[:, 1:1 + decoded_tokens.shape[1]] = decoded_tokens
  sequences = jnp.asarray(sequences)
  draft_state = drafters.jitted_init(drafter, encoder_tokens, cache_length)
  rng = jax.random.PRNGKey(seed)
  token_blocks = {'step': jnp.full((batch, 1), 3, jnp.int32),
                  'score': jnp.full((batch, scored), 3, jnp.int32)}

  def run(kind: str, calls: int) -> float:
    if kind in ('setup', 'draft_setup'):  # one jitted call each: milliseconds, not microseconds
      setup = (functools.partial(target_cache, module, params, encoder_tokens, cache_length)
               if kind == 'setup'
               else functools.partial(drafters.jitted_init, drafter, encoder_tokens, cache_length))
      return sum(timed(setup)[0] for _ in range(calls))
    if kind == 'propose':
      return timed(lambda: chained_proposals(
          drafter, draft_state, sequences, positions, rng, jnp.int32(calls), gamma=gamma,
          sampling=sampling, vocab_size=module.config.vocab_size))[0]
    return timed(lambda: chained_target_calls(module, params, cache, encoded, encoder_tokens,
                                              token_blocks[kind], positions,
                                              jnp.int32(calls)))[0]

  return run
