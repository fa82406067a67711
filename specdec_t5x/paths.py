"""Where built artefacts (datasets, vocabularies, checkpoints) are cached, outside git."""

from __future__ import annotations

import os
import pathlib

CACHE_ENV = 'SPECDEC_CACHE_DIR'


def cache_dir(*parts: str) -> pathlib.Path:
  """`$SPECDEC_CACHE_DIR/<parts>` (default `~/.cache/specdec_t5x`), created on demand."""
  root = pathlib.Path(os.environ.get(CACHE_ENV, '~/.cache/specdec_t5x')).expanduser()
  path = root.joinpath(*parts)
  path.mkdir(parents=True, exist_ok=True)
  return path


def repo_root() -> pathlib.Path:
  """The checkout this package lives in (for results/, configs/, gin/)."""
  return pathlib.Path(__file__).resolve().parent.parent
