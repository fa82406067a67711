"""bfloat16: greedy speculative output equals greedy autoregressive output (issue #19).

In bfloat16 the verification call of γ+1 positions used to round differently
from one-position steps, which flipped near-ties. With the arithmetic that
bfloat16 decoding uses by default on CPU (`decode_kernels='auto'`, which is
position-invariant there: `specdec_t5x.network.kernels`) every request of the
randomized suite below decodes exactly as autoregressive decoding does. The
control runs part of the suite with the float32-tuned kernels ('cpu'), which
are not position-invariant, and must find divergences: without it a suite whose
models never meet a near-tie could not fail.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_params, perturb, random_inputs

from specdec_t5x import adaptive, decoding, drafters, network

MAX_LEN = 20
ENCODER_LENGTH = 12
# Unscaled random weights: their greedy outputs vary, and bfloat16 meets near-ties often
# (scaled-up weights widen the logits' gaps, and the control below then finds fewer).
TARGET = dict(vocab_size=512, emb_dim=64, num_heads=2, head_dim=32, num_encoder_layers=2,
              num_decoder_layers=2, mlp_dim=128, mlp_activations=('gelu', 'linear'),
              dropout_rate=0.0, dtype=jnp.bfloat16)
SMALL_DRAFT = dict(TARGET, emb_dim=32, num_heads=1, num_encoder_layers=1, num_decoder_layers=1,
                   mlp_dim=64)
PROFILE = adaptive.CostProfile((1.0, 1.3, 1.45, 1.6))


@dataclasses.dataclass(frozen=True)
class Case:
  """`requests` random requests as `requests // batch` batches: one draft, one γ, one batch size."""

  draft: str
  gamma: int | str
  batch: int
  requests: int


# 216 requests: three drafts (α ≈ 0, ≈ 0.6 and 1), γ 2-7, batch 1-8; EOS ids vary.
# Few shapes and many batches each: compiling, not decoding, is what costs here.
SUITE = (Case('perturbed', 3, 8, 120), Case('small', 5, 4, 40), Case('self', 7, 2, 20),
         Case('perturbed', 2, 1, 36))
# gamma='auto' compiles a branch per γ (about two minutes here): 40 more requests, marked slow.
AUTO = Case('perturbed', 'auto', 8, 40)


def _bfloat16(params):
  return jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)


@functools.cache
def models(decode_kernels: str):
  """(target module, target params, {draft name: drafter}) in bfloat16."""
  target = network.T5Config(**TARGET, decode_kernels=decode_kernels)
  module = network.Transformer(target)
  params = _bfloat16(init_params(target, seed=0))
  small = network.T5Config(**SMALL_DRAFT, decode_kernels=decode_kernels)
  return module, params, {
      'perturbed': drafters.ModelDrafter(module, _bfloat16(perturb(params, 0.1, seed=1))),
      'small': drafters.ModelDrafter(network.Transformer(small), _bfloat16(init_params(small, 2))),
      'self': drafters.ModelDrafter(module, params)}


def _eos_id(request: int) -> int:
  """EOS varies with the request: the usual 1, or a token the models emit mid-sequence."""
  return (1, 7, 100, 311)[request % 4]


def decode_case(case: Case, decode_kernels: str, first_seed: int = 0):
  """`[(expected, got)]` per batch of `case`, autoregressive and speculative, in bfloat16."""
  module, params, drafts = models(decode_kernels)
  outputs = []
  for index in range(case.requests // case.batch):
    seed = first_seed + index
    tokens = random_inputs(case.batch, ENCODER_LENGTH, TARGET['vocab_size'], seed)
    eos_id = _eos_id(seed)
    expected = decoding.autoregressive_decode(module, params, tokens, max_decode_len=MAX_LEN,
                                              eos_id=eos_id)
    got = decoding.speculative_decode(
        module, params, drafts[case.draft], tokens, gamma=case.gamma, max_decode_len=MAX_LEN,
        eos_id=eos_id, max_gamma=3, cost_profile=PROFILE if case.gamma == 'auto' else None)
    outputs.append((expected, got))
  return outputs


def divergent_rows(outputs) -> int:
  """How many requests' tokens differ between autoregressive and speculative decoding."""
  return sum(int(np.sum(np.any(np.asarray(expected.tokens) != np.asarray(got.tokens), axis=1)))
             for expected, got in outputs)


@pytest.mark.parametrize('case', SUITE + (pytest.param(AUTO, marks=pytest.mark.slow),),
                         ids=lambda c: f'{c.draft}-g{c.gamma}-b{c.batch}')
def test_bfloat16_greedy_equals_autoregressive(case):
  outputs = decode_case(case, 'auto')
  assert divergent_rows(outputs) == 0
  for expected, got in outputs:
    np.testing.assert_array_equal(got.lengths, expected.lengths)
  lengths = np.concatenate([np.asarray(expected.lengths) for expected, _ in outputs])
  assert len(set(lengths.tolist())) > 1  # EOS ends rows at different places
  if case.draft == 'self':  # every verification call scores γ+1 accepted positions
    assert all(np.allclose(got.beta_mean, 1.0, atol=1e-2) for _, got in outputs)


def test_the_suite_covers_two_hundred_requests():
  assert sum(case.requests // case.batch * case.batch for case in SUITE) >= 200


def test_kernels_that_are_not_position_invariant_diverge():
  """The control: the float32-tuned kernels in bfloat16 change some greedy outputs."""
  case = SUITE[0]
  assert divergent_rows(decode_case(case, 'cpu')) > 0
