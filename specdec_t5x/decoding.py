"""Autoregressive and speculative decoding, each one jitted `lax.while_loop`.

`autoregressive_decode` is the baseline every speed figure is a ratio over;
`speculative_decode` is Algorithm 1 of Leviathan et al. (2023) with a drafter
(see `specdec_t5x.drafters`; the loop is `specdec_t5x.speculative_loop`, and
gamma='auto' is `specdec_t5x.adaptive`). Both return exactly what the target
model alone gives: the same tokens at temperature 0, the same distribution
otherwise.

Shapes: `B` batch, `L` encoder length, `T = max_decode_len`, `γ = gamma`,
`V` the target's vocabulary size.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from specdec_t5x import adaptive, calibration, speculative_loop
from specdec_t5x import cache as cache_lib
from specdec_t5x import drafters as drafters_lib
from specdec_t5x import sampling as sampling_lib
from specdec_t5x.speculative_loop import SpeculativeOutput

Array = jax.Array


@struct.dataclass
class DecodeOutput:
  tokens: Array   # [B, T] int32, 0 after EOS
  lengths: Array  # [B] tokens emitted, EOS included


# ------------------------------------------------------------------------------
# Input checks at the Python boundary (inside jit nothing can be raised cleanly).
# ------------------------------------------------------------------------------


def _check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
  return int(value)


def _check_encoder_inputs(tokens: Any, vocab_size: int) -> Array | np.ndarray:
  """The checked `[batch, length]` token ids, as int32.

  Checked on the host and handed to the jitted decoder as NumPy (or as the
  caller's own int32 array): converting them with an eager `jnp.asarray` here
  cost ~0.1-0.4 ms a request, timed into both decoders alike.
  """
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
  if isinstance(tokens, jax.Array) and tokens.dtype == jnp.int32:
    return tokens
  return array.astype(np.int32, copy=False)


def _check_eos(eos_id: int, vocab_size: int) -> np.int32:
  if int(eos_id) != eos_id or not 0 <= eos_id < vocab_size:
    raise ValueError(f'eos_id must be a token id in [0, {vocab_size}), got {eos_id!r}')
  # Traced, not static: decoding with another EOS id needs no recompilation. A NumPy
  # scalar, not an eager `jnp.int32`, for the same reason as `_check_encoder_inputs`.
  return np.int32(eos_id)


@functools.cache
def _zero_key() -> Array:
  # Made once: an eager `PRNGKey(0)` costs ~0.1 ms, timed into every request. Concrete even
  # when the first call is under a trace (T5X calls the decoder inside pjit), or the cache
  # would keep a tracer.
  with jax.ensure_compile_time_eval():
    return jax.random.PRNGKey(0)


def _default_rng(rng: Array | None) -> Array:
  return _zero_key() if rng is None else rng


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
  request = speculative_loop.Request(encoded=encoded, encoder_input_tokens=encoder_input_tokens,
                                     eos_id=eos_id)
  init = _AutoregressiveState(
      sequences=jnp.zeros((batch, max_decode_len + 2), jnp.int32),
      lengths=jnp.zeros((batch,), jnp.int32),
      done=jnp.zeros((batch,), bool),
      cache=cache_lib.init_decode_cache(module, params, encoded, encoder_input_tokens,
                                        max_decode_len + 1),
      rng=rng)

  def body(state: _AutoregressiveState) -> _AutoregressiveState:
    return _AutoregressiveState(*speculative_loop.plain_step(
        module, params, request, state.sequences, state.lengths, state.done, state.cache,
        state.rng, max_decode_len=max_decode_len, sampling=sampling))

  final = jax.lax.while_loop(lambda state: ~jnp.all(state.done), body, init)
  return DecodeOutput(tokens=final.sequences[:, 1:max_decode_len + 1], lengths=final.lengths)


# ------------------------------------------------------------------------------
# Speculative decoding (the loop itself is `specdec_t5x.speculative_loop`).
# ------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames='max_gamma')
def _plain_output(output: DecodeOutput, max_gamma: int) -> SpeculativeOutput:
  """gamma='auto' that stays at γ = 0: the autoregressive output, as speculative statistics.

  (Jitted: five eager ops would cost ~3 ms of dispatch, 7% of a short request.)
  """
  zeros = jnp.zeros_like(output.lengths)
  return SpeculativeOutput(
      tokens=output.tokens, lengths=output.lengths, iterations=output.lengths,
      draft_iterations=zeros, accepted=zeros, beta_mean=jnp.zeros(zeros.shape, jnp.float32),
      beta_count=zeros, gamma_iterations=jnp.zeros(zeros.shape + (max_gamma + 1,),
                                                   jnp.int32).at[:, 0].set(output.lengths))


def speculative_decode(target_module: nn.Module, target_params: Any,
                       drafter: drafters_lib.Drafter, encoder_input_tokens: Array, *,
                       gamma: int | str, max_decode_len: int, rng: Array | None = None,
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                       eos_id: int = 1, max_gamma: int = adaptive.DEFAULT_MAX_GAMMA,
                       cost_profile: adaptive.CostProfile | str | os.PathLike | None = None,
                       auto_settings: Mapping[str, Any] | None = None) -> SpeculativeOutput:
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
    gamma: draft tokens per iteration, >= 1; or 'auto': chosen before every
      iteration in {0, ..., max_gamma} (0 is a plain target step) from the
      running acceptance rate and `cost_profile` (`specdec_t5x.adaptive`).
    max_decode_len: the most tokens a row emits (EOS included).
    rng, temperature, top_k, top_p, eos_id: as in `autoregressive_decode`; the
      sampling transform is applied to the target's p and the draft's q alike.
    max_gamma: with gamma='auto', the largest γ it may choose.
    cost_profile: with gamma='auto', what an iteration costs at each γ: an
      `adaptive.CostProfile`, a file it saved, or None to measure one on this
      machine for these models and shapes (`calibration.cached_profile`: a
      few seconds once, then read from the cache).
    auto_settings: with gamma='auto', keyword arguments of
      `adaptive.make_policy` (alpha_prior, prior_weight, memory, probe_every,
      switch_margin). Without `alpha_prior`, the prior is the α the profile
      measured, if it did (`adaptive.profile_prior`). A policy that starts at
      γ = 0 and cannot leave it (no probes) runs `autoregressive_decode`
      itself (`adaptive.stays_plain`).
      Decoding many requests, pass `adaptive.carry_alpha(out.beta_mean,
      out.beta_count, settings)` of one to the next: α is then learnt once,
      not from the prior in every request.

  Returns:
    `SpeculativeOutput` with tokens, lengths and per-row acceptance statistics.
  """
  vocab_size = target_module.config.vocab_size
  drafters_lib.check_vocab_compatible(vocab_size, drafter.vocab_size)
  call = dict(target_module=target_module, target_params=target_params,
              encoder_input_tokens=_check_encoder_inputs(encoder_input_tokens, vocab_size),
              rng=_default_rng(rng),
              max_decode_len=_check_positive_int('max_decode_len', max_decode_len),
              sampling=sampling_lib.make_sampling_config(temperature, top_k, top_p),
              eos_id=_check_eos(eos_id, vocab_size))
  if gamma == adaptive.AUTO:
    return _auto_decode(drafter, **call, max_gamma=_check_positive_int('max_gamma', max_gamma),
                        cost_profile=cost_profile, settings=dict(auto_settings or {}))
  if isinstance(gamma, str):
    raise ValueError(f"gamma must be an integer >= 1 or 'auto', got {gamma!r}")
  return speculative_loop.decode(drafter=drafter, policy=None,
                                 gamma=_check_positive_int('gamma', gamma), **call)


def _auto_decode(drafter: drafters_lib.Drafter, *, target_module: nn.Module, target_params: Any,
                 encoder_input_tokens: Array, rng: Array, max_decode_len: int,
                 sampling: sampling_lib.SamplingConfig, eos_id: Array, max_gamma: int,
                 cost_profile: Any, settings: dict[str, Any]) -> SpeculativeOutput:
  """`speculative_decode(gamma='auto')` on checked arguments."""
  profile = calibration.resolve_profile(
      cost_profile, target_module, target_params, drafter, encoder_input_tokens,
      max_gamma=max_gamma, max_decode_len=max_decode_len, sampling=sampling, eos_id=eos_id)
  settings = adaptive.profile_prior(profile, settings)
  if adaptive.stays_plain(profile, max_gamma, max_decode_len, **settings):
    return _plain_output(_autoregressive_decode(
        target_module, target_params, encoder_input_tokens, rng, max_decode_len=max_decode_len,
        sampling=sampling, eos_id=eos_id), max_gamma)
  return speculative_loop.decode(target_module, target_params, drafter, encoder_input_tokens,
                                 rng, adaptive.cached_policy(profile, max_gamma, **settings),
                                 gamma=None, max_decode_len=max_decode_len, sampling=sampling,
                                 eos_id=eos_id)
