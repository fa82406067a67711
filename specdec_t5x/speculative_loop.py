"""The jitted speculative loop: Algorithm 1 of Leviathan et al. (2023), one `lax.while_loop`.

`specdec_t5x.decoding.speculative_decode` checks its arguments and calls
`decode` here. Each iteration (`iteration`) is Algorithm 1 for every row:
the drafter proposes γ tokens, the target scores the γ+1 positions in one
call, each row keeps its accepted prefix plus one target token, and both
models rewind to what was kept. γ = 0 is one plain target step (the first
call of a look-ahead drafter, and an option of `gamma='auto'`). With an
`adaptive.AutoGamma` policy, γ is chosen before every iteration and the
iteration runs as the matching branch of a `lax.switch`.

Shapes: `B` batch, `L` encoder length, `T = max_decode_len`, `G` the largest
γ (the fixed γ, or `max_gamma`), `V` the target's vocabulary size.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from specdec_t5x import acceptance, adaptive
from specdec_t5x import cache as cache_lib
from specdec_t5x import drafters as drafters_lib
from specdec_t5x import sampling as sampling_lib

Array = jax.Array


@struct.dataclass
class SpeculativeOutput:
  tokens: Array      # [B, T] int32, 0 after EOS
  lengths: Array     # [B] tokens emitted, EOS included
  iterations: Array        # [B] target calls while the row was still decoding
  draft_iterations: Array  # [B] of those, the ones that verified draft tokens (γ >= 1): all
                           #     but the draft-less first call of a look-ahead drafter and,
                           #     with gamma='auto', the plain steps
  accepted: Array          # [B] draft tokens emitted (accepted and not cut by EOS / T)
  beta_mean: Array         # [B] mean of β = Σ min(p, q) over the verified positions (α estimate)
  beta_count: Array        # [B] the verified positions behind beta_mean: pool α over rows
                           #     and requests as Σ beta_mean·beta_count / Σ beta_count
  gamma_iterations: Array | None = None  # [B, G + 1] of `iterations`, those at each γ


@struct.dataclass
class SpeculativeState:
  sequences: Array         # [B, T + G + 2]: BOS, then emitted tokens
  lengths: Array           # [B]
  done: Array              # [B] bool
  target_cache: Any        # position == lengths at the top of each iteration
  drafter_state: Any
  drafter_ready: Array     # [] bool: drafter_state is initialized (gamma='auto' defers it)
  rng: Array
  iterations: Array        # [B]
  draft_iterations: Array  # [B]
  accepted: Array          # [B]
  beta_sum: Array          # [B]
  beta_count: Array        # [B]
  gamma_iterations: Array  # [B, G + 1]
  policy: Any              # adaptive.PolicyState with gamma='auto', else None


@struct.dataclass
class Request:
  """What every iteration of one request reads: the encoder side and the EOS id."""
  encoded: Array               # [B, L, E] the target's encoder output
  encoder_input_tokens: Array  # [B, L]
  eos_id: Array


def append_at(sequences: Array, block: Array, starts: Array) -> Array:
  """Writes `block [B, k]` into `sequences [B, S]` at column `starts[b]` of each row."""
  write = lambda row, values, start: jax.lax.dynamic_update_slice_in_dim(row, values, start, 0)
  return jax.vmap(write)(sequences, block, starts)


def _embed_tokens(module: nn.Module, tokens: Array) -> Array:
  return module.shared_embedding(tokens)


def score(target_module: nn.Module, target_params: Any, cache: Any, request: Request,
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


def _draft_and_verify(state: SpeculativeState, request: Request, target_module: nn.Module,
                      target_params: Any, drafter: drafters_lib.Drafter, draft_rng: Array,
                      verify_rng: Array, *, gamma: int, sampling: sampling_lib.SamplingConfig):
  """Steps 1-4 of Algorithm 1: draft γ tokens, score γ+1 positions once, accept a prefix.

  γ = 0 drafts nothing: the call scores the last input alone and p's token is emitted.

  Returns:
    `(draft_tokens [B, γ], num_accepted [B], next_token [B], beta [B, γ],
    target_cache, drafter_state)`.
  """
  last = drafters_lib.last_inputs(state.sequences, state.lengths)
  if gamma == 0:
    draft_tokens, drafter_state = last[:, None][:, :0], state.drafter_state
  else:  # 1. The drafter proposes γ tokens and the distributions q they came from.
    with jax.named_scope('draft'):  # The scopes name the parts in profiles (bench.loop_trace).
      draft_tokens, q, drafter_state = drafter.propose(
          state.drafter_state, state.sequences, state.lengths, gamma, sampling,
          target_module.config.vocab_size, draft_rng)
  with jax.named_scope('score'):  # 2. The target scores all γ+1 positions in one call.
    logits, target_cache, drafter_state = score(
        target_module, target_params, state.target_cache, request,
        jnp.concatenate([last[:, None], draft_tokens], axis=1), drafter, drafter_state)
  with jax.named_scope('accept'):  # 3.-4. Accept a prefix of the draft, then one target token.
    if gamma == 0:
      next_token = sampling_lib.sample(verify_rng, logits[:, 0], sampling)
      num_accepted = jnp.zeros_like(state.lengths)
      beta = jnp.zeros(draft_tokens.shape, jnp.float32)
    elif sampling.greedy:  # one-hot p and q: token ids say it all, no [B, γ+1, V] arrays
      num_accepted, next_token, beta = acceptance.verify_greedy(
          sampling_lib.first_argmax(logits), draft_tokens)
    else:
      p = sampling_lib.probabilities(logits, sampling)  # [B, γ+1, V]
      num_accepted, next_token = acceptance.verify_draft(verify_rng, p, q, draft_tokens,
                                                         greedy=False)
      beta = acceptance.position_betas(p, q)
  return draft_tokens, num_accepted, next_token, beta, target_cache, drafter_state


def iteration(state: SpeculativeState, request: Request, target_module: nn.Module,
              target_params: Any, drafter: drafters_lib.Drafter, *, gamma: int,
              max_decode_len: int, sampling: sampling_lib.SamplingConfig) -> SpeculativeState:
  """One iteration of Algorithm 1 for every row: draft, score once, accept, emit, rewind."""
  rng, draft_rng, verify_rng = jax.random.split(state.rng, 3)
  draft_tokens, num_accepted, next_token, beta, target_cache, drafter_state = _draft_and_verify(
      state, request, target_module, target_params, drafter, draft_rng, verify_rng,
      gamma=gamma, sampling=sampling)
  # 5. Emit the accepted tokens and the target's, cut after EOS and at T; rewind both models.
  with jax.named_scope('emit'):
    block, num_new, ended = acceptance.emitted_block(
        draft_tokens, num_accepted, next_token, state.lengths, state.done,
        max_decode_len=max_decode_len, eos_id=request.eos_id)
    sequences = append_at(state.sequences, block, state.lengths + 1)
    lengths = state.lengths + num_new
    beta_sum, beta_count = acceptance.verified_betas(beta, num_accepted, num_new)
    active = (~state.done).astype(jnp.int32)
    return state.replace(
        sequences=sequences, lengths=lengths,
        done=state.done | ended | (lengths >= max_decode_len),
        # Rewind both models to what was kept: rejected positions are overwritten later.
        target_cache=cache_lib.rewind(target_cache, lengths),
        drafter_state=drafter.accept(drafter_state, sequences, lengths),
        rng=rng,
        iterations=state.iterations + active,
        draft_iterations=state.draft_iterations + (active if gamma else 0),
        accepted=state.accepted + jnp.minimum(num_accepted, num_new),
        beta_sum=state.beta_sum + beta_sum,
        beta_count=state.beta_count + beta_count,
        gamma_iterations=state.gamma_iterations.at[:, gamma].add(active))


def decode_cache_length(drafter: drafters_lib.Drafter, max_gamma: int,
                        max_decode_len: int) -> int:
  """The positions of the target's and the drafter's caches in a decode of these sizes."""
  # A row at length T may still be scored (and ignored): T + G + 1 positions,
  # plus the drafter's extra positions after them.
  return max_decode_len + max_gamma + 1 + drafters_lib.num_extra_positions(drafter)


def _remaining(lengths: Array, done: Array, max_decode_len: int) -> Array:
  """`[]`: the positions the longest-running unfinished row may still emit (0 when all are done)."""
  return jnp.max(jnp.where(done, 0, max_decode_len - lengths))


def _ready_drafter(state: SpeculativeState, policy: adaptive.AutoGamma, request: Request,
                   drafter: drafters_lib.Drafter, max_decode_len: int) -> SpeculativeState:
  """Initializes the drafter on its first proposal (a request at γ = 0 never pays for it)."""
  def init(state: SpeculativeState) -> SpeculativeState:
    cache_length = decode_cache_length(drafter, policy.max_gamma, max_decode_len)
    return state.replace(drafter_state=drafter.init(request.encoder_input_tokens, cache_length),
                         drafter_ready=jnp.bool_(True))

  return jax.lax.cond(state.drafter_ready, lambda state: state, init, state)


def _auto_segment(state: SpeculativeState, policy: adaptive.AutoGamma, *, gamma: int,
                  **iteration_args: Any) -> SpeculativeState:
  """Iterations at `gamma`, each folded into the policy's estimate, while it keeps choosing γ."""
  drafter = iteration_args['drafter']
  state = _ready_drafter(state, policy, iteration_args['request'], drafter,
                         iteration_args['max_decode_len'])
  if gamma:  # plain steps before this segment left the drafter behind
    state = state.replace(drafter_state=drafters_lib.catch_up(
        drafter, state.drafter_state, state.sequences, state.lengths))

  def body(state: SpeculativeState) -> SpeculativeState:
    new = iteration(state, gamma=gamma, **iteration_args)
    remaining = _remaining(new.lengths, new.done, iteration_args['max_decode_len'])
    return new.replace(policy=adaptive.update(
        policy, state.policy, gamma, remaining, jnp.sum(new.beta_sum - state.beta_sum),
        jnp.sum(new.beta_count - state.beta_count)))

  def cond(state: SpeculativeState) -> Array:
    return (adaptive.keep_going(policy, state.policy, jnp.all(state.done))
            & (state.policy.gamma == gamma))

  return jax.lax.while_loop(cond, body, state)


def plain_step(target_module: nn.Module, target_params: Any, request: Request,
               sequences: Array, lengths: Array, done: Array, cache: Any, rng: Array, *,
               max_decode_len: int, sampling: sampling_lib.SamplingConfig
               ) -> tuple[Array, Array, Array, Any, Array]:
  """One autoregressive step for every row: the baseline's body, and γ = 0 of gamma='auto'.

  The target cache advances one position in every row, finished ones too
  (their junk is never read). A finished row emits 0 and keeps its length.

  Returns:
    `(sequences, lengths [B], done [B], cache, rng)` after the step.
  """
  rng, step_rng = jax.random.split(rng)
  last = drafters_lib.last_inputs(sequences, lengths)
  logits, cache = cache_lib.decode_step(target_module, target_params, cache, request.encoded,
                                        request.encoder_input_tokens, last[:, None])
  token = jnp.where(done, 0, sampling_lib.sample(step_rng, logits[:, 0], sampling))
  sequences = append_at(sequences, token[:, None], lengths + 1)
  lengths = lengths + (~done).astype(jnp.int32)
  done = done | (token == request.eos_id) | (lengths >= max_decode_len)
  return sequences, lengths, done, cache, rng


def _plain_segment(state: SpeculativeState, policy: adaptive.AutoGamma, *, request: Request,
                   target_module: nn.Module, target_params: Any, drafter: drafters_lib.Drafter,
                   max_decode_len: int, sampling: sampling_lib.SamplingConfig) -> SpeculativeState:
  """γ = 0 while the policy keeps choosing it: `plain_step` and nothing else.

  `iteration(gamma=0)` would also verify, count and rewind; here the target
  cache simply advances one position per step (a finished row's junk is
  rewound at the end), the drafter is left behind (the next speculative
  segment catches it up on entry) and the estimate of α, which plain steps
  cannot change, is left as it is.
  """
  del drafter  # caught up by the next `_auto_segment` at γ >= 1

  def body(state: SpeculativeState) -> SpeculativeState:
    sequences, lengths, done, cache, rng = plain_step(
        target_module, target_params, request, state.sequences, state.lengths, state.done,
        state.target_cache, state.rng, max_decode_len=max_decode_len, sampling=sampling)
    return state.replace(
        sequences=sequences, lengths=lengths, done=done, target_cache=cache, rng=rng,
        iterations=state.iterations + (~state.done).astype(jnp.int32),
        policy=adaptive.update(policy, state.policy, 0,
                               _remaining(lengths, done, max_decode_len)))

  def cond(state: SpeculativeState) -> Array:
    return (adaptive.keep_going(policy, state.policy, jnp.all(state.done))
            & (state.policy.gamma == 0))

  final = jax.lax.while_loop(cond, body, state)
  return final.replace(
      target_cache=cache_lib.rewind(final.target_cache, final.lengths),
      gamma_iterations=final.gamma_iterations.at[:, 0].add(final.iterations - state.iterations))


def auto_segment(state: SpeculativeState, policy: adaptive.AutoGamma,
                 **iteration_args: Any) -> SpeculativeState:
  """Runs iterations at the γ the policy picks until it picks another (or the request ends).

  One `lax.switch` per change of γ, not per iteration: XLA:CPU copies the
  loop state (the caches among it) in and out of a conditional's branches,
  which per iteration cost a cpu_target step ~15% (measured 2026-12-02); a
  branch that loops at its own γ pays that once per run of equal γs.
  """
  branches = [functools.partial(_auto_segment, policy=policy, gamma=g, **iteration_args)
              for g in range(policy.max_gamma + 1)]
  if not drafters_lib.num_extra_positions(iteration_args['drafter']):
    # (Drafters with extra positions need them scored at every target call.)
    branches[0] = functools.partial(_plain_segment, policy=policy, **iteration_args)
  return jax.lax.switch(state.policy.gamma, branches, state)


def _init_state(target_module: nn.Module, target_params: Any, drafter: drafters_lib.Drafter,
                request: Request, rng: Array, policy: adaptive.AutoGamma | None, *,
                max_gamma: int, max_decode_len: int) -> SpeculativeState:
  batch = request.encoder_input_tokens.shape[0]
  cache_length = decode_cache_length(drafter, max_gamma, max_decode_len)
  init_drafter = lambda: drafter.init(request.encoder_input_tokens, cache_length)
  # With gamma='auto' a drafter that only proposes is initialized when it first does
  # (`_ready_drafter`); until then its state is zeros of the right shapes.
  deferred = policy is not None and not drafters_lib.num_extra_positions(drafter)
  drafter_state = (jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                          jax.eval_shape(init_drafter))
                   if deferred else init_drafter())
  zeros = jnp.zeros((batch,), jnp.int32)
  return SpeculativeState(
      sequences=jnp.zeros((batch, max_decode_len + max_gamma + 2), jnp.int32),
      lengths=zeros, done=jnp.zeros((batch,), bool),
      target_cache=cache_lib.init_decode_cache(target_module, target_params, request.encoded,
                                               request.encoder_input_tokens, cache_length),
      drafter_state=drafter_state, drafter_ready=jnp.bool_(not deferred),
      rng=rng, iterations=zeros, draft_iterations=zeros, accepted=zeros,
      beta_sum=jnp.zeros((batch,), jnp.float32), beta_count=zeros,
      gamma_iterations=jnp.zeros((batch, max_gamma + 1), jnp.int32),
      policy=None if policy is None else adaptive.init_state(policy, max_decode_len))


@functools.partial(jax.jit, static_argnames=('target_module', 'gamma', 'max_decode_len',
                                             'sampling'))
def decode(target_module: nn.Module, target_params: Any, drafter: drafters_lib.Drafter,
           encoder_input_tokens: Array, rng: Array, policy: adaptive.AutoGamma | None, *,
           gamma: int | None, max_decode_len: int, sampling: sampling_lib.SamplingConfig,
           eos_id: Array) -> SpeculativeOutput:
  """The speculative loop at a fixed `gamma`, or at the policy's choice when `gamma` is None.

  Inputs are checked by `decoding.speculative_decode`; `encoder_input_tokens`
  is `[B, L]` int32.
  """
  max_gamma = policy.max_gamma if gamma is None else gamma
  request = Request(encoded=cache_lib.encode(target_module, target_params, encoder_input_tokens),
                    encoder_input_tokens=encoder_input_tokens, eos_id=eos_id)
  state = _init_state(target_module, target_params, drafter, request, rng, policy,
                      max_gamma=max_gamma, max_decode_len=max_decode_len)
  args = dict(request=request, target_module=target_module, target_params=target_params,
              drafter=drafter, max_decode_len=max_decode_len, sampling=sampling)
  if drafters_lib.num_extra_positions(drafter):
    # Drafters with extra positions draft from the logits of the previous target call,
    # which the first iteration does not have yet: it scores BOS alone.
    state = iteration(state, gamma=0, **args)
  if gamma is None:
    body = functools.partial(auto_segment, policy=policy, **args)
    cond = lambda state: adaptive.keep_going(policy, state.policy, jnp.all(state.done))
  else:
    body = functools.partial(iteration, gamma=gamma, **args)
    cond = lambda state: ~jnp.all(state.done)
  final = jax.lax.while_loop(cond, body, state)
  return SpeculativeOutput(
      tokens=final.sequences[:, 1:max_decode_len + 1], lengths=final.lengths,
      iterations=final.iterations, draft_iterations=final.draft_iterations,
      accepted=final.accepted, beta_mean=final.beta_sum / jnp.maximum(final.beta_count, 1),
      beta_count=final.beta_count, gamma_iterations=final.gamma_iterations)
