"""PaSS for T5: the target drafts for itself through L learned look-ahead embeddings.

PaSS (Monea, Joulin, Grave 2023) appends L "look-ahead" positions after the
decoder's real inputs. Their input embeddings `lookahead [L, emb_dim]` are the
only new parameters; the model is frozen. If the last real input sits at
decoder position m (so the target's logits there give token m+1), look-ahead j
(1-based) sits at position m + j and is trained to predict token m + 1 + j.

In `speculative_decode` the drafter rides along the target's scoring call
(`drafters.ExtraPositionsDrafter`): the call that verifies a block
`[last, x_1..x_γ]` also carries the L look-ahead positions after x_γ, and
their logits are the next block's draft distributions, so each iteration costs
ONE target call and no draft model runs at all. The loop's first call scores
BOS alone plus the look-ahead positions. When every draft of a block is
accepted, look-ahead j drafts exactly the token it was trained for; after a
rejection its context held rejected tokens, so the drafts are worse but still
exact (speculative sampling is exact for any q chosen from the past).

Training (`train_lookahead`): cross-entropy of look-ahead j's logits against
the true token m + 1 + j, averaged over sampled prefix ends m of the training
targets, with Adam on the look-ahead embeddings only. Each step runs the frozen
target once over the full target sequence with the decode cache, copies that
cache for S prefix ends per sequence, rewinds each copy to its m + 1 and runs
the L look-ahead positions there: exactly the layout of decoding, at the cost
of S·L query positions per sequence instead of S full passes.

The embeddings are saved as a small `.npz` beside the target checkpoint, with
the target's shapes and a fingerprint of its parameters, so a file that does
not fit the target is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct, traverse_util
from tqdm import tqdm

from specdec_t5x import cache as cache_lib
from specdec_t5x import drafters as drafters_lib
from specdec_t5x import sampling as sampling_lib

Array = jax.Array
PyTree = Any
Batch = Mapping[str, np.ndarray]
BatchFactory = Callable[[int], Iterable[Batch]]

_FILE_FORMAT = 'specdec_t5x.pass_lookahead.v1'
TRAIN_STATE_FILE = 'pass_train_state.msgpack'
_BATCH_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                   'decoder_loss_weights')


# ------------------------------------------------------------------------------
# The drafter.
# ------------------------------------------------------------------------------


@struct.dataclass
class PassDraftState:
  draft_logits: Array  # [batch, L, vocab]: the look-ahead logits of the last target call


@struct.dataclass
class PassDrafter:
  """Drafts γ <= L tokens from the look-ahead logits of the previous target call.

  Build it with `PassDrafter.create` (checks the shapes) or `load_pass_drafter`.
  All L look-ahead positions ride along every target call; to draft fewer, use
  `truncated(γ)`, which drops the later ones (look-ahead j only attends to the
  ones before it, so the first γ are unchanged).
  """

  module: nn.Module = struct.field(pytree_node=False)
  lookahead: Array  # [L, emb_dim]

  @classmethod
  def create(cls, module: nn.Module, lookahead: Any) -> PassDrafter:
    check_lookahead_fits(np.shape(lookahead), module.config)
    return cls(module=module, lookahead=jnp.asarray(lookahead, jnp.float32))

  @property
  def vocab_size(self) -> int:
    return self.module.config.vocab_size

  @property
  def num_extra_positions(self) -> int:
    return self.lookahead.shape[0]

  def truncated(self, num_lookahead: int) -> PassDrafter:
    """The drafter with only the first `num_lookahead` look-ahead embeddings."""
    if not 1 <= num_lookahead <= self.num_extra_positions:
      raise ValueError(f'num_lookahead must be in [1, {self.num_extra_positions}], got '
                       f'{num_lookahead}')
    return self.replace(lookahead=self.lookahead[:num_lookahead])

  def init(self, encoder_input_tokens: Array, cache_length: int) -> PassDraftState:
    del cache_length
    batch = encoder_input_tokens.shape[0]
    return PassDraftState(
        draft_logits=jnp.zeros((batch, self.num_extra_positions, self.vocab_size), jnp.float32))

  def propose(self, state: PassDraftState, sequences: Array, lengths: Array, gamma: int,
              sampling: sampling_lib.SamplingConfig, vocab_size: int,
              rng: Array) -> tuple[Array, Array, PassDraftState]:
    del sequences, lengths  # the context is the previous target call's
    if gamma > self.num_extra_positions:
      raise ValueError(f'PaSS drafts at most one token per look-ahead embedding: gamma={gamma} '
                       f'> L={self.num_extra_positions}')
    tokens, probs = drafters_lib.draw(rng, state.draft_logits[:, :gamma], sampling, vocab_size)
    return tokens, probs, state

  def accept(self, state: PassDraftState, sequences: Array, lengths: Array) -> PassDraftState:
    return state

  def extra_embeddings(self, state: PassDraftState) -> Array:
    batch = state.draft_logits.shape[0]
    return jnp.broadcast_to(self.lookahead, (batch,) + self.lookahead.shape)

  def observe_extra_logits(self, state: PassDraftState, logits: Array) -> PassDraftState:
    return state.replace(draft_logits=logits.astype(jnp.float32))


def check_lookahead_fits(shape: tuple[int, ...], config: Any, where: str = 'look-ahead') -> None:
  """Raises a `ValueError` unless `shape` is `[L >= 1, config.emb_dim]`."""
  shape = tuple(shape)
  if len(shape) != 2 or shape[0] < 1:
    raise ValueError(f'{where} embeddings must have shape [L >= 1, emb_dim], got {list(shape)}')
  if shape[1] != config.emb_dim:
    raise ValueError(f'{where} embeddings have width {shape[1]} but the target decoder\'s '
                     f'emb_dim is {config.emb_dim}: they were trained for another model')


def init_lookahead(params: PyTree, num_lookahead: int, seed: int = 0) -> Array:
  """`[L, emb_dim]` starting embeddings: the mean token embedding plus small noise."""
  if int(num_lookahead) != num_lookahead or num_lookahead < 1:
    raise ValueError(f'num_lookahead must be an integer >= 1, got {num_lookahead!r}')
  table = jnp.asarray(params['token_embedder']['embedding'], jnp.float32)
  noise = jax.random.normal(jax.random.PRNGKey(seed), (num_lookahead, table.shape[1]))
  return jnp.mean(table, axis=0) + 0.1 * jnp.std(table) * noise


# ------------------------------------------------------------------------------
# Look-ahead logits in the decoding layout, and the training loss.
# ------------------------------------------------------------------------------


def lookahead_logits(module: nn.Module, params: PyTree, lookahead: Array,
                     encoder_input_tokens: Array, decoder_input_tokens: Array,
                     prefix_ends: Array) -> Array:
  """Logits of the look-ahead positions placed after each prefix end.

  Args:
    module, params: the target `Transformer` (frozen: no gradient flows into it).
    lookahead: `[L, emb_dim]`.
    encoder_input_tokens: `[B, enc_len]`.
    decoder_input_tokens: `[B, T]`, BOS then the target tokens (teacher forcing).
    prefix_ends: `[B, S]` decoder positions m in [0, T): the real inputs are
      positions 0..m, look-ahead j goes to position m + j.

  Returns:
    `[B, S, L, vocab]`: look-ahead j's logits after prefix end m, whose true
    token is `decoder_target_tokens[b, m + j]`.
  """
  batch, length = decoder_input_tokens.shape
  samples, num_lookahead = prefix_ends.shape[1], lookahead.shape[0]
  encoded = module.apply({'params': params}, encoder_input_tokens, enable_dropout=False,
                         method=module.encode)
  cache = cache_lib.init_decode_cache(module, params, encoded, encoder_input_tokens,
                                      length + num_lookahead)
  # Keys and values of every real position, written once; the copies below rewind.
  _, cache = cache_lib.decode_step(module, params, cache, encoded, encoder_input_tokens,
                                   decoder_input_tokens)
  cache = jax.lax.stop_gradient(cache)
  repeat = lambda x: jnp.repeat(x, samples, axis=0)
  rows = batch * samples
  cache = cache_lib.rewind(jax.tree.map(repeat, cache), prefix_ends.reshape(rows) + 1)
  embeddings = jnp.broadcast_to(lookahead.astype(module.config.dtype),
                                (rows,) + lookahead.shape)
  logits, _ = cache_lib.decode_step(module, params, cache, repeat(encoded),
                                    repeat(encoder_input_tokens),
                                    jnp.zeros((rows, num_lookahead), jnp.int32),
                                    decoder_input_embeddings=embeddings)
  return logits.reshape(batch, samples, num_lookahead, -1)


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
  missing = [name for name in _BATCH_FEATURES if name not in batch]
  if missing:
    raise ValueError(f'a PaSS training batch needs {list(_BATCH_FEATURES)}; missing {missing}')
  shapes = {name: np.shape(batch[name]) for name in _BATCH_FEATURES}
  if len({shape for name, shape in shapes.items() if name.startswith('decoder_')}) != 1:
    raise ValueError(f'decoder features must share one shape [batch, length], got {shapes}')


# ------------------------------------------------------------------------------
# Saving, loading, fingerprints.
# ------------------------------------------------------------------------------


def params_fingerprint(params: PyTree) -> str:
  """A SHA-256 of the parameter names and float32 values: which target a file belongs to."""
  digest = hashlib.sha256()
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  for name in sorted(flat):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(np.asarray(flat[name], np.float32)).tobytes())
  return digest.hexdigest()[:16]


def default_lookahead_path(model_dir: str | os.PathLike, num_lookahead: int) -> pathlib.Path:
  """`<model_dir>/pass_lookahead_L<L>.npz`: beside the target's `checkpoint_<step>`."""
  return pathlib.Path(model_dir) / f'pass_lookahead_L{int(num_lookahead)}.npz'


def save_lookahead(path: str | os.PathLike, lookahead: Any, config: Any, fingerprint: str,
                   info: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes the embeddings, the target's shapes and fingerprint, and `info` (JSON), atomically."""
  lookahead = np.asarray(lookahead, np.float32)
  check_lookahead_fits(lookahead.shape, config)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez(tmp, format=np.array(_FILE_FORMAT), lookahead=lookahead,
           emb_dim=np.int64(config.emb_dim), vocab_size=np.int64(config.vocab_size),
           num_decoder_layers=np.int64(config.num_decoder_layers),
           target_fingerprint=np.array(fingerprint),
           info=np.array(json.dumps(dict(info or {}), sort_keys=True)))
  os.replace(tmp, path)
  return path


def read_lookahead_file(path: str | os.PathLike) -> dict[str, Any]:
  """The contents of a `save_lookahead` file (`lookahead`, shapes, fingerprint, `info` dict)."""
  contents = drafters_lib.read_drafter_file(path, _FILE_FORMAT, 'PaSS look-ahead file')
  contents['info'] = json.loads(str(contents['info']))
  contents['target_fingerprint'] = str(contents['target_fingerprint'])
  return contents


def load_pass_drafter(path: str | os.PathLike, module: nn.Module,
                      params: PyTree | None = None) -> PassDrafter:
  """A `PassDrafter` for `module` from a look-ahead file, checked against the target.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not a look-ahead file, trained for a model of another width,
      vocabulary or depth, or (when `params` are given) for other weights.
  """
  contents = read_lookahead_file(path)
  config = module.config
  check_lookahead_fits(contents['lookahead'].shape, config, where=f'the look-ahead file {path}:')
  for field in ('vocab_size', 'num_decoder_layers'):
    if int(contents[field]) != getattr(config, field):
      raise ValueError(f'the look-ahead file {path} was trained for a target with {field}='
                       f'{int(contents[field])}, but this target has {getattr(config, field)}')
  if params is not None and params_fingerprint(params) != contents['target_fingerprint']:
    raise ValueError(f'the look-ahead file {path} was trained for other target weights '
                     f'(fingerprint {contents["target_fingerprint"]}, these weights '
                     f'{params_fingerprint(params)}); retrain it for this checkpoint')
  return PassDrafter.create(module, contents['lookahead'])


# ------------------------------------------------------------------------------
# The resumable training loop.
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


def _write_atomically(path: pathlib.Path, payload: bytes) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(payload)
  os.replace(tmp, path)


def _restore(workdir: pathlib.Path, template: PassTrainState,
             run_config: dict[str, Any]) -> tuple[PassTrainState, dict[str, Any]]:
  """The saved state and its bookkeeping, or `(template, fresh bookkeeping)`."""
  fresh = {'batches_consumed': 0, 'train_seconds': 0.0, 'last_loss': None,
           'last_per_position': None}
  path = workdir / TRAIN_STATE_FILE
  if not path.exists():
    return template, fresh
  saved = flax.serialization.msgpack_restore(path.read_bytes())
  recorded = json.loads(saved['run_config'])
  if recorded != run_config:
    differing = sorted(key for key in run_config.keys() | recorded.keys()
                       if run_config.get(key) != recorded.get(key))
    raise ValueError(f'{path} holds a PaSS run with another configuration (differs in '
                     f'{differing}); use another workdir or delete it')
  state = flax.serialization.from_state_dict(template, saved['state'])
  return state, json.loads(saved['bookkeeping'])


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
  if num_steps < 1 or save_every < 1 or log_every < 1:
    raise ValueError(f'num_steps, save_every and log_every must be >= 1, got {num_steps}, '
                     f'{save_every}, {log_every}')
  output_path = pathlib.Path(output_path)
  fingerprint = params_fingerprint(params)
  if output_path.exists():
    contents = read_lookahead_file(output_path)
    recorded = contents['info']
    if (contents['target_fingerprint'] == fingerprint and recorded.get('num_steps') == num_steps
        and recorded.get('hparams') == dataclasses.asdict(hparams)
        and recorded.get('data') == json.loads(json.dumps(dict(data or {})))):
      return PassTrainSummary(path=output_path, num_steps=num_steps, steps_trained=0,
                              train_seconds=recorded.get('train_seconds', math.nan),
                              final_loss=recorded.get('final_loss'),
                              final_per_position=recorded.get('final_per_position'),
                              cached=True)
  workdir = pathlib.Path(workdir or output_path.with_name(output_path.name + '.train'))
  workdir.mkdir(parents=True, exist_ok=True)
  run_config = {'hparams': dataclasses.asdict(hparams), 'target_fingerprint': fingerprint,
                'data': json.loads(json.dumps(dict(data or {})))}
  state, book = _restore(workdir, create_train_state(params, hparams), run_config)
  start_step = int(state.step)
  if start_step > num_steps:
    raise ValueError(f'{workdir} holds a PaSS state at step {start_step}, beyond num_steps='
                     f'{num_steps}')
  params = jax.tree.map(jnp.asarray, params)
  train_step = make_train_step(module, hparams)
  key = jax.random.fold_in(jax.random.PRNGKey(hparams.seed), 1)
  batches = iter(make_batches(book['batches_consumed']))

  def save():
    payload = {'state': flax.serialization.to_state_dict(jax.device_get(state)),
               'run_config': json.dumps(run_config, sort_keys=True),
               'bookkeeping': json.dumps(book)}
    _write_atomically(workdir / TRAIN_STATE_FILE, flax.serialization.msgpack_serialize(payload))

  with tqdm(total=num_steps, initial=start_step, desc='PaSS look-ahead', unit='step',
            disable=not progress, dynamic_ncols=True) as bar:
    started = time.perf_counter() - book['train_seconds']
    for step in range(start_step + 1, num_steps + 1):
      batch = next(batches, None)
      if batch is None:
        raise ValueError(f'the batch iterator ran out after {book["batches_consumed"]} batches')
      check_batch(batch)
      state, metrics = train_step(state, params, {k: batch[k] for k in _BATCH_FEATURES}, key)
      book['batches_consumed'] += 1
      bar.update(1)
      if step % log_every == 0 or step == num_steps:
        book['last_loss'] = float(metrics['loss'])
        book['last_per_position'] = [round(float(x), 4) for x in metrics['per_position']]
        if not math.isfinite(book['last_loss']):
          raise FloatingPointError(f'PaSS training diverged at step {step}: loss '
                                   f'{book["last_loss"]}')
        bar.set_postfix(loss=f'{book["last_loss"]:.3f}')
      if step % save_every == 0 or step == num_steps:
        book['train_seconds'] = time.perf_counter() - started
        save()

  record = dict(data=run_config['data'], num_steps=num_steps, hparams=run_config['hparams'],
                train_seconds=book['train_seconds'], final_loss=book['last_loss'],
                final_per_position=book['last_per_position'])
  save_lookahead(output_path, jax.device_get(state.lookahead), module.config, fingerprint,
                 record)
  return PassTrainSummary(path=output_path, num_steps=num_steps,
                          steps_trained=num_steps - start_step,
                          train_seconds=book['train_seconds'], final_loss=book['last_loss'],
                          final_per_position=book['last_per_position'], cached=False)


__all__ = ['PassDrafter', 'PassDraftState', 'PassHParams', 'PassTrainState', 'PassTrainSummary',
           'check_lookahead_fits', 'init_lookahead', 'lookahead_logits', 'lookahead_targets',
           'sample_prefix_ends', 'lookahead_loss', 'create_train_state', 'make_train_step',
           'params_fingerprint', 'default_lookahead_path', 'save_lookahead',
           'read_lookahead_file', 'load_pass_drafter', 'train_lookahead']
