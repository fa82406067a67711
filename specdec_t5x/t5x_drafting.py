"""The draft of `t5x_model.SpeculativeEncoderDecoderModel`: gin factories, loading, placement.

(And `t5_config_from` / `as_specdec_module`, which turn T5X's example network
and a draft's preset name into `specdec_t5x.network`'s.)

Every draft is built through the drafter registry (`specdec_t5x.drafters.registry`):
the gin factories here (`ngram_drafter`, `pass_drafter`; gin/drafts/) return a
`DrafterSpec`, and a `DRAFT_CHECKPOINT` becomes one of kind 'model'. The
model builds the spec once it knows its target network (`build_draft`). T5X
restores the target's parameters only after the model is configured, so a
PaSS file's weight fingerprint is not checked here; its shapes are.

When T5X traces its partitioned step, the draft is cast to the step's dtype
and placed on its mesh (`place_drafter`): replicated, or sharded by the
logical axis rules like the target (`drafter_shardings`).

t5x is not needed to import this module.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as flax_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from specdec_t5x import drafters as drafters_lib
from specdec_t5x import network
from specdec_t5x.drafters import registry

logger = logging.getLogger(__name__)

PyTree = Any

DRAFT_PARTITIONINGS = ('replicated', 'logical')
# Drafts above this size make XLA compile slowly when embedded as constants.
_LARGE_EMBEDDED_DRAFT_BYTES = 256 * 2**20


# ------------------------------------------------------------------------------
# Configs and modules: T5X's example network as ours.
# ------------------------------------------------------------------------------


def t5_config_from(config: Any, **overrides: Any) -> network.T5Config:
  """A `specdec_t5x.network.T5Config` from a preset name, our config or T5X's example config.

  T5X's `t5x.examples.t5.network.T5Config` has the same fields as ours, so it
  converts field by field; a config with fields ours lacks (another network)
  is refused rather than silently misread.
  """
  if isinstance(config, str):
    return network.config_from_preset(config, **overrides)
  if isinstance(config, network.T5Config):
    return config.replace(**overrides) if overrides else config
  if not dataclasses.is_dataclass(config) or isinstance(config, type):
    raise ValueError(f'expected a T5Config or a preset name ({sorted(network.PRESETS)}), got '
                     f'{config!r}')
  ours = {field.name for field in dataclasses.fields(network.T5Config)}
  given = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
  unknown = sorted(set(given) - ours)
  if unknown:
    raise ValueError(f'{type(config).__module__}.{type(config).__name__} has fields '
                     f'{unknown} that specdec_t5x.network.T5Config does not; only T5X\'s example '
                     'T5 network (t5x.examples.t5.network) can be converted')
  return network.T5Config(**{**given, **overrides})


def as_specdec_module(module: Any) -> network.Transformer:
  """`module` as `specdec_t5x.network.Transformer` (T5X's example network is converted).

  Both have the same parameter tree, logical axes and outputs; ours also has a
  decode cache that takes several query positions per call.
  """
  if isinstance(module, network.Transformer):
    return module
  config = getattr(module, 'config', None)
  if config is None:
    raise ValueError(f'cannot run speculative decoding with {type(module).__name__}: expected '
                     'specdec_t5x.network.Transformer or T5X\'s example T5 network')
  return network.Transformer(t5_config_from(config))


# ------------------------------------------------------------------------------
# Gin factories and building through the registry.
# ------------------------------------------------------------------------------


def ngram_drafter(counts_path: str, order: int = 2,
                  smoothing: float | None = None) -> registry.DrafterSpec:
  """The unigram (`order` 1) or bigram (2) draft of a counts file, for gin (gin/drafts/).

  The file is what `specdec_t5x.drafters.ngram.save_counts` writes (built by
  scripts/build_ngram_drafters.py); the model checks its vocabulary against
  the target's. `smoothing` None is the module's default add-k.
  """
  if order not in (1, 2):
    raise ValueError(f'order must be 1 (unigram) or 2 (bigram), got {order!r}')
  options = {} if smoothing is None else {'smoothing': smoothing}
  return registry.DrafterSpec(kind='unigram' if order == 1 else 'bigram',
                              path=str(counts_path), options=options)


def pass_drafter(lookahead_path: str,
                 num_lookahead: int | None = None) -> registry.DrafterSpec:
  """The PaSS draft of a look-ahead file, for gin (gin/drafts/pass.gin).

  The file is what scripts/train_pass.py writes for the target checkpoint
  (`pass_lookahead_L<L>.npz` beside it). `num_lookahead` None keeps all L
  embeddings; the model keeps only the first γ (`registry.for_gamma`), and
  refuses γ > L.
  """
  options = {} if num_lookahead is None else {'num_lookahead': num_lookahead}
  return registry.DrafterSpec(kind='pass', path=str(lookahead_path), options=options)


def model_draft_spec(checkpoint: str | None, config: Any,
                     target_config: network.T5Config) -> registry.DrafterSpec:
  """The spec of a `DRAFT_CHECKPOINT` with its `DRAFT_CONFIG` (preset name or `T5Config`).

  A preset draft computes in the target's dtype (bfloat16 on TPU, float32 on CPU).
  """
  overrides = {'dtype': target_config.dtype} if isinstance(config, str) else {}
  config = t5_config_from(config, **overrides)
  if not checkpoint:
    raise ValueError('the draft checkpoint path is empty; set DRAFT_CHECKPOINT')
  return registry.DrafterSpec(kind='model', path=str(checkpoint), config=config)


def load_draft_checkpoint(path: str, config: network.T5Config | None, *,
                          params_dtype: Any = None) -> tuple[network.Transformer, PyTree]:
  """The registry's `ModelLoader` for T5X: a draft checkpoint (Orbax or legacy) as host arrays.

  Args:
    path: a `checkpoint_<step>` directory (or the model directory above it),
      local or a URL that `etils.epath` opens (gs://...).
    config: the draft's `T5Config`.
    params_dtype: dtype the parameters are kept in; None keeps the stored one.

  Raises:
    ValueError: the checkpoint is missing, unreadable, or does not fit `config`.
  """
  from specdec_t5x import checkpoints as checkpoints_lib  # orbax/tensorstore: load on use

  if config is None:
    raise ValueError(f'draft checkpoint {path!r} needs draft_config')
  try:
    params = checkpoints_lib.load_t5x_params(path, config, dtype=params_dtype)
  except FileNotFoundError as err:
    hint = ('; remote paths are opened through etils.epath: check the URL and that this '
            'machine may read it (`gcloud storage ls`)' if checkpoints_lib.is_url(path) else '')
    raise ValueError(f'draft checkpoint {path!r} not found: {err}{hint}') from err
  except ValueError as err:
    raise ValueError(f'cannot use draft checkpoint {path!r}: {err}') from err
  return network.Transformer(config), params


def build_draft(draft: Any, target_module: network.Transformer, gamma: int, *,
                params_dtype: Any = None) -> drafters_lib.Drafter:
  """`draft` as a drafter: a `DrafterSpec` is built through the registry, a drafter kept.

  Raises:
    ValueError: the spec cannot be built (its files missing, γ beyond a PaSS
      file's L, another vocabulary, ...).
  """
  if not isinstance(draft, registry.DrafterSpec):
    return draft
  load_model = functools.partial(load_draft_checkpoint, params_dtype=params_dtype)
  try:
    return registry.build_drafter(draft, target_module, None, gamma=gamma,
                                  load_model=load_model)
  except registry.DraftUnavailable as err:
    raise ValueError(f'cannot build the {draft.kind!r} draft: {err}') from err


# ------------------------------------------------------------------------------
# Placement on T5X's mesh.
# ------------------------------------------------------------------------------


def active_mesh() -> jax.sharding.Mesh | None:
  """The mesh T5X's partitioned step runs under, or None outside one.

  T5X enters it with the legacy `with Mesh(...)` context (t5x/partitioning.py,
  `PjittedFnWithContext`), which only `thread_resources` exposes.
  """
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    from jax.interpreters import pxla

    mesh = pxla.thread_resources.env.physical_mesh
  return None if mesh.empty else mesh


def floating_dtype(tree: PyTree) -> Any:
  """The dtype of the first floating-point leaf of `tree` (float32 if it has none)."""
  for leaf in jax.tree.leaves(tree):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.dtype
  return jnp.float32


def with_params_dtype(drafter: Any, dtype: Any) -> Any:
  """A `ModelDrafter` with its floating-point parameters as host arrays of `dtype`.

  Other drafters keep their arrays as built (an n-gram table's counts would
  lose precision in bfloat16).
  """
  if not isinstance(drafter, drafters_lib.ModelDrafter):
    return drafter

  def cast(leaf):
    if not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == dtype:
      return leaf
    return np.asarray(leaf).astype(dtype)
  return drafter.replace(params=jax.tree.map(cast, drafter.params))


def tree_nbytes(tree: PyTree) -> int:
  return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def _draft_param_specs(drafter: drafters_lib.ModelDrafter, rules: Any) -> PyTree:
  """PartitionSpecs of a model draft's parameters under the logical axis `rules`."""
  tokens = jnp.ones((1, 1), jnp.int32)
  variables = jax.eval_shape(lambda: drafter.module.init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False))
  names = flax_partitioning.get_axis_names(variables['params_axes'])
  return jax.tree.map(lambda axes: flax_partitioning.logical_to_mesh_axes(axes, rules), names,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def drafter_shardings(drafter: Any, mesh: jax.sharding.Mesh, partitioning: str,
                      rules: Any = ()) -> PyTree:
  """Shardings (a tree like `drafter`) that place a draft on `mesh`.

  'replicated' copies it to every device: a small draft is latency-bound, and
  sharding it would add collectives to each of its γ sequential steps.
  'logical' shards a `ModelDrafter`'s parameters by their logical axes under
  `rules` like the target's (other drafters stay replicated).
  """
  if partitioning not in DRAFT_PARTITIONINGS:
    raise ValueError(f'draft_partitioning must be one of {DRAFT_PARTITIONINGS}, got '
                     f'{partitioning!r}')
  replicated = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), drafter)
  if partitioning == 'replicated' or not isinstance(drafter, drafters_lib.ModelDrafter):
    return replicated
  specs = _draft_param_specs(drafter, rules)
  params = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))
  return replicated.replace(params=params)


def place_drafter(drafter: Any, dtype: Any, mesh: jax.sharding.Mesh | None, partitioning: str,
                  rules: Any = ()) -> Any:
  """The draft in `dtype` and, inside a partitioned step, on its `mesh`."""
  drafter = with_params_dtype(drafter, dtype)
  if mesh is None:
    return drafter
  shardings = drafter_shardings(drafter, mesh, partitioning, rules)
  # This runs while T5X traces its partitioned step: transfer the host arrays
  # now instead of staging the transfer into the program.
  with jax.ensure_compile_time_eval():
    drafter = jax.device_put(drafter, shardings)
  nbytes = tree_nbytes(drafter)
  hoisted = getattr(jax.config, 'jax_use_simplified_jaxpr_constants', True)
  if nbytes > _LARGE_EMBEDDED_DRAFT_BYTES and not hoisted:
    logger.warning('The draft has %.0f MB of arrays, which JAX embeds in the compiled step; '
                   'set JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS=true to pass them as device '
                   'buffers instead (docs/t5x.md).', nbytes / 2**20)
  return drafter


__all__ = [
    'DRAFT_PARTITIONINGS', 'active_mesh', 'as_specdec_module', 'build_draft',
    'drafter_shardings', 'floating_dtype', 'load_draft_checkpoint', 'model_draft_spec',
    'ngram_drafter', 'pass_drafter', 'place_drafter', 't5_config_from', 'tree_nbytes',
    'with_params_dtype',
]
