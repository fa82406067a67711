"""Training PaSS look-ahead embeddings for a frozen target, on the shared resumable loop.

Look-ahead j (1-based) placed after the prefix end m is trained to predict the
true token m + 1 + j: cross-entropy of its logits (`drafters.lookahead.
lookahead_logits`, exactly the decoding layout), averaged over sampled prefix
ends m of the training targets, with Adam on the `[L, emb_dim]` look-ahead
embeddings only. Each step runs the frozen target once over the full target
sequence with the decode cache, copies that cache for S prefix ends per
sequence, rewinds each copy to its m + 1 and runs the L look-ahead positions
there: S·L query positions per sequence instead of S full passes.

`train_lookahead` runs on `training.loop` (the models' loop: resumable state in
`<workdir>/train_state/<step>/`, the run's configuration in
`<workdir>/train_config.json`) and writes the embeddings with
`drafters.lookahead.save_lookahead`, the file `load_pass_drafter` reads. (The
`pass_train_state.msgpack` of runs before the shared loop is not read: such an
unfinished run starts again from step 0, and gives the same embeddings.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct

from specdec_t5x.drafters.lookahead import (
  init_lookahead,
  lookahead_logits,
  params_fingerprint,
  read_lookahead_file,
  save_lookahead,
)
from specdec_t5x.training import loop
from specdec_t5x.training.loop import Batch, BatchFactory

Array = jax.Array
PyTree = Any

_BATCH_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                   'decoder_loss_weights')
# The look-ahead state is small: one resumable checkpoint is enough.
_KEEP_CHECKPOINTS = 1
DEFAULT_MIXTURE = 'ddtp_all'  # what `scripts/train_pass.py` trains on without a family


# ------------------------------------------------------------------------------
# Targets and the loss.
# ------------------------------------------------------------------------------


def lookahead_targets(decoder_target_tokens: Array, decoder_loss_weights: Array,
                      prefix_ends: Array, num_lookahead: int) -> tuple[Array, Array]:
  """True tokens and weights `[B, S, L]` of the look-ahead positions after `prefix_ends`."""
  pad = ((0, 0), (0, num_lookahead + 1))
  offsets = prefix_ends[:, :, None] + jnp.arange(1, num_lookahead + 1)  # [B, S, L]
  pick = lambda x: jax.vmap(lambda row, index: row[index])(jnp.pad(x, pad), offsets)
  return pick(decoder_target_tokens), pick(decoder_loss_weights).astype(jnp.float32)


def sample_prefix_ends(rng: Array, decoder_loss_weights: Array, samples: int) -> Array:
  """`[B, S]` prefix ends m drawn uniformly from [0, n - 2] for a row of n target tokens.

  m <= n - 2 leaves at least look-ahead 1 a true token; rows with n < 2 give
  m = 0 and only zero weights.
  """
  num_tokens = jnp.sum(decoder_loss_weights > 0, axis=1)  # [B]
  high = jnp.maximum(num_tokens - 1, 1)
  uniform = jax.random.uniform(rng, (decoder_loss_weights.shape[0], samples))
  return jnp.minimum(jnp.floor(uniform * high[:, None]), high[:, None] - 1).astype(jnp.int32)


def lookahead_loss(module: nn.Module, params: PyTree, lookahead: Array, batch: Batch,
                   prefix_ends: Array) -> tuple[Array, Array]:
  """Mean cross-entropy of the look-ahead predictions, and its value per look-ahead `[L]`."""
  num_lookahead = lookahead.shape[0]
  logits = lookahead_logits(module, params, lookahead, batch['encoder_input_tokens'],
                            batch['decoder_input_tokens'], prefix_ends)
  labels, weights = lookahead_targets(batch['decoder_target_tokens'],
                                      batch['decoder_loss_weights'], prefix_ends, num_lookahead)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights
  per_position = (jnp.sum(cross_entropy, axis=(0, 1))
                  / jnp.maximum(jnp.sum(weights, axis=(0, 1)), 1.0))
  return jnp.sum(cross_entropy) / jnp.maximum(jnp.sum(weights), 1.0), per_position


# ------------------------------------------------------------------------------
# Training steps.
# ------------------------------------------------------------------------------


@struct.dataclass
class PassTrainState:
  step: Array       # int32 scalar: Adam updates applied
  lookahead: Array  # [L, emb_dim]
  opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class PassHParams:
  """What decides the trained look-ahead embeddings besides the target and the data."""

  num_lookahead: int = 6
  learning_rate: float = 1e-2
  samples_per_sequence: int = 4
  seed: int = 0

  def __post_init__(self):
    if self.num_lookahead < 1 or self.samples_per_sequence < 1:
      raise ValueError(f'num_lookahead and samples_per_sequence must be >= 1, got '
                       f'{self.num_lookahead}, {self.samples_per_sequence}')
    if not self.learning_rate > 0:
      raise ValueError(f'learning_rate must be > 0, got {self.learning_rate}')


def create_train_state(params: PyTree, hparams: PassHParams) -> PassTrainState:
  """Step 0: the look-ahead embeddings of `init_lookahead`, fresh Adam slots."""
  lookahead = init_lookahead(params, hparams.num_lookahead, hparams.seed)
  return PassTrainState(step=jnp.asarray(0, jnp.int32), lookahead=lookahead,
                        opt_state=optax.adam(hparams.learning_rate).init(lookahead))


@functools.partial(jax.jit, static_argnames=('module', 'hparams'))
def _train_step(module: nn.Module, hparams: PassHParams, state: PassTrainState, params: PyTree,
                batch: Batch, key: Array) -> tuple[PassTrainState, dict[str, Array]]:
  # The prefix ends of step s come from fold_in(key, s): a resumed run replays them.
  prefix_ends = sample_prefix_ends(jax.random.fold_in(key, state.step),
                                   batch['decoder_loss_weights'], hparams.samples_per_sequence)
  loss_fn = lambda lookahead: lookahead_loss(module, params, lookahead, batch, prefix_ends)
  (loss, per_position), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.lookahead)
  optimizer = optax.adam(hparams.learning_rate)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.lookahead)
  lookahead = optax.apply_updates(state.lookahead, updates)
  return (PassTrainState(step=state.step + 1, lookahead=lookahead, opt_state=opt_state),
          {'loss': loss, 'per_position': per_position})


def make_train_step(module: nn.Module, hparams: PassHParams
                    ) -> Callable[[PassTrainState, PyTree, Batch, Array],
                                  tuple[PassTrainState, dict[str, Array]]]:
  """A jitted `train_step(state, params, batch, key) -> (state, metrics)`.

  Only `state.lookahead` (and Adam's slots) change; `params` is read, never
  differentiated or written. `metrics` holds the mean look-ahead cross-entropy
  `loss` before the update and its value `per_position [L]`.
  """
  return functools.partial(_train_step, module, hparams)


def check_batch(batch: Batch) -> None:
  """Raises a `ValueError` unless `batch` has the four features, the decoder's of one shape."""
  missing = [name for name in _BATCH_FEATURES if name not in batch]
  if missing:
    raise ValueError(f'a PaSS training batch needs {list(_BATCH_FEATURES)}; missing {missing}')
  shapes = {name: np.shape(batch[name]) for name in _BATCH_FEATURES}
  if len({shape for name, shape in shapes.items() if name.startswith('decoder_')}) != 1:
    raise ValueError(f'decoder features must share one shape [batch, length], got {shapes}')


# ------------------------------------------------------------------------------
# Training on the resumable loop.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PassTrainSummary:
  path: pathlib.Path
  num_steps: int
  steps_trained: int  # 0 when the file existed
  train_seconds: float
  final_loss: float | None
  final_per_position: list[float] | None
  cached: bool


def _log_metrics(step: int, metrics: Mapping[str, Any], book: loop.Book) -> dict[str, str]:
  book['last_loss'] = float(metrics['loss'])
  book['last_per_position'] = [round(float(x), 4) for x in metrics['per_position']]
  if not math.isfinite(book['last_loss']):
    raise FloatingPointError(f'PaSS training diverged at step {step}: loss {book["last_loss"]}')
  return {'loss': f'{book["last_loss"]:.3f}'}


def lookahead_trainee(module: nn.Module, params: PyTree, hparams: PassHParams) -> loop.Trainee:
  """The look-ahead embeddings of the frozen `(module, params)` as the loop's trainee."""
  params = jax.tree.map(jnp.asarray, params)
  train_step = make_train_step(module, hparams)
  key = jax.random.fold_in(jax.random.PRNGKey(hparams.seed), 1)
  step = lambda state, batch: train_step(state, params,
                                         {name: batch[name] for name in _BATCH_FEATURES}, key)
  return loop.Trainee(create_state=lambda: create_train_state(params, hparams),
                      train_step=step, check_batch=check_batch, log=_log_metrics,
                      extra_book={'last_per_position': None})


def _cached_summary(output_path: pathlib.Path, fingerprint: str, num_steps: int,
                    run_config: Mapping[str, Any]) -> PassTrainSummary | None:
  """The summary of an existing file made for this target, step count, hparams and data."""
  if not output_path.exists():
    return None
  contents = read_lookahead_file(output_path)
  recorded = contents['info']
  if (contents['target_fingerprint'] != fingerprint or recorded.get('num_steps') != num_steps
      or recorded.get('hparams') != run_config['hparams']
      or recorded.get('data') != run_config['data']):
    return None
  return PassTrainSummary(path=output_path, num_steps=num_steps, steps_trained=0,
                          train_seconds=recorded.get('train_seconds', math.nan),
                          final_loss=recorded.get('final_loss'),
                          final_per_position=recorded.get('final_per_position'), cached=True)


def train_lookahead(module: nn.Module, params: PyTree, make_batches: BatchFactory,
                    num_steps: int, output_path: str | os.PathLike, *,
                    hparams: PassHParams = PassHParams(), workdir: str | os.PathLike | None = None,
                    save_every: int = 50, log_every: int = 10, progress: bool = True,
                    data: Mapping[str, Any] | None = None) -> PassTrainSummary:
  """Trains look-ahead embeddings for the frozen target and writes them to `output_path`.

  Args:
    module, params: the target (never modified).
    make_batches: `make_batches(start)` yields batches `start, start+1, ...` of
      a fixed sequence with T5X's features (`encoder_input_tokens`,
      `decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`).
    num_steps: Adam steps in all.
    output_path: the `.npz` to write (see `default_lookahead_path`). If it
      exists for this target with `num_steps` steps nothing is trained.
    hparams: look-ahead count, learning rate, prefix samples per sequence, seed.
    workdir: where the resumable state goes (default: `<output_path>.train/`).
    save_every, log_every: steps between resumable saves / loss read-outs.
    data: JSON-able facts that identify the batches (task, batch size,
      lengths): recorded in the file, and a file or resumable state made
      with other data is not reused.
  """
  loop.check_loop_arguments(num_steps, save_every, _KEEP_CHECKPOINTS, log_every)
  output_path = pathlib.Path(output_path)
  fingerprint = params_fingerprint(params)
  run_config = {'hparams': dataclasses.asdict(hparams), 'target_fingerprint': fingerprint,
                'data': json.loads(json.dumps(dict(data or {})))}
  cached = _cached_summary(output_path, fingerprint, num_steps, run_config)
  if cached is not None:
    return cached
  workdir = loop.prepare_workdir(workdir or output_path.with_name(output_path.name + '.train'),
                                 run_config)
  result = loop.run_resumable(lookahead_trainee(module, params, hparams), make_batches,
                              num_steps, workdir, save_every=save_every,
                              keep_checkpoints=_KEEP_CHECKPOINTS, log_every=log_every,
                              progress=progress, desc='PaSS look-ahead')
  book = result.book
  record = dict(data=run_config['data'], num_steps=num_steps, hparams=run_config['hparams'],
                train_seconds=book['train_seconds'], final_loss=book['last_loss'],
                final_per_position=book['last_per_position'])
  save_lookahead(output_path, jax.device_get(result.state.lookahead), module.config, fingerprint,
                 record)
  return PassTrainSummary(path=output_path, num_steps=num_steps,
                          steps_trained=num_steps - result.start_step,
                          train_seconds=book['train_seconds'], final_loss=book['last_loss'],
                          final_per_position=book['last_per_position'], cached=False)


def task_feature_lengths(mixture: str, target_length: int = 0) -> dict[str, int]:
  """The task's own lengths (rows are not packed), targets cut to `target_length` if > 0."""
  from specdec_t5x.data import tasks

  lengths = dict(tasks.feature_lengths(mixture))
  if target_length:
    lengths['targets'] = min(lengths['targets'], target_length)
  return lengths


def train_on_task(module: nn.Module, params: PyTree, target_label: str, mixture: str,
                  num_steps: int, output_path: str | os.PathLike, *, hparams: PassHParams,
                  batch_size: int, target_length: int = 0) -> PassTrainSummary:
  """`train_lookahead` on the training targets of a seqio task or mixture.

  Batches of `batch_size` rows at `task_feature_lengths(mixture, target_length)`, in
  the order of `hparams.seed`; the target's label, the mixture, batch size and lengths
  are the run's `data`.
  """
  from specdec_t5x.data import tasks

  lengths = task_feature_lengths(mixture, target_length)

  def make_batches(start: int):
    return tasks.iter_train_batches(mixture, batch_size, lengths, seed=hparams.seed,
                                    skip_batches=start)

  return train_lookahead(module, params, make_batches, num_steps, output_path, hparams=hparams,
                         data={'target': target_label, 'mixture': mixture,
                               'batch_size': batch_size, 'feature_lengths': lengths})


__all__ = ['DEFAULT_MIXTURE', 'PassHParams', 'PassTrainState', 'PassTrainSummary',
           'lookahead_targets', 'sample_prefix_ends', 'lookahead_loss', 'create_train_state',
           'make_train_step', 'check_batch', 'lookahead_trainee', 'train_lookahead',
           'task_feature_lengths', 'train_on_task']
