"""The loop at real T5 1.1 sizes with controlled acceptance, against the theory.

Random weights (no data, no download; EOS banned so every request decodes
--max-decode-len tokens). Per target shape: the autoregressive step, the
scoring cost of K = 1..8 positions, c of each smaller T5 1.1 shape as its
draft; then the speculative loop with a controlled-acceptance drafter at every
T=0 row of the paper's Table 2 (its α and γ, and the γ the measured costs make
optimal), with and without the real draft's step, against the theory with the
measured costs and next to the paper's speed.

  # This CPU, fp32, small + base + large (2 cores: ~17 min with AVX-512, ~32 min with AVX2 only):
  JAX_PLATFORMS=cpu python scripts/bench_paper_scale.py
  # One GPU, bf16, xl and xxl as targets (sized for under 8 min):
  python scripts/bench_paper_scale.py --accelerator
  # A check of the whole pipeline on miniature shapes (2-3 min, mostly compiling):
  JAX_PLATFORMS=cpu python scripts/bench_paper_scale.py --quick --output-dir /tmp/ps

Writes results/paper_scale.{json,md,png}. results/projection_tpu.md then takes the
scoring curve of the largest target measured (the sweep's report reads paper_scale.json;
--projection re-renders it here at once).
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Sequence

from specdec_t5x import paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--targets', nargs='+', default=None,
                      help='target shapes (t5_1_1_small ... t5_1_1_xxl); default small, base, '
                           'large (with --accelerator also xl, xxl)')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default=None,
                      help='weights and activations; default float32 on CPU, else bfloat16')
  parser.add_argument('--max-decode-len', type=int, default=64, help='tokens per request')
  parser.add_argument('--encoder-length', type=int, default=32, help='encoder input tokens')
  parser.add_argument('--inputs', type=int, default=2,
                      help='requests (batch 1 each) per timing sample')
  parser.add_argument('--rounds', type=int, default=5,
                      help='interleaved rounds (medians of paired ratios are reported)')
  parser.add_argument('--cost-rounds', type=int, default=9,
                      help='interleaved rounds of the cost timings (step, scoring by K, c)')
  parser.add_argument('--sample-ms', type=float, default=250.0,
                      help='length of one cost-timing sample (chained calls)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--no-optimal-gamma', dest='optimal_gamma', action='store_false',
                      help="run the paper's γ only, not also the γ the measured costs pick")
  parser.add_argument('--accelerator', action='store_true',
                      help="the one-GPU run, sized for < 8 min: bf16, targets xl and xxl "
                           "(drafts small, base, large), paper's γ only, 3 rounds, 1 input")
  parser.add_argument('--quick', action='store_true',
                      help='miniature shapes, 2 rounds, 16 tokens: checks the pipeline only')
  parser.add_argument('--projection', action='store_true',
                      help='also re-render projection_tpu.md from paper_scale.json now (the '
                           "sweep's report does so whenever it runs, adding its own i.i.d. check)")
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results',
                      help='where paper_scale.{json,md,png} (and projection_tpu.md) go')
  args = parser.parse_args(argv)
  if args.quick:
    args.targets = args.targets or ['quick_small', 'quick_base', 'quick_large']
    args.rounds, args.max_decode_len, args.encoder_length, args.inputs = 2, 16, 8, 1
    args.cost_rounds = 2
    args.sample_ms = min(args.sample_ms, 5.0)
  elif args.accelerator:
    # Compiling each (γ, draft) loop of a 24-layer model dominates here, not decoding.
    args.targets = args.targets or ['t5_1_1_xl', 't5_1_1_xxl']
    args.rounds, args.inputs, args.optimal_gamma = min(args.rounds, 3), 1, False
    args.cost_rounds = min(args.cost_rounds, 5)
  args.targets = args.targets or ['t5_1_1_small', 't5_1_1_base', 't5_1_1_large']
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  import jax  # noqa: PLC0415  (after --help, which needs no JAX)
  from tqdm import tqdm  # noqa: PLC0415

  from specdec_t5x.bench import machine, paper_scale, paper_scale_report, timing  # noqa: PLC0415
  from specdec_t5x.bench.report import settings_record, utc_date  # noqa: PLC0415
  from specdec_t5x.sweep import projection  # noqa: PLC0415

  # Compiled programs persist (outside git): a rerun skips most compilation.
  jax.config.update('jax_compilation_cache_dir', str(paths.cache_dir('jax_compilation_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  if args.dtype is None:
    args.dtype = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  settings = {k: getattr(args, k) for k in (
      'dtype', 'max_decode_len', 'encoder_length', 'inputs', 'rounds', 'cost_rounds',
      'sample_ms', 'seed', 'optimal_gamma')}
  start, load_start = time.time(), machine.load_average()
  results = []
  with tqdm(total=paper_scale.progress_total(args.targets, args.rounds,
                                             args.cost_rounds)) as progress:
    for target in args.targets:
      results.append(paper_scale.measure_target(target, settings, progress))
      timing.release_compiled_programs()  # each shape's programs are its own
      # Written after every target: a run cut short keeps the shapes it finished.
      record = {'date': utc_date(), 'machine': machine.machine_facts(),
                'command': machine.command_line(), 'settings': settings_record(args),
                'load_average_start': load_start, 'load_average_end': machine.load_average(),
                'duration_s': time.time() - start, 'targets': results}
      written = paper_scale_report.write_report(args.output_dir, record)
  for path in written:
    print('wrote', path)
  if args.projection:
    path = args.output_dir / 'projection_tpu.md'
    rows = projection.tpu_projection(paper_scale_path=args.output_dir / 'paper_scale.json')
    path.write_text(projection.projection_markdown(rows))
    print('wrote', path)


if __name__ == '__main__':
  main()
