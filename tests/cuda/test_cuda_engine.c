/* The engine on GPU stages against the same engine on CPU stages: for 1, 2 and 3 stages, on one
 * device, on two, and with two stages sharing a device, threaded and not, the per-frame outputs,
 * losses and the final weights agree within float tolerance; the guard skips and restores alike;
 * device errors are clear. The same again with CUDA graphs, through every kind of tick (frames
 * with and without a target, training switched off and on, the hyperparameters changed
 * mid-stream): the graphs are captured once per kind and replayed, never refused.
 *
 * Usage: test_cuda_engine MODEL_DIR              (convnet.onnx, residual.onnx of tests/lib/engine)
 *        test_cuda_engine MODEL_DIR --no-device  (expects the runtime to report no GPU at all)
 * Without a usable GPU on the real runtime it checks the error is the clear one and exits 77. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <partime/stream.h>
#include "cuda/exec.h"
#include "graph.h"
#include "pt_test.h"
#include "cuda_test.h"

static const char *dir;
static int gpus;      /* devices present; with one, every layout runs on cuda:0 */
static bool saw_nccl; /* a stream said its boundaries move with NCCL */
static int captures;  /* CUDA graphs captured */
/* The first warning about CUDA graphs. */
static char graph_warning[256];

static void on_log(void *user, pt_log_level level, const char *msg) {
  (void)user;
  if (strstr(msg, "with NCCL")) saw_nccl = true;
  if (strstr(msg, "captured a CUDA graph")) __atomic_add_fetch(&captures, 1, __ATOMIC_RELAXED);
  if (level == PT_LOG_WARNING && strstr(msg, "CUDA graphs")) { /* from any stage's thread */
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (!graph_warning[0]) snprintf(graph_warning, sizeof graph_warning, "%s", msg);
    pthread_mutex_unlock(&mu);
  }
}

/* "cuda:1" becomes "cuda:0" on a one-GPU machine. */
static const char *fit(const char *devices, char *buf, size_t n) {
  snprintf(buf, n, "%s", devices);
  if (gpus < 2)
    for (char *p = strstr(buf, "cuda:1"); p; p = strstr(p, "cuda:1")) p[5] = '0';
  return buf;
}

static pt_model *load(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  pt_model *m = NULL;
  pt_error err;
  pt_error_clear(&err);
  if (pt_model_load(path, &m, &err)) {
    CHECK(0, "%s: %s", path, err.msg);
    return NULL;
  }
  return m;
}

typedef struct run_cfg {
  const char *model;
  int D;
  const char *devices; /* NULL: CPU */
  bool threaded;
  pt_loss loss;
  pt_optimizer opt;
  int N;
  int nan_from, nan_to; /* frames [nan_from, nan_to) get a NaN pixel */
  int guard;
  bool graphs;
  int untrained_from, untrained_to; /* frames [from, to) enter with training off */
  int hyper_at;                     /* frame from which on the hyperparameters change; 0 never */
  bool some_untargeted;             /* every 7th frame comes without a target */
  const char *balance;              /* NULL: equal node counts */
} run_cfg;

typedef struct run_out {
  int64_t on, nw;
  float *outputs, *losses, *weights;
  int64_t skipped, restores, updates_last;
  int got;
} run_out;

static double norm_err(const float *got, const float *want, int64_t n) {
  double diff = 0, scale = 1;
  for (int64_t i = 0; i < n; i++) {
    if (isnan(want[i]) && isnan(got[i])) continue;
    double d = fabs((double)got[i] - want[i]);
    if (!(d <= diff)) diff = d;
    if (fabs(want[i]) > scale) scale = fabs(want[i]);
  }
  return diff / scale;
}

/* The parameters of m, concatenated. */
static float *weights_of(const pt_model *m, int64_t *n) {
  int64_t total = 0;
  for (int v = 0; v < m->n_vals; v++)
    if (m->vals[v].kind == PT_VAL_PARAM) total += m->vals[v].numel;
  float *w = malloc((total ? total : 1) * sizeof *w), *p = w;
  for (int v = 0; v < m->n_vals; v++)
    if (m->vals[v].kind == PT_VAL_PARAM) {
      memcpy(p, m->vals[v].data, m->vals[v].numel * sizeof *p);
      p += m->vals[v].numel;
    }
  *n = total;
  return w;
}

static run_out run(const run_cfg *c) {
  run_out ro = {0};
  pt_model *m = load(c->model);
  if (!m) return ro;
  pt_shape ish = pt_model_input_shape(m), osh = pt_model_output_shape(m);
  int64_t in = pt_shape_numel(&ish), on = pt_shape_numel(&osh);
  ro.on = on;
  pt_stream_opts o;
  pt_stream_opts_init(&o);
  o.stages = c->D;
  char devices[64];
  o.devices = c->devices ? fit(c->devices, devices, sizeof devices) : NULL;
  o.log = on_log;
  o.threaded = c->threaded;
  o.cuda_graphs = c->graphs;
  char balance[64] = "auto";
  if (c->D > 1) { /* a fixed partition, so both runs cut alike */
    int per = pt_model_n_nodes(m) / c->D, len = 0;
    for (int j = 0; j < c->D - 1; j++)
      len += snprintf(balance + len, sizeof balance - len, "%d,", per);
    snprintf(balance + len, sizeof balance - len, "-1");
  }
  o.balance = c->balance ? c->balance : balance;
  o.train.enabled = true;
  o.train.loss = c->loss;
  o.train.optimizer = c->opt;
  o.train.lr = c->opt == PT_OPT_ADAM ? 1e-3f : 1e-2f;
  o.train.guard_limit = c->guard;
  pt_stream *s = NULL;
  pt_error err;
  pt_error_clear(&err);
  if (pt_stream_new(m, &o, &s, &err)) {
    CHECK(0, "%s on %s: %s", c->model, c->devices ? c->devices : "cpu", err.msg);
    pt_model_free(m);
    return ro;
  }
  unsigned long long seed = 42;
  float *x = malloc(in * sizeof *x);
  for (int64_t i = 0; i < in; i++) x[i] = pt_test_uniform(&seed, -1, 1);
  ro.outputs = calloc((size_t)c->N * on, sizeof(float));
  ro.losses = calloc(c->N, sizeof(float));
  pt_result r;
  for (int t = 0; t < c->N; t++) {
    for (int64_t i = 0; i < in; i++) x[i] = 0.9f * x[i] + 0.1f * pt_test_uniform(&seed, -1, 1);
    float keep = x[0];
    if (t >= c->nan_from && t < c->nan_to) x[0] = NAN;
    pt_stream_set_training(s, !(t >= c->untrained_from && t < c->untrained_to));
    if (c->hyper_at > 0 && t == c->hyper_at)
      CHECK(pt_stream_set_hyperparams(s, o.train.lr * 0.5f, c->opt == PT_OPT_ADAM ? 0.0f : 0.5f,
                                      1e-3f) == PT_OK,
            "hyperparameters: %s", pt_stream_last_error(s));
    pt_target tg = {.class_index = (t / 5) % (int)on};
    bool untargeted = c->some_untargeted && t % 7 == 3;
    CHECK(pt_stream_push(s, x, untargeted ? NULL : &tg, NULL) == PT_OK, "push: %s",
          pt_stream_last_error(s));
    x[0] = keep;
    while (pt_stream_pop(s, &r) == PT_OK) {
      memcpy(ro.outputs + r.frame * on, r.output, on * sizeof(float));
      ro.losses[r.frame] = r.loss;
      ro.got++;
    }
  }
  CHECK(pt_stream_drain(s) == PT_OK, "drain: %s", pt_stream_last_error(s));
  while (pt_stream_pop(s, &r) == PT_OK) {
    memcpy(ro.outputs + r.frame * on, r.output, on * sizeof(float));
    ro.losses[r.frame] = r.loss;
    ro.got++;
  }
  pt_stream_stats st;
  pt_stream_get_stats(s, &st);
  ro.skipped = st.skipped_updates;
  ro.restores = st.restores;
  ro.updates_last = st.stage[c->D - 1].updates;
  pt_stream_free(s);
  ro.weights = weights_of(m, &ro.nw);
  pt_model_free(m);
  free(x);
  return ro;
}

static void free_run(run_out *r) {
  free(r->outputs);
  free(r->losses);
  free(r->weights);
}

/* With graphs: none refused, and at most one capture per kind of tick and stage, plus one per
 * training kind for the hyperparameter change (every tick capturing anew would be ~N). */
static void check_graphs(const run_cfg *c, const char *tag) {
  if (!c->graphs) return;
  CHECK(!graph_warning[0], "%s on %s: %s", tag, c->devices, graph_warning);
  CHECK(captures > 0 && captures <= 12 * c->D, "%s on %s: %d CUDA graphs captured for %d stages",
        tag, c->devices, captures, c->D);
}

/* GPU stages give the CPU stages' outputs, losses and weights. */
static void test_equivalence(bool graphs) {
  static const struct {
    const char *model;
    pt_loss loss;
    pt_optimizer opt;
  } models[] = {{"convnet.onnx", PT_LOSS_CROSS_ENTROPY, PT_OPT_SGD},
                {"convnet.onnx", PT_LOSS_CROSS_ENTROPY, PT_OPT_ADAM},
                {"residual.onnx", PT_LOSS_RECONSTRUCTION, PT_OPT_ADAM}};
  static const struct {
    int D;
    const char *devices;
  } layouts[] = {
      {1, "cuda:0"}, {2, "cuda:0,cuda:1"}, {2, "cuda:1,cuda:1"}, {3, "cuda:0,cuda:1,cuda:1"}};
  for (size_t mi = 0; mi < sizeof models / sizeof *models; mi++)
    for (size_t li = 0; li < sizeof layouts / sizeof *layouts; li++)
      for (int threaded = 0; threaded < 2; threaded++) {
        /* two stages on two devices: once with NCCL (where built), once with peer copies */
        bool distinct = strcmp(layouts[li].devices, "cuda:0,cuda:1") == 0 && gpus >= 2;
        setenv("PARTIME_NCCL", distinct && threaded ? "0" : "1", 1);
        saw_nccl = false;
        run_cfg c = {models[mi].model,
                     layouts[li].D,
                     NULL,
                     threaded,
                     models[mi].loss,
                     models[mi].opt,
                     24,
                     -1,
                     -1,
                     3};
        if (graphs) {
          c.graphs = true;
          c.untrained_from = 9, c.untrained_to = 12;
          c.hyper_at = 14;
          c.some_untargeted = true;
        }
        run_out cpu = run(&c);
        c.devices = layouts[li].devices;
        captures = 0;
        graph_warning[0] = 0;
        run_out gpu = run(&c);
        const char *tag = models[mi].model;
        check_graphs(&c, tag);
#ifdef PT_HAVE_NCCL
        CHECK(saw_nccl == (distinct && !threaded), "%s on %s: NCCL %s, expected %s", tag,
              layouts[li].devices, saw_nccl ? "used" : "unused",
              distinct && !threaded ? "used" : "unused");
#endif
        if (gpu.got == c.N && cpu.got == c.N) {
          double eo = norm_err(gpu.outputs, cpu.outputs, (int64_t)c.N * cpu.on);
          double el = norm_err(gpu.losses, cpu.losses, c.N);
          double ew = gpu.nw == cpu.nw ? norm_err(gpu.weights, cpu.weights, cpu.nw) : 1e9;
          CHECK(eo < 1e-4 && el < 1e-4 && ew < 1e-4,
                "%s %s %s (%s, %s%s): outputs %.3g, losses %.3g, weights %.3g from the CPU run",
                tag, pt_optimizer_name(c.opt), layouts[li].devices,
                threaded ? "threaded" : "sequential", pt_loss_name(c.loss),
                graphs ? ", CUDA graphs" : "", eo, el, ew);
          CHECK(gpu.updates_last == cpu.updates_last && gpu.updates_last > 0,
                "%s on %s: last stage updated %lld times, %lld on the CPU", tag, c.devices,
                (long long)gpu.updates_last, (long long)cpu.updates_last);
          /* learning happened: the weights moved */
          pt_model *fresh = load(tag);
          int64_t n0 = 0;
          float *w0 = fresh ? weights_of(fresh, &n0) : NULL;
          if (w0 && n0 == gpu.nw)
            CHECK(norm_err(gpu.weights, w0, n0) > 1e-6, "%s on %s: the weights never moved", tag,
                  c.devices);
          free(w0);
          pt_model_free(fresh);
        } else {
          CHECK(0, "%s on %s: %d GPU and %d CPU results of %d", tag, layouts[li].devices, gpu.got,
                cpu.got, c.N);
        }
        free_run(&cpu);
        free_run(&gpu);
      }
}

/* A convolution split across a cut by output channels (balance "6+8,-1"): GPU stages give the
 * CPU stages' outputs, losses and weights, on two GPUs and on one, with and without graphs. */
static void test_split(void) {
  const char *layouts[] = {"cuda:0,cuda:1", "cuda:1,cuda:1"};
  for (int li = 0; li < 2; li++)
    for (int graphs = 0; graphs < 2; graphs++) {
      run_cfg c = {"convnet.onnx", 2,  NULL, true, PT_LOSS_CROSS_ENTROPY,
                   PT_OPT_ADAM,    24, -1,   -1,   3};
      c.balance = "6+8,-1";
      c.graphs = graphs;
      run_out cpu = run(&c);
      c.devices = layouts[li];
      captures = 0;
      graph_warning[0] = 0;
      run_out gpu = run(&c);
      check_graphs(&c, "split");
      bool all = gpu.got == c.N && cpu.got == c.N && gpu.nw == cpu.nw;
      double eo = all ? norm_err(gpu.outputs, cpu.outputs, (int64_t)c.N * cpu.on) : 1e9;
      double el = all ? norm_err(gpu.losses, cpu.losses, c.N) : 1e9;
      double ew = all ? norm_err(gpu.weights, cpu.weights, cpu.nw) : 1e9;
      CHECK(eo < 1e-4 && el < 1e-4 && ew < 1e-4,
            "balance 6+8,-1 on %s%s: outputs %.3g, losses %.3g, weights %.3g from the CPU run",
            layouts[li], graphs ? " (graphs)" : "", eo, el, ew);
      pt_model *fresh = load("convnet.onnx");
      int64_t n0 = 0;
      float *w0 = fresh ? weights_of(fresh, &n0) : NULL;
      CHECK(w0 && n0 == gpu.nw && norm_err(gpu.weights, w0, n0) > 1e-6,
            "split on %s: the model's weights moved", layouts[li]);
      free(w0);
      pt_model_free(fresh);
      free_run(&cpu);
      free_run(&gpu);
    }
}

/* Non-finite frames: the same skipped updates and restores as on the CPU, finite weights. */
static void test_guard(bool graphs) {
  for (int D = 1; D <= 2; D++) {
    run_cfg c = {"convnet.onnx", D, NULL, true, PT_LOSS_CROSS_ENTROPY, PT_OPT_SGD, 20, 6, 10, 2};
    c.graphs = graphs;
    run_out cpu = run(&c);
    c.devices = D == 1 ? "cuda:0" : "cuda:0,cuda:1";
    captures = 0;
    graph_warning[0] = 0;
    run_out gpu = run(&c);
    check_graphs(&c, "guard");
    CHECK(gpu.skipped == cpu.skipped && gpu.skipped > 0,
          "D=%d: %lld updates skipped on the GPU, %lld on the CPU", D, (long long)gpu.skipped,
          (long long)cpu.skipped);
    CHECK(gpu.restores == cpu.restores && gpu.restores > 0,
          "D=%d: %lld restores on the GPU, %lld on the CPU", D, (long long)gpu.restores,
          (long long)cpu.restores);
    bool finite = gpu.nw > 0;
    for (int64_t i = 0; i < gpu.nw; i++) finite = finite && isfinite(gpu.weights[i]);
    CHECK(finite, "D=%d: the GPU weights stayed finite", D);
    if (gpu.nw == cpu.nw)
      CHECK(norm_err(gpu.weights, cpu.weights, cpu.nw) < 1e-4,
            "D=%d: weights after the guard differ", D);
    free_run(&cpu);
    free_run(&gpu);
  }
}

static void expect_stream_error(const char *devices, const char *want1, const char *want2) {
  pt_model *m = load("convnet.onnx");
  if (!m) return;
  pt_stream_opts o;
  pt_stream_opts_init(&o);
  o.devices = devices;
  pt_stream *s = NULL;
  pt_error err;
  pt_error_clear(&err);
  pt_status st = pt_stream_new(m, &o, &s, &err);
  CHECK(st == PT_ERR_DEVICE && strstr(err.msg, want1) && (!want2 || strstr(err.msg, want2)),
        "devices '%s': got status %d '%s', want a device error naming '%s'", devices, st, err.msg,
        want1);
  pt_stream_free(s);
  pt_model_free(m);
}

static void test_errors(void) {
  int count = 0;
  cudaGetDeviceCount(&count);
  char name[32];
  snprintf(name, sizeof name, "cuda:%d", count + 1);
  expect_stream_error(name, name, "no such GPU");
  expect_stream_error("cpu,cuda:0", "mixing", NULL);
  expect_stream_error("cuda:zero", "cuda:zero", NULL);
}

/* Saving a GPU stream writes the weights it learned. */
/* Frames pushed from device memory (packed bytes, padded rows) give exactly what the same frames
 * converted on the host give, reconstruction loss included (its target is the device frame). */
static void test_device_frames(void) {
  enum { W = 12, H = 12, PS = 4, PITCH = W * PS + 16, N = 16 };
  const float a[3] = {1.0f / 255, 1.0f / 200, 1.0f / 100}, b[3] = {-0.5f, -0.25f, 0.1f};
  const int off[3] = {2, 1, 0}; /* BGRx */
  unsigned char *bytes = malloc((size_t)N * PITCH * H);
  unsigned long long seed = 7;
  for (int i = 0; i < N * PITCH * H; i++) bytes[i] = (unsigned char)(pt_test_rand_u64(&seed) >> 56);
  float *outs[2], *losses[2], *w[2];
  int64_t nw[2] = {0, 0};
  for (int run = 0; run < 2; run++) {
    outs[run] = calloc((size_t)N * 3 * W * H, sizeof(float));
    losses[run] = calloc(N, sizeof(float));
    w[run] = NULL;
    pt_model *m = load("residual.onnx");
    if (!m) return;
    char devices[64];
    pt_stream_opts o;
    pt_stream_opts_init(&o);
    o.devices = fit("cuda:0,cuda:1", devices, sizeof devices);
    o.balance = "8,-1";
    o.train.enabled = true;
    o.train.loss = PT_LOSS_RECONSTRUCTION;
    o.train.optimizer = PT_OPT_ADAM;
    o.train.lr = 1e-3f;
    pt_stream *s = NULL;
    pt_error err;
    pt_error_clear(&err);
    if (pt_stream_new(m, &o, &s, &err)) {
      CHECK(0, "%s", err.msg);
      pt_model_free(m);
      return;
    }
    unsigned char *dev = NULL;
    cudaSetDevice(0);
    cudaMalloc((void **)&dev, (size_t)PITCH * H);
    float x[3 * W * H];
    pt_result r;
    for (int t = 0; t < N; t++) {
      const unsigned char *img = bytes + (size_t)t * PITCH * H;
      pt_status st;
      if (run == 0) {
        cudaMemcpy(dev, img, (size_t)PITCH * H, cudaMemcpyHostToDevice);
        pt_device_frame f = {dev,
                             PITCH,
                             W,
                             H,
                             PS,
                             {off[0], off[1], off[2], 0},
                             {a[0], a[1], a[2], 0},
                             {b[0], b[1], b[2], 0}};
        st = pt_stream_push_device(s, &f, NULL, NULL);
        /* the frame is converted on return: scribbling over it changes nothing */
        cudaMemset(dev, 0xff, (size_t)PITCH * H);
      } else {
        for (int c = 0; c < 3; c++)
          for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++)
              x[(c * H + y) * W + xx] = (float)img[y * PITCH + xx * PS + off[c]] * a[c] + b[c];
        st = pt_stream_push(s, x, NULL, NULL);
      }
      CHECK(st == PT_OK, "push (%s): %s", run ? "host" : "device", pt_stream_last_error(s));
      while (pt_stream_pop(s, &r) == PT_OK) {
        memcpy(outs[run] + r.frame * 3 * W * H, r.output, sizeof(float) * 3 * W * H);
        losses[run][r.frame] = r.loss;
      }
    }
    pt_stream_drain(s);
    while (pt_stream_pop(s, &r) == PT_OK) {
      memcpy(outs[run] + r.frame * 3 * W * H, r.output, sizeof(float) * 3 * W * H);
      losses[run][r.frame] = r.loss;
    }
    if (run == 0) { /* the errors a caller can make */
      pt_device_frame bad = {dev, PITCH, W + 1, H, PS, {0, 1, 2, 0}, {1, 1, 1, 1}, {0, 0, 0, 0}};
      CHECK(pt_stream_push_device(s, &bad, NULL, NULL) == PT_ERR_SHAPE &&
                strstr(pt_stream_last_error(s), "13x12"),
            "a frame of the wrong size is refused: %s", pt_stream_last_error(s));
      bad.width = W;
      bad.offset[1] = PS;
      CHECK(pt_stream_push_device(s, &bad, NULL, NULL) == PT_ERR_INVALID,
            "an offset outside the pixel is refused: %s", pt_stream_last_error(s));
    }
    pt_stream_free(s);
    cudaFree(dev);
    w[run] = weights_of(m, &nw[run]);
    pt_model_free(m);
  }
  CHECK(norm_err(outs[0], outs[1], (int64_t)N * 3 * W * H) == 0 &&
            norm_err(losses[0], losses[1], N) == 0 && nw[0] == nw[1] &&
            norm_err(w[0], w[1], nw[0]) == 0 && isfinite(losses[0][N - 1]),
        "device frames train exactly as the same frames from the host");
  for (int run = 0; run < 2; run++) {
    free(outs[run]);
    free(losses[run]);
    free(w[run]);
  }

  /* a CPU stream has no device to take the frame */
  pt_model *m = load("residual.onnx");
  pt_stream *s = NULL;
  pt_error err;
  if (m && pt_stream_new(m, NULL, &s, &err) == PT_OK) {
    pt_device_frame f = {bytes, PITCH, W, H, PS, {0, 1, 2, 0}, {1, 1, 1, 1}, {0, 0, 0, 0}};
    CHECK(pt_stream_push_device(s, &f, NULL, NULL) == PT_ERR_STATE, "a CPU stream refuses");
    pt_stream_free(s);
  }
  pt_model_free(m);
  free(bytes);
}

static void test_save(void) {
  pt_model *m = load("convnet.onnx");
  if (!m) return;
  pt_stream_opts o;
  pt_stream_opts_init(&o);
  o.devices = "cuda:0,cuda:1";
  o.balance = "5,-1";
  o.train.enabled = true;
  o.train.loss = PT_LOSS_CROSS_ENTROPY;
  o.train.lr = 0.05f;
  pt_stream *s = NULL;
  pt_error err;
  pt_error_clear(&err);
  if (pt_stream_new(m, &o, &s, &err)) {
    CHECK(0, "%s", err.msg);
    pt_model_free(m);
    return;
  }
  int64_t n0;
  float *w0 = weights_of(m, &n0);
  pt_shape ish = pt_model_input_shape(m);
  float *x = calloc(pt_shape_numel(&ish), sizeof *x);
  pt_result r;
  for (int t = 0; t < 8; t++) {
    x[t] = 1.0f;
    pt_target tg = {.class_index = 3};
    pt_stream_push(s, x, &tg, NULL);
    while (pt_stream_pop(s, &r) == PT_OK) {
    }
  }
  char path[] = "/tmp/partime-cuda-save-XXXXXX";
  int fd = mkstemp(path);
  if (fd >= 0) close(fd);
  CHECK(pt_stream_save(s, path) == PT_OK, "save: %s", pt_stream_last_error(s));
  pt_model *back = NULL;
  CHECK(pt_model_load(path, &back, &err) == PT_OK, "the saved model loads: %s", err.msg);
  if (back) {
    int64_t n1, n2;
    float *w1 = weights_of(back, &n1), *w2 = weights_of(m, &n2);
    CHECK(n1 == n0 && n2 == n0 && norm_err(w1, w2, n0) == 0 && norm_err(w1, w0, n0) > 0,
          "the file holds the trained weights (and they moved)");
    free(w1);
    free(w2);
    pt_model_free(back);
  }
  unlink(path);
  free(w0);
  free(x);
  pt_stream_free(s);
  pt_model_free(m);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL_DIR [--no-device]\n", argv[0]);
    return 2;
  }
  dir = argv[1];
  if (argc > 2 && strcmp(argv[2], "--no-device") == 0) {
    expect_stream_error("cuda:0", "cuda:0", "no CUDA GPU");
    PT_TEST_END();
  }
  int gate = pt_cuda_test_gate();
  if (gate >= 0) return gate;
  cudaGetDeviceCount(&gpus);
#ifdef PT_CUDA_SIM
  CHECK(gpus == 2, "the simulation has %d devices, the layouts want 2", gpus);
#endif
  test_errors();
  test_equivalence(false);
  test_guard(false);
  test_equivalence(true);
  test_guard(true);
  test_split();
  test_save();
  test_device_frames();
  PT_TEST_END();
}
