"""A TFDS builder for the DDTP tasks (`ddtp/ende`, `ddtp/summarize`), built from local files.

The `Translation-*` lists are the builder's "manual download": pass their directory as
`DownloadConfig(manual_dir=...)` (`build_ddtp_tfds` does). The built TFRecords go to a local
`data_dir`, by default `cache_dir('tfds')`, from where seqio's `TfdsDataSource` reads them.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Sequence

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from specdec_t5x.data import ddtp
from specdec_t5x.paths import cache_dir

TFDS_NAME = 'ddtp'
VERSION = '1.0.0'
CONFIG_NAMES = ('ende', 'summarize')
# Text fields of each config, the source first (its hash keys the example).
FIELDS = {'ende': ('en', 'de'), 'summarize': ('description', 'synopsis')}


def default_data_dir() -> pathlib.Path:
  """`cache_dir('tfds')`: where the DDTP datasets are built and read."""
  return cache_dir('tfds')


class Ddtp(tfds.core.GeneratorBasedBuilder):
  """Debian package descriptions: EN->DE paragraph pairs and description->synopsis pairs."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {'1.0.0': 'Splits by package hash (90/5/5), deduplicated by source text.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='ende', description='English -> German: synopses and aligned paragraphs.'),
      tfds.core.BuilderConfig(
          name='summarize', description='English long description -> one-line synopsis.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put Debian's Translation-en and Translation-de lists (compressed or not) into manual_dir, e.g.
  as root: apt-get -o Acquire::Languages="en,de" update, then copy
  /var/lib/apt/lists/*_i18n_Translation-{en,de}* (scripts/build_data.py does all of this).
  """

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup of this file needs `importlib_resources`, which TFDS uses but does not
    # declare on Python >= 3.9 (tensorflow/datasets#11212); the answer is simply this module.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    source, target = FIELDS[self.builder_config.name]
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            source: tfds.features.Text(),
            target: tfds.features.Text(),
            'package': tfds.features.Text(),
        }),
        supervised_keys=(source, target),
        homepage='https://ddtp.debian.org/',
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    translations_dir = dl_manager.manual_dir
    files = ddtp.find_translation_files(translations_dir)
    corpus = ddtp.build_corpus(translations_dir)
    # Which snapshot of the lists this was built from: Debian updates them over time.
    self.info.metadata['translations_sha256'] = ddtp.translations_fingerprint(files)
    self.info.metadata['translation_files'] = sorted(p.name for ps in files.values() for p in ps)
    rows = corpus.examples[self.builder_config.name]
    return {split: self._generate_examples(rows[split]) for split in ddtp.SPLITS}

  def _generate_examples(self, rows: Sequence[dict[str, str]]):
    source = FIELDS[self.builder_config.name][0]
    for row in rows:
      # Sources are unique after deduplication, so their hash is a stable, unique key.
      yield hashlib.sha1(row[source].encode('utf-8')).hexdigest(), row


def build_ddtp_tfds(translations_dir: str | os.PathLike,
                    data_dir: str | os.PathLike | None = None,
                    configs: Sequence[str] = CONFIG_NAMES) -> dict[str, tfds.core.DatasetBuilder]:
  """Builds `ddtp/<config>` into `data_dir` from the lists in `translations_dir`.

  TFDS reuses a dataset already built in `data_dir`; delete its directory to rebuild.
  """
  unknown = sorted(set(configs) - set(CONFIG_NAMES))
  if unknown:
    raise ValueError(f'unknown ddtp config(s) {unknown}; known: {CONFIG_NAMES}')
  data_dir = str(data_dir or default_data_dir())
  download_config = tfds.download.DownloadConfig(
      manual_dir=str(translations_dir), try_download_gcs=False)
  builders = {}
  for config in configs:
    builder = Ddtp(config=config, data_dir=data_dir)
    builder.download_and_prepare(download_config=download_config)
    builders[config] = builder
  return builders


def dataset_dir(config: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """`<data_dir>/ddtp/<config>/<version>`: where TFDS keeps a built config."""
  return pathlib.Path(data_dir or default_data_dir()) / TFDS_NAME / config / VERSION


__all__ = ['CONFIG_NAMES', 'Ddtp', 'FIELDS', 'TFDS_NAME', 'VERSION', 'build_ddtp_tfds',
           'dataset_dir', 'default_data_dir']
