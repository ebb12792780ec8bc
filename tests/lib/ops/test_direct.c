/* The direct forward of stride-1 convolutions with few taps (lib/cpu/direct.c) against a plain
 * seven-loop convolution: the benchmark networks' first layers and heads, every kernel size up
 * to 5x5 and 3x5, asymmetric and zero padding, rows of whole vectors read in place and rows with
 * a partial last vector (1 to 33 columns), output channels in and past blocks of 16, batch 2,
 * with and without bias; with the ReLU folded in (NaN passed on); the scratch it asks for is all
 * it writes; conv.c's forward and the executor's plan (its ReLU folded) take this path for such
 * layers; the shapes it refuses. */
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
                const int iy = oy + kh - p->PT, ix = ox + kw - p->PL;
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
  CHECK(worst < 1e-5, "%s: largest error %.3g", what, worst);
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
    relu_ok = relu_ok && (isnan(r) ? isnan(got[i]) : fabsf(got[i] - r) < 1e-5f);
  }
  CHECK(relu_ok, "%s: with the ReLU and a NaN input", what);
  float *all[] = {x, w, b, want, got, via_conv, scratch, cs};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

int main(void) {
  const struct {
    pt_conv_params p;
    const char *what;
  } cases[] = {
      {conv_test_shape(1, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1, true), "small's first layer"},
      {conv_test_shape(1, 3, 64, 64, 32, 5, 5, 2, 2, 2, 2, true), "large's first layer"},
      {conv_test_shape(1, 3, 64, 64, 32, 3, 3, 1, 1, 1, 1, true), "residual's first layer"},
      {conv_test_shape(1, 16, 32, 32, 10, 1, 1, 0, 0, 0, 0, true), "small's head (read in place)"},
      {conv_test_shape(1, 32, 64, 64, 10, 1, 1, 0, 0, 0, 0, true), "large's head (read in place)"},
      {conv_test_shape(1, 3, 20, 32, 16, 3, 3, 0, 0, 0, 0, false), "no padding, 30 columns"},
      {conv_test_shape(1, 2, 12, 34, 20, 3, 3, 0, 0, 0, 0, true),
       "no padding, 32 columns: in place"},
      {conv_test_shape(2, 3, 9, 17, 33, 3, 5, 2, 0, 1, 3, true),
       "3x5, asymmetric pads, batch 2, 33 ch"},
      {conv_test_shape(1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, false), "one pixel, one channel"},
      {conv_test_shape(1, 1, 5, 5, 16, 5, 5, 0, 0, 0, 0, true), "one output pixel"},
      {conv_test_shape(2, 4, 7, 7, 17, 3, 3, 1, 1, 1, 1, true), "7 columns, 17 output channels"},
      {conv_test_shape(1, 8, 16, 16, 8, 3, 3, 2, 2, 0, 1, false), "8 channels, pads 2,2,0,1"},
      {conv_test_shape(1, 80, 16, 16, 24, 1, 1, 0, 0, 0, 0, true), "80 taps, the most it takes"},
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

  pt_conv_params no[] = {conv_test_shape(1, 3, 16, 16, 16, 3, 3, 1, 1, 1, 1, true),
                         conv_test_shape(1, 3, 16, 16, 16, 3, 3, 1, 1, 1, 1, true),
                         conv_test_shape(1, 4, 16, 16, 16, 3, 3, 1, 1, 1, 1, true),
                         conv_test_shape(1, 9, 16, 16, 16, 3, 3, 1, 1, 1, 1, true)};
  no[0].SH = no[0].SW = 2, no[0].OH = no[0].OW = 8;  /* stride 2 */
  no[1].DH = no[1].DW = 2, no[1].OH = no[1].OW = 14; /* dilation 2 */
  no[2].G = 2;                                       /* groups */
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
    CHECK(!pt_direct_fits(&no[i]), "shape %zu (stride 2, dilation 2, groups, 81 taps) refused", i);
  PT_TEST_END();
}
