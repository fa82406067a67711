"""Overhead of the speculative loop itself, with the target as its own draft.

With the target drafting for itself every draft is accepted, so each
iteration emits exactly γ+1 tokens, and its time should be the sum of its
parts: γ draft steps (the first feeds two positions) plus one target call on
γ+1 positions. Per-token host synchronisation, cache copies or other loop
overhead show up as the gap between the measured iteration time and that sum.
The ratio to the jitted autoregressive baseline is measured in the same run.

  JAX_PLATFORMS=cpu python scripts/bench_loop_overhead.py
  JAX_PLATFORMS=cpu python scripts/bench_loop_overhead.py --preset t5_1_1_small --gammas 3 7

Writes results/loop_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from specdec_t5x import paths  # noqa: E402
from specdec_t5x.bench import loop_overhead, machine  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--preset', default='cpu_target',
                      help='model preset of specdec_t5x.network.PRESETS (random fp32 weights)')
  parser.add_argument('--gammas', type=int, nargs='+', default=[1, 3, 5, 7],
                      help='draft lengths to measure')
  parser.add_argument('--max-decode-len', type=int, default=64,
                      help='tokens decoded per run (EOS is chosen so every run decodes all)')
  parser.add_argument('--encoder-length', type=int, default=48, help='encoder input tokens')
  parser.add_argument('--rounds', type=int, default=7,
                      help='interleaved rounds; each times every decoder once (medians reported)')
  parser.add_argument('--calls', type=int, default=20,
                      help='chained decoder calls per component timing sample')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results',
                      help='where loop_overhead.json and loop_overhead.md go')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  record = loop_overhead.measure(
      args.preset, args.gammas, max_decode_len=args.max_decode_len,
      encoder_length=args.encoder_length, rounds=args.rounds, calls=args.calls,
      command=machine.command_line())
  print(loop_overhead.write_report(args.output_dir, record, args.rounds))


if __name__ == '__main__':
  main()
