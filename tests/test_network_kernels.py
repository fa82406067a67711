"""The CPU-tuned kernels compute what the plain ops compute, and apply where `decode_kernels` says.

Both paths are forced on CPU ('cpu' and 'plain'): same logits, same cache,
same greedy tokens; 'auto' traces the CPU path here and the plain one when
the backend reports itself as a GPU or TPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb, random_inputs

from specdec_t5x import cache as cache_lib
from specdec_t5x import decoding, drafters, network
from specdec_t5x.network import kernels

CACHE_LENGTH = 16
PREFIX = 4
MAX_K = 8


def _config(decode_kernels: str, **overrides) -> network.T5Config:
  fields = dict(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=1,
                num_decoder_layers=1, head_dim=8, mlp_dim=32, dtype=jnp.float32,
                mlp_activations=('gelu', 'linear'), dropout_rate=0.0)
  return network.T5Config(**{**fields, **overrides}, decode_kernels=decode_kernels)


@pytest.fixture(scope='module')
def params():
  x = jnp.ones((1, 4), jnp.int32)
  return network.Transformer(_config('plain')).init(jax.random.PRNGKey(0), x, x, x,
                                                    enable_dropout=False)['params']


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


@pytest.mark.parametrize('decode_kernels', ['cpu', 'plain'])
@pytest.mark.parametrize('batch', [3, kernels.WRITE_ROWS_MAX_UNROLLED + 1])  # unrolled, looped
@pytest.mark.parametrize('axis', [2, 3])
def test_write_rows_equals_per_row_slice_writes(batch, axis, decode_kernels):
  rng = np.random.default_rng(batch + axis)
  cache = rng.normal(size=(batch, 2, 9, 9)).astype(np.float32)
  update_shape = list(cache.shape)
  update_shape[axis] = 3
  update = rng.normal(size=update_shape).astype(np.float32)
  starts = rng.integers(0, 7, batch).astype(np.int32)
  write = functools.partial(kernels.write_rows, axis=axis, decode_kernels=decode_kernels)
  got = jax.jit(write)(cache, update, starts)
  expected = cache.copy()
  for row, start in enumerate(starts):
    index = [row, slice(None), slice(None), slice(None)]
    index[axis] = slice(start, start + 3)
    expected[tuple(index)] = update[row]
  np.testing.assert_array_equal(got, expected)


def _steps_after_ragged_prefix(module, params, encoder_tokens, decoder_inputs):
  """`(logits, caches)` of decode steps of K = 1..MAX_K positions, each from the same cache.

  The cache holds a prefix of `PREFIX` positions, then is rewound to a
  different position per row, so that each row writes at its own offset.
  """
  batch = encoder_tokens.shape[0]
  encoded = cache_lib.encode(module, params, encoder_tokens)
  cache = cache_lib.init_decode_cache(module, params, encoded, encoder_tokens, CACHE_LENGTH)
  step = functools.partial(cache_lib.decode_step, module, params, encoded=encoded,
                           encoder_input_tokens=encoder_tokens)
  _, cache = step(cache=cache, decoder_input_tokens=decoder_inputs[:, :PREFIX])
  cache = cache_lib.rewind(cache, PREFIX - jnp.arange(batch) % PREFIX)
  outputs = [step(cache=cache, decoder_input_tokens=decoder_inputs[:, PREFIX:PREFIX + k])
             for k in range(1, MAX_K + 1)]
  return [logits for logits, _ in outputs], [cache for _, cache in outputs]


@pytest.mark.parametrize('batch', [1, 2, 3, 4, 5])
def test_decode_steps_agree_across_kernels(params, batch):
  """K = 1..8 positions: the CPU paths and the plain products give the same logits and cache."""
  encoder_tokens = random_inputs(batch, 7, 64, batch)
  decoder_inputs = np.random.default_rng(batch).integers(2, 64, (batch, PREFIX + MAX_K))
  results = {}
  for mode in ('cpu', 'plain'):
    run = jax.jit(functools.partial(_steps_after_ragged_prefix, network.Transformer(_config(mode))))
    results[mode] = run(params, encoder_tokens, decoder_inputs.astype(np.int32))
  (cpu_logits, cpu_caches), (plain_logits, plain_caches) = results['cpu'], results['plain']
  for k, (cpu, plain) in enumerate(zip(cpu_logits, plain_logits, strict=True), start=1):
    assert cpu.shape == (batch, k, 64)
    np.testing.assert_allclose(cpu, plain, rtol=1e-5, atol=1e-5, err_msg=f'K={k}')
  for cpu, plain in zip(jax.tree.leaves(cpu_caches), jax.tree.leaves(plain_caches), strict=True):
    np.testing.assert_allclose(cpu, plain, rtol=1e-5, atol=1e-5)


def _step_jaxpr(mode: str, params, batch: int = 2, k: int = 1) -> str:
  """The jaxpr of one decode step of `k` positions (by default an autoregressive step of 2 rows)."""
  module = network.Transformer(_config(mode))
  encoder_tokens = random_inputs(batch, 5, 64, 0)
  encoded = cache_lib.encode(module, params, encoder_tokens)
  cache = cache_lib.init_decode_cache(module, params, encoded, encoder_tokens, CACHE_LENGTH)
  step = lambda p, c, t: cache_lib.decode_step(module, p, c, encoded, encoder_tokens, t)
  return str(jax.make_jaxpr(step)(params, cache, jnp.ones((batch, k), jnp.int32)))


def test_auto_traces_the_cpu_paths_on_cpu(params):
  assert jax.default_backend() == 'cpu'
  cpu, plain, auto = (_step_jaxpr(mode, params) for mode in ('cpu', 'plain', 'auto'))
  assert auto == cpu
  # The paths differ: one product per row, per-row in-place writes vs a scatter.
  assert cpu.count('dot_general') > plain.count('dot_general')
  assert 'scatter' not in cpu and cpu.count('dynamic_update_slice') >= 4
  assert plain.count(' scatter[') == 2 * _config('plain').num_decoder_layers  # keys, values


@pytest.mark.parametrize('batch,k', [(1, 2), (1, 4), (2, 2)])
def test_verification_calls_use_the_plain_products(params, batch, k):
  """K >= 2 positions a row (speculative verification): no per-row products, per-row writes."""
  cpu, plain = (_step_jaxpr(mode, params, batch, k) for mode in ('cpu', 'plain'))
  assert cpu.count('dot_general') == plain.count('dot_general')
  assert 'scatter' not in cpu


@pytest.mark.parametrize('backend', ['gpu', 'tpu'])
def test_auto_traces_the_plain_products_elsewhere(params, monkeypatch, backend):
  plain = _step_jaxpr('plain', params)
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert _step_jaxpr('auto', params) == plain
  assert _step_jaxpr('cpu', params) != plain  # forcing the CPU paths still works there


def test_greedy_tokens_agree_across_kernels(params):
  encoder_tokens = random_inputs(3, 6, 64, 7)
  draft_params = perturb(params, 0.3, seed=1)
  tokens = {}
  for mode in ('cpu', 'plain'):
    target = network.Transformer(_config(mode))
    drafter = drafters.ModelDrafter(network.Transformer(_config(mode)), draft_params)
    tokens[mode, 'autoregressive'] = decoding.autoregressive_decode(
        target, params, encoder_tokens, max_decode_len=12).tokens
    spec = decoding.speculative_decode(target, params, drafter, encoder_tokens, gamma=3,
                                       max_decode_len=12)
    assert 0 < int(jnp.sum(spec.accepted)) < int(jnp.sum(spec.iterations)) * 3  # 0 < α < 1
    tokens[mode, 'speculative'] = spec.tokens
  reference = tokens['cpu', 'autoregressive']
  assert int(jnp.sum(reference > 1)) > 12  # rows decoded beyond a token or two
  for key, got in tokens.items():
    np.testing.assert_array_equal(got, reference, err_msg=str(key))


def test_a_bad_value_is_a_clear_error(params):
  with pytest.raises(ValueError, match=r"decode_kernels must be one of \('auto', 'cpu', 'plain'\)"):
    _config('gpu')
  with pytest.raises(ValueError, match='decode_kernels must be one of'):
    _config('plain').replace(decode_kernels='fast')
  with pytest.raises(ValueError, match="got 'CPU'"):
    kernels.uses_cpu_paths('CPU')
  dense = network.DenseGeneral(4, decode_kernels='tpu')  # a module built without a T5Config
  with pytest.raises(ValueError, match='decode_kernels must be one of'):
    dense.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
