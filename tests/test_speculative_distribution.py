"""Sampled speculative output follows the target's distribution exactly (and a wrong sampler fails).

The target's law over the first three tokens is computed exactly by
enumeration on a vocabulary of 8; N independent rows are decoded from one
prompt and their sequences compared with a chi-square test at significance
level 0.001 (cells with expected count < 5 are pooled). Seeds are fixed, so
the outcome is deterministic; N is chosen so that the negative control -- the
classic bug of sampling the correction token from p instead of
norm(max(0, p - q)) after a rejection -- is rejected by the same test.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from conftest import init_params

from specdec_t5x import acceptance, adaptive, decoding, drafters, network, sampling

SIGNIFICANCE = 0.001
NUM_SAMPLES = 40_000
VOCAB, EOS, LENGTH, GAMMA = 8, 7, 3, 2
PROMPT = np.array([[3, 5, 2, 7, 4]], np.int32)

SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7),
    dict(temperature=1.0, top_k=4),
    dict(temperature=1.0, top_p=0.8),
    dict(temperature=0.7, top_k=5, top_p=0.9),
]


@functools.cache
def models():
  config = network.config_from_preset('test_tiny', vocab_size=VOCAB)
  module = network.Transformer(config)
  # Scale the logits up a little so the distributions are far from uniform.
  target = jax.tree_util.tree_map(lambda x: x, init_params(config, seed=10))
  target['decoder']['logits_dense']['kernel'] *= 1.5
  draft = init_params(config, seed=11)
  draft['decoder']['logits_dense']['kernel'] *= 1.5
  return module, target, draft


def exact_law(settings) -> dict[tuple, float]:
  """P(sequence) over the first LENGTH tokens; a sequence ends early at EOS."""
  module, target, _ = models()
  config = sampling.make_sampling_config(**settings)
  prefixes = np.array(list(itertools.product(range(VOCAB), repeat=LENGTH - 1)), np.int32)
  inputs = np.concatenate([np.zeros((len(prefixes), 1), np.int32), prefixes], 1)
  logits = module.apply({'params': target}, np.repeat(PROMPT, len(prefixes), 0), inputs,
                        jnp.ones_like(inputs), enable_dropout=False)
  probs = np.asarray(sampling.probabilities(logits, config), np.float64)  # [prefixes, LENGTH, V]
  index = {tuple(p): i for i, p in enumerate(prefixes.tolist())}
  law = {}

  def walk(prefix, prob):
    if len(prefix) == LENGTH or (prefix and prefix[-1] == EOS):
      law[tuple(prefix)] = law.get(tuple(prefix), 0.0) + prob
      return
    row = index[tuple(prefix + [0] * (LENGTH - 1 - len(prefix)))]
    for token, p in enumerate(probs[row, len(prefix)]):
      if p > 0:
        walk(prefix + [token], prob * p)

  walk([], 1.0)
  return law


def observed_sequences(tokens, lengths) -> list[tuple]:
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  return [tuple(row[:n].tolist()) for row, n in zip(tokens, lengths, strict=True)]


def chi_square_pvalue(samples: list[tuple], law: dict[tuple, float]) -> float:
  counts = {}
  for s in samples:
    counts[s] = counts.get(s, 0) + 1
  assert set(counts) <= set(law), f'impossible sequences drawn: {set(counts) - set(law)}'
  cells = sorted(law, key=law.get, reverse=True)
  expected = np.array([law[c] for c in cells]) * len(samples)
  observed = np.array([counts.get(c, 0) for c in cells], float)
  big = expected >= 5
  expected = np.append(expected[big], expected[~big].sum())
  observed = np.append(observed[big], observed[~big].sum())
  if expected[-1] < 5:  # fold a small pooled cell into the smallest kept one
    expected[-2] += expected[-1]
    observed[-2] += observed[-1]
    expected, observed = expected[:-1], observed[:-1]
  return scipy.stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


# gamma='auto' with costs that make it start at γ = 2 (prior α = 0.9), fall to γ = 0 once
# the unrelated draft's α (~0.3) is measured, and probe at γ = 1 after one plain step: the
# rows that need three iterations run γ = 2, 0, 1.
AUTO = dict(gamma='auto', max_gamma=2, cost_profile=adaptive.CostProfile((1.0, 1.5, 1.8)),
            auto_settings=dict(alpha_prior=0.9, probe_every=1, switch_margin=0.0))


def speculative_samples(settings, seed=0, auto=False, logits_dtype='float32'):
  module, target, draft = models()
  draft = drafters.with_logits_dtype(draft, logits_dtype)
  prompts = np.repeat(PROMPT, NUM_SAMPLES, 0)
  gamma = AUTO if auto else dict(gamma=GAMMA)
  out = decoding.speculative_decode(module, target, drafters.ModelDrafter(module, draft), prompts,
                                    max_decode_len=LENGTH, eos_id=EOS,
                                    rng=jax.random.PRNGKey(seed), **gamma, **settings)
  return observed_sequences(out.tokens, out.lengths), out


@pytest.mark.parametrize('settings', SETTINGS, ids=lambda s: '-'.join(f'{k}{v}' for k, v in
                                                                      s.items()))
def test_speculative_sampling_matches_target_law(settings):
  samples, out = speculative_samples(settings)
  # The draft is unrelated, so rejections (and the residual rule) are exercised.
  assert 0.05 < float(np.mean(out.beta_mean)) < 0.95
  assert chi_square_pvalue(samples, exact_law(settings)) > SIGNIFICANCE


@pytest.mark.parametrize('logits_dtype', ['bfloat16', 'int8'])
def test_low_precision_logits_draft_sampling_matches_target_law(logits_dtype):
  """A draft whose logits layer is stored in bfloat16 or int8 (`drafters.with_logits_dtype`)."""
  samples, out = speculative_samples(SETTINGS[0], seed=1, logits_dtype=logits_dtype)
  assert 0.05 < float(np.mean(out.beta_mean)) < 0.95
  assert chi_square_pvalue(samples, exact_law(SETTINGS[0])) > SIGNIFICANCE


@pytest.mark.parametrize('settings', [SETTINGS[0], SETTINGS[3]], ids=['temperature1', 'top_p'])
def test_auto_gamma_sampling_matches_target_law(settings):
  """γ chosen per iteration (2, then 0, then a probe at 1) keeps the target's law."""
  samples, out = speculative_samples(settings, seed=2, auto=True)
  counts = np.asarray(out.gamma_iterations)
  assert np.all(counts[:, 2] == 1)                         # every row starts at γ = 2
  assert np.any(np.all(counts == 1, axis=1))               # some ran γ = 2, 0, then 1
  assert chi_square_pvalue(samples, exact_law(settings)) > SIGNIFICANCE


def test_autoregressive_sampling_matches_target_law():
  """The harness itself: the baseline sampler passes the same test."""
  module, target, _ = models()
  settings = SETTINGS[0]
  out = decoding.autoregressive_decode(module, target, np.repeat(PROMPT, NUM_SAMPLES, 0),
                                       max_decode_len=LENGTH, eos_id=EOS,
                                       rng=jax.random.PRNGKey(1), **settings)
  samples = observed_sequences(out.tokens, out.lengths)
  assert chi_square_pvalue(samples, exact_law(settings)) > SIGNIFICANCE


def wrong_verify_draft(rng, target_probs, draft_probs, draft_tokens, greedy):
  """The bug: after a rejection, draw the next token from p instead of norm(max(0, p - q))."""
  num_accepted, _ = decoding_verify(rng, target_probs, draft_probs, draft_tokens, greedy)
  p_next = jnp.take_along_axis(target_probs, num_accepted[:, None, None], axis=1)[:, 0]
  _, residual_rng = jax.random.split(rng)
  return num_accepted, sampling.sample_from_probabilities(residual_rng, p_next)


decoding_verify = acceptance.verify_draft


@pytest.mark.parametrize('settings,auto,logits_dtype,seed', [
    (SETTINGS[0], False, 'float32', 0), (SETTINGS[1], False, 'float32', 0),
    (SETTINGS[0], True, 'float32', 2), (SETTINGS[0], False, 'bfloat16', 1),
    (SETTINGS[0], False, 'int8', 1)],
    ids=['temperature1', 'temperature0.7', 'auto-temperature1', 'bf16-logits-temperature1',
         'int8-logits-temperature1'])
def test_wrong_sampler_is_rejected(settings, auto, logits_dtype, seed, monkeypatch):
  """Negative control: the same test at the same level must catch a wrong residual."""
  monkeypatch.setattr(acceptance, 'verify_draft', wrong_verify_draft)
  jax.clear_caches()
  try:
    samples, _ = speculative_samples(settings, seed=seed, auto=auto, logits_dtype=logits_dtype)
  finally:
    monkeypatch.undo()
    jax.clear_caches()
  assert chi_square_pvalue(samples, exact_law(settings)) < SIGNIFICANCE
