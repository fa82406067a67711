"""Hugging Face T5 directories -> T5X checkpoints (`specdec_t5x.hf_checkpoint`), end to end.

Tiny models are made here (no downloads), saved with `save_pretrained`, converted,
loaded the three ways a user loads them (the written config, the drafter registry
and the sweep, both with no config given), and decoded: our greedy output must be
Hugging Face's greedy `generate` token for token, and speculative decoding with the
converted model as its own draft must equal autoregressive decoding.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_inputs

from specdec_t5x import checkpoints, decoding, hf_checkpoint, hf_convert, network
from specdec_t5x.bench import random_weights
from specdec_t5x.drafters import registry
from specdec_t5x.sweep import loading
from specdec_t5x.sweep.config import ModelSpec

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytest.importorskip('safetensors')

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH, ENCODER_LENGTH, MAX_DECODE_LEN = 3, 10, 12
# Small and unequal sizes, so a transposed kernel cannot hide behind a square matrix.
# (The decoder is not deeper than the encoder: transformers' generate fails then,
# see hf_convert.to_hf_model.)
HF_SIZES = dict(vocab_size=100, d_model=24, d_kv=8, num_heads=2, d_ff=40, num_layers=2,
                num_decoder_layers=2, dropout_rate=0.0, decoder_start_token_id=0,
                eos_token_id=1, pad_token_id=0)
T5X_SIZES = dict(vocab_size=100, emb_dim=24, head_dim=8, num_heads=2, mlp_dim=40,
                 num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                 dtype=jnp.float32)


def _native_t5_1_1() -> 'transformers.T5ForConditionalGeneration':
  """A T5 1.1 layout made by transformers itself (which, from 5.x, ties lm_head to shared)."""
  torch.manual_seed(0)
  config = transformers.T5Config(feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                                 **HF_SIZES)
  return transformers.T5ForConditionalGeneration(config).eval()


def _from_t5x(**overrides) -> 'transformers.T5ForConditionalGeneration':
  """An HF model of random T5X weights: untied T5 1.1 head, or T5 1.0 with overrides."""
  config = network.T5Config(**{**T5X_SIZES, 'mlp_activations': ('gelu', 'linear'), **overrides})
  module = network.Transformer(config)
  params = random_weights.random_params(module, 1, ENCODER_LENGTH, seed=3)
  return hf_convert.to_hf_model(params, config)


# name -> (how the HF model is made, whether save_pretrained writes safetensors)
MODELS = {
    't5_1_1_native': (_native_t5_1_1, True),
    't5_1_1_untied_bin': (_from_t5x, False),
    't5_1_0': (lambda: _from_t5x(mlp_activations=('relu',), logits_via_embedding=True), True),
}


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """name -> (HF model, its save_pretrained directory)."""
  root = tmp_path_factory.mktemp('hf')
  models = {}
  for name, (make, safe) in MODELS.items():
    model = make()
    model.save_pretrained(root / name)
    if not safe:
      # transformers 5.x writes only safetensors; older versions wrote this file.
      (root / name / 'model.safetensors').unlink()
      torch.save(model.state_dict(), root / name / 'pytorch_model.bin')
    models[name] = (model, root / name)
  return models


@pytest.fixture(scope='module')
def converted(saved, tmp_path_factory):
  """name -> `hf_checkpoint.Converted` of each saved model."""
  root = tmp_path_factory.mktemp('t5x')
  return {name: hf_checkpoint.convert_hf_checkpoint(hf_dir, root / name)
          for name, (_, hf_dir) in saved.items()}


def _hf_greedy(model, tokens: np.ndarray) -> list[list[int]]:
  """HF greedy tokens per row, up to and including EOS (the decoder start token dropped)."""
  with torch.no_grad():
    generated = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                               attention_mask=torch.tensor(tokens > 0, dtype=torch.long),
                               do_sample=False, num_beams=1, max_new_tokens=MAX_DECODE_LEN,
                               decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
  rows = []
  for row in generated[:, 1:].tolist():
    rows.append(row[:row.index(1) + 1] if 1 in row else row)
  return rows


def _ours(out) -> list[list[int]]:
  return [row[:length] for row, length in zip(np.asarray(out.tokens).tolist(),
                                              np.asarray(out.lengths).tolist(), strict=True)]


def _same_config(a: network.T5Config, b: network.T5Config) -> bool:
  return a.replace(dtype=jnp.dtype(a.dtype)) == b.replace(dtype=jnp.dtype(b.dtype))


# ------------------------------------------------------------------------------
# End to end.
# ------------------------------------------------------------------------------


def test_the_native_model_is_the_layout_transformers_writes(saved):
  """transformers 5.x saves a T5 1.1 head tied to `shared` without lm_head.weight."""
  model, hf_dir = saved['t5_1_1_native']
  keys = set(hf_checkpoint.read_state_dict(hf_dir))
  if model.lm_head.weight is model.shared.weight:
    assert hf_convert.HF_LM_HEAD_KEY not in keys
  bin_dir = saved['t5_1_1_untied_bin'][1]
  assert [path.name for path in hf_checkpoint.weight_files(bin_dir)] == ['pytorch_model.bin']
  untied = hf_checkpoint.read_state_dict(bin_dir)
  assert not np.array_equal(untied[hf_convert.HF_LM_HEAD_KEY].numpy(),
                            untied[hf_convert.HF_SHARED_KEY].numpy())


@pytest.mark.parametrize('name', sorted(MODELS))
def test_converted_model_decodes_like_hf_generate(saved, converted, name):
  model, _ = saved[name]
  result = converted[name]
  assert result.config.logits_via_embedding == (name == 't5_1_0')
  # The config as written beside the checkpoint.
  fields = json.loads(result.train_config.read_text())['model']
  config = network.T5Config(**{**fields, 'dtype': jnp.dtype(fields['dtype']),
                               'mlp_activations': tuple(fields['mlp_activations'])})
  assert _same_config(config, result.config)
  params = checkpoints.load_t5x_params(result.checkpoint, config)
  tokens = random_inputs(BATCH, ENCODER_LENGTH, config.vocab_size, seed=5)
  out = decoding.autoregressive_decode(network.Transformer(config),
                                       jax.tree.map(jnp.asarray, params), tokens,
                                       max_decode_len=MAX_DECODE_LEN)
  ours, theirs = _ours(out), _hf_greedy(model, tokens)
  assert ours == theirs
  assert max(len(row) for row in ours) > 3  # not all rows stop at once: a real comparison


def test_registry_and_sweep_find_the_config_beside_the_checkpoint(converted):
  result = converted['t5_1_1_native']
  module = network.Transformer(result.config)
  params = jax.tree.map(jnp.asarray, checkpoints.load_t5x_params(result.checkpoint))
  drafter = registry.build_drafter(registry.DrafterSpec('model', str(result.checkpoint)),
                                   module, params)
  assert _same_config(drafter.module.config, result.config)
  sweep_config = loading.model_config(ModelSpec(name='hf', checkpoint=str(result.checkpoint)),
                                      str(result.checkpoint))
  assert _same_config(sweep_config, result.config)
  tokens = random_inputs(BATCH, ENCODER_LENGTH, result.config.vocab_size, seed=6)
  auto = decoding.autoregressive_decode(module, params, tokens, max_decode_len=MAX_DECODE_LEN)
  spec = decoding.speculative_decode(module, params, drafter, tokens, gamma=3,
                                     max_decode_len=MAX_DECODE_LEN)
  assert _ours(spec) == _ours(auto)
  np.testing.assert_array_equal(np.asarray(spec.tokens), np.asarray(auto.tokens))


def test_train_config_is_what_training_writes(converted):
  result = converted['t5_1_0']
  written = json.loads(result.train_config.read_text())
  assert written['model'] == hf_checkpoint.config_fields(result.config)
  assert written['model']['dtype'] == 'float32'
  assert written['model']['mlp_activations'] == ['relu']


@pytest.mark.parametrize('name', sorted(MODELS))
def test_draft_gin_binds_the_converted_config(converted, name):
  result = converted[name]
  gin.clear_config(clear_constants=True)
  try:
    # A target model file's own (unscoped) T5Config must not leak into the draft's.
    gin.parse_config('from __gin__ import dynamic_registration\n'
                     'from specdec_t5x import network\n'
                     'network.T5Config.float32_attention_logits = True\n'
                     'network.T5Config.emb_dim = 4096\n')
    gin.parse_config(result.draft_gin.read_text())
    built = gin.query_parameter('%DRAFT_CONFIG').scoped_configurable_fn()
    checkpoint = gin.query_parameter('%DRAFT_CHECKPOINT')
    # ... nor the draft's bindings rebind the target's.
    assert gin.query_parameter('specdec_t5x.network.T5Config.emb_dim') == 4096
  finally:
    gin.clear_config(clear_constants=True)
  assert isinstance(built, network.T5Config)
  assert _same_config(built, result.config)
  assert checkpoint == str(result.checkpoint)


def test_model_gin_binds_the_converted_config(converted):
  pytest.importorskip('t5x')
  result = converted['t5_1_1_untied_bin']
  program = ('import gin, json, sys\n'
             'gin.parse_config_file(sys.argv[1])\n'
             'fields = ' + repr(list(hf_checkpoint.config_fields(result.config))) + '\n'
             'print("REPORT", json.dumps({f: repr(gin.query_parameter('
             '"specdec_t5x.network.T5Config." + f)) for f in fields}))\n')
  run = subprocess.run([sys.executable, '-c', program, str(result.model_gin)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  got = json.loads(run.stdout.split('REPORT', 1)[1])
  expected = hf_checkpoint.config_fields(result.config)
  expected['mlp_activations'] = tuple(expected['mlp_activations'])
  assert got == {name: repr(value) for name, value in expected.items()}
  assert 'sentencepiece_model_file = %gin.REQUIRED' in result.model_gin.read_text()


# ------------------------------------------------------------------------------
# Other weight files.
# ------------------------------------------------------------------------------


def test_sharded_and_bfloat16_safetensors(saved, tmp_path):
  from safetensors.torch import save_file

  model, _ = saved['t5_1_1_untied_bin']
  model.save_pretrained(tmp_path / 'sharded', max_shard_size='20KB')
  assert (tmp_path / 'sharded' / 'model.safetensors.index.json').is_file()
  assert len(hf_checkpoint.weight_files(tmp_path / 'sharded')) > 1
  expected = {k: v.numpy() for k, v in model.state_dict().items()}
  state = hf_checkpoint.read_state_dict(tmp_path / 'sharded')
  assert hf_convert.HF_LM_HEAD_KEY in state
  for key, value in state.items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)
  # bfloat16 tensors (NumPy cannot hold them) arrive as their float32 values.
  (tmp_path / 'bf16').mkdir()
  save_file({k: v.to(torch.bfloat16).clone() for k, v in model.state_dict().items()},
            str(tmp_path / 'bf16' / 'model.safetensors'))
  for key, value in hf_checkpoint.read_state_dict(tmp_path / 'bf16').items():
    assert value.dtype == np.float32
    reference = model.state_dict()[key].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(value, reference, err_msg=key)


def test_config_view_reads_config_json_like_transformers():
  flan = dict(architectures=['T5ForConditionalGeneration'], model_type='t5', d_ff=1024,
              d_model=512, dense_act_fn='gelu_new', feed_forward_proj='gated-gelu',
              is_gated_act=True, num_decoder_layers=8, num_heads=6, num_layers=8,
              tie_word_embeddings=False, vocab_size=32128)
  t5_1_0 = dict(architectures=['T5WithLMHeadModel'], model_type='t5', d_ff=2048, d_model=512,
                num_heads=8, num_layers=6, vocab_size=32128)
  for raw in (flan, t5_1_0, {**flan, 'scale_decoder_outputs': False,
                             'tie_word_embeddings': True}):
    ours = hf_convert.t5_config_from_hf_config(hf_checkpoint.hf_config_view(raw))
    theirs = hf_convert.t5_config_from_hf_config(transformers.T5Config.from_dict(raw))
    assert ours == theirs, raw
  assert hf_convert.t5_config_from_hf_config(
      hf_checkpoint.hf_config_view(flan)) == network.T5Config(
          **{**network.PRESETS['t5_1_1_small'], 'dropout_rate': 0.1})


# ------------------------------------------------------------------------------
# Clear errors.
# ------------------------------------------------------------------------------


def _copy_config(hf_dir: pathlib.Path, dest: pathlib.Path, **changes) -> pathlib.Path:
  dest.mkdir()
  raw = json.loads((hf_dir / 'config.json').read_text())
  (dest / 'config.json').write_text(json.dumps({**raw, **changes}))
  return dest


def test_errors_for_a_directory_without_config_or_weights(saved, tmp_path):
  with pytest.raises(ValueError, match='has no config.json'):
    hf_checkpoint.convert_hf_checkpoint(tmp_path, tmp_path / 'out')
  no_weights = _copy_config(saved['t5_1_0'][1], tmp_path / 'no_weights')
  with pytest.raises(ValueError, match='has no weights'):
    hf_checkpoint.convert_hf_checkpoint(no_weights, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('changes, message', [
    ({'model_type': 'bart'}, "model_type='bart'"),
    ({'architectures': ['T5EncoderModel']}, 'architectures'),
    ({'feed_forward_proj': 'gated-gelu-new'}, 'not a T5 layout'),
    ({'feed_forward_proj': 'gated-tanh'}, 'no T5X equivalent'),
    ({'relative_attention_num_buckets': 64}, 'relative_attention_num_buckets'),
])
def test_errors_for_an_unknown_layout(saved, tmp_path, changes, message):
  bad = _copy_config(saved['t5_1_0'][1], tmp_path / 'bad', **changes)
  with pytest.raises(ValueError, match=message):
    hf_checkpoint.convert_hf_checkpoint(bad, tmp_path / 'out')


@pytest.mark.parametrize('edit, message', [('drop', 'missing'), ('add', 'unexpected'),
                                           ('config', 'shape')])
def test_errors_for_weights_that_do_not_fit(saved, tmp_path, edit, message):
  from safetensors.numpy import save_file

  source = saved['t5_1_0'][1]
  state = {k: np.asarray(v) for k, v in hf_checkpoint.read_state_dict(source).items()}
  changes = {'d_ff': 48} if edit == 'config' else {}
  bad = _copy_config(source, tmp_path / 'bad', **changes)
  if edit == 'drop':
    del state['decoder.block.1.layer.2.DenseReluDense.wo.weight']
  elif edit == 'add':
    state['decoder.block.2.layer.0.SelfAttention.q.weight'] = state[
        'decoder.block.1.layer.0.SelfAttention.q.weight']
  save_file(state, str(bad / 'model.safetensors'))
  with pytest.raises(ValueError, match=message):
    hf_checkpoint.convert_hf_checkpoint(bad, tmp_path / 'out')


def test_vocabulary_checked_against_the_target(saved, converted, tmp_path):
  hf_dir = saved['t5_1_1_native'][1]
  with pytest.raises(ValueError, match='vocabulary mismatch'):
    hf_checkpoint.convert_hf_checkpoint(hf_dir, tmp_path / 'out', target='t5_1_1_xxl')
  other = _copy_config(hf_dir, tmp_path / 'other', vocab_size=300)
  with pytest.raises(ValueError, match='vocabulary mismatch'):
    hf_checkpoint.convert_hf_checkpoint(hf_dir, tmp_path / 'out', target=str(other))
  assert not (tmp_path / 'out').exists()  # checked before anything is written
  # Padding aside the same vocabulary (100 and 128 both pad to 128): accepted.
  padded = _copy_config(hf_dir, tmp_path / 'padded', vocab_size=128)
  assert hf_checkpoint.target_vocab_size(str(padded)) == 128
  hf_checkpoint.check_against_target(converted['t5_1_0'].config, str(padded))
  hf_checkpoint.check_against_target(converted['t5_1_0'].config,
                                     str(converted['t5_1_1_native'].checkpoint))
  with pytest.raises(ValueError, match='neither a preset'):
    hf_checkpoint.check_against_target(converted['t5_1_0'].config, str(tmp_path / 'nowhere'))


# ------------------------------------------------------------------------------
# The command.
# ------------------------------------------------------------------------------


def _script():
  spec = importlib.util.spec_from_file_location('convert_hf_checkpoint',
                                                REPO / 'scripts' / 'convert_hf_checkpoint.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_command_reports_errors(saved, tmp_path, capsys):
  script = _script()
  assert script.main([str(tmp_path), str(tmp_path / 'out')]) == 2
  assert 'has no config.json' in capsys.readouterr().err
  assert script.main([str(saved['t5_1_0'][1]), str(tmp_path / 'out'),
                      '--target', 'cpu_target']) == 2
  assert 'vocabulary mismatch' in capsys.readouterr().err


def test_command_converts(saved, tmp_path):
  hf_dir = saved['t5_1_1_native'][1]
  run = subprocess.run([sys.executable, 'scripts/convert_hf_checkpoint.py', str(hf_dir),
                        str(tmp_path / 'out'), '--step', '7', '--target', str(hf_dir)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  checkpoint = tmp_path / 'out' / 'checkpoint_7'
  assert f'checkpoint:   {checkpoint}' in run.stdout
  assert '--gin_file=gin/speculative.gin --gin_file=' in run.stdout
  config = hf_checkpoint.t5_config_from_hf_dir(hf_dir)
  params = checkpoints.load_t5x_params(checkpoint, config)
  expected = hf_checkpoint.t5x_params_from_hf(hf_checkpoint.read_state_dict(hf_dir), config)
  jax.tree.map(np.testing.assert_array_equal, params, expected)
