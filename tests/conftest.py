"""Shared fixtures: small random T5 models in fp32 on CPU."""

import gc
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from specdec_t5x import network, paths  # noqa: E402

# Tests compile many small XLA programs; a persistent cache (outside git) makes reruns fast.
jax.config.update('jax_compilation_cache_dir', str(paths.cache_dir('jax_compilation_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def init_params(config: network.T5Config, seed: int):
  """Random parameters of `Transformer(config)`."""
  x = jnp.ones((1, 4), jnp.int32)
  return network.Transformer(config).init(jax.random.PRNGKey(seed), x, x, x,
                                          enable_dropout=False)['params']


def perturb(params, scale: float, seed: int):
  """`params` plus Gaussian noise of relative size `scale`: a draft with 0 < α < 1."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  noisy = [x + scale * jnp.std(x) * jax.random.normal(k, x.shape)
           for x, k in zip(leaves, keys, strict=True)]
  return jax.tree_util.tree_unflatten(treedef, noisy)


def random_inputs(batch: int, length: int, vocab: int, seed: int) -> np.ndarray:
  """`[batch, length]` token ids in [2, vocab) with ragged right padding (0)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab, (batch, length))
  for row in range(batch):
    tokens[row, rng.integers(1, length + 1):] = 0
  return tokens.astype(np.int32)


@pytest.fixture(autouse=True, scope='module')
def _free_compiled_programs():
  """Drops every compiled program after each test module.

  XLA:CPU maps each executable's code into memory in several regions. One
  process running the whole suite kept them all and passed Linux's
  vm.max_map_count (65530 regions) about halfway, where the next compile or
  cache read aborted the process (CI of stop 24, twice here; the count grew
  by ~7000 regions a minute early in the suite). Freeing them per module keeps it flat.
  """
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope='session')
def tiny_config():
  return network.config_from_preset('test_tiny')
