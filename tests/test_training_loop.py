"""The one resumable training loop, on a toy trainee (a vector pulled toward each batch)."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from specdec_t5x.training import loop


@struct.dataclass
class ToyState:
  step: jax.Array  # int32 scalar
  weights: jax.Array  # [3]


def toy_batch(index: int) -> dict:
  return {'x': np.full((3,), float(index), np.float32)}


def toy_batches(starts: list, stop_after: int | None = None):
  """A `BatchFactory` over `toy_batch(i)` recording its starts; ends after `stop_after`."""

  def make_batches(start):
    starts.append(start)
    index = start
    while stop_after is None or index < stop_after:
      yield toy_batch(index)
      index += 1

  return make_batches


@jax.jit
def toy_step(state, batch):
  weights = state.weights + 0.5 * (batch['x'] - state.weights)
  return (ToyState(step=state.step + 1, weights=weights),
          {'loss': jnp.sum(jnp.square(batch['x'] - state.weights))})


def toy_log(step, metrics, book):
  book['last_loss'] = float(metrics['loss'])
  book['logged_steps'] = book['logged_steps'] + [step]
  if not math.isfinite(book['last_loss']):
    raise FloatingPointError(f'diverged at step {step}')
  return {'loss': f'{book["last_loss"]:.3f}'}


def check_toy_batch(batch):
  if 'x' not in batch:
    raise ValueError('a toy batch needs x')


TRAINEE = loop.Trainee(
    create_state=lambda: ToyState(step=jnp.asarray(0, jnp.int32), weights=jnp.zeros(3)),
    train_step=toy_step, check_batch=check_toy_batch, log=toy_log,
    extra_book={'logged_steps': []})
RUN_CONFIG = {'model': {'width': 3}, 'hparams': {'rate': 0.5}, 'note': 'toy'}


def run(workdir, make_batches, num_steps, **kwargs):
  workdir = loop.prepare_workdir(workdir, kwargs.pop('run_config', RUN_CONFIG))
  options = dict(save_every=4, keep_checkpoints=2, log_every=2, progress=False)
  return loop.run_resumable(TRAINEE, make_batches, num_steps, workdir, **(options | kwargs))


def test_an_uninterrupted_run_saves_every_few_steps_and_keeps_the_last(tmp_path):
  starts = []
  result = run(tmp_path, toy_batches(starts), 10)
  assert starts == [0] and result.start_step == 0 and int(result.state.step) == 10
  assert result.book['batches_consumed'] == 10 and result.book['train_seconds'] > 0
  assert result.book['logged_steps'] == [2, 4, 6, 8, 10]  # every log_every, and the last
  assert sorted(int(p.name) for p in (tmp_path / loop.TRAIN_STATE_DIR).iterdir()
                if p.name.isdigit()) == [8, 10]
  assert json.loads((tmp_path / loop.RUN_CONFIG_FILE).read_text()) == RUN_CONFIG


def test_a_killed_run_resumes_where_its_last_checkpoint_stopped(tmp_path):
  straight = run(tmp_path / 'straight', toy_batches([]), 10)
  starts = []
  with pytest.raises(ValueError, match='ran out after 6 batches; 10 steps need 10 batches'):
    run(tmp_path / 'resumed', toy_batches(starts, stop_after=6), 10)
  # A save killed before Orbax renamed it into place leaves a temporary directory.
  (tmp_path / 'resumed' / loop.TRAIN_STATE_DIR / '8.orbax-checkpoint-tmp-1700000000').mkdir()
  resumed = run(tmp_path / 'resumed', toy_batches(starts), 10)
  assert starts == [0, 4] and resumed.start_step == 4
  assert resumed.book['logged_steps'] == [2, 4, 6, 8, 10]  # restored with the state
  np.testing.assert_array_equal(resumed.state.weights, straight.state.weights)
  # Asking for more steps continues from the last one; asking for fewer is refused.
  longer = run(tmp_path / 'resumed', toy_batches(starts), 12)
  assert starts[-1] == 10 and longer.start_step == 10 and int(longer.state.step) == 12
  with pytest.raises(ValueError, match='at step 12, beyond the requested num_steps=11'):
    run(tmp_path / 'resumed', toy_batches(starts), 11)


def test_a_workdir_of_another_configuration_is_refused(tmp_path):
  run(tmp_path, toy_batches([]), 2)
  other = {'model': {'width': 3}, 'hparams': {'rate': 0.25}, 'note': 'other'}
  with pytest.raises(ValueError, match=r"different configuration \(differs in "
                                       r"\['hparams.rate', 'note'\]\)"):
    run(tmp_path, toy_batches([]), 2, run_config=other)


def test_bad_batches_divergence_and_arguments_are_refused(tmp_path):
  with pytest.raises(ValueError, match='needs x'):
    run(tmp_path / 'bad', lambda start: iter([{'y': 1}]), 2)
  nan_batches = lambda start: (toy_batch(i) if i < 3 else {'x': np.full((3,), np.nan)}
                               for i in range(start, 100))
  with pytest.raises(FloatingPointError, match='diverged at step 4'):
    run(tmp_path / 'nan', nan_batches, 8)
  with pytest.raises(ValueError, match='num_steps must be >= 1'):
    loop.check_loop_arguments(0, 1, 1, 1)
  with pytest.raises(ValueError, match='save_every, keep_checkpoints and log_every'):
    loop.check_loop_arguments(5, 1, 0, 1)


def test_skip_batches_resumes_a_plain_source():
  make_batches = loop.skip_batches(lambda: (toy_batch(i) for i in range(5)))
  resumed = list(make_batches(2))
  assert len(resumed) == 3
  np.testing.assert_array_equal(resumed[0]['x'], toy_batch(2)['x'])
  with pytest.raises(ValueError, match='fewer than 7 batches'):
    make_batches(7)


def test_repeat_batches_cycles_the_first_batches_and_resumes_mid_pass():
  starts = []
  make_batches = loop.repeat_batches(toy_batches(starts), 3)
  read = [float(batch['x'][0]) for batch in itertools.islice(make_batches(4), 6)]
  assert read == [1, 2, 0, 1, 2, 0]  # batch i is batch i % 3: resumed at 4, mid-way
  assert starts == [1, 0, 0]
  short = loop.repeat_batches(toy_batches([], stop_after=2), 3)
  with pytest.raises(ValueError, match='fewer than the 3 batches'):
    list(itertools.islice(short(0), 4))
