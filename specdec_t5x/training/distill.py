"""Distilling a draft towards its target: the draft learns the TARGET's next-token distributions.

Speculative decoding accepts a draft token with probability min(1, p/q), so
the expected acceptance at a prefix is β = Σ_x min(p(x), q(x)) = 1 − TVD(p, q)
(the paper's §3.1), and at T = 0 a draft token is kept iff it is the target's
argmax. An independently trained draft only learns the data; a distilled one
learns what the target would say (DistillSpec, Zhou et al. 2023,
arXiv:2310.08461). What is done here, in DistillSpec's terms:

* data: the family's training batches (never validation or test) that the
  draft was not trained on, teacher-forced either on their references or on
  the target's own greedy outputs for their inputs (`training.generated`,
  the prefixes greedy speculative decoding meets); one target forward pass
  per step gives the teacher's logits (the target is frozen), or, for cached
  target-written batches, only its logits layer applied to the hidden states
  cached with them (`TEACHER_HIDDEN`: a draft reading them six times pays for
  the target's forward pass once);
* divergence (`DIVERGENCES`): 'fkl' KL(p‖q), 'rkl' KL(q‖p), 'tvd' TVD(p, q)
  (1 − β: what sampled decoding accepts), or 'argmax' the cross-entropy
  of the target's greedy token (what T = 0 accepts); at `temperature` τ both
  distributions are softmax(logits / τ);
* start: the independent draft's saved train state (parameters, Adafactor's
  statistics and step), so the run continues the draft's own schedule
  (`loop.restore_state`).

`agreement` measures the result without decoding: along teacher-forced
validation targets, how often the draft's argmax is the target's (the T = 0
acceptance rate there) and the mean 1 − TVD (β at T = 1). Those are the α the
drafts would have if decoding followed the reference prefixes; the sweep
measures the real α on the target's own prefixes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from specdec_t5x import paths
from specdec_t5x.checkpoints import step_dir
from specdec_t5x.network import DenseGeneral, T5Config, Transformer
from specdec_t5x.training import loop, models
from specdec_t5x.training.loop import Batch, BatchFactory

PyTree = Any
DIVERGENCES = ('fkl', 'rkl', 'tvd', 'argmax')
# 'references': teacher forcing on the training targets; 'target_greedy': on the
# target's own greedy outputs for the training inputs (`training.generated`).
DATA_SOURCES = ('references', 'target_greedy')
# A batch may carry the teacher's decoder output under this key, `[R, S, emb_dim]` (the input of
# its logits layer, `teacher_hidden`); its logits are then one product, not a forward pass.
TEACHER_HIDDEN = 'teacher_hidden'


@dataclasses.dataclass(frozen=True)
class DistillSettings:
  """What the distillation minimises, `divergence` (`DIVERGENCES`) at `temperature`, and on what.

  `data` (`DATA_SOURCES`) names the decoder side of the batches; the caller
  supplies batches of that kind (`family_runs.distill_draft` does).
  """

  divergence: str = 'fkl'
  temperature: float = 1.0
  data: str = 'references'

  def __post_init__(self):
    if self.divergence not in DIVERGENCES:
      raise ValueError(f'divergence must be one of {DIVERGENCES}, got {self.divergence!r}')
    if not self.temperature > 0:
      raise ValueError(f'temperature must be > 0, got {self.temperature}')
    if self.data not in DATA_SOURCES:
      raise ValueError(f'data must be one of {DATA_SOURCES}, got {self.data!r}')

  def recorded(self) -> dict[str, Any]:
    """The settings as a run records them (runs on references predate `data`)."""
    fields = dataclasses.asdict(self)
    return fields if self.data != 'references' else {k: v for k, v in fields.items()
                                                      if k != 'data'}


def token_divergence(teacher_logits: jax.Array, student_logits: jax.Array,
                     settings: DistillSettings) -> jax.Array:
  """Per-position divergence `[batch, length]` of `[batch, length, vocab]` logits.

  The teacher's side carries no gradient.
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  if settings.divergence == 'argmax':
    labels = jnp.argmax(teacher_logits, axis=-1)
    return optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  log_p = jax.nn.log_softmax(teacher_logits / settings.temperature, axis=-1)
  log_q = jax.nn.log_softmax(student_logits / settings.temperature, axis=-1)
  if settings.divergence == 'fkl':
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  if settings.divergence == 'rkl':
    return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)
  return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)


def _logits(config: T5Config, params: PyTree, batch: Batch, **kwargs: Any) -> jax.Array:
  return Transformer(config).apply({'params': params}, **models.model_inputs(batch), **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def teacher_hidden(config: T5Config, params: PyTree, batch: Batch) -> jax.Array:
  """The decoder output `[R, S, emb_dim]` (after its final norm) that the logits layer reads."""
  _, state = Transformer(config).apply(
      {'params': params}, **models.model_inputs(batch), enable_dropout=False,
      capture_intermediates=lambda module, method: module.name == 'decoder_norm',
      mutable=['intermediates'])
  return state['intermediates']['decoder']['decoder_norm']['__call__'][0]


def logits_from_hidden(config: T5Config, params: PyTree, hidden: jax.Array) -> jax.Array:
  """The logits `[R, S, vocab]` of `teacher_hidden`'s output: the model's logits layer alone."""
  if config.logits_via_embedding:
    embedding = params['token_embedder']['embedding']
    return jnp.dot(hidden, embedding.T) / jnp.sqrt(jnp.float32(hidden.shape[-1]))
  layer = DenseGeneral(config.vocab_size, dtype=jnp.float32, kernel_axes=('embed', 'vocab'))
  return layer.apply({'params': params['decoder']['logits_dense']}, hidden)


def logits_of_teacher(config: T5Config, params: PyTree, batch: Batch) -> jax.Array:
  """The frozen teacher's logits `[R, S, vocab]` for `batch`, from `TEACHER_HIDDEN` if it has it."""
  if TEACHER_HIDDEN in batch:
    return logits_from_hidden(config, params, batch[TEACHER_HIDDEN])
  return _logits(config, params, batch, enable_dropout=False)


def _loss_fn(student: T5Config, hparams: models.TrainHParams, settings: DistillSettings,
             params: PyTree, teacher_logits: jax.Array, batch: Batch,
             dropout_rng: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  logits = _logits(student, params, batch, enable_dropout=True, rngs={'dropout': dropout_rng})
  weights = batch['decoder_loss_weights']
  divergence = jnp.sum(token_divergence(teacher_logits, logits, settings) * weights)
  # T5X's z-loss keeps the draft's softmax normaliser near 1, as in its own training.
  z_loss = hparams.z_loss * jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * weights)
  return divergence + z_loss, (divergence, jnp.sum(weights))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=4)
def _distill_step(student: T5Config, teacher: T5Config, hparams: models.TrainHParams,
                  settings: DistillSettings, state: models.TrainState, teacher_params: PyTree,
                  batch: Batch, dropout_key: jax.Array
                  ) -> tuple[models.TrainState, dict[str, jax.Array]]:
  teacher_logits = logits_of_teacher(teacher, teacher_params, batch)
  dropout_rng = jax.random.fold_in(dropout_key, state.step)
  grad_fn = jax.value_and_grad(functools.partial(_loss_fn, student, hparams, settings),
                               has_aux=True)
  (_, (divergence, weight_sum)), grads = grad_fn(state.params, teacher_logits, batch,
                                                 dropout_rng)
  updates, opt_state = models.make_optimizer(hparams).update(grads, state.opt_state,
                                                             state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'divergence': divergence / jnp.maximum(weight_sum, 1e-8)}
  return models.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _log_metrics(step: int, metrics: Mapping[str, Any], book: loop.Book) -> dict[str, str]:
  book['last_loss'] = float(metrics['divergence'])
  if not jnp.isfinite(book['last_loss']):
    raise FloatingPointError(f'distillation diverged: divergence {book["last_loss"]} at step '
                             f'{step}')
  return {'divergence': f'{book["last_loss"]:.4f}'}


@dataclasses.dataclass(frozen=True)
class Teacher:
  """The frozen target: its config and parameters, and where they came from."""

  config: T5Config
  params: PyTree
  checkpoint: pathlib.Path


@dataclasses.dataclass(frozen=True)
class Start:
  """The draft's run to continue: its workdir (with `train_state/`) and step."""

  workdir: pathlib.Path
  step: int


def distill_trainee(student: T5Config, teacher: Teacher, hparams: models.TrainHParams,
                    settings: DistillSettings, start: Start) -> loop.Trainee:
  """The draft as the loop's trainee, starting from the run `start` saved."""
  dropout_key = jax.random.fold_in(jax.random.PRNGKey(hparams.seed), 2)
  teacher_params = jax.tree.map(jnp.asarray, teacher.params)

  def describe_state() -> models.TrainState:
    return models.create_train_state(student, hparams)

  def create_state() -> models.TrainState:
    return loop.restore_state(start.workdir, describe_state, start.step)

  def train_step(state, batch):
    return _distill_step(student, teacher.config, hparams, settings, state, teacher_params,
                         batch, dropout_key)

  return loop.Trainee(create_state=create_state, train_step=train_step,
                      check_batch=models.check_batch, log=_log_metrics,
                      describe_state=describe_state)


def distill(student: T5Config, teacher: Teacher, start: Start, make_batches: BatchFactory,
            num_steps: int, workdir: str | os.PathLike, *,
            hparams: models.TrainHParams | None = None,
            settings: DistillSettings | None = None, save_every: int = 200,
            keep_checkpoints: int = 2, log_every: int = 10, progress: bool = True,
            desc: str | None = None) -> models.TrainSummary:
  """Distils the draft saved by `start` towards `teacher` for `num_steps` more steps.

  Args:
    student: the draft's network (that of `start`'s run).
    teacher: the frozen target.
    start: the draft's run and the step to continue from; its train state
      there must exist (`loop.restore_state`).
    make_batches: `make_batches(i)` yields the distillation's batches i, i+1,
      ... (the caller chooses which training batches those are).
    num_steps: distillation steps; the result is `checkpoint_<start.step +
      num_steps>` in `workdir` (the step count continues the draft's).
    hparams: the draft's optimizer settings (Adafactor and its schedule
      continue from the restored state); default `TrainHParams()`.
    settings: the divergence (default `DistillSettings()`: KL(p‖q) at τ = 1).
    save_every, keep_checkpoints, log_every, progress, desc: the
      divergence, and as in `models.train`.

  Returns:
    A `models.TrainSummary` (`final_loss` is the last per-token divergence).
  """
  hparams = hparams or models.TrainHParams()
  settings = settings or DistillSettings()
  total = start.step + num_steps
  loop.check_loop_arguments(num_steps, save_every, keep_checkpoints, log_every)
  run_config = {'model': models.jsonable(student), 'hparams': models.jsonable(hparams),
                'distill': {**settings.recorded(),
                            'teacher': paths.portable_path(teacher.checkpoint),
                            'teacher_model': models.jsonable(teacher.config),
                            'start': paths.portable_path(start.workdir),
                            'start_step': start.step}}
  workdir = loop.prepare_workdir(workdir, run_config)
  if step_dir(workdir, total).exists():
    return models.cached_summary(workdir, total)
  result = loop.run_resumable(distill_trainee(student, teacher, hparams, settings, start),
                              make_batches, total, workdir, save_every=save_every,
                              keep_checkpoints=keep_checkpoints, log_every=log_every,
                              progress=progress, desc=desc)
  return models.finish_run(workdir, result, total)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _agreement_sums(student: T5Config, teacher: T5Config, student_params: PyTree,
                    teacher_params: PyTree, batch: Batch) -> jax.Array:
  p = jax.nn.softmax(_logits(teacher, teacher_params, batch, enable_dropout=False), axis=-1)
  q = jax.nn.softmax(_logits(student, student_params, batch, enable_dropout=False), axis=-1)
  weights = batch['decoder_loss_weights']
  same_argmax = (jnp.argmax(p, -1) == jnp.argmax(q, -1)).astype(jnp.float32)
  beta = jnp.sum(jnp.minimum(p, q), axis=-1)
  return jnp.stack([jnp.sum(same_argmax * weights), jnp.sum(beta * weights),
                    jnp.sum(weights)])


def agreement(student: T5Config, student_params: PyTree, teacher: T5Config,
              teacher_params: PyTree, batches: Iterable[Batch]) -> dict[str, float]:
  """Teacher-forced acceptance proxies over `batches` (weighted by `decoder_loss_weights`).

  Returns:
    `argmax_agreement`: the fraction of target positions where the draft's
    argmax is the target's (α at T = 0 along these prefixes);
    `beta`: the mean Σ min(p, q) = 1 − TVD (α at T = 1); `tokens`.
  """
  totals = jnp.zeros(3)
  for batch in batches:
    models.check_batch(batch)
    totals = totals + _agreement_sums(student, teacher, student_params, teacher_params, batch)
  same, beta, tokens = (float(x) for x in totals)
  if tokens <= 0:
    raise ValueError('agreement got no batches, or batches whose decoder_loss_weights are 0')
  return {'argmax_agreement': same / tokens, 'beta': beta / tokens, 'tokens': tokens}


__all__ = ['DIVERGENCES', 'DATA_SOURCES', 'TEACHER_HIDDEN', 'DistillSettings', 'Teacher', 'Start',
           'token_divergence', 'teacher_hidden', 'logits_from_hidden', 'logits_of_teacher',
           'distill_trainee', 'distill', 'agreement']
