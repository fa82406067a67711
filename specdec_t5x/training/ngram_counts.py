"""Counting the unigrams and bigrams of a task's targets: what the n-gram drafters are built from.

`count_ngrams` counts EOS-terminated target sequences (the bigram's previous
token of the first target token is BOS, id 0); `task_counts` counts a seqio
task's split once and keeps the counts in `default_counts_path(task, split)`,
the file `specdec_t5x.drafters.ngram` builds its drafters from.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Iterator

import numpy as np

from specdec_t5x.drafters.ngram import (
  BOS_ID,
  PAD_ID,
  NgramCounts,
  check_vocab_size,
  load_counts,
  save_counts,
)


def count_ngrams(target_batches: Iterable[np.ndarray], vocab_size: int, *,
                 eos_id: int = 1, source: str = '') -> NgramCounts:
  """Counts unigrams and bigrams of EOS-terminated target sequences.

  Args:
    target_batches: arrays `[batch, length]` of target token ids (T5X's
      `decoder_target_tokens`), right-padded with 0. A row ends at its first
      EOS (counted) or at its first padding 0 (not counted).
    vocab_size: the target model's vocabulary size; ids must lie below it.
    eos_id: the id that ends a sequence.
    source: recorded in the result.

  Returns:
    `NgramCounts`; the bigram's previous token of the first target token is BOS.
  """
  import scipy.sparse  # the `bench` extra: only where counts are made

  vocab_size = check_vocab_size(vocab_size)
  previous_tokens, tokens = [], []
  num_sequences = 0
  for batch in target_batches:
    targets = np.asarray(batch)
    if targets.ndim != 2 or not np.issubdtype(targets.dtype, np.integer):
      raise ValueError(f'target batches must be integer arrays [batch, length], got '
                       f'{targets.dtype}{list(targets.shape)}')
    if targets.size and (targets.min() < 0 or targets.max() >= vocab_size):
      raise ValueError(f'target token ids must lie in [0, {vocab_size}), got min '
                       f'{targets.min()}, max {targets.max()}')
    # A position is real up to and including the first EOS, and before any padding.
    ended = np.cumsum(targets == eos_id, axis=1) - (targets == eos_id)
    real = (ended == 0) & (np.cumsum(targets == PAD_ID, axis=1) == 0)
    previous = np.pad(targets[:, :-1], ((0, 0), (1, 0)), constant_values=BOS_ID)
    previous_tokens.append(previous[real].astype(np.int64))
    tokens.append(targets[real].astype(np.int64))
    num_sequences += int(np.sum(real[:, 0]))
  previous_tokens = np.concatenate(previous_tokens or [np.zeros(0, np.int64)])
  tokens = np.concatenate(tokens or [np.zeros(0, np.int64)])
  unigram = np.bincount(tokens, minlength=vocab_size).astype(np.int64)
  # COO -> CSR sums the duplicate (previous, token) pairs.
  bigram = scipy.sparse.coo_matrix((np.ones(tokens.size, np.int64), (previous_tokens, tokens)),
                                   shape=(vocab_size, vocab_size)).tocsr()
  bigram.sum_duplicates()
  bigram.sort_indices()
  return NgramCounts(vocab_size=vocab_size, unigram=unigram, bigram=bigram,
                     num_sequences=num_sequences, source=source)


def task_target_batches(task: str, split: str = 'train', batch_size: int = 1,
                        max_batches: int | None = None) -> Iterator[np.ndarray]:
  """One pass over the `decoder_target_tokens [batch, length]` of a seqio task's split.

  A last partial batch is dropped (see `tasks.iter_train_batches`): the
  default batch of 1 reads every sequence.
  """
  from specdec_t5x.data import tasks  # TensorFlow and seqio: only when reading data

  batches = tasks.iter_train_batches(task, batch_size, split=split, shuffle=False,
                                     num_epochs=1)
  for index, batch in enumerate(batches):
    if max_batches is not None and index >= max_batches:
      return
    yield batch['decoder_target_tokens']


def default_counts_path(task: str, split: str = 'train') -> pathlib.Path:
  """`cache_dir('ngram', '<task>.<split>.npz')`, where `scripts/build_ngram_drafters.py` writes."""
  from specdec_t5x import paths

  return paths.cache_dir('ngram') / f'{task}.{split}.npz'


def task_counts(task: str, vocab_size: int, *, split: str = 'train',
                path: str | os.PathLike | None = None,
                rebuild: bool = False) -> tuple[NgramCounts, pathlib.Path, bool]:
  """The counts of a seqio task's split, from the cached file or counted and saved.

  Returns:
    `(counts, path, cached)`; `cached` is True when the file was read.
  """
  path = pathlib.Path(path or default_counts_path(task, split))
  if path.exists() and not rebuild:
    return load_counts(path, vocab_size), path, True
  counts = count_ngrams(task_target_batches(task, split), vocab_size,
                        source=f'{task}:{split}')
  return counts, save_counts(path, counts), False


__all__ = ['count_ngrams', 'task_target_batches', 'default_counts_path', 'task_counts']
