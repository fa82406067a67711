"""Where a decode loop's time goes, op by op: a profiler trace of the jitted loop.

The sweep's theory adds up parts timed alone (γ draft calls, one scoring call);
what the loop spends beyond them is invisible there. This module runs requests
under `jax.profiler.trace` and attributes the XLA:CPU trace to the program:

* every thunk event of the trace carries its HLO instruction's name, which the
  compiled program's text (`compiled_op_names`) maps to the JAX `op_name`,
  including the `jax.named_scope`s of `speculative_loop.iteration` (`PARTS`);
  a fusion without metadata takes its fused computation's;
* the loop is the outermost `while` of the program; a run of it lasts until
  the last op of its body, and an event counts as the loop's when it starts
  inside a run, on any thread (the decoders run one request at a time);
* per iteration: the summed time of the ops in each part, how many ops ran, and
  the rest of the loop's wall time, which is the executor's per-op overhead
  between them (`gap_us`).

Profiling slows every op a little (about 5% here), the same for both decoders.
Shapes: one request is `[1, L]` token ids.
"""

from __future__ import annotations

import bisect
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from specdec_t5x import decoding, speculative_loop
from specdec_t5x import drafters as drafters_lib
from specdec_t5x import sampling as sampling_lib
from specdec_t5x.bench import report

# The named scopes of `speculative_loop.iteration`, in the order the table shows them.
PARTS = ('draft', 'score', 'accept', 'emit')
_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (.*)$')
_COMPUTATION = re.compile(r'\s*(?:ENTRY )?%?([\w.\-]+) .*\{\s*$')
_OP_NAME = re.compile(r'metadata=\{[^}]*op_name="([^"]*)"')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_OPERAND = re.compile(r'%([\w.\-]+)')
# The loop found must hold at least this share of its decoder's wall time, or the trace did
# not show the decode loop (`trace_loops`).
LOOP_SHARE_MIN = 0.2  # summarisation spends up to half a request outside the loop
# Container events: their time is their children's.
_CONTAINERS = ('while', 'conditional', 'call', 'ThunkExecutor')


def compiled_op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> JAX op_name, from a compiled program's text (`.as_text()`).

  An instruction without metadata of its own (XLA made it: attention's small
  products are such fusions) gets the first op_name found in the computation
  it calls, else that of its first operand that has one.
  """
  own: dict[str, str] = {}
  operands: dict[str, list[str]] = {}
  first_in: dict[str, str] = {}
  computation = None
  for line in hlo_text.splitlines():
    instruction = _INSTRUCTION.match(line)
    if instruction is None:
      header = _COMPUTATION.match(line)
      computation = header.group(1) if header else computation
      continue
    name, body = instruction.groups()
    op_name = _OP_NAME.search(body)
    called = _CALLS.search(body)
    own[name] = (op_name.group(1) if op_name
                 else first_in.get(called.group(1), '') if called else '')
    if op_name and computation is not None:
      first_in.setdefault(computation, op_name.group(1))
    operands[name] = _OPERAND.findall(body.split(')', 1)[0])
  resolved: dict[str, str] = {}

  def resolve(name: str, depth: int = 0) -> str:
    if name not in resolved:
      inherited = (resolve(operand, depth + 1) for operand in operands.get(name, ())
                   if depth < 8)
      resolved[name] = own.get(name) or next((n for n in inherited if n), '')
    return resolved[name]

  return {name: resolve(name) for name in own}


def part_of(op_name: str) -> str:
  """The named scope (`PARTS`) an op ran under, else 'other'."""
  segments = op_name.split('/')
  return next((part for part in PARTS if part in segments), 'other')


def read_trace(log_dir: str | os.PathLike) -> list[dict[str, Any]]:
  """The complete ('X') events of the newest Perfetto trace under `log_dir`."""
  files = sorted(glob.glob(os.path.join(os.fspath(log_dir), '**', 'perfetto_trace.json.gz'),
                           recursive=True), key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f'no perfetto_trace.json.gz under {log_dir}')
  with gzip.open(files[-1], 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return [event for event in events if event.get('ph') == 'X']


def trace_requests(runs: Sequence[Callable[[Any], Any]], requests: Sequence[Any],
                   log_dir: str | os.PathLike,
                   passes: int = 1) -> tuple[list[dict[str, Any]], list[float]]:
  """Every run on every request, `passes` times, under the profiler.

  The runs take turns request by request (the first run alternates), so a
  change of load on this shared machine falls on all of them alike.

  Returns:
    `(the trace's events, each run's summed wall time in µs)`.
  """
  wall_us = [0.0] * len(runs)
  with jax.profiler.trace(os.fspath(log_dir), create_perfetto_trace=True):
    for turn in range(passes * len(requests)):
      request = requests[turn % len(requests)]
      for index in (range(len(runs)) if turn % 2 == 0 else reversed(range(len(runs)))):
        start = time.perf_counter()
        jax.block_until_ready(runs[index](request))
        wall_us[index] += 1e6 * (time.perf_counter() - start)
  return read_trace(log_dir), wall_us


def _check_coverage(breakdown: Mapping[str, Any], iterations: int, wall_us: float,
                    decoder: str) -> None:
  """Raises where the loop found holds too little of its decoder's wall time to be its loop."""
  share = breakdown['loop_us'] * iterations / max(wall_us, 1e-9)
  if share < LOOP_SHARE_MIN:
    raise ValueError(f'the trace shows the {decoder} loop for only {share:.0%} of its wall '
                     'time: XLA:CPU did not trace this program op by op, so it cannot be broken '
                     'down')


def module_name(hlo_text: str) -> str:
  """The HLO module's name (`jit_decode`), which the trace's events carry as `hlo_module`."""
  match = re.match(r'\s*HloModule\s+([\w.\-]+)', hlo_text)
  if match is None:
    raise ValueError('not the text of an HLO module')
  return match.group(1)


Intervals = list[tuple[float, float]]  # [(start, end)] in µs, one per run of the loop


def _loop_intervals(events: Sequence[Mapping[str, Any]],
                    op_names: Mapping[str, str]) -> tuple[str, Intervals]:
  """The program's outermost loop and the intervals it ran in.

  The outermost loop is the `while` whose op_name is least nested (then the
  one that took longest). A run of it lasts from its event's start to the end
  of the last op of its body or condition, on any thread, before the program
  goes on to an op outside the loop (or the next run starts): the `while`
  event itself can end before its body does (XLA:CPU continues the loop
  asynchronously; with sampling, on other threads and for most of the loop).
  """
  totals: collections.Counter = collections.Counter()
  for event in events:
    if event['name'].startswith('while') and event['name'] in op_names:
      totals[event['name']] += event['dur']
  if not totals:
    raise ValueError('the trace holds no while loop of the traced program')
  loop = min(totals, key=lambda name: (op_names[name].count('/while'), -totals[name]))
  inside = f'{op_names[loop]}/' if op_names[loop] else None
  runs = sorted((e for e in events if e['name'] == loop), key=lambda e: e['ts'])
  ops = sorted((e for e in events if op_names.get(e['name'])
                and not e['name'].startswith(_CONTAINERS)), key=lambda e: e['ts'])
  starts = [op['ts'] for op in ops]
  intervals = []
  for index, run in enumerate(runs):
    end, limit = run['ts'] + run['dur'], (runs[index + 1]['ts'] if index + 1 < len(runs)
                                          else float('inf'))
    for op in ops[bisect.bisect_left(starts, run['ts']):]:
      if op['ts'] >= limit:
        break
      if inside and op_names[op['name']].startswith(inside):
        end = max(end, op['ts'] + op['dur'])
      elif op['ts'] > run['ts'] + run['dur']:
        break  # the program has gone on past its loop
    intervals.append((run['ts'], end))
  return loop, intervals


def loop_breakdown(events: Sequence[Mapping[str, Any]], op_names: Mapping[str, str],
                   iterations: int, top: int = 12, module: str | None = None) -> dict[str, Any]:
  """Per-iteration microseconds of the program's loop, by part, and its costliest ops.

  Args:
    events: the trace's 'X' events (`read_trace`).
    op_names: `compiled_op_names` of the traced program.
    iterations: the loop iterations the traced requests ran (target calls).
    top: how many of the costliest ops to list.
    module: the program's `module_name`, where the trace holds other programs too
      (events of others are left out); None: every event is the program's.

  Returns:
    `{'loop_us', 'ops_us' {part: us}, 'ops_per_iteration', 'gap_us', 'top_ops'}`, all
    per iteration.
  """
  if module is not None:
    events = [e for e in events if e.get('args', {}).get('hlo_module') == module]
  loop, intervals = _loop_intervals(events, op_names)
  loop_us = sum(end - start for start, end in intervals)
  by_part: collections.Counter = collections.Counter()
  by_op: collections.Counter = collections.Counter()
  count = 0
  for event in events:
    name = event['name']
    if name not in op_names or name.startswith(_CONTAINERS):
      continue
    if any(start <= event['ts'] <= end for start, end in intervals):
      part = part_of(op_names[name])
      by_part[part] += event['dur']
      by_op[(part, name, op_names[name])] += event['dur']
      count += 1
  per = lambda us: round(us / iterations, 1)
  return dict(
      loop=loop, loop_us=per(loop_us), ops_us={part: per(us) for part, us in by_part.items()},
      ops_per_iteration=round(count / iterations, 1),
      gap_us=per(loop_us - sum(by_part.values())),
      top_ops=[dict(part=part, hlo=name, op_name=op_name[-120:], us=per(us))
               for (part, name, op_name), us in by_op.most_common(top)])


def _compiled_text(jitted: Any, *args: Any, **kwargs: Any) -> str:
  return jitted.lower(*args, **kwargs).compile().as_text()


def trace_loops(module: nn.Module, params: Any, drafter: drafters_lib.Drafter,
                requests: Sequence[np.ndarray], log_dir: str | os.PathLike, *, gamma: int,
                max_decode_len: int, temperature: float = 0.0, eos_id: int = 1,
                passes: int = 2, top: int = 12) -> dict[str, Any]:
  """Both decoders over `requests` (each `[1, L]`, one L), traced; their loops broken down.

  Compiles and runs every request once untraced first, so the trace holds
  decoding only; then both decoders take turns on each request, `passes` times
  (`trace_requests`), in one trace.

  Returns:
    `{'autoregressive', 'speculative'}` (`loop_breakdown`), 'tokens_per_iteration',
    'comparison' (`compare`) and 'greedy_identical' (None when sampling).
  """
  if len({request.shape for request in requests}) != 1 or requests[0].shape[0] != 1:
    raise ValueError('trace_loops takes requests of one shape [1, L]: each shape is its own '
                     'program, with its own op names')
  rng = jax.random.PRNGKey(0)
  common = dict(max_decode_len=max_decode_len, temperature=temperature, eos_id=eos_id)
  autoregressive = lambda x: decoding.autoregressive_decode(module, params, x, rng=rng, **common)
  speculative = lambda x: decoding.speculative_decode(module, params, drafter, x, gamma=gamma,
                                                      rng=rng, **common)
  ar_outputs = [jax.block_until_ready(autoregressive(x)) for x in requests]
  spec_outputs = [jax.block_until_ready(speculative(x)) for x in requests]
  sampling = sampling_lib.make_sampling_config(temperature)
  static = dict(max_decode_len=max_decode_len, sampling=sampling, eos_id=np.int32(eos_id))
  ar_text = _compiled_text(decoding._autoregressive_decode, module, params, requests[0], rng,
                           **static)
  spec_text = _compiled_text(speculative_loop.decode, module, params, drafter, requests[0], rng,
                             None, gamma=gamma, **static)
  events, wall_us = trace_requests([autoregressive, speculative], requests, log_dir, passes)
  count = lambda outputs, field: passes * sum(int(getattr(out, field).sum()) for out in outputs)
  ar = loop_breakdown(events, compiled_op_names(ar_text), count(ar_outputs, 'lengths'), top,
                      module=module_name(ar_text))
  spec = loop_breakdown(events, compiled_op_names(spec_text), count(spec_outputs, 'iterations'),
                        top, module=module_name(spec_text))
  _check_coverage(ar, count(ar_outputs, 'lengths'), wall_us[0], 'autoregressive')
  _check_coverage(spec, count(spec_outputs, 'iterations'), wall_us[1], 'speculative')
  tokens_per_iteration = (sum(int(out.lengths.sum()) for out in spec_outputs)
                          / sum(int(out.iterations.sum()) for out in spec_outputs))
  pairs = zip(ar_outputs, spec_outputs, strict=True)
  identical = (all(np.array_equal(a.tokens, b.tokens) for a, b in pairs)
               if sampling.greedy else None)
  return dict(autoregressive=ar, speculative=spec, tokens_per_iteration=tokens_per_iteration,
              comparison=compare(ar, spec, tokens_per_iteration), greedy_identical=identical)


def compare(autoregressive: Mapping[str, Any], speculative: Mapping[str, Any],
            tokens_per_iteration: float) -> dict[str, Any]:
  """The speculative iteration in autoregressive steps, part by part, and the speed it implies.

  Both breakdowns are per iteration of their loop (`loop_breakdown`); an
  autoregressive iteration is one target step, all of it 'other'.
  """
  step = autoregressive['loop_us']
  in_steps = lambda us: round(us / step, 3)
  return dict(
      iteration_steps=in_steps(speculative['loop_us']),
      parts_steps={part: in_steps(us) for part, us in speculative['ops_us'].items()},
      gap_steps=in_steps(speculative['gap_us']),
      extra_ops=round(speculative['ops_per_iteration'] - autoregressive['ops_per_iteration'], 1),
      # Decoding only: the encoder pass and caches of a request are outside both loops.
      loop_speed=round(tokens_per_iteration * step / speculative['loop_us'], 3))


def markdown(record: Mapping[str, Any]) -> str:
  """results/loop_trace.md: the two loops side by side, then the costliest ops."""
  ar, spec, rel = record['autoregressive'], record['speculative'], record['comparison']
  parts = [*PARTS, 'other']
  head = ['loop', 'µs / iteration', *(f'{part} µs' for part in parts), 'ops / iteration',
          'gap µs']
  row = lambda name, b: [name, b['loop_us'], *(b['ops_us'].get(part, 0.0) for part in parts),
                         b['ops_per_iteration'], b['gap_us']]
  settings = record['settings']
  lines = [
      '# Where a speculative iteration\'s time goes', '',
      f"`{record['command']}` ({record['date']}; {record['machine_summary']}; 1-minute load "
      f"{record['load_average_1min']:.2f}).", '',
      f"{settings['task']}, draft {settings['draft']}, γ = {settings['gamma']}, T = "
      f"{settings['temperature']}, {record['requests']} requests of {record['input_length']} "
      f"input positions, batch 1, {settings['passes']} passes, the two decoders taking turns "
      'request by request under `jax.profiler.trace` (`specdec_t5x.bench.loop_trace`). '
      'Per iteration of each jitted loop: the summed time of the XLA:CPU ops that ran in each '
      "named scope of `speculative_loop.iteration`, how many ops ran, and the loop's wall time "
      'between them (gap: the executor\'s per-op overhead).', '',
      report.markdown_table(head, [row('autoregressive step', ar),
                                   row(f"speculative, γ = {settings['gamma']}", spec)]), '',
      f"A speculative iteration costs **{rel['iteration_steps']:.2f} autoregressive steps** "
      f"({', '.join(f'{p} {s:.2f}' for p, s in rel['parts_steps'].items())}, gap "
      f"{rel['gap_steps']:.2f}; {rel['extra_ops']:+.0f} ops) and emits "
      f"{record['tokens_per_iteration']:.2f} tokens: the loops alone give "
      f"{rel['loop_speed']:.2f}x (the requests' encoder passes and caches are outside them). "
      'The parts of one iteration are timed together; the two loops run at different moments, '
      'so on a shared machine their ratio moves from run to run: take speed from the sweep\'s '
      'paired timings (results/table2.md), and from here where an iteration\'s time goes.', '',
      '## The speculative loop\'s costliest ops', '',
      report.markdown_table(['part', 'µs / iteration', 'HLO', 'op_name (end)'],
             [[op['part'], op['us'], f"`{op['hlo']}`", f"`{op['op_name'] or '-'}`"]
              for op in spec['top_ops']]), '']
  return '\n'.join(lines)


def write_report(output_dir: pathlib.Path, record: Mapping[str, Any]) -> None:
  """Writes `output_dir`/loop_trace.json and loop_trace.md."""
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / 'loop_trace.json').write_text(json.dumps(record, indent=1), encoding='utf-8')
  (output_dir / 'loop_trace.md').write_text(markdown(record), encoding='utf-8')
