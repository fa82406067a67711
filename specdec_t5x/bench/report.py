"""What every benchmark report shares: Markdown tables, dates and machine-free paths.

Results files are committed, so they must not name this machine's directories: a path
inside the checkout is written relative to it (`results`), one inside the cache as
`{cache}/...` (`specdec_t5x.paths.cache_dir`, `$SPECDEC_CACHE_DIR`).
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from specdec_t5x import paths


def _strings(value: Any) -> Iterator[str]:
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for key, item in value.items():
      yield from _strings(key)
      yield from _strings(item)
  elif isinstance(value, (list, tuple)):
    for item in value:
      yield from _strings(item)


def absolute_paths(value: Any) -> list[str]:
  """The absolute paths (`/...`, `~/...`) named in the strings of a JSON-like `value`.

  What a results file must not hold: tokens of its strings (split at blanks, quotes,
  `=`, commas and brackets) that start with `/` or `~/`.
  """
  tokens = (token for text in _strings(value) for token in re.split(r'[\s\'"`=,;()\[\]]+', text))
  return [token for token in tokens if len(token) > 1 and token.startswith(('/', '~/'))]


def settings_record(args: argparse.Namespace) -> dict[str, Any]:
  """The parsed command-line arguments as a results file records them (paths portable)."""
  return {key: paths.portable_path(value) if isinstance(value, pathlib.Path) else value
          for key, value in vars(args).items()}


def utc_date() -> str:
  """Now, in UTC, to the second (ISO 8601)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def markdown_row(cells: Sequence[Any]) -> str:
  return '| ' + ' | '.join(str(cell) for cell in cells) + ' |'


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table: the head, the separator and one line per row."""
  return '\n'.join([markdown_row(head), '|' + '---|' * len(head)]
                   + [markdown_row(row) for row in rows])
