"""A T5 encoder-decoder with T5X's parameter tree and a speculative-decoding cache.

The package is a drop-in for T5X's example network (`t5x.examples.t5.network`):
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
  without transposing it and writes its entries in place.

Modules, bottom up: `config` (`T5Config`, `PRESETS`), `kernels` (the
CPU-tuned per-row products and cache writes: decoding is bound by reading
the weights; they apply where the backend is CPU, or where
`T5Config.decode_kernels` asks), `layers` (dense, norm, embedding, relative position bias, MLP),
`attention` (masks, attention over the cache), `transformer` (encoder,
decoder, `Transformer`).
"""

from specdec_t5x.network import kernels
from specdec_t5x.network.attention import (
  MultiHeadDotProductAttention,
  combine_masks,
  dot_product_attention,
  make_attention_mask,
  make_decoder_mask,
)
from specdec_t5x.network.config import (
  EXECUTION_FIELDS,
  NUM_RELPOS_BUCKETS,
  PRESETS,
  RELPOS_MAX_DISTANCE,
  T5Config,
  config_from_preset,
)
from specdec_t5x.network.layers import (
  DenseGeneral,
  Embed,
  LayerNorm,
  MlpBlock,
  RelativePositionBiases,
  relative_position_bucket,
)
from specdec_t5x.network.transformer import (
  Decoder,
  DecoderLayer,
  Encoder,
  EncoderLayer,
  Transformer,
)

__all__ = [
    'EXECUTION_FIELDS', 'NUM_RELPOS_BUCKETS', 'PRESETS', 'RELPOS_MAX_DISTANCE', 'Decoder',
    'DecoderLayer', 'DenseGeneral', 'Embed', 'Encoder', 'EncoderLayer', 'LayerNorm', 'MlpBlock',
    'MultiHeadDotProductAttention', 'RelativePositionBiases', 'T5Config', 'Transformer',
    'combine_masks', 'config_from_preset', 'dot_product_attention', 'kernels',
    'make_attention_mask', 'make_decoder_mask', 'relative_position_bucket',
]
