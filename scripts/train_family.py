#!/usr/bin/env python
"""Trains every model of a family (a target and its drafts) described in configs/family.json.

Each model trains on the family's seqio mixture with `specdec_t5x.training.train` (Adafactor, T5X's
rsqrt schedule) and ends as the T5X checkpoint

  $SPECDEC_CACHE_DIR/models/<family>/<model>/checkpoint_<steps>/

(default cache ~/.cache/specdec_t5x). Training is resumable: a killed run restarts from its last
saved state (every `save_every` steps) and replays the same batches. A model whose final
checkpoint exists is skipped, so a second run returns at once. Model sizes and training times
are written to $SPECDEC_CACHE_DIR/models/<family>/training.json.

Families (see configs/family.json): `default`, the CPU-scale family of the results (about 89 min
on 2 cores), and `miniature`, test-sized models that train in a minute or two for CI.
The data must be built first (scripts/build_data.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Mapping
from typing import Any

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

from specdec_t5x import network, training  # noqa: E402
from specdec_t5x.paths import cache_dir, repo_root  # noqa: E402

DEFAULT_CONFIG = repo_root() / 'configs' / 'family.json'
TRAINING_SUMMARY = 'training.json'
TARGET_ROLE = 'target'
DRAFT_ROLE = 'draft'
FAMILY_KEYS = ('description', 'mixture', 'feature_lengths', 'pack', 'batch_size', 'data_seed',
               'hparams', 'save_every', 'min_target_param_ratio', 'models', 'eval')
MODEL_KEYS = ('name', 'role', 'preset', 'num_steps')


# ---------------------------------------------------------------------------------------------
# The family configuration.


def load_family(name: str, config_path: str | os.PathLike = DEFAULT_CONFIG) -> dict[str, Any]:
  """The family `name` of the JSON file `config_path`, checked (see `check_family`)."""
  config_path = pathlib.Path(config_path)
  if not config_path.is_file():
    raise ValueError(f'family configuration not found: {config_path}')
  families = json.loads(config_path.read_text()).get('families', {})
  if name not in families:
    raise ValueError(f'unknown family {name!r} in {config_path}; known: {sorted(families)}')
  family = families[name]
  check_family(name, family)
  return family


def check_family(name: str, family: Mapping[str, Any]) -> None:
  """Raises a `ValueError` naming what is missing or malformed in a family's configuration."""
  missing = [key for key in FAMILY_KEYS if key not in family]
  if missing:
    raise ValueError(f'family {name!r} lacks {missing}')
  if set(family['feature_lengths']) != {'inputs', 'targets'} or min(
      family['feature_lengths'].values()) < 1:
    raise ValueError(f'family {name!r}: feature_lengths must give positive "inputs" and '
                     f'"targets", got {family["feature_lengths"]}')
  if family['batch_size'] < 1 or family['save_every'] < 1:
    raise ValueError(f'family {name!r}: batch_size and save_every must be >= 1')
  models = family['models']
  if not models:
    raise ValueError(f'family {name!r} has no models')
  for model in models:
    missing = [key for key in MODEL_KEYS if key not in model]
    if missing:
      raise ValueError(f'family {name!r}: model {model.get("name", model)} lacks {missing}')
    if model['role'] not in (TARGET_ROLE, DRAFT_ROLE):
      raise ValueError(f'family {name!r}: model {model["name"]!r} has role {model["role"]!r}; '
                       f'expected {TARGET_ROLE!r} or {DRAFT_ROLE!r}')
    if model['preset'] not in network.PRESETS:
      raise ValueError(f'family {name!r}: model {model["name"]!r} has unknown preset '
                       f'{model["preset"]!r}; known: {sorted(network.PRESETS)}')
    if model['num_steps'] < 1:
      raise ValueError(f'family {name!r}: model {model["name"]!r} needs num_steps >= 1')
  names = [model['name'] for model in models]
  if len(set(names)) != len(names):
    raise ValueError(f'family {name!r}: model names repeat: {names}')
  roles = [model['role'] for model in models]
  if roles.count(TARGET_ROLE) != 1 or DRAFT_ROLE not in roles:
    raise ValueError(f'family {name!r} needs exactly one {TARGET_ROLE!r} and at least one '
                     f'{DRAFT_ROLE!r}, got roles {roles}')
  training.TrainHParams(**family['hparams'])  # its own checks name a bad value


def model_config(model: Mapping[str, Any]) -> network.T5Config:
  """The `T5Config` of one model entry: its preset with the entry's `overrides`."""
  return network.config_from_preset(model['preset'], **model.get('overrides', {}))


def train_hparams(family: Mapping[str, Any]) -> training.TrainHParams:
  return training.TrainHParams(**family['hparams'])


def count_params(config: network.T5Config) -> int:
  """Parameters of `Transformer(config)`, from shapes only (nothing is initialised)."""
  shapes = jax.eval_shape(lambda: training.init_params(config))
  return int(sum(leaf.size for leaf in jax.tree.leaves(shapes)))


def target_model(family: Mapping[str, Any]) -> dict[str, Any]:
  return next(model for model in family['models'] if model['role'] == TARGET_ROLE)


def check_param_ratio(family: Mapping[str, Any]) -> dict[str, int]:
  """Parameter counts by model name; raises unless the target is big enough.

  The target must have at least `min_target_param_ratio` times the parameters of the
  largest draft (the paper's T5-XXL is 14x T5-large).
  """
  counts = {model['name']: count_params(model_config(model)) for model in family['models']}
  target = target_model(family)['name']
  largest_draft = max(count for name, count in counts.items() if name != target)
  ratio = counts[target] / largest_draft
  if ratio < family['min_target_param_ratio']:
    raise ValueError(f'the target has {counts[target]:,} parameters, only {ratio:.2f}x the '
                     f'largest draft ({largest_draft:,}); the family asks for at least '
                     f'{family["min_target_param_ratio"]}x')
  return counts


def describe(config: network.T5Config) -> str:
  """`d512 h8 L6/6 mlp1024 v8192`: width, heads, encoder/decoder layers, MLP width, vocab."""
  return (f'd{config.emb_dim} h{config.num_heads} L{config.num_encoder_layers}/'
          f'{config.num_decoder_layers} mlp{config.mlp_dim} v{config.vocab_size}')


# ---------------------------------------------------------------------------------------------
# Training.


def models_dir(family_name: str) -> pathlib.Path:
  """`$SPECDEC_CACHE_DIR/models/<family>`."""
  return cache_dir('models', family_name)


def model_dir(family_name: str, model_name: str) -> pathlib.Path:
  """`$SPECDEC_CACHE_DIR/models/<family>/<model>`: resumable state and the T5X checkpoint."""
  return cache_dir('models', family_name, model_name)


def batches_dir(family_name: str) -> pathlib.Path:
  """`$SPECDEC_CACHE_DIR/batches/<family>`: the family's training batches, materialised once."""
  return cache_dir('batches', family_name)


def make_batch_factory(family_name: str, family: Mapping[str, Any], *,
                       progress: bool = True) -> training.BatchFactory:
  """`make_batches(start)` over the family's mixture, in a fixed order shared by all models.

  The batches are produced once by seqio and kept as arrays (see
  `tasks.cached_train_batches`), so the drafts do not pay for the TF pipeline again.
  """
  from specdec_t5x.data import tasks  # TensorFlow is slow to import; --dry-run skips it

  num_batches = max(model['num_steps'] for model in family['models'])
  return tasks.cached_train_batches(
      batches_dir(family_name), family['mixture'], family['batch_size'], num_batches,
      progress=progress, lengths=family['feature_lengths'], seed=family['data_seed'],
      pack=family['pack'])


def train_model(family_name: str, family: Mapping[str, Any], model: Mapping[str, Any], *,
                progress: bool = True) -> dict[str, Any]:
  """Trains (or finds trained) one model; returns its row of training.json."""
  config = model_config(model)
  started = time.perf_counter()
  summary = training.train(
      config, make_batch_factory(family_name, family, progress=progress), model['num_steps'],
      model_dir(family_name, model['name']), hparams=train_hparams(family),
      save_every=family['save_every'], progress=progress,
      desc=f'{family_name}/{model["name"]} ({describe(config)})')
  return {
      'name': model['name'], 'role': model['role'], 'preset': model['preset'],
      'architecture': describe(config), 'config': config_dict(config),
      'num_params': summary.num_params, 'num_steps': summary.num_steps,
      'batch_size': family['batch_size'], 'feature_lengths': dict(family['feature_lengths']),
      'pack': family['pack'], 'train_seconds': summary.train_seconds,
      'seconds_per_step': summary.train_seconds / summary.num_steps,
      'final_train_loss': summary.final_loss, 'checkpoint': str(summary.checkpoint_dir),
      'cached': summary.cached, 'wall_seconds_this_run': time.perf_counter() - started,
      'load_average_1min_at_end': os.getloadavg()[0],
  }


def config_dict(config: network.T5Config) -> dict[str, Any]:
  """`config` as JSON-able values (the dtype by name)."""
  return {field.name: (jax.numpy.dtype(value).name if field.name == 'dtype'
                       else list(value) if isinstance(value, tuple) else value)
          for field in dataclasses.fields(config)
          for value in [getattr(config, field.name)]}


def keep_recorded_load(row: dict[str, Any], earlier: Mapping[str, Any] | None) -> dict[str, Any]:
  """For a model this run found cached, the load average recorded when it was trained."""
  if row['cached'] and earlier and earlier.get('checkpoint') == row['checkpoint']:
    row['load_average_1min_at_end'] = earlier.get('load_average_1min_at_end')
  return row


def write_json_atomically(path: pathlib.Path, payload: Mapping[str, Any]) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(payload, indent=2) + '\n')
  os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--family', default='default',
                      help='which family of the configuration to train (default: %(default)s; '
                           'the file also has "miniature")')
  parser.add_argument('--config', type=pathlib.Path, default=DEFAULT_CONFIG,
                      help='family configuration JSON (default: %(default)s)')
  parser.add_argument('--only', nargs='+', metavar='MODEL',
                      help='train only these models of the family (default: all, in file order)')
  parser.add_argument('--dry-run', action='store_true',
                      help='print the plan (architectures, parameters, steps) and exit')
  parser.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    family = load_family(args.family, args.config)
    counts = check_param_ratio(family)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  models = family['models']
  if args.only:
    unknown = sorted(set(args.only) - {model['name'] for model in models})
    if unknown:
      print(f'error: --only names unknown models {unknown}', file=sys.stderr)
      return 2
    models = [model for model in models if model['name'] in args.only]

  target_params = counts[target_model(family)['name']]
  print(f'family {args.family!r}: {family["mixture"]}, batch {family["batch_size"]} '
        f'{"packed " if family["pack"] else ""}rows of {family["feature_lengths"]}')
  for model in models:
    print(f'  {model["name"]:<8} {describe(model_config(model)):<32} '
          f'{counts[model["name"]] / 1e6:6.1f}M params (target/this '
          f'{target_params / counts[model["name"]]:5.1f}x), {model["num_steps"]} steps')
  if args.dry_run:
    return 0

  # Compiled train steps are reused by a resumed run.
  jax.config.update('jax_compilation_cache_dir', str(cache_dir('jax_compilation_cache')))
  summary_path = models_dir(args.family) / TRAINING_SUMMARY
  previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
  rows = {row['name']: row for row in previous.get('models', [])}
  for model in models:
    row = train_model(args.family, family, model, progress=not args.no_progress)
    state = 'cached' if row['cached'] else f'trained in {row["wall_seconds_this_run"]:.0f} s'
    print(f'[{model["name"]}] {state}: {row["num_steps"]} steps, '
          f'{row["train_seconds"] / 60:.1f} min of training, final loss '
          f'{row["final_train_loss"]}, {row["checkpoint"]}', flush=True)
    rows[model['name']] = keep_recorded_load(row, rows.get(model['name']))
    ordered = [rows[m['name']] for m in family['models'] if m['name'] in rows]
    write_json_atomically(summary_path, {
        'family': args.family, 'config_file': str(args.config.resolve()),
        'mixture': family['mixture'], 'hparams': dataclasses.asdict(train_hparams(family)),
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(),
                    'jax': jax.__version__},
        'total_train_seconds': sum(row['train_seconds'] for row in ordered),
        'models': ordered})
  print(f'wrote {summary_path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
