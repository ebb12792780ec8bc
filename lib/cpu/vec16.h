/* 16-float vectors in plain C (GCC vector extensions) for the CPU kernels (internal): loads,
 * stores, lane shuffles and a 16 x 16 transpose, and PT_CLONES, which compiles a function for
 * AVX-512, AVX2 and the baseline and picks one when the library loads. Functions taking or
 * returning v16 by value would change the ABI between the clones: helpers take arrays of vectors
 * and are INLINE into their callers. */
#ifndef PT_CPU_VEC16_H
#define PT_CPU_VEC16_H

#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

/* One copy per instruction set, picked when the library loads (an ifunc). Not under
 * ThreadSanitizer, whose runtime is not up yet when ifunc resolvers run. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                             \
    !defined(__SANITIZE_THREAD__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define PT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef PT_CLONES
#define PT_CLONES
#endif

typedef int v16i __attribute__((vector_size(64)));

/* A vector of lanes picked from a and b (lanes 0-15 of a, 16-31 of b). */
#ifdef __clang__
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (v16i){__VA_ARGS__})
#endif
/* The lanes of a and b interleaved: a0 b0 a1 b1 ... (the low half) and a8 b8 ... (the high). */
#define INTERLEAVE_LO(a, b) SHUFFLE(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define INTERLEAVE_HI(a, b)                                                                        \
  SHUFFLE(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
/* The even and odd lanes of 32 floats a b: a0 a2 ... b14, and a1 a3 ... b15. */
#define EVENS(a, b) SHUFFLE(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
#define ODDS(a, b) SHUFFLE(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)

/* Unaligned 16-float loads and stores (macros: a function passing v16 by value would change the
 * ABI between the clones) */
#define LOAD16(p)                                                                                  \
  ({                                                                                               \
    v16 v_;                                                                                        \
    memcpy(&v_, (p), sizeof v_);                                                                   \
    v_;                                                                                            \
  })
#define STORE16(p, v)                                                                              \
  do {                                                                                             \
    v16 t_ = (v);                                                                                  \
    memcpy((p), &t_, sizeof t_);                                                                   \
  } while (0)

#define INLINE static inline __attribute__((always_inline))

/* The 16 x 16 matrix whose rows are r[0..15] transposed in place: four rounds of interleaving
 * row i with row i + 8, 64 two-source shuffles. Unrolled in full: GCC at -O2 leaves the loops,
 * keeps r in memory and runs it 2.5 times slower (-O3 unrolls them anyway). */
#define PT_UNROLL(n) _Pragma(PT_STR(GCC unroll n))
#define PT_STR(x) #x
#define TRANSPOSE16(r)                                                                             \
  do {                                                                                             \
    PT_UNROLL(4) for (int round_ = 0; round_ < 4; round_++) {                                      \
      v16 t_[16];                                                                                  \
      PT_UNROLL(8) for (int i_ = 0; i_ < 8; i_++) {                                                \
        t_[2 * i_] = INTERLEAVE_LO(r[i_], r[i_ + 8]);                                              \
        t_[2 * i_ + 1] = INTERLEAVE_HI(r[i_], r[i_ + 8]);                                          \
      }                                                                                            \
      PT_UNROLL(16) for (int i_ = 0; i_ < 16; i_++) r[i_] = t_[i_];                                \
    }                                                                                              \
  } while (0)

#endif
