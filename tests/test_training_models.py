"""Training models with optax the T5X way, on 'test_tiny' and a synthetic copy task.

The loop itself (resumption, refusals) is tested on a toy trainee in test_training_loop.py;
here `training.train` runs it on a real model.
"""

import json

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from specdec_t5x import training
from specdec_t5x.checkpoints import load_t5x_params, param_shapes
from specdec_t5x.network import config_from_preset

CONFIG = config_from_preset('test_tiny', dropout_rate=0.1)  # dropout on: resume must replay it
HPARAMS = training.TrainHParams(warmup_steps=10, seed=3)
NUM_STEPS = 12
SAVE_EVERY = 4


def copy_task_batch(seed: int, batch: int = 8, length: int = 10, vocab: int = 64) -> dict:
  """Targets are the inputs followed by EOS (1), padded with 0, in T5X's feature names."""
  rng = np.random.default_rng(seed)
  targets = np.zeros((batch, length), np.int32)
  for row, size in enumerate(rng.integers(2, length, size=batch)):
    targets[row, :size - 1] = rng.integers(2, vocab, size=size - 1)
    targets[row, size - 1] = 1
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {'encoder_input_tokens': targets.copy(), 'decoder_input_tokens': decoder_inputs,
          'decoder_target_tokens': targets,
          'decoder_loss_weights': (targets > 0).astype(np.float32)}


def copy_task_batches(starts: list, stop_after: int | None = None):
  """A `BatchFactory` over batch `i` = `copy_task_batch(i)`; records the start it was given.

  With `stop_after`, the source ends after that batch index, which interrupts a run.
  """

  def make_batches(start):
    starts.append(start)
    index = start
    while stop_after is None or index < stop_after:
      yield copy_task_batch(index)
      index += 1

  return make_batches


def assert_trees_equal(actual, expected):
  flat_actual = traverse_util.flatten_dict(actual, sep='/')
  flat_expected = traverse_util.flatten_dict(expected, sep='/')
  assert sorted(flat_actual) == sorted(flat_expected)
  for name, value in flat_expected.items():
    np.testing.assert_array_equal(np.asarray(flat_actual[name]), np.asarray(value), err_msg=name)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """One uninterrupted run, shared by the tests that compare against it."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  starts = []
  summary = training.train(CONFIG, copy_task_batches(starts), NUM_STEPS, workdir,
                           hparams=HPARAMS, save_every=SAVE_EVERY, progress=False)
  return workdir, summary, starts


def test_loss_decreases_on_a_fixed_batch():
  batch = copy_task_batch(0)
  state = training.create_train_state(CONFIG, HPARAMS)
  before = training.evaluate_loss(state.params, CONFIG, [batch])
  train_step = training.make_train_step(CONFIG, HPARAMS)
  dropout_key = jax.random.PRNGKey(0)
  for _ in range(40):
    state, metrics = train_step(state, batch, dropout_key)
  after = training.evaluate_loss(state.params, CONFIG, [batch])
  assert int(state.step) == 40
  assert np.isfinite(float(metrics['loss']))
  # Uniform guessing over 64 tokens costs log(64) = 4.16 nats; memorising one batch goes far below.
  assert before > 3.5
  assert after < 0.6 * before, (before, after)


def test_uninterrupted_run_writes_a_t5x_checkpoint(uninterrupted):
  workdir, summary, starts = uninterrupted
  assert starts == [0]
  assert summary.steps_trained == NUM_STEPS and not summary.cached
  assert summary.checkpoint_dir == workdir / f'checkpoint_{NUM_STEPS}'
  assert summary.num_params == sum(np.prod(shape) for shape in param_shapes(CONFIG).values())
  assert np.isfinite(summary.final_loss) and summary.train_seconds > 0
  recorded = json.loads((workdir / training.SUMMARY_FILE).read_text())
  assert recorded['num_steps'] == NUM_STEPS
  trained = load_t5x_params(workdir, CONFIG)  # fits the config
  initial = training.init_params(CONFIG, HPARAMS.seed)
  assert not np.array_equal(trained['decoder']['logits_dense']['kernel'],
                            initial['decoder']['logits_dense']['kernel'])
  # Resumable state at every SAVE_EVERY steps, the last `keep_checkpoints` kept.
  assert sorted(int(p.name) for p in (workdir / training.TRAIN_STATE_DIR).iterdir()
                if p.name.isdigit()) == [8, 12]


def test_resume_after_interruption_gives_the_same_params(tmp_path, uninterrupted):
  reference_dir, _, _ = uninterrupted
  starts = []
  # Interrupted after 6 batches (the data runs out): the last resumable state is step 4.
  with pytest.raises(ValueError, match='ran out after 6 batches'):
    training.train(CONFIG, copy_task_batches(starts, stop_after=6), NUM_STEPS, tmp_path,
                   hparams=HPARAMS, save_every=SAVE_EVERY, progress=False)
  assert not (tmp_path / f'checkpoint_{NUM_STEPS}').exists()
  # A save killed before Orbax renamed it into place leaves a temporary directory.
  (tmp_path / training.TRAIN_STATE_DIR / '8.orbax-checkpoint-tmp-1700000000').mkdir()
  summary = training.train(CONFIG, copy_task_batches(starts), NUM_STEPS, tmp_path,
                           hparams=HPARAMS, save_every=SAVE_EVERY, progress=False)
  assert starts == [0, 4]  # the data continues where the resumable state stopped
  assert summary.steps_trained == NUM_STEPS - 4
  assert_trees_equal(load_t5x_params(tmp_path), load_t5x_params(reference_dir))


def test_finished_workdir_skips_training(uninterrupted):
  workdir, first, _ = uninterrupted
  starts = []
  summary = training.train(CONFIG, copy_task_batches(starts), NUM_STEPS, workdir,
                           hparams=HPARAMS, save_every=SAVE_EVERY, progress=False)
  assert starts == []  # not even the data source was touched
  assert summary.cached and summary.steps_trained == 0
  assert summary.checkpoint_dir == first.checkpoint_dir
  assert summary.train_seconds == pytest.approx(first.train_seconds)
  assert summary.final_loss == pytest.approx(first.final_loss)


def test_workdir_of_another_configuration_is_refused(uninterrupted):
  workdir, _, _ = uninterrupted
  other = training.TrainHParams(warmup_steps=10, seed=4)
  with pytest.raises(ValueError, match=r'different configuration .*hparams\.seed'):
    training.train(CONFIG, copy_task_batches([]), NUM_STEPS, workdir, hparams=other,
                   progress=False)


# ------------------------------------------------------------------------------
# Pieces: loss, schedule, batch checks.
# ------------------------------------------------------------------------------


def test_cross_entropy_matches_optax_plus_z_loss():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, size=(3, 5))
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
  loss, z_loss, weight_sum = training.weighted_cross_entropy(logits, targets, weights,
                                                             z_loss=1e-4)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  expected_ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(z_loss, np.sum(1e-4 * log_z ** 2 * weights), rtol=1e-5)
  np.testing.assert_allclose(loss, np.sum((expected_ce + 1e-4 * log_z ** 2) * weights),
                             rtol=1e-5)
  assert float(weight_sum) == weights.sum()


@pytest.mark.t5x
def test_cross_entropy_matches_t5x():
  pytest.importorskip('t5x', reason='t5x is not importable here; run with /tmp/t5x-venv')
  from t5x import losses
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 9)).astype(np.float32) * 2
  targets = rng.integers(0, 9, size=(2, 4))
  weights = rng.random((2, 4)).astype(np.float32)
  for kwargs in (dict(z_loss=1e-4), dict(z_loss=1e-4, label_smoothing=0.1,
                                         loss_normalizing_factor=7.0)):
    ours = training.weighted_cross_entropy(logits, targets, weights, **kwargs)
    theirs = losses.compute_weighted_cross_entropy(logits, targets, weights, **kwargs)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6)


def test_rsqrt_schedule():
  schedule = training.rsqrt_schedule(1.0, warmup_steps=100)
  np.testing.assert_allclose([schedule(0), schedule(100), schedule(400)], [0.1, 0.1, 0.05],
                             rtol=1e-6)
  warm = training.rsqrt_schedule(2.0, warmup_steps=100, linear_warmup=True)
  np.testing.assert_allclose([warm(0), warm(50), warm(400)], [1e-8, 0.1, 0.1], rtol=1e-6)
  with pytest.raises(ValueError, match='warmup_steps'):
    training.TrainHParams(warmup_steps=0)


@pytest.mark.t5x
def test_rsqrt_schedule_matches_t5x():
  pytest.importorskip('t5x', reason='t5x is not importable here; run with /tmp/t5x-venv')
  from t5x import utils
  for factors, linear in (('constant * rsqrt_decay', False),
                          ('constant * linear_warmup * rsqrt_decay', True)):
    theirs = utils.create_learning_rate_scheduler(factors=factors, base_learning_rate=0.5,
                                                  warmup_steps=30)
    ours = training.rsqrt_schedule(0.5, 30, linear_warmup=linear)
    for step in (0, 1, 15, 30, 31, 500):
      np.testing.assert_allclose(ours(step), theirs(step), rtol=1e-6)


@pytest.mark.parametrize('mutate, message', [
    (lambda b: b.pop('decoder_loss_weights'), r"lacks feature\(s\) \['decoder_loss_weights'\]"),
    (lambda b: b.update(decoder_input_tokens=b['decoder_input_tokens'][:, :-1]),
     'decoder features must share one shape'),
    (lambda b: b.update(encoder_input_tokens=b['encoder_input_tokens'][:3]),
     'batch sizes differ'),
    (lambda b: b.update(encoder_input_tokens=b['encoder_input_tokens'][0]), r'\[batch, length\]'),
])
def test_bad_batches_are_refused(mutate, message):
  batch = copy_task_batch(0)
  mutate(batch)
  with pytest.raises(ValueError, match=message):
    training.check_batch(batch)


def test_evaluate_loss_needs_weighted_tokens():
  with pytest.raises(ValueError, match='no batches'):
    training.evaluate_loss({}, CONFIG, [])
