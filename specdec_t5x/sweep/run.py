"""Running a sweep: measure every planned cell not yet stored, appending each as it finishes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from specdec_t5x.bench import machine, timing
from specdec_t5x.bench import report as bench_report
from specdec_t5x.drafters import registry
from specdec_t5x.sweep.config import SECTIONS, SweepConfig
from specdec_t5x.sweep.loading import SweepContext
from specdec_t5x.sweep.measure import measure_cell
from specdec_t5x.sweep.peer_hf import measure_peer
from specdec_t5x.sweep.store import CellStore, PlanItem, plan

OnRecord = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class RunSummary:
  measured: list[str]
  skipped: dict[str, str]  # key -> reason
  already_done: int


def _stamp(record: dict[str, Any], fingerprint: str, command: str) -> dict[str, Any]:
  return {**record, 'fingerprint': fingerprint, 'command': command,
          'date': bench_report.utc_date(), 'load_average_1min': machine.load_average(),
          'machine': machine.machine_facts()}


def _keep(record: dict[str, Any], item: PlanItem, store: CellStore, command: str,
          summary: RunSummary) -> dict[str, Any]:
  """Stamps a finished record and appends it to the store; returns the stamped record."""
  record = _stamp(record, item.fingerprint, command)
  store.append(record)
  summary.measured.append(item.key)
  return record


def _run_cells(items: Sequence[PlanItem], context: SweepContext, store: CellStore,
               summary: RunSummary, budget: float, command: str, progress: bool,
               on_record: OnRecord | None) -> None:
  from tqdm import tqdm

  with tqdm(total=len(items), desc=f'sweep {context.config.name}', unit='cell',
            disable=not progress, dynamic_ncols=True) as bar:
    for item in items:
      if len(summary.measured) >= budget:
        break
      bar.set_postfix_str(item.key)
      try:
        record = measure_cell(item.cell, context)
      except (registry.DraftUnavailable, FileNotFoundError) as reason:
        summary.skipped[item.key] = str(reason)
        bar.update()
        continue
      finally:
        timing.release_compiled_programs()
      record = _keep(record, item, store, command, summary)
      bar.update()
      bar.set_postfix_str(f'{item.key}: {record["speedup"]:.2f}x, α {record["alpha_beta"]:.2f}')
      if on_record is not None:
        on_record(record)


def _run_peers(items: Sequence[PlanItem], context: SweepContext, store: CellStore,
               summary: RunSummary, budget: float, command: str, progress: bool,
               on_record: OnRecord | None) -> None:
  from tqdm import tqdm

  for item in items:
    if len(summary.measured) >= budget:
      break
    with tqdm(total=context.config.peer_hf.num_inputs, desc=f'{item.key} (γ={item.peer_gamma})',
              unit='input', disable=not progress, dynamic_ncols=True) as bar:
      try:
        record = measure_peer(item.peer_task, item.peer_gamma, context, progress=bar.update)
      except (registry.DraftUnavailable, FileNotFoundError) as reason:
        summary.skipped[item.key] = str(reason)
        continue
    record = _keep(record, item, store, command, summary)
    if on_record is not None:
      on_record(record)


def run_sweep(config: SweepConfig, store: CellStore, *, sections: Sequence[str] = SECTIONS,
              patterns: Sequence[str] | None = None, max_new: int | None = None,
              command: str = '', progress: bool = True,
              context: SweepContext | None = None,
              on_record: OnRecord | None = None) -> RunSummary:
  """Measures every cell of `sections` not yet in `store`, appending each as it finishes.

  Args:
    config: the sweep.
    store: where finished cells go (and are looked up, for resuming).
    sections: which of 'grid', 'throughput', 'peer_hf', 'confirm' to run;
      confirm (each group's fastest grid cell again) and the peer run last, as
      both take the grid's best γ.
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
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise ValueError(f'unknown sections {unknown}; known: {list(SECTIONS)}')
  context = context or SweepContext(config)
  items = plan(config, store, [s for s in sections if s in ('grid', 'throughput')], patterns)
  todo = [item for item in items if item.status != 'done']
  summary = RunSummary(measured=[], skipped={}, already_done=len(items) - len(todo))
  budget = math.inf if max_new is None else max_new
  _run_cells(todo, context, store, summary, budget, command, progress, on_record)
  if 'confirm' in sections and config.confirm_repeats:
    # Planned only now: each group's fastest grid cell, as measured so far.
    again = [item for item in plan(config, store, ('confirm',), patterns)
             if item.status != 'done']
    _run_cells(again, context, store, summary, budget, command, progress, on_record)
  if 'peer_hf' in sections and config.peer_hf is not None:
    # Planned only now: the peer's γ is the best of the grid cells just measured.
    peers = [item for item in plan(config, store, ('peer_hf',), patterns)
             if item.status != 'done']
    _run_peers(peers, context, store, summary, budget, command, progress, on_record)
  return summary
