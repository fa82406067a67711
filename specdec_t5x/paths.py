"""Where built artefacts (datasets, vocabularies, checkpoints) are cached, outside git, and how
results files name paths without naming this machine.

Results are committed, so a path recorded in them is written relative to the
checkout (`results`, `configs/family.json`), or inside the cache as
`{cache}/...` (`portable_path`); `resolve_portable_path` reads one back here.
"""

from __future__ import annotations

import os
import pathlib

CACHE_ENV = 'SPECDEC_CACHE_DIR'
CACHE_PLACEHOLDER = '{cache}'


def _cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get(CACHE_ENV, '~/.cache/specdec_t5x')).expanduser()


def cache_dir(*parts: str) -> pathlib.Path:
  """`$SPECDEC_CACHE_DIR/<parts>` (default `~/.cache/specdec_t5x`), created on demand."""
  path = _cache_root().joinpath(*parts)
  path.mkdir(parents=True, exist_ok=True)
  return path


def repo_root() -> pathlib.Path:
  """The checkout this package lives in (for results/, configs/, gin/)."""
  return pathlib.Path(__file__).resolve().parent.parent


def portable_path(path: str | os.PathLike) -> str:
  """`path` as `{cache}/...` or relative to the repository; any other path as given."""
  resolved = pathlib.Path(path).expanduser().resolve()
  cache_root = _cache_root().resolve()
  if resolved.is_relative_to(cache_root):
    return str(pathlib.PurePosixPath(CACHE_PLACEHOLDER, resolved.relative_to(cache_root)))
  root = repo_root()
  if resolved.is_relative_to(root):
    return str(resolved.relative_to(root))
  return str(path)


def resolve_portable_path(recorded: str) -> pathlib.Path:
  """A path as `portable_path` records it (`{cache}/...`, repo-relative or absolute), here."""
  if recorded.startswith(CACHE_PLACEHOLDER):
    return cache_dir() / recorded[len(CACHE_PLACEHOLDER):].lstrip('/')
  path = pathlib.Path(recorded).expanduser()
  return path if path.is_absolute() else repo_root() / path
