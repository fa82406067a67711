"""`ControlledDrafter`: a BENCHMARK INSTRUMENT that drafts with a chosen acceptance rate α.

Not a user-facing draft (it is in neither the registry nor gin): it must be
told the target's own greedy output in advance. It measures the speculative
loop at a known α, independent of how well any real draft model predicts:

* built with `continuation [batch, T]`, the target's greedy output for the very
  inputs that will be decoded (one `autoregressive_decode` run), and `alpha`;
* at draft position i of row b it proposes the target's true next token,
  `continuation[b, lengths[b] + i]`, with probability α, else a wrong token
  (`(true + 1) mod V`, never the true one), drawn independently per position
  (the paper's i.i.d. assumption holds by construction), with q one-hot;
* optionally (`model`, a `ModelDrafter` of a smaller T5, random weights are
  fine) it also runs that model's γ draft steps on every proposal, so the loop
  pays a real c. The model's tokens reach the output through a
  `jnp.where(alpha > 1, model, controlled)`: never true, but `alpha` is traced,
  so XLA cannot drop the model's steps. The model's state follows every
  `init` / `accept`, as it would as the real draft.

Greedy verification accepts only the target's argmax, so the output is the
target's greedy output whatever is proposed. That is also why the
continuation stays valid: each row's emitted prefix IS the continuation's
prefix. Greedy only: at temperature > 0 `propose` raises.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from specdec_t5x import sampling as sampling_lib
from specdec_t5x.drafters import model as model_lib

Array = jax.Array


@struct.dataclass
class ControlledDraftState:
  model_state: Any  # the ModelDrafter's state, or None without a model step


@struct.dataclass
class ControlledDrafter:
  """Proposes the target's greedy continuation, each token right with probability α.

  Attributes:
    continuation: `[batch, T]` int32, the target's greedy output for the inputs
      decoded (row b of the batch passed to `speculative_decode`).
    alpha: the probability that a draft token is the true next token, a float32
      scalar (traced: changing it does not recompile).
    vocab: the target's vocabulary size (static).
    model: an optional `ModelDrafter` whose draft steps run on every proposal.
  """

  continuation: Array
  alpha: Array
  vocab: int = struct.field(pytree_node=False)
  model: model_lib.ModelDrafter | None = None

  @property
  def vocab_size(self) -> int:
    return self.vocab

  def init(self, encoder_input_tokens: Array, cache_length: int) -> ControlledDraftState:
    if self.model is None:
      return ControlledDraftState(model_state=None)
    return ControlledDraftState(model_state=self.model.init(encoder_input_tokens, cache_length))

  def controlled_tokens(self, lengths: Array, gamma: int, rng: Array) -> Array:
    """`[batch, γ]`: each row's next γ true tokens, each replaced by a wrong one w.p. 1 − α."""
    length = self.continuation.shape[1]
    positions = jnp.minimum(lengths[:, None] + jnp.arange(gamma)[None, :], length - 1)
    true = jnp.take_along_axis(self.continuation, positions, axis=1)
    right = jax.random.bernoulli(rng, self.alpha, true.shape)
    return jnp.where(right, true, (true + 1) % self.vocab).astype(jnp.int32)

  def propose(self, state: ControlledDraftState, sequences: Array, lengths: Array, gamma: int,
              sampling: sampling_lib.SamplingConfig, vocab_size: int,
              rng: Array) -> tuple[Array, Array, ControlledDraftState]:
    if not sampling.greedy:
      raise ValueError('ControlledDrafter is a greedy (temperature 0) benchmark instrument: '
                       'its one-hot q would bias sampled verification; use temperature=0')
    if vocab_size != self.vocab:
      raise ValueError(f'ControlledDrafter built for vocabulary {self.vocab}, the target has '
                       f'{vocab_size}')
    control_rng, model_rng = jax.random.split(rng)
    tokens = self.controlled_tokens(lengths, gamma, control_rng)
    if self.model is not None:
      model_tokens, _, model_state = self.model.propose(
          state.model_state, sequences, lengths, gamma, sampling, vocab_size, model_rng)
      # Never true (α <= 1), but α is traced, so the model's steps stay live.
      tokens = jnp.where(self.alpha > 1.0, model_tokens, tokens)
      state = state.replace(model_state=model_state)
    return tokens, sampling_lib.one_hot(tokens, vocab_size), state

  def accept(self, state: ControlledDraftState, sequences: Array,
             lengths: Array) -> ControlledDraftState:
    if self.model is None:
      return state
    return state.replace(model_state=self.model.accept(state.model_state, sequences, lengths))


def controlled_drafter(continuation: Any, alpha: float, vocab_size: int,
                       model: model_lib.ModelDrafter | None = None) -> ControlledDrafter:
  """A `ControlledDrafter` for `continuation [batch, T]` (e.g. `autoregressive_decode(...).tokens`).

  Raises:
    ValueError: α outside [0, 1] or a continuation that is not `[batch, T]`.
  """
  if not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(f'alpha must lie in [0, 1], got {alpha!r}')
  continuation = jnp.asarray(continuation, jnp.int32)
  if continuation.ndim != 2 or continuation.shape[1] < 1:
    raise ValueError(f'continuation must be [batch, T] with T >= 1, got {continuation.shape}')
  if model is not None and model.vocab_size != vocab_size:
    raise ValueError(f'the draft model has {model.vocab_size} token ids, the target '
                     f'{vocab_size}')
  return ControlledDrafter(continuation=continuation, alpha=jnp.float32(alpha),
                           vocab=int(vocab_size), model=model)
