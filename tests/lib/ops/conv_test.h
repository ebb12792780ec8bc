/* Helpers of the convolution kernel tests: random tensors and stride-1 layer shapes. */
#ifndef PT_CONV_TEST_H
#define PT_CONV_TEST_H

#include <stdint.h>
#include <stdlib.h>
#include "cpu/ops.h"
#include "pt_test.h"

/* n floats uniform in [-1, 1), from the test's own generator state. */
static inline float *conv_test_random(unsigned long long *seed, int64_t n) {
  float *x = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  for (int64_t i = 0; i < n; i++) x[i] = pt_test_uniform(seed, -1.0f, 1.0f);
  return x;
}

/* A stride-1, undilated, ungrouped KH x KW convolution of an N x C x H x W input to OC channels
 * with pads top, left, bottom, right. */
static inline pt_conv_params conv_test_shape(int N, int C, int H, int W, int OC, int KH, int KW,
                                             int pt, int pl, int pb, int pr, bool bias) {
  pt_conv_params p = {.N = N,
                      .C = C,
                      .H = H,
                      .W = W,
                      .OC = OC,
                      .KH = KH,
                      .KW = KW,
                      .SH = 1,
                      .SW = 1,
                      .DH = 1,
                      .DW = 1,
                      .PT = pt,
                      .PL = pl,
                      .PB = pb,
                      .PR = pr,
                      .G = 1,
                      .has_bias = bias};
  p.OH = H + pt + pb - KH + 1;
  p.OW = W + pl + pr - KW + 1;
  return p;
}

#endif
