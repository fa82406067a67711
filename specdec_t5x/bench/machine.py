"""What a measurement depends on, recorded next to it: the machine, its load, its memory system."""

from __future__ import annotations

import os
import pathlib
import platform
import shlex
import sys
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from specdec_t5x import paths


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (or platform's guess)."""
  cpuinfo = pathlib.Path('/proc/cpuinfo')
  if cpuinfo.exists():
    for line in cpuinfo.read_text(encoding='utf-8', errors='replace').splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  return platform.processor() or 'unknown'


def cpu_vector_isa(cpuinfo: pathlib.Path = pathlib.Path('/proc/cpuinfo')) -> str:
  """The widest x86 vector extension /proc/cpuinfo lists ('avx512f', 'avx2', ...), else 'unknown'.

  Speed ratios depend on it: on a 2-core AMD EPYC without AVX-512 (Zen 3) the
  verification call of 5-8 positions of t5_1_1_large cost 2.9-3.1 target steps,
  on one with AVX-512 1.2-1.5 (results/paper_scale.md of 2026-12-01 and -03).
  """
  if not cpuinfo.exists():
    return 'unknown'
  for line in cpuinfo.read_text(encoding='utf-8', errors='replace').splitlines():
    if line.startswith('flags'):
      flags = set(line.split(':', 1)[1].split())
      return next((isa for isa in ('avx512f', 'avx2', 'avx', 'sse4_2') if isa in flags), 'unknown')
  return 'unknown'


def num_cpus() -> int:
  """The CPUs this process may run on."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def load_average() -> float:
  """The 1-minute load average (0 where the OS has none)."""
  return os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0


def machine_facts() -> dict[str, Any]:
  """CPU, core count, software versions, JAX backend and devices (the load: `load_average`)."""
  return dict(
      nproc=num_cpus(),
      cpu_model=cpu_model(),
      cpu_vector_isa=cpu_vector_isa(),
      l3_cache_mb=(l3_cache_bytes() or 0) / 2**20,
      platform=platform.platform(),
      python=platform.python_version(),
      jax=jax.__version__,
      flax=flax.__version__,
      jax_backend=jax.default_backend(),
      jax_devices=[str(device) for device in jax.devices()],
  )


def vector_and_cache(facts: Mapping[str, Any]) -> str:
  """', AVX2, 32 MB L3' from `machine_facts` where they name them ('' for older records).

  Speed ratios on CPU depend on both (see `cpu_vector_isa`), so reports print them.
  """
  isa = facts.get('cpu_vector_isa', 'unknown')
  parts = [isa.removesuffix('f').upper()] if isa != 'unknown' else []
  if facts.get('l3_cache_mb'):
    parts.append(f"{facts['l3_cache_mb']:.0f} MB L3")
  return ''.join(', ' + part for part in parts)


def l3_cache_bytes() -> int | None:
  """The last-level cache size of CPU 0 (Linux sysfs), or None when unknown."""
  sizes = []
  for index in pathlib.Path('/sys/devices/system/cpu/cpu0/cache').glob('index*'):
    try:
      level = int((index / 'level').read_text())
      size = (index / 'size').read_text().strip()
    except (OSError, ValueError):
      continue
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    sizes.append((level, int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)))
  return max(sizes)[1] if sizes else None


def read_bandwidth(nbytes: int = 512 << 20, repeats: int = 7) -> dict[str, float]:
  """Best-of-`repeats` bandwidths (GB/s) of this machine on `nbytes` arrays.

  `read`: a jitted XLA sum (reads once, all threads), the bound for reading weights; `copy`:
  NumPy `copyto` (reads and writes `nbytes`, counted twice).
  """
  from specdec_t5x.bench import timing  # timing imports this module's neighbours, not this

  values = jnp.ones((nbytes // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  total(values).block_until_ready()
  best_read = min(timing.timed(lambda: total(values))[0] for _ in range(repeats))
  source = np.ones(nbytes // 4, np.float32)
  target = np.empty_like(source)
  np.copyto(target, source)
  best_copy = min(timing.timed(lambda: np.copyto(target, source))[0] for _ in range(repeats))
  return {'read_gb_s': nbytes / best_read / 1e9, 'copy_gb_s': 2 * nbytes / best_copy / 1e9,
          'array_mb': nbytes / 2**20}


T5X_VENV_ENV = 'T5X_VENV'


def command_line(keep_interpreter: bool = False, argv: list[str] | None = None) -> str:
  """This run's command line, relative to the repository, with JAX_PLATFORMS if set.

  No absolute machine path is written: the script is named from the repository
  root (a script outside it by its file name); an interpreter outside the
  repository is `python`, or with `keep_interpreter` (when which Python ran
  decides the result, e.g. whether t5x is importable) `$T5X_VENV/bin/python`
  when it is the t5x venv's (scripts/test.sh's convention), else its bare name.
  """
  root = paths.repo_root()
  argv = list(sys.argv if argv is None else argv)
  if argv:
    script = pathlib.Path(argv[0]).resolve()
    argv[0] = str(script.relative_to(root)) if script.is_relative_to(root) else script.name
  python = pathlib.Path(sys.executable)
  if python.is_relative_to(root):
    interpreter = str(python.relative_to(root))
  elif not keep_interpreter:
    interpreter = 'python'
  else:
    venv = pathlib.Path(os.environ.get(T5X_VENV_ENV, '/tmp/t5x-venv'))
    interpreter = (f'${T5X_VENV_ENV}/bin/python' if python.parent.parent == venv
                   else python.name)
  platforms = os.environ.get('JAX_PLATFORMS')
  prefix = f'JAX_PLATFORMS={platforms} ' if platforms else ''
  return prefix + ' '.join([interpreter, shlex.join(argv)]).strip()
