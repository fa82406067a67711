"""The sentencepiece vocabulary of the DDTP tasks, with T5's conventions.

T5's vocabularies reserve pad 0, EOS 1, UNK 2 and have no BOS; `seqio.SentencePieceVocabulary`
relies on exactly that. The model's embedding has more rows than the vocabulary has pieces,
rounded up to a multiple of 128 as T5 rounds its 32100 pieces (32000 + 100 sentinels) to 32128;
the DDTP models use 8192 rows for 8000 pieces. Ids from the unused rows never come out of the
tokenizer, and seqio decodes them as UNK.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable

import gin

from specdec_t5x.paths import cache_dir

DDTP_VOCAB_SIZE = 8000
EMBEDDING_MULTIPLE = 128
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DDTP_VOCAB_NAME = f'ddtp_en_de_{DDTP_VOCAB_SIZE}'
# T5's public vocabulary as T5X's T5 1.1 gin files bind it (the sentinels are inside the model
# file, so extra_ids=0): 32100 pieces, padded to 32128 rows in the model. It must compare equal to
# the model's vocabulary or `t5x.infer` refuses the task.
T5_PUBLIC_VOCAB_PATH = 'gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model'
T5_PUBLIC_EXTRA_IDS = 0
# sentencepiece skips training sentences longer than this many bytes; DDTP paragraphs and whole
# summarisation inputs can exceed its default of 4192.
MAX_SENTENCE_BYTES = 32768


def padded_vocab_size(vocab_size: int, multiple: int = EMBEDDING_MULTIPLE) -> int:
  """Embedding rows for `vocab_size` pieces: the next multiple of `multiple` (32100 -> 32128)."""
  if vocab_size <= 0 or multiple <= 0:
    raise ValueError(f'vocab_size and multiple must be positive, got {vocab_size}, {multiple}')
  return -(-vocab_size // multiple) * multiple


# The CPU presets' `vocab_size`: a multiple of 128 with room above the 8000 pieces (the next
# multiple would be 8064; 8192 = 2**13 keeps the logits matmul a power of two).
DDTP_EMBEDDING_ROWS = 8192


def ddtp_vocab_path() -> pathlib.Path:
  """Where the DDTP sentencepiece model lives: `cache_dir('vocab')/ddtp_en_de_8000.model`."""
  return cache_dir('vocab') / f'{DDTP_VOCAB_NAME}.model'


def train_sentencepiece(texts: Iterable[str], model_path: str | os.PathLike,
                        vocab_size: int = DDTP_VOCAB_SIZE, character_coverage: float = 0.9999,
                        allow_smaller: bool = False, num_threads: int = 2) -> pathlib.Path:
  """Trains a unigram sentencepiece model on `texts` and writes it to `model_path` (`.model`).

  T5 conventions: pad 0, EOS 1, UNK 2, no BOS; the default NFKC normalisation of T5's models.
  All texts are used (no sampling), so the same texts always give the same model. The file is
  written atomically: a killed run never leaves a half-written model that looks finished.
  `allow_smaller` lets a corpus too small for `vocab_size` pieces give fewer (a test fixture);
  by default that is an error.
  """
  import sentencepiece as spm  # a heavy import that the rest of the package does not need

  model_path = pathlib.Path(model_path)
  if model_path.suffix != '.model':
    raise ValueError(f'model_path must end in .model, got {model_path}')
  texts = [t for t in texts if t.strip()]
  if not texts:
    raise ValueError('no training text for the sentencepiece vocabulary')
  model_path.parent.mkdir(parents=True, exist_ok=True)
  tmp_prefix = model_path.with_name(model_path.stem + '.partial')
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=str(tmp_prefix), vocab_size=vocab_size,
      model_type='unigram', character_coverage=character_coverage,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      input_sentence_size=0, shuffle_input_sentence=False,
      max_sentence_length=MAX_SENTENCE_BYTES, hard_vocab_limit=not allow_smaller,
      num_threads=num_threads, minloglevel=2)
  os.replace(f'{tmp_prefix}.model', model_path)
  os.replace(f'{tmp_prefix}.vocab', model_path.with_suffix('.vocab'))
  return model_path


def sentencepiece_vocabulary(path: str | os.PathLike | None = None):
  """`seqio.SentencePieceVocabulary(path, extra_ids=0)`; default: the DDTP model.

  seqio loads the model lazily, so this works before the model exists; it fails on first use.
  """
  import seqio

  return seqio.SentencePieceVocabulary(str(path or ddtp_vocab_path()), extra_ids=0)


@gin.configurable
def t5_public_vocabulary(sentencepiece_model_file: str = T5_PUBLIC_VOCAB_PATH,
                         extra_ids: int = T5_PUBLIC_EXTRA_IDS):
  """T5's public 32k vocabulary as a `seqio.SentencePieceVocabulary` (lazy: nothing is read).

  Point it at a local copy in gin:
  `t5_public_vocabulary.sentencepiece_model_file = '/path/to/sentencepiece.model'`.
  (Defined here rather than in `tasks`, so that reloading `tasks` does not register it twice.)
  """
  import seqio

  return seqio.SentencePieceVocabulary(sentencepiece_model_file, extra_ids=extra_ids)


def load_ddtp_vocabulary(path: str | os.PathLike | None = None):
  """The DDTP vocabulary, checked: the file exists and follows T5's id conventions."""
  path = pathlib.Path(path or ddtp_vocab_path())
  if not path.is_file():
    raise ValueError(f'no sentencepiece model at {path}; build it with scripts/build_data.py')
  vocabulary = sentencepiece_vocabulary(path)
  tokenizer = vocabulary.tokenizer
  ids = (tokenizer.pad_id(), tokenizer.eos_id(), tokenizer.unk_id(), tokenizer.bos_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID, -1):
    raise ValueError(f'{path} has (pad, eos, unk, bos) ids {ids}; T5 needs (0, 1, 2, -1)')
  return vocabulary


__all__ = [
    'DDTP_EMBEDDING_ROWS', 'DDTP_VOCAB_SIZE', 'EOS_ID', 'PAD_ID', 'T5_PUBLIC_EXTRA_IDS',
    'T5_PUBLIC_VOCAB_PATH', 'UNK_ID', 'ddtp_vocab_path', 'load_ddtp_vocabulary',
    'padded_vocab_size', 'sentencepiece_vocabulary', 't5_public_vocabulary',
    'train_sentencepiece',
]
