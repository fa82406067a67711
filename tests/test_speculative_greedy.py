"""Greedy speculative output equals greedy autoregressive output, token for token."""

import functools

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from conftest import init_params, perturb, random_inputs

from specdec_t5x import decoding, drafters, network

MAX_LEN = 23  # not a multiple of γ+1 for any γ tested


@functools.cache
def models():
  """Target, and drafts: unrelated (α≈0), the target itself (α=1), a perturbed copy (also with
  its logits layer in bfloat16 and in int8)."""
  config = network.config_from_preset('test_tiny')
  module = network.Transformer(config)
  target = init_params(config, seed=0)
  perturbed = perturb(target, 0.4, seed=2)
  drafts = {'unrelated': init_params(config, seed=1), 'self': target, 'perturbed': perturbed,
            'perturbed_bf16_logits': drafters.with_logits_dtype(perturbed, 'bfloat16'),
            'perturbed_int8_logits': drafters.with_logits_dtype(perturbed, 'int8')}
  return module, target, drafts


def decode_both(batch, gamma, draft, max_len=MAX_LEN, eos_id=1, seed=0):
  module, target, drafts = models()
  tokens = random_inputs(batch, 9, module.config.vocab_size, seed)
  expected = decoding.autoregressive_decode(module, target, tokens, max_decode_len=max_len,
                                            eos_id=eos_id)
  got = decoding.speculative_decode(module, target, drafters.ModelDrafter(module, drafts[draft]),
                                    tokens, gamma=gamma, max_decode_len=max_len, eos_id=eos_id)
  return expected, got


def assert_same(expected, got):
  np.testing.assert_array_equal(got.tokens, expected.tokens)
  np.testing.assert_array_equal(got.lengths, expected.lengths)


@pytest.mark.parametrize('draft', ['unrelated', 'self', 'perturbed'])
@pytest.mark.parametrize('gamma', [1, 2, 4, 7])
@pytest.mark.parametrize('batch', [1, 4, 8])
def test_greedy_equals_autoregressive(batch, gamma, draft):
  expected, got = decode_both(batch, gamma, draft)
  assert_same(expected, got)
  lengths = np.asarray(got.lengths)
  # Every iteration of a row emits between 1 and γ+1 tokens.
  assert np.all(got.iterations >= np.ceil(lengths / (gamma + 1)))
  assert np.all(got.iterations <= lengths)
  # Each iteration emits its accepted drafts plus the target's token, unless EOS or
  # max_decode_len cut the block inside the accepted drafts (possible only in the last one).
  surplus = np.asarray(got.accepted) - (lengths - np.asarray(got.iterations))
  assert np.all((surplus == 0) | (surplus == 1))


@pytest.mark.parametrize('gamma', [2, 7])
@pytest.mark.parametrize('batch', [1, 8])
@pytest.mark.parametrize('dtype', ['bf16', 'int8'])
def test_greedy_with_a_low_precision_logits_draft_equals_autoregressive(dtype, batch, gamma):
  """A draft whose logits layer is stored in bfloat16 or int8 (`drafters.with_logits_dtype`)."""
  expected, got = decode_both(batch, gamma, f'perturbed_{dtype}_logits')
  assert_same(expected, got)
  assert int(np.sum(got.accepted)) > 0  # drafts were accepted: whole blocks were verified


@pytest.mark.parametrize('gamma', [1, 4, 7])
def test_self_draft_accepts_every_token(gamma):
  """With the target as its own draft, each iteration emits exactly γ+1 tokens until the end."""
  expected, got = decode_both(4, gamma, 'self')
  assert_same(expected, got)
  np.testing.assert_array_equal(got.iterations, np.ceil(expected.lengths / (gamma + 1)))
  np.testing.assert_allclose(got.beta_mean, 1.0, atol=1e-5)


def test_acceptance_rate_orders_the_drafts():
  betas = {d: float(np.mean(decode_both(8, 4, d)[1].beta_mean)) for d in models()[2]}
  assert betas['unrelated'] < betas['perturbed'] < betas['self']
  assert 0.0 < betas['perturbed'] < 1.0


def _eos_candidates(expected):
  """Tokens that appear mid-sequence in some row: as EOS they end rows at different places."""
  tokens = np.asarray(expected.tokens)
  return sorted({int(t) for t in tokens[:, 2:12].ravel() if t > 1})


@pytest.mark.parametrize('gamma', [2, 4])
def test_eos_inside_a_block_ends_the_row_there(gamma):
  expected, _ = decode_both(8, gamma, 'self')
  for eos_id in _eos_candidates(expected)[:3]:
    expected, got = decode_both(8, gamma, 'perturbed', eos_id=eos_id)
    assert_same(expected, got)
    tokens, lengths = np.asarray(got.tokens), np.asarray(got.lengths)
    for row, length in enumerate(lengths):
      assert np.all(tokens[row, length:] == 0)
      if length < MAX_LEN:
        assert tokens[row, length - 1] == eos_id
        assert eos_id not in tokens[row, :length - 1]
    # Rows end at different places in the same batch.
    assert len(set(lengths.tolist())) > 1


@pytest.mark.parametrize('max_len', [1, 2, 5, 13])
def test_max_len_cuts_a_block_exactly(max_len):
  expected, got = decode_both(4, 4, 'self', max_len=max_len)
  assert_same(expected, got)
  assert np.all(np.asarray(got.lengths) <= max_len)


# Shapes (batch, γ, max_len) are drawn from those compiled above, so that the
# examples explore inputs, drafts and EOS ids rather than XLA compile times.
@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(batch=st.sampled_from([4, 8]), gamma=st.sampled_from([1, 2, 4, 7]),
                  draft=st.sampled_from(['unrelated', 'self', 'perturbed']),
                  eos_id=st.integers(1, 63), seed=st.integers(0, 2**16))
def test_greedy_equality_property(batch, gamma, draft, eos_id, seed):
  expected, got = decode_both(batch, gamma, draft, eos_id=eos_id, seed=seed)
  assert_same(expected, got)


def test_padded_draft_vocabulary_is_exact():
  """A draft whose vocabulary is padded to another size (T5's 32100 vs 32128) stays exact."""
  module, target, _ = models()
  draft_config = network.config_from_preset('test_tiny', vocab_size=100)
  draft_module = network.Transformer(draft_config)
  drafter = drafters.ModelDrafter(draft_module, init_params(draft_config, seed=5))
  tokens = random_inputs(3, 7, 64, 4)
  expected = decoding.autoregressive_decode(module, target, tokens, max_decode_len=MAX_LEN)
  got = decoding.speculative_decode(module, target, drafter, tokens, gamma=3,
                                    max_decode_len=MAX_LEN)
  assert_same(expected, got)
