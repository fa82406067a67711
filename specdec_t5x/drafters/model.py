"""`ModelDrafter`: a smaller T5 as the draft, with its own decode cache."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from specdec_t5x import cache as cache_lib
from specdec_t5x import sampling as sampling_lib
from specdec_t5x.drafters import base

Array = jax.Array

# Inputs fed per draft call when the cache lags behind the sequence (after plain
# target steps of gamma='auto'); a call of a few positions costs a small draft
# little more than one of a single position.
CATCH_UP_POSITIONS = 8


# What a draft's logits layer may be stored in (`with_logits_dtype`).
LOGITS_DTYPES = ('float32', 'bfloat16', 'int8')


def with_logits_dtype(params: Any, dtype: str) -> Any:
  """The draft's `params` with its logits layer (`decoder/logits_dense/kernel`) stored in `dtype`.

  The logits layer is most of what a small draft's decode call reads
  (`cpu_small`: 1.5 of its 1.7 MB per call), and the call is memory-bound on CPU;
  in bfloat16 the row product (`network.cpu_products`) streams half the bytes
  and widens each weight exactly to float32. In int8 it streams a quarter:
  row i of the kernel [embed, vocab] becomes round(w / s_i) with s_i its
  largest magnitude / 127, and s_i moves into the scale of the norm before it
  (`decoder/decoder_norm/scale`), whose output is the layer's input, so the
  logits are those of the rounded weights. The rounding changes only what the
  draft proposes, never what the target accepts: the output stays exact.

  Raises:
    ValueError: a dtype not in `LOGITS_DTYPES`, or a draft without a separate
      logits layer (tied embeddings).
  """
  if dtype not in LOGITS_DTYPES:
    raise ValueError(f'logits_dtype must be one of {LOGITS_DTYPES}, got {dtype!r}')
  decoder = dict(params['decoder'])
  if 'logits_dense' not in decoder:
    raise ValueError('logits_dtype needs a draft with its own logits layer '
                     '(decoder/logits_dense); this one ties it to the embedding')
  layer = dict(decoder['logits_dense'])
  if dtype == 'int8':
    kernel = jnp.asarray(layer['kernel'], jnp.float32)  # [embed, vocab]
    row_scale = jnp.maximum(jnp.max(jnp.abs(kernel), axis=1), 1e-30) / 127.0  # [embed]
    layer['kernel'] = jnp.round(kernel / row_scale[:, None]).astype(jnp.int8)
    norm = dict(decoder['decoder_norm'])
    norm['scale'] = jnp.asarray(norm['scale'], jnp.float32) * row_scale
    decoder['decoder_norm'] = norm
  else:
    layer['kernel'] = jnp.asarray(layer['kernel'], jnp.dtype(dtype))
  decoder['logits_dense'] = layer
  return dict(params, decoder=decoder)


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

  After plain target steps (γ = 0 of `gamma='auto'`) the cache lags behind:
  `accept` then keeps its position, and the loop calls `catch_up` before the
  next proposal, which feeds the missing inputs `CATCH_UP_POSITIONS` per call.
  """

  module: nn.Module = struct.field(pytree_node=False)
  params: Any

  @property
  def vocab_size(self) -> int:
    return self.module.config.vocab_size

  def init(self, encoder_input_tokens: Array, cache_length: int) -> ModelDraftState:
    encoded = cache_lib.encode(self.module, self.params, encoder_input_tokens)
    cache = cache_lib.init_decode_cache(self.module, self.params, encoded, encoder_input_tokens,
                                        cache_length)
    return ModelDraftState(cache=cache, encoded=encoded, encoder_input_tokens=encoder_input_tokens)

  def _step(self, state: ModelDraftState, tokens: Array,
            logits_positions: Array | None = None) -> tuple[Array, ModelDraftState]:
    logits, cache = cache_lib.decode_step(self.module, self.params, state.cache, state.encoded,
                                          state.encoder_input_tokens, tokens,
                                          logits_positions=logits_positions)
    return logits, state.replace(cache=cache)

  def catch_up(self, state: ModelDraftState, sequences: Array,
               lengths: Array) -> ModelDraftState:
    """Feeds the inputs the cache lacks before `lengths - 1`, a block of positions per call.

    Every row's block ends at or before its last known input (`lengths`), so
    no write leaves the cache; a row already up to date re-feeds inputs it
    holds (an overwrite with the same values) and keeps its position.
    """
    width = min(CATCH_UP_POSITIONS, cache_lib.cache_length(state.cache), sequences.shape[1])
    synced = jnp.maximum(lengths - 1, 0)

    def feed(state: ModelDraftState) -> ModelDraftState:
      position = cache_lib.decode_position(state.cache)
      start = jnp.maximum(jnp.minimum(position, lengths + 1 - width), 0)
      columns = jnp.minimum(start[:, None] + jnp.arange(width)[None, :], sequences.shape[1] - 1)
      state = state.replace(cache=cache_lib.rewind(state.cache, start))
      _, state = self._step(state, jnp.take_along_axis(sequences, columns, axis=1))
      return state.replace(cache=cache_lib.rewind(state.cache, jnp.minimum(start + width, synced)))

    behind = lambda state: jnp.any(cache_lib.decode_position(state.cache) < synced)
    return jax.lax.while_loop(behind, feed, state)

  def propose(self, state: ModelDraftState, sequences: Array, lengths: Array, gamma: int,
              sampling: sampling_lib.SamplingConfig, vocab_size: int,
              rng: Array) -> tuple[Array, Array, ModelDraftState]:
    start = jnp.maximum(lengths - 1, 0)
    pair = jnp.stack([base.last_inputs(sequences, start), base.last_inputs(sequences, start + 1)],
                     axis=1)
    # With lengths == 0 the pair is [BOS, junk]: read the logits of BOS and let
    # the junk position be overwritten by the first draft token. Only that
    # position's logits are computed (the vocabulary product is a third of a step).
    logits, state = self._step(state, pair, logits_positions=jnp.minimum(lengths, 1)[:, None])
    logits = logits[:, 0]
    state = state.replace(cache=cache_lib.rewind(state.cache, lengths + 1))
    rngs = jax.random.split(rng, gamma)
    first_token, first_probs = base.draw(rngs[0], logits, sampling, vocab_size)

    def draft_step(carry, step_rng):
      token, state = carry
      logits, state = self._step(state, token[:, None])
      next_token, probs = base.draw(step_rng, logits[:, 0], sampling, vocab_size)
      return (next_token, state), (next_token, probs)

    (_, state), (tokens, probs) = jax.lax.scan(draft_step, (first_token, state), rngs[1:])
    tokens = jnp.concatenate([first_token[:, None], jnp.moveaxis(tokens, 0, 1)], axis=1)
    probs = jnp.concatenate([first_probs[:, None], jnp.moveaxis(probs, 0, 1)], axis=1)
    return tokens, probs, state

  def accept(self, state: ModelDraftState, sequences: Array, lengths: Array) -> ModelDraftState:
    del sequences  # the next proposal re-feeds what it needs from them
    # After a proposal the position is past lengths - 1; after a plain target step it is
    # behind, and stays there until the next proposal catches up.
    position = jnp.minimum(cache_lib.decode_position(state.cache), jnp.maximum(lengths - 1, 0))
    return state.replace(cache=cache_lib.rewind(state.cache, position))
