// AVX-512 VNNI's dot products as qcompiler's kernels issue them. In asm: GCC copies every accumulator before each
// _mm512_dpbusd_epi32 (or _mm512_dpwssd_epi32) in unrolled loops, a move per product (int8_int4_gemm's tiles ran
// 1.6x slower), and it loads then broadcasts a 4-byte operand that the instruction can broadcast from memory itself.
#pragma once

#include <immintrin.h>

#include <cstdint>

// The target of the kernels' AVX-512 VNNI functions.
#define QC_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
// The dot products' own target: a subset of every caller's, so they inline anywhere VNNI code runs.
#define QC_VNNI_DOT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) inline

namespace qc {

// acc += u8 u x s8 s, four bytes per int32 lane.
QC_VNNI_DOT __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
}

// acc += u8 u x the 4 s8 bytes at s, broadcast to every lane within the instruction.
QC_VNNI_DOT __m512i dpbusd_word(__m512i acc, __m512i u, const int8_t* s) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*reinterpret_cast<const int32_t*>(s)));
  return acc;
}

// acc += s16 v x the 2 s16 values at w, broadcast to every lane within the instruction: two products per int32 lane.
QC_VNNI_DOT __m512i dpwssd_word(__m512i acc, __m512i v, const int16_t* w) {
  asm("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(v), "m"(*reinterpret_cast<const int32_t*>(w)));
  return acc;
}

}  // namespace qc
