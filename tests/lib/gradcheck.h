/* Central finite-difference check of a layer's backward.
 *
 * A case owns its input buffers (activations and weights) and output buffer and provides forward
 * and backward callbacks that call the layer functions. The check uses the scalar
 * L = sum_i out_i * r_i with a fixed random r: backward receives dout = r, and each input element's
 * analytic gradient is compared with (L(x + h) - L(x - h)) / 2h accumulated in double. Inputs whose
 * gradient is not wanted are skipped. Prints the worst normalised error per input. */
#ifndef PT_GRADCHECK_H
#define PT_GRADCHECK_H

#include <math.h>
#include <string.h>
#include "pt_test.h"

#define GC_MAX_IN 8

typedef struct gc_case gc_case;
struct gc_case {
  char name[160];
  int n_in;
  float *in[GC_MAX_IN];   /* input buffers (filled by the caller) */
  int64_t in_n[GC_MAX_IN];
  int want[GC_MAX_IN];    /* 1: check this input's gradient */
  float *out;
  int64_t out_n;
  void (*forward)(gc_case *c);
  /* Must ADD gradients into din[i] (NULL where want[i] is 0) given dout. */
  void (*backward)(gc_case *c, const float *dout, float **din);
  void *p; /* the layer's parameters, for the callbacks */
  double tol; /* max normalised error allowed; default 2e-2 */
  float h;    /* step; default 1e-2 */
};

static double gc_loss(gc_case *c, const float *r) {
  c->forward(c);
  double s = 0;
  for (int64_t i = 0; i < c->out_n; i++) s += (double)c->out[i] * (double)r[i];
  return s;
}

/* Runs the check; returns the worst normalised error seen and records a CHECK per input. */
static double gc_run(gc_case *c) {
  unsigned long long seed = 0x9e3779b97f4a7c15ULL;
  float h = c->h > 0 ? c->h : 1e-2f;
  double tol = c->tol > 0 ? c->tol : 2e-2;
  float *r = malloc(sizeof(float) * c->out_n);
  for (int64_t i = 0; i < c->out_n; i++) r[i] = pt_test_uniform(&seed, -1.0f, 1.0f);
  float *din[GC_MAX_IN] = {0};
  for (int k = 0; k < c->n_in; k++)
    if (c->want[k]) din[k] = calloc(c->in_n[k], sizeof(float));
  c->forward(c);
  c->backward(c, r, din);
  double worst_all = 0;
  for (int k = 0; k < c->n_in; k++) {
    if (!c->want[k]) continue;
    double worst = 0, scale = 1e-3;
    int64_t worst_i = -1;
    double worst_num = 0, worst_ana = 0;
    /* normalise by the largest gradient magnitude, as in ggml's backend tests */
    for (int64_t i = 0; i < c->in_n[k]; i++) scale = fmax(scale, fabs(din[k][i]));
    for (int64_t i = 0; i < c->in_n[k]; i++) {
      float x0 = c->in[k][i];
      c->in[k][i] = x0 + h;
      double lp = gc_loss(c, r);
      c->in[k][i] = x0 - h;
      double lm = gc_loss(c, r);
      c->in[k][i] = x0;
      double num = (lp - lm) / (2.0 * (double)h);
      double e = fabs(num - din[k][i]) / scale;
      if (e > worst) {
        worst = e;
        worst_i = i;
        worst_num = num;
        worst_ana = din[k][i];
      }
    }
    printf("%-60s input %d: worst normalised error %.2e (n=%lld)\n", c->name, k, worst,
           (long long)c->in_n[k]);
    CHECK(worst <= tol, "%s input %d element %lld: numeric %.6g analytic %.6g (error %.3g > %.3g)",
          c->name, k, (long long)worst_i, worst_num, worst_ana, worst, tol);
    worst_all = fmax(worst_all, worst);
  }
  c->forward(c);
  for (int k = 0; k < c->n_in; k++) free(din[k]);
  free(r);
  return worst_all;
}

/* Fills n floats uniformly in [lo, hi). */
static void gc_fill(float *x, int64_t n, unsigned long long *seed, float lo, float hi) {
  for (int64_t i = 0; i < n; i++) x[i] = pt_test_uniform(seed, lo, hi);
}

#endif
