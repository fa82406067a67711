"""Reading and writing T5X checkpoints without needing t5x installed.

Two on-disk formats occur in the wild, and `load_t5x_params` reads both:

* Orbax (what T5X writes by default at this commit, through
  `t5x.checkpoints.OrbaxCheckpointManagerInterface`)::

    <model_dir>/checkpoint_<step>/
      _CHECKPOINT_METADATA          # orbax step metadata (item handlers)
      state/                        # PyTreeCheckpointHandler(use_ocdbt=True)
        _METADATA, manifest.ocdbt, d/, ocdbt.process_0/, ...
      dataset/                      # only when T5X saved the input pipeline

  `state/` holds T5X's train-state dict: `{'target': params, 'state': {'step':
  int32, 'param_states': <T5X Adafactor slots, only in training checkpoints>}}`.

* legacy T5X (`t5x.checkpoints.Checkpointer`)::

    <model_dir>/checkpoint_<step>/
      checkpoint                    # msgpack {'version': 3, 'optimizer': state dict}
      target.encoder.layers_0.attention.query.kernel/   # zarr arrays (TensorStore)
      ...

  In the msgpack, each partitioned array is replaced by a TensorStore spec
  whose kvstore path is relative to the step directory; small arrays are
  stored inline.

`save_t5x_checkpoint` writes the Orbax layout with only the parameters and
the step (`{'target': params, 'state': {'step': step}}`), which is exactly the
state `t5x.infer` restores: it builds an `InferenceState` (no optimizer,
`optimizer_def=None`) and forces `RestoreCheckpointConfig.strict = False`, so
no optimizer state and no restore gin beyond the usual ones are needed::

  python -m t5x.infer --gin_file=... \
    --gin.CHECKPOINT_PATH="'<model_dir>/checkpoint_<step>'" \
    --gin.utils.RestoreCheckpointConfig.dtype="'float32'"

(infer.gin binds `utils.RestoreCheckpointConfig.path = %CHECKPOINT_PATH` with
`mode = 'specific'`, and restores as bfloat16 unless `dtype` is overridden).
To fine-tune from such a checkpoint with `t5x.train`, whose Adafactor needs
slots the checkpoint does not have, let T5X initialise them from scratch::

  utils.RestoreCheckpointConfig.assignment_map = ((r'state/param_states.*', None),)
  utils.RestoreCheckpointConfig.fallback_to_scratch = True

(`fallback_to_scratch` alone is refused by T5X: it requires a state
transformation, which the assignment map provides.)
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from flax import serialization, traverse_util

from specdec_t5x.network import T5Config, Transformer

PyTree = Any
# A local path, or a URL such as gs://bucket/dir that `etils.epath` opens (T5's public
# checkpoints and most T5X model directories on a TPU VM live on GCS).
Path = pathlib.Path | epath.Path

STEP_DIR_PREFIX = 'checkpoint'
STATE_ITEM = 'state'
LEGACY_FILE = 'checkpoint'
_ORBAX_TREE_METADATA = '_METADATA'
_STEP_DIR_RE = re.compile(rf'^{STEP_DIR_PREFIX}_(\d+)$')
_TS_SPEC_KEYS = frozenset({'driver', 'kvstore', 'metadata'})


# ------------------------------------------------------------------------------
# Locating a checkpoint.
# ------------------------------------------------------------------------------


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names a remote file system (`gs://...`) rather than a local path."""
  return '://' in os.fspath(path)


def as_path(path: str | os.PathLike) -> Path:
  """`path` as a `pathlib.Path`, or as an `etils.epath.Path` if it is a URL."""
  return epath.Path(path) if is_url(path) else pathlib.Path(path)


def checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
  """Steps of the finished `checkpoint_<step>` directories in `model_dir`, ascending.

  Temporary directories of an interrupted save (`checkpoint_5.orbax-checkpoint-
  tmp-*`, `checkpoint_5.tmp-*`) do not match and are ignored.
  """
  model_dir = as_path(model_dir)
  if not model_dir.is_dir():
    return []
  steps = []
  for child in model_dir.iterdir():
    match = _STEP_DIR_RE.match(child.name)
    if match and child.is_dir():
      steps.append(int(match.group(1)))
  return sorted(steps)


def step_dir(model_dir: str | os.PathLike, step: int) -> Path:
  """`<model_dir>/checkpoint_<step>`, the directory T5X uses for a step."""
  return as_path(model_dir) / f'{STEP_DIR_PREFIX}_{int(step)}'


def _locate(path: Path) -> tuple[str, Path]:
  """Returns `('orbax', state_dir)` or `('legacy', msgpack_file)` for `path`.

  `path` may be the msgpack file, a `state/` directory, a step directory or
  the model directory above the step directories (the latest step is used).
  """
  if not path.exists():
    raise FileNotFoundError(f'T5X checkpoint path does not exist: {path}')
  if path.is_file():
    return 'legacy', path
  if (path / STATE_ITEM).is_dir():
    return 'orbax', path / STATE_ITEM
  if (path / LEGACY_FILE).is_file():
    return 'legacy', path / LEGACY_FILE
  if (path / _ORBAX_TREE_METADATA).is_file():
    return 'orbax', path
  steps = checkpoint_steps(path)
  if steps:
    return _locate(step_dir(path, steps[-1]))
  raise FileNotFoundError(
      f'no T5X checkpoint in {path}: expected a {LEGACY_FILE!r} msgpack file, a '
      f'{STATE_ITEM!r}/ Orbax directory, or {STEP_DIR_PREFIX}_<step>/ directories')


# ------------------------------------------------------------------------------
# Saving.
# ------------------------------------------------------------------------------


def save_t5x_checkpoint(params: PyTree, directory: str | os.PathLike, step: int, *,
                        overwrite: bool = False) -> pathlib.Path:
  """Writes `params` as the T5X Orbax checkpoint `<directory>/checkpoint_<step>`.

  The tree is T5X's `{'target': params, 'state': {'step': int32}}` in an Orbax
  `state/` item (OCDBT), the layout `t5x.infer` restores. Orbax writes into a
  temporary directory and renames it when complete, so an interrupted save
  never leaves a `checkpoint_<step>` behind.

  Args:
    params: the network's parameter tree (the `'params'` collection).
    directory: the model directory; created if missing.
    step: the training step recorded in the checkpoint and its directory name.
    overwrite: replace an existing `checkpoint_<step>` instead of raising.

  Returns:
    The step directory written.
  """
  if int(step) < 0:
    raise ValueError(f'checkpoint step must be >= 0, got {step}')
  if not isinstance(params, Mapping) or not params:
    raise ValueError('params must be a non-empty mapping (the network\'s "params" tree), '
                     f'got {type(params).__name__}')
  if is_url(directory):
    raise ValueError(f'save_t5x_checkpoint writes to a local directory, got {directory}; '
                     'copy the result to its bucket afterwards (gcloud storage cp -r)')
  target = step_dir(directory, step).absolute()
  if target.exists():
    if not overwrite:
      raise FileExistsError(f'T5X checkpoint already exists: {target} (pass overwrite=True)')
    shutil.rmtree(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  # T5X saves jax arrays (with their sharding metadata) and an int32 step.
  tree = {'target': jax.tree.map(jnp.asarray, _unfreeze(params)),
          'state': {'step': jnp.asarray(step, jnp.int32)}}
  handler = ocp.CompositeCheckpointHandler(**{STATE_ITEM: ocp.PyTreeCheckpointHandler(
      use_ocdbt=True)})
  with ocp.Checkpointer(handler) as checkpointer:
    checkpointer.save(target, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.PyTreeSave(tree)}))
  return target


def _unfreeze(tree: PyTree) -> PyTree:
  if isinstance(tree, Mapping):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


# ------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------


def load_t5x_params(path: str | os.PathLike, config: T5Config | None = None, *,
                    dtype: Any = np.float32) -> dict[str, Any]:
  """Loads the parameter tree (`'target'`) of a T5X checkpoint, Orbax or legacy.

  Optimizer slots and the step are not read. t5x does not need to be installed.

  Args:
    path: a `checkpoint_<step>` directory, the model directory above it (the
      latest step is taken), an Orbax `state/` directory or a legacy msgpack
      `checkpoint` file; local, or a URL `etils.epath` opens (`gs://...`).
    config: if given, the tree must have exactly the parameters and shapes of
      `Transformer(config)`; a `ValueError` names the first one that differs.
    dtype: floating-point leaves are cast to this dtype (None keeps the dtype
      they were saved with, e.g. bfloat16).

  Returns:
    Nested dict of NumPy arrays with T5X's parameter names.

  Raises:
    FileNotFoundError: `path` does not exist or holds no T5X checkpoint.
    ValueError: the checkpoint cannot be read, or does not fit `config`.
  """
  kind, location = _locate(as_path(path))
  params = _read_orbax_target(location) if kind == 'orbax' else _read_legacy_target(location)
  if dtype is not None:
    params = jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
  if config is not None:
    check_params_fit_config(params, config)
  return params


def _read_orbax_target(state_dir: Path) -> dict[str, Any]:
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True)
  try:
    tree = handler.metadata(state_dir).tree
  except Exception as err:  # orbax raises assorted types for unreadable metadata
    raise ValueError(f'cannot read Orbax checkpoint metadata in {state_dir}: {err}') from err
  if not isinstance(tree, Mapping) or 'target' not in tree:
    keys = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    raise ValueError(f'Orbax checkpoint {state_dir} has no T5X "target" tree (top level: {keys})')
  item = {'target': tree['target']}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  try:
    restored = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  except Exception as err:
    raise ValueError(f'cannot read the arrays of Orbax checkpoint {state_dir}: {err}') from err
  return _unfreeze(restored['target'])


def _read_legacy_target(msgpack_file: Path) -> dict[str, Any]:
  try:
    contents = serialization.msgpack_restore(msgpack_file.read_bytes())
  except Exception as err:  # msgpack raises several unrelated exception types
    raise ValueError(f'cannot read legacy T5X checkpoint file {msgpack_file}: {err}') from err
  if not isinstance(contents, Mapping):
    raise ValueError(f'legacy T5X checkpoint file {msgpack_file} does not hold a state dict')
  # Version >= 1 nests the train state under 'optimizer'; version 0 (plain
  # Flax) stores it at the top level.
  state = contents.get('optimizer', contents) if contents.get('version', 0) else contents
  if not isinstance(state, Mapping) or 'target' not in state:
    raise ValueError(f'legacy T5X checkpoint {msgpack_file} has no "target" tree')
  flat = traverse_util.flatten_dict(state['target'], sep='/',
                                    is_leaf=lambda _, v: _is_ts_spec(v))
  pending = {name: _open_tensorstore(leaf, msgpack_file.parent, name)
             for name, leaf in flat.items() if _is_ts_spec(leaf)}
  arrays = {}
  for name, leaf in flat.items():
    if name in pending:
      try:
        arrays[name] = np.asarray(pending[name].result().read().result())
      except Exception as err:  # TensorStore reports I/O and format errors alike
        raise ValueError(f'cannot read parameter {name!r} of legacy T5X checkpoint '
                         f'{msgpack_file.parent}: {err}') from err
    else:
      arrays[name] = np.asarray(leaf)
  return traverse_util.unflatten_dict(arrays, sep='/')


def _is_ts_spec(value: Any) -> bool:
  return isinstance(value, Mapping) and _TS_SPEC_KEYS <= set(value)


def tensorstore_kvstore(directory: str | os.PathLike) -> dict[str, str]:
  """The TensorStore key-value store of `directory`: `file`, or `gcs` for gs://bucket/path."""
  directory = os.fspath(directory).rstrip('/') + '/'
  if directory.startswith('gs://'):
    bucket, _, prefix = directory[len('gs://'):].partition('/')
    return {'driver': 'gcs', 'bucket': bucket, 'path': prefix}
  if is_url(directory):
    raise ValueError(f'legacy T5X checkpoints can be read from local paths and gs:// only, '
                     f'got {directory}')
  return {'driver': 'file', 'path': directory}


def _open_tensorstore(spec: Mapping[str, Any], ckpt_dir: Path, name: str) -> Any:
  """Opens (asynchronously) a legacy array whose spec path is relative to `ckpt_dir`."""
  spec = dict(spec)
  kvstore = dict(spec['kvstore'])
  # tensorstore >= 0.1.14 keeps the path in the kvstore, older specs at the top
  # level; checkpoints written to GCS name the bucket they were written to, which
  # may since have been copied elsewhere. Either way the path is relative to the
  # step directory, so read it from where the checkpoint is now.
  relative = kvstore.get('path') or spec.pop('path', None)
  if not relative:
    raise ValueError(f'legacy T5X checkpoint {ckpt_dir}: no path in the TensorStore spec of '
                     f'{name!r}: {spec}')
  spec.pop('path', None)
  spec['kvstore'] = tensorstore_kvstore(ckpt_dir / relative)
  # Chunking and compression are read from the stored .zarray (as T5X does).
  spec['metadata'] = {k: v for k, v in spec['metadata'].items()
                      if k not in ('chunks', 'compressor')}
  return ts.open(spec, open=True, read=True)


# ------------------------------------------------------------------------------
# Checking a tree against a config.
# ------------------------------------------------------------------------------


def param_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
  """`{'encoder/layers_0/...': shape}` of every parameter of `Transformer(config)`."""
  tokens = jnp.ones((1, 1), jnp.int32)
  variables = jax.eval_shape(
      lambda: Transformer(config).init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                       enable_dropout=False))
  flat = traverse_util.flatten_dict(_unfreeze(variables['params']), sep='/')
  return {name: tuple(leaf.shape) for name, leaf in flat.items()}


def check_params_fit_config(params: PyTree, config: T5Config) -> None:
  """Raises a `ValueError` naming the first parameter that `config` does not expect.

  Compares names and shapes (not dtypes) against `Transformer(config)`.
  """
  expected = param_shapes(config)
  actual = {name: tuple(np.shape(leaf))
            for name, leaf in traverse_util.flatten_dict(_unfreeze(params), sep='/').items()}
  mismatches = []
  for name in sorted(expected.keys() | actual.keys()):
    if name not in actual:
      mismatches.append(f'parameter {name!r} (shape {expected[name]}) is missing from the '
                        'checkpoint')
    elif name not in expected:
      mismatches.append(f'the checkpoint has parameter {name!r} (shape {actual[name]}), which '
                        'the config does not')
    elif expected[name] != actual[name]:
      mismatches.append(f'parameter {name!r} has shape {actual[name]} in the checkpoint but '
                        f'{expected[name]} for the config')
  if mismatches:
    raise ValueError(f'checkpoint parameters do not fit the T5Config: {mismatches[0]} '
                     f'({len(mismatches)} mismatching parameter(s) in all; config: {config})')


__all__ = ['save_t5x_checkpoint', 'load_t5x_params', 'checkpoint_steps', 'step_dir',
           'param_shapes', 'check_params_fit_config', 'as_path', 'is_url',
           'tensorstore_kvstore']
