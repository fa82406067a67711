"""PaSS look-ahead drafting: exact decoding, the ride-along call's layout, files.

Training the embeddings is training's (tests/test_training_lookahead.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_speculative_distribution as distribution
from conftest import init_params, random_inputs
from flax import struct
from test_speculative_greedy import MAX_LEN, assert_same
from test_speculative_greedy import models as greedy_models

from specdec_t5x import decoding, network
from specdec_t5x.drafters import lookahead as pass_lib


@functools.cache
def drafter(num_lookahead: int) -> pass_lib.PassDrafter:
  module, target, _ = greedy_models()
  return pass_lib.PassDrafter.create(module, pass_lib.init_lookahead(target, num_lookahead))


def decode_both(batch, gamma, num_lookahead, max_len=MAX_LEN, eos_id=1, seed=0):
  module, target, _ = greedy_models()
  tokens = random_inputs(batch, 9, module.config.vocab_size, seed)
  expected = decoding.autoregressive_decode(module, target, tokens, max_decode_len=max_len,
                                            eos_id=eos_id)
  got = decoding.speculative_decode(module, target, drafter(num_lookahead), tokens, gamma=gamma,
                                    max_decode_len=max_len, eos_id=eos_id)
  return expected, got


@functools.partial(jax.jit, static_argnums=0)
def reference_lookahead_logits(module, params, encoder_tokens, contexts, context_lengths,
                               lookahead):
  """Teacher-forced, no cache: `contexts[b, :n_b]` embedded, then the look-ahead vectors.

  Args:
    encoder_tokens: `[B, enc_len]`.
    contexts: `[B, P]` decoder inputs, valid up to `context_lengths [B]`.
    lookahead: `[L, emb]`.

  Returns:
    The look-ahead positions' logits `[B, L, V]`.
  """
  num_lookahead, width = lookahead.shape
  length = contexts.shape[1] + num_lookahead
  position = jnp.arange(length)[None, :, None]
  offset = context_lengths[:, None, None]
  tokens = jnp.pad(contexts, ((0, 0), (0, num_lookahead)))
  token_embeddings = params['token_embedder']['embedding'][tokens]
  lookahead_index = jnp.clip(position - offset, 0, num_lookahead - 1)[..., 0]
  embeddings = jnp.where(position < offset, token_embeddings,
                         jnp.where(position < offset + num_lookahead,
                                   lookahead[lookahead_index], 0.0))
  # Positions after the look-ahead ones are padding (target 0); causality hides them anyway.
  targets = (position[..., 0] < offset[..., 0] + num_lookahead).astype(jnp.int32)
  encoded = module.apply({'params': params}, encoder_tokens, enable_dropout=False,
                         method=module.encode)
  logits = module.apply({'params': params}, encoded, encoder_tokens, targets, targets,
                        enable_dropout=False, method=module.decode,
                        decoder_input_embeddings=embeddings.reshape(-1, length, width))
  take = lambda row, start: jax.lax.dynamic_slice_in_dim(row, start, num_lookahead)
  return jax.vmap(take)(logits, context_lengths)


# ------------------------------------------------------------------------------
# Greedy: equal to autoregressive decoding, token for token.
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('batch,gamma,num_lookahead', [(1, 3, 3), (8, 1, 1), (8, 2, 4),
                                                       (4, 6, 6)])
def test_greedy_equals_autoregressive(batch, gamma, num_lookahead):
  expected, got = decode_both(batch, gamma, num_lookahead)
  assert_same(expected, got)
  lengths, iterations = np.asarray(got.lengths), np.asarray(got.iterations)
  # The first call emits one token and drafts nothing; every later one emits 1..γ+1.
  assert np.all(iterations >= 1 + np.ceil((lengths - 1) / (gamma + 1)))
  assert np.all(iterations <= lengths)
  surplus = np.asarray(got.accepted) - (lengths - iterations)
  assert np.all((surplus == 0) | (surplus == 1))


@pytest.mark.parametrize('max_len', [1, 2])
def test_max_len_inside_the_first_call_and_block(max_len):
  assert_same(*decode_both(4, 2, 4, max_len=max_len))


def test_eos_in_the_first_call_and_inside_blocks():
  expected, _ = decode_both(8, 2, 4)
  tokens = np.asarray(expected.tokens)
  first_tokens = sorted({int(t) for t in tokens[:, 0] if t > 1})
  middle_tokens = sorted({int(t) for t in tokens[:, 2:12].ravel() if t > 1})
  for eos_id in first_tokens[:2] + middle_tokens[:3]:
    expected, got = decode_both(8, 2, 4, eos_id=eos_id)
    assert_same(expected, got)
  assert np.any(np.asarray(decode_both(8, 2, 4, eos_id=first_tokens[0])[1].lengths) == 1)


def test_gamma_beyond_the_lookahead_count_is_refused():
  module, target, _ = greedy_models()
  with pytest.raises(ValueError, match='at most one token per look-ahead'):
    decoding.speculative_decode(module, target, drafter(1), random_inputs(2, 5, 64, 0),
                                gamma=2, max_decode_len=MAX_LEN)


# ------------------------------------------------------------------------------
# The ride-along call: look-ahead positions follow exactly the scored tokens.
# ------------------------------------------------------------------------------


@struct.dataclass
class _RecordingState:
  inner: pass_lib.PassDraftState
  sequences: jax.Array  # what propose saw
  lengths: jax.Array    # -1 until the first proposal: the first call scores BOS alone
  drafts: jax.Array


@struct.dataclass
class _RecordingDrafter:
  """A PassDrafter that reports each scoring call's real tokens and its look-ahead logits."""

  inner: pass_lib.PassDrafter
  gamma: int = struct.field(pytree_node=False)
  max_decode_len: int = struct.field(pytree_node=False)
  record: object = struct.field(pytree_node=False)

  @property
  def vocab_size(self):
    return self.inner.vocab_size

  @property
  def num_extra_positions(self):
    return self.inner.num_extra_positions

  def init(self, encoder_input_tokens, cache_length):
    batch = encoder_input_tokens.shape[0]
    return _RecordingState(
        inner=self.inner.init(encoder_input_tokens, cache_length),
        sequences=jnp.zeros((batch, self.max_decode_len + self.gamma + 2), jnp.int32),
        lengths=jnp.full((batch,), -1, jnp.int32),
        drafts=jnp.zeros((batch, self.gamma), jnp.int32))

  def propose(self, state, sequences, lengths, gamma, sampling, vocab_size, rng):
    tokens, probs, inner = self.inner.propose(state.inner, sequences, lengths, gamma, sampling,
                                              vocab_size, rng)
    return tokens, probs, _RecordingState(inner, sequences, lengths, tokens)

  def accept(self, state, sequences, lengths):
    return state

  def extra_embeddings(self, state):
    return self.inner.extra_embeddings(state.inner)

  def observe_extra_logits(self, state, logits):
    jax.debug.callback(self.record, state.sequences, state.lengths, state.drafts, logits)
    return state.replace(inner=self.inner.observe_extra_logits(state.inner, logits))


def test_lookahead_logits_of_every_call_follow_the_scored_tokens():
  module, target, _ = greedy_models()
  gamma, batch = 2, 3
  records = []
  record = lambda *arrays: records.append([np.asarray(a) for a in arrays])
  recording = _RecordingDrafter(drafter(3), gamma, MAX_LEN, record)
  tokens = random_inputs(batch, 9, module.config.vocab_size, seed=3)
  out = decoding.speculative_decode(module, target, recording, tokens, gamma=gamma,
                                    max_decode_len=MAX_LEN)
  jax.effects_barrier()
  assert_same(decoding.autoregressive_decode(module, target, tokens, max_decode_len=MAX_LEN),
              out)
  assert len(records) == int(np.max(out.iterations))
  assert np.all(records[0][1] == -1) and np.all(records[1][1] >= 0)
  lookahead = np.asarray(drafter(3).lookahead)
  for sequences, lengths, drafts, logits in records:
    # The first call scores BOS alone; later ones the row's inputs up to `lengths`, then drafts.
    contexts = np.concatenate([sequences, np.zeros_like(drafts)], axis=1)
    context_lengths = np.where(lengths < 0, 1, lengths + 1 + gamma).astype(np.int32)
    for row in range(batch):
      if lengths[row] >= 0:
        contexts[row, lengths[row] + 1:lengths[row] + 1 + gamma] = drafts[row]
    expected = reference_lookahead_logits(module, target, tokens, contexts, context_lengths,
                                          lookahead)
    np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=2e-4)


def test_lookahead_logits_are_the_decoding_layout():
  """`lookahead_logits` (what training fits) equals the teacher-forced reference."""
  module, target, _ = greedy_models()
  tokens = random_inputs(2, 9, 64, seed=4)
  decoder_inputs = np.array([[0, 5, 9, 13, 7, 2, 0], [0, 3, 3, 8, 0, 0, 0]], np.int32)
  prefix_ends = np.array([[0, 3], [1, 3]], np.int32)
  lookahead = np.asarray(drafter(3).lookahead)
  got = jax.jit(pass_lib.lookahead_logits, static_argnums=0)(module, target, lookahead, tokens,
                                                             decoder_inputs, prefix_ends)
  assert got.shape == (2, 2, 3, module.config.vocab_size)
  for sample in range(2):
    expected = reference_lookahead_logits(module, target, tokens, decoder_inputs,
                                          prefix_ends[:, sample] + 1, lookahead)
    np.testing.assert_allclose(got[:, sample], expected, atol=2e-4, rtol=2e-4)


# ------------------------------------------------------------------------------
# Sampling: the target's exact law (the harness of test_speculative_distribution).
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('settings', [distribution.SETTINGS[0], distribution.SETTINGS[4]],
                         ids=['temperature1', 'temperature0.7-topk5-topp0.9'])
def test_speculative_sampling_matches_target_law(settings):
  module, target, _ = distribution.models()
  lookahead = pass_lib.init_lookahead(target, distribution.GAMMA, seed=1)
  pass_drafter = pass_lib.PassDrafter.create(module, 3.0 * lookahead)
  prompts = np.repeat(distribution.PROMPT, distribution.NUM_SAMPLES, 0)
  out = decoding.speculative_decode(module, target, pass_drafter, prompts,
                                    gamma=distribution.GAMMA, max_decode_len=distribution.LENGTH,
                                    eos_id=distribution.EOS, rng=jax.random.PRNGKey(7),
                                    **settings)
  assert 0.05 < float(np.mean(out.beta_mean)) < 0.95
  samples = distribution.observed_sequences(out.tokens, out.lengths)
  pvalue = distribution.chi_square_pvalue(samples, distribution.exact_law(settings))
  assert pvalue > distribution.SIGNIFICANCE


# ------------------------------------------------------------------------------
# Files.
# ------------------------------------------------------------------------------


def test_lookahead_file_round_trip(tmp_path):
  module, target, _ = greedy_models()
  lookahead = np.asarray(pass_lib.init_lookahead(target, 4, seed=2))
  fingerprint = pass_lib.params_fingerprint(target)
  path = pass_lib.save_lookahead(tmp_path / 'sub' / 'lookahead.npz', lookahead, module.config,
                                 fingerprint, info={'num_steps': 7})
  assert path.stat().st_size < 10_000 and not list(path.parent.glob('*.tmp*'))
  contents = pass_lib.read_lookahead_file(path)
  assert contents['info'] == {'num_steps': 7} and contents['target_fingerprint'] == fingerprint
  loaded = pass_lib.load_pass_drafter(path, module, target)
  np.testing.assert_array_equal(loaded.lookahead, lookahead)
  assert loaded.num_extra_positions == 4 and loaded.truncated(2).num_extra_positions == 2
  np.testing.assert_array_equal(loaded.truncated(2).lookahead, lookahead[:2])
  with pytest.raises(ValueError, match=r'num_lookahead must be in \[1, 4\]'):
    loaded.truncated(5)
  # The fingerprint follows the weights, not just their shapes.
  assert pass_lib.params_fingerprint(jax.tree.map(lambda x: x * 1.0001, target)) != fingerprint
  assert pass_lib.default_lookahead_path('/models/t', 6).as_posix() == \
      '/models/t/pass_lookahead_L6.npz'


def test_lookahead_file_that_does_not_fit_the_target_is_refused(tmp_path):
  module, target, _ = greedy_models()
  fingerprint = pass_lib.params_fingerprint(target)
  narrow = network.config_from_preset('test_tiny', emb_dim=16)
  path = pass_lib.save_lookahead(tmp_path / 'narrow.npz', np.zeros((2, 16)), narrow,
                                 fingerprint)
  with pytest.raises(ValueError, match='width 16 but the target decoder\'s emb_dim is 32'):
    pass_lib.load_pass_drafter(path, module)
  other_vocab = network.config_from_preset('test_tiny', vocab_size=128)
  path = pass_lib.save_lookahead(tmp_path / 'vocab.npz', np.zeros((2, 32)), other_vocab,
                                 fingerprint)
  with pytest.raises(ValueError, match='vocab_size=128'):
    pass_lib.load_pass_drafter(path, module)
  path = pass_lib.save_lookahead(tmp_path / 'fits.npz', np.zeros((2, 32)), module.config,
                                 fingerprint)
  pass_lib.load_pass_drafter(path, module, target)
  other_weights = init_params(module.config, seed=5)
  with pytest.raises(ValueError, match='other target weights'):
    pass_lib.load_pass_drafter(path, module, other_weights)
  with pytest.raises(FileNotFoundError):
    pass_lib.load_pass_drafter(tmp_path / 'missing.npz', module)
  np.savez(tmp_path / 'other.npz', lookahead=np.zeros((2, 32)))
  with pytest.raises(ValueError, match='not a PaSS look-ahead file'):
    pass_lib.load_pass_drafter(tmp_path / 'other.npz', module)
  with pytest.raises(ValueError, match=r'shape \[L >= 1, emb_dim\]'):
    pass_lib.PassDrafter.create(module, np.zeros((32,)))
