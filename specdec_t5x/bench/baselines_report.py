"""baselines.{json,md}: the record of a `bench.baselines` run and its Markdown report."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from specdec_t5x.bench import baselines, machine, report


def build_report(results: list[dict[str, Any]], *, notes: list[str], settings: dict[str, Any],
                 bandwidth: Mapping[str, float], t5x_missing: str | None,
                 started: float) -> dict[str, Any]:
  """The baselines.json record of a run that began at `started` (`time.time()`)."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  return {
      # Which Python ran decides whether the t5x column exists: keep it in the command.
      'command': machine.command_line(keep_interpreter=True),
      'date': report.utc_date(),
      'duration_s': time.time() - started,
      'machine': machine.machine_facts(),
      'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
      'transformers': transformers.__version__,
      't5x_missing': t5x_missing,
      'settings': settings,
      'bandwidth': dict(bandwidth),
      'results': results,
      'notes': notes,
  }


def _tokens_cell(backend: str, row: Mapping[str, Any]) -> str:
  diff = row['tokens_vs_ours']
  if backend == 'ours':
    return '(reference)'
  if diff['identical']:
    return 'identical'
  first = diff['first']
  return (f"{diff['positions_differing']} positions in {diff['rows_differing']} rows differ "
          f"(first: row {first['row']}, position {first['position']}: "
          f"{first['reference']} vs {first['other']})")


def results_table(results: Sequence[Mapping[str, Any]]) -> str:
  """One block per model and batch: its floor line, then a row per backend."""
  head = ['model', 'batch', 'backend', 'ms/step', 'ms/token', 'time / ours', '× floor',
          'tokens vs ours']
  rows = []
  for result in results:
    floor = (f"floor {result['floor_ms_per_step']:.2f} ms/step "
             f"({result['decoder_bytes_per_step'] / 1e6:.1f} MB"
             + (', fits in the L3 cache' if result['fits_in_l3'] else '') + ')')
    rows.append([result['model'], str(result['batch']), floor, '', '', '', '',
                 f"{result['steps']} steps"])
    for name, row in result['backends'].items():
      label = name
      if 'acceptance_rate' in row:
        label += (f" (accepts {100 * row['acceptance_rate']:.0f}% of drafts, "
                  f"{row['tokens_per_iteration']:.2f} tokens/iteration)")
      rows.append(['', '', label, f"{row['ms_per_step']:.2f}", f"{row['ms_per_token']:.2f}",
                   f"{row['ratio_to_ours']:.2f}", f"{row['times_floor']:.2f}",
                   _tokens_cell(name, row)])
  return report.markdown_table(head, rows)


def verdicts(results: Sequence[Mapping[str, Any]]) -> list[str]:
  """The issue's two conditions, per model and batch."""
  lines = []
  for result in results:
    where = f"{result['model']}, batch {result['batch']}"
    t5x = result['backends'].get('t5x')
    if t5x is not None:
      verdict = 'OK' if t5x['ratio_to_ours'] >= 1.0 else 'NOT met: ours is slower'
      lines.append(f"- {where}: T5X's own decoding takes {t5x['ratio_to_ours']:.2f}x the time "
                   f"of ours ({verdict}).")
    exact = [name for name in baselines.EXACT_BACKENDS if name in result['backends']]
    differing = [name for name in exact
                 if not result['backends'][name]['tokens_vs_ours']['identical']]
    lines.append(f"- {where}: tokens of {', '.join(exact)} "
                 + ('identical.' if not differing else f"DIFFER for {', '.join(differing)}."))
  return lines


def _setup_paragraph(settings: Mapping[str, Any], bandwidth: Mapping[str, float]) -> str:
  return (
      f"Setup: greedy, fp32, {settings['max_decode_len']} tokens per row at most, same weights "
      f"and inputs for every backend; compilation and one warm-up run excluded; "
      f"{settings['runs']} rounds, each decoding the batch once per backend in shuffled order; "
      f"medians. ms/step = median wall time / decoding steps; ms/token = ms/step / batch. "
      f"time / ours > 1 means slower than ours. × floor = ms/step over the memory-bound floor: "
      f"the bytes of decoder weights a cached step must read (all but the cross-attention "
      f"key/value kernels, whose projections are cached; the logits matrix; the batch's "
      f"embedding rows) over the read bandwidth measured here, "
      f"{bandwidth['read_gb_s']:.1f} GB/s (jitted XLA sum of {bandwidth['array_mb']:.0f} MB, best "
      f"of 7; NumPy copy: {bandwidth['copy_gb_s']:.1f} GB/s read+write). T5X re-projects the "
      f"encoder output for cross-attention and embeds by a one-hot matmul at every step, reads "
      f"that floor leaves out. For a decoder that fits in the L3 cache the DRAM floor does not "
      f"bind (below 1x of it is possible). The random-weights model has EOS banned (zero EOS "
      f"column of logits_dense) so every run decodes all steps; its random draft accepts almost "
      f"nothing, the worst case for speculation.")


def markdown(record: Mapping[str, Any]) -> str:
  """baselines.md from the baselines.json record."""
  facts = record['machine']
  t5x_line = ('T5X: importable, its example network decodes with `predict_batch`.'
              if record['t5x_missing'] is None else
              f"**T5X is not importable in this Python** ({record['t5x_missing']}): the t5x "
              f"column is missing. Run the command with a Python that has t5x (e.g. "
              f"$T5X_VENV/bin/python).")
  loads = ', '.join(f"{r['model']} b{r['batch']}: {r['load_average_1min']:.1f}"
                    for r in record['results'])
  paragraphs = [
      '# Baselines: greedy decoding with ours, T5X, Hugging Face and speculative decoding',
      f"Command: `{record['command']}`  \n"
      f"Date: {record['date']} (the run took {record['duration_s'] / 60:.1f} min)  \n"
      f"Machine: {facts['nproc']} CPU cores ({facts['cpu_model']}), {facts['platform']}, "
      f"python {facts['python']}, jax {facts['jax']}, flax {facts['flax']}, "
      f"torch {record['torch']} ({record['torch_threads']} threads), "
      f"transformers {record['transformers']}.  \n" + t5x_line,
      _setup_paragraph(record['settings'], record['bandwidth']),
      f"**Shared machine**: other processes ran on these cores (1-minute load average after "
      f"each block: {loads}); the backends of a block are interleaved, so their ratios are "
      f"comparable, absolute times less so.",
      results_table(record['results']),
      '## Checks\n\n' + '\n'.join(verdicts(record['results'])),
  ]
  if record['notes']:
    paragraphs.append('## Notes\n\n' + '\n'.join(f'- {note}' for note in record['notes']))
  return '\n\n'.join(paragraphs) + '\n'


def write_report(output_dir: pathlib.Path, record: Mapping[str, Any]) -> None:
  """Writes `output_dir`/baselines.json and baselines.md."""
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / 'baselines.json').write_text(json.dumps(record, indent=1), encoding='utf-8')
  (output_dir / 'baselines.md').write_text(markdown(record), encoding='utf-8')
