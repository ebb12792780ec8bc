/* The PARTIME engine: stages over time, one worker per stage, learning on every tick.
 *
 * Schedule. Tick k is issued by a push (a frame enters stage 0) or by drain (a bubble enters).
 * At tick k stage j works on whatever entered at tick k - j, reading boundary j-1's buffer
 * (k-1)%2 and writing boundary j's buffer k%2 (ping-pong: buffers swap roles, nothing is copied
 * between them). Gradients flow the other way through the same boundaries: stage j reads the
 * gradient stage j+1 wrote at tick k-1 from gbuf[(k-1)%2] and writes its own into gbuf[k%2] of
 * boundary j-1. So stage j may start tick k as soon as stages j-1 and j+1 have finished tick k-1:
 * a local dependency, no global barrier. Results therefore never depend on thread timing, and
 * running every stage as far as it may go on one thread (threaded = false) is the exact emulation
 * of the threaded run.
 *
 * Running ahead. What stage j does at tick k depends only on the frame that entered at tick k - j
 * and on its neighbours' tick k-1, not on tick k having been issued. So on CPU stages, stage j
 * runs tick k as soon as frame k - j has entered: once frame t is pushed, the stages work it
 * through to the last one without waiting for more pushes, and its result is usually ready
 * before the push that brings it out (pop still returns it at its tick, t + D - 1). The caller's
 * own work between two pushes (a GStreamer round trip) then overlaps the later stages' compute
 * instead of stalling every stage. Stage j stops at tick issued + j - 1, or at the tick the last
 * frame leaves at (its horizon); waiting for idle (drain, flush, save) waits for every stage to
 * reach it, so what a flush drops has been through every stage, and the state a flush or a save
 * sees is the same on every run.
 *
 * Boundaries. Boundary j carries every value produced at or before stage j (or fed as the frame)
 * and read after it; the graph output counts as read after the last stage. A value crossing
 * several cuts is copied forward by the stages it passes through, and its gradient is added on the
 * way back. The last stage's "boundary" holds the output and, as gradient, the loss gradient.
 *
 * Training rule (DESIGN §4). A stage updates only when it processed a real frame this tick and the
 * gradient it received came from a real frame; the flag travels with each gradient buffer. Losses
 * use the target of the frame the last stage holds (kept with the frame in its slot). A
 * non-finite loss or gradient skips the update and sends no gradient upstream; guard_limit such
 * ticks in a row restore the stage's last good weights (a copy refreshed every PT_BACKUP_EVERY
 * good updates) and reset its optimizer state. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <partime/stream.h>
#include "exec.h"
#include "partition.h"
#include "split.h"
#include "stream_internal.h"
#include "cpu/sgemm.h"
#include "fpenv.h"

double pt_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void pt_stream_log(pt_stream *s, pt_log_level lvl, const char *fmt, ...) {
  if (!s->o.log) return;
  char msg[PT_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  s->o.log(s->o.log_user, lvl, msg);
}

static pt_status fail(pt_stream *s, pt_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static pt_status fail(pt_stream *s, pt_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->last_error, sizeof s->last_error, fmt, ap);
  va_end(ap);
  return code;
}

/* ---- options ----------------------------------------------------------------------------------
 */

void pt_stream_opts_init(pt_stream_opts *o) {
  memset(o, 0, sizeof *o);
  o->stages = 1;
  o->threaded = true;
  o->cuda_graphs = false;
  o->train.loss = PT_LOSS_NONE;
  o->train.optimizer = PT_OPT_SGD;
  o->train.lr = 1e-3f;
  o->train.momentum = 0.9f;
  o->train.beta1 = 0.9f;
  o->train.beta2 = 0.999f;
  o->train.eps = 1e-8f;
  o->train.guard_limit = 3;
}

static const char *const loss_names[] = {"none", "cross-entropy", "mse", "reconstruction",
                                         "next-frame"};

pt_status pt_loss_from_string(const char *str, pt_loss *out) {
  for (int i = 0; i < (int)(sizeof loss_names / sizeof *loss_names); i++)
    if (str && strcmp(str, loss_names[i]) == 0) {
      *out = (pt_loss)i;
      return PT_OK;
    }
  return PT_ERR_INVALID;
}

const char *pt_loss_name(pt_loss l) {
  return (unsigned)l < sizeof loss_names / sizeof *loss_names ? loss_names[l] : "unknown";
}

pt_status pt_optimizer_from_string(const char *str, pt_optimizer *out) {
  if (str && strcmp(str, "sgd") == 0)
    *out = PT_OPT_SGD;
  else if (str && strcmp(str, "adam") == 0)
    *out = PT_OPT_ADAM;
  else
    return PT_ERR_INVALID;
  return PT_OK;
}

const char *pt_optimizer_name(pt_optimizer o) {
  return o == PT_OPT_ADAM ? "adam" : "sgd";
}

/* ---- devices ----------------------------------------------------------------------------------
 */

typedef struct device {
  char name[32];
  int core; /* CPU core, -1 for a GPU */
  int gpu;  /* CUDA device index, -1 for a CPU core */
} device;

static pt_status parse_devices(const char *list, int want, device *dev, int *n, pt_error *err) {
  long ncores = sysconf(_SC_NPROCESSORS_ONLN);
  if (ncores < 1) ncores = 1;
  *n = 0;
  if (!list || !*list) { /* one cpu core per stage */
    for (int i = 0; i < want; i++) {
      snprintf(dev[i].name, sizeof dev[i].name, "cpu");
      dev[i].core = (int)(i % ncores);
      dev[i].gpu = -1;
    }
    *n = want;
    return PT_OK;
  }
  int plain_cpus = 0;
  const char *p = list;
  while (*p) {
    size_t len = strcspn(p, ",");
    char tok[32];
    if (len == 0 || len >= sizeof tok)
      return pt_error_set(err, PT_ERR_DEVICE, "devices '%s': empty or overlong device name", list);
    memcpy(tok, p, len);
    tok[len] = '\0';
    if (*n >= PT_MAX_STAGES)
      return pt_error_set(err, PT_ERR_DEVICE, "devices '%s': more than %d devices", list,
                          PT_MAX_STAGES);
    device *d = &dev[(*n)++];
    snprintf(d->name, sizeof d->name, "%s", tok);
    d->gpu = -1;
    if (strcmp(tok, "cpu") == 0) {
      d->core = (int)(plain_cpus++ % ncores);
    } else if (strncmp(tok, "cpu:", 4) == 0) {
      char *end;
      long c = strtol(tok + 4, &end, 10);
      if (end == tok + 4 || *end || c < 0 || c >= ncores)
        return pt_error_set(err, PT_ERR_DEVICE,
                            "device '%s': no such CPU core (this machine has cores 0-%ld)", tok,
                            ncores - 1);
      d->core = (int)c;
    } else if (strncmp(tok, "cuda", 4) == 0) {
      pt_status st = pt_cuda_parse_device(tok, &d->gpu, err);
      if (st) return st;
      d->core = -1;
    } else {
      return pt_error_set(err, PT_ERR_DEVICE,
                          "device '%s': unknown device (expected cpu, cpu:N or cuda:N)", tok);
    }
    p += len;
    if (*p == ',') p++;
  }
  return PT_OK;
}

/* How often the caller looks at its core, at first and at most (follow_caller). */
#define PT_FOLLOW_TICKS 64
#define PT_FOLLOW_MAX_TICKS 8192
#define PT_FOLLOW_MARGIN 0.05

/* Whether the stream picks the cores: no device list, or only plain "cpu" entries. */
static bool cores_chosen(const char *list) {
  for (const char *p = list; p && *p;) {
    size_t len = strcspn(p, ",");
    if (len != 3 || strncmp(p, "cpu", 3) != 0) return false;
    p += len;
    if (*p == ',') p++;
  }
  return true;
}

/* ---- construction -----------------------------------------------------------------------------
 */

/* The cores the calling thread may run on (taskset, a cgroup's cpuset), which decide whether a
 * waiting thread may poll: polling on a core a stage needs would halve that stage. Core numbers
 * for pinning stay the machine's (parse_devices). */
static long usable_cores(void) {
  long n = 0;
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
#endif
  if (n < 1) n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n;
}

static int stage_of_node(const pt_stream *s, int node) {
  for (int j = 0; j < s->D; j++)
    if (node < s->st[j].end) return j;
  return s->D - 1;
}

/* Boundary j: values produced by stages <= j (runtime inputs count as produced before stage 0)
 * and read by a stage > j, plus the output for every j. */
static pt_status build_boundaries(pt_stream *s, pt_error *err) {
  pt_model *m = s->m;
  int *last_stage = malloc(m->n_vals * sizeof *last_stage);
  int *prod_stage = malloc(m->n_vals * sizeof *prod_stage);
  if (!last_stage || !prod_stage) goto nomem;
  for (int v = 0; v < m->n_vals; v++) {
    const pt_value *val = &m->vals[v];
    last_stage[v] = -1;
    prod_stage[v] = val->producer >= 0 ? stage_of_node(s, val->producer) : -1;
    if (val->is_int || val->kind == PT_VAL_PARAM || val->kind == PT_VAL_CONST) prod_stage[v] = -2;
  }
  for (int i = 0; i < m->n_nodes; i++)
    for (int k = 0; k < m->nodes[i].n_in; k++) {
      int v = m->nodes[i].in[k];
      if (v >= 0) {
        int js = stage_of_node(s, i);
        if (js > last_stage[v]) last_stage[v] = js;
      }
    }
  last_stage[m->output] = s->D;
  for (int j = 0; j < s->D; j++) {
    boundary *b = &s->bd[j];
    b->vals = malloc(m->n_vals * sizeof *b->vals);
    b->off = malloc(m->n_vals * sizeof *b->off);
    if (!b->vals || !b->off) goto nomem;
    for (int v = 0; v < m->n_vals; v++) {
      if (prod_stage[v] == -2) continue;
      bool cross = (j < s->D - 1) ? (prod_stage[v] <= j && last_stage[v] > j) : (v == m->output);
      if (!cross) continue;
      b->vals[b->n] = v;
      b->off[b->n] = b->floats;
      b->floats += (m->vals[v].numel + 15) / 16 * 16;
      b->n++;
    }
    for (int i = 0; i < 2 && !s->cuda; i++) { /* a CUDA stream's live on its devices */
      b->buf[i] = calloc(b->floats ? b->floats : 1, sizeof(float));
      b->gbuf[i] = calloc(b->floats ? b->floats : 1, sizeof(float));
      if (!b->buf[i] || !b->gbuf[i]) goto nomem;
    }
  }
  free(last_stage);
  free(prod_stage);
  return PT_OK;
nomem:
  free(last_stage);
  free(prod_stage);
  return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory allocating stage boundaries", m->name);
}

int pt_boundary_index(const boundary *b, int v) {
  for (int i = 0; i < b->n; i++)
    if (b->vals[i] == v) return i;
  return -1;
}

static pt_status stage_init(pt_stream *s, stage *g, pt_error *err) {
  pt_model *m = s->m;
  pt_status st = pt_exec_init(&g->x, m, g->first, g->end, s->o.train.enabled,
                              s->o.train.enabled && g->j > 0, err);
  if (st) return st;
  g->ext = malloc(m->n_vals * sizeof *g->ext);
  if (!g->ext) goto nomem;
  for (int v = 0; v < m->n_vals; v++)
    if (pt_exec_is_external(&g->x, v)) g->ext[g->n_ext++] = v;
  for (int i = 0; i < g->x.n_params; i++) g->n_param_floats += m->vals[g->x.params[i]].numel;
  if (g->n_param_floats) {
    g->opt_m = calloc(g->n_param_floats, sizeof(float));
    g->opt_v = calloc(g->n_param_floats, sizeof(float));
    g->backup = malloc(g->n_param_floats * sizeof(float));
    if (!g->opt_m || !g->opt_v || !g->backup) goto nomem;
    float *b = g->backup;
    for (int i = 0; i < g->x.n_params; i++) {
      const pt_value *val = &m->vals[g->x.params[i]];
      memcpy(b, val->data, val->numel * sizeof(float));
      b += val->numel;
    }
  }
  return PT_OK;
nomem:
  return pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory allocating stage %d", m->name, g->j);
}

static void *stage_main(void *arg);

/* Frame memory: pinned for a CUDA stream (copies to and from it overlap with work). */
static void *host_alloc(const pt_stream *s, size_t bytes) {
  return s->cuda ? pt_cuda_host_alloc(s->st[0].gpu, bytes) : calloc(1, bytes);
}

static void host_free(const pt_stream *s, void *p) {
  if (s->cuda)
    pt_cuda_host_free(p);
  else
    free(p);
}

/* "nodes 0-8 and channels 0-15 of node 9": what stage j runs, in the model's nodes. */
static void stage_nodes_str(const pt_stream *s, int j, char *buf, size_t n) {
  const stage *g = &s->st[j];
  int from = g->node_first, to = g->node_end - 1;
  int in = j > 0 ? s->st[j - 1].split : 0;
  size_t used = 0;
  buf[0] = '\0';
  if (in) {
    int oc = s->model->nodes[from].p.conv.OC;
    used += (size_t)snprintf(buf, n, "channels %d-%d of node %d", in, oc - 1, from);
    from++;
  }
  if (from == to && used < n)
    used += (size_t)snprintf(buf + used, n - used, "%snode %d", used ? ", " : "", from);
  else if (from < to && used < n)
    used += (size_t)snprintf(buf + used, n - used, "%snodes %d-%d", used ? ", " : "", from, to);
  if (g->split && used < n)
    snprintf(buf + used, n - used, "%schannels 0-%d of node %d", used ? " and " : "", g->split - 1,
             g->node_end);
}

pt_status pt_stream_new(pt_model *m, const pt_stream_opts *o, pt_stream **out, pt_error *err) {
  *out = NULL;
  pt_stream_opts defaults;
  if (!o) {
    pt_stream_opts_init(&defaults);
    o = &defaults;
  }
  if (m->n_inputs != 1)
    return pt_error_set(err, PT_ERR_UNSUPPORTED,
                        "%s: a stream needs a model with exactly one input (this one has %d)",
                        m->name, m->n_inputs);
  device dev[PT_MAX_STAGES];
  int G = 0;
  int D = o->stages;
  pt_status st;
  if (D < 0 || D > PT_MAX_STAGES)
    return pt_error_set(err, PT_ERR_INVALID, "%d stages: between 1 and %d are supported", D,
                        PT_MAX_STAGES);
  if (D == 0 && (!o->devices || !*o->devices)) D = 1;
  /* by name first, so that a mixed list is refused for what it is even where no GPU answers */
  if (o->devices && strstr(o->devices, "cpu") && strstr(o->devices, "cuda"))
    return pt_error_set(err, PT_ERR_DEVICE,
                        "devices '%s': a stream runs either on CPU cores or on GPUs; mixing them "
                        "is not supported",
                        o->devices);
  if ((st = parse_devices(o->devices, D, dev, &G, err))) return st;
  int gpus = 0;
  for (int i = 0; i < G; i++) gpus += dev[i].gpu >= 0;
  if (D == 0) D = G;
  if (D > m->n_nodes)
    return pt_error_set(err, PT_ERR_INVALID, "%d stages asked for but %s has only %d nodes", D,
                        m->name, m->n_nodes);
  const pt_train_opts *t = &o->train;
  if (t->enabled) {
    if (!(t->lr >= 0) || !isfinite(t->lr))
      return pt_error_set(err, PT_ERR_INVALID, "learning rate %g: must be >= 0", t->lr);
    if (t->momentum < 0 || t->momentum >= 1 || t->beta1 < 0 || t->beta1 >= 1 || t->beta2 < 0 ||
        t->beta2 >= 1 || t->weight_decay < 0)
      return pt_error_set(err, PT_ERR_INVALID,
                          "momentum, betas must lie in [0, 1) and weight decay be >= 0");
  }

  pt_stream *s = calloc(1, sizeof *s);
  if (!s) return pt_error_set(err, PT_ERR_NOMEM, "out of memory");
  s->m = s->model = m;
  s->o = *o;
  if (o->devices) {
    snprintf(s->devices_copy, sizeof s->devices_copy, "%s", o->devices);
    s->o.devices = s->devices_copy;
  }
  s->o.balance = NULL; /* not kept: only used here */
  s->D = D;
  s->threaded = o->threaded;
  s->cuda = gpus > 0;
  s->cores = usable_cores();
  s->pop_may_spin = s->threaded && !s->cuda && s->cores > 1 && D <= s->cores;
  s->train_on = o->train.enabled;
  s->h = (hyper){o->train.lr, o->train.momentum, o->train.weight_decay};
  s->held = -1;
  s->last_frame_tick = -1;
  s->in_numel = m->vals[m->input].numel;
  s->out_numel = m->vals[m->output].numel;
  s->out_classes = (int)s->out_numel;
  s->out_is_prob = m->vals[m->output].producer >= 0 &&
                   m->nodes[m->vals[m->output].producer].op == PT_OP_SOFTMAX &&
                   !m->nodes[m->vals[m->output].producer].p.softmax.log;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  if (o->preprocess && !o->raw_bytes) {
    st = pt_error_set(err, PT_ERR_INVALID, "a preprocess function needs raw_bytes > 0");
    goto fail;
  }
  pt_loss loss = o->train.loss;
  if ((loss == PT_LOSS_RECONSTRUCTION || loss == PT_LOSS_NEXT_FRAME) &&
      s->in_numel != s->out_numel) {
    st = pt_error_set(err, PT_ERR_SHAPE,
                      "%s: loss '%s' compares the output with an input frame, but the output has "
                      "%lld elements and the input %lld",
                      m->name, pt_loss_name(loss), (long long)s->out_numel, (long long)s->in_numel);
    goto fail;
  }

  /* One BLAS thread per stage, from here on: node costs are measured as stages will run them. */
  pt_blas_init();
  static bool blas_reported;
  const char *better = NULL, *core = pt_blas_slow_kernels(&better);
  if (core && s->o.log && !__atomic_exchange_n(&blas_reported, true, __ATOMIC_RELAXED)) {
    if (strcmp(pt_sgemm_library(), "oneDNN") == 0)
      pt_stream_log(s, PT_LOG_INFO,
                    "OpenBLAS does not know this CPU and runs its generic %s kernels: matrix "
                    "products go to oneDNN's sgemm instead",
                    core);
    else
      pt_stream_log(s, PT_LOG_WARNING,
                    "OpenBLAS does not know this CPU and runs its generic %s kernels, several "
                    "times slower than its %s ones (layers that run on oneDNN are not affected): "
                    "set OPENBLAS_CORETYPE=%s in the environment",
                    core, better, better);
  }

  /* Partition. */
  pt_partition part;
  double *cost = NULL;
  const char *balance = o->balance ? o->balance : "auto";
  if (D > 1 && strcmp(balance, "auto") == 0) {
    cost = malloc(m->n_nodes * sizeof *cost);
    if (!cost) {
      st = pt_error_set(err, PT_ERR_NOMEM, "out of memory");
      goto fail;
    }
    if ((st = pt_measure_node_costs(m, o->train.enabled, cost, err))) {
      free(cost);
      goto fail;
    }
  }
  st = pt_partition_make(m, D, D > 1 ? balance : "-1", cost, o->train.enabled, &part, err);
  free(cost);
  if (st) goto fail;

  s->st = calloc(D, sizeof *s->st);
  s->bd = calloc(D, sizeof *s->bd);
  s->n_ticks_ring = 2 * D + 8;
  s->ticks = calloc(s->n_ticks_ring, sizeof *s->ticks);
  s->n_slots = D + 2 + PT_RESULT_QUEUE;
  s->slots = calloc(s->n_slots, sizeof *s->slots);
  if (!s->st || !s->bd || !s->ticks || !s->slots) {
    st = pt_error_set(err, PT_ERR_NOMEM, "out of memory");
    goto fail;
  }
  /* a convolution split across a cut: the stages run a derived graph */
  int first[PT_MAX_STAGES + 1];
  memcpy(first, part.first, sizeof first);
  bool split = false;
  for (int j = 0; j + 1 < D; j++) split |= part.split[j] > 0;
  if (split) {
    if ((st = pt_split_derive(m, &part, &s->derived, first, err))) goto fail;
    s->m = s->derived;
  }
  if (D > 1) {
    char bal[1024];
    pt_partition_str(&part, bal, sizeof bal);
    pt_stream_log(s, PT_LOG_INFO, "balance %s", bal);
  }
  for (int j = 0; j < D; j++) {
    stage *g = &s->st[j];
    g->s = s;
    g->j = j;
    g->first = first[j];
    g->end = first[j + 1];
    g->node_first = part.first[j];
    g->node_end = part.first[j + 1];
    g->split = j + 1 < D ? part.split[j] : 0;
    g->predicted_s = part.cost[j];
    int di = (int)((int64_t)j * G / D);
    snprintf(g->device, sizeof g->device, "%s", dev[di].name);
    g->core = dev[di].core;
    g->gpu = dev[di].gpu;
  }
  /* A waiting CPU stage spins only on a core of its own: not with more stages than cores, nor on
   * a core another stage is pinned to (devices "cpu:0,cpu:0"), where it would hold that stage up.
   */
  for (int j = 0; j < D; j++) {
    stage *g = &s->st[j];
    g->spin = !s->cuda && D <= s->cores;
    for (int i = 0; i < D && g->spin; i++)
      if (i != j && g->core >= 0 && s->st[i].core == g->core) g->spin = false;
  }
  s->follow = s->threaded && !s->cuda && D >= 2 && D == s->cores && cores_chosen(o->devices);
  for (int j = 0; j < D; j++)
    if (!isfinite(s->st[j].predicted_s)) s->follow = false;
#ifdef __linux__
  cpu_set_t mine;
  if (s->follow && sched_getaffinity(0, sizeof mine, &mine) != 0) s->follow = false;
  for (int j = 0; j < D && s->follow; j++) /* distinct cores, all of them the caller's */
    if (s->st[j].core < 0 || !CPU_ISSET(s->st[j].core, &mine) || !s->st[j].spin) s->follow = false;
#else
  s->follow = false;
#endif
  s->follow_every = PT_FOLLOW_TICKS;
  s->follow_next = PT_FOLLOW_TICKS;
  for (int i = 0; i < s->n_slots; i++) {
    slot *sl = &s->slots[i];
    sl->input = host_alloc(s, s->in_numel * sizeof(float));
    sl->output = host_alloc(s, s->out_numel * sizeof(float));
    sl->target = host_alloc(s, s->out_numel * sizeof(float));
    if (!sl->input || !sl->output || !sl->target) {
      st = pt_error_set(err, PT_ERR_NOMEM, "out of memory allocating frame slots");
      goto fail;
    }
  }
  s->raw_open = -1;
  for (int i = 0; i < PT_RAW_RING && o->raw_bytes; i++)
    if (!(s->raw[i] = malloc(o->raw_bytes))) {
      st = pt_error_set(err, PT_ERR_NOMEM, "out of memory allocating raw frame buffers");
      goto fail;
    }
  if ((st = build_boundaries(s, err))) goto fail;
  if (s->cuda) {
    if ((st = pt_cuda_stream_init(s, err))) goto fail;
  } else {
    for (int j = 0; j < D; j++)
      if ((st = stage_init(s, &s->st[j], err))) goto fail;
  }
  if (s->threaded) {
    for (int j = 0; j < D; j++) {
      if (pthread_create(&s->st[j].thread, NULL, stage_main, &s->st[j]) != 0) {
        st = pt_error_set(err, PT_ERR_NOMEM, "could not start the worker thread of stage %d", j);
        goto fail;
      }
      s->st[j].thread_started = true;
    }
  }
  for (int j = 0; j < D; j++) {
    const stage *g = &s->st[j];
    char what[160], est[64] = "";
    stage_nodes_str(s, j, what, sizeof what);
    if (isfinite(g->predicted_s))
      snprintf(est, sizeof est, " (estimated %.3f ms per tick)", g->predicted_s * 1e3);
    pt_stream_log(s, PT_LOG_INFO, "stage %d: %s on %s%s", j, what, g->device, est);
  }
  *out = s;
  return PT_OK;
fail:
  pt_stream_free(s);
  return st;
}

void pt_stream_free(pt_stream *s) {
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  __atomic_store_n(&s->stop, true, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  for (int j = 0; s->st && j < s->D; j++)
    if (s->st[j].thread_started) pthread_join(s->st[j].thread, NULL);
  if (s->cuda && s->st) {
    pt_error err;
    pt_cuda_stream_sync(s, true, &err); /* the model keeps what the stream learned */
    pt_cuda_stream_free(s);
  }
  for (int j = 0; s->st && j < s->D; j++) {
    stage *g = &s->st[j];
    pt_exec_free(&g->x);
    free(g->ext);
    free(g->opt_m);
    free(g->opt_v);
    free(g->backup);
  }
  for (int j = 0; s->bd && j < s->D; j++) {
    boundary *b = &s->bd[j];
    free(b->vals);
    free(b->off);
    for (int i = 0; i < 2 && !s->cuda; i++) {
      free(b->buf[i]);
      free(b->gbuf[i]);
    }
  }
  for (int i = 0; s->slots && i < s->n_slots; i++) {
    host_free(s, s->slots[i].input);
    host_free(s, s->slots[i].output);
    host_free(s, s->slots[i].target);
  }
  for (int i = 0; i < PT_RAW_RING; i++) free(s->raw[i]);
  free(s->slots);
  free(s->ticks);
  free(s->st);
  free(s->bd);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  pt_split_free(s->derived);
  free(s);
}

/* ---- one stage, one tick ----------------------------------------------------------------------
 */

static void restore_backup(stage *g) {
  if (!g->n_param_floats) return; /* a stage without parameters has nothing to restore */
  pt_model *m = g->s->m;
  const float *b = g->backup;
  for (int i = 0; i < g->x.n_params; i++) {
    pt_value *val = &m->vals[g->x.params[i]];
    memcpy(val->data, b, val->numel * sizeof(float));
    b += val->numel;
  }
  memset(g->opt_m, 0, g->n_param_floats * sizeof(float));
  memset(g->opt_v, 0, g->n_param_floats * sizeof(float));
  g->opt_step = 0;
}

static void take_backup(stage *g) {
  pt_model *m = g->s->m;
  float *b = g->backup;
  for (int i = 0; i < g->x.n_params; i++) {
    const pt_value *val = &m->vals[g->x.params[i]];
    memcpy(b, val->data, val->numel * sizeof(float));
    b += val->numel;
  }
}

static void optimizer_step(stage *g, const hyper *h) {
  pt_stream *s = g->s;
  const pt_train_opts *t = &s->o.train;
  pt_model *m = s->m;
  g->opt_step++;
  int64_t off = 0;
  for (int i = 0; i < g->x.n_params; i++) {
    int v = g->x.params[i];
    pt_value *val = &m->vals[v];
    const float *gr = pt_exec_grad(&g->x, v);
    if (t->optimizer == PT_OPT_ADAM)
      pt_adam_step(val->data, gr, g->opt_m + off, g->opt_v + off, val->numel, h->lr, t->beta1,
                   t->beta2, t->eps, h->weight_decay, g->opt_step);
    else
      pt_sgd_step(val->data, gr, g->opt_m + off, val->numel, h->lr, h->momentum, h->weight_decay);
    off += val->numel;
  }
}

/* The loss of the last stage's output for the frame in slot sl; writes dloss (=). Returns false
 * when this frame has no target (no gradient). */
static bool frame_loss(pt_stream *s, slot *sl, const float *out, float *dloss, float *loss) {
  switch (s->o.train.loss) {
  case PT_LOSS_CROSS_ENTROPY:
    if (!sl->has_target) return false;
    *loss = pt_cross_entropy(dloss, out, sl->cls, s->out_classes, s->out_is_prob);
    return true;
  case PT_LOSS_MSE:
  case PT_LOSS_NEXT_FRAME:
    if (!sl->has_target) return false;
    *loss = pt_mse(dloss, out, sl->target, s->out_numel);
    return true;
  case PT_LOSS_RECONSTRUCTION:
    *loss = pt_mse(dloss, out, sl->input, s->out_numel);
    return true;
  case PT_LOSS_NONE:
    return false;
  }
  return false;
}

void pt_stream_convert_raw(pt_stream *s, slot *sl) {
  if (sl->raw < 0) return;
  s->o.preprocess(s->o.preprocess_user, s->raw[sl->raw], sl->raw_n, sl->input);
  pthread_mutex_lock(&s->mu);
  s->raw_busy[sl->raw] = false;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  sl->raw = -1;
}

static void run_tick(stage *g, int64_t k, const tick_desc *td) {
  pt_stream *s = g->s;
  pt_model *m = s->m;
  int j = g->j, D = s->D;
  int cur = (int)(k % 2), prev = (int)((k + 1) % 2);
  boundary *in = j > 0 ? &s->bd[j - 1] : NULL;
  boundary *out = &s->bd[j];
  if (in) in->greal[cur] = false; /* the gradient this stage sends at tick k, until proven real */
  if (td->slot < 0) {
    if (j == D - 1) out->greal[cur] = false;
    return; /* a bubble */
  }
  slot *sl = &s->slots[td->slot];
  double t0 = pt_now_s();
  pt_counter_add(&g->ticks_real, 1);
  if (j == 0) pt_stream_convert_raw(s, sl);

  /* Bind the inputs and the outputs that cross to the next stage (written in place). */
  for (int i = 0; i < g->n_ext; i++) {
    int v = g->ext[i];
    if (!in) {
      pt_exec_bind(&g->x, v, sl->input);
    } else {
      int bi = pt_boundary_index(in, v);
      pt_exec_bind(&g->x, v, in->buf[prev] + in->off[bi]);
    }
  }
  for (int i = 0; i < out->n; i++) {
    int v = out->vals[i];
    const pt_value *val = &m->vals[v];
    if (val->producer >= g->first && val->producer < g->end) {
      pt_exec_bind(&g->x, v, out->buf[cur] + out->off[i]);
    } else { /* passes through this stage */
      const float *src = in ? in->buf[prev] + in->off[pt_boundary_index(in, v)] : sl->input;
      memcpy(out->buf[cur] + out->off[i], src, val->numel * sizeof(float));
    }
  }
  pt_exec_forward(&g->x);

  bool train = td->train && s->o.train.enabled && s->o.train.loss != PT_LOSS_NONE;
  bool grad_real = false, bad = false;
  const float *delta = NULL; /* gradient of this stage's outgoing values, packed like out */
  if (j == D - 1) {
    const float *o = out->buf[cur] + out->off[0];
    memcpy(sl->output_to ? sl->output_to : sl->output, o, s->out_numel * sizeof(float));
    float *dl = out->gbuf[cur];
    float loss = NAN;
    /* the loss is reported whenever a target exists, training or not (an anomaly score) */
    if (s->o.train.loss != PT_LOSS_NONE && frame_loss(s, sl, o, dl, &loss)) {
      sl->loss = loss;
      if (train) {
        grad_real = isfinite(loss);
        bad = !grad_real;
      }
    }
    delta = dl;
  } else if (train) {
    grad_real = out->greal[prev];
    delta = out->gbuf[prev];
  }

  if (train && grad_real) {
    pt_exec_zero_grad(&g->x);
    for (int i = 0; i < out->n; i++) {
      int v = out->vals[i];
      float *gv = pt_exec_grad(&g->x, v);
      const pt_value *val = &m->vals[v];
      if (gv && val->producer >= g->first && val->producer < g->end)
        memcpy(gv, delta + out->off[i], val->numel * sizeof(float));
    }
    pt_exec_backward(&g->x);
    bool finite = true;
    for (int i = 0; i < g->x.n_params && finite; i++) {
      int v = g->x.params[i];
      finite = pt_all_finite(pt_exec_grad(&g->x, v), m->vals[v].numel);
    }
    if (in) { /* the gradient for the predecessor: own backward plus what passed through */
      float *gout = in->gbuf[cur];
      for (int i = 0; i < in->n; i++) {
        int v = in->vals[i];
        int64_t nel = m->vals[v].numel;
        float *dst = gout + in->off[i];
        const float *gv = pt_exec_grad(&g->x, v);
        if (gv)
          memcpy(dst, gv, nel * sizeof(float));
        else
          memset(dst, 0, nel * sizeof(float));
        int oi = pt_boundary_index(out, v);
        if (oi >= 0)
          for (int64_t e = 0; e < nel; e++) dst[e] += delta[out->off[oi] + e];
      }
      if (finite) finite = pt_all_finite(gout, in->floats);
      in->greal[cur] = finite;
    }
    if (finite) {
      optimizer_step(g, &td->h);
      pt_counter_add(&g->updates, 1);
      g->bad_run = 0;
      if (++g->good_updates % PT_BACKUP_EVERY == 0) take_backup(g);
      if (j == D - 1) sl->trained = true;
    } else {
      bad = true;
    }
  }
  if (bad) {
    g->bad_run++;
    pthread_mutex_lock(&s->mu);
    s->skipped++;
    pthread_mutex_unlock(&s->mu);
  }
  if (j == D - 1) {
    out->greal[cur] = false; /* the loss gradient is consumed here, never read by another stage */
    sl->step = pt_counter_get(&g->updates);
  }
  if (g->bad_run >= s->o.train.guard_limit && s->o.train.guard_limit > 0) {
    restore_backup(g);
    g->bad_run = 0;
    pthread_mutex_lock(&s->mu);
    s->restores++;
    pthread_mutex_unlock(&s->mu);
    pt_stream_log(s, PT_LOG_WARNING,
                  "stage %d: %d non-finite updates in a row; restored its last good weights", j,
                  s->o.train.guard_limit);
  }
  int64_t ns = (int64_t)((pt_now_s() - t0) * 1e9);
  pt_counter_add(&g->busy_ns, ns);
  __atomic_store_n(&g->tick_ns, ns, __ATOMIC_RELAXED);
}

/* Runs (CPU) or enqueues (CUDA) stage g's part of tick k. */
static void tick(stage *g, int64_t k) {
  pt_stream *s = g->s;
  /* before tick j, stage j has nothing yet: the fill */
  static const tick_desc fill = {.slot = -1};
  const tick_desc *td = k >= g->j ? &s->ticks[(k - g->j) % s->n_ticks_ring] : &fill;
  if (s->cuda)
    pt_cuda_run_tick(g, k, td);
  else
    run_tick(g, k, td);
}

/* The ticks stage g may run, given `issued` and the tick the last frame entered: on CPU stages
 * every tick whose frame (entered at k - j) has been issued, up to the one that brings the last
 * frame out, so a later stage runs ahead of the pushes by j ticks at most and not into the
 * drain's bubbles; on a GPU only issued ticks (a stage's exchange with its neighbours over NCCL
 * belongs to the tick the neighbour runs). */
static int64_t horizon(const pt_stream *s, const stage *g, int64_t issued, int64_t last_frame) {
  if (s->cuda) return issued;
  int64_t out = last_frame + s->D; /* one past the tick the last frame leaves at */
  int64_t cap = out > issued ? out : issued;
  return issued + g->j < cap ? issued + g->j : cap;
}

/* The counters a spinning worker polls without the lock: written with release stores (under the
 * lock as well), read with acquire loads. */
static int64_t load64(const int64_t *p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void store64(int64_t *p, int64_t v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* A stage may run tick k once stages j-1 and j+1 have finished tick k-1. It reads the counters
 * with acquire loads, so the polling loop calls it without the lock as well. */
static bool ready(const pt_stream *s, const stage *g, int64_t k) {
  if (k >= horizon(s, g, load64(&s->issued), load64(&s->last_frame_tick))) return false;
  if (g->j > 0 && load64(&s->st[g->j - 1].done) < k) return false;
  if (g->j < s->D - 1 && load64(&s->st[g->j + 1].done) < k) return false;
  return true;
}

/* One step of a polling loop: a pause, and every 64th step (a few microseconds) a look at the
 * clock, false once past `until`, and a sched_yield. With as many stages as cores the caller of
 * push and pop has no core of its own; the yield hands it the core of a polling thread as soon as
 * it is runnable, where without it the caller waited out the poll or a preemption. When nothing
 * else is runnable the yield returns at once. */
static bool spin_step(int i, double until) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
  if ((i & 63) != 63) return true;
  if (pt_now_s() > until) return false;
  sched_yield();
  return true;
}

/* A CPU stage whose next tick is about to become ready spins for it rather than sleeping: a
 * futex wake-up costs tens of microseconds here, a visible share of a sub-millisecond tick. It
 * spins only while every stage has a core of its own, and for at most PT_SPIN_NS. */
#define PT_SPIN_NS 50000

static bool spin_until_ready(const pt_stream *s, const stage *g, int64_t k) {
  double until = pt_now_s() + PT_SPIN_NS * 1e-9;
  for (int i = 0;; i++) {
    if (__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) return false;
    if (ready(s, g, k)) return true;
    if (!spin_step(i, until)) return false;
  }
}

/* On a GPU, done counts enqueued ticks; the frame's slot is marked by the device's callback. */
static void finish_tick(stage *g, int64_t k) {
  pt_stream *s = g->s;
  store64(&g->done, k + 1);
  if (g->j == s->D - 1 && k >= g->j && !s->cuda) {
    const tick_desc *td = &s->ticks[(k - g->j) % s->n_ticks_ring];
    if (td->slot >= 0) s->slots[td->slot].state = SLOT_DONE;
  }
}

static void pin(stage *g) {
#ifdef __linux__
  if (g->core < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(g->core, &set);
  if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0)
    pt_stream_log(g->s, PT_LOG_DEBUG, "stage %d: could not pin to core %d", g->j, g->core);
#endif
}

/* ---- the caller's core ---------------------------------------------------------------------
 */

/* With as many CPU stages as cores, the caller (the thread that pushes and pops: the tool's main
 * thread, the element's streaming thread) shares a core with one stage, and its own work between
 * pushes lands on that stage's core. It costs least beside the stage with the most slack, and most
 * beside the slowest stage, which sets the tick. Where the caller runs is the kernel's choice and a
 * polling caller stays put, so a stream that starts with the caller beside its slowest stage would
 * stay that way. Every follow_every ticks the caller looks at its core: when the stage pinned
 * there is predicted (by the cut's measured costs) to take more than PT_FOLLOW_MARGIN longer than
 * the lightest stage, the two trade cores, and the interval doubles, so that a kernel moving the
 * caller about cannot make the stages chase it. Measured tick times would not do: a stage's wall
 * time grows with the caller's work on its core. Only cores the stream chose itself (devices
 * "cpu", or none given) and a cut with costs (auto): a core named with "cpu:N" stays where the
 * user put it. Results do not depend on it. */
static bool set_core(pthread_t t, int core) {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(core, &set);
  return pthread_setaffinity_np(t, sizeof set, &set) == 0;
#else
  return false;
#endif
}

static void follow_caller(pt_stream *s) {
#ifdef __linux__
  if (!s->follow || s->issued < s->follow_next) return;
  s->follow_next = s->issued + s->follow_every;
  int here = -1, lightest = 0, cpu = sched_getcpu();
  for (int j = 0; j < s->D; j++) {
    if (load64(&s->st[j].done) == 0) return; /* not yet pinned itself */
    if (s->st[j].core == cpu) here = j;
    if (s->st[j].predicted_s < s->st[lightest].predicted_s) lightest = j;
  }
  if (here < 0 || here == lightest ||
      s->st[here].predicted_s <= s->st[lightest].predicted_s * (1 + PT_FOLLOW_MARGIN))
    return;
  stage *a = &s->st[here], *b = &s->st[lightest];
  if (!set_core(a->thread, b->core) || !set_core(b->thread, a->core)) {
    set_core(a->thread, a->core);
    set_core(b->thread, b->core);
    s->follow = false;
    pt_stream_log(s, PT_LOG_DEBUG, "stages %d and %d: could not trade cores", a->j, b->j);
    return;
  }
  int c = a->core;
  a->core = b->core;
  b->core = c;
  s->follow_swaps++;
  if (s->follow_every < PT_FOLLOW_MAX_TICKS) s->follow_every *= 2;
  pt_stream_log(s, PT_LOG_DEBUG,
                "stage %d to core %d, the lighter stage %d to core %d beside the caller", a->j,
                a->core, b->j, b->core);
#else
  (void)s;
#endif
}

static void *stage_main(void *arg) {
  stage *g = arg;
  pt_stream *s = g->s;
  pin(g);
  pt_fp_flush_subnormals();
  bool spin = g->spin;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->stop && !ready(s, g, g->done)) {
      if (spin) {
        pthread_mutex_unlock(&s->mu);
        bool soon = spin_until_ready(s, g, g->done);
        pthread_mutex_lock(&s->mu);
        if (soon) continue;
      }
      if (!s->stop && !ready(s, g, g->done)) pthread_cond_wait(&s->cv, &s->mu);
    }
    if (s->stop) break;
    int64_t k = g->done;
    pthread_mutex_unlock(&s->mu);
    tick(g, k);
    pthread_mutex_lock(&s->mu);
    finish_tick(g, k);
    pthread_cond_broadcast(&s->cv);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* ---- the caller's side ------------------------------------------------------------------------
 */

/* Issues one tick with `slot_index` (or -1) entering stage 0; runs it in place when unthreaded. */
static void issue_tick(pt_stream *s, int slot_index) {
  pthread_mutex_lock(&s->mu);
  /* the descriptor ring slot must have been read by every stage */
  while (s->threaded && s->issued - s->st[s->D - 1].done >= s->n_ticks_ring - s->D)
    pthread_cond_wait(&s->cv, &s->mu);
  int64_t k = s->issued;
  s->ticks[k % s->n_ticks_ring].slot = slot_index;
  s->ticks[k % s->n_ticks_ring].train = s->train_on;
  s->ticks[k % s->n_ticks_ring].h = s->h;
  if (slot_index >= 0) {
    store64(&s->last_frame_tick, k);
    s->slots[slot_index].entry_tick = k;
  }
  store64(&s->issued, s->issued + 1);
  if (s->threaded) {
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    follow_caller(s);
    return;
  }
  /* unthreaded: every tick the threads would run, each stage as far as it may go */
  unsigned fp = pt_fp_flush_subnormals();
  for (bool more = true; more;) {
    more = false;
    for (int j = 0; j < s->D; j++) {
      stage *g = &s->st[j];
      if (!ready(s, g, g->done)) continue;
      int64_t t = g->done;
      pthread_mutex_unlock(&s->mu);
      tick(g, t);
      pthread_mutex_lock(&s->mu);
      finish_tick(g, t);
      more = true;
    }
  }
  pt_fp_restore(fp);
  pthread_mutex_unlock(&s->mu);
}

static void wait_idle(pt_stream *s) {
  pthread_mutex_lock(&s->mu);
  for (;;) {
    bool idle = true;
    for (int j = 0; j < s->D; j++)
      if (s->st[j].done < horizon(s, &s->st[j], s->issued, s->last_frame_tick)) idle = false;
    if (idle) break;
    pthread_cond_wait(&s->cv, &s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  if (s->cuda) {
    pt_error err;
    if (pt_cuda_stream_sync(s, false, &err)) fail(s, PT_ERR_DEVICE, "%s", err.msg);
  }
}

/* Takes the slot of frame `frame`, waiting while it is still in use. */
static int take_slot(pt_stream *s, int64_t frame, pt_status *st) {
  int i = (int)(frame % s->n_slots);
  pthread_mutex_lock(&s->mu);
  while (s->slots[i].state != SLOT_FREE) {
    if (s->slots[i].state != SLOT_IN_FLIGHT) {
      /* a result waits for pop: only the caller can free it, waiting could last forever */
      pthread_mutex_unlock(&s->mu);
      *st = PT_AGAIN;
      fail(s, PT_AGAIN, "%d results are waiting: pop before pushing more", s->n_slots - s->D);
      return -1;
    }
    pthread_cond_wait(&s->cv, &s->mu);
  }
  s->slots[i].state = SLOT_IN_FLIGHT;
  pthread_mutex_unlock(&s->mu);
  return i;
}

/* Push of a float frame, a device frame, or (both NULL) of the raw buffer s->raw_open holds. */
static pt_status push(pt_stream *s, const float *frame, size_t raw_n, const pt_device_frame *dev,
                      const pt_target *target, void *user) {
  if (target && s->o.train.loss == PT_LOSS_CROSS_ENTROPY &&
      (target->class_index < 0 || target->class_index >= s->out_classes))
    return fail(s, PT_ERR_INVALID, "push: class %lld is outside the model's %d classes",
                (long long)target->class_index, s->out_classes);
  pt_status st = PT_OK;
  int i = take_slot(s, s->next_frame, &st);
  if (i < 0) return st;
  if (!s->started) {
    s->started = true;
    s->t_start = pt_now_s();
  }
  slot *sl = &s->slots[i];
  sl->frame = s->next_frame++;
  sl->entry_tick = -1;
  sl->user = user;
  sl->loss = NAN;
  sl->trained = false;
  sl->step = 0;
  sl->has_target = false;
  sl->raw = -1;
  sl->on_device = false;
  sl->output_to = s->next_output;
  s->next_output = NULL;
  if (dev) {
    pt_status ds = pt_cuda_stage_device_frame(s, i, dev);
    if (ds) {
      pthread_mutex_lock(&s->mu);
      sl->state = SLOT_FREE;
      pthread_mutex_unlock(&s->mu);
      s->next_frame--;
      return fail(s, ds, "push_device: the frame could not be converted on %s", s->st[0].device);
    }
    sl->on_device = true;
  } else if (frame) {
    memcpy(sl->input, frame, s->in_numel * sizeof(float));
  } else {
    sl->raw = s->raw_open;
    sl->raw_n = raw_n;
    s->raw_open = -1;
    /* with the next-frame loss the frame is another frame's target: converted now */
    if (s->o.train.loss == PT_LOSS_NEXT_FRAME) pt_stream_convert_raw(s, sl);
  }
  if (target) {
    sl->cls = target->class_index;
    if (target->tensor && s->o.train.loss == PT_LOSS_MSE) {
      memcpy(sl->target, target->tensor, s->out_numel * sizeof(float));
      sl->has_target = true;
    } else if (s->o.train.loss == PT_LOSS_CROSS_ENTROPY) {
      sl->has_target = true;
    }
  }
  if (s->o.train.loss == PT_LOSS_NEXT_FRAME) {
    /* a frame enters once its successor, its target, is known */
    int h = s->held;
    s->held = i;
    if (h < 0) return PT_OK;
    memcpy(s->slots[h].target, sl->input, s->out_numel * sizeof(float));
    s->slots[h].has_target = true;
    issue_tick(s, h);
    return PT_OK;
  }
  issue_tick(s, i);
  return PT_OK;
}

pt_status pt_stream_set_output(pt_stream *s, float *dst) {
  if (s->cuda && dst)
    return fail(s, PT_ERR_UNSUPPORTED,
                "set_output: outputs of GPU stages come back through the stream's own memory");
  s->next_output = dst;
  return PT_OK;
}

pt_status pt_stream_push(pt_stream *s, const float *frame, const pt_target *target, void *user) {
  if (!frame) return fail(s, PT_ERR_INVALID, "push: no frame");
  return push(s, frame, 0, NULL, target, user);
}

void *pt_stream_raw_begin(pt_stream *s) {
  if (!s->o.preprocess) {
    fail(s, PT_ERR_STATE, "raw frames need a stream created with a preprocess function");
    return NULL;
  }
  if (s->raw_open < 0) {
    /* a raw buffer frees once stage 0 has converted its frame: waiting here always ends */
    int r = (int)(s->raw_next++ % PT_RAW_RING);
    pthread_mutex_lock(&s->mu);
    while (s->raw_busy[r]) pthread_cond_wait(&s->cv, &s->mu);
    s->raw_busy[r] = true;
    pthread_mutex_unlock(&s->mu);
    s->raw_open = r;
  }
  return s->raw[s->raw_open];
}

pt_status pt_stream_raw_commit(pt_stream *s, size_t n, const pt_target *target, void *user) {
  if (s->raw_open < 0)
    return fail(s, PT_ERR_STATE, "raw_commit: no buffer taken with pt_stream_raw_begin");
  if (n > s->o.raw_bytes)
    return fail(s, PT_ERR_INVALID, "raw_commit: a %zu-byte frame exceeds the %zu bytes configured",
                n, s->o.raw_bytes);
  return push(s, NULL, n, NULL, target, user);
}

pt_status pt_stream_push_raw(pt_stream *s, const void *raw, size_t n, const pt_target *target,
                             void *user) {
  if (!s->o.preprocess || !raw)
    return fail(s, PT_ERR_STATE, "push_raw: the stream was created without a preprocess function");
  if (n > s->o.raw_bytes)
    return fail(s, PT_ERR_INVALID, "push_raw: a %zu-byte frame exceeds the %zu bytes configured", n,
                s->o.raw_bytes);
  memcpy(pt_stream_raw_begin(s), raw, n);
  return pt_stream_raw_commit(s, n, target, user);
}

pt_status pt_stream_push_device(pt_stream *s, const pt_device_frame *frame, const pt_target *target,
                                void *user) {
  if (!s->cuda)
    return fail(s, PT_ERR_STATE, "push_device: the stream runs on CPU cores, not on a GPU");
  if (!frame || !frame->data) return fail(s, PT_ERR_INVALID, "push_device: no frame");
  if (s->o.train.loss == PT_LOSS_NEXT_FRAME)
    return fail(s, PT_ERR_UNSUPPORTED,
                "push_device: the next-frame loss keeps its targets in host memory; push host "
                "frames");
  const pt_shape *is = &s->m->vals[s->m->input].shape;
  int C = is->ndim == 4 ? (int)is->d[1] : -1, H = is->ndim == 4 ? (int)is->d[2] : -1,
      W = is->ndim == 4 ? (int)is->d[3] : -1;
  if (is->ndim != 4 || is->d[0] != 1 || C < 1 || C > 4 || frame->width != W || frame->height != H ||
      frame->pixel_stride < 1 || frame->pitch < (size_t)frame->width * (size_t)frame->pixel_stride)
    return fail(s, PT_ERR_SHAPE,
                "push_device: a %dx%d frame (%d bytes per pixel, pitch %zu) does not fit the "
                "model's input (1 x C x H x W with 1-4 channels; this one is %s%dx%dx%d)",
                frame->width, frame->height, frame->pixel_stride, frame->pitch,
                is->ndim == 4 ? "" : "not 4-D, ", C, H, W);
  for (int c = 0; c < C; c++)
    if (frame->offset[c] < 0 || frame->offset[c] >= frame->pixel_stride)
      return fail(s, PT_ERR_INVALID, "push_device: channel %d's offset %d is outside a pixel", c,
                  frame->offset[c]);
  return push(s, NULL, 0, frame, target, user);
}

/* Whether the frame in sl has reached its tick, entry + D - 1: only then may pop return it, even
 * when stages running ahead have computed it already. Caller holds mu. */
static bool due(const pt_stream *s, const slot *sl) {
  return sl->entry_tick >= 0 && sl->entry_tick + s->D - 1 < s->issued;
}

/* A caller waiting in pop for a frame that finishes within PT_POP_SPIN_S spins rather than
 * sleeping: the wake-up from a sleep costs 30-70 us here, up to a tenth of a sub-millisecond tick,
 * and with as many stages as cores it also had to preempt a stage. It spins while there are no
 * more stages than cores and more than one core (pop_may_spin), yielding its core to a runnable
 * stage every few microseconds (spin_step). The frame entered at tick `entry` is out once the last
 * stage has done tick entry + D - 1. It gives up on a long tick, a stop, or after PT_POP_SPIN_S. */
#define PT_POP_SPIN_S 1e-3

static void pop_spin(const pt_stream *s, int64_t entry) {
  const stage *last = &s->st[s->D - 1];
  int64_t longest = 0;
  for (int j = 0; j < s->D; j++) {
    int64_t t = __atomic_load_n(&s->st[j].tick_ns, __ATOMIC_RELAXED);
    if (t > longest) longest = t;
  }
  if (longest == 0 || longest > (int64_t)(PT_POP_SPIN_S * 1e9)) return;
  double until = pt_now_s() + PT_POP_SPIN_S;
  for (int i = 0; load64(&last->done) < entry + s->D; i++) {
    if (__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) return;
    if (!spin_step(i, until)) return;
  }
}

pt_status pt_stream_pop(pt_stream *s, pt_result *r) {
  pthread_mutex_lock(&s->mu);
  /* the previous result's memory is released now */
  int prev = (int)((s->next_pop + s->n_slots - 1) % s->n_slots);
  if (s->next_pop > 0 && s->slots[prev].state == SLOT_POPPED) {
    s->slots[prev].state = SLOT_FREE;
    pthread_cond_broadcast(&s->cv);
  }
  int i = (int)(s->next_pop % s->n_slots);
  slot *sl = &s->slots[i];
  /* wait for the frame only when the tick that finishes it has been issued */
  bool spun = false;
  while ((s->threaded || s->cuda) && sl->state == SLOT_IN_FLIGHT && sl->frame == s->next_pop &&
         due(s, sl)) {
    if (s->pop_may_spin && !spun) {
      int64_t entry = sl->entry_tick;
      pthread_mutex_unlock(&s->mu);
      spun = true;
      pop_spin(s, entry);
      pthread_mutex_lock(&s->mu);
      continue; /* the frame may have come out while the lock was free */
    }
    pthread_cond_wait(&s->cv, &s->mu);
  }
  if (sl->state != SLOT_DONE || sl->frame != s->next_pop || !due(s, sl)) {
    pthread_mutex_unlock(&s->mu);
    return PT_AGAIN;
  }
  sl->state = SLOT_POPPED;
  s->next_pop++;
  pthread_mutex_unlock(&s->mu);
  r->frame = sl->frame;
  r->user = sl->user;
  r->output = sl->output_to ? sl->output_to : sl->output;
  r->loss = sl->loss;
  r->trained = sl->trained;
  r->step = sl->step;
  return PT_OK;
}

pt_status pt_stream_drain(pt_stream *s) {
  if (s->held >= 0) { /* next-frame: the last frame has no successor, it goes in untrained */
    int h = s->held;
    s->held = -1;
    s->slots[h].has_target = false;
    issue_tick(s, h);
  }
  while (s->last_frame_tick >= 0 && s->issued < s->last_frame_tick + s->D) issue_tick(s, -1);
  wait_idle(s);
  if (s->cuda) {
    pt_error err;
    pt_status st = pt_cuda_stream_sync(s, true, &err);
    if (st) return fail(s, st, "%s", err.msg);
  }
  return PT_OK;
}

pt_status pt_stream_flush(pt_stream *s) {
  wait_idle(s);
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->n_slots; i++) s->slots[i].state = SLOT_FREE;
  for (int j = 0; j < s->D; j++) {
    store64(&s->st[j].done, 0);
    s->bd[j].greal[0] = s->bd[j].greal[1] = false;
  }
  if (s->cuda) pt_cuda_stream_reset(s);
  store64(&s->issued, 0);
  store64(&s->last_frame_tick, -1);
  s->next_frame = 0;
  s->next_pop = 0;
  s->held = -1;
  s->next_output = NULL;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return PT_OK;
}

int pt_stream_depth(const pt_stream *s) {
  return s->D;
}

int pt_stream_in_flight(const pt_stream *s) {
  pt_stream *w = (pt_stream *)s;
  pthread_mutex_lock(&w->mu);
  int n = 0;
  for (int i = 0; i < s->n_slots; i++) {
    const slot *sl = &s->slots[i];
    /* a result computed ahead of its tick is still in flight */
    if (sl->state == SLOT_IN_FLIGHT || (sl->state == SLOT_DONE && !due(s, sl))) n++;
  }
  pthread_mutex_unlock(&w->mu);
  return n;
}

pt_status pt_stream_set_training(pt_stream *s, bool on) {
  if (on && (!s->o.train.enabled || s->o.train.loss == PT_LOSS_NONE))
    return fail(s, PT_ERR_STATE, "training was not configured when the stream was created");
  pthread_mutex_lock(&s->mu);
  s->train_on = on;
  pthread_mutex_unlock(&s->mu);
  return PT_OK;
}

pt_status pt_stream_set_hyperparams(pt_stream *s, float lr, float momentum, float weight_decay) {
  if (!(lr >= 0) || !isfinite(lr) || !(momentum >= 0 && momentum < 1) || !(weight_decay >= 0))
    return fail(s, PT_ERR_INVALID,
                "learning rate %g, momentum %g, weight decay %g: need lr >= 0, momentum in [0, 1), "
                "decay >= 0",
                lr, momentum, weight_decay);
  pthread_mutex_lock(&s->mu);
  s->h = (hyper){lr, momentum, weight_decay};
  pthread_mutex_unlock(&s->mu);
  return PT_OK;
}

pt_status pt_stream_save(pt_stream *s, const char *path) {
  wait_idle(s);
  pt_error err;
  pt_error_clear(&err);
  pt_status st = s->cuda ? pt_cuda_stream_sync(s, true, &err) : PT_OK;
  if (!st) st = pt_model_save(s->model, path, &err);
  if (st) fail(s, st, "%s", err.msg);
  return st;
}

const float *pt_stream_param_grad(const pt_stream *s, int value) {
  if (s->cuda) return NULL;
  for (int j = 0; j < s->D; j++)
    for (int i = 0; i < s->st[j].x.n_params; i++)
      if (s->st[j].x.params[i] == value) return pt_exec_grad(&s->st[j].x, value);
  return NULL;
}

const char *pt_stream_last_error(const pt_stream *s) {
  return s->last_error;
}

void pt_stream_balance(const pt_stream *s, char *buf, size_t n) {
  pt_partition p = {.D = s->D};
  for (int j = 0; j < s->D; j++) {
    p.first[j] = s->st[j].node_first;
    p.split[j] = s->st[j].split;
  }
  p.first[s->D] = s->st[s->D - 1].node_end;
  pt_partition_str(&p, buf, n);
}

void pt_stream_get_stats(const pt_stream *s, pt_stream_stats *st) {
  pt_stream *w = (pt_stream *)s;
  memset(st, 0, sizeof *st);
  pthread_mutex_lock(&w->mu);
  st->stages = s->D;
  for (int j = 0; j < s->D; j++) {
    const stage *g = &s->st[j];
    pt_stage_stats *o = &st->stage[j];
    o->first_node = g->node_first;
    o->n_nodes = g->node_end - g->node_first;
    o->split_channels = g->split;
    snprintf(o->device, sizeof o->device, "%s", g->device);
    o->busy_s = (double)pt_counter_get(&g->busy_ns) * 1e-9;
    o->predicted_s = g->predicted_s;
    o->ticks = pt_counter_get(&g->ticks_real);
    o->done = g->done;
    o->updates = pt_counter_get(&g->updates);
  }
  st->ticks = s->issued;
  st->elapsed_s = s->started ? pt_now_s() - s->t_start : 0;
  st->ticks_per_s = st->elapsed_s > 0 ? s->issued / st->elapsed_s : 0;
  st->skipped_updates = s->skipped;
  st->restores = s->restores;
  pthread_mutex_unlock(&w->mu);
  st->in_flight = pt_stream_in_flight(s);
}
