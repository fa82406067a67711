#!/usr/bin/env python
"""Trains PaSS look-ahead embeddings for a frozen target and saves them beside its checkpoint.

Only the L look-ahead embeddings `[L, emb_dim]` are trained (Adam,
`specdec_t5x.training.lookahead`), by cross-entropy of look-ahead j against the true token
j + 1 steps ahead, on the training targets of the family's seqio mixture; the target's weights
are never changed. The result is

  <model_dir>/pass_lookahead_L<L>.npz

next to the target's `checkpoint_<step>/` (a few kB, with the target's shapes and a fingerprint
of its weights, checked when loaded). Training shows a tqdm bar, resumes after a kill from
`<that file>.train/`, and a second run with the same settings returns at once.

The target defaults to the `target` model of `--family` in configs/family.json
($SPECDEC_CACHE_DIR/models/<family>/<name>/, trained by scripts/train_family.py); or give
`--target-checkpoint DIR --target-preset NAME`. Example:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/train_pass.py --family default --steps 300
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from specdec_t5x.drafters.lookahead import default_lookahead_path  # noqa: E402
from specdec_t5x.training import family_target  # noqa: E402
from specdec_t5x.training import lookahead as lookahead_training  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  family_target.add_target_arguments(parser)
  parser.add_argument('--mixture', default=None,
                      help=f'seqio task or mixture to train on (default: the family\'s mixture, '
                           f'else {lookahead_training.DEFAULT_MIXTURE})')
  parser.add_argument('--num-lookahead', type=int, default=6, help='L look-ahead embeddings')
  parser.add_argument('--steps', type=int, default=300, help='Adam steps')
  parser.add_argument('--batch-size', type=int, default=8, help='sequences per step')
  parser.add_argument('--samples-per-sequence', type=int, default=16,
                      help='prefix ends drawn per sequence and step (each trains all L)')
  parser.add_argument('--learning-rate', type=float, default=0.1, help='Adam learning rate')
  parser.add_argument('--target-length', type=int, default=64,
                      help='truncate training targets to this many tokens (EOS kept): the '
                           'frozen pass over the whole target dominates a step, and drafting '
                           'past it is rare (0 keeps the task\'s length)')
  parser.add_argument('--seed', type=int, default=0, help='initialisation, data order, prefixes')
  parser.add_argument('--output', type=pathlib.Path, default=None,
                      help='the .npz to write (default <model_dir>/pass_lookahead_L<L>.npz)')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  target = family_target.target_from_args(args)
  mixture = args.mixture
  if mixture is None:
    mixture = (lookahead_training.DEFAULT_MIXTURE if args.target_checkpoint
               else family_target.family_entry(args.family, args.family_config).get(
                   'mixture', lookahead_training.DEFAULT_MIXTURE))
  hparams = lookahead_training.PassHParams(
      num_lookahead=args.num_lookahead, learning_rate=args.learning_rate,
      samples_per_sequence=args.samples_per_sequence, seed=args.seed)
  output = args.output or default_lookahead_path(target.model_dir, args.num_lookahead)
  summary = lookahead_training.train_on_task(
      target.module, target.params, target.label, mixture, args.steps, output, hparams=hparams,
      batch_size=args.batch_size, target_length=args.target_length)
  how = 'cached' if summary.cached else f'{summary.steps_trained} steps trained'
  print(f'PaSS look-ahead for {target.label}: {summary.path} ({how}, '
        f'{summary.train_seconds / 60:.1f} min in all); final loss {summary.final_loss}, per '
        f'look-ahead position {summary.final_per_position}')


if __name__ == '__main__':
  main()
