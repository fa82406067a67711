"""A T5 encoder-decoder with T5X's parameter tree and a speculative-decoding cache.

The module is a drop-in for T5X's example network (`t5x.examples.t5.network`):
`T5Config` has the same fields, `Transformer` the same `__call__`, `encode` and
`decode` signatures and the same parameter names and logical axes, so T5X
checkpoints load unchanged and `t5x.models.EncoderDecoderModel` can drive it.

What differs is the decode cache (`decode=True`):

* the decoder self-attention accepts K >= 1 query positions per call;
* the write position is a per-row vector `cache/decoder/decode_position`
  `[batch]`, not a scalar, so each row of a batch can sit at its own length;
* writes OVERWRITE keys/values at `decode_position[b] + arange(K)`, so
  rewinding a row is just setting its position back: entries beyond a row's
  position are never attended to and are overwritten by the next write;
* the relative position bias is computed for the K query rows at each row's
  own offset;
* optionally (`cache_cross_attention=True` on the call that creates the
  cache) the encoder-decoder attention keys/values are projected once per
  request and kept in the cache instead of being recomputed at every step;
* the self-attention cache is heads-major, keys `[batch, heads, head_dim,
  length]` and values `[batch, heads, length, head_dim]`, so a step reads it
  without transposing it and writes its entries in place (see
  `_cached_attention`).

Decoding is bound by reading the weights; see `MATVEC_MAX_ROWS` for how the
few rows of a decode call are multiplied on CPU.

The leaf is deliberately not called `cache_index`: T5X's `cache_map` skips
leaves of that name when it expands a batch for `num_decodes`, and a per-row
vector must be expanded with the batch.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct
from flax.linen import partitioning as nn_partitioning
from jax import lax

Array = jax.Array
param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

NUM_RELPOS_BUCKETS = 32
RELPOS_MAX_DISTANCE = 128


@struct.dataclass
class T5Config:
  """Hyperparameters, with the fields (and defaults) of T5X's example `T5Config`."""

  vocab_size: int
  dtype: Any = jnp.float32
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('relu',)
  dropout_rate: float = 0.1
  logits_via_embedding: bool = False
  float32_attention_logits: bool = False


_T5_1_1 = dict(vocab_size=32128, head_dim=64, mlp_activations=('gelu', 'linear'),
               dropout_rate=0.0, logits_via_embedding=False)
_T5_1_0 = dict(vocab_size=32128, head_dim=64, mlp_activations=('relu',),
               dropout_rate=0.0, logits_via_embedding=True)

# Real T5 sizes (as in T5X's gin files) and small sizes for CPU work.
PRESETS: dict[str, dict[str, Any]] = {
    't5_1_1_small': dict(_T5_1_1, emb_dim=512, num_heads=6, num_encoder_layers=8,
                         num_decoder_layers=8, mlp_dim=1024),
    't5_1_1_base': dict(_T5_1_1, emb_dim=768, num_heads=12, num_encoder_layers=12,
                        num_decoder_layers=12, mlp_dim=2048),
    't5_1_1_large': dict(_T5_1_1, emb_dim=1024, num_heads=16, num_encoder_layers=24,
                         num_decoder_layers=24, mlp_dim=2816),
    't5_1_1_xl': dict(_T5_1_1, emb_dim=2048, num_heads=32, num_encoder_layers=24,
                      num_decoder_layers=24, mlp_dim=5120),
    't5_1_1_xxl': dict(_T5_1_1, emb_dim=4096, num_heads=64, num_encoder_layers=24,
                       num_decoder_layers=24, mlp_dim=10240),
    't5_1_0_small': dict(_T5_1_0, emb_dim=512, num_heads=8, num_encoder_layers=6,
                         num_decoder_layers=6, mlp_dim=2048),
    't5_1_0_base': dict(_T5_1_0, emb_dim=768, num_heads=12, num_encoder_layers=12,
                        num_decoder_layers=12, mlp_dim=3072),
    # CPU sizes (T5 1.1 style, 8k vocabulary); `cpu_*` mirror the paper's
    # XXL-vs-small/base/large ratios as far as a 2-core machine allows.
    'cpu_target': dict(_T5_1_1, vocab_size=8192, emb_dim=256, num_heads=4,
                       num_encoder_layers=4, num_decoder_layers=4, head_dim=64, mlp_dim=768),
    'cpu_large': dict(_T5_1_1, vocab_size=8192, emb_dim=96, num_heads=2,
                      num_encoder_layers=2, num_decoder_layers=2, head_dim=48, mlp_dim=256),
    'cpu_base': dict(_T5_1_1, vocab_size=8192, emb_dim=64, num_heads=1,
                     num_encoder_layers=2, num_decoder_layers=2, head_dim=64, mlp_dim=256),
    'cpu_small': dict(_T5_1_1, vocab_size=8192, emb_dim=48, num_heads=1,
                      num_encoder_layers=1, num_decoder_layers=1, head_dim=48, mlp_dim=192),
    # Miniature models for unit tests.
    'test_tiny': dict(_T5_1_1, vocab_size=64, emb_dim=32, num_heads=2, num_encoder_layers=2,
                      num_decoder_layers=2, head_dim=16, mlp_dim=64),
}


def config_from_preset(name: str, **overrides: Any) -> T5Config:
  """Returns the `T5Config` of a named preset, with `overrides` applied."""
  if name not in PRESETS:
    raise ValueError(f'unknown T5 preset {name!r}; known presets: {sorted(PRESETS)}')
  return T5Config(**{**PRESETS[name], **overrides})


# ------------------------------------------------------------------------------
# Layers (parameter names and logical axes as in t5x/examples/t5/layers.py).
# ------------------------------------------------------------------------------


def _canonicalize_tuple(x):
  return tuple(x) if isinstance(x, Sequence) else (x,)


# Decoding feeds a few rows per call (K query positions times the batch).
# XLA:CPU multiplies one row by a weight matrix with a matrix-vector kernel
# that streams the weights once, but hands 2..8 rows to a matrix-matrix
# kernel (YNNPACK by default; Eigen, oneDNN and XNNPACK behave alike) that
# first repacks the whole weight matrix, so in a decoder bound by reading its
# weights 2 rows cost about 2x one row. Up to `MATVEC_MAX_ROWS` rows, one
# matrix-vector product per row is cheaper: the re-reads of a kernel that fits
# in the CPU's caches (`MATVEC_MAX_KERNEL_BYTES`) mostly hit them. It also
# gives every row the bits of a one-row call. Measured in
# results/scoring_cost.md; attention over the cache, with no weights to
# repack but the same kernels, gains up to `ATTENTION_MATVEC_MAX_QUERIES`.
MATVEC_MAX_ROWS = 4
MATVEC_MAX_KERNEL_BYTES = 16 << 20
ATTENTION_MATVEC_MAX_QUERIES = 8


def _matvecs(spec: str, lhs: Array, rhs: Array, axis: int) -> Array:
  """`einsum(spec)` run as one batched matrix-vector product per index of `lhs`'s `axis`.

  `spec` is the product of one slice (`lhs` without `axis`); the results are
  stacked back at `axis`. Each product reads `rhs` in place (see
  `MATVEC_MAX_ROWS` for why a few of them beat one small matrix product).
  """
  return jnp.stack([jnp.einsum(spec, lax.index_in_dim(lhs, i, axis, keepdims=False), rhs)
                    for i in range(lhs.shape[axis])], axis=axis)


class DenseGeneral(nn.Module):
  """A bias-free linear map over `axis`, kernel stored flattened to 2D like T5X."""

  features: int | Sequence[int]
  axis: int | Sequence[int] = -1
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
  kernel_axes: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = _canonicalize_tuple(self.features)
    inputs = jnp.asarray(inputs, self.dtype)
    axis = tuple(ax % inputs.ndim for ax in _canonicalize_tuple(self.axis))
    kernel_shape = tuple(inputs.shape[ax] for ax in axis) + features
    kernel_param_shape = (int(np.prod([inputs.shape[ax] for ax in axis])),
                          int(np.prod(features)))
    kernel = param_with_axes('kernel', self.kernel_init, kernel_param_shape, jnp.float32,
                             axes=self.kernel_axes)
    kernel = jnp.asarray(kernel, self.dtype)
    batch_shape = tuple(inputs.shape[ax] for ax in range(inputs.ndim) if ax not in axis)
    rows = int(np.prod(batch_shape))
    few_rows = 1 < rows <= MATVEC_MAX_ROWS and kernel.nbytes <= MATVEC_MAX_KERNEL_BYTES
    if few_rows and axis == tuple(range(len(batch_shape), inputs.ndim)):
      flat = jnp.reshape(inputs, (rows, kernel_param_shape[0]))
      return jnp.reshape(_matvecs('i,io->o', flat, kernel, axis=0), batch_shape + features)
    kernel = jnp.reshape(kernel, kernel_shape)
    contract = tuple(range(len(axis)))
    return lax.dot_general(inputs, kernel, ((axis, contract), ((), ())))


class LayerNorm(nn.Module):
  """T5's RMS norm: scale only, no mean subtraction, no bias."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
    scale = param_with_axes('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32,
                            axes=('embed',))
    return y * jnp.asarray(scale, self.dtype)


class Embed(nn.Module):
  """Token embedding `token_embedder/embedding [vocab, embed]`.

  T5X's example network embeds with a one-hot matmul (for SPMD partitioning);
  a gather gives bit-identical vectors and does not read the whole table per
  token, which matters for a memory-bound decoder on CPU.
  """

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  attend_dtype: Any = jnp.float32
  embedding_init: Callable = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = param_with_axes('embedding', self.embedding_init,
                                     (self.num_embeddings, self.features), jnp.float32,
                                     axes=('vocab', 'embed'))

  def __call__(self, inputs: Array) -> Array:
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError('Input type must be an integer or unsigned integer.')
    output = jnp.take(jnp.asarray(self.embedding, self.dtype), inputs, axis=0)
    return with_sharding_constraint(output, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    return jnp.dot(query, jnp.asarray(self.embedding, self.attend_dtype).T)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool = True,
                             num_buckets: int = NUM_RELPOS_BUCKETS,
                             max_distance: int = RELPOS_MAX_DISTANCE) -> np.ndarray:
  """T5's bucketing of `memory_position - query_position`, in NumPy exactly as T5X."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
      / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """T5 relative position bias, `relpos_bias/rel_embedding [heads, buckets]`.

  Buckets are looked up from a static NumPy table over every relative
  distance a sequence of `key_length` can have, so traced per-row query
  offsets give exactly the buckets T5X computes for static positions.
  """

  num_heads: int
  dtype: Any
  num_buckets: int = NUM_RELPOS_BUCKETS
  max_distance: int = RELPOS_MAX_DISTANCE

  @nn.compact
  def __call__(self, query_positions: Array, key_length: int, bidirectional: bool) -> Array:
    """Bias for queries at `query_positions` `[batch, q]` over keys `0..key_length-1`.

    Returns:
      `[batch, heads, q, key_length]` bias.
    """
    rel_embedding = param_with_axes(
        'rel_embedding', nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
        (self.num_heads, self.num_buckets), jnp.float32, axes=('heads', 'relpos_buckets'))
    # Relative positions run over [-(L-1), L-1] for queries inside the cache.
    max_query = key_length - 1
    table = relative_position_bucket(np.arange(-max_query - key_length + 1, key_length),
                                     bidirectional, self.num_buckets, self.max_distance)
    relative = jnp.arange(key_length)[None, None, :] - query_positions[:, :, None]
    buckets = jnp.asarray(table, jnp.int32)[relative + max_query + key_length - 1]
    bias = jnp.take(jnp.asarray(rel_embedding, self.dtype), buckets, axis=1)  # [h, b, q, k]
    return jnp.transpose(bias, (1, 0, 2, 3))


def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable = jnp.multiply, dtype: Any = jnp.float32) -> Array:
  """`[batch, 1, q, k]` mask from `[batch, q]` and `[batch, k]` inputs."""
  mask = pairwise_fn(query_input[..., :, None], key_input[..., None, :])
  return mask[..., None, :, :].astype(dtype)


def combine_masks(*masks: Array | None, dtype: Any = jnp.float32) -> Array | None:
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
                      float32_logits: bool = False) -> Array:
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

  Returns:
    `[b, q, h, d]`.
  """
  if float32_logits:
    query = query.astype(jnp.float32)
    key = key.astype(jnp.float32)
    block_key = block_key.astype(jnp.float32)
  few = query.shape[1] <= ATTENTION_MATVEC_MAX_QUERIES
  if few:
    cache_logits = _matvecs('bhd,bhdk->bhk', jnp.swapaxes(query, 1, 2), key, axis=2)
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
  if few:
    from_cache = _matvecs('bhk,bhkd->bhd', cache_weights, value, axis=2)
  else:
    from_cache = jnp.einsum('bhqk,bhkd->bhqd', cache_weights, value)
  from_block = jnp.einsum('bhqk,bhkd->bhqd', block_weights, block_value)
  return jnp.swapaxes(from_cache + from_block, 1, 2)


# Up to this many rows `_write_rows` unrolls its per-row writes; beyond, it
# loops, so that the program's size does not grow with the batch.
WRITE_ROWS_MAX_UNROLLED = 16


def _write_rows(cache: Array, update: Array, starts: Array, axis: int) -> Array:
  """Writes `update` into `cache` (both `[batch, ...]`) at `starts[b]` along `axis` of row b.

  One in-place `dynamic_update_slice` per row: a vmapped one becomes a scatter
  that XLA:CPU lowers to a select over, and copies of, the whole cache.
  """
  def write(row: Array | int, cache: Array) -> Array:
    index = [jnp.zeros((), jnp.int32)] * cache.ndim
    index[0], index[axis] = jnp.asarray(row, jnp.int32), starts[row]
    row_update = lax.dynamic_slice_in_dim(update, row, 1, axis=0)
    return lax.dynamic_update_slice(cache, row_update, index)

  if cache.shape[0] > WRITE_ROWS_MAX_UNROLLED:
    return lax.fori_loop(0, cache.shape[0], write, cache)
  for row in range(cache.shape[0]):
    cache = write(row, cache)
  return cache


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
  """

  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
  float32_logits: bool = False

  def _project(self, name: str, inputs: Array, init: Callable) -> Array:
    dense = DenseGeneral(features=(self.num_heads, self.head_dim), axis=-1,
                         kernel_axes=('embed', 'joined_kv'), dtype=self.dtype,
                         kernel_init=init, name=name)
    return with_sharding_constraint(dense(inputs), ('batch', 'length', 'heads', 'kv'))

  def _attend_cache_then_write(self, query: Array, key: Array, value: Array,
                               mask: Array | None, bias: Array | None, block_bias: Array | None,
                               decode_positions: Array, dropout_rng: Array | None,
                               deterministic: bool) -> Array:
    """Attends over the cache and this call's keys/values, then writes those into the cache.

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
        dtype=self.dtype, float32_logits=self.float32_logits)
    # A zero that depends on the attention: it orders the writes after the
    # reads of the cache, which lets XLA write in place instead of copying the
    # cache (a barrier does not survive to buffer assignment; XLA does not
    # fold x * 0.0 because of NaN/inf).
    after_reads = 0.0 * x[(0,) * x.ndim].astype(key.dtype)
    cached_key.value = _write_rows(cached_key.value, key + after_reads, start, axis=3)
    cached_value.value = _write_rows(cached_value.value, value + after_reads, start, axis=2)
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
      key = self.get_variable('cache', 'cached_cross_key')
      value = self.get_variable('cache', 'cached_cross_value')
    else:
      key = self._project('key', inputs_kv, self.kernel_init)
      value = self._project('value', inputs_kv, self.kernel_init)
      if cache_mode == 'cross' and fill_cross_cache:
        self.variable('cache', 'cached_cross_key', lambda: key)
        self.variable('cache', 'cached_cross_value', lambda: value)

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
      x = dot_product_attention(
          query, key, value, bias=_combine_biases(_mask_to_bias(mask, self.dtype), bias),
          dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
          deterministic=deterministic, dtype=self.dtype, float32_logits=self.float32_logits)
    return DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1), kernel_init=self.kernel_init,
                        kernel_axes=('joined_kv', 'embed'), dtype=self.dtype, name='out')(x)



class MlpBlock(nn.Module):
  """Gated (T5 1.1: `wi_0`, `wi_1`) or plain (T5 1.0: `wi`) feed-forward block."""

  intermediate_dim: int = 2048
  activations: Sequence[str | Callable] = ('relu',)
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
  intermediate_dropout_rate: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = False) -> Array:
    activations = []
    for idx, act_fn in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{idx}'
      x = DenseGeneral(self.intermediate_dim, dtype=self.dtype, kernel_init=self.kernel_init,
                       kernel_axes=('embed', 'mlp'), name=name)(inputs)
      activations.append(_activation(act_fn)(x))
    x = functools.reduce(operator.mul, activations)
    x = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = with_sharding_constraint(x, ('batch', 'length', 'mlp'))
    return DenseGeneral(inputs.shape[-1], dtype=self.dtype, kernel_init=self.kernel_init,
                        kernel_axes=('mlp', 'embed'), name='wo')(x)


def _activation(fn_or_name: str | Callable) -> Callable:
  if fn_or_name == 'linear':
    return lambda x: x
  if isinstance(fn_or_name, str):
    return getattr(nn, fn_or_name)
  return fn_or_name


# ------------------------------------------------------------------------------
# Encoder, decoder, transformer.
# ------------------------------------------------------------------------------


def _attention(cfg: T5Config, name: str) -> MultiHeadDotProductAttention:
  return MultiHeadDotProductAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                                      dtype=cfg.dtype, dropout_rate=cfg.dropout_rate,
                                      float32_logits=cfg.float32_attention_logits, name=name)


def _dropout(cfg: T5Config) -> nn.Dropout:
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))


def _mlp(cfg: T5Config) -> MlpBlock:
  return MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                  intermediate_dropout_rate=cfg.dropout_rate, dtype=cfg.dtype, name='mlp')


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, encoder_mask: Array | None, encoder_bias: Array,
               deterministic: bool = False) -> Array:
    cfg = self.config
    x = LayerNorm(dtype=cfg.dtype, name='pre_attention_layer_norm')(inputs)
    x = _attention(cfg, 'attention')(x, x, encoder_mask, encoder_bias,
                                     deterministic=deterministic)
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs
    y = LayerNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(x)
    y = _mlp(cfg)(y, deterministic=deterministic)
    return _dropout(cfg)(y, deterministic=deterministic) + x


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, decoder_mask: Array | None,
               decoder_bias: Array, encoder_decoder_mask: Array | None,
               deterministic: bool = False, decode: bool = False,
               decode_positions: Array | None = None, fill_cross_cache: bool = False,
               block_bias: Array | None = None) -> Array:
    cfg = self.config
    x = LayerNorm(dtype=cfg.dtype, name='pre_self_attention_layer_norm')(inputs)
    x = _attention(cfg, 'self_attention')(
        x, x, decoder_mask, decoder_bias, decode_positions=decode_positions,
        block_bias=block_bias, cache_mode='self' if decode else 'none',
        deterministic=deterministic)
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs
    y = LayerNorm(dtype=cfg.dtype, name='pre_cross_attention_layer_norm')(x)
    y = _attention(cfg, 'encoder_decoder_attention')(
        y, encoded, encoder_decoder_mask, cache_mode='cross' if decode else 'none',
        fill_cross_cache=fill_cross_cache, deterministic=deterministic)
    y = _dropout(cfg)(y, deterministic=deterministic) + x
    z = LayerNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(y)
    z = _mlp(cfg)(z, deterministic=deterministic)
    return _dropout(cfg)(z, deterministic=deterministic) + y


def _relpos(cfg: T5Config) -> RelativePositionBiases:
  return RelativePositionBiases(num_heads=cfg.num_heads, dtype=cfg.dtype, name='relpos_bias')


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, encoder_mask: Array | None = None,
               deterministic: bool = False) -> Array:
    cfg = self.config
    batch, length = encoder_input_tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), (1, length))
    encoder_bias = _relpos(cfg)(positions, length, bidirectional=True)
    x = self.shared_embedding(encoder_input_tokens.astype('int32'))
    x = _dropout(cfg)(x, deterministic=deterministic).astype(cfg.dtype)
    for lyr in range(cfg.num_encoder_layers):
      x = EncoderLayer(config=cfg, name=f'layers_{lyr}')(x, encoder_mask, encoder_bias,
                                                         deterministic)
    x = LayerNorm(dtype=cfg.dtype, name='encoder_norm')(x)
    return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array,
               decoder_positions: Array | None = None, decoder_mask: Array | None = None,
               encoder_decoder_mask: Array | None = None, deterministic: bool = False,
               decode: bool = False, max_decode_length: int | None = None,
               decoder_input_embeddings: Array | None = None,
               fill_cross_cache: bool = False) -> Array:
    cfg = self.config
    batch, num_queries = decoder_input_tokens.shape
    relpos = _relpos(cfg)

    query_positions = None
    block_bias = None
    if decode:
      initialized = self.has_variable('cache', 'decode_position')
      position = self.variable('cache', 'decode_position', jnp.zeros, (batch,), jnp.int32)
      if initialized:
        query_positions = position.value[:, None] + jnp.arange(num_queries)[None, :]
        position.value = position.value + num_queries
        # Among the new positions the bias depends only on their offsets in the block.
        block_bias = relpos(jnp.arange(num_queries)[None, :], num_queries, bidirectional=False)
        # Static cache length: the last axis of the first layer's [b, h, d, length] keys.
        key_length = self.variables['cache']['layers_0']['self_attention']['cached_key'].shape[3]
    # Without a cache (or on the call that creates it) the keys are the inputs.
    if query_positions is None:
      key_length = num_queries
      query_positions = jnp.broadcast_to(jnp.arange(num_queries), (1, num_queries))
    decoder_bias = relpos(query_positions, key_length, bidirectional=False)

    if decoder_input_embeddings is None:
      y = self.shared_embedding(decoder_input_tokens.astype('int32'))
    else:
      y = decoder_input_embeddings
    y = _dropout(cfg)(y, deterministic=deterministic).astype(cfg.dtype)
    for lyr in range(cfg.num_decoder_layers):
      y = DecoderLayer(config=cfg, name=f'layers_{lyr}')(
          y, encoded, decoder_mask, decoder_bias, encoder_decoder_mask,
          deterministic=deterministic, decode=decode,
          decode_positions=query_positions if decode else None,
          fill_cross_cache=fill_cross_cache, block_bias=block_bias)
    y = LayerNorm(dtype=cfg.dtype, name='decoder_norm')(y)
    y = _dropout(cfg)(y, deterministic=deterministic)

    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1])
    else:
      logits = DenseGeneral(cfg.vocab_size, dtype=jnp.float32, kernel_axes=('embed', 'vocab'),
                            name='logits_dense')(y)
    return logits



class Transformer(nn.Module):
  """T5 encoder-decoder with T5X's interface (`__call__`, `encode`, `decode`)."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.shared_embedding = Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim,
                                  dtype=cfg.dtype, attend_dtype=jnp.float32,
                                  name='token_embedder')
    self.encoder = Encoder(config=cfg, shared_embedding=self.shared_embedding)
    self.decoder = Decoder(config=cfg, shared_embedding=self.shared_embedding)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
             enable_dropout: bool = True) -> Array:
    """Encodes `[batch, length]` tokens to `[batch, length, emb_dim]`."""
    cfg = self.config
    if encoder_input_tokens.ndim != 2:
      raise ValueError('Expected `encoder_input_tokens` to be of shape (batch, len). '
                       f'Got {encoder_input_tokens.shape}')
    encoder_mask = make_attention_mask(encoder_input_tokens > 0, encoder_input_tokens > 0,
                                       dtype=cfg.dtype)
    if encoder_segment_ids is not None:
      encoder_mask = combine_masks(
          encoder_mask,
          make_attention_mask(encoder_segment_ids, encoder_segment_ids, jnp.equal,
                              dtype=cfg.dtype))
    return self.encoder(encoder_input_tokens, encoder_mask, deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
             decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
             enable_dropout: bool = True, decode: bool = False,
             max_decode_length: int | None = None, *,
             decoder_input_embeddings: Array | None = None,
             cache_cross_attention: bool = False) -> Array:
    """Decoder logits `[batch, q, vocab]` for `decoder_input_tokens [batch, q]`.

    With `decode=True` and an existing cache, the q tokens are written at each
    row's `decode_position` and attend to everything before them.

    Args:
      decoder_input_embeddings: optional `[batch, q, emb_dim]` that replace the
        token embeddings (used for PaSS look-ahead positions).
      cache_cross_attention: on the call that creates the cache, also project
        the encoder output into cross-attention keys/values kept in the cache.
    """
    cfg = self.config
    if decode:
      decoder_mask = None
      encoder_decoder_mask = make_attention_mask(jnp.ones_like(decoder_target_tokens),
                                                 encoder_input_tokens > 0, dtype=cfg.dtype)
    else:
      decoder_mask = make_decoder_mask(decoder_target_tokens, cfg.dtype, decoder_segment_ids)
      encoder_decoder_mask = make_attention_mask(decoder_target_tokens > 0,
                                                 encoder_input_tokens > 0, dtype=cfg.dtype)
    if encoder_segment_ids is not None:
      if decode:
        raise ValueError('During decoding, packing should not be used but '
                         '`encoder_segment_ids` was passed to `Transformer.decode`.')
      encoder_decoder_mask = combine_masks(
          encoder_decoder_mask,
          make_attention_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal,
                              dtype=cfg.dtype))
    return self.decoder(encoded, decoder_input_tokens=decoder_input_tokens,
                        decoder_positions=decoder_positions, decoder_mask=decoder_mask,
                        encoder_decoder_mask=encoder_decoder_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length,
                        decoder_input_embeddings=decoder_input_embeddings,
                        fill_cross_cache=cache_cross_attention)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None,
               encoder_positions: Array | None = None, decoder_positions: Array | None = None,
               *, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: int | None = None) -> Array:
    """Teacher-forced logits `[batch, length, vocab]` (T5X's signature)."""
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids=encoder_segment_ids,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions, enable_dropout=enable_dropout,
                       decode=decode, max_decode_length=max_decode_length)


__all__ = ['T5Config', 'Transformer', 'PRESETS', 'config_from_preset', 'relative_position_bucket']
