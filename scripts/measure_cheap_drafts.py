#!/usr/bin/env python
"""α of the cheap drafts (unigram, bigram, PaSS look-ahead) and their walltime against AR.

The paper's Table 3 gives α for unigram and bigram drafts of T5-XXL; this script measures the
same for the trained CPU-scale target on the DDTP EnDe and summarisation test splits (the
stand-ins for WMT EnDe and CNN/DM), adds PaSS look-ahead drafts per look-ahead position j = 1..L,
and times speculative decoding with each draft against `autoregressive_decode` in the same run.

α (per task, temperature T in --temperatures): the target decodes the first --alpha-examples
test inputs itself (greedy at T=0, sampled at T=1, max_decode_len 64 for EnDe and 24 for
summarisation as in configs/sweep_default.json); then, along those outputs, a teacher-forced
pass gives the target's distribution p at every emitted position, and
β = Σ_x min(p(x), q(x)) is averaged over all positions (α = E[β], the paper's definition, with
the same sampling transform applied to p and q: one-hot argmax at T=0). The unigram's q is
fixed, the bigram's q is the row of the previous decoder input (BOS before the first token),
and look-ahead j's q comes from look-ahead j placed after the real prefix, compared with p at
the position j - 1 steps beyond the next token: the quality of each look-ahead position when
the context is right (inside the speculative loop, drafts after a rejected block see rejected
tokens, which the loop's own α shows).

Speed (batch 1, the first --speed-examples inputs): every method decodes each input once per
round, in shuffled order (interleaved, so the load of a shared machine hits all alike); a
method's speedup on an input is (autoregressive time per emitted token) / (its time per emitted
token), summarised by the median over inputs and rounds. Per-token times make T=1 comparable,
where the sampled outputs differ in length. Unigram and bigram use γ from
`theory.optimal_gamma` with their measured α, draft cost 0 and the measured scoring cost of
results/scoring_cost.json for the target's preset (1 if absent); PaSS uses γ in --pass-gammas
with its first γ look-ahead embeddings (2γ + 1 positions per target call).

Needs the n-gram counts (built here if missing, as scripts/build_ngram_drafters.py does) and the
PaSS file of scripts/train_pass.py. Writes <output-dir>/cheap_drafts.{json,md}. Example:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/measure_cheap_drafts.py --family default
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from specdec_t5x import drafters, paths  # noqa: E402
from specdec_t5x.bench import cheap_drafts, cheap_drafts_report, report  # noqa: E402
from specdec_t5x.drafters import lookahead  # noqa: E402
from specdec_t5x.training import family_target  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  family_target.add_target_arguments(parser)
  parser.add_argument('--tasks', default='ende,summarize', help=f'of {sorted(cheap_drafts.TASKS)}')
  parser.add_argument('--temperatures', default='0,1', help='comma-separated, 0 is greedy')
  parser.add_argument('--alpha-examples', type=int, default=64,
                      help='test inputs whose target outputs α is measured on (multiple of '
                           f'{cheap_drafts.ALPHA_BATCH})')
  parser.add_argument('--speed-examples', type=int, default=12, help='test inputs timed')
  parser.add_argument('--rounds', type=int, default=1, help='timed runs per input and method')
  parser.add_argument('--smoothing', type=float, default=drafters.DEFAULT_SMOOTHING,
                      help='add-k of the n-gram drafters')
  parser.add_argument('--num-lookahead', type=int, default=6,
                      help='L of the PaSS file (<model_dir>/pass_lookahead_L<L>.npz)')
  parser.add_argument('--pass-file', type=pathlib.Path, default=None,
                      help='PaSS look-ahead file (default: beside the target checkpoint)')
  parser.add_argument('--pass-gammas', default='1,2,3', help='γ values timed for PaSS')
  parser.add_argument('--seed', type=int, default=0, help='sampling and order seed')
  parser.add_argument('--output-dir', type=pathlib.Path, default=paths.repo_root() / 'results')
  args = parser.parse_args(argv)
  args.tasks = [t.strip() for t in args.tasks.split(',') if t.strip()]
  unknown = [t for t in args.tasks if t not in cheap_drafts.TASKS]
  if unknown or not args.tasks:
    parser.error(f'--tasks must name some of {sorted(cheap_drafts.TASKS)}, got {args.tasks}')
  args.temperatures = [float(t) for t in args.temperatures.split(',')]
  args.pass_gammas = [int(g) for g in args.pass_gammas.split(',') if g.strip()]
  batch = cheap_drafts.ALPHA_BATCH
  if args.alpha_examples < batch or args.alpha_examples % batch:
    parser.error(f'--alpha-examples must be a positive multiple of {batch}')
  if not 1 <= args.speed_examples <= args.alpha_examples or args.rounds < 1:
    parser.error('need 1 <= --speed-examples <= --alpha-examples and --rounds >= 1')
  if any(not 1 <= g <= args.num_lookahead for g in args.pass_gammas):
    parser.error(f'--pass-gammas must lie in [1, --num-lookahead={args.num_lookahead}]')
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  started = time.time()
  target = family_target.target_from_args(args)
  pass_file = args.pass_file or lookahead.default_lookahead_path(target.model_dir,
                                                                 args.num_lookahead)
  pass_drafter = lookahead.load_pass_drafter(pass_file, target.module, target.params)
  curve = cheap_drafts.scoring_cost_curve(target.preset)
  settings = cheap_drafts.Settings(
      temperatures=args.temperatures, alpha_examples=args.alpha_examples,
      speed_examples=args.speed_examples, rounds=args.rounds, pass_gammas=args.pass_gammas,
      seed=args.seed)
  tasks = cheap_drafts.measure_tasks(
      args.tasks, target.module, target.params, pass_drafter, pass_file=pass_file,
      smoothing=args.smoothing, curve=curve, settings=settings)
  record = cheap_drafts_report.build_report(
      tasks, target_label=target.label,
      pass_file_info=lookahead.read_lookahead_file(pass_file)['info'],
      settings=report.settings_record(args), curve=curve, started=started)
  cheap_drafts_report.write_report(args.output_dir, record)
  print(f'wrote {args.output_dir}/cheap_drafts.{{json,md}} in {record["duration_s"] / 60:.1f} '
        f'min')


if __name__ == '__main__':
  main()
