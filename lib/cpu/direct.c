/* Direct forward of stride-1 convolutions whose sum runs over few taps (input channels x kernel
 * rows x kernel columns, at most PT_DIRECT_MAX_TAPS): an image network's first layer (3 input
 * channels) and its 1x1 heads. oneDNN's direct kernels ran the benchmark networks' first layers
 * 1.2-2x slower, and each of its primitive executions allocates on the heap, as does the sgemm
 * a head went to: these were the only layers of those networks' inference that allocated.
 *
 * A vector holds 16 output pixels of one row: each tap loads one vector from a zero-padded copy
 * of the input and multiplies it by 16 output channels' weights (broadcast), into 16
 * accumulators. The weights are laid out [block of 16 output channels][tap][16], zeros past OC,
 * so a head of 10 channels runs one block with 6 idle accumulators.
 *
 * Scratch (pt_direct_scratch floats): the padded input of one image, C x Hp x Wp with Hp = OH +
 * KH - 1 and Wp = OW rounded up to 16, plus KW - 1 (every load stays inside), then the weights.
 * Without padding and with rows of whole vectors (OW a multiple of 16), the input is read in
 * place: the copy would double the memory traffic of a 1x1 layer. */
#include <string.h>
#include "ops.h"
#include "vec16.h"

bool pt_direct_fits(const pt_conv_params *p) {
  return p->G == 1 && p->SH == 1 && p->SW == 1 && p->DH == 1 && p->DW == 1 && p->OH >= 1 &&
         p->OW >= 1 && p->PT >= 0 && p->PL >= 0 && p->PB >= 0 && p->PR >= 0 &&
         (int64_t)p->C * p->KH * p->KW <= PT_DIRECT_MAX_TAPS;
}

static int padded_rows(const pt_conv_params *p) {
  return p->OH + p->KH - 1;
}

static int padded_cols(const pt_conv_params *p) {
  return (p->OW + 15) / 16 * 16 + p->KW - 1;
}

int64_t pt_direct_scratch(const pt_conv_params *p) {
  const int64_t taps = (int64_t)p->C * p->KH * p->KW, blocks = (p->OC + 15) / 16;
  return (int64_t)p->C * padded_rows(p) * padded_cols(p) + taps * 16 * blocks;
}

/* Whether the input itself can be read: no padding, and rows of whole vectors. */
static bool in_place(const pt_conv_params *p) {
  return p->PT == 0 && p->PL == 0 && p->PB == 0 && p->PR == 0 && p->OW % 16 == 0;
}

/* One image: out (OC, OH, OW) from the (padded) input, Hp rows of Wp, and the laid-out weights. */
PT_CLONES static void direct_image(float *out, const float *pad, int Hp, int Wp, const float *wt,
                                   const float *b, bool relu, const pt_conv_params *p) {
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
            STORE16(dst, y);
          } else {
            float part[16];
            STORE16(part, y);
            memcpy(dst, part, sizeof(float) * (size_t)cols);
          }
        }
      }
  }
}

void pt_direct_forward(float *out, const float *in, const float *w, const float *b,
                       const pt_conv_params *p, bool relu, float *scratch) {
  const int C = p->C, H = p->H, W = p->W, OC = p->OC;
  const int Hp = padded_rows(p), Wp = padded_cols(p), taps = C * p->KH * p->KW;
  float *pad = scratch, *wt = scratch + (size_t)C * Hp * Wp;
  for (int oc0 = 0; oc0 < OC; oc0 += 16)
    for (int t = 0; t < taps; t++)
      for (int o = 0; o < 16; o++)
        wt[((size_t)oc0 * taps) + (size_t)t * 16 + o] =
            oc0 + o < OC ? w[(size_t)(oc0 + o) * taps + t] : 0.0f;
  const float *bias = p->has_bias ? b : NULL;
  if (in_place(p)) {
    for (int n = 0; n < p->N; n++)
      direct_image(out + (size_t)n * OC * p->OH * p->OW, in + (size_t)n * C * H * W, H, W, wt, bias,
                   relu, p);
    return;
  }
  /* Hp = H + PT + PB and Wp >= W + PL + PR: the whole image fits */
  for (int n = 0; n < p->N; n++) {
    memset(pad, 0, sizeof(float) * (size_t)C * Hp * Wp);
    for (int c = 0; c < C; c++)
      for (int iy = 0; iy < H; iy++)
        memcpy(pad + ((size_t)c * Hp + iy + p->PT) * Wp + p->PL,
               in + (((size_t)n * C + c) * H + iy) * W, sizeof(float) * (size_t)W);
    direct_image(out + (size_t)n * OC * p->OH * p->OW, pad, Hp, Wp, wt, bias, relu, p);
  }
}
