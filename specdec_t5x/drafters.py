"""Drafters: what proposes the γ tokens that the target verifies.

The speculative loop knows nothing about how drafts are made. A drafter is a
pytree (its arrays are traced, its structure static) with three methods:

* `init(encoder_input_tokens, cache_length) -> state`: start a request;
* `propose(state, sequences, lengths, gamma, sampling, vocab_size, rng)
  -> (tokens [batch, γ], probs [batch, γ, vocab_size], state)`: draft γ tokens
  after each row's prefix and return the distribution each was drawn from;
* `accept(state, sequences, lengths) -> state`: told the new lengths after
  verification, so it can rewind its own state.

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
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from specdec_t5x import cache as cache_lib
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


def num_extra_positions(drafter: Drafter) -> int:
  """How many positions `drafter` appends to the target's scoring call (0 for most drafters)."""
  return int(getattr(drafter, 'num_extra_positions', 0))


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
  """Draft tokens `[...]` and the distribution `[..., vocab_size]` they came from."""
  probs = sampling_lib.probabilities(align_logits(logits, vocab_size), sampling)
  if sampling.greedy:
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), probs
  return sampling_lib.sample_from_probabilities(rng, probs), probs


def last_inputs(sequences: Array, lengths: Array) -> Array:
  """`sequences[b, lengths[b]]`: each row's last known decoder input, `[batch]`."""
  return jnp.take_along_axis(sequences, lengths[:, None], axis=1)[:, 0]


@struct.dataclass
class ModelDraftState:
  cache: Any
  encoded: Array               # [batch, enc_len, emb]
  encoder_input_tokens: Array  # [batch, enc_len]


@struct.dataclass
class ModelDrafter:
  """A smaller T5 (`specdec_t5x.network.Transformer`) as the draft, with its own cache.

  Its cache holds the decoder inputs before position `max(length - 1, 0)`.
  Each proposal starts by feeding the last TWO known inputs: after a fully
  accepted block the draft has never seen its own last draft token, and
  re-feeding one position (an overwrite) is cheaper than a branch.
  """

  module: nn.Module = struct.field(pytree_node=False)
  params: Any

  @property
  def vocab_size(self) -> int:
    return self.module.config.vocab_size

  def init(self, encoder_input_tokens: Array, cache_length: int) -> ModelDraftState:
    encoded = self.module.apply({'params': self.params}, encoder_input_tokens,
                                enable_dropout=False, method=self.module.encode)
    cache = cache_lib.init_decode_cache(self.module, self.params, encoded, encoder_input_tokens,
                                        cache_length)
    return ModelDraftState(cache=cache, encoded=encoded, encoder_input_tokens=encoder_input_tokens)

  def _step(self, state: ModelDraftState, tokens: Array) -> tuple[Array, ModelDraftState]:
    logits, cache = cache_lib.decode_step(self.module, self.params, state.cache, state.encoded,
                                          state.encoder_input_tokens, tokens)
    return logits, state.replace(cache=cache)

  def propose(self, state: ModelDraftState, sequences: Array, lengths: Array, gamma: int,
              sampling: sampling_lib.SamplingConfig, vocab_size: int,
              rng: Array) -> tuple[Array, Array, ModelDraftState]:
    start = jnp.maximum(lengths - 1, 0)
    pair = jnp.stack([last_inputs(sequences, start), last_inputs(sequences, start + 1)], axis=1)
    # With lengths == 0 the pair is [BOS, junk]: read the logits of BOS and let
    # the junk position be overwritten by the first draft token.
    logits, state = self._step(state, pair)
    logits = jnp.take_along_axis(logits, jnp.minimum(lengths, 1)[:, None, None], axis=1)[:, 0]
    state = state.replace(cache=cache_lib.rewind(state.cache, lengths + 1))
    rngs = jax.random.split(rng, gamma)
    first_token, first_probs = draw(rngs[0], logits, sampling, vocab_size)

    def draft_step(carry, step_rng):
      token, state = carry
      logits, state = self._step(state, token[:, None])
      next_token, probs = draw(step_rng, logits[:, 0], sampling, vocab_size)
      return (next_token, state), (next_token, probs)

    (_, state), (tokens, probs) = jax.lax.scan(draft_step, (first_token, state), rngs[1:])
    tokens = jnp.concatenate([first_token[:, None], jnp.moveaxis(tokens, 0, 1)], axis=1)
    probs = jnp.concatenate([first_probs[:, None], jnp.moveaxis(probs, 0, 1)], axis=1)
    return tokens, probs, state

  def accept(self, state: ModelDraftState, sequences: Array, lengths: Array) -> ModelDraftState:
    del sequences  # the next proposal re-feeds what it needs from them
    return state.replace(cache=cache_lib.rewind(state.cache, jnp.maximum(lengths - 1, 0)))
