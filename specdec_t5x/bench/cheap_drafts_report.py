"""cheap_drafts.{json,md}: the record of a `bench.cheap_drafts` run and its Markdown report."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from specdec_t5x import paper
from specdec_t5x.bench import cheap_drafts, machine, report


def build_report(tasks: dict[str, Any], *, target_label: str, pass_file_info: Mapping[str, Any],
                 settings: dict[str, Any], curve: Sequence[float] | None,
                 started: float) -> dict[str, Any]:
  """The cheap_drafts.json record of a run that began at `started` (`time.time()`)."""
  return dict(
      command=machine.command_line(), date=report.utc_date(),
      duration_s=time.time() - started, machine=machine.machine_facts(),
      load_average_1min=machine.load_average(), target=target_label,
      pass_file_info=dict(pass_file_info), settings=settings,
      scoring_cost_curve=None if curve is None else list(curve), tasks=tasks)


def _t_label(temperature: float) -> str:
  return f'T={temperature:g}'


def alpha_rows(record: Mapping[str, Any]) -> list[list[str]]:
  """Per task and n-gram draft: measured α at each temperature, then the paper's."""
  temps = record['settings']['temperatures']
  rows = []
  for task, result in record['tasks'].items():
    paper_task = cheap_drafts.TASKS[task]['paper_task']
    for draft in ('unigram', 'bigram'):
      measured = [f"{result['alpha'][str(t)][draft]:.3f}" for t in temps]
      values = [paper.paper_alpha(paper_task, draft, t) for t in temps]
      rows.append([result['label'], draft, *measured,
                   *('-' if value is None else f'{value:.2f}' for value in values)])
  return rows


def pass_rows(record: Mapping[str, Any]) -> list[list[str]]:
  """Per task with a PaSS file and temperature: α of each look-ahead position."""
  rows = []
  for result in record['tasks'].values():
    if result.get('pass_file'):
      for t in record['settings']['temperatures']:
        values = result['alpha'][str(t)]['pass']
        rows.append([result['label'], _t_label(t)] + [f'{v:.3f}' for v in values])
  return rows


def speed_rows(record: Mapping[str, Any]) -> list[list[Any]]:
  """Per task, temperature and method: γ, in-loop α, tokens/iteration, ms/token, speedup."""
  rows = []
  for result in record['tasks'].values():
    for t in record['settings']['temperatures']:
      for name, entry in result['speed'][str(t)].items():
        identical = entry.get('identical_to_autoregressive')
        rows.append([
            result['label'], _t_label(t), name, entry['gamma'] or '-',
            f"{entry['loop_alpha']:.3f}" if 'loop_alpha' in entry else '-',
            f"{entry['tokens_per_iteration']:.2f}" if 'tokens_per_iteration' in entry else '-',
            f"{entry['ms_per_token_median']:.1f}",
            f"**{entry['speedup_median']:.2f}x** ({entry['speedup_q25']:.2f}-"
            f"{entry['speedup_q75']:.2f})",
            '-' if identical is None else ('yes' if identical else '**NO**')])
  return rows


def _pass_section(rows: list[list[str]]) -> list[str]:
  num_lookahead = max((len(r[2:]) for r in rows), default=0)
  return [
      '## PaSS: α per look-ahead position',
      'Look-ahead j placed after a correct prefix drafts the token j - 1 steps beyond the '
      'next one; its α is measured as above (its q against the target\'s p at that '
      'position). A pair counts only when that position lies inside the output, so the far '
      'look-aheads are measured on the later positions of each output (often its EOS). The '
      'embeddings were trained on the true future tokens of the training targets, not on the '
      'target\'s own outputs. The paper reports no T5 numbers for PaSS (LLaMA-7B: up to 30% '
      'faster).',
      report.markdown_table(['task', 'T'] + [f'j={j}' for j in range(1, num_lookahead + 1)],
                            rows),
  ]


def _speed_section(record: Mapping[str, Any]) -> list[str]:
  settings, curve = record['settings'], record['scoring_cost_curve']
  parts = [
      '## Walltime against autoregressive decoding (same run, interleaved)',
      f"First {settings['speed_examples']} test inputs, {settings['rounds']} round(s), batch 1. "
      "Speedup = autoregressive time per emitted token / the method's, per input, median "
      "(interquartile range); in-loop α is the mean β over the verified positions of the loop "
      "(for PaSS it includes drafts made after rejected blocks), tokens/iteration counts the "
      "target calls (PaSS's first call emits one token and drafts nothing). "
      f"n-gram γ from `theory.optimal_gamma` (draft cost 0, scoring cost "
      f"{'measured' if curve else 'taken as 1'}).",
      report.markdown_table(['task', 'T', 'method', 'γ', 'in-loop α', 'tokens/iteration',
                             'ms/token', 'speedup', 'identical to AR'], speed_rows(record)),
  ]
  if curve:
    costs = ', '.join(f'K={k + 1}: {c:.2f}' for k, c in enumerate(curve))
    parts.append(f'Measured scoring cost of one target call on K positions relative to K=1 '
                 f'(results/scoring_cost.json): {costs}. A speculative iteration costs one such '
                 f'call, so on this CPU a draft must be accepted often enough to pay for it.')
  return parts


def markdown(record: Mapping[str, Any]) -> str:
  """cheap_drafts.md from the cheap_drafts.json record."""
  settings, facts = record['settings'], record['machine']
  temps = settings['temperatures']
  parts = [
      '# Cheap drafts: α of unigram, bigram and PaSS look-ahead drafts, and their speed',
      f"Command: `{record['command']}`  \n"
      f"Date: {record['date']} (the run took {record['duration_s'] / 60:.1f} min)  \n"
      f"Target: {record['target']}  \n"
      f"Machine: {facts['nproc']} CPU cores ({facts['cpu_model']}), jax {facts['jax']} "
      f"(backend {facts['jax_backend']}), fp32, batch 1 for timing. 1-minute load average at "
      f"the end: {record['load_average_1min']:.1f} (other developers share these cores).",
      '## α (acceptance rate, E[β]) next to the paper\'s Table 3 (T5-XXL)',
      f"Along the target's own outputs on the first {settings['alpha_examples']} test inputs "
      f"(greedy at T=0, sampled at T=1); β = Σ min(p, q) at every emitted position, p and q "
      f"under the same sampling transform; n-gram counts from each task's training targets, "
      f"add-k with k = {settings['smoothing']}. The paper's tasks are WMT EnDe and CNN/DM; "
      f"ours are the DDTP stand-ins.",
      report.markdown_table(['task', 'draft'] + [f'α {_t_label(t)}' for t in temps]
                            + [f'paper {_t_label(t)}' for t in temps], alpha_rows(record)),
  ]
  rows = pass_rows(record)
  if rows:
    parts += _pass_section(rows)
  parts += _speed_section(record)
  return '\n\n'.join(parts) + '\n'


def write_report(output_dir: pathlib.Path, record: Mapping[str, Any]) -> None:
  """Writes `output_dir`/cheap_drafts.json and cheap_drafts.md."""
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / 'cheap_drafts.json').write_text(json.dumps(record, indent=1), encoding='utf-8')
  (output_dir / 'cheap_drafts.md').write_text(markdown(record), encoding='utf-8')
