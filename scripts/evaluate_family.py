#!/usr/bin/env python
"""Evaluates a trained family: greedy BLEU on EnDe, ROUGE on summarisation, validation loss.

For every model of the family (trained by scripts/train_family.py) and for a copy-the-input
baseline (the output is the input without its task prefix):

* greedy decoding with `specdec_t5x.decoding.autoregressive_decode`, batched, on the first
  `--num-examples` examples of each task's test split (a fixed subset, in the stored order),
  inputs and decode length at the tasks' default feature lengths;
* BLEU and chrF (sacrebleu, default 13a tokenisation) against the German references of
  `ddtp_ende`; ROUGE-1/2/L F1 (rouge-score, Porter stemming) against the synopses of
  `ddtp_summarize`;
* validation loss: mean cross-entropy per target token (nats) on the first
  `--validation-examples` examples of each task's validation split, unpacked.

Writes results/models.md and results/models.json (`models.<family>.*` for families other than
`default`), including the training times and sizes that train_family.py recorded, and checks
that the target beats every draft and every model beats copy-the-input. The logic is
`specdec_t5x.training.evaluation`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from specdec_t5x.paths import repo_root  # noqa: E402
from specdec_t5x.training import evaluation  # noqa: E402
from specdec_t5x.training import family as family_lib  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--family', default='default',
                      help='family to evaluate (default: %(default)s; also "miniature")')
  parser.add_argument('--config', type=pathlib.Path, default=family_lib.DEFAULT_CONFIG,
                      help='family configuration JSON (default: %(default)s)')
  parser.add_argument('--num-examples', type=int, default=None,
                      help='test examples per task (default: the family\'s eval.num_examples)')
  parser.add_argument('--validation-examples', type=int, default=None,
                      help='validation examples per task for the loss (default: the family\'s '
                           'eval.validation_examples)')
  parser.add_argument('--batch-size', type=int, default=None,
                      help='decoding batch size (default: the family\'s eval.batch_size)')
  parser.add_argument('--split', default=None,
                      help='split decoded for BLEU/ROUGE (default: the family\'s eval.split)')
  parser.add_argument('--results-dir', type=pathlib.Path, default=repo_root() / 'results',
                      help='where models.md / models.json go (default: %(default)s)')
  parser.add_argument('--strict', action='store_true',
                      help='exit with status 1 if a quality check fails')
  parser.add_argument('--report-only', action='store_true',
                      help='decode nothing: rewrite models.md from the stored models.json and '
                           'the family\'s current notes file')
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  started = time.perf_counter()
  try:
    family = family_lib.load_family(args.family, args.config)
    if args.report_only:
      md_path = evaluation.rewrite_markdown(args.results_dir, args.family, family, args.config)
      print(f'wrote {md_path}')
      return 0
    settings = evaluation.eval_settings(family, vars(args))
    trained = evaluation.trained_rows(args.family, family)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  command = 'JAX_PLATFORMS=cpu .venv/bin/python ' + shlex.join(
      ['scripts/evaluate_family.py'] + (argv if argv is not None else sys.argv[1:]))
  report = evaluation.evaluate_family(args.family, family, settings, trained, command=command,
                                      started=started, log=lambda line: print(line, flush=True))
  md_path, json_path = evaluation.write_report(report, args.results_dir, family, args.config)
  checks = report['checks']
  failed = [check['claim'] for check in checks if not check['passed']]
  print(f'wrote {md_path} and {json_path}; checks: {len(checks) - len(failed)}/{len(checks)} '
        'passed' + (f'; FAILED: {failed}' if failed else ''))
  return 1 if failed and args.strict else 0


if __name__ == '__main__':
  sys.exit(main())
