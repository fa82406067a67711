"""The decode cache: K positions per call, per-row positions, rewinds, all equal to a full pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_inputs

from specdec_t5x import cache as cache_lib
from specdec_t5x import network
from specdec_t5x.network import kernels

TOL = 1e-4


@functools.partial(jax.jit, static_argnums=0)
def full_forward_logits(module, params, encoder_tokens, decoder_inputs):
  """Teacher-forced logits `[B, T, V]` for decoder inputs `[B, T]` (BOS first).

  T5X's full pass masks positions whose *target* is 0, so every real
  position gets a non-zero stand-in target: the logits do not depend on it.
  """
  targets = jnp.ones_like(decoder_inputs)
  return module.apply({'params': params}, encoder_tokens, decoder_inputs, targets,
                      enable_dropout=False)


encode = jax.jit(cache_lib.encode, static_argnums=0)
init_cache = jax.jit(cache_lib.init_decode_cache, static_argnums=(0, 4))


def step_fn(module):
  return jax.jit(lambda p, c, e, t, x: cache_lib.decode_step(module, p, c, e, t, x))


@pytest.fixture(scope='module', params=['t5_1_1', 't5_1_0'])
def model(request, tiny_config):
  overrides = {}
  if request.param == 't5_1_0':
    overrides = dict(mlp_activations=('relu',), logits_via_embedding=True)
  config = network.T5Config(**{**tiny_config.__dict__, **overrides})
  module = network.Transformer(config)
  return module, init_params(config, seed=0)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_k_positions_per_call_equal_full_pass(model, seed):
  module, params = model
  vocab = module.config.vocab_size
  rng = np.random.default_rng(seed)
  batch, length = 3, 17
  encoder_tokens = random_inputs(batch, 9, vocab, seed)
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32),
                                   rng.integers(1, vocab, (batch, length - 1))], 1)
  expected = full_forward_logits(module, params, encoder_tokens, decoder_inputs)

  encoded = encode(module, params, encoder_tokens)
  cache = init_cache(module, params, encoded, encoder_tokens, length + 8)
  step = step_fn(module)
  got, start = [], 0
  while start < length:  # random split of the sequence into chunks of 1..8
    k = min(int(rng.integers(1, 9)), length - start)
    logits, cache = step(params, cache, encoded, encoder_tokens,
                         decoder_inputs[:, start:start + k])
    got.append(logits)
    start += k
  np.testing.assert_array_equal(cache_lib.decode_position(cache), [length] * batch)
  np.testing.assert_allclose(np.concatenate(got, 1), expected, atol=TOL, rtol=0)


def test_rows_at_different_positions(model):
  module, params = model
  vocab = module.config.vocab_size
  rng = np.random.default_rng(7)
  batch, length, k = 4, 12, 3
  encoder_tokens = random_inputs(batch, 6, vocab, 7)
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32),
                                   rng.integers(1, vocab, (batch, length - 1))], 1)
  expected = full_forward_logits(module, params, encoder_tokens, decoder_inputs)
  encoded = encode(module, params, encoder_tokens)
  cache = init_cache(module, params, encoded, encoder_tokens, length + k)
  step = step_fn(module)
  # Fill every row up to its own position, then score k positions from there in one call.
  offsets = np.array([0, 2, 5, 9])
  _, cache = step(params, cache, encoded, encoder_tokens, decoder_inputs[:, :9])
  cache = cache_lib.rewind(cache, jnp.asarray(offsets))
  window = np.stack([decoder_inputs[b, o:o + k] for b, o in enumerate(offsets)])
  logits, cache = step(params, cache, encoded, encoder_tokens, window)
  for b, o in enumerate(offsets):
    np.testing.assert_allclose(logits[b], expected[b, o:o + k], atol=TOL, rtol=0)
  np.testing.assert_array_equal(cache_lib.decode_position(cache), offsets + k)


def test_logits_positions_give_those_rows_and_the_same_cache(model):
  module, params = model
  vocab = module.config.vocab_size
  batch, k = 3, 4
  encoder_tokens = random_inputs(batch, 7, vocab, 3)
  tokens = np.random.default_rng(3).integers(1, vocab, (batch, k)).astype(np.int32)
  encoded = encode(module, params, encoder_tokens)
  cache = init_cache(module, params, encoded, encoder_tokens, k + 2)
  full, full_cache = step_fn(module)(params, cache, encoded, encoder_tokens, tokens)
  positions = np.array([[3, 0], [1, 1], [0, 2]], np.int32)  # any rows, repeated, in any order
  picked, picked_cache = jax.jit(lambda p, c, e, t, x, r: cache_lib.decode_step(
      module, p, c, e, t, x, logits_positions=r))(params, cache, encoded, encoder_tokens,
                                                  tokens, positions)
  assert picked.shape == (batch, 2, vocab)
  np.testing.assert_allclose(picked, np.take_along_axis(np.asarray(full), positions[..., None], 1),
                             atol=TOL, rtol=0)
  jax.tree.map(np.testing.assert_array_equal, picked_cache, full_cache)


@pytest.mark.parametrize('seed', [0, 1])
def test_rewind_then_overwrite_equals_full_pass(model, seed):
  """Write K, rewind each row by its own amount, write other tokens: stale entries never leak."""
  module, params = model
  vocab = module.config.vocab_size
  rng = np.random.default_rng(seed)
  batch, prefix, k = 4, 5, 6
  encoder_tokens = random_inputs(batch, 8, vocab, seed)
  first = np.concatenate([np.zeros((batch, 1), np.int32),
                          rng.integers(1, vocab, (batch, prefix + k - 1))], 1)
  encoded = encode(module, params, encoder_tokens)
  cache = init_cache(module, params, encoded, encoder_tokens, prefix + 2 * k)
  step = step_fn(module)
  _, cache = step(params, cache, encoded, encoder_tokens, first)
  keep = prefix + rng.integers(0, k, batch)  # rewind row b to keep[b] positions
  cache = cache_lib.rewind(cache, jnp.asarray(keep))
  replacement = rng.integers(1, vocab, (batch, k))
  logits, _ = step(params, cache, encoded, encoder_tokens, replacement)
  for b in range(batch):
    final = np.concatenate([first[b, :keep[b]], replacement[b]])[None]
    expected = full_forward_logits(module, params, encoder_tokens[b:b + 1], final)
    np.testing.assert_allclose(logits[b], expected[0, keep[b]:], atol=TOL, rtol=0)


def test_cross_attention_is_cached_once(model):
  module, params = model
  encoder_tokens = random_inputs(2, 5, module.config.vocab_size, 3)
  encoded = encode(module, params, encoder_tokens)
  cache = init_cache(module, params, encoded, encoder_tokens, 8)
  cross = cache['decoder']['layers_0']['encoder_decoder_attention']
  heads, head_dim = module.config.num_heads, module.config.head_dim
  # Heads-major, like the self-attention cache: keys [b, h, d, k], values [b, h, k, d].
  assert cross['cached_cross_key'].shape == (2, heads, head_dim, 5)
  assert cross['cached_cross_value'].shape == (2, heads, 5, head_dim)
  # Later steps must not depend on the encoder output passed in: the cache is used.
  tokens = np.array([[0, 3], [0, 4]])
  with_real, _ = cache_lib.decode_step(module, params, cache, encoded, encoder_tokens, tokens)
  with_zeros, _ = cache_lib.decode_step(module, params, cache, jnp.zeros_like(encoded),
                                        encoder_tokens, tokens)
  np.testing.assert_array_equal(with_real, with_zeros)


def test_decoder_program_does_not_grow_with_the_batch(model):
  # Per-row cache writes are unrolled for small batches only: unrolled over a
  # 40,000-row batch they made one program take an hour to compile.
  module, params = model

  def program_size(batch: int) -> int:
    tokens = jax.ShapeDtypeStruct((batch, 6), jnp.int32)
    encoded = jax.eval_shape(lambda p, t: encode(module, p, t), params, tokens)
    cache = jax.eval_shape(lambda p, e, t: cache_lib.init_decode_cache(module, p, e, t, 16),
                           params, encoded, tokens)
    window = jax.ShapeDtypeStruct((batch, 3), jnp.int32)
    lowered = step_fn(module).lower(params, cache, encoded, tokens, window)
    return len(lowered.as_text())

  large = kernels.WRITE_ROWS_MAX_UNROLLED + 1
  # Equal up to the digits of the shapes.
  assert program_size(1024) < 1.1 * program_size(large)
  assert program_size(large) < 2 * program_size(1)
