"""Cost of one cached decoder call on K = 1..8 query positions, relative to K = 1.

Speculative decoding scores γ draft tokens (K = γ+1 positions) in ONE target
decoder call; the paper's walltime formula assumes that call costs the same as
a one-position step. This script measures what it really costs on this machine
for a few model sizes, which decides how much speculation can win here
(`specdec_t5x.theory.walltime_improvement_measured` / `optimal_gamma` take the
curve).

What is timed, per preset: `Transformer.decode(decode=True)` on a cache of
`--cache-length` positions whose cross-attention keys/values were computed
once from a precomputed encoder output of `--encoder-length` tokens, writing
K tokens at position `--prefix-length` of every row. Each timed sample runs
several such calls chained in one jitted `lax.fori_loop` (each call's argmax
tokens are the next call's inputs, so no call is dead code and nothing is
hoisted), the way the speculative loop runs them: this leaves out the
per-dispatch overhead of a Python-level call, which would otherwise dominate
the smallest models. The K values are interleaved in shuffled rounds so that
load from other processes hits them alike, and each K's cost is the median
over rounds of its time relative to the K = 1 sample of the same round.

Writes <output-dir>/scoring_cost.{json,md,png}. Examples:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_scoring_cost.py --presets cpu_small,cpu_target
  # What position-invariant decoding costs (results/bfloat16/):
  JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_scoring_cost.py --presets cpu_target \
      --variants float32:auto,float32:invariant,bfloat16:auto,bfloat16:cpu \
      --output-dir results/bfloat16
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Sequence

import numpy as np

from specdec_t5x import paths
from specdec_t5x.bench import report, scoring_cost
from specdec_t5x.network import PRESETS, config_from_preset, kernels


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
  """Shows the module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
  parser.add_argument('--presets', default=','.join(scoring_cost.DEFAULT_PRESETS),
                      help='comma-separated model presets to time, random fp32 weights; known: '
                           + ', '.join(PRESETS))
  parser.add_argument('--variants', default='float32:auto',
                      help='comma-separated dtype:decode_kernels pairs to time each preset in, '
                           "e.g. float32:auto,bfloat16:auto,bfloat16:cpu (decode_kernels: "
                           f"{', '.join(kernels.DECODE_KERNELS)}; see specdec_t5x.network.kernels)")
  parser.add_argument('--max-k', type=int, default=8,
                      help='time K = 1..max-k query positions per decoder call')
  parser.add_argument('--batch', type=int, default=1, help='batch rows per decoder call')
  parser.add_argument('--encoder-length', type=int, default=48,
                      help='encoder input tokens (its output is computed once, outside timing)')
  parser.add_argument('--cache-length', type=int, default=128,
                      help='decoder self-attention cache length (every call attends over it)')
  parser.add_argument('--prefix-length', type=int, default=64,
                      help='cache position at which every call writes its K tokens '
                           '(prefix-length + max-k must fit in cache-length)')
  parser.add_argument('--rounds', type=int, default=30,
                      help='timed samples per K; each round times every K once, in shuffled order')
  parser.add_argument('--sample-ms', type=float, default=40.0,
                      help='target duration of one timed sample at K=1: that many ms worth of '
                           'decoder calls are chained in one jitted loop (at least 1 call)')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed runs per K after compilation')
  parser.add_argument('--reference-preset', default='cpu_target',
                      help='preset whose K=1 time the others are divided by in the table (the '
                           'draft/target cost ratio c); skipped when not among --presets')
  parser.add_argument('--seed', type=int, default=0, help='seed for weights, tokens and K order')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results',
                      help='where scoring_cost.json, .md and .png are written')
  args = parser.parse_args(argv)
  args.presets = [name.strip() for name in args.presets.split(',') if name.strip()]
  for name in args.presets:
    config_from_preset(name)  # Fails now, not after the first preset's minutes.
  if not args.presets:
    parser.error('--presets is empty')
  args.variants = [tuple(v.strip().split(':')) for v in args.variants.split(',') if v.strip()]
  for variant in args.variants:
    if (len(variant) != 2 or variant[0] not in ('float32', 'bfloat16')
        or variant[1] not in kernels.DECODE_KERNELS):
      parser.error(f'--variants: {":".join(variant)!r} is not dtype:decode_kernels with dtype '
                   f'float32 or bfloat16 and decode_kernels one of {kernels.DECODE_KERNELS}')
  for flag in ('max_k', 'batch', 'encoder_length', 'cache_length', 'rounds'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")} must be >= 1')
  if args.prefix_length < 0 or args.prefix_length + args.max_k > args.cache_length:
    parser.error(f'need 0 <= --prefix-length and --prefix-length + --max-k <= --cache-length, '
                 f'got {args.prefix_length} + {args.max_k} > {args.cache_length}')
  if args.sample_ms <= 0 or args.warmup < 0:
    parser.error('--sample-ms must be > 0 and --warmup >= 0')
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  started = time.time()
  rng = np.random.default_rng(args.seed)
  results = [scoring_cost.measure_preset(
      name, batch=args.batch, encoder_length=args.encoder_length,
      cache_length=args.cache_length, prefix_length=args.prefix_length, max_k=args.max_k,
      rounds=args.rounds, sample_ms=args.sample_ms, warmup=args.warmup, seed=args.seed, rng=rng,
      dtype=dtype, decode_kernels=decode_kernels)
      for name in args.presets for dtype, decode_kernels in args.variants]
  record = scoring_cost.build_report(results, report.settings_record(args), started)
  scoring_cost.write_report(args.output_dir, record)
  table, _ = scoring_cost.markdown_tables(results, args.reference_preset)
  print(table)
  print(f'wrote {args.output_dir}/scoring_cost.{{json,md,png}} '
        f'in {record["duration_s"] / 60:.1f} min')


if __name__ == '__main__':
  main()
