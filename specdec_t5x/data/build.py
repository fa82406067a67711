"""Building the CPU-scale data: DDTP lists -> EnDe and summarisation splits -> vocabulary -> TFDS.

Steps (each cached under $SPECDEC_CACHE_DIR, default ~/.cache/specdec_t5x):

  1. fetch   Debian's Translation-en/-de lists with apt (root) into ddtp/translations/,
             unless they are there already or a directory of fetched ones is given;
  2. parse   them into the `ende` and `summarize` tasks, split by package, deduplicated;
  3. vocab   train the 8000-piece sentencepiece model on the train split (vocab/);
  4. tfds    build `ddtp/ende` and `ddtp/summarize` into tfds/;
  5. lengths measure token-length percentiles of the train split (what the seqio tasks'
             default feature lengths are chosen from).

`build_data` records what it built in `ddtp/build.json`; a second run with the same
lists finds it matching and returns at once. TensorFlow is imported only when the TFDS
datasets are built or checked. `scripts/build_data.py` is the command.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

from specdec_t5x.data import ddtp
from specdec_t5x.data import vocab as vocab_lib
from specdec_t5x.paths import cache_dir

STAMP_NAME = 'build.json'
PERCENTILES = (50, 90, 95, 99, 100)
Log = Callable[[str], None]


def translations_dir(given: pathlib.Path | None = None, *, refetch: bool = False,
                     log: Log = print) -> pathlib.Path:
  """The directory of Translation-* lists: `given`, the cached copy, or freshly fetched ones.

  Raises:
    PermissionError, ValueError: the lists cannot be fetched (apt needs root).
  """
  if given is not None:
    return given
  target = cache_dir('ddtp', 'translations')
  try:
    ddtp.find_translation_files(target)
    have_lists = True
  except ValueError:
    have_lists = False
  if have_lists and not refetch:
    log(f'[fetch] reusing the lists in {target} (--refetch to update them)')
    return target
  log(f'[fetch] apt-get -o Acquire::Languages="en,de" update -> {target}')
  for path in ddtp.fetch_translations(target):
    log(f'        {path.name}: {path.stat().st_size / 1e6:.1f} MB')
  return target


def build_is_current(stamp: Mapping[str, Any], fingerprint: str, tfds_dir: pathlib.Path) -> bool:
  """Whether build.json describes these lists and its outputs are all still there."""
  from specdec_t5x.data import tfds_ddtp

  return (stamp.get('translations_sha256') == fingerprint
          and stamp.get('tfds_version') == tfds_ddtp.VERSION
          and pathlib.Path(stamp.get('vocab_path', '')).is_file()
          and all((tfds_ddtp.dataset_dir(c, tfds_dir) / 'dataset_info.json').is_file()
                  for c in tfds_ddtp.CONFIG_NAMES))


def count_lines(counts: Mapping[str, Mapping[str, int]], stats: Mapping[str, Any]) -> list[str]:
  """The examples per task and split, as a small table, then the parser's statistics."""
  lines = [f'        {"task":<10} ' + ' '.join(f'{s:>10}' for s in ddtp.SPLITS)]
  for task, splits in counts.items():
    lines.append(f'        {task:<10} ' + ' '.join(f'{splits[s]:>10}' for s in ddtp.SPLITS))
  lines.append('        ' + ', '.join(f'{k}={v}' for k, v in sorted(stats.items())))
  return lines


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


def _train_vocabulary(corpus: ddtp.Corpus, allow_small_vocab: bool,
                      log: Log) -> tuple[pathlib.Path, int]:
  vocab_path = vocab_lib.ddtp_vocab_path()
  texts = ddtp.training_texts(corpus)
  log(f'[vocab] sentencepiece, {vocab_lib.DDTP_VOCAB_SIZE} pieces, on {len(texts)} distinct '
      f'train texts -> {vocab_path} (about 2 minutes on 2 cores)')
  vocab_lib.train_sentencepiece(texts, vocab_path, allow_smaller=allow_small_vocab)
  pieces = vocab_lib.load_ddtp_vocabulary(vocab_path).vocab_size
  log(f'        {pieces} pieces; model embedding rows: {vocab_lib.padded_vocab_size(pieces)}')
  return vocab_path, pieces


def _build_tfds(lists_dir: pathlib.Path, tfds_dir: pathlib.Path, log: Log) -> None:
  from specdec_t5x.data import tfds_ddtp  # TensorFlow is slow to import; only now needed

  for config in tfds_ddtp.CONFIG_NAMES:
    stale = tfds_ddtp.dataset_dir(config, tfds_dir)
    if stale.exists():  # built from other lists (or --force): TFDS would silently reuse it
      shutil.rmtree(stale)
  log(f'[tfds] building ddtp/ende and ddtp/summarize into {tfds_dir}')
  builders = tfds_ddtp.build_ddtp_tfds(lists_dir, tfds_dir)
  for config, builder in builders.items():
    log(f'        ddtp/{config}: ' + ', '.join(
        f'{name}={info.num_examples}' for name, info in builder.info.splits.items()))


def build_data(lists_dir: pathlib.Path, *, force: bool = False, allow_small_vocab: bool = False,
               log: Log = print) -> pathlib.Path:
  """Builds (or finds built) the splits, vocabulary and TFDS datasets; returns build.json's path.

  Raises:
    ValueError: `lists_dir` holds no Translation-en/-de lists.
  """
  start = time.time()
  files = ddtp.find_translation_files(lists_dir)
  fingerprint = ddtp.translations_fingerprint(files)
  stamp_path = cache_dir('ddtp') / STAMP_NAME
  stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
  tfds_dir = cache_dir('tfds')
  if not force and build_is_current(stamp, fingerprint, tfds_dir):
    log(f'[cached] {stamp_path} matches the lists in {lists_dir}; nothing to do '
        '(--force to rebuild)')
    for line in count_lines(stamp['counts'], stamp['stats']):
      log(line)
    log(f'        token-length percentiles (train): {json.dumps(stamp["lengths"])}')
    return stamp_path

  log(f'[parse] {sum(len(v) for v in files.values())} lists in {lists_dir}')
  corpus = ddtp.build_corpus(lists_dir)
  for line in count_lines(corpus.counts(), corpus.stats):
    log(line)
  vocab_path, pieces = _train_vocabulary(corpus, allow_small_vocab, log)
  _build_tfds(lists_dir, tfds_dir, log)
  lengths = token_length_percentiles(corpus, vocab_path)
  log(f'[lengths] token-length percentiles of the train split: {json.dumps(lengths)}')

  from specdec_t5x.data import tfds_ddtp

  stamp = {
      'translations_dir': str(lists_dir), 'translations_sha256': fingerprint,
      'translation_files': sorted(p.name for ps in files.values() for p in ps),
      'tfds_version': tfds_ddtp.VERSION, 'tfds_data_dir': str(tfds_dir),
      'vocab_path': str(vocab_path), 'vocab_pieces': pieces,
      'counts': corpus.counts(), 'stats': corpus.stats, 'lengths': lengths,
      'build_seconds': round(time.time() - start, 1),
  }
  tmp = stamp_path.with_name(STAMP_NAME + '.partial')
  tmp.write_text(json.dumps(stamp, indent=2))
  os.replace(tmp, stamp_path)
  log(f'[done] {time.time() - start:.0f} s; wrote {stamp_path}')
  return stamp_path


__all__ = ['STAMP_NAME', 'translations_dir', 'build_is_current', 'count_lines',
           'token_length_percentiles', 'build_data']
