/* CPU losses over one frame's output: cross-entropy (class index target) and mean squared error.
 *
 * Unlike the layer backwards, a loss WRITES its gradient (dout is the seed of the backward pass).
 * Cross-entropy over logits goes through a log-sum-exp shifted by the maximum, so any finite logits
 * give a finite loss and gradient softmax - onehot. Over probabilities (a model ending in Softmax)
 * the probability is clamped at PT_CE_TINY: a class the model rules out costs about 27.6, not
 * infinity. A target outside [0, C) is ignored like PyTorch's ignore_index: loss 0, gradient 0,
 * and nothing is read at that index. The arithmetic is pt_ce / pt_mse_f / pt_mse_b from
 * ../pointwise.h, shared with the CUDA kernels. */
#include <math.h>
#include "ops.h"
#include "../pointwise.h"
#include "vec16.h"

/* dout, out: (C). */
float pt_cross_entropy(float *dout, const float *out, int64_t target, int C, bool out_is_prob) {
  return pt_ce(dout, out, target, C, out_is_prob);
}

/* dout, out, target: (n). */
PT_CLONES float pt_mse(float *dout, const float *out, const float *target, int64_t n) {
  if (n <= 0) return 0.0f;
  if (dout) {
    const float inv_n = 1.0f / (float)n;
    for (int64_t i = 0; i < n; i++) dout[i] = pt_mse_b(out[i], target[i], inv_n);
  }
  return pt_mse_f(out, target, n);
}
