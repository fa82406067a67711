"""Greedy decoding speed of our baseline against T5X's own decoding and Hugging Face, same weights.

Every speed-up the project reports is a ratio over `decoding.autoregressive_decode`. This
module times that baseline against what a T5X or PyTorch user would run instead, on the
SAME weights and inputs, greedy (`BACKENDS`):

  ours          `decoding.autoregressive_decode` (one jitted `lax.while_loop`);
  t5x           T5X's own `EncoderDecoderModel.predict_batch` (`t5x.decoding.temperature_sample`
                at temperature 0) on T5X's example network, jitted as `t5x.infer` runs it;
  hf            Hugging Face `T5ForConditionalGeneration.generate` (greedy, eager PyTorch) on
                the weights converted by `hf_convert.to_hf_model`;
  speculative   `decoding.speculative_decode` with a `drafters.ModelDrafter`.

`benchmark` times them in interleaved rounds, compares their tokens position by position
(`token_differences`) and sets each against the memory-bound floor of a step
(`decoder_bytes_per_step` over the machine's read bandwidth). The report is in
`bench.baselines_report`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specdec_t5x import checkpoints, decoding, drafters, hf_convert, network
from specdec_t5x.bench import machine, random_weights, timing

EOS_ID = 1
BACKENDS = ('ours', 't5x', 'hf', 'speculative')
EXACT_BACKENDS = ('ours', 't5x', 'hf')  # must emit the same tokens


# ---------------------------------------------------------------------------------------------
# Models and inputs.


@dataclasses.dataclass
class Model:
  """A model to benchmark: its config, weights, the inputs it decodes and its drafts."""

  name: str
  config: network.T5Config
  params: Any
  inputs: np.ndarray                       # [n, length] int32 encoder tokens, n >= every batch
  drafts: dict[str, tuple[network.T5Config, Any]] = dataclasses.field(default_factory=dict)
  eos_banned: bool = False


def random_model(preset: str, draft_preset: str, *, batch: int, encoder_length: int,
                 seed: int) -> Model:
  """The random-weights model of `preset` and its random `draft_preset` draft, EOS banned.

  The draft's vocabulary is set to the target's; `batch` rows of random encoder inputs.
  """
  config = network.config_from_preset(preset)
  draft_config = network.config_from_preset(draft_preset, vocab_size=config.vocab_size)
  params = random_weights.ban_eos(random_weights.random_params(
      network.Transformer(config), 1, encoder_length, seed), EOS_ID)
  draft_params = random_weights.ban_eos(random_weights.random_params(
      network.Transformer(draft_config), 1, encoder_length, seed + 1), EOS_ID)
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, config.vocab_size, (batch, encoder_length)).astype(np.int32)
  return Model(name=f'{preset} (random weights)', config=config, params=params,
               inputs=inputs, drafts={draft_preset: (draft_config, draft_params)},
               eos_banned=True)


def family_models(family_name: str, num_inputs: int) -> tuple[list[Model], list[str]]:
  """Every model of the family whose checkpoint exists, and notes on the missing ones.

  The target gets every available draft; all decode the first `num_inputs` EnDe test inputs.
  """
  from specdec_t5x.data import tasks  # noqa: PLC0415  (needs TensorFlow; only with --family)
  from specdec_t5x.training import family as family_lib  # noqa: PLC0415

  family = family_lib.load_family(family_name)
  loaded, notes = {}, []
  for entry in family['models']:
    config = family_lib.model_config(entry)
    directory = family_lib.model_dir(family_name, entry['name'])
    try:
      loaded[entry['name']] = (entry, config, checkpoints.load_t5x_params(directory, config))
    except FileNotFoundError as error:
      notes.append(f"{family_name}/{entry['name']}: no checkpoint yet ({error})")
  if not loaded:
    return [], notes
  inputs = tasks.get_eval_examples(tasks.DDTP_ENDE, 'test', num_inputs)['inputs']
  drafts = {name: (config, params) for name, (entry, config, params) in loaded.items()
            if entry['role'] == 'draft'}
  models = []
  for name, (entry, config, params) in loaded.items():
    models.append(Model(
        name=f'{family_name}/{name} ({entry["preset"]})', config=config,
        params=jax.tree.map(jnp.asarray, params), inputs=np.asarray(inputs, np.int32),
        drafts=drafts if entry['role'] == 'target' else {}))
  return models, notes


def collect_models(*, preset: str, draft_preset: str, random: bool, family: str | None,
                   num_inputs: int, encoder_length: int,
                   seed: int) -> tuple[list[Model], list[str]]:
  """The random-weights model (with `random`) and the trained family's (with `family`), and
  notes on what is missing."""
  models, notes = [], []
  if random:
    models.append(random_model(preset, draft_preset, batch=num_inputs,
                               encoder_length=encoder_length, seed=seed))
  if family is not None:
    trained, missing = family_models(family, num_inputs)
    models += trained
    notes += missing
    if not trained:
      notes.append(f'--family {family}: no trained checkpoint found, nothing measured.')
  return models, notes


def decoder_bytes_per_step(config: network.T5Config, params: Mapping[str, Any], batch: int) -> int:
  """Bytes a cached decoder step must read: every decoder weight but the cross-attention
  key/value kernels (their projections of the encoder output are cached once per request), the
  logits matrix (the shared embedding when tied) and `batch` embedding rows. The attention
  caches (about 1% here) are left out."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params['decoder']):
    names = [getattr(key, 'key', str(key)) for key in path]
    if 'encoder_decoder_attention' in names and names[-2] in ('key', 'value'):
      continue
    total += leaf.size * leaf.dtype.itemsize
  embedding = params['token_embedder']['embedding']
  rows = embedding.shape[0] if config.logits_via_embedding else batch
  return total + rows * embedding.shape[1] * embedding.dtype.itemsize


# ---------------------------------------------------------------------------------------------
# Backends: each is `tokens [B, L] -> (outputs [B, T] int32, 0 after EOS; extra stats)`.

Runner = Callable[[np.ndarray], tuple[np.ndarray, dict[str, float]]]


def ours_runner(config: network.T5Config, params: Any, max_len: int) -> Runner:
  module = network.Transformer(config)

  def run(tokens: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    out = decoding.autoregressive_decode(module, params, tokens, max_decode_len=max_len,
                                         eos_id=EOS_ID)
    return np.asarray(out.tokens), {}

  return run


def speculative_runner(config: network.T5Config, params: Any, draft_config: network.T5Config,
                       draft_params: Any, gamma: int, max_len: int) -> Runner:
  module = network.Transformer(config)
  drafter = drafters.ModelDrafter(network.Transformer(draft_config), draft_params)

  def run(tokens: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    out = decoding.speculative_decode(module, params, drafter, tokens, gamma=gamma,
                                      max_decode_len=max_len, eos_id=EOS_ID)
    iterations = np.asarray(out.iterations)
    stats = {'tokens_per_iteration': float(np.sum(out.lengths) / max(np.sum(iterations), 1)),
             'acceptance_rate': float(np.sum(out.accepted) / max(gamma * np.sum(iterations), 1))}
    return np.asarray(out.tokens), stats

  return run


def t5x_runner(config: network.T5Config, params: Any, max_len: int) -> Runner:
  """T5X's `predict_batch` on its example network, jitted as `t5x.infer` runs it."""
  import seqio  # noqa: PLC0415
  from t5x import models as t5x_models  # noqa: PLC0415
  from t5x.examples.t5 import network as t5x_network  # noqa: PLC0415

  from specdec_t5x import t5x_model  # noqa: PLC0415

  fields = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
  vocabulary = seqio.PassThroughVocabulary(size=config.vocab_size, eos_id=EOS_ID)
  model = t5x_models.EncoderDecoderModel(
      module=t5x_network.Transformer(t5x_network.T5Config(**fields)),
      input_vocabulary=vocabulary, output_vocabulary=vocabulary, optimizer_def=None,
      decode_fn=t5x_model.t5x_sampling_decode_fn(temperature=0.0))
  predict = jax.jit(model.predict_batch)

  def run(tokens: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    batch = {'encoder_input_tokens': tokens,
             'decoder_input_tokens': np.zeros((tokens.shape[0], max_len), np.int32)}
    return np.asarray(predict(params, batch)), {}

  return run


def hf_runner(config: network.T5Config, params: Any, max_len: int) -> Runner:
  """Hugging Face greedy `generate` on the converted weights (eager PyTorch, fp32)."""
  import torch  # noqa: PLC0415

  model = hf_convert.to_hf_model(jax.tree.map(np.asarray, params), config)
  extra = {}
  if config.num_decoder_layers > config.num_encoder_layers:
    # See `to_hf_model`: generate's default cache is sized by the encoder depth.
    from transformers import DynamicCache, EncoderDecoderCache  # noqa: PLC0415
    extra['past_key_values'] = lambda: EncoderDecoderCache(DynamicCache(), DynamicCache())

  def run(tokens: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    ids = torch.from_numpy(tokens.astype(np.int64))
    kwargs = {name: make() for name, make in extra.items()}
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=(ids > 0).long(),
                           max_new_tokens=max_len, do_sample=False, num_beams=1,
                           eos_token_id=EOS_ID, pad_token_id=0, decoder_start_token_id=0,
                           **kwargs)
    generated = out[:, 1:].numpy().astype(np.int32)  # drop the decoder start token
    padded = np.zeros((tokens.shape[0], max_len), np.int32)
    padded[:, :generated.shape[1]] = generated
    return padded, {}

  return run


def t5x_status() -> str | None:
  """None when t5x is importable, else why not."""
  try:
    import t5x.models  # noqa: F401, PLC0415
    from t5x.examples.t5 import network as _  # noqa: F401, PLC0415
  except ImportError as error:
    return f'{type(error).__name__}: {error}'
  return None


def make_runners(model: Model, backends: Sequence[str], *, max_len: int, gamma: int,
                 t5x_missing: str | None) -> dict[str, Runner]:
  """The runners of `backends` for `model` (t5x only when importable; one per draft)."""
  runners: dict[str, Runner] = {'ours': ours_runner(model.config, model.params, max_len)}
  if 't5x' in backends and t5x_missing is None:
    runners['t5x'] = t5x_runner(model.config, model.params, max_len)
  if 'hf' in backends:
    runners['hf'] = hf_runner(model.config, model.params, max_len)
  if 'speculative' in backends:
    for draft_name, (draft_config, draft_params) in model.drafts.items():
      runners[f'speculative ({draft_name}, γ={gamma})'] = speculative_runner(
          model.config, model.params, draft_config, draft_params, gamma, max_len)
  return runners


# ---------------------------------------------------------------------------------------------
# Measurements.


def token_differences(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
  """How `other [B, T]` differs from `reference [B, T]`: counts and the first difference."""
  different = reference != other
  rows = np.flatnonzero(different.any(axis=1))
  summary: dict[str, Any] = {'identical': not rows.size, 'rows_differing': int(rows.size),
                             'positions_differing': int(different.sum())}
  if rows.size:
    row = int(rows[0])
    position = int(np.argmax(different[row]))
    summary['first'] = {'row': row, 'position': position,
                        'reference': int(reference[row, position]),
                        'other': int(other[row, position])}
  return summary


def decode_steps(outputs: np.ndarray) -> int:
  """Steps a greedy decode of `outputs [B, T]` (0 after EOS) ran: its longest row."""
  nonzero = outputs != 0
  lengths = np.where(nonzero.any(axis=1), outputs.shape[1] - np.argmax(nonzero[:, ::-1], 1), 0)
  return int(max(lengths.max(), 1))


def time_runners(runners: Mapping[str, Runner], tokens: np.ndarray, rounds: int,
                 seed: int) -> tuple[dict[str, np.ndarray], dict[str, dict], dict[str, list]]:
  """Each runner's outputs and stats (after compiling and one untimed run), and its wall
  times over `rounds` interleaved rounds."""
  outputs, stats = {}, {}
  for name, run in runners.items():  # compile, then one untimed run
    run(tokens)
    outputs[name], stats[name] = run(tokens)
  times = timing.interleaved_rounds(
      {name: functools.partial(lambda run: timing.timed(lambda: run(tokens))[0], run)
       for name, run in runners.items()}, rounds, seed)
  return outputs, stats, times


def benchmark(model: Model, batch: int, *, backends: Sequence[str], max_decode_len: int,
              gamma: int, runs: int, seed: int, bandwidth: Mapping[str, float],
              t5x_missing: str | None) -> dict[str, Any]:
  """Times every backend on `model` at `batch`, interleaved; compares their tokens."""
  runners = make_runners(model, backends, max_len=max_decode_len, gamma=gamma,
                         t5x_missing=t5x_missing)
  outputs, stats, times = time_runners(runners, model.inputs[:batch], runs, seed + batch)
  steps = decode_steps(outputs['ours'])
  floor_bytes = decoder_bytes_per_step(model.config, model.params, batch)
  floor_ms = floor_bytes / (bandwidth['read_gb_s'] * 1e9) * 1e3
  ours_s = float(np.median(times['ours']))
  l3_bytes = machine.l3_cache_bytes()
  result = {'model': model.name, 'batch': batch, 'steps': steps, 'max_decode_len': max_decode_len,
            'eos_banned': model.eos_banned, 'decoder_bytes_per_step': floor_bytes,
            'fits_in_l3': l3_bytes is not None and floor_bytes < l3_bytes,
            'floor_ms_per_step': floor_ms, 'load_average_1min': machine.load_average(),
            'config': {k: v for k, v in dataclasses.asdict(model.config).items()
                       if k not in ('dtype',)},
            'backends': {}}
  for name in runners:
    median_s = float(np.median(times[name]))
    ms_per_step = median_s / steps * 1e3
    result['backends'][name] = {
        'times_s': times[name], 'median_s': median_s, 'ms_per_step': ms_per_step,
        'ms_per_token': ms_per_step / batch, 'ratio_to_ours': median_s / ours_s,
        'times_floor': ms_per_step / floor_ms, 'steps': decode_steps(outputs[name]),
        'tokens_vs_ours': token_differences(outputs['ours'], outputs[name]), **stats[name]}
  return result


def benchmark_all(models: Sequence[Model], batches: Sequence[int], notes: list[str],
                  **settings: Any) -> list[dict[str, Any]]:
  """`benchmark` (`settings`: its keyword arguments) for every model and batch, printing each.

  A batch larger than a model's inputs is skipped with a note appended to `notes`.
  """
  results = []
  for model in models:
    for batch in batches:
      if batch > len(model.inputs):
        notes.append(f'{model.name}: only {len(model.inputs)} inputs, batch {batch} skipped.')
        continue
      print(f'{model.name}, batch {batch} ...', flush=True)
      results.append(benchmark(model, batch, **settings))
      for name, row in results[-1]['backends'].items():
        print(f"  {name:32s} {row['ms_per_step']:7.2f} ms/step  x{row['ratio_to_ours']:.2f} "
              f"of ours  x{row['times_floor']:.2f} of floor  "
              f"tokens {'identical' if row['tokens_vs_ours']['identical'] else 'DIFFER'}",
              flush=True)
  return results
