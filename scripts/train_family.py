#!/usr/bin/env python
"""Trains every model of a family (a target and its drafts) described in configs/family.json.

Each model trains on the family's seqio mixture with `specdec_t5x.training.train` (Adafactor, T5X's
rsqrt schedule) and ends as the T5X checkpoint

  $SPECDEC_CACHE_DIR/models/<family>/<model>/checkpoint_<steps>/

(default cache ~/.cache/specdec_t5x). Training is resumable: a killed run restarts from its last
saved state (every `save_every` steps) and replays the same batches. A model whose final
checkpoint exists is skipped, so a second run returns at once. Model sizes and training times
are written to $SPECDEC_CACHE_DIR/models/<family>/training.json.

Families (see configs/family.json): `default`, the CPU-scale family of the results (about 89 min
on 2 cores), and `miniature`, test-sized models that train in a minute or two for CI.
The data must be built first (scripts/build_data.py). The logic is
`specdec_t5x.training.family`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from specdec_t5x.training import family as family_lib  # noqa: E402
from specdec_t5x.training import family_runs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--family', default='default',
                      help='which family of the configuration to train (default: %(default)s; '
                           'the file also has "miniature")')
  parser.add_argument('--config', type=pathlib.Path, default=family_lib.DEFAULT_CONFIG,
                      help='family configuration JSON (default: %(default)s)')
  parser.add_argument('--only', nargs='+', metavar='MODEL',
                      help='train only these models of the family (default: all, in file order)')
  parser.add_argument('--dry-run', action='store_true',
                      help='print the plan (architectures, parameters, steps) and exit')
  parser.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    family = family_lib.load_family(args.family, args.config)
    counts = family_lib.check_param_ratio(family)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  models = family['models']
  if args.only:
    unknown = sorted(set(args.only) - {model['name'] for model in models})
    if unknown:
      print(f'error: --only names unknown models {unknown}', file=sys.stderr)
      return 2
    models = [model for model in models if model['name'] in args.only]
  print('\n'.join(family_lib.plan_lines(args.family, family, models, counts)))
  if args.dry_run:
    return 0
  summary_path = family_runs.train_models(args.family, family, models, args.config,
                                         progress=not args.no_progress,
                                         log=lambda line: print(line, flush=True))
  print(f'wrote {summary_path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
