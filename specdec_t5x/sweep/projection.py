"""The TPU projection: the paper's Table 2 against its own formula (results/projection_tpu.md).

Pure arithmetic on the paper's published numbers (`specdec_t5x.paper`); a sweep's
batch-1 grid adds its measured scoring cost by K (`scoring_curve`) and its own
check of the formula's i.i.d. assumption. Where a paper_scale.json of
scripts/bench_paper_scale.py sits beside the report (results/), the scoring curve of
its largest target shape replaces the sweep's (`paper_scale_curve`): a real T5 1.1
size, not the CPU family.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from specdec_t5x import paper, theory
from specdec_t5x.bench.report import markdown_table
from specdec_t5x.sweep.markdown import fmt


def scoring_curve(records: Sequence[Mapping[str, Any]]) -> list[float] | None:
  """Median measured scoring cost by K = 1..γmax+1 over the batch-1 grid (element 0 is K=1)."""
  by_gamma: dict[int, list[float]] = {}
  for r in records:
    if r['section'] == 'grid' and r['batch'] == 1 and isinstance(r['gamma'], int):  # not 'auto'
      by_gamma.setdefault(r['gamma'], []).append(r['scoring_cost'])
  if not by_gamma or sorted(by_gamma) != list(range(1, max(by_gamma) + 1)):
    return None
  return [1.0] + [float(np.median(by_gamma[g])) for g in range(1, max(by_gamma) + 1)]


def paper_scale_curve(path: str | os.PathLike | None
                      ) -> tuple[list[float], str] | None:
  """The scoring curve by K (element 0 is K=1) of the largest target in a paper_scale.json,
  and what it was measured on (`'t5_1_1_large, float32, cpu'`); None without the file."""
  if path is None or not pathlib.Path(path).is_file():
    return None
  record = json.loads(pathlib.Path(path).read_text())
  targets = record.get('targets') or []
  if not targets:
    return None
  largest = max(targets, key=lambda t: t['config']['params'])
  source = (f"{largest['target']}, {record['settings']['dtype']}, "
            f"{record['machine']['jax_backend']}")
  return [float(v) for v in largest['costs']['scoring_curve']], source


def tpu_projection(curve: Sequence[float] | None = None,
                   paper_scale_path: str | os.PathLike | None = None
                   ) -> list[dict[str, Any]]:
  """The paper's Table 2 against its own formula, with the scoring cost that closes the gap.

  Per row: the formula's speedup from the paper's α, γ and c; the measured
  speed over it; the verification cost s (in target steps) that would make
  E[tokens] / (γc + s) equal the measured speed; the formula's optimal γ; and,
  with a measured scoring cost by K, the formula with it: the largest shape's
  curve of `paper_scale_path` (a paper_scale.json) where given and present, else `curve`
  (the sweep's).
  Rows with a curve name its source in `scoring_source` (`'sweep'` for `curve`).
  """
  measured = paper_scale_curve(paper_scale_path)
  curve, source = measured if measured is not None else (curve, 'sweep')
  rows = []
  for task, mq, temperature, gamma, alpha, speed in paper.PAPER_TABLE2:
    c = paper.PAPER_C[mq]
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
      row['scoring_source'] = source
      row['theory_with_cpu_scoring'] = float(theory.walltime_improvement_measured(
          alpha, gamma, c, curve[gamma]))
    rows.append(row)
  return rows



def _scoring_source(rows: Sequence[Mapping[str, Any]]) -> str | None:
  """'sweep', a paper-scale shape (`'t5_1_1_large, float32, cpu'`), or None without a curve."""
  return next((r['scoring_source'] for r in rows if 'scoring_source' in r), None)


def _projection_table(rows: Sequence[Mapping[str, Any]], with_cpu: bool) -> str:
  head = ['Task', 'Mq', 'Temp', 'γ', 'α', 'c', 'E[tokens/iter]', 'Theory (paper formula)',
          'Paper speed', 'Paper / theory', 'Implied scoring cost s', 'γ* formula (speed)']
  source = _scoring_source(rows)
  if with_cpu and source in (None, 'sweep'):
    head += ['CPU scoring cost γ+1', 'Theory with CPU scoring']
  elif with_cpu:
    head += [f'Scoring cost γ+1 ({source})', 'Theory with that scoring']
  table = []
  for r in rows:
    line = [r['task'], r['mq'], f"{r['temperature']:g}", str(r['gamma']), fmt(r['alpha']),
            fmt(r['c']), fmt(r['expected_tokens_per_iteration']),
            fmt(r['theory_paper'], 2, 'x'), fmt(r['paper_speed'], 1, 'x'),
            fmt(r['paper_over_theory']), fmt(r['implied_scoring_cost']),
            f"{r['theory_optimal_gamma']} ({r['theory_optimal_speedup']:.2f}x)"]
    if with_cpu:
      line += [fmt(r.get('cpu_scoring_cost')), fmt(r.get('theory_with_cpu_scoring'), 2, 'x')]
    table.append(line)
  return markdown_table(head, table)


def _implied_cost_paragraph(rows: Sequence[Mapping[str, Any]]) -> str:
  """What the implied scoring costs s say: where the paper beat its formula, and by how much."""
  implied = [r['implied_scoring_cost'] for r in rows]
  below = [r for r in rows if r['implied_scoring_cost'] < 1.0]
  above = [r for r in rows if r['implied_scoring_cost'] >= 1.0]
  describe = lambda r: f"{r['task']} {r['mq']} T={r['temperature']:g}"
  # Of an iteration's γc + s target steps, at most s − 1 can be extra verification cost.
  shares = [(r['implied_scoring_cost'] - 1.0) / (r['gamma'] * r['c'] + r['implied_scoring_cost'])
            for r in above]
  return (
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
         if above else ''))


def _iid_check_paragraph(records: Sequence[Mapping[str, Any]]) -> str:
  """Measured tokens per iteration over the formula's, on the sweep's batch-1 grid ('' if none)."""
  grid = [r for r in records if r['section'] == 'grid' and r['batch'] == 1]
  if not grid:
    return ''
  ratios = np.asarray([r['tokens_per_iteration'] / r['expected_tokens_per_iteration']
                       for r in grid])
  return (
      'This sweep checks the i.i.d. assumption on its own cells: measured tokens per '
      'iteration over (1 − α^{γ+1}) / (1 − α) at the cell\'s α (mean β) has median '
      f'{np.median(ratios):.2f} (interquartile {np.quantile(ratios, 0.25):.2f}-'
      f'{np.quantile(ratios, 0.75):.2f}) over {len(grid)} batch-1 cells; above 1 means '
      'whole blocks are accepted more often than independent acceptances would allow (each '
      'output\'s last iteration, cut short by EOS or the length limit, pulls it below 1).')


def _cpu_scoring_paragraph(rows: Sequence[Mapping[str, Any]]) -> str:
  cpu = [r for r in rows if 'cpu_scoring_cost' in r]
  source = _scoring_source(rows)
  where = ('measured on this CPU (median over the batch-1 grid of this sweep, by K = γ+1)'
           if source in (None, 'sweep') else
           f'measured at the largest paper-scale shape ({source}; results/paper_scale.md, '
           'by K = γ+1)')
  return (
      f'The last two columns put the scoring cost {where} into the formula: '
      f"{min(r['cpu_scoring_cost'] for r in cpu):.2f}-"
      f"{max(r['cpu_scoring_cost'] for r in cpu):.2f} target steps instead of 1, which "
      f"would give {min(r['theory_with_cpu_scoring'] for r in cpu):.2f}-"
      f"{max(r['theory_with_cpu_scoring'] for r in cpu):.2f}x instead of the formula's "
      f"{min(r['theory_paper'] for r in cpu):.2f}-{max(r['theory_paper'] for r in cpu):.2f}x. "
      'Compare with the implied s column for what the TPU measurements allow.')


def projection_markdown(rows: Sequence[Mapping[str, Any]],
                        records: Sequence[Mapping[str, Any]] = ()) -> str:
  """results/projection_tpu.md; `records` (this sweep's cells) add our own i.i.d. check."""
  with_cpu = any('cpu_scoring_cost' in r for r in rows)
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
      _projection_table(rows, with_cpu),
      _implied_cost_paragraph(rows),
      _iid_check_paragraph(records),
      _cpu_scoring_paragraph(rows) if with_cpu else '',
  ]
  return '\n\n'.join(p for p in paragraphs if p) + '\n'
