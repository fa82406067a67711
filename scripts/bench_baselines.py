#!/usr/bin/env python
"""Greedy decoding speed of our baseline against T5X's own decoding and Hugging Face, same weights.

Every speed-up the project reports is a ratio over `specdec_t5x.decoding.autoregressive_decode`.
This script checks that baseline against what a T5X or PyTorch user would run instead, on the
SAME weights and inputs, greedy, batch 1 and 8 by default:

  ours          `decoding.autoregressive_decode` (one jitted `lax.while_loop`);
  t5x           T5X's own `EncoderDecoderModel.predict_batch` (`t5x.decoding.temperature_sample`
                at temperature 0) on T5X's example network `t5x.examples.t5.network.Transformer`,
                jitted as `t5x.infer` runs it; only when t5x is importable (run this script with
                a Python that has t5x and specdec_t5x, e.g. /tmp/t5x-venv/bin/python);
  hf            Hugging Face `T5ForConditionalGeneration.generate` (greedy, eager PyTorch) on
                the weights converted by `specdec_t5x.hf_convert.to_hf_model`;
  speculative   our `decoding.speculative_decode` with a `drafters.ModelDrafter`.

Models: the T5 1.1-small shape (`--preset`) with random weights (queries scaled as T5X
initialises them, see `bench_scoring_cost.random_params`), EOS banned (the EOS column of
`logits_dense` is zeroed, identically for every backend, so every run decodes the full length),
with a smaller random draft (`--draft-preset`, which accepts almost nothing: the worst case of
speculation); and with `--family`, every size of the trained family whose checkpoints exist
(configs/family.json, under $SPECDEC_CACHE_DIR/models/<family>/), on real EnDe test inputs, the
target also decoded speculatively with each trained draft.

Timing: compilation and a warm-up run excluded; `--runs` rounds in which every backend decodes
the batch once, in a shuffled order (so load from other processes hits them alike); the medians
are reported. ms/step is wall time over decoding steps (the longest output of the batch: every
backend stops when all rows have emitted EOS). The memory-bound floor of a step is the bytes of
decoder parameters a cached step must read, over the read bandwidth of this machine measured
here. Tokens of ours, t5x and hf are compared position by position.

Writes <output-dir>/baselines.{json,md}. Example:

  JAX_PLATFORMS=cpu /tmp/t5x-venv/bin/python scripts/bench_baselines.py --family
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import bench_scoring_cost  # noqa: E402  (scripts/ is on sys.path when this file runs)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from specdec_t5x import checkpoints, decoding, drafters, hf_convert, network, paths  # noqa: E402

EOS_ID = 1
BACKENDS = ('ours', 't5x', 'hf', 'speculative')
EXACT_BACKENDS = ('ours', 't5x', 'hf')  # must emit the same tokens


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
  """Shows the module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
  parser.add_argument('--preset', default='t5_1_1_small',
                      help='shape of the random-weights model; known: '
                           + ', '.join(network.PRESETS))
  parser.add_argument('--draft-preset', default='cpu_small',
                      help='shape of the random draft of the random-weights model (its '
                           'vocabulary is set to the target\'s)')
  parser.add_argument('--no-random', action='store_true',
                      help='skip the random-weights model (with --family: trained models only)')
  parser.add_argument('--family', nargs='?', const='default', default=None,
                      help='also benchmark every trained model of this family of '
                           'configs/family.json whose checkpoint exists (real EnDe inputs)')
  parser.add_argument('--batches', default='1,8', help='comma-separated batch sizes')
  parser.add_argument('--max-decode-len', type=int, default=64, help='tokens per output row')
  parser.add_argument('--encoder-length', type=int, default=64,
                      help='encoder input tokens of the random-weights model (random ids)')
  parser.add_argument('--gamma', type=int, default=3, help='draft tokens per speculative step')
  parser.add_argument('--runs', type=int, default=7,
                      help='timed rounds; each decodes the batch once with every backend')
  parser.add_argument('--backends', default=','.join(BACKENDS),
                      help='comma-separated subset of ' + ', '.join(BACKENDS))
  parser.add_argument('--seed', type=int, default=0, help='seed for weights and inputs')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results',
                      help='where baselines.json and baselines.md are written')
  args = parser.parse_args(argv)
  args.batches = [int(b) for b in args.batches.split(',') if b.strip()]
  args.backends = [b.strip() for b in args.backends.split(',') if b.strip()]
  unknown = sorted(set(args.backends) - set(BACKENDS))
  if unknown:
    parser.error(f'unknown backends {unknown}; known: {list(BACKENDS)}')
  if 'ours' not in args.backends:
    parser.error('--backends must include ours: every ratio is relative to it')
  if not args.batches or min(args.batches) < 1:
    parser.error('--batches must be positive integers')
  for flag in ('max_decode_len', 'encoder_length', 'gamma', 'runs'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")} must be >= 1')
  if args.no_random and args.family is None:
    parser.error('--no-random leaves nothing to benchmark without --family')
  network.config_from_preset(args.preset)
  network.config_from_preset(args.draft_preset)
  return args


# ---------------------------------------------------------------------------------------------
# Models and inputs.


@dataclasses.dataclass
class Model:
  """A model to benchmark: its config, weights, the inputs it decodes and its drafts."""

  name: str
  config: network.T5Config
  params: Any
  inputs: np.ndarray                       # [n, length] int32 encoder tokens, n >= every batch
  drafts: dict[str, tuple[network.T5Config, Any]] = dataclasses.field(default_factory=dict)
  eos_banned: bool = False


def ban_eos(params: Mapping[str, Any], eos_id: int = EOS_ID) -> dict[str, Any]:
  """`params` with a zero EOS column in `decoder/logits_dense/kernel [emb, vocab]`.

  EOS then has logit 0, below the maximum of the other (random) logits, so greedy decoding
  never emits it; the change is in the weights, so every backend sees it.
  """
  kernel = np.array(params['decoder']['logits_dense']['kernel'])
  kernel[:, eos_id] = 0.0
  decoder = dict(params['decoder'], logits_dense={'kernel': jnp.asarray(kernel)})
  return dict(params, decoder=decoder)


def random_model(args: argparse.Namespace) -> Model:
  """The random-weights model of `--preset` and its random `--draft-preset` draft."""
  config = network.config_from_preset(args.preset)
  draft_config = network.config_from_preset(args.draft_preset, vocab_size=config.vocab_size)
  batch = max(args.batches)
  params = ban_eos(bench_scoring_cost.random_params(
      network.Transformer(config), 1, args.encoder_length, args.seed))
  draft_params = ban_eos(bench_scoring_cost.random_params(
      network.Transformer(draft_config), 1, args.encoder_length, args.seed + 1))
  rng = np.random.default_rng(args.seed)
  inputs = rng.integers(2, config.vocab_size, (batch, args.encoder_length)).astype(np.int32)
  return Model(name=f'{args.preset} (random weights)', config=config, params=params,
               inputs=inputs, drafts={args.draft_preset: (draft_config, draft_params)},
               eos_banned=True)


def family_models(family_name: str, num_inputs: int) -> tuple[list[Model], list[str]]:
  """Every model of the family whose checkpoint exists, and notes on the missing ones.

  The target gets every available draft; all decode the first `num_inputs` EnDe test inputs.
  """
  import train_family  # noqa: PLC0415  (scripts/ is on sys.path)

  from specdec_t5x.data import tasks  # noqa: PLC0415  (needs TensorFlow; only with --family)

  family = train_family.load_family(family_name)
  loaded, notes = {}, []
  for entry in family['models']:
    config = train_family.model_config(entry)
    directory = train_family.model_dir(family_name, entry['name'])
    try:
      loaded[entry['name']] = (entry, config, checkpoints.load_t5x_params(directory, config))
    except FileNotFoundError as error:
      notes.append(f"{family_name}/{entry['name']}: no checkpoint yet ({error})")
  if not loaded:
    return [], notes
  inputs = tasks.get_eval_examples(tasks.DDTP_ENDE, 'test', num_inputs)['inputs']
  drafts = {name: (config, params) for name, (entry, config, params) in loaded.items()
            if entry['role'] == 'draft'}
  models = []
  for name, (entry, config, params) in loaded.items():
    models.append(Model(
        name=f'{family_name}/{name} ({entry["preset"]})', config=config,
        params=jax.tree.map(jnp.asarray, params), inputs=np.asarray(inputs, np.int32),
        drafts=drafts if entry['role'] == 'target' else {}))
  return models, notes


def l3_cache_bytes() -> int | None:
  """The last-level cache size of CPU 0 (Linux sysfs), or None when unknown."""
  sizes = []
  for index in pathlib.Path('/sys/devices/system/cpu/cpu0/cache').glob('index*'):
    try:
      level = int((index / 'level').read_text())
      size = (index / 'size').read_text().strip()
    except (OSError, ValueError):
      continue
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    sizes.append((level, int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)))
  return max(sizes)[1] if sizes else None


def decoder_bytes_per_step(config: network.T5Config, params: Mapping[str, Any], batch: int) -> int:
  """Bytes a cached decoder step must read: every decoder weight but the cross-attention
  key/value kernels (their projections of the encoder output are cached once per request), the
  logits matrix (the shared embedding when tied) and `batch` embedding rows. The attention
  caches (about 1% here) are left out."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params['decoder']):
    names = [getattr(key, 'key', str(key)) for key in path]
    if 'encoder_decoder_attention' in names and names[-2] in ('key', 'value'):
      continue
    total += leaf.size * leaf.dtype.itemsize
  embedding = params['token_embedder']['embedding']
  rows = embedding.shape[0] if config.logits_via_embedding else batch
  return total + rows * embedding.shape[1] * embedding.dtype.itemsize


# ---------------------------------------------------------------------------------------------
# Backends: each is `tokens [B, L] -> (outputs [B, T] int32, 0 after EOS; extra stats)`.

Runner = Callable[[np.ndarray], tuple[np.ndarray, dict[str, float]]]


def ours_runner(config: network.T5Config, params: Any, max_len: int) -> Runner:
  module = network.Transformer(config)

  def run(tokens: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    out = decoding.autoregressive_decode(module, params, tokens, max_decode_len=max_len,
                                         eos_id=EOS_ID)
    return np.asarray(out.tokens), {}

  return run


def speculative_runner(config: network.T5Config, params: Any, draft_config: network.T5Config,
                       draft_params: Any, gamma: int, max_len: int) -> Runner:
  module = network.Transformer(config)
  drafter = drafters.ModelDrafter(network.Transformer(draft_config), draft_params)

  def run(tokens: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    out = decoding.speculative_decode(module, params, drafter, tokens, gamma=gamma,
                                      max_decode_len=max_len, eos_id=EOS_ID)
    iterations = np.asarray(out.iterations)
    stats = {'tokens_per_iteration': float(np.sum(out.lengths) / max(np.sum(iterations), 1)),
             'acceptance_rate': float(np.sum(out.accepted) / max(gamma * np.sum(iterations), 1))}
    return np.asarray(out.tokens), stats

  return run


def t5x_runner(config: network.T5Config, params: Any, max_len: int) -> Runner:
  """T5X's `predict_batch` on its example network, jitted as `t5x.infer` runs it."""
  import seqio  # noqa: PLC0415
  from t5x import models as t5x_models  # noqa: PLC0415
  from t5x.examples.t5 import network as t5x_network  # noqa: PLC0415

  from specdec_t5x import t5x_model  # noqa: PLC0415

  fields = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
  vocabulary = seqio.PassThroughVocabulary(size=config.vocab_size, eos_id=EOS_ID)
  model = t5x_models.EncoderDecoderModel(
      module=t5x_network.Transformer(t5x_network.T5Config(**fields)),
      input_vocabulary=vocabulary, output_vocabulary=vocabulary, optimizer_def=None,
      decode_fn=t5x_model.t5x_sampling_decode_fn(temperature=0.0))
  predict = jax.jit(model.predict_batch)

  def run(tokens: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    batch = {'encoder_input_tokens': tokens,
             'decoder_input_tokens': np.zeros((tokens.shape[0], max_len), np.int32)}
    return np.asarray(predict(params, batch)), {}

  return run


def hf_runner(config: network.T5Config, params: Any, max_len: int) -> Runner:
  """Hugging Face greedy `generate` on the converted weights (eager PyTorch, fp32)."""
  import torch  # noqa: PLC0415

  model = hf_convert.to_hf_model(jax.tree.map(np.asarray, params), config)
  extra = {}
  if config.num_decoder_layers > config.num_encoder_layers:
    # See `to_hf_model`: generate's default cache is sized by the encoder depth.
    from transformers import DynamicCache, EncoderDecoderCache  # noqa: PLC0415
    extra['past_key_values'] = lambda: EncoderDecoderCache(DynamicCache(), DynamicCache())

  def run(tokens: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    ids = torch.from_numpy(tokens.astype(np.int64))
    kwargs = {name: make() for name, make in extra.items()}
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=(ids > 0).long(),
                           max_new_tokens=max_len, do_sample=False, num_beams=1,
                           eos_token_id=EOS_ID, pad_token_id=0, decoder_start_token_id=0,
                           **kwargs)
    generated = out[:, 1:].numpy().astype(np.int32)  # drop the decoder start token
    padded = np.zeros((tokens.shape[0], max_len), np.int32)
    padded[:, :generated.shape[1]] = generated
    return padded, {}

  return run


def t5x_status() -> str | None:
  """None when t5x is importable, else why not."""
  try:
    import t5x.models  # noqa: F401, PLC0415
    from t5x.examples.t5 import network as _  # noqa: F401, PLC0415
  except ImportError as error:
    return f'{type(error).__name__}: {error}'
  return None


# ---------------------------------------------------------------------------------------------
# Measurements.


def read_bandwidth(nbytes: int = 512 << 20, repeats: int = 7) -> dict[str, float]:
  """Best-of-`repeats` bandwidths (GB/s) of this machine on `nbytes` arrays.

  `read`: a jitted XLA sum (reads once, all threads), the bound for reading weights; `copy`:
  NumPy `copyto` (reads and writes `nbytes`, counted twice).
  """
  values = jnp.ones((nbytes // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(values).block_until_ready()
  best_read = min(_timed(lambda: total(values).block_until_ready()) for _ in range(repeats))
  source = np.ones(nbytes // 4, np.float32)
  target = np.empty_like(source)
  np.copyto(target, source)
  best_copy = min(_timed(lambda: np.copyto(target, source)) for _ in range(repeats))
  return {'read_gb_s': nbytes / best_read / 1e9, 'copy_gb_s': 2 * nbytes / best_copy / 1e9,
          'array_mb': nbytes / 2**20}


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def token_differences(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
  """How `other [B, T]` differs from `reference [B, T]`: counts and the first difference."""
  different = reference != other
  rows = np.flatnonzero(different.any(axis=1))
  summary: dict[str, Any] = {'identical': not rows.size, 'rows_differing': int(rows.size),
                             'positions_differing': int(different.sum())}
  if rows.size:
    row = int(rows[0])
    position = int(np.argmax(different[row]))
    summary['first'] = {'row': row, 'position': position,
                        'reference': int(reference[row, position]),
                        'other': int(other[row, position])}
  return summary


def decode_steps(outputs: np.ndarray) -> int:
  """Steps a greedy decode of `outputs [B, T]` (0 after EOS) ran: its longest row."""
  nonzero = outputs != 0
  lengths = np.where(nonzero.any(axis=1), outputs.shape[1] - np.argmax(nonzero[:, ::-1], 1), 0)
  return int(max(lengths.max(), 1))


def benchmark(model: Model, batch: int, args: argparse.Namespace, bandwidth: Mapping[str, float],
              t5x_missing: str | None) -> dict[str, Any]:
  """Times every backend on `model` at `batch`, interleaved; compares their tokens."""
  tokens = model.inputs[:batch]
  max_len = args.max_decode_len
  runners: dict[str, Runner] = {'ours': ours_runner(model.config, model.params, max_len)}
  if 't5x' in args.backends and t5x_missing is None:
    runners['t5x'] = t5x_runner(model.config, model.params, max_len)
  if 'hf' in args.backends:
    runners['hf'] = hf_runner(model.config, model.params, max_len)
  if 'speculative' in args.backends:
    for draft_name, (draft_config, draft_params) in model.drafts.items():
      runners[f'speculative ({draft_name}, γ={args.gamma})'] = speculative_runner(
          model.config, model.params, draft_config, draft_params, args.gamma, max_len)

  outputs, stats = {}, {}
  for name, run in runners.items():  # compile, then one untimed run
    run(tokens)
    outputs[name], stats[name] = run(tokens)
  times = {name: [] for name in runners}
  order_rng = np.random.default_rng(args.seed + batch)
  for _ in range(args.runs):
    for name in order_rng.permutation(list(runners)):
      times[name].append(_timed(lambda name=name: runners[name](tokens)))

  steps = decode_steps(outputs['ours'])
  floor_bytes = decoder_bytes_per_step(model.config, model.params, batch)
  floor_ms = floor_bytes / (bandwidth['read_gb_s'] * 1e9) * 1e3
  ours_s = float(np.median(times['ours']))
  l3_bytes = l3_cache_bytes()
  result = {'model': model.name, 'batch': batch, 'steps': steps, 'max_decode_len': max_len,
            'eos_banned': model.eos_banned, 'decoder_bytes_per_step': floor_bytes,
            'fits_in_l3': l3_bytes is not None and floor_bytes < l3_bytes,
            'floor_ms_per_step': floor_ms, 'load_average_1min': os.getloadavg()[0],
            'config': {k: v for k, v in dataclasses.asdict(model.config).items()
                       if k not in ('dtype',)},
            'backends': {}}
  for name in runners:
    median_s = float(np.median(times[name]))
    ms_per_step = median_s / steps * 1e3
    result['backends'][name] = {
        'times_s': times[name], 'median_s': median_s, 'ms_per_step': ms_per_step,
        'ms_per_token': ms_per_step / batch, 'ratio_to_ours': median_s / ours_s,
        'times_floor': ms_per_step / floor_ms, 'steps': decode_steps(outputs[name]),
        'tokens_vs_ours': token_differences(outputs['ours'], outputs[name]), **stats[name]}
  return result


# ---------------------------------------------------------------------------------------------
# Report.


def _markdown_row(cells: Sequence[str]) -> str:
  return '| ' + ' | '.join(cells) + ' |'


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
  head = ['model', 'batch', 'backend', 'ms/step', 'ms/token', 'time / ours', '× floor',
          'tokens vs ours']
  lines = [_markdown_row(head), '|' + '---|' * len(head)]
  for result in results:
    floor = (f"floor {result['floor_ms_per_step']:.2f} ms/step "
             f"({result['decoder_bytes_per_step'] / 1e6:.1f} MB"
             + (', fits in the L3 cache' if result['fits_in_l3'] else '') + ')')
    lines.append(_markdown_row([result['model'], str(result['batch']), floor, '', '', '', '',
                                f"{result['steps']} steps"]))
    for name, row in result['backends'].items():
      label = name
      if 'acceptance_rate' in row:
        label += (f" (accepts {100 * row['acceptance_rate']:.0f}% of drafts, "
                  f"{row['tokens_per_iteration']:.2f} tokens/iteration)")
      lines.append(_markdown_row(['', '', label, f"{row['ms_per_step']:.2f}",
                                  f"{row['ms_per_token']:.2f}", f"{row['ratio_to_ours']:.2f}",
                                  f"{row['times_floor']:.2f}", _tokens_cell(name, row)]))
  return '\n'.join(lines)


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
    exact = [name for name in EXACT_BACKENDS if name in result['backends']]
    differing = [name for name in exact
                 if not result['backends'][name]['tokens_vs_ours']['identical']]
    lines.append(f"- {where}: tokens of {', '.join(exact)} "
                 + ('identical.' if not differing else f"DIFFER for {', '.join(differing)}."))
  return lines


def write_markdown(path: pathlib.Path, report: Mapping[str, Any]) -> None:
  machine, settings, bandwidth = report['machine'], report['settings'], report['bandwidth']
  t5x_line = ('T5X: importable, its example network decodes with `predict_batch`.'
              if report['t5x_missing'] is None else
              f"**T5X is not importable in this Python** ({report['t5x_missing']}): the t5x "
              f"column is missing. Run the command with a Python that has t5x (e.g. "
              f"/tmp/t5x-venv/bin/python).")
  loads = ', '.join(f"{r['model']} b{r['batch']}: {r['load_average_1min']:.1f}"
                    for r in report['results'])
  paragraphs = [
      '# Baselines: greedy decoding with ours, T5X, Hugging Face and speculative decoding',
      f"Command: `{report['command']}`  \n"
      f"Date: {report['date']} (the run took {report['duration_s'] / 60:.1f} min)  \n"
      f"Machine: {machine['nproc']} CPU cores ({machine['cpu_model']}), {machine['platform']}, "
      f"python {machine['python']}, jax {machine['jax']}, flax {machine['flax']}, "
      f"torch {report['torch']} ({report['torch_threads']} threads), "
      f"transformers {report['transformers']}.  \n" + t5x_line,
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
      f"nothing, the worst case for speculation.",
      f"**Shared machine**: other processes ran on these cores (1-minute load average after "
      f"each block: {loads}); the backends of a block are interleaved, so their ratios are "
      f"comparable, absolute times less so.",
      results_table(report['results']),
      '## Checks\n\n' + '\n'.join(verdicts(report['results'])),
  ]
  if report['notes']:
    paragraphs.append('## Notes\n\n' + '\n'.join(f'- {note}' for note in report['notes']))
  path.write_text('\n\n'.join(paragraphs) + '\n', encoding='utf-8')


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  started = time.time()
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  t5x_missing = t5x_status()
  if t5x_missing is not None and 't5x' in args.backends:
    print(f'T5X IS NOT IMPORTABLE ({t5x_missing}): the t5x backend is skipped. Run this script '
          'with a Python that has t5x, e.g. /tmp/t5x-venv/bin/python.', flush=True)
  bandwidth = read_bandwidth()
  print(f"read bandwidth {bandwidth['read_gb_s']:.1f} GB/s, copy {bandwidth['copy_gb_s']:.1f} "
        'GB/s', flush=True)
  models, notes = [], []
  if not args.no_random:
    models.append(random_model(args))
  if args.family is not None:
    family, missing = family_models(args.family, max(args.batches))
    models += family
    notes += missing
    if not family:
      notes.append(f'--family {args.family}: no trained checkpoint found, nothing measured.')
  results = []
  for model in models:
    for batch in args.batches:
      if batch > len(model.inputs):
        notes.append(f'{model.name}: only {len(model.inputs)} inputs, batch {batch} skipped.')
        continue
      print(f'{model.name}, batch {batch} ...', flush=True)
      results.append(benchmark(model, batch, args, bandwidth, t5x_missing))
      for name, row in results[-1]['backends'].items():
        print(f"  {name:32s} {row['ms_per_step']:7.2f} ms/step  x{row['ratio_to_ours']:.2f} "
              f"of ours  x{row['times_floor']:.2f} of floor  "
              f"tokens {'identical' if row['tokens_vs_ours']['identical'] else 'DIFFER'}",
              flush=True)
  report = {
      'command': bench_scoring_cost.reproducing_command(keep_interpreter=True),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'duration_s': time.time() - started,
      'machine': bench_scoring_cost.machine_facts(),
      'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
      'transformers': transformers.__version__,
      't5x_missing': t5x_missing,
      'settings': {key: (str(value) if isinstance(value, pathlib.Path) else value)
                   for key, value in vars(args).items()},
      'bandwidth': bandwidth,
      'results': results,
      'notes': notes,
  }
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / 'baselines.json').write_text(json.dumps(report, indent=1), encoding='utf-8')
  write_markdown(args.output_dir / 'baselines.md', report)
  print('\n'.join(verdicts(results)))
  print(f'wrote {args.output_dir}/baselines.{{json,md}} in {report["duration_s"] / 60:.1f} min')


if __name__ == '__main__':
  sys.exit(main())
