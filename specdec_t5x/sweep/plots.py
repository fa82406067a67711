"""The sweep's PNG plots: speedup vs γ, α per draft, throughput vs batch size.

Each reads records (as `report.write_report` passes them) and writes one file;
matplotlib is imported on first use, with the non-interactive Agg backend.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from specdec_t5x import paper
from specdec_t5x.sweep.config import SweepConfig


def plot_speedup_vs_gamma(config: SweepConfig, records: Sequence[Mapping[str, Any]],
                           path: pathlib.Path) -> None:
  """Speedup (measured, theory) against γ, one panel per (task, temperature) at batch 1."""
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


def plot_alpha(config: SweepConfig, records: Sequence[Mapping[str, Any]],
                path: pathlib.Path) -> None:
  """α (mean β) per draft and temperature at batch 1, with the paper's α as marks."""
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
        papers.append(paper.paper_alpha(config.tasks[task].paper_task,
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


def plot_throughput(config: SweepConfig, records: Sequence[Mapping[str, Any]],
                     path: pathlib.Path) -> None:
  """Tokens/s of both decoders against batch size, per task."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  cells = [r for r in records if r['section'] == 'throughput']
  tasks = [t for t in config.tasks if any(r['task'] == t for r in cells)]
  figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for axis, task in zip(axes.flat, tasks, strict=True):
    series = sorted({(r['draft'], r['temperature'], r['gamma']) for r in cells
                     if r['task'] == task}, key=str)  # γ may be 'auto'
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
