/* Simulated CUDA runtime: devices, the device memory registry, streams, events (cuda/sim).
 *
 * Streams. Each stream owns a worker thread and a FIFO of tasks. A stream counts the tasks ever
 * submitted and completed; since it runs them in order, "the first seq tasks of stream id are
 * done" is simply completed >= seq. That pair is all an event records: cudaEventRecord stores
 * (stream id, submitted) and queues nothing, a wait is a task that sleeps until the pair is done,
 * and synchronize waits for the pair taken at the call. Streams are found by id, not pointer, so
 * an event outliving its stream is harmless: destroy drains the queue first, so a stream that is
 * gone has completed everything.
 *
 * NULL stream. Work on it waits for what is already queued on the device's blocking streams
 * (legacy default stream semantics) and then runs synchronously in the caller. Real work on the
 * NULL stream is asynchronous to the host; here it never is, which can hide a race, never add one.
 *
 * Capture. A capturing stream holds a capture: the tasks submitted to it go there instead of its
 * queue. cudaStreamEndCapture turns them into a graph; an executable graph is a copy of them,
 * and a launch queues one task that runs them all in order on the launching stream, holding a
 * reference so that destroying the graph meanwhile is safe. An event recorded in a capture keeps
 * the capture's id instead of a (stream, seq) mark. Captures are found through the live streams,
 * under sim_lock like everything else.
 *
 * Jitter. With PARTIME_SIM_JITTER=1 each stream thread sleeps 0-200 us before every task, so a
 * missing dependency between streams shows up as a wrong result rather than depending on luck.
 *
 * Memory. cudaMalloc hands out host memory filled with 0xff bytes (NaN as float), so reading
 * device memory nobody wrote shows up. Allocations sit in a sorted registry so copies can check
 * that each side is what their kind says, and lie inside one allocation. cudaFree waits for the
 * device's queued work first, as the real one synchronizes: work may still use the memory. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "sim.h"
#include "pt_sim.h"

pthread_mutex_t sim_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t sim_progress = PTHREAD_COND_INITIALIZER;

struct sim_task {
  sim_task *next;
  sim_run_fn run;
  size_t size; /* of the payload */
  _Alignas(max_align_t) unsigned char payload[];
};

/* A capture in progress: the tasks its stream was given, in order. */
typedef struct capture {
  uint64_t id;
  enum cudaStreamCaptureMode mode;
  pthread_t thread; /* the one that began it */
  int invalidated;
  sim_task *head, *tail;
} capture;

struct CUstream_st {
  struct CUstream_st *next_live;
  uint64_t id;
  int dev;
  unsigned flags;
  sim_task *head, *tail;
  capture *cap;                  /* NULL when not capturing */
  uint64_t submitted, completed; /* tasks, ever */
  int closing;
  pthread_cond_t wake;
  pthread_t thread;
  unsigned rng; /* jitter; touched by the worker only */
};

struct CUevent_st {
  int dev;
  int recorded;
  uint64_t stream_id; /* 0: the last record is complete */
  uint64_t seq;
  uint64_t capture_id; /* nonzero: last recorded in that capture */
};

struct CUgraph_st {
  sim_task *head, *tail;
};

struct CUgraphExec_st {
  sim_task *head;
  int refs;                       /* the handle and every queued launch; under sim_lock */
  uint64_t last_stream, last_seq; /* the last launch, which the next one is ordered behind */
};

/* Under sim_lock. */
static struct CUstream_st *live_streams;
static int n_live_streams;
static uint64_t next_stream_id = 1, next_capture_id = 1;
static int peer_enabled[SIM_MAX_DEVICES][SIM_MAX_DEVICES];

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int n_devices, jitter;

static _Thread_local int cur_dev;
static _Thread_local cudaError_t last_error;
static _Thread_local enum cudaStreamCaptureMode thread_mode; /* Global, the default */

static void device_sync(int dev);

static void sim_init(void) {
  const char *e = getenv("PARTIME_SIM_DEVICES");
  n_devices = 2;
  if (e && *e) {
    char *end;
    long v = strtol(e, &end, 10);
    if (!*end && v >= 0) n_devices = v > SIM_MAX_DEVICES ? SIM_MAX_DEVICES : (int)v;
  }
  e = getenv("PARTIME_SIM_JITTER");
  jitter = e && !strcmp(e, "1");
}

int sim_device_count(void) {
  pthread_once(&init_once, sim_init);
  return n_devices;
}

void sim_warn(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("cuda-sim: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* Every failing call leaves its code for cudaGetLastError, as the real runtime does. */
static cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}

/* Device present: the common first check of calls that need a context. */
static cudaError_t need_device(void) {
  return sim_device_count() ? cudaSuccess : cudaErrorNoDevice;
}

/* ---- what capture forbids ---- */

/* The capture with this id, if it is still in progress. Under sim_lock. */
static capture *capture_find_locked(uint64_t id) {
  for (struct CUstream_st *l = live_streams; id && l; l = l->next_live)
    if (l->cap && l->cap->id == id) return l->cap;
  return NULL;
}

/* NULL-stream work on dev would depend on dev's capturing blocking streams: 1 (and those captures
 * are invalidated), or 0. Under sim_lock. */
static int legacy_blocked_locked(int dev) {
  int hit = 0;
  for (struct CUstream_st *l = live_streams; l; l = l->next_live)
    if (l->cap && l->dev == dev && !(l->flags & cudaStreamNonBlocking)) {
      l->cap->invalidated = 1;
      hit = 1;
    }
  return hit;
}

static cudaError_t legacy_check(int dev) {
  pthread_mutex_lock(&sim_lock);
  int hit = legacy_blocked_locked(dev);
  pthread_mutex_unlock(&sim_lock);
  return hit ? fail(cudaErrorStreamCaptureImplicit) : cudaSuccess;
}

/* A potentially unsafe call (see cuda_runtime.h) is refused while the calling thread's own
 * non-relaxed capture is in progress or, in Global mode, any Global one; those are invalidated. */
static cudaError_t unsafe_call(void) {
  int hit = 0;
  if (thread_mode == cudaStreamCaptureModeRelaxed) return cudaSuccess;
  pthread_mutex_lock(&sim_lock);
  for (struct CUstream_st *l = live_streams; l; l = l->next_live) {
    capture *c = l->cap;
    if (!c || c->mode == cudaStreamCaptureModeRelaxed) continue;
    if (pthread_equal(c->thread, pthread_self()) ||
        (thread_mode == cudaStreamCaptureModeGlobal && c->mode == cudaStreamCaptureModeGlobal)) {
      c->invalidated = 1;
      hit = 1;
    }
  }
  pthread_mutex_unlock(&sim_lock);
  return hit ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

static cudaError_t submit_error(int rc) {
  switch (rc) {
  case 0:
    return cudaSuccess;
  case SIM_INVALIDATED:
    return fail(cudaErrorStreamCaptureInvalidated);
  case SIM_LEGACY_BLOCKED:
    return fail(cudaErrorStreamCaptureImplicit);
  default:
    return fail(cudaErrorInvalidResourceHandle);
  }
}

/* ---- errors and versions ---- */

#define SIM_ERRORS(X)                                                                              \
  X(cudaSuccess, "no error")                                                                       \
  X(cudaErrorInvalidValue, "invalid argument")                                                     \
  X(cudaErrorMemoryAllocation, "out of memory")                                                    \
  X(cudaErrorInitializationError, "initialization error")                                          \
  X(cudaErrorInvalidDevicePointer, "invalid device pointer")                                       \
  X(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")                          \
  X(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version")   \
  X(cudaErrorNoDevice, "no CUDA-capable device is detected")                                       \
  X(cudaErrorInvalidDevice, "invalid device ordinal")                                              \
  X(cudaErrorInvalidResourceHandle, "invalid resource handle")                                     \
  X(cudaErrorIllegalState, "the operation cannot be performed in the present state")               \
  X(cudaErrorNotReady, "device not ready")                                                         \
  X(cudaErrorIllegalAddress, "an illegal memory access was encountered")                           \
  X(cudaErrorPeerAccessAlreadyEnabled, "peer access is already enabled")                           \
  X(cudaErrorPeerAccessNotEnabled, "peer access has not been enabled")                             \
  X(cudaErrorLaunchFailure, "unspecified launch failure")                                          \
  X(cudaErrorNotSupported, "operation not supported")                                              \
  X(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing")         \
  X(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture")  \
  X(cudaErrorStreamCaptureMerge,                                                                   \
    "operation would result in a merge of separate capture sequences")                             \
  X(cudaErrorStreamCaptureIsolation, "dependency created on uncaptured work in another stream")    \
  X(cudaErrorStreamCaptureImplicit,                                                                \
    "operation would make the legacy stream depend on a capturing blocking stream")                \
  X(cudaErrorCapturedEvent, "operation not permitted on an event last recorded in a capturing "    \
                            "stream")                                                              \
  X(cudaErrorStreamCaptureWrongThread,                                                             \
    "attempt to terminate a thread-local capture sequence from another thread")                    \
  X(cudaErrorUnknown, "unknown error")

const char *cudaGetErrorString(cudaError_t error) {
#define X(code, text)                                                                              \
  case code:                                                                                       \
    return text;
  switch (error) { SIM_ERRORS(X) }
#undef X
  return "unrecognized error code";
}

const char *cudaGetErrorName(cudaError_t error) {
#define X(code, text)                                                                              \
  case code:                                                                                       \
    return #code;
  switch (error) { SIM_ERRORS(X) }
#undef X
  return "cudaErrorUnknown";
}

cudaError_t cudaGetLastError(void) {
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

cudaError_t cudaDriverGetVersion(int *driverVersion) {
  if (!driverVersion) return fail(cudaErrorInvalidValue);
  *driverVersion = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *runtimeVersion) {
  if (!runtimeVersion) return fail(cudaErrorInvalidValue);
  *runtimeVersion = CUDART_VERSION;
  return cudaSuccess;
}

/* ---- devices ---- */

cudaError_t cudaGetDeviceCount(int *count) {
  if (!count) return fail(cudaErrorInvalidValue);
  *count = sim_device_count();
  return *count ? cudaSuccess : fail(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device) {
  if (need_device()) return fail(cudaErrorNoDevice);
  if (device < 0 || device >= sim_device_count()) return fail(cudaErrorInvalidDevice);
  cur_dev = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
  if (!device) return fail(cudaErrorInvalidValue);
  if (need_device()) return fail(cudaErrorNoDevice);
  *device = cur_dev;
  return cudaSuccess;
}

cudaError_t cudaDeviceCanAccessPeer(int *canAccessPeer, int device, int peerDevice) {
  int n = sim_device_count();
  if (!canAccessPeer) return fail(cudaErrorInvalidValue);
  if (!n) return fail(cudaErrorNoDevice);
  if (device < 0 || device >= n || peerDevice < 0 || peerDevice >= n)
    return fail(cudaErrorInvalidDevice);
  *canAccessPeer = device != peerDevice;
  return cudaSuccess;
}

cudaError_t cudaDeviceEnablePeerAccess(int peerDevice, unsigned int flags) {
  int n = sim_device_count(), already;
  if (!n) return fail(cudaErrorNoDevice);
  if (peerDevice < 0 || peerDevice >= n || peerDevice == cur_dev)
    return fail(cudaErrorInvalidDevice);
  if (flags) return fail(cudaErrorInvalidValue);
  pthread_mutex_lock(&sim_lock);
  already = peer_enabled[cur_dev][peerDevice];
  peer_enabled[cur_dev][peerDevice] = 1;
  pthread_mutex_unlock(&sim_lock);
  return already ? fail(cudaErrorPeerAccessAlreadyEnabled) : cudaSuccess;
}

/* ---- memory registry ---- */

typedef struct {
  uintptr_t base;
  size_t size;
  int dev; /* -1: pinned host memory */
} sim_alloc;

static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;
static sim_alloc *allocs; /* sorted by base */
static size_t n_allocs, cap_allocs;

/* Index of the last allocation whose base is <= p, or -1. Under mem_lock. */
static long alloc_find(uintptr_t p) {
  long lo = 0, hi = (long)n_allocs - 1, found = -1;
  while (lo <= hi) {
    long mid = lo + (hi - lo) / 2;
    if (allocs[mid].base <= p) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

static int alloc_add(void *p, size_t size, int dev) {
  uintptr_t u = (uintptr_t)p;
  pthread_mutex_lock(&mem_lock);
  if (n_allocs == cap_allocs) {
    size_t cap = cap_allocs ? 2 * cap_allocs : 64;
    sim_alloc *a = realloc(allocs, cap * sizeof *a);
    if (!a) {
      pthread_mutex_unlock(&mem_lock);
      return -1;
    }
    allocs = a;
    cap_allocs = cap;
  }
  long at = alloc_find(u) + 1;
  memmove(allocs + at + 1, allocs + at, (n_allocs - (size_t)at) * sizeof *allocs);
  allocs[at] = (sim_alloc){u, size, dev};
  n_allocs++;
  pthread_mutex_unlock(&mem_lock);
  return 0;
}

/* The kind of the allocation starting exactly at p: its device, -1 for pinned host memory, -2
 * for none. */
static int alloc_kind(const void *p) {
  int kind = -2;
  pthread_mutex_lock(&mem_lock);
  long at = alloc_find((uintptr_t)p);
  if (at >= 0 && allocs[at].base == (uintptr_t)p) kind = allocs[at].dev;
  pthread_mutex_unlock(&mem_lock);
  return kind;
}

static void alloc_remove(void *p) {
  pthread_mutex_lock(&mem_lock);
  long at = alloc_find((uintptr_t)p);
  memmove(allocs + at, allocs + at + 1, (n_allocs - (size_t)at - 1) * sizeof *allocs);
  n_allocs--;
  pthread_mutex_unlock(&mem_lock);
}

int sim_dev_range(const void *p, size_t bytes) {
  uintptr_t u = (uintptr_t)p;
  int dev = -1;
  pthread_mutex_lock(&mem_lock);
  long at = alloc_find(u);
  if (at >= 0 && allocs[at].dev >= 0 && u < allocs[at].base + allocs[at].size + (bytes == 0))
    dev = u + bytes <= allocs[at].base + allocs[at].size ? allocs[at].dev : -2;
  pthread_mutex_unlock(&mem_lock);
  return dev;
}

int pt_sim_allocs_live(void) {
  pthread_mutex_lock(&mem_lock);
  int n = (int)n_allocs;
  pthread_mutex_unlock(&mem_lock);
  return n;
}

cudaError_t cudaMalloc(void **devPtr, size_t size) {
  void *p;
  if (!devPtr) return fail(cudaErrorInvalidValue);
  if (need_device()) return fail(cudaErrorNoDevice);
  if (unsafe_call()) return cudaErrorStreamCaptureUnsupported;
  *devPtr = NULL;
  if (!size) return cudaSuccess;
  /* 256-byte alignment as cudaMalloc guarantees; no rounding of the size, so ASan sees overruns */
  if (posix_memalign(&p, 256, size)) return fail(cudaErrorMemoryAllocation);
  memset(p, 0xff, size);
  if (alloc_add(p, size, cur_dev)) {
    free(p);
    return fail(cudaErrorMemoryAllocation);
  }
  *devPtr = p;
  return cudaSuccess;
}

/* Like the real one, it first waits for all work queued on the device (queued work may still
 * use the memory). */
cudaError_t cudaFree(void *devPtr) {
  int dev;
  if (!devPtr) return cudaSuccess;
  if ((dev = alloc_kind(devPtr)) < 0) return fail(cudaErrorInvalidValue);
  if (unsafe_call()) return cudaErrorStreamCaptureUnsupported;
  device_sync(dev);
  alloc_remove(devPtr);
  free(devPtr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t size) {
  void *p;
  if (!ptr) return fail(cudaErrorInvalidValue);
  if (need_device()) return fail(cudaErrorNoDevice);
  if (unsafe_call()) return cudaErrorStreamCaptureUnsupported;
  *ptr = NULL;
  if (!size) return cudaSuccess;
  if (!(p = malloc(size))) return fail(cudaErrorMemoryAllocation);
  if (alloc_add(p, size, -1)) {
    free(p);
    return fail(cudaErrorMemoryAllocation);
  }
  *ptr = p;
  return cudaSuccess;
}

/* Waits for all queued work, on every device, as cudaFree does for its device. */
cudaError_t cudaFreeHost(void *ptr) {
  if (!ptr) return cudaSuccess;
  if (alloc_kind(ptr) != -1) return fail(cudaErrorInvalidValue);
  if (unsafe_call()) return cudaErrorStreamCaptureUnsupported;
  for (int d = 0; d < sim_device_count(); d++) device_sync(d);
  alloc_remove(ptr);
  free(ptr);
  return cudaSuccess;
}

/* ---- streams ---- */

sim_task *sim_task_new(sim_run_fn run, size_t payload_size) {
  sim_task *t = malloc(sizeof *t + payload_size);
  if (!t) abort(); /* no way to report it from an enqueue that the real API cannot fail */
  t->next = NULL;
  t->run = run;
  t->size = payload_size;
  return t;
}

static sim_task *task_copy(const sim_task *t) {
  sim_task *c = sim_task_new(t->run, t->size);
  memcpy(c->payload, t->payload, t->size);
  return c;
}

static void task_list_free(sim_task *t) {
  while (t) {
    sim_task *next = t->next;
    free(t);
    t = next;
  }
}

/* Appends to a capture that is not invalidated. Under sim_lock. */
static void capture_add_locked(capture *c, sim_task *t) {
  t->next = NULL;
  if (c->tail)
    c->tail->next = t;
  else
    c->head = t;
  c->tail = t;
}

void *sim_task_payload(sim_task *t) {
  return t->payload;
}

static struct CUstream_st *stream_live_locked(cudaStream_t s) {
  for (struct CUstream_st *l = live_streams; l; l = l->next_live)
    if (l == s) return l;
  return NULL;
}

int sim_stream_valid(cudaStream_t s) {
  if (!s) return 1;
  pthread_mutex_lock(&sim_lock);
  int ok = stream_live_locked(s) && !s->closing;
  pthread_mutex_unlock(&sim_lock);
  return ok;
}

int sim_stream_device(cudaStream_t s) {
  return s ? s->dev : cur_dev;
}

static int mark_done_locked(uint64_t stream_id, uint64_t seq) {
  if (!stream_id) return 1;
  for (struct CUstream_st *l = live_streams; l; l = l->next_live)
    if (l->id == stream_id) return l->completed >= seq;
  return 1;
}

static void wait_mark_locked(uint64_t stream_id, uint64_t seq) {
  while (!mark_done_locked(stream_id, seq)) pthread_cond_wait(&sim_progress, &sim_lock);
}

/* Waits for everything queued so far on dev's streams, or on its blocking ones only (those the
 * legacy stream synchronizes with). The targets are taken first, so work queued meanwhile does
 * not prolong the wait. Under sim_lock. */
static void drain_locked(int dev, int blocking_only) {
  struct {
    uint64_t id, seq;
  } *mark = malloc((size_t)n_live_streams * sizeof *mark + 1);
  int n = 0;
  if (!mark) abort();
  for (struct CUstream_st *l = live_streams; l; l = l->next_live)
    if (l->dev == dev && !(blocking_only && (l->flags & cudaStreamNonBlocking)) &&
        l->completed < l->submitted)
      mark[n].id = l->id, mark[n++].seq = l->submitted;
  for (int i = 0; i < n; i++) wait_mark_locked(mark[i].id, mark[i].seq);
  free(mark);
}

static void device_sync(int dev) {
  pthread_mutex_lock(&sim_lock);
  drain_locked(dev, 0);
  pthread_mutex_unlock(&sim_lock);
}

void sim_legacy_sync(int dev) {
  pthread_mutex_lock(&sim_lock);
  drain_locked(dev, 1);
  pthread_mutex_unlock(&sim_lock);
}

int sim_submit(cudaStream_t s, int dev, sim_task *t) {
  if (!s) {
    if (dev < 0) dev = cur_dev;
    pthread_mutex_lock(&sim_lock);
    int blocked = legacy_blocked_locked(dev);
    pthread_mutex_unlock(&sim_lock);
    if (!blocked) {
      sim_legacy_sync(dev);
      t->run(t->payload);
    }
    free(t);
    return blocked ? SIM_LEGACY_BLOCKED : 0;
  }
  pthread_mutex_lock(&sim_lock);
  if (!stream_live_locked(s) || s->closing) {
    pthread_mutex_unlock(&sim_lock);
    free(t);
    return SIM_BAD_STREAM;
  }
  if (s->cap) {
    int bad = s->cap->invalidated;
    if (!bad) capture_add_locked(s->cap, t);
    pthread_mutex_unlock(&sim_lock);
    if (bad) free(t);
    return bad ? SIM_INVALIDATED : 0;
  }
  if (s->tail)
    s->tail->next = t;
  else
    s->head = t;
  s->tail = t;
  s->submitted++;
  pthread_cond_signal(&s->wake);
  pthread_mutex_unlock(&sim_lock);
  return 0;
}

static void jitter_sleep(unsigned *rng) {
  struct timespec ts = {0, (long)(rand_r(rng) % 201) * 1000};
  nanosleep(&ts, NULL);
}

static void *stream_main(void *arg) {
  struct CUstream_st *s = arg;
  pthread_mutex_lock(&sim_lock);
  for (;;) {
    while (!s->head && !s->closing) pthread_cond_wait(&s->wake, &sim_lock);
    sim_task *t = s->head;
    if (!t) break; /* closing and drained */
    s->head = t->next;
    if (!s->head) s->tail = NULL;
    pthread_mutex_unlock(&sim_lock);
    if (jitter) jitter_sleep(&s->rng);
    t->run(t->payload);
    free(t);
    pthread_mutex_lock(&sim_lock);
    s->completed++;
    pthread_cond_broadcast(&sim_progress);
  }
  pthread_mutex_unlock(&sim_lock);
  return NULL;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags) {
  struct CUstream_st *s;
  if (!pStream || (flags & ~(unsigned)cudaStreamNonBlocking)) return fail(cudaErrorInvalidValue);
  if (need_device()) return fail(cudaErrorNoDevice);
  if (!(s = calloc(1, sizeof *s))) return fail(cudaErrorMemoryAllocation);
  s->dev = cur_dev;
  s->flags = flags;
  pthread_cond_init(&s->wake, NULL);
  pthread_mutex_lock(&sim_lock);
  s->id = next_stream_id++;
  s->rng = (unsigned)s->id * 2654435761u;
  pthread_mutex_unlock(&sim_lock);
  if (pthread_create(&s->thread, NULL, stream_main, s)) {
    pthread_cond_destroy(&s->wake);
    free(s);
    return fail(cudaErrorMemoryAllocation);
  }
  pthread_mutex_lock(&sim_lock);
  s->next_live = live_streams;
  live_streams = s;
  n_live_streams++;
  pthread_mutex_unlock(&sim_lock);
  *pStream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *pStream) {
  return cudaStreamCreateWithFlags(pStream, cudaStreamDefault);
}

/* Waits for the queued work to finish (the real call returns at once and lets it finish). A
 * capture in progress is dropped. */
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  pthread_mutex_lock(&sim_lock);
  if (!stream || !stream_live_locked(stream) || stream->closing) {
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorInvalidResourceHandle);
  }
  capture *c = stream->cap;
  stream->cap = NULL;
  stream->closing = 1;
  pthread_cond_signal(&stream->wake);
  pthread_mutex_unlock(&sim_lock);
  pthread_join(stream->thread, NULL);
  pthread_mutex_lock(&sim_lock);
  for (struct CUstream_st **l = &live_streams; *l; l = &(*l)->next_live)
    if (*l == stream) {
      *l = stream->next_live;
      break;
    }
  n_live_streams--;
  pthread_mutex_unlock(&sim_lock);
  pthread_cond_destroy(&stream->wake);
  free(stream);
  if (c) task_list_free(c->head);
  free(c);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  pthread_mutex_lock(&sim_lock);
  if (!stream) {
    if (legacy_blocked_locked(cur_dev)) {
      pthread_mutex_unlock(&sim_lock);
      return fail(cudaErrorStreamCaptureImplicit);
    }
    drain_locked(cur_dev, 1);
  } else if (!stream_live_locked(stream)) {
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorInvalidResourceHandle);
  } else if (stream->cap) {
    stream->cap->invalidated = 1;
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorStreamCaptureUnsupported);
  } else {
    uint64_t target = stream->submitted;
    while (stream->completed < target) pthread_cond_wait(&sim_progress, &sim_lock);
  }
  pthread_mutex_unlock(&sim_lock);
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  int busy = 0;
  pthread_mutex_lock(&sim_lock);
  if (stream && !stream_live_locked(stream)) {
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorInvalidResourceHandle);
  }
  if (stream ? stream->cap != NULL : legacy_blocked_locked(cur_dev)) {
    if (stream) stream->cap->invalidated = 1;
    pthread_mutex_unlock(&sim_lock);
    return fail(stream ? cudaErrorStreamCaptureUnsupported : cudaErrorStreamCaptureImplicit);
  }
  for (struct CUstream_st *l = live_streams; l; l = l->next_live)
    if (stream ? l == stream : l->dev == cur_dev && !(l->flags & cudaStreamNonBlocking))
      busy |= l->completed < l->submitted;
  pthread_mutex_unlock(&sim_lock);
  return busy ? cudaErrorNotReady : cudaSuccess;
}

/* Refused during any capture on the device, as it would wait for the capturing streams. */
cudaError_t cudaDeviceSynchronize(void) {
  int hit = 0;
  if (need_device()) return fail(cudaErrorNoDevice);
  if (unsafe_call()) return cudaErrorStreamCaptureUnsupported;
  pthread_mutex_lock(&sim_lock);
  for (struct CUstream_st *l = live_streams; l; l = l->next_live)
    if (l->cap && l->dev == cur_dev) l->cap->invalidated = hit = 1;
  pthread_mutex_unlock(&sim_lock);
  if (hit) return fail(cudaErrorStreamCaptureUnsupported);
  device_sync(cur_dev);
  return cudaSuccess;
}

/* ---- copies, memset, host functions, kernels ---- */

typedef struct {
  void *dst;
  const void *src;
  size_t n;
} copy_args;

static void copy_run(void *p) {
  copy_args *a = p;
  memcpy(a->dst, a->src, a->n);
}

enum { HOST = -1, OVERRUN = -2 };

static cudaError_t check_copy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
  int dd = sim_dev_range(dst, n), sd = sim_dev_range(src, n);
  int ok;
  if (!dst || !src) return cudaErrorInvalidValue;
  if (dd == OVERRUN || sd == OVERRUN) return cudaErrorInvalidValue;
  switch (kind) {
  case cudaMemcpyHostToHost:
    ok = dd == HOST && sd == HOST;
    break;
  case cudaMemcpyHostToDevice:
    ok = dd >= 0 && sd == HOST;
    break;
  case cudaMemcpyDeviceToHost:
    ok = dd == HOST && sd >= 0;
    break;
  case cudaMemcpyDeviceToDevice:
    ok = dd >= 0 && sd >= 0;
    break;
  case cudaMemcpyDefault:
    ok = 1;
    break;
  default:
    return cudaErrorInvalidMemcpyDirection;
  }
  return ok ? cudaSuccess : cudaErrorInvalidValue;
}

static cudaError_t submit_copy(void *dst, const void *src, size_t n, cudaStream_t s) {
  sim_task *t = sim_task_new(copy_run, sizeof(copy_args));
  *(copy_args *)sim_task_payload(t) = (copy_args){dst, src, n};
  return submit_error(sim_submit(s, -1, t));
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  cudaError_t e;
  if (!count) return cudaSuccess;
  if (!sim_stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  if ((e = check_copy(dst, src, count, kind))) return fail(e);
  return submit_copy(dst, src, count, stream);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind) {
  if (unsafe_call()) return cudaErrorStreamCaptureUnsupported;
  return cudaMemcpyAsync(dst, src, count, kind, NULL);
}

cudaError_t cudaMemcpyPeerAsync(void *dst, int dstDevice, const void *src, int srcDevice,
                                size_t count, cudaStream_t stream) {
  int n = sim_device_count();
  if (dstDevice < 0 || dstDevice >= n || srcDevice < 0 || srcDevice >= n)
    return fail(cudaErrorInvalidDevice);
  if (!count) return cudaSuccess;
  if (!sim_stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (sim_dev_range(dst, count) != dstDevice || sim_dev_range(src, count) != srcDevice)
    return fail(cudaErrorInvalidValue);
  return submit_copy(dst, src, count, stream);
}

typedef struct {
  void *dst;
  int value;
  size_t n;
} set_args;

static void set_run(void *p) {
  set_args *a = p;
  memset(a->dst, a->value, a->n);
}

cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream) {
  if (!count) return cudaSuccess;
  if (!sim_stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (sim_dev_range(devPtr, count) < 0) return fail(cudaErrorInvalidValue);
  sim_task *t = sim_task_new(set_run, sizeof(set_args));
  *(set_args *)sim_task_payload(t) = (set_args){devPtr, value, count};
  return submit_error(sim_submit(stream, -1, t));
}

cudaError_t cudaMemset(void *devPtr, int value, size_t count) {
  if (unsafe_call()) return cudaErrorStreamCaptureUnsupported;
  return cudaMemsetAsync(devPtr, value, count, NULL);
}

typedef struct {
  cudaHostFn_t fn;
  void *data;
} host_args;

static void host_run(void *p) {
  host_args *a = p;
  a->fn(a->data);
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void *userData) {
  if (!fn) return fail(cudaErrorInvalidValue);
  if (!sim_stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  sim_task *t = sim_task_new(host_run, sizeof(host_args));
  *(host_args *)sim_task_payload(t) = (host_args){fn, userData};
  return submit_error(sim_submit(stream, -1, t));
}

typedef struct {
  void (*run)(const void *args, int64_t n);
  int64_t n;
  _Alignas(max_align_t) unsigned char args[];
} launch_args;

static void launch_run(void *p) {
  launch_args *a = p;
  a->run(a->args, a->n);
}

void pt_sim_launch(cudaStream_t s, int64_t n, void (*run)(const void *args, int64_t n),
                   const void *args, size_t args_size) {
  if (!sim_stream_valid(s) || sim_stream_device(s) != cur_dev) {
    fail(cudaErrorInvalidResourceHandle);
    return;
  }
  if (n <= 0) return;
  sim_task *t = sim_task_new(launch_run, sizeof(launch_args) + args_size);
  launch_args *a = sim_task_payload(t);
  a->run = run;
  a->n = n;
  memcpy(a->args, args, args_size);
  submit_error(sim_submit(s, -1, t));
}

int pt_sim_streams_live(void) {
  pthread_mutex_lock(&sim_lock);
  int n = n_live_streams;
  pthread_mutex_unlock(&sim_lock);
  return n;
}

/* ---- events ---- */

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  struct CUevent_st *e;
  /* 0x01 is cudaEventBlockingSync: waits here always block, so it changes nothing */
  if (!event || (flags & ~(unsigned)(0x01 | cudaEventDisableTiming)))
    return fail(cudaErrorInvalidValue);
  if (need_device()) return fail(cudaErrorNoDevice);
  if (!(e = calloc(1, sizeof *e))) return fail(cudaErrorMemoryAllocation);
  e->dev = cur_dev;
  *event = e;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  free(event);
  return cudaSuccess;
}

/* In a capture the event marks a point of the capture: no (stream, seq) mark. */
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!event || !sim_stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (sim_stream_device(stream) != event->dev) return fail(cudaErrorInvalidResourceHandle);
  if (!stream && legacy_check(event->dev)) return cudaErrorStreamCaptureImplicit;
  if (!stream) sim_legacy_sync(event->dev); /* the NULL stream's work is done once this returns */
  pthread_mutex_lock(&sim_lock);
  if (stream && stream->cap) {
    int bad = stream->cap->invalidated;
    if (!bad) event->capture_id = stream->cap->id;
    pthread_mutex_unlock(&sim_lock);
    return bad ? fail(cudaErrorStreamCaptureInvalidated) : cudaSuccess;
  }
  event->capture_id = 0;
  event->recorded = 1;
  event->stream_id = stream ? stream->id : 0;
  event->seq = stream ? stream->submitted : 0;
  pthread_mutex_unlock(&sim_lock);
  return cudaSuccess;
}

/* Under sim_lock: an event last recorded in a capture cannot be queried, synchronized with or
 * waited on from outside it; a capture still in progress is invalidated. */
static int captured_event_locked(cudaEvent_t event) {
  if (!event->capture_id) return 0;
  capture *c = capture_find_locked(event->capture_id);
  if (c) c->invalidated = 1;
  return 1;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  pthread_mutex_lock(&sim_lock);
  if (captured_event_locked(event)) {
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorCapturedEvent);
  }
  int done = !event->recorded || mark_done_locked(event->stream_id, event->seq);
  pthread_mutex_unlock(&sim_lock);
  return done ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  pthread_mutex_lock(&sim_lock);
  if (captured_event_locked(event)) {
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorCapturedEvent);
  }
  if (event->recorded) wait_mark_locked(event->stream_id, event->seq);
  pthread_mutex_unlock(&sim_lock);
  return cudaSuccess;
}

typedef struct {
  uint64_t stream_id, seq;
} wait_args;

static void wait_run(void *p) {
  wait_args *a = p;
  pthread_mutex_lock(&sim_lock);
  wait_mark_locked(a->stream_id, a->seq);
  pthread_mutex_unlock(&sim_lock);
}

/* A capturing stream may wait only for what it recorded itself in this capture (in order
 * already) or for an event never recorded (nothing to wait for). */
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  wait_args w;
  int pending;
  if (!event || !sim_stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (flags) return fail(cudaErrorInvalidValue);
  pthread_mutex_lock(&sim_lock);
  capture *own = stream ? stream->cap : NULL;
  if (own) {
    cudaError_t e = cudaSuccess;
    if (own->invalidated)
      e = cudaErrorStreamCaptureInvalidated;
    else if (event->capture_id && event->capture_id != own->id)
      e = cudaErrorStreamCaptureMerge;
    else if (!event->capture_id && event->recorded)
      e = cudaErrorStreamCaptureIsolation;
    if (e) own->invalidated = 1;
    pthread_mutex_unlock(&sim_lock);
    return e ? fail(e) : cudaSuccess;
  }
  if (event->capture_id) { /* forking into a capture is not simulated */
    int live = capture_find_locked(event->capture_id) != NULL;
    pthread_mutex_unlock(&sim_lock);
    return fail(live ? cudaErrorNotSupported : cudaErrorCapturedEvent);
  }
  pending = event->recorded && !mark_done_locked(event->stream_id, event->seq);
  w = (wait_args){event->stream_id, event->seq};
  pthread_mutex_unlock(&sim_lock);
  if (!pending) return cudaSuccess; /* never recorded, or already complete */
  sim_task *t = sim_task_new(wait_run, sizeof w);
  *(wait_args *)sim_task_payload(t) = w;
  return submit_error(sim_submit(stream, -1, t));
}

/* ---- capture and graphs ---- */

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  if ((unsigned)mode > cudaStreamCaptureModeRelaxed) return fail(cudaErrorInvalidValue);
  if (!stream) return fail(cudaErrorStreamCaptureUnsupported); /* the legacy stream cannot */
  capture *c = calloc(1, sizeof *c);
  if (!c) return fail(cudaErrorMemoryAllocation);
  c->mode = mode;
  c->thread = pthread_self();
  pthread_mutex_lock(&sim_lock);
  cudaError_t e = !stream_live_locked(stream) || stream->closing ? cudaErrorInvalidResourceHandle
                  : stream->cap                                  ? cudaErrorIllegalState
                                                                 : cudaSuccess;
  if (!e) {
    c->id = next_capture_id++;
    stream->cap = c;
  }
  pthread_mutex_unlock(&sim_lock);
  if (e) free(c);
  return e ? fail(e) : cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *pGraph) {
  if (!pGraph) return fail(cudaErrorInvalidValue);
  if (!stream) return fail(cudaErrorIllegalState);
  pthread_mutex_lock(&sim_lock);
  if (!stream_live_locked(stream)) {
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorInvalidResourceHandle);
  }
  capture *c = stream->cap;
  if (!c) {
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorIllegalState);
  }
  if (c->mode != cudaStreamCaptureModeRelaxed && !pthread_equal(c->thread, pthread_self())) {
    pthread_mutex_unlock(&sim_lock);
    return fail(cudaErrorStreamCaptureWrongThread);
  }
  stream->cap = NULL;
  pthread_mutex_unlock(&sim_lock);
  *pGraph = NULL;
  struct CUgraph_st *g = c->invalidated ? NULL : malloc(sizeof *g);
  if (g) {
    g->head = c->head;
    g->tail = c->tail;
  } else {
    task_list_free(c->head);
  }
  int invalidated = c->invalidated;
  free(c);
  if (!g) return fail(invalidated ? cudaErrorStreamCaptureInvalidated : cudaErrorMemoryAllocation);
  *pGraph = g;
  return cudaSuccess;
}

/* The NULL stream answers cudaErrorStreamCaptureImplicit while a blocking stream of the current
 * device captures, without invalidating that capture. */
cudaError_t cudaStreamIsCapturing(cudaStream_t stream,
                                  enum cudaStreamCaptureStatus *pCaptureStatus) {
  cudaError_t e = cudaSuccess;
  if (!pCaptureStatus) return fail(cudaErrorInvalidValue);
  pthread_mutex_lock(&sim_lock);
  if (!stream) {
    *pCaptureStatus = cudaStreamCaptureStatusNone;
    for (struct CUstream_st *l = live_streams; l; l = l->next_live)
      if (l->cap && l->dev == cur_dev && !(l->flags & cudaStreamNonBlocking))
        e = cudaErrorStreamCaptureImplicit;
  } else if (!stream_live_locked(stream)) {
    e = cudaErrorInvalidResourceHandle;
  } else {
    *pCaptureStatus = !stream->cap               ? cudaStreamCaptureStatusNone
                      : stream->cap->invalidated ? cudaStreamCaptureStatusInvalidated
                                                 : cudaStreamCaptureStatusActive;
  }
  pthread_mutex_unlock(&sim_lock);
  return e ? fail(e) : cudaSuccess;
}

cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode *mode) {
  if (!mode || (unsigned)*mode > cudaStreamCaptureModeRelaxed) return fail(cudaErrorInvalidValue);
  enum cudaStreamCaptureMode old = thread_mode;
  thread_mode = *mode;
  *mode = old;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *pGraphExec, cudaGraph_t graph,
                                 unsigned long long flags) {
  if (!pGraphExec || !graph || (flags & ~0xfull)) return fail(cudaErrorInvalidValue);
  struct CUgraphExec_st *x = calloc(1, sizeof *x);
  if (!x) return fail(cudaErrorMemoryAllocation);
  sim_task **end = &x->head;
  for (const sim_task *t = graph->head; t; t = t->next) {
    *end = task_copy(t);
    end = &(*end)->next;
  }
  x->refs = 1;
  *pGraphExec = x;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  if (!graph) return fail(cudaErrorInvalidValue);
  task_list_free(graph->head);
  free(graph);
  return cudaSuccess;
}

static void exec_unref(struct CUgraphExec_st *x) {
  pthread_mutex_lock(&sim_lock);
  int last = --x->refs == 0;
  pthread_mutex_unlock(&sim_lock);
  if (!last) return;
  task_list_free(x->head);
  free(x);
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec) {
  if (!graphExec) return fail(cudaErrorInvalidValue);
  exec_unref(graphExec);
  return cudaSuccess;
}

typedef struct {
  struct CUgraphExec_st *x;
} graph_args;

static void graph_run(void *p) {
  struct CUgraphExec_st *x = ((graph_args *)p)->x;
  for (sim_task *t = x->head; t; t = t->next) t->run(t->payload);
  exec_unref(x);
}

/* On a capturing stream the graph's work joins the capture (a child graph, flattened). */
cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
  struct CUgraphExec_st *x = graphExec;
  if (!x) return fail(cudaErrorInvalidValue);
  if (!sim_stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  pthread_mutex_lock(&sim_lock);
  if (stream && stream->cap) {
    int bad = stream->cap->invalidated;
    for (const sim_task *t = x->head; !bad && t; t = t->next)
      capture_add_locked(stream->cap, task_copy(t));
    pthread_mutex_unlock(&sim_lock);
    return bad ? fail(cudaErrorStreamCaptureInvalidated) : cudaSuccess;
  }
  /* ordered behind the previous launch, wherever that was */
  wait_args w = {x->last_stream, x->last_seq};
  int behind = (!stream || w.stream_id != stream->id) && !mark_done_locked(w.stream_id, w.seq);
  x->refs++;
  pthread_mutex_unlock(&sim_lock);
  int rc = 0;
  if (behind) {
    sim_task *t = sim_task_new(wait_run, sizeof w);
    *(wait_args *)sim_task_payload(t) = w;
    rc = sim_submit(stream, -1, t);
  }
  if (!rc) {
    sim_task *t = sim_task_new(graph_run, sizeof(graph_args));
    ((graph_args *)sim_task_payload(t))->x = x;
    rc = sim_submit(stream, -1, t);
  }
  if (rc) {
    exec_unref(x);
    return submit_error(rc);
  }
  pthread_mutex_lock(&sim_lock);
  x->last_stream = stream ? stream->id : 0;
  x->last_seq = stream ? stream->submitted : 0;
  pthread_mutex_unlock(&sim_lock);
  return cudaSuccess;
}
