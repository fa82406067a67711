#!/usr/bin/env python
"""Greedy decoding speed of our baseline against T5X's own decoding and Hugging Face, same weights.

Every speed-up the project reports is a ratio over `specdec_t5x.decoding.autoregressive_decode`.
This script checks that baseline against what a T5X or PyTorch user would run instead, on the
SAME weights and inputs, greedy, batch 1 and 8 by default:

  ours          `decoding.autoregressive_decode` (one jitted `lax.while_loop`);
  t5x           T5X's own `EncoderDecoderModel.predict_batch` (`t5x.decoding.temperature_sample`
                at temperature 0) on T5X's example network `t5x.examples.t5.network.Transformer`,
                jitted as `t5x.infer` runs it; only when t5x is importable (run this script with
                a Python that has t5x and specdec_t5x, e.g. /tmp/t5x-venv/bin/python);
  hf            Hugging Face `T5ForConditionalGeneration.generate` (greedy, eager PyTorch) on
                the weights converted by `specdec_t5x.hf_convert.to_hf_model`;
  speculative   our `decoding.speculative_decode` with a `drafters.ModelDrafter`.

Models: the T5 1.1-small shape (`--preset`) with random weights (queries scaled as T5X
initialises them, see `specdec_t5x.bench.random_weights.random_params`), EOS banned (the EOS
column of `logits_dense` is zeroed, identically for every backend, so every run decodes the
full length), with a smaller random draft (`--draft-preset`, which accepts almost nothing: the
worst case of speculation); and with `--family`, every size of the trained family whose
checkpoints exist (configs/family.json, under $SPECDEC_CACHE_DIR/models/<family>/), on real EnDe
test inputs, the target also decoded speculatively with each trained draft.

Timing: compilation and a warm-up run excluded; `--runs` rounds in which every backend decodes
the batch once, in a shuffled order (so load from other processes hits them alike); the medians
are reported. ms/step is wall time over decoding steps (the longest output of the batch: every
backend stops when all rows have emitted EOS). The memory-bound floor of a step is the bytes of
decoder parameters a cached step must read, over the read bandwidth of this machine measured
here. Tokens of ours, t5x and hf are compared position by position.

Writes <output-dir>/baselines.{json,md}. Example:

  JAX_PLATFORMS=cpu /tmp/t5x-venv/bin/python scripts/bench_baselines.py --family
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from specdec_t5x import network, paths  # noqa: E402
from specdec_t5x.bench import baselines, baselines_report, machine, report  # noqa: E402


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
  """Shows the module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
  parser.add_argument('--preset', default='t5_1_1_small',
                      help='shape of the random-weights model; known: '
                           + ', '.join(network.PRESETS))
  parser.add_argument('--draft-preset', default='cpu_small',
                      help='shape of the random draft of the random-weights model (its '
                           'vocabulary is set to the target\'s)')
  parser.add_argument('--no-random', action='store_true',
                      help='skip the random-weights model (with --family: trained models only)')
  parser.add_argument('--family', nargs='?', const='default', default=None,
                      help='also benchmark every trained model of this family of '
                           'configs/family.json whose checkpoint exists (real EnDe inputs)')
  parser.add_argument('--batches', default='1,8', help='comma-separated batch sizes')
  parser.add_argument('--max-decode-len', type=int, default=64, help='tokens per output row')
  parser.add_argument('--encoder-length', type=int, default=64,
                      help='encoder input tokens of the random-weights model (random ids)')
  parser.add_argument('--gamma', type=int, default=3, help='draft tokens per speculative step')
  parser.add_argument('--runs', type=int, default=7,
                      help='timed rounds; each decodes the batch once with every backend')
  parser.add_argument('--backends', default=','.join(baselines.BACKENDS),
                      help='comma-separated subset of ' + ', '.join(baselines.BACKENDS))
  parser.add_argument('--seed', type=int, default=0, help='seed for weights and inputs')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results',
                      help='where baselines.json and baselines.md are written')
  args = parser.parse_args(argv)
  args.batches = [int(b) for b in args.batches.split(',') if b.strip()]
  args.backends = [b.strip() for b in args.backends.split(',') if b.strip()]
  unknown = sorted(set(args.backends) - set(baselines.BACKENDS))
  if unknown:
    parser.error(f'unknown backends {unknown}; known: {list(baselines.BACKENDS)}')
  if 'ours' not in args.backends:
    parser.error('--backends must include ours: every ratio is relative to it')
  if not args.batches or min(args.batches) < 1:
    parser.error('--batches must be positive integers')
  for flag in ('max_decode_len', 'encoder_length', 'gamma', 'runs'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")} must be >= 1')
  if args.no_random and args.family is None:
    parser.error('--no-random leaves nothing to benchmark without --family')
  network.config_from_preset(args.preset)
  network.config_from_preset(args.draft_preset)
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  started = time.time()
  t5x_missing = baselines.t5x_status()
  if t5x_missing is not None and 't5x' in args.backends:
    print(f'T5X IS NOT IMPORTABLE ({t5x_missing}): the t5x backend is skipped. Run this script '
          'with a Python that has t5x, e.g. /tmp/t5x-venv/bin/python.', flush=True)
  bandwidth = machine.read_bandwidth()
  print(f"read bandwidth {bandwidth['read_gb_s']:.1f} GB/s, copy {bandwidth['copy_gb_s']:.1f} "
        'GB/s', flush=True)
  models, notes = baselines.collect_models(
      preset=args.preset, draft_preset=args.draft_preset, random=not args.no_random,
      family=args.family, num_inputs=max(args.batches), encoder_length=args.encoder_length,
      seed=args.seed)
  results = baselines.benchmark_all(
      models, args.batches, notes, backends=args.backends, max_decode_len=args.max_decode_len,
      gamma=args.gamma, runs=args.runs, seed=args.seed, bandwidth=bandwidth,
      t5x_missing=t5x_missing)
  record = baselines_report.build_report(
      results, notes=notes, settings=report.settings_record(args), bandwidth=bandwidth,
      t5x_missing=t5x_missing, started=started)
  baselines_report.write_report(args.output_dir, record)
  print('\n'.join(baselines_report.verdicts(results)))
  print(f'wrote {args.output_dir}/baselines.{{json,md}} in {record["duration_s"] / 60:.1f} min')


if __name__ == '__main__':
  sys.exit(main())
