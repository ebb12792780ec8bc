/* 3x3 and 5x5 convolutions by Winograd's minimal filtering F(2x2, 3x3) and F(2x2, 5x5): forward,
 * input gradient and weights' gradient (internal).
 *
 * Each 2x2 block of output ("tile") of an r x r filter comes from an n x n block of input, n = r +
 * 1: Y = A^T [(G g G^T) . (B^T d B)] A (Lavin and Gray, 2016). Per tile and channel pair that is
 * 16 multiplications instead of 36 (3x3), or 36 instead of 100 (5x5), done as n^2 products of
 * (OC x C) by (C x tiles) matrices, between an input transform and an output transform that are
 * additions and small constant multiples. The weights' transform is made once and kept until
 * pt_wino_weights_changed(). Work goes one row of tiles at a time, so the transformed input and
 * products of a row stay in the core's cache.
 *
 * The arithmetic is plain C over 16-float vectors (GCC vector extensions), compiled for AVX-512,
 * AVX2 and the baseline and chosen at run time. Results differ from a direct convolution's by
 * rounding (about 1e-6 of the output's scale); a NaN or Inf in the input spreads over the 2x2
 * output tiles whose input block holds it. With `relu`, the output is relu(conv) (NaN passed on).
 * Running allocates nothing.
 *
 * The input gradient of a stride-1 layer is itself such a convolution: of dout, by the weights
 * with input and output channels swapped and each filter turned by 180 degrees, padded by r - 1
 * minus the layer's pads. A backward-data kernel computes it from the layer's own weights and adds
 * it into din. */
#ifndef PT_CPU_WINO_H
#define PT_CPU_WINO_H

#include <stdbool.h>
#include <partime/status.h>
#include "ops.h"

typedef struct pt_wino pt_wino;

/* dst (cols, rows) = src (rows, cols) transposed; src rows lds apart, dst rows ldd apart; rows
 * and cols multiples of 16 where vectors do it, the rest one by one: the NCHW <-> pixel-major
 * moves of these kernels and of cpu/direct.c's weights' gradient. */
void pt_transpose(float *dst, size_t ldd, const float *src, size_t lds, int rows, int cols);

/* True for shapes the kernel takes: a 3x3 or 5x5 convolution, stride 1, no dilation, no groups,
 * output channels a multiple of 16. */
bool pt_wino_fits(const pt_conv_params *p);

/* True for layers whose input gradient the kernel takes: pt_wino_fits, input channels a multiple
 * of 16, every pad from 0 to r - 1 (2 for 3x3, 4 for 5x5). */
bool pt_wino_backward_data_fits(const pt_conv_params *p);

/* A forward kernel for layer p (with `relu`: writing relu(conv)). */
pt_wino *pt_wino_create(const pt_conv_params *p, bool relu, pt_error *err);
/* An input-gradient kernel for layer p (p is the layer's forward shape). */
pt_wino *pt_wino_create_backward_data(const pt_conv_params *p, pt_error *err);
/* A weights-gradient kernel for layer p (any shape pt_wino_fits takes). */
pt_wino *pt_wino_create_backward_weights(const pt_conv_params *p, pt_error *err);
void pt_wino_free(pt_wino *w);
/* The weights handed to the next forward are new, even at the same address. */
void pt_wino_weights_changed(pt_wino *w);
/* out (N, OC, OH, OW), in (N, C, H, W), w (OC, C, r, r), b (OC) or NULL. */
void pt_wino_forward(pt_wino *w, float *out, const float *in, const float *wt, const float *b);
/* din (N, C, H, W) += the input gradient of the layer for dout (N, OC, OH, OW), w (OC, C, r, r). */
void pt_wino_backward_data(pt_wino *w, float *din, const float *dout, const float *wt);
/* dw (OC, C, r, r) += the weights' gradient of the layer for dout and its input in. The bias's
 * gradient is a plain sum of dout, left to the caller. */
void pt_wino_backward_weights(pt_wino *w, float *dw, const float *dout, const float *in);

/* 3x3 forward convolutions by Winograd F(4x4, 3x3), with vectors of 16 channels of a pixel
 * rather than 16 tiles: 4x4 output tiles from 6x6 input blocks, 36 multiplications instead of
 * 144 per tile and channel pair, for layers whose channels are too few (16) to share F(2x2,
 * 3x3)'s input transform well. Rounds a little more than F(2x2, 3x3) (its transforms reach 8
 * times the inputs' scale, against 2). Running allocates nothing. */
typedef struct pt_wino4 pt_wino4;

/* True for a 3x3 convolution, stride 1, no dilation, no groups, input and output channels
 * multiples of 16, pads not negative. */
bool pt_wino4_fits(const pt_conv_params *p);
pt_wino4 *pt_wino4_create(const pt_conv_params *p, bool relu, pt_error *err);
void pt_wino4_free(pt_wino4 *w);
/* The weights handed to the next forward are new, even at the same address. */
void pt_wino4_weights_changed(pt_wino4 *w);
/* Tells kernel `to` that its input is kernel `from`'s output, which nothing else reads, and that
 * each forward of to follows one of from. from then writes its output pixel-major into a buffer
 * of its own, laid out as to's zero-padded input rows, instead of the caller's NCHW out, which it
 * leaves untouched; to reads those rows in place instead of its in, skipping two transposes and
 * a copy. False (and nothing changed) where the shapes
 * do not chain, either kernel is linked already, or memory runs out. */
bool pt_wino4_link(pt_wino4 *from, pt_wino4 *to);
/* out (N, OC, OH, OW), in (N, C, H, W), w (OC, C, 3, 3), b (OC) or NULL. */
void pt_wino4_forward(pt_wino4 *w, float *out, const float *in, const float *wt, const float *b);

#endif
