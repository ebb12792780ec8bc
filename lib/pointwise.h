/* Per-element arithmetic shared by the CPU loops and the CUDA kernels.
 *
 * Everything here is a static inline function marked PT_HD, which is `__host__ __device__` under
 * nvcc and nothing otherwise, so the CPU tests exercise the exact arithmetic the GPU runs. Keep
 * these free of library calls other than the math functions both sides provide (no memset, no
 * allocation); loops over a row or a window are fine, each call still serves one output. */
#ifndef PT_POINTWISE_H
#define PT_POINTWISE_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define PT_HD __host__ __device__
#else
#define PT_HD
#endif

/* Activations: forward from x, backward from x (or y where cheaper) and the incoming gradient. */
/* NaN passes through (as in PyTorch), so a corrupt frame shows in the loss instead of vanishing */
PT_HD static inline float pt_relu_f(float x) { return x < 0.0f ? 0.0f : x; }
PT_HD static inline float pt_relu_b(float x, float dy) { return x > 0.0f ? dy : 0.0f; }
PT_HD static inline float pt_leaky_relu_f(float x, float a) { return x >= 0.0f ? x : a * x; }
PT_HD static inline float pt_leaky_relu_b(float x, float a, float dy) {
  return x >= 0.0f ? dy : a * dy;
}

/* e^x for x <= 0, without a call, so that a loop of it compiles to vector code: x = n ln2 + r
 * with |r| <= ln2 / 2 (ln2 in two parts, the first exact in float), e^r by a degree-7
 * polynomial (the classic minimax coefficients for this range), and 2^n written into the
 * exponent's bits. Sigmoid from it is within 2.4 ulp of exact over every float (test_grad_ops
 * sweeps -100..100 with 3 allowed). Below -87.33, where e^x would be subnormal, 0. NaN stays NaN
 * (every comparison with it is false). */
PT_HD static inline float pt_exp_neg_f(float x) {
  const float lo = -87.33654f; /* ln 2^-126 */
  const float xc = x < lo ? lo : x;
  /* adding 1.5 * 2^23 rounds x / ln2 to the nearest integer n, held in the low bits */
  const float magic = 12582912.0f;
  const float t = xc * 1.44269504088896341f + magic;
  const float n = t - magic;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const float er = q * r * r + r + 1.0f;
  /* 2^n: n + 127 in the exponent field, n being t's bits less magic's (-126 <= n <= 0) */
#ifdef __CUDA_ARCH__
  const float two_n = __uint_as_float((__float_as_uint(t) - 0x4B400000u + 127u) << 23);
#else
  union {
    float f;
    uint32_t u;
  } bits = {t};
  bits.u = (bits.u - 0x4B400000u + 127u) << 23;
  const float two_n = bits.f;
#endif
  return x < lo ? 0.0f : er * two_n;
}

PT_HD static inline float pt_sigmoid_f(float x) {
  /* from e^-|x|, which never overflows: 1 / (1 + e) or e / (1 + e), one rounding each */
  const float e = pt_exp_neg_f(-fabsf(x));
  return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}
PT_HD static inline float pt_sigmoid_b(float y, float dy) { return dy * y * (1.0f - y); }
PT_HD static inline float pt_tanh_f(float x) { return tanhf(x); }
PT_HD static inline float pt_tanh_b(float y, float dy) { return dy * (1.0f - y * y); }

/* Binary ops and their partial derivatives w.r.t. a and b. */
PT_HD static inline float pt_bin_f(int kind, float a, float b) {
  switch (kind) {
  case 0: return a + b;
  case 1: return a - b;
  case 2: return a * b;
  default: return a / b;
  }
}
PT_HD static inline float pt_bin_da(int kind, float a, float b, float dy) {
  (void)a;
  switch (kind) {
  case 0: return dy;
  case 1: return dy;
  case 2: return dy * b;
  default: return dy / b;
  }
}
PT_HD static inline float pt_bin_db(int kind, float a, float b, float dy) {
  switch (kind) {
  case 0: return dy;
  case 1: return -dy;
  case 2: return dy * a;
  default: return -dy * a / (b * b);
  }
}

/* Optimizers, one weight at a time, following PyTorch's torch.optim rules. */
PT_HD static inline void pt_sgd_1(float *w, float g, float *m, float lr, float momentum, float wd) {
  g += wd * *w;
  if (momentum != 0.0f) {
    *m = momentum * *m + g;
    g = *m;
  }
  *w -= lr * g;
}

/* bc1 = 1 - beta1^t, sqrt_bc2 = sqrt(1 - beta2^t), computed once per step by the caller. */
PT_HD static inline void pt_adam_1(float *w, float g, float *m, float *v, float lr, float beta1,
                                   float beta2, float eps, float wd, float bc1, float sqrt_bc2) {
  g += wd * *w;
  *m = beta1 * *m + (1.0f - beta1) * g;
  *v = beta2 * *v + (1.0f - beta2) * g * g;
  float denom = sqrtf(*v) / sqrt_bc2 + eps;
  *w -= (lr / bc1) * (*m / denom);
}

/* Adam's bias corrections for 1-based step t (t < 1 taken as 1): bc1 = 1 - beta1^t and
 * sqrt_bc2 = sqrt(1 - beta2^t), in double as PyTorch does in Python, then rounded to float. */
PT_HD static inline void pt_adam_bias(float beta1, float beta2, int64_t t, float *bc1,
                                      float *sqrt_bc2) {
  const double step = t < 1 ? 1.0 : (double)t;
  *bc1 = (float)(1.0 - pow((double)beta1, step));
  *sqrt_bc2 = (float)sqrt(1.0 - pow((double)beta2, step));
}

/* Squared error gradient of mean((y - t)^2) over n elements. */
PT_HD static inline float pt_mse_b(float y, float t, float inv_n) { return 2.0f * (y - t) * inv_n; }

/* mean((y - t)^2) over y, t (n), in double: eight partial sums over i mod 8 (the tail into the
 * first), added pairwise at the end. Every caller sums in this order (a compiler may still fuse
 * the multiply-adds on one instruction set and not another: the last bits of the double sums),
 * and the CPU's loop runs in vector code where one chain of adds ran an element per add's
 * latency. */
PT_HD static inline float pt_mse_f(const float *y, const float *t, int64_t n) {
  if (n <= 0) return 0.0f;
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      const double d = (double)y[i + k] - t[i + k];
      s[k] += d * d;
    }
  for (; i < n; i++) {
    const double d = (double)y[i] - t[i];
    s[0] += d * d;
  }
  return (float)((((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) / (double)n);
}

/* Cross-entropy of one frame, y (C) logits or, when is_prob, probabilities, against class
 * `target`; writes the gradient (=) into dy (C) unless NULL. The rules are loss.c's. */
#define PT_CE_TINY 1e-12f
PT_HD static inline float pt_ce(float *dy, const float *y, int64_t target, int C, int is_prob) {
  if (C <= 0) return 0.0f;
  if (target < 0 || target >= C) {
    if (dy)
      for (int i = 0; i < C; i++) dy[i] = 0.0f;
    return 0.0f;
  }
  if (is_prob) {
    const float p = fmaxf(y[target], PT_CE_TINY);
    if (dy) {
      for (int i = 0; i < C; i++) dy[i] = 0.0f;
      dy[target] = -1.0f / p;
    }
    return -logf(p);
  }
  float m = y[0];
  for (int i = 1; i < C; i++) m = fmaxf(m, y[i]);
  double sum = 0.0;
  for (int i = 0; i < C; i++) sum += exp((double)y[i] - m);
  const double lse = m + log(sum);
  if (dy) {
    for (int i = 0; i < C; i++) dy[i] = (float)exp((double)y[i] - lse);
    dy[target] -= 1.0f;
  }
  return (float)(lse - y[target]);
}

/* Batch norm, inference form, per channel: y = x * k + shift. */
PT_HD static inline float pt_bn_inv_std(float var, float eps) { return 1.0f / sqrtf(var + eps); }
PT_HD static inline void pt_bn_fold(float scale, float bias, float mean, float var, float eps,
                                    float *k, float *shift) {
  *k = scale / sqrtf(var + eps);
  *shift = bias - mean * *k;
}

/* Softmax (is_log 0) or LogSoftmax (is_log 1) of one row of `dim` elements `st` apart; y may be x.
 * The maximum is subtracted before exponentiating so large logits cannot overflow; sums are in
 * double since a row can be long. */
PT_HD static inline void pt_softmax_row(float *y, const float *x, int64_t dim, int64_t st,
                                        int is_log) {
  float m = x[0];
  for (int64_t k = 1; k < dim; k++) m = fmaxf(m, x[k * st]);
  double sum = 0.0;
  if (is_log) {
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

/* Its backward from the saved output y, ADDED into dx. Softmax: dx = y * (dy - sum(dy * y));
 * LogSoftmax: dx = dy - exp(y) * sum(dy). */
PT_HD static inline void pt_softmax_row_b(float *dx, const float *dy, const float *y, int64_t dim,
                                          int64_t st, int is_log) {
  double s = 0.0;
  if (is_log) {
    for (int64_t k = 0; k < dim; k++) s += dy[k * st];
    const float sf = (float)s;
    for (int64_t k = 0; k < dim; k++) dx[k * st] += dy[k * st] - expf(y[k * st]) * sf;
  } else {
    for (int64_t k = 0; k < dim; k++) s += dy[k * st] * y[k * st];
    const float sf = (float)s;
    for (int64_t k = 0; k < dim; k++) dx[k * st] += y[k * st] * (dy[k * st] - sf);
  }
}

/* Pooling windows along one axis: output o's taps start at off = o * stride - pad0 and tap k lands
 * at off + k * d. pt_pool_taps gives the taps [lo, hi) among n that fall inside [0, size). */
PT_HD static inline void pt_pool_taps(int off, int d, int size, int n, int *lo, int *hi) {
  int l = off < 0 ? (-off + d - 1) / d : 0;
  int h = size - off > 0 ? (size - off + d - 1) / d : 0;
  if (h > n) h = n;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

/* The taps of one axis an average pool divides by: those on real input [lo, hi), or with
 * include_pad those inside the padded extent [-pad0, size + pad1). */
PT_HD static inline int pt_pool_count(int include_pad, int off, int d, int size, int pad0, int pad1,
                                      int n, int lo, int hi) {
  if (!include_pad) return hi - lo;
  int l, h;
  pt_pool_taps(off + pad0, d, size + pad0 + pad1, n, &l, &h);
  return h - l;
}

/* Max pooling of one window of plane x (rows W long), real taps [kh0, kh1) x [kw0, kw1): the
 * maximum into *best and its index ih * W + iw returned. The first of equal maxima wins and a NaN
 * wins over numbers; an empty window gives 0 and -1. */
PT_HD static inline int32_t pt_maxpool_window(const float *x, int W, int offh, int offw, int DH,
                                              int DW, int kh0, int kh1, int kw0, int kw1,
                                              float *best) {
  if (kh0 >= kh1 || kw0 >= kw1) {
    *best = 0.0f;
    return -1;
  }
  int32_t bi = (offh + kh0 * DH) * W + offw + kw0 * DW;
  float b = x[bi];
  for (int kh = kh0; kh < kh1; kh++) {
    const int32_t row = (offh + kh * DH) * W + offw;
    for (int kw = kw0; kw < kw1; kw++) {
      const int32_t i = row + kw * DW;
      const float v = x[i];
      if (v > b || (v != v && b == b)) {
        b = v;
        bi = i;
      }
    }
  }
  *best = b;
  return bi;
}

/* The sum of one average-pool window, same arguments, in row order. */
PT_HD static inline float pt_avgpool_window(const float *x, int W, int offh, int offw, int DH,
                                            int DW, int kh0, int kh1, int kw0, int kw1) {
  float s = 0.0f;
  for (int kh = kh0; kh < kh1; kh++) {
    const float *row = x + (int64_t)(offh + kh * DH) * W;
    for (int kw = kw0; kw < kw1; kw++) s += row[offw + kw * DW];
  }
  return s;
}

/* Nearest resize: the source index along one axis for output index o (ONNX Resize semantics).
 * coord: pt_resize_coord, nearest: pt_resize_nearest (ops.h). */
PT_HD static inline int pt_resize_src_index(int o, int in, int out, float scale, int coord,
                                            int nearest) {
  float x;
  switch (coord) {
  case 0: /* half_pixel */
    x = ((float)o + 0.5f) / scale - 0.5f;
    break;
  case 2: /* align_corners */
    x = out > 1 ? (float)o * (float)(in - 1) / (float)(out - 1) : 0.0f;
    break;
  case 3: /* pytorch_half_pixel */
    x = out > 1 ? ((float)o + 0.5f) / scale - 0.5f : 0.0f;
    break;
  case 4: /* tf_half_pixel_for_nn */
    x = ((float)o + 0.5f) / scale;
    break;
  default: /* asymmetric */
    x = (float)o / scale;
    break;
  }
  int i;
  switch (nearest) {
  case 1: /* round_prefer_ceil */
    i = (int)floorf(x + 0.5f);
    break;
  case 2: /* floor */
    i = (int)floorf(x);
    break;
  case 3: /* ceil */
    i = (int)ceilf(x);
    break;
  default: /* round_prefer_floor */
    i = (x - floorf(x) == 0.5f) ? (int)floorf(x) : (int)floorf(x + 0.5f);
    break;
  }
  if (i < 0) i = 0;
  if (i > in - 1) i = in - 1;
  return i;
}

#endif
