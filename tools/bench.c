/* `partime balance` and `partime bench`: timed runs over the synthetic clip.
 *
 * Both read per-stage busy time from pt_stream_get_stats and difference two snapshots, so the
 * warm-up (first-touch page faults, caches, the pipeline's fill) stays out of the figures. Unless
 * --devices says otherwise, each stage gets a cpu device of its own: that is the configuration
 * whose speedup the numbers predict. */
#define _GNU_SOURCE /* pthread_setaffinity_np */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tool.h"

/* Pushes synthetic frames with whatever target the loss needs. The frames are generated before
 * timing starts and then cycled, so the figures measure the stream, not the pattern generator. */
typedef struct feeder {
  pt_shape in, out;
  int64_t in_len, out_len;
  pt_loss loss;
  bool train;
  int64_t n_frames; /* pre-generated frames, cycled */
  float *frames, *zeros;
} feeder;

static int feeder_init(feeder *f, const pt_model *m, const pt_stream_opts *so) {
  memset(f, 0, sizeof *f);
  f->in = pt_model_input_shape(m);
  f->out = pt_model_output_shape(m);
  f->in_len = pt_shape_numel(&f->in);
  f->out_len = pt_shape_numel(&f->out);
  f->loss = so->train.loss;
  f->train = so->train.enabled;
  /* Up to 64 frames, within 64 MB. */
  f->n_frames = (64 << 20) / (f->in_len * (int64_t)sizeof(float));
  if (f->n_frames > 64) f->n_frames = 64;
  if (f->n_frames < 1) f->n_frames = 1;
  f->frames = malloc(sizeof(float) * (size_t)(f->in_len * f->n_frames));
  f->zeros = calloc((size_t)f->out_len, sizeof(float));
  if (!f->frames || !f->zeros) return tool_fail("out of memory");
  for (int64_t t = 0; t < f->n_frames; t++)
    tool_synth_frame(&f->in, t, f->out_len, f->frames + t * f->in_len);
  return TOOL_EXIT_OK;
}

static void feeder_free(feeder *f) {
  free(f->frames);
  free(f->zeros);
}

static pt_status feed(feeder *f, pt_stream *s, int64_t t, void *user) {
  pt_target target = {0};
  const pt_target *tp = NULL;
  int64_t k = t % f->n_frames;
  if (f->train && f->loss == PT_LOSS_CROSS_ENTROPY) {
    target.class_index = tool_synth_class(k, f->out_len);
    tp = &target;
  } else if (f->train && f->loss == PT_LOSS_MSE) {
    target.tensor = f->zeros;
    tp = &target;
  }
  return pt_stream_push(s, f->frames + k * f->in_len, tp, user);
}

static bool push_failed(pt_status st) {
  return st != PT_OK && st != PT_AGAIN;
}

/* "cpu,cpu,...": one cpu device per stage. */
static char *cpu_per_stage(int d) {
  char *s = malloc((size_t)d * 4 + 1);
  if (!s) return NULL;
  s[0] = '\0';
  for (int i = 0; i < d; i++) strcat(s, i ? ",cpu" : "cpu");
  return s;
}

static int parse_stage_count(const char *cmd, const char *s, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (end == s || *end || v < 1 || v > PT_MAX_STAGES)
    return tool_usage_error(cmd, "a stage count must be a number from 1 to %d, not '%s'",
                            PT_MAX_STAGES, s);
  *out = (int)v;
  return TOOL_EXIT_OK;
}

/* "Conv Relu MaxPool ..." for nodes [first, first + n), cut to fit `size`. */
static void describe_ops(const pt_model *m, int first, int n, char *buf, size_t size) {
  size_t len = 0;
  buf[0] = '\0';
  for (int i = first; i < first + n; i++) {
    pt_node_info ni;
    if (pt_model_node_info(m, i, &ni) != PT_OK) continue;
    const char *op = ni.op_type ? ni.op_type : "?";
    size_t need = strlen(op) + (len ? 1 : 0);
    if (len + need + 4 >= size) {
      snprintf(buf + len, size - len, "%s...", len ? " " : "");
      return;
    }
    len += (size_t)snprintf(buf + len, size - len, "%s%s", len ? " " : "", op);
  }
}

static int pop_all(pt_stream *s) {
  pt_result r;
  pt_status st;
  while ((st = pt_stream_pop(s, &r)) == PT_OK) {
  }
  return st == PT_AGAIN ? TOOL_EXIT_OK : tool_fail("%s", pt_stream_last_error(s));
}

/* Pushes frame t with no user data and pops every result that is out. */
static int feed_and_pop(feeder *f, pt_stream *s, int64_t t) {
  if (push_failed(feed(f, s, t, NULL))) return tool_fail("%s", pt_stream_last_error(s));
  return pop_all(s);
}

int tool_cmd_balance(int argc, char **argv) {
  const char *cmd = "balance";
  tool_opts o;
  int rc =
      tool_parse_opts(argc, argv, OPT_TRAIN | OPT_STAGES | OPT_DEVICES | OPT_BALANCE, 1, 1, &o);
  if (rc) return rc < 0 ? TOOL_EXIT_OK : rc;
  if (!o.stages) return tool_usage_error(cmd, "--stages D is required");
  int d = 1;
  if ((rc = parse_stage_count(cmd, o.stages, &d)) != TOOL_EXIT_OK) return rc;

  pt_error err;
  pt_model *m = NULL;
  pt_stream *s = NULL;
  feeder f = {0};
  char *devices = NULL;
  if (pt_model_load(o.pos[0], &m, &err) != PT_OK) return tool_fail("%s", err.msg);
  pt_stream_opts so;
  if ((rc = tool_stream_opts(cmd, &o, m, &so)) != TOOL_EXIT_OK) goto done;
  if (so.train.enabled && so.train.loss == PT_LOSS_NONE) so.train.loss = PT_LOSS_MSE;
  if (!o.devices) so.devices = devices = cpu_per_stage(d);
  so.stages = d;
  /* Stages run one after another on this thread, so each one's cost is measured alone. */
  so.threaded = false;
  if ((rc = feeder_init(&f, m, &so)) != TOOL_EXIT_OK) goto done;
  if (pt_stream_new(m, &so, &s, &err) != PT_OK) {
    rc = tool_fail("%s", err.msg);
    goto done;
  }

  /* Fill the pipeline and warm up, then time at least 20 frames and about a second. */
  int64_t t = 0;
  pt_stream_stats a, b;
  for (; t < 2 * d + 3 && rc == TOOL_EXIT_OK; t++) {
    rc = feed_and_pop(&f, s, t);
  }
  if (rc != TOOL_EXIT_OK) goto done;
  pt_stream_get_stats(s, &a);
  double t0 = tool_now();
  for (int64_t k = 0; rc == TOOL_EXIT_OK && (k < 20 || (tool_now() - t0 < 1.0 && k < 2000));
       k++, t++) {
    rc = feed_and_pop(&f, s, t);
  }
  if (rc != TOOL_EXIT_OK) goto done;
  pt_stream_get_stats(s, &b);

  printf("model     %s\n", pt_model_name(m));
  printf("mode      %s\n",
         so.train.enabled ? "training (forward + backward + update)" : "inference");
  char chosen[1024];
  pt_stream_balance(s, chosen, sizeof chosen);
  printf("stages    %d (balance %s: %s)\n", b.stages, o.balance ? o.balance : "auto", chosen);
  for (int j = 0; j < b.stages; j++)
    if (b.stage[j].split_channels)
      printf("          stage %d also runs output channels 0-%d of node %d; stage %d the rest\n", j,
             b.stage[j].split_channels - 1, b.stage[j].first_node + b.stage[j].n_nodes, j + 1);
  printf("\n");
  printf("%5s  %-8s %-12s %-48s %10s %13s\n", "stage", "device", "nodes", "ops", "cost_ms",
         "predicted_ms");
  double total = 0, worst = 0;
  for (int j = 0; j < b.stages; j++) {
    const pt_stage_stats *sb = &b.stage[j], *sa = &a.stage[j];
    int64_t ticks = sb->ticks - sa->ticks;
    double cost = ticks > 0 ? (sb->busy_s - sa->busy_s) / (double)ticks : 0;
    char range[40], ops[49];
    if (sb->n_nodes > 0)
      snprintf(range, sizeof range, "%d-%d (%d)%s", sb->first_node,
               sb->first_node + sb->n_nodes - 1, sb->n_nodes, sb->split_channels ? "+" : "");
    else
      snprintf(range, sizeof range, "none");
    describe_ops(m, sb->first_node, sb->n_nodes, ops, sizeof ops);
    printf("%5d  %-8s %-12s %-48s %10.4f %13.4f\n", j, sb->device, range, ops, cost * 1e3,
           sb->predicted_s * 1e3);
    total += cost;
    if (cost > worst) worst = cost;
  }
  printf("\ntotal     %.4f ms per frame, slowest stage %.4f ms\n", total * 1e3, worst * 1e3);
  printf("predicted speedup %.2fx over one stage (total cost / slowest stage's cost)\n",
         worst > 0 ? total / worst : 1.0);

done:
  pt_stream_free(s);
  pt_model_free(m);
  feeder_free(&f);
  free(devices);
  return rc;
}

/* Push times of frames in flight, indexed by frame number modulo the ring. */
#define LAT_RING 65536

typedef struct bench_row {
  int stages;
  double fps, latency_ms;
  double work_ms; /* the stages' busy time per frame, summed over stages */
} bench_row;

static int bench_one(const tool_opts *o, int d, int64_t n, double *lat_ring, bench_row *row,
                     double base_fps) {
  pt_error err;
  pt_model *m = NULL;
  pt_stream *s = NULL;
  feeder f = {0};
  char *devices = NULL;
  int rc;
  /* A fresh model per configuration: training must not carry weights from one to the next. */
  if (pt_model_load(o->pos[0], &m, &err) != PT_OK) return tool_fail("%s", err.msg);
  pt_stream_opts so;
  if ((rc = tool_stream_opts("bench", o, m, &so)) != TOOL_EXIT_OK) goto done;
  if (so.train.enabled && so.train.loss == PT_LOSS_NONE) so.train.loss = PT_LOSS_MSE;
  if (!o->devices) so.devices = devices = cpu_per_stage(d);
  so.stages = d;
  so.threaded = true;
  if ((rc = feeder_init(&f, m, &so)) != TOOL_EXIT_OK) goto done;
  if (pt_stream_new(m, &so, &s, &err) != PT_OK) {
    rc = tool_fail("%s", err.msg);
    goto done;
  }

  int64_t t = 0, warm = 8 + 2 * (int64_t)d;
  for (; t < warm && rc == TOOL_EXIT_OK; t++) {
    rc = feed_and_pop(&f, s, t);
  }
  if (rc != TOOL_EXIT_OK) goto done;

  /* Timed frames carry their number + 1 as user data; warm-up frames carry NULL. */
  pt_stream_stats a, b;
  pt_stream_get_stats(s, &a);
  double t0 = tool_now(), lat_sum = 0;
  int64_t lat_n = 0;
  for (int64_t k = 0; k <= n && rc == TOOL_EXIT_OK; k++) {
    if (k < n) {
      lat_ring[k % LAT_RING] = tool_now();
      if (push_failed(feed(&f, s, t + k, (void *)(intptr_t)(k + 1)))) {
        rc = tool_fail("%s", pt_stream_last_error(s));
        break;
      }
    } else if (pt_stream_drain(s) != PT_OK) {
      rc = tool_fail("%s", pt_stream_last_error(s));
      break;
    }
    pt_result r;
    pt_status st;
    while ((st = pt_stream_pop(s, &r)) == PT_OK) {
      intptr_t id = (intptr_t)r.user;
      if (id > 0) {
        lat_sum += tool_now() - lat_ring[(id - 1) % LAT_RING];
        lat_n++;
      }
    }
    if (st != PT_AGAIN) rc = tool_fail("%s", pt_stream_last_error(s));
  }
  double elapsed = tool_now() - t0;
  if (rc != TOOL_EXIT_OK) goto done;
  pt_stream_get_stats(s, &b);

  row->stages = b.stages;
  row->fps = (double)n / elapsed;
  row->work_ms = 0;
  for (int j = 0; j < b.stages; j++) row->work_ms += b.stage[j].busy_s - a.stage[j].busy_s;
  row->work_ms *= 1e3 / (double)n;
  row->latency_ms = lat_n ? 1e3 * lat_sum / (double)lat_n : NAN;
  char speed[16];
  if (base_fps < 0)
    snprintf(speed, sizeof speed, "1.00x");
  else if (base_fps > 0)
    snprintf(speed, sizeof speed, "%.2fx", row->fps / base_fps);
  else
    snprintf(speed, sizeof speed, "-");
  printf("%6d  %-16s %10.1f %12.3f %8s  ", b.stages, so.devices ? so.devices : "cpu", row->fps,
         row->latency_ms, speed);
  for (int j = 0; j < b.stages; j++)
    printf("%s%d:%.0f%%", j ? " " : "", j,
           100.0 * (b.stage[j].busy_s - a.stage[j].busy_s) / elapsed);
  printf("\n");
  fflush(stdout);

done:
  pt_stream_free(s);
  pt_model_free(m);
  feeder_free(&f);
  free(devices);
  return rc;
}

/* Opens when all d streams have warmed up, or at once when one failed or could not start. */
typedef struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int waiting, expected;
  bool open;
} gate;

static void gate_open(gate *g) {
  pthread_mutex_lock(&g->mu);
  g->open = true;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

static void gate_pass(gate *g) {
  pthread_mutex_lock(&g->mu);
  if (++g->waiting == g->expected) g->open = true;
  pthread_cond_broadcast(&g->cv);
  while (!g->open) pthread_cond_wait(&g->cv, &g->mu);
  pthread_mutex_unlock(&g->mu);
}

/* --independent: D one-stage streams at the same time, each on a thread pinned to a core of its
 * own (the j-th core the process may use for stream j: where the default devices place stage j
 * on an unrestricted machine) with its own copy of the model.
 * Nothing passes between them, so their combined frames/s is what the D cores give together at
 * that moment: the ceiling a D-stage pipeline on the same cores can be held against. Each stream
 * runs unthreaded (its stage computes on the pinned thread), and the timing window closes when
 * the first stream has done its n frames, so every figure is taken while all D run. */
typedef struct indep {
  const tool_opts *o;
  int index, core;
  int64_t n;
  gate *start;
  atomic_bool *stop, *failed;
  int64_t frames;
  double elapsed, busy;
  int rc;
} indep;

static void *indep_main(void *arg) {
  indep *w = arg;
  pt_error err;
  pt_model *m = NULL;
  pt_stream *s = NULL;
  feeder f = {0};
  char device[32];
  pt_stream_opts so;
  int rc = TOOL_EXIT_OK;
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(w->core, &set);
  if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
    rc = tool_fail("independent stream %d: cannot pin a thread to core %d", w->index, w->core);
#endif
  if (rc == TOOL_EXIT_OK && pt_model_load(w->o->pos[0], &m, &err) != PT_OK)
    rc = tool_fail("%s", err.msg);
  if (rc == TOOL_EXIT_OK) rc = tool_stream_opts("bench", w->o, m, &so);
  if (rc == TOOL_EXIT_OK) {
    if (so.train.enabled && so.train.loss == PT_LOSS_NONE) so.train.loss = PT_LOSS_MSE;
    snprintf(device, sizeof device, "cpu:%d", w->core);
    so.devices = device;
    so.balance = NULL;
    so.stages = 1;
    so.threaded = false;
    rc = feeder_init(&f, m, &so);
  }
  if (rc == TOOL_EXIT_OK && pt_stream_new(m, &so, &s, &err) != PT_OK) rc = tool_fail("%s", err.msg);
  int64_t t = 0;
  for (; t < 10 && rc == TOOL_EXIT_OK; t++) {
    rc = feed_and_pop(&f, s, t);
  }
  /* A failed stream opens the gate, so that none waits for ever. */
  if (rc != TOOL_EXIT_OK) {
    atomic_store(w->failed, true);
    gate_open(w->start);
  } else
    gate_pass(w->start);
  if (rc == TOOL_EXIT_OK && !atomic_load(w->failed)) {
    pt_stream_stats a, b;
    pt_stream_get_stats(s, &a);
    double t0 = tool_now();
    int64_t k = 0;
    while (rc == TOOL_EXIT_OK && k < w->n && !atomic_load(w->stop)) {
      rc = feed_and_pop(&f, s, t + k);
      k++;
    }
    atomic_store(w->stop, true);
    w->elapsed = tool_now() - t0;
    w->frames = k;
    pt_stream_get_stats(s, &b);
    w->busy = b.stage[0].busy_s - a.stage[0].busy_s;
  }
  pt_stream_free(s);
  pt_model_free(m);
  feeder_free(&f);
  w->rc = rc;
  return NULL;
}

/* Runs d independent one-stage streams at once and prints their row; fills `row` with their
 * combined frames/s and the mean per-frame work. */
static int bench_independent(const tool_opts *o, int d, int64_t n, bench_row *row,
                             double base_fps) {
  /* The cores this process may use (taskset, a container's cpuset), in order. */
  int cores[CPU_SETSIZE], ncores = 0;
#ifdef __linux__
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0)
    for (int c = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &allowed)) cores[ncores++] = c;
#endif
  if (ncores == 0) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    for (long c = 0; c < online && c < CPU_SETSIZE; c++) cores[ncores++] = (int)c;
  }
  if (ncores == 0) cores[ncores++] = 0;
  indep w[PT_MAX_STAGES];
  pthread_t th[PT_MAX_STAGES];
  gate start = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, d, false};
  atomic_bool stop = false, failed = false;
  int started = 0, rc = TOOL_EXIT_OK;
  for (int j = 0; j < d; j++) {
    w[j] = (indep){.o = o,
                   .index = j,
                   .core = cores[j % ncores],
                   .n = n,
                   .start = &start,
                   .stop = &stop,
                   .failed = &failed};
  }
  for (; started < d; started++)
    if (pthread_create(&th[started], NULL, indep_main, &w[started]) != 0) break;
  if (started < d) {
    atomic_store(&failed, true);
    gate_open(&start);
  }
  for (int j = 0; j < started; j++) pthread_join(th[j], NULL);
  pthread_mutex_destroy(&start.mu);
  pthread_cond_destroy(&start.cv);
  if (started < d) return tool_fail("cannot start %d threads for --independent", d);

  double fps = 0, per_frame = 0, work = 0;
  for (int j = 0; j < d && rc == TOOL_EXIT_OK; j++) {
    if (w[j].rc != TOOL_EXIT_OK)
      rc = w[j].rc;
    else if (w[j].frames < 1 || w[j].elapsed <= 0)
      rc = tool_fail("independent stream %d timed no frames", j);
    else {
      fps += (double)w[j].frames / w[j].elapsed;
      per_frame += w[j].elapsed / (double)w[j].frames / d;
      work += w[j].busy / (double)w[j].frames / d;
    }
  }
  if (rc != TOOL_EXIT_OK) return rc;
  row->stages = d;
  row->fps = fps;
  row->latency_ms = per_frame * 1e3;
  row->work_ms = work * 1e3;
  char label[16], speed[16];
  snprintf(label, sizeof label, "%dx1", d);
  if (base_fps > 0)
    snprintf(speed, sizeof speed, "%.2fx", fps / base_fps);
  else
    snprintf(speed, sizeof speed, "-");
  printf("%6s  %-16s %10.1f %12.3f %8s  ", label, "independent", fps, per_frame * 1e3, speed);
  for (int j = 0; j < d; j++)
    printf("%s%d:%.0f%%", j ? " " : "", w[j].core, 100.0 * w[j].busy / w[j].elapsed);
  printf("\n");
  fflush(stdout);
  return TOOL_EXIT_OK;
}

int tool_cmd_bench(int argc, char **argv) {
  const char *cmd = "bench";
  tool_opts o;
  int rc = tool_parse_opts(argc, argv,
                           OPT_TRAIN | OPT_STAGES | OPT_DEVICES | OPT_BALANCE | OPT_FRAMES |
                               OPT_CUDA_GRAPHS | OPT_INDEPENDENT,
                           1, 1, &o);
  if (rc) return rc < 0 ? TOOL_EXIT_OK : rc;
  if (o.independent && o.devices)
    return tool_usage_error(cmd, "--independent compares with one stream per CPU core of its own; "
                                 "leave out --devices");
  int list[PT_MAX_STAGES], n_list = 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", o.stages ? o.stages : "1,2");
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (n_list == PT_MAX_STAGES) return tool_usage_error(cmd, "too many stage counts");
    if ((rc = parse_stage_count(cmd, tok, &list[n_list++])) != TOOL_EXIT_OK) return rc;
  }
  if (n_list == 0) return tool_usage_error(cmd, "--stages needs a list such as 1,2,4");
  int64_t n = o.frames ? o.frames : 200;

  double *ring = malloc(sizeof(double) * LAT_RING);
  if (!ring) return tool_fail("out of memory");
  printf("model %s, %s, %" PRId64 " frames per configuration after a warm-up\n\n", o.pos[0],
         o.train ? "training" : "inference", n);
  printf("%6s  %-16s %10s %12s %8s  %s\n", "stages", "devices", "frames/s", "latency_ms", "speedup",
         "busy");
  /* The one-stage run is the baseline; run it first when it is in the list. */
  bench_row base = {0};
  for (int i = 0; i < n_list && rc == TOOL_EXIT_OK; i++)
    if (list[i] == 1) {
      rc = bench_one(&o, 1, n, ring, &base, -1);
      break;
    }
  bool base_done = base.fps > 0;
  char notes[PT_MAX_STAGES][200];
  int n_notes = 0;
  for (int i = 0; i < n_list && rc == TOOL_EXIT_OK; i++) {
    if (list[i] == 1 && base_done) {
      base_done = false; /* printed already; later repeats of 1 run again */
      continue;
    }
    bench_row row = {0}, ind = {0};
    rc = bench_one(&o, list[i], n, ring, &row, base.fps);
    if (rc != TOOL_EXIT_OK || !o.independent || list[i] < 2) continue;
    /* Right after the pipeline, so that both see the machine in the same state. */
    rc = bench_independent(&o, list[i], n, &ind, base.fps);
    if (rc != TOOL_EXIT_OK) break;
    int len = snprintf(notes[n_notes], sizeof notes[0],
                       "%d stages: %.0f%% of %d independent streams' frames/s", list[i],
                       100.0 * row.fps / ind.fps, list[i]);
    if (base.work_ms > 0 && len > 0 && (size_t)len < sizeof notes[0])
      snprintf(notes[n_notes] + len, sizeof notes[0] - (size_t)len,
               "; work per frame %.2fx one stage's alone, the independent streams' %.2fx",
               row.work_ms / base.work_ms, ind.work_ms / base.work_ms);
    n_notes++;
  }
  if (rc == TOOL_EXIT_OK && n_notes) {
    printf("\n");
    for (int i = 0; i < n_notes; i++) printf("%s\n", notes[i]);
  }
  free(ring);
  return rc;
}
