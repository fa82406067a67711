"""Sweeps that reproduce the paper's Table 2 / Table 3 with measured speed, α, c and theory.

A sweep is described by a JSON config (`configs/sweep_*.json`, see `load_config`)
and consists of *cells*. A cell is one (section, task, draft, temperature, γ,
batch size) and measures, on the same inputs and interleaved input by input,
the jitted `speculative_decode` against the jitted `autoregressive_decode`
baseline:

* speedup: per input batch, speculative tokens/s over autoregressive tokens/s
  (at temperature 0 the outputs are identical, so this is the time ratio);
  the cell reports the median over batches, after compilation and warm-up;
* α two ways: the mean of β = Σ min(p, q) over verified positions (the paper's
  definition) and `theory.alpha_from_acceptance` on the acceptance counts;
* c: the drafter's `propose` of γ tokens / γ, over one target decoder step on
  one position, both timed as chained calls inside one jitted loop;
* the scoring cost: one target call on γ+1 positions (plus the look-ahead
  positions of a PaSS drafter) over one on 1 position;
* the theory's prediction from those measured numbers, with the paper's
  formula (`theory.walltime_improvement`, scoring cost 1) and with the measured
  scoring cost (`theory.walltime_improvement_measured`).

Sections: `grid` (the Table 2 / Table 3 grid), `throughput` (tokens/s of both
decoders over batch sizes), `peer_hf` (Hugging Face assisted generation on the
same weights, `measure_peer`). Every finished cell is appended as one JSON line
to a `CellStore`, keyed by the cell and a fingerprint of everything that
decides its numbers, so an interrupted sweep resumes where it stopped and a
changed config re-measures only the cells it changed. `write_report` turns the
store into results/: table2.md, table3.md, peer_hf.md, projection_tpu.md,
sweep.json and PNG plots.

Draft kinds plug in through `DRAFTER_BUILDERS`: a function
`(DraftSpec, SweepContext, task) -> Drafter` per kind (`model`, `unigram`,
`bigram`, `pass`); a config entry of kind `factory` names any such function as
`package.module:function` without editing this module. A builder that cannot
build its draft on this machine (its files not made yet) raises
`DraftUnavailable`, and the sweep skips that draft's cells and says why.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import functools
import gc
import hashlib
import importlib
import json
import math
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from specdec_t5x import cache as cache_lib
from specdec_t5x import checkpoints, decoding, drafters, network, paths, theory
from specdec_t5x import sampling as sampling_lib

Array = jax.Array

SECTIONS = ('grid', 'throughput', 'peer_hf')
STORE_SCHEMA = 1
EOS_ID = 1

# ------------------------------------------------------------------------------
# The paper's figures (Leviathan et al. 2023; ../shared/REFERENCE.md section 1).
# ------------------------------------------------------------------------------

# Table 2: T5-XXL target, batch 1, TPU-v4: (task, Mq, temperature, γ, α, speed).
PAPER_TABLE2: tuple[tuple[str, str, float, int, float, float], ...] = (
    ('EnDe', 'T5-small', 0.0, 7, 0.75, 3.4),
    ('EnDe', 'T5-base', 0.0, 7, 0.80, 2.8),
    ('EnDe', 'T5-large', 0.0, 7, 0.82, 1.7),
    ('EnDe', 'T5-small', 1.0, 7, 0.62, 2.6),
    ('EnDe', 'T5-base', 1.0, 5, 0.68, 2.4),
    ('EnDe', 'T5-large', 1.0, 3, 0.71, 1.4),
    ('CNNDM', 'T5-small', 0.0, 5, 0.65, 3.1),
    ('CNNDM', 'T5-base', 0.0, 5, 0.73, 3.0),
    ('CNNDM', 'T5-large', 0.0, 3, 0.74, 2.2),
    ('CNNDM', 'T5-small', 1.0, 5, 0.53, 2.3),
    ('CNNDM', 'T5-base', 1.0, 3, 0.55, 2.2),
    ('CNNDM', 'T5-large', 1.0, 3, 0.56, 1.7),
)
# Measured c of each draft against T5-XXL.
PAPER_C: dict[str, float] = {'T5-small': 0.02, 'T5-base': 0.04, 'T5-large': 0.11}
# Table 3: α of cheap drafts for T5-XXL, (task, draft) -> (α at T=0, α at T=1).
PAPER_TABLE3: dict[tuple[str, str], tuple[float, float]] = {
    ('EnDe', 'unigram'): (0.08, 0.07),
    ('EnDe', 'bigram'): (0.20, 0.19),
    ('CNNDM', 'unigram'): (0.13, 0.08),
    ('CNNDM', 'bigram'): (0.23, 0.16),
}


def paper_table2_row(paper_task: str | None, paper_mq: str | None,
                     temperature: float) -> dict[str, float] | None:
  """The paper's Table 2 row `{gamma, alpha, speed}` for (task, Mq, temperature), if any."""
  for task, mq, temp, gamma, alpha, speed in PAPER_TABLE2:
    if (task, mq, temp) == (paper_task, paper_mq, float(temperature)):
      return {'gamma': gamma, 'alpha': alpha, 'speed': speed}
  return None


def paper_alpha(paper_task: str | None, paper_draft: str | None,
                temperature: float) -> float | None:
  """The paper's α for a draft (Table 3 for unigram/bigram, Table 2 for T5 drafts)."""
  if (paper_task, paper_draft) in PAPER_TABLE3 and float(temperature) in (0.0, 1.0):
    return PAPER_TABLE3[(paper_task, paper_draft)][int(temperature)]
  row = paper_table2_row(paper_task, paper_draft, temperature)
  return None if row is None else row['alpha']


# ------------------------------------------------------------------------------
# The config.
# ------------------------------------------------------------------------------


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
  """One draft: its `kind` (a key of the builders), the model it uses, kind options.

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
  """

  warmup_runs: int = 1
  step_rounds: int = 7
  step_sample_ms: float = 30.0
  step_prefix: int = 8


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


def _parse_section(where: str, raw: Mapping[str, Any], tasks: Mapping[str, TaskSpec],
                   drafts_: Mapping[str, DraftSpec]) -> SectionSpec:
  _check_keys(where, raw, ['tasks', 'drafts', 'temperatures', 'gammas', 'batch_sizes',
                           'num_inputs'], [])
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
      num_inputs=_positive_int(f'{where}.num_inputs', raw['num_inputs']))
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

  Raises:
    ValueError: naming the first key that is missing, unknown or invalid.
  """
  builders = DRAFTER_BUILDERS if builders is None else builders
  _check_keys('sweep config', raw, ['name', 'models', 'target', 'tasks', 'drafts'],
              ['description', 'seed', 'sampling', 'grid', 'throughput', 'peer_hf', 'timing'])
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
      or timing.step_prefix < 0:
    raise ValueError(f'timing needs warmup_runs >= 0, step_rounds >= 1, step_sample_ms > 0, '
                     f'step_prefix >= 0; got {timing}')
  sections = {name: _parse_section(name, raw[name], tasks, drafts_)
              for name in ('grid', 'throughput') if raw.get(name) is not None}
  if not sections and raw.get('peer_hf') is None:
    raise ValueError('the config has no section: give at least one of grid, throughput, peer_hf')
  seed = raw.get('seed', 0)
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f'seed must be an integer >= 0, got {seed!r}')
  return SweepConfig(
      name=str(raw['name']), description=str(raw.get('description', '')), models=models,
      target=raw['target'], tasks=tasks, drafts=drafts_, grid=sections.get('grid'),
      throughput=sections.get('throughput'),
      peer_hf=(_parse_peer(raw['peer_hf'], tasks, drafts_) if raw.get('peer_hf') is not None
               else None),
      timing=timing, seed=seed, top_k=int(sampling.get('top_k', 0)),
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


# ------------------------------------------------------------------------------
# Cells.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
  """One measurement of the grid or throughput section."""

  section: str
  task: str
  draft: str
  temperature: float
  gamma: int
  batch: int
  num_inputs: int

  @property
  def key(self) -> str:
    return (f'{self.section}/{self.task}/{self.draft}/T{self.temperature:g}/g{self.gamma}'
            f'/b{self.batch}')

  @property
  def num_batches(self) -> int:
    return self.num_inputs // self.batch


def enumerate_cells(config: SweepConfig,
                    sections: Sequence[str] = ('grid', 'throughput')) -> list[Cell]:
  """The grid's and throughput section's cells, in run order (batch 1 and γ ascending first).

  A draft with `gammas` gets cells only for those γ.
  """
  cells = []
  for section in sections:
    spec = getattr(config, section, None)
    if section not in ('grid', 'throughput') or spec is None:
      continue
    for batch in spec.batch_sizes:
      for task in spec.tasks:
        for draft in spec.drafts:
          allowed = config.drafts[draft].gammas
          for temperature in spec.temperatures:
            for gamma in spec.gammas:
              if allowed is not None and gamma not in allowed:
                continue
              cells.append(Cell(section, task, draft, temperature, gamma, batch,
                                spec.num_inputs))
  return cells


def filter_cells(cells: Sequence[Cell], patterns: Sequence[str] | None) -> list[Cell]:
  """Cells whose key matches any of the `fnmatch` patterns (all when none are given)."""
  if not patterns:
    return list(cells)
  return [cell for cell in cells if any(fnmatch.fnmatchcase(cell.key, p) for p in patterns)]


def checkpoint_identity(path: str) -> str:
  """The checkpoint step directory a path resolves to, with its mtime ('missing' if none).

  Retraining a model into the same directory changes this, so its cells are
  measured again.
  """
  location = checkpoints.as_path(path)
  if not location.exists():
    return 'missing'
  steps = checkpoints.checkpoint_steps(location)
  if steps:
    location = checkpoints.step_dir(location, steps[-1])
  if checkpoints.is_url(path):
    return f'{location}@{location.stat().mtime}'
  return f'{location.resolve()}@{location.stat().st_mtime_ns}'


def _model_fingerprint(config: SweepConfig, name: str, task: str) -> dict[str, Any]:
  spec = config.models[name]
  checkpoint = expand_path(spec.checkpoint, config.config_dir, task)
  return {'checkpoint': checkpoint_identity(checkpoint), 'preset': spec.preset,
          'overrides': dict(spec.overrides)}


def _fingerprint(payload: Mapping[str, Any]) -> str:
  text = json.dumps(payload, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _task_fingerprint(task: TaskSpec) -> dict[str, Any]:
  # Labels only name things in the tables; they do not change a number.
  return {**dataclasses.asdict(task), 'label': None, 'paper_task': None}


def cell_fingerprint(config: SweepConfig, cell: Cell) -> str:
  """A hash of everything that decides a cell's numbers: its settings, task, models, timing."""
  draft = config.drafts[cell.draft]
  return _fingerprint({
      'schema': STORE_SCHEMA, 'cell': dataclasses.asdict(cell),
      'task': _task_fingerprint(config.tasks[cell.task]),
      'target': _model_fingerprint(config, config.target, cell.task),
      'draft': {**dataclasses.asdict(draft), 'label': None, 'paper_name': None, 'gammas': None,
                'model': (_model_fingerprint(config, draft.model, cell.task)
                          if draft.model else None)},
      'timing': dataclasses.asdict(config.timing),
      'sampling': [config.top_k, config.top_p], 'seed': config.seed})


def peer_key(task: str, draft: str) -> str:
  return f'peer_hf/{task}/{draft}'


def peer_fingerprint(config: SweepConfig, task: str, gamma: int) -> str:
  peer = config.peer_hf
  assert peer is not None
  draft = config.drafts[peer.draft]
  return _fingerprint({
      'schema': STORE_SCHEMA, 'peer': {**dataclasses.asdict(peer), 'tasks': None},
      'gamma': gamma, 'task': _task_fingerprint(config.tasks[task]),
      'target': _model_fingerprint(config, config.target, task),
      'draft': _model_fingerprint(config, draft.model, task),
      'timing': dataclasses.asdict(config.timing)})


# ------------------------------------------------------------------------------
# The append-only store.
# ------------------------------------------------------------------------------


class CellStore:
  """Finished cells, one JSON object per line, appended and never rewritten.

  A record is current when its `key` and `fingerprint` match a cell of the
  config; records of an older config stay in the file but are not used. A
  kill in the middle of an append leaves a partial last line: it is skipped
  on reading, and the next append starts on a fresh line.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)

  def read(self) -> tuple[list[dict[str, Any]], int]:
    """`(records in file order, number of unreadable lines)`."""
    if not self.path.exists():
      return [], 0
    records, damaged = [], 0
    with open(self.path, encoding='utf-8') as lines:
      for line in lines:
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          damaged += 1
          continue
        if isinstance(record, dict) and 'key' in record and 'fingerprint' in record:
          records.append(record)
        else:
          damaged += 1
    return records, damaged

  def current(self) -> dict[tuple[str, str], dict[str, Any]]:
    """`{(key, fingerprint): record}`; the first record wins if a pair repeats."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in self.read()[0]:
      found.setdefault((record['key'], record['fingerprint']), record)
    return found

  def append(self, record: Mapping[str, Any]) -> None:
    """Appends one record durably (flushed and fsynced before returning)."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, allow_nan=True) + '\n'
    with open(self.path, 'a+b') as file:
      file.seek(0, os.SEEK_END)
      if file.tell() > 0:
        file.seek(-1, os.SEEK_END)
        if file.read(1) != b'\n':
          line = '\n' + line  # close the partial line an interrupted append left
      file.write(line.encode('utf-8'))
      file.flush()
      os.fsync(file.fileno())


# ------------------------------------------------------------------------------
# Models, inputs and drafters (loaded on first use, kept for the run).
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  name: str
  module: network.Transformer
  params: Any  # jax arrays, so no timed call pays a host-to-device copy
  config: network.T5Config
  checkpoint: str
  num_params: int


class DraftUnavailable(Exception):
  """A draft cannot be built on this machine yet (e.g. its files are not trained)."""


def _train_config_fields(checkpoint: checkpoints.Path) -> dict[str, Any]:
  for directory in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
    candidate = directory / 'train_config.json'
    if candidate.is_file():
      return dict(json.loads(candidate.read_text())['model'])
  raise ValueError(f'no "preset" given and no train_config.json beside checkpoint {checkpoint}; '
                   'set models.<name>.preset')


def model_config(spec: ModelSpec, checkpoint: str) -> network.T5Config:
  """The `T5Config` of a model entry: preset or train_config.json, then overrides (fp32)."""
  if spec.preset is not None:
    fields = dict(network.PRESETS[spec.preset])
  else:
    fields = _train_config_fields(checkpoints.as_path(checkpoint))
  fields.update(spec.overrides)
  if 'mlp_activations' in fields:
    fields['mlp_activations'] = tuple(fields['mlp_activations'])
  fields['dtype'] = jnp.float32  # the CPU runs are fp32
  return network.T5Config(**fields)


def load_model(spec: ModelSpec, config_dir: str, task: str | None = None) -> LoadedModel:
  """Loads a model entry's checkpoint as jax arrays, checked against its config."""
  checkpoint = expand_path(spec.checkpoint, config_dir, task)
  if not checkpoints.as_path(checkpoint).exists():
    raise FileNotFoundError(f'checkpoint of model {spec.name!r} not found: {checkpoint}')
  t5_config = model_config(spec, checkpoint)
  params = checkpoints.load_t5x_params(checkpoint, t5_config, dtype=np.float32)
  params = jax.tree.map(jnp.asarray, params)
  num_params = int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
  return LoadedModel(spec.name, network.Transformer(t5_config), params, t5_config, checkpoint,
                     num_params)


def synthetic_inputs(count: int, length: int, vocab_size: int, seed: int) -> np.ndarray:
  """`[count, length]` random ids in [2, vocab), EOS-terminated, ragged right padding."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((count, length), np.int32)
  for row in range(count):
    size = int(rng.integers(max(1, length // 2), length + 1))
    tokens[row, :size - 1] = rng.integers(2, vocab_size, size - 1)
    tokens[row, size - 1] = EOS_ID
  return tokens


def trim_padding(tokens: np.ndarray, multiple: int = 8) -> np.ndarray:
  """Drops padding columns beyond the longest row (rounded up to `multiple`), `[n, L']`."""
  longest = int((tokens > 0).sum(axis=1).max())
  width = min(tokens.shape[1], -(-longest // multiple) * multiple)
  return tokens[:, :width]


def task_inputs(task: TaskSpec, count: int, seed: int) -> np.ndarray:
  """The first `count` evaluation inputs of a task, `[count, L]` int32, 0-padded."""
  if task.synthetic is not None:
    return synthetic_inputs(count, task.synthetic['length'], task.synthetic['vocab_size'], seed)
  from specdec_t5x.data import tasks as tasks_lib  # TensorFlow: only when real data is used

  examples = tasks_lib.get_eval_examples(task.seqio_task, task.split, count)
  return trim_padding(np.asarray(examples['inputs'], np.int32))


def _inputs_needed(config: SweepConfig, task: str) -> int:
  counts = [spec.num_inputs for spec in (config.grid, config.throughput)
            if spec is not None and task in spec.tasks]
  if config.peer_hf is not None and task in config.peer_hf.tasks:
    counts.append(config.peer_hf.num_inputs)
  return max(counts, default=1)


DrafterBuilder = Callable[['DraftSpec', 'SweepContext', str], drafters.Drafter]


class SweepContext:
  """What cells share within one run: loaded models, inputs and built drafters."""

  def __init__(self, config: SweepConfig,
               builders: Mapping[str, DrafterBuilder] | None = None):
    self.config = config
    self.builders = DRAFTER_BUILDERS if builders is None else builders
    self._models: dict[tuple[str, str], LoadedModel] = {}
    self._inputs: dict[str, np.ndarray] = {}
    self._drafters: dict[tuple[str, str], drafters.Drafter | DraftUnavailable] = {}

  def model(self, name: str, task: str) -> LoadedModel:
    """Model `name` for `task` (checkpoint paths may depend on the task)."""
    spec = self.config.models[name]
    resolved = expand_path(spec.checkpoint, self.config.config_dir, task)
    if (name, resolved) not in self._models:
      self._models[(name, resolved)] = load_model(spec, self.config.config_dir, task)
    return self._models[(name, resolved)]

  def target(self, task: str) -> LoadedModel:
    return self.model(self.config.target, task)

  def inputs(self, task: str, count: int) -> np.ndarray:
    """The task's first `count` inputs `[count, L]`; every section reads the same ones."""
    if task not in self._inputs:
      needed = max(count, _inputs_needed(self.config, task))
      self._inputs[task] = task_inputs(self.config.tasks[task], needed, self.config.seed)
    if self._inputs[task].shape[0] < count:
      raise ValueError(f'task {task} has {self._inputs[task].shape[0]} inputs loaded, '
                       f'{count} needed')
    return self._inputs[task][:count]

  def drafter(self, draft: str, task: str) -> drafters.Drafter:
    """The drafter of a draft entry for `task`; raises `DraftUnavailable` with the reason."""
    if (draft, task) not in self._drafters:
      spec = self.config.drafts[draft]
      try:
        self._drafters[(draft, task)] = build_drafter(spec, self, task, self.builders)
      except DraftUnavailable as reason:
        self._drafters[(draft, task)] = reason
    built = self._drafters[(draft, task)]
    if isinstance(built, DraftUnavailable):
      raise built
    return built

  def draft_params(self, draft: str, task: str) -> int | None:
    spec = self.config.drafts[draft]
    return self.model(spec.model, task).num_params if spec.model else None


def build_drafter(spec: DraftSpec, context: SweepContext, task: str,
                  builders: Mapping[str, DrafterBuilder] | None = None) -> drafters.Drafter:
  """Maps a draft config entry to a `Drafter` through the builder of its kind."""
  builders = DRAFTER_BUILDERS if builders is None else builders
  if spec.kind not in builders:
    raise ValueError(f'draft {spec.name!r} has kind {spec.kind!r}, for which there is no '
                     f'builder; known kinds: {sorted(builders)}')
  drafter = builders[spec.kind](spec, context, task)
  drafters.check_vocab_compatible(context.target(task).config.vocab_size, drafter.vocab_size)
  return drafter


def _model_drafter(spec: DraftSpec, context: SweepContext, task: str) -> drafters.Drafter:
  if spec.model is None:
    raise ValueError(f'draft {spec.name!r} of kind "model" needs "model": a models entry')
  model = context.model(spec.model, task)
  return drafters.ModelDrafter(model.module, model.params)


def _factory_drafter(spec: DraftSpec, context: SweepContext, task: str) -> drafters.Drafter:
  """Kind `factory`: options `{'factory': 'pkg.module:function', ...}`, called like a builder."""
  name = spec.options.get('factory')
  if not isinstance(name, str) or ':' not in name:
    raise ValueError(f'draft {spec.name!r} of kind "factory" needs options.factory = '
                     f'"package.module:function", got {name!r}')
  module_name, function_name = name.split(':', 1)
  try:
    function = getattr(importlib.import_module(module_name), function_name)
  except (ImportError, AttributeError) as error:
    raise DraftUnavailable(f'{name} cannot be imported: {error}') from error
  return function(spec, context, task)


def _ngram_drafter(spec: DraftSpec, context: SweepContext, task: str) -> drafters.Drafter:
  """Kinds `unigram` / `bigram`: options `counts` (path; default the task's counts file
  of `ngram_drafters.default_counts_path`) and `smoothing` (add-k)."""
  try:
    from specdec_t5x import ngram_drafters
  except ImportError as error:
    raise DraftUnavailable(f'specdec_t5x.ngram_drafters cannot be imported: {error}') from error
  task_spec = context.config.tasks[task]
  if 'counts' in spec.options:
    path = expand_path(spec.options['counts'], context.config.config_dir, task)
  else:
    path = str(ngram_drafters.default_counts_path(task_spec.seqio_task or task))
  if not pathlib.Path(path).is_file():
    raise DraftUnavailable(f'no n-gram counts at {path} (build them with '
                           'scripts/build_ngram_drafters.py)')
  unigram, bigram = ngram_drafters.load_drafters(
      path, context.target(task).config.vocab_size,
      smoothing=spec.options.get('smoothing', ngram_drafters.DEFAULT_SMOOTHING))
  return unigram if spec.kind == 'unigram' else bigram


def _pass_drafter(spec: DraftSpec, context: SweepContext, task: str) -> drafters.Drafter:
  """Kind `pass`: options `lookahead` (path; default `pass_lookahead_L<L>.npz` beside the
  target checkpoint) and `num_lookahead` L (default 6). A cell drafts γ <= L tokens with the
  first γ embeddings (`for_gamma`)."""
  try:
    from specdec_t5x import pass_drafter
  except ImportError as error:
    raise DraftUnavailable(f'specdec_t5x.pass_drafter cannot be imported: {error}') from error
  target = context.target(task)
  if 'lookahead' in spec.options:
    path = expand_path(spec.options['lookahead'], context.config.config_dir, task)
  else:
    model_dir = pathlib.Path(target.checkpoint)
    if checkpoints.checkpoint_steps(model_dir) == [] and model_dir.name.startswith('checkpoint'):
      model_dir = model_dir.parent
    path = str(pass_drafter.default_lookahead_path(model_dir,
                                                   spec.options.get('num_lookahead', 6)))
  if not pathlib.Path(path).is_file():
    raise DraftUnavailable(f'no PaSS look-ahead embeddings at {path} (train them first)')
  return pass_drafter.load_pass_drafter(path, target.module, target.params)


def for_gamma(drafter: drafters.Drafter, gamma: int) -> drafters.Drafter:
  """The drafter a cell of γ uses: a look-ahead drafter keeps only its first γ positions.

  Raises:
    DraftUnavailable: the drafter has fewer than γ look-ahead positions.
  """
  extra = drafters.num_extra_positions(drafter)
  if not extra:
    return drafter
  if extra < gamma:
    raise DraftUnavailable(f'the drafter has {extra} look-ahead positions, fewer than γ={gamma}')
  return drafter.truncated(gamma) if extra > gamma else drafter


DRAFTER_BUILDERS: dict[str, DrafterBuilder] = {
    'model': _model_drafter,
    'unigram': _ngram_drafter,
    'bigram': _ngram_drafter,
    'pass': _pass_drafter,
    'factory': _factory_drafter,
}


# ------------------------------------------------------------------------------
# Timing.
# ------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


@functools.partial(jax.jit, static_argnames=('module',))
def _chained_target_calls(module: nn.Module, params: Any, cache: Any, encoded: Array,
                          encoder_input_tokens: Array, tokens: Array, positions: Array,
                          calls: Array) -> Array:
  """`calls` target decoder calls on `tokens [B, K]` at `positions [B]`, each fed the last argmax.

  Feeding each call's output to the next keeps XLA from hoisting or dropping calls.
  """

  def body(_, carry):
    cache, tokens = carry
    logits, cache = cache_lib.decode_step(module, params, cache_lib.rewind(cache, positions),
                                          encoded, encoder_input_tokens, tokens)
    return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)

  return jax.lax.fori_loop(0, calls, body, (cache, tokens))[1]


@functools.partial(jax.jit, static_argnames=('gamma', 'sampling', 'vocab_size'))
def _chained_proposals(drafter: drafters.Drafter, state: Any, sequences: Array, lengths: Array,
                       rng: Array, calls: Array, *, gamma: int,
                       sampling: sampling_lib.SamplingConfig, vocab_size: int) -> Array:
  """`calls` proposals of γ tokens after `lengths [B]`, each followed by `accept`.

  Each proposal's first token is written back as the last known input, and the
  probabilities enter a checksum, so no proposal is dead code.
  """
  rows = jnp.arange(sequences.shape[0])

  def body(i, carry):
    state, sequences, checksum = carry
    tokens, probs, state = drafter.propose(state, sequences, lengths, gamma, sampling,
                                           vocab_size, jax.random.fold_in(rng, i))
    state = drafter.accept(state, sequences, lengths)
    sequences = sequences.at[rows, lengths].set(tokens[:, 0])
    return state, sequences, checksum + jnp.sum(probs[:, :, 0])

  return jax.lax.fori_loop(0, calls, body, (state, sequences, jnp.float32(0.0)))[2]


@functools.partial(jax.jit, static_argnames=('cache_length',))
def _drafter_init(drafter: drafters.Drafter, encoder_input_tokens: Array,
                  cache_length: int) -> Any:
  return drafter.init(encoder_input_tokens, cache_length)


@functools.partial(jax.jit, static_argnames=('module', 'cache_length'))
def _target_cache(module: nn.Module, params: Any, encoder_input_tokens: Array,
                  cache_length: int) -> tuple[Array, Any]:
  encoded = module.apply({'params': params}, encoder_input_tokens, enable_dropout=False,
                         method=module.encode)
  return encoded, cache_lib.init_decode_cache(module, params, encoded, encoder_input_tokens,
                                              cache_length)


def measure_step_costs(target: LoadedModel, drafter: drafters.Drafter,
                       encoder_input_tokens: np.ndarray, decoded_tokens: np.ndarray, *,
                       gamma: int, temperature: float, top_k: int, top_p: float,
                       max_decode_len: int, cache_length: int, timing: TimingSpec,
                       seed: int) -> dict[str, Any]:
  """Times one target step (K=1), one scoring call (K=γ+1) and one proposal of γ tokens.

  Args:
    target: the target model.
    drafter: the draft.
    encoder_input_tokens: `[B, L]`, one batch of the cell's inputs.
    decoded_tokens: `[B, T]`, what the target decoded for them (the prefix the
      drafter and target are timed after).
    gamma, temperature, top_k, top_p, max_decode_len: as in the cell.
    cache_length: positions of the caches timed (>= max_decode_len + γ + 1).
      One length for all γ of a task lets every cell share the target's
      compiled programs; the attention over a few more masked positions is
      a negligible part of a step.
    timing: rounds, sample length and decoder position.
    seed: for the round order and the draft's sampling.

  A drafter with look-ahead positions (PaSS) makes no draft calls of its own:
  its proposal only samples from logits the scoring call produced, and its
  cost is in the scoring call, timed on γ+1 plus its look-ahead positions.

  Returns:
    Medians over interleaved rounds: `target_step_ms`, `scoring_ms`,
    `propose_ms`, and the ratios `c` (proposal / γ / target step) and
    `scoring_cost` (scoring / target step), with their interquartile ranges.
  """
  batch = encoder_input_tokens.shape[0]
  sampling = sampling_lib.make_sampling_config(temperature, top_k, top_p)
  # A look-ahead drafter (PaSS) rides along the scoring call: K = γ+1 + its positions.
  scored = gamma + 1 + drafters.num_extra_positions(drafter)
  prefix = min(timing.step_prefix, max_decode_len - 1)
  if cache_length < max_decode_len + scored or prefix + scored > cache_length:
    raise ValueError(f'cache_length {cache_length} cannot hold max_decode_len '
                     f'{max_decode_len} + {scored} scored positions')
  encoder_tokens = jnp.asarray(encoder_input_tokens)
  encoded, cache = _target_cache(target.module, target.params, encoder_tokens, cache_length)
  positions = jnp.full((batch,), prefix, jnp.int32)
  sequences = np.zeros((batch, max_decode_len + gamma + 2), np.int32)
  sequences[:, 1:1 + decoded_tokens.shape[1]] = decoded_tokens
  sequences = jnp.asarray(sequences)
  lengths = jnp.full((batch,), prefix, jnp.int32)
  draft_state = _drafter_init(drafter, encoder_tokens, cache_length)
  rng = jax.random.PRNGKey(seed)
  token_blocks = {k: jnp.full((batch, k), 3, jnp.int32) for k in (1, scored)}

  def run(kind: str, calls: int) -> float:
    calls_array = jnp.int32(calls)
    if kind == 'propose':
      fn = lambda: _chained_proposals(drafter, draft_state, sequences, lengths, rng,
                                      calls_array, gamma=gamma, sampling=sampling,
                                      vocab_size=target.config.vocab_size)
    else:
      tokens = token_blocks[1 if kind == 'step' else scored]
      fn = lambda: _chained_target_calls(target.module, target.params, cache, encoded,
                                         encoder_tokens, tokens, positions, calls_array)
    return _timed(fn)[0]

  kinds = ('step', 'score', 'propose')
  calls = {}
  for kind in kinds:
    run(kind, 1)  # compiles (the call count is traced: one program per kind)
    one = statistics.median(run(kind, 1) for _ in range(3))
    calls[kind] = max(1, round(timing.step_sample_ms / 1e3 / max(one, 1e-7)))
  order_rng = np.random.default_rng(seed)
  samples: dict[str, list[float]] = {kind: [] for kind in kinds}
  for _ in range(timing.step_rounds):
    for index in order_rng.permutation(len(kinds)):
      kind = kinds[index]
      samples[kind].append(run(kind, calls[kind]) / calls[kind])
  step, score, propose = (np.asarray(samples[k]) for k in kinds)
  # Ratios are paired within a round: the three samples saw the same machine load.
  c_rounds = propose / gamma / step
  scoring_rounds = score / step
  return {
      'target_step_ms': 1e3 * float(np.median(step)),
      'scoring_ms': 1e3 * float(np.median(score)),
      'propose_ms': 1e3 * float(np.median(propose)),
      'c': float(np.median(c_rounds)),
      'c_iqr': [float(np.quantile(c_rounds, 0.25)), float(np.quantile(c_rounds, 0.75))],
      'scoring_cost': float(np.median(scoring_rounds)),
      'scoring_cost_iqr': [float(np.quantile(scoring_rounds, 0.25)),
                           float(np.quantile(scoring_rounds, 0.75))],
      'step_calls_per_sample': calls, 'scored_positions': scored,
  }


def max_gamma(config: SweepConfig) -> int:
  """The largest γ of any section (sizes the caches the step costs are timed on)."""
  gammas = [g for spec in (config.grid, config.throughput) if spec is not None
            for g in spec.gammas]
  if config.peer_hf is not None:
    gammas.append(config.peer_hf.fallback_gamma)
  return max(gammas, default=1)


def _decode_rng(seed: int, index: int) -> Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def _quantiles(values: Sequence[float]) -> dict[str, float]:
  array = np.asarray(values, np.float64)
  return {'median': float(np.median(array)), 'q25': float(np.quantile(array, 0.25)),
          'q75': float(np.quantile(array, 0.75))}


def measure_cell(cell: Cell, context: SweepContext) -> dict[str, Any]:
  """Runs one cell: speculative vs autoregressive on the same inputs, α, c, scoring, theory.

  Returns the record (JSON-able) that `CellStore` keeps; see the module docstring.
  """
  config = context.config
  task = config.tasks[cell.task]
  draft = config.drafts[cell.draft]
  target = context.target(cell.task)
  drafter = for_gamma(context.drafter(cell.draft, cell.task), cell.gamma)
  inputs = context.inputs(cell.task, cell.num_inputs)
  batches = inputs.reshape(cell.num_batches, cell.batch, inputs.shape[1])
  sampling = dict(temperature=cell.temperature, top_k=config.top_k, top_p=config.top_p)
  started = time.perf_counter()

  def run_autoregressive(index: int) -> tuple[float, Any]:
    return _timed(lambda: decoding.autoregressive_decode(
        target.module, target.params, batches[index], max_decode_len=task.max_decode_len,
        rng=_decode_rng(config.seed, index), eos_id=EOS_ID, **sampling))

  def run_speculative(index: int) -> tuple[float, Any]:
    return _timed(lambda: decoding.speculative_decode(
        target.module, target.params, drafter, batches[index], gamma=cell.gamma,
        max_decode_len=task.max_decode_len, rng=_decode_rng(config.seed, index),
        eos_id=EOS_ID, **sampling))

  # The first call compiles (or loads from the persistent cache); then warm up.
  first_autoregressive_s, first = run_autoregressive(0)
  first_speculative_s, _ = run_speculative(0)
  for _ in range(config.timing.warmup_runs):
    run_autoregressive(0)
    run_speculative(0)

  rows: dict[str, list] = {name: [] for name in (
      'autoregressive_s', 'speculative_s', 'autoregressive_tokens', 'speculative_tokens',
      'iterations', 'accepted', 'beta_sum', 'beta_weight', 'mismatched_rows')}
  for index in range(cell.num_batches):
    # Alternate which decoder goes first, so drifting load hits both alike.
    if index % 2 == 0:
      ar_s, ar = run_autoregressive(index)
      spec_s, spec = run_speculative(index)
    else:
      spec_s, spec = run_speculative(index)
      ar_s, ar = run_autoregressive(index)
    iterations = np.asarray(spec.iterations)
    accepted = np.asarray(spec.accepted)
    # β is averaged per row over its verified positions, about accepted + iterations of them.
    weight = accepted + iterations
    rows['autoregressive_s'].append(ar_s)
    rows['speculative_s'].append(spec_s)
    rows['autoregressive_tokens'].append(int(np.sum(ar.lengths)))
    rows['speculative_tokens'].append(int(np.sum(spec.lengths)))
    rows['iterations'].append(int(iterations.sum()))
    rows['accepted'].append(int(accepted.sum()))
    rows['beta_sum'].append(float(np.sum(np.asarray(spec.beta_mean) * weight)))
    rows['beta_weight'].append(int(weight.sum()))
    if cell.temperature == 0.0:
      same = np.all(np.asarray(ar.tokens) == np.asarray(spec.tokens), axis=1)
      rows['mismatched_rows'].append(int((~same).sum()))

  step_costs = measure_step_costs(
      target, drafter, batches[0], np.asarray(first.tokens), gamma=cell.gamma,
      temperature=cell.temperature, top_k=config.top_k, top_p=config.top_p,
      max_decode_len=task.max_decode_len,
      # Room for γ+1 positions and as many look-ahead ones (see `for_gamma`).
      cache_length=task.max_decode_len + 2 * max_gamma(config) + 1, timing=config.timing,
      seed=config.seed)
  record = summarize_cell(cell, rows, step_costs)
  record.update(
      first_call_s={'autoregressive': first_autoregressive_s, 'speculative': first_speculative_s},
      draft_kind=draft.kind, target_params=target.num_params,
      draft_params=context.draft_params(cell.draft, cell.task),
      input_length=int(inputs.shape[1]), max_decode_len=task.max_decode_len,
      wall_s=time.perf_counter() - started)
  return record


def summarize_cell(cell: Cell, rows: Mapping[str, Sequence[Any]],
                   step_costs: Mapping[str, Any]) -> dict[str, Any]:
  """A cell's record from its per-batch figures and step costs (speedup, α, theory)."""
  ar_rate = np.asarray(rows['autoregressive_tokens']) / np.asarray(rows['autoregressive_s'])
  spec_rate = np.asarray(rows['speculative_tokens']) / np.asarray(rows['speculative_s'])
  speedups = spec_rate / ar_rate
  iterations, accepted = sum(rows['iterations']), sum(rows['accepted'])
  alpha_beta = sum(rows['beta_sum']) / max(sum(rows['beta_weight']), 1)
  alpha_acceptance = float(theory.alpha_from_acceptance(accepted, max(iterations, 1),
                                                        cell.gamma))
  c, scoring_cost = step_costs['c'], step_costs['scoring_cost']
  theory_paper = float(theory.walltime_improvement(alpha_beta, cell.gamma, c))
  theory_measured = float(theory.walltime_improvement_measured(alpha_beta, cell.gamma, c,
                                                               scoring_cost))
  speedup = _quantiles(speedups)
  return {
      'key': cell.key, **dataclasses.asdict(cell),
      'per_batch': {name: list(values) for name, values in rows.items()},
      'speedup': speedup['median'], 'speedup_q25': speedup['q25'],
      'speedup_q75': speedup['q75'],
      'autoregressive_tokens_per_s': float(sum(rows['autoregressive_tokens'])
                                           / sum(rows['autoregressive_s'])),
      'speculative_tokens_per_s': float(sum(rows['speculative_tokens'])
                                        / sum(rows['speculative_s'])),
      'alpha_beta': float(alpha_beta), 'alpha_acceptance': alpha_acceptance,
      'tokens_per_iteration': sum(rows['speculative_tokens']) / max(iterations, 1),
      'expected_tokens_per_iteration': float(theory.expected_tokens_per_iteration(
          alpha_beta, cell.gamma)),
      **step_costs,
      'theory_paper': theory_paper, 'theory_measured': theory_measured,
      'measured_over_theory_paper': speedup['median'] / theory_paper,
      'measured_over_theory_measured': speedup['median'] / theory_measured,
      'greedy_mismatched_rows': (sum(rows['mismatched_rows']) if rows['mismatched_rows']
                                 else None),
  }


# ------------------------------------------------------------------------------
# The Hugging Face peer.
# ------------------------------------------------------------------------------


def _strip(tokens: np.ndarray) -> list[int]:
  """Token ids up to and including the first EOS (all of them when there is none)."""
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(EOS_ID) + 1] if EOS_ID in tokens else tokens


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
  for index, (x, y) in enumerate(zip(a, b, strict=False)):
    if x != y:
      return index
  return None if len(a) == len(b) else min(len(a), len(b))


def _hf_setting(setting: Mapping[str, Any], gamma: int) -> dict[str, Any]:
  """HF assistant generation-config values of a peer setting ('ours' means our γ)."""
  tokens = setting.get('num_assistant_tokens', 20)  # transformers' defaults
  return {'num_assistant_tokens': gamma if tokens == 'ours' else int(tokens),
          'num_assistant_tokens_schedule': setting.get('num_assistant_tokens_schedule',
                                                       'constant'),
          'assistant_confidence_threshold': setting.get('assistant_confidence_threshold', 0.4)}


def measure_peer(task_name: str, gamma: int, context: SweepContext,
                 progress: Callable[[], None] | None = None) -> dict[str, Any]:
  """Our greedy decoders against Hugging Face `generate` on the same weights and inputs.

  Runs, per input (batch 1) and in rotating order: our `speculative_decode`
  (γ), our `autoregressive_decode`, HF greedy `generate`, and HF
  `generate(assistant_model=...)` under each configured assistant setting.
  Returns times, token agreement and the first differing position of each
  disagreement.
  """
  import torch  # only the peer needs torch

  from specdec_t5x import hf_convert

  config = context.config
  peer = config.peer_hf
  task = config.tasks[task_name]
  target = context.target(task_name)
  draft_model = context.model(config.drafts[peer.draft].model, task_name)
  drafter = context.drafter(peer.draft, task_name)
  hf_target = hf_convert.to_hf_model(target.params, target.config)
  hf_draft = hf_convert.to_hf_model(draft_model.params, draft_model.config)
  inputs = context.inputs(task_name, peer.num_inputs)
  settings = {s['name']: _hf_setting(s, gamma) for s in peer.hf_settings}

  def ours_speculative(row):
    out = decoding.speculative_decode(target.module, target.params, drafter, row[None],
                                      gamma=gamma, max_decode_len=task.max_decode_len)
    return np.asarray(out.tokens[0])[:int(out.lengths[0])]

  def ours_autoregressive(row):
    out = decoding.autoregressive_decode(target.module, target.params, row[None],
                                         max_decode_len=task.max_decode_len)
    return np.asarray(out.tokens[0])[:int(out.lengths[0])]

  def hf_generate(row, setting=None):
    ids = torch.tensor(row[row > 0][None].astype(np.int64))
    kwargs = {}
    if setting is not None:
      for name, value in setting.items():
        setattr(hf_draft.generation_config, name, value)  # 'heuristic' mutates it: reset
      kwargs['assistant_model'] = hf_draft
    with torch.inference_mode():
      out = hf_target.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               do_sample=False, max_new_tokens=task.max_decode_len, **kwargs)
    return out[0, 1:].numpy()  # drop the decoder start token

  methods: dict[str, Callable[[np.ndarray], np.ndarray]] = {
      'ours_speculative': ours_speculative, 'ours_autoregressive': ours_autoregressive,
      'hf_greedy': hf_generate}
  for name, setting in settings.items():
    methods[f'hf_assisted/{name}'] = functools.partial(hf_generate, setting=setting)
  names = list(methods)
  for name in names:  # compile / warm up on the first input
    for _ in range(1 + config.timing.warmup_runs):
      methods[name](inputs[0])
  times = {name: [] for name in names}
  outputs = {name: [] for name in names}
  for index, row in enumerate(inputs):
    shift = index % len(names)
    for name in names[shift:] + names[:shift]:
      start = time.perf_counter()
      tokens = methods[name](row)
      times[name].append(time.perf_counter() - start)
      outputs[name].append(_strip(tokens))
    if progress is not None:
      progress()

  def agreement(name: str, reference: str) -> dict[str, Any]:
    differences = [(i, _first_difference(a, b)) for i, (a, b) in
                   enumerate(zip(outputs[name], outputs[reference], strict=True))]
    differing = [{'input': i, 'first_differing_position': d} for i, d in differences
                 if d is not None]
    return {'reference': reference, 'identical': len(inputs) - len(differing),
            'of': len(inputs), 'differing': differing}

  median_ms = {name: 1e3 * float(np.median(times[name])) for name in names}
  hf_assisted = [name for name in names if name.startswith('hf_assisted/')]
  best_hf = min(hf_assisted, key=lambda name: median_ms[name])
  ratio = lambda a, b: float(np.median(np.asarray(times[a]) / np.asarray(times[b])))
  return {
      'key': peer_key(task_name, peer.draft), 'section': 'peer_hf', 'task': task_name,
      'draft': peer.draft, 'gamma': gamma, 'num_inputs': len(inputs),
      'hf_settings': settings, 'median_ms': median_ms, 'times_s': times,
      'output_tokens': {name: sum(len(o) for o in outputs[name]) for name in names},
      'agreement': {
          'ours_speculative_vs_ours_autoregressive': agreement('ours_speculative',
                                                               'ours_autoregressive'),
          'hf_greedy_vs_ours_autoregressive': agreement('hf_greedy', 'ours_autoregressive'),
          **{f'{name}_vs_ours_speculative': agreement(name, 'ours_speculative')
             for name in hf_assisted}},
      'best_hf_assisted': best_hf,
      'hf_best_over_ours_speculative': ratio(best_hf, 'ours_speculative'),
      'hf_greedy_over_ours_autoregressive': ratio('hf_greedy', 'ours_autoregressive'),
      'hf_speedup_over_hf_greedy': ratio('hf_greedy', best_hf),
      'ours_speedup_over_ours_autoregressive': ratio('ours_autoregressive', 'ours_speculative'),
      'torch_threads': torch.get_num_threads(),
  }


# ------------------------------------------------------------------------------
# Running a sweep.
# ------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
  """What the timings depend on, recorded with every run."""
  cpu_model = 'unknown'
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
      cpu_model = next((line.split(':', 1)[1].strip() for line in cpuinfo
                        if line.startswith('model name')), cpu_model)
  return {'nproc': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
          else os.cpu_count(), 'cpu_model': cpu_model, 'platform': platform.platform(),
          'python': platform.python_version(), 'jax': jax.__version__,
          'jax_backend': jax.default_backend()}


def _stamp(record: dict[str, Any], fingerprint: str, command: str) -> dict[str, Any]:
  return {**record, 'fingerprint': fingerprint, 'command': command,
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'load_average_1min': os.getloadavg()[0], 'machine': machine_facts()}


@dataclasses.dataclass
class PlanItem:
  """A cell or peer measurement with its store identity and status ('done', 'todo', 'stale')."""

  key: str
  fingerprint: str
  status: str
  cell: Cell | None = None
  peer_task: str | None = None
  peer_gamma: int | None = None
  note: str = ''


def best_gamma(records: Iterable[Mapping[str, Any]], task: str, draft: str,
               temperature: float = 0.0, batch: int = 1) -> int | None:
  """The γ of the fastest grid cell for (task, draft, temperature, batch), if any ran."""
  matching = [r for r in records if r['section'] == 'grid' and r['task'] == task
              and r['draft'] == draft and r['temperature'] == temperature
              and r['batch'] == batch]
  return max(matching, key=lambda r: r['speedup'])['gamma'] if matching else None


def plan(config: SweepConfig, store: CellStore, sections: Sequence[str] = SECTIONS,
         patterns: Sequence[str] | None = None) -> list[PlanItem]:
  """Every cell of the chosen sections with its status against the store."""
  current = store.current()
  stored_keys = {key for key, _ in current}
  items = []
  for cell in filter_cells(enumerate_cells(config, sections), patterns):
    fingerprint = cell_fingerprint(config, cell)
    status = ('done' if (cell.key, fingerprint) in current
              else 'stale' if cell.key in stored_keys else 'todo')
    items.append(PlanItem(cell.key, fingerprint, status, cell=cell))
  if 'peer_hf' in sections and config.peer_hf is not None:
    grid_records = current_records(config, store)
    for task in config.peer_hf.tasks:
      key = peer_key(task, config.peer_hf.draft)
      if patterns and not any(fnmatch.fnmatchcase(key, p) for p in patterns):
        continue
      gamma, note = config.peer_hf.gamma, ''
      if gamma == 'best':
        found = best_gamma(grid_records, task, config.peer_hf.draft)
        gamma = found if found is not None else config.peer_hf.fallback_gamma
        note = ('the best of the grid at T=0, batch 1' if found is not None else
                'fallback_gamma until grid cells at T=0, batch 1 exist')
      fingerprint = peer_fingerprint(config, task, gamma)
      status = ('done' if (key, fingerprint) in current
                else 'stale' if key in stored_keys else 'todo')
      items.append(PlanItem(key, fingerprint, status, peer_task=task, peer_gamma=gamma,
                            note=f'γ={gamma}: {note}' if note else f'γ={gamma}'))
  return items


def current_records(config: SweepConfig, store: CellStore) -> list[dict[str, Any]]:
  """The stored grid/throughput records whose fingerprint matches the config, in grid order."""
  current = store.current()
  records = []
  for cell in enumerate_cells(config):
    record = current.get((cell.key, cell_fingerprint(config, cell)))
    if record is not None:
      records.append(record)
  return records


def current_peer_records(config: SweepConfig, store: CellStore) -> list[dict[str, Any]]:
  """The stored peer records that match the config (any γ the plan would choose now)."""
  if config.peer_hf is None:
    return []
  current = store.current()
  found = []
  for item in plan(config, store, sections=('peer_hf',)):
    record = current.get((item.key, item.fingerprint))
    if record is not None:
      found.append(record)
  return found


@dataclasses.dataclass
class RunSummary:
  measured: list[str]
  skipped: dict[str, str]  # key -> reason
  already_done: int


def release_compiled_programs() -> None:
  """Frees every compiled XLA program held by jax's caches (a cell's programs are its own).

  XLA:CPU maps the code of each compiled kernel into memory regions of its own; a sweep
  builds hundreds of distinct programs (one per draft, γ, temperature and batch), and kept
  alive they exhaust the kernel's limit on memory maps per process (`vm.max_map_count`,
  65,530 by default): LLVM then aborts the process with "Unable to allocate section memory"
  (or the unwinder crashes in libgcc_s) about 40-60 cells into the default grid. Recompiling
  a cell's baseline afterwards is a load from the persistent compilation cache.
  """
  jax.clear_caches()
  gc.collect()


def run_sweep(config: SweepConfig, store: CellStore, *, sections: Sequence[str] = SECTIONS,
              patterns: Sequence[str] | None = None, max_new: int | None = None,
              command: str = '', progress: bool = True,
              context: SweepContext | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
  """Measures every cell of `sections` not yet in `store`, appending each as it finishes.

  Args:
    config: the sweep.
    store: where finished cells go (and are looked up, for resuming).
    sections: which of 'grid', 'throughput', 'peer_hf' to run; the peer runs
      last, as its γ is the grid's best.
    patterns: only cells whose key matches one of these `fnmatch` patterns.
    max_new: stop after this many newly measured cells (time-boxing a run).
    command: recorded with each record.
    progress: show a tqdm bar.
    context: reuse loaded models and drafters (a new one by default).
    on_record: called with each record after it is stored.

  Returns:
    What was measured, what was skipped (unavailable drafts, missing
    checkpoints) and how many cells were already done.
  """
  from tqdm import tqdm

  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise ValueError(f'unknown sections {unknown}; known: {list(SECTIONS)}')
  context = context or SweepContext(config)
  cell_sections = [s for s in sections if s != 'peer_hf']
  items = plan(config, store, cell_sections, patterns)
  todo = [item for item in items if item.status != 'done']
  summary = RunSummary(measured=[], skipped={}, already_done=len(items) - len(todo))
  budget = math.inf if max_new is None else max_new
  with tqdm(total=len(todo), desc=f'sweep {config.name}', unit='cell', disable=not progress,
            dynamic_ncols=True) as bar:
    for item in todo:
      if len(summary.measured) >= budget:
        break
      bar.set_postfix_str(item.key)
      try:
        record = measure_cell(item.cell, context)
      except (DraftUnavailable, FileNotFoundError) as reason:
        summary.skipped[item.key] = str(reason)
        bar.update()
        continue
      finally:
        release_compiled_programs()
      record = _stamp(record, item.fingerprint, command)
      store.append(record)
      summary.measured.append(item.key)
      bar.update()
      bar.set_postfix_str(f'{item.key}: {record["speedup"]:.2f}x, α {record["alpha_beta"]:.2f}')
      if on_record is not None:
        on_record(record)
  if 'peer_hf' in sections and config.peer_hf is not None:
    peer_items = [item for item in plan(config, store, ('peer_hf',), patterns)
                  if item.status != 'done']
    for item in peer_items:
      if len(summary.measured) >= budget:
        break
      with tqdm(total=config.peer_hf.num_inputs, desc=f'{item.key} (γ={item.peer_gamma})',
                unit='input', disable=not progress, dynamic_ncols=True) as bar:
        try:
          record = measure_peer(item.peer_task, item.peer_gamma, context, progress=bar.update)
        except (DraftUnavailable, FileNotFoundError) as reason:
          summary.skipped[item.key] = str(reason)
          continue
      record = _stamp(record, item.fingerprint, command)
      store.append(record)
      summary.measured.append(item.key)
      if on_record is not None:
        on_record(record)
  return summary


# ------------------------------------------------------------------------------
# Tables, projection, plots.
# ------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2, suffix: str = '') -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return '—'
  return f'{value:.{digits}f}{suffix}'


def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)


def _draft_label(config: SweepConfig, record: Mapping[str, Any]) -> str:
  label = config.drafts[record['draft']].label
  params = record.get('draft_params')
  return f'{label} ({params / 1e6:.1f}M)' if params else label


def best_cells(config: SweepConfig, records: Sequence[Mapping[str, Any]],
               section: str = 'grid') -> list[dict[str, Any]]:
  """The fastest γ per (task, draft, temperature, batch), with the theory's optimal γ.

  The theory's γ* maximises `walltime_improvement_measured` with the mean α
  over the group's cells, their median c, and their scoring costs by γ.
  """
  groups: dict[tuple, list[Mapping[str, Any]]] = {}
  for record in records:
    if record['section'] == section:
      groups.setdefault((record['task'], record['draft'], record['temperature'],
                         record['batch']), []).append(record)
  best = []
  for group in groups.values():
    top = max(group, key=lambda r: r['speedup'])
    alpha = float(np.mean([r['alpha_beta'] for r in group]))
    c = float(np.median([r['c'] for r in group]))
    by_gamma = {r['gamma']: r['scoring_cost'] for r in group}
    predicted = {g: float(theory.walltime_improvement_measured(alpha, g, c, s))
                 for g, s in by_gamma.items()}
    theory_gamma = max(predicted, key=predicted.get)
    best.append({**top, 'alpha_mean_over_gamma': alpha, 'c_median_over_gamma': c,
                 'theory_best_gamma': theory_gamma,
                 'theory_best_speedup': predicted[theory_gamma],
                 'gammas_measured': sorted(by_gamma)})
  return best


def _machine_line(records: Sequence[Mapping[str, Any]]) -> str:
  if not records:
    return ''
  machine = records[-1]['machine']
  loads = [r['load_average_1min'] for r in records]
  dates = sorted(r['date'] for r in records)
  return (f"Machine: {machine['nproc']} CPU cores ({machine['cpu_model']}), jax "
          f"{machine['jax']} ({machine['jax_backend']}), fp32. Measured {dates[0]} to "
          f"{dates[-1]}; 1-minute load average during the cells {min(loads):.1f}-"
          f"{max(loads):.1f} (the machine is shared: absolute times are noisy, the ratios are "
          f"measured interleaved under the same load).")


def _commands(records: Sequence[Mapping[str, Any]]) -> str:
  commands = sorted({r.get('command', '') for r in records if r.get('command')})
  return '\n'.join(f'    {command}' for command in commands) or '    (not recorded)'


def table2_markdown(config: SweepConfig, records: Sequence[Mapping[str, Any]]) -> str:
  """The paper's Table 2 columns for our model drafts, with theory and the paper's numbers."""
  best = [b for b in best_cells(config, records)
          if config.drafts[b['draft']].kind == 'model' and b['batch'] == 1]
  rows = []
  for b in best:
    task, draft = config.tasks[b['task']], config.drafts[b['draft']]
    paper = paper_table2_row(task.paper_task, draft.paper_name, b['temperature'])
    rows.append([
        task.label, _draft_label(config, b), f"{b['temperature']:g}", str(b['gamma']),
        _fmt(b['alpha_beta']), _fmt(b['alpha_acceptance']), _fmt(b['speedup'], 2, 'x'),
        _fmt(b['theory_paper'], 2, 'x'), _fmt(b['theory_measured'], 2, 'x'),
        _fmt(b['measured_over_theory_measured']), _fmt(b['c'], 3), _fmt(b['scoring_cost']),
        f"{b['theory_best_gamma']}",
        '—' if paper is None else f"{task.paper_task} / {draft.paper_name}",
        '—' if paper is None else str(paper['gamma']),
        '—' if paper is None else _fmt(paper['alpha']),
        '—' if paper is None else _fmt(paper['speed'], 1, 'x'),
        '—' if paper is None else _fmt(paper['speed'] / theory.walltime_improvement(
            paper['alpha'], paper['gamma'], PAPER_C[draft.paper_name]))])
  head = ['Task', 'Mq', 'Temp', 'γ', 'α (β)', 'α (accept.)', 'Speed', 'Theory (paper formula)',
          'Theory (measured scoring)', 'Measured / theory', 'c', 'scoring cost γ+1',
          'γ* theory', 'Paper row', 'Paper γ', 'Paper α', 'Paper speed',
          'Paper speed / paper-formula theory']
  target = records[0] if records else {}
  target_params = target.get('target_params')
  mismatched = sum(r['greedy_mismatched_rows'] or 0 for r in records
                   if r['section'] == 'grid')
  greedy_rows = sum(r['num_inputs'] for r in records
                    if r['section'] == 'grid' and r['temperature'] == 0.0)
  description = [
      f'# Table 2 analog: speculative vs autoregressive decoding ({config.name} sweep)',
      f'Sweep config `{config.name}`: {config.description}',
      'Each row is the fastest γ of its (task, draft, temperature) cell at batch 1, as the '
      'paper reports. **Speed** is the median over inputs of speculative tokens/s over '
      'autoregressive tokens/s, both jitted, on the same inputs and interleaved input by input, '
      'after compilation and warm-up. **α (β)** is the mean of β = Σ min(p, q) over the '
      'verified positions (the paper\'s definition); **α (accept.)** inverts E[tokens per '
      'iteration] from the acceptance counts (`theory.alpha_from_acceptance`). **c** is one '
      'drafter proposal of γ tokens / γ over one target decoder step, and **scoring cost** one '
      'target call on γ+1 positions over one on 1 position, both timed in the same cell '
      '(chained in one jitted loop, interleaved rounds, medians). **Theory (paper formula)** is '
      '(1 − α^{γ+1}) / ((1 − α)(γc + 1)) with the measured α and c; **Theory (measured '
      'scoring)** replaces the 1 by the measured scoring cost; **Measured / theory** uses the '
      'latter. **γ\\* theory** is the γ the measured-scoring theory would pick. The paper\'s '
      'columns are its T5-XXL Table 2 (TPU-v4), with its speed over its own formula (its α, '
      'γ and measured c) in the last column.',
      f'Target: {config.models[config.target].name}'
      + (f' ({target_params / 1e6:.1f}M parameters)' if target_params else '') + '. '
      + 'Tasks: ' + '; '.join(
          f'{t.label} = ' + (f'{t.seqio_task} {t.split}' if t.seqio_task else 'synthetic inputs')
          + f' (max {t.max_decode_len} output tokens)' for t in config.tasks.values()
          if any(r['task'] == t.name for r in records)) + '.',
      f'Greedy exactness: {mismatched} of {greedy_rows} greedy speculative outputs differ from '
      'the autoregressive ones (over all γ).',
      _md_table(head, rows),
      _machine_line(records),
      'Made by:\n\n' + _commands(records),
  ]
  return '\n\n'.join(p for p in description if p) + '\n'


def table3_markdown(config: SweepConfig, records: Sequence[Mapping[str, Any]],
                    skipped: Mapping[str, str] | None = None) -> str:
  """α of every draft (cheap and model) per task and temperature, next to the paper's."""
  grid = [r for r in records if r['section'] == 'grid' and r['batch'] == 1]
  best = {(b['task'], b['draft'], b['temperature']): b for b in best_cells(config, grid)}
  temperatures = sorted({r['temperature'] for r in grid})
  rows = []
  for task in config.tasks.values():
    for draft in config.drafts.values():
      cells = [r for r in grid if r['task'] == task.name and r['draft'] == draft.name]
      if not cells:
        continue
      row = [task.label, _draft_label(config, cells[0]), draft.kind]
      for temperature in temperatures:
        at_t = [r for r in cells if r['temperature'] == temperature]
        alpha = float(np.mean([r['alpha_beta'] for r in at_t])) if at_t else None
        paper = paper_alpha(task.paper_task, draft.paper_name, temperature)
        top = best.get((task.name, draft.name, temperature))
        row += [_fmt(alpha), _fmt(paper),
                '—' if top is None else f"{top['speedup']:.2f}x (γ={top['gamma']})"]
      rows.append(row)
  head = ['Task', 'Draft', 'Kind']
  for temperature in temperatures:
    head += [f'α T={temperature:g}', f'paper α T={temperature:g}',
             f'best speed T={temperature:g}']
  reasons = {key.split('/')[2]: reason for key, reason in (skipped or {}).items()
             if key.startswith('grid/')}
  measured = {r['draft'] for r in grid}
  missing = [d for d in (config.grid.drafts if config.grid else ()) if d not in measured]
  paragraphs = [
      f'# Table 3 analog: α of each draft ({config.name} sweep)',
      f'Sweep config `{config.name}`: {config.description}',
      'α is the mean of β = Σ min(p, q) over the verified positions, averaged over the γ '
      'cells of the grid (batch 1). The paper\'s α for unigram and bigram drafts is its '
      'Table 3 (T5-XXL); for T5-small/base/large drafts it is the α of its Table 2. The best '
      'speed is the fastest γ of the same grid.',
      _md_table(head, rows),
      ('Drafts of the config without measurements: '
       + '; '.join(f'{d} ({reasons.get(d, "not run, or unavailable when the sweep ran")})'
                   for d in missing) + '.') if missing else '',
      _machine_line(grid),
      'Made by:\n\n' + _commands(grid),
  ]
  return '\n\n'.join(p for p in paragraphs if p) + '\n'


def throughput_markdown(config: SweepConfig, records: Sequence[Mapping[str, Any]]) -> str:
  """Tokens/s of both decoders per batch size (a section of table2.md)."""
  rows = []
  for r in records:
    if r['section'] != 'throughput':
      continue
    rows.append([config.tasks[r['task']].label, _draft_label(config, r), f"{r['temperature']:g}",
                 str(r['gamma']), str(r['batch']), _fmt(r['autoregressive_tokens_per_s'], 1),
                 _fmt(r['speculative_tokens_per_s'], 1), _fmt(r['speedup'], 2, 'x'),
                 _fmt(r['alpha_beta']), _fmt(r['scoring_cost']), _fmt(r['theory_measured'], 2,
                                                                       'x')])
  if not rows:
    return ''
  head = ['Task', 'Draft', 'Temp', 'γ', 'Batch', 'AR tokens/s', 'Spec. tokens/s', 'Speed',
          'α', 'scoring cost γ+1', 'Theory (measured scoring)']
  return '\n\n'.join([
      '## Throughput over batch sizes',
      'Total tokens / total time over the same inputs at every batch size. A batch runs until '
      'its slowest row ends, in both decoders; rows accept different counts, and the target '
      'call on B × (γ+1) positions costs more as B grows, which is where batching eats the '
      'win.',
      _md_table(head, rows)]) + '\n'


def peer_markdown(config: SweepConfig, peers: Sequence[Mapping[str, Any]]) -> str:
  """results/peer_hf.md: Hugging Face assisted generation against ours on the same weights."""
  if not peers:
    return ''
  paragraphs = [
      '# Peer: Hugging Face assisted generation on the same weights',
      f'Sweep config `{config.name}`: {config.description}',
      'The target and the draft checkpoints are converted with `hf_convert.to_hf_model` to '
      '`T5ForConditionalGeneration` (fp32, PyTorch). Per input (batch 1, greedy), in rotating '
      'order: our `speculative_decode` at γ, our `autoregressive_decode`, HF `generate` without '
      'and with `assistant_model=` under each assistant setting; the times are wall times of '
      'one call after warm-up, medians over inputs. HF\'s best setting is its fastest.']
  for p in peers:
    task = config.tasks[p['task']]
    ms = p['median_ms']
    rows = [[name, _fmt(value, 1), str(p['output_tokens'][name])] for name, value in ms.items()]
    agreement_rows = [[name.replace('_vs_', ' vs '), f"{a['identical']} / {a['of']}",
                       ', '.join(f"input {d['input']} from token {d['first_differing_position']}"
                                 for d in a['differing'][:8]) or '—']
                      for name, a in p['agreement'].items()]
    settings = '; '.join(f'{name}: ' + ', '.join(f'{k}={v}' for k, v in s.items())
                         for name, s in p['hf_settings'].items())
    paragraphs += [
        f"## {task.label}: draft {config.drafts[p['draft']].label}, our γ = {p['gamma']}, "
        f"{p['num_inputs']} inputs",
        f'HF assistant settings tried: {settings}. Torch threads: {p["torch_threads"]}.',
        _md_table(['method', 'median ms per input', 'output tokens (all inputs)'], rows),
        _md_table(['outputs', 'identical', 'differences (first differing token)'],
                  agreement_rows),
        f"**HF at its best ({p['best_hf_assisted']}) takes "
        f"{p['hf_best_over_ours_speculative']:.2f}x the time of our speculative decoding** "
        f"(median of per-input ratios). HF's assisted generation is "
        f"{p['hf_speedup_over_hf_greedy']:.2f}x its own greedy `generate`; ours is "
        f"{p['ours_speedup_over_ours_autoregressive']:.2f}x our autoregressive decode; HF "
        f"greedy takes {p['hf_greedy_over_ours_autoregressive']:.2f}x the time of ours."]
  paragraphs += [_machine_line(peers), 'Made by:\n\n' + _commands(peers)]
  return '\n\n'.join(p for p in paragraphs if p) + '\n'


def scoring_curve(records: Sequence[Mapping[str, Any]]) -> list[float] | None:
  """Median measured scoring cost by K = 1..γmax+1 over the batch-1 grid (element 0 is K=1)."""
  by_gamma: dict[int, list[float]] = {}
  for r in records:
    if r['section'] == 'grid' and r['batch'] == 1:
      by_gamma.setdefault(r['gamma'], []).append(r['scoring_cost'])
  if not by_gamma or sorted(by_gamma) != list(range(1, max(by_gamma) + 1)):
    return None
  return [1.0] + [float(np.median(by_gamma[g])) for g in range(1, max(by_gamma) + 1)]


def tpu_projection(curve: Sequence[float] | None = None) -> list[dict[str, Any]]:
  """The paper's Table 2 against its own formula, with the scoring cost that closes the gap.

  Per row: the formula's speedup from the paper's α, γ and c; the measured
  speed over it; the verification cost s (in target steps) that would make
  E[tokens] / (γc + s) equal the measured speed; the formula's optimal γ; and,
  when `curve` (our measured scoring cost by K) is given, the formula with it.
  """
  rows = []
  for task, mq, temperature, gamma, alpha, speed in PAPER_TABLE2:
    c = PAPER_C[mq]
    tokens = float(theory.expected_tokens_per_iteration(alpha, gamma))
    formula = float(theory.walltime_improvement(alpha, gamma, c))
    optimum = theory.optimal_gamma(alpha, c, max_gamma=8)
    row = {'task': task, 'mq': mq, 'temperature': temperature, 'gamma': gamma, 'alpha': alpha,
           'c': c, 'paper_speed': speed, 'expected_tokens_per_iteration': tokens,
           'theory_paper': formula, 'paper_over_theory': speed / formula,
           'implied_scoring_cost': tokens / speed - gamma * c,
           'theory_optimal_gamma': optimum.gamma, 'theory_optimal_speedup': optimum.factor}
    if curve is not None and gamma < len(curve):
      row['cpu_scoring_cost'] = curve[gamma]
      row['theory_with_cpu_scoring'] = float(theory.walltime_improvement_measured(
          alpha, gamma, c, curve[gamma]))
    rows.append(row)
  return rows


def projection_markdown(rows: Sequence[Mapping[str, Any]],
                        records: Sequence[Mapping[str, Any]] = ()) -> str:
  """results/projection_tpu.md; `records` (this sweep's cells) add our own i.i.d. check."""
  with_cpu = any('cpu_scoring_cost' in r for r in rows)
  head = ['Task', 'Mq', 'Temp', 'γ', 'α', 'c', 'E[tokens/iter]', 'Theory (paper formula)',
          'Paper speed', 'Paper / theory', 'Implied scoring cost s', 'γ* formula (speed)']
  if with_cpu:
    head += ['CPU scoring cost γ+1', 'Theory with CPU scoring']
  table = []
  for r in rows:
    line = [r['task'], r['mq'], f"{r['temperature']:g}", str(r['gamma']), _fmt(r['alpha']),
            _fmt(r['c']), _fmt(r['expected_tokens_per_iteration']),
            _fmt(r['theory_paper'], 2, 'x'), _fmt(r['paper_speed'], 1, 'x'),
            _fmt(r['paper_over_theory']), _fmt(r['implied_scoring_cost']),
            f"{r['theory_optimal_gamma']} ({r['theory_optimal_speedup']:.2f}x)"]
    if with_cpu:
      line += [_fmt(r.get('cpu_scoring_cost')), _fmt(r.get('theory_with_cpu_scoring'), 2, 'x')]
    table.append(line)
  implied = [r['implied_scoring_cost'] for r in rows]
  below = [r for r in rows if r['implied_scoring_cost'] < 1.0]
  above = [r for r in rows if r['implied_scoring_cost'] >= 1.0]
  describe = lambda r: f"{r['task']} {r['mq']} T={r['temperature']:g}"
  # Of an iteration's γc + s target steps, at most s − 1 can be extra verification cost.
  shares = [(r['implied_scoring_cost'] - 1.0) / (r['gamma'] * r['c'] + r['implied_scoring_cost'])
            for r in above]
  paragraphs = [
      '# Projection for T5-XXL on TPU: the paper\'s formula against the paper\'s measurements',
      'Pure arithmetic on the paper\'s published numbers (Table 2 α, γ and speed; measured c = '
      '0.02 / 0.04 / 0.11 for T5-small / base / large against T5-XXL); no model is run. The '
      'formula (1 − α^{γ+1}) / ((1 − α)(γc + 1)) assumes that verifying γ+1 positions costs '
      'one target step. **Implied scoring cost s** is the cost, in target steps, that the '
      'verification call would need for E[tokens] / (γc + s) to equal the measured speed: '
      's > 1 means the measurement is slower than the formula, and s − 1 bounds the '
      'per-iteration time the formula leaves out (the γ+1-position call costing more than one '
      'step, plus any overhead a standalone c misses); s < 1 means the measurement beat the '
      'formula.',
      _md_table(head, table),
      f'Implied s ranges over {min(implied):.2f}-{max(implied):.2f}. In {len(below)} of '
      f'{len(rows)} rows the paper measured *more* than its own formula predicts (s < 1). '
      'Scoring γ+1 positions cannot cost less than one step, so a scoring cost can only lower '
      'the prediction further: in those rows it is not what separates formula and measurement. '
      'The likely cause is the formula\'s i.i.d. assumption: E[tokens per iteration] = '
      'Σ_{i<=γ} α^i is convex in α, so when α varies between inputs and stretches of text, the '
      'mean tokens per iteration exceeds the formula at the mean α (Jensen\'s inequality); a '
      'baseline step slower than the one c was measured against would also do it.'
      + (f' In the {len(above)} rows with s ≥ 1 ({", ".join(describe(r) for r in above)}), '
         f'verification cost and overheads beyond the formula take at most '
         f'{100 * min(shares):.0f}-{100 * max(shares):.0f}% of an iteration\'s time.'
         if above else ''),
  ]
  grid = [r for r in records if r['section'] == 'grid' and r['batch'] == 1]
  if grid:
    ratios = np.asarray([r['tokens_per_iteration'] / r['expected_tokens_per_iteration']
                         for r in grid])
    paragraphs.append(
        'This sweep checks the i.i.d. assumption on its own cells: measured tokens per '
        'iteration over (1 − α^{γ+1}) / (1 − α) at the cell\'s α (mean β) has median '
        f'{np.median(ratios):.2f} (interquartile {np.quantile(ratios, 0.25):.2f}-'
        f'{np.quantile(ratios, 0.75):.2f}) over {len(grid)} batch-1 cells; above 1 means '
        'whole blocks are accepted more often than independent acceptances would allow (each '
        'output\'s last iteration, cut short by EOS or the length limit, pulls it below 1).')
  if with_cpu:
    cpu = [r for r in rows if 'cpu_scoring_cost' in r]
    paragraphs.append(
        'The last two columns put the scoring cost measured on this CPU (median over the '
        'batch-1 grid of this sweep, by K = γ+1) into the formula: '
        f"{min(r['cpu_scoring_cost'] for r in cpu):.2f}-"
        f"{max(r['cpu_scoring_cost'] for r in cpu):.2f} target steps instead of 1, which "
        f"would give {min(r['theory_with_cpu_scoring'] for r in cpu):.2f}-"
        f"{max(r['theory_with_cpu_scoring'] for r in cpu):.2f}x instead of the formula's "
        f"{min(r['theory_paper'] for r in cpu):.2f}-{max(r['theory_paper'] for r in cpu):.2f}x. "
        'Compare with the implied s column for what the TPU measurements allow.')
  return '\n\n'.join(paragraphs) + '\n'


def _plot_speedup_vs_gamma(config: SweepConfig, records: Sequence[Mapping[str, Any]],
                           path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  grid = [r for r in records if r['section'] == 'grid' and r['batch'] == 1]
  panels = sorted({(r['task'], r['temperature']) for r in grid},
                  key=lambda p: (list(config.tasks).index(p[0]), p[1]))
  columns = min(2, len(panels))
  rows = -(-len(panels) // columns)
  figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.2 * rows),
                              squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for axis, (task, temperature) in zip(axes.flat, panels, strict=False):
    for index, draft in enumerate(config.drafts):
      cells = sorted((r for r in grid if r['task'] == task and r['draft'] == draft
                      and r['temperature'] == temperature), key=lambda r: r['gamma'])
      if not cells:
        continue
      color = colors[index % len(colors)]
      gammas = [r['gamma'] for r in cells]
      speed = np.asarray([r['speedup'] for r in cells])
      errors = [speed - [r['speedup_q25'] for r in cells], [r['speedup_q75'] for r in cells]
                - speed]
      axis.errorbar(gammas, speed, yerr=errors, color=color, marker='o', capsize=2,
                    label=f'{config.drafts[draft].label} measured')
      axis.plot(gammas, [r['theory_measured'] for r in cells], color=color, linestyle='--',
                label=f'{config.drafts[draft].label} theory (measured scoring)')
      axis.plot(gammas, [r['theory_paper'] for r in cells], color=color, linestyle=':',
                alpha=0.6)
    axis.axhline(1.0, color='grey', linewidth=0.8)
    axis.set_title(f'{config.tasks[task].label}, T={temperature:g}')
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel('γ (draft tokens per iteration)')
    axis.set_ylabel('speedup over autoregressive')
    axis.grid(alpha=0.3)
  for axis in list(axes.flat)[len(panels):]:
    axis.axis('off')
  handles, labels = axes.flat[0].get_legend_handles_labels()
  figure.legend(handles, labels, loc='lower center', ncol=min(4, max(1, len(labels))),
                fontsize='small', frameon=False)
  figure.suptitle(f'Speedup vs γ ({config.name} sweep, batch 1; dotted: paper formula, '
                  'scoring cost 1; bars: interquartile range over inputs)', fontsize='medium')
  figure.tight_layout(rect=(0, 0.04 + 0.03 * (len(labels) // 4), 1, 0.96))
  figure.savefig(path, dpi=110)
  plt.close(figure)


def _plot_alpha(config: SweepConfig, records: Sequence[Mapping[str, Any]],
                path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  grid = [r for r in records if r['section'] == 'grid' and r['batch'] == 1]
  tasks = [t for t in config.tasks if any(r['task'] == t for r in grid)]
  temperatures = sorted({r['temperature'] for r in grid})
  figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
  width = 0.8 / max(len(temperatures), 1)
  for axis, task in zip(axes.flat, tasks, strict=True):
    drafts_here = [d for d in config.drafts if any(r['task'] == task and r['draft'] == d
                                                   for r in grid)]
    for t_index, temperature in enumerate(temperatures):
      xs, alphas, papers = [], [], []
      for d_index, draft in enumerate(drafts_here):
        cells = [r for r in grid if r['task'] == task and r['draft'] == draft
                 and r['temperature'] == temperature]
        if not cells:
          continue
        xs.append(d_index + (t_index - (len(temperatures) - 1) / 2) * width)
        alphas.append(float(np.mean([r['alpha_beta'] for r in cells])))
        papers.append(paper_alpha(config.tasks[task].paper_task,
                                  config.drafts[draft].paper_name, temperature))
      axis.bar(xs, alphas, width=width, label=f'T={temperature:g} measured')
      paper_points = [(x, p) for x, p in zip(xs, papers, strict=True) if p is not None]
      if paper_points:
        axis.scatter(*zip(*paper_points, strict=True), color='black', marker='_', s=300, zorder=3,
                     label='paper (T5-XXL)' if t_index == 0 else None)
    axis.set_xticks(range(len(drafts_here)))
    axis.set_xticklabels([config.drafts[d].label for d in drafts_here])
    axis.set_ylim(0, 1)
    axis.set_ylabel('α (mean β)')
    axis.set_title(config.tasks[task].label)
    axis.legend(fontsize='small')
    axis.grid(axis='y', alpha=0.3)
  figure.suptitle(f'α per draft and temperature ({config.name} sweep)', fontsize='medium')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def _plot_throughput(config: SweepConfig, records: Sequence[Mapping[str, Any]],
                     path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  cells = [r for r in records if r['section'] == 'throughput']
  tasks = [t for t in config.tasks if any(r['task'] == t for r in cells)]
  figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for axis, task in zip(axes.flat, tasks, strict=True):
    series = sorted({(r['draft'], r['temperature'], r['gamma']) for r in cells
                     if r['task'] == task})
    for index, (draft, temperature, gamma) in enumerate(series):
      line = sorted((r for r in cells if (r['task'], r['draft'], r['temperature'], r['gamma'])
                     == (task, draft, temperature, gamma)), key=lambda r: r['batch'])
      batches = [r['batch'] for r in line]
      color = colors[index % len(colors)]
      label = f'{config.drafts[draft].label}, γ={gamma}, T={temperature:g}'
      axis.plot(batches, [r['speculative_tokens_per_s'] for r in line], color=color,
                marker='o', label=f'speculative ({label})')
      axis.plot(batches, [r['autoregressive_tokens_per_s'] for r in line], color=color,
                marker='s', linestyle='--', label=f'autoregressive (cells of {label})')
    axis.set_xscale('log', base=2)
    batch_sizes = sorted({r['batch'] for r in cells if r['task'] == task})
    axis.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    axis.set_xlabel('batch size')
    axis.set_ylabel('tokens / s')
    axis.set_title(config.tasks[task].label)
    axis.grid(alpha=0.3)
    axis.legend(fontsize='x-small')
  figure.suptitle(f'Throughput vs batch size ({config.name} sweep)', fontsize='medium')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def write_report(config: SweepConfig, store: CellStore, output_dir: str | os.PathLike,
                 skipped: Mapping[str, str] | None = None) -> list[pathlib.Path]:
  """Writes the tables, plots and sweep.json from the store's current records.

  Returns the files written. Sections without records write nothing.
  """
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  records = current_records(config, store)
  peers = current_peer_records(config, store)
  all_records, damaged = store.read()
  projection = tpu_projection(scoring_curve(records))
  written = []

  def write(name: str, text: str) -> None:
    (output_dir / name).write_text(text)
    written.append(output_dir / name)

  grid = [r for r in records if r['section'] == 'grid']
  if grid:
    write('table2.md', table2_markdown(config, grid) + '\n' + throughput_markdown(config, records))
    write('table3.md', table3_markdown(config, grid, skipped))
    _plot_speedup_vs_gamma(config, grid, output_dir / 'speedup_vs_gamma.png')
    _plot_alpha(config, grid, output_dir / 'alpha.png')
    written += [output_dir / 'speedup_vs_gamma.png', output_dir / 'alpha.png']
  if any(r['section'] == 'throughput' for r in records):
    _plot_throughput(config, records, output_dir / 'throughput.png')
    written.append(output_dir / 'throughput.png')
  if peers:
    write('peer_hf.md', peer_markdown(config, peers))
  write('projection_tpu.md', projection_markdown(projection, records))
  summary = {
      'config_name': config.name, 'config': config.raw, 'store': str(store.path),
      'generated': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'commands': sorted({r.get('command', '') for r in records + peers}),
      'cells': records, 'best': best_cells(config, grid) if grid else [],
      'throughput': [r for r in records if r['section'] == 'throughput'],
      'peer_hf': peers, 'projection_tpu': projection,
      'skipped': dict(skipped or {}),
      'store_records_not_current': len(all_records) - len(records) - len(peers),
      'store_damaged_lines': damaged,
      'paper': {'table2': [dict(zip(('task', 'mq', 'temperature', 'gamma', 'alpha', 'speed'),
                                    row, strict=True)) for row in PAPER_TABLE2],
                'c': PAPER_C,
                'table3': [{'task': t, 'draft': d, 'alpha_t0': a0, 'alpha_t1': a1}
                           for (t, d), (a0, a1) in PAPER_TABLE3.items()]},
  }
  write('sweep.json', json.dumps(summary, indent=1, sort_keys=True, allow_nan=True) + '\n')
  return written


__all__ = [
    'Cell', 'CellStore', 'DRAFTER_BUILDERS', 'DraftSpec', 'DraftUnavailable', 'LoadedModel',
    'ModelSpec', 'PAPER_C', 'PAPER_TABLE2', 'PAPER_TABLE3', 'PeerSpec', 'PlanItem', 'RunSummary',
    'SectionSpec', 'SweepConfig', 'SweepContext', 'TaskSpec', 'TimingSpec', 'best_cells',
    'best_gamma', 'build_drafter', 'cell_fingerprint', 'config_from_dict', 'current_records',
    'enumerate_cells', 'expand_path', 'filter_cells', 'load_config', 'load_model',
    'measure_cell', 'measure_peer', 'measure_step_costs', 'model_config', 'paper_alpha',
    'paper_table2_row', 'plan', 'run_sweep', 'scoring_curve', 'summarize_cell', 'task_inputs',
    'tpu_projection', 'write_report',
]
