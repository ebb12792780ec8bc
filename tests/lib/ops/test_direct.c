/* The direct forward of convolutions (lib/cpu/direct.c) against a plain seven-loop convolution: the
 * benchmark networks' first layers and heads, 80 to 800 taps, every kernel size up to 5x5 and 3x5,
 * asymmetric and zero padding, rows of whole vectors read in place and rows with a partial last
 * vector (1 to 33 columns), output channels in and past blocks of 16, batch 2, with and without
 * bias; with the ReLU folded in (NaN passed on); the scratch it asks for is all it writes; conv.c's
 * forward and the executor's plan (its ReLU folded) take this path for such layers; the shapes it
 * refuses.
 *
 * Its gradients likewise, against the sums written out in double: the input's and the weights',
 * added into what the gradients held (the accumulate rule), on the same kinds of layer and on
 * 16-channel 3x3 layers, taps in one block or several, one or two blocks of 16 output channels
 * at once, partial blocks of input and output channels, 1x1 layers (their own weights' kernel)
 * with a partial last vector of pixels; conv.c's backward runs them where its rule says they
 * suit; the executor's rule leaves them off oneDNN where they keep pace with it.
 *
 * Strided layers, forward and gradients: the autoencoder's, phases of the input gradient with no
 * taps or negative pads, strides 3x2 and 1x3. ConvTranspose (the input gradient of a convolution)
 * on the same kernels, output padding included, and conv.c's ConvTranspose running them. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu/ops.h"
#include "conv_test.h"
#include "cpu/dnnl_conv.h"
#include "pt_test.h"

static unsigned long long seed = 0x2545f4914f6cdd1dULL;

static float *random_f(int64_t n) {
  return conv_test_random(&seed, n);
}

/* In double, term by term. */
static void reference(float *y, const float *x, const float *w, const float *b,
                      const pt_conv_params *p) {
  for (int n = 0; n < p->N; n++)
    for (int oc = 0; oc < p->OC; oc++)
      for (int oy = 0; oy < p->OH; oy++)
        for (int ox = 0; ox < p->OW; ox++) {
          double s = p->has_bias ? b[oc] : 0;
          for (int c = 0; c < p->C; c++)
            for (int kh = 0; kh < p->KH; kh++)
              for (int kw = 0; kw < p->KW; kw++) {
                const int iy = oy * p->SH + kh - p->PT, ix = ox * p->SW + kw - p->PL;
                if (iy < 0 || iy >= p->H || ix < 0 || ix >= p->W) continue;
                s += (double)x[(((size_t)n * p->C + c) * p->H + iy) * p->W + ix] *
                     w[(((size_t)oc * p->C + c) * p->KH + kh) * p->KW + kw];
              }
          y[(((size_t)n * p->OC + oc) * p->OH + oy) * p->OW + ox] = (float)s;
        }
}

static void check(const pt_conv_params *p, const char *what) {
  CHECK(pt_direct_fits(p), "%s: fits", what);
  const int64_t nx = (int64_t)p->N * p->C * p->H * p->W, nw = (int64_t)p->OC * p->C * p->KH * p->KW,
                ny = (int64_t)p->N * p->OC * p->OH * p->OW, ns = pt_direct_scratch(p);
  float *x = random_f(nx), *w = random_f(nw), *b = random_f(p->OC),
        *want = malloc(sizeof(float) * ny), *got = malloc(sizeof(float) * ny),
        *via_conv = malloc(sizeof(float) * ny);
  /* a canary after the scratch it asks for */
  float *scratch = malloc(sizeof(float) * (size_t)(ns + 64));
  for (int i = 0; i < 64; i++) scratch[ns + i] = 1234.5f;
  for (int64_t i = 0; i < ny; i++) got[i] = NAN; /* every output is written */
  reference(want, x, w, b, p);
  pt_direct_forward(got, x, w, b, p, false, scratch);
  double worst = 0;
  for (int64_t i = 0; i < ny; i++) {
    const double e = fabs((double)got[i] - want[i]);
    if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
  }
  /* float rounding grows with the taps summed: 1e-5 up to 80 of them */
  const double tol = 1e-5 * (1.0 + (double)p->C * p->KH * p->KW / 80.0);
  CHECK(worst < tol, "%s: largest error %.3g", what, worst);
  bool canary = true;
  for (int i = 0; i < 64; i++) canary = canary && scratch[ns + i] == 1234.5f;
  CHECK(canary, "%s: nothing written past its %lld floats of scratch", what, (long long)ns);
  float *cs = malloc(sizeof(float) * (size_t)pt_conv2d_scratch(p));
  pt_conv2d_forward(via_conv, x, w, b, p, cs);
  CHECK(memcmp(via_conv, got, sizeof(float) * (size_t)ny) == 0,
        "%s: conv.c's forward runs it (bit-identical)", what);
  /* with the ReLU: max(0, y), and a NaN in the input comes out as NaN where it reaches */
  x[0] = NAN;
  reference(want, x, w, b, p);
  pt_direct_forward(got, x, w, b, p, true, scratch);
  bool relu_ok = true;
  for (int64_t i = 0; i < ny; i++) {
    const float r = isnan(want[i]) ? NAN : want[i] > 0 ? want[i] : 0.0f;
    relu_ok = relu_ok && (isnan(r) ? isnan(got[i]) : fabsf(got[i] - r) < tol);
  }
  CHECK(relu_ok, "%s: with the ReLU and a NaN input", what);
  float *all[] = {x, w, b, want, got, via_conv, scratch, cs};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* The gradients in double, and beside each the sum of its terms' magnitudes (the error's scale). */
static void reference_grads(double *dx, double *sx, double *dw, double *sw, const float *x,
                            const float *w, const float *dy, const pt_conv_params *p) {
  for (int n = 0; n < p->N; n++)
    for (int oc = 0; oc < p->OC; oc++)
      for (int oy = 0; oy < p->OH; oy++)
        for (int ox = 0; ox < p->OW; ox++) {
          const double g = dy[(((size_t)n * p->OC + oc) * p->OH + oy) * p->OW + ox];
          for (int c = 0; c < p->C; c++)
            for (int kh = 0; kh < p->KH; kh++)
              for (int kw = 0; kw < p->KW; kw++) {
                const int iy = oy * p->SH + kh - p->PT, ix = ox * p->SW + kw - p->PL;
                if (iy < 0 || iy >= p->H || ix < 0 || ix >= p->W) continue;
                const size_t xi = (((size_t)n * p->C + c) * p->H + iy) * p->W + ix,
                             wi = (((size_t)oc * p->C + c) * p->KH + kh) * p->KW + kw;
                dx[xi] += g * w[wi], sx[xi] += fabs(g * w[wi]);
                dw[wi] += g * x[xi], sw[wi] += fabs(g * x[xi]);
              }
        }
}

/* got (which started as start) against start + want, each error within a few float roundings of
 * its terms' magnitudes. */
static bool grad_ok(const float *got, const float *start, const double *want, const double *scale,
                    int64_t n, const char *what, const char *which) {
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    const double e = fabs((double)got[i] - (start[i] + want[i])) / (1e-5 * scale[i] + 1e-6);
    if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
  }
  CHECK(worst <= 1, "%s: %s off by %.3g of its bound", what, which, worst);
  return worst <= 1;
}

/* Both gradient kernels on p, whatever the rule; then conv.c's backward, which runs each kernel
 * where the rule says it suits and the matrix path elsewhere. */
static void check_grads(const pt_conv_params *p, const char *what) {
  const bool data = pt_direct_data_suits(p), weights = pt_direct_weights_suit(p);
  CHECK(pt_direct_grad_fits(p), "%s: gradients fit", what);
  const int64_t nx = (int64_t)p->N * p->C * p->H * p->W, nw = (int64_t)p->OC * p->C * p->KH * p->KW,
                ny = (int64_t)p->N * p->OC * p->OH * p->OW, ns = pt_direct_grad_scratch(p);
  float *x = random_f(nx), *w = random_f(nw), *dy = random_f(ny);
  float *dx0 = random_f(nx), *dw0 = random_f(nw); /* what the gradients held before */
  float *dx = malloc(sizeof(float) * nx), *dw = malloc(sizeof(float) * nw);
  double *rdx = calloc(nx, sizeof(double)), *sdx = calloc(nx, sizeof(double)),
         *rdw = calloc(nw, sizeof(double)), *sdw = calloc(nw, sizeof(double));
  float *scratch = malloc(sizeof(float) * (size_t)(ns + 64));
  for (int i = 0; i < 64; i++) scratch[ns + i] = 1234.5f;
  reference_grads(rdx, sdx, rdw, sdw, x, w, dy, p);
  memcpy(dw, dw0, sizeof(float) * nw);
  pt_direct_backward_weights(dw, dy, x, p, scratch);
  grad_ok(dw, dw0, rdw, sdw, nw, what, "weights' gradient");
  memcpy(dx, dx0, sizeof(float) * nx);
  pt_direct_backward_data(dx, dy, w, p, scratch);
  grad_ok(dx, dx0, rdx, sdx, nx, what, "input gradient");
  bool canary = true;
  for (int i = 0; i < 64; i++) canary = canary && scratch[ns + i] == 1234.5f;
  CHECK(canary, "%s: gradients write nothing past their %lld floats of scratch", what,
        (long long)ns);
  /* conv.c's backward: each gradient here where it suits */
  float *cdx = malloc(sizeof(float) * nx), *cdw = malloc(sizeof(float) * nw);
  float *cs = malloc(sizeof(float) * (size_t)pt_conv2d_scratch(p));
  memcpy(cdx, dx0, sizeof(float) * nx);
  memcpy(cdw, dw0, sizeof(float) * nw);
  pt_conv2d_backward(cdx, cdw, NULL, dy, x, w, p, cs);
  if (weights)
    CHECK(memcmp(cdw, dw, sizeof(float) * (size_t)nw) == 0,
          "%s: conv.c's backward runs the weights' gradient (bit-identical)", what);
  else
    grad_ok(cdw, dw0, rdw, sdw, nw, what, "conv.c's weights' gradient");
  if (data)
    CHECK(memcmp(cdx, dx, sizeof(float) * (size_t)nx) == 0,
          "%s: conv.c's backward runs the input gradient (bit-identical)", what);
  else
    grad_ok(cdx, dx0, rdx, sdx, nx, what, "conv.c's input gradient");
  float *all[] = {x, w, dy, dx0, dw0, dx, dw, scratch, cdx, cdw, cs};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
  double *alld[] = {rdx, sdx, rdw, sdw};
  for (size_t i = 0; i < sizeof alld / sizeof alld[0]; i++) free(alld[i]);
}

/* base with dilation 2, and with two groups: no[0..1], which no kernel here takes. */
static void unfit(pt_conv_params no[2], pt_conv_params base) {
  for (int i = 0; i < 2; i++) no[i] = base;
  no[0].DH = no[0].DW = 2;
  no[0].OH = base.H + base.PT + base.PB - 2 * (base.KH - 1);
  no[0].OW = base.W + base.PL + base.PR - 2 * (base.KW - 1);
  no[1].G = 2;
}

/* base at strides SH x SW, its output shrunk to match. */
static pt_conv_params strided(pt_conv_params base, int SH, int SW) {
  base.SH = SH;
  base.SW = SW;
  base.OH = (base.H + base.PT + base.PB - base.KH) / SH + 1;
  base.OW = (base.W + base.PL + base.PR - base.KW) / SW + 1;
  return base;
}

/* A ConvTranspose t (weights (C, OC, KH, KW)) against the convolution c it is the input gradient
 * of (C and OC, H and OH, W and OW swapped): its output is c's input gradient of t's input, its
 * input gradient c's output of t's output gradient, its weights' gradient c's with those two.
 * All three in double (reference_grads, reference), against the kernels and conv.c. */
static void check_transpose(const pt_conv_params *t, const char *what) {
  pt_conv_params c = *t;
  c.C = t->OC, c.H = t->OH, c.W = t->OW, c.OC = t->C, c.OH = t->H, c.OW = t->W;
  c.has_bias = false;
  CHECK(pt_direct_transpose_fits(t), "%s: fits", what);
  const int64_t nx = (int64_t)t->N * t->C * t->H * t->W, nw = (int64_t)t->C * t->OC * t->KH * t->KW,
                ny = (int64_t)t->N * t->OC * t->OH * t->OW, ns = pt_direct_transpose_scratch(t);
  float *x = random_f(nx), *w = random_f(nw), *b = random_f(t->OC), *dy = random_f(ny);
  float *dx0 = random_f(nx), *dw0 = random_f(nw), *y = malloc(sizeof(float) * ny);
  float *dx = malloc(sizeof(float) * nx), *dw = malloc(sizeof(float) * nw);
  float *scratch = malloc(sizeof(float) * (size_t)(ns + 64));
  for (int i = 0; i < 64; i++) scratch[ns + i] = 1234.5f;
  double *ry = calloc(ny, sizeof(double)), *sy = calloc(ny, sizeof(double)),
         *rw = calloc(nw, sizeof(double)), *sw = calloc(nw, sizeof(double)),
         *rx = calloc(nx, sizeof(double)), *sx = calloc(nx, sizeof(double));
  float *want_dx = malloc(sizeof(float) * nx), *y0 = malloc(sizeof(float) * ny);
  /* out: c's input gradient of x, on the bias */
  reference_grads(ry, sy, rw, sw, dy, w, x, &c);
  for (int64_t i = 0; i < ny; i++) y0[i] = t->has_bias ? b[i / (t->OH * t->OW) % t->OC] : 0.0f;
  for (int64_t i = 0; i < ny; i++) y[i] = NAN;
  pt_direct_transpose_forward(y, x, w, b, t, scratch);
  grad_ok(y, y0, ry, sy, ny, what, "ConvTranspose's output");
  /* dw: c's weights' gradient, input dy and output gradient x (rw above) */
  memcpy(dw, dw0, sizeof(float) * nw);
  memcpy(dx, dx0, sizeof(float) * nx);
  pt_direct_transpose_backward(dx, dw, dy, x, w, t, scratch);
  grad_ok(dw, dw0, rw, sw, nw, what, "ConvTranspose's weights' gradient");
  /* dx: c's output of dy */
  reference(want_dx, dy, w, NULL, &c);
  for (int64_t i = 0; i < nx; i++) rx[i] = (double)want_dx[i], sx[i] = fabs(want_dx[i]) + 1.0;
  grad_ok(dx, dx0, rx, sx, nx, what, "ConvTranspose's input gradient");
  bool canary = true;
  for (int i = 0; i < 64; i++) canary = canary && scratch[ns + i] == 1234.5f;
  CHECK(canary, "%s: nothing written past its %lld floats of scratch", what, (long long)ns);
  /* conv.c's ConvTranspose runs them */
  float *cs = malloc(sizeof(float) * (size_t)pt_conv_transpose2d_scratch(t));
  float *cy = malloc(sizeof(float) * ny), *cdx = malloc(sizeof(float) * nx),
        *cdw = malloc(sizeof(float) * nw);
  pt_conv_transpose2d_forward(cy, x, w, b, t, cs);
  memcpy(cdx, dx0, sizeof(float) * nx);
  memcpy(cdw, dw0, sizeof(float) * nw);
  pt_conv_transpose2d_backward(cdx, cdw, NULL, dy, x, w, t, cs);
  CHECK(memcmp(cy, y, sizeof(float) * ny) == 0 && memcmp(cdx, dx, sizeof(float) * nx) == 0 &&
            memcmp(cdw, dw, sizeof(float) * nw) == 0,
        "%s: conv.c's ConvTranspose runs the kernels (bit-identical)", what);
  float *all[] = {x, w, b, dy, dx0, dw0, y, dx, dw, scratch, want_dx, y0, cs, cy, cdx, cdw};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
  double *alld[] = {ry, sy, rw, sw, rx, sx};
  for (size_t i = 0; i < sizeof alld / sizeof alld[0]; i++) free(alld[i]);
}

/* ConvTranspose t: C -> OC channels, H x W in, kernel, strides, pads (top, left, bottom, right)
 * and output_padding op along both axes. */
static pt_conv_params convt(int N, int C, int H, int W, int OC, int KH, int KW, int SH, int SW,
                            int pt, int pl, int pb, int pr, int op, bool bias) {
  pt_conv_params t = conv_test_shape(N, C, H, W, OC, KH, KW, pt, pl, pb, pr, bias);
  t.SH = SH, t.SW = SW;
  t.OH = (H - 1) * SH + KH - pt - pb + op;
  t.OW = (W - 1) * SW + KW - pl - pr + op;
  return t;
}

typedef struct named {
  pt_conv_params p;
  const char *what;
} named;

int main(void) {
  /* the layers of the benchmark networks this file's kernels run: forward and gradients */
  const named nets[] = {
      {conv_test_shape(1, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1, true), "small's first layer"},
      {conv_test_shape(1, 3, 64, 64, 32, 5, 5, 2, 2, 2, 2, true), "large's first layer"},
      {conv_test_shape(1, 3, 64, 64, 32, 3, 3, 1, 1, 1, 1, true), "residual's first layer"},
      {conv_test_shape(1, 16, 32, 32, 10, 1, 1, 0, 0, 0, 0, true), "small's head (read in place)"},
      {conv_test_shape(1, 32, 64, 64, 10, 1, 1, 0, 0, 0, 0, true), "large's head (read in place)"},
  };
  for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
    check(&nets[i].p, nets[i].what);
    check_grads(&nets[i].p, nets[i].what);
  }
  const named cases[] = {
      {conv_test_shape(1, 3, 20, 32, 16, 3, 3, 0, 0, 0, 0, false), "no padding, 30 columns"},
      {conv_test_shape(1, 2, 12, 34, 20, 3, 3, 0, 0, 0, 0, true),
       "no padding, 32 columns: in place"},
      {conv_test_shape(2, 3, 9, 17, 33, 3, 5, 2, 0, 1, 3, true),
       "3x5, asymmetric pads, batch 2, 33 ch"},
      {conv_test_shape(1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, false), "one pixel, one channel"},
      {conv_test_shape(1, 1, 5, 5, 16, 5, 5, 0, 0, 0, 0, true), "one output pixel"},
      {conv_test_shape(2, 4, 7, 7, 17, 3, 3, 1, 1, 1, 1, true), "7 columns, 17 output channels"},
      {conv_test_shape(1, 8, 16, 16, 8, 3, 3, 2, 2, 0, 1, false), "8 channels, pads 2,2,0,1"},
      {conv_test_shape(1, 80, 16, 16, 24, 1, 1, 0, 0, 0, 0, true), "80 taps"},
      {conv_test_shape(1, 16, 32, 32, 8, 3, 3, 1, 1, 1, 1, true),
       "16->8 3x3: half of a 16-channel layer split across stages, 144 taps"},
      {conv_test_shape(1, 32, 13, 21, 40, 5, 5, 2, 1, 2, 3, true), "5x5 32->40, 800 taps"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check(&cases[i].p, cases[i].what);

  /* the executor's plan for a first layer runs it here, with its ReLU folded in */
  if (pt_dnnl_available()) {
    const pt_conv_params p = conv_test_shape(1, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1, true);
    pt_error err;
    pt_dnnl_conv *plan = pt_dnnl_conv_plan_create(
        &p, false, false, pt_dnnl_conv_preferred(&p, false) | PT_DNNL_JIT_ONLY | PT_DNNL_RELU,
        &err);
    CHECK(plan && strcmp(pt_dnnl_conv_impl(plan), "direct") == 0, "first layer's plan: %s",
          plan ? pt_dnnl_conv_impl(plan) : err.msg);
    if (plan) {
      const int64_t ny = (int64_t)p.OC * p.OH * p.OW;
      float *x = random_f((int64_t)p.C * p.H * p.W), *w = random_f((int64_t)p.OC * p.C * 9),
            *b = random_f(p.OC), *got = malloc(sizeof(float) * ny),
            *want = malloc(sizeof(float) * ny),
            *scratch = malloc(sizeof(float) * (size_t)pt_direct_scratch(&p));
      pt_dnnl_conv_forward(plan, got, x, w, b);
      pt_direct_forward(want, x, w, b, &p, true, scratch);
      CHECK(memcmp(got, want, sizeof(float) * (size_t)ny) == 0,
            "the plan's forward is the kernel's with the ReLU");
      float *all[] = {x, w, b, got, want, scratch};
      for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
    }
    pt_dnnl_conv_plan_free(plan);
  }

  const named grads[] = {
      {conv_test_shape(1, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, true), "small's 16->16 3x3"},
      {conv_test_shape(2, 17, 9, 13, 33, 3, 5, 2, 0, 1, 3, true),
       "3x5, asymmetric pads, batch 2, 17 -> 33 ch"},
      {conv_test_shape(1, 32, 12, 7, 40, 5, 5, 2, 2, 2, 2, false),
       "5x5 32 -> 40 ch on 12x7: taps in 6 blocks, channel blocks 2 + 1"},
      {conv_test_shape(1, 16, 5, 5, 16, 5, 5, 0, 0, 0, 0, true), "one output pixel"},
      {conv_test_shape(1, 24, 11, 19, 1, 3, 3, 1, 1, 1, 1, true), "one output channel"},
      {conv_test_shape(2, 7, 5, 7, 3, 1, 1, 0, 0, 0, 0, true),
       "1x1 7 -> 3 ch on 5x7 (35 pixels), batch 2"},
      {conv_test_shape(1, 17, 9, 16, 11, 1, 1, 0, 0, 0, 0, false), "1x1 17 -> 11 ch on 9x16"},
      {conv_test_shape(2, 20, 6, 18, 24, 1, 1, 0, 0, 0, 0, true),
       "1x1 20 -> 24 ch, batch 2: conv.c's matrix product"},
  };
  for (size_t i = 0; i < sizeof grads / sizeof grads[0]; i++)
    check_grads(&grads[i].p, grads[i].what);
  /* strided: the forward reads its input split into column phases; the input gradient runs as
   * one stride-1 convolution per phase of the input (some of them empty, or with negative pads),
   * interleaved into it */
  const named steps[] = {
      {strided(conv_test_shape(1, 3, 64, 64, 16, 3, 3, 1, 1, 1, 1, true), 2, 2),
       "builtin:autoencoder's first layer, 3x3 s2"},
      {strided(conv_test_shape(1, 16, 32, 32, 32, 3, 3, 1, 1, 1, 1, true), 2, 2),
       "builtin:autoencoder's 16->32 3x3 s2"},
      {strided(conv_test_shape(2, 17, 9, 11, 5, 1, 1, 0, 0, 0, 0, true), 2, 2),
       "1x1 s2 17->5 on 9x11, batch 2: phases without taps"},
      {strided(conv_test_shape(1, 20, 13, 15, 18, 3, 3, 2, 2, 0, 1, false), 2, 2),
       "3x3 s2 pads 2,2,0,1 on 13x15: phases padded by -1"},
      {strided(conv_test_shape(2, 6, 14, 37, 33, 5, 4, 2, 1, 1, 3, true), 3, 2),
       "5x4 strides 3x2, asymmetric pads, 33 ch, batch 2"},
      {strided(conv_test_shape(1, 16, 8, 8, 16, 2, 2, 0, 0, 0, 0, true), 2, 2),
       "2x2 s2 on 8x8: no overlap"},
      {strided(conv_test_shape(1, 4, 11, 10, 7, 3, 3, 1, 0, 1, 2, true), 1, 3), "3x3 strides 1x3"},
      {strided(conv_test_shape(1, 3, 6, 5, 4, 3, 2, 1, 0, 1, 1, true), 1000, 1000),
       "strides 1000x1000, past the input: one output pixel"},
  };
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    check(&steps[i].p, steps[i].what);
    check_grads(&steps[i].p, steps[i].what);
  }
  /* a stride wider than the input costs no scratch for the columns it skips (a fuzzed model:
   * 1 x 20971519 had asked for 88 GB) */
  const pt_conv_params far =
      strided(conv_test_shape(1, 3, 6, 5, 4, 3, 2, 0, 0, 16, 0, true), 1, 20971519);
  check(&far, "3x2 strides 1x20971519, pads 0,0,16,0");
  CHECK(pt_conv2d_scratch(&far) < 100000 && pt_direct_grad_scratch(&steps[7].p) < 100000,
        "strides past the input: scratch %lld and %lld floats", (long long)pt_conv2d_scratch(&far),
        (long long)pt_direct_grad_scratch(&steps[7].p));
  const named transposes[] = {
      {convt(1, 32, 16, 16, 16, 4, 4, 2, 2, 1, 1, 1, 1, 0, true),
       "builtin:autoencoder's ConvTranspose 4x4 s2 32->16"},
      {convt(1, 16, 32, 32, 3, 4, 4, 2, 2, 1, 1, 1, 1, 0, true),
       "builtin:autoencoder's ConvTranspose 4x4 s2 16->3: few output channels"},
      {convt(2, 5, 7, 9, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, false),
       "3x3 s2, output padding 1, batch 2: taps 2 and 1 per phase"},
      {convt(1, 17, 6, 11, 18, 3, 5, 1, 3, 0, 2, 1, 4, 0, true),
       "3x5 strides 1x3, asymmetric pads, 17 -> 18 ch"},
      {convt(1, 1, 3, 3, 2, 3, 3, 3, 1000, 0, 0, 0, 0, 1, true),
       "3x3 strides 3x1000, output padding 1: columns no tap reaches"},
  };
  for (size_t i = 0; i < sizeof transposes / sizeof transposes[0]; i++)
    check_transpose(&transposes[i].p, transposes[i].what);
  /* the executor's rule: those gradients stay off oneDNN, where cpu/wino.c does not take them */
  if (pt_dnnl_available()) {
    const pt_conv_params first = conv_test_shape(1, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1, true),
                         mid = conv_test_shape(1, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1, true),
                         wide = conv_test_shape(1, 32, 64, 64, 32, 3, 3, 1, 1, 1, 1, true);
    const unsigned grad_ops = PT_DNNL_BACKWARD_DATA | PT_DNNL_BACKWARD_WEIGHTS;
    CHECK(!(pt_dnnl_conv_preferred(&first, false) & grad_ops), "first layer's gradients: direct");
    CHECK(!(pt_dnnl_conv_preferred(&mid, false) & grad_ops), "16->16 3x3 gradients: direct");
    CHECK((pt_dnnl_conv_preferred(&wide, false) & grad_ops) == grad_ops,
          "32->32 3x3 gradients: left to the plan (Winograd)");
    const pt_conv_params deep = conv_test_shape(1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, true),
                         mid16 = conv_test_shape(1, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, true);
    CHECK((pt_dnnl_conv_preferred(&deep, false) & grad_ops) == grad_ops,
          "64->64 3x3 at 8x8 gradients: oneDNN, faster there");
    CHECK(pt_dnnl_conv_preferred(&mid16, false) == 0,
          "16->16 3x3 at 16x16: small, all on cpu/direct.c");
    /* small layers: the built-in models' (all on cpu/direct.c) against larger ones */
    const pt_conv_params cls = conv_test_shape(1, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1, true),
                         wide16 = conv_test_shape(1, 32, 16, 16, 32, 3, 3, 1, 1, 1, 1, true),
                         ae = strided(conv_test_shape(1, 16, 32, 32, 32, 3, 3, 1, 1, 1, 1, true), 2,
                                      2),
                         big = strided(conv_test_shape(1, 64, 56, 56, 128, 3, 3, 1, 1, 1, 1, true),
                                       2, 2),
                         aet = convt(1, 32, 16, 16, 16, 4, 4, 2, 2, 1, 1, 1, 1, 0, true),
                         bigt = convt(1, 64, 32, 32, 64, 4, 4, 2, 2, 1, 1, 1, 1, 0, true);
    CHECK(pt_dnnl_conv_preferred(&cls, false) == 0,
          "builtin:classifier's 16->32 3x3 at 16x16: all on cpu/direct.c");
    CHECK((pt_dnnl_conv_preferred(&wide16, false) & grad_ops) == grad_ops,
          "32->32 3x3 at 16x16 (2.4 M multiply-adds): gradients on oneDNN");
    CHECK(pt_dnnl_conv_preferred(&ae, false) == 0 && pt_dnnl_conv_preferred(&aet, true) == 0,
          "builtin:autoencoder's strided and transposed layers: all on cpu/direct.c");
    CHECK(pt_dnnl_conv_preferred(&big, false) != 0 && pt_dnnl_conv_preferred(&bigt, true) != 0,
          "larger strided and transposed layers: on oneDNN");
    const pt_conv_params pw16 = conv_test_shape(1, 16, 32, 32, 16, 1, 1, 0, 0, 0, 0, true);
    CHECK(pt_dnnl_conv_preferred(&pw16, false) & PT_DNNL_BACKWARD_WEIGHTS,
          "1x1 16->16 at 32x32 weights' gradient: oneDNN (no direct kernel suits)");
  }
  pt_conv_params nog[3];
  unfit(nog, conv_test_shape(1, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, true));
  nog[2] = conv_test_shape(1, 16, 16, 16, 16, 3, 3, 3, 1, 1, 1, true);
  for (size_t i = 0; i < 3; i++)
    CHECK(!pt_direct_grad_fits(&nog[i]),
          "gradients of shape %zu (dilation 2, groups, a pad of the kernel's size) refused", i);
  const pt_conv_params c15 = conv_test_shape(1, 15, 32, 32, 16, 3, 3, 1, 1, 1, 1, true),
                       w8 = conv_test_shape(1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, true),
                       pw = conv_test_shape(1, 64, 16, 16, 64, 1, 1, 0, 0, 0, 0, true);
  CHECK(pt_direct_weights_suit(&c15) && !pt_direct_data_suits(&c15),
        "15 input channels: the weights' gradient only");
  CHECK(pt_direct_weights_suit(&w8) && !pt_direct_data_suits(&w8),
        "rows of 8 pixels: the weights' gradient only");
  CHECK(pt_direct_grad_fits(&pw) && !pt_direct_weights_suit(&pw) && !pt_direct_data_suits(&pw),
        "1x1 64->64: neither (a plain matrix product)");

  pt_conv_params no[3];
  unfit(no, conv_test_shape(1, 3, 16, 16, 16, 3, 3, 1, 1, 1, 1, true));
  no[2] = conv_test_shape(1, 9, 16, 16, 16, 3, 3, 1, 1, 1, 1, true);
  for (size_t i = 0; i < 2; i++)
    CHECK(!pt_direct_fits(&no[i]), "shape %zu (dilation 2, groups) refused", i);
  CHECK(pt_direct_fits(&no[2]) && !pt_direct_few_taps(&no[2]) && pt_direct_few_taps(&nets[0].p),
        "81 taps: the kernel takes them, the executor's preference for few taps does not");
  PT_TEST_END();
}
