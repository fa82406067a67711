"""Overhead of the speculative loop itself, with the target as its own draft.

With the target drafting for itself every draft is accepted, so each
iteration emits exactly γ+1 tokens, and its time should be the sum of its
parts: γ draft steps (the first feeds two positions) plus one target call on
γ+1 positions. Per-token host synchronisation, cache copies or other loop
overhead show up as the gap between the measured iteration time and that sum.
The ratio to the jitted autoregressive baseline is measured in the same run.

  JAX_PLATFORMS=cpu python scripts/bench_loop_overhead.py
  JAX_PLATFORMS=cpu python scripts/bench_loop_overhead.py --preset t5_1_1_small --gammas 3 7

Writes results/loop_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_scoring_cost as scoring  # noqa: E402

from specdec_t5x import cache as cache_lib  # noqa: E402
from specdec_t5x import decoding, drafters, network, paths  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--preset', default='cpu_target',
                      help='model preset of specdec_t5x.network.PRESETS (random fp32 weights)')
  parser.add_argument('--gammas', type=int, nargs='+', default=[1, 3, 5, 7],
                      help='draft lengths to measure')
  parser.add_argument('--max-decode-len', type=int, default=64,
                      help='tokens decoded per run (EOS is chosen so every run decodes all)')
  parser.add_argument('--encoder-length', type=int, default=48, help='encoder input tokens')
  parser.add_argument('--rounds', type=int, default=7,
                      help='interleaved rounds; each times every decoder once (medians reported)')
  parser.add_argument('--calls', type=int, default=20,
                      help='chained decoder calls per component timing sample')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results',
                      help='where loop_overhead.json and loop_overhead.md go')
  return parser.parse_args(argv)


def full_length_eos(module, params, tokens, max_len: int) -> int:
  """An EOS id the greedy output never contains, so every run decodes `max_len` tokens."""
  output = decoding.autoregressive_decode(module, params, tokens, max_decode_len=max_len,
                                          eos_id=module.config.vocab_size - 1)
  seen = set(np.asarray(output.tokens).ravel().tolist())
  eos = next(i for i in range(module.config.vocab_size - 1, 1, -1) if i not in seen)
  check = decoding.autoregressive_decode(module, params, tokens, max_decode_len=max_len,
                                         eos_id=eos)
  assert int(check.lengths[0]) == max_len, 'greedy output changed with the EOS id'
  return eos


def component_times(module, params, tokens, ks: Sequence[int], calls: int, rounds: int,
                    prefix: int) -> dict[int, float]:
  """Median seconds of one cached decoder call on K positions, for each K."""
  encoded = module.apply({'params': params}, tokens, enable_dropout=False, method=module.encode)
  cache = jax.jit(cache_lib.init_decode_cache, static_argnums=(0, 4))(
      module, params, encoded, tokens, prefix + max(ks) + 1)
  chained = scoring.make_chained_calls(module, prefix)
  inputs = {k: jnp.full((1, k), 5, jnp.int32) for k in ks}
  for k in ks:  # compile
    scoring.time_once(chained, params, cache, encoded, tokens, inputs[k], 1)
  samples = {k: [] for k in ks}
  for _ in range(rounds):
    for k in ks:
      samples[k].append(scoring.time_once(chained, params, cache, encoded, tokens, inputs[k],
                                          calls) / calls)
  return {k: statistics.median(v) for k, v in samples.items()}


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  config = network.config_from_preset(args.preset)
  module = network.Transformer(config)
  params = scoring.random_params(module, 1, args.encoder_length, seed=0)
  tokens = np.random.default_rng(0).integers(3, config.vocab_size, (1, args.encoder_length))
  eos = full_length_eos(module, params, tokens, args.max_decode_len)
  drafter = drafters.ModelDrafter(module, params)
  settings = dict(max_decode_len=args.max_decode_len, eos_id=eos)

  runs = {'autoregressive': lambda: decoding.autoregressive_decode(module, params, tokens,
                                                                   **settings)}
  for gamma in args.gammas:
    runs[f'gamma{gamma}'] = (lambda g=gamma: decoding.speculative_decode(
        module, params, drafter, tokens, gamma=g, **settings))
  outputs = {name: jax.block_until_ready(run()) for name, run in runs.items()}  # compile
  reference = np.asarray(outputs['autoregressive'].tokens)
  times = {name: [] for name in runs}
  for _ in tqdm(range(args.rounds), desc='interleaved rounds'):
    for name, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      times[name].append(time.perf_counter() - start)

  ks = sorted({1, 2} | {g + 1 for g in args.gammas})
  step = component_times(module, params, tokens, ks, args.calls, args.rounds,
                         prefix=args.max_decode_len // 2)
  ar_time = statistics.median(times['autoregressive'])
  rows = []
  for gamma in args.gammas:
    out = outputs[f'gamma{gamma}']
    iterations = int(out.iterations[0])
    loop_time = statistics.median(times[f'gamma{gamma}'])
    # One iteration: the draft's first call feeds 2 positions, then γ-1 single steps; the
    # target scores γ+1 positions. (Encoders and cache set-up are in both decoders' totals.)
    parts = step[2] + (gamma - 1) * step[1] + step[gamma + 1]
    rows.append(dict(
        gamma=gamma, identical_to_autoregressive=bool(np.array_equal(out.tokens, reference)),
        iterations=iterations, tokens_per_iteration=args.max_decode_len / iterations,
        expected_iterations=-(-args.max_decode_len // (gamma + 1)),
        iteration_ms=1e3 * loop_time / iterations, parts_ms=1e3 * parts,
        overhead=loop_time / iterations / parts - 1.0,
        speedup_vs_autoregressive=ar_time / loop_time))
  report = dict(
      command='JAX_PLATFORMS=cpu python scripts/bench_loop_overhead.py ' + ' '.join(
          sys.argv[1:] if argv is None else argv),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      machine=scoring.machine_facts(), preset=args.preset, max_decode_len=args.max_decode_len,
      encoder_length=args.encoder_length, autoregressive_ms_per_token=1e3 * ar_time /
      args.max_decode_len, step_ms={str(k): 1e3 * v for k, v in step.items()}, rows=rows)
  args.output_dir.mkdir(parents=True, exist_ok=True)
  (args.output_dir / 'loop_overhead.json').write_text(json.dumps(report, indent=2) + '\n')
  lines = [
      '# Speculative loop overhead (target drafting for itself)', '',
      f'Command: `{report["command"]}`  ', f'Date: {report["date"]}  ',
      f'Machine: {report["machine"]["nproc"]} CPU cores, jax {report["machine"]["jax"]}; '
      'shared with other jobs, so read the ratios, not the absolute times.', '',
      f'Preset `{args.preset}` (random fp32 weights), batch 1, {args.encoder_length} encoder '
      f'tokens, {args.max_decode_len} tokens decoded; medians of {args.rounds} interleaved '
      f'rounds. Autoregressive: {report["autoregressive_ms_per_token"]:.2f} ms/token. One cached '
      'call on K positions: ' + ', '.join(f'K={k} {1e3 * v:.2f} ms' for k, v in step.items()) +
      '.', '',
      'Parts = draft call on 2 positions + (γ−1) draft steps + target call on γ+1 positions. '
      'Overhead = measured iteration time / parts − 1.', '',
      '| γ | same tokens as autoregressive | iterations (expected) | tokens/iteration | '
      'iteration ms | parts ms | overhead | speed vs autoregressive |',
      '|---|---|---|---|---|---|---|---|']
  for row in rows:
    lines.append(
        f'| {row["gamma"]} | {row["identical_to_autoregressive"]} | {row["iterations"]} '
        f'({row["expected_iterations"]}) | {row["tokens_per_iteration"]:.2f} | '
        f'{row["iteration_ms"]:.2f} | {row["parts_ms"]:.2f} | {100 * row["overhead"]:+.0f}% | '
        f'{row["speedup_vs_autoregressive"]:.2f}x |')
  lines += ['', 'With the target as its own draft the draft costs as much as the target (c = 1), '
            'so speculation cannot be faster here; the point is that the loop adds little '
            'beyond the model calls it makes.', '']
  (args.output_dir / 'loop_overhead.md').write_text('\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
