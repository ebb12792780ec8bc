/* CPU losses over one frame's output: cross-entropy (class index target) and mean squared error.
 *
 * Unlike the layer backwards, a loss WRITES its gradient (dout is the seed of the backward pass).
 * Cross-entropy over logits goes through a log-sum-exp shifted by the maximum, so any finite logits
 * give a finite loss and gradient softmax - onehot. Over probabilities (a model ending in Softmax)
 * the probability is clamped at PT_CE_TINY: a class the model rules out costs about 27.6, not
 * infinity. A target outside [0, C) is ignored like PyTorch's ignore_index: loss 0, gradient 0,
 * and nothing is read at that index. */
#include <math.h>
#include <string.h>
#include "ops.h"
#include "../pointwise.h"

#define PT_CE_TINY 1e-12f

/* dout, out: (C). */
float pt_cross_entropy(float *dout, const float *out, int64_t target, int C, bool out_is_prob) {
  if (C <= 0) return 0.0f;
  if (target < 0 || target >= C) {
    if (dout) memset(dout, 0, sizeof(float) * (size_t)C);
    return 0.0f;
  }
  if (out_is_prob) {
    const float pt = fmaxf(out[target], PT_CE_TINY);
    if (dout) {
      memset(dout, 0, sizeof(float) * (size_t)C);
      dout[target] = -1.0f / pt;
    }
    return -logf(pt);
  }
  float m = out[0];
  for (int i = 1; i < C; i++) m = fmaxf(m, out[i]);
  double sum = 0.0;
  for (int i = 0; i < C; i++) sum += exp((double)out[i] - m);
  const double lse = m + log(sum);
  if (dout) {
    for (int i = 0; i < C; i++) dout[i] = (float)exp((double)out[i] - lse);
    dout[target] -= 1.0f;
  }
  return (float)(lse - out[target]);
}

/* dout, out, target: (n). */
float pt_mse(float *dout, const float *out, const float *target, int64_t n) {
  if (n <= 0) return 0.0f;
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const double d = (double)out[i] - target[i];
    s += d * d;
  }
  if (dout) {
    const float inv_n = 1.0f / (float)n;
    for (int64_t i = 0; i < n; i++) dout[i] = pt_mse_b(out[i], target[i], inv_n);
  }
  return (float)(s / (double)n);
}
