/* Direct convolution, stride 1, one group, no dilation: forward and gradients.
 *
 * The forward takes any number of taps (input channels x kernel rows x kernel columns). conv.c
 * runs every such layer here (it beat im2col and the matrix product 1.1-2.4x), and the executor
 * prefers it to oneDNN where the sum runs over few taps (pt_direct_few_taps: at most
 * PT_DIRECT_MAX_TAPS): an image network's first layer (3 input channels) and its 1x1 heads.
 * oneDNN's direct kernels ran the benchmark networks' first layers 1.2-2x slower, and each of its
 * primitive executions allocates on the heap, as does the sgemm a head went to: these were the
 * only layers of those networks' inference that allocated. Below the forward, the gradients, for
 * the same reason in training (see "gradients").
 *
 * A vector holds 16 output pixels of one row: each tap loads one vector from a zero-padded copy
 * of the input and multiplies it by 16 output channels' weights (broadcast), into 16
 * accumulators. The weights are laid out [block of 16 output channels][tap][16], zeros past OC,
 * so a head of 10 channels runs one block with 6 idle accumulators.
 *
 * Scratch (pt_direct_scratch floats): the padded input of one image, C x Hp x Wp with Hp = OH +
 * KH - 1 and Wp = OW rounded up to 16, plus KW - 1 (every load stays inside), then the weights.
 * Without padding and with rows of whole vectors (OW a multiple of 16), the input is read in
 * place, and there is no copy: it would double the memory traffic of a 1x1 layer. */
#include <string.h>
#include "ops.h"
#include "vec16.h"
#include "wino.h"

bool pt_direct_fits(const pt_conv_params *p) {
  return p->G == 1 && p->SH == 1 && p->SW == 1 && p->DH == 1 && p->DW == 1 && p->OH >= 1 &&
         p->OW >= 1 && p->PT >= 0 && p->PL >= 0 && p->PB >= 0 && p->PR >= 0;
}

bool pt_direct_few_taps(const pt_conv_params *p) {
  return pt_direct_fits(p) && (int64_t)p->C * p->KH * p->KW <= PT_DIRECT_MAX_TAPS;
}

static int padded_rows(const pt_conv_params *p) {
  return p->OH + p->KH - 1;
}

static int padded_cols(const pt_conv_params *p) {
  return (p->OW + 15) / 16 * 16 + p->KW - 1;
}

/* Whether the input itself can be read: no padding, and rows of whole vectors. */
static bool in_place(const pt_conv_params *p) {
  return p->PT == 0 && p->PL == 0 && p->PB == 0 && p->PR == 0 && p->OW % 16 == 0;
}

/* The floats of the padded copy, at the start of the scratch; the weights follow. */
static size_t pad_floats(const pt_conv_params *p) {
  return in_place(p) ? 0 : (size_t)p->C * padded_rows(p) * padded_cols(p);
}

int64_t pt_direct_scratch(const pt_conv_params *p) {
  const int64_t taps = (int64_t)p->C * p->KH * p->KW, blocks = (p->OC + 15) / 16;
  return (int64_t)pad_floats(p) + taps * 16 * blocks;
}

/* One image: out (OC, OH, OW) from the (padded) input, Hp rows of Wp, and the laid-out weights;
 * add: out += the convolution (then b is NULL and relu false). */
PT_CLONES static void direct_image(float *out, const float *pad, int Hp, int Wp, const float *wt,
                                   const float *b, bool relu, bool add, const pt_conv_params *p) {
  const int C = p->C, KH = p->KH, KW = p->KW, OC = p->OC, OH = p->OH, OW = p->OW;
  const int taps = C * KH * KW;
  for (int oc0 = 0; oc0 < OC; oc0 += 16) {
    const int nb = OC - oc0 < 16 ? OC - oc0 : 16;
    const float *wb = wt + (size_t)oc0 * taps;
    for (int oy = 0; oy < OH; oy++)
      for (int ox0 = 0; ox0 < OW; ox0 += 16) {
        v16 acc[16];
        for (int o = 0; o < 16; o++) acc[o] = (v16){0};
        const float *wk = wb;
        for (int c = 0; c < C; c++)
          for (int kh = 0; kh < KH; kh++) {
            const float *row = pad + ((size_t)c * Hp + oy + kh) * Wp + ox0;
            for (int kw = 0; kw < KW; kw++, wk += 16) {
              const v16 v = LOAD16(row + kw);
              for (int o = 0; o < 16; o++) acc[o] += wk[o] * v;
            }
          }
        const int cols = OW - ox0 < 16 ? OW - ox0 : 16;
        for (int o = 0; o < nb; o++) {
          v16 y = acc[o] + (b ? b[oc0 + o] : 0.0f);
          if (relu) y = (v16)((v16i)y & ~(y < 0.0f)); /* NaN < 0 is false: passed on */
          float *dst = out + ((size_t)(oc0 + o) * OH + oy) * OW + ox0;
          if (cols == 16) {
            STORE16(dst, add ? LOAD16(dst) + y : y);
          } else {
            float part[16];
            STORE16(part, y);
            for (int i = 0; i < cols; i++) dst[i] = add ? dst[i] + part[i] : part[i];
          }
        }
      }
  }
}

/* out from in (N images) through the weights laid out at the end of scratch: direct_image on
 * the input in place, or on a zero-padded copy of each image. add: out += instead of out =. */
static void direct_run(float *out, const float *in, const float *b, const pt_conv_params *p,
                       bool relu, bool add, float *scratch) {
  const int C = p->C, H = p->H, W = p->W, OC = p->OC;
  const int Hp = padded_rows(p), Wp = padded_cols(p);
  float *pad = scratch, *wt = scratch + pad_floats(p);
  if (in_place(p)) {
    for (int n = 0; n < p->N; n++)
      direct_image(out + (size_t)n * OC * p->OH * p->OW, in + (size_t)n * C * H * W, H, W, wt, b,
                   relu, add, p);
    return;
  }
  /* Hp = H + PT + PB and Wp >= W + PL + PR: the whole image fits */
  for (int n = 0; n < p->N; n++) {
    memset(pad, 0, sizeof(float) * (size_t)C * Hp * Wp);
    for (int c = 0; c < C; c++)
      for (int iy = 0; iy < H; iy++)
        memcpy(pad + ((size_t)c * Hp + iy + p->PT) * Wp + p->PL,
               in + (((size_t)n * C + c) * H + iy) * W, sizeof(float) * (size_t)W);
    direct_image(out + (size_t)n * OC * p->OH * p->OW, pad, Hp, Wp, wt, b, relu, add, p);
  }
}

void pt_direct_forward(float *out, const float *in, const float *w, const float *b,
                       const pt_conv_params *p, bool relu, float *scratch) {
  const int C = p->C, OC = p->OC, taps = C * p->KH * p->KW;
  float *wt = scratch + pad_floats(p);
  for (int oc0 = 0; oc0 < OC; oc0 += 16)
    for (int t = 0; t < taps; t++)
      for (int o = 0; o < 16; o++)
        wt[((size_t)oc0 * taps) + (size_t)t * 16 + o] =
            oc0 + o < OC ? w[(size_t)(oc0 + o) * taps + t] : 0.0f;
  direct_run(out, in, p->has_bias ? b : NULL, p, relu, false, scratch);
}

/* ---- gradients ----
 *
 * The input gradient runs on direct_image, as the convolution it is (data_problem), adding into
 * din. The weights' gradient has a kernel of its own (wg_block). Both allocate nothing; they took
 * over from oneDNN's direct kernels and dnnl_sgemm, which allocate at every call, for the layers
 * of the benchmark networks whose gradients cpu/wino.c does not run: on the first layers, the
 * 16-channel 3x3 layers and the heads they ran 0.5-1.1x as fast (docs/performance.md), the
 * 16-channel layers about even. */

bool pt_direct_grad_fits(const pt_conv_params *p) {
  return pt_direct_fits(p) && p->PT < p->KH && p->PB < p->KH && p->PL < p->KW && p->PR < p->KW &&
         p->OH == p->H + p->PT + p->PB - p->KH + 1 && p->OW == p->W + p->PL + p->PR - p->KW + 1;
}

/* A 1x1 layer of 16 channels or more on either side: a plain matrix product reads its tensors in
 * place, and conv.c's sgemm ran 1x1 64->64 at 16x16 1.8x (input) and 2.2x (weights) faster than
 * these kernels. */
static bool wide_pointwise(const pt_conv_params *p) {
  return p->KH == 1 && p->KW == 1 && p->C >= 16 && p->OC >= 16;
}

bool pt_direct_weights_suit(const pt_conv_params *p) {
  return pt_direct_grad_fits(p) && !wide_pointwise(p);
}

/* Its vectors hold 16 input channels, and 16 columns of a row: 64->64 3x3 at 8x8 ran 1.5x slower
 * than im2col and the matrix product. */
bool pt_direct_data_suits(const pt_conv_params *p) {
  return pt_direct_grad_fits(p) && !wide_pointwise(p) && p->C >= 16 && p->W >= 16;
}

/* The input gradient of a stride-1 convolution is a stride-1 convolution of the output gradient
 * with the kernel turned by 180 degrees and its channel axes swapped, padded by the kernel size
 * less one less the forward's padding: q is that convolution. */
static pt_conv_params data_problem(const pt_conv_params *p) {
  pt_conv_params q = *p;
  q.C = p->OC;
  q.H = p->OH;
  q.W = p->OW;
  q.OC = p->C;
  q.OH = p->H;
  q.OW = p->W;
  q.PT = p->KH - 1 - p->PT;
  q.PB = p->KH - 1 - p->PB;
  q.PL = p->KW - 1 - p->PL;
  q.PR = p->KW - 1 - p->PR;
  q.has_bias = false;
  return q;
}

/* The weights' gradient sums, over the output pixels, the output gradient's channels (a vector of
 * 16, from a pixel-major copy) times each tap's input value (broadcast). For one kernel row kh,
 * the taps (kw, c) of an output pixel are KW x C consecutive floats of a pixel-major padded copy
 * of the input, at constant offsets from the pixel's own: a block of up to WG_MAX of them stays in
 * registers while the pixels go by. Two output-channel blocks share each broadcast where there
 * are 32 channels or more. Layout: xp (Hp, Wp, C) zero-padded, then WG_SLACK floats a block may
 * read past its taps; dyt (OH * OW, OCp); dwt (KH, KW * C, OCp) the sums, added into dw at the
 * end. */
enum { WG_MAX = 28, WG_SLACK = 32 };

static int64_t wg_ocp(const pt_conv_params *p) {
  return (p->OC + 15) / 16 * 16;
}

static int64_t wg_xp(const pt_conv_params *p) {
  return (int64_t)(p->H + p->PT + p->PB) * (p->W + p->PL + p->PR) * p->C + WG_SLACK;
}

static int64_t wg_dyt(const pt_conv_params *p) {
  return (int64_t)p->OH * p->OW * wg_ocp(p);
}

static int64_t wg_dwt(const pt_conv_params *p) {
  return (int64_t)p->KH * p->KW * p->C * wg_ocp(p);
}

int64_t pt_direct_grad_scratch(const pt_conv_params *p) {
  const pt_conv_params q = data_problem(p);
  const int64_t d = pt_direct_scratch(&q), w = wg_xp(p) + wg_dyt(p) + wg_dwt(p);
  return d > w ? d : w;
}

void pt_direct_backward_data(float *din, const float *dout, const float *w, const pt_conv_params *p,
                             float *scratch) {
  const pt_conv_params q = data_problem(p);
  const int C = p->C, OC = p->OC, KH = p->KH, KW = p->KW, taps = OC * KH * KW;
  float *wt = scratch + pad_floats(&q);
  for (int c0 = 0; c0 < C; c0 += 16)
    for (int oc = 0; oc < OC; oc++)
      for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++) {
          float *dst = wt + (size_t)c0 * taps + ((size_t)(oc * KH + kh) * KW + kw) * 16;
          for (int o = 0; o < 16; o++)
            dst[o] = c0 + o < C
                         ? w[(((size_t)oc * C + c0 + o) * KH + KH - 1 - kh) * KW + KW - 1 - kw]
                         : 0.0f;
        }
  direct_run(din, dout, NULL, &q, false, true, scratch);
}

/* One block: S taps (of which the first `used` are real) times OB output-channel blocks, summed
 * over every output pixel into dwt (rows of ocp floats, one per tap). x: the block's first tap
 * for output pixel (0, 0); xs: the floats between output rows; C: between pixels. */
INLINE void wg_block(const int S, const int OB, float *dwt, int used, const float *x, size_t xs,
                     int C, const float *dyt, int OH, int OW, int ocp) {
  v16 acc[WG_MAX];
  PT_UNROLL(28) for (int t = 0; t < S; t++) {
    PT_UNROLL(2) for (int b = 0; b < OB; b++) {
      acc[t * OB + b] = t < used ? LOAD16(dwt + (size_t)t * ocp + b * 16) : (v16){0};
    }
  }
  for (int oy = 0; oy < OH; oy++) {
    const float *xr = x + (size_t)oy * xs, *dr = dyt + (size_t)oy * OW * ocp;
    for (int ox = 0; ox < OW; ox++, xr += C, dr += ocp) {
      v16 d[2];
      PT_UNROLL(2) for (int b = 0; b < OB; b++) {
        d[b] = LOAD16(dr + b * 16);
      }
      PT_UNROLL(28) for (int t = 0; t < S; t++) {
        PT_UNROLL(2) for (int b = 0; b < OB; b++) {
          acc[t * OB + b] += xr[t] * d[b];
        }
      }
    }
  }
  PT_UNROLL(28) for (int t = 0; t < S && t < used; t++) {
    PT_UNROLL(2) for (int b = 0; b < OB; b++) {
      STORE16(dwt + (size_t)t * ocp + b * 16, acc[t * OB + b]);
    }
  }
}

/* wg_block with S the taps rounded up to a multiple of 4 (one channel block) or 2 (two): one
 * unrolled copy per S. */
PT_CLONES static void wg_run(int OB, int used, float *dwt, const float *x, size_t xs, int C,
                             const float *dyt, int OH, int OW, int ocp) {
  const int k = OB == 2 ? (used + 1) / 2 : (used + 3) / 4;
#define WG_CASE(K)                                                                                 \
  case K:                                                                                          \
    if (OB == 2)                                                                                   \
      wg_block(2 * K, 2, dwt, used, x, xs, C, dyt, OH, OW, ocp);                                   \
    else                                                                                           \
      wg_block(4 * K, 1, dwt, used, x, xs, C, dyt, OH, OW, ocp);                                   \
    return;
  switch (k < WG_MAX / 4 ? k : WG_MAX / 4) {
    WG_CASE(1)
    WG_CASE(2)
    WG_CASE(3)
    WG_CASE(4)
    WG_CASE(5)
    WG_CASE(6)
    WG_CASE(7)
  }
#undef WG_CASE
}

/* The weights' gradient of a 1x1 layer without padding: each entry is the dot product of an
 * output-gradient row and an input row, both read in place (NCHW), over the pixels. Blocks of
 * PW_O output by PW_C input channels sum in registers, 16 pixels a vector (the last partial
 * vector one by one); rows past the channels read `zero`, a row of zeros. */
enum { PW_O = 5, PW_C = 4 };

PT_CLONES static void pointwise_weights(float *dw, const float *dy, const float *x, int OC, int C,
                                        int64_t P, const float *zero) {
  const int64_t P16 = P / 16 * 16;
  for (int o0 = 0; o0 < OC; o0 += PW_O)
    for (int c0 = 0; c0 < C; c0 += PW_C) {
      const float *yr[PW_O], *xr[PW_C];
      for (int o = 0; o < PW_O; o++) yr[o] = o0 + o < OC ? dy + (o0 + o) * P : zero;
      for (int c = 0; c < PW_C; c++) xr[c] = c0 + c < C ? x + (c0 + c) * P : zero;
      v16 acc[PW_O * PW_C];
      for (int k = 0; k < PW_O * PW_C; k++) acc[k] = (v16){0};
      for (int64_t i = 0; i < P16; i += 16) {
        v16 a[PW_O], v[PW_C];
        for (int o = 0; o < PW_O; o++) a[o] = LOAD16(yr[o] + i);
        for (int c = 0; c < PW_C; c++) v[c] = LOAD16(xr[c] + i);
        for (int o = 0; o < PW_O; o++)
          for (int c = 0; c < PW_C; c++) acc[o * PW_C + c] += a[o] * v[c];
      }
      for (int o = 0; o < PW_O && o0 + o < OC; o++)
        for (int c = 0; c < PW_C && c0 + c < C; c++) {
          float lanes[16], s = 0;
          STORE16(lanes, acc[o * PW_C + c]);
          for (int l = 0; l < 16; l++) s += lanes[l];
          for (int64_t i = P16; i < P; i++) s += yr[o][i] * xr[c][i];
          dw[(size_t)(o0 + o) * C + c0 + c] += s;
        }
    }
}

void pt_direct_backward_weights(float *dw, const float *dout, const float *in,
                                const pt_conv_params *p, float *scratch) {
  if (p->KH == 1 && p->KW == 1) { /* no padding either: it is under the kernel size */
    const int64_t P = (int64_t)p->H * p->W;
    memset(scratch, 0, sizeof(float) * (size_t)P);
    for (int n = 0; n < p->N; n++)
      pointwise_weights(dw, dout + (size_t)n * p->OC * P, in + (size_t)n * p->C * P, p->OC, p->C, P,
                        scratch);
    return;
  }
  const int C = p->C, H = p->H, W = p->W, OC = p->OC, KH = p->KH, KW = p->KW;
  const int OH = p->OH, OW = p->OW, Wp = W + p->PL + p->PR, KWC = KW * C;
  const int ocp = (int)wg_ocp(p);
  float *xp = scratch, *dyt = xp + wg_xp(p), *dwt = dyt + wg_dyt(p);
  memset(dwt, 0, sizeof(float) * (size_t)wg_dwt(p));
  if (OC < ocp) /* the lanes past OC: zero once, the images' gradients fill the rest */
    memset(dyt, 0, sizeof(float) * (size_t)wg_dyt(p));
  /* the padding and the slack: zero once, the images fill the rest */
  const size_t row = (size_t)Wp * C, Hp = (size_t)(H + p->PT + p->PB);
  memset(xp, 0, sizeof(float) * row * (size_t)p->PT);
  memset(xp + (Hp - (size_t)p->PB) * row, 0, sizeof(float) * (row * (size_t)p->PB + WG_SLACK));
  for (int iy = 0; iy < H; iy++) {
    float *r = xp + (size_t)(iy + p->PT) * row;
    memset(r, 0, sizeof(float) * (size_t)p->PL * C);
    memset(r + (size_t)(p->PL + W) * C, 0, sizeof(float) * (size_t)p->PR * C);
  }
  for (int n = 0; n < p->N; n++) {
    const float *x = in + (size_t)n * C * H * W;
    for (int iy = 0; iy < H; iy++)
      pt_transpose(xp + ((size_t)(iy + p->PT) * Wp + p->PL) * C, (size_t)C, x + (size_t)iy * W,
                   (size_t)H * W, C, W);
    pt_transpose(dyt, (size_t)ocp, dout + (size_t)n * OC * OH * OW, (size_t)OH * OW, OC, OH * OW);
    for (int b0 = 0; b0 < ocp / 16; b0 += 2) {
      const int OB = ocp / 16 - b0 >= 2 ? 2 : 1, smax = WG_MAX / OB;
      const int nblk = (KWC + smax - 1) / smax, per = (KWC + nblk - 1) / nblk;
      for (int kh = 0; kh < KH; kh++)
        for (int j0 = 0; j0 < KWC; j0 += per)
          wg_run(OB, KWC - j0 < per ? KWC - j0 : per, dwt + ((size_t)kh * KWC + j0) * ocp + b0 * 16,
                 xp + (size_t)kh * Wp * C + j0, (size_t)Wp * C, C, dyt + b0 * 16, OH, OW, ocp);
    }
  }
  for (int oc = 0; oc < OC; oc++)
    for (int c = 0; c < C; c++)
      for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++)
          dw[(((size_t)oc * C + c) * KH + kh) * KW + kw] +=
              dwt[((size_t)kh * KWC + (size_t)kw * C + c) * ocp + oc];
}
