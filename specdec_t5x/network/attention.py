"""Attention masks, dot-product attention and T5X's multi-head attention with a decode cache.

The decoder self-attention cache (`cache_mode='self'`) takes K >= 1 query
positions per call and writes them at a per-row position (see
`MultiHeadDotProductAttention`); it is heads-major, keys `[batch, heads,
head_dim, length]` and values `[batch, heads, length, head_dim]`, so a step
reads it without transposing it and writes its entries in place (see
`_cached_attention`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning

from specdec_t5x.network import cpu_products, kernels
from specdec_t5x.network.layers import DenseGeneral

Array = jax.Array
with_sharding_constraint = nn_partitioning.with_sharding_constraint


def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable = jnp.multiply, dtype: Any = jnp.float32) -> Array:
  """`[batch, 1, q, k]` mask from `[batch, q]` and `[batch, k]` inputs."""
  mask = pairwise_fn(query_input[..., :, None], key_input[..., None, :])
  return mask[..., None, :, :].astype(dtype)


def combine_masks(*masks: Array | None, dtype: Any = jnp.float32) -> Array | None:
  """The logical AND of the masks that are not None (None if all are)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  return functools.reduce(jnp.logical_and, masks).astype(dtype)


def make_decoder_mask(decoder_target_tokens: Array, dtype: Any,
                      decoder_segment_ids: Array | None = None) -> Array:
  """Causal mask combined with T5X's padding mask (`decoder_target_tokens > 0`)."""
  idxs = jnp.broadcast_to(jnp.arange(decoder_target_tokens.shape[-1]),
                          decoder_target_tokens.shape)
  masks = [make_attention_mask(idxs, idxs, jnp.greater_equal, dtype=dtype),
           make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0, dtype=dtype)]
  if decoder_segment_ids is not None:
    masks.append(make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal,
                                     dtype=dtype))
  return combine_masks(*masks, dtype=dtype)


def dot_product_attention(query: Array, key: Array, value: Array, bias: Array | None,
                          dropout_rng: Array | None = None, dropout_rate: float = 0.0,
                          deterministic: bool = True, dtype: Any = jnp.float32,
                          float32_logits: bool = False) -> Array:
  """Attention of `query [b, q, h, d]` over `key`, `value` `[b, k, h, d]`."""
  if float32_logits:
    query = query.astype(jnp.float32)
    key = key.astype(jnp.float32)
  weights = jnp.einsum('bqhd,bkhd->bhqk', query, key)
  weights = _attention_weights(weights, bias, dropout_rng, dropout_rate, deterministic, dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value)


def _attention_weights(logits: Array, bias: Array | None, dropout_rng: Array | None,
                       dropout_rate: float, deterministic: bool, dtype: Any) -> Array:
  """Softmax of `logits + bias` `[b, h, q, k]` over k, with T5X's attention dropout."""
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  weights = jax.nn.softmax(logits).astype(dtype)
  if not deterministic and dropout_rate > 0.0:
    keep_prob = 1.0 - dropout_rate
    shape = list(weights.shape)
    shape[-2] = 1
    keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    weights = weights * (keep.astype(weights.dtype) / jnp.asarray(keep_prob, dtype))
  return weights


def _cached_attention(query: Array, key: Array, value: Array, bias: Array,
                      block_key: Array, block_value: Array, block_bias: Array,
                      dropout_rng: Array | None = None, dropout_rate: float = 0.0,
                      deterministic: bool = True, dtype: Any = jnp.float32,
                      float32_logits: bool = False, decode_kernels: str = 'auto') -> Array:
  """Attention of q new positions over the cache as it was before them, and over themselves.

  Reading the cache as it was (the entries at and after each row's write
  position masked out by `bias`) and the q new keys/values directly, instead
  of the cache after writing them, lets XLA write the new entries in place
  once the cache has been read. The softmax runs over both parts at once, so
  the result is that of attending over the written cache.

  Args:
    query: `[b, q, h, d]`.
    key: the cache's `[b, h, d, length]`; value: `[b, h, length, d]`. In
      these heads-major layouts both products read the cache in place; with
      T5X's `[b, length, h, d]` XLA transposes the whole cache on every call.
    bias: `[b, h, q, length]` (or broadcastable): relative position bias and
      the mask of positions not (yet) written for the row.
    block_key: `[b, h, d, q]`; block_value: `[b, h, q, d]`: the new entries.
    block_bias: `[b, h, q, q]` (or broadcastable): relative position bias and
      causal mask among the new positions.
    decode_kernels: `T5Config.decode_kernels`; with the CPU-tuned paths the
      queries read the cache as row products (`kernels.attention_uses_cpu_products`)
      or, without them, a few queries one at a time (`kernels.attention_uses_matvecs`).

  Returns:
    `[b, q, h, d]`.
  """
  if float32_logits:
    query = query.astype(jnp.float32)
    key = key.astype(jnp.float32)
    block_key = block_key.astype(jnp.float32)
  rows = kernels.attention_uses_cpu_products(query.shape[1], dtype, decode_kernels)
  few = not rows and kernels.attention_uses_matvecs(query.shape[1], decode_kernels)
  if rows:
    cache_logits = cpu_products.head_product(jnp.swapaxes(query, 1, 2), key)
  elif few:
    cache_logits = kernels.matvecs('bhd,bhdk->bhk', jnp.swapaxes(query, 1, 2), key, axis=2)
  else:
    cache_logits = jnp.einsum('bqhd,bhdk->bhqk', query, key)
  block_logits = jnp.einsum('bqhd,bhdk->bhqk', query, block_key)
  logits = jnp.concatenate([cache_logits, block_logits], axis=-1)
  leading = jnp.broadcast_shapes(bias.shape[:-1], block_bias.shape[:-1])
  bias = jnp.concatenate([jnp.broadcast_to(bias, leading + bias.shape[-1:]),
                          jnp.broadcast_to(block_bias, leading + block_bias.shape[-1:])], -1)
  weights = _attention_weights(logits, bias, dropout_rng, dropout_rate, deterministic, dtype)
  length = key.shape[-1]
  cache_weights, block_weights = weights[..., :length], weights[..., length:]
  if rows:
    from_cache = cpu_products.head_product(cache_weights, value)
  elif few:
    from_cache = kernels.matvecs('bhk,bhkd->bhd', cache_weights, value, axis=2)
  else:
    from_cache = jnp.einsum('bhqk,bhkd->bhqd', cache_weights, value)
  from_block = jnp.einsum('bhqk,bhkd->bhqd', block_weights, block_value)
  return jnp.swapaxes(from_cache + from_block, 1, 2)


def _attend_cross_cache(query: Array, key: Array, value: Array, bias: Array | None,
                        dtype: Any = jnp.float32, float32_logits: bool = False) -> Array:
  """Attention of `query [b, q, h, d]` over the cached cross-attention keys and values.

  Args:
    query: `[b, q, h, d]`.
    key: the encoder output's keys `[b, h, d, k]`; value: `[b, h, k, d]`, kept
      heads-major like the self-attention cache (`_cached_attention`): in the
      projections' `[b, k, h, d]` XLA transposed both on every decode call
      (on cpu_target 8 copies of ~15 us per one-position step).
    bias: `[b, 1 or h, q, k]`, the encoder padding mask as a bias.

  XLA's products, not `cpu_products`: these matrices are a few KB (the
  encoder's length by the head size), where the custom call's fixed cost
  outweighs what it saves. Measured on the trained family (2026-12-07): the
  distilled small draft's proposal of 2 tokens took 0.107-0.112 ms with them
  against 0.117 ms with row products (0.15 against 0.17-0.23 ms sampling),
  and the target's 3-position call 1.10-1.16 against 1.18-1.20 ms.

  Returns:
    `[b, q, h, d]`.
  """
  if float32_logits:
    query, key = query.astype(jnp.float32), key.astype(jnp.float32)
  logits = jnp.einsum('bqhd,bhdk->bhqk', query, key)
  weights = _attention_weights(logits, bias, None, 0.0, True, dtype)
  # Heads-major output, then the swap: asked for 'bqhd' directly, XLA:CPU computed the
  # product as value^T·weights^T, a transposed dot its XNNPACK fusion does not take, and
  # ran it as a plain dot at ~37 us a layer on cpu_target's 3-position call (2026-12-07
  # trace: 145 us of a 1.7 ms γ = 2 iteration); this form fuses at ~4 us.
  return jnp.swapaxes(jnp.einsum('bhqk,bhkd->bhqd', weights, value), 1, 2)


def _attend_written_cache(query: Array, key: Array, value: Array, mask: Array | None,
                          bias: Array, decode_positions: Array, dtype: Any,
                          float32_logits: bool) -> Array:
  """Each query alone over the whole cache, its own entry already written (position-invariant).

  Query j sees the cache entries at or before its position, the same entries
  at the same indices as the one-position call at that position sees, and
  reduces them in the same shapes; the q calls differ only in their inputs.

  Args:
    query: `[b, q, h, d]`.
    key: the cache `[b, h, d, length]` after this call's writes; value
      `[b, h, length, d]`.
    mask: optional `[b, 1, q, length]` mask over the cache positions.
    bias: the relative position bias `[b, h, q, length]`.
    decode_positions: `[b, q]`, the queries' positions.

  Returns:
    `[b, q, h, d]`.
  """
  if float32_logits:
    query, key = query.astype(jnp.float32), key.astype(jnp.float32)
  length = key.shape[-1]
  outputs = []
  for j in range(query.shape[1]):
    visible = jnp.arange(length)[None, :] <= decode_positions[:, j, None]
    visible_mask = visible[:, None, :]
    if mask is not None:
      visible_mask = combine_masks(visible_mask, mask[:, :, j, :])
    logits = jnp.einsum('bhd,bhdk->bhk', query[:, j], key)
    weights = _attention_weights(
        logits, _combine_biases(_mask_to_bias(visible_mask, dtype), bias[:, :, j, :]),
        None, 0.0, True, dtype)
    outputs.append(jnp.einsum('bhk,bhkd->bhd', weights, value))
  return jnp.stack(outputs, axis=1)


def _mask_to_bias(mask: Array | None, dtype: Any) -> Array | None:
  if mask is None:
    return None
  return jnp.where(mask > 0, 0.0, -1e10).astype(dtype)


def _combine_biases(*biases: Array | None) -> Array | None:
  biases = [b for b in biases if b is not None]
  return functools.reduce(operator.add, biases) if biases else None


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention with `query`, `key`, `value`, `out` kernels as in T5X.

  Decode-time caching is controlled by `cache_mode`:
    'none': plain attention (training, encoder, T5X-style cross-attention);
    'self': causal self-attention over a cache written at per-row positions;
    'cross': encoder-decoder attention whose projected keys/values are kept
      in the cache once they have been computed (`fill_cross_cache=True`).
  `decode_kernels` (`T5Config.decode_kernels`) chooses the products and
  cache writes of the decode step (`specdec_t5x.network.kernels`).
  """

  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
  float32_logits: bool = False
  decode_kernels: str = 'auto'

  def _project(self, name: str, inputs: Array, init: Callable) -> Array:
    dense = DenseGeneral(features=(self.num_heads, self.head_dim), axis=-1,
                         kernel_axes=('embed', 'joined_kv'), dtype=self.dtype,
                         kernel_init=init, decode_kernels=self.decode_kernels, name=name)
    return with_sharding_constraint(dense(inputs), ('batch', 'length', 'heads', 'kv'))

  def _attend_cache_then_write(self, query: Array, key: Array, value: Array,
                               mask: Array | None, bias: Array | None, block_bias: Array | None,
                               decode_positions: Array, dropout_rng: Array | None,
                               deterministic: bool) -> Array:
    """Attends over the cache and this call's keys/values, then writes those into the cache.

    Under 'invariant' (`kernels`) it writes first, then each query reads the
    whole cache alone (`_attend_written_cache`).

    Args:
      query: `[b, q, h, d]`; key: `[b, h, d, q]`; value: `[b, h, q, d]`.
      mask: optional `[b, 1, q, length]` mask over the cache positions.
      bias, block_bias: relative position biases over the cache positions
        `[b, h, q, length]` and among the new positions `[b, h, q, q]`.
      decode_positions: `[b, q]`, consecutive from each row's write position.
    """
    cached_key = self.variable('cache', 'cached_key')
    cached_value = self.variable('cache', 'cached_value')
    start = decode_positions[:, 0]
    write = functools.partial(kernels.write_rows, starts=start,
                              decode_kernels=self.decode_kernels)
    if self.decode_kernels == 'invariant':
      kernels.check_invariant_positions(query.shape[1], self.decode_kernels)
      cached_key.value = write(cached_key.value, key, axis=3)
      cached_value.value = write(cached_value.value, value, axis=2)
      return _attend_written_cache(query, cached_key.value, cached_value.value, mask, bias,
                                   decode_positions, self.dtype, self.float32_logits)
    length, num_queries = cached_key.value.shape[-1], query.shape[1]
    # Cache entries at or after the write position are stale (or rewound).
    written = jnp.arange(length)[None, :] < start[:, None]
    cache_mask = combine_masks(mask, written[:, None, None, :])
    causal = jnp.arange(num_queries)[None, :] <= jnp.arange(num_queries)[:, None]
    x = _cached_attention(
        query, cached_key.value, cached_value.value,
        _combine_biases(_mask_to_bias(cache_mask, self.dtype), bias), key, value,
        _combine_biases(_mask_to_bias(causal[None, None], self.dtype), block_bias),
        dropout_rng=dropout_rng, dropout_rate=self.dropout_rate, deterministic=deterministic,
        dtype=self.dtype, float32_logits=self.float32_logits,
        decode_kernels=self.decode_kernels)
    # A zero that depends on the attention: it orders the writes after the
    # reads of the cache, which lets XLA write in place instead of copying the
    # cache (a barrier does not survive to buffer assignment; XLA does not
    # fold x * 0.0 because of NaN/inf).
    after_reads = 0.0 * x[(0,) * x.ndim].astype(key.dtype)
    cached_key.value = write(cached_key.value, key + after_reads, axis=3)
    cached_value.value = write(cached_value.value, value + after_reads, axis=2)
    return x

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array | None, mask: Array | None = None,
               bias: Array | None = None, *, decode_positions: Array | None = None,
               block_bias: Array | None = None, cache_mode: str = 'none',
               fill_cross_cache: bool = False, deterministic: bool = False) -> Array:
    """Attends `inputs_q [b, q, e]` over `inputs_kv [b, k, e]` (or the cache).

    Args:
      decode_positions: `[b, q]` absolute positions of the queries, for
        `cache_mode='self'` once the cache exists.
      block_bias: `[b, h, q, q]` relative position bias among the q queries,
        for `cache_mode='self'` once the cache exists (`bias` then covers the
        cache positions).
    """
    depth_scaling = jnp.sqrt(self.head_dim).astype(self.dtype)
    query_init = lambda *args: self.kernel_init(*args) / depth_scaling
    query = self._project('query', inputs_q, query_init)

    if cache_mode == 'cross' and self.has_variable('cache', 'cached_cross_key'):
      # Keys/values of the encoder output were projected once for this request.
      x = self._attend_cached_encoder(query, _combine_biases(_mask_to_bias(mask, self.dtype), bias))
      return self._output(x, inputs_q)
    key = self._project('key', inputs_kv, self.kernel_init)
    value = self._project('value', inputs_kv, self.kernel_init)
    if cache_mode == 'cross' and fill_cross_cache:
      # Heads-major, as `_attend_cross_cache` reads them: keys [b, h, d, k], values [b, h, k, d].
      self.variable('cache', 'cached_cross_key', lambda: jnp.transpose(key, (0, 2, 3, 1)))
      self.variable('cache', 'cached_cross_value', lambda: jnp.transpose(value, (0, 2, 1, 3)))

    dropout_rng = (self.make_rng('dropout')
                   if not deterministic and self.dropout_rate > 0.0 else None)
    if cache_mode == 'self' and self.has_variable('cache', 'cached_key'):
      # Heads-major (see `_cached_attention`): keys [b, h, d, q], values [b, h, q, d].
      x = self._attend_cache_then_write(
          query, jnp.transpose(key, (0, 2, 3, 1)), jnp.transpose(value, (0, 2, 1, 3)), mask,
          bias, block_bias, decode_positions, dropout_rng, deterministic)
    else:
      if cache_mode == 'self':
        # The call that creates the cache (over dummy tokens, its output unused).
        length = key.shape[1]
        self.variable('cache', 'cached_key', jnp.zeros,
                      (key.shape[0], self.num_heads, self.head_dim, length), key.dtype)
        self.variable('cache', 'cached_value', jnp.zeros,
                      (value.shape[0], self.num_heads, length, self.head_dim), value.dtype)
      attend = functools.partial(
          dot_product_attention, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
          deterministic=deterministic, dtype=self.dtype, float32_logits=self.float32_logits)
      x = attend(query, key, value, _combine_biases(_mask_to_bias(mask, self.dtype), bias))
    return self._output(x, inputs_q)

  def _attend_cached_encoder(self, query: Array, bias: Array | None) -> Array:
    """`_attend_cross_cache` over this layer's cached keys/values (`[b, q, h, d]`).

    Under 'invariant' one query at a time, each with its row of the
    `[b, 1 or h, q, k]` bias, as a one-position call computes it.
    """
    key = self.get_variable('cache', 'cached_cross_key')
    value = self.get_variable('cache', 'cached_cross_value')
    attend = functools.partial(_attend_cross_cache, key=key, value=value, dtype=self.dtype,
                               float32_logits=self.float32_logits)
    if bias is not None and kernels.runs_per_position(query, self.decode_kernels):
      return kernels.per_position(lambda q, b: attend(q, bias=jnp.swapaxes(b, 1, 2)),
                                  query, jnp.swapaxes(bias, 1, 2))
    return attend(query, bias=bias)

  def _output(self, x: Array, inputs_q: Array) -> Array:
    """The `out` projection of the heads `x [b, q, h, d]` back to `[b, q, emb]`."""
    return DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1), kernel_init=self.kernel_init,
                        kernel_axes=('joined_kv', 'embed'), dtype=self.dtype,
                        decode_kernels=self.decode_kernels, name='out')(x)

