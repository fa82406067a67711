"""What a sweep loads: models, inputs and drafters, each on first use and kept for the run.

Drafters are built by the one registry (`specdec_t5x.drafters.registry`); this
module only resolves a config's draft entry (path templates, per-task default
files beside the target checkpoint) into a `registry.DrafterSpec`, and hands the
registry a model loader that reuses the models this run already loaded.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from specdec_t5x import checkpoints, drafters, network
from specdec_t5x.drafters import registry
from specdec_t5x.sweep.config import (
  EOS_ID,
  DraftSpec,
  ModelSpec,
  SweepConfig,
  TaskSpec,
  expand_path,
)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  name: str
  module: network.Transformer
  params: Any  # jax arrays, so no timed call pays a host-to-device copy
  config: network.T5Config
  checkpoint: str
  num_params: int


def model_config(spec: ModelSpec, checkpoint: str) -> network.T5Config:
  """The `T5Config` of a model entry: preset or train_config.json, then overrides (fp32)."""
  if spec.preset is not None:
    fields = dict(network.PRESETS[spec.preset])
  else:
    try:
      fields = registry.train_config_fields(checkpoint)
    except ValueError as error:
      raise ValueError(f'{error}; or set models.<name>.preset') from error
  fields.update(spec.overrides)
  if 'mlp_activations' in fields:
    fields['mlp_activations'] = tuple(fields['mlp_activations'])
  fields['dtype'] = jnp.float32  # the CPU runs are fp32
  return network.T5Config(**fields)


def _load(spec: ModelSpec, checkpoint: str,
          t5_config: network.T5Config | None = None) -> LoadedModel:
  if not checkpoints.as_path(checkpoint).exists():
    raise FileNotFoundError(f'checkpoint of model {spec.name!r} not found: {checkpoint}')
  t5_config = t5_config or model_config(spec, checkpoint)
  params = checkpoints.load_t5x_params(checkpoint, t5_config, dtype=np.float32)
  params = jax.tree.map(jnp.asarray, params)
  num_params = int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
  return LoadedModel(spec.name, network.Transformer(t5_config), params, t5_config, checkpoint,
                     num_params)


def load_model(spec: ModelSpec, config_dir: str, task: str | None = None) -> LoadedModel:
  """Loads a model entry's checkpoint as jax arrays, checked against its config."""
  return _load(spec, expand_path(spec.checkpoint, config_dir, task))


# Auto cells calibrate on this split's inputs; the timed inputs come from the task's `split`.
CALIBRATION_SPLIT = 'validation'


def synthetic_inputs(count: int, length: int, vocab_size: int, seed: int) -> np.ndarray:
  """`[count, length]` random ids in [2, vocab), EOS-terminated, ragged right padding."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((count, length), np.int32)
  for row in range(count):
    size = int(rng.integers(max(1, length // 2), length + 1))
    tokens[row, :size - 1] = rng.integers(2, vocab_size, size - 1)
    tokens[row, size - 1] = EOS_ID
  return tokens


def trim_padding(tokens: np.ndarray, multiple: int = 8) -> np.ndarray:
  """Drops padding columns beyond the longest row (rounded up to `multiple`), `[n, L']`."""
  longest = int((tokens > 0).sum(axis=1).max())
  width = min(tokens.shape[1], -(-longest // multiple) * multiple)
  return tokens[:, :width]


def task_inputs(task: TaskSpec, count: int, seed: int) -> np.ndarray:
  """The first `count` evaluation inputs of a task, `[count, L]` int32, 0-padded."""
  if task.synthetic is not None:
    return synthetic_inputs(count, task.synthetic['length'], task.synthetic['vocab_size'], seed)
  from specdec_t5x.data import tasks as tasks_lib  # TensorFlow: only when real data is used

  examples = tasks_lib.get_eval_examples(task.seqio_task, task.split, count)
  return trim_padding(np.asarray(examples['inputs'], np.int32))


def calibration_inputs(task: TaskSpec, count: int, length: int, seed: int) -> np.ndarray:
  """`[count, length]` inputs from outside the timed ones: the task's `CALIBRATION_SPLIT`.

  Auto cells measure their cost profile and prior α on these, so that no
  timed batch is decoded before it is timed (synthetic tasks: other random ids).
  """
  if task.synthetic is not None:
    return synthetic_inputs(count, length, task.synthetic['vocab_size'], seed + 1)
  from specdec_t5x.data import tasks as tasks_lib  # TensorFlow: only when real data is used

  lengths = {**tasks_lib.feature_lengths(task.seqio_task), 'inputs': length}
  examples = tasks_lib.get_eval_examples(task.seqio_task, CALIBRATION_SPLIT, count, lengths)
  return np.asarray(examples['inputs'], np.int32)


def _inputs_needed(config: SweepConfig, task: str) -> int:
  counts = [spec.num_inputs for spec in (config.grid, config.throughput)
            if spec is not None and task in spec.tasks]
  if config.peer_hf is not None and task in config.peer_hf.tasks:
    counts.append(config.peer_hf.num_inputs)
  return max(counts, default=1)


def _target_model_dir(target: LoadedModel) -> pathlib.Path:
  """The target's model directory (a `checkpoint_<step>` path gives its parent)."""
  model_dir = pathlib.Path(target.checkpoint)
  if checkpoints.checkpoint_steps(model_dir) == [] and model_dir.name.startswith('checkpoint'):
    model_dir = model_dir.parent
  return model_dir


def _draft_file(spec: DraftSpec, option: str, config: SweepConfig, task: str,
                default: pathlib.Path) -> str:
  if option in spec.options:
    return expand_path(spec.options[option], config.config_dir, task)
  return str(default)


class SweepContext:
  """What cells share within one run: loaded models, inputs and built drafters."""

  def __init__(self, config: SweepConfig):
    self.config = config
    self._models: dict[tuple[str, str], LoadedModel] = {}
    self._inputs: dict[str, np.ndarray] = {}
    self._drafters: dict[tuple[str, str], drafters.Drafter | registry.DraftUnavailable] = {}

  def model(self, name: str, task: str) -> LoadedModel:
    """Model `name` for `task` (checkpoint paths may depend on the task)."""
    spec = self.config.models[name]
    resolved = expand_path(spec.checkpoint, self.config.config_dir, task)
    if (name, resolved) not in self._models:
      self._models[(name, resolved)] = load_model(spec, self.config.config_dir, task)
    return self._models[(name, resolved)]

  def target(self, task: str) -> LoadedModel:
    return self.model(self.config.target, task)

  def load_checkpoint(self, path: str,
                      t5_config: network.T5Config | None) -> tuple[nn.Module, Any]:
    """The registry's `ModelLoader`: a model this run loaded already, else loaded now and kept."""
    for loaded in self._models.values():
      if loaded.checkpoint == path and (t5_config is None or t5_config == loaded.config):
        return loaded.module, loaded.params
    # Not a models entry: its config is the given one or the train_config.json beside it.
    loaded = _load(ModelSpec(name=path, checkpoint=path), path, t5_config)
    self._models[(path, path)] = loaded
    return loaded.module, loaded.params

  def inputs(self, task: str, count: int) -> np.ndarray:
    """The task's first `count` inputs `[count, L]`; every section reads the same ones."""
    if task not in self._inputs:
      needed = max(count, _inputs_needed(self.config, task))
      self._inputs[task] = task_inputs(self.config.tasks[task], needed, self.config.seed)
    if self._inputs[task].shape[0] < count:
      raise ValueError(f'task {task} has {self._inputs[task].shape[0]} inputs loaded, '
                       f'{count} needed')
    return self._inputs[task][:count]

  def calibration_inputs(self, task: str, count: int, length: int) -> np.ndarray:
    """`[count, length]` inputs of `task` that no cell times (`calibration_inputs`)."""
    return calibration_inputs(self.config.tasks[task], count, length, self.config.seed)

  def drafter_spec(self, draft: str, task: str) -> registry.DrafterSpec:
    """A draft entry for `task` as the registry's spec: its files' paths resolved."""
    spec = self.config.drafts[draft]
    options = {k: v for k, v in spec.options.items() if k not in ('counts', 'lookahead')}
    if spec.kind == 'model':
      if spec.model is None:
        raise ValueError(f'draft {spec.name!r} of kind "model" needs "model": a models entry')
      model = self.model(spec.model, task)
      return registry.DrafterSpec('model', path=model.checkpoint, config=model.config,
                                  options=options)
    if spec.kind in ('unigram', 'bigram'):
      from specdec_t5x.training import ngram_counts

      default = ngram_counts.default_counts_path(self.config.tasks[task].seqio_task or task)
      path = _draft_file(spec, 'counts', self.config, task, default)
      return registry.DrafterSpec(spec.kind, path=path, options=options)
    if spec.kind == 'pass':
      from specdec_t5x.drafters import lookahead

      default = lookahead.default_lookahead_path(_target_model_dir(self.target(task)),
                                                 spec.options.get('num_lookahead', 6))
      path = _draft_file(spec, 'lookahead', self.config, task, default)
      return registry.DrafterSpec('pass', path=path, options=options)
    return registry.DrafterSpec(spec.kind, options=options)

  def drafter(self, draft: str, task: str) -> drafters.Drafter:
    """The drafter of a draft entry for `task`; raises `DraftUnavailable` with the reason.

    Built once for all γ: a cell truncates a look-ahead drafter with `registry.for_gamma`.
    """
    if (draft, task) not in self._drafters:
      target = self.target(task)
      try:
        self._drafters[(draft, task)] = registry.build_drafter(
            self.drafter_spec(draft, task), target.module, target.params,
            load_model=self.load_checkpoint)
      except registry.DraftUnavailable as reason:
        self._drafters[(draft, task)] = reason
    built = self._drafters[(draft, task)]
    if isinstance(built, registry.DraftUnavailable):
      raise built
    return built

  def draft_params(self, draft: str, task: str) -> int | None:
    spec = self.config.drafts[draft]
    return self.model(spec.model, task).num_params if spec.model else None
