"""Formatting shared by the sweep's Markdown reports (tables: `bench.report.markdown_table`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from specdec_t5x.bench import machine as bench_machine


def fmt(value: float | None, digits: int = 2, suffix: str = '') -> str:
  """`value` to `digits` decimals plus `suffix`; '—' for None, NaN or infinity."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return '—'
  return f'{value:.{digits}f}{suffix}'


def machine_line(records: Sequence[Mapping[str, Any]]) -> str:
  """Which machine measured `records`, when, and under what load."""
  if not records:
    return ''
  machine = records[-1]['machine']
  loads = [r['load_average_1min'] for r in records]
  dates = sorted(r['date'] for r in records)
  return (f"Machine: {machine['nproc']} CPU cores ({machine['cpu_model']}"
          f"{bench_machine.vector_and_cache(machine)}), jax "
          f"{machine['jax']} ({machine['jax_backend']}), fp32. Measured {dates[0]} to "
          f"{dates[-1]}; 1-minute load average during the cells {min(loads):.1f}-"
          f"{max(loads):.1f} (the machine is shared: absolute times are noisy, the ratios are "
          f"measured interleaved under the same load).")


def commands(records: Sequence[Mapping[str, Any]]) -> str:
  """The commands that measured `records`, indented as a Markdown code block."""
  distinct = sorted({r['command'] for r in records if r.get('command')})
  return '\n'.join(f'    {command}' for command in distinct) or '    (not recorded)'
