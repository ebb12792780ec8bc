/* The CUDA stage backend: a stage's tick enqueued on its own CUDA stream, with no host wait.
 *
 * Ordering. The scheduler in ../stream.c lets stage j enqueue tick k once stages j-1 and j+1 have
 * enqueued tick k-1; every stage records its event ev[k % 2] at the end of each tick, and stage j
 * starts tick k by making its stream wait for ev[(k-1) % 2] of both neighbours. That one wait
 * covers every cross-stream edge of the tick contract: the activation it reads was written by j-1
 * at k-1, the gradient it reads was written by j+1 at k-1, and the buffers it overwrites (its
 * ping-pong outputs, the gradient slot it sends upstream) were last read by them at k-1. Two
 * events per stage suffice because no neighbour can get two ticks ahead.
 *
 * Boundaries. Boundary j's activations live on stage j's device, its gradients on stage j+1's (the
 * writer's), with the gradient's "real" flag as one float after the packed values. Stages sharing
 * a device read each other's buffers in place. Across devices, when every stage has a device of
 * its own and NCCL is there, each stage starts tick k with one grouped NCCL exchange with its
 * neighbours: it sends the activations and the gradient it produced at k-1 and receives theirs
 * into copies on its own device (grouped, so the two directions cannot deadlock; every tick,
 * bubbles included, so the pairs always match). Otherwise the reader pulls them with
 * cudaMemcpyPeerAsync on its stream after the wait above. PARTIME_NCCL=0 forces the copies.
 *
 * Decisions on the device. Whether a stage updates depends on values it computed this tick (the
 * loss, its gradients): engine_kernels.h decides on the device and gates the optimizer kernels
 * with a flag, so the host never waits for a tick. After a tick that trained, and after every
 * frame at the last stage, the stage's counters (and the frame's loss) are copied to pinned host
 * memory and a host function publishes them: that is how a finished frame reaches pt_stream_pop.
 *
 * Frames, outputs and targets are pinned host memory; uploads and downloads are async copies on
 * the stage's stream.
 *
 * CUDA graphs (opts.cuda_graphs). A tick is enqueued in three parts: what changes from tick to
 * tick (event waits, the NCCL exchange or peer copies, uploads from the frame's slot into fixed
 * device buffers), the compute (forward, loss, backward, finite checks, the decision, the
 * optimizer and the guard), and the results (copies into the host-function record, the host
 * function, the event record). The compute reads and writes only fixed buffers and one of each
 * ping-pong pair, so it is the same work for every tick of a variant: tick parity, whether the
 * last stage has a loss, whether the tick trains. Each variant's compute is captured into a graph
 * the second time it is met (the first runs directly: cuBLAS and cuDNN may set themselves up on
 * first use, which a capture forbids) and replayed after that. A graph holds its arguments by
 * value: the hyperparameters of the training variants, so a change of them drops those graphs,
 * and every pointer bound, which is checked against the ones it was captured with on each replay.
 * A stage whose capture fails, or whose check does not hold, warns and runs directly from then on.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>
#ifdef PT_HAVE_NCCL
#include <nccl.h>
#endif
#ifndef PT_CUDA_SIM
#include <cuda.h> /* driver types only: the functions come through the runtime's entry points */
#endif
#include "../stream_internal.h"
#include "engine_kernels.h"
#include "exec.h"
#include "kernels.h"

/* What a stage's host function publishes after a tick. */
typedef struct cb_rec {
  stage *g;
  int slot;    /* the frame finished by this tick (last stage), -1 otherwise */
  int trained; /* the tick ran a training step (st is meaningful) */
  bool busy;   /* enqueued, not yet published */
  float loss;  /* copied from the device */
  pt_tick_state st;
} cb_rec;

/* The compute of one variant of a tick, captured, and the pointers it was captured with. */
typedef struct tick_graph {
  bool seen; /* met once, directly */
  cudaGraphExec_t exec;
  const void **ptrs; /* n_ptrs */
  int n_ptrs;
} tick_graph;

#define PT_TICK_VARIANTS 8 /* parity x loss x training */

typedef struct pt_cuda_stage {
  int dev;
  cudaStream_t stream;
  cudaEvent_t ev[2];
  pt_cuda_exec *x;
  float *in_dev;     /* stage 0: the frame */
  float *dev_frames; /* stage 0: a frame per slot pushed from device memory (made at first use) */
  cudaStream_t push_stream; /* stage 0: converts device frames on the pushing thread */
  float *target_dev;        /* last stage: the frame's target */
  int64_t *cls_dev;         /* last stage: the frame's class */
  float *loss_dev;
  float *mirror;  /* predecessor's activations, when it runs on another device */
  float *gmirror; /* successor's gradient (+ flag), when it runs on another device */
  pt_tick_state *state;
  float *opt_m, *opt_v, *backup;
  cb_rec *cb; /* pinned ring of host-function records */
  int n_cb, cb_next;
  int64_t *cls_host;  /* pinned, one per frame slot */
  pt_tick_state seen; /* the last counters published */
  bool graphs;        /* opts.cuda_graphs, until something went wrong */
  hyper graph_h;      /* what the training variants' graphs hold */
  tick_graph graph[PT_TICK_VARIANTS];
  const void **ptrs; /* this tick's bound pointers, up to max_ptrs */
  int n_ptrs, max_ptrs;
  char error[256];
} cuda_stage;

/* The first failure of an enqueuing call is kept, reported by the next sync. */
static void note(cuda_stage *c, const char *what, cudaError_t e) {
  if (!c->error[0])
    snprintf(c->error, sizeof c->error, "cuda:%d: %s: %s", c->dev, what, cudaGetErrorString(e));
}
#define CK(c, call)                                                                                \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) note((c), #call, e_);                                                   \
  } while (0)

/* How boundaries cross devices: one NCCL communicator per stage (rank = stage), or none. */
typedef struct pt_cuda_links {
  bool nccl;
#ifdef PT_HAVE_NCCL
  ncclComm_t comm[PT_MAX_STAGES];
#endif
} pt_cuda_links;

/* ---- devices and host memory ------------------------------------------------------------------
 */

pt_status pt_cuda_parse_device(const char *name, int *index, pt_error *err) {
  *index = -1;
  long n = 0;
  if (strcmp(name, "cuda") != 0) {
    char *end;
    if (strncmp(name, "cuda:", 5) != 0 || !name[5]) goto bad;
    n = strtol(name + 5, &end, 10);
    if (*end || n < 0 || n > 1024) goto bad;
  }
  pt_status st = pt_cuda_check_device((int)n, err);
  if (st) return st;
  *index = (int)n;
  return PT_OK;
bad:
  return pt_error_set(err, PT_ERR_DEVICE, "device '%s': expected cuda or cuda:N", name);
}

/* Pinned memory belongs to the context of the current device: set it first, so that a stream on
 * cuda:1 never initializes cuda:0. */
void *pt_cuda_host_alloc(int device, size_t bytes) {
  void *p = NULL;
  if (cudaSetDevice(device) != cudaSuccess) return NULL;
  if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) return NULL;
  memset(p, 0, bytes);
  return p;
}

void pt_cuda_host_free(void *p) {
  if (p) cudaFreeHost(p);
}

/* ---- construction -----------------------------------------------------------------------------
 */

static pt_status alloc_dev(cuda_stage *c, void *pp, size_t bytes, pt_error *err) {
  void **p = pp;
  *p = NULL;
  cudaError_t e = cudaMalloc(p, bytes ? bytes : 4);
  if (e == cudaSuccess) e = cudaMemset(*p, 0, bytes ? bytes : 4);
  if (e != cudaSuccess) {
    *p = NULL;
    return pt_error_set(err, e == cudaErrorMemoryAllocation ? PT_ERR_NOMEM : PT_ERR_DEVICE,
                        "cuda:%d: could not allocate %zu bytes: %s", c->dev, bytes,
                        cudaGetErrorString(e));
  }
  return PT_OK;
}

static pt_status stage_new(pt_stream *s, stage *g, pt_error *err) {
  pt_model *m = s->m;
  int j = g->j, D = s->D;
  bool train = s->o.train.enabled;
  cuda_stage *c = calloc(1, sizeof *c);
  if (!c) return pt_error_set(err, PT_ERR_NOMEM, "out of memory");
  g->cu = c;
  c->dev = g->gpu;
  pt_status st;
  cudaError_t e = cudaSetDevice(c->dev);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&c->ev[0], cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&c->ev[1], cudaEventDisableTiming);
  if (e != cudaSuccess)
    return pt_error_set(err, PT_ERR_DEVICE, "cuda:%d: could not create the stream of stage %d: %s",
                        c->dev, j, cudaGetErrorString(e));
  if ((st = pt_cuda_exec_new(m, g->first, g->end, train, train && j > 0, c->dev, c->stream, &c->x,
                             err)))
    return st;
  g->ext = malloc(m->n_vals * sizeof *g->ext);
  if (!g->ext) return pt_error_set(err, PT_ERR_NOMEM, "out of memory");
  for (int v = 0; v < m->n_vals; v++)
    if (pt_cuda_exec_is_external(c->x, v)) g->ext[g->n_ext++] = v;
  int np = pt_cuda_exec_n_params(c->x);
  for (int i = 0; i < np; i++) g->n_param_floats += m->vals[pt_cuda_exec_param(c->x, i)].numel;

  size_t f = sizeof(float);
  if ((st = alloc_dev(c, &c->state, sizeof *c->state, err))) return st;
  if (j == 0 && (st = alloc_dev(c, &c->in_dev, s->in_numel * f, err))) return st;
  if (j == D - 1 && ((st = alloc_dev(c, &c->target_dev, s->out_numel * f, err)) ||
                     (st = alloc_dev(c, &c->cls_dev, sizeof(int64_t), err)) ||
                     (st = alloc_dev(c, &c->loss_dev, f, err))))
    return st;
  if (j > 0 && s->st[j - 1].gpu != c->dev &&
      (st = alloc_dev(c, &c->mirror, s->bd[j - 1].floats * f, err)))
    return st;
  if (j < D - 1 && s->st[j + 1].gpu != c->dev &&
      (st = alloc_dev(c, &c->gmirror, (s->bd[j].floats + 1) * f, err)))
    return st;
  if (train && g->n_param_floats &&
      ((st = alloc_dev(c, &c->opt_m, g->n_param_floats * f, err)) ||
       (st = alloc_dev(c, &c->opt_v, g->n_param_floats * f, err)) ||
       (st = alloc_dev(c, &c->backup, g->n_param_floats * f, err))))
    return st;
  /* the backup starts as the loaded weights */
  int64_t off = 0;
  for (int i = 0; c->backup && i < np; i++) {
    int64_t n = m->vals[pt_cuda_exec_param(c->x, i)].numel;
    e = cudaMemcpy(c->backup + off, pt_cuda_exec_param_data(c->x, i), n * f,
                   cudaMemcpyDeviceToDevice);
    if (e != cudaSuccess)
      return pt_error_set(err, PT_ERR_DEVICE, "cuda:%d: %s", c->dev, cudaGetErrorString(e));
    off += n;
  }
  c->n_cb = 2 * (s->n_slots + 2 * D) + s->n_ticks_ring;
  c->cb = pt_cuda_host_alloc(c->dev, c->n_cb * sizeof *c->cb);
  c->cls_host = pt_cuda_host_alloc(c->dev, s->n_slots * sizeof *c->cls_host);
  if (!c->cb || !c->cls_host)
    return pt_error_set(err, PT_ERR_NOMEM, "cuda:%d: out of pinned host memory", c->dev);
  for (int i = 0; i < c->n_cb; i++) c->cb[i].g = g;
  c->graphs = s->o.cuda_graphs;
  c->max_ptrs = g->n_ext + s->bd[j].n + 5;
  c->ptrs = calloc((size_t)c->max_ptrs * (PT_TICK_VARIANTS + 1), sizeof *c->ptrs);
  if (!c->ptrs) return pt_error_set(err, PT_ERR_NOMEM, "out of memory");
  for (int i = 0; i < PT_TICK_VARIANTS; i++) c->graph[i].ptrs = c->ptrs + (i + 1) * c->max_ptrs;
  return PT_OK;
}

/* Boundary j: activations on stage j's device, gradients (+ flag) on stage j+1's. */
static pt_status boundaries_new(pt_stream *s, pt_error *err) {
  for (int j = 0; j < s->D; j++) {
    boundary *b = &s->bd[j];
    cuda_stage *c = s->st[j].cu, *r = s->st[j + 1 < s->D ? j + 1 : j].cu;
    pt_status st;
    for (int i = 0; i < 2; i++) {
      cudaSetDevice(c->dev);
      if ((st = alloc_dev(c, &b->buf[i], b->floats * sizeof(float), err))) return st;
      cudaSetDevice(r->dev);
      if ((st = alloc_dev(r, &b->gbuf[i], (b->floats + 1) * sizeof(float), err))) return st;
    }
  }
  return PT_OK;
}

pt_status pt_cuda_stream_init(pt_stream *s, pt_error *err) {
  pt_status st;
  for (int j = 0; j < s->D; j++) {
    if ((st = stage_new(s, &s->st[j], err))) return st;
  }
  if ((st = boundaries_new(s, err))) return st;
  if (!(s->links = calloc(1, sizeof *s->links)))
    return pt_error_set(err, PT_ERR_NOMEM, "out of memory");
#ifdef PT_HAVE_NCCL
  bool distinct = s->D > 1;
  for (int a = 0; a < s->D; a++)
    for (int b = a + 1; b < s->D; b++)
      if (s->st[a].gpu == s->st[b].gpu) distinct = false;
  const char *env = getenv("PARTIME_NCCL");
  if (distinct && !(env && strcmp(env, "0") == 0)) {
    int devs[PT_MAX_STAGES];
    for (int j = 0; j < s->D; j++) devs[j] = s->st[j].gpu;
    ncclResult_t r = ncclCommInitAll(s->links->comm, s->D, devs);
    if (r == ncclSuccess) {
      s->links->nccl = true;
      pt_stream_log(s, PT_LOG_INFO, "stage boundaries move with NCCL send/recv");
    } else {
      memset(s->links->comm, 0, sizeof s->links->comm);
      pt_stream_log(s, PT_LOG_WARNING,
                    "NCCL could not start (%s): stage boundaries move by peer copies",
                    ncclGetErrorString(r));
    }
  }
#endif
  /* direct peer copies where the hardware allows; cudaMemcpyPeerAsync stages through the host
   * otherwise */
  for (int j = 0; j + 1 < s->D; j++) {
    int a = s->st[j].gpu, b = s->st[j + 1].gpu, ok = 0;
    if (a == b) continue;
    for (int dir = 0; dir < 2; dir++) {
      int from = dir ? b : a, to = dir ? a : b;
      if (cudaDeviceCanAccessPeer(&ok, from, to) == cudaSuccess && ok) {
        cudaSetDevice(from);
        cudaError_t e = cudaDeviceEnablePeerAccess(to, 0);
        if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled)
          pt_stream_log(s, PT_LOG_DEBUG, "cuda:%d -> cuda:%d: no peer access (%s)", from, to,
                        cudaGetErrorString(e));
        cudaGetLastError(); /* an already-enabled pair is not an error */
      }
    }
  }
  return PT_OK;
}

void pt_cuda_stream_free(pt_stream *s) {
  for (int j = 0; j < s->D; j++) {
    cuda_stage *c = s->st[j].cu;
    if (!c) continue;
    cudaSetDevice(c->dev);
    if (c->stream) cudaStreamSynchronize(c->stream);
  }
#ifdef PT_HAVE_NCCL
  for (int j = 0; s->links && s->links->nccl && j < s->D; j++) ncclCommDestroy(s->links->comm[j]);
#endif
  free(s->links);
  s->links = NULL;
  for (int j = 0; j < s->D; j++) {
    boundary *b = &s->bd[j];
    for (int i = 0; i < 2; i++) {
      cudaFree(b->buf[i]);
      cudaFree(b->gbuf[i]);
      b->buf[i] = b->gbuf[i] = NULL;
    }
  }
  for (int j = 0; j < s->D; j++) {
    stage *g = &s->st[j];
    cuda_stage *c = g->cu;
    if (!c) continue;
    cudaSetDevice(c->dev);
    for (int i = 0; i < PT_TICK_VARIANTS; i++)
      if (c->graph[i].exec) cudaGraphExecDestroy(c->graph[i].exec);
    free(c->ptrs);
    pt_cuda_exec_free(c->x);
    cudaFree(c->state);
    cudaFree(c->in_dev);
    cudaFree(c->dev_frames);
    if (c->push_stream) cudaStreamDestroy(c->push_stream);
    cudaFree(c->target_dev);
    cudaFree(c->cls_dev);
    cudaFree(c->loss_dev);
    cudaFree(c->mirror);
    cudaFree(c->gmirror);
    cudaFree(c->opt_m);
    cudaFree(c->opt_v);
    cudaFree(c->backup);
    pt_cuda_host_free(c->cb);
    pt_cuda_host_free(c->cls_host);
    for (int i = 0; i < 2; i++)
      if (c->ev[i]) cudaEventDestroy(c->ev[i]);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
    g->cu = NULL;
  }
}

/* ---- the primary context ------------------------------------------------------------------ */

pt_status pt_cuda_primary_context(int device, void **context, int *cu_device, pt_error *err) {
  pt_status st = pt_cuda_check_device(device, err);
  if (st) return st;
#ifdef PT_CUDA_SIM
  (void)context, (void)cu_device;
  return pt_error_set(err, PT_ERR_UNSUPPORTED,
                      "cuda:%d: the simulated devices have no driver contexts", device);
#else
  /* the runtime makes the primary context current on first use of the device */
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess) e = cudaFree(NULL);
  void *get_current = NULL, *device_get = NULL;
  enum cudaDriverEntryPointQueryResult q1 = cudaDriverEntryPointSymbolNotFound, q2 = q1;
  if (e == cudaSuccess)
    e = cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &get_current, 12000, cudaEnableDefault,
                                         &q1);
  if (e == cudaSuccess)
    e = cudaGetDriverEntryPointByVersion("cuDeviceGet", &device_get, 12000, cudaEnableDefault, &q2);
  if (e != cudaSuccess || q1 != cudaDriverEntryPointSuccess || q2 != cudaDriverEntryPointSuccess)
    return pt_error_set(err, PT_ERR_DEVICE,
                        "cuda:%d: the driver's context calls are out of reach (%s)", device,
                        cudaGetErrorString(e));
  CUcontext ctx = NULL;
  CUdevice dev = 0;
  if (((CUresult(*)(CUcontext *))get_current)(&ctx) != CUDA_SUCCESS || !ctx ||
      ((CUresult(*)(CUdevice *, int))device_get)(&dev, device) != CUDA_SUCCESS)
    return pt_error_set(err, PT_ERR_DEVICE, "cuda:%d: no primary context", device);
  *context = ctx;
  *cu_device = (int)dev;
  return PT_OK;
#endif
}

/* ---- frames from device memory ------------------------------------------------------------- */

pt_status pt_cuda_stage_device_frame(pt_stream *s, int si, const pt_device_frame *f) {
  cuda_stage *c = s->st[0].cu;
  cudaError_t e = cudaSetDevice(c->dev);
  if (e == cudaSuccess && !c->push_stream)
    e = cudaStreamCreateWithFlags(&c->push_stream, cudaStreamNonBlocking);
  if (e == cudaSuccess && !c->dev_frames) /* once: device frames are opt-in */
    e = cudaMalloc((void **)&c->dev_frames, (size_t)s->n_slots * s->in_numel * sizeof(float));
  if (e != cudaSuccess) {
    if (!c->error[0])
      snprintf(c->error, sizeof c->error, "cuda:%d: device frames: %s", c->dev,
               cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? PT_ERR_NOMEM : PT_ERR_DEVICE;
  }
  ptk_unpack_args a = {c->dev_frames + (int64_t)si * s->in_numel,
                       f->data,
                       (int64_t)f->pitch,
                       f->width,
                       f->height,
                       f->pixel_stride,
                       {f->offset[0], f->offset[1], f->offset[2], f->offset[3]},
                       {f->a[0], f->a[1], f->a[2], f->a[3]},
                       {f->b[0], f->b[1], f->b[2], f->b[3]}};
  ptk_unpack_u8(c->push_stream, s->in_numel, &a);
  /* the caller's frame may be released on return */
  e = cudaStreamSynchronize(c->push_stream);
  return e == cudaSuccess ? PT_OK : PT_ERR_DEVICE;
}

/* ---- sync -------------------------------------------------------------------------------------
 */

pt_status pt_cuda_stream_sync(pt_stream *s, bool weights, pt_error *err) {
  pt_status st = PT_OK;
  for (int j = 0; j < s->D; j++) {
    cuda_stage *c = s->st[j].cu;
    if (!c || !c->x) continue; /* a stage whose construction failed ran nothing */
    cudaSetDevice(c->dev);
    CK(c, cudaStreamSynchronize(c->stream));
    const char *xe = pt_cuda_exec_error(c->x);
    if (!st && (c->error[0] || xe))
      st = pt_error_set(err, PT_ERR_DEVICE, "stage %d: %s", j, c->error[0] ? c->error : xe);
  }
  for (int j = 0; weights && !st && j < s->D; j++)
    if (s->st[j].cu && s->st[j].cu->x) st = pt_cuda_exec_download(s->st[j].cu->x, err);
  return st;
}

void pt_cuda_stream_reset(pt_stream *s) {
  pt_error err;
  pt_cuda_stream_sync(s, false, &err);
  for (int j = 0; j < s->D; j++) {
    cuda_stage *r = s->st[j + 1 < s->D ? j + 1 : j].cu;
    if (!r || !s->bd[j].gbuf[0]) continue;
    cudaSetDevice(r->dev);
    for (int i = 0; i < 2; i++)
      CK(r, cudaMemset(s->bd[j].gbuf[i], 0, (s->bd[j].floats + 1) * sizeof(float)));
  }
}

/* ---- one tick ---------------------------------------------------------------------------------
 */

/* Publishes a tick's results on the host (a CUDA host function: no CUDA calls in here). */
static void tick_done(void *arg) {
  cb_rec *r = arg;
  stage *g = r->g;
  pt_stream *s = g->s;
  cuda_stage *c = g->cu;
  bool restored = false;
  pthread_mutex_lock(&s->mu);
  if (r->trained) {
    s->skipped += r->st.skipped - c->seen.skipped;
    restored = r->st.restores > c->seen.restores;
    s->restores += r->st.restores - c->seen.restores;
    c->seen = r->st;
    __atomic_store_n(&g->updates, r->st.updates, __ATOMIC_RELAXED);
  }
  if (r->slot >= 0) {
    slot *sl = &s->slots[r->slot];
    sl->loss = r->loss;
    sl->trained = r->trained && r->st.ok;
    sl->step = c->seen.updates;
    sl->state = SLOT_DONE;
  }
  r->busy = false;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (restored)
    pt_stream_log(s, PT_LOG_WARNING,
                  "stage %d: %d non-finite updates in a row; restored its last good weights", g->j,
                  s->o.train.guard_limit);
}

/* The next host-function record, waiting while the device still holds it. */
static cb_rec *next_rec(stage *g) {
  cuda_stage *c = g->cu;
  cb_rec *r = &c->cb[c->cb_next++ % c->n_cb];
  pthread_mutex_lock(&g->s->mu);
  while (r->busy) pthread_cond_wait(&g->s->cv, &g->s->mu);
  r->busy = true;
  pthread_mutex_unlock(&g->s->mu);
  r->slot = -1;
  r->trained = 0;
  r->loss = NAN;
  return r;
}

static void finite_check(cuda_stage *c, const float *x, int64_t n) {
  ptk_finite_args a = {x, &c->state->finite};
  ptk_check_finite(c->stream, n, &a);
}

/* Uploads the target of the frame in slot `si` at the last stage into the fixed device buffers;
 * false when the frame has none (no loss). */
static bool upload_target(pt_stream *s, cuda_stage *c, int si) {
  slot *sl = &s->slots[si];
  cudaStream_t S = c->stream;
  switch (s->o.train.loss) {
  case PT_LOSS_CROSS_ENTROPY:
    if (!sl->has_target) return false;
    c->cls_host[si] = sl->cls;
    CK(c,
       cudaMemcpyAsync(c->cls_dev, &c->cls_host[si], sizeof(int64_t), cudaMemcpyHostToDevice, S));
    return true;
  case PT_LOSS_MSE:
  case PT_LOSS_NEXT_FRAME:
  case PT_LOSS_RECONSTRUCTION: {
    if (s->o.train.loss != PT_LOSS_RECONSTRUCTION && !sl->has_target) return false;
    if (s->o.train.loss == PT_LOSS_RECONSTRUCTION && sl->on_device) {
      /* the frame lives on stage 0's device */
      const cuda_stage *c0 = s->st[0].cu;
      CK(c, cudaMemcpyPeerAsync(c->target_dev, c->dev, c0->dev_frames + (int64_t)si * s->in_numel,
                                c0->dev, s->out_numel * sizeof(float), S));
      return true;
    }
    const float *t = s->o.train.loss == PT_LOSS_RECONSTRUCTION ? sl->input : sl->target;
    CK(c,
       cudaMemcpyAsync(c->target_dev, t, s->out_numel * sizeof(float), cudaMemcpyHostToDevice, S));
    return true;
  }
  case PT_LOSS_NONE:
    return false;
  }
  return false;
}

/* The loss of output `o` against the uploaded target, and its gradient into `dl`. */
static void enqueue_loss(pt_stream *s, cuda_stage *c, const float *o, float *dl) {
  cudaStream_t S = c->stream;
  if (s->o.train.loss == PT_LOSS_CROSS_ENTROPY) {
    ptk_ce_args a = {c->loss_dev, dl, o, c->cls_dev, s->out_classes, s->out_is_prob};
    ptk_cross_entropy(S, 1, &a);
  } else {
    ptk_mse_args a = {c->loss_dev, dl, o, c->target_dev, s->out_numel};
    ptk_mse_grad(S, s->out_numel, &a);
    ptk_mse_loss(S, 1, &a);
  }
}

/* Optimizer step, backup refresh and restore, each gated on the device by the tick's state. */
static void enqueue_update(pt_stream *s, stage *g, const hyper *h) {
  cuda_stage *c = g->cu;
  const pt_train_opts *t = &s->o.train;
  cudaStream_t S = c->stream;
  int64_t off = 0;
  for (int i = 0; i < pt_cuda_exec_n_params(c->x); i++) {
    int v = pt_cuda_exec_param(c->x, i);
    int64_t n = s->m->vals[v].numel;
    float *w = pt_cuda_exec_param_data(c->x, i);
    const float *gr = pt_cuda_exec_grad(c->x, v);
    if (t->optimizer == PT_OPT_ADAM) {
      ptk_adam_args a = {
          w,        c->opt_m + off, c->opt_v + off,  gr,           h->lr,        t->beta1,
          t->beta2, t->eps,         h->weight_decay, &c->state->t, &c->state->ok};
      ptk_adam(S, n, &a);
    } else {
      ptk_sgd_args a = {w,
                        h->momentum != 0.0f ? c->opt_m + off : NULL,
                        gr,
                        h->lr,
                        h->momentum,
                        h->weight_decay,
                        &c->state->ok};
      ptk_sgd(S, n, &a);
    }
    ptk_copy_if_args keep = {c->backup + off, w, &c->state->backup_now};
    ptk_copy_if(S, n, &keep);
    ptk_copy_if_args back = {w, c->backup + off, &c->state->restore_now};
    ptk_copy_if(S, n, &back);
    ptk_zero_if_args zm = {c->opt_m + off, &c->state->restore_now};
    ptk_zero_if(S, n, &zm);
    ptk_zero_if_args zv = {c->opt_v + off, &c->state->restore_now};
    ptk_zero_if(S, n, &zv);
    off += n;
  }
}

/* What a tick's compute depends on besides the stage's fixed buffers. */
typedef struct tick_io {
  int cur;            /* k % 2: which buffer of each ping-pong pair is written */
  const float *view;  /* what the stage reads: the frame, or the predecessor's activations */
  const float *delta; /* the gradient of the stage's outputs (+ flag unless last), when training */
  bool loss;          /* last stage: the frame has a target */
  bool train;         /* the tick takes a training step */
} tick_io;

/* The compute of a tick: everything between the uploads and the copies of the results. It
 * enqueues only device work on fixed buffers and on those named by `io` (bound beforehand),
 * with no host side effects, so that it can be captured once and replayed. */
static void enqueue_compute(pt_stream *s, stage *g, const tick_io *io, const hyper *h) {
  pt_model *m = s->m;
  cuda_stage *c = g->cu;
  pt_cuda_exec *x = c->x;
  const int j = g->j, D = s->D, cur = io->cur;
  boundary *in = j > 0 ? &s->bd[j - 1] : NULL, *out = &s->bd[j];
  cudaStream_t S = c->stream;
  const size_t f = sizeof(float);

  for (int i = 0; i < out->n; i++) { /* values passing through this stage */
    int v = out->vals[i];
    const pt_value *val = &m->vals[v];
    if (val->producer >= g->first && val->producer < g->end) continue;
    const float *src = in ? io->view + in->off[pt_boundary_index(in, v)] : io->view;
    CK(c, cudaMemcpyAsync(out->buf[cur] + out->off[i], src, val->numel * f,
                          cudaMemcpyDeviceToDevice, S));
  }
  pt_cuda_exec_forward(x);
  /* the loss is computed whenever a target exists, training or not (an anomaly score) */
  if (j == D - 1 && io->loss) enqueue_loss(s, c, out->buf[cur] + out->off[0], out->gbuf[cur]);
  if (!io->train) return;

  const float *delta = io->delta, *flag = j < D - 1 ? delta + out->floats : NULL;
  ptk_tick_begin_args tb = {c->state, flag, flag ? NULL : c->loss_dev};
  ptk_tick_begin(S, 1, &tb);
  pt_cuda_exec_zero_grad(x);
  for (int i = 0; i < out->n; i++) {
    int v = out->vals[i];
    float *gv = pt_cuda_exec_grad(x, v);
    const pt_value *val = &m->vals[v];
    if (gv && val->producer >= g->first && val->producer < g->end)
      CK(c, cudaMemcpyAsync(gv, delta + out->off[i], val->numel * f, cudaMemcpyDeviceToDevice, S));
  }
  pt_cuda_exec_backward(x);
  for (int i = 0; i < pt_cuda_exec_n_params(x); i++) {
    int v = pt_cuda_exec_param(x, i);
    finite_check(c, pt_cuda_exec_grad(x, v), m->vals[v].numel);
  }
  float *gout = NULL;
  if (in) { /* the gradient for the predecessor: own backward plus what passed through */
    gout = in->gbuf[cur];
    for (int i = 0; i < in->n; i++) {
      int v = in->vals[i];
      int64_t nel = m->vals[v].numel;
      float *dst = gout + in->off[i];
      const float *gv = pt_cuda_exec_grad(x, v);
      if (gv)
        CK(c, cudaMemcpyAsync(dst, gv, nel * f, cudaMemcpyDeviceToDevice, S));
      else
        CK(c, cudaMemsetAsync(dst, 0, nel * f, S));
      int oi = pt_boundary_index(out, v);
      if (oi >= 0) {
        ptk_axpy_args a = {dst, delta + out->off[oi], 1.0f};
        ptk_axpy(S, nel, &a);
      }
    }
    finite_check(c, gout, in->floats);
  }
  ptk_tick_decide_args td_ = {c->state, gout ? gout + in->floats : NULL, j == D - 1,
                              s->o.train.guard_limit, PT_BACKUP_EVERY};
  ptk_tick_decide(S, 1, &td_);
  enqueue_update(s, g, h);
}

/* Binds `value` to `p` and notes the pointer for the graph check. */
static void bind(cuda_stage *c, int value, const float *p) {
  pt_cuda_exec_bind(c->x, value, p);
  c->ptrs[c->n_ptrs++] = p;
}

static void graphs_off(pt_stream *s, stage *g, const char *why) {
  cuda_stage *c = g->cu;
  c->graphs = false;
  pt_stream_log(s, PT_LOG_WARNING, "stage %d: no CUDA graphs from now on: %s", g->j, why);
}

/* Runs the compute of a tick: directly, or as the graph of its variant (captured first where
 * needed). */
static void run_compute(pt_stream *s, stage *g, const tick_io *io, const hyper *h) {
  cuda_stage *c = g->cu;
  if (!c->graphs || c->error[0] || pt_cuda_exec_error(c->x)) {
    enqueue_compute(s, g, io, h);
    return;
  }
  if (io->train && memcmp(&c->graph_h, h, sizeof *h) != 0) { /* new values to capture */
    for (int i = 0; i < PT_TICK_VARIANTS; i++)
      if ((i & 4) && c->graph[i].exec) {
        CK(c, cudaGraphExecDestroy(c->graph[i].exec));
        c->graph[i].exec = NULL;
      }
    c->graph_h = *h;
  }
  const int key = io->cur | io->loss << 1 | io->train << 2;
  tick_graph *tg = &c->graph[key];
  if (tg->exec) {
    if (tg->n_ptrs != c->n_ptrs || memcmp(tg->ptrs, c->ptrs, c->n_ptrs * sizeof *c->ptrs) != 0) {
      graphs_off(s, g, "a cached graph was captured with other buffers");
      enqueue_compute(s, g, io, h);
      return;
    }
    CK(c, cudaGraphLaunch(tg->exec, c->stream));
    return;
  }
  if (!tg->seen) {
    tg->seen = true;
    enqueue_compute(s, g, io, h);
    return;
  }
  /* thread-local: the other stages' threads keep working while this one captures */
  cudaGraph_t graph = NULL;
  cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
  if (e == cudaSuccess) {
    enqueue_compute(s, g, io, h);
    e = cudaStreamEndCapture(c->stream, &graph);
  }
  if (e == cudaSuccess && !c->error[0] && !pt_cuda_exec_error(c->x))
    e = cudaGraphInstantiate(&tg->exec, graph, 0);
  if (graph) cudaGraphDestroy(graph);
  if (e != cudaSuccess || !tg->exec) {
    char why[160];
    snprintf(why, sizeof why, "capture failed: %s",
             e != cudaSuccess ? cudaGetErrorString(e) : "an error while enqueuing");
    cudaGetLastError();
    tg->exec = NULL;
    graphs_off(s, g, why);
    enqueue_compute(s, g, io, h); /* the captured work never ran */
    return;
  }
  tg->n_ptrs = c->n_ptrs;
  memcpy(tg->ptrs, c->ptrs, c->n_ptrs * sizeof *c->ptrs);
  pt_stream_log(s, PT_LOG_DEBUG,
                "stage %d: captured a CUDA graph (parity %d, loss %d, training %d)", g->j, io->cur,
                io->loss, io->train);
  CK(c, cudaGraphLaunch(tg->exec, c->stream));
}

void pt_cuda_run_tick(stage *g, int64_t k, const tick_desc *td) {
  pt_stream *s = g->s;
  pt_model *m = s->m;
  cuda_stage *c = g->cu;
  const int j = g->j, D = s->D, cur = (int)(k % 2), prev = (int)((k + 1) % 2);
  boundary *in = j > 0 ? &s->bd[j - 1] : NULL, *out = &s->bd[j];
  cudaStream_t S = c->stream;
  const size_t f = sizeof(float);
  cudaSetDevice(c->dev);

  if (k >= 1) {
    if (j > 0) CK(c, cudaStreamWaitEvent(S, s->st[j - 1].cu->ev[prev], 0));
    if (j < D - 1) CK(c, cudaStreamWaitEvent(S, s->st[j + 1].cu->ev[prev], 0));
  }
  bool nccl = s->links && s->links->nccl;
#ifdef PT_HAVE_NCCL
  if (nccl && k >= 1) { /* tick k-1's activations downstream, its gradient upstream */
    ncclComm_t comm = s->links->comm[j];
    ncclResult_t r = ncclGroupStart();
    if (in && r == ncclSuccess) {
      r = ncclRecv(c->mirror, in->floats, ncclFloat, j - 1, comm, S);
      if (r == ncclSuccess) r = ncclSend(in->gbuf[prev], in->floats + 1, ncclFloat, j - 1, comm, S);
    }
    if (j < D - 1 && r == ncclSuccess) {
      r = ncclSend(out->buf[prev], out->floats, ncclFloat, j + 1, comm, S);
      if (r == ncclSuccess) r = ncclRecv(c->gmirror, out->floats + 1, ncclFloat, j + 1, comm, S);
    }
    ncclResult_t e = ncclGroupEnd();
    if ((r != ncclSuccess || e != ncclSuccess) && !c->error[0])
      snprintf(c->error, sizeof c->error, "cuda:%d: NCCL exchange of stage %d: %s", c->dev, j,
               ncclGetErrorString(r != ncclSuccess ? r : e));
  }
#endif
  if (in) { /* the gradient sent upstream this tick is not real until proven */
    ptk_set_args a = {in->gbuf[cur] + in->floats, 0.0f};
    ptk_set(S, 1, &a);
  }
  if (td->slot < 0) { /* a bubble */
    CK(c, cudaEventRecord(c->ev[cur], S));
    return;
  }
  slot *sl = &s->slots[td->slot];
  double t0 = pt_now_s();
  pt_counter_add(&g->ticks_real, 1);
  if (j == 0) pt_stream_convert_raw(s, sl);

  /* What changes per tick, into fixed buffers: the frame, the target, the neighbours'
   * boundaries when they live on another device. */
  if (j == 0 && sl->on_device)
    CK(c, cudaMemcpyAsync(c->in_dev, c->dev_frames + (int64_t)td->slot * s->in_numel,
                          s->in_numel * f, cudaMemcpyDeviceToDevice, S));
  else if (j == 0)
    CK(c, cudaMemcpyAsync(c->in_dev, sl->input, s->in_numel * f, cudaMemcpyHostToDevice, S));
  tick_io io = {.cur = cur, .view = c->in_dev};
  if (in) {
    io.view = in->buf[prev];
    if (c->mirror && nccl) {
      io.view = c->mirror;
    } else if (c->mirror) {
      CK(c, cudaMemcpyPeerAsync(c->mirror, c->dev, in->buf[prev], s->st[j - 1].cu->dev,
                                in->floats * f, S));
      io.view = c->mirror;
    }
  }
  bool train = td->train && s->o.train.enabled && s->o.train.loss != PT_LOSS_NONE;
  if (j == D - 1) {
    io.loss = upload_target(s, c, td->slot);
    io.train = train && io.loss;
    io.delta = out->gbuf[cur];
  } else if (train) {
    io.train = true;
    io.delta = out->gbuf[prev];
    if (c->gmirror && nccl) {
      io.delta = c->gmirror;
    } else if (c->gmirror) {
      CK(c, cudaMemcpyPeerAsync(c->gmirror, c->dev, out->gbuf[prev], s->st[j + 1].cu->dev,
                                (out->floats + 1) * f, S));
      io.delta = c->gmirror;
    }
  }

  /* The buffers the compute reads and writes, bound and noted. */
  c->n_ptrs = 0;
  for (int i = 0; i < g->n_ext; i++) {
    int v = g->ext[i];
    bind(c, v, in ? io.view + in->off[pt_boundary_index(in, v)] : io.view);
  }
  for (int i = 0; i < out->n; i++) {
    int v = out->vals[i];
    const pt_value *val = &m->vals[v];
    if (val->producer >= g->first && val->producer < g->end)
      bind(c, v, out->buf[cur] + out->off[i]);
  }
  const void *used[] = {io.view, io.train ? io.delta : NULL, out->buf[cur], out->gbuf[cur],
                        in ? in->gbuf[cur] : NULL};
  for (size_t i = 0; i < sizeof used / sizeof *used; i++) c->ptrs[c->n_ptrs++] = used[i];

  run_compute(s, g, &io, &td->h);

  /* The results, into this tick's host-function record. */
  cb_rec *r = NULL;
  if (j == D - 1) {
    r = next_rec(g);
    r->slot = td->slot;
    CK(c, cudaMemcpyAsync(sl->output, out->buf[cur] + out->off[0], s->out_numel * f,
                          cudaMemcpyDeviceToHost, S));
    if (io.loss) CK(c, cudaMemcpyAsync(&r->loss, c->loss_dev, f, cudaMemcpyDeviceToHost, S));
  }
  if (io.train) {
    if (!r) r = next_rec(g);
    r->trained = 1;
    CK(c, cudaMemcpyAsync(&r->st, c->state, sizeof r->st, cudaMemcpyDeviceToHost, S));
  }
  if (r) CK(c, cudaLaunchHostFunc(S, tick_done, r));
  CK(c, cudaEventRecord(c->ev[cur], S));
  pt_counter_add(&g->busy_ns, (int64_t)((pt_now_s() - t0) * 1e9));
}
