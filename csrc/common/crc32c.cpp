// CRC-32C with three implementations picked once at start-up:
//   * carry-less-multiply folding (VPCLMULQDQ on 512-bit registers with
//     AVX-512, on 256-bit registers with AVX2, else PCLMULQDQ on 128-bit
//     registers): ~10-20+ GB/s per core, so checksumming every value end to
//     end costs a small fraction of a loopback copy;
//   * the SSE4.2 / ARMv8 crc32c instruction for short inputs and tails;
//   * slice-by-8 tables where neither exists.
//
// Folding works on the "raw" CRC (no pre/post inversion), which is linear:
// a 128-bit chunk A followed by d bits is congruent (mod P) to
// A_hi*x^(64+d) + A_lo*x^d, two 64x32-bit carry-less products that land in
// the chunk d bits later. The constants x^k mod P are computed at start-up,
// not transcribed, so they cannot be mistyped.
#include "crc32c.hpp"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#define MEMKV_X86 1
#elif defined(__aarch64__)
#include <arm_acle.h>
#define MEMKV_ARM 1
#endif

namespace memkv {
namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78u;   // 0x1EDC6F41, bit-reversed
constexpr uint64_t kPolyNormal = 0x11EDC6F41ull;   // with the x^32 term

struct Tables {
  uint32_t t[8][256];
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1u) ? kPolyReflected : 0u);
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xffu];
  }
};
const Tables& tables() {
  static const Tables tb;
  return tb;
}

uint32_t raw_table(uint32_t s, const uint8_t* p, size_t n) {
  const auto& t = tables().t;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= s;
    s = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^ t[4][(w >> 24) & 0xff] ^
        t[3][(w >> 32) & 0xff] ^ t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) s = (s >> 8) ^ t[0][(s ^ *p++) & 0xffu];
  return s;
}

// x^m mod P in normal bit order (bit i = coefficient of x^i).
uint64_t xpow_mod(unsigned m) {
  uint64_t r = 1;
  for (unsigned i = 0; i < m; ++i) {
    r <<= 1;
    if (r >> 32) r ^= kPolyNormal;
  }
  return r;
}

uint64_t bitrev64(uint64_t v) {
  uint64_t r = 0;
  for (int i = 0; i < 64; ++i) r |= ((v >> i) & 1ull) << (63 - i);
  return r;
}

// Constants to fold a 128-bit chunk forward by `d_bits`: the low qword (the
// high-degree half) multiplies x^(64+d-1), the high qword x^(d-1); the -1
// compensates for the one-bit shift of a carry-less product of reflected values.
struct FoldK {
  uint64_t lo, hi;
};
FoldK fold_constants(unsigned d_bits) {
  return {bitrev64(xpow_mod(64 + d_bits - 1)), bitrev64(xpow_mod(d_bits - 1))};
}

#if MEMKV_X86
__attribute__((target("sse4.2"))) uint32_t raw_sse42(uint32_t s, const uint8_t* p, size_t n) {
  uint64_t s64 = s;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    s64 = _mm_crc32_u64(s64, w);
    p += 8;
    n -= 8;
  }
  s = static_cast<uint32_t>(s64);
  while (n--) s = _mm_crc32_u8(s, *p++);
  return s;
}

struct FoldSet {
  FoldK k128, k256, k384, k512, k1024, k2048;
  FoldSet()
      : k128(fold_constants(128)),
        k256(fold_constants(256)),
        k384(fold_constants(384)),
        k512(fold_constants(512)),
        k1024(fold_constants(1024)),
        k2048(fold_constants(2048)) {}
};
const FoldSet& folds() {
  static const FoldSet f;
  return f;
}

__attribute__((target("sse4.2,pclmul"))) inline __m128i fold128(__m128i a, __m128i k, __m128i b) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11)),
                       b);
}

__attribute__((target("sse4.2,pclmul"))) inline __m128i kvec(const FoldK& k) {
  return _mm_set_epi64x(static_cast<long long>(k.hi), static_cast<long long>(k.lo));
}

// Folds one 128-bit remainder `x` through the rest of the input 16 bytes at a
// time, then finishes the last <16 bytes with the crc32 instruction.
__attribute__((target("sse4.2,pclmul"))) uint32_t finish128(__m128i x, const uint8_t* p, size_t n) {
  const __m128i k128 = kvec(folds().k128);
  while (n >= 16) {
    x = fold128(x, k128, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    p += 16;
    n -= 16;
  }
  alignas(16) uint8_t buf[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(buf), x);
  return raw_sse42(raw_sse42(0, buf, 16), p, n);
}

// Reduces four adjacent 16-byte lanes (x0 first) to one.
__attribute__((target("sse4.2,pclmul"))) __m128i reduce4(__m128i x0, __m128i x1, __m128i x2, __m128i x3) {
  const FoldSet& f = folds();
  __m128i x = fold128(x0, kvec(f.k384), x3);
  x = fold128(x1, kvec(f.k256), x);
  return fold128(x2, kvec(f.k128), x);
}

__attribute__((target("sse4.2,pclmul"))) inline __m128i ld128(const uint8_t* q) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
}

__attribute__((target("sse4.2,pclmul"))) uint32_t raw_pclmul(uint32_t s, const uint8_t* p, size_t n) {
  if (n < 128) return raw_sse42(s, p, n);
  __m128i x0 = _mm_xor_si128(ld128(p), _mm_cvtsi32_si128(static_cast<int>(s)));
  __m128i x1 = ld128(p + 16), x2 = ld128(p + 32), x3 = ld128(p + 48);
  p += 64;
  n -= 64;
  const __m128i k512 = kvec(folds().k512);
  while (n >= 64) {
    x0 = fold128(x0, k512, ld128(p));
    x1 = fold128(x1, k512, ld128(p + 16));
    x2 = fold128(x2, k512, ld128(p + 32));
    x3 = fold128(x3, k512, ld128(p + 48));
    p += 64;
    n -= 64;
  }
  return finish128(reduce4(x0, x1, x2, x3), p, n);
}

#define MEMKV_AVX512 "avx512f,avx512bw,avx512vl,vpclmulqdq,sse4.2,pclmul"
__attribute__((target(MEMKV_AVX512))) inline __m512i fold512(__m512i a, __m512i k, __m512i b) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a, k, 0x00), _mm512_clmulepi64_epi128(a, k, 0x11),
                                   b, 0x96);  // a ^ b ^ c
}

__attribute__((target(MEMKV_AVX512))) inline __m512i ld512(const uint8_t* q) { return _mm512_loadu_si512(q); }
__attribute__((target(MEMKV_AVX512))) inline __m512i kvec512(const FoldK& k) {
  return _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<long long>(k.hi), static_cast<long long>(k.lo)));
}

__attribute__((target(MEMKV_AVX512))) uint32_t raw_avx512(uint32_t s, const uint8_t* p, size_t n) {
  if (n < 512) return raw_pclmul(s, p, n);
  const FoldSet& f = folds();
  __m512i z0 = _mm512_xor_si512(ld512(p), _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(s))));
  __m512i z1 = ld512(p + 64), z2 = ld512(p + 128), z3 = ld512(p + 192);
  p += 256;
  n -= 256;
  const __m512i k2048 = kvec512(f.k2048);
  while (n >= 256) {
    z0 = fold512(z0, k2048, ld512(p));
    z1 = fold512(z1, k2048, ld512(p + 64));
    z2 = fold512(z2, k2048, ld512(p + 128));
    z3 = fold512(z3, k2048, ld512(p + 192));
    p += 256;
    n -= 256;
  }
  const __m512i k512 = kvec512(f.k512);
  z1 = fold512(z0, k512, z1);
  z2 = fold512(z1, k512, z2);
  z3 = fold512(z2, k512, z3);
  __m128i x = reduce4(_mm512_extracti32x4_epi32(z3, 0), _mm512_extracti32x4_epi32(z3, 1),
                      _mm512_extracti32x4_epi32(z3, 2), _mm512_extracti32x4_epi32(z3, 3));
  return finish128(x, p, n);
}

// 256-bit VPCLMULQDQ with AVX2 (e.g. AMD Zen 3/4 without AVX-512, Intel
// Alder Lake): eight 16-byte lanes in flight hide the multiplier's latency.
#define MEMKV_AVX2 "avx2,vpclmulqdq,sse4.2,pclmul"
__attribute__((target(MEMKV_AVX2))) inline __m256i fold256(__m256i a, __m256i k, __m256i b) {
  return _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(a, k, 0x00), _mm256_clmulepi64_epi128(a, k, 0x11)),
                          b);
}
__attribute__((target(MEMKV_AVX2))) inline __m256i ld256(const uint8_t* q) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
}
__attribute__((target(MEMKV_AVX2))) inline __m256i kvec256(const FoldK& k) {
  return _mm256_broadcastsi128_si256(_mm_set_epi64x(static_cast<long long>(k.hi), static_cast<long long>(k.lo)));
}

__attribute__((target(MEMKV_AVX2))) uint32_t raw_avx2(uint32_t s, const uint8_t* p, size_t n) {
  if (n < 256) return raw_pclmul(s, p, n);
  const FoldSet& f = folds();
  __m256i y0 = _mm256_xor_si256(ld256(p), _mm256_zextsi128_si256(_mm_cvtsi32_si128(static_cast<int>(s))));
  __m256i y1 = ld256(p + 32), y2 = ld256(p + 64), y3 = ld256(p + 96);
  p += 128;
  n -= 128;
  const __m256i k1024 = kvec256(f.k1024);
  while (n >= 128) {
    y0 = fold256(y0, k1024, ld256(p));
    y1 = fold256(y1, k1024, ld256(p + 32));
    y2 = fold256(y2, k1024, ld256(p + 64));
    y3 = fold256(y3, k1024, ld256(p + 96));
    p += 128;
    n -= 128;
  }
  const __m256i k256 = kvec256(f.k256);
  y1 = fold256(y0, k256, y1);
  y2 = fold256(y1, k256, y2);
  y3 = fold256(y2, k256, y3);
  __m128i x = fold128(_mm256_castsi256_si128(y3), kvec(f.k128), _mm256_extracti128_si256(y3, 1));
  return finish128(x, p, n);
}
#endif  // MEMKV_X86

#if MEMKV_ARM
__attribute__((target("+crc"))) uint32_t raw_armv8(uint32_t s, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    s = __crc32cd(s, w);
    p += 8;
    n -= 8;
  }
  while (n--) s = __crc32cb(s, *p++);
  return s;
}
#endif

using RawFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);
struct Impl {
  RawFn fn;
  const char* name;
};

Impl pick_best() {
#if MEMKV_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("pclmul")) {
    folds();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("vpclmulqdq"))
      return {raw_avx512, "vpclmulqdq-avx512"};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq")) return {raw_avx2, "vpclmulqdq-avx2"};
    return {raw_pclmul, "pclmulqdq"};
  }
  if (__builtin_cpu_supports("sse4.2")) return {raw_sse42, "sse4.2"};
#elif MEMKV_ARM
  // The crc extension is mandatory from ARMv8.1; every server-class ARM core has it.
  return {raw_armv8, "armv8-crc"};
#endif
  tables();
  return {raw_table, "slice-by-8"};
}

// MEMKV_CRC32C_IMPL names a slower implementation to use instead, so tests
// can check every path on one machine against the same vectors.
Impl pick() {
  const Impl best = pick_best();
  const char* want = std::getenv("MEMKV_CRC32C_IMPL");
  if (!want || !*want) return best;
  tables();
  if (!std::strcmp(want, "slice-by-8")) return {raw_table, "slice-by-8"};
#if MEMKV_X86
  if (!std::strcmp(want, "sse4.2") && __builtin_cpu_supports("sse4.2")) return {raw_sse42, "sse4.2"};
  if (!std::strcmp(want, "pclmulqdq") && __builtin_cpu_supports("pclmul")) return {raw_pclmul, "pclmulqdq"};
  if (!std::strcmp(want, "vpclmulqdq-avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq"))
    return {raw_avx2, "vpclmulqdq-avx2"};
#endif
  return best;
}

const Impl& impl() {
  static const Impl i = pick();
  return i;
}

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t len) noexcept {
  return ~impl().fn(~crc, static_cast<const uint8_t*>(data), len);
}

uint32_t crc32c_copy(uint32_t crc, void* dst, const void* src, size_t len) noexcept {
  constexpr size_t kPiece = 64 * 1024;
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (size_t off = 0; off < len; off += kPiece) {
    size_t n = len - off < kPiece ? len - off : kPiece;
    std::memcpy(d + off, s + off, n);
    crc = crc32c(crc, d + off, n);
  }
  return crc;
}

const char* crc32c_impl() noexcept { return impl().name; }

}  // namespace memkv
