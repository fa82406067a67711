"""The CPU-tuned kernels compute what the plain ops compute; switched off, results do not change."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, random_inputs

from specdec_t5x import cache as cache_lib
from specdec_t5x import network
from specdec_t5x.network import kernels


def test_matvecs_equals_einsum():
  rng = np.random.default_rng(0)
  rows, weights = rng.normal(size=(3, 40)), rng.normal(size=(40, 24))
  np.testing.assert_allclose(kernels.matvecs('i,io->o', rows, weights, axis=0),
                             jnp.einsum('ri,io->ro', rows, weights), rtol=1e-6, atol=1e-6)
  query, key = rng.normal(size=(2, 3, 5, 16)), rng.normal(size=(2, 3, 16, 11))  # [b,h,q,d]
  np.testing.assert_allclose(kernels.matvecs('bhd,bhdk->bhk', query, key, axis=2),
                             jnp.einsum('bhqd,bhdk->bhqk', query, key), rtol=1e-6, atol=1e-6)


def test_matvecs_rows_have_the_bits_of_one_row():
  rng = np.random.default_rng(1)
  rows = jnp.asarray(rng.normal(size=(4, 64)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)
  got = jax.jit(lambda x, w: kernels.matvecs('i,io->o', x, w, axis=0))(rows, weights)
  one_row = jax.jit(lambda x, w: jnp.einsum('i,io->o', x, w))
  for i in range(rows.shape[0]):
    np.testing.assert_array_equal(got[i], one_row(rows[i], weights))


@pytest.mark.parametrize('batch', [3, kernels.WRITE_ROWS_MAX_UNROLLED + 1])  # unrolled, looped
@pytest.mark.parametrize('axis', [2, 3])
def test_write_rows_equals_per_row_slice_writes(batch, axis):
  rng = np.random.default_rng(batch + axis)
  cache = rng.normal(size=(batch, 2, 9, 9)).astype(np.float32)
  update_shape = list(cache.shape)
  update_shape[axis] = 3
  update = rng.normal(size=update_shape).astype(np.float32)
  starts = rng.integers(0, 7, batch).astype(np.int32)
  got = jax.jit(functools.partial(kernels.write_rows, axis=axis))(cache, update, starts)
  expected = cache.copy()
  for row, start in enumerate(starts):
    index = [row, slice(None), slice(None), slice(None)]
    index[axis] = slice(start, start + 3)
    expected[tuple(index)] = update[row]
  np.testing.assert_array_equal(got, expected)


def _decode_step(module, params, encoder_tokens, decoder_inputs, k):
  """`(logits [B, k, V], number of products)` of a decode step of k positions after a prefix.

  Traced afresh, so the kernels' constants are read now.
  """
  encoded = cache_lib.encode(module, params, encoder_tokens)
  cache = cache_lib.init_decode_cache(module, params, encoded, encoder_tokens, 16)
  step = lambda p, c, t: cache_lib.decode_step(module, p, c, encoded, encoder_tokens, t)
  _, cache = jax.jit(step)(params, cache, decoder_inputs[:, :4])
  window = decoder_inputs[:, 4:4 + k]
  products = str(jax.make_jaxpr(step)(params, cache, window)).count('dot_general')
  return jax.jit(step)(params, cache, window)[0], products


@pytest.mark.parametrize('k', [1, 3, 8])
def test_decode_step_equals_the_plain_products(tiny_config, monkeypatch, k):
  module, params = network.Transformer(tiny_config), init_params(tiny_config, seed=0)
  vocab = tiny_config.vocab_size
  encoder_tokens = random_inputs(1, 7, vocab, 0)
  decoder_inputs = np.random.default_rng(0).integers(1, vocab, (1, 12)).astype(np.int32)
  tuned, tuned_products = _decode_step(module, params, encoder_tokens, decoder_inputs, k)
  # The constants are read at trace time, from `kernels`: 0 switches every trick off.
  monkeypatch.setattr(kernels, 'MATVEC_MAX_ROWS', 0)
  monkeypatch.setattr(kernels, 'ATTENTION_MATVEC_MAX_QUERIES', 0)
  plain, plain_products = _decode_step(module, params, encoder_tokens, decoder_inputs, k)
  np.testing.assert_allclose(tuned, plain, rtol=0, atol=1e-5)
  if k > 1:  # the switch took effect: one product per row instead of one per layer
    assert tuned_products > plain_products
