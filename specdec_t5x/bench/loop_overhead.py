"""Overhead of the speculative loop itself, with the target as its own draft.

With the target drafting for itself every draft is accepted, so each iteration emits
exactly γ+1 tokens, and its time should be the sum of its parts: γ draft steps (the
first feeds two positions) plus one target call on γ+1 positions. Per-token host
synchronisation, cache copies or other loop overhead show up as the gap between the
measured iteration time and that sum. The ratio to the jitted autoregressive baseline
is measured in the same run.
"""

from __future__ import annotations

import functools
import json
import pathlib
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from specdec_t5x import decoding, drafters, network
from specdec_t5x.bench import machine, random_weights, report, timing


def full_length_eos(module: network.Transformer, params: Any, tokens: np.ndarray,
                    max_len: int) -> int:
  """An EOS id the greedy output never contains, so every run decodes `max_len` tokens."""
  output = decoding.autoregressive_decode(module, params, tokens, max_decode_len=max_len,
                                          eos_id=module.config.vocab_size - 1)
  seen = set(np.asarray(output.tokens).ravel().tolist())
  eos = next(i for i in range(module.config.vocab_size - 1, 1, -1) if i not in seen)
  check = decoding.autoregressive_decode(module, params, tokens, max_decode_len=max_len,
                                         eos_id=eos)
  assert int(check.lengths[0]) == max_len, 'greedy output changed with the EOS id'
  return eos


def component_times(module: network.Transformer, params: Any, tokens: np.ndarray,
                    ks: Sequence[int], calls: int, rounds: int, prefix: int,
                    seed: int = 0) -> dict[int, float]:
  """Median seconds of one cached decoder call on K positions at `prefix`, for each K.

  `tokens [1, L]` are the encoder inputs; each sample chains `calls` calls.
  """
  encoder_tokens = jnp.asarray(tokens)
  encoded, cache = timing.target_cache(module, params, encoder_tokens, prefix + max(ks) + 1)
  positions = jnp.full((encoder_tokens.shape[0],), prefix, jnp.int32)
  inputs = {k: jnp.full((encoder_tokens.shape[0], k), 5, jnp.int32) for k in ks}

  def run(k: int, count: int) -> float:
    return timing.timed(lambda: timing.chained_target_calls(
        module, params, cache, encoded, encoder_tokens, inputs[k], positions,
        jnp.int32(count)))[0]

  for k in ks:  # compile (the call count is traced: one program per K)
    run(k, 1)
  samples = timing.interleaved_rounds(
      {k: functools.partial(lambda k: run(k, calls) / calls, k) for k in ks}, rounds, seed)
  return {k: statistics.median(samples[k]) for k in ks}


def decoder_times(runs: Mapping[str, Callable[[], Any]], rounds: int,
                  seed: int = 0) -> tuple[dict[str, Any], dict[str, list[float]]]:
  """Each decoder's output (after compiling) and its wall times over interleaved rounds."""
  outputs = {name: jax.block_until_ready(run()) for name, run in runs.items()}  # compile
  with tqdm(total=rounds * len(runs), desc='interleaved rounds') as progress:
    times = timing.interleaved_rounds(
        {name: functools.partial(lambda run: timing.timed(run)[0], run)
         for name, run in runs.items()}, rounds, seed, progress)
  return outputs, times


def overhead_row(gamma: int, output: Any, reference: np.ndarray, loop_s: float,
                 autoregressive_s: float, step: Mapping[int, float],
                 max_decode_len: int) -> dict[str, Any]:
  """One γ's iteration time against the sum of its parts (`step`: K -> seconds per call)."""
  iterations = int(output.iterations[0])
  # One iteration: the draft's first call feeds 2 positions, then γ-1 single steps; the
  # target scores γ+1 positions. (Encoders and cache set-up are in both decoders' totals.)
  parts = step[2] + (gamma - 1) * step[1] + step[gamma + 1]
  return dict(
      gamma=gamma, identical_to_autoregressive=bool(np.array_equal(output.tokens, reference)),
      iterations=iterations, tokens_per_iteration=max_decode_len / iterations,
      expected_iterations=-(-max_decode_len // (gamma + 1)),
      iteration_ms=1e3 * loop_s / iterations, parts_ms=1e3 * parts,
      overhead=loop_s / iterations / parts - 1.0,
      speedup_vs_autoregressive=autoregressive_s / loop_s)


def measure(preset: str, gammas: Sequence[int], *, max_decode_len: int, encoder_length: int,
            rounds: int, calls: int, command: str) -> dict[str, Any]:
  """The loop_overhead.json record: preset `preset`, random weights, batch 1."""
  module = network.Transformer(network.config_from_preset(preset))
  params = random_weights.random_params(module, 1, encoder_length, seed=0)
  tokens = np.random.default_rng(0).integers(3, module.config.vocab_size, (1, encoder_length))
  eos = full_length_eos(module, params, tokens, max_decode_len)
  drafter = drafters.ModelDrafter(module, params)
  settings = dict(max_decode_len=max_decode_len, eos_id=eos)
  runs = {'autoregressive': lambda: decoding.autoregressive_decode(module, params, tokens,
                                                                   **settings)}
  for gamma in gammas:
    runs[f'gamma{gamma}'] = (lambda g=gamma: decoding.speculative_decode(
        module, params, drafter, tokens, gamma=g, **settings))
  outputs, times = decoder_times(runs, rounds)
  reference = np.asarray(outputs['autoregressive'].tokens)
  ks = sorted({1, 2} | {g + 1 for g in gammas})
  step = component_times(module, params, tokens, ks, calls, rounds, prefix=max_decode_len // 2)
  ar_time = statistics.median(times['autoregressive'])
  rows = [overhead_row(gamma, outputs[f'gamma{gamma}'], reference,
                       statistics.median(times[f'gamma{gamma}']), ar_time, step, max_decode_len)
          for gamma in gammas]
  return dict(
      command=command, date=report.utc_date(), machine=machine.machine_facts(), preset=preset,
      max_decode_len=max_decode_len, encoder_length=encoder_length,
      autoregressive_ms_per_token=1e3 * ar_time / max_decode_len,
      step_ms={str(k): 1e3 * v for k, v in step.items()}, rows=rows)


def markdown(record: Mapping[str, Any], rounds: int) -> str:
  """loop_overhead.md from the loop_overhead.json record of a run of `rounds` rounds."""
  lines = [
      '# Speculative loop overhead (target drafting for itself)', '',
      f'Command: `{record["command"]}`  ', f'Date: {record["date"]}  ',
      f'Machine: {record["machine"]["nproc"]} CPU cores, jax {record["machine"]["jax"]}; '
      'shared with other jobs, so read the ratios, not the absolute times.', '',
      f'Preset `{record["preset"]}` (random fp32 weights), batch 1, {record["encoder_length"]} '
      f'encoder tokens, {record["max_decode_len"]} tokens decoded; medians of {rounds} '
      f'interleaved rounds. Autoregressive: {record["autoregressive_ms_per_token"]:.2f} '
      'ms/token. One cached call on K positions: '
      + ', '.join(f'K={k} {v:.2f} ms' for k, v in record['step_ms'].items()) + '.', '',
      'Parts = draft call on 2 positions + (γ−1) draft steps + target call on γ+1 positions. '
      'Overhead = measured iteration time / parts − 1.', '',
      '| γ | same tokens as autoregressive | iterations (expected) | tokens/iteration | '
      'iteration ms | parts ms | overhead | speed vs autoregressive |',
      '|---|---|---|---|---|---|---|---|']
  for row in record['rows']:
    lines.append(
        f'| {row["gamma"]} | {row["identical_to_autoregressive"]} | {row["iterations"]} '
        f'({row["expected_iterations"]}) | {row["tokens_per_iteration"]:.2f} | '
        f'{row["iteration_ms"]:.2f} | {row["parts_ms"]:.2f} | {100 * row["overhead"]:+.0f}% | '
        f'{row["speedup_vs_autoregressive"]:.2f}x |')
  lines += ['', 'With the target as its own draft the draft costs as much as the target (c = 1), '
            'so speculation cannot be faster here; the point is that the loop adds little '
            'beyond the model calls it makes.', '']
  return '\n'.join(lines)


def write_report(output_dir: pathlib.Path, record: Mapping[str, Any], rounds: int) -> str:
  """Writes `output_dir`/loop_overhead.json and .md; returns the Markdown."""
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / 'loop_overhead.json').write_text(json.dumps(record, indent=2) + '\n')
  text = markdown(record, rounds)
  (output_dir / 'loop_overhead.md').write_text(text)
  return text
