"""The one drafter registry: a `DrafterSpec` (kind, file, options) becomes a `Drafter`.

The sweep (`specdec_t5x.sweep`) resolves its config's paths into specs, and
the T5X model's gin factories (`specdec_t5x.t5x_drafting`) write them; both
build through `build_drafter`. Kinds (`BUILDERS`):

* `model`: `path` is a T5X checkpoint of the draft, `config` its `T5Config`
  (None: the `model` entry of the `train_config.json` training wrote beside
  it). Loaded by `load_model(path, config) -> (module, params)`, by default
  `load_checkpoint`; option `logits_dtype` ('float32', 'bfloat16' or 'int8') stores
  its logits layer so (`model.with_logits_dtype`).
* `unigram`, `bigram`: `path` is an n-gram counts file (`ngram.save_counts`);
  option `smoothing`, the add-k (default `ngram.DEFAULT_SMOOTHING`).
* `pass`: `path` is a PaSS look-ahead file (`lookahead.save_lookahead`),
  checked against the target's shapes (and its weights when `target_params`
  are given); option `num_lookahead` L keeps the file's first L embeddings.
* `factory`: option `factory = 'package.module:function'`, a builder with the
  signature of `BUILDERS`' values, for drafts defined outside the package.

A draft whose files are not made yet raises `DraftUnavailable`, saying how to
make them (the sweep skips its cells); a spec that cannot work at all (a bad
option, a file for another target, another vocabulary) raises `ValueError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from specdec_t5x import network
from specdec_t5x.drafters import base
from specdec_t5x.drafters import model as model_lib
from specdec_t5x.drafters.model import ModelDrafter

PyTree = Any


class DraftUnavailable(Exception):
  """A draft cannot be built here yet: its files are not made (the message says how)."""


@dataclasses.dataclass(frozen=True)
class DrafterSpec:
  """What to build: a kind of `BUILDERS`, its file, and kind options (see the module docstring).

  Attributes:
    kind: 'model', 'unigram', 'bigram', 'pass' or 'factory'.
    path: model: a T5X checkpoint directory; unigram/bigram: a counts `.npz`;
      pass: a look-ahead `.npz`; factory: whatever the factory reads.
    config: model: the draft's `T5Config` (None: train_config.json beside it).
    options: logits_dtype (model), smoothing (n-gram), num_lookahead (pass),
      factory (factory).
  """

  kind: str
  path: str | None = None
  config: network.T5Config | None = None
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


ModelLoader = Callable[[str, network.T5Config | None], tuple[nn.Module, PyTree]]
Builder = Callable[[DrafterSpec, nn.Module, PyTree | None, ModelLoader], base.Drafter]


def build_drafter(spec: DrafterSpec, target_module: nn.Module, target_params: PyTree | None, *,
                  gamma: int | None = None,
                  load_model: ModelLoader | None = None) -> base.Drafter:
  """The drafter of `spec` for a target, checked to share its vocabulary.

  Args:
    spec: what to build.
    target_module: the target `Transformer` (its config: vocabulary, shapes).
    target_params: its parameters, or None where they are not known yet (T5X
      restores them after the model is configured): a PaSS file's target
      fingerprint is then not checked.
    gamma: if given, the drafter for blocks of γ tokens (`for_gamma`).
    load_model: how a model draft is loaded (the sweep caches its models);
      default `load_checkpoint`.

  Raises:
    DraftUnavailable: the draft's files are missing, or a look-ahead drafter
      has fewer than γ positions.
    ValueError: an unknown kind, a bad spec, or a draft for another vocabulary.
  """
  if spec.kind not in BUILDERS:
    raise ValueError(f'unknown drafter kind {spec.kind!r}; known kinds: {sorted(BUILDERS)}')
  drafter = BUILDERS[spec.kind](spec, target_module, target_params,
                                load_model or load_checkpoint)
  base.check_vocab_compatible(target_module.config.vocab_size, drafter.vocab_size)
  return drafter if gamma is None else for_gamma(drafter, gamma)


def for_gamma(drafter: base.Drafter, gamma: int) -> base.Drafter:
  """The drafter for blocks of γ: a look-ahead drafter keeps only its first γ positions.

  Every extra position rides along each target call, so the ones past γ would
  cost scoring work and draft nothing.

  Raises:
    DraftUnavailable: the drafter has fewer than γ look-ahead positions.
  """
  extra = base.num_extra_positions(drafter)
  if not extra:
    return drafter
  if extra < gamma:
    raise DraftUnavailable(f'the drafter has {extra} look-ahead positions, fewer than γ={gamma}')
  return drafter.truncated(gamma) if extra > gamma else drafter


# ------------------------------------------------------------------------------
# Model drafts.
# ------------------------------------------------------------------------------


def train_config_fields(checkpoint: str) -> dict[str, Any]:
  """The `model` entry of the `train_config.json` in, or up to two levels above, `checkpoint`.

  Training writes it into the model directory; a `checkpoint_<step>` sits in
  that directory (Orbax: one level deeper).

  Raises:
    ValueError: no such file.
  """
  from specdec_t5x import checkpoints  # orbax / tensorstore: on use

  path = checkpoints.as_path(checkpoint)
  for directory in (path, path.parent, path.parent.parent):
    candidate = directory / 'train_config.json'
    if candidate.is_file():
      return dict(json.loads(candidate.read_text())['model'])
  raise ValueError(f'no config given and no train_config.json beside checkpoint {path}: '
                   'give the draft\'s T5Config')


def _config_beside(checkpoint: str) -> network.T5Config:
  fields = train_config_fields(checkpoint)
  if 'mlp_activations' in fields:
    fields['mlp_activations'] = tuple(fields['mlp_activations'])
  if 'dtype' in fields:
    fields['dtype'] = jnp.dtype(fields['dtype'])
  return network.T5Config(**fields)


def load_checkpoint(path: str, config: network.T5Config | None) -> tuple[nn.Module, PyTree]:
  """The default `ModelLoader`: a T5X checkpoint (local or gs://) as jax arrays.

  Raises:
    DraftUnavailable: nothing at `path`.
    ValueError: no config and no train_config.json, or parameters that do not
      fit the config.
  """
  from specdec_t5x import checkpoints  # orbax / tensorstore: on use

  if not checkpoints.as_path(path).exists():
    raise DraftUnavailable(f'no draft checkpoint at {path} (train it first: '
                           'scripts/train_family.py trains the CPU family)')
  config = config if config is not None else _config_beside(path)
  params = checkpoints.load_t5x_params(path, config)
  return network.Transformer(config), jax.tree.map(jnp.asarray, params)


def _model_drafter(spec: DrafterSpec, target_module: nn.Module, target_params: PyTree | None,
                   load_model: ModelLoader) -> base.Drafter:
  del target_module, target_params
  if not spec.path:
    raise ValueError('a drafter of kind "model" needs path: the draft\'s T5X checkpoint')
  unknown = set(spec.options) - {'logits_dtype'}
  if unknown:
    raise ValueError(f'unknown options {sorted(unknown)} for a drafter of kind "model" '
                     '(known: logits_dtype)')
  module, params = load_model(spec.path, spec.config)
  if 'logits_dtype' in spec.options:
    params = model_lib.with_logits_dtype(params, spec.options['logits_dtype'])
  return ModelDrafter(module, params)


# ------------------------------------------------------------------------------
# Drafts from files: n-gram counts, PaSS look-ahead embeddings.
# ------------------------------------------------------------------------------


def _existing_file(spec: DrafterSpec, what: str, how: str) -> str:
  """`spec.path`, checked to be a file; `DraftUnavailable` saying `how` to make it if not."""
  if not spec.path:
    raise ValueError(f'a drafter of kind {spec.kind!r} needs path: its {what} file')
  if not pathlib.Path(spec.path).is_file():
    raise DraftUnavailable(f'no {what} at {spec.path} ({how})')
  return spec.path


def _ngram_drafter(spec: DrafterSpec, target_module: nn.Module, target_params: PyTree | None,
                   load_model: ModelLoader) -> base.Drafter:
  del target_params, load_model
  from specdec_t5x.drafters import ngram

  path = _existing_file(spec, 'n-gram counts',
                        'build them with scripts/build_ngram_drafters.py')
  try:
    counts = ngram.load_counts(path, target_module.config.vocab_size)
  except ImportError as error:  # scipy, the `bench` extra
    raise DraftUnavailable(f'n-gram drafts need scipy (pip install specdec_t5x[bench]): '
                           f'{error}') from error
  smoothing = spec.options.get('smoothing', ngram.DEFAULT_SMOOTHING)
  drafter_cls = ngram.UnigramDrafter if spec.kind == 'unigram' else ngram.BigramDrafter
  return drafter_cls.from_counts(counts, smoothing)


def _pass_drafter(spec: DrafterSpec, target_module: nn.Module, target_params: PyTree | None,
                  load_model: ModelLoader) -> base.Drafter:
  del load_model
  from specdec_t5x.drafters import lookahead

  path = _existing_file(spec, 'PaSS look-ahead embeddings',
                        'train them with scripts/train_pass.py')
  drafter = lookahead.load_pass_drafter(path, target_module, target_params)
  num_lookahead = spec.options.get('num_lookahead')
  if num_lookahead is None or num_lookahead == drafter.num_extra_positions:
    return drafter
  if (isinstance(num_lookahead, bool) or not isinstance(num_lookahead, int)
      or not 1 <= num_lookahead <= drafter.num_extra_positions):
    raise ValueError(f'options.num_lookahead={num_lookahead!r}, but the look-ahead file {path} '
                     f'holds {drafter.num_extra_positions} embeddings')
  return drafter.truncated(num_lookahead)


def _factory_drafter(spec: DrafterSpec, target_module: nn.Module, target_params: PyTree | None,
                     load_model: ModelLoader) -> base.Drafter:
  """Kind `factory`: `options['factory'] = 'pkg.module:function'`, called as a builder."""
  name = spec.options.get('factory')
  if not isinstance(name, str) or ':' not in name:
    raise ValueError(f'a drafter of kind "factory" needs options.factory = '
                     f'"package.module:function", got {name!r}')
  module_name, function_name = name.split(':', 1)
  try:
    function = getattr(importlib.import_module(module_name), function_name)
  except (ImportError, AttributeError) as error:
    raise DraftUnavailable(f'{name} cannot be imported: {error}') from error
  return function(spec, target_module, target_params, load_model)


BUILDERS: dict[str, Builder] = {
    'model': _model_drafter,
    'unigram': _ngram_drafter,
    'bigram': _ngram_drafter,
    'pass': _pass_drafter,
    'factory': _factory_drafter,
}


__all__ = ['BUILDERS', 'Builder', 'DraftUnavailable', 'DrafterSpec', 'ModelLoader',
           'build_drafter', 'for_gamma', 'load_checkpoint', 'train_config_fields']
