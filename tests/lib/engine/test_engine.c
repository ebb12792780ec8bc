/* The engine's contracts (DESIGN §3, §4, §8): the tick schedule, the lag of the training rule,
 * threaded runs bit-identical to the single-threaded schedule, D = 1 equal to plain online
 * SGD / Adam, drain / flush / save, and the divergence guard.
 *
 * Usage: test_engine MODELS_DIR (the models written by make_models.py). */
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <partime/partime.h>
#include "exec.h"
#include "graph.h"
#include "partition.h"
#include "stream_internal.h"
#include "pt_test.h"

static const char *dir;

static pt_model *load(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  pt_error err;
  pt_model *m = NULL;
  if (pt_model_load(path, &m, &err)) {
    fprintf(stderr, "loading %s: %s\n", path, err.msg);
    return NULL;
  }
  return m;
}

static pt_stream *open_stream(pt_model *m, int D, const char *balance, bool threaded, pt_loss loss,
                              pt_optimizer opt, float lr) {
  pt_stream_opts o;
  pt_stream_opts_init(&o);
  o.stages = D;
  o.balance = balance;
  o.threaded = threaded;
  o.train.enabled = loss != PT_LOSS_NONE;
  o.train.loss = loss;
  o.train.optimizer = opt;
  o.train.lr = lr;
  pt_error err;
  pt_stream *s = NULL;
  if (pt_stream_new(m, &o, &s, &err)) fprintf(stderr, "stream: %s\n", err.msg);
  return s;
}

static float *frames(int n, int64_t numel, unsigned long long seed) {
  float *f = malloc(sizeof(float) * n * numel);
  for (int64_t i = 0; i < n * numel; i++) f[i] = pt_test_uniform(&seed, -1.f, 1.f);
  return f;
}

/* Tick contract: after pushing frame k, pop gives frame k - D + 1, equal to the one-stage
 * network's output on it. */
static void test_tick_contract(void) {
  const int N = 12;
  pt_model *m = load("convnet.onnx");
  if (!m) return;
  int64_t in = m->vals[m->input].numel;
  int64_t on = m->vals[m->output].numel;
  float *x = frames(N, in, 7);
  float *ref = malloc(sizeof(float) * N * on);
  pt_stream *s1 = open_stream(m, 1, NULL, false, PT_LOSS_NONE, PT_OPT_SGD, 0);
  for (int t = 0; t < N; t++) {
    pt_result r;
    pt_stream_push(s1, x + t * in, NULL, NULL);
    CHECK(pt_stream_pop(s1, &r) == PT_OK && r.frame == t, "D=1 frame %d leaves at its own tick", t);
    memcpy(ref + t * on, r.output, sizeof(float) * on);
  }
  pt_stream_free(s1);
  const char *balances[] = {NULL, "auto", "5,-1", "2,3,-1", "2,2,2,-1"};
  for (int D = 1; D <= 4; D++)
    for (int threaded = 0; threaded <= 1; threaded++) {
      pt_stream *s = open_stream(m, D, balances[D], threaded, PT_LOSS_NONE, PT_OPT_SGD, 0);
      CHECK(s && pt_stream_depth(s) == D, "D=%d stream", D);
      if (!s) continue;
      int got = 0;
      for (int k = 0; k < N; k++) {
        pt_stream_push(s, x + k * in, NULL, (void *)(intptr_t)(k + 100));
        pt_result r;
        pt_status st = pt_stream_pop(s, &r);
        if (k < D - 1) {
          CHECK(st == PT_AGAIN, "D=%d threaded=%d: nothing leaves at tick %d", D, threaded, k);
        } else {
          int t = k - D + 1;
          CHECK(st == PT_OK && r.frame == t,
                "D=%d threaded=%d: frame %d leaves at tick %d (got %lld)", D, threaded, t, k,
                st == PT_OK ? (long long)r.frame : -1LL);
          if (st == PT_OK) {
            CHECK((intptr_t)r.user == t + 100, "user data travels with frame %d", t);
            CHECK(memcmp(r.output, ref + t * on, sizeof(float) * on) == 0,
                  "D=%d threaded=%d frame %d output equals the one-stage network's", D, threaded,
                  t);
            got++;
          }
        }
      }
      /* the stages work the last frame through to the end with no further push (the stage
       * threads get there on their own), yet it leaves only at its tick */
      pt_stream_stats ss;
      for (int w = 0; w < 10000; w++) {
        pt_stream_get_stats(s, &ss);
        if (ss.stage[D - 1].done == N + D - 1) break;
        usleep(1000);
      }
      CHECK(ss.stage[D - 1].done == N + D - 1,
            "D=%d threaded=%d: the last stage ran ahead to tick %d (done %lld)", D, threaded,
            N + D - 2, (long long)ss.stage[D - 1].done);
      pt_result early;
      CHECK(D == 1 || pt_stream_pop(s, &early) == PT_AGAIN,
            "D=%d threaded=%d: a frame worked ahead still waits for its tick", D, threaded);
      CHECK(pt_stream_in_flight(s) == D - 1, "D=%d: %d frames in flight before drain", D, D - 1);
      pt_stream_drain(s);
      pt_stream_get_stats(s, &ss);
      for (int j = 0; j < D; j++)
        CHECK(ss.stage[j].done == N + D - 1,
              "D=%d threaded=%d: after the drain stage %d finished %lld ticks, want %d (none "
              "beyond the last frame's)",
              D, threaded, j, (long long)ss.stage[j].done, N + D - 1);
      pt_result r;
      while (pt_stream_pop(s, &r) == PT_OK) {
        CHECK(r.frame == got && memcmp(r.output, ref + got * on, sizeof(float) * on) == 0,
              "D=%d drained frame %d in order and right", D, got);
        got++;
      }
      CHECK(got == N, "D=%d threaded=%d: all %d frames came out (%d)", D, threaded, N, got);
      pt_stream_free(s);
    }
  free(x);
  free(ref);
  pt_model_free(m);
}

/* Lag property: f_j(a) = w_j a, w_j = 1, loss out^2, weights frozen: dL/dw_j at tick k equals
 * 2 x_{k-j} x_{k-2(D-1)+j}; and bubbles never train. Stages run ahead of the pushes: once frame k
 * has entered, stage j has run tick k + j, the one that works on frame k (the same holds with
 * stage threads, the schedule's emulation is exact). */
static void test_lag(void) {
  for (int D = 2; D <= 4; D++) {
    char name[64];
    snprintf(name, sizeof name, "scalar_%d.onnx", D);
    pt_model *m = load(name);
    if (!m) continue;
    pt_stream *s = open_stream(m, D, NULL, false, PT_LOSS_MSE, PT_OPT_SGD, 0.0f);
    if (!s) continue;
    int wv[8];
    for (int j = 0; j < D; j++) {
      snprintf(name, sizeof name, "w%d", j);
      wv[j] = pt_graph_find_value(m, name);
    }
    const int K = 40;
    float x[40];
    unsigned long long seed = 99 + D;
    int checked = 0;
    for (int k = 0; k < K; k++) {
      x[k] = pt_test_uniform(&seed, 0.5f, 2.0f);
      float zero = 0;
      pt_target tg = {.tensor = &zero};
      pt_stream_push(s, &x[k], &tg, NULL);
      pt_result r;
      while (pt_stream_pop(s, &r) == PT_OK) {
      }
      pt_stream_stats st;
      pt_stream_get_stats(s, &st);
      for (int j = 0; j < D; j++) {
        int tk = k + j; /* stage j's last tick */
        CHECK(st.stage[j].done == tk + 1, "D=%d push %d: stage %d ran to tick %lld, want %d", D, k,
              j, (long long)st.stage[j].done - 1, tk);
        int a = tk - j, b = tk - 2 * (D - 1) + j;
        if (b < 0) continue;
        const float *g = pt_stream_param_grad(s, wv[j]);
        double want = 2.0 * x[a] * x[b];
        CHECK(g && fabs(g[0] - want) <= 1e-5 * fabs(want),
              "D=%d tick %d stage %d: dL/dw = %g, want 2 x_%d x_%d = %g", D, tk, j, g ? g[0] : NAN,
              a, b, want);
        checked++;
      }
    }
    /* stage j ran ticks 0 .. K-1+j and trained at those from 2(D-1) - j on, the first whose
     * gradient came from a real frame */
    pt_stream_stats st;
    pt_stream_get_stats(s, &st);
    for (int j = 0; j < D; j++)
      CHECK(st.stage[j].updates == K - 2 * (D - 1) + 2 * j,
            "D=%d stage %d trained %lld times in %d ticks, want %d (no bubble trains)", D, j,
            (long long)st.stage[j].updates, K + j, K - 2 * (D - 1) + 2 * j);
    CHECK(checked > 0, "lag checks ran");
    pt_stream_free(s);
    pt_model_free(m);
  }
}

typedef struct run_out {
  float *outputs, *losses;
  void *weights;
  size_t weights_size;
} run_out;

/* Pushes N frames of a drifting stream (targets for every loss) through s and drains it. */
static run_out run_frames(pt_model *m, pt_stream *s, int N, unsigned long long seed,
                          const char *what) {
  run_out ro = {0};
  int64_t in = m->vals[m->input].numel, on = m->vals[m->output].numel;
  float *x = frames(N, in, seed);
  ro.outputs = calloc(N, sizeof(float) * on);
  ro.losses = calloc(N, sizeof(float));
  int got = 0;
  pt_result r;
  for (int t = 0; t < N; t++) {
    /* a smoothly drifting stream: each frame a small step from the last */
    if (t)
      for (int64_t i = 0; i < in; i++)
        x[t * in + i] = 0.9f * x[(t - 1) * in + i] + 0.1f * x[t * in + i];
    pt_target tg = {.class_index = (t / 7) % (int)on};
    pt_stream_push(s, x + t * in, &tg, NULL);
    while (pt_stream_pop(s, &r) == PT_OK) {
      memcpy(ro.outputs + r.frame * on, r.output, sizeof(float) * on);
      ro.losses[r.frame] = r.loss;
      got++;
    }
  }
  pt_stream_drain(s);
  while (pt_stream_pop(s, &r) == PT_OK) {
    memcpy(ro.outputs + r.frame * on, r.output, sizeof(float) * on);
    ro.losses[r.frame] = r.loss;
    got++;
  }
  CHECK(got == N, "%s: %d of %d results", what, got, N);
  free(x);
  return ro;
}

static run_out run_stream(const char *model, int D, bool threaded, pt_loss loss, pt_optimizer opt,
                          int N, unsigned long long seed) {
  run_out ro = {0};
  pt_model *m = load(model);
  if (!m) return ro;
  char balance[32] = "auto";
  if (D > 1) { /* a fixed partition, so both runs cut alike */
    int per = m->n_nodes / D, len = 0;
    balance[0] = '\0';
    for (int j = 0; j < D - 1; j++)
      len += snprintf(balance + len, sizeof balance - len, "%d,", per);
    snprintf(balance + len, sizeof balance - len, "-1");
  }
  pt_stream *s =
      open_stream(m, D, balance, threaded, loss, opt, opt == PT_OPT_ADAM ? 1e-3f : 1e-2f);
  if (!s) {
    pt_model_free(m);
    return ro;
  }
  char what[96];
  snprintf(what, sizeof what, "%s D=%d", model, D);
  ro = run_frames(m, s, N, seed, what);
  pt_error err;
  pt_model_serialize(m, &ro.weights, &ro.weights_size, &err);
  pt_stream_free(s);
  pt_model_free(m);
  return ro;
}

static void free_run(run_out *r) {
  free(r->outputs);
  free(r->losses);
  free(r->weights);
}

/* Threads change nothing: outputs, losses and weights bit-identical to the sequential schedule. */
static void test_threaded_identical(void) {
  struct {
    const char *model;
    pt_loss loss;
    int out;
  } cases[] = {{"convnet.onnx", PT_LOSS_CROSS_ENTROPY, 10},
               {"residual.onnx", PT_LOSS_RECONSTRUCTION, 432}};
  const int N = 200;
  for (int c = 0; c < 2; c++)
    for (int D = 2; D <= 6; D += (D == 2 ? 1 : 3))
      for (int opt = 0; opt <= 1; opt++)
        for (unsigned long long seed = 1; seed <= 2; seed++) {
          run_out a = run_stream(cases[c].model, D, false, cases[c].loss, opt, N, seed);
          run_out b = run_stream(cases[c].model, D, true, cases[c].loss, opt, N, seed);
          bool ok = a.outputs && b.outputs &&
                    memcmp(a.outputs, b.outputs, sizeof(float) * N * cases[c].out) == 0 &&
                    memcmp(a.losses, b.losses, sizeof(float) * N) == 0 &&
                    a.weights_size == b.weights_size && a.weights_size > 0 &&
                    memcmp(a.weights, b.weights, a.weights_size) == 0;
          CHECK(ok, "%s D=%d %s seed %llu: threaded run bit-identical to sequential",
                cases[c].model, D, opt ? "adam" : "sgd", seed);
          /* and it learned something: the loss moved */
          CHECK(a.losses && isfinite(a.losses[N - 1]) && a.losses[N - 1] != a.losses[N / 2],
                "%s D=%d losses finite and changing", cases[c].model, D);
          free_run(&a);
          free_run(&b);
        }
}

/* Inference too: threaded runs of up to 6 stages give the sequential schedule's outputs. */
static void test_threaded_identical_inference(void) {
  const int N = 100;
  for (int D = 2; D <= 6; D += 4)
    for (unsigned long long seed = 1; seed <= 2; seed++) {
      run_out a = run_stream("residual.onnx", D, false, PT_LOSS_NONE, PT_OPT_SGD, N, seed);
      run_out b = run_stream("residual.onnx", D, true, PT_LOSS_NONE, PT_OPT_SGD, N, seed);
      CHECK(a.outputs && b.outputs && memcmp(a.outputs, b.outputs, sizeof(float) * N * 432) == 0,
            "residual D=%d seed %llu inference: threaded outputs bit-identical to sequential", D,
            seed);
      free_run(&a);
      free_run(&b);
    }
}

/* D = 1 is exact online SGD / Adam: compare with a plain loop over the executor. */
static void test_d1_online(void) {
  for (int opt = 0; opt <= 1; opt++) {
    const int N = 30;
    pt_model *ms = load("convnet.onnx"), *mp = load("convnet.onnx");
    if (!ms || !mp) return;
    float lr = opt ? 1e-3f : 1e-2f;
    pt_stream *s = open_stream(ms, 1, NULL, true, PT_LOSS_CROSS_ENTROPY, opt, lr);
    pt_exec x;
    pt_error err;
    pt_exec_init(&x, mp, 0, mp->n_nodes, true, false, &err);
    int64_t in = mp->vals[mp->input].numel;
    float *fr = frames(N, in, 5);
    float *mom[64] = {0}, *vel[64] = {0};
    for (int i = 0; i < x.n_params; i++) {
      mom[i] = calloc(mp->vals[x.params[i]].numel, sizeof(float));
      vel[i] = calloc(mp->vals[x.params[i]].numel, sizeof(float));
    }
    bool same = true;
    for (int t = 0; t < N; t++) {
      pt_target tg = {.class_index = t % 10};
      pt_stream_push(s, fr + t * in, &tg, NULL);
      pt_result r;
      pt_stream_pop(s, &r);
      pt_exec_bind(&x, mp->input, fr + t * in);
      pt_exec_forward(&x);
      pt_exec_zero_grad(&x);
      float loss = pt_cross_entropy(pt_exec_grad(&x, mp->output), pt_exec_act(&x, mp->output),
                                    t % 10, 10, false);
      pt_exec_backward(&x);
      for (int i = 0; i < x.n_params; i++) {
        pt_value *v = &mp->vals[x.params[i]];
        if (opt)
          pt_adam_step(v->data, pt_exec_grad(&x, x.params[i]), mom[i], vel[i], v->numel, lr, 0.9f,
                       0.999f, 1e-8f, 0, t + 1);
        else
          pt_sgd_step(v->data, pt_exec_grad(&x, x.params[i]), mom[i], v->numel, lr, 0.9f, 0);
      }
      same = same && r.loss == loss;
    }
    for (int i = 0; i < x.n_params; i++) {
      const pt_value *a = &ms->vals[x.params[i]], *b = &mp->vals[x.params[i]];
      same = same && memcmp(a->data, b->data, sizeof(float) * a->numel) == 0;
      free(mom[i]);
      free(vel[i]);
    }
    CHECK(same, "D=1 %s: stream losses and weights equal plain online training",
          opt ? "adam" : "sgd");
    pt_exec_free(&x);
    pt_stream_free(s);
    pt_model_free(ms);
    pt_model_free(mp);
    free(fr);
  }
}

/* Drain, push after drain, flush, save mid-training. */
static void test_drain_flush_save(void) {
  pt_model *m = load("convnet.onnx");
  if (!m) return;
  int64_t in = m->vals[m->input].numel;
  float *x = frames(20, in, 11);
  pt_stream *s = open_stream(m, 3, "4,4,-1", true, PT_LOSS_CROSS_ENTROPY, PT_OPT_SGD, 1e-2f);
  pt_result r;
  pt_target tg = {.class_index = 3};
  for (int t = 0; t < 5; t++) pt_stream_push(s, x + t * in, &tg, NULL);
  int n = 0;
  while (pt_stream_pop(s, &r) == PT_OK) n++;
  CHECK(n == 3, "3 of 5 frames out before drain (%d)", n);
  pt_stream_drain(s);
  while (pt_stream_pop(s, &r) == PT_OK) CHECK(r.frame == n++, "drained in order");
  CHECK(n == 5 && pt_stream_in_flight(s) == 0, "drain brings all 5 out (%d)", n);
  pt_stream_drain(s); /* a second drain has nothing to do */
  CHECK(pt_stream_pop(s, &r) == PT_AGAIN, "nothing after a second drain");
  for (int t = 5; t < 8; t++) pt_stream_push(s, x + t * in, &tg, NULL);
  CHECK(pt_stream_pop(s, &r) == PT_OK && r.frame == 5,
        "push after drain: frame 5 leaves D-1 ticks later");
  pt_stream_flush(s);
  CHECK(pt_stream_in_flight(s) == 0 && pt_stream_pop(s, &r) == PT_AGAIN,
        "flush drops what is in flight");
  pt_stream_push(s, x, &tg, NULL);
  pt_stream_push(s, x + in, &tg, NULL);
  pt_stream_push(s, x + 2 * in, &tg, NULL);
  CHECK(pt_stream_pop(s, &r) == PT_OK && r.frame == 0, "frames count from 0 again after flush");

  char path[] = "/tmp/pt-engine-save-XXXXXX";
  int fd = mkstemp(path);
  close(fd);
  CHECK(pt_stream_save(s, path) == PT_OK, "save during training: %s", pt_stream_last_error(s));
  pt_model *back = NULL;
  pt_error err;
  CHECK(pt_model_load(path, &back, &err) == PT_OK, "saved checkpoint loads: %s", err.msg);
  if (back) {
    bool same = true;
    for (int v = 0; v < m->n_vals; v++)
      if (m->vals[v].kind == PT_VAL_PARAM) {
        int bv = pt_graph_find_value(back, m->vals[v].name);
        same = same && bv >= 0 &&
               memcmp(m->vals[v].data, back->vals[bv].data, sizeof(float) * m->vals[v].numel) == 0;
      }
    CHECK(same, "the checkpoint holds the weights of the moment it was saved");
    pt_model_free(back);
  }
  unlink(path);
  CHECK(pt_stream_save(s, "/nonexistent-dir/x.onnx") == PT_ERR_IO &&
            strstr(pt_stream_last_error(s), "/nonexistent-dir/x.onnx"),
        "an unwritable checkpoint path is an I/O error naming it: %s", pt_stream_last_error(s));
  pt_stream_free(s);
  pt_model_free(m);
  free(x);
}

typedef struct snapshots {
  void *saved, *final; /* the checkpoint written mid-stream; the weights at the end */
  size_t saved_n, final_n;
} snapshots;

/* Trains 3 stages on 9 frames, saves, flushes the 2 frames in flight, trains on 6 more and
 * drains. */
static snapshots flush_save_run(bool threaded) {
  snapshots sn = {0};
  pt_model *m = load("convnet.onnx");
  if (!m) return sn;
  int64_t in = m->vals[m->input].numel;
  float *x = frames(15, in, 23);
  pt_stream *s = open_stream(m, 3, "4,4,-1", threaded, PT_LOSS_CROSS_ENTROPY, PT_OPT_ADAM, 1e-3f);
  char path[] = "/tmp/pt-engine-ahead-XXXXXX";
  int fd = mkstemp(path);
  close(fd);
  pt_result r;
  for (int t = 0; t < 15 && s; t++) {
    pt_target tg = {.class_index = t % 10};
    pt_stream_push(s, x + t * in, &tg, NULL);
    while (pt_stream_pop(s, &r) == PT_OK) {
    }
    if (t == 8) {
      CHECK(pt_stream_save(s, path) == PT_OK, "save mid-stream: %s", pt_stream_last_error(s));
      pt_stream_flush(s);
    }
  }
  if (s) pt_stream_drain(s);
  FILE *f = fopen(path, "rb");
  if (f && fseek(f, 0, SEEK_END) == 0) {
    long n = ftell(f);
    sn.saved = n > 0 ? malloc((size_t)n) : NULL;
    rewind(f);
    if (sn.saved && fread(sn.saved, 1, (size_t)n, f) == (size_t)n) sn.saved_n = (size_t)n;
  }
  if (f) fclose(f);
  unlink(path);
  pt_error err;
  if (s && pt_model_serialize(m, &sn.final, &sn.final_n, &err) != PT_OK) sn.final_n = 0;
  pt_stream_free(s);
  pt_model_free(m);
  free(x);
  return sn;
}

/* Stages run ahead of the pushes, so a flush or a save between two pushes waits for each stage to
 * reach the same tick however the threads ran: a save and what a flush leaves behind are the same
 * as in the unthreaded schedule, bit for bit. */
static void test_flush_save_identical(void) {
  for (int rep = 0; rep < 3; rep++) {
    snapshots a = flush_save_run(false), b = flush_save_run(true);
    CHECK(a.saved_n > 0 && a.saved_n == b.saved_n && memcmp(a.saved, b.saved, a.saved_n) == 0,
          "run %d: a checkpoint saved between two pushes is the unthreaded schedule's", rep);
    CHECK(a.final_n > 0 && a.final_n == b.final_n && memcmp(a.final, b.final, a.final_n) == 0,
          "run %d: training after a flush ends with the unthreaded schedule's weights", rep);
    free(a.saved);
    free(a.final);
    free(b.saved);
    free(b.final);
  }
}

static bool weights_finite(const pt_model *m) {
  for (int v = 0; v < m->n_vals; v++)
    if (m->vals[v].kind == PT_VAL_PARAM)
      for (int64_t i = 0; i < m->vals[v].numel; i++)
        if (!isfinite(m->vals[v].data[i])) return false;
  return true;
}

/* A NaN frame skips its update; enough of them in a row restore the last good weights. */
static void test_guard(void) {
  for (int D = 1; D <= 2; D++) {
    pt_model *m = load("convnet.onnx");
    if (!m) return;
    int64_t in = m->vals[m->input].numel;
    float *x = frames(40, in, 3);
    pt_stream *s = open_stream(m, D, NULL, true, PT_LOSS_CROSS_ENTROPY, PT_OPT_SGD, 1e-2f);
    pt_target tg = {.class_index = 1};
    pt_result r;
    for (int t = 10; t < 14; t++) x[t * in + 5] = NAN;
    int nan_losses = 0, n = 0;
    for (int t = 0; t < 30 + 1; t++) {
      if (t < 30)
        CHECK(pt_stream_push(s, x + t * in, &tg, NULL) == PT_OK, "push %d", t);
      else
        pt_stream_drain(s);
      while (pt_stream_pop(s, &r) == PT_OK) {
        n++;
        if (r.frame >= 10 && r.frame < 14) {
          CHECK(isnan(r.loss) && !r.trained, "D=%d NaN frame %lld reports a NaN loss and no update",
                D, (long long)r.frame);
          nan_losses++;
        } else if (r.frame >= 14 + 2 * D) {
          CHECK(isfinite(r.loss), "D=%d frame %lld after the NaNs has a finite loss", D,
                (long long)r.frame);
        }
      }
    }
    CHECK(nan_losses == 4 && n == 30, "4 NaN frames seen among 30 (%d, %d)", nan_losses, n);
    /* a stream whose results nobody pops refuses more frames instead of blocking forever */
    int refused = 0;
    for (int t = 0; t < 40 && !refused; t++)
      if (pt_stream_push(s, x, &tg, NULL) == PT_AGAIN) refused = t;
    CHECK(refused == D + 18, "D=%d: push answers PT_AGAIN once %d results wait (at %d)", D, D + 18,
          refused);
    /* the refused stream's ticks still run: the weights are read once they are done */
    CHECK(pt_stream_drain(s) == PT_OK, "D=%d: drain", D);
    pt_stream_stats st;
    pt_stream_get_stats(s, &st);
    CHECK(st.skipped_updates >= 4, "D=%d: skipped %lld updates", D, (long long)st.skipped_updates);
    CHECK(st.restores >= 1, "D=%d: 4 bad ticks in a row (limit 3) restored the last good weights",
          D);
    CHECK(weights_finite(m), "D=%d: weights stay finite", D);
    pt_stream_free(s);
    pt_model_free(m);
    free(x);
  }
}

static long rss_kb(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, res = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
    fclose(f);
  }
  return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* 20,000 ticks of training with D = 3: memory stays flat (and ASan finds no leak). */
static void test_soak(void) {
  pt_model *m = load("scalar_3.onnx");
  if (!m) return;
  pt_stream *s = open_stream(m, 3, NULL, true, PT_LOSS_MSE, PT_OPT_ADAM, 1e-4f);
  pt_result r;
  long rss0 = 0;
  unsigned long long seed = 17;
  for (int k = 0; k < 20000; k++) {
    float xv = pt_test_uniform(&seed, -1, 1), t = 0.5f * xv;
    pt_target tg = {.tensor = &t};
    pt_stream_push(s, &xv, &tg, NULL);
    while (pt_stream_pop(s, &r) == PT_OK) {
    }
    if (k == 2000) rss0 = rss_kb();
  }
  long rss1 = rss_kb();
  pt_stream_drain(s);
  pt_stream_stats st;
  pt_stream_get_stats(s, &st);
  CHECK(st.stage[2].updates == 20000, "the last stage trained on all 20,000 frames (%lld updates)",
        (long long)st.stage[2].updates);
  CHECK(rss1 - rss0 < 1024, "memory flat over 18,000 ticks: %ld kB -> %ld kB", rss0, rss1);
  pt_stream_free(s);
  pt_model_free(m);
}

/* Raw frames are converted by the preprocess callback on stage 0's worker, giving the same
 * results as pushing the converted floats. */
typedef struct conv_ctx {
  int64_t n;
  pthread_t pusher;
  int calls, off_thread;
} conv_ctx;

static void u8_to_float(void *user, const void *raw, size_t n, float *input) {
  conv_ctx *c = user;
  const unsigned char *b = raw;
  for (int64_t i = 0; i < c->n; i++) input[i] = (i < (int64_t)n ? b[i] : 0) / 255.0f - 0.5f;
  c->calls++;
  if (!pthread_equal(pthread_self(), c->pusher)) c->off_thread++;
}

static void test_raw_and_hyper(void) {
  const int N = 40;
  pt_model *ma = load("convnet.onnx"), *mb = load("convnet.onnx");
  if (!ma || !mb) return;
  int64_t in = ma->vals[ma->input].numel, on = ma->vals[ma->output].numel;
  unsigned char *raw = malloc(N * in);
  float *fl = malloc(sizeof(float) * N * in);
  unsigned long long seed = 77;
  for (int64_t i = 0; i < N * in; i++) {
    raw[i] = (unsigned char)(pt_test_rand_u64(&seed) >> 56);
    fl[i] = raw[i] / 255.0f - 0.5f;
  }
  conv_ctx c = {.n = in, .pusher = pthread_self()};
  pt_stream_opts o;
  pt_stream_opts_init(&o);
  o.stages = 2;
  o.balance = "5,-1";
  o.train.enabled = true;
  o.train.loss = PT_LOSS_CROSS_ENTROPY;
  o.train.lr = 1e-2f;
  o.preprocess = u8_to_float;
  o.preprocess_user = &c;
  o.raw_bytes = in;
  pt_error err;
  pt_stream *sa = NULL, *sb = NULL;
  CHECK(pt_stream_new(ma, &o, &sa, &err) == PT_OK, "raw stream: %s", err.msg);
  o.preprocess = NULL;
  o.raw_bytes = 0;
  CHECK(pt_stream_new(mb, &o, &sb, &err) == PT_OK, "float stream: %s", err.msg);
  if (!sa || !sb) return;
  CHECK(pt_stream_push_raw(sb, raw, in, NULL, NULL) == PT_ERR_STATE,
        "push_raw needs a preprocess function");
  CHECK(pt_stream_push_raw(sa, raw, in + 1, NULL, NULL) == PT_ERR_INVALID,
        "push_raw refuses a frame larger than raw_bytes");
  CHECK(pt_stream_raw_begin(sb) == NULL, "raw_begin needs a preprocess function");
  CHECK(pt_stream_raw_commit(sa, in, NULL, NULL) == PT_ERR_STATE,
        "raw_commit needs a buffer from raw_begin");
  bool same = true;
  for (int t = 0; t < N + 1; t++) {
    if (t == N / 2) { /* lower the learning rate mid-stream in both */
      CHECK(pt_stream_set_hyperparams(sa, 1e-3f, 0.5f, 1e-4f) == PT_OK, "set hyperparams");
      pt_stream_set_hyperparams(sb, 1e-3f, 0.5f, 1e-4f);
      CHECK(pt_stream_set_hyperparams(sa, -1, 0, 0) == PT_ERR_INVALID, "negative lr refused");
    }
    pt_target tg = {.class_index = t % 10};
    if (t < N && t % 2 == 0) {
      pt_stream_push_raw(sa, raw + t * in, in, &tg, NULL);
      pt_stream_push(sb, fl + t * in, &tg, NULL);
    } else if (t < N) { /* odd frames written in place */
      unsigned char *b = pt_stream_raw_begin(sa);
      if (!b) break;
      memcpy(b, raw + t * in, in);
      if (t == 1) {
        CHECK(pt_stream_raw_begin(sa) == b, "raw_begin hands out the same buffer until a commit");
        CHECK(pt_stream_raw_commit(sa, in + 1, &tg, NULL) == PT_ERR_INVALID,
              "raw_commit refuses a frame larger than raw_bytes");
        CHECK(pt_stream_raw_begin(sa) == b, "and the buffer stays the caller's");
      }
      CHECK(pt_stream_raw_commit(sa, in, &tg, NULL) == PT_OK, "raw_commit of frame %d", t);
      pt_stream_push(sb, fl + t * in, &tg, NULL);
    } else {
      pt_stream_drain(sa);
      pt_stream_drain(sb);
    }
    pt_result ra, rb;
    while (pt_stream_pop(sa, &ra) == PT_OK) {
      CHECK(pt_stream_pop(sb, &rb) == PT_OK && ra.frame == rb.frame, "both streams in step");
      same = same && memcmp(ra.output, rb.output, sizeof(float) * on) == 0 && ra.loss == rb.loss;
    }
  }
  CHECK(same, "raw frames converted on stage 0 give the same outputs and losses as float frames");
  CHECK(c.calls == N && c.off_thread == N,
        "preprocess ran %d times, %d of them off the pushing thread", c.calls, c.off_thread);
  pt_stream_stats st;
  pt_stream_get_stats(sa, &st);
  CHECK(st.stage[0].done == N + 1 && st.stage[1].done == N + 1,
        "per-stage finished ticks: %lld %lld", (long long)st.stage[0].done,
        (long long)st.stage[1].done);
  for (int v = 0; v < ma->n_vals; v++)
    if (ma->vals[v].kind == PT_VAL_PARAM)
      same = same &&
             memcmp(ma->vals[v].data, mb->vals[v].data, sizeof(float) * ma->vals[v].numel) == 0;
  CHECK(same, "and the same weights after a learning-rate change mid-stream");
  /* the change took effect: the same stream without it ends elsewhere */
  pt_model *mc = load("convnet.onnx");
  pt_stream *sc = NULL;
  if (mc && pt_stream_new(mc, &o, &sc, &err) == PT_OK) {
    pt_result rc;
    for (int t = 0; t < N; t++) {
      pt_target tg = {.class_index = t % 10};
      pt_stream_push(sc, fl + t * in, &tg, NULL);
      while (pt_stream_pop(sc, &rc) == PT_OK) {
      }
    }
    pt_stream_drain(sc);
    bool differ = false;
    for (int v = 0; v < mc->n_vals; v++)
      if (mc->vals[v].kind == PT_VAL_PARAM)
        differ = differ ||
                 memcmp(mc->vals[v].data, mb->vals[v].data, sizeof(float) * mc->vals[v].numel) != 0;
    CHECK(differ, "without the learning-rate change the weights end elsewhere");
    pt_stream_free(sc);
  }
  pt_model_free(mc);
  pt_stream_free(sa);
  pt_stream_free(sb);
  pt_model_free(ma);
  pt_model_free(mb);
  free(raw);
  free(fl);
}

/* The rows of parameter `name` in m: the value itself, or its halves "name/split0" and
 * "name/split1" one after the other. False when m has neither. */
static bool param_rows(const pt_model *m, const char *name, float *out, int64_t n) {
  int v = pt_graph_find_value(m, name);
  if (v >= 0) {
    if (m->vals[v].numel != n) return false;
    memcpy(out, m->vals[v].data, sizeof(float) * n);
    return true;
  }
  char h0[128], h1[128];
  snprintf(h0, sizeof h0, "%s/split0", name);
  snprintf(h1, sizeof h1, "%s/split1", name);
  int a = pt_graph_find_value(m, h0), b = pt_graph_find_value(m, h1);
  if (a < 0 || b < 0 || m->vals[a].numel + m->vals[b].numel != n) return false;
  memcpy(out, m->vals[a].data, sizeof(float) * m->vals[a].numel);
  memcpy(out + m->vals[a].numel, m->vals[b].data, sizeof(float) * m->vals[b].numel);
  return true;
}

/* A convolution split across a cut by output channels ("6+8,-1") runs, trains and saves exactly
 * as the same network written with the two halves and a Concat in the file, cut whole. */
static void test_split(void) {
  struct {
    int D;
    const char *split, *whole; /* balance over convnet.onnx, and over convnet_split.onnx */
    int at;                    /* the stage that ends with half of node 6 */
  } cases[] = {{2, "6+8,-1", "8,-1", 0}, {3, "2,4+8,-1", "2,6,-1", 1}};
  const int N = 120;
  for (int c = 0; c < 2; c++)
    for (int opt = 0; opt <= 1; opt++)
      for (int threaded = 0; threaded <= 1; threaded++) {
        pt_model *ma = load("convnet.onnx"), *mb = load("convnet_split.onnx");
        if (!ma || !mb) return;
        float lr = opt ? 1e-3f : 1e-2f;
        pt_stream *sa =
            open_stream(ma, cases[c].D, cases[c].split, threaded, PT_LOSS_CROSS_ENTROPY, opt, lr);
        pt_stream *sb =
            open_stream(mb, cases[c].D, cases[c].whole, threaded, PT_LOSS_CROSS_ENTROPY, opt, lr);
        CHECK(sa && sb, "streams with balance %s and %s", cases[c].split, cases[c].whole);
        if (!sa || !sb) return;
        pt_stream_stats st;
        pt_stream_get_stats(sa, &st);
        int at = cases[c].at;
        CHECK(
            st.stage[at].split_channels == 8 &&
                st.stage[at].first_node + st.stage[at].n_nodes == 6 &&
                st.stage[at + 1].first_node == 6 && st.stage[at + 1].split_channels == 0,
            "%s: stage %d ends with channels 0-7 of node 6, stage %d begins at node 6 (%d+%d, %d)",
            cases[c].split, at, at + 1, st.stage[at].n_nodes, st.stage[at].split_channels,
            st.stage[at + 1].first_node);
        run_out a = run_frames(ma, sa, N, 5 + c, cases[c].split);
        run_out b = run_frames(mb, sb, N, 5 + c, cases[c].whole);
        CHECK(a.outputs && b.outputs && memcmp(a.outputs, b.outputs, sizeof(float) * N * 10) == 0 &&
                  memcmp(a.losses, b.losses, sizeof(float) * N) == 0,
              "%s %s %s: outputs and losses bit-identical to the network written split",
              cases[c].split, opt ? "adam" : "sgd", threaded ? "threaded" : "sequential");
        CHECK(a.losses && isfinite(a.losses[N - 1]) && a.losses[N - 1] != a.losses[0],
              "%s: it trained", cases[c].split);
        /* the model's own weights learned, rows 0-7 of c3 in stage `at`, 8-15 in the next */
        bool same = true;
        int n_params = 0;
        for (int v = 0; v < ma->n_vals; v++) {
          if (ma->vals[v].kind != PT_VAL_PARAM) continue;
          float *rows = malloc(sizeof(float) * ma->vals[v].numel);
          same = same && param_rows(mb, ma->vals[v].name, rows, ma->vals[v].numel) &&
                 memcmp(rows, ma->vals[v].data, sizeof(float) * ma->vals[v].numel) == 0;
          free(rows);
          n_params++;
        }
        CHECK(same && n_params == 12, "%s: the model's %d weights end as the split network's",
              cases[c].split, n_params);
        if (c == 0 && opt == 0 && threaded) { /* the checkpoint has the model's graph */
          char path[] = "/tmp/pt-engine-split-XXXXXX";
          int fd = mkstemp(path);
          close(fd);
          CHECK(pt_stream_save(sa, path) == PT_OK, "save a split stream: %s",
                pt_stream_last_error(sa));
          pt_model *back = NULL;
          pt_error err;
          bool ok = pt_model_load(path, &back, &err) == PT_OK && back->n_nodes == ma->n_nodes;
          for (int v = 0; ok && v < ma->n_vals; v++)
            if (ma->vals[v].kind == PT_VAL_PARAM) {
              int bv = pt_graph_find_value(back, ma->vals[v].name);
              ok = bv >= 0 && memcmp(ma->vals[v].data, back->vals[bv].data,
                                     sizeof(float) * ma->vals[v].numel) == 0;
            }
          CHECK(ok, "the checkpoint is the model's graph (%d nodes) with the learned weights",
                back ? back->n_nodes : -1);
          pt_model_free(back);
          unlink(path);
        }
        free_run(&a);
        free_run(&b);
        pt_stream_free(sa);
        pt_stream_free(sb);
        pt_model_free(ma);
        pt_model_free(mb);
      }

  /* Inference: split networks compute the model's function (other kernels: not bitwise). */
  pt_model *m = load("convnet.onnx");
  if (!m) return;
  pt_stream *s1 = open_stream(m, 1, NULL, false, PT_LOSS_NONE, PT_OPT_SGD, 0);
  run_out a = run_frames(m, s1, 40, 9, "one stage");
  const struct {
    int D;
    const char *balance, *what;
  } inf[] = {{2, "6+8,-1", "one split"},
             /* a stage of nothing but the rest of a split: its Relu begins the next stage */
             {3, "6+8,1,-1", "the rest of node 6 alone"},
             /* the first split of node 0: the graph input crosses the boundary */
             {3, "0+4,6+8,-1", "two splits in three stages"}};
  for (size_t i = 0; i < sizeof inf / sizeof inf[0]; i++) {
    pt_stream *sx = open_stream(m, inf[i].D, inf[i].balance, true, PT_LOSS_NONE, PT_OPT_SGD, 0);
    run_out b = {0};
    if (sx) b = run_frames(m, sx, 40, 9, inf[i].balance);
    double worst = a.outputs && b.outputs ? 0 : INFINITY;
    for (int k = 0; a.outputs && b.outputs && k < 40 * 10; k++)
      worst = fmax(worst, fabs(a.outputs[k] - b.outputs[k]) / (1e-3 + fabs(a.outputs[k])));
    CHECK(worst < 1e-5, "%s (%s): the one-stage outputs, worst relative error %.2g", inf[i].balance,
          inf[i].what, worst);
    free_run(&b);
    pt_stream_free(sx);
  }
  free_run(&a);
  pt_stream_free(s1);

  /* What cannot be split, said clearly and before anything runs. */
  struct {
    const char *balance, *says;
  } bad[] = {{"5+8,-1", "not a convolution"},
             {"6+16,-1", "between 1 and the output channels"},
             {"6,6+4", "last stage"},
             {"6+8,0+4,-1", "two stages at most"},
             {"-1+4,6", "'+C' follows a node count"},
             {"6+4,0,-1", "node counts"},
             {"2147483648,-1", "nodes in a stage"}, /* would wrap in an int */
             {"1,1+16,4294967204", "nodes in a stage"},
             {"6+4294967304,-1", "'+C' follows a node count"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    pt_stream_opts o;
    pt_stream_opts_init(&o);
    o.balance = bad[i].balance;
    o.stages = 1;
    for (const char *p = bad[i].balance; *p; p++) o.stages += *p == ',';
    pt_stream *s = NULL;
    pt_error err;
    pt_status st = pt_stream_new(m, &o, &s, &err);
    CHECK(st == PT_ERR_INVALID && strstr(err.msg, bad[i].says), "balance %s refused: %s",
          bad[i].balance, st ? err.msg : "(accepted)");
    pt_stream_free(s);
  }
  pt_model_free(m);

  /* auto, over given node costs (measured ones vary from run to run): it splits the middle of
   * three equally heavy layers, and only where that is worth more than 5% */
  m = load("three.onnx");
  if (!m) return;
  struct {
    int D;
    double cost[6];        /* conv, relu, conv, relu, conv, relu */
    int n0, split, first1; /* stage 0's whole nodes and channels; where stage 1 begins */
  } autos[] = {
      {2, {1, 0, 1, 0, 1, 0}, 2, 16, 2},  /* 1.5 + 1.5 instead of 2 + 1 */
      {3, {1, 0, 1, 0, 1, 0}, 2, 0, 2},   /* one layer a stage: nothing to split */
      {2, {1, 0, 1, 0, 0.1, 0}, 2, 0, 2}, /* 1 + 1.1 whole: within 5% of any split */
      {2, {1, 0, 1, 0, 2, 0}, 4, 0, 4},   /* 2 | 2 whole */
  };
  for (size_t i = 0; i < sizeof autos / sizeof autos[0]; i++) {
    pt_partition part;
    pt_error err;
    pt_status st = pt_partition_make(m, autos[i].D, "auto", autos[i].cost, false, &part, &err);
    char got[64] = "";
    if (!st) pt_partition_str(&part, got, sizeof got);
    CHECK(!st && part.first[1] == autos[i].first1 && part.first[1] - part.first[0] == autos[i].n0 &&
              part.split[0] == autos[i].split,
          "auto over costs %g,%g,%g in %d stages: got balance %s", autos[i].cost[0],
          autos[i].cost[2], autos[i].cost[4], autos[i].D, st ? err.msg : got);
  }
  /* the string auto reports gives the same cut back */
  pt_partition part, again;
  pt_error err;
  const double even[6] = {1, 0, 1, 0, 1, 0};
  char str[64] = "";
  if (!pt_partition_make(m, 2, "auto", even, false, &part, &err))
    pt_partition_str(&part, str, sizeof str);
  CHECK(strcmp(str, "2+16,4") == 0 &&
            pt_partition_make(m, 2, str, NULL, false, &again, &err) == PT_OK &&
            again.first[1] == part.first[1] && again.split[0] == part.split[0],
        "auto's cut as a string (%s) gives it back", str);
  pt_model_free(m);
}

/* A waiting caller polls while the stages take no more than the cores this process may use
 * (taskset, a container's cpuset), not the machine's, and sleeps on a single core. */
#ifdef __linux__
static bool set_cores(const cpu_set_t *all, int n) {
  cpu_set_t some;
  CPU_ZERO(&some);
  for (int c = 0, k = 0; c < CPU_SETSIZE && k < n; c++)
    if (CPU_ISSET(c, all)) {
      CPU_SET(c, &some);
      k++;
    }
  return sched_setaffinity(0, sizeof some, &some) == 0;
}
#endif

static void test_poll_needs_a_spare_core(void) {
#ifdef __linux__
  pt_model *m = load("convnet.onnx");
  if (!m) return;
  cpu_set_t all;
  if (sched_getaffinity(0, sizeof all, &all) != 0) {
    CHECK(0, "sched_getaffinity");
    pt_model_free(m);
    return;
  }
  if (!set_cores(&all, 1)) {
    CHECK(0, "sched_setaffinity");
    pt_model_free(m);
    return;
  }
  pt_stream *s = open_stream(m, 1, NULL, true, PT_LOSS_NONE, PT_OPT_SGD, 0);
  CHECK(s && s->cores == 1 && !s->pop_may_spin, "one usable core: the caller sleeps (%ld cores)",
        s ? s->cores : -1);
  pt_stream_free(s);
  if (CPU_COUNT(&all) >= 2 && set_cores(&all, 2)) {
    /* as many stages as cores: the caller polls, yielding to the stages */
    for (int D = 1; D <= 3; D++) {
      s = open_stream(m, D, NULL, true, PT_LOSS_NONE, PT_OPT_SGD, 0);
      CHECK(s && s->cores == 2 && s->pop_may_spin == (D <= 2),
            "two usable cores, %d stage(s): the caller %s", D, D <= 2 ? "polls" : "sleeps");
      pt_stream_free(s);
    }
  }
  CHECK(sched_setaffinity(0, sizeof all, &all) == 0, "affinity restored");
  s = open_stream(m, 1, NULL, true, PT_LOSS_NONE, PT_OPT_SGD, 0);
  CHECK(s && s->cores == CPU_COUNT(&all) && s->pop_may_spin == (CPU_COUNT(&all) > 1),
        "%d usable cores: the caller of a 1-stage stream %s", CPU_COUNT(&all),
        CPU_COUNT(&all) > 1 ? "polls" : "sleeps");
  pt_stream_free(s);
  pt_model_free(m);
#endif
}

/* pt_stream_set_output: the last stage writes a frame's output into the caller's memory, the
 * result points there, and the outputs are those of a run without it. A failed push keeps the
 * memory for the next; NULL cancels it. */
static void test_output_to_caller_memory(void) {
  const int N = 40;
  pt_model *ma = load("convnet.onnx"), *mb = load("convnet.onnx");
  pt_stream *a =
      ma ? open_stream(ma, 2, "6,-1", true, PT_LOSS_CROSS_ENTROPY, PT_OPT_SGD, 1e-2f) : NULL;
  pt_stream *b =
      mb ? open_stream(mb, 2, "6,-1", true, PT_LOSS_CROSS_ENTROPY, PT_OPT_SGD, 1e-2f) : NULL;
  if (!a || !b) {
    pt_stream_free(a);
    pt_stream_free(b);
    pt_model_free(ma);
    pt_model_free(mb);
    return;
  }
  int64_t in = ma->vals[ma->input].numel, on = ma->vals[ma->output].numel;
  run_out ro = run_frames(ma, a, N, 5, "own memory");
  /* the frames run_frames pushes, drifting alike */
  float *x = frames(N, in, 5), *mine = calloc((size_t)(N * on), sizeof(float)),
        *got = calloc((size_t)(N * on), sizeof(float)), *loss = calloc(N, sizeof(float));
  for (int t = 1; t < N; t++)
    for (int64_t i = 0; i < in; i++)
      x[t * in + i] = 0.9f * x[(t - 1) * in + i] + 0.1f * x[t * in + i];
  int n = 0, pointed = 0;
  pt_result r;
  for (int t = 0; t <= N; t++) {
    if (t < N) {
      if (t % 2) CHECK(pt_stream_set_output(b, mine + t * on) == PT_OK, "set_output");
      if (t == 9) { /* a refused push keeps the memory for frame 9 */
        pt_target bad = {.class_index = 1000};
        CHECK(pt_stream_push(b, x + t * in, &bad, NULL) == PT_ERR_INVALID, "a bad class refused");
      }
      if (t == 12) { /* set, then cancelled: frame 12 uses the stream's memory */
        CHECK(pt_stream_set_output(b, mine + 11 * on) == PT_OK &&
                  pt_stream_set_output(b, NULL) == PT_OK,
              "set_output NULL");
      }
      pt_target tg = {.class_index = (t / 7) % (int)on};
      CHECK(pt_stream_push(b, x + t * in, &tg, NULL) == PT_OK, "push %d", t);
    } else {
      CHECK(pt_stream_drain(b) == PT_OK, "drain");
    }
    while (pt_stream_pop(b, &r) == PT_OK) {
      bool to_mine = r.frame % 2 == 1;
      if (r.output == (to_mine ? mine + r.frame * on : r.output) &&
          (to_mine || r.output < mine || r.output >= mine + N * on))
        pointed++;
      memcpy(got + r.frame * on, r.output, sizeof(float) * on);
      loss[r.frame] = r.loss;
      n++;
    }
  }
  CHECK(n == N && pointed == N, "%d of %d results, %d pointing where they were asked to", n, N,
        pointed);
  CHECK(ro.outputs && memcmp(got, ro.outputs, sizeof(float) * N * on) == 0 &&
            memcmp(loss, ro.losses, sizeof(float) * N) == 0,
        "outputs and losses through the caller's memory equal a run without it");
  free(x);
  free(mine);
  free(got);
  free(loss);
  free(ro.outputs);
  free(ro.losses);
  pt_stream_free(a);
  pt_stream_free(b);
  pt_model_free(ma);
  pt_model_free(mb);
}

/* With as many stages as cores, the caller shares a core with one stage; the stages trade cores
 * when the caller runs beside the stage predicted slowest, so that the lightest is beside it. Only
 * for cores the stream chose, with a cut that has costs, on threads. Results stay the same. */
static void test_stages_follow_caller(void) {
#ifdef __linux__
  pt_model *m = load("convnet.onnx");
  if (!m) return;
  cpu_set_t all, one;
  if (sched_getaffinity(0, sizeof all, &all) != 0) {
    CHECK(0, "sched_getaffinity");
    pt_model_free(m);
    return;
  }
  if (!CPU_ISSET(0, &all) || !CPU_ISSET(1, &all)) {
    printf("(trading cores: needs cores 0 and 1, this process has %d core(s))\n", CPU_COUNT(&all));
    pt_model_free(m);
    return;
  }
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  CPU_SET(1, &one);
  CHECK(sched_setaffinity(0, sizeof one, &one) == 0, "restricted to cores 0 and 1");
  struct {
    const char *devices, *balance;
    bool threaded, follow;
  } when[] = {{NULL, NULL, true, true},
              {"cpu,cpu", "auto", true, true},
              {"cpu:0,cpu:1", NULL, true, false},
              {NULL, "6,-1", true, false},
              {NULL, NULL, false, false}};
  for (size_t i = 0; i < sizeof when / sizeof when[0]; i++) {
    pt_stream_opts o;
    pt_stream_opts_init(&o);
    o.stages = 2;
    o.devices = when[i].devices;
    o.balance = when[i].balance;
    o.threaded = when[i].threaded;
    pt_error err;
    pt_stream *s = NULL;
    CHECK(pt_stream_new(m, &o, &s, &err) == PT_OK && s->follow == when[i].follow,
          "devices %s, balance %s, %s: stages %s the caller",
          when[i].devices ? when[i].devices : "-", when[i].balance ? when[i].balance : "-",
          when[i].threaded ? "threads" : "no threads",
          when[i].follow ? "follow" : "stay, whatever the core of");
    pt_stream_free(s);
  }

  /* the caller beside stage 1, predicted slower: the stages trade cores once */
  run_out ro[2] = {{0}};
  for (int threaded = 0; threaded < 2; threaded++) {
    pt_model *mt = load("convnet.onnx"); /* training changes the weights: a fresh copy each */
    pt_stream *s =
        mt ? open_stream(mt, 2, "6,-1", threaded, PT_LOSS_CROSS_ENTROPY, PT_OPT_SGD, 1e-2f) : NULL;
    if (!s) {
      pt_model_free(mt);
      break;
    }
    if (threaded) {
      s->follow = true; /* a fixed cut has no costs: give it some */
      s->st[0].predicted_s = 1e-3;
      s->st[1].predicted_s = 2e-3;
      CPU_ZERO(&one);
      CPU_SET(s->st[1].core, &one);
      CHECK(s->st[1].core == 1 && sched_setaffinity(0, sizeof one, &one) == 0,
            "the caller on core 1, beside stage 1");
    }
    ro[threaded] = run_frames(mt, s, 300, 11, threaded ? "threads" : "no threads");
    if (threaded) {
      CHECK(s->follow_swaps == 1 && s->st[0].core == 1 && s->st[1].core == 0,
            "stage 0 moved beside the caller, stage 1 away: %lld trade(s), cores %d and %d",
            (long long)s->follow_swaps, s->st[0].core, s->st[1].core);
      CPU_ZERO(&one);
      CPU_SET(0, &one);
      CPU_SET(1, &one);
      CHECK(sched_setaffinity(0, sizeof one, &one) == 0, "the caller free again");
    }
    pt_stream_free(s);
    pt_model_free(mt);
  }
  int64_t on = m->vals[m->output].numel;
  CHECK(ro[0].outputs && ro[1].outputs &&
            memcmp(ro[0].outputs, ro[1].outputs, sizeof(float) * 300 * on) == 0 &&
            memcmp(ro[0].losses, ro[1].losses, sizeof(float) * 300) == 0,
        "stages that traded cores give the outputs and losses of an unthreaded run");
  for (int k = 0; k < 2; k++) {
    free(ro[k].outputs);
    free(ro[k].losses);
  }
  CHECK(sched_setaffinity(0, sizeof all, &all) == 0, "affinity restored");
  pt_model_free(m);
#endif
}

/* A stage spins for its next tick only on a core no other stage of the stream is pinned to: two
 * stages spinning by turns on one core would each hold the other up. Results stay the same. */
static void test_spin_needs_own_core(void) {
  pt_model *m = load("convnet.onnx");
  if (!m) return;
  const char *lists[] = {"cpu:0,cpu:0", "cpu:0,cpu:1"};
  pt_shape is = pt_model_input_shape(m), os = pt_model_output_shape(m);
  int64_t in = pt_shape_numel(&is), out = pt_shape_numel(&os);
  float *f = frames(6, in, 7),
        *got[2] = {malloc(sizeof(float) * 6 * out), malloc(sizeof(float) * 6 * out)};
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  for (int l = 0; l < 2; l++) {
    if (l == 1 && online < 2) break; /* no core 1 */
    pt_stream_opts o;
    pt_stream_opts_init(&o);
    o.stages = 2;
    o.devices = lists[l];
    pt_error err;
    pt_stream *s = NULL;
    if (pt_stream_new(m, &o, &s, &err)) {
      CHECK(0, "devices %s: %s", lists[l], err.msg);
      continue;
    }
    bool own = l == 1 && s->cores >= 2;
    CHECK(s->st[0].spin == own && s->st[1].spin == own, "devices %s, %ld usable cores: stages %s",
          lists[l], s->cores, own ? "spin" : "do not spin");
    int n = 0;
    for (int k = 0; k <= 6; k++) {
      if (k < 6)
        CHECK(pt_stream_push(s, f + k * in, NULL, NULL) == PT_OK, "push");
      else
        CHECK(pt_stream_drain(s) == PT_OK, "drain");
      pt_result r;
      while (pt_stream_pop(s, &r) == PT_OK && n < 6)
        memcpy(got[l] + n++ * out, r.output, sizeof(float) * out);
    }
    CHECK(n == 6, "devices %s: %d of 6 results", lists[l], n);
    pt_stream_free(s);
  }
  if (online >= 2)
    CHECK(memcmp(got[0], got[1], sizeof(float) * 6 * out) == 0,
          "stages sharing a core give the same outputs");
  free(f);
  free(got[0]);
  free(got[1]);
  pt_model_free(m);
}

/* Stages compute with subnormal floats read as zero (DAZ) and results below the normal range
 * written as zero (FTZ), threaded or not; the caller's thread keeps its own setting. A subnormal
 * frame through x * 1 * 1 comes out as exactly 0. */
static void test_subnormals_flushed(void) {
#if defined(__x86_64__) || defined(__i386__)
  pt_model *m = load("scalar_2.onnx");
  if (!m) return;
  volatile float tiny = FLT_MIN / 4, one = 1.0f;
  for (int D = 1; D <= 2; D++)
    for (int threaded = 0; threaded <= 1; threaded++) {
      pt_stream *s = open_stream(m, D, NULL, threaded, PT_LOSS_NONE, PT_OPT_SGD, 0);
      if (!s) continue;
      float x[2] = {tiny, 1.5f};
      int left = 0;
      for (int t = 0; t < 2 + D - 1; t++) {
        pt_result r;
        pt_stream_push(s, t < 2 ? &x[t] : &x[1], NULL, NULL);
        if (pt_stream_pop(s, &r) != PT_OK || r.frame > 1) continue;
        float want = r.frame == 0 ? 0.0f : 1.5f;
        CHECK(r.output[0] == want, "D=%d threaded=%d: frame %lld gives %g (want %g)", D, threaded,
              (long long)r.frame, r.output[0], want);
        left++;
      }
      CHECK(left == 2, "D=%d threaded=%d: both frames left (%d)", D, threaded, left);
      CHECK(tiny * one != 0.0f, "D=%d threaded=%d: the caller's thread still has subnormals", D,
            threaded);
      pt_stream_free(s);
    }
  pt_model_free(m);
#endif
}

int main(int argc, char **argv) {
  dir = argc > 1 ? argv[1] : ".";
  test_poll_needs_a_spare_core();
  test_stages_follow_caller();
  test_output_to_caller_memory();
  test_spin_needs_own_core();
  test_tick_contract();
  test_lag();
  test_threaded_identical();
  test_threaded_identical_inference();
  test_d1_online();
  test_drain_flush_save();
  test_flush_save_identical();
  test_guard();
  test_raw_and_hyper();
  test_split();
  test_subnormals_flushed();
  test_soak();
  PT_TEST_END();
}
