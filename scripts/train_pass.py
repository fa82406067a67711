#!/usr/bin/env python
"""Trains PaSS look-ahead embeddings for a frozen target and saves them beside its checkpoint.

Only the L look-ahead embeddings `[L, emb_dim]` are trained (Adam, `specdec_t5x.pass_drafter`),
by cross-entropy of look-ahead j against the true token j + 1 steps ahead, on the training
targets of the family's seqio mixture; the target's weights are never changed. The result is

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
import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

from specdec_t5x import checkpoints, network, paths  # noqa: E402
from specdec_t5x import pass_drafter as pass_lib  # noqa: E402

FAMILY_CONFIG = paths.repo_root() / 'configs' / 'family.json'
DEFAULT_MIXTURE = 'ddtp_all'


# ------------------------------------------------------------------------------
# The target (shared with scripts/measure_cheap_drafts.py).
# ------------------------------------------------------------------------------


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--family', default='default',
                      help='family in --family-config whose "target" model is used')
  parser.add_argument('--family-config', type=pathlib.Path, default=FAMILY_CONFIG,
                      help='the family configuration (scripts/train_family.py)')
  parser.add_argument('--target-checkpoint', default=None,
                      help='a T5X checkpoint (model dir or checkpoint_<step>) instead of the '
                           'family\'s; needs --target-preset')
  parser.add_argument('--target-preset', default=None,
                      help='network preset of --target-checkpoint (see network.PRESETS)')
  parser.add_argument('--target-overrides', type=json.loads, default={},
                      help='JSON of T5Config fields that override --target-preset\'s')


def family_entry(args: argparse.Namespace) -> dict[str, Any]:
  """The family's configuration, from `--family-config`."""
  if not args.family_config.is_file():
    raise ValueError(f'family configuration not found: {args.family_config}; train the family '
                     f'(scripts/train_family.py) or pass --target-checkpoint/--target-preset')
  families = json.loads(args.family_config.read_text()).get('families', {})
  if args.family not in families:
    raise ValueError(f'unknown family {args.family!r} in {args.family_config}; known: '
                     f'{sorted(families)}')
  return families[args.family]


@dataclasses.dataclass(frozen=True)
class Target:
  module: network.Transformer
  params: Any
  model_dir: pathlib.Path  # where look-ahead files go, beside checkpoint_<step>/
  preset: str
  label: str


def target_spec(args: argparse.Namespace) -> tuple[network.T5Config, pathlib.Path, str, str]:
  """`(config, checkpoint, preset, label)` of the target the arguments name."""
  if args.target_checkpoint or args.target_preset:
    if not (args.target_checkpoint and args.target_preset):
      raise ValueError('--target-checkpoint and --target-preset go together')
    config = network.config_from_preset(args.target_preset, **args.target_overrides)
    return config, pathlib.Path(args.target_checkpoint), args.target_preset, args.target_preset
  family = family_entry(args)
  target = next((model for model in family['models'] if model.get('role') == 'target'), None)
  if target is None:
    raise ValueError(f'family {args.family!r} has no model with role "target"')
  config = network.config_from_preset(target['preset'], **target.get('overrides', {}))
  checkpoint = paths.cache_dir('models', args.family, target['name'])
  return (config, checkpoint, target['preset'],
          f'{args.family}/{target["name"]} ({target["preset"]})')


def load_target(args: argparse.Namespace) -> Target:
  """The target's module and parameters (checked against its config)."""
  config, checkpoint, preset, label = target_spec(args)
  params = checkpoints.load_t5x_params(checkpoint, config)
  model_dir = checkpoint.parent if checkpoint.name.startswith('checkpoint_') else checkpoint
  return Target(module=network.Transformer(config),
                params=jax.tree.map(jax.numpy.asarray, params), model_dir=model_dir,
                preset=preset, label=label)


# ------------------------------------------------------------------------------
# Training.
# ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_target_arguments(parser)
  parser.add_argument('--mixture', default=None,
                      help=f'seqio task or mixture to train on (default: the family\'s mixture, '
                           f'else {DEFAULT_MIXTURE})')
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


def feature_lengths(args: argparse.Namespace, mixture: str) -> dict[str, int]:
  """The task's own lengths (rows are not packed), targets cut to --target-length."""
  from specdec_t5x.data import tasks

  lengths = dict(tasks.feature_lengths(mixture))
  if args.target_length:
    lengths['targets'] = min(lengths['targets'], args.target_length)
  return lengths


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  from specdec_t5x.data import tasks

  target = load_target(args)
  mixture = args.mixture
  if mixture is None:
    mixture = DEFAULT_MIXTURE if args.target_checkpoint else family_entry(args).get(
        'mixture', DEFAULT_MIXTURE)
  lengths = feature_lengths(args, mixture)
  hparams = pass_lib.PassHParams(num_lookahead=args.num_lookahead,
                                 learning_rate=args.learning_rate,
                                 samples_per_sequence=args.samples_per_sequence, seed=args.seed)
  output = args.output or pass_lib.default_lookahead_path(target.model_dir, args.num_lookahead)

  def make_batches(start: int):
    return tasks.iter_train_batches(mixture, args.batch_size, lengths, seed=args.seed,
                                    skip_batches=start)

  summary = pass_lib.train_lookahead(
      target.module, target.params, make_batches, args.steps, output, hparams=hparams,
      data={'target': target.label, 'mixture': mixture, 'batch_size': args.batch_size,
            'feature_lengths': lengths})
  how = 'cached' if summary.cached else f'{summary.steps_trained} steps trained'
  print(f'PaSS look-ahead for {target.label}: {summary.path} ({how}, '
        f'{summary.train_seconds / 60:.1f} min in all); final loss {summary.final_loss}, per '
        f'look-ahead position {summary.final_per_position}')


if __name__ == '__main__':
  main()
