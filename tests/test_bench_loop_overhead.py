"""The loop-overhead benchmark: the target drafting for itself, on a tiny model."""

import json

from specdec_t5x import paths
from specdec_t5x.bench import loop_overhead, report

RECORD = dict(
    command='JAX_PLATFORMS=cpu python scripts/bench_loop_overhead.py --rounds 5',
    date='2026-01-01T00:00:00+00:00', machine=dict(nproc=2, jax='0.1'), preset='cpu_target',
    max_decode_len=64, encoder_length=48, autoregressive_ms_per_token=2.5,
    step_ms={'1': 2.0, '2': 2.5, '4': 3.0},
    rows=[dict(gamma=3, identical_to_autoregressive=True, iterations=16,
               tokens_per_iteration=4.0, expected_iterations=16, iteration_ms=9.0,
               parts_ms=8.5, overhead=9.0 / 8.5 - 1, speedup_vs_autoregressive=0.9)])


def test_markdown_from_a_fixed_record():
  text = loop_overhead.markdown(RECORD, rounds=5)
  assert text.startswith('# Speculative loop overhead (target drafting for itself)\n')
  assert 'medians of 5 interleaved rounds. Autoregressive: 2.50 ms/token.' in text
  assert 'One cached call on K positions: K=1 2.00 ms, K=2 2.50 ms, K=4 3.00 ms.' in text
  assert '| 3 | True | 16 (16) | 4.00 | 9.00 | 8.50 | +6% | 0.90x |' in text
  assert text.endswith('beyond the model calls it makes.\n')


def test_measure_accepts_every_draft_and_writes_machine_free_files(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  record = loop_overhead.measure('test_tiny', [1, 2], max_decode_len=6, encoder_length=6,
                                 rounds=1, calls=1,
                                 command='python scripts/bench_loop_overhead.py')
  assert sorted(record['step_ms']) == ['1', '2', '3']
  for row in record['rows']:
    # The target drafting for itself: every draft accepted, γ+1 tokens per iteration, and
    # (full_length_eos) every run decodes all 6 tokens.
    assert row['identical_to_autoregressive']
    assert row['iterations'] == row['expected_iterations'] == -(-6 // (row['gamma'] + 1))
  text = loop_overhead.write_report(tmp_path / 'out', record, rounds=1)
  assert json.loads((tmp_path / 'out' / 'loop_overhead.json').read_text()) == record
  assert (tmp_path / 'out' / 'loop_overhead.md').read_text() == text
  assert report.absolute_paths(record) == []
