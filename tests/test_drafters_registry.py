"""The drafter registry: every kind builds from its spec, and fails clearly when it cannot."""

import json

import jax
import numpy as np
import pytest
import scipy.sparse
from conftest import init_params, random_inputs
from test_speculative_greedy import MAX_LEN, assert_same
from test_speculative_greedy import models as greedy_models

from specdec_t5x import checkpoints, decoding, drafters, network
from specdec_t5x.drafters import lookahead, ngram, registry


def save_counts(path, vocab_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  unigram = rng.integers(0, 50, vocab_size)
  bigram = scipy.sparse.random(vocab_size, vocab_size, density=0.1, random_state=seed,
                               data_rvs=lambda n: rng.integers(1, 9, n)).tocsr().astype(np.int64)
  counts = ngram.NgramCounts(vocab_size=vocab_size, unigram=unigram, bigram=bigram,
                             num_sequences=10)
  return str(ngram.save_counts(path, counts)), counts


def save_lookahead(path, num_lookahead: int, params=None):
  module, target, _ = greedy_models()
  params = target if params is None else params
  return str(lookahead.save_lookahead(path, lookahead.init_lookahead(target, num_lookahead),
                                      module.config, lookahead.params_fingerprint(params)))


def build(spec, **kwargs):
  module, target, _ = greedy_models()
  return registry.build_drafter(spec, module, target, **kwargs)


def tiny_factory(spec, target_module, target_params, load_model):
  """A builder named by kind 'factory': the target drafting for itself (α = 1)."""
  del load_model
  config = network.config_from_preset('test_tiny', **spec.options.get('overrides', {}))
  return drafters.ModelDrafter(network.Transformer(config), target_params)


# ------------------------------------------------------------------------------
# Every kind builds.
# ------------------------------------------------------------------------------


def test_model_kind_from_a_checkpoint(tmp_path):
  module, target, drafts = greedy_models()
  path = str(checkpoints.save_t5x_checkpoint(drafts['perturbed'], tmp_path / 'draft', 3))
  drafter = build(drafters.DrafterSpec('model', path=path, config=module.config))
  assert isinstance(drafter, drafters.ModelDrafter)
  assert drafter.module.config == module.config
  for got, want in zip(jax.tree.leaves(drafter.params), jax.tree.leaves(drafts['perturbed']),
                       strict=True):
    np.testing.assert_array_equal(got, want)
  # Without a config: the train_config.json training writes into the model directory.
  fields = {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in network.PRESETS['test_tiny'].items()}
  (tmp_path / 'draft' / 'train_config.json').write_text(json.dumps({'model': fields}))
  assert build(drafters.DrafterSpec('model', path=path)).module.config == module.config


def test_model_kind_through_a_given_loader():
  module, _, drafts = greedy_models()
  calls = []

  def load_model(path, config):
    calls.append((path, config))
    return module, drafts['self']

  spec = drafters.DrafterSpec('model', path='anywhere', config=module.config)
  drafter = build(spec, load_model=load_model)
  assert calls == [('anywhere', module.config)] and drafter.params is drafts['self']
  with pytest.raises(ValueError, match='needs path'):
    build(drafters.DrafterSpec('model'), load_model=load_model)


def test_model_kind_stores_its_logits_layer_in_the_given_dtype():
  module, _, drafts = greedy_models()
  load_model = lambda path, config: (module, drafts['perturbed'])
  spec = lambda **options: drafters.DrafterSpec('model', path='anywhere', config=module.config,
                                                options=options)
  drafter = build(spec(logits_dtype='bfloat16'), load_model=load_model)
  kernels = {path: leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(
      drafter.params)}
  low = [jax.tree_util.keystr(path) for path, dtype in kernels.items() if dtype != np.float32]
  assert low == ["['decoder']['logits_dense']['kernel']"]
  assert drafts['perturbed']['decoder']['logits_dense']['kernel'].dtype == np.float32
  # int8: each input row of the kernel scaled into [-127, 127], its scale moved into the
  # norm before it, so the layer's logits are nearly the float32 ones.
  int8 = build(spec(logits_dtype='int8'), load_model=load_model).params
  kernel = int8['decoder']['logits_dense']['kernel']
  assert kernel.dtype == np.int8 and int(np.max(np.abs(kernel), axis=1).min()) == 127
  float32 = drafts['perturbed']['decoder']
  np.testing.assert_allclose(
      np.asarray(kernel, np.float32) * int8['decoder']['decoder_norm']['scale'][:, None],
      np.asarray(float32['logits_dense']['kernel']) * float32['decoder_norm']['scale'][:, None],
      atol=float(np.abs(float32['logits_dense']['kernel']).max()) / 127)
  with pytest.raises(ValueError, match='logits_dtype must be one of'):
    build(spec(logits_dtype='float16'), load_model=load_model)
  with pytest.raises(ValueError, match=r"unknown options \['smoothing'\]"):
    build(spec(smoothing=1.0), load_model=load_model)


@pytest.mark.parametrize('kind,cls', [('unigram', ngram.UnigramDrafter),
                                      ('bigram', ngram.BigramDrafter)])
def test_ngram_kinds(tmp_path, kind, cls):
  path, counts = save_counts(tmp_path / 'counts.npz', vocab_size=64)
  drafter = build(drafters.DrafterSpec(kind, path=path, options={'smoothing': 0.5}))
  assert type(drafter) is cls and drafter.vocab_size == 64
  expected = cls.from_counts(counts, 0.5)
  for got, want in zip(jax.tree.leaves(drafter), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(got, want)
  default = build(drafters.DrafterSpec(kind, path=path))
  expected = cls.from_counts(counts, ngram.DEFAULT_SMOOTHING)
  for got, want in zip(jax.tree.leaves(default), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(got, want)


def test_pass_kind_is_truncated_to_gamma_and_decodes_exactly(tmp_path):
  module, target, _ = greedy_models()
  path = save_lookahead(tmp_path / 'pass_lookahead_L4.npz', 4)
  spec = drafters.DrafterSpec('pass', path=path)
  assert build(spec).num_extra_positions == 4
  drafter = build(spec, gamma=2)
  assert isinstance(drafter, lookahead.PassDrafter) and drafter.num_extra_positions == 2
  assert build(drafters.DrafterSpec('pass', path=path, options={'num_lookahead': 3})
               ).num_extra_positions == 3
  tokens = random_inputs(4, 9, 64, seed=1)
  assert_same(decoding.autoregressive_decode(module, target, tokens, max_decode_len=MAX_LEN),
              decoding.speculative_decode(module, target, drafter, tokens, gamma=2,
                                          max_decode_len=MAX_LEN))


def test_factory_kind_imports_its_builder():
  module, target, _ = greedy_models()
  spec = drafters.DrafterSpec('factory', options={'factory': 'test_drafters_registry:tiny_factory'})
  drafter = build(spec)
  assert isinstance(drafter, drafters.ModelDrafter) and drafter.params is target


# ------------------------------------------------------------------------------
# Clear errors.
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('kind,how', [('unigram', 'scripts/build_ngram_drafters.py'),
                                      ('bigram', 'scripts/build_ngram_drafters.py'),
                                      ('pass', 'scripts/train_pass.py'),
                                      ('model', 'train it first')])
def test_missing_files_are_unavailable_and_say_how_to_make_them(tmp_path, kind, how):
  missing = str(tmp_path / 'not_made_yet')
  with pytest.raises(drafters.DraftUnavailable, match='not_made_yet') as error:
    build(drafters.DrafterSpec(kind, path=missing))
  assert how in str(error.value)


def test_a_draft_for_another_vocabulary_is_refused(tmp_path):
  path, _ = save_counts(tmp_path / 'counts.npz', vocab_size=300)
  with pytest.raises(ValueError, match='another vocabulary'):
    build(drafters.DrafterSpec('bigram', path=path))
  spec = drafters.DrafterSpec('factory', options={
      'factory': 'test_drafters_registry:tiny_factory', 'overrides': {'vocab_size': 300}})
  with pytest.raises(ValueError, match='vocabulary mismatch'):
    build(spec)
  # Padding to the same multiple of 128 is the same vocabulary.
  spec = drafters.DrafterSpec('factory', options={
      'factory': 'test_drafters_registry:tiny_factory', 'overrides': {'vocab_size': 100}})
  assert build(spec).vocab_size == 100


def test_a_lookahead_file_for_other_weights_is_refused_when_they_are_known(tmp_path):
  module, target, _ = greedy_models()
  path = save_lookahead(tmp_path / 'other.npz', 2, params=init_params(module.config, seed=9))
  with pytest.raises(ValueError, match='other target weights'):
    build(drafters.DrafterSpec('pass', path=path))
  # T5X knows the target's weights only later: shapes are still checked.
  unchecked = registry.build_drafter(drafters.DrafterSpec('pass', path=path), module, None)
  assert unchecked.num_extra_positions == 2
  with pytest.raises(ValueError, match='num_lookahead=3.*holds 2'):
    registry.build_drafter(drafters.DrafterSpec('pass', path=path, options={'num_lookahead': 3}),
                           module, None)


def test_factory_errors():
  with pytest.raises(ValueError, match='package.module:function'):
    build(drafters.DrafterSpec('factory', options={'factory': 'no_colon_here'}))
  with pytest.raises(ValueError, match='package.module:function'):
    build(drafters.DrafterSpec('factory'))
  with pytest.raises(drafters.DraftUnavailable, match='no_such_module.*cannot be imported'):
    build(drafters.DrafterSpec('factory', options={'factory': 'no_such_module:builder'}))
  with pytest.raises(drafters.DraftUnavailable, match='cannot be imported'):
    build(drafters.DrafterSpec('factory',
                               options={'factory': 'test_drafters_registry:no_such_builder'}))


def test_unknown_kind_names_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown drafter kind 'telepathy'.*'bigram'.*'pass'"):
    build(drafters.DrafterSpec('telepathy'))
  assert set(drafters.BUILDERS) == {'model', 'unigram', 'bigram', 'pass', 'factory'}


# ------------------------------------------------------------------------------
# for_gamma.
# ------------------------------------------------------------------------------


def test_for_gamma_truncates_lookahead_drafters_only():
  module, target, drafts = greedy_models()
  model_drafter = drafters.ModelDrafter(module, drafts['perturbed'])
  assert drafters.for_gamma(model_drafter, 7) is model_drafter
  pass_drafter = lookahead.PassDrafter.create(module, lookahead.init_lookahead(target, 4))
  assert drafters.for_gamma(pass_drafter, 4) is pass_drafter
  shorter = drafters.for_gamma(pass_drafter, 3)
  np.testing.assert_array_equal(shorter.lookahead, pass_drafter.lookahead[:3])
  with pytest.raises(drafters.DraftUnavailable, match='4 look-ahead positions, fewer than γ=5'):
    drafters.for_gamma(pass_drafter, 5)
