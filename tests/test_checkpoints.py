"""T5X checkpoints: our Orbax writer, our reader of both formats, and t5x's own code on them.

The tests marked `t5x` need t5x importable (run them with /tmp/t5x-venv/bin/python -m pytest);
elsewhere they are skipped with a reason.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization, traverse_util

from specdec_t5x import checkpoints
from specdec_t5x.network import config_from_preset

CONFIG = config_from_preset('test_tiny')
T5X_REASON = 't5x is not importable here; run with /tmp/t5x-venv/bin/python -m pytest'


def random_params(seed: int, config=CONFIG) -> dict:
  """Random NumPy parameters with the names and shapes of `Transformer(config)`."""
  rng = np.random.default_rng(seed)
  flat = {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in checkpoints.param_shapes(config).items()}
  return traverse_util.unflatten_dict(flat, sep='/')


def assert_trees_equal(actual, expected):
  flat_actual = traverse_util.flatten_dict(actual, sep='/')
  flat_expected = traverse_util.flatten_dict(expected, sep='/')
  assert sorted(flat_actual) == sorted(flat_expected)
  for name, value in flat_expected.items():
    np.testing.assert_array_equal(np.asarray(flat_actual[name]), np.asarray(value), err_msg=name)


def write_legacy_checkpoint(params: dict, model_dir: pathlib.Path, step: int,
                            inline: frozenset = frozenset()) -> pathlib.Path:
  """Writes the legacy T5X layout: msgpack state dict + one zarr TensorStore per array.

  Written from the format's description (t5x.checkpoints.Checkpointer): arrays
  named in `inline` go into the msgpack itself, the others are replaced by a
  TensorStore spec whose path is relative to the step directory. An optimizer
  slot is included so that the reader has to pick `target` out of the state.
  """
  ckpt_dir = model_dir / f'checkpoint_{step}'
  ckpt_dir.mkdir(parents=True)

  def stored(prefix: str, name: str, array: np.ndarray):
    if name in inline:
      return array
    relative = f'{prefix}.{name.replace("/", ".")}'
    spec = {'driver': 'zarr', 'dtype': array.dtype.name,
            'kvstore': {'driver': 'file', 'path': relative},
            'metadata': {'shape': list(array.shape), 'chunks': list(array.shape),
                         'compressor': {'id': 'gzip'}}}
    absolute = {**spec, 'kvstore': {'driver': 'file', 'path': str(ckpt_dir / relative)}}
    ts.open(absolute, create=True, open=True).result().write(array).result()
    return spec

  flat = traverse_util.flatten_dict(params, sep='/')
  target = {name: stored('target', name, value) for name, value in flat.items()}
  slot = np.full((3,), 0.5, np.float32)
  state = {'target': traverse_util.unflatten_dict(target, sep='/'),
           'state': {'step': np.asarray(step, np.int32),
                     'param_states': {'decoder': {'decoder_norm': {'scale': {
                         'v': stored('state', 'param_states/decoder/decoder_norm/scale/v', slot),
                         'v_row': np.zeros((1,), np.float32)}}}}}}
  (ckpt_dir / 'checkpoint').write_bytes(
      serialization.msgpack_serialize({'version': 3, 'optimizer': state}))
  return ckpt_dir


# ------------------------------------------------------------------------------
# Round trips.
# ------------------------------------------------------------------------------


def test_orbax_round_trip_and_t5x_layout(tmp_path):
  params = random_params(0)
  written = checkpoints.save_t5x_checkpoint(params, tmp_path, 7)
  assert written == tmp_path / 'checkpoint_7'
  # The files T5X's OrbaxCheckpointManagerInterface reads.
  assert (written / '_CHECKPOINT_METADATA').is_file()
  assert (written / 'state' / '_METADATA').is_file()
  assert (written / 'state' / 'manifest.ocdbt').is_file()
  for path in (tmp_path, written, written / 'state'):
    assert_trees_equal(checkpoints.load_t5x_params(path, CONFIG), params)


def test_legacy_round_trip(tmp_path):
  params = random_params(1)
  inline = frozenset({'decoder/decoder_norm/scale', 'encoder/relpos_bias/rel_embedding'})
  ckpt_dir = write_legacy_checkpoint(params, tmp_path, 3, inline=inline)
  for path in (tmp_path, ckpt_dir, ckpt_dir / 'checkpoint'):
    assert_trees_equal(checkpoints.load_t5x_params(path, CONFIG), params)


def test_latest_step_is_loaded_and_unfinished_saves_are_ignored(tmp_path):
  old, new = random_params(2), random_params(3)
  checkpoints.save_t5x_checkpoint(old, tmp_path, 2)
  checkpoints.save_t5x_checkpoint(new, tmp_path, 10)
  # What a save killed before its rename leaves behind (Orbax's and T5X's names).
  (tmp_path / 'checkpoint_20.orbax-checkpoint-tmp-1700000000').mkdir()
  (tmp_path / 'checkpoint_30.tmp-1700000000').mkdir()
  assert checkpoints.checkpoint_steps(tmp_path) == [2, 10]
  assert_trees_equal(checkpoints.load_t5x_params(tmp_path), new)
  assert_trees_equal(checkpoints.load_t5x_params(tmp_path / 'checkpoint_2'), old)


def test_save_refuses_to_replace_a_checkpoint_unless_asked(tmp_path):
  checkpoints.save_t5x_checkpoint(random_params(4), tmp_path, 1)
  with pytest.raises(FileExistsError, match='checkpoint_1'):
    checkpoints.save_t5x_checkpoint(random_params(5), tmp_path, 1)
  replacement = random_params(5)
  checkpoints.save_t5x_checkpoint(replacement, tmp_path, 1, overwrite=True)
  assert_trees_equal(checkpoints.load_t5x_params(tmp_path), replacement)


def test_dtype_is_cast_to_float32_unless_kept(tmp_path):
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), random_params(6))
  checkpoints.save_t5x_checkpoint(params, tmp_path, 1)
  as_float32 = checkpoints.load_t5x_params(tmp_path)
  as_saved = checkpoints.load_t5x_params(tmp_path, dtype=None)
  assert {x.dtype for x in jax.tree.leaves(as_float32)} == {np.dtype(np.float32)}
  assert {x.dtype for x in jax.tree.leaves(as_saved)} == {np.dtype(jnp.bfloat16)}
  assert_trees_equal(as_float32, jax.tree.map(lambda x: np.asarray(x, np.float32), params))


# ------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------


def test_missing_path_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    checkpoints.load_t5x_params(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='no T5X checkpoint'):
    checkpoints.load_t5x_params(tmp_path)


def test_corrupt_legacy_msgpack_raises_value_error(tmp_path):
  ckpt_dir = write_legacy_checkpoint(random_params(7), tmp_path, 1)
  (ckpt_dir / 'checkpoint').write_bytes(b'\xc1 this is not msgpack')
  with pytest.raises(ValueError, match='cannot read legacy T5X checkpoint file'):
    checkpoints.load_t5x_params(tmp_path)


def test_missing_legacy_array_names_the_parameter(tmp_path):
  ckpt_dir = write_legacy_checkpoint(random_params(8), tmp_path, 1)
  for chunk in (ckpt_dir / 'target.decoder.logits_dense.kernel').iterdir():
    if not chunk.name.startswith('.'):
      chunk.write_bytes(b'truncated')
  with pytest.raises(ValueError, match='decoder/logits_dense/kernel'):
    checkpoints.load_t5x_params(tmp_path)


# A failed OCDBT read leaves a TensorStore callback that fires on orbax's closed event loop
# (orbax's noise, not an error of ours); pytest reports it on the next test.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damaged_file', ['manifest.ocdbt', '_METADATA'])
def test_corrupt_orbax_checkpoint_raises_value_error(tmp_path, damaged_file):
  written = checkpoints.save_t5x_checkpoint(random_params(9), tmp_path, 1)
  (written / 'state' / damaged_file).write_bytes(b'{"garbage')
  with pytest.raises(ValueError, match='cannot read .*Orbax checkpoint'):
    checkpoints.load_t5x_params(tmp_path)


def test_orbax_checkpoint_without_target_raises_value_error(tmp_path):
  import orbax.checkpoint as ocp
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True)
  with ocp.Checkpointer(handler) as checkpointer:
    checkpointer.save((tmp_path / 'checkpoint_1' / 'state').absolute(),
                      args=ocp.args.PyTreeSave({'params': {'w': np.ones(2)}}))
  with pytest.raises(ValueError, match='no T5X "target" tree'):
    checkpoints.load_t5x_params(tmp_path)


@pytest.mark.parametrize('overrides, expected_message', [
    (dict(num_decoder_layers=3), "'decoder/layers_2/.*' .* is missing from the checkpoint"),
    (dict(num_encoder_layers=1), r"checkpoint has parameter 'encoder/layers_1/[^']*' "
                                 r'\(shape \(\d+, \d+\)\), which the config does not'),
    (dict(mlp_dim=48), r"'decoder/layers_0/mlp/wi_0/kernel' has shape \(32, 64\) in the "
                       r'checkpoint but \(32, 48\) for the config'),
])
def test_parameters_that_do_not_fit_the_config_are_named(tmp_path, overrides, expected_message):
  checkpoints.save_t5x_checkpoint(random_params(10), tmp_path, 1)
  wrong = config_from_preset('test_tiny', **overrides)
  with pytest.raises(ValueError, match=expected_message):
    checkpoints.load_t5x_params(tmp_path, wrong)


def test_save_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match='step must be >= 0'):
    checkpoints.save_t5x_checkpoint(random_params(11), tmp_path, -1)
  with pytest.raises(ValueError, match='non-empty mapping'):
    checkpoints.save_t5x_checkpoint({}, tmp_path, 1)
  with pytest.raises(ValueError, match='local directory.*gs://bucket/model'):
    checkpoints.save_t5x_checkpoint(random_params(11), 'gs://bucket/model', 1)


@pytest.mark.parametrize('path, expected', [
    ('gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000/target.encoder',
     {'driver': 'gcs', 'bucket': 't5-data',
      'path': 'pretrained_models/t5x/t5_1_1_small/checkpoint_1000000/target.encoder/'}),
    ('/ckpt/checkpoint_5/target.decoder', {'driver': 'file',
                                           'path': '/ckpt/checkpoint_5/target.decoder/'}),
])
def test_legacy_arrays_are_read_from_where_the_checkpoint_is(path, expected):
  # T5's public checkpoints are legacy T5X checkpoints on GCS; their arrays must be
  # opened in the bucket the checkpoint is read from (no GCS here: the spec is checked).
  assert checkpoints.tensorstore_kvstore(path) == expected
  assert checkpoints.tensorstore_kvstore(checkpoints.as_path(path)) == expected


def test_paths_are_local_unless_they_are_urls(tmp_path):
  assert not checkpoints.is_url(tmp_path) and checkpoints.is_url('gs://bucket/dir')
  assert isinstance(checkpoints.as_path(str(tmp_path)), pathlib.Path)
  assert str(checkpoints.step_dir('gs://bucket/model', 7)) == 'gs://bucket/model/checkpoint_7'
  with pytest.raises(ValueError, match='local paths and gs:// only'):
    checkpoints.tensorstore_kvstore('s3://bucket/model')


# ------------------------------------------------------------------------------
# Interoperability with t5x itself.
# ------------------------------------------------------------------------------

INPUT_SHAPES = {'encoder_input_tokens': (2, 8), 'decoder_input_tokens': (2, 8),
                'decoder_target_tokens': (2, 8), 'decoder_loss_weights': (2, 8)}


@pytest.fixture(scope='module')
def t5x_env():
  """t5x's modules plus a model of our network, a partitioner and a train-state factory."""
  t5x = pytest.importorskip('t5x', reason=T5X_REASON)
  del t5x
  import seqio
  from t5x import adafactor, models, partitioning, utils

  vocabulary = seqio.PassThroughVocabulary(size=CONFIG.vocab_size)
  from specdec_t5x.network import Transformer
  model = models.EncoderDecoderModel(module=Transformer(CONFIG), input_vocabulary=vocabulary,
                                     output_vocabulary=vocabulary, optimizer_def=None)
  partitioner = partitioning.PjitPartitioner(num_partitions=1)

  def initializer(with_optimizer: bool):
    optimizer = adafactor.Adafactor(decay_rate=0.8, step_offset=0) if with_optimizer else None
    return utils.TrainStateInitializer(
        optimizer_def=optimizer, init_fn=model.get_initial_variables, input_shapes=INPUT_SHAPES,
        input_types={name: jnp.int32 for name in INPUT_SHAPES}, partitioner=partitioner)

  return partitioner, initializer


@pytest.mark.t5x
def test_t5x_infer_restores_our_checkpoint(tmp_path, t5x_env):
  """The restore call of t5x.infer (InferenceState, strict=False, Orbax) on what we save."""
  from t5x import utils
  partitioner, initializer = t5x_env
  params = random_params(12)
  written = str(checkpoints.save_t5x_checkpoint(params, tmp_path, 42))
  # infer.gin's settings, with the float32 override that checkpoints.py documents.
  restore_cfg = utils.RestoreCheckpointConfig(path=written, mode='specific', strict=False,
                                              dtype='float32')
  state, _ = utils.create_checkpoint_manager_and_restore(
      initializer(with_optimizer=False), partitioner, restore_cfg, written, None, use_orbax=True)
  assert int(state.step) == 42
  assert_trees_equal(jax.device_get(dict(state.params)), params)


@pytest.mark.t5x
def test_t5x_train_restores_our_checkpoint_with_the_documented_gin(tmp_path, t5x_env):
  """Fine-tuning with Adafactor needs slots we do not save: assignment_map + fallback_to_scratch."""
  from t5x import utils
  partitioner, initializer = t5x_env
  params = random_params(13)
  written = str(checkpoints.save_t5x_checkpoint(params, tmp_path, 5))
  strict = utils.RestoreCheckpointConfig(path=written, mode='specific')
  with pytest.raises(ValueError):
    utils.create_checkpoint_manager_and_restore(
        initializer(with_optimizer=True), partitioner, strict, written, jax.random.PRNGKey(0),
        use_orbax=True)
  documented = utils.RestoreCheckpointConfig(
      path=written, mode='specific', assignment_map=((r'state/param_states.*', None),),
      fallback_to_scratch=True)
  state, _ = utils.create_checkpoint_manager_and_restore(
      initializer(with_optimizer=True), partitioner, documented, written, jax.random.PRNGKey(0),
      use_orbax=True)
  assert int(state.step) == 5
  assert_trees_equal(jax.device_get(dict(state.params)), params)


@pytest.mark.t5x
@pytest.mark.parametrize('layout', ['legacy', 'orbax'])
def test_we_read_checkpoints_written_by_t5x(tmp_path, t5x_env, layout):
  """A T5X training checkpoint (with Adafactor slots) in each format, written by t5x."""
  from t5x import checkpoints as t5x_checkpoints
  partitioner, initializer = t5x_env
  state = initializer(with_optimizer=True).from_scratch(jax.random.PRNGKey(14))
  state = state.replace_step(jnp.asarray(9, jnp.int32))
  if layout == 'legacy':
    t5x_checkpoints.Checkpointer(state, partitioner, str(tmp_path)).save(state)
    assert (tmp_path / 'checkpoint_9' / 'checkpoint').is_file()
    # t5x's own reader agrees on what the file holds.
    t5x_target = t5x_checkpoints.load_t5x_checkpoint(str(tmp_path))['target']
    assert_trees_equal(t5x_target, jax.device_get(dict(state.params)))
  else:
    manager = t5x_checkpoints.OrbaxCheckpointManagerInterface(str(tmp_path), state, partitioner)
    manager.save(state)
    manager.wait_until_finished()
    assert (tmp_path / 'checkpoint_9' / 'state').is_dir()
  loaded = checkpoints.load_t5x_params(tmp_path, CONFIG)
  assert_trees_equal(loaded, jax.device_get(dict(state.params)))
