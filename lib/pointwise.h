/* Per-element arithmetic shared by the CPU loops and the CUDA kernels.
 *
 * Everything here is a static inline function marked PT_HD, which is `__host__ __device__` under
 * nvcc and nothing otherwise, so the CPU tests exercise the exact arithmetic the GPU runs. Keep these
 * free of library calls other than the float math functions both sides provide. */
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
PT_HD static inline float pt_sigmoid_f(float x) {
  /* split by sign so exp never overflows */
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
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

/* Squared error gradient of mean((y - t)^2) over n elements. */
PT_HD static inline float pt_mse_b(float y, float t, float inv_n) { return 2.0f * (y - t) * inv_n; }

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
