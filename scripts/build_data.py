#!/usr/bin/env python
"""Builds the CPU-scale data: DDTP lists -> EnDe and summarisation splits -> vocabulary -> TFDS.

Steps (each cached under $SPECDEC_CACHE_DIR, default ~/.cache/specdec_t5x):

  1. fetch   Debian's Translation-en/-de lists with apt (root) into ddtp/translations/,
             unless they are there already or --translations-dir points at fetched ones;
  2. parse   them into the `ende` and `summarize` tasks, split by package, deduplicated;
  3. vocab   train the 8000-piece sentencepiece model on the train split (vocab/);
  4. tfds    build `ddtp/ende` and `ddtp/summarize` into tfds/;
  5. lengths measure token-length percentiles of the train split (what the seqio tasks'
             default feature lengths are chosen from).

A second run with the same lists finds build.json matching and returns at once; --force
rebuilds, --refetch fetches the lists again (a newer snapshot changes the splits). The logic
is `specdec_t5x.data.build`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from specdec_t5x.data import build, ddtp
from specdec_t5x.data import vocab as vocab_lib


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
      '--translations-dir', type=pathlib.Path, default=None,
      help='directory of already fetched *Translation-en* / *Translation-de* files (plain, .gz, '
           '.xz, .bz2, or .lz4 with apt-helper); no root needed. Default: fetch with apt as root '
           'into $SPECDEC_CACHE_DIR/ddtp/translations.')
  parser.add_argument('--refetch', action='store_true',
                      help='fetch the lists with apt again even if a fetched copy exists')
  parser.add_argument('--force', action='store_true',
                      help='rebuild vocabulary and TFDS datasets even if build.json matches')
  parser.add_argument('--allow-small-vocab', action='store_true',
                      help='let a tiny corpus (e.g. tests/fixtures/ddtp) give a vocabulary of '
                           f'fewer than {vocab_lib.DDTP_VOCAB_SIZE} pieces instead of failing')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    lists_dir = build.translations_dir(args.translations_dir, refetch=args.refetch)
    ddtp.find_translation_files(lists_dir)
  except (PermissionError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  build.build_data(lists_dir, force=args.force, allow_small_vocab=args.allow_small_vocab)
  return 0


if __name__ == '__main__':
  sys.exit(main())
