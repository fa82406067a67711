"""Training `Transformer` with optax the way T5X trains T5.

What is taken from T5X (its T5 1.1 gin files and `t5x.trainer`):

* Adafactor with decay rate 0.8, update clipping 1.0, parameter-scaled
  updates, no momentum, factored second moments (`optax.adafactor`);
* the learning rate `base * 1/sqrt(max(step, warmup_steps))` (T5X's
  `'constant * rsqrt_decay'`), optionally times a linear warmup;
* cross-entropy summed over the `decoder_loss_weights`, plus a z-loss of 1e-4
  (`log(Z)^2` of the softmax normaliser), not divided by the batch size unless
  `loss_normalizing_factor` is set;
* the dropout key of step `s` is `fold_in(base_key, s)`, so a resumed run draws
  the same dropout masks as an uninterrupted one.

`train` runs on the shared resumable loop (`loop.py`: everything it needs to
resume is in `<workdir>/train_state/<step>/`) and, when done, writes the
parameters as the T5X checkpoint `<workdir>/checkpoint_<num_steps>` (see
`checkpoints.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from specdec_t5x.checkpoints import save_t5x_checkpoint, step_dir
from specdec_t5x.network import EXECUTION_FIELDS, T5Config, Transformer
from specdec_t5x.training import loop
from specdec_t5x.training.loop import Batch, BatchFactory

PyTree = Any

REQUIRED_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                     'decoder_loss_weights')
# Packed batches (T5X's feature converter with pack=True) also carry these.
OPTIONAL_FEATURES = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
                     'decoder_positions')
SUMMARY_FILE = 'train_summary.json'


@dataclasses.dataclass(frozen=True)
class TrainHParams:
  """Everything besides the model and the data that decides the trained weights.

  Defaults are T5X's (T5 1.1 gin files, `utils.create_learning_rate_scheduler`).
  """

  base_learning_rate: float = 1.0
  warmup_steps: int = 1000
  linear_warmup: bool = False
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  loss_normalizing_factor: float | None = None
  decay_rate: float = 0.8
  clipping_threshold: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.warmup_steps < 1:
      raise ValueError(f'warmup_steps must be >= 1 (the rate is 1/sqrt(max(step, warmup))), '
                       f'got {self.warmup_steps}')
    if self.base_learning_rate <= 0:
      raise ValueError(f'base_learning_rate must be > 0, got {self.base_learning_rate}')
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f'label_smoothing must be in [0, 1), got {self.label_smoothing}')
    if self.z_loss < 0:
      raise ValueError(f'z_loss must be >= 0, got {self.z_loss}')
    if self.loss_normalizing_factor is not None and self.loss_normalizing_factor <= 0:
      raise ValueError('loss_normalizing_factor must be None or > 0, got '
                       f'{self.loss_normalizing_factor}')


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: PyTree
  opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class TrainSummary:
  """What `train` did: `steps_trained` is 0 when the final checkpoint existed."""

  checkpoint_dir: pathlib.Path
  num_steps: int
  steps_trained: int
  train_seconds: float
  final_loss: float | None
  num_params: int
  cached: bool


# ------------------------------------------------------------------------------
# Schedule, optimizer, loss.
# ------------------------------------------------------------------------------


def rsqrt_schedule(base_learning_rate: float, warmup_steps: int, linear_warmup: bool = False,
                   min_learning_rate: float = 1e-8) -> optax.Schedule:
  """T5X's `'constant * rsqrt_decay'` (times `'linear_warmup'` if asked) as an optax schedule.

  `base / sqrt(max(step, warmup_steps))`, floored at `min_learning_rate` as in
  `t5x.utils.create_learning_rate_scheduler`.
  """
  if warmup_steps < 1:
    raise ValueError(f'warmup_steps must be >= 1, got {warmup_steps}')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    rate = base_learning_rate / jnp.sqrt(jnp.maximum(step, warmup_steps))
    if linear_warmup:
      rate = rate * jnp.minimum(1.0, step / warmup_steps)
    return jnp.maximum(rate, min_learning_rate)

  return schedule


def make_optimizer(hparams: TrainHParams) -> optax.GradientTransformation:
  """Adafactor with T5X's T5 1.1 settings and the rsqrt schedule."""
  schedule = rsqrt_schedule(hparams.base_learning_rate, hparams.warmup_steps,
                            hparams.linear_warmup)
  return optax.adafactor(learning_rate=schedule, decay_rate=hparams.decay_rate, decay_offset=0,
                         multiply_by_parameter_scale=True,
                         clipping_threshold=hparams.clipping_threshold, momentum=None,
                         factored=True, min_dim_size_to_factor=128, eps=1e-30)


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                           z_loss: float = 0.0, label_smoothing: float = 0.0,
                           loss_normalizing_factor: float | None = None
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """T5X's loss: summed weighted cross-entropy plus `z_loss * log(Z)^2`.

  Args:
    logits: `[batch, length, vocab]`.
    targets: `[batch, length]` token ids.
    weights: `[batch, length]` loss weights (0 on padding).

  Returns:
    `(loss, z_loss, weight_sum)` scalars; `loss` includes the z-loss and, like
    T5X's, subtracts the entropy of the smoothed labels so that a perfect
    prediction scores 0.
  """
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  off_value = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
  soft_targets = jax.nn.one_hot(targets, vocab) * (confidence - off_value) + off_value
  label_entropy = -(confidence * math.log(confidence)
                    + (vocab - 1) * off_value * math.log(off_value + 1e-20))
  log_z = jax.nn.logsumexp(logits, axis=-1)
  cross_entropy = -jnp.sum(soft_targets * (logits - log_z[..., None]), axis=-1)
  token_z_loss = z_loss * jnp.square(log_z)
  token_loss = (cross_entropy + token_z_loss - label_entropy) * weights
  token_z_loss = token_z_loss * weights
  if loss_normalizing_factor is not None:
    token_loss = token_loss / loss_normalizing_factor
    token_z_loss = token_z_loss / loss_normalizing_factor
  return jnp.sum(token_loss), jnp.sum(token_z_loss), jnp.sum(weights)


# ------------------------------------------------------------------------------
# Steps.
# ------------------------------------------------------------------------------


def check_batch(batch: Batch) -> None:
  """Raises a `ValueError` unless `batch` has T5X's encoder-decoder features, well shaped."""
  if not isinstance(batch, Mapping):
    raise ValueError(f'a batch must be a mapping of feature name to array, got {type(batch)}')
  missing = [name for name in REQUIRED_FEATURES if name not in batch]
  if missing:
    raise ValueError(f'batch lacks feature(s) {missing}; it has {sorted(batch)}')
  shapes = {name: np.shape(batch[name]) for name in REQUIRED_FEATURES}
  if any(len(shape) != 2 for shape in shapes.values()):
    raise ValueError(f'batch features must be [batch, length] arrays, got shapes {shapes}')
  decoder = {name: shape for name, shape in shapes.items() if name.startswith('decoder_')}
  if len(set(decoder.values())) != 1:
    raise ValueError(f'decoder features must share one shape, got {decoder}')
  if shapes['encoder_input_tokens'][0] != shapes['decoder_input_tokens'][0]:
    raise ValueError(f'encoder and decoder batch sizes differ: {shapes}')


def model_inputs(batch: Batch) -> dict[str, Any]:
  inputs = {name: batch[name] for name in REQUIRED_FEATURES[:3]}
  inputs.update({name: batch[name] for name in OPTIONAL_FEATURES if name in batch})
  return inputs


# The jitted functions below take the (hashable, frozen) config and hparams as
# static arguments, so jax reuses their compilation across calls and runs.


@functools.partial(jax.jit, static_argnums=0)
def _init_params(config: T5Config, rng: jax.Array) -> PyTree:
  # Jitted: op-by-op initialisation of a deep network costs seconds of dispatch.
  tokens = jnp.ones((1, 1), jnp.int32)
  return Transformer(config).init(rng, tokens, tokens, tokens, enable_dropout=False)['params']


def init_params(config: T5Config, seed: int = 0) -> PyTree:
  """Freshly initialised parameters of `Transformer(config)`."""
  return _init_params(config, jax.random.PRNGKey(seed))


@functools.partial(jax.jit, static_argnums=0)
def _init_opt_state(hparams: TrainHParams, params: PyTree) -> PyTree:
  return make_optimizer(hparams).init(params)


def create_train_state(config: T5Config, hparams: TrainHParams) -> TrainState:
  """Step 0: parameters from `hparams.seed`, fresh optimizer slots."""
  params = init_params(config, hparams.seed)
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    opt_state=_init_opt_state(hparams, params))


def _loss_fn(config: T5Config, hparams: TrainHParams, params: PyTree, batch: Batch,
             dropout_rng: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  logits = Transformer(config).apply({'params': params}, **model_inputs(batch),
                                     enable_dropout=True, rngs={'dropout': dropout_rng})
  loss, z_loss, weight_sum = weighted_cross_entropy(
      logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'],
      z_loss=hparams.z_loss, label_smoothing=hparams.label_smoothing,
      loss_normalizing_factor=hparams.loss_normalizing_factor)
  return loss, (z_loss, weight_sum)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def _train_step(config: T5Config, hparams: TrainHParams, state: TrainState, batch: Batch,
                dropout_key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
  # T5X's per-step dropout key: a resumed run replays the same masks.
  dropout_rng = jax.random.fold_in(dropout_key, state.step)
  grad_fn = jax.value_and_grad(functools.partial(_loss_fn, config, hparams), has_aux=True)
  (loss, (z_loss, weight_sum)), grads = grad_fn(state.params, batch, dropout_rng)
  updates, opt_state = make_optimizer(hparams).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Per-token values for display, independent of loss_normalizing_factor.
  scale = hparams.loss_normalizing_factor or 1.0
  denominator = jnp.maximum(weight_sum, 1e-8)
  schedule = rsqrt_schedule(hparams.base_learning_rate, hparams.warmup_steps,
                            hparams.linear_warmup)
  metrics = {'loss': loss, 'cross_entropy': (loss - z_loss) * scale / denominator,
             'z_loss': z_loss * scale / denominator, 'learning_rate': schedule(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(config: T5Config, hparams: TrainHParams
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
  """A jitted `train_step(state, batch, dropout_key) -> (state, metrics)`.

  `state` is donated (do not use it after the call). `metrics` holds
  per-token `cross_entropy` and `z_loss` (weighted means over the batch), the
  `loss` that was minimised (T5X's sum) and the `learning_rate` used.
  """
  return functools.partial(_train_step, config, hparams)


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(config: T5Config, params: PyTree, batch: Batch) -> tuple[jax.Array, jax.Array]:
  logits = Transformer(config).apply({'params': params}, **model_inputs(batch),
                                     enable_dropout=False)
  loss, _, weight_sum = weighted_cross_entropy(logits, batch['decoder_target_tokens'],
                                               batch['decoder_loss_weights'])
  return loss, weight_sum


def evaluate_loss(params: PyTree, config: T5Config, batches: Iterable[Batch]) -> float:
  """Mean cross-entropy per target token (nats, weighted by `decoder_loss_weights`).

  No dropout, no z-loss, no label smoothing: the number whose exp is the
  perplexity.
  """
  total, weight = 0.0, 0.0
  for batch in batches:
    check_batch(batch)
    loss, weight_sum = _eval_sums(config, params, batch)
    total += float(loss)
    weight += float(weight_sum)
  if weight <= 0:
    raise ValueError('evaluate_loss got no batches, or batches whose decoder_loss_weights '
                     'are all 0')
  return total / weight


# ------------------------------------------------------------------------------
# Training a model on the resumable loop.
# ------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
  if dataclasses.is_dataclass(value):
    # How the network runs (e.g. which decode kernels) is not what was trained: leaving those
    # fields out keeps runs recorded before they existed resumable.
    skipped = EXECUTION_FIELDS if isinstance(value, T5Config) else ()
    return {field.name: jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value) if field.name not in skipped}
  if isinstance(value, (list, tuple)):
    return [jsonable(item) for item in value]
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return jnp.dtype(value).name  # the only other field type in T5Config is a dtype


def _count_params(params: PyTree) -> int:
  return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


def cached_summary(workdir: pathlib.Path, num_steps: int) -> TrainSummary:
  recorded = {}
  if (workdir / SUMMARY_FILE).exists():
    recorded = json.loads((workdir / SUMMARY_FILE).read_text())
  return TrainSummary(checkpoint_dir=step_dir(workdir, num_steps), num_steps=num_steps,
                      steps_trained=0, train_seconds=recorded.get('train_seconds', math.nan),
                      final_loss=recorded.get('final_loss'),
                      num_params=recorded.get('num_params', 0), cached=True)


def _log_metrics(step: int, metrics: Mapping[str, Any], book: loop.Book) -> dict[str, str]:
  book['last_loss'] = float(metrics['cross_entropy'])
  if not math.isfinite(book['last_loss']):
    raise FloatingPointError(f'training diverged: cross-entropy {book["last_loss"]} at step '
                             f'{step}')
  return {'loss': f'{book["last_loss"]:.4f}', 'lr': f'{float(metrics["learning_rate"]):.2e}'}


def model_trainee(config: T5Config, hparams: TrainHParams) -> loop.Trainee:
  """`Transformer(config)` as the loop's trainee: T5X's step, dropout key from `hparams.seed`."""
  train_step = make_train_step(config, hparams)
  dropout_key = jax.random.fold_in(jax.random.PRNGKey(hparams.seed), 1)
  return loop.Trainee(create_state=lambda: create_train_state(config, hparams),
                      train_step=lambda state, batch: train_step(state, batch, dropout_key),
                      check_batch=check_batch, log=_log_metrics)


def train(config: T5Config, make_batches: BatchFactory, num_steps: int,
          workdir: str | os.PathLike, *, hparams: TrainHParams = TrainHParams(),
          save_every: int = 500, keep_checkpoints: int = 2, log_every: int = 10,
          progress: bool = True, desc: str | None = None) -> TrainSummary:
  """Trains `Transformer(config)` for `num_steps` steps, resuming from `workdir`.

  Args:
    config: the network.
    make_batches: `make_batches(start)` must yield the batches `start, start+1,
      ...` of a fixed sequence (dicts of `[batch, length]` NumPy arrays with
      T5X's feature names `REQUIRED_FEATURES`); a resumed run calls it with
      the number of batches the interrupted run consumed.
    num_steps: total optimizer steps (one batch each).
    workdir: where the resumable state, the run's configuration and the final
      T5X checkpoint `checkpoint_<num_steps>` go.
    hparams: optimizer, loss and seed settings; a workdir is tied to one
      `(config, hparams)` pair and refuses another. Calling again with a
      larger `num_steps` continues from the latest resumable state.
    save_every, keep_checkpoints, log_every, progress, desc: as in
      `loop.run_resumable` (steps between resumable checkpoints, how many to
      keep, steps between loss read-outs, a tqdm bar and its label).

  Returns:
    A `TrainSummary`; if `checkpoint_<num_steps>` already existed nothing is
    trained and `cached` is True.
  """
  loop.check_loop_arguments(num_steps, save_every, keep_checkpoints, log_every)
  workdir = loop.prepare_workdir(workdir, {'model': jsonable(config),
                                           'hparams': jsonable(hparams)})
  if step_dir(workdir, num_steps).exists():
    return cached_summary(workdir, num_steps)
  result = loop.run_resumable(model_trainee(config, hparams), make_batches, num_steps, workdir,
                              save_every=save_every, keep_checkpoints=keep_checkpoints,
                              log_every=log_every, progress=progress, desc=desc)
  return finish_run(workdir, result, num_steps)


def finish_run(workdir: pathlib.Path, result: loop.LoopResult, num_steps: int) -> TrainSummary:
  """Writes `train_summary.json` and the T5X checkpoint `checkpoint_<num_steps>` of a run."""
  train_seconds, final_loss = result.book['train_seconds'], result.book['last_loss']
  num_params = _count_params(result.state.params)
  loop.write_json_atomically(workdir / SUMMARY_FILE, {
      'num_steps': num_steps, 'train_seconds': train_seconds, 'final_loss': final_loss,
      'num_params': num_params})
  checkpoint = save_t5x_checkpoint(jax.device_get(result.state.params), workdir, num_steps)
  return TrainSummary(checkpoint_dir=checkpoint, num_steps=num_steps,
                      steps_trained=num_steps - result.start_step, train_seconds=train_seconds,
                      final_loss=final_loss, num_params=num_params, cached=False)


__all__ = ['TrainHParams', 'TrainState', 'TrainSummary', 'REQUIRED_FEATURES', 'SUMMARY_FILE',
           'rsqrt_schedule', 'make_optimizer', 'weighted_cross_entropy', 'check_batch',
           'init_params', 'create_train_state', 'make_train_step', 'evaluate_loss', 'train',
           'model_trainee', 'model_inputs', 'jsonable', 'cached_summary', 'finish_run']
