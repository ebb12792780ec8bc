/* The engine's internals, shared by the scheduler (stream.c) and the CUDA stage backend
 * (cuda/engine.c), and test hooks into a stream (internal). */
#ifndef PT_STREAM_INTERNAL_H
#define PT_STREAM_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <partime/stream.h>
#include "exec.h"

#define PT_BACKUP_EVERY 64
#define PT_RAW_RING 4      /* raw frames waiting for stage 0 to convert them */
#define PT_RESULT_QUEUE 16 /* finished results that may wait for pop beyond those in flight */

typedef enum slot_state { SLOT_FREE, SLOT_IN_FLIGHT, SLOT_DONE, SLOT_POPPED } slot_state;

typedef struct slot {
  slot_state state;
  int64_t frame;
  int64_t entry_tick; /* the tick at which it entered stage 0, -1 while it waits to enter */
  void *user;
  float *input; /* the frame (numel of the input) */
  int raw;      /* index in the raw ring of a frame waiting for opts.preprocess, or -1 */
  size_t raw_n;
  float *target; /* mse / next-frame target (numel of the output) */
  int64_t cls;
  bool has_target;
  bool on_device; /* the frame came from pt_stream_push_device: it waits on stage 0's device */
  float *output;
  float *output_to; /* the caller's memory for the output (pt_stream_set_output), or NULL */
  float loss;
  bool trained;
  int64_t step;
} slot;

/* buf lives with the producing stage, gbuf with the consuming one (host memory for CPU stages,
 * device memory for CUDA stages, where a gradient's "real" flag travels as one more float after
 * the packed values so that it moves with them). */
typedef struct boundary {
  int n;
  int *vals;
  int64_t *off; /* offset of each value in the packed buffers */
  int64_t floats;
  float *buf[2], *gbuf[2];
  bool greal[2]; /* gbuf[i] holds a gradient that came from a real frame (CPU stages) */
} boundary;

typedef struct hyper {
  float lr, momentum, weight_decay;
} hyper;

typedef struct tick_desc {
  int slot;   /* frame slot entering stage 0 at this tick, -1 for a bubble */
  bool train; /* training on for this tick */
  hyper h;    /* the optimizer settings the frame entering now trains with */
} tick_desc;

struct pt_stream;

typedef struct stage {
  struct pt_stream *s;
  int j, first, end;               /* nodes [first, end) of the graph the stream runs (s->m) */
  int node_first, node_end, split; /* the same in the model's nodes (pt_partition) */
  pt_exec x;
  struct pt_cuda_stage *cu; /* a CUDA stage's state (cuda/engine.c), NULL on the CPU */
  char device[32];
  int gpu;   /* CUDA device index, -1 on the CPU */
  int core;  /* CPU core to pin to, -1 for none */
  bool spin; /* a CPU stage with a core of its own: polls briefly for its next tick */
  pthread_t thread;
  bool thread_started;
  int64_t done;    /* ticks completed */
  int64_t tick_ns; /* how long the last tick ran (atomic: read by a waiting pop) */
  int *ext;        /* external values the nodes read */
  int n_ext;
  float *opt_m, *opt_v, *backup; /* per parameter element, in x.params order */
  int64_t n_param_floats;
  int64_t opt_step, good_updates;
  int bad_run;
  double predicted_s;
  /* written by the stage's thread alone, read by pt_stream_get_stats from any thread: through
   * pt_counter_add / pt_counter_get */
  int64_t busy_ns, ticks_real, updates;
} stage;

/* A counter with one writer and readers on other threads (no lock, no torn value). */
static inline void pt_counter_add(int64_t *c, int64_t v) {
  __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

static inline int64_t pt_counter_get(const int64_t *c) {
  return __atomic_load_n(c, __ATOMIC_RELAXED);
}

struct pt_stream {
  pt_model *m;       /* the graph the stages run: the model, or derived from it (split.h) */
  pt_model *model;   /* the caller's model (saved, named in errors) */
  pt_model *derived; /* owned when a convolution is split across a cut, else NULL */
  pt_stream_opts o;
  char devices_copy[256];
  int D;
  stage *st;
  boundary *bd; /* bd[j] between stage j and j+1; bd[D-1] is the output */
  int64_t in_numel, out_numel;
  int out_classes;
  bool out_is_prob;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop;
  bool threaded;
  long cores;        /* cores this process may run on (its affinity mask), when it was created */
  bool pop_may_spin; /* CPU stages, no more than cores: the caller polls in pt_stream_pop */
  /* As many CPU stages as cores, on cores the stream chose: stages trade cores so that the one
   * with the most slack shares its core with the caller (follow_caller in stream.c). Caller's
   * thread only. */
  bool follow;
  int64_t follow_next, follow_every, follow_swaps;
  bool cuda; /* every stage runs on a GPU (mixing CPU and GPU stages is refused) */
  struct pt_cuda_links *links; /* how a CUDA stream's boundaries cross devices (cuda/engine.c) */
  bool train_on;
  hyper h;
  unsigned char *raw[PT_RAW_RING];
  bool raw_busy[PT_RAW_RING];
  int64_t raw_next;
  int raw_open;       /* the raw buffer pt_stream_raw_begin handed out, not yet pushed; -1: none */
  float *next_output; /* pt_stream_set_output's memory for the next frame pushed, or NULL */

  tick_desc *ticks;
  int n_ticks_ring;
  int64_t issued;          /* ticks issued */
  int64_t last_frame_tick; /* tick at which the newest frame entered, -1 if none */

  slot *slots;
  int n_slots;
  int64_t next_frame; /* index of the next frame to push */
  int64_t next_pop;   /* index of the next frame to pop */
  int held;           /* next-frame loss: slot of the frame waiting for its successor, -1 */

  double t_start;
  bool started;
  int64_t skipped, restores;
  char last_error[PT_ERROR_MAX];
};

/* Shared by the scheduler and the stage backends. */
double pt_now_s(void); /* monotonic seconds */
void pt_stream_log(pt_stream *s, pt_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Stage 0: converts the slot's raw frame (if it came by push_raw) into its input and frees the raw
 * buffer for the next push. */
void pt_stream_convert_raw(pt_stream *s, slot *sl);
/* The index of value v in boundary b, -1 if it does not cross there. */
int pt_boundary_index(const boundary *b, int v);

/* The CUDA stage backend (cuda/engine.c; stubs in builds without CUDA). Host memory shared with a
 * device (frames, outputs, targets) comes from pt_cuda_host_alloc: pinned, so copies overlap. */
pt_status pt_cuda_stream_init(pt_stream *s, pt_error *err);
void pt_cuda_stream_free(pt_stream *s);
void pt_cuda_run_tick(stage *g, int64_t k, const tick_desc *td);
/* Waits for every enqueued tick; with `weights`, copies the trained weights into the model. */
pt_status pt_cuda_stream_sync(pt_stream *s, bool weights, pt_error *err);
/* Clears the gradient flags (flush). */
void pt_cuda_stream_reset(pt_stream *s);
void *pt_cuda_host_alloc(int device, size_t bytes);
/* Converts a device frame into frame slot `si`'s device buffer on stage 0's device;
 * returns when done, so the caller's frame may be released. */
pt_status pt_cuda_stage_device_frame(pt_stream *s, int si, const pt_device_frame *f);
void pt_cuda_host_free(void *p);
/* The device index of "cuda:N", checked against the machine; an error naming it otherwise. */
pt_status pt_cuda_parse_device(const char *name, int *index, pt_error *err);

/* The gradient buffer of parameter value `value` in the stage that owns it (NULL if none, or if
 * that stage runs on a GPU). Its contents are those of the last tick at which that stage trained.
 */
const float *pt_stream_param_grad(const pt_stream *s, int value);

#endif
