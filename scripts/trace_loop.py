"""Where a speculative iteration's time goes: the jitted loops under the profiler, op by op.

The sweep's theory adds up parts timed alone (γ draft calls and one scoring call, in target
steps); a cell's measured speed also pays for what the loop does beyond them. This script
decodes a sweep task's inputs with one draft at one γ and with the autoregressive baseline
under `jax.profiler.trace`, maps each XLA:CPU op of the trace to its JAX op_name and the
named scopes of `speculative_loop.iteration` ('draft', 'score', 'accept', 'emit'), and writes per
iteration: the time of each part, the ops run, the gap between them, and the costliest ops
(`specdec_t5x.bench.loop_trace`). The two decoders take turns input by input in one trace,
so load from other processes falls on both. Only inputs of the most common padded width are
traced (each width is its own program). With sampling (--temperature > 0) XLA:CPU's `while`
event ends before the loop's body does; a run of the loop lasts until the last op of its body.

Writes <output-dir>/loop_trace.{json,md}. Example:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/trace_loop.py --task ende --draft small_distilled \
      --gamma 2
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import tempfile
import time
from collections.abc import Sequence

from specdec_t5x import paths
from specdec_t5x.bench import loop_trace, machine, report
from specdec_t5x.drafters import registry
from specdec_t5x.sweep.config import EOS_ID, load_config
from specdec_t5x.sweep.loading import SweepContext, trim_padding
from specdec_t5x.sweep.measure import INPUT_LENGTH_QUANTUM


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
  """Shows the module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
  parser.add_argument('--config', type=pathlib.Path,
                      default=paths.repo_root() / 'configs' / 'sweep_default.json',
                      help='the sweep config whose models, tasks and drafts are used')
  parser.add_argument('--task', default='ende', help="a task of the config (e.g. 'ende')")
  parser.add_argument('--draft', default='small_distilled', help='a draft of the config')
  parser.add_argument('--gamma', type=int, default=2, help='draft tokens per iteration')
  parser.add_argument('--temperature', type=float, default=0.0, help='0 is greedy')
  parser.add_argument('--num-inputs', type=int, default=12,
                      help="the task's first inputs to choose from (the sweep cells' inputs)")
  parser.add_argument('--passes', type=int, default=2,
                      help='passes over the inputs, both decoders taking turns on each')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results',
                      help='where loop_trace.json and .md are written')
  args = parser.parse_args(argv)
  if min(args.gamma, args.num_inputs, args.passes) < 1 or args.temperature < 0:
    parser.error('need --gamma, --num-inputs and --passes >= 1, and --temperature >= 0')
  config = load_config(args.config)
  if args.task not in config.tasks or args.draft not in config.drafts:
    parser.error(f'--task must be one of {sorted(config.tasks)} and --draft one of '
                 f'{sorted(config.drafts)} ({args.config})')
  args.sweep_config = config
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  config, started = args.sweep_config, time.time()
  context = SweepContext(config)
  target = context.target(args.task)
  drafter = registry.for_gamma(context.drafter(args.draft, args.task), args.gamma)
  inputs = context.inputs(args.task, args.num_inputs)
  requests = [trim_padding(inputs[i:i + 1], INPUT_LENGTH_QUANTUM) for i in range(len(inputs))]
  width = collections.Counter(r.shape[1] for r in requests).most_common(1)[0][0]
  requests = [r for r in requests if r.shape[1] == width]
  with tempfile.TemporaryDirectory() as log_dir:
    traced = loop_trace.trace_loops(
        target.module, target.params, drafter, requests, log_dir, gamma=args.gamma,
        max_decode_len=config.tasks[args.task].max_decode_len, temperature=args.temperature,
        eos_id=EOS_ID, passes=args.passes)
  facts = machine.machine_facts()
  settings = report.settings_record(args)
  del settings['sweep_config']
  record = dict(command=machine.command_line(), date=report.utc_date(),
                duration_s=round(time.time() - started, 1), machine=facts,
                machine_summary=f"{facts['cpu_model']}, {facts['nproc']} cores"
                                + machine.vector_and_cache(facts),
                load_average_1min=machine.load_average(), settings=settings,
                requests=len(requests), input_length=width, **traced)
  loop_trace.write_report(args.output_dir, record)
  print(loop_trace.markdown(record))
  print(f'wrote {args.output_dir}/loop_trace.{{json,md}}')


if __name__ == '__main__':
  main()
