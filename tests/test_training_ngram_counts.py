"""Counting the unigrams and bigrams of target sequences, and the cached counts of a task."""

import numpy as np
import pytest

from specdec_t5x.drafters import ngram
from specdec_t5x.training import ngram_counts


def test_counts_follow_bos_and_stop_at_eos_or_padding():
  targets = np.array([[5, 6, 5, 1, 7, 7],    # EOS ends the row: 7, 7 are not counted
                      [6, 6, 0, 0, 0, 0],    # padding ends the row (no EOS: truncated)
                      [1, 0, 0, 0, 0, 0]], np.int32)
  counts = ngram_counts.count_ngrams([targets[:2], targets[2:]], vocab_size=8, eos_id=1)
  np.testing.assert_array_equal(counts.unigram, [0, 2, 0, 0, 0, 2, 3, 0])
  expected = np.zeros((8, 8), np.int64)
  for previous, token in [(0, 5), (5, 6), (6, 5), (5, 1), (0, 6), (6, 6), (0, 1)]:
    expected[previous, token] += 1
  np.testing.assert_array_equal(counts.bigram.toarray(), expected)
  assert counts.num_sequences == 3 and counts.num_tokens == 7


def test_count_errors():
  with pytest.raises(ValueError, match=r'\[0, 8\)'):
    ngram_counts.count_ngrams([np.array([[3, 9]])], vocab_size=8)
  with pytest.raises(ValueError, match='integer arrays'):
    ngram_counts.count_ngrams([np.array([3, 4])], vocab_size=8)
  with pytest.raises(ValueError, match='vocab_size'):
    ngram_counts.count_ngrams([], vocab_size=1)


def test_task_counts_read_the_cached_file_without_touching_the_data(tmp_path, monkeypatch):
  monkeypatch.setenv('SPECDEC_CACHE_DIR', str(tmp_path))
  path = ngram_counts.default_counts_path('some_task', 'validation')
  assert path == tmp_path / 'ngram' / 'some_task.validation.npz'
  counts = ngram_counts.count_ngrams([np.array([[3, 4, 1]], np.int32)], vocab_size=8,
                                     source='some_task:validation')
  ngram.save_counts(path, counts)
  loaded, loaded_path, cached = ngram_counts.task_counts('some_task', 8, split='validation')
  assert cached and loaded_path == path and loaded.source == 'some_task:validation'
  np.testing.assert_array_equal(loaded.unigram, counts.unigram)
