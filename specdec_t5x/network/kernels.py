"""CPU-tuned products and cache writes of the decoder step, and when they apply.

These are tricks for XLA:CPU, where a decode step is bound by reading the
weights and the cache. They compute what the plain ops they replace compute
(the rounding may differ: every row of `matvecs` gets the bits of a one-row
call). They apply on every backend today (the thresholds below are the only
switch) and were measured on CPU only (results/scoring_cost.md).

* Per-row matrix-vector products (`matvecs`). Decoding feeds a few rows per
  call (K query positions times the batch). XLA:CPU multiplies one row by a
  weight matrix with a matrix-vector kernel that streams the weights once, but
  hands 2..8 rows to a matrix-matrix kernel (YNNPACK by default; Eigen, oneDNN
  and XNNPACK behave alike) that first repacks the whole weight matrix, so in
  a decoder bound by reading its weights 2 rows cost about 2x one row. Up to
  `MATVEC_MAX_ROWS` rows, one matrix-vector product per row is cheaper: the
  re-reads of a kernel that fits in the CPU's caches
  (`MATVEC_MAX_KERNEL_BYTES`) mostly hit them. It also gives every row the
  bits of a one-row call. Attention over the cache, with no weights to repack
  but the same kernels, gains up to `ATTENTION_MATVEC_MAX_QUERIES` queries.
* Per-row cache writes (`write_rows`). Each row of a batch writes its new
  keys/values at its own position with one in-place `dynamic_update_slice`:
  a vmapped one becomes a scatter that XLA:CPU lowers to a select over, and
  copies of, the whole cache. Up to `WRITE_ROWS_MAX_UNROLLED` rows the writes
  are unrolled; beyond, they run in a loop so the program does not grow with
  the batch.

The constants are read when a call is traced: set them on this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

MATVEC_MAX_ROWS = 4
MATVEC_MAX_KERNEL_BYTES = 16 << 20
ATTENTION_MATVEC_MAX_QUERIES = 8
# Up to this many rows `write_rows` unrolls its per-row writes; beyond, it
# loops, so that the program's size does not grow with the batch.
WRITE_ROWS_MAX_UNROLLED = 16


def dense_uses_matvecs(rows: int, kernel_bytes: int) -> bool:
  """Whether a dense layer over `rows` input rows runs as one matrix-vector product per row."""
  return 1 < rows <= MATVEC_MAX_ROWS and kernel_bytes <= MATVEC_MAX_KERNEL_BYTES


def attention_uses_matvecs(num_queries: int) -> bool:
  """Whether attention of `num_queries` new positions over the cache runs per query."""
  return num_queries <= ATTENTION_MATVEC_MAX_QUERIES


def matvecs(spec: str, lhs: Array, rhs: Array, axis: int) -> Array:
  """`einsum(spec)` run as one batched matrix-vector product per index of `lhs`'s `axis`.

  `spec` is the product of one slice (`lhs` without `axis`); the results are
  stacked back at `axis`. Each product reads `rhs` in place (see the module
  docstring for why a few of them beat one small matrix product).
  """
  return jnp.stack([jnp.einsum(spec, lax.index_in_dim(lhs, i, axis, keepdims=False), rhs)
                    for i in range(lhs.shape[axis])], axis=axis)


def write_rows(cache: Array, update: Array, starts: Array, axis: int) -> Array:
  """Writes `update` into `cache` (both `[batch, ...]`) at `starts[b]` along `axis` of row b.

  One in-place `dynamic_update_slice` per row: a vmapped one becomes a scatter
  that XLA:CPU lowers to a select over, and copies of, the whole cache.
  """
  def write(row: Array | int, cache: Array) -> Array:
    index = [jnp.zeros((), jnp.int32)] * cache.ndim
    index[0], index[axis] = jnp.asarray(row, jnp.int32), starts[row]
    row_update = lax.dynamic_slice_in_dim(update, row, 1, axis=0)
    return lax.dynamic_update_slice(cache, row_update, index)

  if cache.shape[0] > WRITE_ROWS_MAX_UNROLLED:
    return lax.fori_loop(0, cache.shape[0], write, cache)
  for row in range(cache.shape[0]):
    cache = write(row, cache)
  return cache
