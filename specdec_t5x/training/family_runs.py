"""Training a family of configs/family_lib.json: its models in order, distillations, training.json.

`train_models` trains (or finds trained) the selected models one after another,
each resumable, and records sizes and times in `<family>/training.json`;
`distill_draft` runs one distilled entry (`training.distill`) on the batches
`training.family` assigns it, with the target as teacher (`load_teacher`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from specdec_t5x import checkpoints, paths
from specdec_t5x.training import distill, generated, loop, models
from specdec_t5x.training import family as family_lib


def train_model(family_name: str, family: Mapping[str, Any], model: Mapping[str, Any], *,
                progress: bool = True) -> dict[str, Any]:
  """Trains (or finds trained) one model; returns its row of training.json."""
  config = family_lib.model_config(model)
  started = time.perf_counter()
  workdir = family_lib.model_dir(family_name, model['name'])
  desc = f'{family_name}/{model["name"]} ({family_lib.describe(config)})'
  if 'distill' in model:
    summary = distill_draft(
        family_name, family, family_lib.distilled_from(family_name, family, model),
        load_teacher(family_name, family, f'distilling {model["name"]!r}'),
        family_lib.distill_settings(model), model['num_steps'], workdir,
        passes=model['num_steps'] // family_lib.distill_batches(model), progress=progress,
        desc=desc)
  else:
    summary = models.train(
        config, family_lib.make_batch_factory(family_name, family, progress=progress),
        model['num_steps'], workdir, hparams=family_lib.train_hparams(family),
        save_every=family['save_every'], progress=progress, desc=desc)
  return {
      'name': model['name'], 'role': model['role'], 'preset': model['preset'],
      'architecture': family_lib.describe(config), 'config': family_lib.config_dict(config),
      'num_params': summary.num_params, 'num_steps': summary.num_steps,
      'batch_size': family['batch_size'], 'feature_lengths': dict(family['feature_lengths']),
      'pack': family['pack'], 'train_seconds': summary.train_seconds,
      'seconds_per_step': summary.train_seconds / model['num_steps'],
      'final_train_loss': summary.final_loss,
      'checkpoint': paths.portable_path(summary.checkpoint_dir),
      'cached': summary.cached, 'wall_seconds_this_run': time.perf_counter() - started,
      'load_average_1min_at_end': os.getloadavg()[0],
      # A distilled draft's steps continue its start's; its final loss is the divergence.
      **({'distill': dict(model['distill'])} if 'distill' in model else {}),
  }


def load_teacher(family_name: str, family: Mapping[str, Any], purpose: str) -> distill.Teacher:
  """The family's trained target, frozen, as the teacher of a distillation.

  Raises:
    ValueError: the target's final checkpoint is not there (`purpose` says what needed it).
  """
  target = family_lib.target_model(family)
  checkpoint = checkpoints.step_dir(family_lib.model_dir(family_name, target['name']),
                                    target['num_steps'])
  if not checkpoint.is_dir():
    raise ValueError(f'{purpose} needs the trained target ({checkpoint}); train it first')
  config = family_lib.model_config(target)
  return distill.Teacher(config, checkpoints.load_t5x_params(checkpoint, config), checkpoint)


def generated_dir(family_name: str, first: int, count: int) -> pathlib.Path:
  """Where the target's greedy outputs for training batches `first .. first + count - 1` live."""
  return paths.cache_dir('batches', f'{family_name}-target-greedy', f'{first}-{count}')


def distill_draft(family_name: str, family: Mapping[str, Any], start: Mapping[str, Any],
                  teacher: distill.Teacher, settings: distill.DistillSettings, num_steps: int,
                  workdir: pathlib.Path, *, passes: int = 1, progress: bool = True,
                  desc: str | None = None) -> models.TrainSummary:
  """Continues the trained draft `start` for `num_steps` steps towards `teacher` in `workdir`.

  The steps read `passes` times the `num_steps // passes` family training batches after the
  `start['num_steps']` that the draft was trained on, with the family's optimizer settings;
  for `settings.data == 'target_greedy'`, those of `family.generated_range` (or the first ones
  after the draft's own if those are fewer) with the teacher's greedy outputs as targets,
  decoded once into the cache with the teacher's hidden states (its logits are then one
  product a step).
  """
  first, distinct = start['num_steps'], num_steps // passes
  make_batches = family_lib.make_batch_factory(family_name, family, progress=progress)
  if settings.data == 'target_greedy':
    data_first, count = family_lib.generated_range(family)
    if count < distinct:  # a draft outside the family's entries (distill_compare's arms)
      data_first, count = first, distinct
    data = generated.cached_generated_batches(
        generated_dir(family_name, data_first, count), teacher, make_batches, data_first, count,
        progress=progress, teacher_hidden=True)
  else:
    data = lambda i: make_batches(first + i)
  start_run = distill.Start(family_lib.model_dir(family_name, start['name']), first)
  return distill.distill(
      family_lib.model_config(start), teacher, start_run, loop.repeat_batches(data, distinct),
      num_steps, workdir, hparams=family_lib.train_hparams(family), settings=settings,
      save_every=family['save_every'], progress=progress, desc=desc)


def keep_recorded_load(row: dict[str, Any], earlier: Mapping[str, Any] | None) -> dict[str, Any]:
  """For a model this run found cached, the load average recorded when it was trained."""
  resolve = paths.resolve_portable_path
  if (row['cached'] and earlier and 'checkpoint' in earlier
      and resolve(earlier['checkpoint']) == resolve(row['checkpoint'])):
    row['load_average_1min_at_end'] = earlier.get('load_average_1min_at_end')
  return row


def training_summary(family_name: str, family: Mapping[str, Any], config_path: pathlib.Path,
                     rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The contents of training.json: the family, this machine, and one row per model."""
  first, count = family_lib.generated_range(family)
  return {
      'family': family_name, 'config_file': paths.portable_path(config_path),
      'mixture': family['mixture'], 'hparams': dataclasses.asdict(family_lib.train_hparams(family)),
      'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(),
                  'jax': jax.__version__},
      'total_train_seconds': sum(row['train_seconds'] for row in rows),
      # Decoding the 'target_greedy' batches: part of the budget (none: no directory made).
      'target_greedy_seconds': (generated.generation_seconds(
          generated_dir(family_name, first, count)) if count else 0.0),
      'models': list(rows)}


def train_models(family_name: str, family: Mapping[str, Any], selected: Sequence[Mapping[str, Any]],
                 config_path: pathlib.Path, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> pathlib.Path:
  """Trains `selected` models of the family in order, updating training.json after each.

  Rows of models not trained in this run are kept from the previous training.json.
  Returns the path of training.json.
  """
  # Compiled train steps are reused by a resumed run.
  jax.config.update('jax_compilation_cache_dir', str(paths.cache_dir('jax_compilation_cache')))
  summary_path = family_lib.models_dir(family_name) / family_lib.TRAINING_SUMMARY
  previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
  rows = {row['name']: row for row in previous.get('models', [])}
  for model in selected:
    row = train_model(family_name, family, model, progress=progress)
    state = 'cached' if row['cached'] else f'trained in {row["wall_seconds_this_run"]:.0f} s'
    log(f'[{model["name"]}] {state}: {row["num_steps"]} steps, '
        f'{row["train_seconds"] / 60:.1f} min of training, final loss '
        f'{row["final_train_loss"]}, {row["checkpoint"]}')
    rows[model['name']] = keep_recorded_load(row, rows.get(model['name']))
    ordered = [rows[m['name']] for m in family['models'] if m['name'] in rows]
    loop.write_json_atomically(summary_path,
                               training_summary(family_name, family, config_path, ordered),
                               sort_keys=False)
  return summary_path


__all__ = ['train_model', 'train_models', 'training_summary', 'keep_recorded_load',
           'load_teacher', 'generated_dir', 'distill_draft']
