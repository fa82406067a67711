"""A family's target, loaded: what PaSS training and the cheap-draft measurements run on.

`load_family_target` loads the target of a family of configs/family.json (or
any T5X checkpoint and preset); `add_target_arguments` / `target_from_args`
are the command-line flags the scripts share for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax

from specdec_t5x import checkpoints, network, paths
from specdec_t5x.training.family import DEFAULT_CONFIG, TARGET_ROLE, family_entry, model_config


@dataclasses.dataclass(frozen=True)
class FamilyTarget:
  module: network.Transformer
  params: Any
  model_dir: pathlib.Path  # where look-ahead files go, beside checkpoint_<step>/
  preset: str
  label: str


_TARGET_HINT = ('; train the family (scripts/train_family.py) or pass '
                '--target-checkpoint/--target-preset')


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
  """The command-line flags of `target_from_args`."""
  parser.add_argument('--family', default='default',
                      help='family in --family-config whose "target" model is used')
  parser.add_argument('--family-config', type=pathlib.Path, default=DEFAULT_CONFIG,
                      help='the family configuration (scripts/train_family.py)')
  parser.add_argument('--target-checkpoint', default=None,
                      help='a T5X checkpoint (model dir or checkpoint_<step>) instead of the '
                           'family\'s; needs --target-preset')
  parser.add_argument('--target-preset', default=None,
                      help='network preset of --target-checkpoint (see network.PRESETS)')
  parser.add_argument('--target-overrides', type=json.loads, default={},
                      help='JSON of T5Config fields that override --target-preset\'s')


def target_spec(family: str = 'default', family_config: str | os.PathLike = DEFAULT_CONFIG, *,
                target_checkpoint: str | os.PathLike | None = None,
                target_preset: str | None = None,
                target_overrides: Mapping[str, Any] | None = None
                ) -> tuple[network.T5Config, pathlib.Path, str, str]:
  """`(config, checkpoint, preset, label)`: the given checkpoint, else the family's target."""
  if target_checkpoint or target_preset:
    if not (target_checkpoint and target_preset):
      raise ValueError('--target-checkpoint and --target-preset go together')
    config = network.config_from_preset(target_preset, **dict(target_overrides or {}))
    return config, pathlib.Path(target_checkpoint), target_preset, target_preset
  entry = family_entry(family, family_config, hint=_TARGET_HINT)
  target = next((model for model in entry['models'] if model.get('role') == TARGET_ROLE), None)
  if target is None:
    raise ValueError(f'family {family!r} has no model with role "target"')
  return (model_config(target), paths.cache_dir('models', family, target['name']),
          target['preset'], f'{family}/{target["name"]} ({target["preset"]})')


def load_family_target(family: str = 'default', family_config: str | os.PathLike = DEFAULT_CONFIG,
                       **checkpoint: Any) -> FamilyTarget:
  """The target's module and parameters (checked against its config); see `target_spec`."""
  config, checkpoint_path, preset, label = target_spec(family, family_config, **checkpoint)
  params = checkpoints.load_t5x_params(checkpoint_path, config)
  directory = (checkpoint_path.parent if checkpoint_path.name.startswith('checkpoint_')
               else checkpoint_path)
  return FamilyTarget(module=network.Transformer(config),
                      params=jax.tree.map(jax.numpy.asarray, params), model_dir=directory,
                      preset=preset, label=label)


def target_from_args(args: argparse.Namespace) -> FamilyTarget:
  """`load_family_target` with the flags of `add_target_arguments`."""
  return load_family_target(args.family, args.family_config,
                            target_checkpoint=args.target_checkpoint,
                            target_preset=args.target_preset,
                            target_overrides=args.target_overrides)



__all__ = ['FamilyTarget', 'add_target_arguments', 'target_spec', 'load_family_target',
           'target_from_args']
