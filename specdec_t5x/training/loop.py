"""The one resumable training loop, shared by the models and the PaSS look-ahead embeddings.

A run lives in a workdir:

* `train_config.json`: what the run trains (a JSON dict); a workdir is tied to
  it and refuses a run of another configuration;
* `train_state/<step>/`: Orbax checkpoints of the train state (`state`) and of
  the loop's bookkeeping (`data`: `batches_consumed`, `train_seconds`,
  `last_loss` and whatever the trainee logs besides). Orbax writes each to a
  temporary directory and renames it, so a kill mid-save leaves the previous
  checkpoint intact, and a restarted run continues from the latest one.

The trainee (`Trainee`) brings the step-0 state, the jitted step, the batch
check and the read-out of its metrics; the loop restores or creates the state,
feeds it the batches `batches_consumed, batches_consumed + 1, ...`, saves every
`save_every` steps and at the last one, and shows a tqdm bar.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

PyTree = Any
Batch = Mapping[str, np.ndarray]
# `make_batches(start)` yields batches `start, start + 1, ...` of one fixed
# sequence, so a resumed run continues the data where the interrupted one stopped.
BatchFactory = Callable[[int], Iterable[Batch]]
# The loop's JSON bookkeeping, saved beside each train state.
Book = dict[str, Any]

TRAIN_STATE_DIR = 'train_state'
RUN_CONFIG_FILE = 'train_config.json'


@dataclasses.dataclass(frozen=True)
class Trainee:
  """What the loop trains.

  Attributes:
    create_state: the first train state, a pytree with an int32 scalar `step`
      (also traced, never run, to describe the state Orbax restores, unless
      `describe_state` is given).
    train_step: `(state, batch) -> (state, metrics)`; `state` may be donated.
    check_batch: raises a `ValueError` for a batch the step cannot take.
    log: `(step, metrics, book) -> postfix`: reads the metrics into `book`
      (at least `last_loss`), raises if training diverged, and returns the
      progress bar's postfix.
    extra_book: bookkeeping entries besides the loop's own, at step 0.
    describe_state: traced (never run) to describe the state Orbax restores,
      when `create_state` cannot be traced (default: `create_state`).
  """

  create_state: Callable[[], PyTree]
  train_step: Callable[[PyTree, Batch], tuple[PyTree, Mapping[str, Any]]]
  check_batch: Callable[[Batch], None]
  log: Callable[[int, Mapping[str, Any], Book], Mapping[str, str]]
  extra_book: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  describe_state: Callable[[], PyTree] | None = None


@dataclasses.dataclass(frozen=True)
class LoopResult:
  state: PyTree      # the state after `num_steps` steps
  book: Book         # its bookkeeping (`train_seconds`, `last_loss`, ...)
  start_step: int    # the step the loop started from (0, or the resumed one)


def check_loop_arguments(num_steps: int, save_every: int, keep_checkpoints: int,
                         log_every: int) -> None:
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}')
  if save_every < 1 or keep_checkpoints < 1 or log_every < 1:
    raise ValueError('save_every, keep_checkpoints and log_every must be >= 1, got '
                     f'{save_every}, {keep_checkpoints}, {log_every}')


def write_json_atomically(path: pathlib.Path, payload: Mapping[str, Any], *,
                          sort_keys: bool = True) -> None:
  """Writes `payload` as indented JSON to a temporary file and renames it onto `path`."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys) + '\n')
  os.replace(tmp, path)


def _differing_keys(wanted: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
  """`part.key` for the entries of two-level dicts that differ (`part` for plain values)."""
  differing = []
  for part in sorted(wanted.keys() | recorded.keys()):
    mine, theirs = wanted.get(part), recorded.get(part)
    if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
      differing += [f'{part}.{key}' for key in sorted(mine.keys() | theirs.keys())
                    if mine.get(key) != theirs.get(key)]
    elif mine != theirs:
      differing.append(part)
  return differing


def prepare_workdir(workdir: str | os.PathLike, run_config: Mapping[str, Any]) -> pathlib.Path:
  """Creates `workdir` (absolute) and records `run_config`, or refuses one that trained another.

  Raises:
    ValueError: `workdir` holds a run whose recorded configuration differs.
  """
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  wanted = json.loads(json.dumps(run_config))  # as it reads back
  path = workdir / RUN_CONFIG_FILE
  if path.exists():
    recorded = json.loads(path.read_text())
    if recorded != wanted:
      raise ValueError(f'{workdir} holds a run with a different configuration (differs in '
                       f'{_differing_keys(wanted, recorded)}); use another workdir or delete it')
  else:
    write_json_atomically(path, wanted)
  return workdir


def _abstract_state(create_state: Callable[[], PyTree]) -> PyTree:
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(create_state)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes)


def _restore_or_create(manager: ocp.CheckpointManager, trainee: Trainee,
                       num_steps: int) -> tuple[PyTree, Book]:
  """`(state, book)` from the latest checkpoint, or step 0 and fresh bookkeeping."""
  latest = manager.latest_step()
  if latest is None:
    book = {'batches_consumed': 0, 'train_seconds': 0.0, 'last_loss': None}
    return trainee.create_state(), {**book, **trainee.extra_book}
  if latest > num_steps:
    raise ValueError(f'{manager.directory} holds training state at step {latest}, beyond the '
                     f'requested num_steps={num_steps}')
  restored = manager.restore(latest, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(
          _abstract_state(trainee.describe_state or trainee.create_state)),
      data=ocp.args.JsonRestore()))
  book = dict(restored['data'])
  book['batches_consumed'] = int(book['batches_consumed'])
  book['train_seconds'] = float(book['train_seconds'])
  return restored['state'], book


def restore_state(workdir: str | os.PathLike, create_state: Callable[[], PyTree],
                  step: int) -> PyTree:
  """The train state another run saved at `step` in `workdir/train_state` (e.g. to continue it).

  `create_state` describes the state (it is traced, not run).

  Raises:
    ValueError: `workdir` holds no train state at `step`.
  """
  options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
  directory = pathlib.Path(workdir).absolute() / TRAIN_STATE_DIR
  if not directory.is_dir():
    raise ValueError(f'no train state to continue in {directory}')
  with ocp.CheckpointManager(directory, options=options) as manager:
    if step not in manager.all_steps():
      raise ValueError(f'{directory} holds no train state at step {step} (it has '
                       f'{sorted(manager.all_steps())}); train that model to step {step} first')
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract_state(create_state))))
  return restored['state']


def _save(manager: ocp.CheckpointManager, step: int, state: PyTree, book: Book) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(book)))


def _steps(manager: ocp.CheckpointManager, trainee: Trainee, state: PyTree, book: Book,
           batches: Iterator[Batch], num_steps: int, bar: tqdm, *, save_every: int,
           log_every: int) -> PyTree:
  """Runs the steps after `state.step` up to `num_steps`, updating `book` and saving."""
  started = time.perf_counter() - book['train_seconds']
  for step in range(int(state.step) + 1, num_steps + 1):
    batch = next(batches, None)
    if batch is None:
      raise ValueError(f'the batch iterator ran out after {book["batches_consumed"]} batches; '
                       f'{num_steps} steps need {num_steps} batches')
    trainee.check_batch(batch)
    state, metrics = trainee.train_step(state, batch)
    book['batches_consumed'] += 1
    bar.update(1)
    if step % log_every == 0 or step == num_steps:
      bar.set_postfix(**trainee.log(step, metrics, book))
    if step % save_every == 0 or step == num_steps:
      book['train_seconds'] = time.perf_counter() - started
      _save(manager, step, state, book)
  return state


def run_resumable(trainee: Trainee, make_batches: BatchFactory, num_steps: int,
                  workdir: pathlib.Path, *, save_every: int, keep_checkpoints: int,
                  log_every: int, progress: bool = True, desc: str | None = None) -> LoopResult:
  """Trains `trainee` to `num_steps` steps in `workdir`, continuing from its latest checkpoint.

  Args:
    trainee: the state, step, batch check and metric read-out.
    make_batches: `make_batches(start)` must yield the batches `start, start+1,
      ...` of a fixed sequence; a resumed run calls it with the number of
      batches the interrupted run consumed.
    num_steps: total steps (one batch each).
    workdir: from `prepare_workdir`; the checkpoints go to `workdir/train_state`.
    save_every: steps between checkpoints (the last step is always saved).
    keep_checkpoints: how many checkpoints to keep.
    log_every: steps between metric read-outs (each one waits for the device).
    progress, desc: show a tqdm bar, and its label.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep_checkpoints, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  with ocp.CheckpointManager(workdir / TRAIN_STATE_DIR, options=options) as manager:
    state, book = _restore_or_create(manager, trainee, num_steps)
    start_step = int(state.step)
    batches = iter(make_batches(book['batches_consumed']))
    with tqdm(total=num_steps, initial=start_step, desc=desc, unit='step',
              disable=not progress, dynamic_ncols=True) as bar:
      state = _steps(manager, trainee, state, book, batches, num_steps, bar,
                     save_every=save_every, log_every=log_every)
  return LoopResult(state=state, book=book, start_step=start_step)


def repeat_batches(make_batches: BatchFactory, num_batches: int) -> BatchFactory:
  """`make_batches`' first `num_batches` batches, again and again: batch i is batch i % num_batches.

  A resumed run continues mid-pass. Raises (when read) if the source has fewer batches.
  """

  def repeated(start: int) -> Iterator[Batch]:
    offset = start % num_batches
    while True:
      count = 0
      for batch in itertools.islice(make_batches(offset), num_batches - offset):
        count += 1
        yield batch
      if count < num_batches - offset:
        raise ValueError(f'the batch source has fewer than the {num_batches} batches to repeat')
      offset = 0

  return repeated


def skip_batches(make_iterable: Callable[[], Iterable[Batch]]) -> BatchFactory:
  """Turns a zero-argument batch source into a `BatchFactory` by skipping consumed batches.

  Skipping re-reads the skipped batches; a source that can seek (e.g.
  `tf.data.Dataset.skip`) should implement `make_batches(start)` itself.
  """

  def make_batches(start: int) -> Iterator[Batch]:
    iterator = iter(make_iterable())
    for _ in range(start):
      if next(iterator, None) is None:
        raise ValueError(f'the batch source has fewer than {start} batches to skip')
    return iterator

  return make_batches


__all__ = ['Batch', 'BatchFactory', 'Book', 'Trainee', 'LoopResult', 'TRAIN_STATE_DIR',
           'RUN_CONFIG_FILE', 'check_loop_arguments', 'prepare_workdir', 'run_resumable',
           'write_json_atomically', 'repeat_batches', 'skip_batches', 'restore_state']
