"""Cost of one cached decoder call on K = 1..8 query positions, relative to K = 1.

Speculative decoding scores γ draft tokens (K = γ+1 positions) in ONE target decoder call;
the paper's walltime formula assumes that call costs the same as a one-position step.
`measure_preset` measures what it really costs on this machine for one model size
(`bench.timing.scoring_costs`: calls chained in one jitted loop, K values interleaved in
shuffled rounds, ratios paired within a round); `write_report` writes
scoring_cost.{json,md,png}, which `theory.optimal_gamma`'s `scoring_cost` takes.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from specdec_t5x import network
from specdec_t5x.bench import machine, random_weights, report, timing

DEFAULT_PRESETS = ('cpu_small', 'cpu_base', 'cpu_large', 'cpu_target', 't5_1_1_small')


def measure_preset(name: str, *, batch: int, encoder_length: int, cache_length: int,
                   prefix_length: int, max_k: int, rounds: int, sample_ms: float, warmup: int,
                   seed: int, rng: np.random.Generator, dtype: str = 'float32',
                   decode_kernels: str = 'auto') -> dict[str, Any]:
  """Times K = 1..max_k for preset `name` (random weights); its config, samples, summary.

  `dtype` and `decode_kernels` are the model's (`T5Config`); `rng` draws the
  encoder input tokens `[batch, encoder_length]`.
  """
  config = network.config_from_preset(name, dtype=jnp.dtype(dtype), decode_kernels=decode_kernels)
  module = network.Transformer(config)
  params = random_weights.random_params(module, batch, encoder_length, seed)
  encoder_tokens = jnp.asarray(rng.integers(2, config.vocab_size, (batch, encoder_length)),
                               jnp.int32)
  ks = list(range(1, max_k + 1))
  with tqdm(total=rounds * len(ks), desc=f'{variant_label(name, dtype, decode_kernels)}: '
                                         f'K=1..{max_k}') as progress:
    costs = timing.scoring_costs(module, params, encoder_tokens, ks, prefix=prefix_length,
                                 cache_length=cache_length, rounds=rounds, sample_ms=sample_ms,
                                 seed=seed, warmup=warmup, progress=progress)
  return dict(
      preset=name, dtype=dtype, decode_kernels=decode_kernels,
      config=dict(emb_dim=config.emb_dim, num_heads=config.num_heads, head_dim=config.head_dim,
                  num_decoder_layers=config.num_decoder_layers, mlp_dim=config.mlp_dim,
                  vocab_size=config.vocab_size, mlp_activations=list(config.mlp_activations)),
      decoder_params=random_weights.decoder_param_count(params),
      calls_per_sample=costs['calls_per_sample'],
      # Lists aligned with `k` (element 0 is K=1), the layout `theory.optimal_gamma` takes.
      **{key: costs[key] for key in ('k', 'median_ms', 'ratio_median', 'ratio_q25',
                                     'ratio_q75', 'samples_ms')},
      load_average_1min=machine.load_average(),
  )


def build_report(results: list[dict[str, Any]], settings: dict[str, Any],
                 started: float) -> dict[str, Any]:
  """The scoring_cost.json record of a run that began at `started` (`time.time()`)."""
  return dict(
      command=machine.command_line(),
      date=report.utc_date(),
      duration_s=time.time() - started,
      machine=machine.machine_facts(),
      settings=settings,
      results=results,
  )


def variant_label(preset: str, dtype: str = 'float32', decode_kernels: str = 'auto') -> str:
  """'cpu_target', or 'cpu_target (bfloat16, invariant)' away from float32 and 'auto'."""
  extra = [value for value, default in ((dtype, 'float32'), (decode_kernels, 'auto'))
           if value != default]
  return f"{preset} ({', '.join(extra)})" if extra else preset


def _label(result: dict[str, Any]) -> str:
  return variant_label(result['preset'], result.get('dtype', 'float32'),
                       result.get('decode_kernels', 'auto'))


def shape_label(result: dict[str, Any]) -> str:
  cfg = result['config']
  return (f"{cfg['emb_dim']} wide, {cfg['num_decoder_layers']} layers, mlp {cfg['mlp_dim']}, "
          f"vocab {cfg['vocab_size']} ({result['decoder_params'] / 1e6:.1f}M)")


def markdown_tables(results: list[dict[str, Any]], reference: str | None) -> tuple[str, str]:
  """The ratio table and the table of the ratios' interquartile ranges, in Markdown."""
  ks = results[0]['k']
  reference_ms = next((r['median_ms'][0] for r in results if _label(r) == reference), None)
  head = ['preset', 'decoder (params)', 'K=1'] + [f'K={k}' for k in ks[1:]]
  if reference_ms is not None:
    head.append(f'K=1 time / {reference}')
  rows = []
  for r in results:
    row = [_label(r), shape_label(r), f"{r['median_ms'][0]:.3g} ms"]
    row += [f'{ratio:.2f}' for ratio in r['ratio_median'][1:]]
    if reference_ms is not None:
      row.append(f"{r['median_ms'][0] / reference_ms:.3f}")
    rows.append(row)
  spread = []
  for r in results:
    quartiles = zip(r['ratio_q25'][1:], r['ratio_q75'][1:], strict=True)
    spread.append([_label(r)] + [f'{low:.2f}-{high:.2f}' for low, high in quartiles])
  return (report.markdown_table(head, rows),
          report.markdown_table(['preset'] + [f'K={k}' for k in ks[1:]], spread))


def markdown(record: dict[str, Any]) -> str:
  """scoring_cost.md from the scoring_cost.json record."""
  settings, facts, results = record['settings'], record['machine'], record['results']
  table, spread = markdown_tables(results, settings['reference_preset'])
  loads = ', '.join(f"{_label(r)} {r['load_average_1min']:.1f}" for r in results)
  has_reference = any(_label(r) == settings['reference_preset'] for r in results)
  paragraphs = [
      '# Scoring cost: one cached decoder call on K positions, relative to K = 1',
      f"Command: `{record['command']}`  \n"
      f"Date: {record['date']} (the run took {record['duration_s'] / 60:.1f} min)  \n"
      f"Machine: {facts['nproc']} CPU cores ({facts['cpu_model']}), {facts['platform']}, "
      f"python {facts['python']}, jax {facts['jax']} (backend {facts['jax_backend']}), "
      f"flax {facts['flax']}.",
      f"Setup: batch {settings['batch']}, float32 unless a row says otherwise, random weights; "
      f"decode_kernels 'auto' unless a row says otherwise; encoder output of "
      f"{settings['encoder_length']} tokens precomputed; self-attention cache of "
      f"{settings['cache_length']} positions, cross-attention keys/values cached once; every call "
      f"writes its K tokens at position {settings['prefix_length']}. A timed sample chains "
      f"several calls in one jitted `lax.fori_loop` (as the speculative loop runs them, without "
      f"per-call dispatch); {settings['rounds']} rounds, each timing every K once in shuffled "
      f"order. K=1 is the median time of one call; the K columns are the median over rounds of "
      f"(time at K / time at K=1 in the same round)."
      + (f" The last column, K=1 time relative to {settings['reference_preset']}, is the "
         f"draft/target step cost ratio c for that pair." if has_reference else ''),
      f"**Shared machine**: other developers were running jobs on these {facts['nproc']} cores "
      f"while this ran (1-minute load average at the end of each preset: {loads}), so absolute "
      f"times are noisy and only the ratios, measured interleaved under the same load, are meant "
      f"to be read.",
      table,
      'Interquartile range of the per-round ratios:',
      spread,
      'How to use it: one speculative iteration costs about γ·c + cost(K = γ+1) target steps; '
      '`specdec_t5x.theory.optimal_gamma(alpha, c, scoring_cost=ratio_median)` takes a '
      "preset's `ratio_median` list from scoring_cost.json (element 0 is K=1) as the cost curve.",
  ]
  return '\n\n'.join(paragraphs) + '\n'


def write_plot(path: pathlib.Path, results: Sequence[dict[str, Any]]) -> None:
  """scoring_cost.png: the ratio curves with their IQR bands, and ms per call (log scale)."""
  import matplotlib  # noqa: PLC0415  (only when a plot is written)

  matplotlib.use('Agg')  # Files only; there is no display here.
  import matplotlib.pyplot as plt  # noqa: PLC0415
  import matplotlib.ticker  # noqa: PLC0415

  figure, (ratio_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
  for r in results:
    ks = r['k']
    label = f"{_label(r)} ({r['decoder_params'] / 1e6:.1f}M)"
    line, = ratio_axis.plot(ks, r['ratio_median'], marker='o', label=label)
    ratio_axis.fill_between(ks, r['ratio_q25'], r['ratio_q75'],
                            color=line.get_color(), alpha=0.15)
    time_axis.plot(ks, r['median_ms'], marker='o', label=label)
  ratio_axis.axhline(1.0, color='grey', linewidth=0.8, linestyle='--')
  ratio_axis.set(xlabel='K query positions per call', ylabel='time / time at K=1',
                 title='Relative cost (median, IQR band)')
  time_axis.set(xlabel='K query positions per call', ylabel='ms per call', yscale='log',
                title='Time per cached decoder call')
  for axis in (ratio_axis, time_axis):
    axis.set_xticks(results[0]['k'])
    axis.grid(alpha=0.3)
  time_axis.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  time_axis.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
  time_axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ratio_axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write_report(output_dir: pathlib.Path, record: dict[str, Any], plot: bool = True) -> None:
  """Writes `output_dir`/scoring_cost.json, .md and (with `plot`) .png."""
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / 'scoring_cost.json').write_text(json.dumps(record, indent=1), encoding='utf-8')
  (output_dir / 'scoring_cost.md').write_text(markdown(record), encoding='utf-8')
  if plot:
    write_plot(output_dir / 'scoring_cost.png', record['results'])
