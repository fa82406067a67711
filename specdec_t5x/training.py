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

`train` keeps everything it needs to resume in `<workdir>/train_state/<step>/`
(Orbax, written to a temporary directory and renamed, so a kill mid-save
leaves the previous checkpoint intact) and, when done, writes the parameters as
the T5X checkpoint `<workdir>/checkpoint_<num_steps>` (see `checkpoints.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from tqdm import tqdm

from specdec_t5x.checkpoints import save_t5x_checkpoint, step_dir
from specdec_t5x.network import T5Config, Transformer

PyTree = Any
Batch = Mapping[str, np.ndarray]
# `make_batches(start)` yields batches `start, start + 1, ...` of one fixed
# sequence, so a resumed run continues the data where the interrupted one stopped.
BatchFactory = Callable[[int], Iterable[Batch]]

REQUIRED_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                     'decoder_loss_weights')
# Packed batches (T5X's feature converter with pack=True) also carry these.
OPTIONAL_FEATURES = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
                     'decoder_positions')
TRAIN_STATE_DIR = 'train_state'
RUN_CONFIG_FILE = 'train_config.json'
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


def _model_inputs(batch: Batch) -> dict[str, Any]:
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
  logits = Transformer(config).apply({'params': params}, **_model_inputs(batch),
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
  logits = Transformer(config).apply({'params': params}, **_model_inputs(batch),
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
# The resumable training loop.
# ------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
  if dataclasses.is_dataclass(value):
    return {field.name: _jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)}
  if isinstance(value, (list, tuple)):
    return [_jsonable(item) for item in value]
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return jnp.dtype(value).name  # the only other field type in T5Config is a dtype


def _check_run_config(workdir: pathlib.Path, config: T5Config, hparams: TrainHParams) -> None:
  """Records what the run trains, or refuses a workdir that trained something else."""
  wanted = {'model': _jsonable(config), 'hparams': _jsonable(hparams)}
  path = workdir / RUN_CONFIG_FILE
  if path.exists():
    recorded = json.loads(path.read_text())
    if recorded != wanted:
      differing = sorted(f'{part}.{key}' for part in wanted
                         for key in wanted[part].keys() | recorded.get(part, {}).keys()
                         if wanted[part].get(key) != recorded.get(part, {}).get(key))
      raise ValueError(f'{workdir} holds a run with a different configuration (differs in '
                       f'{differing}); use another workdir or delete it')
    return
  _write_json_atomically(path, wanted)


def _write_json_atomically(path: pathlib.Path, payload: Mapping[str, Any]) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)


def _abstract_state(config: T5Config, hparams: TrainHParams) -> TrainState:
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(lambda: create_train_state(config, hparams))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes)


def _count_params(params: PyTree) -> int:
  return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)))


def _cached_summary(workdir: pathlib.Path, num_steps: int) -> TrainSummary:
  recorded = {}
  if (workdir / SUMMARY_FILE).exists():
    recorded = json.loads((workdir / SUMMARY_FILE).read_text())
  return TrainSummary(checkpoint_dir=step_dir(workdir, num_steps), num_steps=num_steps,
                      steps_trained=0, train_seconds=recorded.get('train_seconds', math.nan),
                      final_loss=recorded.get('final_loss'),
                      num_params=recorded.get('num_params', 0), cached=True)


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
    save_every: steps between resumable checkpoints (the last step is always
      saved).
    keep_checkpoints: how many resumable checkpoints to keep.
    log_every: steps between loss read-outs for the progress bar (each one
      waits for the device).
    progress: show a tqdm bar.
    desc: the bar's label.

  Returns:
    A `TrainSummary`; if `checkpoint_<num_steps>` already existed nothing is
    trained and `cached` is True.
  """
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}')
  if save_every < 1 or keep_checkpoints < 1 or log_every < 1:
    raise ValueError('save_every, keep_checkpoints and log_every must be >= 1, got '
                     f'{save_every}, {keep_checkpoints}, {log_every}')
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  _check_run_config(workdir, config, hparams)
  if step_dir(workdir, num_steps).exists():
    return _cached_summary(workdir, num_steps)

  options = ocp.CheckpointManagerOptions(max_to_keep=keep_checkpoints, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  with ocp.CheckpointManager(workdir / TRAIN_STATE_DIR, options=options) as manager:
    state, batches_consumed, train_seconds, final_loss = _restore_or_create(
        manager, config, hparams, num_steps)
    start_step = int(state.step)
    train_step = make_train_step(config, hparams)
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(hparams.seed), 1)
    batches = iter(make_batches(batches_consumed))
    with tqdm(total=num_steps, initial=start_step, desc=desc, unit='step',
              disable=not progress, dynamic_ncols=True) as bar:
      started = time.perf_counter() - train_seconds
      for step in range(start_step + 1, num_steps + 1):
        batch = next(batches, None)
        if batch is None:
          raise ValueError(f'the batch iterator ran out after {batches_consumed} batches; '
                           f'{num_steps} steps need {num_steps} batches')
        check_batch(batch)
        state, metrics = train_step(state, batch, dropout_key)
        batches_consumed += 1
        bar.update(1)
        if step % log_every == 0 or step == num_steps:
          final_loss = float(metrics['cross_entropy'])
          if not math.isfinite(final_loss):
            raise FloatingPointError(f'training diverged: cross-entropy {final_loss} at step '
                                     f'{step}')
          bar.set_postfix(loss=f'{final_loss:.4f}', lr=f'{float(metrics["learning_rate"]):.2e}')
        if step % save_every == 0 or step == num_steps:
          train_seconds = time.perf_counter() - started
          manager.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=ocp.args.JsonSave({'batches_consumed': batches_consumed,
                                      'train_seconds': train_seconds, 'last_loss': final_loss})))

  num_params = _count_params(state.params)
  _write_json_atomically(workdir / SUMMARY_FILE, {
      'num_steps': num_steps, 'train_seconds': train_seconds, 'final_loss': final_loss,
      'num_params': num_params})
  checkpoint = save_t5x_checkpoint(jax.device_get(state.params), workdir, num_steps)
  return TrainSummary(checkpoint_dir=checkpoint, num_steps=num_steps,
                      steps_trained=num_steps - start_step, train_seconds=train_seconds,
                      final_loss=final_loss, num_params=num_params, cached=False)


def _restore_or_create(manager: ocp.CheckpointManager, config: T5Config, hparams: TrainHParams,
                       num_steps: int) -> tuple[TrainState, int, float, float | None]:
  """`(state, batches_consumed, train_seconds, last_loss)` from the latest checkpoint or step 0."""
  latest = manager.latest_step()
  if latest is None:
    return create_train_state(config, hparams), 0, 0.0, None
  if latest > num_steps:
    raise ValueError(f'{manager.directory} holds training state at step {latest}, beyond the '
                     f'requested num_steps={num_steps}')
  restored = manager.restore(latest, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract_state(config, hparams)),
      data=ocp.args.JsonRestore()))
  data = restored['data']
  return (restored['state'], int(data['batches_consumed']), float(data['train_seconds']),
          data.get('last_loss'))


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


__all__ = ['TrainHParams', 'TrainState', 'TrainSummary', 'REQUIRED_FEATURES', 'rsqrt_schedule',
           'make_optimizer', 'weighted_cross_entropy', 'check_batch', 'init_params',
           'create_train_state', 'make_train_step', 'evaluate_loss', 'train', 'skip_batches']
