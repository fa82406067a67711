"""Autoregressive and speculative decoding, each one jitted `lax.while_loop`.

`autoregressive_decode` is the baseline every speed figure is a ratio over;
`speculative_decode` is Algorithm 1 of Leviathan et al. (2023) with a drafter
(see `specdec_t5x.drafters`). Both return exactly what the target model alone
gives: the same tokens at temperature 0, the same distribution otherwise.

Shapes: `B` batch, `L` encoder length, `T = max_decode_len`, `γ = gamma`,
`V` the target's vocabulary size.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from specdec_t5x import acceptance
from specdec_t5x import cache as cache_lib
from specdec_t5x import drafters as drafters_lib
from specdec_t5x import sampling as sampling_lib

Array = jax.Array


@struct.dataclass
class DecodeOutput:
  tokens: Array   # [B, T] int32, 0 after EOS
  lengths: Array  # [B] tokens emitted, EOS included


@struct.dataclass
class SpeculativeOutput:
  tokens: Array      # [B, T] int32, 0 after EOS
  lengths: Array     # [B] tokens emitted, EOS included
  iterations: Array        # [B] target calls while the row was still decoding
  draft_iterations: Array  # [B] of those, the ones that verified γ draft tokens (all but
                           #     the draft-less first call of a look-ahead drafter)
  accepted: Array          # [B] draft tokens emitted (accepted and not cut by EOS / T)
  beta_mean: Array         # [B] mean of β = Σ min(p, q) over the verified positions (α estimate)
  beta_count: Array        # [B] the verified positions behind beta_mean: pool α over rows
                           #     and requests as Σ beta_mean·beta_count / Σ beta_count


# ------------------------------------------------------------------------------
# Input checks at the Python boundary (inside jit nothing can be raised cleanly).
# ------------------------------------------------------------------------------


def _check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
  return int(value)


def _check_encoder_inputs(tokens: Any, vocab_size: int) -> Array:
  if isinstance(tokens, jax.core.Tracer):
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError('encoder_input_tokens must be an integer array [batch, length], got '
                       f'{tokens.dtype}{list(tokens.shape)}')
    return tokens
  array = np.asarray(tokens)
  if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
    raise ValueError(f'encoder_input_tokens must have shape [batch, length] with both >= 1, '
                     f'got shape {array.shape}')
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'encoder_input_tokens must hold integer token ids, got dtype {array.dtype}')
  if array.min() < 0 or array.max() >= vocab_size:
    raise ValueError(f'encoder_input_tokens has token ids outside the vocabulary '
                     f'[0, {vocab_size}): min {array.min()}, max {array.max()}')
  return jnp.asarray(array, jnp.int32)


def _check_eos(eos_id: int, vocab_size: int) -> Array:
  if int(eos_id) != eos_id or not 0 <= eos_id < vocab_size:
    raise ValueError(f'eos_id must be a token id in [0, {vocab_size}), got {eos_id!r}')
  # Traced, not static: decoding with another EOS id needs no recompilation.
  return jnp.int32(eos_id)


def _default_rng(rng: Array | None) -> Array:
  return jax.random.PRNGKey(0) if rng is None else rng


def _append_at(sequences: Array, block: Array, starts: Array) -> Array:
  """Writes `block [B, k]` into `sequences [B, S]` at column `starts[b]` of each row."""
  write = lambda row, values, start: jax.lax.dynamic_update_slice_in_dim(row, values, start, 0)
  return jax.vmap(write)(sequences, block, starts)


# ------------------------------------------------------------------------------
# Autoregressive baseline.
# ------------------------------------------------------------------------------


@struct.dataclass
class _AutoregressiveState:
  sequences: Array  # [B, T + 2]: BOS, then emitted tokens
  lengths: Array    # [B]
  done: Array       # [B] bool
  cache: Any
  rng: Array


def autoregressive_decode(module: nn.Module, params: Any, encoder_input_tokens: Array, *,
                          max_decode_len: int, rng: Array | None = None,
                          temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                          eos_id: int = 1) -> DecodeOutput:
  """Decodes one token per step until every row has emitted EOS or `max_decode_len` tokens.

  Args:
    module: a `specdec_t5x.network.Transformer`.
    params: its parameters.
    encoder_input_tokens: `[B, L]` int token ids, 0 is padding.
    max_decode_len: the most tokens a row emits (EOS included).
    rng: PRNG key for sampling (default `PRNGKey(0)`); unused when greedy.
    temperature, top_k, top_p: see `specdec_t5x.sampling`; temperature 0 is argmax.
    eos_id: the id that ends a row.

  Returns:
    `DecodeOutput(tokens [B, T], lengths [B])`.
  """
  vocab_size = module.config.vocab_size
  sampling = sampling_lib.make_sampling_config(temperature, top_k, top_p)
  tokens = _check_encoder_inputs(encoder_input_tokens, vocab_size)
  return _autoregressive_decode(module, params, tokens, _default_rng(rng),
                                max_decode_len=_check_positive_int('max_decode_len',
                                                                   max_decode_len),
                                sampling=sampling, eos_id=_check_eos(eos_id, vocab_size))


@functools.partial(jax.jit, static_argnames=('module', 'max_decode_len', 'sampling'))
def _autoregressive_decode(module: nn.Module, params: Any, encoder_input_tokens: Array,
                           rng: Array, *, max_decode_len: int,
                           sampling: sampling_lib.SamplingConfig, eos_id: Array) -> DecodeOutput:
  batch = encoder_input_tokens.shape[0]
  encoded = cache_lib.encode(module, params, encoder_input_tokens)
  init = _AutoregressiveState(
      sequences=jnp.zeros((batch, max_decode_len + 2), jnp.int32),
      lengths=jnp.zeros((batch,), jnp.int32),
      done=jnp.zeros((batch,), bool),
      cache=cache_lib.init_decode_cache(module, params, encoded, encoder_input_tokens,
                                        max_decode_len + 1),
      rng=rng)

  def body(state: _AutoregressiveState) -> _AutoregressiveState:
    rng, step_rng = jax.random.split(state.rng)
    last = drafters_lib.last_inputs(state.sequences, state.lengths)
    logits, cache = cache_lib.decode_step(module, params, state.cache, encoded,
                                          encoder_input_tokens, last[:, None])
    token = sampling_lib.sample(step_rng, logits[:, 0], sampling)  # first_argmax when greedy
    token = jnp.where(state.done, 0, token)
    sequences = _append_at(state.sequences, token[:, None], state.lengths + 1)
    lengths = state.lengths + (~state.done).astype(jnp.int32)
    done = state.done | (token == eos_id) | (lengths >= max_decode_len)
    return _AutoregressiveState(sequences, lengths, done, cache, rng)

  final = jax.lax.while_loop(lambda state: ~jnp.all(state.done), body, init)
  return DecodeOutput(tokens=final.sequences[:, 1:max_decode_len + 1], lengths=final.lengths)


# ------------------------------------------------------------------------------
# Speculative decoding.
# ------------------------------------------------------------------------------


@struct.dataclass
class _SpeculativeState:
  sequences: Array         # [B, T + γ + 2]: BOS, then emitted tokens
  lengths: Array           # [B]
  done: Array              # [B] bool
  target_cache: Any        # position == lengths at the top of each iteration
  drafter_state: Any
  rng: Array
  iterations: Array        # [B]
  draft_iterations: Array  # [B]
  accepted: Array          # [B]
  beta_sum: Array          # [B]
  beta_count: Array        # [B]


@struct.dataclass
class _Request:
  """What every iteration of one request reads: the encoder side and the EOS id."""
  encoded: Array               # [B, L, E] the target's encoder output
  encoder_input_tokens: Array  # [B, L]
  eos_id: Array


def speculative_decode(target_module: nn.Module, target_params: Any,
                       drafter: drafters_lib.Drafter, encoder_input_tokens: Array, *,
                       gamma: int, max_decode_len: int, rng: Array | None = None,
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                       eos_id: int = 1) -> SpeculativeOutput:
  """Speculative decoding (Algorithm 1), batched with per-row acceptance.

  Each iteration the drafter proposes γ tokens per row, the target scores all
  γ+1 positions in ONE decoder call, and each row keeps its own accepted
  prefix plus one token from the target, so it advances by 1 to γ+1 tokens.
  Rows that have emitted EOS or `max_decode_len` tokens stop changing.
  A drafter with extra positions (`drafters.ExtraPositionsDrafter`, e.g.
  PaSS) rides along that call instead of making its own; the loop then starts
  with one draft-less call that emits the target's first token.

  Args:
    target_module: a `specdec_t5x.network.Transformer`.
    target_params: its parameters.
    drafter: a `specdec_t5x.drafters.Drafter` (e.g. `ModelDrafter`,
      `BigramDrafter`, `PassDrafter`).
    encoder_input_tokens: `[B, L]` int token ids, 0 is padding.
    gamma: draft tokens per iteration, >= 1.
    max_decode_len: the most tokens a row emits (EOS included).
    rng, temperature, top_k, top_p, eos_id: as in `autoregressive_decode`; the
      sampling transform is applied to the target's p and the draft's q alike.

  Returns:
    `SpeculativeOutput` with tokens, lengths and per-row acceptance statistics.
  """
  vocab_size = target_module.config.vocab_size
  drafters_lib.check_vocab_compatible(vocab_size, drafter.vocab_size)
  sampling = sampling_lib.make_sampling_config(temperature, top_k, top_p)
  tokens = _check_encoder_inputs(encoder_input_tokens, vocab_size)
  return _speculative_decode(target_module, target_params, drafter, tokens, _default_rng(rng),
                             gamma=_check_positive_int('gamma', gamma),
                             max_decode_len=_check_positive_int('max_decode_len',
                                                                max_decode_len),
                             sampling=sampling, eos_id=_check_eos(eos_id, vocab_size))


def _embed_tokens(module: nn.Module, tokens: Array) -> Array:
  return module.shared_embedding(tokens)


def _score(target_module: nn.Module, target_params: Any, cache: Any, request: _Request,
           tokens: Array, drafter: drafters_lib.Drafter,
           drafter_state: Any) -> tuple[Array, Any, Any]:
  """One target call on `tokens [B, k]`, plus the drafter's extra positions if it has any.

  Returns:
    `(logits [B, k, V], cache, drafter_state)`; the cache has advanced by k
    plus the extra positions, which the caller's rewind discards.
  """
  extra = drafters_lib.num_extra_positions(drafter)
  if not extra:
    logits, cache = cache_lib.decode_step(target_module, target_params, cache, request.encoded,
                                          request.encoder_input_tokens, tokens)
    return logits, cache, drafter_state
  # The same embedding lookup the decoder does, so the k real positions are unchanged;
  # the extra positions follow them, so the causal mask hides them from the real ones.
  embeddings = target_module.apply({'params': target_params}, tokens, method=_embed_tokens)
  extra_embeddings = drafter.extra_embeddings(drafter_state).astype(embeddings.dtype)
  embeddings = jnp.concatenate([embeddings, extra_embeddings], axis=1)
  # In decode mode the token ids only give the call its length.
  padded = jnp.pad(tokens, ((0, 0), (0, extra)))
  logits, cache = cache_lib.decode_step(target_module, target_params, cache, request.encoded,
                                        request.encoder_input_tokens, padded,
                                        decoder_input_embeddings=embeddings)
  k = tokens.shape[1]
  drafter_state = drafter.observe_extra_logits(drafter_state, logits[:, k:])
  return logits[:, :k], cache, drafter_state


def _first_call(state: _SpeculativeState, request: _Request, target_module: nn.Module,
                target_params: Any, drafter: drafters_lib.Drafter, *, max_decode_len: int,
                sampling: sampling_lib.SamplingConfig) -> _SpeculativeState:
  """An iteration without drafts: score BOS (and the extra positions), emit p's token.

  Drafters with extra positions draft from the logits of the previous target
  call, which the first iteration does not have yet.
  """
  rng, step_rng = jax.random.split(state.rng)
  logits, target_cache, drafter_state = _score(
      target_module, target_params, state.target_cache, request, state.sequences[:, :1],
      drafter, state.drafter_state)
  token = sampling_lib.sample(step_rng, logits[:, 0], sampling)
  sequences = state.sequences.at[:, 1].set(token)
  lengths = jnp.ones_like(state.lengths)
  return state.replace(
      sequences=sequences, lengths=lengths,
      done=(token == request.eos_id) | (max_decode_len <= 1),
      target_cache=cache_lib.rewind(target_cache, lengths),
      drafter_state=drafter.accept(drafter_state, sequences, lengths), rng=rng,
      iterations=lengths)


def _iteration(state: _SpeculativeState, request: _Request, target_module: nn.Module,
               target_params: Any, drafter: drafters_lib.Drafter, *, gamma: int,
               max_decode_len: int, sampling: sampling_lib.SamplingConfig) -> _SpeculativeState:
  """One iteration of Algorithm 1 for every row: draft, score once, accept, emit, rewind."""
  rng, draft_rng, verify_rng = jax.random.split(state.rng, 3)
  # 1. The drafter proposes γ tokens and the distributions q they came from.
  draft_tokens, q, drafter_state = drafter.propose(
      state.drafter_state, state.sequences, state.lengths, gamma, sampling,
      target_module.config.vocab_size, draft_rng)
  # 2. The target scores all γ+1 positions in one call.
  last = drafters_lib.last_inputs(state.sequences, state.lengths)
  logits, target_cache, drafter_state = _score(
      target_module, target_params, state.target_cache, request,
      jnp.concatenate([last[:, None], draft_tokens], axis=1), drafter, drafter_state)
  # 3.-5. Accept a prefix of the draft, then one token from the target.
  if sampling.greedy:  # one-hot p and q: token ids say it all, no [B, γ+1, V] arrays
    num_accepted, next_token, beta = acceptance.verify_greedy(
        sampling_lib.first_argmax(logits), draft_tokens)
  else:
    p = sampling_lib.probabilities(logits, sampling)  # [B, γ+1, V]
    num_accepted, next_token = acceptance.verify_draft(verify_rng, p, q, draft_tokens,
                                                       greedy=False)
    beta = acceptance.position_betas(p, q)
  block, num_new, ended = acceptance.emitted_block(
      draft_tokens, num_accepted, next_token, state.lengths, state.done,
      max_decode_len=max_decode_len, eos_id=request.eos_id)
  sequences = _append_at(state.sequences, block, state.lengths + 1)
  lengths = state.lengths + num_new
  beta_sum, beta_count = acceptance.verified_betas(beta, num_accepted, num_new)
  active = (~state.done).astype(jnp.int32)
  return _SpeculativeState(
      sequences=sequences, lengths=lengths,
      done=state.done | ended | (lengths >= max_decode_len),
      # Rewind both models to what was kept: rejected positions are overwritten later.
      target_cache=cache_lib.rewind(target_cache, lengths),
      drafter_state=drafter.accept(drafter_state, sequences, lengths),
      rng=rng,
      iterations=state.iterations + active,
      draft_iterations=state.draft_iterations + active,
      accepted=state.accepted + jnp.minimum(num_accepted, num_new),
      beta_sum=state.beta_sum + beta_sum,
      beta_count=state.beta_count + beta_count)


@functools.partial(jax.jit, static_argnames=('target_module', 'gamma', 'max_decode_len',
                                             'sampling'))
def _speculative_decode(target_module: nn.Module, target_params: Any,
                        drafter: drafters_lib.Drafter, encoder_input_tokens: Array, rng: Array, *,
                        gamma: int, max_decode_len: int, sampling: sampling_lib.SamplingConfig,
                        eos_id: Array) -> SpeculativeOutput:
  batch = encoder_input_tokens.shape[0]
  extra = drafters_lib.num_extra_positions(drafter)
  # A row at length T may still be scored (and ignored): T + γ + 1 positions,
  # plus the drafter's extra positions after them.
  cache_length = max_decode_len + gamma + 1 + extra
  request = _Request(encoded=cache_lib.encode(target_module, target_params, encoder_input_tokens),
                     encoder_input_tokens=encoder_input_tokens, eos_id=eos_id)
  zeros = jnp.zeros((batch,), jnp.int32)
  state = _SpeculativeState(
      sequences=jnp.zeros((batch, max_decode_len + gamma + 2), jnp.int32),
      lengths=zeros, done=jnp.zeros((batch,), bool),
      target_cache=cache_lib.init_decode_cache(target_module, target_params, request.encoded,
                                               encoder_input_tokens, cache_length),
      drafter_state=drafter.init(encoder_input_tokens, cache_length),
      rng=rng, iterations=zeros, draft_iterations=zeros, accepted=zeros,
      beta_sum=jnp.zeros((batch,), jnp.float32), beta_count=zeros)
  models = dict(target_module=target_module, target_params=target_params, drafter=drafter)
  if extra:
    state = _first_call(state, request, **models, max_decode_len=max_decode_len,
                        sampling=sampling)
  body = functools.partial(_iteration, request=request, **models, gamma=gamma,
                           max_decode_len=max_decode_len, sampling=sampling)
  final = jax.lax.while_loop(lambda state: ~jnp.all(state.done), body, state)
  return SpeculativeOutput(
      tokens=final.sequences[:, 1:max_decode_len + 1], lengths=final.lengths,
      iterations=final.iterations, draft_iterations=final.draft_iterations,
      accepted=final.accepted, beta_mean=final.beta_sum / jnp.maximum(final.beta_count, 1),
      beta_count=final.beta_count)
