/* Losses and optimizer steps.
 *
 * Cross-entropy and MSE are checked against closed forms computed here in double and against finite
 * differences; SGD and Adam against hand-worked steps. When given a Python interpreter and
 * torch_optim_ref.py (as the meson test does), the script's PyTorch results are read from a pipe:
 * five-step SGD and Adam trajectories and loss values and gradients, each compared with relative
 * error <= 1e-5. Exits 77 (skipped) when PyTorch is missing and everything else passed.
 *
 * usage: test_loss_optim [PYTHON SCRIPT]   (or a single argument: a file the script wrote) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cpu/ops.h"
#include "gradcheck.h"

static unsigned long long seed = 0x2545f4914f6cdd1dULL;

/* ---- cross-entropy ---- */

typedef struct ce_case {
  int C;
  int64_t target;
  bool prob;
  float *g; /* (C) scratch for the loss gradient */
} ce_case;

static void ce_fwd(gc_case *c) {
  ce_case *k = c->p;
  c->out[0] = pt_cross_entropy(NULL, c->in[0], k->target, k->C, k->prob);
}
static void ce_bwd(gc_case *c, const float *dout, float **din) {
  ce_case *k = c->p;
  pt_cross_entropy(k->g, c->in[0], k->target, k->C, k->prob);
  for (int i = 0; i < k->C; i++) din[0][i] += dout[0] * k->g[i];
}

static void test_ce_logits(int C, int64_t target, float lo, float hi) {
  ce_case k = {C, target, false, calloc(C, sizeof(float))};
  float out;
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "cross-entropy logits C=%d target=%lld range %g..%g", C,
           (long long)target, lo, hi);
  c.n_in = 1;
  c.in[0] = calloc(C, sizeof(float));
  c.in_n[0] = C;
  c.want[0] = 1;
  c.out = &out;
  c.out_n = 1;
  c.forward = ce_fwd;
  c.backward = ce_bwd;
  c.p = &k;
  gc_fill(c.in[0], C, &seed, lo, hi);
  /* closed forms: log-sum-exp - x[t], and softmax - onehot */
  const float *x = c.in[0];
  double m = x[0], s = 0;
  for (int i = 1; i < C; i++) m = fmax(m, x[i]);
  for (int i = 0; i < C; i++) s += exp(x[i] - m);
  double want = m + log(s) - x[target];
  float *g = calloc(C, sizeof(float));
  for (int i = 0; i < C; i++) g[i] = 123.0f; /* the gradient is written, not added */
  float loss = pt_cross_entropy(g, x, target, C, false);
  CHECK(fabs(loss - want) <= 1e-5 * (1 + fabs(want)), "%s: loss %.9g, expected %.9g", c.name, loss,
        want);
  double worst = 0;
  for (int i = 0; i < C; i++) worst = fmax(worst, fabs(g[i] - (exp(x[i] - m) / s - (i == target))));
  CHECK(worst < 1e-6, "%s: gradient differs from softmax - onehot by %g", c.name, worst);
  if (hi - lo < 20) gc_run(&c);
  free(g);
  free(c.in[0]);
  free(k.g);
}

static void test_ce_probs(void) {
  enum { C = 6 };
  ce_case k = {C, 4, true, calloc(C, sizeof(float))};
  float out, p[C];
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "cross-entropy probabilities C=%d target=4", C);
  c.n_in = 1;
  c.in[0] = p;
  c.in_n[0] = C;
  c.want[0] = 1;
  c.out = &out;
  c.out_n = 1;
  c.forward = ce_fwd;
  c.backward = ce_bwd;
  c.p = &k;
  c.h = 1e-3f;
  double s = 0;
  for (int i = 0; i < C; i++) s += p[i] = pt_test_uniform(&seed, 0.5f, 1.5f);
  for (int i = 0; i < C; i++) p[i] = (float)(p[i] / s);
  float g[C];
  for (int i = 0; i < C; i++) g[i] = 9.0f;
  float loss = pt_cross_entropy(g, p, 4, C, true);
  CHECK(fabs(loss + log(p[4])) < 1e-6, "%s: loss %g, expected %g", c.name, loss, -log(p[4]));
  int ok = 1;
  for (int i = 0; i < C; i++) ok &= i == 4 ? fabs(g[i] + 1.0 / p[4]) < 1e-5 : g[i] == 0.0f;
  CHECK(ok, "%s: gradient is not -1/p at the target and 0 elsewhere", c.name);
  gc_run(&c);

  /* Softmax then cross-entropy on probabilities matches cross-entropy on the logits. */
  float logits[C], prob[C], dprob[C], dlog[C] = {0}, dref[C];
  gc_fill(logits, C, &seed, -2.0f, 2.0f);
  pt_softmax_params sp = {1, C, 1, false};
  pt_softmax_forward(prob, logits, &sp);
  float l1 = pt_cross_entropy(dprob, prob, 2, C, true);
  pt_softmax_backward(dlog, dprob, prob, &sp);
  float l2 = pt_cross_entropy(dref, logits, 2, C, false);
  double worst = 0;
  for (int i = 0; i < C; i++) worst = fmax(worst, fabs(dlog[i] - dref[i]));
  CHECK(fabsf(l1 - l2) < 1e-5f && worst < 1e-5,
        "softmax + probability cross-entropy: loss %g vs "
        "%g, gradient error %g",
        l1, l2, worst);

  /* a probability of 0 gives a large but finite loss and gradient */
  float z[3] = {0.0f, 1.0f, 0.0f}, gz[3];
  float lz = pt_cross_entropy(gz, z, 0, 3, true);
  CHECK(isfinite(lz) && lz > 20.0f && isfinite(gz[0]) && gz[0] < 0 && gz[1] == 0.0f,
        "cross-entropy of probability 0: loss %g gradient %g", lz, gz[0]);
  free(k.g);
}

static void test_ce_edges(void) {
  /* logits far apart, the largest last: finite loss, no NaN in the gradient */
  float x[3] = {0.0f, -1000.0f, 1000.0f}, g[3];
  float l = pt_cross_entropy(g, x, 1, 3, false);
  CHECK(fabsf(l - 2000.0f) < 1e-2f && fabsf(g[2] - 1.0f) < 1e-6f && fabsf(g[1] + 1.0f) < 1e-6f &&
            g[0] >= 0.0f && g[0] < 1e-30f,
        "cross-entropy of extreme logits: loss %g gradient %g %g %g", l, g[0], g[1], g[2]);
  /* targets outside [0, C) are ignored: loss 0, gradient zeroed */
  const int64_t bad[] = {-1, 3, 1000000};
  for (int k = 0; k < 3; k++) {
    float y[3] = {0.5f, 0.2f, 0.3f}, gy[3] = {7, 7, 7};
    float lb = pt_cross_entropy(gy, y, bad[k], 3, k == 1);
    CHECK(lb == 0.0f && gy[0] == 0.0f && gy[1] == 0.0f && gy[2] == 0.0f,
          "cross-entropy with target %lld: loss %g gradient %g %g %g", (long long)bad[k], lb, gy[0],
          gy[1], gy[2]);
  }
  /* no gradient wanted */
  float l2 = pt_cross_entropy(NULL, x, 1, 3, false);
  CHECK(l2 == l, "cross-entropy without gradient: %g vs %g", l2, l);
}

/* ---- mse ---- */

typedef struct mse_case {
  int64_t n;
  float *t, *g;
} mse_case;

static void mse_fwd(gc_case *c) {
  mse_case *k = c->p;
  c->out[0] = pt_mse(NULL, c->in[0], k->t, k->n);
}
static void mse_bwd(gc_case *c, const float *dout, float **din) {
  mse_case *k = c->p;
  pt_mse(k->g, c->in[0], k->t, k->n);
  for (int64_t i = 0; i < k->n; i++) din[0][i] += dout[0] * k->g[i];
}

static void test_mse(int64_t n) {
  mse_case k = {n, calloc(n, sizeof(float)), calloc(n, sizeof(float))};
  float out;
  gc_case c = {0};
  snprintf(c.name, sizeof c.name, "mse n=%lld", (long long)n);
  c.n_in = 1;
  c.in[0] = calloc(n, sizeof(float));
  c.in_n[0] = n;
  c.want[0] = 1;
  c.out = &out;
  c.out_n = 1;
  c.forward = mse_fwd;
  c.backward = mse_bwd;
  c.p = &k;
  gc_fill(c.in[0], n, &seed, -2.0f, 2.0f);
  gc_fill(k.t, n, &seed, -2.0f, 2.0f);
  double want = 0;
  for (int64_t i = 0; i < n; i++) want += ((double)c.in[0][i] - k.t[i]) * (c.in[0][i] - k.t[i]);
  want /= (double)n;
  for (int64_t i = 0; i < n; i++) k.g[i] = 5.0f;
  float loss = pt_mse(k.g, c.in[0], k.t, n);
  CHECK(fabs(loss - want) <= 1e-6 * (1 + want), "%s: loss %.9g, expected %.9g", c.name, loss, want);
  double worst = 0;
  for (int64_t i = 0; i < n; i++)
    worst = fmax(worst, fabs(k.g[i] - 2.0 * (c.in[0][i] - k.t[i]) / (double)n));
  CHECK(worst < 1e-6, "%s: gradient differs from 2(y - t)/n by %g", c.name, worst);
  gc_run(&c);
  free(c.in[0]);
  free(k.t);
  free(k.g);
}

/* ---- optimizers, by hand ---- */

static void test_optim_by_hand(void) {
  /* SGD, momentum 0.9, weight decay 0.1, lr 0.1, gradient 0.5 twice:
   * g' = 0.6, m = 0.6, w = 0.94; g' = 0.594, m = 1.134, w = 0.8266 */
  float w = 1.0f, g = 0.5f, m = 0.0f;
  pt_sgd_step(&w, &g, &m, 1, 0.1f, 0.9f, 0.1f);
  CHECK(fabsf(w - 0.94f) < 1e-6f && fabsf(m - 0.6f) < 1e-6f, "sgd step 1: w %g m %g", w, m);
  pt_sgd_step(&w, &g, &m, 1, 0.1f, 0.9f, 0.1f);
  CHECK(fabsf(w - 0.8266f) < 1e-6f && fabsf(m - 1.134f) < 1e-6f, "sgd step 2: w %g m %g", w, m);
  /* no momentum buffer needed without momentum */
  float w2[2] = {1.0f, -2.0f}, g2[2] = {0.25f, -0.5f};
  pt_sgd_step(w2, g2, NULL, 2, 0.2f, 0.0f, 0.0f);
  CHECK(w2[0] == 0.95f && w2[1] == -1.9f, "plain sgd: %g %g", w2[0], w2[1]);
  /* Adam's first step moves each weight by lr * g / (|g| + eps): about lr against the gradient */
  float wa[3] = {0.5f, -0.5f, 2.0f}, ga[3] = {0.3f, -4.0f, 1e-3f}, ma[3] = {0}, va[3] = {0};
  pt_adam_step(wa, ga, ma, va, 3, 0.01f, 0.9f, 0.999f, 1e-8f, 0.0f, 1);
  const float wa_want[3] = {0.49f, -0.49f, 1.99f};
  double worst = 0;
  for (int i = 0; i < 3; i++) worst = fmax(worst, fabs(wa[i] - wa_want[i]));
  CHECK(worst < 2e-7, "adam step 1: %.9g %.9g %.9g", wa[0], wa[1], wa[2]);
  CHECK(fabsf(ma[0] - 0.03f) < 1e-7f && fabsf(va[1] - 0.016f) < 1e-5f,
        "adam moments after step 1: m %g v %g", ma[0], va[1]);
}

/* ---- PyTorch references ---- */

static int read_floats(FILE *f, const char *tag, float *x, int64_t n) {
  char t[16];
  if (fscanf(f, "%15s", t) != 1 || strcmp(t, tag) != 0) return 0;
  for (int64_t i = 0; i < n; i++)
    if (fscanf(f, "%f", &x[i]) != 1) return 0;
  return 1;
}

static double rel_err(const float *a, const float *b, int64_t n) {
  double e = 0;
  for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)a[i] - b[i]) / fabs((double)b[i]));
  return e;
}

/* Gradients can be 0 or tiny (a softmax far from the target): normalise by the largest. */
static double norm_err(const float *a, const float *b, int64_t n) {
  double e = 0, s = 1e-30;
  for (int64_t i = 0; i < n; i++) s = fmax(s, fabs(b[i]));
  for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)a[i] - b[i]) / s);
  return e;
}

static int check_optim(FILE *f) {
  char name[64], kind[16];
  int n, steps;
  float lr, momentum, wd, b1, b2, eps;
  if (fscanf(f, "%63s %15s %d %d %f %f %f %f %f %f", name, kind, &n, &steps, &lr, &momentum, &wd,
             &b1, &b2, &eps) != 10 ||
      n <= 0 || n > 4096 || steps <= 0)
    return 0;
  float *w = calloc(n, sizeof(float)), *g = calloc(n, sizeof(float));
  float *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
  float *want = calloc(n, sizeof(float));
  int ok = read_floats(f, "w0", w, n);
  double worst = 0;
  for (int t = 1; ok && t <= steps; t++) {
    ok = read_floats(f, "g", g, n) && read_floats(f, "w", want, n);
    if (!ok) break;
    if (strcmp(kind, "sgd") == 0)
      pt_sgd_step(w, g, m, n, lr, momentum, wd);
    else
      pt_adam_step(w, g, m, v, n, lr, b1, b2, eps, wd, t);
    double e = rel_err(w, want, n);
    CHECK(e <= 1e-5, "torch %s step %d: relative error %.3g", name, t, e);
    worst = fmax(worst, e);
  }
  if (ok) printf("torch %-20s %d steps: worst relative error %.2e\n", name, steps, worst);
  free(w);
  free(g);
  free(m);
  free(v);
  free(want);
  return ok;
}

static int check_ce(FILE *f) {
  int C;
  long long target;
  float want;
  if (fscanf(f, "%d %lld %f", &C, &target, &want) != 3 || C <= 0 || C > 4096) return 0;
  float *x = calloc(C, sizeof(float)), *d = calloc(C, sizeof(float)), *g = calloc(C, sizeof(float));
  int ok = read_floats(f, "x", x, C) && read_floats(f, "d", d, C);
  if (ok) {
    float l = pt_cross_entropy(g, x, target, C, false);
    double e = fabs((double)l - want) / fabs((double)want), eg = norm_err(g, d, C);
    printf("torch cross-entropy C=%-3d loss relative error %.2e, gradient %.2e\n", C, e, eg);
    CHECK(e <= 1e-5 && eg <= 1e-5,
          "torch cross-entropy C=%d: loss %.9g vs %.9g, gradient error "
          "%.3g",
          C, l, want, eg);
  }
  free(x);
  free(d);
  free(g);
  return ok;
}

static int check_mse(FILE *f) {
  int n;
  float want;
  if (fscanf(f, "%d %f", &n, &want) != 2 || n <= 0 || n > 1 << 20) return 0;
  float *x = calloc(n, sizeof(float)), *t = calloc(n, sizeof(float));
  float *d = calloc(n, sizeof(float)), *g = calloc(n, sizeof(float));
  int ok = read_floats(f, "x", x, n) && read_floats(f, "t", t, n) && read_floats(f, "d", d, n);
  if (ok) {
    float l = pt_mse(g, x, t, n);
    double e = fabs((double)l - want) / fabs((double)want), eg = norm_err(g, d, n);
    printf("torch mse n=%-4d loss relative error %.2e, gradient %.2e\n", n, e, eg);
    CHECK(e <= 1e-5 && eg <= 1e-5, "torch mse n=%d: loss %.9g vs %.9g, gradient error %.3g", n, l,
          want, eg);
  }
  free(x);
  free(t);
  free(d);
  free(g);
  return ok;
}

/* Returns 1 when the references were checked, 0 when PyTorch is missing. */
static int check_torch(FILE *f) {
  char tag[32];
  int n_optim = 0, n_ce = 0, n_mse = 0, ended = 0, skipped = 0;
  while (!ended && fscanf(f, "%31s", tag) == 1) {
    int ok = 1;
    if (strcmp(tag, "optim") == 0) {
      ok = check_optim(f);
      n_optim += ok;
    } else if (strcmp(tag, "ce") == 0) {
      ok = check_ce(f);
      n_ce += ok;
    } else if (strcmp(tag, "mse") == 0) {
      ok = check_mse(f);
      n_mse += ok;
    } else if (strcmp(tag, "end") == 0) {
      ended = 1;
    } else if (strcmp(tag, "skip") == 0) {
      char why[256] = "";
      if (!fgets(why, sizeof why, f)) why[0] = 0;
      printf("PyTorch references skipped:%s", why);
      skipped = 1;
      break;
    } else {
      ok = 0;
    }
    CHECK(ok, "malformed reference record '%s'", tag);
    if (!ok) break;
  }
  if (skipped) return 0;
  CHECK(ended && n_optim >= 7 && n_ce >= 3 && n_mse >= 3,
        "incomplete references: end %d, %d optimizer runs, %d cross-entropy, %d mse", ended,
        n_optim, n_ce, n_mse);
  return 1;
}

/* Quotes s for the shell in single quotes. */
static void shell_quote(char *dst, size_t n, const char *s) {
  size_t k = 0;
  if (k < n - 1) dst[k++] = '\'';
  for (; *s && k + 5 < n; s++) {
    if (*s == '\'') {
      memcpy(dst + k, "'\\''", 4);
      k += 4;
    } else {
      dst[k++] = *s;
    }
  }
  if (k < n - 1) dst[k++] = '\'';
  dst[k] = 0;
}

int main(int argc, char **argv) {
  test_ce_logits(7, 3, -3.0f, 3.0f);
  test_ce_logits(2, 0, -1.0f, 1.0f);
  test_ce_logits(1, 0, -1.0f, 1.0f);
  test_ce_logits(100, 99, -50.0f, 50.0f);
  test_ce_probs();
  test_ce_edges();
  test_mse(1);
  test_mse(13);
  test_mse(1000);
  test_optim_by_hand();

  int torch_checked = 0;
  if (argc == 3) {
    char cmd[4096], q1[2000], q2[2000];
    shell_quote(q1, sizeof q1, argv[1]);
    shell_quote(q2, sizeof q2, argv[2]);
    snprintf(cmd, sizeof cmd, "%s %s", q1, q2);
    FILE *f = popen(cmd, "r");
    REQUIRE(f != NULL, "cannot run %s", cmd);
    torch_checked = check_torch(f);
    int st = pclose(f);
    CHECK(st == 0, "%s exited with status %d", cmd, st);
  } else if (argc == 2) {
    FILE *f = fopen(argv[1], "r");
    REQUIRE(f != NULL, "cannot open %s", argv[1]);
    torch_checked = check_torch(f);
    fclose(f);
  } else {
    printf("no PyTorch references given (usage: %s [PYTHON SCRIPT | FILE])\n", argv[0]);
  }
  if (!torch_checked && pt_test_failed == 0) {
    printf("%d passed, 0 failed (PyTorch comparison skipped)\n", pt_test_passed);
    return 77;
  }
  PT_TEST_END();
}
