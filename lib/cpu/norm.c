/* CPU BatchNormalization (inference form) and Softmax / LogSoftmax.
 *
 * Batch norm uses the stored mean and variance even while learning: the stream is one frame at a
 * time, so batch statistics are meaningless. scale and bias are trainable; the statistics are
 * constants and get no gradient.
 *
 * Softmax subtracts the maximum before exponentiating so large logits cannot overflow; the
 * backward works from the saved output alone. Sums are kept in double: a row can be long. The
 * per-channel folding and the row functions are in ../pointwise.h, shared with the CUDA kernels. */
#include <math.h>
#include "ops.h"
#include "../pointwise.h"

/* out, in: (N,C,HW); scale, bias, mean, var: (C). */
void pt_batchnorm_forward(float *out, const float *in, const float *scale, const float *bias,
                          const float *mean, const float *var, const pt_batchnorm_params *p) {
  const int64_t HW = p->HW;
  for (int n = 0; n < p->N; n++) {
    for (int c = 0; c < p->C; c++) {
      /* y = k * x + shift with k and shift folded once per channel */
      float k, shift;
      pt_bn_fold(scale[c], bias[c], mean[c], var[c], p->eps, &k, &shift);
      const int64_t off = ((int64_t)n * p->C + c) * HW;
      const float *x = in + off;
      float *y = out + off;
      for (int64_t i = 0; i < HW; i++) y[i] = x[i] * k + shift;
    }
  }
}

/* din, dout, in: (N,C,HW); dscale, dbias, scale, mean, var: (C). Any gradient may be NULL. */
void pt_batchnorm_backward(float *din, float *dscale, float *dbias, const float *dout,
                           const float *in, const float *scale, const float *mean, const float *var,
                           const pt_batchnorm_params *p) {
  const int64_t HW = p->HW;
  for (int n = 0; n < p->N; n++) {
    for (int c = 0; c < p->C; c++) {
      const float inv_std = pt_bn_inv_std(var[c], p->eps);
      const int64_t off = ((int64_t)n * p->C + c) * HW;
      const float *dy = dout + off;
      if (din) {
        const float k = scale[c] * inv_std;
        float *dx = din + off;
        for (int64_t i = 0; i < HW; i++) dx[i] += dy[i] * k;
      }
      if (dscale) {
        const float *x = in + off;
        const float mu = mean[c];
        double s = 0.0;
        for (int64_t i = 0; i < HW; i++) s += dy[i] * (x[i] - mu);
        dscale[c] += (float)(s * inv_std);
      }
      if (dbias) {
        double s = 0.0;
        for (int64_t i = 0; i < HW; i++) s += dy[i];
        dbias[c] += (float)s;
      }
    }
  }
}

/* out, in: (outer, dim, inner), normalised along dim. */
void pt_softmax_forward(float *out, const float *in, const pt_softmax_params *p) {
  const int64_t dim = p->dim, inner = p->inner;
  if (dim <= 0) return;
  for (int64_t o = 0; o < p->outer; o++) {
    const int64_t base = o * dim * inner;
    if (inner == 1) {
      pt_softmax_row(out + base, in + base, dim, 1, p->log);
    } else {
      for (int64_t j = 0; j < inner; j++)
        pt_softmax_row(out + base + j, in + base + j, dim, inner, p->log);
    }
  }
}

/* din, dout, out: (outer, dim, inner); out is the forward's output. */
void pt_softmax_backward(float *din, const float *dout, const float *out,
                         const pt_softmax_params *p) {
  if (!din) return;
  const int64_t dim = p->dim, inner = p->inner;
  for (int64_t o = 0; o < p->outer; o++) {
    const int64_t base = o * dim * inner;
    if (inner == 1) {
      pt_softmax_row_b(din + base, dout + base, out + base, dim, 1, p->log);
    } else {
      for (int64_t j = 0; j < inner; j++)
        pt_softmax_row_b(din + base + j, dout + base + j, out + base + j, dim, inner, p->log);
    }
  }
}
