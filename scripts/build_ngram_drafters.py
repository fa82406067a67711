#!/usr/bin/env python
"""Counts the unigrams and bigrams of tasks' training targets: the unigram and bigram drafters.

For each seqio task, one pass over the `decoder_target_tokens` of its split (EOS-terminated,
truncated to the task's feature length as the models were trained) gives the counts
(`specdec_t5x.training.ngram_counts`) that `specdec_t5x.drafters.ngram.UnigramDrafter` /
`BigramDrafter` smooth with add-k. They are written to

  $SPECDEC_CACHE_DIR/ngram/<task>.<split>.npz

(default cache ~/.cache/specdec_t5x), a small file that is reused when it exists (--rebuild
counts again). The data must be built first (scripts/build_data.py). Example:

  JAX_PLATFORMS=cpu .venv/bin/python scripts/build_ngram_drafters.py
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from specdec_t5x.data import vocab as vocab_lib  # noqa: E402
from specdec_t5x.training import ngram_counts  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--tasks', default='ddtp_ende,ddtp_summarize',
                      help='comma-separated seqio tasks')
  parser.add_argument('--split', default='train', help='the split whose targets are counted')
  parser.add_argument('--vocab-size', type=int, default=vocab_lib.DDTP_EMBEDDING_ROWS,
                      help='the target model\'s vocabulary size (embedding rows)')
  parser.add_argument('--rebuild', action='store_true', help='count again even if cached')
  args = parser.parse_args(argv)
  args.tasks = [task.strip() for task in args.tasks.split(',') if task.strip()]
  if not args.tasks:
    parser.error('--tasks is empty')
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  from specdec_t5x.data import tasks  # noqa: F401  (registers the seqio tasks)

  for task in args.tasks:
    started = time.perf_counter()
    counts, path, cached = ngram_counts.task_counts(task, args.vocab_size, split=args.split,
                                                    rebuild=args.rebuild)
    how = 'cached' if cached else f'counted in {time.perf_counter() - started:.1f} s'
    print(f'{task}:{args.split}: {counts.num_sequences} sequences, {counts.num_tokens} tokens, '
          f'{counts.bigram.nnz} distinct bigrams (longest row '
          f'{int(max(counts.bigram.getnnz(axis=1)))}), {path} '
          f'({path.stat().st_size / 1e3:.0f} kB, {how})')


if __name__ == '__main__':
  main()
