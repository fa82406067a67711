// Products of a few rows by a weight matrix that read the weights once: the
// decoder's dense layers and its attention over the cache in a decode call on
// CPU (specdec_t5x.network.cpu_products).
//
// y [M, N] = x [M, K] @ w [K, N], float32, row-major, or one such product per
// index of a leading batch axis (x [B, M, K], w [B, K, N]: attention per head).
// XLA:CPU runs one row with a matrix-vector kernel that streams w once, but 2..8 rows with a
// matrix-matrix kernel that costs up to 2x as much (it packs w first). Here w
// is streamed once, a block of columns at a time: each loaded vector of w is
// multiplied by every row of x, into accumulators that stay in registers for
// the whole sum (for a wide w, a slab of its rows; one or two rows of a wide w
// go through panels of y instead: see Rows), so a call of a few rows costs about
// what one row does: the weights' memory traffic, not the arithmetic, sets the time.
//
// w may also be bfloat16 (`SpecdecRowProductBf16`): each weight is widened to the float
// whose upper half it is, exactly, so the products and sums are float32 as above, and a
// memory-bound product streams half the bytes (a draft's logits layer, whose rounding only
// changes what the draft proposes, never what the target accepts). Or int8
// (`SpecdecRowProductS8`, a quarter of the bytes): each weight the float of its integer.
//
// Every element is the chain acc = fma(x[m, i], w[i, n], acc) over i = 0..K-1
// in order, whatever M, the row's place among the M rows, and the column
// blocking: a row's result is bitwise the same in a call of 1 row or of 8.
//
// Built by cpu_products.py with -O3 -march=native -ffp-contract=fast (every `acc += x * w` a
// fused multiply-add, like the scalar tail) for the machine it runs on.

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// 16 floats: one AVX-512 register, two AVX2 ones (GCC splits it).
typedef float v16 __attribute__((vector_size(64)));

inline v16 Load(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void Store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline v16 Splat(float f) { return f - v16{}; }

// 16 weights as floats: float32 as they are, bfloat16 (uint16_t bits) shifted into the
// upper half of a float32, which is the same number.
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
inline v16 LoadWeights(const float* p) { return Load(p); }
inline v16 LoadWeights(const uint16_t* p) {
  v16 v;
#if defined(__AVX512F__)  // GCC's conversion below runs ~1.5x slower on AVX-512
  const __m512i bits = _mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
#else
  u16x16 half;
  std::memcpy(&half, p, sizeof half);
  const u32x16 bits = __builtin_convertvector(half, u32x16) << 16;
#endif
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
// int8 weights as floats. GCC turns a vector conversion from 16 bytes into scalar code (a
// [48, 8192] product 17x slower than in float32), so it is spelt out for AVX-512 and AVX2.
inline v16 LoadWeights(const int8_t* p) {
  v16 v;
#if defined(__AVX512F__)
  const __m512 f = _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  std::memcpy(&v, &f, sizeof v);
#elif defined(__AVX2__)
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
  std::memcpy(&v, &lo, sizeof lo);
  std::memcpy(reinterpret_cast<char*>(&v) + sizeof lo, &hi, sizeof hi);
#else
  for (int l = 0; l < 16; ++l) v[l] = static_cast<float>(p[l]);
#endif
  return v;
}
inline float Weight(float w) { return w; }
inline float Weight(int8_t w) { return static_cast<float>(w); }
inline float Weight(uint16_t w) {
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Rows of x per pass over w; more rows make more passes.
constexpr int64_t kMaxRowsPerPass = 8;

template <typename W>
struct Problem {
  const float* x;  // [M, K]
  const W* w;      // [K, N], float or bfloat16 bits
  float* y;        // [M, N]
  int64_t K, N;
};

// 16-float registers for the accumulators and the broadcast x of one block; the rest hold w.
#if defined(__AVX512F__)
constexpr int kVectorRegisters = 31;
#else
constexpr int kVectorRegisters = 7;  // AVX2: a 16-float vector takes two of its 16 registers
#endif

// Up to this many bytes a row of w, a block of columns runs down all its rows; a wider w is
// read in slabs of kSlabRows rows.
constexpr int64_t kBlockRowBytes = 4096;
constexpr int64_t kSlabRows = 64;
// Columns per panel (Panel).
constexpr int64_t kPanel = 512;
// How many rows of w ahead a block asks for its columns (a block reads a few lines a row;
// a prefetch past the end of w is only a hint, and never faults).
constexpr int64_t kPrefetchRows = 8;

// Vectors of 16 columns per block for M rows: as many accumulators as the registers hold.
constexpr int ColumnVectors(int M) {
  const int vectors = (kVectorRegisters - M) / M;
  return vectors < 1 ? 1 : (vectors > 8 ? 8 : vectors);
}

// Rows 0..M-1 of y, columns [n, n + 16 J), the terms of rows [i0, i1) of w: the partial sums
// stay in registers (starting from y's unless i0 is 0) and are stored once. (Keeping them in y,
// reloaded and stored for every four rows of w, made a 4-row call cost 2.5x a 1-row one on an
// AMD EPYC whose L3 held the weights: the products were no longer hidden behind the loads.)
template <int M, int J, typename W>
inline void Block(const Problem<W>& p, int64_t n, int64_t i0, int64_t i1) {
  v16 acc[M][J];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < J; ++j) acc[m][j] = i0 ? Load(p.y + m * p.N + n + 16 * j) : v16{};
  const W* w = p.w + i0 * p.N + n;
  for (int64_t i = i0; i < i1; ++i, w += p.N) {
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) __builtin_prefetch(w + kPrefetchRows * p.N + 16 * j);
    v16 x[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) x[m] = Splat(p.x[m * p.K + i]);
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      const v16 a = LoadWeights(w + 16 * j);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[m][j] += x[m] * a;
    }
  }
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < J; ++j) Store(p.y + m * p.N + n + 16 * j, acc[m][j]);
}

// Columns [n, end), a multiple of 16 apart, rows [i0, i1) of w: blocks of J vectors, the rest
// in smaller blocks.
template <int M, int J, typename W>
void Columns(const Problem<W>& p, int64_t n, int64_t end, int64_t i0, int64_t i1) {
  for (; n + 16 * J <= end; n += 16 * J) Block<M, J, W>(p, n, i0, i1);
  if constexpr (J > 1) Columns<M, J / 2, W>(p, n, end, i0, i1);
}

// Rows 0..M-1 of y, columns [n0, n1), n1 - n0 a multiple of 16, for a wide w and one or two
// rows: a panel of y stays in L1 while four rows of w at a time stream through, in runs of 2 KB
// the hardware prefetches well (one row's logits layer took 30% longer in slabs of blocks).
template <int M, typename W>
void Panel(const Problem<W>& p, int64_t n0, int64_t n1) {
  const int64_t K = p.K, N = p.N;
  for (int m = 0; m < M; ++m) std::memset(p.y + m * N + n0, 0, (n1 - n0) * sizeof(float));
  int64_t i = 0;
  for (; i + 4 <= K; i += 4) {
    const W* w0 = p.w + i * N;
    v16 xb[M][4];
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < 4; ++r) xb[m][r] = Splat(p.x[m * K + i + r]);
    for (int64_t n = n0; n < n1; n += 16) {
      const v16 a0 = LoadWeights(w0 + n), a1 = LoadWeights(w0 + N + n),
                a2 = LoadWeights(w0 + 2 * N + n), a3 = LoadWeights(w0 + 3 * N + n);
      for (int m = 0; m < M; ++m) {
        v16 acc = Load(p.y + m * N + n);
        acc += xb[m][0] * a0;
        acc += xb[m][1] * a1;
        acc += xb[m][2] * a2;
        acc += xb[m][3] * a3;
        Store(p.y + m * N + n, acc);
      }
    }
  }
  for (; i < K; ++i) {
    const W* w0 = p.w + i * N;
    for (int64_t n = n0; n < n1; n += 16) {
      const v16 a0 = LoadWeights(w0 + n);
      for (int m = 0; m < M; ++m) {
        v16 acc = Load(p.y + m * N + n);
        acc += Splat(p.x[m * K + i]) * a0;
        Store(p.y + m * N + n, acc);
      }
    }
  }
}

// Rows 0..M-1 of y, columns [n0, n1): blocks of 16-multiples, then the odd columns.
template <int M, typename W>
void Rows(const Problem<W>& p, int64_t n0, int64_t n1) {
  const int64_t vector_end = n0 + (n1 - n0) / 16 * 16;
  // A wide w (the logits layer) is read in slabs of rows: a block reading all K rows would
  // touch a page of w per row.
  const bool wide = p.N * static_cast<int64_t>(sizeof(W)) > kBlockRowBytes;
  if (wide && M <= 2) {
    for (int64_t n = n0; n < vector_end; n += kPanel)
      Panel<M, W>(p, n, n + kPanel < vector_end ? n + kPanel : vector_end);
  } else {
    const int64_t slab = wide ? kSlabRows : p.K;
    for (int64_t i = 0; i < p.K; i += slab)
      Columns<M, ColumnVectors(M), W>(p, n0, vector_end, i, i + slab < p.K ? i + slab : p.K);
  }
  for (int64_t n = vector_end; n < n1; ++n)
    for (int m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t i = 0; i < p.K; ++i)
        acc = __builtin_fmaf(p.x[m * p.K + i], Weight(p.w[i * p.N + n]), acc);
      p.y[m * p.N + n] = acc;
    }
}

// All M rows, columns [n0, n1), in passes of at most kMaxRowsPerPass rows.
template <typename W>
void Product(const Problem<W>& p, int64_t M, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < M; m += kMaxRowsPerPass) {
    Problem<W> rows = p;
    rows.x = p.x + m * p.K;
    rows.y = p.y + m * p.N;
    switch (M - m < kMaxRowsPerPass ? M - m : kMaxRowsPerPass) {
      case 1: Rows<1, W>(rows, n0, n1); break;
      case 2: Rows<2, W>(rows, n0, n1); break;
      case 3: Rows<3, W>(rows, n0, n1); break;
      case 4: Rows<4, W>(rows, n0, n1); break;
      case 5: Rows<5, W>(rows, n0, n1); break;
      case 6: Rows<6, W>(rows, n0, n1); break;
      case 7: Rows<7, W>(rows, n0, n1); break;
      default: Rows<8, W>(rows, n0, n1); break;
    }
  }
}

inline void Relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Column blocks of a product split across threads, claimed one at a time.
struct Split {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
};

// From `split_bytes` of weights on, the columns are cut into `kBlocks` blocks
// that this thread and one task on XLA's intra-op pool claim in turn: one core
// alone cannot stream a large matrix (the logits layer) at the speed of two.
// This thread never waits for a block nobody has claimed, so a pool whose
// threads are all busy only makes it do every block itself. Below
// `split_bytes` the hand-off costs more than it saves.
constexpr int64_t kBlocks = 4;

template <ffi::DataType WType>
ffi::Error RowProduct(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<WType> w,
                      ffi::ResultBuffer<ffi::F32> y, int64_t split_bytes) {
  using W = ffi::NativeType<WType>;
  const auto x_dims = x.dimensions();
  const auto w_dims = w.dimensions();
  const size_t rank = x_dims.size();
  if (rank < 2 || rank > 3 || w_dims.size() != rank || x_dims[rank - 1] != w_dims[rank - 2] ||
      (rank == 3 && x_dims[0] != w_dims[0]))
    return ffi::Error::InvalidArgument(
        "cpu_products: expected x [M, K] and w [K, N], or x [B, M, K] and w [B, K, N]");
  const int64_t B = rank == 3 ? x_dims[0] : 1;
  const int64_t M = x_dims[rank - 2], K = x_dims[rank - 1], N = w_dims[rank - 1];
  const Problem<W> p{x.typed_data(), w.typed_data(), y->typed_data(), K, N};
  if (B > 1 || K * N * static_cast<int64_t>(sizeof(W)) < split_bytes || N < 16 * kBlocks ||
      pool.num_threads() < 2) {
    for (int64_t b = 0; b < B; ++b) {
      Problem<W> one = p;
      one.x = p.x + b * M * K;
      one.w = p.w + b * K * N;
      one.y = p.y + b * M * N;
      Product(one, M, 0, N);
    }
    return ffi::Error::Success();
  }
  auto split = std::make_shared<Split>();
  const auto work = [split, p, M, N]() {
    for (int64_t b; (b = split->next.fetch_add(1)) < kBlocks;) {
      Product(p, M, N * b / kBlocks / 16 * 16, b + 1 == kBlocks ? N : N * (b + 1) / kBlocks / 16 * 16);
      split->finished.fetch_add(1, std::memory_order_release);
    }
  };
  pool.Schedule([work]() { work(); });
  work();
  while (split->finished.load(std::memory_order_acquire) < kBlocks) Relax();
  return ffi::Error::Success();
}

// The first index of each row's maximum, x [R, V] -> int32 [R]: greedy decoding's choice
// (sampling.first_argmax). XLA:CPU reduces a row of logits at ~1.5 G elements/s (a [3, 8192]
// argmax costs ~25 us, 2% of a verification call); this reads each row once, 64 floats at a
// time into four independent sets of 16 lanes (one set alone waits on its compare-and-blend
// chain), each lane keeping its maximum and the first index that holds it. A row with NaN
// gives its first NaN.
typedef int32_t i32x16 __attribute__((vector_size(64)));
constexpr int kSets = 4;

int32_t FirstArgmax(const float* row, int64_t V) {
  const int64_t vector_end = V / (16 * kSets) * (16 * kSets);
  float best = row[0];
  int64_t found = 0;
  bool has_nan = false;
  if (vector_end) {
    v16 lanes[kSets];
    i32x16 at[kSets], nan_lanes = {};
    const i32x16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int s = 0; s < kSets; ++s) lanes[s] = Load(row + 16 * s), at[s] = lane + 16 * s;
    for (int64_t n = 0; n < vector_end; n += 16 * kSets) {
      for (int s = 0; s < kSets; ++s) {
        const v16 v = Load(row + n + 16 * s);
        const i32x16 greater = v > lanes[s];  // strict: a lane keeps its first maximum
        lanes[s] = greater ? v : lanes[s];
        at[s] = greater ? lane + static_cast<int32_t>(n + 16 * s) : at[s];
        nan_lanes |= v != v;
      }
    }
    best = lanes[0][0];
    found = at[0][0];
    for (int s = 0; s < kSets; ++s)
      for (int l = 0; l < 16; ++l) {
        has_nan |= nan_lanes[l] != 0;
        if (lanes[s][l] > best || (lanes[s][l] == best && at[s][l] < found))
          best = lanes[s][l], found = at[s][l];
      }
  }
  for (int64_t n = vector_end; n < V; ++n) {
    has_nan |= row[n] != row[n];
    if (row[n] > best) best = row[n], found = n;
  }
  if (has_nan || best != best)
    for (found = 0; row[found] == row[found]; ++found) {}
  return static_cast<int32_t>(found);
}

// The maximum of each row, NaN if the row holds one (XLA's max): what a softmax subtracts
// (sampling.probabilities), whose max XLA:CPU takes ~20 us over 8192 logits. The value at the
// first argmax is the maximum, or the row's first NaN.
float RowMaxOf(const float* row, int64_t V) { return row[FirstArgmax(row, V)]; }

// One reduction per row of x [..., V]: out [...].
template <ffi::DataType Out, ffi::NativeType<Out> (*Reduce)(const float*, int64_t)>
ffi::Error RowReduction(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<Out> out) {
  const auto dims = x.dimensions();
  if (dims.size() < 1 || dims.back() < 1)
    return ffi::Error::InvalidArgument("cpu_products: a row reduction expects x [..., V], V >= 1");
  const int64_t V = dims.back(), R = x.element_count() / V;
  for (int64_t r = 0; r < R; ++r) out->typed_data()[r] = Reduce(x.typed_data() + r * V, V);
  return ffi::Error::Success();
}

constexpr auto RowArgmax = RowReduction<ffi::S32, FirstArgmax>;
constexpr auto RowMax = RowReduction<ffi::F32, RowMaxOf>;

}  // namespace

// y = x @ w for float32, bfloat16 and int8 weights w.
#define SPECDEC_ROW_PRODUCT(name, WType)                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, RowProduct<WType>,                \
                                ffi::Ffi::Bind()                        \
                                    .Ctx<ffi::ThreadPool>()             \
                                    .Arg<ffi::Buffer<ffi::F32>>()       \
                                    .Arg<ffi::Buffer<WType>>()          \
                                    .Ret<ffi::Buffer<ffi::F32>>()       \
                                    .Attr<int64_t>("split_bytes"));

SPECDEC_ROW_PRODUCT(SpecdecRowProduct, ffi::F32)
SPECDEC_ROW_PRODUCT(SpecdecRowProductBf16, ffi::BF16)
SPECDEC_ROW_PRODUCT(SpecdecRowProductS8, ffi::S8)

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecdecRowArgmax, RowArgmax,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SpecdecRowMax, RowMax,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
