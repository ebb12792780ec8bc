/* 5x5 convolutions by Winograd's minimal filtering F(2x2, 5x5), forward only (internal).
 *
 * Each 2x2 block of output ("tile") comes from a 6x6 block of input: Y = A^T [(G g G^T) . (B^T d
 * B)] A (Lavin and Gray, 2016; interpolation points 0, 1, -1, 2, -2 and infinity). Per tile and
 * channel pair that is 36 multiplications instead of 100, done as 36 products of (OC x C) by (C x
 * tiles) matrices, between an input transform and an output transform that are additions and small
 * constant multiples. The weights' transform is made once and kept until
 * pt_wino5_weights_changed(). Work goes one row of tiles at a time, so the transformed input and
 * products of a row stay in the core's cache.
 *
 * The arithmetic is plain C over 16-float vectors (GCC vector extensions), compiled for AVX-512,
 * AVX2 and the baseline and chosen at run time. Results differ from a direct convolution's by
 * rounding (about 1e-6 of the output's scale); a NaN or Inf in the input spreads over the 2x2
 * output tiles whose 6x6 input block holds it. With `relu`, the output is relu(conv) (NaN passed
 * on). Running allocates nothing. */
#ifndef PT_CPU_WINO5_H
#define PT_CPU_WINO5_H

#include <stdbool.h>
#include <partime/status.h>
#include "ops.h"

typedef struct pt_wino5 pt_wino5;

/* True for shapes the kernel takes: a 5x5 convolution, stride 1, no dilation, no groups, output
 * channels a multiple of 16. */
bool pt_wino5_fits(const pt_conv_params *p);

pt_wino5 *pt_wino5_create(const pt_conv_params *p, bool relu, pt_error *err);
void pt_wino5_free(pt_wino5 *w);
/* The weights handed to the next forward are new, even at the same address. */
void pt_wino5_weights_changed(pt_wino5 *w);
/* out (N, OC, OH, OW), in (N, C, H, W), w (OC, C, 5, 5), b (OC) or NULL. */
void pt_wino5_forward(pt_wino5 *w, float *out, const float *in, const float *wt, const float *b);

#endif
