"""Number formatting shared by the sweep's Markdown (tables: `bench.report.markdown_table`)."""

from __future__ import annotations

import math


def fmt(value: float | None, digits: int = 2, suffix: str = '') -> str:
  """`value` to `digits` decimals plus `suffix`; '—' for None, NaN or infinity."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return '—'
  return f'{value:.{digits}f}{suffix}'
