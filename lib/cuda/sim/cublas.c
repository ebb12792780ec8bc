/* Simulated cuBLAS: handles and single-precision GEMM (cuda/sim).
 *
 * Arguments are checked at the call, as cuBLAS does, and alpha/beta are read then; the product
 * itself is a task on the handle's stream. Operands must be device memory covering every element
 * the leading dimensions and strides reach (cuBLAS would fault later instead, so the sim says so
 * on stderr and returns CUBLAS_STATUS_INVALID_VALUE). Sums accumulate in double: the order of a
 * GPU's sum is unspecified, so callers must not depend on float rounding here. */
#include <stdlib.h>
#include <cublas_v2.h>
#include "sim.h"

struct cublasContext {
  cudaStream_t stream;
  int dev;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle) {
  int dev;
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  if (cudaGetDevice(&dev) != cudaSuccess) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!(*handle = calloc(1, sizeof **handle))) return CUBLAS_STATUS_ALLOC_FAILED;
  (*handle)->dev = dev;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  free(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!sim_stream_valid(streamId)) return CUBLAS_STATUS_INVALID_VALUE;
  handle->stream = streamId;
  return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
  case CUBLAS_STATUS_SUCCESS:
    return "the operation completed successfully";
  case CUBLAS_STATUS_NOT_INITIALIZED:
    return "the library was not initialized";
  case CUBLAS_STATUS_ALLOC_FAILED:
    return "the resource allocation failed";
  case CUBLAS_STATUS_INVALID_VALUE:
    return "an invalid numeric value was used as an argument";
  case CUBLAS_STATUS_ARCH_MISMATCH:
    return "an absent device architectural feature is required";
  case CUBLAS_STATUS_MAPPING_ERROR:
    return "an access to GPU memory space failed";
  case CUBLAS_STATUS_EXECUTION_FAILED:
    return "the GPU program failed to execute";
  case CUBLAS_STATUS_INTERNAL_ERROR:
    return "an internal operation failed";
  case CUBLAS_STATUS_NOT_SUPPORTED:
    return "the functionality requested is not supported";
  case CUBLAS_STATUS_LICENSE_ERROR:
    return "an error was detected when checking the license";
  }
  return "unknown error";
}

typedef struct {
  int ta, tb, m, n, k, lda, ldb, ldc, batch;
  long long sa, sb, sc;
  float alpha, beta;
  const float *A, *B;
  float *C;
} gemm_args;

static void gemm_run(void *p) {
  const gemm_args *g = p;
  /* element (i, l) of op(A) and (l, j) of op(B), column-major */
  long long ai = g->ta ? g->lda : 1, al = g->ta ? 1 : g->lda;
  long long bl = g->tb ? g->ldb : 1, bj = g->tb ? 1 : g->ldb;
  for (int b = 0; b < g->batch; b++) {
    const float *A = g->A + b * g->sa, *B = g->B + b * g->sb;
    float *C = g->C + b * g->sc;
    for (int j = 0; j < g->n; j++)
      for (int i = 0; i < g->m; i++) {
        double acc = 0;
        for (int l = 0; l < g->k; l++) acc += (double)A[i * ai + l * al] * B[l * bl + j * bj];
        float *c = &C[i + (long long)j * g->ldc];
        *c = g->alpha * (float)acc + (g->beta != 0 ? g->beta * *c : 0);
      }
  }
}

/* Elements from the first to one past the last of a rows x cols column-major matrix. */
static size_t extent(int rows, int cols, int ld) {
  return rows && cols ? (size_t)(cols - 1) * ld + rows : 0;
}

static int covers(const char *what, const void *p, int rows, int cols, int ld, long long stride,
                  int batch) {
  size_t n = extent(rows, cols, ld);
  if (!n) return 1;
  n += (size_t)(batch - 1) * (size_t)stride;
  if (sim_dev_range(p, n * sizeof(float)) >= 0) return 1;
  sim_warn("cublasSgemm: %s (%p, %zu floats) is not inside one device allocation", what, p, n);
  return 0;
}

static cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const float *alpha, const float *A, int lda,
                           long long sa, const float *B, int ldb, long long sb, const float *beta,
                           float *C, int ldc, long long sc, int batch) {
  int ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  int arows = ta ? k : m, acols = ta ? m : k, brows = tb ? n : k, bcols = tb ? k : n;
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if ((unsigned)transa > CUBLAS_OP_C || (unsigned)transb > CUBLAS_OP_C || m < 0 || n < 0 || k < 0 ||
      batch < 0 || lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) ||
      ldc < (m > 1 ? m : 1) || !alpha || !beta || sa < 0 || sb < 0 || sc < 0)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!m || !n || !batch) return CUBLAS_STATUS_SUCCESS;
  if (*alpha == 0) k = 0; /* A and B are not read */
  if (!covers("C", C, m, n, ldc, sc, batch) ||
      (k && (!covers("A", A, arows, acols, lda, sa, batch) ||
             !covers("B", B, brows, bcols, ldb, sb, batch))))
    return CUBLAS_STATUS_INVALID_VALUE;
  sim_task *t = sim_task_new(gemm_run, sizeof(gemm_args));
  *(gemm_args *)sim_task_payload(t) =
      (gemm_args){ta, tb, m, n, k, lda, ldb, ldc, batch, sa, sb, sc, *alpha, *beta, A, B, C};
  return sim_submit(h->stream, h->dev, t) ? CUBLAS_STATUS_EXECUTION_FAILED : CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                              cublasOperation_t transb, int m, int n, int k, const float *alpha,
                              const float *A, int lda, const float *B, int ldb, const float *beta,
                              float *C, int ldc) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long int strideA, const float *B, int ldb,
                                         long long int strideB, const float *beta, float *C,
                                         int ldc, long long int strideC, int batchCount) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C,
              ldc, strideC, batchCount);
}
