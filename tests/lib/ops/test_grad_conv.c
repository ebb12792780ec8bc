/* Conv, ConvTranspose, Gemm, MatMul, MaxPool and AveragePool on the CPU: forward against plain
 * nested-loop references accumulated in double, backward against central finite differences, the
 * accumulate rule (backward adds), NULL gradients skipped, and scratch never written past the size
 * the op asks for. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu/ops.h"
#include "gradcheck.h"

static unsigned long long seed = 0x2545f4914f6cdd1dULL;

#define GUARD 64
#define GUARD_VAL 12345.0f

static float *alloc_f(int64_t n) {
  return calloc((size_t)(n > 0 ? n : 1), sizeof(float));
}

/* Scratch of exactly n floats followed by a guard band the op must never touch. */
static float *alloc_scratch(int64_t n) {
  float *s = malloc(sizeof(float) * (size_t)(n + GUARD));
  for (int64_t i = 0; i < n + GUARD; i++) s[i] = i < n ? 0.0f : GUARD_VAL;
  return s;
}

static int guard_intact(const float *s, int64_t n) {
  for (int64_t i = n; i < n + GUARD; i++)
    if (s[i] != GUARD_VAL) return 0;
  return 1;
}

/* Largest |got - ref| relative to max(1, max |ref|). */
static double rel_err(const float *got, const double *ref, int64_t n) {
  double scale = 1.0, worst = 0;
  for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(ref[i]));
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - ref[i]);
    if (!(e <= worst)) worst = e; /* NaN counts as the worst */
  }
  return worst / scale;
}

static void check_forward(const char *name, const float *got, const double *ref, int64_t n) {
  double e = rel_err(got, ref, n);
  printf("%-60s forward: max error %.2e (n=%lld)\n", name, e, (long long)n);
  CHECK(e <= 1e-5, "%s forward error %.3g", name, e);
}

/* Backward must add into what is already there: run it into zeroed buffers and into buffers
 * holding `base`, and compare. */
static void check_accumulates(const char *name, const float *zero_run, const float *base_run,
                              int64_t n, float base) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++)
    worst = fmax(worst, fabs((double)base_run[i] - ((double)zero_run[i] + base)));
  CHECK(worst <= 1e-4, "%s: backward does not add into its gradient (error %.3g)", name, worst);
}

static int same(const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (fabsf(a[i] - b[i]) > 1e-5f * (1.0f + fabsf(a[i]))) return 0;
  return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Conv and ConvTranspose */

typedef struct conv_spec {
  int N, C, H, W, OC, KH, KW, SH, SW, DH, DW, PT, PL, PB, PR, G, bias;
  int oph, opw; /* ConvTranspose output_padding */
} conv_spec;

static pt_conv_params conv_params(const conv_spec *s, int transpose) {
  pt_conv_params p = {0};
  p.N = s->N, p.C = s->C, p.H = s->H, p.W = s->W, p.OC = s->OC;
  p.KH = s->KH, p.KW = s->KW, p.SH = s->SH, p.SW = s->SW, p.DH = s->DH, p.DW = s->DW;
  p.PT = s->PT, p.PL = s->PL, p.PB = s->PB, p.PR = s->PR, p.G = s->G, p.has_bias = s->bias;
  if (!transpose) {
    p.OH = (s->H + s->PT + s->PB - s->DH * (s->KH - 1) - 1) / s->SH + 1;
    p.OW = (s->W + s->PL + s->PR - s->DW * (s->KW - 1) - 1) / s->SW + 1;
  } else {
    p.OH = s->SH * (s->H - 1) + s->oph + s->DH * (s->KH - 1) + 1 - s->PT - s->PB;
    p.OW = s->SW * (s->W - 1) + s->opw + s->DW * (s->KW - 1) + 1 - s->PL - s->PR;
  }
  return p;
}

static void conv_name(char *buf, size_t n, const char *op, const conv_spec *s,
                      const pt_conv_params *p) {
  snprintf(buf, n, "%s N%d C%d %dx%d OC%d k%dx%d s%dx%d d%dx%d p%d,%d,%d,%d g%d b%d%s -> %dx%d", op,
           s->N, s->C, s->H, s->W, s->OC, s->KH, s->KW, s->SH, s->SW, s->DH, s->DW, s->PT, s->PL,
           s->PB, s->PR, s->G, s->bias, s->oph || s->opw ? " op" : "", p->OH, p->OW);
}

static void ref_conv(double *out, const float *in, const float *w, const float *b,
                     const pt_conv_params *p) {
  int Cg = p->C / p->G, OCg = p->OC / p->G;
  for (int n = 0; n < p->N; n++)
    for (int oc = 0; oc < p->OC; oc++)
      for (int oh = 0; oh < p->OH; oh++)
        for (int ow = 0; ow < p->OW; ow++) {
          double s = p->has_bias ? b[oc] : 0.0;
          int g = oc / OCg;
          for (int c = 0; c < Cg; c++)
            for (int kh = 0; kh < p->KH; kh++)
              for (int kw = 0; kw < p->KW; kw++) {
                int ih = oh * p->SH - p->PT + kh * p->DH, iw = ow * p->SW - p->PL + kw * p->DW;
                if (ih < 0 || ih >= p->H || iw < 0 || iw >= p->W) continue;
                s += (double)in[((n * p->C + g * Cg + c) * p->H + ih) * p->W + iw] *
                     w[((oc * Cg + c) * p->KH + kh) * p->KW + kw];
              }
          out[((n * p->OC + oc) * p->OH + oh) * p->OW + ow] = s;
        }
}

/* Scatter form, straight from the definition: each input pixel adds its kernel-weighted copy. */
static void ref_convt(double *out, const float *in, const float *w, const float *b,
                      const pt_conv_params *p) {
  int Cg = p->C / p->G, OCg = p->OC / p->G;
  int64_t OP = (int64_t)p->OH * p->OW;
  for (int n = 0; n < p->N; n++)
    for (int oc = 0; oc < p->OC; oc++)
      for (int64_t i = 0; i < OP; i++) out[(n * p->OC + oc) * OP + i] = p->has_bias ? b[oc] : 0;
  for (int n = 0; n < p->N; n++)
    for (int c = 0; c < p->C; c++)
      for (int h = 0; h < p->H; h++)
        for (int x = 0; x < p->W; x++)
          for (int j = 0; j < OCg; j++)
            for (int kh = 0; kh < p->KH; kh++)
              for (int kw = 0; kw < p->KW; kw++) {
                int oh = h * p->SH - p->PT + kh * p->DH, ow = x * p->SW - p->PL + kw * p->DW;
                if (oh < 0 || oh >= p->OH || ow < 0 || ow >= p->OW) continue;
                int oc = (c / Cg) * OCg + j;
                out[((n * p->OC + oc) * p->OH + oh) * p->OW + ow] +=
                    (double)in[((n * p->C + c) * p->H + h) * p->W + x] *
                    w[((c * OCg + j) * p->KH + kh) * p->KW + kw];
              }
}

typedef struct conv_case {
  pt_conv_params p;
  int transpose;
  float *scratch;
  int64_t scratch_n;
} conv_case;

static void conv_fwd_cb(gc_case *c) {
  conv_case *cc = c->p;
  const float *b = cc->p.has_bias ? c->in[2] : NULL;
  if (cc->transpose)
    pt_conv_transpose2d_forward(c->out, c->in[0], c->in[1], b, &cc->p, cc->scratch);
  else
    pt_conv2d_forward(c->out, c->in[0], c->in[1], b, &cc->p, cc->scratch);
}

static void conv_bwd_cb(gc_case *c, const float *dout, float **din) {
  conv_case *cc = c->p;
  float *db = cc->p.has_bias ? din[2] : NULL;
  if (cc->transpose)
    pt_conv_transpose2d_backward(din[0], din[1], db, dout, c->in[0], c->in[1], &cc->p, cc->scratch);
  else
    pt_conv2d_backward(din[0], din[1], db, dout, c->in[0], c->in[1], &cc->p, cc->scratch);
}

static void run_conv(const conv_spec *s, int transpose) {
  conv_case cc = {conv_params(s, transpose), transpose, NULL, 0};
  const pt_conv_params *p = &cc.p;
  gc_case c = {0};
  conv_name(c.name, sizeof c.name, transpose ? "convT" : "conv", s, p);
  int64_t xn = (int64_t)p->N * p->C * p->H * p->W;
  int64_t wn = transpose ? (int64_t)p->C * (p->OC / p->G) * p->KH * p->KW
                         : (int64_t)p->OC * (p->C / p->G) * p->KH * p->KW;
  int64_t yn = (int64_t)p->N * p->OC * p->OH * p->OW;
  cc.scratch_n = transpose ? pt_conv_transpose2d_scratch(p) : pt_conv2d_scratch(p);
  cc.scratch = alloc_scratch(cc.scratch_n);
  c.n_in = p->has_bias ? 3 : 2;
  c.in[0] = alloc_f(xn), c.in_n[0] = xn;
  c.in[1] = alloc_f(wn), c.in_n[1] = wn;
  c.in[2] = alloc_f(p->OC), c.in_n[2] = p->OC;
  gc_fill(c.in[0], xn, &seed, -1, 1);
  gc_fill(c.in[1], wn, &seed, -1, 1);
  gc_fill(c.in[2], p->OC, &seed, -1, 1);
  c.want[0] = c.want[1] = c.want[2] = 1;
  c.out = alloc_f(yn), c.out_n = yn;
  c.forward = conv_fwd_cb;
  c.backward = conv_bwd_cb;
  c.p = &cc;

  /* forward against the reference; poison the output first so unwritten elements show */
  double *ref = malloc(sizeof(double) * yn);
  for (int64_t i = 0; i < yn; i++) c.out[i] = NAN;
  conv_fwd_cb(&c);
  (transpose ? ref_convt : ref_conv)(ref, c.in[0], c.in[1], c.in[2], p);
  check_forward(c.name, c.out, ref, yn);

  gc_run(&c);
  CHECK(guard_intact(cc.scratch, cc.scratch_n), "%s: scratch written past %lld floats", c.name,
        (long long)cc.scratch_n);

  /* accumulate rule and NULL gradients */
  float *dy = alloc_f(yn);
  gc_fill(dy, yn, &seed, -1, 1);
  float *g0[3], *g1[3], *g2[3];
  int64_t gn[3] = {xn, wn, p->OC};
  for (int k = 0; k < 3; k++) {
    g0[k] = alloc_f(gn[k]);
    g1[k] = alloc_f(gn[k]);
    g2[k] = alloc_f(gn[k]);
    for (int64_t i = 0; i < gn[k]; i++) g1[k][i] = 0.5f;
  }
  float *bias_g0 = p->has_bias ? g0[2] : NULL, *bias_g1 = p->has_bias ? g1[2] : NULL;
  void (*bwd)(float *, float *, float *, const float *, const float *, const float *,
              const pt_conv_params *, float *) =
      transpose ? pt_conv_transpose2d_backward : pt_conv2d_backward;
  bwd(g0[0], g0[1], bias_g0, dy, c.in[0], c.in[1], p, cc.scratch);
  bwd(g1[0], g1[1], bias_g1, dy, c.in[0], c.in[1], p, cc.scratch);
  char what[200];
  for (int k = 0; k < c.n_in; k++) {
    snprintf(what, sizeof what, "%s grad %d", c.name, k);
    check_accumulates(what, g0[k], g1[k], gn[k], 0.5f);
  }
  /* each gradient alone, the others NULL, must match the full call */
  for (int k = 0; k < c.n_in; k++) {
    memset(g2[k], 0, sizeof(float) * gn[k]);
    bwd(k == 0 ? g2[0] : NULL, k == 1 ? g2[1] : NULL, k == 2 ? g2[2] : NULL, dy, c.in[0], c.in[1],
        p, cc.scratch);
    CHECK(same(g0[k], g2[k], gn[k]), "%s: gradient %d alone differs from the full backward", c.name,
          k);
  }
  CHECK(guard_intact(cc.scratch, cc.scratch_n), "%s: scratch written past %lld floats", c.name,
        (long long)cc.scratch_n);

  for (int k = 0; k < 3; k++) {
    free(g0[k]);
    free(g1[k]);
    free(g2[k]);
    free(c.in[k]);
  }
  free(dy);
  free(ref);
  free(c.out);
  free(cc.scratch);
}

static const conv_spec conv_cases[] = {
    /* N  C   H   W  OC KH KW SH SW DH DW PT PL PB PR  G  b */
    {1, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
    {2, 4, 9, 8, 6, 3, 3, 2, 2, 1, 1, 1, 0, 2, 1, 2, 1, 0, 0},
    {1, 2, 11, 10, 3, 3, 2, 3, 2, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0},
    {1, 3, 9, 9, 4, 3, 3, 1, 1, 2, 2, 2, 1, 0, 2, 1, 1, 0, 0},
    {2, 4, 8, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 4, 1, 0, 0},  /* depthwise */
    {1, 3, 7, 7, 6, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 3, 0, 0, 0},  /* depthwise, multiplier 2 */
    {1, 2, 10, 9, 2, 3, 3, 2, 3, 2, 2, 2, 2, 1, 2, 2, 1, 0, 0}, /* depthwise, stride, dilation */
    {2, 5, 4, 5, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0},  /* pointwise */
    {1, 4, 3, 5, 6, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 1, 0, 0},  /* pointwise, groups */
    {1, 4, 7, 7, 2, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0},  /* 1x1 stride 2 */
    {1, 2, 8, 8, 3, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 0, 0},
    {1, 3, 1, 12, 4, 1, 3, 1, 2, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0}, /* 1-D */
    {1, 2, 3, 3, 2, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 0, 0},  /* kernel larger than input */
    {2, 3, 10, 11, 4, 2, 3, 3, 3, 1, 1, 1, 2, 0, 1, 1, 1, 0, 0},
    {1, 2, 3, 4, 3, 2, 2, 1, 1, 1, 1, 3, 3, 3, 3, 1, 1, 0, 0}, /* windows wholly in padding */
    {2, 4, 9, 9, 4, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 2, 0, 0, 0},
    {1, 6, 5, 6, 4, 3, 2, 1, 2, 1, 2, 0, 1, 1, 0, 2, 1, 0, 0},
    {2, 1, 6, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0},  /* one input channel */
    {1, 3, 5, 21, 3, 3, 3, 1, 1, 1, 1, 1, 2, 1, 0, 3, 1, 0, 0}, /* depthwise, wide rows */
};

static const conv_spec convt_cases[] = {
    /* N  C  H  W OC KH KW SH SW DH DW PT PL PB PR  G  b oph opw */
    {1, 3, 4, 5, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
    {2, 4, 3, 4, 6, 3, 3, 2, 2, 1, 1, 1, 0, 1, 1, 2, 1, 1, 1},
    {1, 2, 4, 3, 3, 2, 3, 3, 2, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0},
    {1, 2, 4, 4, 2, 3, 3, 2, 2, 2, 2, 2, 1, 1, 2, 1, 1, 1, 0},
    {2, 3, 4, 5, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0}, /* pointwise */
    {1, 4, 5, 5, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 4, 1, 1, 1}, /* depthwise */
    {1, 3, 4, 4, 2, 4, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}, /* the usual 2x upsampling */
    {2, 2, 3, 5, 3, 3, 2, 3, 1, 1, 2, 0, 1, 2, 0, 1, 1, 2, 0},
    {1, 4, 1, 6, 2, 1, 3, 1, 2, 1, 1, 0, 1, 0, 0, 2, 1, 0, 1}, /* 1-D */
};

/* Gradients of Conv / ConvTranspose straight from the definition, in double: every
 * (input pixel, tap, output pixel) triple that the forward multiplies is visited once. */
static void ref_conv_backward(double *dx, double *dw, double *db, const float *dy, const float *x,
                              const float *w, const pt_conv_params *p, int transpose) {
  int Cg = p->C / p->G, OCg = p->OC / p->G;
  int64_t xn = (int64_t)p->N * p->C * p->H * p->W;
  int64_t wn = (int64_t)p->OC * Cg * p->KH * p->KW;
  for (int64_t i = 0; i < xn; i++) dx[i] = 0;
  for (int64_t i = 0; i < wn; i++) dw[i] = 0;
  for (int oc = 0; oc < p->OC; oc++) {
    db[oc] = 0;
    for (int n = 0; n < p->N; n++)
      for (int i = 0; i < p->OH * p->OW; i++)
        db[oc] += dy[((int64_t)n * p->OC + oc) * p->OH * p->OW + i];
  }
  for (int n = 0; n < p->N; n++)
    for (int oc = 0; oc < p->OC; oc++)
      for (int c = 0; c < Cg; c++)
        for (int kh = 0; kh < p->KH; kh++)
          for (int kw = 0; kw < p->KW; kw++) {
            int g = oc / OCg, ci = g * Cg + c;
            /* Conv: out pixel (a, b) reads in pixel (a*S - P + k*D). ConvTranspose: in pixel
             * (a, b) writes out pixel (a*S - P + k*D). */
            int AH = transpose ? p->H : p->OH, AW = transpose ? p->W : p->OW;
            int BH = transpose ? p->OH : p->H, BW = transpose ? p->OW : p->W;
            int64_t wi = transpose ? (((int64_t)ci * OCg + oc % OCg) * p->KH + kh) * p->KW + kw
                                   : (((int64_t)oc * Cg + c) * p->KH + kh) * p->KW + kw;
            for (int a = 0; a < AH; a++)
              for (int b = 0; b < AW; b++) {
                int bh = a * p->SH - p->PT + kh * p->DH, bw = b * p->SW - p->PL + kw * p->DW;
                if (bh < 0 || bh >= BH || bw < 0 || bw >= BW) continue;
                int64_t o = transpose ? (((int64_t)n * p->OC + oc) * p->OH + bh) * p->OW + bw
                                      : (((int64_t)n * p->OC + oc) * p->OH + a) * p->OW + b;
                int64_t xi = transpose ? (((int64_t)n * p->C + ci) * p->H + a) * p->W + b
                                       : (((int64_t)n * p->C + ci) * p->H + bh) * p->W + bw;
                dx[xi] += (double)dy[o] * w[wi];
                dw[wi] += (double)dy[o] * x[xi];
              }
          }
}

/* Layer-sized shapes, large enough that the column buffer is filled in several bands (one of
 * them partial): forward and all three gradients against the references. */
static const conv_spec conv_large[] = {
    /* N  C   H   W  OC KH KW SH SW DH DW PT PL PB PR  G  b oph opw */
    {1, 16, 40, 19, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
    {2, 8, 201, 41, 8, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 2, 1, 0, 0},
    {1, 6, 90, 37, 4, 5, 3, 1, 2, 1, 1, 2, 0, 3, 1, 1, 1, 0, 0},
    {2, 8, 30, 37, 16, 3, 3, 1, 1, 2, 1, 2, 1, 2, 1, 8, 1, 0, 0}, /* depthwise, multiplier 2 */
};
static const conv_spec convt_large[] = {
    {1, 24, 40, 19, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
    {2, 8, 90, 21, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1},
    {1, 4, 120, 30, 6, 4, 4, 2, 2, 2, 2, 2, 1, 1, 2, 1, 1, 0, 1},
};

static void run_conv_large(const conv_spec *s, int t) {
  pt_conv_params p = conv_params(s, t);
  char name[160], what[200];
  conv_name(name, sizeof name, t ? "convT" : "conv", s, &p);
  int64_t xn = (int64_t)p.N * p.C * p.H * p.W, yn = (int64_t)p.N * p.OC * p.OH * p.OW;
  int64_t wn = (int64_t)p.OC * (p.C / p.G) * p.KH * p.KW;
  int64_t sn = t ? pt_conv_transpose2d_scratch(&p) : pt_conv2d_scratch(&p);
  float *x = alloc_f(xn), *w = alloc_f(wn), *b = alloc_f(p.OC), *y = alloc_f(yn);
  float *dy = alloc_f(yn), *dx = alloc_f(xn), *dw = alloc_f(wn), *db = alloc_f(p.OC);
  float *scratch = alloc_scratch(sn);
  double *ref = malloc(sizeof(double) * yn), *rdx = malloc(sizeof(double) * xn);
  double *rdw = malloc(sizeof(double) * wn), *rdb = malloc(sizeof(double) * p.OC);
  gc_fill(x, xn, &seed, -1, 1);
  gc_fill(w, wn, &seed, -1, 1);
  gc_fill(b, p.OC, &seed, -1, 1);
  gc_fill(dy, yn, &seed, -1, 1);
  if (t) {
    pt_conv_transpose2d_forward(y, x, w, b, &p, scratch);
    ref_convt(ref, x, w, b, &p);
    pt_conv_transpose2d_backward(dx, dw, db, dy, x, w, &p, scratch);
  } else {
    pt_conv2d_forward(y, x, w, b, &p, scratch);
    ref_conv(ref, x, w, b, &p);
    pt_conv2d_backward(dx, dw, db, dy, x, w, &p, scratch);
  }
  check_forward(name, y, ref, yn);
  ref_conv_backward(rdx, rdw, rdb, dy, x, w, &p, t);
  const char *gname[3] = {"dX", "dW", "dB"};
  const float *got[3] = {dx, dw, db};
  const double *want[3] = {rdx, rdw, rdb};
  int64_t n[3] = {xn, wn, p.OC};
  for (int k = 0; k < 3; k++) {
    double e = rel_err(got[k], want[k], n[k]);
    snprintf(what, sizeof what, "%s %s", name, gname[k]);
    printf("%-60s backward: max error %.2e (n=%lld)\n", what, e, (long long)n[k]);
    CHECK(e <= 2e-5, "%s against the reference: error %.3g", what, e);
  }
  CHECK(guard_intact(scratch, sn), "%s: scratch overrun", name);
  free(x), free(w), free(b), free(y), free(dy), free(dx), free(dw), free(db), free(scratch);
  free(ref), free(rdx), free(rdw), free(rdb);
}

/* ------------------------------------------------------------------------------------------ */
/* Gemm and MatMul */

static const char *c_mode_name[] = {"none", "scalar", "row", "col", "full"};

static int64_t gemm_c_n(const pt_gemm_params *p) {
  switch (p->c_mode) {
  case PT_GEMM_C_NONE:
    return 0;
  case PT_GEMM_C_SCALAR:
    return 1;
  case PT_GEMM_C_ROW:
    return p->N;
  case PT_GEMM_C_COL:
    return p->M;
  default:
    return (int64_t)p->M * p->N;
  }
}

static void ref_gemm(double *out, const float *a, const float *b, const float *c,
                     const pt_gemm_params *p) {
  for (int m = 0; m < p->M; m++)
    for (int n = 0; n < p->N; n++) {
      double s = 0;
      for (int k = 0; k < p->K; k++) {
        float av = p->trans_a ? a[k * p->M + m] : a[m * p->K + k];
        float bv = p->trans_b ? b[n * p->K + k] : b[k * p->N + n];
        s += (double)av * bv;
      }
      double cv = 0;
      switch (p->c_mode) {
      case PT_GEMM_C_NONE:
        break;
      case PT_GEMM_C_SCALAR:
        cv = c[0];
        break;
      case PT_GEMM_C_ROW:
        cv = c[n];
        break;
      case PT_GEMM_C_COL:
        cv = c[m];
        break;
      default:
        cv = c[m * p->N + n];
        break;
      }
      out[m * p->N + n] = p->alpha * s + p->beta * cv;
    }
}

static void gemm_fwd_cb(gc_case *c) {
  const pt_gemm_params *p = c->p;
  pt_gemm_forward(c->out, c->in[0], c->in[1], p->c_mode ? c->in[2] : NULL, p);
}
static void gemm_bwd_cb(gc_case *c, const float *dout, float **din) {
  const pt_gemm_params *p = c->p;
  pt_gemm_backward(din[0], din[1], p->c_mode ? din[2] : NULL, dout, c->in[0], c->in[1], p);
}

static void run_gemm(int M, int N, int K, bool ta, bool tb, float alpha, float beta,
                     pt_gemm_c mode) {
  pt_gemm_params p = {M, N, K, ta, tb, alpha, beta, mode};
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "gemm M%d N%d K%d tA%d tB%d alpha %.2g beta %.2g C %s", M, N, K,
           ta, tb, alpha, beta, c_mode_name[mode]);
  int64_t an = (int64_t)M * K, bn = (int64_t)K * N, cn = gemm_c_n(&p), yn = (int64_t)M * N;
  c.n_in = mode ? 3 : 2;
  c.in[0] = alloc_f(an), c.in_n[0] = an;
  c.in[1] = alloc_f(bn), c.in_n[1] = bn;
  c.in[2] = alloc_f(cn), c.in_n[2] = cn;
  gc_fill(c.in[0], an, &seed, -1, 1);
  gc_fill(c.in[1], bn, &seed, -1, 1);
  gc_fill(c.in[2], cn, &seed, -1, 1);
  c.want[0] = c.want[1] = c.want[2] = 1;
  c.out = alloc_f(yn), c.out_n = yn;
  c.forward = gemm_fwd_cb, c.backward = gemm_bwd_cb, c.p = &p;
  double *ref = malloc(sizeof(double) * yn);
  for (int64_t i = 0; i < yn; i++) c.out[i] = NAN;
  gemm_fwd_cb(&c);
  ref_gemm(ref, c.in[0], c.in[1], c.in[2], &p);
  check_forward(c.name, c.out, ref, yn);
  gc_run(&c);

  /* accumulate rule */
  float *dy = alloc_f(yn);
  gc_fill(dy, yn, &seed, -1, 1);
  int64_t gn[3] = {an, bn, cn};
  float *g0[3], *g1[3];
  for (int k = 0; k < 3; k++) {
    g0[k] = alloc_f(gn[k]);
    g1[k] = alloc_f(gn[k]);
    for (int64_t i = 0; i < gn[k]; i++) g1[k][i] = -0.25f;
  }
  pt_gemm_backward(g0[0], g0[1], mode ? g0[2] : NULL, dy, c.in[0], c.in[1], &p);
  pt_gemm_backward(g1[0], g1[1], mode ? g1[2] : NULL, dy, c.in[0], c.in[1], &p);
  for (int k = 0; k < c.n_in; k++) check_accumulates(c.name, g0[k], g1[k], gn[k], -0.25f);
  for (int k = 0; k < 3; k++) free(g0[k]), free(g1[k]), free(c.in[k]);
  free(dy), free(ref), free(c.out);
}

static void ref_matmul(double *out, const float *a, const float *b, const pt_matmul_params *p) {
  for (int i = 0; i < p->batch; i++)
    for (int m = 0; m < p->M; m++)
      for (int n = 0; n < p->N; n++) {
        double s = 0;
        for (int k = 0; k < p->K; k++)
          s += (double)a[i * p->a_stride + m * p->K + k] * b[i * p->b_stride + k * p->N + n];
        out[((int64_t)i * p->M + m) * p->N + n] = s;
      }
}

static void matmul_fwd_cb(gc_case *c) {
  pt_matmul_forward(c->out, c->in[0], c->in[1], c->p);
}
static void matmul_bwd_cb(gc_case *c, const float *dout, float **din) {
  pt_matmul_backward(din[0], din[1], dout, c->in[0], c->in[1], c->p);
}

/* a_shared / b_shared: that operand is one matrix broadcast over the batch. */
static void run_matmul(int batch, int M, int K, int N, int a_shared, int b_shared) {
  pt_matmul_params p = {
      batch, M, K, N, a_shared ? 0 : (int64_t)M * K, b_shared ? 0 : (int64_t)K * N};
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "matmul batch%d M%d K%d N%d a_stride %lld b_stride %lld", batch,
           M, K, N, (long long)p.a_stride, (long long)p.b_stride);
  int64_t an = a_shared ? (int64_t)M * K : (int64_t)batch * M * K;
  int64_t bn = b_shared ? (int64_t)K * N : (int64_t)batch * K * N;
  int64_t yn = (int64_t)batch * M * N;
  c.n_in = 2;
  c.in[0] = alloc_f(an), c.in_n[0] = an;
  c.in[1] = alloc_f(bn), c.in_n[1] = bn;
  gc_fill(c.in[0], an, &seed, -1, 1);
  gc_fill(c.in[1], bn, &seed, -1, 1);
  c.want[0] = c.want[1] = 1;
  c.out = alloc_f(yn), c.out_n = yn;
  c.forward = matmul_fwd_cb, c.backward = matmul_bwd_cb, c.p = &p;
  double *ref = malloc(sizeof(double) * yn);
  for (int64_t i = 0; i < yn; i++) c.out[i] = NAN;
  matmul_fwd_cb(&c);
  ref_matmul(ref, c.in[0], c.in[1], &p);
  check_forward(c.name, c.out, ref, yn);
  gc_run(&c);

  float *dy = alloc_f(yn);
  gc_fill(dy, yn, &seed, -1, 1);
  int64_t gn[2] = {an, bn};
  float *g0[2], *g1[2], *g2[2];
  for (int k = 0; k < 2; k++) {
    g0[k] = alloc_f(gn[k]);
    g1[k] = alloc_f(gn[k]);
    g2[k] = alloc_f(gn[k]);
    for (int64_t i = 0; i < gn[k]; i++) g1[k][i] = 2.0f;
  }
  pt_matmul_backward(g0[0], g0[1], dy, c.in[0], c.in[1], &p);
  pt_matmul_backward(g1[0], g1[1], dy, c.in[0], c.in[1], &p);
  pt_matmul_backward(g2[0], NULL, dy, c.in[0], c.in[1], &p);
  pt_matmul_backward(NULL, g2[1], dy, c.in[0], c.in[1], &p);
  for (int k = 0; k < 2; k++) {
    check_accumulates(c.name, g0[k], g1[k], gn[k], 2.0f);
    CHECK(same(g0[k], g2[k], gn[k]), "%s: gradient %d alone differs", c.name, k);
  }
  for (int k = 0; k < 2; k++) free(g0[k]), free(g1[k]), free(g2[k]), free(c.in[k]);
  free(dy), free(ref), free(c.out);
}

/* ------------------------------------------------------------------------------------------ */
/* Pools */

typedef struct pool_spec {
  int N, C, H, W, KH, KW, SH, SW, DH, DW, PT, PL, PB, PR, include_pad, ceil;
} pool_spec;

static pt_pool_params pool_params(const pool_spec *s) {
  pt_pool_params p = {0};
  p.N = s->N, p.C = s->C, p.H = s->H, p.W = s->W;
  p.KH = s->KH, p.KW = s->KW, p.SH = s->SH, p.SW = s->SW, p.DH = s->DH, p.DW = s->DW;
  p.PT = s->PT, p.PL = s->PL, p.PB = s->PB, p.PR = s->PR, p.count_include_pad = s->include_pad;
  int eh = s->H + s->PT + s->PB - s->DH * (s->KH - 1) - 1;
  int ew = s->W + s->PL + s->PR - s->DW * (s->KW - 1) - 1;
  p.OH = (s->ceil ? (eh + s->SH - 1) : eh) / s->SH + 1;
  p.OW = (s->ceil ? (ew + s->SW - 1) : ew) / s->SW + 1;
  return p;
}

static void pool_name(char *buf, size_t n, const char *op, const pool_spec *s,
                      const pt_pool_params *p) {
  snprintf(buf, n, "%s N%d C%d %dx%d k%dx%d s%dx%d d%dx%d p%d,%d,%d,%d%s%s -> %dx%d", op, s->N,
           s->C, s->H, s->W, s->KH, s->KW, s->SH, s->SW, s->DH, s->DW, s->PT, s->PL, s->PB, s->PR,
           s->include_pad && strcmp(op, "avgpool") == 0 ? " count_include_pad" : "",
           s->ceil ? " ceil" : "", p->OH, p->OW);
}

/* The references follow the definitions tap by tap. Average with count_include_pad counts the taps
 * inside the padded input; without, the taps on real input; none gives 0. */
static void ref_pool(double *out, int32_t *am, const float *in, const pt_pool_params *p, int max) {
  for (int pl = 0; pl < p->N * p->C; pl++)
    for (int oh = 0; oh < p->OH; oh++)
      for (int ow = 0; ow < p->OW; ow++) {
        double best = -INFINITY, sum = 0;
        int bi = -1, real = 0, padded = 0;
        for (int kh = 0; kh < p->KH; kh++)
          for (int kw = 0; kw < p->KW; kw++) {
            int ih = oh * p->SH - p->PT + kh * p->DH, iw = ow * p->SW - p->PL + kw * p->DW;
            if (ih >= -p->PT && ih < p->H + p->PB && iw >= -p->PL && iw < p->W + p->PR) padded++;
            if (ih < 0 || ih >= p->H || iw < 0 || iw >= p->W) continue;
            float v = in[((int64_t)pl * p->H + ih) * p->W + iw];
            real++;
            sum += v;
            if (v > best) best = v, bi = ih * p->W + iw;
          }
        int64_t o = ((int64_t)pl * p->OH + oh) * p->OW + ow;
        if (max) {
          out[o] = bi < 0 ? 0.0 : best;
          am[o] = bi;
        } else {
          int cnt = p->count_include_pad ? padded : real;
          out[o] = cnt ? sum / cnt : 0.0;
        }
      }
}

typedef struct pool_case {
  pt_pool_params p;
  int max;
  int32_t *argmax;
} pool_case;

static void pool_fwd_cb(gc_case *c) {
  pool_case *pc = c->p;
  if (pc->max)
    pt_maxpool_forward(c->out, pc->argmax, c->in[0], &pc->p);
  else
    pt_avgpool_forward(c->out, c->in[0], &pc->p);
}
static void pool_bwd_cb(gc_case *c, const float *dout, float **din) {
  pool_case *pc = c->p;
  if (pc->max)
    pt_maxpool_backward(din[0], dout, pc->argmax, &pc->p);
  else
    pt_avgpool_backward(din[0], dout, &pc->p);
}

/* Distinct values 0.05 apart in random order: no two candidates for a maximum lie within the
 * finite-difference step of each other. */
static void fill_separated(float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = (float)(i - n / 2) * 0.05f;
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)(pt_test_rand_u64(&seed) % (unsigned long long)(i + 1));
    float t = x[i];
    x[i] = x[j], x[j] = t;
  }
}

static void run_pool(const pool_spec *s, int max) {
  pool_case pc = {pool_params(s), max, NULL};
  const pt_pool_params *p = &pc.p;
  gc_case c = {0};
  pool_name(c.name, sizeof c.name, max ? "maxpool" : "avgpool", s, p);
  int64_t xn = (int64_t)p->N * p->C * p->H * p->W, yn = (int64_t)p->N * p->C * p->OH * p->OW;
  pc.argmax = malloc(sizeof(int32_t) * yn);
  c.n_in = 1;
  c.in[0] = alloc_f(xn), c.in_n[0] = xn, c.want[0] = 1;
  if (max)
    fill_separated(c.in[0], xn);
  else
    gc_fill(c.in[0], xn, &seed, -1, 1);
  c.out = alloc_f(yn), c.out_n = yn;
  c.forward = pool_fwd_cb, c.backward = pool_bwd_cb, c.p = &pc;

  double *ref = malloc(sizeof(double) * yn);
  int32_t *ref_am = malloc(sizeof(int32_t) * yn);
  for (int64_t i = 0; i < yn; i++) c.out[i] = NAN, pc.argmax[i] = -7;
  pool_fwd_cb(&c);
  ref_pool(ref, ref_am, c.in[0], p, max);
  check_forward(c.name, c.out, ref, yn);
  if (max) {
    int64_t bad = 0;
    for (int64_t i = 0; i < yn; i++) bad += pc.argmax[i] != ref_am[i];
    CHECK(bad == 0, "%s: %lld argmax indices differ from the reference", c.name, (long long)bad);
  }
  gc_run(&c);

  float *dy = alloc_f(yn), *g0 = alloc_f(xn), *g1 = alloc_f(xn);
  gc_fill(dy, yn, &seed, -1, 1);
  for (int64_t i = 0; i < xn; i++) g1[i] = 1.5f;
  pool_bwd_cb(&c, dy, &g0);
  pool_bwd_cb(&c, dy, &g1);
  check_accumulates(c.name, g0, g1, xn, 1.5f);
  free(dy), free(g0), free(g1), free(ref), free(ref_am), free(pc.argmax), free(c.in[0]),
      free(c.out);
}

static const pool_spec pool_cases[] = {
    /* N  C  H  W KH KW SH SW DH DW PT PL PB PR incl ceil */
    {1, 2, 6, 6, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0},
    {2, 3, 7, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 0},
    {2, 3, 7, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0},
    {1, 2, 7, 7, 3, 3, 1, 1, 1, 1, 1, 0, 2, 1, 0, 0},
    {1, 2, 7, 7, 3, 3, 1, 1, 1, 1, 1, 0, 2, 1, 1, 0},
    {1, 2, 9, 8, 3, 2, 1, 2, 2, 2, 2, 1, 1, 2, 0, 0}, /* dilation */
    {1, 2, 9, 8, 3, 2, 1, 2, 2, 2, 2, 1, 1, 2, 1, 0},
    {1, 2, 8, 8, 3, 3, 3, 3, 1, 1, 0, 0, 0, 0, 0, 1}, /* ceil mode */
    {1, 2, 8, 8, 3, 3, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1}, /* ceil mode past the input */
    {1, 2, 6, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1}, /* ceil mode past the padding */
    {1, 2, 6, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 1},
    {1, 2, 3, 3, 2, 2, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0}, /* windows wholly in padding */
    {1, 2, 3, 3, 2, 2, 1, 1, 1, 1, 2, 2, 2, 2, 1, 0},
    {2, 3, 5, 6, 5, 6, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0}, /* global */
    {1, 2, 10, 9, 3, 2, 3, 3, 1, 1, 1, 0, 1, 1, 0, 0},
    {1, 1, 1, 11, 1, 3, 1, 2, 1, 1, 0, 1, 0, 1, 1, 0}, /* 1-D */
};

/* Windows that hold only padding must give exactly 0, never NaN or leftovers. */
static void run_pool_all_padding(void) {
  pool_spec s = {1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 3, 3, 3, 3, 0, 0};
  pt_pool_params p = pool_params(&s);
  int64_t yn = (int64_t)p.OH * p.OW;
  float x[4] = {-3, -2, -5, -4}, *y = alloc_f(yn);
  int32_t *am = malloc(sizeof(int32_t) * yn);
  for (int max = 0; max < 2; max++)
    for (int incl = 0; incl < 2; incl++) {
      p.count_include_pad = incl;
      for (int64_t i = 0; i < yn; i++) y[i] = NAN;
      if (max)
        pt_maxpool_forward(y, am, x, &p);
      else
        pt_avgpool_forward(y, x, &p);
      /* (oh, ow) = (0, 0) covers padded rows -3..-2 only */
      CHECK(y[0] == 0.0f, "%s include_pad %d: all-padding window gives %g", max ? "max" : "avg",
            incl, y[0]);
      if (max) CHECK(am[0] == -1, "all-padding window argmax %d", am[0]);
      int finite = 1;
      for (int64_t i = 0; i < yn; i++) finite &= isfinite(y[i]) != 0;
      CHECK(finite, "%s include_pad %d: non-finite output", max ? "max" : "avg", incl);
      /* the window over (-1..0, -1..0) sees one real element; max of negatives ignores padding */
      int64_t o = 2 * p.OW + 2;
      if (max)
        CHECK(y[o] == -3.0f, "max with padding gives %g, want -3", y[o]);
      else
        CHECK(y[o] == (incl ? -3.0f / 4 : -3.0f), "avg include_pad %d gives %g", incl, y[o]);
    }
  /* a NaN in a window comes out of max, wherever it sits */
  float xn[4] = {1, NAN, 3, 2};
  p.count_include_pad = 0;
  pt_maxpool_forward(y, am, xn, &p);
  int64_t o = 3 * p.OW + 3; /* the window over the whole 2x2 input */
  CHECK(isnan(y[o]) && am[o] == 1, "max over a NaN gives %g (argmax %d)", y[o], am[o]);
  free(y), free(am);
}

/* Random shapes over every parameter at once, fixed seed; each gets the full treatment above. */
static int rnd(int lo, int hi) { /* uniform in [lo, hi] */
  return lo + (int)(pt_test_rand_u64(&seed) % (unsigned long long)(hi - lo + 1));
}

static conv_spec random_conv(int transpose) {
  for (;;) {
    conv_spec s = {0};
    int kind = rnd(0, 2); /* 0: plain, 1: groups, 2: depthwise */
    s.G = kind == 0 ? 1 : rnd(2, 3);
    int Cg = kind == 2 ? 1 : rnd(1, 3), OCg = rnd(1, 3);
    s.C = Cg * s.G, s.OC = OCg * s.G;
    s.N = rnd(1, 2), s.bias = rnd(0, 1);
    s.H = rnd(1, 9), s.W = rnd(1, 11);
    s.KH = rnd(1, 4), s.KW = rnd(1, 4), s.SH = rnd(1, 3), s.SW = rnd(1, 3);
    s.DH = rnd(1, 2), s.DW = rnd(1, 2);
    s.PT = rnd(0, 2), s.PL = rnd(0, 2), s.PB = rnd(0, 2), s.PR = rnd(0, 2);
    if (transpose) {
      s.oph = rnd(0, (s.SH > s.DH ? s.SH : s.DH) - 1);
      s.opw = rnd(0, (s.SW > s.DW ? s.SW : s.DW) - 1);
    }
    pt_conv_params p = conv_params(&s, transpose);
    int eh = s.H + s.PT + s.PB - s.DH * (s.KH - 1) - 1,
        ew = s.W + s.PL + s.PR - s.DW * (s.KW - 1) - 1;
    if (!transpose && (eh < 0 || ew < 0)) continue;
    if (p.OH < 1 || p.OW < 1) continue;
    return s;
  }
}

static pool_spec random_pool(void) {
  for (;;) {
    pool_spec s = {0};
    s.N = rnd(1, 2), s.C = rnd(1, 3), s.H = rnd(1, 9), s.W = rnd(1, 9);
    s.KH = rnd(1, 4), s.KW = rnd(1, 4), s.SH = rnd(1, 3), s.SW = rnd(1, 3);
    s.DH = rnd(1, 2), s.DW = rnd(1, 2);
    s.PT = rnd(0, 2), s.PL = rnd(0, 2), s.PB = rnd(0, 2), s.PR = rnd(0, 2);
    s.include_pad = rnd(0, 1), s.ceil = rnd(0, 1);
    int eh = s.H + s.PT + s.PB - s.DH * (s.KH - 1) - 1,
        ew = s.W + s.PL + s.PR - s.DW * (s.KW - 1) - 1;
    if (eh < 0 || ew < 0) continue;
    return s;
  }
}

int main(void) {
  pt_blas_init();
  for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++) run_conv(&conv_cases[i], 0);
  for (size_t i = 0; i < sizeof convt_cases / sizeof convt_cases[0]; i++)
    run_conv(&convt_cases[i], 1);
  for (int i = 0; i < 40; i++) {
    conv_spec s = random_conv(0);
    run_conv(&s, 0);
  }
  for (int i = 0; i < 40; i++) {
    conv_spec s = random_conv(1);
    run_conv(&s, 1);
  }
  for (size_t i = 0; i < sizeof conv_large / sizeof conv_large[0]; i++)
    run_conv_large(&conv_large[i], 0);
  for (size_t i = 0; i < sizeof convt_large / sizeof convt_large[0]; i++)
    run_conv_large(&convt_large[i], 1);

  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int mode = 0; mode <= PT_GEMM_C_FULL; mode++)
        run_gemm(5, 7, 4, ta, tb, 0.7f, 1.3f, (pt_gemm_c)mode);
  run_gemm(1, 10, 20, 0, 1, 1.0f, 1.0f, PT_GEMM_C_ROW); /* a Linear layer */
  run_gemm(3, 4, 6, 1, 0, 1.0f, 0.0f, PT_GEMM_C_FULL);  /* beta 0: C ignored */

  run_matmul(1, 3, 4, 5, 0, 0);
  run_matmul(3, 2, 4, 3, 0, 1);
  run_matmul(3, 2, 4, 3, 1, 0);
  run_matmul(2, 3, 5, 4, 0, 0);
  run_matmul(4, 1, 5, 3, 0, 1);
  run_matmul(3, 4, 1, 2, 1, 1);

  for (size_t i = 0; i < sizeof pool_cases / sizeof pool_cases[0]; i++) {
    run_pool(&pool_cases[i], 1);
    run_pool(&pool_cases[i], 0);
  }
  for (int i = 0; i < 40; i++) {
    pool_spec s = random_pool();
    run_pool(&s, 1);
    run_pool(&s, 0);
  }
  run_pool_all_padding();
  PT_TEST_END();
}
