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
rebuilds, --refetch fetches the lists again (a newer snapshot changes the splits).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np
from tqdm import tqdm

from specdec_t5x.data import ddtp
from specdec_t5x.data import vocab as vocab_lib
from specdec_t5x.paths import cache_dir

STAMP_NAME = 'build.json'
PERCENTILES = (50, 90, 95, 99, 100)


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


def get_translations_dir(args: argparse.Namespace) -> pathlib.Path:
  """The directory of Translation-* lists, fetching them first if needed."""
  if args.translations_dir is not None:
    return args.translations_dir
  target = cache_dir('ddtp', 'translations')
  try:
    ddtp.find_translation_files(target)
    have_lists = True
  except ValueError:
    have_lists = False
  if have_lists and not args.refetch:
    print(f'[fetch] reusing the lists in {target} (--refetch to update them)')
    return target
  print(f'[fetch] apt-get -o Acquire::Languages="en,de" update -> {target}')
  for path in ddtp.fetch_translations(target):
    print(f'        {path.name}: {path.stat().st_size / 1e6:.1f} MB')
  return target


def build_is_current(stamp: dict, fingerprint: str, tfds_dir: pathlib.Path) -> bool:
  """Whether build.json describes these lists and its outputs are all still there."""
  from specdec_t5x.data import tfds_ddtp

  return (stamp.get('translations_sha256') == fingerprint
          and stamp.get('tfds_version') == tfds_ddtp.VERSION
          and pathlib.Path(stamp.get('vocab_path', '')).is_file()
          and all((tfds_ddtp.dataset_dir(c, tfds_dir) / 'dataset_info.json').is_file()
                  for c in tfds_ddtp.CONFIG_NAMES))


def print_counts(counts: dict, stats: dict) -> None:
  print(f'        {"task":<10} ' + ' '.join(f'{s:>10}' for s in ddtp.SPLITS))
  for task, splits in counts.items():
    print(f'        {task:<10} ' + ' '.join(f'{splits[s]:>10}' for s in ddtp.SPLITS))
  print('        ' + ', '.join(f'{k}={v}' for k, v in sorted(stats.items())))


def token_length_percentiles(corpus: ddtp.Corpus, vocab_path: pathlib.Path) -> dict:
  """Percentiles of tokens (EOS included) of train inputs (with prefix) and targets per task."""
  from specdec_t5x.data import tasks

  tokenizer = vocab_lib.load_ddtp_vocabulary(vocab_path).tokenizer
  fields = {'ende': (tasks.ENDE_PREFIX, 'en', 'de'),
            'summarize': (tasks.SUMMARIZE_PREFIX, 'description', 'synopsis')}
  result = {}
  for task, (prefix, source, target) in tqdm(fields.items(), desc='[lengths] tokenizing'):
    rows = corpus.examples[task]['train']
    lengths = {
        'inputs': [len(ids) + 1 for ids in tokenizer.encode([prefix + r[source] for r in rows])],
        'targets': [len(ids) + 1 for ids in tokenizer.encode([r[target] for r in rows])],
    }
    result[task] = {key: {f'p{q}': int(np.percentile(values, q)) for q in PERCENTILES}
                    for key, values in lengths.items()}
  return result


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  start = time.time()
  try:
    translations_dir = get_translations_dir(args)
    files = ddtp.find_translation_files(translations_dir)
  except (PermissionError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  fingerprint = ddtp.translations_fingerprint(files)
  stamp_path = cache_dir('ddtp') / STAMP_NAME
  stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
  tfds_dir = cache_dir('tfds')

  if not args.force and build_is_current(stamp, fingerprint, tfds_dir):
    print(f'[cached] {stamp_path} matches the lists in {translations_dir}; nothing to do '
          '(--force to rebuild)')
    print_counts(stamp['counts'], stamp['stats'])
    print(f'        token-length percentiles (train): {json.dumps(stamp["lengths"])}')
    return 0

  print(f'[parse] {sum(len(v) for v in files.values())} lists in {translations_dir}')
  corpus = ddtp.build_corpus(translations_dir)
  print_counts(corpus.counts(), corpus.stats)

  vocab_path = vocab_lib.ddtp_vocab_path()
  texts = ddtp.training_texts(corpus)
  print(f'[vocab] sentencepiece, {vocab_lib.DDTP_VOCAB_SIZE} pieces, on {len(texts)} distinct '
        f'train texts -> {vocab_path} (about 2 minutes on 2 cores)')
  vocab_lib.train_sentencepiece(texts, vocab_path, allow_smaller=args.allow_small_vocab)
  pieces = vocab_lib.load_ddtp_vocabulary(vocab_path).vocab_size
  print(f'        {pieces} pieces; model embedding rows: {vocab_lib.padded_vocab_size(pieces)}')

  from specdec_t5x.data import tfds_ddtp  # TensorFlow is slow to import; only now needed

  for config in tfds_ddtp.CONFIG_NAMES:
    stale = tfds_ddtp.dataset_dir(config, tfds_dir)
    if stale.exists():  # built from other lists (or --force): TFDS would silently reuse it
      shutil.rmtree(stale)
  print(f'[tfds] building ddtp/ende and ddtp/summarize into {tfds_dir}')
  builders = tfds_ddtp.build_ddtp_tfds(translations_dir, tfds_dir)
  for config, builder in builders.items():
    print(f'        ddtp/{config}: ' + ', '.join(
        f'{name}={info.num_examples}' for name, info in builder.info.splits.items()))

  lengths = token_length_percentiles(corpus, vocab_path)
  print(f'[lengths] token-length percentiles of the train split: {json.dumps(lengths)}')

  stamp = {
      'translations_dir': str(translations_dir), 'translations_sha256': fingerprint,
      'translation_files': sorted(p.name for ps in files.values() for p in ps),
      'tfds_version': tfds_ddtp.VERSION, 'tfds_data_dir': str(tfds_dir),
      'vocab_path': str(vocab_path), 'vocab_pieces': pieces,
      'counts': corpus.counts(), 'stats': corpus.stats, 'lengths': lengths,
      'build_seconds': round(time.time() - start, 1),
  }
  tmp = stamp_path.with_name(STAMP_NAME + '.partial')
  tmp.write_text(json.dumps(stamp, indent=2))
  os.replace(tmp, stamp_path)
  print(f'[done] {time.time() - start:.0f} s; wrote {stamp_path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
