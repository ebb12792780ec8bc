/* OpenBLAS's kernels against the CPU: a stream reports, once per process, that OpenBLAS runs its
 * generic kernels on a CPU with AVX2 or AVX-512, and names the OPENBLAS_CORETYPE that fits.
 *
 * Usage: test_blas MODELS_DIR generic|fit, run with OPENBLAS_CORETYPE=Prescott (generic) or
 * Haswell (fit) in the environment: OpenBLAS reads it as it loads. */
#include <cblas.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <partime/partime.h>
#include "cpu/ops.h"
#include "pt_test.h"

static int warnings;
static char last[PT_ERROR_MAX];

static void on_log(void *user, pt_log_level lvl, const char *msg) {
  (void)user;
  if (lvl == PT_LOG_WARNING && strstr(msg, "OpenBLAS")) {
    warnings++;
    snprintf(last, sizeof last, "%s", msg);
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
  REQUIRE(argc == 3 && (!strcmp(argv[2], "generic") || !strcmp(argv[2], "fit")),
          "usage: test_blas MODELS_DIR generic|fit");
  bool generic = !strcmp(argv[2], "generic");
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
  if (generic) {
    char want[64];
    snprintf(want, sizeof want, "OPENBLAS_CORETYPE=%s", fit);
    CHECK(warnings == 1, "one warning for two streams (%d)", warnings);
    CHECK(strstr(last, want) && strstr(last, "Prescott"), "the warning names the fix: %s", last);
  } else {
    CHECK(warnings == 0, "no warning when the kernels fit (%d: %s)", warnings, last);
  }
  pt_model_free(m);
  PT_TEST_END();
}
