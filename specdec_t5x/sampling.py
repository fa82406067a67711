"""Sampling transforms shared by autoregressive and speculative decoding.

Speculative sampling is exact for the *transformed* target distribution, so
temperature, top-k and top-p must be applied identically to the target's p and
the draft's q. Both decoders therefore go through `probabilities` (and
`sample_from_probabilities`) here and nowhere else.

Temperature 0 is greedy: the "distribution" is the one-hot of the argmax, which
makes greedy speculative decoding the special case of Algorithm 1 in which
a draft token is accepted exactly when it equals the target's argmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from specdec_t5x.network import cpu_products

Array = jax.Array


@struct.dataclass
class SamplingConfig:
  """Static sampling settings: `temperature` 0 means greedy; `top_k` 0 and `top_p` 1 mean off."""

  temperature: float = struct.field(pytree_node=False, default=0.0)
  top_k: int = struct.field(pytree_node=False, default=0)
  top_p: float = struct.field(pytree_node=False, default=1.0)

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def make_sampling_config(temperature: float = 0.0, top_k: int = 0,
                         top_p: float = 1.0) -> SamplingConfig:
  """Validates the settings at the Python boundary and returns a `SamplingConfig`."""
  temperature, top_p = float(temperature), float(top_p)
  if not temperature >= 0.0:
    raise ValueError(f'temperature must be >= 0 (0 is greedy), got {temperature}')
  if int(top_k) != top_k or top_k < 0:
    raise ValueError(f'top_k must be a non-negative integer (0 disables it), got {top_k}')
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f'top_p must be in (0, 1] (1 disables it), got {top_p}')
  return SamplingConfig(temperature=temperature, top_k=int(top_k), top_p=top_p)


def transform_logits(logits: Array, config: SamplingConfig) -> Array:
  """Applies temperature, then top-k, then top-p to `logits [..., vocab]`.

  Tokens outside the kept set get -inf. Ties at the top-k threshold are all
  kept, so the transform is a deterministic function of the logits alone.
  """
  logits = logits.astype(jnp.float32) / config.temperature
  vocab = logits.shape[-1]
  if 0 < config.top_k < vocab:
    kth_largest = jax.lax.top_k(logits, config.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  if config.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = softmax(sorted_logits)
    # Keep the smallest prefix whose mass reaches top_p: a token is kept when
    # the mass strictly before it is still below top_p.
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    kept = mass_before < config.top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def _cpu_row_kernels() -> bool:
  """Whether reductions over the vocabulary run in C++ (`network.cpu_products`).

  On the CPU backend only: XLA:CPU reduces a row of logits at 0.4-1.5 G
  elements/s (a max over 8192 logits ~20 us, a verification call's argmax
  ~25 us); elsewhere XLA's reductions stand. Asked when a call is traced.
  """
  return jax.default_backend() == 'cpu' and cpu_products.available()


def softmax(logits: Array) -> Array:
  """`jax.nn.softmax(logits, -1)` for `logits [..., vocab]` float32, its row max in C++ on CPU."""
  if not _cpu_row_kernels():
    return jax.nn.softmax(logits, axis=-1)
  unnormalized = jnp.exp(logits - cpu_products.row_max(logits)[..., None])
  return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


def first_argmax(logits: Array) -> Array:
  """`jnp.argmax(logits, -1)` as int32 (the first maximum), faster on CPU.

  The one greedy choice of the package: the target's token, the draft's token and
  the one-hot p and q all come from here. XLA:CPU lowers argmax to a (value, index)
  reduction that it does not vectorise: over a batch of 8 rows of a 32k vocabulary
  it costs about 1.7 ms, a tenth of a T5-small decoding step. On the CPU backend
  the index comes from one vectorised pass per row in C++
  (`network.cpu_products.first_argmax`: a [3, 8192] verification call's argmax
  ~25 us -> ~4 us); elsewhere, or without a C++ compiler, a max, then the
  smallest index that attains it, are two plain reductions that give the same
  index about 7x faster than argmax. Logits holding NaN give an unspecified index
  (XLA:CPU's vectorised max may skip a NaN); a model that emits NaN is broken
  either way.
  """
  if _cpu_row_kernels():
    return cpu_products.first_argmax(logits.astype(jnp.float32))  # exact for bf16 logits
  is_max = (logits == jnp.max(logits, axis=-1, keepdims=True)) | jnp.isnan(logits)
  index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.min(jnp.where(is_max, index, logits.shape[-1]), axis=-1)


def one_hot(tokens: Array, vocab_size: int) -> Array:
  """The greedy "distribution" of `tokens [...]`: `[..., vocab_size]` float32 one-hots."""
  return jax.nn.one_hot(tokens, vocab_size, dtype=jnp.float32)


def probabilities(logits: Array, config: SamplingConfig) -> Array:
  """The distribution decoding samples from, `[..., vocab]` float32.

  Greedy decoding gives the one-hot of the first argmax.
  """
  if config.greedy:
    return one_hot(first_argmax(logits), logits.shape[-1])
  return softmax(transform_logits(logits, config))


# Tokens per block of the two-level draw in `sample_from_probabilities`.
SAMPLING_BLOCK = 128
# Names the draw's method; stored measurements of sampled decoding taken with
# another method (the sweep's fingerprints include it) are measured again.
SAMPLE_METHOD = 'two-level inverse CDF'


def _inverse_cdf(rng: Array, weights: Array) -> Array:
  """Index `[...]` drawn with probability weights[i] / Σ weights from `weights [..., n]` >= 0.

  The first i whose running sum exceeds u ~ U[0, Σ): a zero weight never has
  one (its running sum equals the one before it). Where rounding makes u reach
  the last running sum, the last index with a positive weight is taken.
  """
  cdf = jnp.cumsum(weights, axis=-1)
  u = jax.random.uniform(rng, weights.shape[:-1] + (1,), jnp.float32) * cdf[..., -1:]
  index = jnp.sum(cdf <= u, axis=-1)
  positions = jax.lax.broadcasted_iota(jnp.int32, weights.shape, weights.ndim - 1)
  last_positive = jnp.max(jnp.where(weights > 0, positions, 0), axis=-1)
  return jnp.minimum(index, last_positive).astype(jnp.int32)


def sample_from_probabilities(rng: Array, probs: Array) -> Array:
  """Draws token ids `[...]` from `probs [..., vocab]` (>= 0, need not be normalised).

  Two inverse-CDF draws, each exact for its own weights: a block of
  `SAMPLING_BLOCK` tokens with probability its mass / the total, then a token of
  that block with probability its mass / the block's. Two uniforms per draw
  instead of the vocabulary's worth of Gumbel noise `jax.random.categorical`
  needs: on this CPU a draw over 8192 tokens costs about 6 µs instead of 325 µs
  (a third of a target step of the CPU family, paid per draft token and per
  sampled autoregressive token), and the blocks keep both cumulative sums short.
  """
  vocab = probs.shape[-1]
  num_blocks = -(-vocab // SAMPLING_BLOCK)
  padding = [(0, 0)] * (probs.ndim - 1) + [(0, num_blocks * SAMPLING_BLOCK - vocab)]
  blocks = jnp.pad(probs.astype(jnp.float32), padding).reshape(
      *probs.shape[:-1], num_blocks, SAMPLING_BLOCK)
  block_rng, token_rng = jax.random.split(rng)
  block = _inverse_cdf(block_rng, jnp.sum(blocks, axis=-1))
  in_block = jnp.take_along_axis(blocks, block[..., None, None], axis=-2)[..., 0, :]
  return block * SAMPLING_BLOCK + _inverse_cdf(token_rng, in_block)


def sample(rng: Array, logits: Array, config: SamplingConfig) -> Array:
  """Draws token ids `[...]` from `logits [..., vocab]` under `config`."""
  if config.greedy:
    return first_argmax(logits)
  return sample_from_probabilities(rng, probabilities(logits, config))
