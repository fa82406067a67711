"""Random weights for benchmarks: real T5 shapes, no checkpoint, no download.

Timing does not depend on the weights' values, only on their shapes; `random_params`
draws them in well under a second where `module.init`'s truncated normal takes half a
minute for a 32k-vocabulary model on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specdec_t5x import network

EOS_ID = 1


def random_params(module: network.Transformer, batch: int, encoder_length: int,
                  seed: int) -> Any:
  """fp32 weights drawn i.i.d. normal with std 1/sqrt(fan_in), norms' scales at 1.

  Query kernels are further divided by sqrt(head_dim), as T5X initialises them: T5 does not
  scale q·k, so without it the attention logits are sqrt(head_dim) times too large and the
  softmaxes nearly one-hot, and the rounding that differs between XLA and PyTorch flips
  near-tied greedy choices (the baselines compare tokens across them).
  """
  tokens = jnp.ones((batch, encoder_length), jnp.int32)
  shapes = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), tokens, tokens[:, :1], tokens[:, :1],
                          enable_dropout=False))['params']
  rng = np.random.default_rng(seed)
  query_scale = 1.0 / np.sqrt(module.config.head_dim)

  def draw(path, leaf):
    names = [getattr(key, 'key', str(key)) for key in path]
    if names[-1] == 'scale':
      return jnp.ones(leaf.shape, jnp.float32)
    std = 1.0 / np.sqrt(leaf.shape[0]) * (query_scale if 'query' in names else 1.0)
    return jnp.asarray(rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(std))

  return jax.tree_util.tree_map_with_path(draw, shapes)


def ban_eos(params: Mapping[str, Any], eos_id: int = EOS_ID) -> dict[str, Any]:
  """`params` with a zero EOS column in `decoder/logits_dense/kernel [emb, vocab]`.

  EOS then has logit 0, below the maximum of the other (random) logits, so greedy decoding
  never emits it and every request decodes to its full length; the change is in the
  weights, so every backend (ours, T5X, Hugging Face) sees it.
  """
  kernel = np.array(params['decoder']['logits_dense']['kernel'])
  kernel[:, eos_id] = 0.0
  decoder = dict(params['decoder'], logits_dense={'kernel': jnp.asarray(kernel)})
  return dict(params, decoder=decoder)


def decoder_param_count(params: Any) -> int:
  """Parameters under `decoder/` (layers, final norm, logits), not the shared embedding."""
  return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params['decoder']))
