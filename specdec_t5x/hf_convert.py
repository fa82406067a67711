"""Conversion between T5X parameter trees and Hugging Face `T5ForConditionalGeneration`.

Both directions, for T5 1.1 (gated activation, untied `logits_dense`, no logit
scaling) and T5 1.0 (single activation, logits through the token embedding
scaled by `1/sqrt(emb_dim)`). The mapping is one table (`_leaves`) used by both
directions, so T5X -> HF -> T5X is exact by construction; the tests check the
table against the real forward passes of both libraries.

Layout facts the table relies on:

* T5X stores attention kernels flattened to 2D, `query/key/value [emb, heads*head_dim]`
  and `out [heads*head_dim, emb]`, heads major; HF's `nn.Linear` weights are
  the transposes, with the same head-major order.
* Neither library scales `q.k` at run time: T5X folds `1/sqrt(head_dim)` into
  the query initialiser and HF T5 uses `scaling=1.0`, so kernels copy as is.
* T5X keeps a relative position bias `[heads, 32]` per stack
  (`encoder/relpos_bias`, `decoder/relpos_bias`); HF keeps it `[32, heads]` in
  block 0's self-attention only.
* transformers 5.x forces `tie_word_embeddings=True` for every T5 and reads
  the `tie_word_embeddings` argument only to decide the output scaling
  (`scale_decoder_outputs`). `to_hf_model` therefore gives an untied T5 1.1
  head its own `lm_head` after construction.

torch and transformers are imported inside the functions that need them, so
the package (and the NumPy-only conversion functions) work without them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from specdec_t5x import network

if TYPE_CHECKING:
  import transformers

LAYER_NORM_EPSILON = 1e-6  # Hard-coded in `network.LayerNorm`, as in T5X.

HF_SHARED_KEY = 'shared.weight'
HF_LM_HEAD_KEY = 'lm_head.weight'
# HF state dicts repeat the shared embedding under these names.
HF_EMBEDDING_ALIASES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')
# Old HF checkpoints carry an unused cross-attention bias; HF itself ignores it on load.
HF_IGNORED_KEYS = ('decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight',)

# T5X activation name -> (HF name when ungated, HF name inside 'gated-{}').
# Flax's `nn.gelu` is the tanh approximation, which HF calls 'gelu_new'; HF
# maps 'gated-gelu' to 'gelu_new' itself for backwards compatibility.
_T5X_TO_HF_ACTIVATION = {
    'relu': ('relu', 'relu'),
    'gelu': ('gelu_new', 'gelu'),
    'silu': ('silu', 'silu'),
    'swish': ('silu', 'silu'),
}
# HF `dense_act_fn` -> T5X activation name. HF's exact 'gelu' has no T5X name.
_HF_TO_T5X_ACTIVATION = {
    'relu': 'relu',
    'gelu_new': 'gelu',
    'gelu_pytorch_tanh': 'gelu',
    'silu': 'silu',
    'swish': 'silu',
}


@dataclasses.dataclass(frozen=True)
class _Leaf:
  """One parameter: where it lives in each format and how to move it."""

  t5x_path: tuple[str, ...]
  hf_key: str
  t5x_shape: tuple[int, ...]
  transpose: bool

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return self.t5x_shape[::-1] if self.transpose else self.t5x_shape


# ------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------


def _hf_feed_forward_proj(mlp_activations: Any) -> str:
  """HF `feed_forward_proj` for T5X `mlp_activations` (e.g. ('gelu', 'linear') -> 'gated-gelu')."""
  acts = tuple(mlp_activations)
  if len(acts) == 1 and acts[0] in _T5X_TO_HF_ACTIVATION:
    return _T5X_TO_HF_ACTIVATION[acts[0]][0]
  # HF's gated MLP activates wi_0 and keeps wi_1 linear, so only this order maps.
  if len(acts) == 2 and acts[0] in _T5X_TO_HF_ACTIVATION and acts[1] == 'linear':
    return 'gated-' + _T5X_TO_HF_ACTIVATION[acts[0]][1]
  raise ValueError(
      f'mlp_activations={acts!r} has no Hugging Face T5 equivalent; supported are '
      f"(act,) and (act, 'linear') with act in {sorted(_T5X_TO_HF_ACTIVATION)}")


def hf_config_from_t5_config(cfg: network.T5Config) -> transformers.T5Config:
  """The Hugging Face `T5Config` of the same architecture as `cfg`.

  Token ids follow T5: pad 0 (also the decoder start token), EOS 1.
  """
  import transformers

  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, relative_attention_num_buckets=network.NUM_RELPOS_BUCKETS,
      relative_attention_max_distance=network.RELPOS_MAX_DISTANCE,
      dropout_rate=cfg.dropout_rate, layer_norm_epsilon=LAYER_NORM_EPSILON,
      feed_forward_proj=_hf_feed_forward_proj(cfg.mlp_activations),
      # In transformers 5.x this only selects the 1/sqrt(d_model) output scaling.
      tie_word_embeddings=cfg.logits_via_embedding,
      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=True)
  if _hf_scales_logits(hf_cfg) != cfg.logits_via_embedding:
    raise RuntimeError(
        'transformers did not honour the requested logit scaling '
        f'(logits_via_embedding={cfg.logits_via_embedding}); its T5Config semantics changed')
  return hf_cfg


def _hf_scales_logits(hf_cfg: Any) -> bool:
  # transformers >= 5 has `scale_decoder_outputs`; 4.x scaled exactly when tied.
  return bool(getattr(hf_cfg, 'scale_decoder_outputs', hf_cfg.tie_word_embeddings))


def t5_config_from_hf_config(hf_cfg: transformers.T5Config,
                             dtype: Any = jnp.float32) -> network.T5Config:
  """The `network.T5Config` of the architecture described by a Hugging Face `T5Config`.

  Raises:
    ValueError: if `hf_cfg` uses something `network.Transformer` does not have
      (other relative-position buckets, layer-norm epsilon or activation).
  """
  fixed = {
      'relative_attention_num_buckets': network.NUM_RELPOS_BUCKETS,
      'relative_attention_max_distance': network.RELPOS_MAX_DISTANCE,
      'layer_norm_epsilon': LAYER_NORM_EPSILON,
  }
  for name, supported in fixed.items():
    if getattr(hf_cfg, name) != supported:
      raise ValueError(f'Hugging Face config has {name}={getattr(hf_cfg, name)!r}; '
                       f'specdec_t5x.network supports only {supported!r}')
  if hf_cfg.dense_act_fn not in _HF_TO_T5X_ACTIVATION:
    raise ValueError(
        f'Hugging Face activation {hf_cfg.dense_act_fn!r} (feed_forward_proj='
        f'{hf_cfg.feed_forward_proj!r}) has no T5X equivalent; supported are '
        f'{sorted(_HF_TO_T5X_ACTIVATION)}')
  activation = _HF_TO_T5X_ACTIVATION[hf_cfg.dense_act_fn]
  return network.T5Config(
      vocab_size=hf_cfg.vocab_size, dtype=dtype, emb_dim=hf_cfg.d_model,
      num_heads=hf_cfg.num_heads, num_encoder_layers=hf_cfg.num_layers,
      num_decoder_layers=hf_cfg.num_decoder_layers, head_dim=hf_cfg.d_kv, mlp_dim=hf_cfg.d_ff,
      mlp_activations=(activation, 'linear') if hf_cfg.is_gated_act else (activation,),
      dropout_rate=hf_cfg.dropout_rate, logits_via_embedding=_hf_scales_logits(hf_cfg))


# ------------------------------------------------------------------------------
# The parameter table.
# ------------------------------------------------------------------------------


def _norm_leaf(t5x_path: tuple[str, ...], hf_key: str, cfg: network.T5Config) -> _Leaf:
  return _Leaf(t5x_path + ('scale',), hf_key, (cfg.emb_dim,), transpose=False)


def _attention_leaves(t5x_prefix: tuple[str, ...], hf_prefix: str,
                      cfg: network.T5Config) -> list[_Leaf]:
  joined = cfg.num_heads * cfg.head_dim
  leaves = [_Leaf(t5x_prefix + (name, 'kernel'), f'{hf_prefix}.{hf_name}.weight',
                  (cfg.emb_dim, joined), transpose=True)
            for name, hf_name in (('query', 'q'), ('key', 'k'), ('value', 'v'))]
  leaves.append(_Leaf(t5x_prefix + ('out', 'kernel'), f'{hf_prefix}.o.weight',
                      (joined, cfg.emb_dim), transpose=True))
  return leaves


def _mlp_leaves(t5x_prefix: tuple[str, ...], hf_prefix: str,
                cfg: network.T5Config) -> list[_Leaf]:
  num_inputs = len(tuple(cfg.mlp_activations))
  input_names = ['wi'] if num_inputs == 1 else [f'wi_{i}' for i in range(num_inputs)]
  leaves = [_Leaf(t5x_prefix + (name, 'kernel'), f'{hf_prefix}.{name}.weight',
                  (cfg.emb_dim, cfg.mlp_dim), transpose=True) for name in input_names]
  leaves.append(_Leaf(t5x_prefix + ('wo', 'kernel'), f'{hf_prefix}.wo.weight',
                      (cfg.mlp_dim, cfg.emb_dim), transpose=True))
  return leaves


def _relpos_leaf(stack: str, cfg: network.T5Config) -> _Leaf:
  return _Leaf((stack, 'relpos_bias', 'rel_embedding'),
               f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
               (cfg.num_heads, network.NUM_RELPOS_BUCKETS), transpose=True)


def _leaves(cfg: network.T5Config) -> list[_Leaf]:
  """Every T5X parameter of `network.Transformer(cfg)` and its HF key."""
  _hf_feed_forward_proj(cfg.mlp_activations)  # Rejects MLPs HF cannot express.
  leaves = [_Leaf(('token_embedder', 'embedding'), HF_SHARED_KEY,
                  (cfg.vocab_size, cfg.emb_dim), transpose=False),
            _relpos_leaf('encoder', cfg)]
  for i in range(cfg.num_encoder_layers):
    t5x, hf = ('encoder', f'layers_{i}'), f'encoder.block.{i}.layer'
    leaves += [_norm_leaf(t5x + ('pre_attention_layer_norm',), f'{hf}.0.layer_norm.weight', cfg),
               *_attention_leaves(t5x + ('attention',), f'{hf}.0.SelfAttention', cfg),
               _norm_leaf(t5x + ('pre_mlp_layer_norm',), f'{hf}.1.layer_norm.weight', cfg),
               *_mlp_leaves(t5x + ('mlp',), f'{hf}.1.DenseReluDense', cfg)]
  leaves += [_norm_leaf(('encoder', 'encoder_norm'), 'encoder.final_layer_norm.weight', cfg),
             _relpos_leaf('decoder', cfg)]
  for i in range(cfg.num_decoder_layers):
    t5x, hf = ('decoder', f'layers_{i}'), f'decoder.block.{i}.layer'
    leaves += [
        _norm_leaf(t5x + ('pre_self_attention_layer_norm',), f'{hf}.0.layer_norm.weight', cfg),
        *_attention_leaves(t5x + ('self_attention',), f'{hf}.0.SelfAttention', cfg),
        _norm_leaf(t5x + ('pre_cross_attention_layer_norm',), f'{hf}.1.layer_norm.weight', cfg),
        *_attention_leaves(t5x + ('encoder_decoder_attention',), f'{hf}.1.EncDecAttention', cfg),
        _norm_leaf(t5x + ('pre_mlp_layer_norm',), f'{hf}.2.layer_norm.weight', cfg),
        *_mlp_leaves(t5x + ('mlp',), f'{hf}.2.DenseReluDense', cfg)]
  leaves.append(_norm_leaf(('decoder', 'decoder_norm'), 'decoder.final_layer_norm.weight', cfg))
  if not cfg.logits_via_embedding:
    leaves.append(_Leaf(('decoder', 'logits_dense', 'kernel'), HF_LM_HEAD_KEY,
                        (cfg.emb_dim, cfg.vocab_size), transpose=True))
  return leaves


# ------------------------------------------------------------------------------
# State dicts.
# ------------------------------------------------------------------------------


def _describe_keys(keys: set, limit: int = 8) -> str:
  names = sorted('/'.join(k) if isinstance(k, tuple) else str(k) for k in keys)
  more = f' ... ({len(names) - limit} more)' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def _check_key_sets(found: set, expected: set, optional: set, what: str) -> None:
  missing = expected - found
  unexpected = found - expected - optional
  if missing or unexpected:
    raise ValueError(f'{what} do not match the config: missing [{_describe_keys(missing)}], '
                     f'unexpected [{_describe_keys(unexpected)}]')


def _check_shape(name: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
  if tuple(shape) != tuple(expected):
    raise ValueError(f'{name} has shape {tuple(shape)}, the config needs {tuple(expected)}')


def _to_float32_numpy(value: Any) -> np.ndarray:
  """A NumPy float32 copy-if-needed of a NumPy/JAX array or a torch tensor."""
  if hasattr(value, 'detach'):  # torch.Tensor; NumPy has no bfloat16 view of it.
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def t5x_params_to_hf_state_dict(params: Mapping[str, Any],
                                cfg: network.T5Config) -> dict[str, np.ndarray]:
  """Hugging Face `T5ForConditionalGeneration` state dict of T5X `params`.

  Args:
    params: the `'params'` collection of `network.Transformer(cfg)` (or a T5X
      checkpoint's `target`), nested dicts of arrays.
    cfg: the config the parameters belong to.

  Returns:
    `{hf_key: float32 ndarray}` with every key of `T5ForConditionalGeneration`'s
    `state_dict()`, HF layouts (`nn.Linear` weights `[out, in]`). The shared
    embedding also appears under the embed_tokens keys (and `lm_head.weight`
    when `cfg.logits_via_embedding`), as the same array. Torch-free: feed it to
    `load_state_dict` via `torch.from_numpy`, or save with `safetensors.numpy`.

  Raises:
    ValueError: if `params` does not have exactly the tree and shapes of `cfg`.
  """
  if 'params' in params and 'token_embedder' not in params:
    raise ValueError("got a variables dict; pass variables['params'] instead")
  flat = traverse_util.flatten_dict(dict(params))
  leaves = _leaves(cfg)
  _check_key_sets(set(flat), {leaf.t5x_path for leaf in leaves}, set(), 'T5X parameters')
  state = {}
  for leaf in leaves:
    value = _to_float32_numpy(flat[leaf.t5x_path])
    _check_shape('/'.join(leaf.t5x_path), value.shape, leaf.t5x_shape)
    state[leaf.hf_key] = np.ascontiguousarray(value.T) if leaf.transpose else value
  shared = state[HF_SHARED_KEY]
  for alias in HF_EMBEDDING_ALIASES:
    state[alias] = shared
  if cfg.logits_via_embedding:
    state[HF_LM_HEAD_KEY] = shared
  return state


def hf_state_dict_to_t5x_params(state_dict: Mapping[str, Any],
                                cfg: network.T5Config) -> dict[str, Any]:
  """T5X `params` of `network.Transformer(cfg)` from a Hugging Face T5 state dict.

  Args:
    state_dict: `T5ForConditionalGeneration.state_dict()` or a loaded
      checkpoint; values are torch tensors or arrays of any float dtype.
    cfg: the T5X config (e.g. `t5_config_from_hf_config(model.config)`).

  Returns:
    Nested dicts of float32 ndarrays, the tree `Transformer(cfg).init` makes
    under `'params'`.

  Raises:
    ValueError: on missing, unexpected or wrongly shaped keys, or when copies
      of the shared embedding differ (e.g. an untied `lm_head` while
      `cfg.logits_via_embedding` ties the logits to the embedding).
  """
  arrays = {key: _to_float32_numpy(value) for key, value in state_dict.items()}
  if HF_SHARED_KEY not in arrays:
    # Some checkpoints keep the shared embedding only under a per-stack name.
    present = [alias for alias in HF_EMBEDDING_ALIASES if alias in arrays]
    if present:
      arrays[HF_SHARED_KEY] = arrays[present[0]]
  leaves = _leaves(cfg)
  tied_copies = set(HF_EMBEDDING_ALIASES) | ({HF_LM_HEAD_KEY} if cfg.logits_via_embedding
                                             else set())
  _check_key_sets(set(arrays), {leaf.hf_key for leaf in leaves},
                  tied_copies | set(HF_IGNORED_KEYS), 'Hugging Face state dict keys')
  for key in tied_copies & set(arrays):
    if not np.array_equal(arrays[key], arrays[HF_SHARED_KEY]):
      raise ValueError(f'{key} differs from {HF_SHARED_KEY}, but the config ties them '
                       f'(logits_via_embedding={cfg.logits_via_embedding}); an untied '
                       'lm_head needs logits_via_embedding=False')
  flat = {}
  for leaf in leaves:
    value = arrays[leaf.hf_key]
    _check_shape(leaf.hf_key, value.shape, leaf.hf_shape)
    flat[leaf.t5x_path] = np.ascontiguousarray(value.T) if leaf.transpose else value
  return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------
# Models.
# ------------------------------------------------------------------------------


def _untie_lm_head(model: Any) -> None:
  """Gives `model` an `lm_head` of its own if transformers tied it to `shared`."""
  import torch

  if model.lm_head.weight is not model.shared.weight:
    return
  model.lm_head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=False)
  # Keep a later `tie_weights()` (resize_token_embeddings, save/load) from tying it back.
  tied = getattr(model, '_tied_weights_keys', None)
  if isinstance(tied, Mapping):
    model._tied_weights_keys = {k: v for k, v in tied.items() if k != HF_LM_HEAD_KEY}
  if isinstance(getattr(model, 'all_tied_weights_keys', None), dict):
    model.all_tied_weights_keys.pop(HF_LM_HEAD_KEY, None)


def to_hf_model(params: Mapping[str, Any],
                cfg: network.T5Config) -> transformers.T5ForConditionalGeneration:
  """A float32 `T5ForConditionalGeneration` in eval mode computing what `params` compute.

  An untied head (T5 1.1) gets its own `lm_head`, which stays untied through
  `tie_weights()` and `save_pretrained`/`from_pretrained`.

  Known transformers 5.23 limitation: when the decoder is deeper than the
  encoder, `generate` sizes its default decoder cache by the encoder depth
  and raises IndexError; pass `past_key_values=EncoderDecoderCache(
  DynamicCache(), DynamicCache())` (lazily grown) to `generate` then.

  Raises:
    ValueError: if `params` does not match `cfg`.
    RuntimeError: if the loaded model does not hold exactly the given weights
      (a transformers change in weight tying, say).
  """
  import torch
  import transformers

  state = t5x_params_to_hf_state_dict(params, cfg)
  model = transformers.T5ForConditionalGeneration(hf_config_from_t5_config(cfg))
  if not cfg.logits_via_embedding:
    _untie_lm_head(model)
  # Copies: arrays viewing JAX buffers are read-only, which torch tensors cannot express.
  model.load_state_dict({key: torch.tensor(value) for key, value in state.items()}, strict=True)
  loaded = model.state_dict()
  wrong = [key for key, value in state.items()
           if not np.array_equal(loaded[key].detach().numpy(), value)]
  if wrong:
    raise RuntimeError(f'Hugging Face model did not keep the converted weights of {wrong}')
  return model.eval()


__all__ = ['hf_config_from_t5_config', 't5_config_from_hf_config', 't5x_params_to_hf_state_dict',
           'hf_state_dict_to_t5x_params', 'to_hf_model']
