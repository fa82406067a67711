"""The append-only store of finished cells, and the plan: what is done, to do or stale.

A record is current when its `key` and `fingerprint` match a cell of the config
(`cells.cell_fingerprint`); the store never rewrites a line, so an interrupted
sweep resumes where it stopped and a changed config re-measures only its changes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from specdec_t5x.sweep.cells import (
  Cell,
  cell_fingerprint,
  enumerate_cells,
  filter_cells,
  peer_fingerprint,
  peer_key,
)
from specdec_t5x.sweep.config import SECTIONS, SweepConfig


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
              and r['batch'] == batch and isinstance(r['gamma'], int)]  # not 'auto'
  return max(matching, key=lambda r: r['speedup'])['gamma'] if matching else None


def confirm_cells(config: SweepConfig, grid_records: Iterable[Mapping[str, Any]]) -> list[Cell]:
  """The confirm section: each (task, draft, temperature, batch) group's fastest fixed-γ grid
  cell (`best_gamma`), `config.confirm_repeats` times (none before the group has grid records)."""
  records = list(grid_records)
  groups = {(r['task'], r['draft'], r['temperature'], r['batch']): r['num_inputs']
            for r in records if r['section'] == 'grid'}
  cells = []
  for (task, draft, temperature, batch), num_inputs in groups.items():
    gamma = best_gamma(records, task, draft, temperature, batch)
    if gamma is not None:  # None: the group has only gamma='auto' cells
      cells += [Cell('confirm', task, draft, temperature, gamma, batch, num_inputs, repeat=r)
                for r in range(1, config.confirm_repeats + 1)]
  return cells


def plan(config: SweepConfig, store: CellStore, sections: Sequence[str] = SECTIONS,
         patterns: Sequence[str] | None = None) -> list[PlanItem]:
  """Every cell of the chosen sections with its status against the store."""
  current = store.current()
  stored_keys = {key for key, _ in current}
  items = []
  cells = enumerate_cells(config, sections)
  if 'confirm' in sections:  # planned from the grid cells stored so far
    cells += confirm_cells(config, current_records(config, store))
  for cell in filter_cells(cells, patterns):
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


def _planned_records(config: SweepConfig, store: CellStore, section: str) -> list[dict[str, Any]]:
  """The stored records of the items the plan of `section` holds now (by key and fingerprint)."""
  current = store.current()
  records = (current.get((item.key, item.fingerprint))
             for item in plan(config, store, sections=(section,)))
  return [record for record in records if record is not None]


def current_confirm_records(config: SweepConfig, store: CellStore) -> list[dict[str, Any]]:
  """The stored confirm records of the grid's current fastest cells."""
  return _planned_records(config, store, 'confirm')


def current_peer_records(config: SweepConfig, store: CellStore) -> list[dict[str, Any]]:
  """The stored peer records that match the config (any γ the plan would choose now)."""
  if config.peer_hf is None:
    return []
  return _planned_records(config, store, 'peer_hf')
