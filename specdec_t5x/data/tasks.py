"""seqio tasks: the CPU-scale DDTP tasks and the paper's WMT EnDe / CNN-DailyMail tasks.

Importing this module registers (and re-registers, so importing it twice is harmless):

* `ddtp_ende` ("translate English to German: "), `ddtp_summarize` ("summarize: ") and their
  mixture `ddtp_all`, on the TFDS datasets of `tfds_ddtp` with the DDTP sentencepiece vocabulary;
* `wmt_t2t_ende_v003_specdec` and `cnn_dailymail_v002_specdec`: T5's `wmt_t2t_ende_v003` and
  `cnn_dailymail_v002` with T5's public 32k vocabulary, whose path is gin-configurable through
  `t5_public_vocabulary` (bindings made after this import still apply: the tasks look the
  vocabulary up at first use).

Nothing is read or downloaded at registration; data and vocabularies are opened on first use.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
import tqdm

from specdec_t5x.data import tfds_ddtp
from specdec_t5x.data import vocab as vocab_lib

DDTP_ENDE = 'ddtp_ende'
DDTP_SUMMARIZE = 'ddtp_summarize'
DDTP_MIXTURE = 'ddtp_all'
WMT_ENDE = 'wmt_t2t_ende_v003_specdec'
CNN_DAILYMAIL = 'cnn_dailymail_v002_specdec'

ENDE_PREFIX = 'translate English to German: '
SUMMARIZE_PREFIX = 'summarize: '
T5_PUBLIC_VOCAB_PATH = vocab_lib.T5_PUBLIC_VOCAB_PATH
# The gin-configurable source of the paper tasks' vocabulary (lives in `vocab`, see there).
t5_public_vocabulary = vocab_lib.t5_public_vocabulary
WMT_TFDS_NAME = 'wmt_t2t_translate/de-en:1.0.0'
# T5 pins cnn_dailymail:3.1.0; current TFDS only generates 3.4.0 (same text, plus `id` and
# `publisher` features), so a fresh TFDS build on a TPU VM gets 3.4.0.
CNN_DAILYMAIL_TFDS_NAME = 'cnn_dailymail:3.4.0'
LANGUAGE_NAMES = {'en': 'English', 'de': 'German'}

# Task feature lengths (tokens, EOS included). DDTP: about the 95th-97th percentile of the train
# split with the DDTP vocabulary (inputs with their prefix), rounded to a multiple of 16, as
# measured by scripts/build_data.py on bookworm's lists:
#   ende       inputs p50 21, p95 88, p99 140 -> 96 (96.2% fit); targets p50 21, p95 112, p99 183
#              -> 128 (96.6% fit);
#   summarize  inputs p50 71, p95 204, p99 328 -> 208 (95.3% fit); targets p50 10, p99 22 -> 24.
# Longer examples are truncated (EOS kept) by append_eos_after_trim, as in T5.
# Paper tasks: what T5X's WMT configs use (256/256) and T5's usual CNN/DM lengths (512/128).
FEATURE_LENGTHS: dict[str, dict[str, int]] = {
    DDTP_ENDE: {'inputs': 96, 'targets': 128},
    DDTP_SUMMARIZE: {'inputs': 208, 'targets': 24},
    WMT_ENDE: {'inputs': 256, 'targets': 256},
    CNN_DAILYMAIL: {'inputs': 512, 'targets': 128},
}
FEATURE_LENGTHS[DDTP_MIXTURE] = {
    key: max(FEATURE_LENGTHS[DDTP_ENDE][key], FEATURE_LENGTHS[DDTP_SUMMARIZE][key])
    for key in ('inputs', 'targets')
}


# ---------------------------------------------------------------------------------------------
# Preprocessors (T5's `translate` and `summarize` text formats).


@seqio.map_over_dataset
def translate(x: Mapping[str, tf.Tensor], source_language: str,
              target_language: str) -> dict[str, tf.Tensor]:
  """`{'inputs': 'translate English to German: <en>', 'targets': <de>}` from `x[en]`, `x[de]`."""
  prefix = (f'translate {LANGUAGE_NAMES[source_language]} to '
            f'{LANGUAGE_NAMES[target_language]}: ')
  return {'inputs': tf.strings.join([prefix, x[source_language]]),
          'targets': x[target_language]}


@seqio.map_over_dataset
def summarize(x: Mapping[str, tf.Tensor], article_key: str,
              summary_key: str) -> dict[str, tf.Tensor]:
  """`{'inputs': 'summarize: <article>', 'targets': <summary>}`."""
  return {'inputs': tf.strings.join([SUMMARIZE_PREFIX, x[article_key]]),
          'targets': x[summary_key]}


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """T5's output features: `inputs` (optional) and `targets`, both EOS-terminated."""
  return {'inputs': seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
          'targets': seqio.Feature(vocabulary=vocabulary, add_eos=True)}


def _text_to_text_preprocessors(text_preprocessor) -> list:
  return [text_preprocessor, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim]


def _replace_task(name: str, **kwargs) -> seqio.Task:
  # seqio refuses to add a name twice; replacing keeps re-registration (tests, reloads) working.
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def _replace_mixture(name: str, tasks: Sequence[tuple[str, float]]) -> seqio.Mixture:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks))


# ---------------------------------------------------------------------------------------------
# DDTP tasks.


def register_ddtp_tasks(data_dir: str | os.PathLike | None = None,
                        vocabulary: seqio.Vocabulary | None = None,
                        suffix: str = '') -> tuple[str, str, str]:
  """Registers `ddtp_ende<suffix>`, `ddtp_summarize<suffix>` and the mixture `ddtp_all<suffix>`.

  Defaults: the TFDS data in `cache_dir('tfds')` and the DDTP vocabulary in `cache_dir('vocab')`.
  Both tasks get equal mixing rates, so the smaller translation task is not starved.
  Returns the three names.
  """
  data_dir = str(data_dir or tfds_ddtp.default_data_dir())
  features = output_features(vocabulary or vocab_lib.sentencepiece_vocabulary())
  ende, summ, mixture = (f'{DDTP_ENDE}{suffix}', f'{DDTP_SUMMARIZE}{suffix}',
                         f'{DDTP_MIXTURE}{suffix}')
  version = tfds_ddtp.VERSION
  _replace_task(
      ende,
      source=seqio.TfdsDataSource(tfds_name=f'{tfds_ddtp.TFDS_NAME}/ende:{version}',
                                  tfds_data_dir=data_dir),
      preprocessors=_text_to_text_preprocessors(
          functools.partial(translate, source_language='en', target_language='de')),
      output_features=features)
  _replace_task(
      summ,
      source=seqio.TfdsDataSource(tfds_name=f'{tfds_ddtp.TFDS_NAME}/summarize:{version}',
                                  tfds_data_dir=data_dir),
      preprocessors=_text_to_text_preprocessors(
          functools.partial(summarize, article_key='description', summary_key='synopsis')),
      output_features=features)
  _replace_mixture(mixture, [(ende, 1.0), (summ, 1.0)])
  return ende, summ, mixture


# ---------------------------------------------------------------------------------------------
# The paper's tasks, with T5's public vocabulary.


class GinConfiguredVocabulary(seqio.Vocabulary):
  """Whatever `t5_public_vocabulary()` returns, looked up at each use rather than at import.

  Task modules are imported while gin files are parsed, before their bindings (and before any
  `--gin.` override), so a vocabulary built at registration would ignore them. This proxy asks the
  gin-configured function again on every use and keeps the returned vocabulary (and so its loaded
  model) for as long as the configuration yields an equal one.
  """

  def __init__(self):
    super().__init__(extra_ids=0)
    self._resolved: seqio.Vocabulary | None = None

  def resolve(self) -> seqio.Vocabulary:
    """The vocabulary the current gin configuration gives."""
    current = t5_public_vocabulary()
    if self._resolved is None or self._resolved != current:
      self._resolved = current
    return self._resolved

  def __getstate__(self):
    # gin deep-copies configurable arguments; the loaded model is dropped, as seqio does.
    return {**self.__dict__, '_resolved': None}

  @property
  def eos_id(self) -> int | None:
    return self.resolve().eos_id

  @property
  def unk_id(self) -> int | None:
    return self.resolve().unk_id

  @property
  def bos_id(self) -> int | None:
    return self.resolve().bos_id

  @property
  def pad_id(self) -> int:
    return self.resolve().pad_id

  @property
  def extra_ids(self) -> int:
    return self.resolve().extra_ids

  @property
  def vocab_size(self) -> int:
    return self.resolve().vocab_size

  @property
  def _base_vocab_size(self) -> int:
    return self.resolve()._base_vocab_size

  def _encode(self, s):
    return self.resolve()._encode(s)

  def _decode(self, ids):
    return self.resolve()._decode(ids)

  def _encode_tf(self, s):
    return self.resolve()._encode_tf(s)

  def _decode_tf(self, ids):
    return self.resolve()._decode_tf(ids)

  def encode(self, s):
    return self.resolve().encode(s)

  def decode(self, ids):
    return self.resolve().decode(ids)

  def encode_tf(self, s):
    return self.resolve().encode_tf(s)

  def decode_tf(self, ids):
    return self.resolve().decode_tf(ids)

  def __eq__(self, other) -> bool:
    if isinstance(other, GinConfiguredVocabulary):
      other = other.resolve()
    return self.resolve() == other

  __hash__ = None  # like seqio's own vocabularies, equal by content, so not hashable

  def __str__(self) -> str:
    return f'GinConfiguredVocabulary({self.resolve()})'


def register_paper_tasks(vocabulary: seqio.Vocabulary | None = None,
                         tfds_data_dir: str | None = None, suffix: str = '') -> tuple[str, str]:
  """Registers `wmt_t2t_ende_v003_specdec<suffix>` and `cnn_dailymail_v002_specdec<suffix>`.

  As T5's `wmt_t2t_ende_v003` and `cnn_dailymail_v002`: T5's text format, tokenize, cache
  placeholder, EOS after trimming. `vocabulary` defaults to the gin-configured
  `t5_public_vocabulary`; `tfds_data_dir` to TFDS's own default (`$TFDS_DATA_DIR`).
  Returns the two names.
  """
  features = output_features(vocabulary or GinConfiguredVocabulary())
  wmt, cnndm = f'{WMT_ENDE}{suffix}', f'{CNN_DAILYMAIL}{suffix}'
  _replace_task(
      wmt,
      source=seqio.TfdsDataSource(tfds_name=WMT_TFDS_NAME, tfds_data_dir=tfds_data_dir),
      preprocessors=_text_to_text_preprocessors(
          functools.partial(translate, source_language='en', target_language='de')),
      output_features=features)
  _replace_task(
      cnndm,
      source=seqio.TfdsDataSource(tfds_name=CNN_DAILYMAIL_TFDS_NAME, tfds_data_dir=tfds_data_dir),
      preprocessors=_text_to_text_preprocessors(
          functools.partial(summarize, article_key='article', summary_key='highlights')),
      output_features=features)
  return wmt, cnndm


# ---------------------------------------------------------------------------------------------
# Getting data out for benchmarks and training.


def feature_lengths(name: str) -> dict[str, int]:
  """Default task feature lengths of a task or mixture registered here (also with a suffix)."""
  matches = [known for known in FEATURE_LENGTHS if name.startswith(known)]
  if not matches:
    raise ValueError(f'no default feature lengths for {name!r}; pass lengths explicitly '
                     f'(known: {sorted(FEATURE_LENGTHS)})')
  return dict(FEATURE_LENGTHS[max(matches, key=len)])


def _pad_rows(rows: Sequence[np.ndarray], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def get_eval_examples(task: str, split: str = 'test', n: int = 64,
                      lengths: Mapping[str, int] | None = None) -> dict[str, np.ndarray | list]:
  """The first `n` examples of a task's split, tokenized, in the dataset's stored order.

  Returns `inputs [n, inputs_length]` and `targets [n, targets_length]` int32 (EOS-terminated,
  truncated to `lengths`, right-padded with 0) and the untokenized `inputs_pretokenized` /
  `targets_pretokenized` strings.
  """
  if n <= 0:
    raise ValueError(f'n must be positive, got {n}')
  provider = seqio.get_mixture_or_task(task)
  if not isinstance(provider, seqio.Task):
    raise ValueError(f'{task!r} is a mixture; evaluation examples come from one task at a time')
  lengths = dict(lengths or feature_lengths(task))
  # No in-memory cache: only `n` examples are read, and TF warns about half-read caches.
  dataset = provider.get_dataset(sequence_length=lengths, split=split, shuffle=False,
                                 num_epochs=1, use_cached=False, try_in_mem_cache=False)
  rows = list(dataset.take(n).as_numpy_iterator())
  if len(rows) < n:
    raise ValueError(f'{task} split {split!r} has only {len(rows)} examples, asked for {n}')
  return {
      'inputs': _pad_rows([r['inputs'] for r in rows], lengths['inputs']),
      'targets': _pad_rows([r['targets'] for r in rows], lengths['targets']),
      'inputs_pretokenized': [r['inputs_pretokenized'].decode('utf-8') for r in rows],
      'targets_pretokenized': [r['targets_pretokenized'].decode('utf-8') for r in rows],
  }


def iter_train_batches(task_or_mixture: str, batch_size: int,
                       lengths: Mapping[str, int] | None = None, split: str = 'train',
                       seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                       skip_batches: int = 0,
                       pack: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Batches of T5X's model features, as numpy, from `seqio.EncDecFeatureConverter`.

  Each batch has `encoder_input_tokens [batch_size, inputs_length]` and
  `decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`
  `[batch_size, targets_length]` (plus segment ids and positions when `pack`). The order is fixed
  by `seed`; `skip_batches` resumes a run by skipping what it already consumed.
  `num_epochs=None` repeats forever.
  """
  if batch_size <= 0 or skip_batches < 0:
    raise ValueError(f'batch_size must be positive and skip_batches >= 0, got {batch_size}, '
                     f'{skip_batches}')
  dataset = seqio.get_dataset(
      task_or_mixture, task_feature_lengths=dict(lengths or feature_lengths(task_or_mixture)),
      feature_converter=seqio.EncDecFeatureConverter(pack=pack), dataset_split=split,
      use_cached=False, shuffle=shuffle, num_epochs=num_epochs, seed=seed, verbose=False)
  dataset = dataset.batch(batch_size, drop_remainder=True).skip(skip_batches)
  return dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def cached_train_batches(directory: str | os.PathLike, task_or_mixture: str, batch_size: int,
                         num_batches: int, *, progress: bool = True,
                         **kwargs: Any) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
  """`iter_train_batches(...)`'s first `num_batches` batches, stored once as `.npy` files.

  Every model of a family trains on the same batches; producing them (seqio's
  tokenising, packing TF pipeline) costs a small model as much CPU as its own
  training step, and competes with it for the same cores. So they are
  materialised once under `directory` (one `[num_batches, batch_size, length]`
  array per feature, written atomically; a complete directory is reused) and
  read back memory-mapped.

  Returns:
    `make_batches(start)`: an iterator over batches `start, start + 1, ...,
    num_batches - 1`, each a dict of `[batch_size, length]` arrays.
  """
  directory = pathlib.Path(directory)
  spec = {'task': task_or_mixture, 'batch_size': batch_size, 'num_batches': num_batches,
          **{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in kwargs.items()}}
  done = directory / 'spec.json'
  if not (done.is_file() and json.loads(done.read_text()) == spec):
    shutil.rmtree(directory, ignore_errors=True)
    partial = directory.with_name(directory.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    arrays: dict[str, np.lib.format.open_memmap] = {}
    batches = iter_train_batches(task_or_mixture, batch_size, **kwargs)
    for index in tqdm.trange(num_batches, desc=f'batches of {task_or_mixture}',
                             disable=not progress, unit='batch'):
      batch = next(batches)
      for name, value in batch.items():
        if name not in arrays:
          arrays[name] = np.lib.format.open_memmap(
              partial / f'{name}.npy', mode='w+', dtype=value.dtype,
              shape=(num_batches,) + value.shape)
        arrays[name][index] = value
    for array in arrays.values():
      array.flush()
    (partial / 'spec.json').write_text(json.dumps(spec, indent=1))
    partial.rename(directory)
  arrays = {path.stem: np.load(path, mmap_mode='r') for path in sorted(directory.glob('*.npy'))}

  def make_batches(start: int) -> Iterator[dict[str, np.ndarray]]:
    for index in range(start, num_batches):
      yield {name: np.asarray(array[index]) for name, array in arrays.items()}

  return make_batches


register_ddtp_tasks()
register_paper_tasks()

__all__ = [
    'CNN_DAILYMAIL', 'DDTP_ENDE', 'DDTP_MIXTURE', 'DDTP_SUMMARIZE', 'ENDE_PREFIX',
    'FEATURE_LENGTHS', 'GinConfiguredVocabulary', 'SUMMARIZE_PREFIX', 'T5_PUBLIC_VOCAB_PATH',
    'WMT_ENDE', 'cached_train_batches', 'feature_lengths', 'get_eval_examples',
    'iter_train_batches', 'output_features', 'register_ddtp_tasks', 'register_paper_tasks',
    'summarize', 't5_public_vocabulary', 'translate',
]
