"""PaSS drafting for T5: the target drafts for itself through L learned look-ahead embeddings.

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

`lookahead_logits` computes the look-ahead positions' logits in exactly this
decoding layout for many prefix ends at once: what training fits
(`specdec_t5x.training.lookahead`, which also owns the loss and the loop).

The embeddings are saved as a small `.npz` beside the target checkpoint, with
the target's shapes and a fingerprint of its parameters, so a file that does
not fit the target is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct, traverse_util

from specdec_t5x import cache as cache_lib
from specdec_t5x import sampling as sampling_lib
from specdec_t5x.drafters import base

Array = jax.Array
PyTree = Any

_FILE_FORMAT = 'specdec_t5x.pass_lookahead.v1'


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
    tokens, probs = base.draw(rng, state.draft_logits[:, :gamma], sampling, vocab_size)
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
# Look-ahead logits in the decoding layout.
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
  encoded = cache_lib.encode(module, params, encoder_input_tokens)
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
  contents = base.read_drafter_file(path, _FILE_FORMAT, 'PaSS look-ahead file')
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


__all__ = ['PassDraftState', 'PassDrafter', 'check_lookahead_fits', 'default_lookahead_path',
           'init_lookahead', 'load_pass_drafter', 'lookahead_logits', 'params_fingerprint',
           'read_lookahead_file', 'save_lookahead']
