"""Cost of one cached decoder call on K = 1..8 query positions, relative to K = 1.

Speculative decoding scores γ draft tokens (K = γ+1 positions) in ONE target
decoder call; the paper's walltime formula assumes that call costs the same as
a one-position step. This script measures what it really costs on this machine
for a few model sizes, which decides how much speculation can win here
(`specdec_t5x.theory.walltime_improvement_measured` / `optimal_gamma` take the
curve).

What is timed, per preset: `Transformer.decode(decode=True)` on a cache of
`--cache-length` positions whose cross-attention keys/values were computed
once from a precomputed encoder output of `--encoder-length` tokens, writing
K tokens at position `--prefix-length` of every row. Each timed sample runs
several such calls chained in one jitted `lax.fori_loop` (each call's argmax
tokens are the next call's inputs, so no call is dead code and nothing is
hoisted), the way the speculative loop runs them: this leaves out the
per-dispatch overhead of a Python-level call, which would otherwise dominate
the smallest models. The K values are interleaved in shuffled rounds so that
load from other processes hits them alike, and each K's cost is the median
over rounds of its time relative to the K = 1 sample of the same round.

Writes <output-dir>/scoring_cost.{json,md,png}. Example:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_scoring_cost.py --presets cpu_small,cpu_target
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm import tqdm

from specdec_t5x import paths
from specdec_t5x.network import PRESETS, T5Config, Transformer, config_from_preset

DEFAULT_PRESETS = ('cpu_small', 'cpu_base', 'cpu_large', 'cpu_target', 't5_1_1_small')


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
  """Shows the module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
  parser.add_argument('--presets', default=','.join(DEFAULT_PRESETS),
                      help='comma-separated model presets to time, random fp32 weights; known: '
                           + ', '.join(PRESETS))
  parser.add_argument('--max-k', type=int, default=8,
                      help='time K = 1..max-k query positions per decoder call')
  parser.add_argument('--batch', type=int, default=1, help='batch rows per decoder call')
  parser.add_argument('--encoder-length', type=int, default=48,
                      help='encoder input tokens (its output is computed once, outside timing)')
  parser.add_argument('--cache-length', type=int, default=128,
                      help='decoder self-attention cache length (every call attends over it)')
  parser.add_argument('--prefix-length', type=int, default=64,
                      help='cache position at which every call writes its K tokens '
                           '(prefix-length + max-k must fit in cache-length)')
  parser.add_argument('--rounds', type=int, default=30,
                      help='timed samples per K; each round times every K once, in shuffled order')
  parser.add_argument('--sample-ms', type=float, default=40.0,
                      help='target duration of one timed sample at K=1: that many ms worth of '
                           'decoder calls are chained in one jitted loop (at least 1 call)')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed runs per K after compilation')
  parser.add_argument('--reference-preset', default='cpu_target',
                      help='preset whose K=1 time the others are divided by in the table (the '
                           'draft/target cost ratio c); skipped when not among --presets')
  parser.add_argument('--seed', type=int, default=0, help='seed for weights, tokens and K order')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results',
                      help='where scoring_cost.json, .md and .png are written')
  args = parser.parse_args(argv)
  args.presets = [name.strip() for name in args.presets.split(',') if name.strip()]
  for name in args.presets:
    config_from_preset(name)  # Fails now, not after the first preset's minutes.
  if not args.presets:
    parser.error('--presets is empty')
  for flag in ('max_k', 'batch', 'encoder_length', 'cache_length', 'rounds'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")} must be >= 1')
  if args.prefix_length < 0 or args.prefix_length + args.max_k > args.cache_length:
    parser.error(f'need 0 <= --prefix-length and --prefix-length + --max-k <= --cache-length, '
                 f'got {args.prefix_length} + {args.max_k} > {args.cache_length}')
  if args.sample_ms <= 0 or args.warmup < 0:
    parser.error('--sample-ms must be > 0 and --warmup >= 0')
  return args


def machine_facts() -> dict[str, Any]:
  """What the numbers depend on, recorded next to them."""
  cpu_model = 'unknown'
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
      for line in cpuinfo:
        if line.startswith('model name'):
          cpu_model = line.split(':', 1)[1].strip()
          break
  return dict(
      nproc=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
      cpu_model=cpu_model,
      platform=platform.platform(),
      python=platform.python_version(),
      jax=jax.__version__,
      flax=flax.__version__,
      jax_backend=jax.default_backend(),
      jax_devices=[str(device) for device in jax.devices()],
  )


def random_params(module: Transformer, batch: int, encoder_length: int, seed: int) -> Any:
  """fp32 weights drawn i.i.d. normal with std 1/sqrt(fan_in), norms' scales at 1.

  Query kernels are further divided by sqrt(head_dim), as T5X initialises them: T5 does not
  scale q·k, so without it the attention logits are sqrt(head_dim) times too large and the
  softmaxes nearly one-hot, and the rounding that differs between XLA and PyTorch flips
  near-tied greedy choices (bench_baselines compares tokens across them). Timing does not
  depend on the values; `module.init`'s truncated normal is avoided because it takes half a
  minute for a 32k-vocabulary model on a CPU.
  """
  tokens = jnp.ones((batch, encoder_length), jnp.int32)
  shapes = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), tokens, tokens[:, :1], tokens[:, :1],
                          enable_dropout=False))['params']
  rng = np.random.default_rng(seed)
  query_scale = 1.0 / np.sqrt(module.config.head_dim)

  def draw(path, leaf):
    names = [getattr(key, 'key', str(key)) for key in path]
    if names[-1] == 'scale':
      return jnp.ones(leaf.shape, jnp.float32)
    std = 1.0 / np.sqrt(leaf.shape[0]) * (query_scale if 'query' in names else 1.0)
    return jnp.asarray(rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(std))

  return jax.tree_util.tree_map_with_path(draw, shapes)


def decoder_param_count(params: Any) -> int:
  """Parameters under `decoder/` (layers, final norm, logits), not the shared embedding."""
  return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params['decoder']))


def make_chained_calls(module: Transformer, prefix_length: int):
  """Jitted `(params, cache, encoded, encoder_tokens, tokens [batch, K], calls) -> tokens`.

  Runs `calls` cached decoder calls on K positions at `prefix_length`, each
  fed the previous call's argmax tokens.
  """

  def one_call(params, encoded, encoder_tokens, cache, tokens):
    batch = tokens.shape[0]
    # Every call writes at the same position, so all K see the same cache length.
    decoder_cache = dict(cache['decoder'],
                         decode_position=jnp.full((batch,), prefix_length, jnp.int32))
    logits, mutated = module.apply(
        {'params': params, 'cache': dict(cache, decoder=decoder_cache)}, encoded, encoder_tokens,
        tokens, tokens, decode=True, enable_dropout=False, mutable=['cache'],
        method=module.decode)
    return mutated['cache'], jnp.argmax(logits, axis=-1).astype(tokens.dtype)

  def chained_calls(params, cache, encoded, encoder_tokens, tokens, calls):
    def body(_, carry):
      return one_call(params, encoded, encoder_tokens, *carry)

    return lax.fori_loop(0, calls, body, (cache, tokens))[1]

  return jax.jit(chained_calls)


def time_once(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def measure_preset(name: str, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
  """Times K = 1..max_k for one preset; returns its config, samples and summary."""
  config: T5Config = config_from_preset(name, dtype=jnp.float32)
  module = Transformer(config)
  batch = args.batch
  params = random_params(module, batch, args.encoder_length, args.seed)
  encoder_tokens = jnp.asarray(
      rng.integers(2, config.vocab_size, (batch, args.encoder_length)), jnp.int32)
  encoded = jax.jit(lambda p, t: module.apply({'params': p}, t, enable_dropout=False,
                                              method=module.encode))(params, encoder_tokens)
  dummy = jnp.ones((batch, args.cache_length), jnp.int32)
  _, variables = module.apply({'params': params}, encoded, encoder_tokens, dummy, dummy,
                              decode=True, enable_dropout=False, mutable=['cache'],
                              method=module.decode, cache_cross_attention=True)
  cache = variables['cache']
  chained_calls = make_chained_calls(module, args.prefix_length)
  ks = list(range(1, args.max_k + 1))
  tokens = {k: jnp.asarray(rng.integers(2, config.vocab_size, (batch, k)), jnp.int32)
            for k in ks}

  def run(k, calls):
    return time_once(chained_calls, params, cache, encoded, encoder_tokens, tokens[k],
                     jnp.int32(calls))

  # Compile every K (the call count is traced, so one program per K), then size the samples.
  for k in tqdm(ks, desc=f'{name}: compile', leave=False):
    for _ in range(1 + args.warmup):
      run(k, 1)
  one_call_s = float(np.median([run(1, 1) for _ in range(5)]))
  calls = max(1, round(args.sample_ms / 1e3 / one_call_s))

  samples = {k: [] for k in ks}  # seconds per call, one per round
  with tqdm(total=args.rounds * len(ks), desc=f'{name}: K=1..{args.max_k}') as progress:
    for _ in range(args.rounds):
      for k in rng.permutation(ks):
        samples[int(k)].append(run(int(k), calls) / calls)
        progress.update()

  per_call = {k: np.asarray(samples[k]) for k in ks}
  # Paired within rounds: the K and K=1 samples of a round saw the same machine load.
  ratios = {k: per_call[k] / per_call[1] for k in ks}
  return dict(
      preset=name,
      config=dict(emb_dim=config.emb_dim, num_heads=config.num_heads, head_dim=config.head_dim,
                  num_decoder_layers=config.num_decoder_layers, mlp_dim=config.mlp_dim,
                  vocab_size=config.vocab_size, mlp_activations=list(config.mlp_activations)),
      decoder_params=decoder_param_count(params),
      calls_per_sample=calls,
      k=ks,
      # Lists aligned with `k` (element 0 is K=1), the layout `theory.optimal_gamma` takes.
      median_ms=[1e3 * float(np.median(per_call[k])) for k in ks],
      ratio_median=[float(np.median(ratios[k])) for k in ks],
      ratio_q25=[float(np.quantile(ratios[k], 0.25)) for k in ks],
      ratio_q75=[float(np.quantile(ratios[k], 0.75)) for k in ks],
      samples_ms=[[1e3 * s for s in samples[k]] for k in ks],
      load_average_1min=os.getloadavg()[0],
  )


def shape_label(result: dict[str, Any]) -> str:
  cfg = result['config']
  return (f"{cfg['emb_dim']} wide, {cfg['num_decoder_layers']} layers, mlp {cfg['mlp_dim']}, "
          f"vocab {cfg['vocab_size']} ({result['decoder_params'] / 1e6:.1f}M)")


def _markdown_row(cells: Sequence[str]) -> str:
  return '| ' + ' | '.join(cells) + ' |'


def markdown_tables(results: list[dict[str, Any]], reference: str | None) -> tuple[str, str]:
  """The ratio table and the table of the ratios' interquartile ranges, in Markdown."""
  ks = results[0]['k']
  reference_ms = next((r['median_ms'][0] for r in results if r['preset'] == reference), None)
  head = ['preset', 'decoder (params)', 'K=1'] + [f'K={k}' for k in ks[1:]]
  if reference_ms is not None:
    head.append(f'K=1 time / {reference}')
  ratios = [_markdown_row(head), '|' + '---|' * len(head)]
  for r in results:
    row = [r['preset'], shape_label(r), f"{r['median_ms'][0]:.3g} ms"]
    row += [f'{ratio:.2f}' for ratio in r['ratio_median'][1:]]
    if reference_ms is not None:
      row.append(f"{r['median_ms'][0] / reference_ms:.3f}")
    ratios.append(_markdown_row(row))
  spread_head = ['preset'] + [f'K={k}' for k in ks[1:]]
  spread = [_markdown_row(spread_head), '|' + '---|' * len(spread_head)]
  for r in results:
    quartiles = zip(r['ratio_q25'][1:], r['ratio_q75'][1:], strict=True)
    cells = [f'{low:.2f}-{high:.2f}' for low, high in quartiles]
    spread.append(_markdown_row([r['preset']] + cells))
  return '\n'.join(ratios), '\n'.join(spread)


def write_markdown(path: pathlib.Path, report: dict[str, Any]) -> None:
  settings, machine, results = report['settings'], report['machine'], report['results']
  table, spread = markdown_tables(results, settings['reference_preset'])
  loads = ', '.join(f"{r['preset']} {r['load_average_1min']:.1f}" for r in results)
  has_reference = any(r['preset'] == settings['reference_preset'] for r in results)
  paragraphs = [
      '# Scoring cost: one cached decoder call on K positions, relative to K = 1',
      f"Command: `{report['command']}`  \n"
      f"Date: {report['date']} (the run took {report['duration_s'] / 60:.1f} min)  \n"
      f"Machine: {machine['nproc']} CPU cores ({machine['cpu_model']}), {machine['platform']}, "
      f"python {machine['python']}, jax {machine['jax']} (backend {machine['jax_backend']}), "
      f"flax {machine['flax']}.",
      f"Setup: batch {settings['batch']}, fp32, random weights; encoder output of "
      f"{settings['encoder_length']} tokens precomputed; self-attention cache of "
      f"{settings['cache_length']} positions, cross-attention keys/values cached once; every call "
      f"writes its K tokens at position {settings['prefix_length']}. A timed sample chains "
      f"several calls in one jitted `lax.fori_loop` (as the speculative loop runs them, without "
      f"per-call dispatch); {settings['rounds']} rounds, each timing every K once in shuffled "
      f"order. K=1 is the median time of one call; the K columns are the median over rounds of "
      f"(time at K / time at K=1 in the same round)."
      + (f" The last column, K=1 time relative to {settings['reference_preset']}, is the "
         f"draft/target step cost ratio c for that pair." if has_reference else ''),
      f"**Shared machine**: other developers were running jobs on these {machine['nproc']} cores "
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
  path.write_text('\n\n'.join(paragraphs) + '\n', encoding='utf-8')


def write_plot(path: pathlib.Path, results: list[dict[str, Any]]) -> None:
  import matplotlib

  matplotlib.use('Agg')  # Files only; there is no display here.
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  figure, (ratio_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
  for r in results:
    ks = r['k']
    label = f"{r['preset']} ({r['decoder_params'] / 1e6:.1f}M)"
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


def reproducing_command(keep_interpreter: bool = False) -> str:
  """This run's command line, relative to the repository, with JAX_PLATFORMS if set.

  An interpreter outside the repository is written as `python`, or as its full path with
  `keep_interpreter` (when which Python ran decides the result, e.g. whether t5x is there).
  """
  root = str(paths.repo_root())
  python = (os.path.relpath(sys.executable, root) if sys.executable.startswith(root)
            else sys.executable if keep_interpreter else 'python')
  platforms = os.environ.get('JAX_PLATFORMS')
  prefix = f'JAX_PLATFORMS={platforms} ' if platforms else ''
  return prefix + shlex.join([python] + sys.argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  started = time.time()
  rng = np.random.default_rng(args.seed)
  results = [measure_preset(name, args, rng) for name in args.presets]
  report = dict(
      command=reproducing_command(),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      duration_s=time.time() - started,
      machine=machine_facts(),
      settings={key: (str(value) if isinstance(value, pathlib.Path) else value)
                for key, value in vars(args).items()},
      results=results,
  )
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / 'scoring_cost.json').write_text(json.dumps(report, indent=1),
                                                       encoding='utf-8')
  write_markdown(args.output_dir / 'scoring_cost.md', report)
  write_plot(args.output_dir / 'scoring_cost.png', results)
  table, _ = markdown_tables(results, args.reference_preset)
  print(table)
  print(f'wrote {args.output_dir}/scoring_cost.{{json,md,png}} '
        f'in {report["duration_s"] / 60:.1f} min')


if __name__ == '__main__':
  main()
