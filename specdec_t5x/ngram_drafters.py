"""Unigram and bigram drafters: the near-free drafts of the paper's Table 3.

Both are estimated from the target sequences of a task's training split
(`count_ngrams`), with add-k smoothing over the whole vocabulary:

* unigram: q(x) = (c(x) + k) / (N + kV), the same for every position;
* bigram:  q(x | a) = (c(a, x) + k) / (c(a) + kV), where `a` is the previous
  decoder input. The decoder input before the first token is BOS (id 0), so
  the row of 0 is the distribution of first tokens.

The counts are kept in a small `.npz` file (`save_counts` / `load_counts`,
with a vocabulary-size check); the smoothing k is chosen when a drafter is
built from them, so it can change without counting again.

The bigram table of a 32k vocabulary would take 4 GB dense, so the drafter
keeps it in compressed sparse rows: row `a`'s successors are
`successors[row_starts[a]:row_starts[a+1]]`, read with a fixed-size window of
the longest row's length (a static shape for `jit`) and scattered onto a
`[vocab]` vector of k's. Per draft token that is O(V + longest row) work on
the host CPU, next to nothing beside a target step.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from flax import struct

from specdec_t5x import drafters as drafters_lib
from specdec_t5x import sampling as sampling_lib

Array = jax.Array

BOS_ID = 0
PAD_ID = 0
DEFAULT_SMOOTHING = 0.01
_FILE_FORMAT = 'specdec_t5x.ngram_counts.v1'


# ------------------------------------------------------------------------------
# Counting.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NgramCounts:
  """Unigram and bigram counts of target sequences over a vocabulary of `vocab_size` ids.

  Attributes:
    vocab_size: the token ids are `[0, vocab_size)`.
    unigram: `[vocab_size]` int64, how often each id is a target token.
    bigram: `[vocab_size, vocab_size]` CSR int64 matrix, `bigram[a, x]` how
      often x follows the decoder input a (a = BOS for the first token).
    num_sequences: how many target sequences were counted.
    source: where they came from (free text, e.g. 'ddtp_ende:train').
  """

  vocab_size: int
  unigram: np.ndarray
  bigram: scipy.sparse.csr_matrix
  num_sequences: int
  source: str = ''

  @property
  def num_tokens(self) -> int:
    return int(self.unigram.sum())


def _check_vocab_size(vocab_size: Any) -> int:
  if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 2:
    raise ValueError(f'vocab_size must be an integer >= 2, got {vocab_size!r}')
  return int(vocab_size)


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
  vocab_size = _check_vocab_size(vocab_size)
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


# ------------------------------------------------------------------------------
# Saving and loading.
# ------------------------------------------------------------------------------


def save_counts(path: str | os.PathLike, counts: NgramCounts) -> pathlib.Path:
  """Writes `counts` as a compressed `.npz` (atomically: a temporary file is renamed)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  bigram = counts.bigram.tocsr()
  np.savez_compressed(
      tmp, format=np.array(_FILE_FORMAT), vocab_size=np.int64(counts.vocab_size),
      num_sequences=np.int64(counts.num_sequences), source=np.array(counts.source),
      unigram=counts.unigram.astype(np.int64), bigram_indptr=bigram.indptr.astype(np.int64),
      bigram_indices=bigram.indices.astype(np.int32),
      bigram_counts=bigram.data.astype(np.int64))
  os.replace(tmp, path)
  return path


def load_counts(path: str | os.PathLike, vocab_size: int | None = None) -> NgramCounts:
  """Reads a file of `save_counts`.

  Args:
    path: the `.npz` file.
    vocab_size: if given, the counts must be for this vocabulary (sizes may
      only differ by padding, as `drafters.check_vocab_compatible` allows).

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not an n-gram counts file, or counted for another vocabulary.
  """
  contents = drafters_lib.read_drafter_file(path, _FILE_FORMAT, 'n-gram counts file',
                                             article='an')
  stored = int(contents['vocab_size'])
  if vocab_size is not None:
    try:
      drafters_lib.check_vocab_compatible(_check_vocab_size(vocab_size), stored)
    except ValueError as err:
      raise ValueError(f'n-gram counts {path} were counted for another vocabulary: '
                       f'{err}') from err
  bigram = scipy.sparse.csr_matrix(
      (contents['bigram_counts'], contents['bigram_indices'], contents['bigram_indptr']),
      shape=(stored, stored))
  return NgramCounts(vocab_size=stored, unigram=contents['unigram'], bigram=bigram,
                     num_sequences=int(contents['num_sequences']),
                     source=str(contents['source']))


def _check_smoothing(smoothing: float) -> float:
  smoothing = float(smoothing)
  if not smoothing > 0.0:
    raise ValueError(f'the add-k smoothing k must be > 0 (every token needs q > 0 to be '
                     f'drafted with a known probability), got {smoothing}')
  return smoothing


# ------------------------------------------------------------------------------
# Drafters.
# ------------------------------------------------------------------------------


class _StatelessDrafter:
  """`init` and `accept` of a drafter that keeps no state between iterations.

  An n-gram draft reads only the decoded prefix, so there is no cache to
  build or roll back: the drafter state is `None` throughout.
  """

  def init(self, encoder_input_tokens: Array, cache_length: int) -> None:
    del encoder_input_tokens, cache_length
    return None

  def accept(self, state: None, sequences: Array, lengths: Array) -> None:
    del sequences, lengths
    return state


@struct.dataclass
class UnigramDrafter(_StatelessDrafter):
  """Drafts every token i.i.d. from the smoothed unigram distribution; stateless."""

  log_probs: Array  # [vocab]

  @classmethod
  def from_counts(cls, counts: NgramCounts,
                  smoothing: float = DEFAULT_SMOOTHING) -> UnigramDrafter:
    smoothed = counts.unigram.astype(np.float64) + _check_smoothing(smoothing)
    return cls(log_probs=jnp.asarray(np.log(smoothed / smoothed.sum()), jnp.float32))

  @property
  def vocab_size(self) -> int:
    return self.log_probs.shape[0]

  def propose(self, state: None, sequences: Array, lengths: Array, gamma: int,
              sampling: sampling_lib.SamplingConfig, vocab_size: int,
              rng: Array) -> tuple[Array, Array, None]:
    logits = jnp.broadcast_to(self.log_probs, (sequences.shape[0], gamma, self.vocab_size))
    tokens, probs = drafters_lib.draw(rng, logits, sampling, vocab_size)
    return tokens, probs, state


@struct.dataclass
class BigramDrafter(_StatelessDrafter):
  """Drafts each token from the smoothed bigram row of the token before it; stateless.

  The previous token of the first draft is the row's last known decoder input
  `sequences[b, lengths[b]]`; the next ones are the drafts themselves.
  """

  row_starts: Array   # [vocab + 1] int32: CSR row pointers
  successors: Array   # [nnz + window] int32: successor ids, padded by `window` entries
  counts: Array       # [nnz + window] float32: their counts (0 in the padding)
  row_totals: Array   # [vocab] float32: c(a), the count of each row
  smoothing: Array    # scalar float32: k (traced: another k does not recompile)
  window: int = struct.field(pytree_node=False)  # the longest row's length, >= 1

  @classmethod
  def from_counts(cls, counts: NgramCounts,
                  smoothing: float = DEFAULT_SMOOTHING) -> BigramDrafter:
    bigram = counts.bigram.tocsr()
    bigram.sum_duplicates()
    row_lengths = np.diff(bigram.indptr)
    window = max(int(row_lengths.max(initial=0)), 1)
    # Padding the arrays by one window lets every row be read with one static-size slice.
    pad = lambda x, dtype: np.concatenate([x.astype(dtype), np.zeros(window, dtype)])
    return cls(row_starts=jnp.asarray(bigram.indptr, jnp.int32),
               successors=jnp.asarray(pad(bigram.indices, np.int32)),
               counts=jnp.asarray(pad(bigram.data, np.float32)),
               row_totals=jnp.asarray(np.asarray(bigram.sum(axis=1)).ravel(), jnp.float32),
               smoothing=jnp.float32(_check_smoothing(smoothing)), window=window)

  @property
  def vocab_size(self) -> int:
    return self.row_totals.shape[0]

  def next_log_probs(self, previous: Array) -> Array:
    """log q(· | previous) `[batch, vocab]` for previous tokens `[batch]`.

    Ids outside the drafter's vocabulary (a target with a larger padded
    vocabulary may emit them) get the smoothed uniform row.
    """
    vocab = self.vocab_size
    known = previous < vocab
    row = jnp.where(known, previous, 0)
    starts = self.row_starts[row]
    row_lengths = jnp.where(known, self.row_starts[row + 1] - starts, 0)
    take = lambda array, start: jax.lax.dynamic_slice_in_dim(array, start, self.window)
    ids = jax.vmap(take, (None, 0))(self.successors, starts)        # [batch, window]
    counts = jax.vmap(take, (None, 0))(self.counts, starts)
    in_row = jnp.arange(self.window)[None, :] < row_lengths[:, None]
    ids = jnp.where(in_row, ids, vocab)  # out of range: dropped by the scatter
    smoothed = jnp.full((previous.shape[0], vocab), self.smoothing, jnp.float32)
    smoothed = jax.vmap(lambda dense, i, c: dense.at[i].add(c, mode='drop'))(smoothed, ids,
                                                                             counts)
    totals = jnp.where(known, self.row_totals[row], 0.0) + self.smoothing * vocab
    return jnp.log(smoothed) - jnp.log(totals)[:, None]

  def propose(self, state: None, sequences: Array, lengths: Array, gamma: int,
              sampling: sampling_lib.SamplingConfig, vocab_size: int,
              rng: Array) -> tuple[Array, Array, None]:

    def draft_step(previous, step_rng):
      token, probs = drafters_lib.draw(step_rng, self.next_log_probs(previous), sampling,
                                       vocab_size)
      return token, (token, probs)

    last = drafters_lib.last_inputs(sequences, lengths)
    _, (tokens, probs) = jax.lax.scan(draft_step, last, jax.random.split(rng, gamma))
    return jnp.moveaxis(tokens, 0, 1), jnp.moveaxis(probs, 0, 1), state


def load_drafters(path: str | os.PathLike, vocab_size: int,
                  smoothing: float = DEFAULT_SMOOTHING) -> tuple[UnigramDrafter, BigramDrafter]:
  """The unigram and bigram drafters of a counts file, checked against `vocab_size`."""
  counts = load_counts(path, vocab_size)
  return (UnigramDrafter.from_counts(counts, smoothing),
          BigramDrafter.from_counts(counts, smoothing))


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


__all__ = ['NgramCounts', 'UnigramDrafter', 'BigramDrafter', 'count_ngrams',
           'task_target_batches', 'save_counts', 'load_counts', 'load_drafters',
           'default_counts_path', 'task_counts', 'DEFAULT_SMOOTHING']
