/* OpenBLAS's kernels against the CPU. Where OpenBLAS runs its generic kernels on a CPU with AVX2 or
 * AVX-512, the library's matrix products go to oneDNN's sgemm (when built with oneDNN), which a
 * stream notes once per process; without oneDNN, or with PARTIME_SGEMM=openblas, a stream warns
 * once and names the OPENBLAS_CORETYPE that fits. pt_sgemm is checked against a plain product in
 * whichever library it uses.
 *
 * Usage: test_blas MODELS_DIR generic|generic-openblas|fit, run with OPENBLAS_CORETYPE=Prescott
 * (generic) or Haswell (fit) in the environment: OpenBLAS reads it as it loads. */
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <partime/partime.h>
#include "cpu/dnnl_conv.h"
#include "cpu/ops.h"
#include "cpu/sgemm.h"
#include "pt_test.h"

static int warnings, notes;
static char last[PT_ERROR_MAX];

static void on_log(void *user, pt_log_level lvl, const char *msg) {
  (void)user;
  if (!strstr(msg, "OpenBLAS")) return;
  if (lvl == PT_LOG_WARNING) warnings++;
  if (lvl == PT_LOG_INFO) notes++;
  snprintf(last, sizeof last, "%s", msg);
}

/* pt_sgemm against a plain triple loop, every transpose, with alpha and beta (2, and 0 over a
 * NaN, which is not read), on shapes like the kernels' (a 1x1 head, an im2col product, a Linear
 * layer's weights' gradient at batch 1: a sum over one term). */
static void check_sgemm(void) {
  const int shapes[][3] = {{10, 1024, 16}, {16, 257, 144}, {1, 7, 3}, {64, 2048, 1}, {5, 3, 1}};
  unsigned long long seed = 11;
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
    const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N);
    float *c = malloc(sizeof(float) * M * N), *want = malloc(sizeof(float) * M * N);
    for (int i = 0; i < M * K; i++) a[i] = pt_test_uniform(&seed, -1.f, 1.f);
    for (int i = 0; i < K * N; i++) b[i] = pt_test_uniform(&seed, -1.f, 1.f);
    for (int t = 0; t < 8; t++) {
      const bool ta = t & 1, tb = t & 2;
      const float beta = t & 4 ? 0.0f : 2.0f;
      for (int i = 0; i < M * N; i++) c[i] = want[i] = beta ? (float)(i % 7) - 3.f : NAN;
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double acc = 0;
          for (int k = 0; k < K; k++)
            acc += (double)(ta ? a[k * M + i] : a[i * K + k]) * (tb ? b[j * K + k] : b[k * N + j]);
          want[i * N + j] = (float)(0.5 * acc + (beta ? beta * want[i * N + j] : 0.0));
        }
      pt_sgemm(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 0.5f, a,
               ta ? M : K, b, tb ? K : N, beta, c, N);
      double worst = 0;
      for (int i = 0; i < M * N; i++) worst = fmax(worst, fabs(c[i] - want[i]));
      CHECK(worst < 1e-4, "%s sgemm %dx%dx%d%s%s beta %g: max |error| %g", pt_sgemm_library(), M, N,
            K, ta ? " A^T" : "", tb ? " B^T" : "", beta, worst);
    }
    free(a);
    free(b);
    free(c);
    free(want);
  }
}

static bool open_close(pt_model *m) {
  pt_stream_opts o;
  pt_stream_opts_init(&o);
  o.log = on_log;
  pt_error err;
  pt_stream *s = NULL;
  if (pt_stream_new(m, &o, &s, &err)) {
    fprintf(stderr, "stream: %s\n", err.msg);
    return false;
  }
  pt_stream_free(s);
  return true;
}

int main(int argc, char **argv) {
  REQUIRE(argc == 3 && (!strcmp(argv[2], "generic") || !strcmp(argv[2], "generic-openblas") ||
                        !strcmp(argv[2], "fit")),
          "usage: test_blas MODELS_DIR generic|generic-openblas|fit");
  bool generic = strncmp(argv[2], "generic", 7) == 0;
  /* where the products go when OpenBLAS's kernels are generic: oneDNN unless told otherwise */
  bool onednn = generic && strcmp(argv[2], "generic-openblas") != 0 && pt_dnnl_available();
  const char *fit = pt_blas_fitting_core();
  if (!fit) {
    /* no AVX2: OpenBLAS's generic kernels are the fitting ones, and Haswell's would not run */
    printf("this CPU has no AVX2: nothing to report\n");
    return 77;
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/convnet.onnx", argv[1]);
  pt_model *m = NULL;
  pt_error err;
  REQUIRE(pt_model_load(path, &m, &err) == PT_OK, "loading %s: %s", path, err.msg);

  const char *better = NULL, *core = pt_blas_slow_kernels(&better);
  const char *asked = getenv("OPENBLAS_CORETYPE"), *loaded = openblas_get_corename();
  if (!asked || !loaded || strcasecmp(asked, loaded) != 0) {
    /* an OpenBLAS built for one CPU ignores OPENBLAS_CORETYPE: nothing to choose, nothing to say */
    printf("OpenBLAS loaded %s kernels, not the %s asked for: it cannot switch them\n",
           loaded ? loaded : "unnamed", asked ? asked : "(none)");
    pt_model_free(m);
    return 77;
  }
  if (generic) {
    CHECK(core && !strcmp(core, "Prescott"), "OpenBLAS's Prescott kernels are generic (%s)",
          core ? core : "none reported");
    CHECK(better && !strcmp(better, fit), "the fitting kernels are %s (%s)", fit,
          better ? better : "none");
  } else {
    CHECK(!core, "Haswell's kernels fit a CPU with AVX2 (reported %s)", core ? core : "");
  }
  REQUIRE(open_close(m) && open_close(m), "two streams open");
  CHECK(strcmp(pt_sgemm_library(), onednn ? "oneDNN" : "OpenBLAS") == 0,
        "matrix products on %s (%s)", onednn ? "oneDNN" : "OpenBLAS", pt_sgemm_library());
  if (onednn) {
    CHECK(warnings == 0 && notes == 1, "one note, no warning, for two streams (%d, %d)", notes,
          warnings);
    CHECK(strstr(last, "Prescott") && strstr(last, "oneDNN's sgemm"), "the note says so: %s", last);
  } else if (generic) {
    char want[64];
    snprintf(want, sizeof want, "OPENBLAS_CORETYPE=%s", fit);
    CHECK(warnings == 1, "one warning for two streams (%d)", warnings);
    CHECK(strstr(last, want) && strstr(last, "Prescott"), "the warning names the fix: %s", last);
  } else {
    CHECK(warnings == 0 && notes == 0, "nothing to say when the kernels fit (%d, %d: %s)", warnings,
          notes, last);
  }
  check_sgemm();
  pt_model_free(m);
  PT_TEST_END();
}
