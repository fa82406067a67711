"""What every drafter shares: `draw`, vocabulary alignment and checks, drafter files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec_t5x import sampling
from specdec_t5x.drafters import base

GREEDY = sampling.make_sampling_config(0.0)


def test_align_logits_cuts_or_pads_with_minus_infinity():
  logits = jnp.arange(12.0).reshape(2, 6)
  np.testing.assert_array_equal(base.align_logits(logits, 4), logits[:, :4])
  padded = np.asarray(base.align_logits(logits, 8))
  np.testing.assert_array_equal(padded[:, :6], logits)
  assert np.all(padded[:, 6:] == -np.inf)
  assert base.align_logits(logits, 6) is logits


def test_greedy_draw_is_the_first_argmax_and_its_one_hot():
  rng = np.random.default_rng(0)
  # Integer-valued logits, so rows have tied maxima: the first one must win.
  logits = jnp.asarray(rng.integers(0, 4, (3, 5, 7)), jnp.float32)
  tokens, probs = base.draw(jax.random.PRNGKey(0), logits, GREEDY, vocab_size=7)
  assert tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits), axis=-1))
  np.testing.assert_array_equal(probs, np.eye(7, dtype=np.float32)[np.asarray(tokens)])
  assert probs.dtype == jnp.float32
  # What the decoding loop compares against: the greedy p of the same logits.
  np.testing.assert_array_equal(probs, sampling.probabilities(logits, GREEDY))
  # ONE first_argmax (the C++ pass on CPU; else a max, then a min over the indices
  # attaining it) and no argmax reduction, which XLA:CPU does not vectorise.
  jaxpr = str(jax.make_jaxpr(lambda x: base.draw(jax.random.PRNGKey(0), x, GREEDY, 7))(logits))
  assert 'argmax[' not in jaxpr and jaxpr.count('reduce_max') + jaxpr.count('ffi_call') == 1


def test_greedy_draw_over_a_larger_target_vocabulary_never_picks_padding():
  logits = -jnp.arange(1.0, 5.0)[None, :]  # every draft logit below 0
  tokens, probs = base.draw(jax.random.PRNGKey(0), logits, GREEDY, vocab_size=8)
  assert int(tokens[0]) == 0 and probs.shape == (1, 8) and float(probs[0, 0]) == 1.0


def test_sampled_draw_returns_the_transformed_distribution_it_drew_from():
  config = sampling.make_sampling_config(0.7, top_k=3)
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(4000, 6)), jnp.float32)
  tokens, probs = base.draw(jax.random.PRNGKey(3), logits, config, vocab_size=6)
  np.testing.assert_allclose(probs, sampling.probabilities(logits, config), atol=1e-7)
  # Drawn from q: never a token q gives 0 (top-k cut), and the frequencies follow q.
  picked = np.take_along_axis(np.asarray(probs), np.asarray(tokens)[:, None], -1)
  assert np.all(picked > 0)
  mean_q = np.asarray(probs).mean(0)
  frequencies = np.bincount(np.asarray(tokens), minlength=6) / len(tokens)
  np.testing.assert_allclose(frequencies, mean_q, atol=0.03)


def test_last_inputs_and_extra_positions():
  sequences = jnp.array([[0, 4, 5, 6], [0, 7, 0, 0]])
  np.testing.assert_array_equal(base.last_inputs(sequences, jnp.array([2, 0])), [5, 0])

  class WithExtra:
    num_extra_positions = 3

  assert base.num_extra_positions(WithExtra()) == 3 and base.num_extra_positions(object()) == 0


def test_vocabulary_check_allows_padding_only():
  base.check_vocab_compatible(32128, 32100)  # T5's vocabulary, padded
  base.check_vocab_compatible(64, 64)
  with pytest.raises(ValueError, match='vocabulary mismatch'):
    base.check_vocab_compatible(32128, 32000)
  with pytest.raises(ValueError, match='vocabulary mismatch'):
    base.check_vocab_compatible(128, 129)


def test_read_drafter_file(tmp_path):
  np.savez(tmp_path / 'ok.npz', format=np.array('some.format.v1'), x=np.arange(3))
  contents = base.read_drafter_file(tmp_path / 'ok.npz', 'some.format.v1', 'test file')
  np.testing.assert_array_equal(contents['x'], [0, 1, 2])
  with pytest.raises(FileNotFoundError, match='test file not found'):
    base.read_drafter_file(tmp_path / 'missing.npz', 'some.format.v1', 'test file')
  with pytest.raises(ValueError, match="is not a test file .*'other.format'"):
    base.read_drafter_file(tmp_path / 'ok.npz', 'other.format', 'test file')
  (tmp_path / 'junk.npz').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='cannot read test file'):
    base.read_drafter_file(tmp_path / 'junk.npz', 'some.format.v1', 'test file')
