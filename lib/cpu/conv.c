/* Conv and ConvTranspose on the CPU, forward and backward.
 *
 * The matrix work goes to pt_sgemm (OpenBLAS, or oneDNN's sgemm: cpu/blas.c), per group and batch
 * item:
 *   Conv forward      Y_g (OCg, P)      = W_g (OCg, K) * col (K, P)        col = im2col(X_g)
 *   Conv dW           dW_g^T (K, OCg)  += col * dY_g^T
 *   Conv dX           dcol (K, P)       = W_g^T * dY_g, then col2im adds it into dX_g
 * with K = C/G * KH * KW and P = OH * OW. ConvTranspose is the same pair of maps read the other
 * way round: its forward is Conv's data gradient (gemm, then col2im into Y) and its data gradient
 * is Conv's forward (im2col of dY, then gemm), with the image and the kernel-position grid swapped.
 *
 * Conv of one group without dilation runs on cpu/direct.c instead: the forward, and each
 * gradient where pt_direct_weights_suit / pt_direct_data_suits say so. On the Xeon the forward
 * ran 1.1-2.4x faster than the matrix path, the gradients up to 2.5x (3x3 32->32 at 16x16,
 * 24->24 at 32x32); and it allocates nothing, where oneDNN's sgemm (the matrix path's, where
 * OpenBLAS lacks fitting kernels) allocates at every call. So does ConvTranspose of one group
 * (not 1x1 at stride 1): 4x4 s2 32->16 at 16x16 forward 0.058 against the matrix path's 0.077 ms,
 * input gradient 0.071 against 0.093, weights' 0.040 against 0.104; 4x4 s2 16->3 at 32x32 forward
 * 0.072 against 0.039 (three output channels leave its vectors idle), gradients 0.022 and 0.019
 * against 0.040 and 0.045.
 *
 * im2col does the padding: it works out, once per kernel tap, which output rows and columns see
 * real input, zero-fills the rest and copies the middle, so the gemm needs no bounds checks at all.
 * The column buffer covers one band of grid rows at a time (see PT_TILE_FLOATS), so it stays in
 * cache between im2col and the gemm. A pointwise convolution (1x1, stride 1, no padding) skips
 * im2col and feeds the tensor to the gemm directly; a convolution with one input channel per group
 * and more than one group (depthwise) runs a direct shifted multiply-add instead, as a gemm with
 * one row would waste the im2col copy.
 *
 * Scratch: pt_conv2d_scratch() / pt_conv_transpose2d_scratch() floats, one band of columns and
 * the transposed weight gradient of one group. Backward reuses the band for the columns of X (for
 * dW) and then for dcol (for dX). Per the accumulate rule of ops.h, backward adds into din, dw and
 * db and skips any that is NULL; forward overwrites out. */
#include <string.h>
#include "ops.h"
#include "sgemm.h"

/* Row kernels on four-lane vectors (GCC / Clang vector extensions; the width every x86-64 and
 * arm64 has), two per step, with unaligned access through memcpy. Their trip counts are known
 * only at run time, which the -O2 cost model will not vectorize by itself; depthwise layers and
 * col2im spend their time here. */
typedef float pt_f4 __attribute__((vector_size(16)));

static inline pt_f4 pt_ld4(const float *p) {
  pt_f4 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void pt_st4(float *p, pt_f4 v) {
  memcpy(p, &v, sizeof v);
}

/* y[i] += a * x[i] */
static void pt_row_axpy(float *y, float a, const float *x, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    pt_st4(y + i, pt_ld4(y + i) + a * pt_ld4(x + i));
    pt_st4(y + i + 4, pt_ld4(y + i + 4) + a * pt_ld4(x + i + 4));
  }
  for (; i < n; i++) y[i] += a * x[i];
}

/* y[i] += x[i] */
static void pt_row_add(float *y, const float *x, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    pt_st4(y + i, pt_ld4(y + i) + pt_ld4(x + i));
    pt_st4(y + i + 4, pt_ld4(y + i + 4) + pt_ld4(x + i + 4));
  }
  for (; i < n; i++) y[i] += x[i];
}

/* y[i] += a */
static void pt_row_shift(float *y, float a, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    pt_st4(y + i, pt_ld4(y + i) + a);
    pt_st4(y + i + 4, pt_ld4(y + i + 4) + a);
  }
  for (; i < n; i++) y[i] += a;
}

/* sum of x[i] * y[i] */
static float pt_row_dot(const float *x, const float *y, int64_t n) {
  pt_f4 a0 = {0}, a1 = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 += pt_ld4(x + i) * pt_ld4(y + i);
    a1 += pt_ld4(x + i + 4) * pt_ld4(y + i + 4);
  }
  a0 += a1;
  float s = (a0[0] + a0[1]) + (a0[2] + a0[3]);
  for (; i < n; i++) s += x[i] * y[i];
  return s;
}

/* sum of x[i] */
static float pt_row_sum(const float *x, int64_t n) {
  pt_f4 a0 = {0}, a1 = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 += pt_ld4(x + i);
    a1 += pt_ld4(x + i + 4);
  }
  a0 += a1;
  float s = (a0[0] + a0[1]) + (a0[2] + a0[3]);
  for (; i < n; i++) s += x[i];
  return s;
}

/* The image an im2col / col2im walks and the grid of kernel positions laid over it. */
typedef struct pt_col_geom {
  int C, H, W; /* image channels and size */
  int GH, GW;  /* grid of kernel positions (rows and columns of each column-buffer row) */
  int KH, KW, SH, SW, DH, DW, PT, PL;
} pt_col_geom;

/* The column buffer is filled and consumed a band of grid rows at a time, sized to stay in L2
 * between im2col and the gemm (or the gemm and col2im): on a 64x64 3x3 layer a whole-image buffer
 * is several MB and costs a round trip to memory. Bands narrower than PT_TILE_MIN_COLS columns
 * starve the gemm, so that wins over the cache target. */
#define PT_TILE_FLOATS (64 * 1024)
#define PT_TILE_MIN_COLS 256

/* Grid rows per band for a column buffer of `rows` rows over a GH x GW grid. */
static int pt_band_rows(int64_t rows, int GH, int GW) {
  int64_t r = PT_TILE_FLOATS / (rows * GW);
  int64_t rmin = (PT_TILE_MIN_COLS + GW - 1) / GW;
  if (r < rmin) r = rmin;
  if (r > GH) r = GH;
  return r < 1 ? 1 : (int)r;
}

/* Grid positions [lo, hi) among n whose tap at offset `off` (tap * dilation - pad) lands inside an
 * image dimension of `size` with stride `s`, intersected with [a, b); empty ranges come back as
 * lo == hi. */
static void pt_tap_range(int off, int s, int size, int n, int a, int b, int *lo, int *hi) {
  int l, h;
  if (s == 1) { /* spares the divisions on the common path: this runs per row of some loops */
    l = off < 0 ? -off : 0;
    h = size - off > 0 ? size - off : 0;
  } else {
    l = off < 0 ? (-off + s - 1) / s : 0;
    h = size - off > 0 ? (size - off + s - 1) / s : 0;
  }
  if (h > n) h = n;
  if (l < a) l = a;
  if (l > b) l = b;
  if (h > b) h = b;
  if (h < l) h = l;
  *lo = l;
  *hi = h;
}

/* col (C*KH*KW, (r1-r0)*GW) <- the grid rows [r0, r1) of im2col(img (C, H, W)), zero where a tap
 * falls in the padding. */
static void pt_im2col(float *col, const float *img, const pt_col_geom *g, int r0, int r1) {
  const int64_t T = (int64_t)(r1 - r0) * g->GW, HW = (int64_t)g->H * g->W;
  float *dst = col;
  for (int c = 0; c < g->C; c++) {
    const float *plane = img + c * HW;
    for (int kh = 0; kh < g->KH; kh++) {
      int offh = kh * g->DH - g->PT, oh0, oh1;
      pt_tap_range(offh, g->SH, g->H, g->GH, r0, r1, &oh0, &oh1);
      for (int kw = 0; kw < g->KW; kw++, dst += T) {
        int offw = kw * g->DW - g->PL, ow0, ow1;
        pt_tap_range(offw, g->SW, g->W, g->GW, 0, g->GW, &ow0, &ow1);
        memset(dst, 0, sizeof(float) * (size_t)(oh0 - r0) * g->GW);
        for (int oh = oh0; oh < oh1; oh++) {
          float *d = dst + (int64_t)(oh - r0) * g->GW;
          const float *s = plane + (int64_t)(oh * g->SH + offh) * g->W;
          memset(d, 0, sizeof(float) * ow0);
          if (g->SW == 1) {
            memcpy(d + ow0, s + (ow0 + offw), sizeof(float) * (ow1 - ow0));
          } else {
            for (int ow = ow0; ow < ow1; ow++) d[ow] = s[ow * g->SW + offw];
          }
          memset(d + ow1, 0, sizeof(float) * (g->GW - ow1));
        }
        memset(dst + (int64_t)(oh1 - r0) * g->GW, 0, sizeof(float) * (size_t)(r1 - oh1) * g->GW);
      }
    }
  }
}

/* img (C, H, W) += col2im of col (C*KH*KW, (r1-r0)*GW), the grid rows [r0, r1); taps in the
 * padding are dropped. */
static void pt_col2im(float *img, const float *col, const pt_col_geom *g, int r0, int r1) {
  const int64_t T = (int64_t)(r1 - r0) * g->GW, HW = (int64_t)g->H * g->W;
  const float *src = col;
  for (int c = 0; c < g->C; c++) {
    float *plane = img + c * HW;
    for (int kh = 0; kh < g->KH; kh++) {
      int offh = kh * g->DH - g->PT, oh0, oh1;
      pt_tap_range(offh, g->SH, g->H, g->GH, r0, r1, &oh0, &oh1);
      for (int kw = 0; kw < g->KW; kw++, src += T) {
        int offw = kw * g->DW - g->PL, ow0, ow1;
        pt_tap_range(offw, g->SW, g->W, g->GW, 0, g->GW, &ow0, &ow1);
        for (int oh = oh0; oh < oh1; oh++) {
          const float *s = src + (int64_t)(oh - r0) * g->GW;
          float *d = plane + (int64_t)(oh * g->SH + offh) * g->W;
          if (g->SW == 1) {
            pt_row_add(d + (ow0 + offw), s + ow0, ow1 - ow0);
          } else {
            for (int ow = ow0; ow < ow1; ow++) d[ow * g->SW + offw] += s[ow];
          }
        }
      }
    }
  }
}

/* dw (M, K) += dwt (K, M): weight gradients are summed transposed, (K, OCg) rather than (OCg, K),
 * because OpenBLAS runs that product about twice as fast when OCg is small (32 or fewer). */
static void pt_add_transposed(float *dw, const float *dwt, int M, int K) {
  for (int m = 0; m < M; m++)
    for (int k = 0; k < K; k++) dw[(int64_t)m * K + k] += dwt[(int64_t)k * M + m];
}

/* The kernel part of a geometry, which Conv and ConvTranspose share. */
static pt_col_geom pt_geom_kernel(pt_col_geom g, const pt_conv_params *p) {
  g.KH = p->KH, g.KW = p->KW, g.SH = p->SH, g.SW = p->SW;
  g.DH = p->DH, g.DW = p->DW, g.PT = p->PT, g.PL = p->PL;
  return g;
}

/* Conv's geometry: the image is the input, the grid the output. */
static pt_col_geom pt_conv_geom(const pt_conv_params *p) {
  pt_col_geom g = {.C = p->C / p->G, .H = p->H, .W = p->W, .GH = p->OH, .GW = p->OW};
  return pt_geom_kernel(g, p);
}

/* ConvTranspose's geometry: the image is the output, the grid the input. */
static pt_col_geom pt_convt_geom(const pt_conv_params *p) {
  pt_col_geom g = {.C = p->OC / p->G, .H = p->OH, .W = p->OW, .GH = p->H, .GW = p->W};
  return pt_geom_kernel(g, p);
}

/* 1x1, stride 1, no padding: the tensor itself is its column matrix. */
static bool pt_conv_pointwise(const pt_conv_params *p) {
  return p->KH == 1 && p->KW == 1 && p->SH == 1 && p->SW == 1 && p->PT == 0 && p->PL == 0 &&
         p->OH == p->H && p->OW == p->W;
}

/* One input channel per group, several groups: each output channel is a sum of KH*KW shifted,
 * scaled copies of one input plane. */
static bool pt_conv_depthwise(const pt_conv_params *p) {
  return p->G > 1 && p->C == p->G;
}

/* out (N, OC, P) += b (OC) broadcast over P. */
static void pt_add_bias(float *out, const float *b, int N, int OC, int64_t P) {
  for (int n = 0; n < N; n++)
    for (int oc = 0; oc < OC; oc++) {
      pt_row_shift(out + ((int64_t)n * OC + oc) * P, b[oc], P);
    }
}

/* db (OC) += sum of dout (N, OC, P) over N and P. */
static void pt_bias_grad(float *db, const float *dout, int N, int OC, int64_t P) {
  for (int oc = 0; oc < OC; oc++) {
    double s = 0;
    for (int n = 0; n < N; n++) {
      s += pt_row_sum(dout + ((int64_t)n * OC + oc) * P, P);
    }
    db[oc] += (float)s;
  }
}

/* Depthwise forward of one plane: y (OH, OW) = sum over taps of w[tap] * shifted x (H, W). One
 * output row at a time, so the row and the input rows it reads stay in L1 across the taps. */
static void pt_dw_plane_forward(float *y, const float *x, const float *w, const pt_conv_params *p) {
  for (int oh = 0; oh < p->OH; oh++) {
    float *d = y + (int64_t)oh * p->OW;
    memset(d, 0, sizeof(float) * p->OW);
    for (int kh = 0; kh < p->KH; kh++) {
      const int ih = oh * p->SH + kh * p->DH - p->PT;
      if (ih < 0 || ih >= p->H) continue;
      const float *s = x + (int64_t)ih * p->W;
      for (int kw = 0; kw < p->KW; kw++) {
        int offw = kw * p->DW - p->PL, ow0, ow1;
        pt_tap_range(offw, p->SW, p->W, p->OW, 0, p->OW, &ow0, &ow1);
        const float wv = w[kh * p->KW + kw];
        if (p->SW == 1) {
          pt_row_axpy(d + ow0, wv, s + (ow0 + offw), ow1 - ow0);
        } else {
          for (int ow = ow0; ow < ow1; ow++) d[ow] += wv * s[ow * p->SW + offw];
        }
      }
    }
  }
}

/* Depthwise backward of one plane: dx (H, W) += shifted w * dy; dw (KH*KW) += dy . shifted x.
 * Either may be NULL. */
static void pt_dw_plane_backward(float *dx, float *dw, const float *dy, const float *x,
                                 const float *w, const pt_conv_params *p) {
  for (int oh = 0; oh < p->OH; oh++) {
    const float *g = dy + (int64_t)oh * p->OW;
    for (int kh = 0; kh < p->KH; kh++) {
      const int ih = oh * p->SH + kh * p->DH - p->PT;
      if (ih < 0 || ih >= p->H) continue;
      const int64_t row = (int64_t)ih * p->W;
      for (int kw = 0; kw < p->KW; kw++) {
        int offw = kw * p->DW - p->PL, ow0, ow1;
        pt_tap_range(offw, p->SW, p->W, p->OW, 0, p->OW, &ow0, &ow1);
        const int tap = kh * p->KW + kw;
        if (p->SW == 1) {
          if (dx) pt_row_axpy(dx + row + (ow0 + offw), w[tap], g + ow0, ow1 - ow0);
          if (dw) dw[tap] += pt_row_dot(g + ow0, x + row + (ow0 + offw), ow1 - ow0);
        } else {
          const float wv = w[tap];
          float part = 0;
          if (dx)
            for (int ow = ow0; ow < ow1; ow++) dx[row + ow * p->SW + offw] += wv * g[ow];
          if (dw) {
            for (int ow = ow0; ow < ow1; ow++) part += g[ow] * x[row + ow * p->SW + offw];
            dw[tap] += part;
          }
        }
      }
    }
  }
}

/* Grid rows per band of Conv's column buffer. */
static int pt_conv_band(const pt_conv_params *p) {
  return pt_band_rows((int64_t)(p->C / p->G) * p->KH * p->KW, p->OH, p->OW);
}

/* ConvTranspose's column buffer is laid over the input: its grid is H x W. */
static int pt_convt_band(const pt_conv_params *p) {
  return pt_band_rows((int64_t)(p->OC / p->G) * p->KH * p->KW, p->H, p->W);
}

static int64_t gemm_scratch(const pt_conv_params *p) {
  const int64_t K = (int64_t)(p->C / p->G) * p->KH * p->KW, OCg = p->OC / p->G;
  if (pt_conv_pointwise(p)) return K * OCg;
  return K * pt_conv_band(p) * p->OW + K * OCg; /* one band of columns, then dW^T */
}

int64_t pt_conv2d_scratch(const pt_conv_params *p) {
  if (pt_conv_depthwise(p)) return 0;
  const int64_t g = gemm_scratch(p), d = pt_direct_fits(p) ? pt_direct_scratch(p) : 0,
                dg = pt_direct_grad_fits(p) ? pt_direct_grad_scratch(p) : 0;
  const int64_t m = g > d ? g : d;
  return m > dg ? m : dg;
}

/* out (N, OC, OH, OW), in (N, C, H, W), w (OC, C/G, KH, KW), b (OC) or NULL. */
void pt_conv2d_forward(float *out, const float *in, const float *w, const float *b,
                       const pt_conv_params *p, float *scratch) {
  const int G = p->G, Cg = p->C / G, OCg = p->OC / G;
  const int K = Cg * p->KH * p->KW;
  const int64_t HW = (int64_t)p->H * p->W, P = (int64_t)p->OH * p->OW;

  if (pt_conv_depthwise(p)) {
    for (int n = 0; n < p->N; n++)
      for (int oc = 0; oc < p->OC; oc++)
        pt_dw_plane_forward(out + ((int64_t)n * p->OC + oc) * P,
                            in + ((int64_t)n * p->C + oc / OCg) * HW,
                            w + (int64_t)oc * p->KH * p->KW, p);
  } else if (pt_direct_fits(p)) {
    pt_direct_forward(out, in, w, b, p, false, scratch);
    return;
  } else if (pt_conv_pointwise(p)) {
    for (int n = 0; n < p->N; n++)
      for (int g = 0; g < G; g++)
        pt_sgemm(CblasNoTrans, CblasNoTrans, OCg, (int)P, K, 1.0f, w + (int64_t)g * OCg * K, K,
                 in + ((int64_t)n * p->C + (int64_t)g * Cg) * HW, (int)P, 0.0f,
                 out + ((int64_t)n * p->OC + (int64_t)g * OCg) * P, (int)P);
  } else {
    const pt_col_geom geom = pt_conv_geom(p);
    const int band = pt_conv_band(p);
    for (int n = 0; n < p->N; n++)
      for (int g = 0; g < G; g++) {
        const float *x = in + ((int64_t)n * p->C + (int64_t)g * Cg) * HW;
        float *y = out + ((int64_t)n * p->OC + (int64_t)g * OCg) * P;
        for (int r0 = 0; r0 < p->OH; r0 += band) {
          const int r1 = r0 + band < p->OH ? r0 + band : p->OH, T = (r1 - r0) * p->OW;
          pt_im2col(scratch, x, &geom, r0, r1);
          pt_sgemm(CblasNoTrans, CblasNoTrans, OCg, T, K, 1.0f, w + (int64_t)g * OCg * K, K,
                   scratch, T, 0.0f, y + (int64_t)r0 * p->OW, (int)P);
        }
      }
  }
  if (p->has_bias && b) pt_add_bias(out, b, p->N, p->OC, P);
}

/* din (N, C, H, W), dw (OC, C/G, KH, KW), db (OC): each added into, each may be NULL.
 * dout (N, OC, OH, OW), in and w as in forward. */
void pt_conv2d_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                        const float *w, const pt_conv_params *p, float *scratch) {
  const int G = p->G, Cg = p->C / G, OCg = p->OC / G;
  const int K = Cg * p->KH * p->KW;
  const int64_t HW = (int64_t)p->H * p->W, P = (int64_t)p->OH * p->OW;

  if (db && p->has_bias) pt_bias_grad(db, dout, p->N, p->OC, P);
  if (!din && !dw) return;

  if (pt_conv_depthwise(p)) {
    const int KK = p->KH * p->KW;
    for (int n = 0; n < p->N; n++)
      for (int oc = 0; oc < p->OC; oc++) {
        int64_t xo = ((int64_t)n * p->C + oc / OCg) * HW;
        pt_dw_plane_backward(din ? din + xo : NULL, dw ? dw + (int64_t)oc * KK : NULL,
                             dout + ((int64_t)n * p->OC + oc) * P, in + xo, w + (int64_t)oc * KK,
                             p);
      }
    return;
  }
  if (dw && pt_direct_weights_suit(p)) {
    pt_direct_backward_weights(dw, dout, in, p, scratch);
    dw = NULL;
  }
  if (din && pt_direct_data_suits(p)) {
    pt_direct_backward_data(din, dout, w, p, scratch);
    din = NULL;
  }
  if (!din && !dw) return;

  const bool pointwise = pt_conv_pointwise(p);
  const pt_col_geom geom = pt_conv_geom(p);
  const int band = pointwise ? p->OH : pt_conv_band(p);
  float *col = scratch;
  float *dwt = pointwise ? scratch : scratch + (int64_t)K * band * p->OW; /* (K, OCg) */
  /* groups outermost so dW^T of one group collects every batch item before it is added */
  for (int g = 0; g < G; g++) {
    const float *wg = w + (int64_t)g * OCg * K;
    if (dw) memset(dwt, 0, sizeof(float) * (size_t)K * OCg);
    for (int n = 0; n < p->N; n++) {
      const float *x = in + ((int64_t)n * p->C + (int64_t)g * Cg) * HW;
      const float *dy = dout + ((int64_t)n * p->OC + (int64_t)g * OCg) * P;
      float *dx = din ? din + ((int64_t)n * p->C + (int64_t)g * Cg) * HW : NULL;
      if (pointwise) {
        if (dw)
          pt_sgemm(CblasNoTrans, CblasTrans, K, OCg, (int)P, 1.0f, x, (int)P, dy, (int)P, 1.0f, dwt,
                   OCg);
        if (dx)
          pt_sgemm(CblasTrans, CblasNoTrans, K, (int)P, OCg, 1.0f, wg, K, dy, (int)P, 1.0f, dx,
                   (int)P);
        continue;
      }
      for (int r0 = 0; r0 < p->OH; r0 += band) {
        const int r1 = r0 + band < p->OH ? r0 + band : p->OH, T = (r1 - r0) * p->OW;
        const float *dyb = dy + (int64_t)r0 * p->OW;
        if (dw) {
          pt_im2col(col, x, &geom, r0, r1);
          pt_sgemm(CblasNoTrans, CblasTrans, K, OCg, T, 1.0f, col, T, dyb, (int)P, 1.0f, dwt, OCg);
        }
        if (dx) {
          pt_sgemm(CblasTrans, CblasNoTrans, K, T, OCg, 1.0f, wg, K, dyb, (int)P, 0.0f, col, T);
          pt_col2im(dx, col, &geom, r0, r1);
        }
      }
    }
    if (dw) pt_add_transposed(dw + (int64_t)g * OCg * K, dwt, OCg, K);
  }
}

/* Whether a ConvTranspose runs on cpu/direct.c rather than on columns and the matrix product. */
static bool pt_convt_direct(const pt_conv_params *p) {
  return !pt_conv_pointwise(p) && pt_direct_transpose_fits(p);
}

int64_t pt_conv_transpose2d_scratch(const pt_conv_params *p) {
  const int64_t Kc = (int64_t)(p->OC / p->G) * p->KH * p->KW, Cg = p->C / p->G;
  if (pt_conv_pointwise(p)) return 0;
  if (pt_convt_direct(p)) return pt_direct_transpose_scratch(p);
  return Kc * pt_convt_band(p) * p->W + Kc * Cg; /* one band of columns, then dW^T */
}

/* out (N, OC, OH, OW), in (N, C, H, W), w (C, OC/G, KH, KW), b (OC) or NULL. */
void pt_conv_transpose2d_forward(float *out, const float *in, const float *w, const float *b,
                                 const pt_conv_params *p, float *scratch) {
  if (pt_convt_direct(p)) {
    pt_direct_transpose_forward(out, in, w, b, p, scratch);
    return;
  }
  const int G = p->G, Cg = p->C / G, OCg = p->OC / G;
  const int Kc = OCg * p->KH * p->KW; /* rows of the column buffer */
  const int64_t HW = (int64_t)p->H * p->W, OP = (int64_t)p->OH * p->OW;
  const bool pointwise = pt_conv_pointwise(p);
  const pt_col_geom geom = pt_convt_geom(p);
  const int band = pt_convt_band(p);

  /* col2im adds, and output positions no tap reaches (output_padding) must still be defined */
  if (!pointwise) memset(out, 0, sizeof(float) * (size_t)(p->N * (int64_t)p->OC * OP));
  for (int n = 0; n < p->N; n++) {
    for (int g = 0; g < G; g++) {
      const float *x = in + ((int64_t)n * p->C + (int64_t)g * Cg) * HW;
      const float *wg = w + (int64_t)g * Cg * Kc;
      float *y = out + ((int64_t)n * p->OC + (int64_t)g * OCg) * OP;
      if (pointwise) {
        pt_sgemm(CblasTrans, CblasNoTrans, OCg, (int)HW, Cg, 1.0f, wg, Kc, x, (int)HW, 0.0f, y,
                 (int)HW);
        continue;
      }
      for (int r0 = 0; r0 < p->H; r0 += band) {
        const int r1 = r0 + band < p->H ? r0 + band : p->H, T = (r1 - r0) * p->W;
        pt_sgemm(CblasTrans, CblasNoTrans, Kc, T, Cg, 1.0f, wg, Kc, x + (int64_t)r0 * p->W, (int)HW,
                 0.0f, scratch, T);
        pt_col2im(y, scratch, &geom, r0, r1);
      }
    }
  }
  if (p->has_bias && b) pt_add_bias(out, b, p->N, p->OC, OP);
}

/* din (N, C, H, W), dw (C, OC/G, KH, KW), db (OC): each added into, each may be NULL.
 * dout (N, OC, OH, OW), in and w as in forward. */
void pt_conv_transpose2d_backward(float *din, float *dw, float *db, const float *dout,
                                  const float *in, const float *w, const pt_conv_params *p,
                                  float *scratch) {
  const int G = p->G, Cg = p->C / G, OCg = p->OC / G;
  const int Kc = OCg * p->KH * p->KW;
  const int64_t HW = (int64_t)p->H * p->W, OP = (int64_t)p->OH * p->OW;
  const bool pointwise = pt_conv_pointwise(p);
  const pt_col_geom geom = pt_convt_geom(p);
  const int band = pointwise ? p->H : pt_convt_band(p);

  if (db && p->has_bias) pt_bias_grad(db, dout, p->N, p->OC, OP);
  if (!din && !dw) return;
  if (pt_convt_direct(p)) {
    pt_direct_transpose_backward(din, dw, dout, in, w, p, scratch);
    return;
  }

  float *col = scratch, *dwt = pointwise ? NULL : scratch + (int64_t)Kc * band * p->W;
  for (int g = 0; g < G; g++) {
    const float *wg = w + (int64_t)g * Cg * Kc;
    float *dwg = dw ? dw + (int64_t)g * Cg * Kc : NULL;
    if (dwt && dw) memset(dwt, 0, sizeof(float) * (size_t)Kc * Cg);
    for (int n = 0; n < p->N; n++) {
      const float *x = in + ((int64_t)n * p->C + (int64_t)g * Cg) * HW;
      const float *dy = dout + ((int64_t)n * p->OC + (int64_t)g * OCg) * OP;
      float *dx = din ? din + ((int64_t)n * p->C + (int64_t)g * Cg) * HW : NULL;
      if (pointwise) { /* dY is its own column matrix (OCg, HW) */
        if (dx)
          pt_sgemm(CblasNoTrans, CblasNoTrans, Cg, (int)HW, Kc, 1.0f, wg, Kc, dy, (int)HW, 1.0f, dx,
                   (int)HW);
        if (dwg)
          pt_sgemm(CblasNoTrans, CblasTrans, Cg, Kc, (int)HW, 1.0f, x, (int)HW, dy, (int)HW, 1.0f,
                   dwg, Kc);
        continue;
      }
      for (int r0 = 0; r0 < p->H; r0 += band) {
        const int r1 = r0 + band < p->H ? r0 + band : p->H, T = (r1 - r0) * p->W;
        pt_im2col(col, dy, &geom, r0, r1);
        if (dx)
          pt_sgemm(CblasNoTrans, CblasNoTrans, Cg, T, Kc, 1.0f, wg, Kc, col, T, 1.0f,
                   dx + (int64_t)r0 * p->W, (int)HW);
        if (dwg)
          pt_sgemm(CblasNoTrans, CblasTrans, Kc, Cg, T, 1.0f, col, T, x + (int64_t)r0 * p->W,
                   (int)HW, 1.0f, dwt, Cg);
      }
    }
    if (dwt && dwg) pt_add_transposed(dwg, dwt, Cg, Kc);
  }
}
