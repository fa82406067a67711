"""`cpu_products.product`: x @ w for a few rows, each row bitwise that of a one-row call;
`cpu_products.first_argmax` and `row_max`: the first maximum of each row, and its value.

It is the product of every dense layer of a float32 decode call on CPU, so the
network tests (test_network_kernels.py) and every decoding test run it too;
here it meets a float64 reference on awkward shapes, its row invariance and its
split across threads, and the fallback when the library cannot be built.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec_t5x.network import cpu_products, kernels

pytestmark = pytest.mark.skipif(not cpu_products.available(),
                                reason='no C++ compiler: the decoder uses XLA products')


def _operands(rows: int, k: int, n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(rows, k)), jnp.float32),
          jnp.asarray(rng.normal(size=(k, n)) / np.sqrt(k), jnp.float32))


@functools.partial(jax.jit, static_argnames='split_bytes')
def _product(x, w, split_bytes=cpu_products.SPLIT_BYTES):
  return cpu_products.product(x, w, split_bytes=split_bytes)


# Odd sizes: columns beyond the last 16 (n = 37, 1000), K not a multiple of 4 (k = 7, 130),
# more rows than one pass over w takes (17), split and unsplit.
@pytest.mark.parametrize('rows,k,n', [(1, 7, 37), (3, 64, 256), (5, 130, 1000), (8, 256, 768),
                                      (17, 48, 64)])
@pytest.mark.parametrize('split_bytes', [0, 1 << 40])
def test_product_matches_a_float64_reference(rows, k, n, split_bytes):
  x, w = _operands(rows, k, n, seed=rows + k)
  expected = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  np.testing.assert_allclose(_product(x, w, split_bytes=split_bytes), expected, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('k,n', [(64, 250), (256, 8192)])
def test_each_row_has_the_bits_of_a_one_row_call(k, n):
  x, w = _operands(12, k, n, seed=3)
  together = np.asarray(_product(x, w))
  split = np.asarray(_product(x, w, split_bytes=0))
  np.testing.assert_array_equal(split, together)
  for m in (0, 5, 11):  # first pass, inside it, second pass
    np.testing.assert_array_equal(together[m], np.asarray(_product(x[m:m + 1], w))[0])
  # The control: XLA's own product of several rows does not promise that.
  xla = np.asarray(jax.jit(jnp.dot)(x, w))
  np.testing.assert_allclose(together, xla, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('rows,k,n', [(1, 48, 8192), (2, 7, 37), (17, 130, 1000)])
@pytest.mark.parametrize('split_bytes', [0, 1 << 40])
def test_bfloat16_weights_are_the_float32_product_of_the_same_numbers(rows, k, n, split_bytes):
  x, w = _operands(rows, k, n, seed=rows + n)
  w16 = w.astype(jnp.bfloat16)
  # Widening bfloat16 to float32 is exact: the same products, summed in the same order.
  np.testing.assert_array_equal(_product(x, w16, split_bytes=split_bytes),
                                _product(x, w16.astype(jnp.float32), split_bytes=split_bytes))
  assert not np.array_equal(_product(x, w16), _product(x, w))  # the rounding is real


@pytest.mark.parametrize('rows,n', [(1, 8192), (3, 37)])
def test_int8_weights_are_the_float32_product_of_their_integers(rows, n):
  x, w = _operands(rows, 48, n, seed=rows)
  w8 = jnp.clip(jnp.round(w * 300), -127, 127).astype(jnp.int8)
  np.testing.assert_array_equal(_product(x, w8), _product(x, w8.astype(jnp.float32)))


def test_head_product_is_one_product_per_batch_row_and_head():
  rng = np.random.default_rng(4)
  query = jnp.asarray(rng.normal(size=(2, 3, 5, 16)), jnp.float32)  # [b, h, q, d]
  key = jnp.asarray(rng.normal(size=(2, 3, 16, 40)), jnp.float32)   # [b, h, d, length]
  got = np.asarray(jax.jit(cpu_products.head_product)(query, key))
  np.testing.assert_allclose(got, np.einsum('bhqd,bhdk->bhqk', np.asarray(query, np.float64),
                                            np.asarray(key, np.float64)), rtol=1e-5, atol=1e-5)
  # Each head's rows are those of its own one-row products.
  np.testing.assert_array_equal(got[1, 2, 3], np.asarray(_product(query[1, 2, 3:4], key[1, 2]))[0])


# Rows shorter than one 64-float step, a tail after it, and a vocabulary; values in a few
# levels so that most rows tie at their maximum (the first must win).
@pytest.mark.parametrize('shape', [(1, 1), (4, 17), (3, 64), (5, 130), (2, 3, 1000), (3, 8192)])
def test_first_argmax_is_numpys_argmax(shape):
  rng = np.random.default_rng(shape[-1])
  for levels in (2, 5, 1000):
    x = rng.integers(-levels, levels, size=shape).astype(np.float32)
    got = np.asarray(jax.jit(cpu_products.first_argmax)(x))
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
    assert got.dtype == np.int32 and got.shape == shape[:-1]


@pytest.mark.parametrize('shape', [(1, 1), (4, 17), (3, 64), (5, 130), (2, 3, 1000), (3, 8192)])
def test_row_max_is_numpys_max(shape):
  x = np.random.default_rng(shape[-1]).normal(size=shape).astype(np.float32)
  got = np.asarray(jax.jit(cpu_products.row_max)(x))
  np.testing.assert_array_equal(got, np.max(x, axis=-1))
  assert got.dtype == np.float32 and got.shape == shape[:-1]
  x = np.full((4, 140), -np.inf, np.float32)
  x[1, 5], x[2, 20], x[3, [7, 130]] = 0.0, np.nan, [np.inf, np.nan]
  np.testing.assert_array_equal(cpu_products.row_max(x), [-np.inf, 0.0, np.nan, np.nan])


def test_first_argmax_of_infinities_nan_and_under_vmap():
  x = np.full((4, 140), -np.inf, np.float32)
  x[1, 5] = 0.0
  x[2, [20, 139]] = np.nan  # a row with NaN gives its first NaN (in the vector part)
  x[3, [7, 130]] = [np.inf, np.nan]  # ... or in the tail, whatever the maximum
  np.testing.assert_array_equal(cpu_products.first_argmax(x), [0, 5, 20, 130])
  batched = np.random.default_rng(0).normal(size=(3, 2, 70)).astype(np.float32)
  np.testing.assert_array_equal(jax.vmap(cpu_products.first_argmax)(batched),
                                np.argmax(batched, axis=-1))
  with pytest.raises(ValueError, match='first_argmax takes float32 x'):
    cpu_products.first_argmax(jnp.ones((2, 3), jnp.bfloat16))
  with pytest.raises(ValueError, match=r'row_max takes float32 x \[\.\.\., V\] with V >= 1'):
    cpu_products.row_max(jnp.ones((2, 0), jnp.float32))


def test_gradients_are_those_of_the_plain_product():
  """Training PaSS embeddings differentiates through decode calls, so through the row products."""
  x, w = _operands(3, 16, 40, seed=5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  got = jax.jit(jax.grad(loss(cpu_products.product), argnums=(0, 1)))(x, w)
  expected = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, w)
  for g, e in zip(got, expected, strict=True):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_bad_operands_are_clear_errors():
  x, w = _operands(2, 8, 16)
  with pytest.raises(ValueError, match=r'x \[M, K\] and w \[K, N\], or x \[B, M, K\] and w '
                                       r'\[B, K, N\], got \(2, 8\) and \(16, 8\)'):
    cpu_products.product(x, w.T)
  with pytest.raises(ValueError, match=r'got \(1, 2, 8\) and \(2, 8, 16\)'):
    cpu_products.product(x[None], jnp.stack([w, w]))
  with pytest.raises(ValueError, match='float32 x and float32, bfloat16 or int8 w, got bfloat16'):
    cpu_products.product(x.astype(jnp.bfloat16), w)
  with pytest.raises(ValueError, match='got float32 and float16'):
    cpu_products.product(x, w.astype(jnp.float16))


def test_a_missing_compiler_is_a_clear_error():
  with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-c\\+\\+'"):
    cpu_products.build(compiler='no-such-c++')


def test_dense_layers_use_the_row_products_for_decode_calls_only(monkeypatch):
  assert kernels.dense_uses_cpu_products(8, jnp.float32, 'cpu')
  assert not kernels.dense_uses_cpu_products(cpu_products.MAX_ROWS + 1, jnp.float32, 'cpu')
  assert not kernels.dense_uses_cpu_products(8, jnp.bfloat16, 'cpu')
  for resolved in ('cpu_xla', 'plain', 'invariant'):
    assert not kernels.dense_uses_cpu_products(8, jnp.float32, resolved)
  # Training and encoding calls (many rows) resolve 'cpu' to 'cpu_xla'.
  assert kernels.resolve_decode_kernels('cpu', jnp.float32, decode=False) == 'cpu_xla'
  monkeypatch.setattr(cpu_products, 'available', lambda: False)  # no compiler: XLA's products
  assert not kernels.dense_uses_cpu_products(8, jnp.float32, 'cpu')
