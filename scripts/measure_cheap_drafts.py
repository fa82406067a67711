#!/usr/bin/env python
"""α of the cheap drafts (unigram, bigram, PaSS look-ahead) and their walltime against AR.

The paper's Table 3 gives α for unigram and bigram drafts of T5-XXL; this script measures the
same for the trained CPU-scale target on the DDTP EnDe and summarisation test splits (the
stand-ins for WMT EnDe and CNN/DM), adds PaSS look-ahead drafts per look-ahead position j = 1..L,
and times speculative decoding with each draft against `autoregressive_decode` in the same run.

α (per task, temperature T in --temperatures): the target decodes the first --alpha-examples
test inputs itself (greedy at T=0, sampled at T=1, max_decode_len 64 for EnDe and 24 for
summarisation as in configs/sweep_default.json); then, along those outputs, a teacher-forced
pass gives the target's distribution p at every emitted position, and
β = Σ_x min(p(x), q(x)) is averaged over all positions (α = E[β], the paper's definition, with
the same sampling transform applied to p and q: one-hot argmax at T=0). The unigram's q is
fixed, the bigram's q is the row of the previous decoder input (BOS before the first token),
and look-ahead j's q comes from look-ahead j placed after the real prefix, compared with p at
the position j - 1 steps beyond the next token: the quality of each look-ahead position when
the context is right (inside the speculative loop, drafts after a rejected block see rejected
tokens, which the loop's own α shows).

Speed (batch 1, the first --speed-examples inputs): every method decodes each input once per
round, in shuffled order (interleaved, so the load of a shared machine hits all alike); a
method's speedup on an input is (autoregressive time per emitted token) / (its time per emitted
token), summarised by the median over inputs and rounds. Per-token times make T=1 comparable,
where the sampled outputs differ in length. Unigram and bigram use γ from
`theory.optimal_gamma` with their measured α, draft cost 0 and the measured scoring cost of
results/scoring_cost.json for the target's preset (1 if absent); PaSS uses γ in --pass-gammas
with its first γ look-ahead embeddings (2γ + 1 positions per target call).

Needs the n-gram counts (built here if missing, as scripts/build_ngram_drafters.py does) and the
PaSS file of scripts/train_pass.py. Writes <output-dir>/cheap_drafts.{json,md}. Example:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/measure_cheap_drafts.py --family default
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_scoring_cost import machine_facts, reproducing_command  # noqa: E402
from train_pass import add_target_arguments, load_target  # noqa: E402

from specdec_t5x import decoding, ngram_drafters, paths, sampling, theory  # noqa: E402
from specdec_t5x import drafters as drafters_lib  # noqa: E402
from specdec_t5x import pass_drafter as pass_lib  # noqa: E402

# Task name -> seqio task, decode budget, the paper's task and its Table 3 α (T=0, T=1).
TASKS = {
    'ende': dict(seqio_task='ddtp_ende', max_decode_len=64, paper_task='EnDe',
                 paper_alpha={'unigram': (0.08, 0.07), 'bigram': (0.20, 0.19)}),
    'summarize': dict(seqio_task='ddtp_summarize', max_decode_len=24, paper_task='CNNDM',
                      paper_alpha={'unigram': (0.13, 0.08), 'bigram': (0.23, 0.16)}),
}
ALPHA_BATCH = 8      # sequences per jitted α call (the look-ahead call copies caches per prefix)
PREFIX_CHUNK = 8     # prefix ends per look-ahead call
MAX_NGRAM_GAMMA = 8


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_target_arguments(parser)
  parser.add_argument('--tasks', default='ende,summarize', help=f'of {sorted(TASKS)}')
  parser.add_argument('--temperatures', default='0,1', help='comma-separated, 0 is greedy')
  parser.add_argument('--alpha-examples', type=int, default=64,
                      help='test inputs whose target outputs α is measured on (multiple of '
                           f'{ALPHA_BATCH})')
  parser.add_argument('--speed-examples', type=int, default=12, help='test inputs timed')
  parser.add_argument('--rounds', type=int, default=1, help='timed runs per input and method')
  parser.add_argument('--smoothing', type=float, default=ngram_drafters.DEFAULT_SMOOTHING,
                      help='add-k of the n-gram drafters')
  parser.add_argument('--num-lookahead', type=int, default=6,
                      help='L of the PaSS file (<model_dir>/pass_lookahead_L<L>.npz)')
  parser.add_argument('--pass-file', type=pathlib.Path, default=None,
                      help='PaSS look-ahead file (default: beside the target checkpoint)')
  parser.add_argument('--pass-gammas', default='1,2,3', help='γ values timed for PaSS')
  parser.add_argument('--seed', type=int, default=0, help='sampling and order seed')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results')
  args = parser.parse_args(argv)
  args.tasks = [t.strip() for t in args.tasks.split(',') if t.strip()]
  unknown = [t for t in args.tasks if t not in TASKS]
  if unknown or not args.tasks:
    parser.error(f'--tasks must name some of {sorted(TASKS)}, got {args.tasks}')
  args.temperatures = [float(t) for t in args.temperatures.split(',')]
  args.pass_gammas = [int(g) for g in args.pass_gammas.split(',') if g.strip()]
  if args.alpha_examples < ALPHA_BATCH or args.alpha_examples % ALPHA_BATCH:
    parser.error(f'--alpha-examples must be a positive multiple of {ALPHA_BATCH}')
  if not 1 <= args.speed_examples <= args.alpha_examples or args.rounds < 1:
    parser.error('need 1 <= --speed-examples <= --alpha-examples and --rounds >= 1')
  if any(not 1 <= g <= args.num_lookahead for g in args.pass_gammas):
    parser.error(f'--pass-gammas must lie in [1, --num-lookahead={args.num_lookahead}]')
  return args


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
  unigram_q = sampling.probabilities(drafters_lib.align_logits(unigram.log_probs, vocab), config)
  rows = drafters_lib.align_logits(bigram.next_log_probs(decoder_inputs.reshape(-1)), vocab)
  bigram_q = sampling.probabilities(rows, config).reshape(p.shape)
  return overlap(p, unigram_q), overlap(p, bigram_q)


@functools.partial(jax.jit, static_argnames=('module', 'config'))
def lookahead_betas(module, params, lookahead, encoder_tokens, decoder_inputs, p, prefix_ends,
                    config):
  """β of look-ahead j after each prefix end m against p at m + j, `[B, S, L]`."""
  logits = pass_lib.lookahead_logits(module, params, lookahead, encoder_tokens, decoder_inputs,
                                     prefix_ends)
  q = sampling.probabilities(logits, config)  # [B, S, L, V]
  num_lookahead = lookahead.shape[0]
  positions = prefix_ends[:, :, None] + jnp.arange(1, num_lookahead + 1)
  padded = jnp.pad(p, ((0, 0), (0, num_lookahead + 1), (0, 0)))
  p_at = jax.vmap(lambda rows, index: rows[index])(padded, positions)
  return overlap(p_at, q)


def measure_alpha(module, params, examples, outputs, drafters, lookahead, config) -> dict:
  """Mean β per draft over the valid positions of the target's outputs."""
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
    unigram_beta, bigram_beta = ngram_betas(p, inputs, drafters['unigram'], drafters['bigram'],
                                            config)
    sums['unigram'] += float(np.sum(np.asarray(unigram_beta)[valid[rows]]))
    sums['bigram'] += float(np.sum(np.asarray(bigram_beta)[valid[rows]]))
    if lookahead is None:
      continue
    for first in range(0, length, PREFIX_CHUNK):
      ends = np.minimum(np.arange(first, first + PREFIX_CHUNK), length - 1)
      prefix_ends = jnp.asarray(np.broadcast_to(ends, (ALPHA_BATCH, PREFIX_CHUNK)), jnp.int32)
      beta = np.asarray(lookahead_betas(module, params, lookahead, encoder_tokens, inputs, p,
                                        prefix_ends, config))  # [B, S, L]
      target_position = ends[None, :, None] + np.arange(1, lookahead.shape[0] + 1)
      counted = ((target_position < lengths[rows, None, None])
                 & (np.arange(first, first + PREFIX_CHUNK) < length)[None, :, None])
      lookahead_sum += np.sum(np.where(counted, beta, 0.0), axis=(0, 1))
      lookahead_count += np.sum(counted, axis=(0, 1))
  positions = int(valid.sum())
  result = {name: total / positions for name, total in sums.items()}
  result['positions'] = positions
  if lookahead is not None:
    result['pass'] = (lookahead_sum / np.maximum(lookahead_count, 1)).tolist()
    result['pass_positions'] = lookahead_count.astype(int).tolist()
  return result


# ------------------------------------------------------------------------------
# Walltime.
# ------------------------------------------------------------------------------


def scoring_cost_curve(preset: str | None) -> list[float] | None:
  """The measured cost of K = 1, 2, ... positions for `preset`, from results/scoring_cost.json."""
  path = paths.repo_root() / 'results' / 'scoring_cost.json'
  if preset is None or not path.is_file():
    return None
  for result in json.loads(path.read_text())['results']:
    if result['preset'] == preset:
      return result['ratio_median']
  return None


def timed(fn, *args, **kwargs) -> tuple[float, Any]:
  started = time.perf_counter()
  out = jax.block_until_ready(fn(*args, **kwargs))
  return time.perf_counter() - started, out


def measure_speed(module, params, examples, methods, max_decode_len, temperature, args,
                  rng: np.random.Generator, desc: str) -> dict[str, dict]:
  """Interleaved batch-1 timings of every method; per-token speedups over autoregressive."""

  def run(name, tokens, seed):
    method = methods[name]
    key = jax.random.PRNGKey(seed)
    if method is None:
      return timed(decoding.autoregressive_decode, module, params, tokens,
                   max_decode_len=max_decode_len, temperature=temperature, rng=key)
    drafter, gamma = method
    return timed(decoding.speculative_decode, module, params, drafter, tokens, gamma=gamma,
                 max_decode_len=max_decode_len, temperature=temperature, rng=key)

  names = list(methods)
  first = examples['inputs'][:1]
  for name in tqdm(names, desc=f'{desc}: compile', leave=False):
    run(name, first, 0)
  records = {name: [] for name in names}
  total = args.speed_examples * args.rounds * len(names)
  with tqdm(total=total, desc=f'{desc}: timing', leave=False) as bar:
    for round_index in range(args.rounds):
      for index in range(args.speed_examples):
        tokens = examples['inputs'][index:index + 1]
        seed = args.seed * 1000 + round_index * 100 + index
        for name in rng.permutation(names):
          seconds, out = run(name, tokens, seed)
          record = dict(example=index, round=round_index, seconds=seconds,
                        tokens=int(out.lengths[0]), output=np.asarray(out.tokens[0]).tolist())
          if name != 'autoregressive':
            record.update(iterations=int(out.iterations[0]), accepted=int(out.accepted[0]),
                          beta_mean=float(out.beta_mean[0]))
          records[name].append(record)
          bar.update()
  baseline = {(r['example'], r['round']): r for r in records['autoregressive']}
  summary = {}
  for name in names:
    rows = records[name]
    per_token = np.array([r['seconds'] / r['tokens'] for r in rows])
    base = np.array([baseline[(r['example'], r['round'])]['seconds']
                     / baseline[(r['example'], r['round'])]['tokens'] for r in rows])
    speedups = base / per_token
    entry = dict(gamma=None if methods[name] is None else methods[name][1],
                 ms_per_token_median=1e3 * float(np.median(per_token)),
                 speedup_median=float(np.median(speedups)),
                 speedup_q25=float(np.quantile(speedups, 0.25)),
                 speedup_q75=float(np.quantile(speedups, 0.75)),
                 tokens_mean=float(np.mean([r['tokens'] for r in rows])), runs=rows)
    if name != 'autoregressive':
      iterations = sum(r['iterations'] for r in rows)
      entry.update(tokens_per_iteration=sum(r['tokens'] for r in rows) / iterations,
                   loop_alpha=float(np.mean([r['beta_mean'] for r in rows])))
      if temperature == 0.0:
        entry['identical_to_autoregressive'] = all(
            r['output'] == baseline[(r['example'], r['round'])]['output'] for r in rows)
    summary[name] = entry
  return summary


# ------------------------------------------------------------------------------
# Report.
# ------------------------------------------------------------------------------


def _row(cells: Sequence[Any]) -> str:
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  return '\n'.join([_row(head), '|' + '---|' * len(head)] + [_row(r) for r in rows])


def markdown(report: dict[str, Any]) -> str:
  settings, machine = report['settings'], report['machine']
  temps = settings['temperatures']
  t_label = lambda t: f'T={t:g}'
  alpha_rows, pass_rows, speed_rows = [], [], []
  for task, result in report['tasks'].items():
    spec = TASKS[task]
    for draft in ('unigram', 'bigram'):
      measured = [f"{result['alpha'][str(t)][draft]:.3f}" for t in temps]
      paper = [f"{spec['paper_alpha'][draft][int(t)]:.2f}" if t in (0.0, 1.0) else '-'
               for t in temps]
      alpha_rows.append([result['label'], draft, *measured, *paper])
    if result.get('pass_file'):
      for t in temps:
        values = result['alpha'][str(t)]['pass']
        pass_rows.append([result['label'], t_label(t)] + [f'{v:.3f}' for v in values])
    for t in temps:
      for name, entry in result['speed'][str(t)].items():
        identical = entry.get('identical_to_autoregressive')
        speed_rows.append([
            result['label'], t_label(t), name, entry['gamma'] or '-',
            f"{entry['loop_alpha']:.3f}" if 'loop_alpha' in entry else '-',
            f"{entry['tokens_per_iteration']:.2f}" if 'tokens_per_iteration' in entry else '-',
            f"{entry['ms_per_token_median']:.1f}",
            f"**{entry['speedup_median']:.2f}x** ({entry['speedup_q25']:.2f}-"
            f"{entry['speedup_q75']:.2f})",
            '-' if identical is None else ('yes' if identical else '**NO**')])
  num_lookahead = max((len(r[2:]) for r in pass_rows), default=0)
  parts = [
      '# Cheap drafts: α of unigram, bigram and PaSS look-ahead drafts, and their speed',
      f"Command: `{report['command']}`  \n"
      f"Date: {report['date']} (the run took {report['duration_s'] / 60:.1f} min)  \n"
      f"Target: {report['target']}  \n"
      f"Machine: {machine['nproc']} CPU cores ({machine['cpu_model']}), jax {machine['jax']} "
      f"(backend {machine['jax_backend']}), fp32, batch 1 for timing. 1-minute load average at "
      f"the end: {report['load_average_1min']:.1f} (other developers share these cores).",
      '## α (acceptance rate, E[β]) next to the paper\'s Table 3 (T5-XXL)',
      f"Along the target's own outputs on the first {settings['alpha_examples']} test inputs "
      f"(greedy at T=0, sampled at T=1); β = Σ min(p, q) at every emitted position, p and q "
      f"under the same sampling transform; n-gram counts from each task's training targets, "
      f"add-k with k = {settings['smoothing']}. The paper's tasks are WMT EnDe and CNN/DM; "
      f"ours are the DDTP stand-ins.",
      _table(['task', 'draft'] + [f'α {t_label(t)}' for t in temps]
             + [f'paper {t_label(t)}' for t in temps], alpha_rows),
  ]
  if pass_rows:
    parts += [
        '## PaSS: α per look-ahead position',
        'Look-ahead j placed after a correct prefix drafts the token j - 1 steps beyond the '
        'next one; its α is measured as above (its q against the target\'s p at that '
        'position). A pair counts only when that position lies inside the output, so the far '
        'look-aheads are measured on the later positions of each output (often its EOS). The '
        'embeddings were trained on the true future tokens of the training targets, not on the '
        'target\'s own outputs. The paper reports no T5 numbers for PaSS (LLaMA-7B: up to 30% '
        'faster).',
        _table(['task', 'T'] + [f'j={j}' for j in range(1, num_lookahead + 1)], pass_rows),
    ]
  parts += [
      '## Walltime against autoregressive decoding (same run, interleaved)',
      f"First {settings['speed_examples']} test inputs, {settings['rounds']} round(s), batch 1. "
      "Speedup = autoregressive time per emitted token / the method's, per input, median "
      "(interquartile range); in-loop α is the mean β over the verified positions of the loop "
      "(for PaSS it includes drafts made after rejected blocks), tokens/iteration counts the "
      "target calls (PaSS's first call emits one token and drafts nothing). "
      f"n-gram γ from `theory.optimal_gamma` (draft cost 0, scoring cost "
      f"{'measured' if report['scoring_cost_curve'] else 'taken as 1'}).",
      _table(['task', 'T', 'method', 'γ', 'in-loop α', 'tokens/iteration', 'ms/token',
              'speedup', 'identical to AR'], speed_rows),
  ]
  if report['scoring_cost_curve']:
    curve = ', '.join(f'K={k + 1}: {c:.2f}' for k, c in enumerate(report['scoring_cost_curve']))
    parts.append(f'Measured scoring cost of one target call on K positions relative to K=1 '
                 f'(results/scoring_cost.json): {curve}. A speculative iteration costs one such '
                 f'call, so on this CPU a draft must be accepted often enough to pay for it.')
  return '\n\n'.join(parts) + '\n'


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  from specdec_t5x.data import tasks

  started = time.time()
  target = load_target(args)
  module, params = target.module, target.params
  vocab_size = module.config.vocab_size
  pass_file = args.pass_file or pass_lib.default_lookahead_path(target.model_dir,
                                                                args.num_lookahead)
  pass_drafter = pass_lib.load_pass_drafter(pass_file, module, params)
  curve = scoring_cost_curve(target.preset)
  rng = np.random.default_rng(args.seed)
  report_tasks = {}
  for task in args.tasks:
    spec = TASKS[task]
    counts, counts_path, _ = ngram_drafters.task_counts(spec['seqio_task'], vocab_size)
    drafters = {'unigram': ngram_drafters.UnigramDrafter.from_counts(counts, args.smoothing),
                'bigram': ngram_drafters.BigramDrafter.from_counts(counts, args.smoothing)}
    examples = tasks.get_eval_examples(spec['seqio_task'], 'test', args.alpha_examples)
    result = dict(label=f"DDTP {task} ({spec['seqio_task']}, test)", counts=str(counts_path),
                  pass_file=str(pass_file), max_decode_len=spec['max_decode_len'], alpha={},
                  speed={})
    for temperature in args.temperatures:
      config = sampling.make_sampling_config(temperature)
      outputs = decoding.autoregressive_decode(
          module, params, examples['inputs'], max_decode_len=spec['max_decode_len'],
          temperature=temperature, rng=jax.random.PRNGKey(args.seed))
      alpha = measure_alpha(module, params, examples, outputs, drafters,
                            pass_drafter.lookahead, config)
      result['alpha'][str(temperature)] = alpha
      print(f"{task} T={temperature:g}: α unigram {alpha['unigram']:.3f}, bigram "
            f"{alpha['bigram']:.3f}, PaSS per position "
            f"{[round(a, 3) for a in alpha['pass']]}", flush=True)
      methods: dict[str, Any] = {'autoregressive': None}
      for draft in ('unigram', 'bigram'):
        gamma = theory.optimal_gamma(alpha[draft], 0.0, max_gamma=MAX_NGRAM_GAMMA if curve is None
                                     else min(MAX_NGRAM_GAMMA, len(curve) - 1),
                                     scoring_cost=curve).gamma
        methods[draft] = (drafters[draft], gamma)
      for gamma in args.pass_gammas:
        methods[f'PaSS γ={gamma}'] = (pass_drafter.truncated(gamma), gamma)
      result['speed'][str(temperature)] = measure_speed(
          module, params, examples, methods, spec['max_decode_len'], temperature, args, rng,
          desc=f'{task} T={temperature:g}')
      for name, entry in result['speed'][str(temperature)].items():
        print(f"  {name}: {entry['speedup_median']:.2f}x, {entry['ms_per_token_median']:.1f} "
              f"ms/token", flush=True)
    report_tasks[task] = result
  report = dict(
      command=reproducing_command(),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      duration_s=time.time() - started, machine=machine_facts(),
      load_average_1min=os.getloadavg()[0], target=target.label,
      pass_file_info=pass_lib.read_lookahead_file(pass_file)['info'],
      settings={key: (str(value) if isinstance(value, pathlib.Path) else value)
                for key, value in vars(args).items()},
      scoring_cost_curve=curve, tasks=report_tasks)
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / 'cheap_drafts.json').write_text(json.dumps(report, indent=1),
                                                      encoding='utf-8')
  (args.output_dir / 'cheap_drafts.md').write_text(markdown(report), encoding='utf-8')
  print(f'wrote {args.output_dir}/cheap_drafts.{{json,md}} in {report["duration_s"] / 60:.1f} '
        f'min')


if __name__ == '__main__':
  main()
