"""A sweep's JSON config: its specs, their validation, and the path templates they use.

`load_config` reads `configs/sweep_*.json`; every key is checked here, so a typo
fails before any model is loaded. The bottom of the sweep package: it imports no
other module of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from specdec_t5x import network, paths
from specdec_t5x import sampling as sampling_lib
from specdec_t5x.drafters import registry

SECTIONS = ('grid', 'throughput', 'peer_hf', 'confirm')
EOS_ID = 1

@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A T5 checkpoint: where it is and which `T5Config` it has.

  `checkpoint` is a T5X checkpoint path (`load_t5x_params` takes a model
  directory or a `checkpoint_<step>` directory) with `{cache}`, `{repo}`,
  `{config_dir}`, `{task}`, `~` and `$VARS` expanded. The config is the
  `preset` (`network.PRESETS`) or, without one, the `model` entry of the
  `train_config.json` that `specdec_t5x.training.train` writes beside the
  checkpoint; `overrides` replaces fields of either.
  """

  name: str
  checkpoint: str
  preset: str | None = None
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Where a task's evaluation inputs come from and how long outputs may be.

  Exactly one of `seqio_task` (a task registered by `specdec_t5x.data.tasks`,
  read with `get_eval_examples(seqio_task, split, n)`) and `synthetic`
  (`{'length': L, 'vocab_size': V}`: random token ids, for tests) is set.
  `paper_task` ('EnDe' / 'CNNDM') pairs the task with the paper's rows.
  """

  name: str
  max_decode_len: int
  seqio_task: str | None = None
  split: str = 'test'
  synthetic: Mapping[str, int] | None = None
  paper_task: str | None = None
  label: str = ''


@dataclasses.dataclass(frozen=True)
class DraftSpec:
  """One draft: its `kind` (a key of `registry.BUILDERS`), the model it uses, kind options.

  Options by kind: `unigram` / `bigram`: `counts` (a path template; default the
  task's counts file, `training.ngram_counts.default_counts_path`) and
  `smoothing`; `pass`: `lookahead` (a path template; default beside the target
  checkpoint, `drafters.lookahead.default_lookahead_path`) and `num_lookahead`
  (default 6); `factory`: `factory = 'package.module:function'`, a registry
  builder.

  `paper_name` pairs it with the paper's rows ('T5-small', 'bigram', ...).
  `gammas`, if set, limits the γ its cells use (PaSS drafts at most L tokens).
  """

  name: str
  kind: str
  model: str | None = None
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  paper_name: str | None = None
  label: str = ''
  gammas: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class SectionSpec:
  """A grid of cells: tasks × drafts × temperatures × γ × batch sizes.

  Every cell decodes the task's first `num_inputs` inputs, in batches of its
  batch size (which must divide `num_inputs`), so all batch sizes see the same
  text.
  """

  tasks: tuple[str, ...]
  drafts: tuple[str, ...]
  temperatures: tuple[float, ...]
  gammas: tuple[int, ...]
  batch_sizes: tuple[int, ...]
  num_inputs: int
  # `"auto": {"max_gamma": G, "drafts": [...]}`: one more cell per (task, draft,
  # temperature, batch) at gamma='auto' up to G, for those drafts (default: all).
  auto_max_gamma: int | None = None
  auto_drafts: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PeerSpec:
  """Hugging Face `generate(assistant_model=...)` against ours, greedy, batch 1.

  `gamma` is ours: an int, or 'best' for the fastest γ of the grid at
  temperature 0 and batch 1 (`fallback_gamma` when the grid has none).
  `hf_settings` are the assistant settings tried (the fastest is HF's best):
  dicts with `name` and optional `num_assistant_tokens` (int or 'ours'),
  `num_assistant_tokens_schedule`, `assistant_confidence_threshold`.
  """

  tasks: tuple[str, ...]
  draft: str
  gamma: int | str
  fallback_gamma: int
  num_inputs: int
  hf_settings: tuple[Mapping[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class TimingSpec:
  """How things are timed.

  warmup_runs: untimed runs of each decoder after the compiling first call.
  step_rounds: interleaved rounds timing the target step, the γ+1 scoring
    call and the drafter's proposal (medians of per-round ratios).
  step_sample_ms: how long one timed sample of chained calls lasts.
  step_prefix: the decoder position at which step costs are timed.
  min_samples: paired (autoregressive, speculative) timings per cell at least:
    the batches are decoded again, in alternating order, until there are as
    many (32 inputs at batch 16 are 2 batches: 2 samples on a noisy machine).
  """

  warmup_runs: int = 1
  step_rounds: int = 7
  step_sample_ms: float = 30.0
  step_prefix: int = 8
  min_samples: int = 1


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  name: str
  description: str
  models: Mapping[str, ModelSpec]
  target: str
  tasks: Mapping[str, TaskSpec]
  drafts: Mapping[str, DraftSpec]
  grid: SectionSpec | None
  throughput: SectionSpec | None
  peer_hf: PeerSpec | None
  timing: TimingSpec
  seed: int = 0
  # Times each group's fastest grid cell is measured again (section 'confirm'): the
  # fastest of several noisy γ reads high, a second measurement does not.
  confirm_repeats: int = 0
  top_k: int = 0
  top_p: float = 1.0
  config_dir: str = '.'
  raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)


def _check_keys(where: str, raw: Mapping[str, Any], required: Iterable[str],
                optional: Iterable[str]) -> None:
  if not isinstance(raw, Mapping):
    raise ValueError(f'{where} must be a JSON object, got {type(raw).__name__}')
  required, optional = set(required), set(optional)
  missing = sorted(required - set(raw))
  unknown = sorted(set(raw) - required - optional)
  if missing:
    raise ValueError(f'{where} is missing {missing}')
  if unknown:
    raise ValueError(f'{where} has unknown keys {unknown}; allowed: {sorted(required | optional)}')


def _positive_int(where: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{where} must be an integer >= 1, got {value!r}')
  return value


def _int_list(where: str, values: Any) -> tuple[int, ...]:
  if not isinstance(values, list) or not values:
    raise ValueError(f'{where} must be a non-empty list of integers >= 1, got {values!r}')
  return tuple(_positive_int(f'{where}[{i}]', v) for i, v in enumerate(values))


def _names(where: str, values: Any, known: Mapping[str, Any], what: str) -> tuple[str, ...]:
  if not isinstance(values, list) or not values:
    raise ValueError(f'{where} must be a non-empty list of {what} names, got {values!r}')
  for value in values:
    if value not in known:
      raise ValueError(f'{where} names unknown {what} {value!r}; defined: {sorted(known)}')
  return tuple(values)


def _parse_model(name: str, raw: Mapping[str, Any]) -> ModelSpec:
  where = f'models.{name}'
  _check_keys(where, raw, ['checkpoint'], ['preset', 'overrides'])
  if raw.get('preset') is not None and raw['preset'] not in network.PRESETS:
    raise ValueError(f'{where}.preset {raw["preset"]!r} is not a preset; known: '
                     f'{sorted(network.PRESETS)}')
  overrides = dict(raw.get('overrides', {}))
  bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(network.T5Config)})
  if bad:
    raise ValueError(f'{where}.overrides has fields {bad} that T5Config does not have')
  return ModelSpec(name=name, checkpoint=str(raw['checkpoint']), preset=raw.get('preset'),
                   overrides=overrides)


def _parse_task(name: str, raw: Mapping[str, Any]) -> TaskSpec:
  where = f'tasks.{name}'
  _check_keys(where, raw, ['max_decode_len'],
              ['seqio_task', 'split', 'synthetic', 'paper_task', 'label'])
  if (raw.get('seqio_task') is None) == (raw.get('synthetic') is None):
    raise ValueError(f'{where} needs exactly one of "seqio_task" and "synthetic"')
  synthetic = raw.get('synthetic')
  if synthetic is not None:
    _check_keys(f'{where}.synthetic', synthetic, ['length', 'vocab_size'], [])
    _positive_int(f'{where}.synthetic.length', synthetic['length'])
    if _positive_int(f'{where}.synthetic.vocab_size', synthetic['vocab_size']) < 3:
      raise ValueError(f'{where}.synthetic.vocab_size must be >= 3 (0 pads, 1 is EOS)')
  return TaskSpec(name=name, max_decode_len=_positive_int(f'{where}.max_decode_len',
                                                          raw['max_decode_len']),
                  seqio_task=raw.get('seqio_task'), split=raw.get('split', 'test'),
                  synthetic=dict(synthetic) if synthetic else None,
                  paper_task=raw.get('paper_task'), label=raw.get('label', name))


def _parse_draft(name: str, raw: Mapping[str, Any], models: Mapping[str, ModelSpec],
                 builders: Mapping[str, Any]) -> DraftSpec:
  where = f'drafts.{name}'
  _check_keys(where, raw, ['kind'], ['model', 'options', 'paper_name', 'label', 'gammas'])
  if raw['kind'] not in builders:
    raise ValueError(f'{where}.kind {raw["kind"]!r} has no drafter builder; known kinds: '
                     f'{sorted(builders)}')
  if raw.get('model') is not None and raw['model'] not in models:
    raise ValueError(f'{where}.model {raw["model"]!r} is not among models {sorted(models)}')
  return DraftSpec(name=name, kind=raw['kind'], model=raw.get('model'),
                   options=dict(raw.get('options', {})), paper_name=raw.get('paper_name'),
                   label=raw.get('label', name),
                   gammas=(_int_list(f'{where}.gammas', raw['gammas']) if 'gammas' in raw
                           else None))


def _parse_auto(where: str, raw: Any, section_drafts: Sequence[str]) -> dict[str, Any]:
  if raw is None:
    return {}
  if not isinstance(raw, dict):
    raise ValueError(f'{where} must be an object {{"max_gamma": ..., "drafts": [...]}}, got '
                     f'{raw!r}')
  _check_keys(where, raw, ['max_gamma'], ['drafts'])
  drafts_ = raw.get('drafts', list(section_drafts))
  unknown = [d for d in drafts_ if d not in section_drafts]
  if not isinstance(drafts_, list) or unknown:
    raise ValueError(f'{where}.drafts must list drafts of the section, got {drafts_!r}')
  return {'auto_max_gamma': _positive_int(f'{where}.max_gamma', raw['max_gamma']),
          'auto_drafts': tuple(drafts_)}


def _parse_section(where: str, raw: Mapping[str, Any], tasks: Mapping[str, TaskSpec],
                   drafts_: Mapping[str, DraftSpec]) -> SectionSpec:
  _check_keys(where, raw, ['tasks', 'drafts', 'temperatures', 'gammas', 'batch_sizes',
                           'num_inputs'], ['auto'])
  temperatures = raw['temperatures']
  if (not isinstance(temperatures, list) or not temperatures
      or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0
                 for t in temperatures)):
    raise ValueError(f'{where}.temperatures must be a non-empty list of numbers >= 0, got '
                     f'{temperatures!r}')
  section = SectionSpec(
      tasks=_names(f'{where}.tasks', raw['tasks'], tasks, 'task'),
      drafts=_names(f'{where}.drafts', raw['drafts'], drafts_, 'draft'),
      temperatures=tuple(float(t) for t in temperatures),
      gammas=_int_list(f'{where}.gammas', raw['gammas']),
      batch_sizes=_int_list(f'{where}.batch_sizes', raw['batch_sizes']),
      num_inputs=_positive_int(f'{where}.num_inputs', raw['num_inputs']),
      **_parse_auto(f'{where}.auto', raw.get('auto'), raw['drafts']))
  for batch in section.batch_sizes:
    if section.num_inputs % batch:
      raise ValueError(f'{where}.num_inputs ({section.num_inputs}) must be a multiple of every '
                       f'batch size, not of {batch}')
  return section


def _parse_peer(raw: Mapping[str, Any], tasks: Mapping[str, TaskSpec],
                drafts_: Mapping[str, DraftSpec]) -> PeerSpec:
  where = 'peer_hf'
  _check_keys(where, raw, ['tasks', 'draft', 'num_inputs', 'hf_settings'],
              ['gamma', 'fallback_gamma'])
  if raw['draft'] not in drafts_ or drafts_[raw['draft']].kind != 'model':
    raise ValueError(f'{where}.draft must name a draft of kind "model" (Hugging Face needs a '
                     f'second T5), got {raw["draft"]!r}')
  gamma = raw.get('gamma', 'best')
  if gamma != 'best':
    _positive_int(f'{where}.gamma', gamma)
  settings = raw['hf_settings']
  if not isinstance(settings, list) or not settings:
    raise ValueError(f'{where}.hf_settings must be a non-empty list of objects')
  for i, setting in enumerate(settings):
    _check_keys(f'{where}.hf_settings[{i}]', setting, ['name'],
                ['num_assistant_tokens', 'num_assistant_tokens_schedule',
                 'assistant_confidence_threshold'])
  return PeerSpec(tasks=_names(f'{where}.tasks', raw['tasks'], tasks, 'task'),
                  draft=raw['draft'], gamma=gamma,
                  fallback_gamma=_positive_int(f'{where}.fallback_gamma',
                                               raw.get('fallback_gamma', 4)),
                  num_inputs=_positive_int(f'{where}.num_inputs', raw['num_inputs']),
                  hf_settings=tuple(dict(s) for s in settings))


def config_from_dict(raw: Mapping[str, Any], config_dir: str | os.PathLike = '.',
                     builders: Mapping[str, Any] | None = None) -> SweepConfig:
  """Validates a sweep config (the JSON of `configs/sweep_*.json`) and returns it.

  `builders` holds the draft kinds known (`registry.BUILDERS` by default).

  Raises:
    ValueError: naming the first key that is missing, unknown or invalid.
  """
  builders = registry.BUILDERS if builders is None else builders
  _check_keys('sweep config', raw, ['name', 'models', 'target', 'tasks', 'drafts'],
              ['description', 'seed', 'sampling', 'grid', 'throughput', 'peer_hf', 'timing',
               'confirm'])
  if not all(isinstance(raw[k], Mapping) and raw[k] for k in ('models', 'tasks', 'drafts')):
    raise ValueError('models, tasks and drafts must be non-empty JSON objects keyed by name')
  models = {name: _parse_model(name, spec) for name, spec in raw['models'].items()}
  if raw['target'] not in models:
    raise ValueError(f'target {raw["target"]!r} is not among models {sorted(models)}')
  tasks = {name: _parse_task(name, spec) for name, spec in raw['tasks'].items()}
  drafts_ = {name: _parse_draft(name, spec, models, builders)
             for name, spec in raw['drafts'].items()}
  sampling = raw.get('sampling', {})
  _check_keys('sampling', sampling, [], ['top_k', 'top_p'])
  sampling_lib.make_sampling_config(1.0, sampling.get('top_k', 0), sampling.get('top_p', 1.0))
  timing_raw = raw.get('timing', {})
  _check_keys('timing', timing_raw, [], [f.name for f in dataclasses.fields(TimingSpec)])
  timing = TimingSpec(**timing_raw)
  if timing.warmup_runs < 0 or timing.step_rounds < 1 or timing.step_sample_ms <= 0 \
      or timing.step_prefix < 0 or timing.min_samples < 1:
    raise ValueError(f'timing needs warmup_runs >= 0, step_rounds >= 1, step_sample_ms > 0, '
                     f'step_prefix >= 0, min_samples >= 1; got {timing}')
  sections = {name: _parse_section(name, raw[name], tasks, drafts_)
              for name in ('grid', 'throughput') if raw.get(name) is not None}
  if not sections and raw.get('peer_hf') is None:
    raise ValueError('the config has no section: give at least one of grid, throughput, peer_hf')
  seed = raw.get('seed', 0)
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f'seed must be an integer >= 0, got {seed!r}')
  confirm = raw.get('confirm', {'repeats': 0})
  _check_keys('confirm', confirm, ['repeats'], [])
  if confirm['repeats'] and not sections.get('grid'):
    raise ValueError('confirm re-measures grid cells: the config needs a grid section')
  return SweepConfig(
      name=str(raw['name']), description=str(raw.get('description', '')), models=models,
      target=raw['target'], tasks=tasks, drafts=drafts_, grid=sections.get('grid'),
      throughput=sections.get('throughput'),
      peer_hf=(_parse_peer(raw['peer_hf'], tasks, drafts_) if raw.get('peer_hf') is not None
               else None),
      timing=timing, seed=seed, confirm_repeats=(
          _positive_int('confirm.repeats', confirm['repeats']) if confirm['repeats'] else 0),
      top_k=int(sampling.get('top_k', 0)),
      top_p=float(sampling.get('top_p', 1.0)), config_dir=str(config_dir), raw=dict(raw))


def load_config(path: str | os.PathLike,
                builders: Mapping[str, Any] | None = None) -> SweepConfig:
  """Reads and validates a sweep config JSON file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f'sweep config file not found: {path}')
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f'sweep config {path} is not valid JSON: {error}') from error
  return config_from_dict(raw, config_dir=path.resolve().parent, builders=builders)


def expand_path(template: str, config_dir: str | os.PathLike, task: str | None = None) -> str:
  """Expands `{cache}`, `{repo}`, `{config_dir}`, `{task}`, `~` and `$VARS` in a path."""
  if '{task}' in template and task is None:
    raise ValueError(f'path {template!r} depends on {{task}} but no task was given')
  replacements = {'{cache}': str(paths.cache_dir()), '{repo}': str(paths.repo_root()),
                  '{config_dir}': str(config_dir), '{task}': task or ''}
  for key, value in replacements.items():
    template = template.replace(key, value)
  return os.path.expanduser(os.path.expandvars(template))


def max_gamma(config: SweepConfig) -> int:
  """The largest γ of any section (sizes the caches the step costs are timed on)."""
  gammas = [g for spec in (config.grid, config.throughput) if spec is not None
            for g in spec.gammas + ((spec.auto_max_gamma,) if spec.auto_max_gamma else ())]
  if config.peer_hf is not None:
    gammas.append(config.peer_hf.fallback_gamma)
  return max(gammas, default=1)
