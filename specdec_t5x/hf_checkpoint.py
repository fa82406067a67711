"""A Hugging Face T5 directory as a T5X checkpoint, with the files t5x.infer and the sweep read.

`convert_hf_checkpoint(hf_dir, out_dir)` reads `config.json` and the weights
(`model.safetensors`, `pytorch_model.bin`, or their sharded `*.index.json`) of a
`T5ForConditionalGeneration` (T5 1.1 / Flan-T5: gated-gelu, untied `lm_head`;
T5 1.0: relu, logits through the scaled embedding) and writes::

  <out_dir>/checkpoint_<step>/   the T5X Orbax checkpoint (float32 parameters)
  <out_dir>/train_config.json    {'model': T5Config fields, 'source': ...}: the
                                 sweep (`sweep.loading.model_config`) and the drafter
                                 registry (`registry.train_config_fields`) read it
                                 when no preset / config is given
  <out_dir>/draft.gin            DRAFT_CHECKPOINT and DRAFT_CONFIG for t5x.infer,
                                 parsed after gin/speculative.gin
  <out_dir>/model.gin            MODEL for t5x.infer with this model as the target

Reading needs neither torch nor transformers for safetensors (torch only for
`.bin` files): `config.json` is read the way transformers' `T5Config` reads it
(`hf_config_view`), and `hf_convert` maps the tensors.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import types
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from specdec_t5x import checkpoints, hf_convert, network
from specdec_t5x.drafters import base

CONFIG_FILE = 'config.json'
TRAIN_CONFIG_FILE = 'train_config.json'  # registry.train_config_fields reads this name
DRAFT_GIN_FILE = 'draft.gin'
MODEL_GIN_FILE = 'model.gin'
SPIECE_FILE = 'spiece.model'
DEFAULT_EXTRA_IDS = 100  # transformers' T5Tokenizer default
# Weight files in the order transformers prefers them.
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                'pytorch_model.bin.index.json')
ARCHITECTURES = ('T5ForConditionalGeneration', 'T5WithLMHeadModel')  # the latter: T5 1.0 era
# The gin scope of the draft's config: unscoped it would also rebind a target
# model file's `network.T5Config` (gin/models/*.gin use the same class).
DRAFT_SCOPE = 'draft'


@dataclasses.dataclass(frozen=True)
class Converted:
  """What `convert_hf_checkpoint` wrote."""

  config: network.T5Config
  checkpoint: pathlib.Path  # <out_dir>/checkpoint_<step>
  train_config: pathlib.Path
  draft_gin: pathlib.Path
  model_gin: pathlib.Path


# ------------------------------------------------------------------------------
# config.json.
# ------------------------------------------------------------------------------


def read_hf_config(hf_dir: str | pathlib.Path) -> dict[str, Any]:
  """`config.json` of a Hugging Face T5 directory, checked to be a T5 encoder-decoder.

  Raises:
    ValueError: no config.json, or a model other than `T5ForConditionalGeneration`.
  """
  path = pathlib.Path(hf_dir) / CONFIG_FILE
  if not path.is_file():
    raise ValueError(f'{hf_dir} is not a Hugging Face model directory: it has no {CONFIG_FILE}')
  raw = json.loads(path.read_text())
  if raw.get('model_type') != 't5':
    raise ValueError(f'{path}: model_type={raw.get("model_type")!r}; only Hugging Face T5 '
                     "(model_type 't5', T5ForConditionalGeneration) converts")
  architectures = raw.get('architectures') or list(ARCHITECTURES[:1])
  unknown = [name for name in architectures if name not in ARCHITECTURES]
  if unknown:
    raise ValueError(f'{path}: architectures={architectures}; only {list(ARCHITECTURES)} '
                     'convert (an encoder-decoder with its language-model head)')
  return raw


def hf_config_view(raw: Mapping[str, Any]) -> types.SimpleNamespace:
  """The attributes `hf_convert.t5_config_from_hf_config` reads, set as transformers sets them.

  Defaults are `transformers.T5Config`'s; `feed_forward_proj` 'gated-gelu' means
  the tanh GELU ('gelu_new'); the output scaling is `scale_decoder_outputs` if
  saved (transformers >= 5), else 'tied' (`tie_word_embeddings`, default True).
  """
  proj = raw.get('feed_forward_proj', 'relu')
  parts = proj.split('-')
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != 'gated'):
    raise ValueError(f"feed_forward_proj={proj!r} is not a T5 layout ('act' or 'gated-act')")
  activation = 'gelu_new' if proj == 'gated-gelu' else parts[-1]
  num_layers = raw.get('num_layers', 6)
  scale = raw.get('scale_decoder_outputs', raw.get('tie_word_embeddings', True) is not False)
  return types.SimpleNamespace(
      vocab_size=raw.get('vocab_size', 32128), d_model=raw.get('d_model', 512),
      d_kv=raw.get('d_kv', 64), d_ff=raw.get('d_ff', 2048), num_layers=num_layers,
      num_decoder_layers=(num_layers if raw.get('num_decoder_layers') is None
                          else raw['num_decoder_layers']),
      num_heads=raw.get('num_heads', 8),
      relative_attention_num_buckets=raw.get('relative_attention_num_buckets', 32),
      relative_attention_max_distance=raw.get('relative_attention_max_distance', 128),
      dropout_rate=raw.get('dropout_rate', 0.1),
      layer_norm_epsilon=raw.get('layer_norm_epsilon', 1e-6), feed_forward_proj=proj,
      dense_act_fn=activation, is_gated_act=len(parts) == 2,
      tie_word_embeddings=True, scale_decoder_outputs=bool(scale))


def t5_config_from_hf_dir(hf_dir: str | pathlib.Path, dtype: Any = jnp.float32) -> network.T5Config:
  """The `network.T5Config` of a Hugging Face T5 directory (computing in `dtype`)."""
  return hf_convert.t5_config_from_hf_config(hf_config_view(read_hf_config(hf_dir)), dtype)


# ------------------------------------------------------------------------------
# Weights.
# ------------------------------------------------------------------------------


def weight_files(hf_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """The weight files of `hf_dir`: one file, or the shards its `*.index.json` names.

  Raises:
    ValueError: none of `WEIGHT_FILES` is there.
  """
  hf_dir = pathlib.Path(hf_dir)
  for name in WEIGHT_FILES:
    path = hf_dir / name
    if not path.is_file():
      continue
    if not name.endswith('.index.json'):
      return [path]
    shards = sorted(set(json.loads(path.read_text())['weight_map'].values()))
    missing = [shard for shard in shards if not (hf_dir / shard).is_file()]
    if missing:
      raise ValueError(f'{path} names shards that are not in {hf_dir}: {missing}')
    return [hf_dir / shard for shard in shards]
  raise ValueError(f'{hf_dir} has no weights: expected one of {list(WEIGHT_FILES)}')


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  arrays = {}
  with safe_open(str(path), framework='np') as numpy_file:
    keys = list(numpy_file.keys())
    # NumPy has no bfloat16: those tensors come through JAX.
    bf16 = {key for key in keys if numpy_file.get_slice(key).get_dtype() == 'BF16'}
    for key in keys:
      if key not in bf16:
        arrays[key] = numpy_file.get_tensor(key)
  if bf16:
    with safe_open(str(path), framework='flax') as jax_file:
      for key in bf16:
        arrays[key] = np.asarray(jax_file.get_tensor(key), np.float32)
  return arrays


def _read_torch(path: pathlib.Path) -> dict[str, Any]:
  try:
    import torch
  except ImportError as error:
    raise ValueError(f'{path} is a PyTorch file, which needs torch to read '
                     f'(pip install torch), or convert a model.safetensors instead') from error
  return dict(torch.load(path, map_location='cpu', weights_only=True))


def read_state_dict(hf_dir: str | pathlib.Path) -> dict[str, Any]:
  """`{hf_key: array or tensor}` of every weight file of `hf_dir` (see `weight_files`)."""
  state = {}
  for path in weight_files(hf_dir):
    state.update(_read_safetensors(path) if path.suffix == '.safetensors' else _read_torch(path))
  return state


def t5x_params_from_hf(state: Mapping[str, Any], config: network.T5Config) -> dict[str, Any]:
  """T5X params of `config` from an HF state dict (float32 ndarrays, `hf_convert`'s checks).

  transformers >= 5 ties every T5's `lm_head` to `shared` and may save no
  `lm_head.weight`: an unscaled head without one computes with `shared`.
  """
  state = dict(state)
  if not config.logits_via_embedding and hf_convert.HF_LM_HEAD_KEY not in state:
    shared = state.get(hf_convert.HF_SHARED_KEY)
    if shared is not None:
      state[hf_convert.HF_LM_HEAD_KEY] = shared
  return hf_convert.hf_state_dict_to_t5x_params(state, config)


# ------------------------------------------------------------------------------
# The target check.
# ------------------------------------------------------------------------------


def target_vocab_size(target: str) -> int:
  """Vocabulary size of `target`: a preset name, an HF directory or a T5X checkpoint.

  A T5X checkpoint's size comes from the train_config.json beside it, else from
  its token embedding.
  """
  if target in network.PRESETS:
    return int(network.PRESETS[target]['vocab_size'])
  path = pathlib.Path(target)
  if (path / CONFIG_FILE).is_file():
    return int(hf_config_view(read_hf_config(path)).vocab_size)
  if not checkpoints.as_path(target).exists():
    raise ValueError(f'target {target!r} is neither a preset ({sorted(network.PRESETS)}) nor an '
                     'existing T5X checkpoint or Hugging Face directory')
  from specdec_t5x.drafters import registry

  try:
    return int(registry.train_config_fields(target)['vocab_size'])
  except (ValueError, KeyError):
    params = checkpoints.load_t5x_params(target)
    return int(np.shape(params['token_embedder']['embedding'])[0])


def check_against_target(config: network.T5Config, target: str) -> None:
  """Raises a `ValueError` unless a draft of `config` can draft for `target` (vocabulary)."""
  try:
    base.check_vocab_compatible(target_vocab_size(target), config.vocab_size)
  except ValueError as error:
    raise ValueError(f'the converted model cannot draft for target {target!r}: {error}') from error


# ------------------------------------------------------------------------------
# The files beside the checkpoint.
# ------------------------------------------------------------------------------


def config_fields(config: network.T5Config) -> dict[str, Any]:
  """`config` as JSON values (the dtype by name), as training writes train_config.json."""
  return {field.name: (jnp.dtype(value).name if field.name == 'dtype'
                       else list(value) if isinstance(value, tuple) else value)
          for field in dataclasses.fields(config) for value in [getattr(config, field.name)]}


def _binding_lines(config: network.T5Config) -> list[str]:
  fields = config_fields(config)
  fields['mlp_activations'] = tuple(fields['mlp_activations'])
  return [f'  {name} = {value!r}' for name, value in fields.items()]


def draft_gin_text(config: network.T5Config, checkpoint: str, source: str) -> str:
  """A DRAFT_CONFIG gin file (like gin/drafts/*.gin) binding `config` and the checkpoint."""
  return '\n'.join([
      f'# Draft converted from the Hugging Face model {source}',
      '# by scripts/convert_hf_checkpoint.py. Parse it after gin/speculative.gin:',
      '#   --gin_file=gin/speculative.gin --gin_file=<this file> --gin.GAMMA=5',
      f'# It computes in {jnp.dtype(config.dtype).name}; to change that:',
      f'#   --gin.{DRAFT_SCOPE}/network.T5Config.dtype="\'bfloat16\'"',
      '# It must share the target\'s vocabulary.',
      'from __gin__ import dynamic_registration',
      '',
      'from specdec_t5x import network',
      '',
      '# (Moved the directory? Override it: --gin.DRAFT_CHECKPOINT="\'<new path>\'")',
      f'DRAFT_CHECKPOINT = {checkpoint!r}',
      f'DRAFT_CONFIG = @{DRAFT_SCOPE}/network.T5Config()',
      '# Every field bound: a scoped binding inherits the unscoped ones of a model file.',
      f'{DRAFT_SCOPE}/network.T5Config:',
      *_binding_lines(config), ''])


def model_gin_text(config: network.T5Config, source: str, spiece: str | None,
                   extra_ids: int) -> str:
  """A model gin file (like gin/models/*.gin) for t5x.infer with `config` as the target."""
  vocabulary = [
      '# t5x.infer requires the task\'s vocabulary to equal this one, its file name included:',
      '# if the task reads the same SentencePiece model from elsewhere, name that file with',
      '# --gin.seqio.SentencePieceVocabulary.sentencepiece_model_file="\'<file>\'".',
      'VOCABULARY = @seqio.SentencePieceVocabulary()',
      'seqio.SentencePieceVocabulary.sentencepiece_model_file = '
      + ('%gin.REQUIRED  # no spiece.model in the Hugging Face directory' if spiece is None
         else repr(spiece)),
      f'seqio.SentencePieceVocabulary.extra_ids = {extra_ids}']
  return '\n'.join([
      f'# The Hugging Face model {source} as the target of `python -m t5x.infer`',
      '# (converted by scripts/convert_hf_checkpoint.py). Parse it first, then',
      '# t5x/configs/runs/infer.gin (and gin/speculative.gin with a draft); give',
      '# --gin.CHECKPOINT_PATH and, on CPU,',
      '# --gin.utils.RestoreCheckpointConfig.dtype="\'float32\'".',
      'from __gin__ import dynamic_registration',
      '',
      'import seqio',
      'from t5x import models',
      'from specdec_t5x import network',
      '',
      *vocabulary,
      '',
      '# Inference only: no optimizer (t5x.infer restores parameters without one).',
      'MODEL = @models.EncoderDecoderModel()',
      'models.EncoderDecoderModel:',
      '  module = @network.Transformer()',
      '  input_vocabulary = %VOCABULARY',
      '  output_vocabulary = %VOCABULARY',
      '  optimizer_def = None',
      '',
      'network.Transformer.config = @network.T5Config()',
      'network.T5Config:',
      *_binding_lines(config), ''])


def _vocabulary_file(hf_dir: pathlib.Path, out_dir: pathlib.Path) -> tuple[str | None, int]:
  """The spiece.model copied beside the checkpoint (or None), and its extra ids (sentinels).

  HF's `T5Tokenizer` appends `extra_ids` sentinels (default 100) to the
  SentencePiece model, as seqio's `extra_ids` does.
  """
  tokenizer_config = hf_dir / 'tokenizer_config.json'
  extra_ids = DEFAULT_EXTRA_IDS
  if tokenizer_config.is_file():
    extra_ids = int(json.loads(tokenizer_config.read_text()).get('extra_ids', extra_ids))
  if not (hf_dir / SPIECE_FILE).is_file():
    return None, extra_ids
  copied = out_dir / SPIECE_FILE
  shutil.copyfile(hf_dir / SPIECE_FILE, copied)
  return str(copied.absolute()), extra_ids


# ------------------------------------------------------------------------------
# The conversion.
# ------------------------------------------------------------------------------


def convert_hf_checkpoint(hf_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                          step: int = 0, dtype: Any = jnp.float32, target: str | None = None,
                          overwrite: bool = False) -> Converted:
  """Converts a Hugging Face T5 directory into a T5X checkpoint and its config files.

  Args:
    hf_dir: a directory `save_pretrained` wrote (config.json and weights).
    out_dir: the T5X model directory to write (see the module docstring).
    step: the step of `checkpoint_<step>`.
    dtype: the dtype the written configs compute in (parameters stay float32).
    target: if given, a preset name, T5X checkpoint or HF directory the model
      must be able to draft for (same vocabulary, padding aside); checked
      before anything is written.
    overwrite: replace an existing `checkpoint_<step>`.

  Raises:
    ValueError: no config.json or weights, a layout other than T5's, weights
      that do not fit the config, or a vocabulary other than the target's.
  """
  hf_dir, out_dir = pathlib.Path(hf_dir), pathlib.Path(out_dir)
  config = t5_config_from_hf_dir(hf_dir, dtype)
  if target is not None:
    check_against_target(config, target)
  params = t5x_params_from_hf(read_state_dict(hf_dir), config)
  checkpoint = checkpoints.save_t5x_checkpoint(params, out_dir, step, overwrite=overwrite)
  source = str(hf_dir.absolute())
  train_config = out_dir / TRAIN_CONFIG_FILE
  train_config.write_text(json.dumps({'model': config_fields(config),
                                      'source': {'hugging_face': source}}, indent=2) + '\n')
  draft_gin = out_dir / DRAFT_GIN_FILE
  draft_gin.write_text(draft_gin_text(config, str(checkpoint), source))
  spiece, extra_ids = _vocabulary_file(hf_dir, out_dir)
  model_gin = out_dir / MODEL_GIN_FILE
  model_gin.write_text(model_gin_text(config, source, spiece, extra_ids))
  return Converted(config, checkpoint, train_config, draft_gin, model_gin)


__all__ = ['Converted', 'check_against_target', 'config_fields', 'convert_hf_checkpoint',
           'draft_gin_text', 'hf_config_view', 'model_gin_text', 'read_hf_config',
           'read_state_dict', 't5_config_from_hf_dir', 't5x_params_from_hf', 'target_vocab_size',
           'weight_files']
