"""configs/sweep_miniature.json on tiny random checkpoints and synthetic inputs (a test helper).

The miniature config's models are replaced by random T5X checkpoints written to a
directory of the test's (a target, a perturbed copy of it as a good draft, a
smaller random model as a poor one) and its task by synthetic inputs, so the
sweep tests need neither the trained family nor the data.
"""

import json
import pathlib

import jax
import numpy as np

from specdec_t5x import checkpoints, network, paths

MINIATURE_CONFIG = paths.repo_root() / 'configs' / 'sweep_miniature.json'
TARGET_PRESET = 'test_tiny'
# A draft that shares nothing with the target but its vocabulary: α near chance.
SMALL_OVERRIDES = dict(emb_dim=16, num_heads=1, num_encoder_layers=1, num_decoder_layers=1,
                       head_dim=16, mlp_dim=32)


def random_params(config: network.T5Config, seed: int) -> dict:
  """Weights ~ N(0, 1/fan_in), norm scales 1, drawn with NumPy: no XLA compilation."""
  tokens = np.ones((1, 4), np.int32)
  shapes = jax.eval_shape(lambda: network.Transformer(config).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False))['params']
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == 'scale':
      return np.ones(leaf.shape, np.float32)
    return (rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0])).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def perturbed(params: dict, scale: float, seed: int) -> dict:
  """`params` plus noise of relative size `scale`: a draft with 0 < α < 1."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: (x + scale * x.std() * rng.standard_normal(x.shape)).astype(np.float32), params)


def write_models(root: pathlib.Path) -> dict:
  """Random checkpoints for the miniature config's models; returns their `models` entries."""
  target = random_params(network.config_from_preset(TARGET_PRESET), seed=0)
  small_config = network.config_from_preset(TARGET_PRESET, **SMALL_OVERRIDES)
  params = {'target': target, 'large': perturbed(target, 0.02, seed=1),
            'small': random_params(small_config, seed=2)}
  entries = {}
  for name, tree in params.items():
    checkpoints.save_t5x_checkpoint(tree, root / name, step=1)
    entries[name] = {'checkpoint': str(root / name), 'preset': TARGET_PRESET}
  entries['small']['overrides'] = SMALL_OVERRIDES
  return entries


def miniature_config_dict(model_root: pathlib.Path) -> dict:
  """The miniature config's JSON with models written under `model_root`, synthetic inputs."""
  raw = json.loads(MINIATURE_CONFIG.read_text())
  models = write_models(model_root)
  assert set(raw['models']) == set(models), 'the miniature config names other models'
  raw['models'] = models
  vocab = network.config_from_preset(TARGET_PRESET).vocab_size
  for task in raw['tasks'].values():
    for key in ('seqio_task', 'split'):
      task.pop(key, None)
    task['synthetic'] = {'length': 10, 'vocab_size': vocab}
  return raw
