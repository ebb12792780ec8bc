/* A tiny test harness: CHECK counts failures and prints where they happen; each test program
 * ends with PT_TEST_END, which prints "N passed, N failed" and returns non-zero on any failure. */
#ifndef PT_TEST_H
#define PT_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int pt_test_passed, pt_test_failed;

#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    if (cond) {                                                                                    \
      pt_test_passed++;                                                                            \
    } else {                                                                                       \
      pt_test_failed++;                                                                            \
      fprintf(stderr, "%s:%d: FAIL: %s: ", __FILE__, __LINE__, #cond);                             \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
    }                                                                                              \
  } while (0)

/* Stops the program when a precondition of later checks fails (a missing fixture, say). */
#define REQUIRE(cond, ...)                                                                         \
  do {                                                                                             \
    int pt_require_ok_ = (cond) ? 1 : 0;                                                           \
    CHECK(pt_require_ok_, __VA_ARGS__);                                                            \
    if (!pt_require_ok_) {                                                                         \
      printf("%d passed, %d failed\n", pt_test_passed, pt_test_failed);                            \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

#define PT_TEST_END()                                                                              \
  do {                                                                                             \
    printf("%d passed, %d failed\n", pt_test_passed, pt_test_failed);                              \
    return pt_test_failed ? 1 : 0;                                                                 \
  } while (0)

/* Deterministic random numbers for fixtures (xorshift64*). */
static inline unsigned long long pt_test_rand_u64(unsigned long long *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ULL;
}
static inline float pt_test_uniform(unsigned long long *s, float lo, float hi) {
  return lo + (hi - lo) * (float)((pt_test_rand_u64(s) >> 40) / 16777216.0);
}

/* Largest |got - ref| over the largest |ref| (a NaN in got counts as the worst). */
static inline double pt_test_max_err(const float *got, const float *ref, int64_t n) {
  double scale = 1e-30, worst = 0;
  for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)ref[i]));
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - (double)ref[i]);
    if (!(e <= worst)) worst = e;
  }
  return worst / scale;
}

#endif
