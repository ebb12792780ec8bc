/* Gemm and MatMul on the CPU, forward and backward, all through pt_sgemm (row-major).
 *
 * Gemm: Y (M,N) = alpha * op(A) * op(B) + beta * C, with A stored (M,K) or, transposed, (K,M) and
 * B stored (K,N) or (N,K). C is broadcast by pt_gemm_c: a scalar, a row of N, a column of M or the
 * full (M,N). Forward writes C into Y first and lets the gemm scale it by beta.
 *
 * MatMul: Y[b] (M,N) = A[b] (M,K) * B[b] (K,N) with per-operand batch strides, 0 meaning one matrix
 * shared by every batch item. The common case of a batch of rows against one weight matrix (B
 * shared, A packed) is one gemm over batch*M rows, forward and backward; other layouts loop.
 *
 * Backward adds into da, db and dc (accumulate rule of ops.h); NULL means skip. A gradient of a
 * broadcast operand sums over the positions it was broadcast to. */
#include <string.h>
#include "ops.h"
#include "sgemm.h"

static CBLAS_TRANSPOSE pt_tr(bool t) {
  return t ? CblasTrans : CblasNoTrans;
}

/* out (M,N), a (M,K) or (K,M) when trans_a, b (K,N) or (N,K) when trans_b, c per c_mode or NULL. */
void pt_gemm_forward(float *out, const float *a, const float *b, const float *c,
                     const pt_gemm_params *p) {
  const int M = p->M, N = p->N, K = p->K;
  const int lda = p->trans_a ? M : K, ldb = p->trans_b ? K : N;
  float beta = 0.0f;
  if (c && p->c_mode != PT_GEMM_C_NONE && p->beta != 0.0f) {
    beta = p->beta;
    switch (p->c_mode) {
    case PT_GEMM_C_SCALAR:
      for (int64_t i = 0; i < (int64_t)M * N; i++) out[i] = c[0];
      break;
    case PT_GEMM_C_ROW:
      for (int m = 0; m < M; m++) memcpy(out + (int64_t)m * N, c, sizeof(float) * N);
      break;
    case PT_GEMM_C_COL:
      for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) out[(int64_t)m * N + n] = c[m];
      break;
    default:
      memcpy(out, c, sizeof(float) * (size_t)M * N);
      break;
    }
  }
  pt_sgemm(pt_tr(p->trans_a), pt_tr(p->trans_b), M, N, K, p->alpha, a, lda, b, ldb, beta, out, N);
}

/* da, db shaped as a and b; dc shaped as c; dout (M,N). */
void pt_gemm_backward(float *da, float *db, float *dc, const float *dout, const float *a,
                      const float *b, const pt_gemm_params *p) {
  const int M = p->M, N = p->N, K = p->K;
  const int lda = p->trans_a ? M : K, ldb = p->trans_b ? K : N;
  const float alpha = p->alpha;

  if (da) {
    if (!p->trans_a) /* dA (M,K) += alpha * dY * op(B)^T */
      pt_sgemm(CblasNoTrans, pt_tr(!p->trans_b), M, K, N, alpha, dout, N, b, ldb, 1.0f, da, K);
    else /* dA (K,M) += alpha * op(B) * dY^T */
      pt_sgemm(pt_tr(p->trans_b), CblasTrans, K, M, N, alpha, b, ldb, dout, N, 1.0f, da, M);
  }
  if (db) {
    if (!p->trans_b) /* dB (K,N) += alpha * op(A)^T * dY */
      pt_sgemm(pt_tr(!p->trans_a), CblasNoTrans, K, N, M, alpha, a, lda, dout, N, 1.0f, db, N);
    else /* dB (N,K) += alpha * dY^T * op(A) */
      pt_sgemm(CblasTrans, pt_tr(p->trans_a), N, K, M, alpha, dout, N, a, lda, 1.0f, db, K);
  }
  if (dc && p->c_mode != PT_GEMM_C_NONE) {
    const float beta = p->beta;
    switch (p->c_mode) {
    case PT_GEMM_C_SCALAR: {
      double s = 0;
      for (int64_t i = 0; i < (int64_t)M * N; i++) s += dout[i];
      dc[0] += beta * (float)s;
      break;
    }
    case PT_GEMM_C_ROW:
      for (int m = 0; m < M; m++) {
        const float *g = dout + (int64_t)m * N;
        for (int n = 0; n < N; n++) dc[n] += beta * g[n];
      }
      break;
    case PT_GEMM_C_COL:
      for (int m = 0; m < M; m++) {
        const float *g = dout + (int64_t)m * N;
        float s = 0;
        for (int n = 0; n < N; n++) s += g[n];
        dc[m] += beta * s;
      }
      break;
    default:
      for (int64_t i = 0; i < (int64_t)M * N; i++) dc[i] += beta * dout[i];
      break;
    }
  }
}

/* Rows of every batch item's A lie back to back against one shared B: one gemm does them all. */
static bool pt_matmul_rows(const pt_matmul_params *p) {
  return p->b_stride == 0 && (p->batch == 1 || p->a_stride == (int64_t)p->M * p->K);
}

/* out (batch, M, N); a[i] at a + i*a_stride (M,K); b[i] at b + i*b_stride (K,N). */
void pt_matmul_forward(float *out, const float *a, const float *b, const pt_matmul_params *p) {
  const int M = p->M, N = p->N, K = p->K;
  if (pt_matmul_rows(p)) {
    pt_sgemm(CblasNoTrans, CblasNoTrans, p->batch * M, N, K, 1.0f, a, K, b, N, 0.0f, out, N);
    return;
  }
  for (int i = 0; i < p->batch; i++)
    pt_sgemm(CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a + i * p->a_stride, K, b + i * p->b_stride,
             N, 0.0f, out + (int64_t)i * M * N, N);
}

/* da, db laid out as a, b (a shared operand gets the sum over the batch); dout (batch, M, N). */
void pt_matmul_backward(float *da, float *db, const float *dout, const float *a, const float *b,
                        const pt_matmul_params *p) {
  const int M = p->M, N = p->N, K = p->K;
  if (pt_matmul_rows(p)) {
    const int R = p->batch * M;
    if (da) /* dA (R,K) += dY (R,N) * B^T */
      pt_sgemm(CblasNoTrans, CblasTrans, R, K, N, 1.0f, dout, N, b, N, 1.0f, da, K);
    if (db) /* dB (K,N) += A^T (K,R) * dY (R,N) */
      pt_sgemm(CblasTrans, CblasNoTrans, K, N, R, 1.0f, a, K, dout, N, 1.0f, db, N);
    return;
  }
  for (int i = 0; i < p->batch; i++) {
    const float *dy = dout + (int64_t)i * M * N;
    if (da)
      pt_sgemm(CblasNoTrans, CblasTrans, M, K, N, 1.0f, dy, N, b + i * p->b_stride, N, 1.0f,
               da + i * p->a_stride, K);
    if (db)
      pt_sgemm(CblasTrans, CblasNoTrans, K, N, M, 1.0f, a + i * p->a_stride, K, dy, N, 1.0f,
               db + i * p->b_stride, N);
  }
}
