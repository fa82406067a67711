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
  iterations: Array  # [B] loop iterations in which the row was still decoding
  accepted: Array    # [B] draft tokens emitted (accepted and not cut by EOS / T)
  beta_mean: Array   # [B] mean of β = Σ min(p, q) over the verified positions (α estimate)


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


def _encode(module: nn.Module, params: Any, encoder_input_tokens: Array) -> Array:
  return module.apply({'params': params}, encoder_input_tokens, enable_dropout=False,
                      method=module.encode)


def first_argmax(logits: Array) -> Array:
  """`jnp.argmax(logits, -1)` as int32 (the first maximum; the first NaN if any), faster on CPU.

  XLA:CPU lowers argmax to a (value, index) reduction that it does not
  vectorise: over a batch of 8 rows of a 32k vocabulary it costs about 1.7 ms,
  a tenth of a T5-small decoding step. A max, then the smallest index that
  attains it, are two plain reductions that give the same index about 7x faster.
  """
  is_max = (logits == jnp.max(logits, axis=-1, keepdims=True)) | jnp.isnan(logits)
  index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.min(jnp.where(is_max, index, logits.shape[-1]), axis=-1)


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
  encoded = _encode(module, params, encoder_input_tokens)
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
    if sampling.greedy:
      token = first_argmax(logits[:, 0])
    else:
      token = sampling_lib.sample(step_rng, logits[:, 0], sampling)
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


def verify_draft(rng: Array, target_probs: Array, draft_probs: Array, draft_tokens: Array,
                 greedy: bool) -> tuple[Array, Array]:
  """Steps 3-5 of Algorithm 1: how many draft tokens to keep, and the token after them.

  Args:
    rng: PRNG key (unused when greedy).
    target_probs: p, `[B, γ+1, V]`, the target's distributions after the
      prefix and after each draft token.
    draft_probs: q, `[B, γ, V]`, the distributions the draft tokens came from.
    draft_tokens: `[B, γ]`.
    greedy: p and q are one-hot argmaxes; accept while the tokens agree.

  Returns:
    `(num_accepted [B] in [0, γ], next_token [B])`: next_token ~ norm(max(0,
    p_{n+1} − q_{n+1})) after a rejection, ~ p_{γ+1} after full acceptance.
  """
  batch, gamma = draft_tokens.shape
  accept_rng, residual_rng = jax.random.split(rng)
  p_of_draft = jnp.take_along_axis(target_probs[:, :gamma], draft_tokens[..., None], -1)[..., 0]
  q_of_draft = jnp.take_along_axis(draft_probs, draft_tokens[..., None], -1)[..., 0]
  if greedy:
    accepted = p_of_draft > 0.0
  else:
    # r < p/q, written without the division: q(x) > 0 for every drawn x.
    r = jax.random.uniform(accept_rng, (batch, gamma))
    accepted = r * q_of_draft < p_of_draft
  num_accepted = jnp.sum(jnp.cumprod(accepted, axis=1), axis=1).astype(jnp.int32)

  # A zero q after the last draft makes "full acceptance" the same residual rule.
  padded_q = jnp.concatenate([draft_probs, jnp.zeros_like(draft_probs[:, :1])], axis=1)
  pick = lambda x: jnp.take_along_axis(x, num_accepted[:, None, None], axis=1)[:, 0]
  p_next, q_next = pick(target_probs), pick(padded_q)
  if greedy:
    return num_accepted, first_argmax(p_next)
  residual = jnp.maximum(p_next - q_next, 0.0)
  # p == q exactly gives an empty residual; it can only be reached when the
  # rejection had probability 0, so falling back to p keeps the law exact.
  residual = jnp.where(jnp.sum(residual, -1, keepdims=True) > 0.0, residual, p_next)
  return num_accepted, sampling_lib.sample_from_probabilities(residual_rng, residual)


@struct.dataclass
class _SpeculativeState:
  sequences: Array   # [B, T + γ + 2]: BOS, then emitted tokens
  lengths: Array     # [B]
  done: Array        # [B] bool
  target_cache: Any  # position == lengths at the top of each iteration
  drafter_state: Any
  rng: Array
  iterations: Array  # [B]
  accepted: Array    # [B]
  beta_sum: Array    # [B]
  beta_count: Array  # [B]


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
      `ngram_drafters.BigramDrafter`, `pass_drafter.PassDrafter`).
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


def _score(target_module: nn.Module, target_params: Any, cache: Any, encoded: Array,
           encoder_input_tokens: Array, tokens: Array, drafter: drafters_lib.Drafter,
           drafter_state: Any) -> tuple[Array, Any, Any]:
  """One target call on `tokens [B, k]`, plus the drafter's extra positions if it has any.

  Returns:
    `(logits [B, k, V], cache, drafter_state)`; the cache has advanced by k
    plus the extra positions, which the caller's rewind discards.
  """
  extra = drafters_lib.num_extra_positions(drafter)
  if not extra:
    logits, cache = cache_lib.decode_step(target_module, target_params, cache, encoded,
                                          encoder_input_tokens, tokens)
    return logits, cache, drafter_state
  # The same embedding lookup the decoder does, so the k real positions are unchanged;
  # the extra positions follow them, so the causal mask hides them from the real ones.
  embeddings = target_module.apply({'params': target_params}, tokens, method=_embed_tokens)
  extra_embeddings = drafter.extra_embeddings(drafter_state).astype(embeddings.dtype)
  embeddings = jnp.concatenate([embeddings, extra_embeddings], axis=1)
  # In decode mode the token ids only give the call its length.
  padded = jnp.pad(tokens, ((0, 0), (0, extra)))
  logits, cache = cache_lib.decode_step(target_module, target_params, cache, encoded,
                                        encoder_input_tokens, padded,
                                        decoder_input_embeddings=embeddings)
  k = tokens.shape[1]
  drafter_state = drafter.observe_extra_logits(drafter_state, logits[:, k:])
  return logits[:, :k], cache, drafter_state


@functools.partial(jax.jit, static_argnames=('target_module', 'gamma', 'max_decode_len',
                                             'sampling'))
def _speculative_decode(target_module: nn.Module, target_params: Any,
                        drafter: drafters_lib.Drafter, encoder_input_tokens: Array, rng: Array, *,
                        gamma: int, max_decode_len: int, sampling: sampling_lib.SamplingConfig,
                        eos_id: Array) -> SpeculativeOutput:
  batch = encoder_input_tokens.shape[0]
  vocab_size = target_module.config.vocab_size
  extra = drafters_lib.num_extra_positions(drafter)
  # A row at length T may still be scored (and ignored): T + γ + 1 positions,
  # plus the drafter's extra positions after them.
  cache_length = max_decode_len + gamma + 1 + extra
  encoded = _encode(target_module, target_params, encoder_input_tokens)
  zeros = jnp.zeros((batch,), jnp.int32)
  init = _SpeculativeState(
      sequences=jnp.zeros((batch, max_decode_len + gamma + 2), jnp.int32),
      lengths=zeros, done=jnp.zeros((batch,), bool),
      target_cache=cache_lib.init_decode_cache(target_module, target_params, encoded,
                                               encoder_input_tokens, cache_length),
      drafter_state=drafter.init(encoder_input_tokens, cache_length),
      rng=rng, iterations=zeros, accepted=zeros,
      beta_sum=jnp.zeros((batch,), jnp.float32), beta_count=zeros)
  block_index = jnp.arange(gamma + 1)[None, :]  # [1, γ+1]

  def first_call(state: _SpeculativeState) -> _SpeculativeState:
    """An iteration without drafts: score BOS (and the extra positions), emit p's token.

    Drafters with extra positions draft from the logits of the previous target
    call, which the first iteration does not have yet.
    """
    rng, step_rng = jax.random.split(state.rng)
    logits, target_cache, drafter_state = _score(
        target_module, target_params, state.target_cache, encoded, encoder_input_tokens,
        state.sequences[:, :1], drafter, state.drafter_state)
    token = sampling_lib.sample(step_rng, logits[:, 0], sampling)
    sequences = state.sequences.at[:, 1].set(token)
    lengths = jnp.ones((batch,), jnp.int32)
    done = (token == eos_id) | (max_decode_len <= 1)
    return state.replace(
        sequences=sequences, lengths=lengths, done=done,
        target_cache=cache_lib.rewind(target_cache, lengths),
        drafter_state=drafter.accept(drafter_state, sequences, lengths), rng=rng,
        iterations=lengths)

  def body(state: _SpeculativeState) -> _SpeculativeState:
    rng, draft_rng, verify_rng = jax.random.split(state.rng, 3)
    # 1. The drafter proposes γ tokens and the distributions q they came from.
    draft_tokens, q, drafter_state = drafter.propose(
        state.drafter_state, state.sequences, state.lengths, gamma, sampling, vocab_size,
        draft_rng)
    # 2. The target scores all γ+1 positions in one call.
    last = drafters_lib.last_inputs(state.sequences, state.lengths)
    logits, target_cache, drafter_state = _score(
        target_module, target_params, state.target_cache, encoded, encoder_input_tokens,
        jnp.concatenate([last[:, None], draft_tokens], axis=1), drafter, drafter_state)
    p = sampling_lib.probabilities(logits, sampling)  # [B, γ+1, V]
    # 3.-5. Accept a prefix of the draft, then one token from the target.
    num_accepted, next_token = verify_draft(verify_rng, p, q, draft_tokens, sampling.greedy)

    # The block x_1..x_n, t, cut after an EOS and at max_decode_len.
    padded_draft = jnp.concatenate([draft_tokens, zeros[:, None]], axis=1)
    block = jnp.where(block_index < num_accepted[:, None], padded_draft, next_token[:, None])
    is_eos = (block == eos_id) & (block_index <= num_accepted[:, None])
    eos_cut = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, gamma + 1)
    num_new = jnp.minimum(jnp.minimum(num_accepted + 1, eos_cut),
                          max_decode_len - state.lengths)
    num_new = jnp.where(state.done, 0, num_new)
    kept = block_index < num_new[:, None]
    sequences = _append_at(state.sequences, jnp.where(kept, block, 0), state.lengths + 1)
    lengths = state.lengths + num_new
    done = state.done | jnp.any(is_eos & kept, axis=1) | (lengths >= max_decode_len)

    # β over the positions whose prefix is the real output (those up to and
    # including the first rejection), as the paper's α is defined.
    beta = jnp.sum(jnp.minimum(p[:, :gamma], q), axis=-1)  # [B, γ]
    counted = block_index[:, :gamma] < jnp.minimum(num_accepted + 1, num_new)[:, None]
    active = (~state.done).astype(jnp.int32)
    return _SpeculativeState(
        sequences=sequences, lengths=lengths, done=done,
        # Rewind both models to what was kept: rejected positions are overwritten later.
        target_cache=cache_lib.rewind(target_cache, lengths),
        drafter_state=drafter.accept(drafter_state, sequences, lengths),
        rng=rng,
        iterations=state.iterations + active,
        accepted=state.accepted + jnp.minimum(num_accepted, num_new),
        beta_sum=state.beta_sum + jnp.sum(jnp.where(counted, beta, 0.0), axis=1),
        beta_count=state.beta_count + jnp.sum(counted, axis=1))

  if extra:
    init = first_call(init)
  final = jax.lax.while_loop(lambda state: ~jnp.all(state.done), body, init)
  return SpeculativeOutput(
      tokens=final.sequences[:, 1:max_decode_len + 1], lengths=final.lengths,
      iterations=final.iterations, accepted=final.accepted,
      beta_mean=final.beta_sum / jnp.maximum(final.beta_count, 1))
