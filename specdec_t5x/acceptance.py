"""The acceptance rule of speculative decoding: which draft tokens a row keeps, and what it emits.

`verify_draft` is steps 3-5 of Algorithm 1 (Leviathan et al. 2023): accept each
draft token x_i with probability min(1, p(x_i) / q(x_i)) until the first
rejection, then draw one token from norm(max(0, p − q)) (or from p after full
acceptance). At temperature 0, p and q are one-hot and the rule reduces to
"accept while the draft token is the target's argmax". `emitted_block` then cuts
the accepted block after an EOS and at `max_decode_len`, so a speculative row
emits exactly what the target alone would.

Shapes: `B` batch, `γ` draft tokens, `V` vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from specdec_t5x import sampling as sampling_lib

Array = jax.Array


def verify_draft(rng: Array, target_probs: Array, draft_probs: Array, draft_tokens: Array,
                 greedy: bool) -> tuple[Array, Array]:
  """Steps 3-5 of Algorithm 1: how many draft tokens to keep, and the token after them.

  Args:
    rng: PRNG key (unused when greedy).
    target_probs: p, `[B, γ+1, V]`, the target's distributions after the
      prefix and after each draft token.
    draft_probs: q, `[B, γ, V]`, the distributions the draft tokens came from.
    draft_tokens: `[B, γ]`.
    greedy: p and q are one-hot argmaxes: `verify_greedy`'s rule on their tokens.

  Returns:
    `(num_accepted [B] in [0, γ], next_token [B])`: next_token ~ norm(max(0,
    p_{n+1} − q_{n+1})) after a rejection, ~ p_{γ+1} after full acceptance.
  """
  if greedy:
    num_accepted, next_token, _ = verify_greedy(sampling_lib.first_argmax(target_probs),
                                                draft_tokens)
    return num_accepted, next_token
  batch, gamma = draft_tokens.shape
  accept_rng, residual_rng = jax.random.split(rng)
  p_of_draft = jnp.take_along_axis(target_probs[:, :gamma], draft_tokens[..., None], -1)[..., 0]
  q_of_draft = jnp.take_along_axis(draft_probs, draft_tokens[..., None], -1)[..., 0]
  # r < p/q, written without the division: q(x) > 0 for every drawn x.
  r = jax.random.uniform(accept_rng, (batch, gamma))
  accepted = r * q_of_draft < p_of_draft
  num_accepted = jnp.sum(jnp.cumprod(accepted, axis=1), axis=1).astype(jnp.int32)

  # A zero q after the last draft makes "full acceptance" the same residual rule.
  padded_q = jnp.concatenate([draft_probs, jnp.zeros_like(draft_probs[:, :1])], axis=1)
  pick = lambda x: jnp.take_along_axis(x, num_accepted[:, None, None], axis=1)[:, 0]
  p_next, q_next = pick(target_probs), pick(padded_q)
  residual = jnp.maximum(p_next - q_next, 0.0)
  # p == q exactly gives an empty residual; it can only be reached when the
  # rejection had probability 0, so falling back to p keeps the law exact.
  residual = jnp.where(jnp.sum(residual, -1, keepdims=True) > 0.0, residual, p_next)
  return num_accepted, sampling_lib.sample_from_probabilities(residual_rng, residual)


def verify_greedy(target_tokens: Array, draft_tokens: Array) -> tuple[Array, Array, Array]:
  """`verify_draft` at temperature 0, on token ids alone.

  One-hot p and q make Algorithm 1 "keep draft tokens while each is the
  target's argmax, then emit the target's argmax", and β = Σ min(p, q) is 1
  where the two agree and 0 elsewhere: nothing needs the `[B, γ+1, V]` arrays.

  Args:
    target_tokens: `[B, γ+1]` the target's argmax after the prefix and after
      each draft token (`sampling.first_argmax` of its logits).
    draft_tokens: `[B, γ]`.

  Returns:
    `(num_accepted [B], next_token [B], beta [B, γ] float32)`.
  """
  gamma = draft_tokens.shape[1]
  agrees = draft_tokens == target_tokens[:, :gamma]
  num_accepted = jnp.sum(jnp.cumprod(agrees, axis=1), axis=1).astype(jnp.int32)
  next_token = jnp.take_along_axis(target_tokens, num_accepted[:, None], axis=1)[:, 0]
  return num_accepted, next_token, agrees.astype(jnp.float32)


def position_betas(target_probs: Array, draft_probs: Array) -> Array:
  """β = Σ_x min(p(x), q(x)) at each draft position `[B, γ]`: p `[B, γ+1, V]`, q `[B, γ, V]`."""
  gamma = draft_probs.shape[1]
  return jnp.sum(jnp.minimum(target_probs[:, :gamma], draft_probs), axis=-1)


def emitted_block(draft_tokens: Array, num_accepted: Array, next_token: Array, lengths: Array,
                  done: Array, *, max_decode_len: int, eos_id: Array) -> tuple[Array, Array, Array]:
  """The tokens a row emits this iteration: x_1..x_n, then t, cut after EOS and at T.

  Args:
    draft_tokens: `[B, γ]`.
    num_accepted: `[B]` n in [0, γ], from `verify_draft`.
    next_token: `[B]` t, from `verify_draft`.
    lengths: `[B]` tokens each row had emitted before this iteration.
    done: `[B]` rows that had already finished (they emit nothing).
    max_decode_len: T, the most tokens a row emits.
    eos_id: the id that ends a row.

  Returns:
    `(block [B, γ+1] with 0 beyond what is kept, num_new [B], ended [B])`:
    `ended` is whether the kept tokens include an EOS.
  """
  gamma = draft_tokens.shape[1]
  index = jnp.arange(gamma + 1)[None, :]  # [1, γ+1]
  padded_draft = jnp.pad(draft_tokens, ((0, 0), (0, 1)))  # γ = 0 (a plain step) included
  block = jnp.where(index < num_accepted[:, None], padded_draft, next_token[:, None])
  is_eos = (block == eos_id) & (index <= num_accepted[:, None])
  eos_cut = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, gamma + 1)
  num_new = jnp.minimum(jnp.minimum(num_accepted + 1, eos_cut), max_decode_len - lengths)
  num_new = jnp.where(done, 0, num_new)
  kept = index < num_new[:, None]
  return jnp.where(kept, block, 0), num_new, jnp.any(is_eos & kept, axis=1)


def verified_betas(beta: Array, num_accepted: Array, num_new: Array) -> tuple[Array, Array]:
  """β summed over this iteration's counted positions, and how many were counted.

  The counted positions are those whose prefix is the real output: up to and
  including the first rejection, and not beyond what the row emitted (EOS, T),
  as the paper's α is defined.

  Args:
    beta: `[B, γ]` β at each draft position (`position_betas`, or
      `verify_greedy`'s at temperature 0).
    num_accepted, num_new: `[B]`, from `verify_draft` and `emitted_block`.

  Returns:
    `(beta_sum [B] float32, beta_count [B] int32)`.
  """
  gamma = beta.shape[1]
  counted = jnp.arange(gamma)[None, :] < jnp.minimum(num_accepted + 1, num_new)[:, None]
  return (jnp.sum(jnp.where(counted, beta, 0.0), axis=1),
          jnp.sum(counted, axis=1).astype(jnp.int32))
