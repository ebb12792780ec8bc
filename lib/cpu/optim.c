/* CPU optimizer steps over a flat run of weights, with PyTorch's torch.optim update rules (SGD
 * without dampening or Nesterov; Adam, not AdamW: weight decay is added to the gradient).
 *
 * The per-weight arithmetic is pt_sgd_1 / pt_adam_1 from ../pointwise.h, shared with the CUDA
 * kernels. Adam's bias corrections are computed once per step in double, as PyTorch does in
 * Python, and then rounded to float. */
#include <math.h>
#include "ops.h"
#include "../pointwise.h"

/* w, g, m: (n); m may be NULL when momentum is 0. */
void pt_sgd_step(float *w, const float *g, float *m, int64_t n, float lr, float momentum,
                 float wd) {
  if (momentum == 0.0f || !m) {
    float unused = 0.0f;
    for (int64_t i = 0; i < n; i++) pt_sgd_1(&w[i], g[i], &unused, lr, 0.0f, wd);
  } else {
    for (int64_t i = 0; i < n; i++) pt_sgd_1(&w[i], g[i], &m[i], lr, momentum, wd);
  }
}

/* w, g, m, v: (n); t counts steps from 1 (t < 1 is taken as 1). */
void pt_adam_step(float *w, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float wd, int64_t t) {
  float bc1, sqrt_bc2;
  pt_adam_bias(beta1, beta2, t, &bc1, &sqrt_bc2);
  for (int64_t i = 0; i < n; i++)
    pt_adam_1(&w[i], g[i], &m[i], &v[i], lr, beta1, beta2, eps, wd, bc1, sqrt_bc2);
}
