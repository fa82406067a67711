"""The scoring-cost benchmark: one preset measured on the harness, and its report."""

import json
import sys

import numpy as np
import pytest

from specdec_t5x import paths
from specdec_t5x.bench import report, scoring_cost


def _result(preset, median_ms, ratios):
  ks = list(range(1, len(ratios) + 1))
  return dict(preset=preset, config=dict(emb_dim=32, num_heads=2, head_dim=16,
                                         num_decoder_layers=2, mlp_dim=64, vocab_size=64,
                                         mlp_activations=['gelu', 'linear']),
              decoder_params=2_500_000, calls_per_sample=10, k=ks,
              median_ms=[median_ms * r for r in ratios], ratio_median=ratios,
              ratio_q25=[r - 0.05 for r in ratios], ratio_q75=[r + 0.05 for r in ratios],
              samples_ms=[[median_ms * r] for r in ratios], load_average_1min=1.5)


RECORD = dict(
    command='python scripts/bench_scoring_cost.py', date='2026-01-01T00:00:00+00:00',
    duration_s=120.0,
    machine=dict(nproc=2, cpu_model='CPU', platform='Linux', python='3.11', jax='0.1',
                 flax='0.1', jax_backend='cpu', jax_devices=['cpu:0']),
    settings=dict(presets=['small', 'target'], max_k=3, batch=1, encoder_length=48,
                  cache_length=128, prefix_length=64, rounds=30, sample_ms=40.0, warmup=2,
                  reference_preset='target', seed=0, output_dir='results'),
    results=[_result('small', 0.5, [1.0, 1.2, 1.5]), _result('target', 2.0, [1.0, 1.4, 1.7])])


def test_markdown_tables_from_a_fixed_record():
  table, spread = scoring_cost.markdown_tables(RECORD['results'], 'target')
  assert table.splitlines()[0] == (
      '| preset | decoder (params) | K=1 | K=2 | K=3 | K=1 time / target |')
  assert table.splitlines()[2] == ('| small | 32 wide, 2 layers, mlp 64, vocab 64 (2.5M) | 0.5 ms '
                                   '| 1.20 | 1.50 | 0.250 |')
  assert spread.splitlines()[3] == '| target | 1.35-1.45 | 1.65-1.75 |'
  table, _ = scoring_cost.markdown_tables(RECORD['results'], 'absent')
  assert 'K=1 time /' not in table


def test_rows_name_their_dtype_and_kernels_away_from_the_defaults():
  bfloat16 = dict(_result('target', 3.0, [1.0, 1.6, 1.9]), dtype='bfloat16',
                  decode_kernels='auto')
  table, spread = scoring_cost.markdown_tables(RECORD['results'] + [bfloat16], 'target')
  assert table.splitlines()[-1].startswith('| target (bfloat16) |')
  assert table.splitlines()[-1].endswith('| 1.60 | 1.90 | 1.500 |')
  assert scoring_cost.variant_label('target', 'float32', 'invariant') == 'target (invariant)'
  assert scoring_cost.variant_label('target') == 'target'


def test_markdown_from_a_fixed_record():
  text = scoring_cost.markdown(RECORD)
  assert text.startswith('# Scoring cost: one cached decoder call on K positions')
  assert 'Command: `python scripts/bench_scoring_cost.py`' in text
  assert '(the run took 2.0 min)' in text
  assert 'is the draft/target step cost ratio c for that pair.' in text
  assert 'load average at the end of each preset: small 1.5, target 1.5' in text


def test_measure_preset_and_report_on_a_tiny_model(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(sys, 'argv', ['scripts/bench_scoring_cost.py', '--presets', 'test_tiny'])
  settings = dict(batch=1, encoder_length=6, cache_length=12, prefix_length=4, max_k=3,
                  rounds=2, sample_ms=1.0, warmup=0, seed=0)
  result = scoring_cost.measure_preset('test_tiny', **settings, rng=np.random.default_rng(0))
  assert result['preset'] == 'test_tiny' and result['k'] == [1, 2, 3]
  assert result['ratio_median'][0] == pytest.approx(1.0)
  assert [len(samples) for samples in result['samples_ms']] == [2, 2, 2]
  assert result['decoder_params'] > 0 and result['calls_per_sample'] >= 1
  output_dir = tmp_path / 'out'
  record = scoring_cost.build_report(
      [result], dict(settings, presets=['test_tiny'], reference_preset='test_tiny',
                     output_dir=paths.portable_path(output_dir)), started=0.0)
  scoring_cost.write_report(output_dir, record, plot=True)
  written = json.loads((output_dir / 'scoring_cost.json').read_text())
  assert written['settings']['output_dir'] == '{cache}/out'
  assert written['command'].endswith(' scripts/bench_scoring_cost.py --presets test_tiny')
  assert report.absolute_paths(written) == []
  assert (output_dir / 'scoring_cost.png').stat().st_size > 0
  assert '| test_tiny |' in (output_dir / 'scoring_cost.md').read_text()
