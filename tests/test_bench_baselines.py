"""The baselines benchmark: token comparison, the memory-bound floor, a tiny run, the report."""

import json
import sys

import jax
import numpy as np

from specdec_t5x import network, paths
from specdec_t5x.bench import baselines, baselines_report, random_weights, report

BANDWIDTH = {'read_gb_s': 10.0, 'copy_gb_s': 8.0, 'array_mb': 512.0}


def test_token_differences_and_decode_steps():
  reference = np.array([[5, 6, 1, 0], [7, 8, 9, 1]])
  assert baselines.token_differences(reference, reference) == {
      'identical': True, 'rows_differing': 0, 'positions_differing': 0}
  other = np.array([[5, 6, 1, 0], [7, 4, 4, 1]])
  assert baselines.token_differences(reference, other) == {
      'identical': False, 'rows_differing': 1, 'positions_differing': 2,
      'first': {'row': 1, 'position': 1, 'reference': 8, 'other': 4}}
  assert baselines.decode_steps(reference) == 4
  assert baselines.decode_steps(np.zeros((2, 5), np.int32)) == 1


def test_decoder_bytes_per_step_leaves_out_cached_cross_attention_projections():
  config = network.config_from_preset('test_tiny')
  params = random_weights.random_params(network.Transformer(config), 1, 4, seed=0)
  leaves = {'/'.join(getattr(key, 'key', str(key)) for key in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  decoder = sum(leaf.nbytes for name, leaf in leaves.items() if name.startswith('decoder/'))
  cross_kv = sum(leaf.nbytes for name, leaf in leaves.items()
                 if 'encoder_decoder_attention/key' in name
                 or 'encoder_decoder_attention/value' in name)
  embedding_row = config.emb_dim * 4
  assert baselines.decoder_bytes_per_step(config, params, 3) == (
      decoder - cross_kv + 3 * embedding_row)


def _result(hf_tokens):
  return dict(model='m (random weights)', batch=1, steps=8, max_decode_len=8, eos_banned=True,
              decoder_bytes_per_step=2_000_000, fits_in_l3=True, floor_ms_per_step=0.2,
              load_average_1min=1.0, config={},
              backends={'ours': dict(ms_per_step=1.0, ms_per_token=1.0, ratio_to_ours=1.0,
                                     times_floor=5.0, tokens_vs_ours={'identical': True}),
                        't5x': dict(ms_per_step=1.5, ms_per_token=1.5, ratio_to_ours=1.5,
                                    times_floor=7.5, tokens_vs_ours={'identical': True}),
                        'hf': dict(ms_per_step=3.0, ms_per_token=3.0, ratio_to_ours=3.0,
                                   times_floor=15.0, tokens_vs_ours=hf_tokens),
                        'speculative (d, γ=3)': dict(
                            ms_per_step=2.0, ms_per_token=2.0, ratio_to_ours=2.0,
                            times_floor=10.0, tokens_vs_ours={'identical': True},
                            acceptance_rate=0.25, tokens_per_iteration=1.75)})


def test_report_from_a_fixed_record():
  differing = {'identical': False, 'rows_differing': 1, 'positions_differing': 2,
               'first': {'row': 0, 'position': 3, 'reference': 8, 'other': 4}}
  record = dict(command='python scripts/bench_baselines.py', date='2026-01-01T00:00:00+00:00',
                duration_s=60.0, machine=dict(nproc=2, cpu_model='CPU', platform='Linux',
                                              python='3.11', jax='0.1', flax='0.1'),
                torch='2.0', torch_threads=2, transformers='4.0', t5x_missing='ImportError: x',
                settings=dict(max_decode_len=8, runs=7), bandwidth=BANDWIDTH,
                results=[_result({'identical': True}), _result(differing)], notes=['a note'])
  text = baselines_report.markdown(record)
  assert '**T5X is not importable in this Python** (ImportError: x)' in text
  assert report.absolute_paths(text) == []
  assert ('| m (random weights) | 1 | floor 0.20 ms/step (2.0 MB, fits in the L3 cache) |  |  '
          '|  |  | 8 steps |') in text
  assert ('|  |  | speculative (d, γ=3) (accepts 25% of drafts, 1.75 tokens/iteration) | 2.00 '
          '| 2.00 | 2.00 | 10.00 | identical |') in text
  assert '2 positions in 1 rows differ (first: row 0, position 3: 8 vs 4)' in text
  assert baselines_report.verdicts(record['results']) == [
      "- m (random weights), batch 1: T5X's own decoding takes 1.50x the time of ours (OK).",
      '- m (random weights), batch 1: tokens of ours, t5x, hf identical.',
      "- m (random weights), batch 1: T5X's own decoding takes 1.50x the time of ours (OK).",
      '- m (random weights), batch 1: tokens of ours, t5x, hf DIFFER for hf.']
  assert text.endswith('## Notes\n\n- a note\n')


def test_benchmark_a_tiny_random_model_and_write_the_report(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(sys, 'argv', ['scripts/bench_baselines.py', '--preset', 'test_tiny'])
  models, notes = baselines.collect_models(preset='test_tiny', draft_preset='test_tiny',
                                           random=True, family=None, num_inputs=2,
                                           encoder_length=6, seed=0)
  results = baselines.benchmark_all(
      models, [2, 3], notes, backends=['ours', 'hf', 'speculative'], max_decode_len=5,
      gamma=2, runs=1, seed=0, bandwidth=BANDWIDTH, t5x_missing=None)
  assert notes == ['test_tiny (random weights): only 2 inputs, batch 3 skipped.']
  (result,) = results
  assert result['steps'] == 5  # EOS banned: every row decodes all its tokens
  assert list(result['backends']) == ['ours', 'hf', 'speculative (test_tiny, γ=2)']
  # Same weights, greedy: the exact backends and speculative decoding emit the same tokens.
  assert all(row['tokens_vs_ours']['identical'] for row in result['backends'].values())
  settings = {'preset': 'test_tiny', 'max_decode_len': 5, 'runs': 1,
              'output_dir': paths.portable_path(tmp_path / 'out')}
  record = baselines_report.build_report(results, notes=notes, settings=settings,
                                         bandwidth=BANDWIDTH, t5x_missing=None, started=0.0)
  baselines_report.write_report(tmp_path / 'out', record)
  written = json.loads((tmp_path / 'out' / 'baselines.json').read_text())
  assert written['settings']['output_dir'] == '{cache}/out'
  assert report.absolute_paths(written) == []
  assert '## Checks' in (tmp_path / 'out' / 'baselines.md').read_text()
