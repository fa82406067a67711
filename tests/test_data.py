"""The DDTP data pipeline (parse, join, align, clean, split, TFDS, seqio) and the paper's tasks.

Everything runs on the hand-written lists in tests/fixtures/ddtp/ and a tiny sentencepiece model
trained on them; nothing is downloaded.
"""

import bz2
import collections
import gzip
import importlib
import lzma
import os
import pathlib

import numpy as np
import pytest

from specdec_t5x import network
from specdec_t5x.data import ddtp
from specdec_t5x.data import vocab as vocab_lib

FIXTURE_DIR = pathlib.Path(__file__).parent / 'fixtures' / 'ddtp'
TINY_VOCAB_SIZE = 150
EOS = vocab_lib.EOS_ID


@pytest.fixture(scope='module')
def corpus():
  return ddtp.build_corpus(FIXTURE_DIR)


@pytest.fixture(scope='module')
def tiny_vocab_path(corpus, tmp_path_factory):
  path = tmp_path_factory.mktemp('vocab') / 'tiny.model'
  # Full character coverage: with so little text, any rare letter would otherwise become UNK.
  return vocab_lib.train_sentencepiece(ddtp.training_texts(corpus), path,
                                       vocab_size=TINY_VOCAB_SIZE, character_coverage=1.0)


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  from specdec_t5x.data import tfds_ddtp

  data_dir = tmp_path_factory.mktemp('tfds')
  tfds_ddtp.build_ddtp_tfds(FIXTURE_DIR, data_dir)
  return data_dir


@pytest.fixture(scope='module')
def fixture_tasks(tfds_dir, tiny_vocab_path):
  from specdec_t5x.data import tasks

  return tasks.register_ddtp_tasks(tfds_dir, vocab_lib.sentencepiece_vocabulary(tiny_vocab_path),
                                   suffix='_fixture')


def rows_of(corpus, task, package):
  return [row for split in ddtp.SPLITS for row in corpus.examples[task][split]
          if row['package'] == package]


# ---------------------------------------------------------------------------------------------
# Parsing and cleaning.


def test_deb822_paragraphs_keep_continuation_lines():
  text = 'Package: a\nDescription-en: short\n long one\n .\n two\n\n\nPackage: b\nX: y\n'
  paragraphs = list(ddtp.iter_deb822_paragraphs(text))
  assert paragraphs == [{'Package': 'a', 'Description-en': 'short\n long one\n .\n two'},
                        {'Package': 'b', 'X': 'y'}]


@pytest.mark.parametrize('text', [' orphan continuation\n', 'Package a\n', ': no name\n'])
def test_deb822_rejects_malformed_lines(text):
  with pytest.raises(ValueError, match='deb822 line 1'):
    list(ddtp.iter_deb822_paragraphs(text))


def test_description_paragraphs_and_markup():
  value = ('a tool  for things\n'
           ' First line of the first\n'
           ' paragraph; the next line is text, not a separator:\n'
           ' .cabal files are read.\n'
           ' .\n'
           ' Features:\n'
           '  * one\n'
           '  - two\n'
           '    continued\n'
           ' + three\n'
           ' o four\n'
           ' \u2022 five\n'
           '  --verbose is kept\n'
           ' .\n'
           ' .\n'
           ' See http://example.org/x.')
  synopsis, paragraphs = ddtp.parse_description(value)
  assert synopsis == 'a tool for things'
  assert paragraphs == (
      'First line of the first paragraph; the next line is text, not a separator: '
      '.cabal files are read.',
      'Features: one two continued three four five --verbose is kept',
      'See http://example.org/x.',
  )


def test_description_without_long_part():
  assert ddtp.parse_description('only a synopsis') == ('only a synopsis', ())


def test_load_descriptions_from_fixture():
  files = ddtp.find_translation_files(FIXTURE_DIR)
  english = ddtp.load_descriptions(files['en'], 'en')
  german = ddtp.load_descriptions(files['de'], 'de')
  assert len(english) == 10 and len(german) == 9
  gridcalc = next(d for d in english if d.package == 'gridcalc')
  assert gridcalc.md5 == '729bb606c24398395dd2e3a9812e11c2'
  assert gridcalc.synopsis == 'spreadsheet calculator for the terminal'
  assert gridcalc.paragraphs[1] == ('Features: formulas with cell references sorting of rows and '
                                    'columns export to HTML')


def test_load_descriptions_names_the_wrong_language():
  files = ddtp.find_translation_files(FIXTURE_DIR)
  with pytest.raises(ValueError, match="lacks field.*Description-de.*Translation-de"):
    ddtp.load_descriptions(files['en'], 'de')


@pytest.mark.parametrize('opener,suffix', [(gzip.open, '.gz'), (lzma.open, '.xz'),
                                           (bz2.open, '.bz2')])
def test_compressed_lists_read_the_same(tmp_path, opener, suffix):
  plain = (FIXTURE_DIR / 'Translation-de').read_bytes()
  path = tmp_path / f'x_i18n_Translation-de{suffix}'
  with opener(path, 'wb') as f:
    f.write(plain)
  assert ddtp.read_translation_file(path) == plain.decode('utf-8')


def test_bad_inputs_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    ddtp.read_translation_file(tmp_path / 'missing')
  garbage = tmp_path / 'Translation-en'
  garbage.write_bytes(b'\xff\xfe\x00binary')
  with pytest.raises(ValueError, match='not UTF-8'):
    ddtp.read_translation_file(garbage)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='no Translation-en file'):
    ddtp.find_translation_files(empty)
  with pytest.raises(ValueError, match='does not exist'):
    ddtp.find_translation_files(tmp_path / 'nowhere')


def test_fetch_without_root_asks_for_a_directory(monkeypatch, tmp_path):
  monkeypatch.setattr(os, 'geteuid', lambda: 1000)
  with pytest.raises(PermissionError, match='--translations-dir'):
    ddtp.fetch_translations(tmp_path)


# ---------------------------------------------------------------------------------------------
# Joining, aligning, deduplicating, splitting.


def test_md5_join_and_paragraph_alignment(corpus):
  gridcalc = sorted((r['en'], r['de']) for r in rows_of(corpus, 'ende', 'gridcalc'))
  assert gridcalc == sorted([
      ('spreadsheet calculator for the terminal', 'Tabellenkalkulation für das Terminal'),
      ('Gridcalc is a small spreadsheet program that runs in a text terminal. It reads and '
       'writes CSV files and recalculates formulas as you type.',
       'Gridcalc ist ein kleines Tabellenkalkulationsprogramm, das in einem Textterminal läuft. '
       'Es liest und schreibt CSV-Dateien und berechnet Formeln während der Eingabe neu.'),
      ('Features: formulas with cell references sorting of rows and columns export to HTML',
       'Funktionalitäten: Formeln mit Zellbezügen Sortieren von Zeilen und Spalten Export nach '
       'HTML'),
  ])
  # 2 English vs 3 German paragraphs: only the synopsis pair is trusted.
  assert [(r['en'], r['de']) for r in rows_of(corpus, 'ende', 'zenmode')] == [
      ('distraction-free text editor', 'Ablenkungsfreier Texteditor')]
  # Untranslated synopsis dropped, translated paragraph kept.
  assert [r['en'] for r in rows_of(corpus, 'ende', 'fortune-de')] == [
      'Fortune cookies for the fortune program, in German.']
  # A German paragraph three times longer than its English one is dropped.
  assert [r['en'] for r in rows_of(corpus, 'ende', 'mapview')] == ['map viewer']
  # A translation whose md5 has no English description, and English without German.
  assert rows_of(corpus, 'ende', 'wavetool') == rows_of(corpus, 'ende', 'starmap') == []
  assert corpus.stats['ende_translation_without_english'] == 1
  assert corpus.stats['ende_paragraph_count_mismatch'] == 1
  assert corpus.stats['ende_dropped_untranslated'] == 1
  assert corpus.stats['ende_dropped_length_ratio'] == 1


def test_summarisation_pairs(corpus):
  [starmap] = rows_of(corpus, 'summarize', 'starmap')
  assert starmap['synopsis'] == 'planetarium showing the night sky'
  assert starmap['description'].startswith('Starmap draws the stars')
  [gridcalc] = rows_of(corpus, 'summarize', 'gridcalc')
  assert '*' not in gridcalc['description'] and ' - ' not in gridcalc['description']
  # hexviewer has no long description, so nothing to summarise.
  assert rows_of(corpus, 'summarize', 'hexviewer') == []
  assert corpus.stats['summarize_dropped_no_long_description'] == 1


def test_shared_paragraph_is_kept_once_by_the_first_package(corpus):
  shared = ('Zen is a compact archive format with fast random access to members. See '
            'http://zen.example.org/ for the format description.')
  owners = [r['package'] for split in ddtp.SPLITS for r in corpus.examples['ende'][split]
            if r['en'] == shared]
  assert owners == ['libzen-dev']  # '-' sorts before '1'
  assert corpus.stats['ende_dropped_duplicate'] == 1


def test_split_of_is_stable_and_proportional():
  assert {name: ddtp.split_of(name) for name in
          ('gridcalc', 'netprobe', 'starmap', 'inkpot', 'zenmode')} == {
              'gridcalc': 'train', 'netprobe': 'validation', 'starmap': 'validation',
              'inkpot': 'test', 'zenmode': 'test'}
  counts = collections.Counter(ddtp.split_of(f'package-{i}') for i in range(20000))
  for split, fraction in zip(ddtp.SPLITS, ddtp.DEFAULT_SPLIT_FRACTIONS, strict=True):
    # Binomial standard deviation is at most 0.0043 * 20000 = 85; allow 5 sigma.
    assert abs(counts[split] - fraction * 20000) < 425, counts
  assert ddtp.split_of('gridcalc', (0.0, 0.0, 1.0)) == 'test'
  with pytest.raises(ValueError, match='split fractions'):
    ddtp.split_of('x', (0.5, 0.5))
  with pytest.raises(ValueError, match='split fractions'):
    ddtp.split_of('x', (0.9, 0.2, -0.1))


def test_no_package_or_source_text_in_two_splits(corpus):
  for task, source in (('ende', 'en'), ('summarize', 'description')):
    packages = [corpus.packages(task, split) for split in ddtp.SPLITS]
    texts = [{r[source] for r in corpus.examples[task][split]} for split in ddtp.SPLITS]
    for i in range(3):
      for j in range(i + 1, 3):
        assert not packages[i] & packages[j], (task, i, j)
        assert not texts[i] & texts[j], (task, i, j)
    for split in ddtp.SPLITS:
      assert all(ddtp.split_of(p) == split for p in corpus.packages(task, split))
  assert corpus.counts() == {'ende': {'train': 9, 'validation': 2, 'test': 5},
                             'summarize': {'train': 4, 'validation': 2, 'test': 3}}


def test_corpus_does_not_depend_on_file_order_or_compression(corpus, tmp_path):
  # The English list cut in two, second half first and gzip-compressed.
  paragraphs = (FIXTURE_DIR / 'Translation-en').read_text().strip().split('\n\n')
  half = len(paragraphs) // 2
  (tmp_path / 'b_Translation-en').write_text('\n\n'.join(paragraphs[:half]) + '\n')
  with gzip.open(tmp_path / 'a_Translation-en.gz', 'wt') as f:
    f.write('\n\n'.join(paragraphs[half:][::-1]) + '\n')
  (tmp_path / 'Translation-de').write_bytes((FIXTURE_DIR / 'Translation-de').read_bytes())
  rebuilt = ddtp.build_corpus(tmp_path)
  assert rebuilt.examples == corpus.examples


# ---------------------------------------------------------------------------------------------
# Vocabulary.


def test_padded_vocab_size():
  assert vocab_lib.padded_vocab_size(32100) == 32128
  assert vocab_lib.padded_vocab_size(8000) == 8064
  rows = vocab_lib.DDTP_EMBEDDING_ROWS
  assert rows % 128 == 0 and rows >= vocab_lib.DDTP_VOCAB_SIZE
  assert all(network.config_from_preset(name).vocab_size == rows
             for name in ('cpu_target', 'cpu_large', 'cpu_base', 'cpu_small'))
  assert vocab_lib.padded_vocab_size(128) == 128
  with pytest.raises(ValueError, match='positive'):
    vocab_lib.padded_vocab_size(0)


def test_tiny_vocab_follows_t5_conventions(tiny_vocab_path):
  vocabulary = vocab_lib.load_ddtp_vocabulary(tiny_vocab_path)
  assert vocabulary.vocab_size == TINY_VOCAB_SIZE
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
  text = 'Dieses Paket enthält die Laufzeitbibliothek.'
  assert vocabulary.decode(vocabulary.encode(text)) == text


def test_vocab_errors(tmp_path, corpus):
  with pytest.raises(ValueError, match='build_data.py'):
    vocab_lib.load_ddtp_vocabulary(tmp_path / 'missing.model')
  with pytest.raises(ValueError, match='end in .model'):
    vocab_lib.train_sentencepiece(['x'], tmp_path / 'v.bin')
  with pytest.raises(ValueError, match='no training text'):
    vocab_lib.train_sentencepiece(['  '], tmp_path / 'v.model')
  # sentencepiece's own defaults (unk 0, bos 1, eos 2, no pad) are not T5's.
  import sentencepiece as spm

  spm.SentencePieceTrainer.train(sentence_iterator=iter(ddtp.training_texts(corpus)),
                                 model_prefix=str(tmp_path / 'default'), vocab_size=100,
                                 minloglevel=2)
  with pytest.raises(ValueError, match=r'needs \(0, 1, 2, -1\)'):
    vocab_lib.load_ddtp_vocabulary(tmp_path / 'default.model')


# ---------------------------------------------------------------------------------------------
# TFDS and seqio.


def test_tfds_build_matches_the_corpus(tfds_dir, corpus):
  import tensorflow_datasets as tfds

  from specdec_t5x.data import tfds_ddtp

  for config, (source, target) in tfds_ddtp.FIELDS.items():
    builder = tfds.builder(f'ddtp/{config}', data_dir=str(tfds_dir))
    for split in ddtp.SPLITS:
      rows = [{k: v.decode('utf-8') for k, v in ex.items()}
              for ex in tfds.as_numpy(builder.as_dataset(split=split))]
      expected = corpus.examples[config][split]
      assert sorted(rows, key=lambda r: (r['package'], r[source])) == \
          sorted(expected, key=lambda r: (r['package'], r[source]))  # noqa: B023
    assert builder.info.supervised_keys == (source, target)
    assert builder.info.metadata['translation_files'] == ['Translation-de', 'Translation-en']
  with pytest.raises(ValueError, match='unknown ddtp config'):
    tfds_ddtp.build_ddtp_tfds(FIXTURE_DIR, tfds_dir, configs=('fr',))


def _strip(row: np.ndarray) -> list[int]:
  return [int(t) for t in row if t != 0]


def _with_eos_after_trim(ids: list[int], length: int) -> list[int]:
  """What append_eos_after_trim makes of `ids`: at most `length` tokens, the last one EOS."""
  return ids[:length - 1] + [EOS]


def test_ddtp_tasks_tokenize_with_prefix_and_eos(fixture_tasks, tiny_vocab_path):
  from specdec_t5x.data import tasks

  vocabulary = vocab_lib.load_ddtp_vocabulary(tiny_vocab_path)
  ende, summ, _ = fixture_tasks
  for name, prefix, split, n in ((ende, tasks.ENDE_PREFIX, 'test', 5),
                                 (summ, tasks.SUMMARIZE_PREFIX, 'validation', 2)):
    examples = tasks.get_eval_examples(name, split, n)
    lengths = tasks.feature_lengths(name)
    assert examples['inputs'].shape == (n, lengths['inputs'])
    assert examples['targets'].shape == (n, lengths['targets'])
    assert examples['inputs'].dtype == np.int32
    for i in range(n):
      assert examples['inputs_pretokenized'][i].startswith(prefix)
      # Compare with encode, not decode: the vocabulary, trained on the train split, never saw
      # some test-split letters (a capital R), which decode to UNK.
      assert _strip(examples['inputs'][i]) == _with_eos_after_trim(
          vocabulary.encode(examples['inputs_pretokenized'][i]), lengths['inputs'])
      assert _strip(examples['targets'][i]) == _with_eos_after_trim(
          vocabulary.encode(examples['targets_pretokenized'][i]), lengths['targets'])
  with pytest.raises(ValueError, match='only 2 examples'):
    tasks.get_eval_examples(summ, 'validation', 3)
  with pytest.raises(ValueError, match='is a mixture'):
    tasks.get_eval_examples(fixture_tasks[2], 'validation', 1)


def test_ddtp_truncation_keeps_eos(fixture_tasks):
  from specdec_t5x.data import tasks

  examples = tasks.get_eval_examples(fixture_tasks[0], 'validation', 2,
                                     lengths={'inputs': 8, 'targets': 4})
  assert examples['inputs'].shape == (2, 8) and examples['targets'].shape == (2, 4)
  assert (examples['inputs'][:, -1] == EOS).all()  # every input here is longer than 8 tokens


def test_training_batches_have_t5x_features(fixture_tasks, tiny_vocab_path):
  from specdec_t5x.data import tasks

  vocabulary = vocab_lib.load_ddtp_vocabulary(tiny_vocab_path)
  mixture = fixture_tasks[2]
  lengths = {'inputs': 64, 'targets': 32}
  batches = tasks.iter_train_batches(mixture, batch_size=4, lengths=lengths, seed=3)
  seen_prefixes = set()
  for _ in range(6):
    batch = next(batches)
    assert set(batch) == {'encoder_input_tokens', 'decoder_input_tokens',
                          'decoder_target_tokens', 'decoder_loss_weights'}
    assert batch['encoder_input_tokens'].shape == (4, 64)
    for key in ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights'):
      assert batch[key].shape == (4, 32)
    targets = batch['decoder_target_tokens']
    np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1:], targets[:, :-1])
    np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 0], 0)
    np.testing.assert_array_equal(batch['decoder_loss_weights'], targets > 0)
    for row in batch['encoder_input_tokens']:
      seen_prefixes.add(vocabulary.decode(_strip(row)).split(':')[0])
  assert seen_prefixes == {'translate English to German', 'summarize'}
  again = next(tasks.iter_train_batches(mixture, batch_size=4, lengths=lengths, seed=3,
                                        skip_batches=5))
  np.testing.assert_array_equal(again['decoder_target_tokens'], targets)


def test_registration_is_idempotent_and_downloads_nothing():
  import seqio

  from specdec_t5x.data import tasks

  reloaded = importlib.reload(tasks)
  names = set(seqio.TaskRegistry.names())
  assert {reloaded.DDTP_ENDE, reloaded.DDTP_SUMMARIZE, reloaded.WMT_ENDE,
          reloaded.CNN_DAILYMAIL} <= names
  assert reloaded.DDTP_MIXTURE in seqio.MixtureRegistry.names()
  assert reloaded.feature_lengths(reloaded.DDTP_MIXTURE) == {
      key: max(reloaded.FEATURE_LENGTHS[reloaded.DDTP_ENDE][key],
               reloaded.FEATURE_LENGTHS[reloaded.DDTP_SUMMARIZE][key])
      for key in ('inputs', 'targets')}
  with pytest.raises(ValueError, match='no default feature lengths'):
    reloaded.feature_lengths('glue_cola')


# ---------------------------------------------------------------------------------------------
# The paper's tasks, on hand-written rows and a local vocabulary bound through gin.


@pytest.fixture
def gin_bound_vocab(tiny_vocab_path):
  import gin

  from specdec_t5x.data import tasks

  with gin.unlock_config():
    gin.bind_parameter('t5_public_vocabulary.sentencepiece_model_file', str(tiny_vocab_path))
  yield tasks
  gin.clear_config()


def test_paper_vocabulary_defaults_to_t5s_public_model():
  import seqio

  from specdec_t5x.data import tasks

  vocabulary = seqio.get_mixture_or_task(tasks.WMT_ENDE).output_features['targets'].vocabulary
  resolved = vocabulary.resolve()  # builds the object only; the gs:// file is never opened
  assert resolved.sentencepiece_model_file == tasks.T5_PUBLIC_VOCAB_PATH
  assert resolved.extra_ids == 0


def test_paper_tasks_preprocess_handwritten_rows(gin_bound_vocab, tiny_vocab_path):
  import seqio
  import tensorflow as tf

  tasks = gin_bound_vocab
  vocabulary = seqio.SentencePieceVocabulary(str(tiny_vocab_path), extra_ids=0)
  cases = {
      tasks.WMT_ENDE: ({'en': ['This package contains the shared library.', 'map viewer'],
                        'de': ['Dieses Paket enthält die Laufzeitbibliothek.',
                               'Kartenbetrachter']},
                       'en', 'de', tasks.ENDE_PREFIX),
      tasks.CNN_DAILYMAIL: ({'article': ['Starmap draws the stars and planets.',
                                         'Inkpot is a drawing program.'],
                             'highlights': ['planetarium', 'drawing program'],
                             'id': ['a', 'b']},
                            'article', 'highlights', tasks.SUMMARIZE_PREFIX),
  }
  lengths = {'inputs': 24, 'targets': 6}
  for name, (rows, source, target, prefix) in cases.items():
    task = seqio.get_mixture_or_task(name)
    assert task.output_features['inputs'].vocabulary == vocabulary  # gin binding took effect
    dataset = tf.data.Dataset.from_tensor_slices(rows)
    out = list(task.preprocess_postcache(task.preprocess_precache(dataset), lengths)
               .as_numpy_iterator())
    assert len(out) == 2
    for i, ex in enumerate(out):
      assert ex['inputs_pretokenized'].decode() == prefix + rows[source][i]
      assert ex['targets_pretokenized'].decode() == rows[target][i]
      assert ex['inputs'].tolist() == _with_eos_after_trim(
          vocabulary.encode(prefix + rows[source][i]), lengths['inputs'])
      assert ex['targets'].tolist() == _with_eos_after_trim(
          vocabulary.encode(rows[target][i]), lengths['targets'])
    assert any(len(vocabulary.encode(t)) >= lengths['targets'] for t in rows[target])


def test_gin_configured_vocabulary_follows_later_bindings(gin_bound_vocab, tiny_vocab_path):
  import seqio

  tasks = gin_bound_vocab
  vocabulary = tasks.GinConfiguredVocabulary()
  assert vocabulary == seqio.SentencePieceVocabulary(str(tiny_vocab_path), extra_ids=0)
  assert vocabulary != seqio.SentencePieceVocabulary(str(tiny_vocab_path), extra_ids=100)
  assert vocabulary.vocab_size == TINY_VOCAB_SIZE
  assert vocabulary.decode(vocabulary.encode('map viewer')) == 'map viewer'
