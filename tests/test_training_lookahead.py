"""Training PaSS look-ahead embeddings: targets, prefix ends, the step, and the resumable run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_inputs
from test_speculative_greedy import models as greedy_models

from specdec_t5x import decoding
from specdec_t5x.drafters import lookahead as lookahead_lib
from specdec_t5x.training import lookahead as pass_training
from specdec_t5x.training import loop


def test_lookahead_targets_are_the_tokens_after_each_prefix_end():
  decoder_inputs = np.array([[0, 5, 9, 13, 7, 2, 0], [0, 3, 3, 8, 0, 0, 0]], np.int32)
  prefix_ends = np.array([[0, 3], [1, 3]], np.int32)
  labels, weights = pass_training.lookahead_targets(
      jnp.asarray(decoder_inputs[:, 1:]), jnp.asarray(decoder_inputs[:, 1:] > 0), prefix_ends, 3)
  # Look-ahead j after prefix end m predicts target m + j = decoder input m + j + 1.
  np.testing.assert_array_equal(labels[0, 0], [9, 13, 7])
  np.testing.assert_array_equal(labels[0, 1], [2, 0, 0])
  np.testing.assert_array_equal(weights[0, 1], [1, 0, 0])
  np.testing.assert_array_equal(labels[1, 0], [8, 0, 0])


def test_prefix_ends_leave_look_ahead_one_a_true_token():
  weights = np.zeros((3, 8), np.float32)
  weights[0, :6] = 1  # 6 tokens: m in [0, 4]
  weights[1, :1] = 1  # 1 token: m = 0, all weights 0
  prefix_ends = np.asarray(pass_training.sample_prefix_ends(jax.random.PRNGKey(0), weights, 500))
  assert prefix_ends.shape == (3, 500)
  assert set(prefix_ends[0]) == {0, 1, 2, 3, 4}
  assert set(prefix_ends[1]) == {0} and set(prefix_ends[2]) == {0}


@functools.cache
def training_batch():
  """The target's own greedy outputs on 8 prompts: a fixed batch a look-ahead can learn."""
  module, target, _ = greedy_models()
  prompts = random_inputs(8, 9, module.config.vocab_size, seed=11)
  outputs = np.asarray(decoding.autoregressive_decode(module, target, prompts,
                                                      max_decode_len=16).tokens)
  return {'encoder_input_tokens': prompts, 'decoder_target_tokens': outputs,
          'decoder_input_tokens': np.pad(outputs[:, :-1], ((0, 0), (1, 0))),
          'decoder_loss_weights': (outputs > 0).astype(np.float32)}


def test_training_step_lowers_the_loss_and_leaves_the_model_alone():
  module, target, _ = greedy_models()
  batch = training_batch()
  frozen = jax.tree.map(np.array, target)
  hparams = pass_training.PassHParams(num_lookahead=3, learning_rate=3e-2,
                                      samples_per_sequence=4)
  state = pass_training.create_train_state(target, hparams)
  prefix_ends = pass_training.sample_prefix_ends(jax.random.PRNGKey(1),
                                                 batch['decoder_loss_weights'], 8)
  loss_at = jax.jit(lambda lookahead: pass_training.lookahead_loss(
      module, target, lookahead, batch, prefix_ends)[0])
  initial = float(loss_at(state.lookahead))
  train_step = pass_training.make_train_step(module, hparams)
  for _ in range(30):
    state, _ = train_step(state, target, batch, jax.random.PRNGKey(0))
  assert int(state.step) == 30
  assert float(loss_at(state.lookahead)) < initial - 0.3
  for before, after in zip(jax.tree.leaves(frozen), jax.tree.leaves(target), strict=True):
    assert np.array_equal(before, np.asarray(after))


HPARAMS = pass_training.PassHParams(num_lookahead=2, learning_rate=3e-2, samples_per_sequence=2)


def train(path, steps, make_batches=None, **kwargs):
  module, target, _ = greedy_models()
  batch = training_batch()
  make_batches = make_batches or (lambda start: (batch for _ in range(start, 10**6)))
  return pass_training.train_lookahead(module, target, make_batches, steps, path,
                                       hparams=kwargs.pop('hparams', HPARAMS), save_every=2,
                                       progress=False, **kwargs)


def test_train_lookahead_resumes_caches_and_loads(tmp_path):
  module, target, _ = greedy_models()
  straight = train(tmp_path / 'straight.npz', 5)
  assert straight.steps_trained == 5 and not straight.cached
  assert len(straight.final_per_position) == 2 and np.isfinite(straight.final_loss)
  interrupted = train(tmp_path / 'resumed.npz', 3)
  resumed = train(tmp_path / 'resumed.npz', 5)
  assert interrupted.steps_trained == 3 and resumed.steps_trained == 2
  np.testing.assert_array_equal(lookahead_lib.read_lookahead_file(straight.path)['lookahead'],
                                lookahead_lib.read_lookahead_file(resumed.path)['lookahead'])
  again = train(tmp_path / 'straight.npz', 5)
  assert again.cached and again.steps_trained == 0
  assert again.final_loss == pytest.approx(straight.final_loss)
  info = lookahead_lib.read_lookahead_file(straight.path)['info']
  assert sorted(info) == ['data', 'final_loss', 'final_per_position', 'hparams', 'num_steps',
                          'train_seconds']
  loaded = lookahead_lib.load_pass_drafter(straight.path, module, target)
  assert loaded.num_extra_positions == 2
  assert straight.path.stat().st_size < 10_000


def test_a_killed_run_resumes_from_its_last_state_on_the_shared_loop(tmp_path):
  batch = training_batch()
  straight = train(tmp_path / 'straight.npz', 6)
  starts = []

  def stops_after(stop):
    def make_batches(start):
      starts.append(start)
      return (batch for _ in range(start, stop))
    return make_batches

  # The data runs out after 5 batches: the last resumable state is step 4.
  with pytest.raises(ValueError, match='ran out after 5 batches'):
    train(tmp_path / 'resumed.npz', 6, stops_after(5))
  workdir = tmp_path / 'resumed.npz.train'
  assert not (tmp_path / 'resumed.npz').exists()
  assert [p.name for p in (workdir / loop.TRAIN_STATE_DIR).iterdir() if p.name.isdigit()] == ['4']
  resumed = train(tmp_path / 'resumed.npz', 6, stops_after(10**6))
  assert starts == [0, 4] and resumed.steps_trained == 2
  np.testing.assert_array_equal(lookahead_lib.read_lookahead_file(straight.path)['lookahead'],
                                lookahead_lib.read_lookahead_file(resumed.path)['lookahead'])
  # A workdir is tied to its hparams, target and data.
  other = pass_training.PassHParams(num_lookahead=2, learning_rate=1e-2, samples_per_sequence=2)
  with pytest.raises(ValueError, match=r'different configuration .*hparams\.learning_rate'):
    train(tmp_path / 'resumed.npz', 8, hparams=other)
  with pytest.raises(ValueError, match=r'different configuration .*data\.task'):
    train(tmp_path / 'resumed.npz', 8, data={'task': 'other'})


def test_bad_batches_are_refused():
  batch = dict(training_batch())
  batch.pop('decoder_loss_weights')
  with pytest.raises(ValueError, match='missing .*decoder_loss_weights'):
    pass_training.check_batch(batch)
  shorter = training_batch()['decoder_input_tokens'][:, 1:]
  batch = dict(training_batch(), decoder_input_tokens=shorter)
  with pytest.raises(ValueError, match='share one shape'):
    pass_training.check_batch(batch)
