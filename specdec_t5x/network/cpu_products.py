"""Row products that read the weights once: a decode call's dense layers and attention on CPU.

A decode call multiplies a few rows (batch x K positions) by each weight
matrix. XLA:CPU streams the weights once for one row, but hands 2..8 rows to
a matrix-matrix kernel that costs up to 2x as much, which is most of why
scoring γ+1 positions cost 1.3-2x one target step here
(results/scoring_cost.md). `product` runs `x [M, K] @ w [K, N]` as an XLA
FFI custom call (`cpu_products.cc`) that streams `w` once for up to 8 rows,
so such a call costs about what one row does; the logits layer is split
across two threads of XLA's pool. `first_argmax` and `row_max` reduce rows of
logits (greedy decoding's token; the maximum a softmax subtracts), which XLA:CPU
reduces at 0.4-1.5 G elements/s.

Each element is summed in the same order whatever the number of rows, so a
row's result is bitwise that of a one-row call (`tests/test_cpu_products.py`).

The library is compiled for this machine (`-march=native`) the first time it
is needed, with the C++ compiler `$CXX` (default `g++`) and the XLA FFI
headers jaxlib ships, into `$SPECDEC_CACHE_DIR/kernels/<hash>/` keyed by the
source, the flags, the compiler, jaxlib and the CPU's flags. Where that fails (no
compiler), `available()` is False and says why once (a warning); the
decoder then runs XLA's own products (`kernels.dense_uses_cpu_products`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from specdec_t5x import paths

Array = jax.Array

SOURCE = pathlib.Path(__file__).with_name('cpu_products.cc')
TARGET_NAME = 'specdec_row_product'
# The same product with bfloat16 weights, widened exactly to float32 in the kernel.
BF16_TARGET_NAME = 'specdec_row_product_bf16'
# ... and with int8 weights, each the float of its integer (a draft's scaled logits layer).
S8_TARGET_NAME = 'specdec_row_product_s8'
ARGMAX_TARGET_NAME = 'specdec_row_argmax'
MAX_TARGET_NAME = 'specdec_row_max'
# The library's handler symbol (cpu_products.cc) for each FFI target.
_SYMBOLS = {TARGET_NAME: 'SpecdecRowProduct', BF16_TARGET_NAME: 'SpecdecRowProductBf16',
            S8_TARGET_NAME: 'SpecdecRowProductS8', ARGMAX_TARGET_NAME: 'SpecdecRowArgmax',
            MAX_TARGET_NAME: 'SpecdecRowMax'}
# Weights from this size on are streamed by two threads (the logits layer; a
# cpu_target layer of 0.8 MB is faster on one: the hand-off costs ~10 us).
SPLIT_BYTES = 2 << 20
# -ffp-contract=fast: every `acc += x * w` is one fused multiply-add, as the scalar tail's fmaf.
COMPILE_FLAGS = ('-O3', '-march=native', '-ffp-contract=fast', '-std=c++17', '-shared', '-fPIC')
# Up to this many rows a decode call's dense layer runs here; the kernel
# reads the weights once per 8 rows, so beyond it XLA's matrix kernel wins.
MAX_ROWS = 16


def _cpu_flags() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith(('flags', 'Features')):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _compiler_version(compiler: str) -> str:
  result = subprocess.run([compiler, '--version'], capture_output=True, text=True, check=True)
  return result.stdout.splitlines()[0] if result.stdout else compiler


def build(compiler: str | None = None) -> pathlib.Path:
  """Compiles `cpu_products.cc` for this machine (cached) and returns the library's path.

  Raises:
    RuntimeError: no compiler, or the compilation failed (its output in the message).
  """
  compiler = compiler or os.environ.get('CXX', 'g++')
  if shutil.which(compiler) is None:
    raise RuntimeError(f'no C++ compiler {compiler!r} on PATH (set $CXX, or install g++)')
  key = hashlib.sha256('\n'.join([
      SOURCE.read_text(), ' '.join(COMPILE_FLAGS), _compiler_version(compiler),
      importlib.metadata.version('jaxlib'), _cpu_flags(),
  ]).encode()).hexdigest()[:16]
  library = paths.cache_dir('kernels', key) / 'libcpu_products.so'
  if library.exists():
    return library
  with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
    built = pathlib.Path(tmp) / library.name
    command = [compiler, *COMPILE_FLAGS, f'-I{jax.ffi.include_dir()}', str(SOURCE), '-o',
               str(built)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f'compiling {SOURCE.name} failed ({" ".join(command)}):\n'
                         f'{result.stderr[-4000:]}')
    os.replace(built, library)  # atomic: a concurrent build finds a whole file or none
  return library


@functools.cache
def available() -> bool:
  """Whether the custom call is built and registered for the CPU (warns once if not)."""
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
    for target_name, symbol in _SYMBOLS.items():
      jax.ffi.register_ffi_target(target_name, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform='cpu')
  except (RuntimeError, OSError, subprocess.SubprocessError) as e:
    warnings.warn(f'specdec_t5x.network.cpu_products is unavailable, so decode calls on CPU '
                  f'use XLA\'s own products (slower for a few rows): {e}', RuntimeWarning,
                  stacklevel=2)
    return False
  return True


def product(x: Array, w: Array, *, split_bytes: int = SPLIT_BYTES) -> Array:
  """`x [M, K] @ w [K, N]` in float32, streaming `w` once per 8 rows (CPU only).

  `w` may be bfloat16 or int8: each weight is widened exactly to float32 as
  it is read, so only the weights' bytes shrink (a draft's logits layer,
  `drafters.model.with_logits_dtype`).

  With a leading batch axis, `x [B, M, K]` and `w [B, K, N]`, one such
  product per index (`[B, M, N]`; never split across threads). Call
  `available()` first. Its derivatives are XLA's products of the tangents
  (training PaSS embeddings differentiates through decode calls).
  """
  batched = x.ndim == 3 and w.ndim == 3 and x.shape[0] == w.shape[0]
  if not (batched or (x.ndim == 2 and w.ndim == 2)) or x.shape[-1] != w.shape[-2]:
    raise ValueError(f'cpu_products.product takes x [M, K] and w [K, N], or x [B, M, K] and '
                     f'w [B, K, N], got {x.shape} and {w.shape}')
  if x.dtype != jnp.float32 or w.dtype not in _TARGETS:
    raise ValueError(f'cpu_products.product takes float32 x and float32, bfloat16 or int8 w, '
                     f'got {x.dtype} and {w.dtype}')
  return _row_product(x, w, split_bytes)


# The kernel for each weight dtype.
_TARGETS = {jnp.dtype(jnp.float32): TARGET_NAME, jnp.dtype(jnp.bfloat16): BF16_TARGET_NAME,
            jnp.dtype(jnp.int8): S8_TARGET_NAME}


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _row_product(x: Array, w: Array, split_bytes: int) -> Array:
  name = _TARGETS[w.dtype]
  call = jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(x.shape[:-1] + w.shape[-1:], jnp.float32),
                          vmap_method='sequential')
  return call(x, w, split_bytes=np.int64(split_bytes))


@_row_product.defjvp
def _row_product_jvp(split_bytes: int, primals, tangents):
  (x, w), (dx, dw) = primals, tangents
  return _row_product(x, w, split_bytes), jnp.matmul(dx, w) + jnp.matmul(x, dw)


def head_product(x: Array, w: Array) -> Array:
  """`x [b, h, m, k] @ w [b, h, k, n]` per batch row and head (attention over the cache)."""
  (b, h, m, k), n = x.shape, w.shape[-1]
  return product(x.reshape(b * h, m, k), w.reshape(b * h, k, n)).reshape(b, h, m, n)


def _row_reduction(name: str, target_name: str, x: Array, dtype: jnp.dtype) -> Array:
  if x.dtype != jnp.float32 or x.ndim < 1 or x.shape[-1] < 1:
    raise ValueError(f'cpu_products.{name} takes float32 x [..., V] with V >= 1, got '
                     f'{x.dtype} {x.shape}')
  call = jax.ffi.ffi_call(target_name, jax.ShapeDtypeStruct(x.shape[:-1], dtype),
                          vmap_method='broadcast_all')
  return call(jax.lax.stop_gradient(x))


def first_argmax(x: Array) -> Array:
  """The first index of the maximum of each row of float32 `x [..., V]`, int32 `[...]` (CPU only).

  `jnp.argmax`'s index, from one vectorised pass over each row (a row with NaN
  gives its first NaN); no derivative (the index is piecewise constant). Call
  `available()` first.
  """
  return _row_reduction('first_argmax', ARGMAX_TARGET_NAME, x, jnp.int32)


def row_max(x: Array) -> Array:
  """`jnp.max(x, -1)` of float32 `x [..., V]`, `[...]`, NaN where a row holds one (CPU only).

  One vectorised pass over each row; no derivative (a softmax subtracts it
  under `stop_gradient`). Call `available()` first.
  """
  return _row_reduction('row_max', MAX_TARGET_NAME, x, jnp.float32)
