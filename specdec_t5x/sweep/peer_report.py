"""results/peer_hf.md: Hugging Face assisted generation against ours, from the peer's records.

Reads records only (see `peer_hf.measure_peer` for their keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from specdec_t5x.bench.report import markdown_table
from specdec_t5x.sweep.config import SweepConfig
from specdec_t5x.sweep.markdown import commands, fmt, machine_line


def peer_markdown(config: SweepConfig, peers: Sequence[Mapping[str, Any]]) -> str:
  """results/peer_hf.md: Hugging Face assisted generation against ours on the same weights."""
  if not peers:
    return ''
  paragraphs = [
      '# Peer: Hugging Face assisted generation on the same weights',
      f'Sweep config `{config.name}`: {config.description}',
      'The target and the draft checkpoints are converted with `hf_convert.to_hf_model` to '
      '`T5ForConditionalGeneration` (fp32, PyTorch). Per input (batch 1, greedy), in rotating '
      'order: our `speculative_decode` at γ, our `autoregressive_decode`, HF `generate` without '
      'and with `assistant_model=` under each assistant setting; the times are wall times of '
      'one call after warm-up, medians over inputs. HF\'s best setting is its fastest.']
  for p in peers:
    task = config.tasks[p['task']]
    ms = p['median_ms']
    rows = [[name, fmt(value, 1), str(p['output_tokens'][name])] for name, value in ms.items()]
    agreement_rows = [[name.replace('_vs_', ' vs '), f"{a['identical']} / {a['of']}",
                       ', '.join(f"input {d['input']} from token {d['first_differing_position']}"
                                 for d in a['differing'][:8]) or '—']
                      for name, a in p['agreement'].items()]
    settings = '; '.join(f'{name}: ' + ', '.join(f'{k}={v}' for k, v in s.items())
                         for name, s in p['hf_settings'].items())
    paragraphs += [
        f"## {task.label}: draft {config.drafts[p['draft']].label}, our γ = {p['gamma']}, "
        f"{p['num_inputs']} inputs",
        f'HF assistant settings tried: {settings}. Torch threads: {p["torch_threads"]}.',
        markdown_table(['method', 'median ms per input', 'output tokens (all inputs)'], rows),
        markdown_table(['outputs', 'identical', 'differences (first differing token)'],
                  agreement_rows),
        f"**HF at its best ({p['best_hf_assisted']}) takes "
        f"{p['hf_best_over_ours_speculative']:.2f}x the time of our speculative decoding** "
        f"(median of per-input ratios). HF's assisted generation is "
        f"{p['hf_speedup_over_hf_greedy']:.2f}x its own greedy `generate`; ours is "
        f"{p['ours_speedup_over_ours_autoregressive']:.2f}x our autoregressive decode; HF "
        f"greedy takes {p['hf_greedy_over_ours_autoregressive']:.2f}x the time of ours."]
  paragraphs += [machine_line(peers), 'Made by:\n\n' + commands(peers)]
  return '\n\n'.join(p for p in paragraphs if p) + '\n'
