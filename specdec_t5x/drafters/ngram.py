"""Unigram and bigram drafters: the near-free drafts of the paper's Table 3.

Both are estimated from the target sequences of a task's training split
(`specdec_t5x.training.ngram_counts.count_ngrams`), with add-k smoothing over
the whole vocabulary:

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

scipy (the `bench` extra) is imported only where a counts file is read.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from specdec_t5x import sampling as sampling_lib
from specdec_t5x.drafters import base

if TYPE_CHECKING:
  import scipy.sparse

Array = jax.Array

BOS_ID = 0  # the decoder input before the first token: its bigram row is the first tokens'
PAD_ID = 0  # target padding, which ends a counted sequence
DEFAULT_SMOOTHING = 0.01
_FILE_FORMAT = 'specdec_t5x.ngram_counts.v1'


# ------------------------------------------------------------------------------
# Counts.
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


def check_vocab_size(vocab_size: Any) -> int:
  """`vocab_size` as an int, or a `ValueError` unless it is an integer >= 2."""
  if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 2:
    raise ValueError(f'vocab_size must be an integer >= 2, got {vocab_size!r}')
  return int(vocab_size)


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
  import scipy.sparse  # the `bench` extra: only where counts are read

  contents = base.read_drafter_file(path, _FILE_FORMAT, 'n-gram counts file', article='an')
  stored = int(contents['vocab_size'])
  if vocab_size is not None:
    try:
      base.check_vocab_compatible(check_vocab_size(vocab_size), stored)
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
    tokens, probs = base.draw(rng, logits, sampling, vocab_size)
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
      token, probs = base.draw(step_rng, self.next_log_probs(previous), sampling, vocab_size)
      return token, (token, probs)

    last = base.last_inputs(sequences, lengths)
    _, (tokens, probs) = jax.lax.scan(draft_step, last, jax.random.split(rng, gamma))
    return jnp.moveaxis(tokens, 0, 1), jnp.moveaxis(probs, 0, 1), state


def load_drafters(path: str | os.PathLike, vocab_size: int,
                  smoothing: float = DEFAULT_SMOOTHING) -> tuple[UnigramDrafter, BigramDrafter]:
  """The unigram and bigram drafters of a counts file, checked against `vocab_size`."""
  counts = load_counts(path, vocab_size)
  return (UnigramDrafter.from_counts(counts, smoothing),
          BigramDrafter.from_counts(counts, smoothing))


__all__ = ['BOS_ID', 'DEFAULT_SMOOTHING', 'PAD_ID', 'BigramDrafter', 'NgramCounts',
           'UnigramDrafter', 'check_vocab_size', 'load_counts', 'load_drafters', 'save_counts']
