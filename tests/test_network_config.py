"""Named presets: real T5 sizes, clear errors."""

import jax
import jax.numpy as jnp
import pytest

from specdec_t5x import network


def test_unknown_preset_is_a_clear_error():
  with pytest.raises(ValueError, match='unknown T5 preset'):
    network.config_from_preset('t5_1_1_huge')


@pytest.mark.parametrize('name', ['t5_1_1_small', 't5_1_1_xxl', 'cpu_target', 'cpu_small'])
def test_presets_have_real_sizes(name):
  config = network.config_from_preset(name)
  shapes = jax.eval_shape(
      lambda: network.Transformer(config).init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32),
                                               jnp.ones((1, 2), jnp.int32),
                                               jnp.ones((1, 2), jnp.int32),
                                               enable_dropout=False))['params']
  assert shapes['token_embedder']['embedding'].shape == (config.vocab_size, config.emb_dim)
  if name == 't5_1_1_xxl':
    assert shapes['decoder']['layers_23']['mlp']['wi_0']['kernel'].shape == (4096, 10240)
    assert config.num_heads == 64
