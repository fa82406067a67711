"""T5X integration: our network inside T5X, `SpeculativeEncoderDecoderModel`, gin files, t5x.infer.

These tests need t5x (installed from GitHub, docs/t5x.md) and skip without it,
except the one that checks `specdec_t5x.t5x_model` imports without t5x. Run:

  /path/to/venv-with-t5x/bin/python -m pytest -m t5x tests/test_t5x_integration.py

The 4-device mesh test and the `python -m t5x.infer` runs start subprocesses
(XLA_FLAGS must be set before JAX starts; t5x.infer is a program).
"""

import functools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb
from flax import traverse_util

from specdec_t5x import adaptive, checkpoints, drafters, network, t5x_drafting, t5x_model
from specdec_t5x.drafters import lookahead, ngram

try:
  import seqio
  from t5x import adafactor, models
  from t5x import checkpoints as t5x_checkpoints
  from t5x import partitioning as t5x_partitioning
  from t5x import train_state as t5x_train_state
  from t5x.examples.t5 import network as t5x_network
except ImportError as err:
  T5X_MISSING = f'{err}'
else:
  T5X_MISSING = None

requires_t5x = pytest.mark.skipif(
    T5X_MISSING is not None,
    reason=f't5x is not importable ({T5X_MISSING}); install it from GitHub next to specdec_t5x '
           '(docs/t5x.md) to run the T5X integration tests')
pytestmark = pytest.mark.t5x

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = network.PRESETS['test_tiny']  # vocab 64, 2 heads, 2+2 layers: splits over 2 devices
EOS_ID = 1


def _subprocess_env(**extra: str) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', **extra)
  env['PYTHONPATH'] = os.pathsep.join(
      [str(REPO), str(REPO / 'tests')] + [p for p in [env.get('PYTHONPATH')] if p])
  return env


def _run(args: list[str], *, cwd: pathlib.Path = REPO, timeout: int = 600,
         **env: str) -> subprocess.CompletedProcess:
  result = subprocess.run(args, cwd=cwd, env=_subprocess_env(**env), capture_output=True,
                          text=True, timeout=timeout)
  if result.returncode != 0:
    raise AssertionError(f'{" ".join(args[:4])} ... failed ({result.returncode}):\n'
                         f'{result.stderr[-6000:]}')
  return result


# ------------------------------------------------------------------------------
# Tiny models in T5X.
# ------------------------------------------------------------------------------


def t5x_base_model(config: dict, decode_fn=None, vocab_size: int | None = None,
                   eos_id: int | None = EOS_ID):
  """T5X's EncoderDecoderModel around T5X's own example network."""
  vocab = seqio.PassThroughVocabulary(size=vocab_size or config['vocab_size'], eos_id=eos_id)
  module = t5x_network.Transformer(t5x_network.T5Config(**config))
  return models.EncoderDecoderModel(
      module=module, input_vocabulary=vocab, output_vocabulary=vocab,
      optimizer_def=adafactor.Adafactor(),
      decode_fn=decode_fn or t5x_model.t5x_sampling_decode_fn(temperature=0.0))


def initial_variables(model, batch: int = 4, enc_len: int = 10, dec_len: int = 16):
  shapes = {'encoder_input_tokens': (batch, enc_len), 'decoder_input_tokens': (batch, dec_len)}
  types = {name: jnp.int32 for name in shapes}
  return model.get_initial_variables(jax.random.PRNGKey(0), shapes, types)


def sharp_params(variables):
  """Initial parameters scaled up, so greedy outputs vary instead of repeating one token."""
  return jax.tree.map(lambda x: 3.0 * x, variables['params'])


def encoder_batch(batch: int, enc_len: int = 10, dec_len: int = 16, vocab: int = 64,
                  seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab, (batch, enc_len)).astype(np.int32)
  for row in range(1, batch, 2):  # ragged padding on every other row
    tokens[row, rng.integers(1, enc_len):] = 0
  return {'encoder_input_tokens': tokens,
          'decoder_input_tokens': np.zeros((batch, dec_len), np.int32)}


@pytest.fixture(scope='module')
def tiny_t5x():
  """(T5X base model, target params, a draft of the target with small noise)."""
  base = t5x_base_model(TINY)
  params = sharp_params(initial_variables(base))
  draft = drafters.ModelDrafter(module=network.Transformer(network.T5Config(**TINY)),
                                params=jax.device_get(perturb(params, 0.05, seed=1)))
  return base, params, draft


# ------------------------------------------------------------------------------
# 0. specdec_t5x.network is a drop-in for T5X's example network.
# ------------------------------------------------------------------------------


def _flat(tree):
  return traverse_util.flatten_dict(dict(tree))


T5_1_0_TINY = dict(TINY, mlp_activations=('relu',), logits_via_embedding=True)


@requires_t5x
@pytest.mark.parametrize('config', [TINY, T5_1_0_TINY], ids=['t5_1_1', 't5_1_0'])
def test_network_has_t5x_parameter_tree_and_logical_axes(config):
  ours = models.EncoderDecoderModel(
      module=network.Transformer(network.T5Config(**config)), input_vocabulary=None,
      output_vocabulary=None, optimizer_def=None)
  theirs = t5x_base_model(config)
  ours_vars, theirs_vars = initial_variables(ours), initial_variables(theirs)
  assert sorted(ours_vars) == sorted(theirs_vars) == ['params', 'params_axes']
  ours_params, theirs_params = _flat(ours_vars['params']), _flat(theirs_vars['params'])
  assert ours_params.keys() == theirs_params.keys()
  for name, leaf in theirs_params.items():
    np.testing.assert_array_equal(ours_params[name], leaf, err_msg=str(name))  # same init too
  ours_axes = {k: v.names for k, v in _flat(ours_vars['params_axes']).items()}
  theirs_axes = {k: v.names for k, v in _flat(theirs_vars['params_axes']).items()}
  assert ours_axes == theirs_axes


@requires_t5x
@pytest.mark.parametrize('config', [TINY, T5_1_0_TINY], ids=['t5_1_1', 't5_1_0'])
def test_network_decodes_like_t5x_network_with_t5x_decoders(config):
  """T5X's temperature_sample (greedy and sampled) and beam_search, same params, same outputs."""
  theirs = t5x_base_model(config)
  ours = t5x_base_model(config)
  ours.module = network.Transformer(network.T5Config(**config))
  params = sharp_params(initial_variables(theirs))
  batch = encoder_batch(4)
  for decode_fn, kwargs in [
      (t5x_model.t5x_sampling_decode_fn(0.0), {}),
      (t5x_model.t5x_sampling_decode_fn(1.0), dict(num_decodes=3, return_all_decodes=True)),
      (t5x_model._BEAM_SEARCH, dict(num_decodes=3))]:
    theirs._decode_fn = ours._decode_fn = decode_fn
    outputs = [jax.jit(functools.partial(model.predict_batch_with_aux, **kwargs))(
        params, batch, jax.random.PRNGKey(3)) for model in (theirs, ours)]
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_allclose(outputs[0][1]['scores'], outputs[1][1]['scores'], atol=1e-4)
  teacher_forced = dict(batch, decoder_input_tokens=batch['encoder_input_tokens'][:, :8],
                        decoder_target_tokens=batch['encoder_input_tokens'][:, 1:9] + 1)
  np.testing.assert_array_equal(ours._compute_logits(params, teacher_forced),
                                theirs._compute_logits(params, teacher_forced))


# ------------------------------------------------------------------------------
# 1. SpeculativeEncoderDecoderModel.
# ------------------------------------------------------------------------------


def test_module_imports_without_t5x():
  """Everything but the T5X classes works without t5x; using them says how to install it."""
  program = textwrap.dedent('''
      import sys
      sys.modules['t5x'] = None  # makes `import t5x` fail like a missing install
      from specdec_t5x import t5x_drafting, t5x_model
      assert t5x_drafting.t5_config_from('test_tiny').vocab_size == 64
      assert t5x_drafting.ngram_drafter('/counts.npz').kind == 'bigram'
      for make in (lambda: t5x_model.SpeculativeEncoderDecoderModel(None, None, None, None),
                   lambda: t5x_model.speculative_model(None)):
        try:
          make()
        except ImportError as err:
          assert 'install it from GitHub' in str(err), err
        else:
          raise AssertionError('no ImportError without t5x')
      print('ok')
  ''')
  assert _run([sys.executable, '-c', program]).stdout.strip().endswith('ok')


@requires_t5x
@pytest.mark.parametrize('gamma', [1, 7])
def test_speculative_greedy_equals_t5x_greedy(tiny_t5x, gamma):
  base, params, draft = tiny_t5x
  spec = t5x_model.speculative_model(base, drafter=draft, gamma=gamma)
  assert spec.speculation_enabled and isinstance(spec.module, network.Transformer)
  assert isinstance(base.module, t5x_network.Transformer)  # the wrapped model is untouched
  batch = encoder_batch(6, seed=gamma)
  expected, expected_aux = jax.jit(base.predict_batch_with_aux)(params, batch)
  tokens, aux = jax.jit(spec.predict_batch_with_aux)(params, batch)
  np.testing.assert_array_equal(tokens, expected)
  np.testing.assert_array_equal(aux['scores'], expected_aux['scores'])  # 0 when greedy
  lengths = np.asarray(aux['decode_lengths'])
  has_eos = (np.asarray(tokens) == EOS_ID).any(axis=1)
  np.testing.assert_array_equal(lengths[has_eos], np.argmax(np.asarray(tokens) == EOS_ID,
                                                            axis=1)[has_eos] + 1)
  np.testing.assert_array_equal(lengths[~has_eos], 16)
  iterations = np.asarray(aux['speculative_iterations'])
  accepted = np.asarray(aux['speculative_accepted'])
  # Each iteration emits its accepted draft tokens plus one target token, except
  # that the last one may be cut at max_decode_len right after accepted drafts.
  assert set((iterations + accepted - lengths).tolist()) <= {0, 1}
  assert np.all((aux['speculative_beta_mean'] >= 0) & (aux['speculative_beta_mean'] <= 1))
  assert accepted.sum() > 0  # a close draft is accepted at least sometimes


@requires_t5x
def test_auto_gamma_greedy_equals_t5x_greedy(tiny_t5x, tmp_path):
  """GAMMA='auto' with a COST_PROFILE file: T5X's greedy output, γ switching on the way."""
  base, params, draft = tiny_t5x
  profile = tmp_path / 'profile.json'
  adaptive.CostProfile((1.0, 1.2, 1.3, 1.4), key='measured elsewhere').save(profile)
  spec = t5x_model.speculative_model(base, drafter=draft, gamma='auto', max_gamma=3,
                                     cost_profile=str(profile))
  batch = encoder_batch(6, seed=3)
  expected, _ = jax.jit(base.predict_batch_with_aux)(params, batch)
  tokens, aux = jax.jit(spec.predict_batch_with_aux)(params, batch)
  np.testing.assert_array_equal(tokens, expected)
  assert np.asarray(aux['speculative_accepted']).sum() > 0
  with pytest.raises(ValueError, match='needs cost_profile'):
    t5x_model.speculative_model(base, drafter=draft, gamma='auto')


@requires_t5x
def test_speculation_off_is_the_parent(tiny_t5x):
  base, params, draft = tiny_t5x
  batch = encoder_batch(4)
  expected = jax.jit(base.predict_batch_with_aux)(params, batch)
  for off in (t5x_model.speculative_model(base, drafter=draft, gamma=0),
              t5x_model.speculative_model(base, gamma=4)):
    assert not off.speculation_enabled and off.module is base.module
    tokens, aux = jax.jit(off.predict_batch_with_aux)(params, batch)
    np.testing.assert_array_equal(tokens, expected[0])
    assert sorted(aux) == ['scores']


@requires_t5x
def test_constructor_configures_the_same_model(tiny_t5x):
  base, params, draft = tiny_t5x
  direct = t5x_model.SpeculativeEncoderDecoderModel(
      module=base.module, input_vocabulary=base.input_vocabulary,
      output_vocabulary=base.output_vocabulary, optimizer_def=None, drafter=draft, gamma=3)
  batch = encoder_batch(4)
  np.testing.assert_array_equal(jax.jit(direct.predict_batch)(params, batch),
                                jax.jit(base.predict_batch)(params, batch))


@requires_t5x
def test_sampled_scores_are_t5x_sequence_log_probs(tiny_t5x):
  """At temperature 1 without top-k/p, aux scores are T5X's score_batch of the outputs."""
  base, params, draft = tiny_t5x
  spec = t5x_model.speculative_model(base, drafter=draft, gamma=3, temperature=1.0)
  batch = encoder_batch(4)
  tokens, aux = jax.jit(functools.partial(spec.predict_batch_with_aux, num_decodes=2,
                                          return_all_decodes=True))(
      params, batch, jax.random.PRNGKey(7))
  assert tokens.shape == (4, 2, 16) and aux['scores'].shape == (4, 2)
  assert np.all(np.diff(np.asarray(aux['scores']), axis=1) >= 0)  # sorted, best last
  flat_tokens = np.asarray(tokens).reshape(8, 16)
  emitted = np.arange(16)[None, :] < np.asarray(aux['decode_lengths']).reshape(8)[:, None]
  # T5X's own network, teacher-forced on the outputs. Its full pass masks target 0
  # as padding, and a model may emit id 0 itself: the mask comes from the lengths.
  logits = base._compute_logits(params, {
      'encoder_input_tokens': np.repeat(batch['encoder_input_tokens'], 2, axis=0),
      'decoder_input_tokens': np.pad(flat_tokens[:, :-1], ((0, 0), (1, 0))),
      'decoder_target_tokens': emitted.astype(np.int32)})
  log_probs = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), flat_tokens[..., None],
                                 axis=-1)[..., 0]
  expected = np.where(emitted, log_probs, 0.0).sum(axis=1)
  np.testing.assert_allclose(np.asarray(aux['scores']).reshape(8), expected, rtol=1e-4,
                             atol=1e-3)


@requires_t5x
def test_sampling_settings_are_applied(tiny_t5x):
  """Top-k 1 or a tiny top-p at temperature 1 must give the greedy output; plain sampling not."""
  base, params, draft = tiny_t5x
  batch = encoder_batch(6)
  greedy = np.asarray(jax.jit(base.predict_batch)(params, batch))

  def sample(**settings):
    spec = t5x_model.speculative_model(base, drafter=draft, gamma=3, **settings)
    tokens, aux = jax.jit(spec.predict_batch_with_aux)(params, batch, jax.random.PRNGKey(1))
    assert np.all(np.isfinite(aux['scores'])) and np.all(np.asarray(aux['scores']) <= 1e-6)
    return np.asarray(tokens)

  np.testing.assert_array_equal(sample(temperature=1.0, top_k=1), greedy)
  np.testing.assert_array_equal(sample(temperature=1.0, top_p=1e-6), greedy)
  sampled = sample(temperature=1.0)
  assert not np.array_equal(sampled, greedy)
  np.testing.assert_array_equal(sample(temperature=1.0), sampled)  # same key, same sample


def target_counts(base, params, path):
  """A counts file of the target's own greedy outputs, so the bigram draft is often right."""
  from test_drafters_ngram import counts_of

  predict = jax.jit(base.predict_batch)
  outputs = np.concatenate([np.asarray(predict(params, encoder_batch(16, seed=s)))
                            for s in (1, 2)])
  return str(ngram.save_counts(path, counts_of(outputs, TINY['vocab_size'], eos_id=EOS_ID)))


@requires_t5x
def test_cheap_drafters_through_the_model(tiny_t5x, tmp_path):
  """n-gram drafts (Table 3) from a counts file, as gin/drafts/*gram.gin load them."""
  base, params, _ = tiny_t5x
  batch = encoder_batch(6)
  greedy = np.asarray(jax.jit(base.predict_batch)(params, batch))
  counts_path = target_counts(base, params, tmp_path / 'counts.npz')
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  for order in (1, 2):
    spec = t5x_model.speculative_model(
        base, drafter=t5x_drafting.ngram_drafter(counts_path, order=order), gamma=3)
    drafter = spec.drafter
    assert isinstance(drafter, (ngram.UnigramDrafter, ngram.BigramDrafter)[order - 1])
    # Their tables stay float32 when the target is held in bfloat16.
    assert all(leaf.dtype == drafter_leaf.dtype for leaf, drafter_leaf in zip(
        jax.tree.leaves(spec._drafter_for_step(bf16)), jax.tree.leaves(drafter), strict=True))
    tokens, aux = jax.jit(spec.predict_batch_with_aux)(params, batch)
    np.testing.assert_array_equal(tokens, greedy)
    if order == 2:
      assert np.asarray(aux['speculative_accepted']).sum() > 0
  smoothed = t5x_model.speculative_model(
      base, drafter=t5x_drafting.ngram_drafter(counts_path, smoothing=0.5), gamma=3)
  assert float(smoothed.drafter.smoothing) == 0.5
  with pytest.raises(ValueError, match=r'no n-gram counts at .*missing\.npz.*build_ngram'):
    t5x_model.speculative_model(
        base, drafter=t5x_drafting.ngram_drafter(str(tmp_path / 'missing.npz')), gamma=3)
  with pytest.raises(ValueError, match='order must be 1'):
    t5x_drafting.ngram_drafter(counts_path, order=3)


@requires_t5x
def test_pass_drafter_through_the_model(tiny_t5x, tmp_path):
  """PaSS look-ahead embeddings, as gin/drafts/pass.gin loads them: only the first γ ride along."""
  base, params, _ = tiny_t5x
  module = network.Transformer(network.T5Config(**TINY))
  path = str(lookahead.save_lookahead(
      tmp_path / 'pass_lookahead_L4.npz', 3.0 * lookahead.init_lookahead(params, 4),
      module.config, lookahead.params_fingerprint(params)))
  batch = encoder_batch(6)
  greedy = np.asarray(jax.jit(base.predict_batch)(params, batch))
  spec = t5x_model.speculative_model(base, drafter=t5x_drafting.pass_drafter(path), gamma=3)
  assert isinstance(spec.drafter, lookahead.PassDrafter)
  assert spec.drafter.num_extra_positions == 3
  tokens, aux = jax.jit(spec.predict_batch_with_aux)(params, batch)
  np.testing.assert_array_equal(tokens, greedy)
  # The first call drafts nothing: one more target call than draft-and-verify iterations need.
  assert np.all(np.asarray(aux['speculative_iterations']) >= 1)
  with pytest.raises(ValueError, match='4 look-ahead positions, fewer than γ=5'):
    t5x_model.speculative_model(base, drafter=t5x_drafting.pass_drafter(path), gamma=5)
  with pytest.raises(ValueError, match=r'no PaSS look-ahead embeddings at .*train_pass\.py'):
    t5x_model.speculative_model(
        base, drafter=t5x_drafting.pass_drafter(str(tmp_path / 'none.npz')), gamma=3)


# Sizes at which bfloat16 greedy decoding meets near-ties (tests/test_speculative_bfloat16.py).
BF16_TARGET = dict(TINY, vocab_size=512, emb_dim=64, head_dim=32, mlp_dim=128, dtype='bfloat16')


def _bfloat16_greedy_outputs(decode_kernels: str, batches: int = 8) -> dict[str, np.ndarray]:
  """Greedy outputs `[requests, 16]` of a bfloat16 target in T5X, three ways.

  'ours': T5X's own greedy decoding with our network; 'speculative': our
  speculative model around it (γ = 3, a perturbed draft); 't5x': T5X's own
  decoding and network. Parameters are cast to bfloat16 as infer.gin restores them.
  """
  ours = t5x_base_model(BF16_TARGET)
  ours.module = network.Transformer(network.T5Config(**BF16_TARGET, decode_kernels=decode_kernels))
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), initial_variables(ours)['params'])
  draft = drafters.ModelDrafter(ours.module, perturb(params, 0.1, seed=1))
  models = {'ours': ours, 't5x': t5x_base_model(BF16_TARGET),
            'speculative': t5x_model.speculative_model(ours, drafter=draft, gamma=3)}
  outputs = {}
  for name, model in models.items():
    predict = jax.jit(model.predict_batch)
    outputs[name] = np.concatenate([np.asarray(predict(params, encoder_batch(8, vocab=512,
                                                                             seed=seed)))
                                    for seed in range(batches)])
  return outputs


@requires_t5x
def test_bfloat16_speculative_equals_greedy_with_our_network():
  """bfloat16 in T5X: the speculative model gives what T5X's greedy decoding of our network gives.

  T5X's own network rounds otherwise (a one-hot matmul embedding, T5X's
  attention): its outputs may differ at near-ties, and are only reported here.
  """
  outputs = _bfloat16_greedy_outputs('auto')
  np.testing.assert_array_equal(outputs['speculative'], outputs['ours'])
  differ = np.any(outputs['t5x'] != outputs['ours'], axis=1)
  print(f'bfloat16: T5X\'s own network differs from ours in {differ.sum()} of {len(differ)} '
        'greedy outputs')
  # The control: with the float32-tuned kernels the speculative outputs diverge somewhere.
  control = _bfloat16_greedy_outputs('cpu')
  assert np.any(control['speculative'] != control['ours'])


@requires_t5x
@pytest.mark.parametrize('eos_id', [0, None])
def test_eos_as_t5x_reads_it_from_the_vocabulary(tiny_t5x, eos_id):
  """T5X stops at `vocabulary.eos_id or 1`; so does the speculative model, token for token."""
  _, params, draft = tiny_t5x
  base = t5x_base_model(TINY, eos_id=eos_id)
  spec = t5x_model.speculative_model(base, drafter=draft, gamma=3)
  assert spec._decode_rng_and_eos(None, None)[1] == 1
  batch = encoder_batch(8, seed=4)
  greedy = np.asarray(jax.jit(base.predict_batch)(params, batch))
  # Stopping at 1 is visible: some row ends early, its tail padded with 0.
  assert np.any(greedy[:, :-1] == 1)
  np.testing.assert_array_equal(jax.jit(spec.predict_batch)(params, batch), greedy)


# ------------------------------------------------------------------------------
# Drafts from checkpoints, and clear errors.
# ------------------------------------------------------------------------------


def save_legacy_t5x_checkpoint(params, model_dir: pathlib.Path, step: int = 0) -> pathlib.Path:
  """Writes `params` with T5X's own legacy `Checkpointer` (msgpack + TensorStore)."""
  config = network.T5Config(**TINY)
  tokens = jnp.ones((1, 4), jnp.int32)
  axes = network.Transformer(config).init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                          enable_dropout=False)['params_axes']
  state = t5x_train_state.InferenceState.create({'params': params, 'params_axes': axes})
  state = state.replace_step(jnp.asarray(step))
  partitioner = t5x_partitioning.PjitPartitioner(num_partitions=1)
  t5x_checkpoints.Checkpointer(state, partitioner, str(model_dir)).save(state)
  return model_dir / f'checkpoint_{step}'


@pytest.fixture(scope='module')
def draft_checkpoints(tiny_t5x, tmp_path_factory):
  """The tiny draft saved in both T5X formats: {'orbax': path, 'legacy': path}."""
  _, _, draft = tiny_t5x
  root = tmp_path_factory.mktemp('draft_checkpoints')
  return {'orbax': checkpoints.save_t5x_checkpoint(draft.params, root / 'orbax', 1),
          'legacy': save_legacy_t5x_checkpoint(draft.params, root / 'legacy', 1)}


@requires_t5x
@pytest.mark.parametrize('fmt', ['orbax', 'legacy'])
def test_draft_checkpoint_in_either_format(tiny_t5x, draft_checkpoints, fmt):
  base, params, draft = tiny_t5x
  spec = t5x_model.speculative_model(base, draft_checkpoint=str(draft_checkpoints[fmt]),
                                     draft_config='test_tiny', gamma=3)
  for name, leaf in _flat(draft.params).items():
    np.testing.assert_array_equal(_flat(spec.drafter.params)[name], leaf)
  batch = encoder_batch(4)
  np.testing.assert_array_equal(jax.jit(spec.predict_batch)(params, batch),
                                jax.jit(base.predict_batch)(params, batch))


@requires_t5x
def test_draft_params_follow_the_target_dtype(tiny_t5x):
  """None: the draft is held like T5X restored the target (bfloat16 with infer.gin)."""
  base, params, draft = tiny_t5x
  spec = t5x_model.speculative_model(base, drafter=draft, gamma=2)
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  assert jax.tree.leaves(spec._drafter_for_step(bf16))[0].dtype == jnp.bfloat16
  assert jax.tree.leaves(spec._drafter_for_step(params))[0].dtype == jnp.float32
  fixed = t5x_model.speculative_model(base, drafter=draft, gamma=2, draft_params_dtype='float32')
  assert jax.tree.leaves(fixed._drafter_for_step(bf16))[0].dtype == jnp.float32
  tokens = jax.jit(spec.predict_batch)(bf16, encoder_batch(2))
  assert tokens.shape == (2, 16)


@requires_t5x
def test_clear_errors_for_drafts_that_do_not_fit(tiny_t5x, draft_checkpoints, tmp_path):
  base, _, draft = tiny_t5x
  orbax = str(draft_checkpoints['orbax'])
  missing = str(tmp_path / 'no_such_checkpoint')
  with pytest.raises(ValueError, match=r'draft checkpoint .*no_such_checkpoint.* not found'):
    t5x_model.speculative_model(base, draft_checkpoint=missing, draft_config='test_tiny', gamma=3)
  with pytest.raises(ValueError, match=r'shape .* in the checkpoint'):
    t5x_model.speculative_model(base, draft_checkpoint=orbax, gamma=3,
                                draft_config=network.T5Config(**dict(TINY, emb_dim=48)))
  with pytest.raises(ValueError, match='vocabulary mismatch'):
    wide = network.T5Config(**dict(TINY, vocab_size=512))
    t5x_model.speculative_model(base, gamma=3, drafter=drafters.ModelDrafter(
        module=network.Transformer(wide), params=None))
  with pytest.raises(ValueError, match='needs draft_config'):
    t5x_model.speculative_model(base, draft_checkpoint=orbax, gamma=3)
  with pytest.raises(ValueError, match='not both'):
    t5x_model.speculative_model(base, draft_checkpoint=orbax, draft_config='test_tiny',
                                drafter=draft, gamma=3)
  with pytest.raises(ValueError, match='gamma must be'):
    t5x_model.speculative_model(base, drafter=draft, gamma=-1)
  with pytest.raises(ValueError, match='top_p'):
    t5x_model.speculative_model(base, drafter=draft, gamma=2, temperature=1.0, top_p=0.0)
  with pytest.raises(ValueError, match='unknown T5 preset'):
    t5x_model.speculative_model(base, draft_checkpoint=orbax, draft_config='t5_tiniest', gamma=2)
  spec = t5x_model.speculative_model(base, drafter=draft, gamma=2)
  with pytest.raises(ValueError, match='prompt_with_targets'):
    spec.predict_batch_with_aux(None, encoder_batch(1), prompt_with_targets=True)
  with pytest.raises(ValueError, match='an encoder-decoder model'):
    t5x_model.speculative_model(object(), drafter=draft, gamma=2)


def test_missing_remote_draft_hint_says_remote_paths_are_read(monkeypatch):
  """gs:// drafts are opened through etils.epath: the hint must not say otherwise."""
  def not_found(path, config, dtype):
    raise FileNotFoundError(f'T5X checkpoint path does not exist: {path}')

  monkeypatch.setattr(checkpoints, 'load_t5x_params', not_found)
  config = t5x_drafting.t5_config_from('test_tiny')
  with pytest.raises(ValueError, match=r'gs://bucket/draft.* not found.*opened through etils'):
    t5x_drafting.load_draft_checkpoint('gs://bucket/draft', config)
  with pytest.raises(ValueError, match=r'not found: T5X checkpoint path does not exist: /x$'):
    t5x_drafting.load_draft_checkpoint('/x', config)


# ------------------------------------------------------------------------------
# 2. Under T5X's PjitPartitioner on a 2 x 2 mesh.
# ------------------------------------------------------------------------------

MESH_PROGRAM = '''
import json, sys
import jax, jax.numpy as jnp, numpy as np
import tensorflow as tf
from t5x import partitioning, train_state as train_state_lib, utils
from specdec_t5x import t5x_model
import test_t5x_integration as tests

assert jax.device_count() == 4, jax.devices()
base = tests.t5x_base_model(tests.TINY)
variables = tests.initial_variables(base)
params = jax.device_get(tests.sharp_params(variables))  # host copies: T5X donates its state
draft = tests.drafters.ModelDrafter(module=tests.network.Transformer(
    tests.network.T5Config(**tests.TINY)), params=jax.device_get(tests.perturb(params, 0.05, 1)))
features = tests.encoder_batch(8)
features['decoder_target_tokens'] = features['decoder_input_tokens']


class TwoByTwoPartitioner(partitioning.PjitPartitioner):
  # T5X's CPU mesh is 1 x devices; a reversed 2 x 2 grid also checks device order.
  @property
  def mesh(self):
    return jax.sharding.Mesh(np.array(jax.devices()[::-1]).reshape(2, 2), ('data', 'model'))


report = {}
for draft_partitioning in ('replicated', 'logical'):
  model = t5x_model.speculative_model(base, drafter=draft, gamma=3,
                                      draft_partitioning=draft_partitioning)
  # One device: the model's step jitted outside any mesh.
  single = [jax.jit(model.predict_batch_with_aux)(
      params, {k: v[i:i + 4] for k, v in features.items()}) for i in (0, 4)]
  # Four devices: T5X's own partitioned inference step, as t5x.infer builds it.
  partitioner = TwoByTwoPartitioner(num_partitions=2)
  shapes = {k: (4,) + v.shape[1:] for k, v in features.items()}
  initializer = utils.TrainStateInitializer(
      optimizer_def=None, init_fn=model.get_initial_variables, input_shapes=shapes,
      input_types={k: jnp.int32 for k in shapes}, partitioner=partitioner)
  state = train_state_lib.InferenceState.create(
      {'params': params, 'params_axes': variables['params_axes']})
  state = partitioner.move_params_to_devices(state, initializer.train_state_axes)
  infer_fn = utils.get_infer_fn(infer_step=model.predict_batch_with_aux, batch_size=4,
                                train_state_axes=initializer.train_state_axes,
                                partitioner=partitioner)
  indexed, mesh_aux = infer_fn(tf.data.Dataset.from_tensor_slices(features).enumerate(),
                               train_state=state)
  placed = [d for d in model._placed_drafters.values()
            if isinstance(jax.tree.leaves(d)[0], jax.Array)]
  draft_kernel = placed[0].params['decoder']['logits_dense']['kernel']
  target_kernel = state.params['decoder']['logits_dense']['kernel']
  report[draft_partitioning] = {
      'single_tokens': np.concatenate([np.asarray(s[0]) for s in single]).tolist(),
      'mesh_tokens': [np.asarray(t).tolist() for _, t in sorted(indexed, key=lambda r: r[0])],
      'single_aux': {k: np.concatenate([np.asarray(s[1][k]) for s in single]).tolist()
                     for k in single[0][1]},
      'mesh_aux': {k: np.asarray(v).tolist() for k, v in mesh_aux.items()},
      'target_kernel_spec': str(target_kernel.sharding.spec),
      'draft_kernel_spec': str(draft_kernel.sharding.spec),
      'draft_devices': len(draft_kernel.sharding.device_set),
  }
report['hoisted'] = bool(jax.config.jax_use_simplified_jaxpr_constants)
print('REPORT', json.dumps(report))
'''


def _run_mesh_program(tmp_path, **env):
  script = tmp_path / 'mesh_program.py'
  script.write_text(MESH_PROGRAM)
  out = _run([sys.executable, str(script)], XLA_FLAGS='--xla_force_host_platform_device_count=4',
             **env).stdout
  return json.loads(out.split('REPORT', 1)[1])


def _check_mesh_report(report):
  for partitioning in ('replicated', 'logical'):
    run = report[partitioning]
    assert run['mesh_tokens'] == run['single_tokens'], partitioning
    assert run['mesh_aux'] == run['single_aux'], partitioning
    assert run['target_kernel_spec'] == "P(None, 'model')"  # the vocab axis over 'model'
    assert run['draft_devices'] == 4
  assert report['replicated']['draft_kernel_spec'] == 'P()'
  assert report['logical']['draft_kernel_spec'] == "P(None, 'model')"


@requires_t5x
def test_pjit_mesh_2x2_equals_one_device_with_draft_as_device_buffers(tmp_path):
  """Drafts passed to the step as sharded device buffers (JAX's hoisted constants)."""
  report = _run_mesh_program(tmp_path, JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS='true')
  assert report['hoisted']
  _check_mesh_report(report)


@requires_t5x
@pytest.mark.slow
def test_pjit_mesh_2x2_equals_one_device_with_embedded_draft(tmp_path):
  """JAX's default: closed-over draft arrays embedded in the compiled step."""
  report = _run_mesh_program(tmp_path, JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS='false')
  assert not report['hoisted']
  _check_mesh_report(report)


# ------------------------------------------------------------------------------
# 3. Gin files.
# ------------------------------------------------------------------------------

GIN_PARSE_PROGRAM = '''
import dataclasses, json, os, sys
import __main__
import gin
import t5x
from t5x import gin_utils
from t5x import infer as t5x_infer

# infer.gin configures `__main__.infer`, as when run as `python -m t5x.infer`.
__main__.infer = gin.configurable(t5x_infer.infer)
t5x_root = os.path.dirname(os.path.dirname(t5x.__file__))


def unset_required(obj, path, depth=0):
  # A `%gin.REQUIRED` macro reaches the object as gin's sentinel, without an error.
  if obj is gin.REQUIRED:
    return [path]
  if depth == 3 or not hasattr(obj, '__dict__') or isinstance(obj, type):
    return []
  return [p for name, value in vars(obj).items()
          for p in unset_required(value, f'{path}.{name}', depth + 1)]


results = []
for gin_files, bindings, queries, build in json.loads(sys.stdin.read()):
  gin.clear_config(clear_constants=True)
  gin_utils.parse_gin_flags([t5x_root], gin_files, bindings, finalize_config=False)
  results.append({q: repr(gin.query_parameter(q)) for q in queries})
  for selector in build:
    built = gin.query_parameter(selector).scoped_configurable_fn()
    results[-1][selector] = type(built).__name__
    if dataclasses.is_dataclass(built):
      results[-1][selector + ' fields'] = {f.name: repr(getattr(built, f.name))
                                           for f in dataclasses.fields(built)}
    results[-1]['unset_required'] = unset_required(built, selector)
print('REPORT', json.dumps(results))
'''
MODEL_FILES = ['t5_1_1_small', 't5_1_1_base', 't5_1_1_large', 't5_1_1_xxl', 'cpu_target',
               'cpu_large', 'cpu_base', 'cpu_small']
DRAFT_FILES = ['t5_1_1_small', 't5_1_1_base', 't5_1_1_large', 'cpu_small', 'cpu_base',
               'cpu_large']
CONFIG_FIELDS = [f for f in TINY if f != 'dtype']
# The drafts from files: gin/drafts/<name>.gin, its binding, the spec it must give.
FILE_DRAFTS = {
    'unigram': ("NGRAM_COUNTS='/c/counts.npz'", {'kind': "'unigram'", 'path': "'/c/counts.npz'"}),
    'bigram': ("NGRAM_COUNTS='/c/counts.npz'", {'kind': "'bigram'", 'path': "'/c/counts.npz'"}),
    'pass': ("PASS_LOOKAHEAD='/m/pass_lookahead_L6.npz'",
             {'kind': "'pass'", 'path': "'/m/pass_lookahead_L6.npz'"}),
}


def _doc_commands() -> list[str]:
  """The `python -m t5x.infer` command lines of docs/t5x.md (continuations joined)."""
  text = (REPO / 'docs' / 't5x.md').read_text()
  commands = []
  for block in re.findall(r'```sh\n(.*?)```', text, flags=re.S):
    joined = block.replace('\\\n', ' ')
    commands += [line.strip() for line in joined.splitlines()
                 if line.strip().startswith('python -m t5x.infer')]
  return commands


def _parse_request(command: str) -> tuple[list[str], list[str], list[str], list[str]]:
  args = shlex.split(command)
  gin_files = [a.split('=', 1)[1] for a in args if a.startswith('--gin_file=')]
  bindings = [a[len('--gin.'):] for a in args if a.startswith('--gin.')]
  return (gin_files, bindings, ['%MIXTURE_OR_TASK_NAME', '%GAMMA', '%TEMPERATURE'],
          ['t5x_model.speculative_model.model'])


@pytest.fixture(scope='module')
def parsed_gin():
  """Parses the model files and every documented command in one subprocess."""
  # T5X's example gin files name `network.T5Config` without dynamic registration,
  # which is ambiguous once one process has registered specdec_t5x's network too
  # (t5x.infer parses one command per process): parse those commands first.
  commands = sorted(_doc_commands(), key=lambda command: 't5x/examples/' not in command)
  requests = [_parse_request(command) for command in commands]
  requests += [([f'gin/models/{name}.gin'], [],
                [f'specdec_t5x.network.T5Config.{f}' for f in CONFIG_FIELDS], [])
               for name in MODEL_FILES]
  requests += [(['gin/models/cpu_target.gin', 't5x/configs/runs/infer.gin', 'gin/speculative.gin',
                 f'gin/drafts/{name}.gin'], [binding], ['%DRAFT_CHECKPOINT'],
                ['t5x_model.speculative_model.drafter'])
               for name, (binding, _) in FILE_DRAFTS.items()]
  result = subprocess.run([sys.executable, '-c', GIN_PARSE_PROGRAM], cwd=REPO,
                          env=_subprocess_env(), capture_output=True, text=True, timeout=600,
                          input=json.dumps(requests))
  assert result.returncode == 0, result.stderr[-6000:]
  parsed = json.loads(result.stdout.split('REPORT', 1)[1])
  models_end = len(commands) + len(MODEL_FILES)
  return {'commands': list(zip(commands, parsed[:len(commands)], strict=True)),
          'models': dict(zip(MODEL_FILES, parsed[len(commands):models_end], strict=True)),
          'drafts': dict(zip(FILE_DRAFTS, parsed[models_end:], strict=True))}


@requires_t5x
def test_model_gin_files_configure_the_presets(parsed_gin):
  for name in MODEL_FILES:
    got = parsed_gin['models'][name]
    assert got == {f'specdec_t5x.network.T5Config.{f}': repr(network.PRESETS[name][f])
                   for f in CONFIG_FIELDS}, name
  for name in DRAFT_FILES:
    assert f"DRAFT_CONFIG = '{name}'" in (REPO / 'gin' / 'drafts' / f'{name}.gin').read_text()


@requires_t5x
def test_draft_gin_files_give_registry_specs(parsed_gin):
  """gin/drafts/{unigram,bigram,pass}.gin set the model's drafter to a registry spec."""
  selector = 't5x_model.speculative_model.drafter'
  for name, (_, expected) in FILE_DRAFTS.items():
    got = parsed_gin['drafts'][name]
    assert got[selector] == 'DrafterSpec' and got['unset_required'] == [], name
    assert got['%DRAFT_CHECKPOINT'] == 'None', name
    assert {k: got[selector + ' fields'][k] for k in expected} == expected, name


TABLE_2 = [  # (task, draft, temperature, gamma) of the paper's Table 2
    ('wmt_t2t_ende_v003_specdec', 't5_1_1_small', 0.0, 7),
    ('wmt_t2t_ende_v003_specdec', 't5_1_1_base', 0.0, 7),
    ('wmt_t2t_ende_v003_specdec', 't5_1_1_large', 0.0, 7),
    ('wmt_t2t_ende_v003_specdec', 't5_1_1_small', 1.0, 7),
    ('wmt_t2t_ende_v003_specdec', 't5_1_1_base', 1.0, 5),
    ('wmt_t2t_ende_v003_specdec', 't5_1_1_large', 1.0, 3),
    ('cnn_dailymail_v002_specdec', 't5_1_1_small', 0.0, 5),
    ('cnn_dailymail_v002_specdec', 't5_1_1_base', 0.0, 5),
    ('cnn_dailymail_v002_specdec', 't5_1_1_large', 0.0, 3),
    ('cnn_dailymail_v002_specdec', 't5_1_1_small', 1.0, 5),
    ('cnn_dailymail_v002_specdec', 't5_1_1_base', 1.0, 3),
    ('cnn_dailymail_v002_specdec', 't5_1_1_large', 1.0, 3),
]


@requires_t5x
def test_documented_commands_cover_table_2(parsed_gin):
  """Each cell of Table 2 has a documented command line, and every command parses."""
  cells = set()
  assert len(parsed_gin['commands']) >= len(TABLE_2) + 3  # and a baseline, CPU examples
  for command, parsed in parsed_gin['commands']:
    assert parsed['t5x_model.speculative_model.model'] == 'EncoderDecoderModel', command
    assert parsed['unset_required'] == [], command
    draft = re.search(r'gin/drafts/(\w+)\.gin', command)
    cells.add((eval(parsed['%MIXTURE_OR_TASK_NAME']), draft and draft.group(1),
               eval(parsed['%TEMPERATURE']), eval(parsed['%GAMMA'])))
  for cell in TABLE_2:
    assert cell in cells, cell


# ------------------------------------------------------------------------------
# 4. python -m t5x.infer end to end.
# ------------------------------------------------------------------------------

TASK_MODULE = '''
"""A tiny seqio task for tests/test_t5x_integration.py (generated by the test)."""
import seqio
import tensorflow as tf

VOCABULARY = seqio.SentencePieceVocabulary({vocab_path!r}, extra_ids=0)
INPUTS = {inputs!r}
TARGETS = {targets!r}


def _dataset(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({{'inputs': INPUTS, 'targets': TARGETS}})


if {task_name!r} in seqio.TaskRegistry.names():
  seqio.TaskRegistry.remove({task_name!r})
seqio.TaskRegistry.add(
    {task_name!r},
    source=seqio.FunctionDataSource(_dataset, splits=['test']),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
    output_features={{
        'inputs': seqio.Feature(VOCABULARY, add_eos=True),
        'targets': seqio.Feature(VOCABULARY, add_eos=True)}})
'''

MODEL_GIN = '''
from __gin__ import dynamic_registration

import __main__ as infer_script
import seqio
from t5x import decoding
from t5x import models
from t5x.examples.t5 import network

# Token ids in the jsonl too (ids the tiny vocabulary lacks all decode to one string).
infer_script.infer.write_fn = @infer_script.write_inferences_to_file
infer_script.write_inferences_to_file.output_ids = True

VOCABULARY = @seqio.SentencePieceVocabulary()
seqio.SentencePieceVocabulary.sentencepiece_model_file = {vocab_path!r}

MODEL = @models.EncoderDecoderModel()
models.EncoderDecoderModel:
  module = @network.Transformer()
  input_vocabulary = %VOCABULARY
  output_vocabulary = %VOCABULARY
  optimizer_def = None
  decode_fn = @decoding.temperature_sample
decoding.temperature_sample.temperature = 0.0

network.Transformer.config = @network.T5Config()
network.T5Config:
{config_lines}
'''
WORDS = ('the a cat dog sat on mat red blue green house tree runs jumps over under big small '
         'bird fish river stone light dark window garden quickly slowly happy yellow').split()
TASK_NAME = 'specdec_t5x_integration_tiny'


@pytest.fixture(scope='module')
def infer_assets(tiny_t5x, draft_checkpoints, tmp_path_factory):
  """Vocabulary, task module, model gin and target checkpoints for t5x.infer runs."""
  from specdec_t5x.data import vocab as vocab_lib

  root = tmp_path_factory.mktemp('t5x_infer')
  rng = np.random.default_rng(0)
  sentence = lambda: ' '.join(rng.choice(WORDS, rng.integers(3, 9)))
  vocab_path = vocab_lib.train_sentencepiece([sentence() for _ in range(300)],
                                             root / 'tiny.model', vocab_size=48, num_threads=1)
  (root / 'task_module').mkdir()
  (root / 'task_module' / 'specdec_t5x_integration_task.py').write_text(TASK_MODULE.format(
      vocab_path=str(vocab_path), inputs=[sentence() for _ in range(6)],
      targets=[sentence() for _ in range(6)], task_name=TASK_NAME))
  config_lines = '\n'.join(f'  {k} = {v!r}' for k, v in TINY.items())
  (root / 'model.gin').write_text(MODEL_GIN.format(vocab_path=str(vocab_path),
                                                   config_lines=config_lines))
  base, params, _ = tiny_t5x
  targets = {'orbax': checkpoints.save_t5x_checkpoint(params, root / 'target_orbax', 1),
             'legacy': save_legacy_t5x_checkpoint(params, root / 'target_legacy', 1)}
  lookahead_path = lookahead.save_lookahead(
      root / 'pass_lookahead_L4.npz', 3.0 * lookahead.init_lookahead(params, 4),
      network.T5Config(**TINY), lookahead.params_fingerprint(params))
  file_drafts = {
      'bigram': ('gin/drafts/bigram.gin',
                 f'NGRAM_COUNTS="{target_counts(base, params, root / "counts.npz")}"'),
      'pass': ('gin/drafts/pass.gin', f'PASS_LOOKAHEAD="{lookahead_path}"')}
  return {'root': root, 'targets': targets, 'drafts': draft_checkpoints,
          'file_drafts': file_drafts}


def run_t5x_infer(assets, name: str, target: str, speculative_bindings: list[str] | None,
                  mode: str = 'predict', draft_gin: str | None = None,
                  model_gin: str = 'model.gin', params_dtype: str = 'float32') -> list[dict]:
  """Runs `python -m t5x.infer` on the tiny task; returns the jsonl rows."""
  output_dir = assets['root'] / name
  gin_files = [str(assets['root'] / model_gin), 't5x/configs/runs/infer.gin']
  if speculative_bindings is not None:
    gin_files.append('gin/speculative.gin')
  if draft_gin is not None:
    gin_files.append(draft_gin)
  args = [sys.executable, '-m', 't5x.infer'] + [f'--gin_file={f}' for f in gin_files] + [
      f'--gin.MIXTURE_OR_TASK_NAME="{TASK_NAME}"',
      '--gin.MIXTURE_OR_TASK_MODULE="specdec_t5x_integration_task"',
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 16}",
      f'--gin.CHECKPOINT_PATH="{assets["targets"][target]}"',
      f'--gin.INFER_OUTPUT_DIR="{output_dir}"',
      f'--gin.infer.mode="{mode}"',
      '--gin.utils.DatasetConfig.batch_size=4',
      f'--gin.utils.RestoreCheckpointConfig.dtype="{params_dtype}"',
  ] + [f'--gin.{b}' for b in speculative_bindings or []]
  _run(args, PYTHONPATH=str(assets['root'] / 'task_module'))
  jsonl = output_dir / f'{TASK_NAME}-{mode}.jsonl-00000-of-00001'
  assert (output_dir / 'config.gin').is_file()
  return [json.loads(line) for line in jsonl.read_text().splitlines()]


@pytest.fixture(scope='module')
def infer_baseline(infer_assets):
  """t5x.infer with T5X's own greedy decoding (the target restored from Orbax)."""
  rows = run_t5x_infer(infer_assets, 'baseline', 'orbax', None)
  assert len(rows) == 6 and all('prediction_tokens' in row for row in rows)
  assert sum(len(row['prediction_tokens']) for row in rows) > 20
  return rows


def check_speculative_infer_run(assets, baseline, target: str, draft: str) -> None:
  rows = run_t5x_infer(assets, f'spec_{target}_{draft}', target, [
      f'DRAFT_CHECKPOINT="{assets["drafts"][draft]}"', 'DRAFT_CONFIG="test_tiny"', 'GAMMA=3'],
      mode='predict_with_aux')
  assert [r['inputs'] for r in rows] == [r['inputs'] for r in baseline]
  for field in ('prediction_tokens', 'prediction'):
    assert [r[field] for r in rows] == [r[field] for r in baseline], field
  for row in rows:
    aux = row['aux']
    excess = aux['speculative_iterations'] + aux['speculative_accepted'] - aux['decode_lengths']
    assert excess in (0, 1)
    assert 0.0 <= aux['speculative_beta_mean'] <= 1.0
  assert sum(row['aux']['speculative_accepted'] for row in rows) > 0


@requires_t5x
def test_t5x_infer_speculative_equals_t5x_greedy(infer_assets, infer_baseline):
  """t5x.infer + gin/speculative.gin gives T5X's own greedy predictions.

  Target and draft in T5X's legacy format here, the baseline's target in Orbax;
  the draft loader reads Orbax drafts too (test_draft_checkpoint_in_either_format).
  """
  check_speculative_infer_run(infer_assets, infer_baseline, target='legacy', draft='legacy')


@requires_t5x
@pytest.mark.slow
def test_t5x_infer_speculative_equals_t5x_greedy_orbax(infer_assets, infer_baseline):
  check_speculative_infer_run(infer_assets, infer_baseline, target='orbax', draft='orbax')


@requires_t5x
@pytest.mark.slow
@pytest.mark.parametrize('draft', ['bigram', 'pass'])
def test_t5x_infer_with_a_draft_from_files_equals_t5x_greedy(infer_assets, infer_baseline, draft):
  """gin/drafts/bigram.gin and gin/drafts/pass.gin through t5x.infer."""
  draft_gin, binding = infer_assets['file_drafts'][draft]
  rows = run_t5x_infer(infer_assets, f'spec_{draft}', 'orbax', [binding, 'GAMMA=3'],
                       mode='predict_with_aux', draft_gin=draft_gin)
  for field in ('prediction_tokens', 'prediction'):
    assert [r[field] for r in rows] == [r[field] for r in infer_baseline], field
  assert all(0.0 <= row['aux']['speculative_beta_mean'] <= 1.0 for row in rows)


@requires_t5x
@pytest.mark.slow
def test_t5x_infer_bfloat16_speculative_equals_greedy_with_our_network(infer_assets):
  """t5x.infer, target restored and computing in bfloat16 with our network: GAMMA=3 = greedy."""
  root = infer_assets['root']
  (root / 'model_ours_bfloat16.gin').write_text(
      (root / 'model.gin').read_text().replace('from t5x.examples.t5 import network',
                                               'from specdec_t5x import network')
      + "network.T5Config.dtype = 'bfloat16'\n")
  run = functools.partial(run_t5x_infer, infer_assets, target='orbax',
                          model_gin='model_ours_bfloat16.gin', params_dtype='bfloat16')
  baseline = run(name='ours_bfloat16', speculative_bindings=None)
  rows = run(name='spec_bfloat16', mode='predict_with_aux', speculative_bindings=[
      f'DRAFT_CHECKPOINT="{infer_assets["drafts"]["orbax"]}"', 'DRAFT_CONFIG="test_tiny"',
      'GAMMA=3'])
  for field in ('inputs', 'prediction_tokens', 'prediction'):
    assert [r[field] for r in rows] == [r[field] for r in baseline], field
  assert sum(row['aux']['speculative_accepted'] for row in rows) > 0


@requires_t5x
@pytest.mark.slow
def test_t5x_infer_reports_a_missing_draft_checkpoint(infer_assets):
  with pytest.raises(AssertionError, match=r'draft checkpoint .*nowhere.* not found'):
    run_t5x_infer(infer_assets, 'missing_draft', 'orbax', [
        f'DRAFT_CHECKPOINT="{infer_assets["root"] / "nowhere"}"', 'DRAFT_CONFIG="test_tiny"'])
