#!/usr/bin/env python
"""Runs a speculative-decoding sweep and writes the paper's Table 2 / Table 3 analogs to results/.

A sweep config (configs/sweep_default.json for this CPU, sweep_paper.json for a TPU VM with
T5 1.1 checkpoints, sweep_miniature.json for CI) lists models (T5X checkpoints), tasks, drafts
and sections:

  grid        tasks x drafts x temperatures x gamma x batch sizes: per cell, speculative vs
              the jitted autoregressive baseline on the same inputs, interleaved; alpha (from
              beta and from acceptance counts), c, the scoring cost of gamma+1 positions, the
              median speedup, and the theory's prediction from those measured numbers;
  throughput  tokens/s of both decoders over batch sizes;
  peer_hf     Hugging Face generate(assistant_model=...) on the same weights, greedy, against
              our speculative decoding at the grid's best gamma;
  confirm     each (task, draft, temperature, batch) group's fastest grid cell measured again,
              "confirm": {"repeats": N} times: the fastest of several noisy gammas reads high.

Every finished cell is appended to a JSONL store (default $SPECDEC_CACHE_DIR/sweeps/<name>.jsonl)
keyed by the cell and a fingerprint of its settings and checkpoints: kill the run and start it
again, and finished cells are kept, nothing is measured twice; change the config, and only the
cells it changes are measured again. At the end (and with --report-only) the store becomes
results/table2.md, table3.md, peer_hf.md, projection_tpu.md, sweep.json and PNG plots.

Examples:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/sweep.py --dry-run
  JAX_PLATFORMS=cpu .venv/bin/python scripts/sweep.py                      # the default sweep
  JAX_PLATFORMS=cpu .venv/bin/python scripts/sweep.py --only 'grid/ende/small/*' --max-cells 4
  JAX_PLATFORMS=cpu .venv/bin/python scripts/sweep.py --report-only
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import pathlib
import shlex
import sys
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402

from specdec_t5x import paths, sweep  # noqa: E402


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
  """Shows the module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
  parser.add_argument('--config', type=pathlib.Path,
                      default=paths.repo_root() / 'configs' / 'sweep_default.json',
                      help='the sweep config JSON (models, tasks, drafts, sections, timing)')
  parser.add_argument('--output-dir', type=pathlib.Path, default=None,
                      help='where table2.md, table3.md, peer_hf.md, projection_tpu.md, '
                           'sweep.json and the PNG plots are written; default results/ for the '
                           '"default" sweep, results/<config name>/ for any other')
  parser.add_argument('--store', type=pathlib.Path, default=None,
                      help='the append-only JSONL store of finished cells (resuming reads it); '
                           'default $SPECDEC_CACHE_DIR/sweeps/<config name>.jsonl')
  parser.add_argument('--sections', default=','.join(sweep.SECTIONS),
                      help='comma-separated sections to run, of: ' + ', '.join(sweep.SECTIONS)
                           + ' (confirm and the peer run last: confirm measures each group\'s '
                           'fastest grid cell again, confirm.repeats times; the peer runs at the '
                           'grid\'s best gamma)')
  parser.add_argument('--only', action='append', default=None, metavar='GLOB',
                      help='run only cells whose key matches this fnmatch pattern, e.g. '
                           '"grid/ende/*/T0/*" (keys: section/task/draft/T<temp>/g<gamma>/b'
                           '<batch>, confirm/.../b<batch>/r<repeat>, peer_hf/task/draft); repeat '
                           'for several patterns')
  parser.add_argument('--max-cells', type=int, default=None,
                      help='stop after measuring this many new cells (a time box; rerun to '
                           'continue)')
  parser.add_argument('--dry-run', action='store_true',
                      help='list every cell with its status (done / todo / stale = measured '
                           'under other settings) and exit without measuring')
  parser.add_argument('--report-only', action='store_true',
                      help='measure nothing; rewrite the results from the store')
  parser.add_argument('--no-report', action='store_true',
                      help='measure, but do not rewrite the results')
  parser.add_argument('--no-progress', action='store_true', help='hide the tqdm progress bars')
  args = parser.parse_args(argv)
  args.sections = [s.strip() for s in args.sections.split(',') if s.strip()]
  unknown = sorted(set(args.sections) - set(sweep.SECTIONS))
  if unknown or not args.sections:
    parser.error(f'--sections must name some of {list(sweep.SECTIONS)}, got {args.sections}')
  if args.max_cells is not None and args.max_cells < 0:
    parser.error('--max-cells must be >= 0')
  if args.report_only and args.no_report:
    parser.error('--report-only and --no-report exclude each other')
  return args


def print_plan(items: Sequence[sweep.PlanItem], store: sweep.CellStore) -> None:
  counts = {status: sum(item.status == status for item in items)
            for status in ('done', 'todo', 'stale')}
  for item in items:
    note = f'  ({item.note})' if item.note else ''
    print(f'{item.status:5s}  {item.key}{note}')
  print(f'{len(items)} cells: {counts["done"]} done, {counts["todo"]} to run, {counts["stale"]} '
        f'stale (stored under other settings, will be measured again); store {store.path}')


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    config = sweep.load_config(args.config)
  except ValueError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  store = sweep.CellStore(args.store or paths.cache_dir('sweeps') / f'{config.name}.jsonl')
  if args.dry_run:
    print_plan(sweep.plan(config, store, args.sections, args.only), store)
    return 0
  summary = None
  if not args.report_only:
    # Reruns reuse compiled programs: each γ and draft is its own XLA program.
    jax.config.update('jax_compilation_cache_dir', str(paths.cache_dir('jax_compilation_cache')))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
    if 'peer_hf' in args.sections:
      import transformers  # its deprecation notices would drown the progress bars

      transformers.logging.set_verbosity_error()
    command = shlex.join(['scripts/sweep.py'] + list(sys.argv[1:] if argv is None else argv))
    if paths.CACHE_ENV in os.environ:  # where the checkpoints came from is part of the command
      command = f'{paths.CACHE_ENV}={shlex.quote(os.environ[paths.CACHE_ENV])} {command}'
    summary = sweep.run_sweep(config, store, sections=args.sections, patterns=args.only,
                              max_new=args.max_cells, command=command,
                              progress=not args.no_progress)
    print(f'measured {len(summary.measured)} cells, {summary.already_done} were already done, '
          f'{len(summary.skipped)} skipped')
    for key, reason in summary.skipped.items():
      print(f'  skipped {key}: {reason}')
  if not args.no_report:
    output_dir = args.output_dir or (paths.repo_root() / 'results' / (
        '' if config.name == 'default' else config.name))
    written = sweep.write_report(config, store, output_dir,
                                 skipped=summary.skipped if summary else None)
    print('wrote ' + ', '.join(str(path) for path in written))
  return 0


if __name__ == '__main__':
  # A sweep runs for an hour in native code (XLA, TF, PyTorch): if one of them crashes the
  # process, print where each thread was (the store keeps the cells finished before).
  faulthandler.enable()
  sys.exit(main())
