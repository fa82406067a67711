"""The Hugging Face peer: `generate(assistant_model=...)` against ours on the same weights.

Per input (batch 1, greedy) and in rotating order: our `speculative_decode` at
γ, our `autoregressive_decode`, HF greedy `generate`, and HF assisted
generation under each configured assistant setting. torch and transformers are
imported only when a peer runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from specdec_t5x import decoding
from specdec_t5x.bench import timing
from specdec_t5x.sweep.cells import peer_key
from specdec_t5x.sweep.config import EOS_ID, TaskSpec
from specdec_t5x.sweep.loading import LoadedModel, SweepContext

Method = Callable[[np.ndarray], np.ndarray]  # one input row [L] -> output tokens


def _strip(tokens: np.ndarray) -> list[int]:
  """Token ids up to and including the first EOS (all of them when there is none)."""
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(EOS_ID) + 1] if EOS_ID in tokens else tokens


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
  for index, (x, y) in enumerate(zip(a, b, strict=False)):
    if x != y:
      return index
  return None if len(a) == len(b) else min(len(a), len(b))


def _hf_setting(setting: Mapping[str, Any], gamma: int) -> dict[str, Any]:
  """HF assistant generation-config values of a peer setting ('ours' means our γ)."""
  tokens = setting.get('num_assistant_tokens', 20)  # transformers' defaults
  return {'num_assistant_tokens': gamma if tokens == 'ours' else int(tokens),
          'num_assistant_tokens_schedule': setting.get('num_assistant_tokens_schedule',
                                                       'constant'),
          'assistant_confidence_threshold': setting.get('assistant_confidence_threshold', 0.4)}


def _methods(task: TaskSpec, target: LoadedModel, draft_model: LoadedModel, drafter: Any,
             gamma: int, settings: Mapping[str, Mapping[str, Any]]) -> dict[str, Method]:
  """Ours (speculative, autoregressive), HF greedy and HF assisted per setting, by name."""
  import torch  # only the peer needs torch

  from specdec_t5x import hf_convert

  hf_target = hf_convert.to_hf_model(target.params, target.config)
  hf_draft = hf_convert.to_hf_model(draft_model.params, draft_model.config)

  def ours_speculative(row):
    out = decoding.speculative_decode(target.module, target.params, drafter, row[None],
                                      gamma=gamma, max_decode_len=task.max_decode_len)
    return np.asarray(out.tokens[0])[:int(out.lengths[0])]

  def ours_autoregressive(row):
    out = decoding.autoregressive_decode(target.module, target.params, row[None],
                                         max_decode_len=task.max_decode_len)
    return np.asarray(out.tokens[0])[:int(out.lengths[0])]

  def hf_generate(row, setting=None):
    ids = torch.tensor(row[row > 0][None].astype(np.int64))
    kwargs = {}
    if setting is not None:
      for name, value in setting.items():
        setattr(hf_draft.generation_config, name, value)  # 'heuristic' mutates it: reset
      kwargs['assistant_model'] = hf_draft
    with torch.inference_mode():
      out = hf_target.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               do_sample=False, max_new_tokens=task.max_decode_len, **kwargs)
    return out[0, 1:].numpy()  # drop the decoder start token

  methods: dict[str, Method] = {'ours_speculative': ours_speculative,
                                'ours_autoregressive': ours_autoregressive,
                                'hf_greedy': hf_generate}
  for name, setting in settings.items():
    methods[f'hf_assisted/{name}'] = functools.partial(hf_generate, setting=setting)
  return methods


def _rotating_runs(methods: Mapping[str, Method], inputs: np.ndarray, warmup_runs: int,
                   progress: Callable[[], None] | None
                   ) -> tuple[dict[str, list[float]], dict[str, list[list[int]]]]:
  """Every method on every input, the order rotating by one per input: (times, outputs)."""
  names = list(methods)
  for name in names:  # compile / warm up on the first input
    for _ in range(1 + warmup_runs):
      methods[name](inputs[0])
  times = {name: [] for name in names}
  outputs = {name: [] for name in names}
  for index, row in enumerate(inputs):
    shift = index % len(names)
    for name in names[shift:] + names[:shift]:
      seconds, tokens = timing.timed(functools.partial(methods[name], row))
      times[name].append(seconds)
      outputs[name].append(_strip(tokens))
    if progress is not None:
      progress()
  return times, outputs


def _agreement(outputs: Mapping[str, Sequence[Sequence[int]]], name: str,
               reference: str) -> dict[str, Any]:
  differences = [(i, _first_difference(a, b)) for i, (a, b) in
                 enumerate(zip(outputs[name], outputs[reference], strict=True))]
  differing = [{'input': i, 'first_differing_position': d} for i, d in differences
               if d is not None]
  return {'reference': reference, 'identical': len(differences) - len(differing),
          'of': len(differences), 'differing': differing}


def _comparison(times: Mapping[str, Sequence[float]],
                outputs: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, Any]:
  """Median times, token agreement and the time ratios of the peer record."""
  names = list(times)
  median_ms = {name: 1e3 * float(np.median(times[name])) for name in names}
  hf_assisted = [name for name in names if name.startswith('hf_assisted/')]
  best_hf = min(hf_assisted, key=lambda name: median_ms[name])
  ratio = lambda a, b: float(np.median(np.asarray(times[a]) / np.asarray(times[b])))
  return {
      'median_ms': median_ms, 'times_s': dict(times),
      'output_tokens': {name: sum(len(o) for o in outputs[name]) for name in names},
      'agreement': {
          'ours_speculative_vs_ours_autoregressive': _agreement(outputs, 'ours_speculative',
                                                                'ours_autoregressive'),
          'hf_greedy_vs_ours_autoregressive': _agreement(outputs, 'hf_greedy',
                                                         'ours_autoregressive'),
          **{f'{name}_vs_ours_speculative': _agreement(outputs, name, 'ours_speculative')
             for name in hf_assisted}},
      'best_hf_assisted': best_hf,
      'hf_best_over_ours_speculative': ratio(best_hf, 'ours_speculative'),
      'hf_greedy_over_ours_autoregressive': ratio('hf_greedy', 'ours_autoregressive'),
      'hf_speedup_over_hf_greedy': ratio('hf_greedy', best_hf),
      'ours_speedup_over_ours_autoregressive': ratio('ours_autoregressive', 'ours_speculative'),
  }


def measure_peer(task_name: str, gamma: int, context: SweepContext,
                 progress: Callable[[], None] | None = None) -> dict[str, Any]:
  """Our greedy decoders against Hugging Face `generate` on the same weights and inputs.

  Returns times, token agreement and the first differing position of each
  disagreement (the record `CellStore` keeps).
  """
  import torch

  config = context.config
  peer = config.peer_hf
  target = context.target(task_name)
  draft_model = context.model(config.drafts[peer.draft].model, task_name)
  drafter = context.drafter(peer.draft, task_name)
  inputs = context.inputs(task_name, peer.num_inputs)
  settings = {s['name']: _hf_setting(s, gamma) for s in peer.hf_settings}
  methods = _methods(config.tasks[task_name], target, draft_model, drafter, gamma, settings)
  times, outputs = _rotating_runs(methods, inputs, config.timing.warmup_runs, progress)
  return {
      'key': peer_key(task_name, peer.draft), 'section': 'peer_hf', 'task': task_name,
      'draft': peer.draft, 'gamma': gamma, 'num_inputs': len(inputs),
      'hf_settings': settings, **_comparison(times, outputs),
      'torch_threads': torch.get_num_threads(),
  }
