"""α of the cheap drafts (unigram, bigram, PaSS look-ahead) and their walltime against AR.

The paper's Table 3 gives α for unigram and bigram drafts of T5-XXL; `measure_alpha`
measures the same along the target's own outputs: a teacher-forced pass gives the
target's p at every emitted position, and β = Σ_x min(p(x), q(x)) is averaged over
them (α = E[β], the paper's definition, p and q under the same sampling transform).
The unigram's q is fixed, the bigram's q is the row of the previous decoder input, and
look-ahead j's q comes from look-ahead j placed after the real prefix, compared with p
at the position j - 1 steps beyond the next token.

`measure_speed` times speculative decoding with each draft against
`autoregressive_decode`, batch 1, interleaved per input; speedups are per emitted token.
The report is in `bench.cheap_drafts_report`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from specdec_t5x import decoding, drafters, paths, sampling, theory
from specdec_t5x.bench import timing
from specdec_t5x.drafters import lookahead as lookahead_lib

# Task name -> seqio task, decode budget and the paper's task (for its Table 3 α).
TASKS = {
    'ende': dict(seqio_task='ddtp_ende', max_decode_len=64, paper_task='EnDe'),
    'summarize': dict(seqio_task='ddtp_summarize', max_decode_len=24, paper_task='CNNDM'),
}
ALPHA_BATCH = 8      # sequences per jitted α call (the look-ahead call copies caches per prefix)
PREFIX_CHUNK = 8     # prefix ends per look-ahead call
MAX_NGRAM_GAMMA = 8


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a run measures: temperatures, how many inputs, rounds, PaSS's γ values, seed."""

  temperatures: Sequence[float] = (0.0, 1.0)
  alpha_examples: int = 64    # a multiple of ALPHA_BATCH
  speed_examples: int = 12
  rounds: int = 1
  pass_gammas: Sequence[int] = (1, 2, 3)
  seed: int = 0


# ------------------------------------------------------------------------------
# α along the target's own outputs.
# ------------------------------------------------------------------------------


def overlap(p: jax.Array, q: jax.Array) -> jax.Array:
  """β = Σ min(p, q) over the last axis."""
  return jnp.sum(jnp.minimum(p, q), axis=-1)


@functools.partial(jax.jit, static_argnames=('module', 'config'))
def target_probabilities(module, params, encoder_tokens, decoder_inputs, config):
  """p `[B, T, V]` at every decoder position, teacher-forced on `decoder_inputs [B, T]`."""
  # Non-zero targets everywhere: T5X's padding mask must not hide a real position.
  targets = jnp.ones_like(decoder_inputs)
  logits = module.apply({'params': params}, encoder_tokens, decoder_inputs, targets,
                        enable_dropout=False)
  return sampling.probabilities(logits, config)


@functools.partial(jax.jit, static_argnames=('config',))
def ngram_betas(p, decoder_inputs, unigram, bigram, config):
  """β of the unigram and bigram drafts at every position, `[B, T]` each."""
  vocab = p.shape[-1]
  unigram_q = sampling.probabilities(drafters.align_logits(unigram.log_probs, vocab), config)
  rows = drafters.align_logits(bigram.next_log_probs(decoder_inputs.reshape(-1)), vocab)
  bigram_q = sampling.probabilities(rows, config).reshape(p.shape)
  return overlap(p, unigram_q), overlap(p, bigram_q)


@functools.partial(jax.jit, static_argnames=('module', 'config'))
def lookahead_betas(module, params, lookahead, encoder_tokens, decoder_inputs, p, prefix_ends,
                    config):
  """β of look-ahead j after each prefix end m against p at m + j, `[B, S, L]`."""
  logits = lookahead_lib.lookahead_logits(module, params, lookahead, encoder_tokens,
                                          decoder_inputs, prefix_ends)
  q = sampling.probabilities(logits, config)  # [B, S, L, V]
  num_lookahead = lookahead.shape[0]
  positions = prefix_ends[:, :, None] + jnp.arange(1, num_lookahead + 1)
  padded = jnp.pad(p, ((0, 0), (0, num_lookahead + 1), (0, 0)))
  p_at = jax.vmap(lambda rows, index: rows[index])(padded, positions)
  return overlap(p_at, q)


def _lookahead_sums(module, params, lookahead, encoder_tokens, inputs, p, lengths: np.ndarray,
                    config) -> tuple[np.ndarray, np.ndarray]:
  """Σ β and the pair count per look-ahead position `[L]` over one batch of sequences.

  A pair counts only when its target position lies inside the output (`lengths [B]`).
  """
  length = inputs.shape[1]
  beta_sum = np.zeros(lookahead.shape[0])
  count = np.zeros_like(beta_sum)
  for first in range(0, length, PREFIX_CHUNK):
    ends = np.minimum(np.arange(first, first + PREFIX_CHUNK), length - 1)
    prefix_ends = jnp.asarray(np.broadcast_to(ends, (inputs.shape[0], PREFIX_CHUNK)), jnp.int32)
    beta = np.asarray(lookahead_betas(module, params, lookahead, encoder_tokens, inputs, p,
                                      prefix_ends, config))  # [B, S, L]
    target_position = ends[None, :, None] + np.arange(1, lookahead.shape[0] + 1)
    counted = ((target_position < lengths[:, None, None])
               & (np.arange(first, first + PREFIX_CHUNK) < length)[None, :, None])
    beta_sum += np.sum(np.where(counted, beta, 0.0), axis=(0, 1))
    count += np.sum(counted, axis=(0, 1))
  return beta_sum, count


def measure_alpha(module, params, examples: Mapping[str, np.ndarray], outputs: Any,
                  ngram: Mapping[str, Any], lookahead: jax.Array | None,
                  config: sampling.SamplingConfig) -> dict[str, Any]:
  """Mean β per draft over the valid positions of the target's `outputs` on `examples`.

  `examples['inputs'] [N, L]` (N a multiple of ALPHA_BATCH); `ngram`: 'unigram' and
  'bigram' drafters; `lookahead [L, emb]` or None (no PaSS).
  """
  tokens, lengths = np.asarray(outputs.tokens), np.asarray(outputs.lengths)
  num, length = tokens.shape
  decoder_inputs = np.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  valid = np.arange(length)[None, :] < lengths[:, None]  # position t predicts token t+1
  sums = {'unigram': 0.0, 'bigram': 0.0}
  lookahead_sum = np.zeros(0 if lookahead is None else lookahead.shape[0])
  lookahead_count = np.zeros_like(lookahead_sum)
  for start in range(0, num, ALPHA_BATCH):
    rows = slice(start, start + ALPHA_BATCH)
    encoder_tokens = jnp.asarray(examples['inputs'][rows])
    inputs = jnp.asarray(decoder_inputs[rows])
    p = target_probabilities(module, params, encoder_tokens, inputs, config)
    unigram_beta, bigram_beta = ngram_betas(p, inputs, ngram['unigram'], ngram['bigram'], config)
    sums['unigram'] += float(np.sum(np.asarray(unigram_beta)[valid[rows]]))
    sums['bigram'] += float(np.sum(np.asarray(bigram_beta)[valid[rows]]))
    if lookahead is not None:
      beta_sum, count = _lookahead_sums(module, params, lookahead, encoder_tokens, inputs, p,
                                        lengths[rows], config)
      lookahead_sum += beta_sum
      lookahead_count += count
  positions = int(valid.sum())
  result: dict[str, Any] = {name: total / positions for name, total in sums.items()}
  result['positions'] = positions
  if lookahead is not None:
    result['pass'] = (lookahead_sum / np.maximum(lookahead_count, 1)).tolist()
    result['pass_positions'] = lookahead_count.astype(int).tolist()
  return result


# ------------------------------------------------------------------------------
# Walltime.
# ------------------------------------------------------------------------------


def scoring_cost_curve(preset: str | None,
                       path: os.PathLike | None = None) -> list[float] | None:
  """The measured cost of K = 1, 2, ... positions for `preset`, from results/scoring_cost.json."""
  path = paths.repo_root() / 'results' / 'scoring_cost.json' if path is None else path
  if preset is None or not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as file:
    results = json.load(file)['results']
  return next((r['ratio_median'] for r in results if r['preset'] == preset), None)


Method = tuple[Any, int] | None  # (drafter, γ), or None for autoregressive decoding


def _decode(module, params, method: Method, tokens: np.ndarray, seed: int, max_decode_len: int,
            temperature: float) -> tuple[float, Any]:
  """Seconds and output of one decode of `tokens [1, L]` with `method`."""
  key = jax.random.PRNGKey(seed)
  if method is None:
    return timing.timed(lambda: decoding.autoregressive_decode(
        module, params, tokens, max_decode_len=max_decode_len, temperature=temperature,
        rng=key))
  drafter, gamma = method
  return timing.timed(lambda: decoding.speculative_decode(
      module, params, drafter, tokens, gamma=gamma, max_decode_len=max_decode_len,
      temperature=temperature, rng=key))


def speed_runs(module, params, examples: Mapping[str, np.ndarray], methods: Mapping[str, Method],
               max_decode_len: int, temperature: float, settings: Settings,
               desc: str) -> dict[str, list[dict[str, Any]]]:
  """One record per method, input and round: seconds, tokens, output (and loop counts).

  Each round decodes every input once with every method, in a fresh order per input.
  """
  decode = functools.partial(_decode, module, params, max_decode_len=max_decode_len,
                             temperature=temperature)
  for name in tqdm(methods, desc=f'{desc}: compile', leave=False):
    decode(methods[name], examples['inputs'][:1], 0)
  records: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}

  def sample(name: str, index: int, round_index: int, seed: int) -> float:
    seconds, out = decode(methods[name], examples['inputs'][index:index + 1], seed)
    record = dict(example=index, round=round_index, seconds=seconds,
                  tokens=int(out.lengths[0]), output=np.asarray(out.tokens[0]).tolist())
    if methods[name] is not None:
      record.update(iterations=int(out.iterations[0]), accepted=int(out.accepted[0]),
                    beta_mean=float(out.beta_mean[0]), beta_count=int(out.beta_count[0]))
    records[name].append(record)
    return seconds

  total = settings.speed_examples * settings.rounds * len(methods)
  with tqdm(total=total, desc=f'{desc}: timing', leave=False) as bar:
    for round_index in range(settings.rounds):
      for index in range(settings.speed_examples):
        seed = settings.seed * 1000 + round_index * 100 + index
        timing.interleaved_rounds(
            {name: functools.partial(sample, name, index, round_index, seed)
             for name in methods}, 1, seed, bar)
  return records


def speed_summary(records: Mapping[str, Sequence[dict[str, Any]]], methods: Mapping[str, Method],
                  temperature: float) -> dict[str, dict[str, Any]]:
  """Per method: per-token speedups over autoregressive on the same input and round."""
  baseline = {(r['example'], r['round']): r for r in records['autoregressive']}
  summary = {}
  for name, rows in records.items():
    per_token = np.array([r['seconds'] / r['tokens'] for r in rows])
    base = np.array([baseline[(r['example'], r['round'])]['seconds']
                     / baseline[(r['example'], r['round'])]['tokens'] for r in rows])
    speedups = timing.quantiles(base / per_token)
    entry = dict(gamma=None if methods[name] is None else methods[name][1],
                 ms_per_token_median=1e3 * float(np.median(per_token)),
                 speedup_median=speedups['median'], speedup_q25=speedups['q25'],
                 speedup_q75=speedups['q75'],
                 tokens_mean=float(np.mean([r['tokens'] for r in rows])), runs=list(rows))
    if methods[name] is not None:
      iterations = sum(r['iterations'] for r in rows)
      # α pooled over runs is weighted by the verified positions behind each run's mean.
      counts = np.array([r['beta_count'] for r in rows], np.float64)
      means = np.array([r['beta_mean'] for r in rows], np.float64)
      entry.update(tokens_per_iteration=sum(r['tokens'] for r in rows) / iterations,
                   loop_alpha=float(np.sum(means * counts) / max(np.sum(counts), 1.0)))
      if temperature == 0.0:
        entry['identical_to_autoregressive'] = all(
            r['output'] == baseline[(r['example'], r['round'])]['output'] for r in rows)
    summary[name] = entry
  return summary


def speed_methods(alpha: Mapping[str, Any], ngram: Mapping[str, Any], pass_drafter: Any,
                  pass_gammas: Sequence[int], curve: Sequence[float] | None) -> dict[str, Method]:
  """Autoregressive, the n-gram drafts at γ of `theory.optimal_gamma` (draft cost 0, the
  measured scoring cost `curve` if any) and PaSS at each of `pass_gammas`."""
  methods: dict[str, Method] = {'autoregressive': None}
  max_gamma = MAX_NGRAM_GAMMA if curve is None else min(MAX_NGRAM_GAMMA, len(curve) - 1)
  for draft in ('unigram', 'bigram'):
    gamma = theory.optimal_gamma(alpha[draft], 0.0, max_gamma=max_gamma,
                                 scoring_cost=curve).gamma
    methods[draft] = (ngram[draft], gamma)
  if pass_drafter is not None:
    for gamma in pass_gammas:
      methods[f'PaSS γ={gamma}'] = (drafters.for_gamma(pass_drafter, gamma), gamma)
  return methods


# ------------------------------------------------------------------------------
# One task.
# ------------------------------------------------------------------------------


def measure_temperature(module, params, examples: Mapping[str, np.ndarray],
                        ngram: Mapping[str, Any], pass_drafter: Any, *, temperature: float,
                        max_decode_len: int, curve: Sequence[float] | None, settings: Settings,
                        desc: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
  """α of every draft at `temperature`, then the speed of each method: (alpha, speed)."""
  config = sampling.make_sampling_config(temperature)
  outputs = decoding.autoregressive_decode(
      module, params, examples['inputs'], max_decode_len=max_decode_len,
      temperature=temperature, rng=jax.random.PRNGKey(settings.seed))
  alpha = measure_alpha(module, params, examples, outputs, ngram,
                        None if pass_drafter is None else pass_drafter.lookahead, config)
  print(f"{desc}: α unigram {alpha['unigram']:.3f}, bigram {alpha['bigram']:.3f}, PaSS per "
        f"position {[round(a, 3) for a in alpha.get('pass', [])]}", flush=True)
  methods = speed_methods(alpha, ngram, pass_drafter, settings.pass_gammas, curve)
  records = speed_runs(module, params, examples, methods, max_decode_len, temperature,
                       settings, desc)
  speed = speed_summary(records, methods, temperature)
  for name, entry in speed.items():
    print(f"  {name}: {entry['speedup_median']:.2f}x, {entry['ms_per_token_median']:.1f} "
          f"ms/token", flush=True)
  return alpha, speed


def measure_task(task: str, module, params, examples: Mapping[str, np.ndarray],
                 ngram: Mapping[str, Any], pass_drafter: Any, *, counts_path: os.PathLike,
                 pass_file: os.PathLike | None, curve: Sequence[float] | None,
                 settings: Settings) -> dict[str, Any]:
  """α and speed of every draft on one task of `TASKS`, at every temperature."""
  spec = TASKS[task]
  result: dict[str, Any] = dict(
      label=f"DDTP {task} ({spec['seqio_task']}, test)",
      counts=paths.portable_path(counts_path),
      pass_file=None if pass_file is None else paths.portable_path(pass_file),
      max_decode_len=spec['max_decode_len'], alpha={}, speed={})
  for temperature in settings.temperatures:
    alpha, speed = measure_temperature(
        module, params, examples, ngram, pass_drafter, temperature=temperature,
        max_decode_len=spec['max_decode_len'], curve=curve, settings=settings,
        desc=f'{task} T={temperature:g}')
    result['alpha'][str(temperature)] = alpha
    result['speed'][str(temperature)] = speed
  return result


def measure_tasks(tasks: Sequence[str], module, params, pass_drafter: Any, *,
                  pass_file: os.PathLike, smoothing: float, curve: Sequence[float] | None,
                  settings: Settings) -> dict[str, dict[str, Any]]:
  """`measure_task` on each task's test inputs, with n-gram counts of its training targets
  (read from the cache, or counted and saved there as scripts/build_ngram_drafters.py does)."""
  from specdec_t5x.data import tasks as tasks_lib  # noqa: PLC0415  (needs TensorFlow)
  from specdec_t5x.training import ngram_counts  # noqa: PLC0415

  results = {}
  for task in tasks:
    seqio_task = TASKS[task]['seqio_task']
    counts, counts_path, _ = ngram_counts.task_counts(seqio_task, module.config.vocab_size)
    ngram = {'unigram': drafters.UnigramDrafter.from_counts(counts, smoothing),
             'bigram': drafters.BigramDrafter.from_counts(counts, smoothing)}
    examples = tasks_lib.get_eval_examples(seqio_task, 'test', settings.alpha_examples)
    results[task] = measure_task(task, module, params, examples, ngram, pass_drafter,
                                 counts_path=counts_path, pass_file=pass_file, curve=curve,
                                 settings=settings)
  return results
