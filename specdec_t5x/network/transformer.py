"""T5's encoder, decoder and encoder-decoder `Transformer`, with T5X's interface.

The decode cache (`decode=True`) holds one write position per row,
`cache/decoder/decode_position [batch]`, not a scalar, so each row of a batch
can sit at its own length; each call writes its K positions there and
advances it by K (see `specdec_t5x.cache`). The relative position bias is
computed for the K query rows at each row's own offset.

The leaf is deliberately not called `cache_index`: T5X's `cache_map` skips
leaves of that name when it expands a batch for `num_decodes`, and a per-row
vector must be expanded with the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from specdec_t5x.network import kernels
from specdec_t5x.network.attention import (
  MultiHeadDotProductAttention,
  combine_masks,
  make_attention_mask,
  make_decoder_mask,
)
from specdec_t5x.network.config import T5Config
from specdec_t5x.network.layers import (
  DenseGeneral,
  Embed,
  LayerNorm,
  MlpBlock,
  RelativePositionBiases,
)

Array = jax.Array


def _resolved(cfg: T5Config, decode: bool) -> T5Config:
  """`cfg` with the kernels its `decode_kernels` stands for in this call (`kernels`)."""
  return cfg.replace(decode_kernels=kernels.resolve_decode_kernels(cfg.decode_kernels,
                                                                   cfg.dtype, decode))


def _attention(cfg: T5Config, name: str) -> MultiHeadDotProductAttention:
  return MultiHeadDotProductAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                                      dtype=cfg.dtype, dropout_rate=cfg.dropout_rate,
                                      float32_logits=cfg.float32_attention_logits,
                                      decode_kernels=cfg.decode_kernels, name=name)


def _dropout(cfg: T5Config) -> nn.Dropout:
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))


def _mlp(cfg: T5Config) -> MlpBlock:
  return MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                  intermediate_dropout_rate=cfg.dropout_rate, dtype=cfg.dtype,
                  decode_kernels=cfg.decode_kernels, name='mlp')


class EncoderLayer(nn.Module):
  """Self-attention then MLP over `[batch, length, embed]`, each pre-normed with a residual."""

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
  """Causal self-attention (over the cache when `decode`), cross-attention, MLP.

  Each is pre-normed with a residual; `[batch, q, embed]` in and out.
  """

  config: T5Config

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, decoder_mask: Array | None,
               decoder_bias: Array, encoder_decoder_mask: Array | None,
               deterministic: bool = False, decode: bool = False,
               decode_positions: Array | None = None, fill_cross_cache: bool = False,
               block_bias: Array | None = None) -> Array:
    cfg = self.config
    x = LayerNorm(dtype=cfg.dtype, decode_kernels=cfg.decode_kernels,
                  name='pre_self_attention_layer_norm')(inputs)
    x = _attention(cfg, 'self_attention')(
        x, x, decoder_mask, decoder_bias, decode_positions=decode_positions,
        block_bias=block_bias, cache_mode='self' if decode else 'none',
        deterministic=deterministic)
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs
    y = LayerNorm(dtype=cfg.dtype, decode_kernels=cfg.decode_kernels,
                  name='pre_cross_attention_layer_norm')(x)
    y = _attention(cfg, 'encoder_decoder_attention')(
        y, encoded, encoder_decoder_mask, cache_mode='cross' if decode else 'none',
        fill_cross_cache=fill_cross_cache, deterministic=deterministic)
    y = _dropout(cfg)(y, deterministic=deterministic) + x
    z = LayerNorm(dtype=cfg.dtype, decode_kernels=cfg.decode_kernels,
                  name='pre_mlp_layer_norm')(y)
    z = _mlp(cfg)(z, deterministic=deterministic)
    return _dropout(cfg)(z, deterministic=deterministic) + y


def _relpos(cfg: T5Config) -> RelativePositionBiases:
  return RelativePositionBiases(num_heads=cfg.num_heads, dtype=cfg.dtype, name='relpos_bias')


class Encoder(nn.Module):
  """Tokens `[batch, length]` to the encoder output `[batch, length, embed]`."""

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, encoder_mask: Array | None = None,
               deterministic: bool = False) -> Array:
    cfg = _resolved(self.config, decode=False)
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
  """Decoder tokens `[batch, q]` (or their embeddings) to logits `[batch, q, vocab]`.

  With `logits_positions [batch, r]` (indices into q), only those positions'
  logits `[batch, r, vocab]` are computed: a caller that needs fewer rows than
  it feeds skips the rest of the largest product of a small model's step.
  """

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array,
               decoder_positions: Array | None = None, decoder_mask: Array | None = None,
               encoder_decoder_mask: Array | None = None, deterministic: bool = False,
               decode: bool = False, max_decode_length: int | None = None,
               decoder_input_embeddings: Array | None = None,
               fill_cross_cache: bool = False, logits_positions: Array | None = None) -> Array:
    cfg = _resolved(self.config, decode)
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
      per_token = decode and kernels.embeds_per_token(decoder_input_tokens.size,
                                                      cfg.decode_kernels)
      y = self.shared_embedding(decoder_input_tokens.astype('int32'), per_token=per_token)
    else:
      y = decoder_input_embeddings
    y = _dropout(cfg)(y, deterministic=deterministic).astype(cfg.dtype)
    for lyr in range(cfg.num_decoder_layers):
      y = DecoderLayer(config=cfg, name=f'layers_{lyr}')(
          y, encoded, decoder_mask, decoder_bias, encoder_decoder_mask,
          deterministic=deterministic, decode=decode,
          decode_positions=query_positions if decode else None,
          fill_cross_cache=fill_cross_cache, block_bias=block_bias)
    if logits_positions is not None:  # [batch, r]: only these rows reach the vocabulary
      y = jnp.take_along_axis(y, logits_positions[..., None], axis=1)
    y = LayerNorm(dtype=cfg.dtype, decode_kernels=cfg.decode_kernels,
                  name='decoder_norm')(y)
    y = _dropout(cfg)(y, deterministic=deterministic)

    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1])
    else:
      logits = DenseGeneral(cfg.vocab_size, dtype=jnp.float32, kernel_axes=('embed', 'vocab'),
                            decode_kernels=cfg.decode_kernels, name='logits_dense')(y)
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
             cache_cross_attention: bool = False,
             logits_positions: Array | None = None) -> Array:
    """Decoder logits `[batch, q, vocab]` for `decoder_input_tokens [batch, q]`.

    With `decode=True` and an existing cache, the q tokens are written at each
    row's `decode_position` and attend to everything before them.

    Args:
      decoder_input_embeddings: optional `[batch, q, emb_dim]` that replace the
        token embeddings (used for PaSS look-ahead positions).
      cache_cross_attention: on the call that creates the cache, also project
        the encoder output into cross-attention keys/values kept in the cache.
      logits_positions: optional `[batch, r]` indices into q: the logits of those
        positions only, `[batch, r, vocab]`.
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
                        fill_cross_cache=cache_cross_attention,
                        logits_positions=logits_positions)

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

