"""The sampling transforms against a plain NumPy reference."""

import jax
import numpy as np
import pytest
import scipy.stats

from specdec_t5x import sampling


def reference_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float):
  """Temperature, then top-k (ties kept), then top-p (smallest prefix reaching top_p)."""
  z = logits.astype(np.float64) / temperature
  if 0 < top_k < len(z):
    z = np.where(z < np.sort(z)[::-1][top_k - 1], -np.inf, z)
  if top_p < 1.0:
    order = np.argsort(-z, kind='stable')
    probs = np.exp(z[order] - z[order][0])
    probs /= probs.sum()
    keep = np.cumsum(probs) - probs < top_p
    z = np.where(z < z[order][keep].min(), -np.inf, z)
  e = np.exp(z - z.max())
  return e / e.sum()


@pytest.mark.parametrize('temperature, top_k, top_p', [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 3, 1.0), (1.0, 0, 0.5), (0.8, 5, 0.9), (1.0, 1, 1.0),
    (1.0, 0, 0.01), (2.0, 10, 0.3)])
def test_probabilities_match_reference(temperature, top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(6, 12)).astype(np.float32) * 2
  config = sampling.make_sampling_config(temperature, top_k, top_p)
  got = np.asarray(sampling.probabilities(logits, config))
  for row, expected in zip(got, logits, strict=True):
    np.testing.assert_allclose(row, reference_probs(expected, temperature, top_k, top_p),
                               atol=1e-6)


def test_greedy_is_one_hot_argmax():
  logits = np.random.default_rng(1).normal(size=(3, 5, 9)).astype(np.float32)
  config = sampling.make_sampling_config(0.0)
  probs = np.asarray(sampling.probabilities(logits, config))
  np.testing.assert_array_equal(probs.argmax(-1), logits.argmax(-1))
  np.testing.assert_array_equal(probs.sum(-1), 1.0)
  np.testing.assert_array_equal(sampling.sample(jax.random.PRNGKey(0), logits, config),
                                logits.argmax(-1))


def test_top_k_keeps_ties():
  logits = np.array([[3.0, 1.0, 3.0, 0.0]], np.float32)
  probs = sampling.probabilities(logits, sampling.make_sampling_config(1.0, top_k=1))
  np.testing.assert_allclose(probs, [[0.5, 0.0, 0.5, 0.0]], atol=1e-7)


def test_sample_follows_probabilities():
  probs = np.array([0.1, 0.6, 0.0, 0.3], np.float32)
  draws = sampling.sample_from_probabilities(jax.random.PRNGKey(3),
                                             np.broadcast_to(probs, (20000, 4)))
  counts = np.bincount(np.asarray(draws), minlength=4) / 20000
  np.testing.assert_allclose(counts, probs, atol=0.015)
  assert counts[2] == 0


@pytest.mark.parametrize('cpu_kernel', [True, False])
def test_first_argmax_is_the_first_maximum_like_numpy(cpu_kernel, monkeypatch):
  if not cpu_kernel:  # XLA's reductions, as on GPU/TPU or without a C++ compiler
    monkeypatch.setattr(sampling.cpu_products, 'available', lambda: False)
  elif not (jax.default_backend() == 'cpu' and sampling.cpu_products.available()):
    pytest.skip('the C++ argmax runs on CPU with a C++ compiler only')
  rng = np.random.default_rng(3)
  logits = rng.integers(0, 4, size=(50, 3, 17)).astype(np.float32)  # many exact ties
  got = np.asarray(sampling.first_argmax(logits))
  np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
  assert got.dtype == np.int32
  wide = rng.integers(0, 9, size=(6, 8192)).astype(np.float32)  # a vocabulary's worth
  np.testing.assert_array_equal(jax.jit(sampling.first_argmax)(wide), np.argmax(wide, axis=-1))
  infinite = np.array([[1.0, np.inf, 5.0, np.inf], [-np.inf, -np.inf, -np.inf, -np.inf]],
                      np.float32)
  # As jnp.argmax: the first +inf wins; a row of -inf gives index 0.
  np.testing.assert_array_equal(sampling.first_argmax(infinite), [1, 0])


@pytest.mark.parametrize('cpu_kernel', [True, False])
def test_softmax_is_jax_softmax(cpu_kernel, monkeypatch):
  if not cpu_kernel:
    monkeypatch.setattr(sampling.cpu_products, 'available', lambda: False)
  logits = np.random.default_rng(4).normal(scale=5, size=(3, 2, 8192)).astype(np.float32)
  logits[0, 0, :4000] = -np.inf  # top-k / top-p leave -inf behind
  got = np.asarray(jax.jit(sampling.softmax)(logits))
  np.testing.assert_allclose(got, jax.nn.softmax(logits, axis=-1), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
  assert (got[0, 0, :4000] == 0).all()


def test_greedy_sample_and_probabilities_use_the_first_maximum():
  logits = np.array([[0.0, 2.0, 2.0, 1.0]], np.float32)
  config = sampling.make_sampling_config(0.0)
  assert int(sampling.sample(jax.random.PRNGKey(0), logits, config)[0]) == 1
  np.testing.assert_array_equal(sampling.probabilities(logits, config), [[0, 1, 0, 0]])


@pytest.mark.parametrize('vocab', [4, 130, 300, 8192])
def test_sample_follows_probabilities_across_blocks(vocab):
  # Up to 12 tokens of mass scattered over SAMPLING_BLOCK's blocks (the last token and the
  # rest 0), tested by a chi-square goodness of fit at level 1e-3: fixed seed, 40000 draws.
  rng = np.random.default_rng(vocab)
  support = np.sort(rng.choice(vocab - 1, size=min(12, vocab - 1), replace=False))
  probs = np.zeros(vocab, np.float32)
  probs[support] = rng.random(support.size) + 0.05
  draws = np.asarray(sampling.sample_from_probabilities(
      jax.random.PRNGKey(vocab), np.broadcast_to(probs, (40000, vocab))))
  assert set(np.unique(draws)) <= set(support)
  observed = np.bincount(draws, minlength=vocab)[support]
  expected = probs[support].astype(np.float64) / probs.sum(dtype=np.float64) * draws.size
  assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


def test_sample_with_a_single_positive_token_always_returns_it():
  probs = np.zeros((64, 8192), np.float32)
  probs[:, 5000] = 1e-30  # unnormalised and tiny: still the only choice
  draws = sampling.sample_from_probabilities(jax.random.PRNGKey(0), probs)
  np.testing.assert_array_equal(draws, 5000)
