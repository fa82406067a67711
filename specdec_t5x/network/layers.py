"""T5's layers, with the parameter names and logical axes of t5x/examples/t5/layers.py."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning
from jax import lax

from specdec_t5x.network import cpu_products, kernels
from specdec_t5x.network.config import NUM_RELPOS_BUCKETS, RELPOS_MAX_DISTANCE

Array = jax.Array
param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint


def _canonicalize_tuple(x):
  return tuple(x) if isinstance(x, Sequence) else (x,)


class DenseGeneral(nn.Module):
  """A bias-free linear map over `axis`, kernel stored flattened to 2D like T5X.

  A few rows over trailing axes run as row products that read the kernel once
  (`kernels.dense_uses_cpu_products`) or per-row matrix-vector products
  (`kernels.dense_uses_matvecs`) where the CPU-tuned paths apply
  (`decode_kernels` is `T5Config.decode_kernels`).
  """

  features: int | Sequence[int]
  axis: int | Sequence[int] = -1
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
  kernel_axes: tuple[str, ...] = ()
  decode_kernels: str = 'auto'

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = _canonicalize_tuple(self.features)
    inputs = jnp.asarray(inputs, self.dtype)
    axis = tuple(ax % inputs.ndim for ax in _canonicalize_tuple(self.axis))
    kernel_shape = tuple(inputs.shape[ax] for ax in axis) + features
    kernel_param_shape = (int(np.prod([inputs.shape[ax] for ax in axis])),
                          int(np.prod(features)))
    stored = param_with_axes('kernel', self.kernel_init, kernel_param_shape, jnp.float32,
                             axes=self.kernel_axes)
    kernel = jnp.asarray(stored, self.dtype)
    batch_shape = tuple(inputs.shape[ax] for ax in range(inputs.ndim) if ax not in axis)
    rows = int(np.prod(batch_shape))
    # Inputs are [batch, length, ...]: the positions per row are the second axis.
    positions = batch_shape[1] if len(batch_shape) > 1 else 1
    if axis == tuple(range(len(batch_shape), inputs.ndim)):  # trailing axes: rows x kernel
      flat = jnp.reshape(inputs, (rows, kernel_param_shape[0]))
      if kernels.dense_uses_cpu_products(rows, self.dtype, self.decode_kernels):
        # A bfloat16 or int8 kernel (a draft's logits, `drafters.model.with_logits_dtype`)
        # is streamed as it is stored: widening it here would read it twice.
        weights = stored if stored.dtype in (jnp.bfloat16, jnp.int8) else kernel
        return jnp.reshape(cpu_products.product(flat, weights), batch_shape + features)
      if kernels.dense_uses_matvecs(rows, positions, kernel.nbytes, self.decode_kernels):
        return jnp.reshape(kernels.matvecs('i,io->o', flat, kernel, axis=0),
                           batch_shape + features)
    kernel = jnp.reshape(kernel, kernel_shape)
    contract = tuple(range(len(axis)))
    return lax.dot_general(inputs, kernel, ((axis, contract), ((), ())))


class LayerNorm(nn.Module):
  """T5's RMS norm: scale only, no mean subtraction, no bias."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  decode_kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean_square = lambda x: jnp.mean(lax.square(x), axis=-1, keepdims=True)
    if kernels.runs_per_position(x, self.decode_kernels):
      # XLA:CPU sums a row differently depending on how many rows there are.
      mean2 = kernels.per_position(mean_square, x)
    else:
      mean2 = mean_square(x)
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

  def __call__(self, inputs: Array, per_token: bool = False) -> Array:
    """Embeddings `[batch, length, features]` of token ids `[batch, length]`.

    `per_token` looks each token up as its own slice (`kernels.embeds_per_token`
    says when a decode call should); ids must lie in the table.
    """
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError('Input type must be an integer or unsigned integer.')
    table = jnp.asarray(self.embedding, self.dtype)
    if per_token:
      ids = jnp.clip(jnp.reshape(inputs, (-1,)), 0, self.num_embeddings - 1)
      rows = [lax.dynamic_slice_in_dim(table, ids[i], 1, axis=0) for i in range(ids.shape[0])]
      output = jnp.reshape(jnp.concatenate(rows, axis=0), inputs.shape + (self.features,))
    else:
      output = jnp.take(table, inputs, axis=0)
    return with_sharding_constraint(output, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    """Logits `[..., num_embeddings]` of `query [..., features]` against the table."""
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


class MlpBlock(nn.Module):
  """Gated (T5 1.1: `wi_0`, `wi_1`) or plain (T5 1.0: `wi`) feed-forward block."""

  intermediate_dim: int = 2048
  activations: Sequence[str | Callable] = ('relu',)
  kernel_init: Callable = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
  intermediate_dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  decode_kernels: str = 'auto'

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = False) -> Array:
    """`[batch, length, embed]` to `[batch, length, embed]`."""
    activations = []
    for idx, act_fn in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{idx}'
      x = DenseGeneral(self.intermediate_dim, dtype=self.dtype, kernel_init=self.kernel_init,
                       kernel_axes=('embed', 'mlp'), decode_kernels=self.decode_kernels,
                       name=name)(inputs)
      activations.append(_activation(act_fn)(x))
    x = functools.reduce(operator.mul, activations)
    x = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = with_sharding_constraint(x, ('batch', 'length', 'mlp'))
    return DenseGeneral(inputs.shape[-1], dtype=self.dtype, kernel_init=self.kernel_init,
                        kernel_axes=('mlp', 'embed'), decode_kernels=self.decode_kernels,
                        name='wo')(x)


def _activation(fn_or_name: str | Callable) -> Callable:
  if fn_or_name == 'linear':
    return lambda x: x
  if isinstance(fn_or_name, str):
    return getattr(nn, fn_or_name)
  return fn_or_name
