"""gamma='auto': greedy output equals autoregressive output whatever γ the loop picks.

The profiles below make the policy switch: from a long draft to plain steps
(γ = 0) and back through probes. `gamma_iterations` shows which γs ran.
The sampled case is in tests/test_speculative_distribution.py.
"""

import jax
import numpy as np
import pytest
from conftest import random_inputs
from test_drafters_lookahead import drafter as pass_drafter
from test_speculative_greedy import MAX_LEN, assert_same, models

from specdec_t5x import adaptive, calibration, decoding, drafters, paths

# At the prior α = 0.5 the policy starts at γ = 3; after rejections it falls to γ = 0.
SWITCHING = adaptive.CostProfile((1.0, 1.45, 1.6, 1.7, 1.95, 2.2))
CHEAP = adaptive.CostProfile((1.0, 1.01, 1.02, 1.03, 1.04, 1.05))
SETTINGS = dict(probe_every=2, memory=8.0)


def decode_both(batch, draft, profile, max_len=MAX_LEN, eos_id=1, seed=0, max_gamma=5,
                **settings):
  module, target, drafts = models()
  tokens = random_inputs(batch, 9, module.config.vocab_size, seed)
  expected = decoding.autoregressive_decode(module, target, tokens, max_decode_len=max_len,
                                            eos_id=eos_id)
  got = decoding.speculative_decode(
      module, target, drafters.ModelDrafter(module, drafts[draft]), tokens, gamma='auto',
      max_gamma=max_gamma, cost_profile=profile, max_decode_len=max_len, eos_id=eos_id,
      auto_settings={**SETTINGS, **settings})
  return expected, got


@pytest.mark.parametrize('draft', ['unrelated', 'self', 'perturbed'])
@pytest.mark.parametrize('profile', [SWITCHING, CHEAP], ids=['switching', 'cheap'])
@pytest.mark.parametrize('batch', [1, 4, 8])
def test_greedy_equals_autoregressive(batch, profile, draft):
  expected, got = decode_both(batch, draft, profile)
  assert_same(expected, got)
  counts = np.asarray(got.gamma_iterations)
  np.testing.assert_array_equal(counts.sum(axis=1), got.iterations)
  np.testing.assert_array_equal(counts[:, 1:].sum(axis=1), got.draft_iterations)


def test_gamma_switches_to_plain_steps_and_back():
  """An unrelated draft: γ = 3 at first, then γ = 0, and probes at γ = 1 in between."""
  expected, got = decode_both(1, 'unrelated', SWITCHING)
  assert_same(expected, got)
  counts = np.asarray(got.gamma_iterations)[0]
  assert counts[3] >= 1 and counts[0] >= 2 and counts[1] >= 2, counts
  assert counts[0] > counts[1:].sum()


def test_drafter_catches_up_after_plain_steps():
  """The target as its own draft accepts everything, also after plain steps left it behind."""
  expected, got = decode_both(4, 'self', SWITCHING, alpha_prior=0.0, prior_weight=1.0,
                              memory=1e6)
  assert_same(expected, got)
  counts = np.asarray(got.gamma_iterations)
  assert np.all(counts[:, 0] >= 2) and np.all(counts[:, 1:].sum(axis=1) >= 1), counts
  # Every verified draft token agreed: the draft's cache was caught up correctly.
  np.testing.assert_allclose(got.beta_mean, 1.0, atol=1e-5)


@pytest.mark.parametrize('eos_id', [1, 7, 30])
def test_eos_inside_blocks_and_plain_steps(eos_id):
  expected, got = decode_both(8, 'perturbed', SWITCHING, eos_id=eos_id)
  assert_same(expected, got)


def test_lookahead_drafter_with_auto():
  """PaSS rides along every target call, plain steps included."""
  module, target, _ = models()
  tokens = random_inputs(4, 9, module.config.vocab_size, 3)
  expected = decoding.autoregressive_decode(module, target, tokens, max_decode_len=MAX_LEN)
  got = decoding.speculative_decode(module, target, pass_drafter(4), tokens, gamma='auto',
                                    max_gamma=4, cost_profile=SWITCHING, max_decode_len=MAX_LEN,
                                    auto_settings=SETTINGS)
  assert_same(expected, got)


def test_calibration_measures_caches_and_checks(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
  module, target, drafts = models()
  drafter = drafters.ModelDrafter(module, drafts['perturbed'])
  tokens = np.asarray(random_inputs(2, 9, module.config.vocab_size, 0))
  sampling = decoding.sampling_lib.make_sampling_config(0.0)
  shapes = dict(max_gamma=3, max_decode_len=MAX_LEN, sampling=sampling)
  profile = calibration.cached_profile(module, target, drafter, tokens, **shapes)
  assert profile.max_gamma == 3 and profile.iteration_cost[0] == 1.0
  assert list(profile.iteration_cost) == sorted(profile.iteration_cost)
  files = list((tmp_path / calibration.PROFILE_DIR).glob('*.json'))
  assert [f.stem for f in files] == [profile.key]
  assert profile.details['method'] == calibration.PROFILE_METHOD
  # The draft's start is its init timed alone: a drafter's encoder is never free.
  assert profile.start_cost > 0
  # α from one decode at γ = 3 that ends at EOS: the pooled β of the perturbed self-draft.
  assert 0.0 < profile.alpha <= 1.0 and profile.alpha_positions > 0
  out = decoding.speculative_decode(module, target, drafter, tokens, gamma=3,
                                    max_decode_len=MAX_LEN)
  pooled = np.sum(out.beta_mean * out.beta_count) / np.sum(out.beta_count)
  assert profile.alpha == pytest.approx(float(pooled), rel=1e-5)
  assert profile.alpha_positions == int(np.sum(out.beta_count))
  # The second call reads the file instead of measuring.
  real_measure = calibration.measure_profile
  monkeypatch.setattr(calibration, 'measure_profile', lambda *a, **k: pytest.fail('measured'))
  assert calibration.cached_profile(module, target, drafter, tokens, **shapes) == profile
  # A file of another measuring method is measured again (and replaced).
  old = adaptive.CostProfile(profile.iteration_cost, key=profile.key,
                             details={**profile.details, 'method': 1})
  old.save(files[0])
  monkeypatch.setattr(calibration, 'measure_profile', lambda *a, **k: profile)
  assert calibration.cached_profile(module, target, drafter, tokens, **shapes) == profile
  assert adaptive.CostProfile.load(files[0]) == profile
  monkeypatch.setattr(calibration, 'measure_profile', real_measure)
  got = decoding.speculative_decode(module, target, drafter, tokens, gamma='auto', max_gamma=3,
                                    max_decode_len=MAX_LEN, cost_profile=files[0])
  assert_same(decoding.autoregressive_decode(module, target, tokens, max_decode_len=MAX_LEN),
              got)
  # A profile measured for other shapes (batch 2, not 3) is refused by name.
  with pytest.raises(ValueError, match='other models or shapes'):
    decoding.speculative_decode(module, target, drafter, np.repeat(tokens[:1], 3, 0),
                                gamma='auto', max_gamma=3, max_decode_len=MAX_LEN,
                                cost_profile=profile)


def test_bad_auto_arguments_are_refused():
  module, target, drafts = models()
  drafter = drafters.ModelDrafter(module, drafts['perturbed'])
  tokens = random_inputs(1, 9, module.config.vocab_size, 0)
  call = lambda **k: decoding.speculative_decode(module, target, drafter, tokens,
                                                 max_decode_len=8, **k)
  with pytest.raises(ValueError, match="integer >= 1 or 'auto'"):
    call(gamma='automatic')
  with pytest.raises(ValueError, match='max_gamma'):
    call(gamma='auto', max_gamma=0, cost_profile=CHEAP)
  with pytest.raises(ValueError, match='covers γ ≤ 5 but max_gamma is 8'):
    call(gamma='auto', max_gamma=8, cost_profile=CHEAP)
  with pytest.raises(ValueError, match='under jit needs a cost_profile'):
    jax.jit(lambda t: call_traced(module, target, drafter, t))(tokens)


def call_traced(module, target, drafter, tokens):
  return decoding.speculative_decode(module, target, drafter, tokens, gamma='auto',
                                     max_decode_len=8).tokens



def test_a_policy_that_stays_at_plain_steps_is_the_autoregressive_loop():
  dear = adaptive.CostProfile((1.0, 3.0, 4.0, 5.0))
  assert adaptive.stays_plain(dear, 3, 8)
  assert not adaptive.stays_plain(dear, 3, 8, probe_every=4)
  assert not adaptive.stays_plain(CHEAP, 5, 8)
  expected, got = decode_both(4, 'perturbed', dear, max_gamma=3, probe_every=0)
  assert_same(expected, got)
  np.testing.assert_array_equal(np.asarray(got.gamma_iterations)[:, 0], expected.lengths)
  assert int(np.sum(got.draft_iterations)) == 0


def test_alpha_carried_to_the_next_request_keeps_a_poor_draft_off():
  """A first request learns that the draft disagrees; the next one starts (and stays) plain."""
  settings = dict(probe_every=0, memory=8.0)
  expected, first = decode_both(2, 'unrelated', SWITCHING, **settings)
  assert_same(expected, first)
  assert int(np.sum(first.draft_iterations)) >= 1  # the prior α = 0.5 speculated
  carried = adaptive.carry_alpha(first.beta_mean, first.beta_count, settings)
  assert carried['alpha_prior'] < 0.4 and adaptive.stays_plain(SWITCHING, 5, MAX_LEN, **carried)
  expected, second = decode_both(2, 'unrelated', SWITCHING, seed=1, **carried)
  assert_same(expected, second)
  assert int(np.sum(second.draft_iterations)) == 0


def test_alpha_carried_from_a_good_draft_speculates_at_once():
  settings = dict(probe_every=0, alpha_prior=0.1, prior_weight=2.0)
  _, first = decode_both(2, 'self', CHEAP, **settings)
  carried = adaptive.carry_alpha(first.beta_mean, first.beta_count, settings)
  assert carried['alpha_prior'] > 0.9
  expected, second = decode_both(2, 'self', SWITCHING, seed=1, **carried)
  assert_same(expected, second)
  counts = np.asarray(second.gamma_iterations)
  assert counts[:, 0].sum() == 0 and counts[:, 5].sum() >= 1, counts
