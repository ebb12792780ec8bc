/* MaxPool, AveragePool and GlobalAveragePool on the CPU, forward and backward.
 *
 * Each output works out once which kernel rows and columns land on real input, so the inner loops
 * run over real elements only and never test bounds. Pads may be asymmetric, and the output may
 * reach past the bottom/right padding (ceil_mode).
 *
 * Max: padding never wins. Forward records in `argmax` (one int32 per output) the index of the
 * winning element within its (n, c) plane, ih * W + iw; the first of equal maxima wins and a NaN
 * wins over numbers, so NaN propagates. A window that lies wholly in the padding has no input: its
 * output is 0, its argmax -1, and backward sends it nothing.
 *
 * Average: divides by the number of taps inside the padded input ([-PT, H + PB) x [-PL, W + PR])
 * when count_include_pad, else by the number of taps on real input; a window with no such tap
 * gives 0 (never 0/0). Dilation applies to both pools.
 *
 * The window arithmetic (taps, maximum, sum, divisor) is in ../pointwise.h, shared with the CUDA
 * kernels. Backward adds into din (accumulate rule of ops.h). */
#include "ops.h"
#include "../pointwise.h"

/* out (N, C, OH, OW), argmax (N, C, OH, OW), in (N, C, H, W). */
void pt_maxpool_forward(float *out, int32_t *argmax, const float *in, const pt_pool_params *p) {
  const int64_t HW = (int64_t)p->H * p->W, P = (int64_t)p->OH * p->OW;
  for (int64_t plane = 0; plane < (int64_t)p->N * p->C; plane++) {
    const float *x = in + plane * HW;
    float *y = out + plane * P;
    int32_t *am = argmax + plane * P;
    for (int oh = 0; oh < p->OH; oh++) {
      int offh = oh * p->SH - p->PT, kh0, kh1;
      pt_pool_taps(offh, p->DH, p->H, p->KH, &kh0, &kh1);
      for (int ow = 0; ow < p->OW; ow++) {
        int offw = ow * p->SW - p->PL, kw0, kw1;
        pt_pool_taps(offw, p->DW, p->W, p->KW, &kw0, &kw1);
        float best;
        const int32_t bi =
            pt_maxpool_window(x, p->W, offh, offw, p->DH, p->DW, kh0, kh1, kw0, kw1, &best);
        y[(int64_t)oh * p->OW + ow] = best;
        am[(int64_t)oh * p->OW + ow] = bi;
      }
    }
  }
}

/* din (N, C, H, W) += dout routed to each window's recorded maximum. */
void pt_maxpool_backward(float *din, const float *dout, const int32_t *argmax,
                         const pt_pool_params *p) {
  const int64_t HW = (int64_t)p->H * p->W, P = (int64_t)p->OH * p->OW;
  for (int64_t plane = 0; plane < (int64_t)p->N * p->C; plane++) {
    float *dx = din + plane * HW;
    const float *dy = dout + plane * P;
    const int32_t *am = argmax + plane * P;
    for (int64_t i = 0; i < P; i++)
      if (am[i] >= 0) dx[am[i]] += dy[i];
  }
}

/* The divisor of one window: taps counted per count_include_pad, with the real-input range
 * [kh0, kh1) x [kw0, kw1) already known. */
static int pt_avg_count(const pt_pool_params *p, int offh, int offw, int kh0, int kh1, int kw0,
                        int kw1) {
  const int ci = p->count_include_pad;
  return pt_pool_count(ci, offh, p->DH, p->H, p->PT, p->PB, p->KH, kh0, kh1) *
         pt_pool_count(ci, offw, p->DW, p->W, p->PL, p->PR, p->KW, kw0, kw1);
}

/* out (N, C, OH, OW), in (N, C, H, W). */
void pt_avgpool_forward(float *out, const float *in, const pt_pool_params *p) {
  const int64_t HW = (int64_t)p->H * p->W, P = (int64_t)p->OH * p->OW;
  for (int64_t plane = 0; plane < (int64_t)p->N * p->C; plane++) {
    const float *x = in + plane * HW;
    float *y = out + plane * P;
    for (int oh = 0; oh < p->OH; oh++) {
      int offh = oh * p->SH - p->PT, kh0, kh1;
      pt_pool_taps(offh, p->DH, p->H, p->KH, &kh0, &kh1);
      for (int ow = 0; ow < p->OW; ow++) {
        int offw = ow * p->SW - p->PL, kw0, kw1;
        pt_pool_taps(offw, p->DW, p->W, p->KW, &kw0, &kw1);
        const float s = pt_avgpool_window(x, p->W, offh, offw, p->DH, p->DW, kh0, kh1, kw0, kw1);
        int count = pt_avg_count(p, offh, offw, kh0, kh1, kw0, kw1);
        y[(int64_t)oh * p->OW + ow] = count > 0 ? s / (float)count : 0.0f;
      }
    }
  }
}

/* din (N, C, H, W) += dout spread evenly over each window's taps. */
void pt_avgpool_backward(float *din, const float *dout, const pt_pool_params *p) {
  const int64_t HW = (int64_t)p->H * p->W, P = (int64_t)p->OH * p->OW;
  for (int64_t plane = 0; plane < (int64_t)p->N * p->C; plane++) {
    float *dx = din + plane * HW;
    const float *dy = dout + plane * P;
    for (int oh = 0; oh < p->OH; oh++) {
      int offh = oh * p->SH - p->PT, kh0, kh1;
      pt_pool_taps(offh, p->DH, p->H, p->KH, &kh0, &kh1);
      for (int ow = 0; ow < p->OW; ow++) {
        int offw = ow * p->SW - p->PL, kw0, kw1;
        pt_pool_taps(offw, p->DW, p->W, p->KW, &kw0, &kw1);
        int count = pt_avg_count(p, offh, offw, kh0, kh1, kw0, kw1);
        if (count <= 0) continue;
        const float g = dy[(int64_t)oh * p->OW + ow] / (float)count;
        for (int kh = kh0; kh < kh1; kh++) {
          float *row = dx + (int64_t)(offh + kh * p->DH) * p->W;
          for (int kw = kw0; kw < kw1; kw++) row[offw + kw * p->DW] += g;
        }
      }
    }
  }
}
