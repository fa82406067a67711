"""Parity with Hugging Face transformers on converted weights (`specdec_t5x.hf_convert`).

Logits of our full pass and of our cached K-positions-per-call decoder equal
`T5ForConditionalGeneration`'s within 1e-4 for T5 1.1 and T5 1.0; weights
convert both ways exactly; HF greedy `generate` equals step-by-step argmax of
our full pass. Tests that need torch/transformers skip without them; the
NumPy-only conversion tests always run.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_inputs
from flax import traverse_util

from specdec_t5x import hf_convert, network

try:
  import torch
  import transformers
  HF_MISSING = None
except ImportError as error:  # pragma: no cover - depends on the environment
  torch = transformers = None
  HF_MISSING = f'needs torch and transformers ({error}); pip install -e ".[hf]"'

requires_hf = pytest.mark.skipif(HF_MISSING is not None, reason=HF_MISSING or '')

TOL = 1e-4
BATCH, ENCODER_LENGTH, DECODER_LENGTH = 3, 24, 19  # Both > 16: log-spaced buckets in use.
MAX_K = 3  # Cached decoding feeds 1..MAX_K positions per call (one compile per K).

# The T5 1.0 variant has heads x head size != width and stacks of different
# depth, so a transposed kernel or a swapped layer index cannot hide behind a
# square matrix or a symmetric stack. (Its decoder is the shallower stack:
# transformers 5.23's `generate` sizes the decoder cache by the encoder depth
# and fails when the decoder is deeper; see `hf_convert.to_hf_model`.)
CONFIGS = {
    't5_1_1': {},
    't5_1_0': dict(mlp_activations=('relu',), logits_via_embedding=True, num_heads=3,
                   head_dim=8, num_encoder_layers=3, num_decoder_layers=2),
}


class Model(NamedTuple):
  """One architecture with random weights and jitted entry points (one compile per shape)."""

  cfg: network.T5Config
  module: network.Transformer
  params: Any
  forward: Callable  # (params, encoder_tokens [B, Le], decoder_inputs [B, Ld]) -> [B, Ld, V]
  encode: Callable  # (params, encoder_tokens) -> [B, Le, E]
  init_cache: Callable  # (params, encoded, encoder_tokens, dummy [B, Ld]) -> cache
  decode_step: Callable  # (params, cache, encoded, encoder_tokens, chunk [B, K]) -> logits, vars


def jitted_entry_points(module: network.Transformer) -> dict[str, Callable]:
  # All-ones targets keep T5X's `target > 0` decoder mask causal only.
  forward = lambda p, e, d: module.apply({'params': p}, e, d, jnp.ones_like(d),
                                         enable_dropout=False)
  encode = lambda p, e: module.apply({'params': p}, e, enable_dropout=False,
                                     method=module.encode)
  init_cache = lambda p, encoded, e, dummy: module.apply(
      {'params': p}, encoded, e, dummy, dummy, decode=True, enable_dropout=False,
      mutable=['cache'], method=module.decode, cache_cross_attention=True)[1]['cache']
  decode_step = lambda p, cache, encoded, e, chunk: module.apply(
      {'params': p, 'cache': cache}, encoded, e, chunk, chunk, decode=True,
      enable_dropout=False, mutable=['cache'], method=module.decode)
  return {name: jax.jit(fn) for name, fn in [('forward', forward), ('encode', encode),
                                             ('init_cache', init_cache),
                                             ('decode_step', decode_step)]}


def random_params(module: network.Transformer, seed: int):
  """Random weights in the tree of `module.init` (traced, not compiled).

  Kernels ~ N(0, 1/fan_in) (queries also / sqrt(head_dim) as T5X's init),
  embeddings ~ N(0, 1), and layer-norm scales ~ 1 + N(0, 0.3^2) rather than
  init's ones, so a swapped norm shows in the logits.
  """
  x = jnp.ones((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda key: module.init(key, x, x, x, enable_dropout=False)['params'],
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def sample(path, leaf):
    names = [entry.key for entry in path]
    value = rng.standard_normal(leaf.shape)
    if names[-1] == 'scale':
      value = 1.0 + 0.3 * value
    elif names[-1] == 'kernel':
      value /= np.sqrt(leaf.shape[0])
      if 'query' in names:
        value /= np.sqrt(module.config.head_dim)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(sample, shapes)


@functools.cache
def build(name: str) -> Model:
  cfg = network.config_from_preset('test_tiny', **CONFIGS[name])
  module = network.Transformer(cfg)
  return Model(cfg, module, random_params(module, seed=0), **jitted_entry_points(module))


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def model(request) -> Model:
  return build(request.param)


@pytest.fixture(scope='module')
def hf_model(model):
  if HF_MISSING is not None:
    pytest.skip(HF_MISSING)
  return hf_convert.to_hf_model(model.params, model.cfg)


def make_batch(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Padded encoder tokens `[B, Le]`, decoder inputs `[B, Ld]` (BOS 0 first).

  Every test uses these shapes, so each jitted entry point compiles once.
  """
  encoder_tokens = random_inputs(BATCH, ENCODER_LENGTH, vocab_size, seed=1)
  encoder_tokens[0, :] = np.maximum(encoder_tokens[0, :], 2)  # One unpadded row.
  rng = np.random.default_rng(2)
  targets = rng.integers(2, vocab_size, (BATCH, DECODER_LENGTH)).astype(np.int32)
  decoder_inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
  return encoder_tokens, decoder_inputs


@pytest.fixture(scope='module')
def batch(model):
  return make_batch(model.cfg.vocab_size)


def hf_logits(hf_model, encoder_tokens, decoder_inputs):
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(encoder_tokens),
                   attention_mask=torch.tensor(encoder_tokens > 0, dtype=torch.long),
                   decoder_input_ids=torch.tensor(decoder_inputs))
  return out.logits.numpy()


def cached_logits(model: Model, encoder_tokens, decoder_inputs, seed: int) -> np.ndarray:
  """`[B, Ld, V]` from the decode cache, fed a random 1..MAX_K positions per call."""
  encoded = model.encode(model.params, encoder_tokens)
  cache = model.init_cache(model.params, encoded, encoder_tokens, np.zeros_like(decoder_inputs))
  rng = np.random.default_rng(seed)
  chunks, start, length = [], 0, decoder_inputs.shape[1]
  while start < length:
    chunk = decoder_inputs[:, start:start + int(rng.integers(1, MAX_K + 1))]
    logits, variables = model.decode_step(model.params, cache, encoded, encoder_tokens, chunk)
    cache = variables['cache']
    chunks.append(np.asarray(logits))
    start += chunk.shape[1]
  return np.concatenate(chunks, axis=1)


# ------------------------------------------------------------------------------
# Conversion (NumPy only).
# ------------------------------------------------------------------------------


def test_round_trip_t5x_hf_t5x_is_exact(model):
  state = hf_convert.t5x_params_to_hf_state_dict(model.params, model.cfg)
  back = traverse_util.flatten_dict(hf_convert.hf_state_dict_to_t5x_params(state, model.cfg))
  original = traverse_util.flatten_dict(model.params)
  assert set(back) == set(original)
  for path, value in original.items():
    assert back[path].dtype == np.float32
    np.testing.assert_array_equal(back[path], np.asarray(value), err_msg='/'.join(path))


def test_embedding_copies_and_head(model):
  state = hf_convert.t5x_params_to_hf_state_dict(model.params, model.cfg)
  embedding = np.asarray(model.params['token_embedder']['embedding'])
  np.testing.assert_array_equal(state['encoder.embed_tokens.weight'], embedding)
  np.testing.assert_array_equal(state['decoder.embed_tokens.weight'], embedding)
  if model.cfg.logits_via_embedding:
    np.testing.assert_array_equal(state['lm_head.weight'], embedding)
  else:
    np.testing.assert_array_equal(state['lm_head.weight'],
                                  np.asarray(model.params['decoder']['logits_dense']['kernel']).T)


def test_relative_attention_bias_lives_in_block_0_only(model):
  state = hf_convert.t5x_params_to_hf_state_dict(model.params, model.cfg)
  bias_keys = sorted(k for k in state if 'relative_attention_bias' in k)
  assert bias_keys == ['decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
                       'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight']
  for key, stack in zip(bias_keys, ['decoder', 'encoder'], strict=True):
    np.testing.assert_array_equal(
        state[key], np.asarray(model.params[stack]['relpos_bias']['rel_embedding']).T)


@pytest.fixture(scope='module')
def tiny_11() -> Model:
  return build('t5_1_1')


def test_missing_and_unexpected_t5x_parameters_are_named(tiny_11):
  flat = traverse_util.flatten_dict(tiny_11.params)
  del flat[('encoder', 'layers_1', 'attention', 'key', 'kernel')]
  flat[('decoder', 'extra', 'kernel')] = np.zeros((2, 2), np.float32)
  with pytest.raises(ValueError, match=r'missing \[encoder/layers_1/attention/key/kernel\]'
                                       r'.*unexpected \[decoder/extra/kernel\]'):
    hf_convert.t5x_params_to_hf_state_dict(traverse_util.unflatten_dict(flat), tiny_11.cfg)


def test_variables_dict_is_rejected_with_a_hint(tiny_11):
  with pytest.raises(ValueError, match=r"variables\['params'\]"):
    hf_convert.t5x_params_to_hf_state_dict({'params': tiny_11.params}, tiny_11.cfg)


def test_wrong_shape_is_named(tiny_11):
  other = network.config_from_preset('test_tiny', mlp_dim=48)
  with pytest.raises(ValueError, match=r'encoder/layers_0/mlp/wi_0/kernel has shape \(32, 64\)'):
    hf_convert.t5x_params_to_hf_state_dict(tiny_11.params, other)
  state = hf_convert.t5x_params_to_hf_state_dict(tiny_11.params, tiny_11.cfg)
  with pytest.raises(ValueError, match=r'encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0'):
    hf_convert.hf_state_dict_to_t5x_params(state, other)


def test_state_dict_key_errors_and_tolerated_extras(tiny_11):
  cfg = tiny_11.cfg
  state = hf_convert.t5x_params_to_hf_state_dict(tiny_11.params, cfg)
  missing = {k: v for k, v in state.items() if k != 'decoder.final_layer_norm.weight'}
  with pytest.raises(ValueError, match=r'missing \[decoder\.final_layer_norm\.weight\]'):
    hf_convert.hf_state_dict_to_t5x_params(missing, cfg)
  with pytest.raises(ValueError, match=r'unexpected \[encoder\.block\.9\.layer\.0'):
    hf_convert.hf_state_dict_to_t5x_params(
        {**state, 'encoder.block.9.layer.0.layer_norm.weight': np.ones(32)}, cfg)
  # The unused cross-attention bias of old HF checkpoints is skipped, as HF does.
  ignored = {**state, hf_convert.HF_IGNORED_KEYS[0]: np.zeros((32, 2), np.float32)}
  hf_convert.hf_state_dict_to_t5x_params(ignored, cfg)
  # Checkpoints that keep the embedding only under a per-stack name still load.
  only_encoder_copy = {k: v for k, v in state.items()
                       if k not in ('shared.weight', 'decoder.embed_tokens.weight')}
  back = hf_convert.hf_state_dict_to_t5x_params(only_encoder_copy, cfg)
  np.testing.assert_array_equal(back['token_embedder']['embedding'],
                                tiny_11.params['token_embedder']['embedding'])


def test_untied_head_does_not_load_into_a_tied_config(tiny_11):
  state = hf_convert.t5x_params_to_hf_state_dict(tiny_11.params, tiny_11.cfg)  # Untied head.
  tied = network.config_from_preset('test_tiny', logits_via_embedding=True)
  with pytest.raises(ValueError, match=r'lm_head\.weight differs from shared\.weight'):
    hf_convert.hf_state_dict_to_t5x_params(state, tied)


@pytest.mark.parametrize('activations', [('linear', 'gelu'), ('relu', 'relu', 'linear'),
                                         ('tanh',)])
def test_mlp_without_hf_equivalent_is_rejected(tiny_11, activations):
  cfg = network.config_from_preset('test_tiny', mlp_activations=activations)
  with pytest.raises(ValueError, match='has no Hugging Face T5 equivalent'):
    hf_convert.t5x_params_to_hf_state_dict(tiny_11.params, cfg)


# ------------------------------------------------------------------------------
# Against transformers.
# ------------------------------------------------------------------------------


@requires_hf
def test_relative_position_buckets_match_hf():
  relative = np.arange(-700, 700)
  for bidirectional in (True, False):
    hf_buckets = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional=bidirectional, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(
        network.relative_position_bucket(relative, bidirectional, 32, 128), hf_buckets.numpy())


def test_state_dict_has_hf_keys_and_shapes(model, hf_model):
  state = hf_convert.t5x_params_to_hf_state_dict(model.params, model.cfg)
  assert {k: v.shape for k, v in state.items()} == {
      k: tuple(v.shape) for k, v in hf_model.state_dict().items()}


def test_configs_round_trip(model, hf_model):
  cfg = model.cfg
  assert hf_model.config.scale_decoder_outputs == cfg.logits_via_embedding
  assert hf_model.config.is_gated_act == (len(cfg.mlp_activations) == 2)
  assert hf_convert.t5_config_from_hf_config(hf_model.config) == cfg


def test_teacher_forced_logits_match_hf(model, hf_model, batch):
  ours = np.asarray(model.forward(model.params, *batch))
  theirs = hf_logits(hf_model, *batch)
  assert ours.shape == theirs.shape == (BATCH, DECODER_LENGTH, model.cfg.vocab_size)
  assert np.abs(ours).max() > 0.5  # Not a vacuous comparison of near-zero logits.
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)


@pytest.mark.parametrize('seed', [0, 1])
def test_cached_decode_logits_match_hf(model, hf_model, batch, seed):
  np.testing.assert_allclose(cached_logits(model, *batch, seed=seed), hf_logits(hf_model, *batch),
                             rtol=0, atol=TOL)


def test_greedy_generate_matches_argmax_of_full_pass(model, hf_model, batch):
  encoder_tokens, steps, eos = batch[0], 8, 1
  # BOS 0, then the argmax tokens; positions past the current step never influence it.
  ours = np.zeros((BATCH, DECODER_LENGTH), np.int32)
  for step in range(steps):
    logits = model.forward(model.params, encoder_tokens, ours)
    ours[:, step + 1] = np.argmax(np.asarray(logits[:, step]), axis=-1)
  ours = ours[:, 1:steps + 1]
  with torch.no_grad():
    generated = hf_model.generate(
        input_ids=torch.tensor(encoder_tokens),
        attention_mask=torch.tensor(encoder_tokens > 0, dtype=torch.long),
        max_new_tokens=steps, do_sample=False, num_beams=1).numpy()[:, 1:]
  theirs = np.zeros_like(ours)
  theirs[:, :generated.shape[1]] = generated
  stops = []
  for row in range(BATCH):
    # HF stops a row at EOS and pads it with 0 after that.
    stops.append(int(np.argmax(ours[row] == eos)) + 1 if eos in ours[row] else steps)
    np.testing.assert_array_equal(theirs[row, :stops[-1]], ours[row, :stops[-1]],
                                  err_msg=f'row {row}')
    assert not theirs[row, stops[-1]:].any()
  assert max(stops) >= 4  # Enough tokens before EOS for the comparison to mean something.


@requires_hf
def test_untied_lm_head_survives_tie_weights_and_save_load(tiny_11, tmp_path):
  hf_model = hf_convert.to_hf_model(tiny_11.params, tiny_11.cfg)
  head = np.asarray(tiny_11.params['decoder']['logits_dense']['kernel']).T
  assert hf_model.lm_head.weight.data_ptr() != hf_model.shared.weight.data_ptr()
  hf_model.tie_weights()  # What resize_token_embeddings and from_pretrained call.
  np.testing.assert_array_equal(hf_model.lm_head.weight.detach().numpy(), head)
  hf_model.save_pretrained(tmp_path)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  np.testing.assert_array_equal(reloaded.lm_head.weight.detach().numpy(), head)
  batch = make_batch(tiny_11.cfg.vocab_size)
  np.testing.assert_allclose(hf_logits(reloaded, *batch), tiny_11.forward(tiny_11.params, *batch),
                             rtol=0, atol=TOL)


@requires_hf
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_hf_native_model_converts_to_t5x(name):
  """From a model HF built and initialised itself, as a T5 1.1 / 1.0 hub checkpoint loads.

  The HF config is written the way hub configs are (`feed_forward_proj`,
  `tie_word_embeddings`). transformers 5.x ties `lm_head` to `shared` even for
  `tie_word_embeddings=False`, so the T5 1.1 case converts to a `logits_dense`
  equal to the embedding: what that HF model computes.
  """
  expected = build(name)
  cfg = expected.cfg
  hf_cfg = transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, dropout_rate=0.0,
      feed_forward_proj='relu' if cfg.logits_via_embedding else 'gated-gelu',
      tie_word_embeddings=cfg.logits_via_embedding, decoder_start_token_id=0)
  assert hf_convert.t5_config_from_hf_config(hf_cfg) == cfg
  torch.manual_seed(0)
  hf_model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    for param_name, weight in hf_model.named_parameters():
      if 'layer_norm' in param_name:
        weight.add_(0.3 * torch.randn_like(weight))
  params = hf_convert.hf_state_dict_to_t5x_params(hf_model.state_dict(), cfg)
  batch = make_batch(cfg.vocab_size)
  # Same config and shapes as `expected`: its compiled forward pass applies.
  np.testing.assert_allclose(expected.forward(params, *batch), hf_logits(hf_model, *batch),
                             rtol=0, atol=TOL)
  back = hf_convert.t5x_params_to_hf_state_dict(params, cfg)
  for key, value in hf_model.state_dict().items():
    np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


@requires_hf
def test_unsupported_hf_config_is_rejected():
  with pytest.raises(ValueError, match='layer_norm_epsilon=1e-05'):
    hf_convert.t5_config_from_hf_config(transformers.T5Config(layer_norm_epsilon=1e-5))
  with pytest.raises(ValueError, match='relative_attention_num_buckets=64'):
    hf_convert.t5_config_from_hf_config(transformers.T5Config(relative_attention_num_buckets=64))
  with pytest.raises(ValueError, match="activation 'gelu'.*no T5X equivalent"):
    hf_convert.t5_config_from_hf_config(transformers.T5Config(feed_forward_proj='gelu'))
