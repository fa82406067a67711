"""The decode cache of `specdec_t5x.network.Transformer`: create, step, rewind.

A cache is the Flax `'cache'` collection: per decoder layer the self-attention
keys `[batch, heads, head_dim, length]` and values `[batch, heads, length,
head_dim]` (heads-major, so attention reads them without transposing) and the
cross-attention keys `[batch, heads, head_dim, enc_len]` and values `[batch,
heads, enc_len, head_dim]` of the encoder output, plus one per-row write position
`decoder/decode_position [batch]`. Position p holds the decoder input of step
p (BOS at 0). Rewinding a row is setting its position: entries at or beyond it
are never attended to and are overwritten by the next write.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array
Cache = Any  # the nested dict of the 'cache' collection


def encode(module: nn.Module, params: Any, encoder_input_tokens: Array) -> Array:
  """The encoder output `[batch, enc_len, emb]` of `encoder_input_tokens [batch, enc_len]`."""
  return module.apply({'params': params}, encoder_input_tokens, enable_dropout=False,
                      method=module.encode)


def init_decode_cache(module: nn.Module, params: Any, encoded: Array,
                      encoder_input_tokens: Array, cache_length: int) -> Cache:
  """A fresh cache of `cache_length` positions at position 0 for every row.

  The cross-attention keys/values of `encoded [batch, enc_len, emb]` are
  projected here, once per request. (The call also runs a throw-away forward
  pass over `cache_length` dummy tokens to create the variables; under `jit`
  XLA removes it because nothing depends on it.)
  """
  dummy = jnp.ones((encoder_input_tokens.shape[0], cache_length), jnp.int32)
  _, variables = module.apply({'params': params}, encoded, encoder_input_tokens, dummy, dummy,
                              decode=True, enable_dropout=False, mutable=['cache'],
                              method=module.decode, cache_cross_attention=True)
  return flax.core.unfreeze(variables['cache'])


def decode_step(module: nn.Module, params: Any, cache: Cache, encoded: Array,
                encoder_input_tokens: Array, decoder_input_tokens: Array,
                decoder_input_embeddings: Array | None = None,
                logits_positions: Array | None = None) -> tuple[Array, Cache]:
  """Feeds `decoder_input_tokens [batch, k]` at each row's position.

  Returns:
    `(logits [batch, k, vocab], cache)` with every row's position advanced by k;
    with `logits_positions [batch, r]` (indices into k) the logits are those
    positions' only, `[batch, r, vocab]`.
  """
  logits, variables = module.apply(
      {'params': params, 'cache': cache}, encoded, encoder_input_tokens, decoder_input_tokens,
      decoder_input_tokens, decode=True, enable_dropout=False, mutable=['cache'],
      method=module.decode, decoder_input_embeddings=decoder_input_embeddings,
      logits_positions=logits_positions)
  return logits, flax.core.unfreeze(variables['cache'])


def decode_position(cache: Cache) -> Array:
  """The per-row write position `[batch]`."""
  return cache['decoder']['decode_position']


def cache_length(cache: Cache) -> int:
  """How many positions the cache holds (static)."""
  return cache['decoder']['layers_0']['self_attention']['cached_key'].shape[-1]


def rewind(cache: Cache, positions: Array) -> Cache:
  """Sets every row's write position to `positions [batch]` (forward or back)."""
  decoder = dict(cache['decoder'], decode_position=positions.astype(jnp.int32))
  return dict(cache, decoder=decoder)
