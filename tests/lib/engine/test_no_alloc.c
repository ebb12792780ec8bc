/* No allocation per frame: after a warm-up, pushing and popping frames (inference and training,
 * one and two stages, threaded, float and raw frames) calls no allocator at all, in any thread.
 *
 * That holds for the engine and the CPU kernels; oneDNN's primitive execution builds its argument
 * map on the heap at every call. The strict check runs, with the default kernels: smallnet.onnx
 * (argv[1]'s directory), whose layers are the kinds of the benchmark network `small`: a first
 * layer and a head on cpu/direct.c, F(4x4, 3x3) layers between them, their gradients on
 * cpu/direct.c too, also cut through a layer across two stages; and the built-in models, whose
 * small layers (strided, transposed, 16 -> 32 on 16x16) run on cpu/direct.c whole and whose
 * Linear layers' products over one term pt_sgemm computes itself. None of them calls oneDNN, in
 * inference or in training. It runs builtin:classifier with PARTIME_DNNL=0 (OpenBLAS's products)
 * as well.
 *
 * The test binary interposes malloc and friends (glibc's __libc_* entry points do the work) and
 * counts calls while a flag is up. Sanitizers interpose the allocator themselves: under them the
 * test exits 77. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <partime/stream.h>
#include "pt_test.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PT_SANITIZED 1
#endif
#endif

#ifndef PT_SANITIZED
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
void *memalign(size_t a, size_t n);

static atomic_bool counting;
static atomic_long allocations;

static void count(void) {
  if (atomic_load_explicit(&counting, memory_order_relaxed))
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
}

void *malloc(size_t n) {
  count();
  return __libc_malloc(n);
}
void *calloc(size_t n, size_t m) {
  count();
  return __libc_calloc(n, m);
}
void *realloc(void *p, size_t n) {
  count();
  return __libc_realloc(p, n);
}
void *aligned_alloc(size_t a, size_t n) {
  count();
  return __libc_memalign(a, n);
}
void *memalign(size_t a, size_t n) {
  count();
  return __libc_memalign(a, n);
}
int posix_memalign(void **p, size_t a, size_t n) {
  count();
  *p = __libc_memalign(a, n);
  return *p ? 0 : 12; /* ENOMEM */
}
void free(void *p) {
  __libc_free(p);
}

/* Converts a raw RGB byte frame into the model's floats (as the element's converter would). */
static void to_float(void *user, const void *raw, size_t n, float *input) {
  const unsigned char *b = raw;
  for (size_t i = 0; i < n && i < *(size_t *)user; i++) input[i] = b[i] / 255.0f;
}

/* 250 frames after the warm-up, on model cut by balance (or the partitioner's cut): no allocation.
 */
static void run_cut(const char *model, int D, const char *balance, bool train, bool raw) {
  pt_model *m = NULL;
  pt_error err;
  pt_error_clear(&err);
  if (pt_model_load(model, &m, &err)) {
    CHECK(0, "%s: %s", model, err.msg);
    return;
  }
  pt_shape ish = pt_model_input_shape(m);
  size_t in = (size_t)pt_shape_numel(&ish);
  pt_stream_opts o;
  pt_stream_opts_init(&o);
  o.stages = D;
  o.balance = balance;
  o.train.enabled = train;
  o.train.loss = train ? PT_LOSS_CROSS_ENTROPY : PT_LOSS_NONE;
  if (raw) {
    o.preprocess = to_float;
    o.preprocess_user = &in;
    o.raw_bytes = in;
  }
  pt_stream *s = NULL;
  if (pt_stream_new(m, &o, &s, &err)) {
    CHECK(0, "%s: %s", model, err.msg);
    pt_model_free(m);
    return;
  }
  float *x = calloc(in, sizeof *x);
  unsigned char *bytes = calloc(in, 1);
  pt_result r;
  long before = 0;
  int popped = 0;
  for (int t = 0; t < 300; t++) {
    if (t == 50) { /* warmed up: from here on nothing may allocate */
      before = atomic_load(&allocations);
      atomic_store(&counting, true);
    }
    x[t % in] += 0.01f;
    bytes[t % in]++;
    pt_target tg = {.class_index = t % 10};
    pt_status st =
        raw ? pt_stream_push_raw(s, bytes, in, &tg, NULL) : pt_stream_push(s, x, &tg, NULL);
    CHECK(st == PT_OK, "push: %s", pt_stream_last_error(s));
    while (pt_stream_pop(s, &r) == PT_OK) popped++;
  }
  atomic_store(&counting, false);
  long n = atomic_load(&allocations) - before;
  CHECK(n == 0, "%s, %d stage(s), %s, %s frames: %ld allocations in 250 frames", model, D,
        train ? "training" : "inference", raw ? "raw" : "float", n);
  CHECK(popped >= 300 - D, "%d results", popped);
  pt_stream_drain(s);
  pt_stream_free(s);
  pt_model_free(m);
  free(x);
  free(bytes);
}

static void run(const char *model, int D, bool train, bool raw) {
  run_cut(model, D, D == 2 ? "3,-1" : NULL, train, raw);
}
#endif

int main(int argc, char **argv) {
#ifdef PT_SANITIZED
  (void)argc;
  (void)argv;
  printf("skipped: the sanitizer owns the allocator here\n");
  return 77;
#else
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODELS_DIR\n", argv[0]);
    return 2;
  }
  char smallnet[4096];
  snprintf(smallnet, sizeof smallnet, "%s/smallnet.onnx", argv[1]);
  unsetenv("PARTIME_DNNL"); /* the default kernels */
  for (int D = 1; D <= 2; D++)
    for (int train = 0; train < 2; train++) {
      run(smallnet, D, train, false);
      run(smallnet, D, train, true);
    }
  /* a cut through a 16-channel 3x3 layer, as the partitioner makes on `small`: its halves have 8
   * output channels, on cpu/direct.c forward and backward */
  for (int train = 0; train < 2; train++) run_cut(smallnet, 2, "4+8,-1", train, false);
  const char *builtins[] = {"builtin:autoencoder", "builtin:classifier"};
  for (int k = 0; k < 2; k++)
    for (int D = 1; D <= 2; D++)
      for (int train = 0; train < 2; train++) {
        run(builtins[k], D, train, false);
        run(builtins[k], D, train, true);
      }
  setenv("PARTIME_DNNL", "0", 1);
  for (int D = 1; D <= 2; D++)
    for (int train = 0; train < 2; train++) {
      run("builtin:classifier", D, train, false);
      run("builtin:classifier", D, train, true);
    }
  PT_TEST_END();
#endif
}
