"""Unigram and bigram drafters: smoothing, counts files, and exact speculative decoding.

Counting n-grams is training's (tests/test_training_ngram_counts.py); the
counts here are written out plainly by `counts_of`.
"""

import functools

import jax
import numpy as np
import pytest
import scipy.sparse
import test_speculative_distribution as distribution
from conftest import random_inputs
from test_speculative_greedy import MAX_LEN, assert_same
from test_speculative_greedy import models as greedy_models

from specdec_t5x import adaptive, decoding, sampling
from specdec_t5x.drafters import ngram

# ------------------------------------------------------------------------------
# Smoothing, files.
# ------------------------------------------------------------------------------


def counts_of(rows, vocab_size: int, eos_id: int = 1) -> ngram.NgramCounts:
  """The counts of token rows, each up to its first EOS (kept) or padding 0 (dropped)."""
  unigram = np.zeros(vocab_size, np.int64)
  bigram = np.zeros((vocab_size, vocab_size), np.int64)
  for row in np.asarray(rows):
    previous = ngram.BOS_ID
    for token in row:
      if token == ngram.PAD_ID:
        break
      unigram[token] += 1
      bigram[previous, token] += 1
      previous = token
      if token == eos_id:
        break
  return ngram.NgramCounts(vocab_size=vocab_size, unigram=unigram,
                           bigram=scipy.sparse.csr_matrix(bigram),
                           num_sequences=int(np.sum(np.asarray(rows)[:, 0] != 0)))


def random_counts(vocab: int, seed: int, num_sequences: int = 300, length: int = 12):
  rng = np.random.default_rng(seed)
  # Skewed, so that rows and the unigram are far from uniform.
  tokens = rng.choice(np.arange(1, vocab), size=(num_sequences, length),
                      p=np.arange(vocab - 1, 0, -1) / np.sum(np.arange(vocab - 1, 0, -1)))
  return counts_of(tokens.astype(np.int32), vocab)


@pytest.mark.parametrize('smoothing', [0.01, 1.0])
def test_drafters_give_the_add_k_estimates(smoothing):
  counts = random_counts(vocab=40, seed=0)
  vocab = counts.vocab_size
  unigram = ngram.UnigramDrafter.from_counts(counts, smoothing)
  expected = (counts.unigram + smoothing) / (counts.unigram.sum() + smoothing * vocab)
  np.testing.assert_allclose(np.exp(unigram.log_probs), expected, rtol=1e-5)
  bigram = ngram.BigramDrafter.from_counts(counts, smoothing)
  dense = counts.bigram.toarray()
  expected = (dense + smoothing) / (dense.sum(1, keepdims=True) + smoothing * vocab)
  previous = np.arange(vocab, dtype=np.int32)
  np.testing.assert_allclose(np.exp(bigram.next_log_probs(previous)), expected, rtol=1e-5)
  # An id the drafter does not know (a target with a larger padded vocabulary) gets uniform q.
  np.testing.assert_allclose(np.exp(bigram.next_log_probs(np.array([vocab + 3]))), 1 / vocab,
                             rtol=1e-5)


def test_counts_file_round_trip_and_vocabulary_check(tmp_path):
  counts = random_counts(vocab=40, seed=1)
  path = ngram.save_counts(tmp_path / 'counts.npz', counts)
  assert path.stat().st_size < 20_000
  loaded = ngram.load_counts(path, vocab_size=40)
  np.testing.assert_array_equal(loaded.unigram, counts.unigram)
  assert (loaded.bigram != counts.bigram).nnz == 0
  assert loaded.num_sequences == counts.num_sequences
  # Padding to the same multiple of 128 is the same vocabulary (T5's 32100 vs 32128).
  ngram.load_counts(path, vocab_size=64)
  with pytest.raises(ValueError, match='another vocabulary'):
    ngram.load_counts(path, vocab_size=300)
  with pytest.raises(FileNotFoundError):
    ngram.load_counts(tmp_path / 'missing.npz')
  np.savez(tmp_path / 'other.npz', x=np.zeros(3))
  with pytest.raises(ValueError, match='not an n-gram counts file'):
    ngram.load_counts(tmp_path / 'other.npz')
  with pytest.raises(ValueError, match='smoothing'):
    ngram.UnigramDrafter.from_counts(counts, smoothing=0.0)
  unigram, bigram = ngram.load_drafters(path, vocab_size=40, smoothing=0.5)
  np.testing.assert_array_equal(unigram.log_probs,
                                ngram.UnigramDrafter.from_counts(counts, 0.5).log_probs)
  assert float(bigram.smoothing) == 0.5 and bigram.vocab_size == 40


def test_drafter_for_another_vocabulary_is_refused():
  module, target, _ = greedy_models()
  drafter = ngram.BigramDrafter.from_counts(random_counts(vocab=300, seed=2))
  with pytest.raises(ValueError, match='vocabulary mismatch'):
    decoding.speculative_decode(module, target, drafter, random_inputs(2, 5, 64, 0), gamma=2,
                                max_decode_len=MAX_LEN)


# ------------------------------------------------------------------------------
# Greedy: equal to autoregressive decoding, token for token.
# ------------------------------------------------------------------------------


@functools.cache
def greedy_drafters():
  """Drafters counted from the target's own greedy outputs on other inputs, so 0 < α < 1."""
  module, target, _ = greedy_models()
  prompts = random_inputs(64, 9, module.config.vocab_size, seed=99)
  outputs = decoding.autoregressive_decode(module, target, prompts, max_decode_len=MAX_LEN)
  counts = counts_of(outputs.tokens, module.config.vocab_size)
  return {'unigram': ngram.UnigramDrafter.from_counts(counts),
          'bigram': ngram.BigramDrafter.from_counts(counts)}


def decode_both(batch, gamma, kind, max_len=MAX_LEN, eos_id=1, seed=0):
  module, target, _ = greedy_models()
  tokens = random_inputs(batch, 9, module.config.vocab_size, seed)
  expected = decoding.autoregressive_decode(module, target, tokens, max_decode_len=max_len,
                                            eos_id=eos_id)
  got = decoding.speculative_decode(module, target, greedy_drafters()[kind], tokens,
                                    gamma=gamma, max_decode_len=max_len, eos_id=eos_id)
  return expected, got


@pytest.mark.parametrize('kind', ['unigram', 'bigram'])
@pytest.mark.parametrize('batch,gamma', [(1, 3), (8, 1), (8, 5)])
def test_greedy_equals_autoregressive(kind, batch, gamma):
  expected, got = decode_both(batch, gamma, kind)
  assert_same(expected, got)
  lengths, iterations = np.asarray(got.lengths), np.asarray(got.iterations)
  assert np.all(iterations >= np.ceil(lengths / (gamma + 1))) and np.all(iterations <= lengths)


@pytest.mark.parametrize('kind', ['unigram', 'bigram'])
def test_greedy_auto_gamma_equals_autoregressive(kind):
  """gamma='auto' with an n-gram draft: γ switches, to plain steps and back through probes."""
  module, target, _ = greedy_models()
  tokens = random_inputs(4, 9, module.config.vocab_size, 2)
  expected = decoding.autoregressive_decode(module, target, tokens, max_decode_len=MAX_LEN)
  profile = adaptive.CostProfile((1.0, 1.45, 1.6, 1.7, 1.95))  # the prior α = 0.5 speculates
  got = decoding.speculative_decode(module, target, greedy_drafters()[kind], tokens,
                                    gamma='auto', max_gamma=4, cost_profile=profile,
                                    max_decode_len=MAX_LEN,
                                    auto_settings=dict(probe_every=2, memory=8.0))
  assert_same(expected, got)
  counts = np.asarray(got.gamma_iterations).sum(axis=0)
  assert counts[0] > 0 and counts[1:].sum() > 0, counts  # both plain steps and speculation


def test_bigram_beats_unigram_on_the_targets_own_outputs():
  betas = {kind: float(np.mean(decode_both(8, 5, kind)[1].beta_mean))
           for kind in ('unigram', 'bigram')}
  assert 0.0 < betas['unigram'] < betas['bigram'] < 1.0


@pytest.mark.parametrize('kind', ['unigram', 'bigram'])
def test_eos_and_max_len_inside_a_block(kind):
  expected, _ = decode_both(8, 5, kind)
  tokens = np.asarray(expected.tokens)
  for eos_id in sorted({int(t) for t in tokens[:, 2:12].ravel() if t > 1})[:4]:
    assert_same(*decode_both(8, 5, kind, eos_id=eos_id))
  expected, got = decode_both(8, 5, kind, max_len=2)
  assert_same(expected, got)


# ------------------------------------------------------------------------------
# Sampling: the target's exact law (the harness of test_speculative_distribution).
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', ['unigram', 'bigram'])
@pytest.mark.parametrize('settings', [distribution.SETTINGS[0], distribution.SETTINGS[4]],
                         ids=['temperature1', 'temperature0.7-topk5-topp0.9'])
def test_speculative_sampling_matches_target_law(kind, settings):
  module, target, _ = distribution.models()
  counts = random_counts(vocab=distribution.VOCAB, seed=3)
  drafter = {'unigram': ngram.UnigramDrafter,
             'bigram': ngram.BigramDrafter}[kind].from_counts(counts, smoothing=0.5)
  prompts = np.repeat(distribution.PROMPT, distribution.NUM_SAMPLES, 0)
  out = decoding.speculative_decode(module, target, drafter, prompts, gamma=distribution.GAMMA,
                                    max_decode_len=distribution.LENGTH, eos_id=distribution.EOS,
                                    rng=jax.random.PRNGKey(5), **settings)
  # Rejections (and so the residual rule) are exercised.
  assert 0.05 < float(np.mean(out.beta_mean)) < 0.95
  samples = distribution.observed_sequences(out.tokens, out.lengths)
  pvalue = distribution.chi_square_pvalue(samples, distribution.exact_law(settings))
  assert pvalue > distribution.SIGNIFICANCE


def test_draft_probabilities_are_the_transformed_q():
  """What propose returns as q is the sampling transform of the bigram row it drew from."""
  counts = random_counts(vocab=40, seed=4)
  drafter = ngram.BigramDrafter.from_counts(counts, smoothing=0.1)
  config = sampling.make_sampling_config(0.7, top_k=5)
  sequences = np.array([[0, 7, 3, 0], [0, 0, 0, 0]], np.int32)
  lengths = np.array([2, 0], np.int32)
  tokens, probs, _ = drafter.propose(None, sequences, lengths, 3, config, 40,
                                     jax.random.PRNGKey(0))
  previous = np.stack([sequences[[0, 1], lengths], tokens[:, 0], tokens[:, 1]], axis=1)
  expected = sampling.probabilities(drafter.next_log_probs(previous.reshape(-1)), config)
  np.testing.assert_allclose(probs, np.asarray(expected).reshape(2, 3, 40), atol=1e-6)
  assert np.all(np.take_along_axis(np.asarray(probs), np.asarray(tokens)[..., None], -1) > 0)
