"""`T5Config` (the fields and defaults of T5X's example network) and named presets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import struct

from specdec_t5x.network import kernels

# T5's relative position buckets (`relpos_bias/rel_embedding [heads, NUM_RELPOS_BUCKETS]`).
NUM_RELPOS_BUCKETS = 32
RELPOS_MAX_DISTANCE = 128

# `T5Config` fields that choose how the network runs, not what it is: a record
# of a trained model (train_config.json) can leave them out, so that a run
# recorded before they existed still matches.
EXECUTION_FIELDS = ('decode_kernels',)


@struct.dataclass
class T5Config:
  """Hyperparameters, with the fields (and defaults) of T5X's example `T5Config`.

  One field is ours, and is not part of the model: `decode_kernels` chooses
  how the decoder step runs its products and cache writes, 'auto' (the
  CPU-tuned paths iff `jax.default_backend()` is CPU when a call is traced),
  'cpu' (always) or 'plain' (never: one `dot_general` / `einsum` per product,
  vmapped cache writes), or 'invariant' (each position of a decode call
  computed as a one-position step computes it; what 'auto' is for bfloat16 on
  CPU); see `specdec_t5x.network.kernels` for why and for the limits of
  'auto'. No parameter depends on it and outputs only by rounding.
  It is static (not a pytree leaf) and checked here.
  """

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
  decode_kernels: str = struct.field(pytree_node=False, default='auto')

  def __post_init__(self):
    kernels.check_decode_kernels(self.decode_kernels)


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
