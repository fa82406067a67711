"""The Debian Description Translation Project (DDTP) as two real seq2seq tasks.

Debian's package registry serves `Translation-<lang>` lists: deb822 paragraphs

    Package: 0ad
    Description-md5: d943033bedada21853d2ae54a2578a7b
    Description-en: Real-time strategy game of ancient warfare
     0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
     real-time strategy (RTS) game of ancient warfare. ...
     .
     Second paragraph ...

The first line of `Description-<lang>` is the one-line synopsis; the following lines are the long
description, with ` .` lines separating paragraphs and lines indented by two or more spaces shown
verbatim (mostly bullet lists). `Description-md5` is the md5 of the ENGLISH description, so a
German paragraph names the English text it translates.

Two tasks are built from them:

* `ende`: English -> German, the synopsis pair plus the long descriptions paragraph by paragraph,
  where both sides have the same number of paragraphs;
* `summarize`: English long description -> its one-line synopsis.

Splits are by package (a stable hash of the package name, so no package is in two splits), and an
example whose source text occurs more than once is kept once, owned by the alphabetically first
package that has it, so the same source text cannot sit in train and test.
"""

from __future__ import annotations

import bz2
import collections
import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence

SPLITS = ('train', 'validation', 'test')
# Fractions of packages per split (a package's examples all go to its split).
DEFAULT_SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
LANGUAGES = ('en', 'de')
APT_LISTS_DIR = pathlib.Path('/var/lib/apt/lists')
APT_HELPER = pathlib.Path('/usr/lib/apt/apt-helper')
# Compression suffixes apt uses for list files; Python reads these without apt-helper.
_PYTHON_OPENERS = {'.gz': gzip.open, '.xz': lzma.open, '.lzma': lzma.open, '.bz2': bz2.open}
_APT_ONLY_SUFFIXES = ('.lz4', '.zst')
# A translated paragraph whose length (in characters) differs from the English one by more than
# this factor is almost surely misaligned (a merged or split paragraph), so the pair is dropped.
MAX_LENGTH_RATIO = 3.0
# List markers at the start of a long-description line: '*', '-', '+', 'o', '•', '·'.
_BULLET = re.compile(r'^(?:[*+\-o\u2022\u00b7])\s+')
_WHITESPACE = re.compile(r'\s+')
_TRANSLATION_FILE = re.compile(
    r'Translation-(?P<lang>[A-Za-z_]+)(?P<suffix>\.(?:gz|xz|lzma|bz2|lz4|zst))?$')



@dataclasses.dataclass(frozen=True)
class Description:
  """One package description in one language, cleaned of markup."""

  package: str
  md5: str
  synopsis: str
  paragraphs: tuple[str, ...]


@dataclasses.dataclass
class Corpus:
  """Both tasks, split: `examples[task][split]` is a list of dicts of strings.

  `ende` rows have keys package, en, de; `summarize` rows have package, description, synopsis.
  `stats` counts what was read and what was dropped, and why.
  """

  examples: dict[str, dict[str, list[dict[str, str]]]]
  stats: dict[str, int]

  def counts(self) -> dict[str, dict[str, int]]:
    """Number of examples per task and split."""
    return {task: {split: len(rows) for split, rows in splits.items()}
            for task, splits in self.examples.items()}

  def packages(self, task: str, split: str) -> set[str]:
    """Packages that own at least one example of `task` in `split`."""
    return {row['package'] for row in self.examples[task][split]}


# ---------------------------------------------------------------------------------------------
# Reading and parsing.


def iter_deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
  """Yields the paragraphs of a deb822 file as `{field: value}`.

  A continuation line (starting with a space or tab) is appended to the previous field's value
  after a newline, keeping its leading whitespace, because description markup lives there.
  """
  fields: dict[str, str] = {}
  name = None
  for line_number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      if fields:
        yield fields
      fields, name = {}, None
      continue
    if line[0] in ' \t':
      if name is None:
        raise ValueError(f'deb822 line {line_number}: continuation line outside a field: {line!r}')
      fields[name] += '\n' + line
      continue
    key, colon, value = line.partition(':')
    if not colon or not key.strip():
      raise ValueError(f'deb822 line {line_number}: expected "Field: value", got {line!r}')
    name = key.strip()
    fields[name] = value.strip()
  if fields:
    yield fields


def clean_paragraph(lines: Sequence[str]) -> str:
  """One paragraph of a long description as plain text.

  Strips the leading-space markup and list bullets and joins the lines with single spaces: the
  line breaks of a description are only wrapping, and list items read fine as a run of text.
  """
  words = []
  for line in lines:
    text = _BULLET.sub('', line.strip())
    if text:
      words.append(text)
  return _WHITESPACE.sub(' ', ' '.join(words)).strip()


def parse_description(value: str) -> tuple[str, tuple[str, ...]]:
  """`(synopsis, paragraphs)` of a `Description-<lang>` field value (synopsis first line)."""
  synopsis, *long_lines = value.split('\n')
  paragraphs, current = [], []
  for line in long_lines:
    if line.strip() == '.':
      paragraphs.append(current)
      current = []
    else:
      current.append(line)
  paragraphs.append(current)
  cleaned = (clean_paragraph(lines) for lines in paragraphs)
  return _WHITESPACE.sub(' ', synopsis).strip(), tuple(p for p in cleaned if p)


def read_translation_file(path: str | os.PathLike) -> str:
  """The text of a `Translation-*` list, decompressing it by its suffix.

  gzip/xz/bzip2 are read in Python; lz4 and zstd (apt's default on recent Debian) need apt's own
  `apt-helper cat-file`, which reads every format apt fetches.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f'translation file {path} does not exist')
  suffix = path.suffix
  if suffix in _APT_ONLY_SUFFIXES:
    if not APT_HELPER.exists():
      raise ValueError(f'{path} is {suffix}-compressed and {APT_HELPER} is missing; decompress it '
                       'first (e.g. `lz4 -d` / `zstd -d`) or pass uncompressed files')
    data = subprocess.run([str(APT_HELPER), 'cat-file', str(path)], check=True,
                          capture_output=True).stdout
  elif suffix in _PYTHON_OPENERS:
    with _PYTHON_OPENERS[suffix](path, 'rb') as f:
      data = f.read()
  else:
    data = path.read_bytes()
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{path} is not UTF-8 text (corrupt or still compressed?): {e}') from e


def load_descriptions(paths: Iterable[str | os.PathLike], language: str) -> list[Description]:
  """Every `Description-<language>` paragraph of the given files, parsed and cleaned."""
  field = f'Description-{language}'
  descriptions = []
  for path in paths:
    for number, fields in enumerate(iter_deb822_paragraphs(read_translation_file(path))):
      missing = [k for k in ('Package', 'Description-md5', field) if k not in fields]
      if missing:
        raise ValueError(f'{path}: paragraph {number} ({fields.get("Package", "?")}) lacks '
                         f'field(s) {missing}; is this a Translation-{language} file?')
      synopsis, paragraphs = parse_description(fields[field])
      descriptions.append(Description(package=fields['Package'], md5=fields['Description-md5'],
                                      synopsis=synopsis, paragraphs=paragraphs))
  return descriptions


def find_translation_files(directory: str | os.PathLike,
                           languages: Sequence[str] = LANGUAGES) -> dict[str, list[pathlib.Path]]:
  """`{language: [files]}` for the `*Translation-<language>[.gz|.xz|...]` files in `directory`."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise ValueError(f'translations directory {directory} does not exist')
  found: dict[str, list[pathlib.Path]] = {lang: [] for lang in languages}
  for path in sorted(directory.iterdir()):
    match = _TRANSLATION_FILE.search(path.name)
    if match and match['lang'] in found and path.is_file():
      found[match['lang']].append(path)
  missing = [lang for lang, paths in found.items() if not paths]
  if missing:
    raise ValueError(f'no Translation-{missing[0]} file in {directory} (found '
                     f'{sorted(p.name for p in directory.iterdir())}); fetch them with '
                     '`apt-get -o Acquire::Languages="en,de" update` as root')
  return found


def fetch_translations(dest_dir: str | os.PathLike,
                       languages: Sequence[str] = LANGUAGES) -> list[pathlib.Path]:
  """Fetches the DDTP lists with apt (needs root) and stores them uncompressed in `dest_dir`.

  Returns the written files. Without root, fetch them elsewhere and pass the directory instead.
  """
  if os.geteuid() != 0:
    raise PermissionError('fetching with apt needs root; run as root or pass a directory of '
                          'already fetched Translation-* files (--translations-dir)')
  subprocess.run(['apt-get', '-q', '-o', f'Acquire::Languages={",".join(languages)}', 'update'],
                 check=True)
  dest_dir = pathlib.Path(dest_dir)
  dest_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for lang in languages:
    sources = [p for p in sorted(APT_LISTS_DIR.glob(f'*_i18n_Translation-{lang}*'))
               if (m := _TRANSLATION_FILE.search(p.name)) and m['lang'] == lang]
    if not sources:
      raise ValueError(f'apt fetched no Translation-{lang} list into {APT_LISTS_DIR}; does the '
                       'configured mirror serve i18n files?')
    for source in sources:
      match = _TRANSLATION_FILE.search(source.name)
      target = dest_dir / (source.name[:match.start('suffix')] if match['suffix'] else source.name)
      tmp = target.with_name(target.name + '.partial')
      tmp.write_text(read_translation_file(source), encoding='utf-8')
      shutil.move(tmp, target)  # atomic, so a kill never leaves a truncated list behind
      written.append(target)
  return written


def translations_fingerprint(files: Mapping[str, Sequence[pathlib.Path]]) -> str:
  """sha256 over the names and bytes of the translation files: identifies a snapshot."""
  digest = hashlib.sha256()
  for lang in sorted(files):
    for path in sorted(files[lang]):
      digest.update(path.name.encode())
      digest.update(hashlib.sha256(path.read_bytes()).digest())
  return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Building the tasks.


def split_of(package: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
  """The split of a package: a stable hash of its name against cumulative `fractions`.

  sha256 rather than Python's `hash`, which is salted per process.
  """
  if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or \
      abs(sum(fractions) - 1.0) > 1e-9:
    raise ValueError(f'split fractions must be {len(SPLITS)} non-negative numbers summing to 1 '
                     f'(train, validation, test), got {fractions}')
  position = int.from_bytes(hashlib.sha256(package.encode('utf-8')).digest()[:8], 'big') / 2**64
  cumulative = 0.0
  for split, fraction in zip(SPLITS, fractions, strict=True):
    cumulative += fraction
    if position < cumulative:
      return split
  return SPLITS[-1]


def _length_ratio_ok(source: str, target: str) -> bool:
  ratio = len(target) / max(len(source), 1)
  return 1 / MAX_LENGTH_RATIO <= ratio <= MAX_LENGTH_RATIO


def ende_pairs(english: Iterable[Description], german: Iterable[Description],
               stats: collections.Counter | None = None) -> list[dict[str, str]]:
  """English -> German rows joined by `Description-md5`, before splitting and deduplication.

  Each translated description gives its synopsis pair, and its paragraph pairs if both sides
  have the same number of paragraphs. Untranslated (identical) and badly misaligned pairs
  (length ratio beyond `MAX_LENGTH_RATIO`) are dropped.
  """
  stats = stats if stats is not None else collections.Counter()
  english_by_md5 = {d.md5: d for d in english}
  rows = []
  for de in german:
    en = english_by_md5.get(de.md5)
    if en is None:
      stats['ende_translation_without_english'] += 1
      continue
    stats['ende_descriptions_joined'] += 1
    candidates = [(en.synopsis, de.synopsis)]
    if len(en.paragraphs) == len(de.paragraphs):
      candidates += zip(en.paragraphs, de.paragraphs, strict=True)
    else:
      stats['ende_paragraph_count_mismatch'] += 1
    for en_text, de_text in candidates:
      if not en_text or not de_text:
        stats['ende_dropped_empty'] += 1
      elif en_text == de_text:
        stats['ende_dropped_untranslated'] += 1
      elif not _length_ratio_ok(en_text, de_text):
        stats['ende_dropped_length_ratio'] += 1
      else:
        rows.append({'package': de.package, 'en': en_text, 'de': de_text})
  return rows


def summarize_pairs(english: Iterable[Description],
                    stats: collections.Counter | None = None) -> list[dict[str, str]]:
  """English long description -> one-line synopsis, for every description that has both."""
  stats = stats if stats is not None else collections.Counter()
  rows = []
  for en in english:
    if not en.paragraphs or not en.synopsis:
      stats['summarize_dropped_no_long_description'] += 1
      continue
    rows.append({'package': en.package, 'description': ' '.join(en.paragraphs),
                 'synopsis': en.synopsis})
  return rows


def deduplicate_and_split(rows: Iterable[dict[str, str]], source_key: str,
                          fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
                          stats: collections.Counter | None = None,
                          task: str = '') -> dict[str, list[dict[str, str]]]:
  """Keeps one row per distinct `row[source_key]` and puts it in its package's split.

  The kept row is the one of the alphabetically first package (then first target text), so the
  result does not depend on file order; every split is sorted the same way.
  """
  stats = stats if stats is not None else collections.Counter()
  ordered = sorted(rows, key=lambda r: (r['package'], r[source_key], json.dumps(r, sort_keys=True)))
  seen: set[str] = set()
  splits: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
  for row in ordered:
    if row[source_key] in seen:
      stats[f'{task}_dropped_duplicate'] += 1
      continue
    seen.add(row[source_key])
    splits[split_of(row['package'], fractions)].append(row)
  return splits


def build_corpus(translations_dir: str | os.PathLike,
                 fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> Corpus:
  """Parses the `Translation-en` / `Translation-de` files of a directory into both tasks."""
  files = find_translation_files(translations_dir)
  english = load_descriptions(files['en'], 'en')
  german = load_descriptions(files['de'], 'de')
  stats: collections.Counter = collections.Counter(
      english_descriptions=len(english), german_descriptions=len(german))
  examples = {
      'ende': deduplicate_and_split(ende_pairs(english, german, stats), 'en', fractions, stats,
                                    'ende'),
      'summarize': deduplicate_and_split(summarize_pairs(english, stats), 'description',
                                         fractions, stats, 'summarize'),
  }
  return Corpus(examples=examples, stats=dict(stats))


def training_texts(corpus: Corpus) -> list[str]:
  """Distinct English and German texts of the TRAIN split of both tasks (for the vocabulary)."""
  texts = []
  for row in corpus.examples['ende']['train']:
    texts += [row['en'], row['de']]
  for row in corpus.examples['summarize']['train']:
    texts += [row['description'], row['synopsis']]
  return sorted(set(texts))


__all__ = [
    'APT_LISTS_DIR', 'Corpus', 'DEFAULT_SPLIT_FRACTIONS', 'Description', 'LANGUAGES',
    'MAX_LENGTH_RATIO', 'SPLITS', 'build_corpus', 'clean_paragraph', 'deduplicate_and_split',
    'ende_pairs', 'fetch_translations', 'find_translation_files', 'iter_deb822_paragraphs',
    'load_descriptions', 'parse_description', 'read_translation_file', 'split_of',
    'summarize_pairs', 'training_texts', 'translations_fingerprint',
]
