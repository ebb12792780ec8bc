/* The CPU kernels' matrix products (cpu/blas.c). */
#ifndef PT_CPU_SGEMM_H
#define PT_CPU_SGEMM_H

#include <cblas.h>

/* C = alpha * op(A) * op(B) + beta * C, row-major, on the calling thread alone: cblas_sgemm's
 * arguments without the order. OpenBLAS runs it, or oneDNN's sgemm where OpenBLAS fell back to its
 * generic kernels (pt_blas_init decides; see cpu/blas.c). */
void pt_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* "OpenBLAS" or "oneDNN": which library pt_sgemm uses now. */
const char *pt_sgemm_library(void);

#endif
