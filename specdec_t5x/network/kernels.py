"""CPU-tuned products and cache writes of the decoder step, and where they apply.

These are tricks for XLA:CPU, where a decode step is bound by reading the
weights and the cache. They compute what the plain ops they replace compute
(the rounding may differ: every row of `matvecs` gets the bits of a one-row
call) and were measured on CPU only (results/scoring_cost.md).

* Per-row matrix-vector products (`matvecs`), for autoregressive steps of a
  few batch rows. XLA:CPU multiplies one row by a weight matrix with a
  matrix-vector kernel that streams the weights once, but hands 2..8 rows to
  a matrix-matrix kernel (YNNPACK by default; Eigen, oneDNN and XNNPACK
  behave alike) that costs a step of 2 batch rows about 2x one row. Up to
  `MATVEC_MAX_ROWS` rows, one matrix-vector product per row is cheaper: the
  re-reads of a kernel that fits in the CPU's caches
  (`MATVEC_MAX_KERNEL_BYTES`) mostly hit them. Attention over the cache does
  the same for a one-position step (`ATTENTION_MATVEC_MAX_QUERIES`).
  They apply only to calls of at most `MATVEC_MAX_POSITIONS` positions per
  row: the verification call of speculative decoding (K = γ+1 positions of
  one row) is cheaper with the plain products. On cpu_target at batch 1,
  its call cost 1.42 / 1.67 / 1.79x one position at K = 2 / 3 / 4 with the
  per-row paths (results/scoring_cost.md of 2026-11-23) and costs 1.31 /
  1.47 / 1.49x with the plain products (that file since 2026-12-01); K = 1
  is the same program either way. What remains is arithmetic, not the
  kernels' choice: each position adds 2 FLOPs per decoder weight (13 MFLOP
  on cpu_target), measured as ~0.15 ms more per position (the small-product
  kernel reaches ~90 GFLOP/s) against a one-position call of ~1 ms.
* Row products that read the weights once (`cpu_products`), for the dense
  layers of decode calls in float32 and their attention over the
  self-attention cache (per head, the queries times the cached keys, the
  weights times the cached values; the cache heads-major, as the
  cross-attention's, so no call transposes it): a C++ custom call that
  streams each matrix once for up to 8 rows,
  so the verification call of K = γ+1 positions costs about what one
  position does in those products (XLA's matrix kernel packs the weights
  first: +20-70% at K = 2..4). They replace the per-row products above,
  and apply under 'cpu' to decode calls only (training and encoder calls
  have many rows, XLA's matrix kernel's case; the custom call's derivatives
  are XLA's products, for PaSS embeddings trained through decode calls);
  'cpu_xla' is 'cpu' with XLA's own products (the fallback where the
  library cannot be built, and the baseline of results/scoring_cost.md).
* Per-token embedding lookups (`embeds_per_token`). XLA:CPU splits the
  gather of 2..16 token embeddings across two threads, a hand-off that cost
  ~20 us a call (measured on cpu_small, whose whole one-position step takes
  ~45 us, so its 2-position call cost 1.8-2x); one dynamic slice per token
  is never split. The rows are copies either way: the same bits.
* Per-row cache writes (`write_rows`). Each row of a batch writes its new
  keys/values at its own position with one in-place `dynamic_update_slice`:
  a vmapped one becomes a scatter that XLA:CPU lowers to a select over, and
  copies of, the whole cache. Up to `WRITE_ROWS_MAX_UNROLLED` rows the writes
  are unrolled; beyond, they run in a loop so the program does not grow with
  the batch.

Where they apply (`decode_kernels`, a `T5Config` field; `DECODE_KERNELS`):
'cpu' always ('cpu_xla' without `cpu_products`), 'plain' never, 'auto' (the
default) iff the backend is CPU.
On a GPU or TPU a few rows times a weight matrix is one matrix product that
reads the weights once at the speed of memory; splitting it into one product
per row reads the same weights once per row, which makes the call of γ+1
positions that speculative decoding needs to be cheap cost up to γ+1 target
steps. There the plain `dot_general` / `einsum` runs, and the cache writes
are one vmapped `dynamic_update_slice` (a scatter, which GPU and TPU run in
place) instead of one kernel launch per row.

'auto' asks `jax.default_backend()` when a call is traced: the platform that
`jit` compiles for unless told otherwise, and the only one a trace can see
(the devices a program will run on are fixed after tracing). It is wrong
when a program is placed elsewhere than the default backend (`jit(...,
backend=...)`, or CPU arrays on a machine whose default is a GPU); set 'cpu'
or 'plain' then. (`lax.platform_dependent` would choose at lowering time,
but traces every decoder step once per path.)

Position-invariant decoding ('invariant'). Speculative decoding's promise is
the output of the target alone, but the verification call of K = γ+1
positions rounds differently from K one-position steps: a product of K rows
runs another kernel than one of a row, XLA:CPU sums the rows of a reduction
differently depending on how many rows there are, and the K new positions
attend over the cache plus themselves (a softmax over other entries in
another order). In float32 the difference (~1e-6) has never changed a greedy
token here; in bfloat16 it flips near-ties (issue #19: 5 of 24 requests).
Under 'invariant' every decode call of at most `INVARIANT_MAX_POSITIONS`
positions computes each position as a one-position call does: one
matrix-vector product per row and position (`matvecs`), each norm and each
cross-attention per position (`per_position`), and self-attention writes the
new keys/values first, then lets each query read the whole cache alone
(`attention._attend_written_cache`). Logits are then bitwise equal to those
of one-position steps over the same prefix (tests/test_network_kernels.py),
in float32 and bfloat16. It applies to decode calls only; training and the
encoder run as under 'cpu' / 'plain'.

`T5Config.decode_kernels` 'auto' stands for 'invariant' in bfloat16 on CPU
(where bfloat16 is never the fast choice: float32 is) and for 'cpu' in
float32 on CPU, which keeps the per-row paths tuned for speed and leaves the
float32 verification call on plain products (in float32 the one-position
step of 'invariant' costs 11% more on cpu_target, its K >= 2 calls less on
that host: results/bfloat16/scoring_cost.md). On GPU and TPU
'auto' is 'plain': 'invariant' can be asked for there, but it has been
measured on CPU only, and its per-row products read the weights once per
row (see above).

The constants are read when a call is traced: set them on this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from specdec_t5x.network import cpu_products

Array = jax.Array

MATVEC_MAX_ROWS = 4
MATVEC_MAX_KERNEL_BYTES = 16 << 20
# Calls of more positions per row than this (speculative verification) use the plain products.
MATVEC_MAX_POSITIONS = 1
ATTENTION_MATVEC_MAX_QUERIES = 1
# Up to this many rows `write_rows` unrolls its per-row writes; beyond, it
# loops, so that the program's size does not grow with the batch.
WRITE_ROWS_MAX_UNROLLED = 16
# Up to this many tokens a decode call looks their embeddings up one slice each.
EMBED_SLICES_MAX_TOKENS = 16
# Up to this many products `matvecs` unrolls; beyond, it maps a loop over them.
MATVECS_MAX_UNROLLED = 16

# The values of `decode_kernels` (see the module docstring).
DECODE_KERNELS = ('auto', 'cpu', 'cpu_xla', 'plain', 'invariant')
# Under 'invariant', decode calls of up to this many positions per row run per row and per query.
INVARIANT_MAX_POSITIONS = 16


def check_decode_kernels(decode_kernels: str) -> str:
  """Returns `decode_kernels` if it is one of `DECODE_KERNELS`, else raises a ValueError."""
  if not isinstance(decode_kernels, str) or decode_kernels not in DECODE_KERNELS:
    raise ValueError(f'decode_kernels must be one of {DECODE_KERNELS} (auto: the CPU-tuned '
                     f'paths iff the backend is CPU, position-invariant in bfloat16 there), '
                     f'got {decode_kernels!r}')
  return decode_kernels


def resolve_decode_kernels(decode_kernels: str, dtype: Any, decode: bool) -> str:
  """What a model's `decode_kernels` stands for in a call: 'cpu', 'plain' or 'invariant'.

  'auto' is 'invariant' for a bfloat16 model's decode calls on CPU, 'cpu' for
  its other calls and for other dtypes on CPU, 'plain' on other backends (the
  module docstring says why); 'invariant' applies to decode calls only, and
  so do the row products of 'cpu' (other calls get 'cpu_xla').
  Asks `jax.default_backend()`, so call it when a call is traced.
  """
  choice = check_decode_kernels(decode_kernels)
  on_cpu = jax.default_backend() == 'cpu'
  if choice == 'auto' and on_cpu and decode and jnp.dtype(dtype) == jnp.bfloat16:
    return 'invariant'
  if choice == 'auto' or (choice == 'invariant' and not decode):
    choice = 'cpu' if on_cpu else 'plain'
  if choice == 'cpu' and not decode:
    return 'cpu_xla'
  return choice


def uses_cpu_paths(decode_kernels: str = 'auto') -> bool:
  """Whether the CPU-tuned paths apply under `decode_kernels` ('auto': by backend, when traced)."""
  if check_decode_kernels(decode_kernels) in ('auto', 'invariant'):
    return jax.default_backend() == 'cpu'  # 'invariant' writes rows as 'auto' does
  return decode_kernels in ('cpu', 'cpu_xla')


def dense_uses_cpu_products(rows: int, dtype: Any, decode_kernels: str) -> bool:
  """Whether a dense layer over `rows` input rows runs as `cpu_products.product`.

  Under 'cpu' (resolved: decode calls only), in float32, on the CPU backend,
  for at most `cpu_products.MAX_ROWS` rows, and once the library is built.
  """
  return (decode_kernels == 'cpu' and jnp.dtype(dtype) == jnp.float32
          and rows <= cpu_products.MAX_ROWS and jax.default_backend() == 'cpu'
          and cpu_products.available())


def dense_uses_matvecs(rows: int, positions: int, kernel_bytes: int,
                       decode_kernels: str = 'auto') -> bool:
  """Whether a dense layer over `rows` input rows runs as one matrix-vector product per row.

  `rows` counts every input row (batch times `positions`, the positions per
  batch row: K of a decode call, the length axis).
  """
  if decode_kernels == 'invariant':  # every row alone, as a one-row call computes it
    return positions <= INVARIANT_MAX_POSITIONS
  return (uses_cpu_paths(decode_kernels) and 1 < rows <= MATVEC_MAX_ROWS
          and positions <= MATVEC_MAX_POSITIONS and kernel_bytes <= MATVEC_MAX_KERNEL_BYTES)


def attention_uses_cpu_products(num_queries: int, dtype: Any, decode_kernels: str) -> bool:
  """Whether attention of `num_queries` new positions reads the cache with `cpu_products`."""
  return dense_uses_cpu_products(num_queries, dtype, decode_kernels)


def embeds_per_token(num_tokens: int, decode_kernels: str) -> bool:
  """Whether a decode call of `num_tokens` tokens (all rows) looks each up as its own slice."""
  return uses_cpu_paths(decode_kernels) and num_tokens <= EMBED_SLICES_MAX_TOKENS


def attention_uses_matvecs(num_queries: int, decode_kernels: str = 'auto') -> bool:
  """Whether attention of `num_queries` new positions over the cache runs per query."""
  return uses_cpu_paths(decode_kernels) and num_queries <= ATTENTION_MATVEC_MAX_QUERIES


def runs_per_position(x: Array, decode_kernels: str) -> bool:
  """Whether `x [batch, positions, ...]` is computed position by position ('invariant').

  Beyond `INVARIANT_MAX_POSITIONS` it is not; the self-attention of a decode
  call that long raises instead (`check_invariant_positions`).
  """
  return (decode_kernels == 'invariant' and x.ndim >= 3
          and x.shape[1] <= INVARIANT_MAX_POSITIONS)


def check_invariant_positions(num_positions: int, decode_kernels: str) -> None:
  """Raises a ValueError for an 'invariant' decode call of more positions than it covers."""
  if decode_kernels == 'invariant' and num_positions > INVARIANT_MAX_POSITIONS:
    raise ValueError(
        f"decode_kernels='invariant' (the default for bfloat16 on CPU) covers decode calls of at "
        f'most INVARIANT_MAX_POSITIONS = {INVARIANT_MAX_POSITIONS} positions, got '
        f'{num_positions} (gamma + 1); use a smaller gamma, or decode_kernels=\'cpu\' or '
        f"'plain', whose outputs may differ from autoregressive decoding at near-ties")


def per_position(fn: Callable[..., Array], *arrays: Array) -> Array:
  """`fn` of each position `[batch, 1, ...]` of `arrays`, concatenated along axis 1."""
  return jnp.concatenate([fn(*(lax.slice_in_dim(a, j, j + 1, axis=1) for a in arrays))
                          for j in range(arrays[0].shape[1])], axis=1)


def matvecs(spec: str, lhs: Array, rhs: Array, axis: int) -> Array:
  """`einsum(spec)` run as one batched matrix-vector product per index of `lhs`'s `axis`.

  `spec` is the product of one slice (`lhs` without `axis`); the results are
  stacked back at `axis`. Each product reads `rhs` in place (see the module
  docstring for why a few of them beat one small matrix product on CPU).
  Beyond `MATVECS_MAX_UNROLLED` products they run in a loop (`lax.map`), so
  that the program does not grow with them; each still gets the bits of a
  one-row call.
  """
  product = lambda row: jnp.einsum(spec, row, rhs)
  if lhs.shape[axis] > MATVECS_MAX_UNROLLED:
    return jnp.moveaxis(lax.map(product, jnp.moveaxis(lhs, axis, 0)), 0, axis)
  return jnp.stack([product(lax.index_in_dim(lhs, i, axis, keepdims=False))
                    for i in range(lhs.shape[axis])], axis=axis)


def write_rows(cache: Array, update: Array, starts: Array, axis: int,
               decode_kernels: str = 'auto') -> Array:
  """Writes `update` into `cache` (both `[batch, ...]`) at `starts[b]` along `axis` of row b.

  With the CPU paths (`uses_cpu_paths`), one in-place `dynamic_update_slice`
  per row: a vmapped one becomes a scatter that XLA:CPU lowers to a select
  over, and copies of, the whole cache. Otherwise `scatter_rows`.
  """
  if not uses_cpu_paths(decode_kernels):
    return scatter_rows(cache, update, starts, axis)

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


def scatter_rows(cache: Array, update: Array, starts: Array, axis: int) -> Array:
  """`write_rows` as one vmapped `dynamic_update_slice` (a scatter): the plain path.

  `cache` and `update` are `[batch, ...]`, `starts` `[batch]`; `axis` counts
  the batch axis. Like `dynamic_update_slice`, a start is clamped so that the
  update fits.
  """
  def write(row_cache: Array, row_update: Array, start: Array) -> Array:
    index = [jnp.zeros((), jnp.int32)] * row_cache.ndim
    index[axis - 1] = jnp.asarray(start, jnp.int32)
    return lax.dynamic_update_slice(row_cache, row_update, index)

  return jax.vmap(write)(cache, update, starts)
