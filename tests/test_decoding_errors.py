"""Bad input raises a clear error at the Python boundary, never deep inside XLA."""

import jax
import numpy as np
import pytest
from conftest import init_params

from specdec_t5x import decoding, drafters, network


@pytest.fixture(scope='module')
def model():
  config = network.config_from_preset('test_tiny')
  return network.Transformer(config), init_params(config, seed=0)


GOOD = np.array([[5, 6, 7, 1]], np.int32)


@pytest.mark.parametrize('kwargs, message', [
    (dict(max_decode_len=0), 'max_decode_len must be an integer >= 1'),
    (dict(max_decode_len=2.5), 'max_decode_len must be an integer >= 1'),
    (dict(temperature=-0.1), 'temperature must be >= 0'),
    (dict(top_p=0.0), r'top_p must be in \(0, 1\]'),
    (dict(top_p=1.5), r'top_p must be in \(0, 1\]'),
    (dict(top_k=-1), 'top_k must be a non-negative integer'),
    (dict(eos_id=64), r'eos_id must be a token id in \[0, 64\)'),
])
def test_bad_settings(model, kwargs, message):
  module, params = model
  settings = dict(max_decode_len=4) | kwargs
  with pytest.raises(ValueError, match=message):
    decoding.autoregressive_decode(module, params, GOOD, **settings)
  with pytest.raises(ValueError, match=message):
    decoding.speculative_decode(module, params, drafters.ModelDrafter(module, params), GOOD,
                                gamma=2, **settings)


@pytest.mark.parametrize('tokens, message', [
    (np.array([[5, 64, 1]]), r'outside the vocabulary \[0, 64\)'),
    (np.array([[5, -1, 1]]), 'outside the vocabulary'),
    (np.array([5, 6, 1]), r'shape \[batch, length\]'),
    (np.zeros((2, 0), np.int32), r'shape \[batch, length\]'),
    (np.array([[0.5, 1.0]]), 'integer token ids'),
])
def test_bad_encoder_inputs(model, tokens, message):
  module, params = model
  with pytest.raises(ValueError, match=message):
    decoding.autoregressive_decode(module, params, tokens, max_decode_len=4)


@pytest.mark.parametrize('gamma', [0, -2, 1.5])
def test_gamma_below_one(model, gamma):
  module, params = model
  with pytest.raises(ValueError, match='gamma must be an integer >= 1'):
    decoding.speculative_decode(module, params, drafters.ModelDrafter(module, params), GOOD,
                                gamma=gamma, max_decode_len=4)


def test_draft_with_another_vocabulary(model):
  module, params = model
  other = network.config_from_preset('test_tiny', vocab_size=512)
  drafter = drafters.ModelDrafter(network.Transformer(other), init_params(other, seed=1))
  with pytest.raises(ValueError, match='vocabulary mismatch'):
    decoding.speculative_decode(module, params, drafter, GOOD, gamma=2, max_decode_len=4)


def test_the_default_key_first_made_under_a_trace_is_not_a_tracer(model):
  """T5X calls the decoder inside pjit: the cached default key must outlive that trace."""
  module, params = model
  decoding._zero_key.cache_clear()
  inside = jax.jit(lambda tokens: decoding.autoregressive_decode(
      module, params, tokens, max_decode_len=3, temperature=1.0).tokens)(GOOD)
  outside = decoding.autoregressive_decode(module, params, GOOD, max_decode_len=3,
                                           temperature=1.0).tokens
  np.testing.assert_array_equal(inside, outside)
