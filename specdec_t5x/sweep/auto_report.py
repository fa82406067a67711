"""The gamma='auto' section of table2.md: auto next to the best fixed γ of the same cell.

Reads records only (see `measure.summarize_cell`): an auto cell has
`gamma == 'auto'`, `max_gamma`, `gamma_iterations` (iterations at each γ,
summed over rows and batches), `mean_gamma` and its `cost_profile`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from specdec_t5x import adaptive
from specdec_t5x.bench.report import markdown_table
from specdec_t5x.sweep.config import SweepConfig
from specdec_t5x.sweep.markdown import fmt

HEAD = ('Section', 'Task', 'Draft', 'Temp', 'Batch', 'Best fixed γ', 'its speed', 'auto speed',
        'auto IQR', 'auto / best fixed', 'auto α', 'prior α', 'mean γ (auto)',
        'iterations at γ = 0..G')


def is_auto(record: Mapping[str, Any]) -> bool:
  return record['gamma'] == adaptive.AUTO


def split(records: Sequence[Mapping[str, Any]]) -> tuple[list, list]:
  """(fixed-γ records, auto records)."""
  return ([r for r in records if not is_auto(r)], [r for r in records if is_auto(r)])


def verified_nothing(record: Mapping[str, Any]) -> bool:
  """An auto cell that never left γ = 0 verified no position: it has no α."""
  return is_auto(record) and not sum(record['per_batch'].get('beta_count', [1]))


def _group_key(record: Mapping[str, Any]) -> tuple:
  return (record['section'], record['task'], record['draft'], record['temperature'],
          record['batch'])


def comparisons(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per auto cell: the best fixed γ of its (section, task, draft, T, batch) and both speeds."""
  fixed, auto = split(records)
  best: dict[tuple, Mapping[str, Any]] = {}
  for r in fixed:
    key = _group_key(r)
    if key not in best or r['speedup'] > best[key]['speedup']:
      best[key] = r
  rows = []
  for r in auto:
    top = best.get(_group_key(r))
    rows.append({
        'section': r['section'], 'task': r['task'], 'draft': r['draft'],
        'temperature': r['temperature'], 'batch': r['batch'], 'auto_speedup': r['speedup'],
        'auto_q25': r['speedup_q25'], 'auto_q75': r['speedup_q75'],
        'auto_alpha': None if verified_nothing(r) else r['alpha_beta'],
        'prior_alpha': (r.get('cost_profile') or {}).get('alpha'),
        'mean_gamma': r['mean_gamma'],
        'gamma_iterations': r['gamma_iterations'],
        'best_fixed_gamma': None if top is None else top['gamma'],
        'best_fixed_speedup': None if top is None else top['speedup'],
        'auto_over_best_fixed': None if top is None else r['speedup'] / top['speedup'],
        'mismatched_rows': r['greedy_mismatched_rows']})
  return rows


def auto_markdown(config: SweepConfig, records: Sequence[Mapping[str, Any]]) -> str:
  """The section: one row per auto cell, against the fastest fixed γ measured beside it."""
  rows = comparisons(records)
  if not rows:
    return ''
  table = [[c['section'], config.tasks[c['task']].label, config.drafts[c['draft']].label,
            f"{c['temperature']:g}", str(c['batch']), str(c['best_fixed_gamma'] or '—'),
            fmt(c['best_fixed_speedup'], 2, 'x'), fmt(c['auto_speedup'], 2, 'x'),
            f"{c['auto_q25']:.2f}-{c['auto_q75']:.2f}", fmt(c['auto_over_best_fixed']),
            fmt(c['auto_alpha']), fmt(c['prior_alpha']), fmt(c['mean_gamma'], 1),
            ' '.join(str(n) for n in c['gamma_iterations'])] for c in rows]
  mismatched = sum(c['mismatched_rows'] or 0 for c in rows)
  ratios = [c['auto_over_best_fixed'] for c in rows if c['auto_over_best_fixed'] is not None]
  return '\n\n'.join([
      "## gamma='auto': γ chosen in the loop",
      "`speculative_decode(gamma='auto', max_gamma=G)` picks γ ∈ {0..G} before every "
      'iteration from a running α (over the verified positions so far, all rows pooled, '
      'carried from batch to batch as a caller decoding a stream would: '
      '`adaptive.carry_alpha`; the first batch starts from the α the calibration measured) '
      "and the cell's cost profile (one loop iteration at each γ over one at γ = 0, measured "
      "on the loop itself before the timed decodes, on a batch of the cell's shape from the "
      "task's validation split, which no cell times: `specdec_t5x.calibration`); γ = 0 is "
      'a plain target step. The table shows the calibration α as **prior α**. '
      '**auto / best fixed** is '
      "the auto cell's speed over that of the fastest fixed γ measured for the same task, "
      'draft, temperature and batch size (in its own cell, so under its own load).',
      f'Greedy exactness of the auto cells: {mismatched} greedy outputs differ from the '
      'autoregressive ones.' + (f' Lowest auto / best fixed: {min(ratios):.2f}.' if ratios
                                else ''),
      markdown_table(HEAD, table)]) + '\n'
