"""Cells (one measurement each) and the fingerprints that tell a stored cell from a stale one.

A cell's fingerprint hashes everything that decides its numbers: its settings,
its task, the identity of the checkpoints it loads, the timing and sampling
settings and the seed. Labels and paper names do not enter it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from specdec_t5x import adaptive, checkpoints, sampling
from specdec_t5x.sweep.config import SweepConfig, TaskSpec, expand_path

STORE_SCHEMA = 1
# How auto cells are measured; a new value re-measures them. 2: α is carried from
# batch to batch (`measure._carry_alpha_over`), the first starting from the prior;
# 3: calibration.PROFILE_METHOD 2 (steadier iteration costs, the start timed alone);
# 4: calibrated on untimed (validation) inputs, the first batch starting from their α.
AUTO_METHOD = 4


@dataclasses.dataclass(frozen=True)
class Cell:
  """One measurement of the grid, throughput or confirm section.

  A confirm cell is a grid cell measured again: `repeat` 1, 2, ... (0 elsewhere).
  """

  section: str
  task: str
  draft: str
  temperature: float
  gamma: int | str  # or 'auto' (`adaptive.AUTO`), up to `max_gamma`
  batch: int
  num_inputs: int
  max_gamma: int | None = None
  repeat: int = 0

  @property
  def is_auto(self) -> bool:
    return self.gamma == adaptive.AUTO

  @property
  def key(self) -> str:
    gamma = f'auto{self.max_gamma}' if self.is_auto else self.gamma
    repeat = f'/r{self.repeat}' if self.repeat else ''
    return (f'{self.section}/{self.task}/{self.draft}/T{self.temperature:g}/g{gamma}/b{self.batch}'
            f'{repeat}')

  def fingerprint_fields(self) -> dict[str, Any]:
    fields = dataclasses.asdict(self)
    if not fields['repeat']:  # cells other than confirm's keep the fingerprints they had
      del fields['repeat']
    if fields['max_gamma'] is None:  # fixed-γ cells keep the fingerprints they had
      del fields['max_gamma']
    else:
      fields['auto_method'] = AUTO_METHOD
    return fields

  @property
  def num_batches(self) -> int:
    return self.num_inputs // self.batch


def enumerate_cells(config: SweepConfig,
                    sections: Sequence[str] = ('grid', 'throughput')) -> list[Cell]:
  """The grid's and throughput section's cells, in run order (batch 1 and γ ascending first).

  A draft with `gammas` gets cells only for those γ. A section with `auto`
  adds one cell at gamma='auto' after the fixed γs of each of its auto drafts,
  up to `auto.max_gamma` (or the draft's largest allowed γ, if smaller).
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
            if draft in spec.auto_drafts:
              top = spec.auto_max_gamma if allowed is None else min(spec.auto_max_gamma,
                                                                     max(allowed))
              cells.append(Cell(section, task, draft, temperature, adaptive.AUTO, batch,
                                spec.num_inputs, max_gamma=top))
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
      'schema': STORE_SCHEMA, 'cell': cell.fingerprint_fields(),
      'task': _task_fingerprint(config.tasks[cell.task]),
      'target': _model_fingerprint(config, config.target, cell.task),
      'draft': {**dataclasses.asdict(draft), 'label': None, 'paper_name': None, 'gammas': None,
                'model': (_model_fingerprint(config, draft.model, cell.task)
                          if draft.model else None)},
      'timing': dataclasses.asdict(config.timing),
      'sampling': [config.top_k, config.top_p], 'seed': config.seed,
      # Sampled cells depend on how a token is drawn; greedy ones do not.
      **({'sample_method': sampling.SAMPLE_METHOD} if cell.temperature else {})})


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

