"""The drafter interface: what proposes the γ tokens that the target verifies.

The speculative loop knows nothing about how drafts are made. A drafter is a
pytree (its arrays are traced, its structure static) with three methods:

* `init(encoder_input_tokens, cache_length) -> state`: start a request;
* `propose(state, sequences, lengths, gamma, sampling, vocab_size, rng)
  -> (tokens [batch, γ], probs [batch, γ, vocab_size], state)`: draft γ tokens
  after each row's prefix and return the distribution each was drawn from;
* `accept(state, sequences, lengths) -> state`: told the new lengths after
  verification, so it can rewind its own state.

A drafter whose state follows the sequence (a draft model's cache) may also
have `catch_up(state, sequences, lengths) -> state`: with `gamma='auto'`
plain target steps leave it behind, and the loop calls it (`catch_up` here)
once before the first proposal after them, never on a fixed γ's hot path.

`sequences [batch, S]` holds the decoder inputs: BOS (0) at index 0, then the
emitted tokens, so `sequences[b, lengths[b]]` is the last known input of row b.

The returned probabilities must be exactly the ones the tokens were drawn
from, over the TARGET's vocabulary (`vocab_size`): `align_logits` maps a
draft vocabulary padded to another size onto it before sampling.

A drafter may also ride along the target's scoring call (`ExtraPositionsDrafter`,
e.g. PaSS look-ahead embeddings): the loop appends its `num_extra_positions`
input embeddings after the scored tokens and hands their logits back through
`observe_extra_logits`. Those positions never count as real tokens: the loop
rewinds the target cache to the emitted length, and the causal mask keeps them
out of the scored positions' logits.

This module also holds what every drafter shares: reading its `.npz` file
(`read_drafter_file`), the vocabulary check and alignment, and `draw`.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from specdec_t5x import sampling as sampling_lib

Array = jax.Array

# T5 pads its 32100-piece vocabulary to 32128 embedding rows; sizes that agree
# after rounding up to this multiple are the same vocabulary, padded differently.
VOCAB_PADDING_MULTIPLE = 128


class Drafter(Protocol):
  """The interface the speculative loop drives (see the module docstring)."""

  @property
  def vocab_size(self) -> int:
    ...

  def init(self, encoder_input_tokens: Array, cache_length: int) -> Any:
    ...

  def propose(self, state: Any, sequences: Array, lengths: Array, gamma: int,
              sampling: sampling_lib.SamplingConfig, vocab_size: int,
              rng: Array) -> tuple[Array, Array, Any]:
    ...

  def accept(self, state: Any, sequences: Array, lengths: Array) -> Any:
    ...


class ExtraPositionsDrafter(Drafter, Protocol):
  """A drafter that appends input positions to the target's scoring call.

  Every target call of the loop feeds `[batch, k]` real tokens followed by
  `num_extra_positions` (static, >= 1) positions whose input embeddings are
  `extra_embeddings(state) [batch, E, emb_dim]`; their logits
  `[batch, E, vocab]` are passed to `observe_extra_logits(state, logits) ->
  state` before verification. The loop's first call scores BOS alone (plus the
  extra positions) and emits the target's token, so `propose` always finds the
  logits of a previous call in its state.
  """

  @property
  def num_extra_positions(self) -> int:
    ...

  def extra_embeddings(self, state: Any) -> Array:
    ...

  def observe_extra_logits(self, state: Any, logits: Array) -> Any:
    ...


def catch_up(drafter: Drafter, state: Any, sequences: Array, lengths: Array) -> Any:
  """`drafter.catch_up(...)` when it has one: its state brought up to `lengths [batch]`."""
  method = getattr(drafter, 'catch_up', None)
  return state if method is None else method(state, sequences, lengths)


def num_extra_positions(drafter: Drafter) -> int:
  """How many positions `drafter` appends to the target's scoring call (0 for most drafters)."""
  return int(getattr(drafter, 'num_extra_positions', 0))


@functools.partial(jax.jit, static_argnames=('cache_length',))
def jitted_init(drafter: Drafter, encoder_input_tokens: Array, cache_length: int) -> Any:
  """`drafter.init`, jitted: what a request pays to start the draft (a model draft encodes
  `encoder_input_tokens [B, L]` and builds its cache of `cache_length` positions here)."""
  return drafter.init(encoder_input_tokens, cache_length)


def read_drafter_file(path: str | os.PathLike, file_format: str, what: str,
                      article: str = 'a') -> dict[str, Any]:
  """The arrays of a drafter's `.npz` file, checked to carry `format == file_format`.

  Args:
    path: the file.
    file_format: the `format` entry the file must have.
    what: what the file is, for error messages (e.g. `'n-gram counts file'`).
    article: `what`'s indefinite article (`'an'` for `'n-gram ...'`).

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: unreadable, or not a `file_format` file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{what} not found: {path}')
  try:
    with np.load(path, allow_pickle=False) as data:
      contents = {key: data[key] for key in data.files}
  except (OSError, ValueError) as err:
    raise ValueError(f'cannot read {what} {path}: {err}') from err
  if str(contents.get('format', '')) != file_format:
    raise ValueError(f'{path} is not {article} {what} of specdec_t5x '
                     f'(expected format {file_format!r})')
  return contents


def check_vocab_compatible(target_vocab_size: int, draft_vocab_size: int) -> None:
  """Raises if a draft's vocabulary cannot be the target's (padding aside)."""
  padded = lambda n: -(-n // VOCAB_PADDING_MULTIPLE) * VOCAB_PADDING_MULTIPLE
  if padded(target_vocab_size) != padded(draft_vocab_size):
    raise ValueError(
        f'vocabulary mismatch: the draft has {draft_vocab_size} token ids and the target '
        f'{target_vocab_size}; speculative decoding needs the same vocabulary (sizes may only '
        f'differ by padding to a multiple of {VOCAB_PADDING_MULTIPLE}, like T5\'s 32100 vs 32128)')


def align_logits(logits: Array, vocab_size: int) -> Array:
  """Maps draft logits `[..., draft_vocab]` onto `[..., vocab_size]`.

  Ids the target does not have are cut (so they are never drafted); ids the
  draft does not have get -inf (so they are never drafted either).
  """
  draft_vocab = logits.shape[-1]
  if draft_vocab >= vocab_size:
    return logits[..., :vocab_size]
  pad = [(0, 0)] * (logits.ndim - 1) + [(0, vocab_size - draft_vocab)]
  return jnp.pad(logits, pad, constant_values=-jnp.inf)


def draw(rng: Array, logits: Array, sampling: sampling_lib.SamplingConfig,
         vocab_size: int) -> tuple[Array, Array]:
  """Draft tokens `[...]` and the distribution `[..., vocab_size]` they came from.

  Greedy: the token is the first argmax of the aligned logits and q its
  one-hot, one reduction per draft token (`sampling.first_argmax`, the
  target's own greedy choice); `rng` is unused.
  """
  logits = align_logits(logits, vocab_size)
  if sampling.greedy:
    tokens = sampling_lib.first_argmax(logits)
    return tokens, sampling_lib.one_hot(tokens, vocab_size)
  probs = sampling_lib.probabilities(logits, sampling)
  return sampling_lib.sample_from_probabilities(rng, probs), probs


def last_inputs(sequences: Array, lengths: Array) -> Array:
  """`sequences[b, lengths[b]]`: each row's last known decoder input, `[batch]`."""
  return jnp.take_along_axis(sequences, lengths[:, None], axis=1)[:, 0]
