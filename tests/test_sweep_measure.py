"""A cell's figures: α pooled by the verified positions behind it, and a cheap draft's cell."""

import json

import numpy as np
import pytest
from sweep_miniature import miniature_config_dict

from specdec_t5x import decoding, sweep
from specdec_t5x.drafters import ngram, registry
from specdec_t5x.sweep import loading, measure

STEP_COSTS = {'c': 0.1, 'scoring_cost': 1.2}


def _outputs(beta_mean, beta_count, accepted, iterations, draft_iterations=None):
  """One batch of both decoders' outputs with the given per-row counts (2 rows)."""
  tokens = np.array([[5, 6, 1, 0], [7, 1, 0, 0]], np.int32)
  lengths = np.array([3, 2], np.int32)
  spec = decoding.SpeculativeOutput(
      tokens=tokens, lengths=lengths, iterations=np.asarray(iterations),
      draft_iterations=np.asarray(iterations if draft_iterations is None
                                  else draft_iterations),
      accepted=np.asarray(accepted), beta_mean=np.asarray(beta_mean, np.float32),
      beta_count=np.asarray(beta_count))
  return decoding.DecodeOutput(tokens=tokens, lengths=lengths), spec


def _record(batches, gamma=4):
  rows = {name: [] for name in measure.ROW_NAMES}
  for ar, spec in batches:
    measure.add_batch(rows, 1.0, ar, 0.5, spec, greedy=True)
  cell = sweep.Cell('grid', 'ende', 'large', 0.0, gamma, 2, 2 * len(batches))
  return sweep.summarize_cell(cell, rows, STEP_COSTS)


def test_pooled_alpha_is_weighted_by_the_verified_positions():
  # Row 0 accepted a whole block of γ=4: 4 verified positions, all β = 1, but 4 + 1 under the
  # old accepted + iterations weight; row 1 verified 1 position with β = 0.
  record = _record([_outputs([1.0, 0.0], [4, 1], accepted=[4, 0], iterations=[1, 1])])
  assert record['alpha_beta'] == pytest.approx(4 / 5)  # the old weights gave 5 / 6
  assert record['per_batch']['beta_count'] == [5]
  assert record['per_batch']['beta_sum'] == [pytest.approx(4.0)]
  assert record['greedy_mismatched_rows'] == 0
  # Across batches too: a batch's β counts by its positions, not once per batch.
  two = _record([_outputs([1.0, 1.0], [4, 4], [4, 4], [1, 1]),
                 _outputs([0.0, 0.0], [1, 1], [0, 0], [1, 1])])
  assert two['alpha_beta'] == pytest.approx(8 / 10)
  assert two['alpha_beta'] == pytest.approx(sweep.pooled_alpha(two['per_batch']))


def test_records_without_beta_count_pool_by_their_old_weight():
  # Records measured before SpeculativeOutput had beta_count: beta_sum was weighted by
  # accepted + iterations (beta_weight), and there is no 'beta_count'.
  old = {'beta_sum': [1.0 * 5 + 0.0 * 1], 'beta_weight': [6]}
  assert sweep.pooled_alpha(old) == pytest.approx(5 / 6)
  assert sweep.pooled_alpha({**old, 'beta_count': [5], 'beta_sum': [4.0]}) == pytest.approx(0.8)


def test_acceptance_alpha_counts_only_iterations_that_verified_a_draft():
  # A look-ahead drafter's first call drafts nothing: 2 of its 3 iterations verified γ=2 tokens,
  # all accepted, so α from acceptance is 1 (counting the first call would make it lower).
  ar, spec = _outputs([1.0, 1.0], [2, 2], accepted=[4, 0], iterations=[3, 1],
                      draft_iterations=[2, 0])
  record = _record([(ar, spec)], gamma=2)
  assert record['alpha_acceptance'] == pytest.approx(1.0)
  older = {k: v for k, v in record['per_batch'].items() if k != 'draft_iterations'}
  assert measure.acceptance_alpha(older, 2) < 0.9


def test_a_cheap_draft_plugs_in_through_its_builder(tmp_path):
  from specdec_t5x.training import ngram_counts

  raw = miniature_config_dict(tmp_path / 'models')
  vocab = raw['tasks']['ende']['synthetic']['vocab_size']
  counts = ngram_counts.count_ngrams(
      [sweep.synthetic_inputs(64, 12, vocab, seed=5)], vocab, source='synthetic')
  ngram.save_counts(tmp_path / 'counts.npz', counts)
  raw = json.loads(json.dumps(raw))
  raw['drafts']['bigram'] = {'kind': 'bigram', 'options': {'counts': '{config_dir}/counts.npz'}}
  raw['drafts']['missing'] = {'kind': 'unigram', 'options': {'counts': '{config_dir}/none.npz'}}
  with_bigram = sweep.config_from_dict(raw, config_dir=tmp_path)
  context = sweep.SweepContext(with_bigram)
  cell = sweep.Cell('grid', 'ende', 'bigram', 0.0, 2, 1, 2)
  record = sweep.measure_cell(cell, context)
  assert record['draft_kind'] == 'bigram' and record['greedy_mismatched_rows'] == 0
  assert 0.0 <= record['alpha_beta'] <= 1.0 and record['c'] > 0
  with pytest.raises(registry.DraftUnavailable, match='no n-gram counts'):
    context.drafter('missing', 'ende')


def test_interleaved_repeats_the_batches_until_min_samples_alternating_order():
  calls = []

  def run(name):
    def decode(index):
      calls.append((name, index))
      return (0.5 if name == 'spec' else 1.0), _outputs([0.5, 0.5], [1, 1], [0, 0], [1, 1])[
          0 if name == 'ar' else 1]
    return decode

  cell = sweep.Cell('throughput', 'ende', 'small', 0.0, 4, 16, 32)  # 2 batches
  rows = measure._interleaved(cell, run('ar'), run('spec'), min_samples=5)
  assert len(rows['autoregressive_s']) == 6  # 3 passes over 2 batches
  # Each batch's first decoder alternates from pass to pass.
  firsts = [calls[i] for i in range(0, len(calls), 2)]
  assert firsts == [('ar', 0), ('spec', 1), ('spec', 0), ('ar', 1), ('ar', 0), ('spec', 1)]
  assert len(rows['mismatched_rows']) == 2  # outputs are compared in the first pass only
  assert len(measure._interleaved(cell, run('ar'), run('spec'))['autoregressive_s']) == 2


def test_auto_cells_calibrate_on_inputs_no_cell_times():
  from specdec_t5x.sweep import loading
  from specdec_t5x.sweep.config import TaskSpec

  task = TaskSpec(name='toy', max_decode_len=8, synthetic={'length': 16, 'vocab_size': 50})
  timed = loading.task_inputs(task, 4, seed=0)
  calibration = loading.calibration_inputs(task, 4, timed.shape[1], seed=0)
  assert calibration.shape == timed.shape and calibration.dtype == np.int32
  assert not any((row == timed).all(axis=1).any() for row in calibration)


def test_each_batch_keeps_its_own_padding_and_every_width_compiles_before_timing():
  rows = np.zeros((4, 1, 96), np.int32)
  for index, length in enumerate((20, 70, 30, 96)):
    rows[index, 0, :length] = 5
  batches = [loading.trim_padding(batch, measure.INPUT_LENGTH_QUANTUM) for batch in rows]
  assert [b.shape[-1] for b in batches] == [32, 96, 32, 96]
  assert measure._first_of_each_width(batches) == [0, 1]
