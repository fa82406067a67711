"""The model families of configs/family.json: a target and its drafts, trained alike.

A family names its seqio mixture, batch shape, data seed, T5X hyperparameters and
models (`name`, `role` 'target' or 'draft', network `preset`, `num_steps`,
optional `overrides`); `check_family` refuses a malformed one and
`check_param_ratio` a target that is not `min_target_param_ratio` times the
largest draft. Each model trains with `training.train` into

  $SPECDEC_CACHE_DIR/models/<family>/<model>/checkpoint_<steps>/

and `family_runs.train_models` records sizes and times in `<family>/training.json`. Paths in
that file are machine-free (`{cache}/models/...`, repository files relative to
the checkout; `resolve_recorded_path` reads them back).

A draft with `distill: {"from": <draft>, "divergence", "temperature", "data", "passes"}`
continues that independent draft towards the target for `num_steps` more steps
(`training.distill`) on batches it has not seen: their references, or (data "target_greedy")
the target's own greedy outputs (`training.generated`), read `passes` times (default 1:
`num_steps` distinct batches; the target's outputs cost a decode per batch, a pass over them
one draft step). `training.family_target` loads the target.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from specdec_t5x import network, paths
from specdec_t5x.training import distill, loop, models

DEFAULT_CONFIG = paths.repo_root() / 'configs' / 'family.json'
TRAINING_SUMMARY = 'training.json'
TARGET_ROLE = 'target'
DRAFT_ROLE = 'draft'
FAMILY_KEYS = ('description', 'mixture', 'feature_lengths', 'pack', 'batch_size', 'data_seed',
               'hparams', 'save_every', 'min_target_param_ratio', 'models', 'eval')
MODEL_KEYS = ('name', 'role', 'preset', 'num_steps')


# ---------------------------------------------------------------------------------------------
# The family configuration.


def family_entry(name: str, config_path: str | os.PathLike = DEFAULT_CONFIG,
                 hint: str = '') -> dict[str, Any]:
  """The family `name` of the JSON file `config_path`, unchecked.

  `hint` ends the error of a missing file (what to do about it).
  """
  config_path = pathlib.Path(config_path)
  if not config_path.is_file():
    raise ValueError(f'family configuration not found: {config_path}{hint}')
  families = json.loads(config_path.read_text()).get('families', {})
  if name not in families:
    raise ValueError(f'unknown family {name!r} in {config_path}; known: {sorted(families)}')
  return families[name]


def load_family(name: str, config_path: str | os.PathLike = DEFAULT_CONFIG) -> dict[str, Any]:
  """The family `name` of the JSON file `config_path`, checked (see `check_family`)."""
  family = family_entry(name, config_path)
  check_family(name, family)
  return family


def _check_model(name: str, model: Mapping[str, Any]) -> None:
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
  if 'distill' in model:
    distill_settings(model)
    distill_batches(model)


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
  if not family['models']:
    raise ValueError(f'family {name!r} has no models')
  for model in family['models']:
    _check_model(name, model)
  names = [model['name'] for model in family['models']]
  if len(set(names)) != len(names):
    raise ValueError(f'family {name!r}: model names repeat: {names}')
  roles = [model['role'] for model in family['models']]
  if roles.count(TARGET_ROLE) != 1 or DRAFT_ROLE not in roles:
    raise ValueError(f'family {name!r} needs exactly one {TARGET_ROLE!r} and at least one '
                     f'{DRAFT_ROLE!r}, got roles {roles}')
  models.TrainHParams(**family['hparams'])  # its own checks name a bad value
  for model in family['models']:
    if 'distill' in model:
      distilled_from(name, family, model)


def distilled_from(name: str, family: Mapping[str, Any], model: Mapping[str, Any]
                   ) -> Mapping[str, Any]:
  """The independent draft that the distilled draft `model` starts from, checked."""
  start = next((m for m in family['models'] if m['name'] == model['distill'].get('from')), None)
  if start is None or start['role'] != DRAFT_ROLE or 'distill' in start:
    raise ValueError(f'family {name!r}: model {model["name"]!r} must be distilled "from" an '
                     f'independent draft of the family, got {model["distill"].get("from")!r}')
  if model_config(start) != model_config(model) or model['role'] != DRAFT_ROLE:
    raise ValueError(f'family {name!r}: distilled draft {model["name"]!r} must have the role, '
                     f'preset and overrides of {start["name"]!r}, which it continues')
  return start


def distill_settings(model: Mapping[str, Any]) -> distill.DistillSettings:
  """The divergence, temperature and data of a distilled entry (its `distill` less `from`)."""
  return distill.DistillSettings(**{k: v for k, v in model['distill'].items()
                                     if k not in ('from', 'passes')})


def distill_batches(model: Mapping[str, Any]) -> int:
  """The distinct batches a distilled entry reads: its `num_steps` over its `passes` over them."""
  passes = model['distill'].get('passes', 1)
  if not (isinstance(passes, int) and passes >= 1 and model['num_steps'] % passes == 0):
    raise ValueError(f'model {model["name"]!r}: distill "passes" must be a positive integer '
                     f'dividing num_steps ({model["num_steps"]}), got {passes!r}')
  return model['num_steps'] // passes


def batches_needed(model: Mapping[str, Any], family: Mapping[str, Any]) -> int:
  """The training batches a model reads: a distilled one continues after its start's."""
  if 'distill' not in model:
    return model['num_steps']
  if distill_settings(model).data == 'target_greedy':
    return generated_range(family)[0] + distill_batches(model)
  return family_start_steps(family, model) + distill_batches(model)


def generated_range(family: Mapping[str, Any]) -> tuple[int, int]:
  """`(first, count)`: the batches decoded for all 'target_greedy' drafts, `(0, 0)` if none.

  They follow the longest-trained start (no draft has seen them); count is the most any
  draft reads (`distill_batches`).
  """
  greedy = [m for m in family['models']
            if 'distill' in m and distill_settings(m).data == 'target_greedy']
  return ((max(family_start_steps(family, m) for m in greedy),
           max(distill_batches(m) for m in greedy)) if greedy else (0, 0))


def family_start_steps(family: Mapping[str, Any], model: Mapping[str, Any]) -> int:
  """The steps of the draft a distilled `model` starts from."""
  return next(m['num_steps'] for m in family['models'] if m['name'] == model['distill']['from'])


def model_config(model: Mapping[str, Any]) -> network.T5Config:
  """The `T5Config` of one model entry: its preset with the entry's `overrides`."""
  return network.config_from_preset(model['preset'], **model.get('overrides', {}))


def train_hparams(family: Mapping[str, Any]) -> models.TrainHParams:
  return models.TrainHParams(**family['hparams'])


def count_params(config: network.T5Config) -> int:
  """Parameters of `Transformer(config)`, from shapes only (nothing is initialised)."""
  shapes = jax.eval_shape(lambda: models.init_params(config))
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


def config_dict(config: network.T5Config) -> dict[str, Any]:
  """`config` as JSON-able values (the dtype by name)."""
  return {field.name: (jax.numpy.dtype(value).name if field.name == 'dtype'
                       else list(value) if isinstance(value, tuple) else value)
          for field in dataclasses.fields(config)
          for value in [getattr(config, field.name)]}


def plan_lines(family_name: str, family: Mapping[str, Any], selected: Sequence[Mapping[str, Any]],
               counts: Mapping[str, int]) -> list[str]:
  """What `scripts/train_family.py` prints before training: the data, then one line a model."""
  target_params = counts[target_model(family)['name']]
  lines = [f'family {family_name!r}: {family["mixture"]}, batch {family["batch_size"]} '
           f'{"packed " if family["pack"] else ""}rows of {family["feature_lengths"]}']
  for model in selected:
    how = (f' distilled from {model["distill"]["from"]} ({model["distill"]["divergence"]}, '
           f'{model["num_steps"] // distill_batches(model)} pass(es) over '
           f'{distill_batches(model)} batches)' if 'distill' in model else '')
    lines.append(f'  {model["name"]:<15} {describe(model_config(model)):<28} '
                 f'{counts[model["name"]] / 1e6:6.1f}M params (target/this '
                 f'{target_params / counts[model["name"]]:5.1f}x), {model["num_steps"]} steps'
                 f'{how}')
  return lines


# ---------------------------------------------------------------------------------------------
# Where things go, and machine-free paths.


def models_dir(family_name: str) -> pathlib.Path:
  """`$SPECDEC_CACHE_DIR/models/<family>`."""
  return paths.cache_dir('models', family_name)


def model_dir(family_name: str, model_name: str) -> pathlib.Path:
  """`$SPECDEC_CACHE_DIR/models/<family>/<model>`: resumable state and the T5X checkpoint."""
  return paths.cache_dir('models', family_name, model_name)


def batches_dir(family_name: str) -> pathlib.Path:
  """`$SPECDEC_CACHE_DIR/batches/<family>`: the family's training batches, materialised once."""
  return paths.cache_dir('batches', family_name)


# ---------------------------------------------------------------------------------------------
# Training.


def make_batch_factory(family_name: str, family: Mapping[str, Any], *,
                       progress: bool = True) -> loop.BatchFactory:
  """`make_batches(start)` over the family's mixture, in a fixed order shared by all models.

  The batches are produced once by seqio and kept as arrays (see
  `tasks.cached_train_batches`), so the drafts do not pay for the TF pipeline again.
  """
  from specdec_t5x.data import tasks  # TensorFlow is slow to import; --dry-run skips it

  num_batches = max(batches_needed(model, family) for model in family['models'])
  return tasks.cached_train_batches(
      batches_dir(family_name), family['mixture'], family['batch_size'], num_batches,
      progress=progress, lengths=family['feature_lengths'], seed=family['data_seed'],
      pack=family['pack'])


__all__ = ['DEFAULT_CONFIG', 'TRAINING_SUMMARY', 'TARGET_ROLE', 'DRAFT_ROLE', 'family_entry',
           'load_family', 'check_family', 'model_config', 'train_hparams', 'count_params',
           'target_model', 'check_param_ratio', 'describe', 'config_dict', 'plan_lines',
           'models_dir', 'model_dir', 'batches_dir', 'make_batch_factory', 'distilled_from',
           'distill_settings', 'distill_batches', 'batches_needed', 'generated_range']
