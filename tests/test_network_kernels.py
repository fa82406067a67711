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
from specdec_t5x.network import cpu_products, kernels

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
  for mode in ('cpu', 'cpu_xla', 'plain'):
    run = jax.jit(functools.partial(_steps_after_ragged_prefix, network.Transformer(_config(mode))))
    results[mode] = run(params, encoder_tokens, decoder_inputs.astype(np.int32))
  plain_logits, plain_caches = results['plain']
  for mode in ('cpu', 'cpu_xla'):
    logits, caches = results[mode]
    for k, (got, plain) in enumerate(zip(logits, plain_logits, strict=True), start=1):
      assert got.shape == (batch, k, 64)
      np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5, err_msg=f'{mode} K={k}')
    for got, plain in zip(jax.tree.leaves(caches), jax.tree.leaves(plain_caches), strict=True):
      np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5, err_msg=mode)


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
  cpu, cpu_xla, plain, auto = (_step_jaxpr(mode, params)
                               for mode in ('cpu', 'cpu_xla', 'plain', 'auto'))
  assert auto == cpu
  # The dense layers of a decode call are row products (the custom call) under 'cpu', one
  # product per row under 'cpu_xla'; both write rows in place instead of a scatter.
  # attention q/k/v/out, cross-attention q/out, mlp wi_0/wi_1/wo, logits, and the self-attention's
  # two products over the cache (without a C++ compiler 'cpu' falls back to 'cpu_xla')
  row_products = 12 if cpu_products.available() else 0
  assert cpu.count('ffi_call') == row_products and 'ffi_call' not in cpu_xla
  assert cpu_xla.count('dot_general') > plain.count('dot_general')
  for program in (cpu, cpu_xla):
    assert 'scatter' not in program and program.count('dynamic_update_slice') >= 4
  assert plain.count(' scatter[') == 2 * _config('plain').num_decoder_layers  # keys, values


@pytest.mark.parametrize('batch,k', [(1, 2), (1, 4), (2, 2)])
def test_verification_calls_use_row_products_or_the_plain_products(params, batch, k):
  """K >= 2 positions a row (speculative verification): row products under 'cpu', XLA's
  plain products under 'cpu_xla' (its per-row products are for one position), no scatter."""
  cpu, cpu_xla, plain = (_step_jaxpr(mode, params, batch, k) for mode in ('cpu', 'cpu_xla',
                                                                           'plain'))
  assert cpu.count('ffi_call') == (12 if cpu_products.available() else 0)
  assert cpu_xla.count('dot_general') == plain.count('dot_general')
  assert 'scatter' not in cpu and 'scatter' not in cpu_xla


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
  for mode in ('cpu', 'cpu_xla', 'plain'):
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
  known = r"\('auto', 'cpu', 'cpu_xla', 'plain', 'invariant'\)"
  with pytest.raises(ValueError, match=r'decode_kernels must be one of ' + known):
    _config('gpu')
  with pytest.raises(ValueError, match='decode_kernels must be one of'):
    _config('plain').replace(decode_kernels='fast')
  with pytest.raises(ValueError, match="got 'CPU'"):
    kernels.uses_cpu_paths('CPU')
  dense = network.DenseGeneral(4, decode_kernels='tpu')  # a module built without a T5Config
  with pytest.raises(ValueError, match='decode_kernels must be one of'):
    dense.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))


# ------------------------------------------------------------------------------
# 'invariant': each position of a K-position call has the bits of a one-position step.
# ------------------------------------------------------------------------------

# Sizes at which XLA:CPU's kernels and reductions change with the number of rows.
INVARIANT_FIELDS = dict(vocab_size=512, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=512,
                        num_encoder_layers=1, num_decoder_layers=2)


@functools.cache
def _invariance_programs(decode_kernels: str, dtype_name: str):
  """(module, params, jitted encode + cache, jitted decode step) of the config above."""
  dtype = jnp.dtype(dtype_name)
  module = network.Transformer(_config(decode_kernels, **INVARIANT_FIELDS, dtype=dtype))
  x = jnp.ones((1, 4), jnp.int32)
  params = module.init(jax.random.PRNGKey(3), x, x, x, enable_dropout=False)['params']

  def start(params, encoder_tokens):
    encoded = cache_lib.encode(module, params, encoder_tokens)
    return encoded, cache_lib.init_decode_cache(module, params, encoded, encoder_tokens,
                                                CACHE_LENGTH)

  step = lambda params, cache, encoded, encoder_tokens, tokens: cache_lib.decode_step(
      module, params, cache, encoded, encoder_tokens, tokens)
  return module, params, jax.jit(start), jax.jit(step)


def position_logits(decode_kernels: str, dtype_name: str, batch: int, k: int):
  """Logits `[batch, k, vocab]` of one k-position call, and of k one-position steps.

  Both start from the same cache: a prefix written one position at a time, each
  row rewound to its own length.
  """
  _, params, start, step = _invariance_programs(decode_kernels, dtype_name)
  encoder_tokens = random_inputs(batch, 9, 512, batch + k)
  tokens = np.random.default_rng(k).integers(2, 512, (batch, PREFIX + k)).astype(np.int32)
  encoded, cache = start(params, encoder_tokens)
  for i in range(PREFIX):
    _, cache = step(params, cache, encoded, encoder_tokens, tokens[:, i:i + 1])
  cache = cache_lib.rewind(cache, PREFIX - jnp.arange(batch) % 2)
  positions = cache_lib.decode_position(cache)
  rows = jnp.arange(batch)[:, None]
  block = tokens[rows, positions[:, None] + jnp.arange(k)]
  call, _ = step(params, cache, encoded, encoder_tokens, block)
  steps = []
  for j in range(k):
    logits, cache = step(params, cache, encoded, encoder_tokens, block[:, j:j + 1])
    steps.append(logits)
  return np.asarray(call, np.float32), np.asarray(jnp.concatenate(steps, 1), np.float32)


# bfloat16 through 'auto' (its default there), float32 through the explicit switch.
@pytest.mark.parametrize('decode_kernels,dtype_name', [('auto', 'bfloat16'),
                                                       ('invariant', 'float32')])
@pytest.mark.parametrize('batch,k', [(1, 8), (3, 5), pytest.param(1, 2, marks=pytest.mark.slow),
                                     pytest.param(8, 3, marks=pytest.mark.slow)])
def test_invariant_positions_have_the_bits_of_one_position_steps(decode_kernels, dtype_name,
                                                                 batch, k):
  call, steps = position_logits(decode_kernels, dtype_name, batch, k)
  np.testing.assert_array_equal(call, steps)


@pytest.mark.parametrize('dtype_name', ['bfloat16', 'float32'])
def test_the_float32_tuned_kernels_are_not_position_invariant(dtype_name):
  """The control: the same comparison fails for 'cpu' (so the test above can fail)."""
  call, steps = position_logits('cpu', dtype_name, 3, 5)
  assert np.any(call != steps)
  np.testing.assert_allclose(call, steps, atol=0.1 if dtype_name == 'bfloat16' else 1e-4)


@pytest.mark.parametrize('backend,dtype_name,expected', [
    ('cpu', 'bfloat16', 'invariant'), ('cpu', 'float32', 'cpu'), ('gpu', 'bfloat16', 'plain'),
    ('tpu', 'float32', 'plain')])
def test_auto_is_invariant_for_bfloat16_on_cpu(monkeypatch, backend, dtype_name, expected):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert kernels.resolve_decode_kernels('auto', dtype_name, decode=True) == expected
  # Training and encoding never take the per-position paths, nor the row products.
  assert kernels.resolve_decode_kernels('invariant', dtype_name, decode=False) == (
      'cpu_xla' if backend == 'cpu' else 'plain')
  assert kernels.resolve_decode_kernels('cpu', dtype_name, decode=False) == 'cpu_xla'
  assert kernels.resolve_decode_kernels('invariant', dtype_name, decode=True) == 'invariant'


def test_an_invariant_call_beyond_its_positions_is_a_clear_error():
  module, params, start, _ = _invariance_programs('invariant', 'float32')
  encoder_tokens = random_inputs(1, 5, 512, 0)
  encoded, cache = start(params, encoder_tokens)
  too_many = jnp.ones((1, kernels.INVARIANT_MAX_POSITIONS + 1), jnp.int32)
  with pytest.raises(ValueError, match='INVARIANT_MAX_POSITIONS = 16 positions, got 17'):
    cache_lib.decode_step(module, params, cache, encoded, encoder_tokens, too_many)


def test_per_token_embedding_lookups_equal_the_gather():
  embed = network.Embed(num_embeddings=50, features=6)
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 50, (3, 5)), jnp.int32)
  variables = embed.init(jax.random.PRNGKey(0), ids)
  gathered = embed.apply(variables, ids)
  sliced = jax.jit(lambda v, t: embed.apply(v, t, per_token=True))(variables, ids)
  assert sliced.shape == (3, 5, 6)
  np.testing.assert_array_equal(sliced, gathered)
  assert kernels.embeds_per_token(kernels.EMBED_SLICES_MAX_TOKENS, 'cpu')
  assert not kernels.embeds_per_token(kernels.EMBED_SLICES_MAX_TOKENS + 1, 'cpu')
  assert not kernels.embeds_per_token(2, 'plain')
