"""Named presets: real T5 sizes, clear errors; `decode_kernels` is checked and reads back."""

import dataclasses
import json

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


def test_decode_kernels_defaults_to_auto_and_is_static():
  config = network.config_from_preset('test_tiny')
  assert config.decode_kernels == 'auto'
  assert 'auto' not in jax.tree.leaves(config)  # not a leaf: jit never traces it
  assert config.replace(decode_kernels='plain') != config  # a module of another program
  assert set(network.EXECUTION_FIELDS) <= {f.name for f in dataclasses.fields(network.T5Config)}


@pytest.mark.parametrize('value', ['gpu', '', None, 'Auto'])
def test_a_bad_decode_kernels_is_a_clear_error(value):
  known = r"\('auto', 'cpu', 'cpu_xla', 'plain', 'invariant'\)"
  with pytest.raises(ValueError, match=r'decode_kernels must be one of ' + known):
    network.config_from_preset('test_tiny', decode_kernels=value)


def test_a_record_without_decode_kernels_still_reads(tmp_path):
  """train_config.json written before the field existed reads back with 'auto'."""
  from specdec_t5x.drafters import registry

  model = {'dropout_rate': 0.0, 'dtype': 'float32', 'emb_dim': 16,
           'float32_attention_logits': False, 'head_dim': 16, 'logits_via_embedding': False,
           'mlp_activations': ['gelu', 'linear'], 'mlp_dim': 64, 'num_decoder_layers': 1,
           'num_encoder_layers': 1, 'num_heads': 1, 'vocab_size': 8192}
  (tmp_path / 'train_config.json').write_text(json.dumps({'model': model}))
  config = registry._config_beside(str(tmp_path / 'checkpoint_10'))
  assert config.decode_kernels == 'auto' and config.emb_dim == 16


def test_t5x_example_config_converts_with_the_default():
  from specdec_t5x import t5x_drafting

  @dataclasses.dataclass(frozen=True)
  class T5XExampleConfig:  # t5x.examples.t5.network.T5Config's fields (no decode_kernels)
    vocab_size: int = 64
    dtype: object = jnp.float32
    emb_dim: int = 16
    num_heads: int = 2
    num_encoder_layers: int = 1
    num_decoder_layers: int = 1
    head_dim: int = 8
    mlp_dim: int = 32
    mlp_activations: tuple = ('relu',)
    dropout_rate: float = 0.0
    logits_via_embedding: bool = False
    float32_attention_logits: bool = False

  assert t5x_drafting.t5_config_from(T5XExampleConfig()).decode_kernels == 'auto'
  forced = t5x_drafting.t5_config_from(T5XExampleConfig(), decode_kernels='plain')
  assert forced.decode_kernels == 'plain'
