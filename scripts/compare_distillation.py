#!/usr/bin/env python
"""Which way of spending a draft's next steps raises its acceptance most: distil or train on?

From a trained draft of the family (scripts/train_family.py), each arm trains `--steps` more
steps on the same training batches (the ones after the draft's own): `ce` continues its
ordinary training, `fkl` / `rkl` / `tvd` / `argmax` distil it towards the family's target
(`specdec_t5x.training.distill`), and `fkl@target_greedy` etc. distil on the target's own greedy
outputs for the same inputs (`specdec_t5x.training.generated`). Each is scored without
decoding, teacher-forced on the first `--validation-examples` validation examples of each task:
how often the draft's argmax is the target's and β = Σ min(p, q), along the references and
along the target's own greedy outputs (where the argmax agreement is α at T = 0), next to the
draft it started from, with the seconds per step each arm cost.

Runs are cached and resumable under $SPECDEC_CACHE_DIR/models/<family>/compare/; writes
<output>.md and <output>.json. The logic is `specdec_t5x.training.distill_compare`. Example:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/compare_distillation.py --draft large --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import sys
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from specdec_t5x.paths import repo_root  # noqa: E402
from specdec_t5x.training import distill, distill_compare  # noqa: E402
from specdec_t5x.training import family as family_lib  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--family', default='default', help='family (default: %(default)s)')
  parser.add_argument('--config', type=pathlib.Path, default=family_lib.DEFAULT_CONFIG,
                      help='family configuration JSON (default: %(default)s)')
  parser.add_argument('--draft', default='large', help='independent draft to start from')
  parser.add_argument('--arms', default=','.join((distill_compare.CE_ARM,) + distill.DIVERGENCES),
                      help='comma-separated arms: ce, and divergences on the references or, as '
                           '<divergence>@target_greedy, on the target\'s greedy outputs '
                           '(default: %(default)s)')
  parser.add_argument('--steps', type=int, default=150, help='further steps per arm')
  parser.add_argument('--validation-examples', type=int, default=256,
                      help='validation examples per task for the scores')
  parser.add_argument('--output', type=pathlib.Path, default=None,
                      help='output path without suffix (default: '
                           'results/distill_compare_<draft>)')
  parser.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  arms = [arm for arm in args.arms.split(',') if arm]
  for arm in arms:
    try:
      if arm != distill_compare.CE_ARM:
        distill_compare.arm_settings(arm)
    except ValueError as error:
      sys.exit(f'arm {arm!r}: {error} (arms: ce, or <divergence>[@<data>])')
  if args.steps < 1:
    sys.exit(f'--steps must be >= 1, got {args.steps}')
  family = family_lib.load_family(args.family, args.config)
  result = distill_compare.compare(args.family, family, args.draft, arms, args.steps,
                                   args.validation_examples, progress=not args.no_progress)
  result['command'] = shlex.join(['scripts/compare_distillation.py', *sys.argv[1:]])
  output = args.output or repo_root() / 'results' / f'distill_compare_{args.draft}'
  output.with_suffix('.json').write_text(json.dumps(result, indent=1) + '\n')
  output.with_suffix('.md').write_text(
      f'# Distilling vs training on: draft `{args.draft}`\n\nCommand: `{result["command"]}`\n\n'
      + distill_compare.markdown(result))
  print(distill_compare.markdown(result))


if __name__ == '__main__':
  main()
