"""The parameter tree has T5X's names, so T5X checkpoints load unchanged."""

import pytest
from conftest import init_params
from flax import traverse_util

from specdec_t5x import network


@pytest.mark.parametrize('variant', ['t5_1_1', 't5_1_0'])
def test_parameter_tree_has_t5x_names(variant, tiny_config):
  overrides = {}
  if variant == 't5_1_0':
    overrides = dict(mlp_activations=('relu',), logits_via_embedding=True)
  config = network.T5Config(**{**tiny_config.__dict__, **overrides})
  module, params = network.Transformer(config), init_params(config, seed=0)
  flat = set(traverse_util.flatten_dict(params, sep='/'))
  expected = {
      'token_embedder/embedding', 'encoder/relpos_bias/rel_embedding', 'encoder/encoder_norm/scale',
      'encoder/layers_0/pre_attention_layer_norm/scale', 'encoder/layers_0/attention/query/kernel',
      'encoder/layers_0/attention/out/kernel', 'encoder/layers_0/pre_mlp_layer_norm/scale',
      'decoder/relpos_bias/rel_embedding', 'decoder/decoder_norm/scale',
      'decoder/layers_1/pre_self_attention_layer_norm/scale',
      'decoder/layers_1/self_attention/key/kernel',
      'decoder/layers_1/pre_cross_attention_layer_norm/scale',
      'decoder/layers_1/encoder_decoder_attention/value/kernel',
      'decoder/layers_1/pre_mlp_layer_norm/scale'}
  assert expected <= flat
  if module.config.logits_via_embedding:
    assert 'decoder/logits_dense/kernel' not in flat
    assert 'decoder/layers_0/mlp/wi/kernel' in flat
  else:
    assert 'decoder/logits_dense/kernel' in flat
    assert {'decoder/layers_0/mlp/wi_0/kernel', 'decoder/layers_0/mlp/wi_1/kernel'} <= flat
  assert params['encoder']['relpos_bias']['rel_embedding'].shape == (module.config.num_heads, 32)
