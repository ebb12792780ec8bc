/* CPU BatchNormalization (inference form) and Softmax / LogSoftmax.
 *
 * Batch norm uses the stored mean and variance even while learning: the stream is one frame at a
 * time, so batch statistics are meaningless. scale and bias are trainable; the statistics are
 * constants and get no gradient.
 *
 * Softmax subtracts the maximum before exponentiating so large logits cannot overflow; the
 * backward works from the saved output alone. Sums are kept in double: a row can be long. */
#include <math.h>
#include "ops.h"

#define PT_INLINE static inline __attribute__((always_inline))

/* out, in: (N,C,HW); scale, bias, mean, var: (C). */
void pt_batchnorm_forward(float *out, const float *in, const float *scale, const float *bias,
                          const float *mean, const float *var, const pt_batchnorm_params *p) {
  const int64_t HW = p->HW;
  for (int n = 0; n < p->N; n++) {
    for (int c = 0; c < p->C; c++) {
      /* y = k * x + shift with k and shift folded once per channel */
      const float k = scale[c] / sqrtf(var[c] + p->eps);
      const float shift = bias[c] - mean[c] * k;
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
      const float inv_std = 1.0f / sqrtf(var[c] + p->eps);
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

/* One softmax row of `dim` elements `st` apart; y may be x. */
PT_INLINE void softmax_row(float *y, const float *x, int64_t dim, int64_t st, int log) {
  float m = x[0];
  for (int64_t k = 1; k < dim; k++) m = fmaxf(m, x[k * st]);
  double sum = 0.0;
  if (log) {
    for (int64_t k = 0; k < dim; k++) sum += expf(x[k * st] - m);
    /* (x - m) is exact near the maximum; folding m into the log-sum first would round it */
    const float ls = logf((float)sum);
    for (int64_t k = 0; k < dim; k++) y[k * st] = (x[k * st] - m) - ls;
  } else {
    for (int64_t k = 0; k < dim; k++) {
      const float e = expf(x[k * st] - m);
      y[k * st] = e;
      sum += e;
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t k = 0; k < dim; k++) y[k * st] *= inv;
  }
}

/* out, in: (outer, dim, inner), normalised along dim. */
void pt_softmax_forward(float *out, const float *in, const pt_softmax_params *p) {
  const int64_t dim = p->dim, inner = p->inner;
  if (dim <= 0) return;
  for (int64_t o = 0; o < p->outer; o++) {
    const int64_t base = o * dim * inner;
    if (inner == 1) {
      softmax_row(out + base, in + base, dim, 1, p->log);
    } else {
      for (int64_t j = 0; j < inner; j++)
        softmax_row(out + base + j, in + base + j, dim, inner, p->log);
    }
  }
}

/* Softmax: dx = y * (dy - sum(dy * y)); LogSoftmax: dx = dy - exp(y) * sum(dy). */
PT_INLINE void softmax_row_b(float *dx, const float *dy, const float *y, int64_t dim, int64_t st,
                             int log) {
  double s = 0.0;
  if (log) {
    for (int64_t k = 0; k < dim; k++) s += dy[k * st];
    const float sf = (float)s;
    for (int64_t k = 0; k < dim; k++) dx[k * st] += dy[k * st] - expf(y[k * st]) * sf;
  } else {
    for (int64_t k = 0; k < dim; k++) s += dy[k * st] * y[k * st];
    const float sf = (float)s;
    for (int64_t k = 0; k < dim; k++) dx[k * st] += y[k * st] * (dy[k * st] - sf);
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
      softmax_row_b(din + base, dout + base, out + base, dim, 1, p->log);
    } else {
      for (int64_t j = 0; j < inner; j++)
        softmax_row_b(din + base + j, dout + base + j, out + base + j, dim, inner, p->log);
    }
  }
}
