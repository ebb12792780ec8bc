/* BLAS set-up for the CPU backend.
 *
 * Parallelism in libpartime comes from pipeline stages, one worker per core; a BLAS that spawns
 * its own threads inside every stage would oversubscribe the cores and make stage timings depend on
 * each other. So the library runs OpenBLAS single-threaded. The setting is process-wide and belongs
 * to OpenBLAS (not to this library), and setting it again is harmless.
 *
 * OpenBLAS picks its kernels by CPU model when it loads. A model newer than its release (Debian
 * 12's OpenBLAS 0.3.21 on Intel's Emerald Rapids, for one) gets its generic kernels, which use no
 * AVX and run several times slower; OPENBLAS_CORETYPE in the environment overrides the choice.
 * Only OpenBLAS can change it, and only as it loads. So where oneDNN is there, the library's
 * matrix products (pt_sgemm) go to oneDNN's sgemm instead, which picks its kernels by instruction
 * set: 4-6x faster than the generic kernels on the shapes the kernels use (a 1x1 head, im2col
 * products). Without oneDNN the library reports it. PARTIME_SGEMM=openblas or =onednn in the
 * environment forces either; PARTIME_DNNL=0 keeps OpenBLAS. */
#include <cblas.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "ops.h"
#include "sgemm.h"
#ifdef PT_HAVE_DNNL
#include <dnnl.h>
#include <omp.h>
#endif

/* Whether pt_sgemm hands the products to oneDNN: decided by pt_blas_init, read by every call. */
static int sgemm_onednn;

static bool want_onednn(void) {
#ifdef PT_HAVE_DNNL
  const char *e = getenv("PARTIME_SGEMM");
  if (e && strcmp(e, "openblas") == 0) return false;
  if (e && strcmp(e, "onednn") == 0) return true;
  const char *d = getenv("PARTIME_DNNL");
  if (d && strcmp(d, "0") == 0) return false;
  return pt_blas_slow_kernels(NULL) != NULL;
#else
  return false;
#endif
}

void pt_blas_init(void) {
  openblas_set_num_threads(1);
  __atomic_store_n(&sgemm_onednn, want_onednn(), __ATOMIC_RELAXED);
}

const char *pt_sgemm_library(void) {
  return __atomic_load_n(&sgemm_onednn, __ATOMIC_RELAXED) ? "oneDNN" : "OpenBLAS";
}

/* C = alpha * a b^T + beta * C for column a (M) and row b (N), each read with its stride: the
 * product over one term, a Linear layer's weights' gradient at batch 1. oneDNN's sgemm allocates
 * its packing buffers at every call; this allocates nothing. */
static void outer(int M, int N, float alpha, const float *a, int sa, const float *b, int sb,
                  float beta, float *C, int ldc) {
  for (int i = 0; i < M; i++) {
    float *c = C + (size_t)i * ldc;
    const float ai = alpha * a[(size_t)i * sa];
    if (beta == 0.0f) {
      for (int j = 0; j < N; j++) c[j] = ai * b[(size_t)j * sb];
    } else {
      for (int j = 0; j < N; j++) c[j] = beta * c[j] + ai * b[(size_t)j * sb];
    }
  }
}

void pt_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  if (K == 1 && M > 0 && N > 0) {
    /* op(A) (M, 1): column 0 of A, or row 0 of A transposed; op(B) (1, N) likewise */
    outer(M, N, alpha, A, ta == CblasTrans ? 1 : lda, B, tb == CblasTrans ? ldb : 1, beta, C, ldc);
    return;
  }
#ifdef PT_HAVE_DNNL
  if (K > 0 && __atomic_load_n(&sgemm_onednn, __ATOMIC_RELAXED)) {
    if (M <= 0 || N <= 0) return;
    /* on this thread alone, as every oneDNN call here (cpu/dnnl_conv.c) */
    int prev = omp_get_max_threads();
    if (prev != 1) omp_set_num_threads(1);
    dnnl_status_t st = dnnl_sgemm(ta == CblasTrans ? 'T' : 'N', tb == CblasTrans ? 'T' : 'N', M, N,
                                  K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (prev != 1) omp_set_num_threads(prev);
    if (st == dnnl_success) return;
  }
#endif
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* OpenBLAS's kernels that use no AVX: what it falls back to on a CPU model it does not know. The
 * names are those of a DYNAMIC_ARCH build (Debian's), the only kind that OPENBLAS_CORETYPE can
 * change; a build for one CPU reports its target in capitals and is left alone. */
static const char *const generic_cores[] = {"Prescott",  "Core2", "Penryn", "Dunnington",
                                            "Nehalem",   "Atom",  "Katmai", "Coppermine",
                                            "Northwood", "Banias"};

const char *pt_blas_fitting_core(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  /* OpenBLAS's SkylakeX kernels use AVX-512 F, VL and BW (not there on Knights Landing) */
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2")) return "Haswell";
#endif
  return NULL;
}

const char *pt_blas_slow_kernels(const char **better) {
  const char *fit = pt_blas_fitting_core();
  if (!fit) return NULL;
  const char *core = openblas_get_corename();
  if (!core) return NULL;
  for (size_t i = 0; i < sizeof generic_cores / sizeof generic_cores[0]; i++)
    if (strcmp(core, generic_cores[i]) == 0) {
      if (better) *better = fit;
      return core;
    }
  return NULL;
}
