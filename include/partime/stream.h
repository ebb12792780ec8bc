/* Streams: a model run frame by frame as a pipeline of stages over time, optionally learning.
 *
 * Tick contract: every push is one tick. At tick k stage j works on frame k - j, so with D stages
 * frame t leaves at tick t + D - 1 (pop returns it then). While the pipeline fills, push returns
 * PT_OK and pop returns PT_AGAIN. drain() runs the D - 1 ticks that bring every frame out; flush()
 * drops what is in flight. With training on, each stage at each tick backpropagates the gradient
 * its successor produced at the previous tick through this tick's forward and steps its own
 * optimizer; bubbles (ticks with no real frame or no real gradient) never train.
 *
 * Thread safety: one thread may push while another pops; the other calls belong to the pushing
 * thread. Outputs and weights do not depend on thread timing. */
#ifndef PARTIME_STREAM_H
#define PARTIME_STREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <partime/model.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pt_loss {
  PT_LOSS_NONE = 0,
  PT_LOSS_CROSS_ENTROPY, /* class index target; softmax of the output (or log of a Softmax node) */
  PT_LOSS_MSE,           /* tensor target of the output's shape; mean of squared errors */
  PT_LOSS_RECONSTRUCTION, /* target = the input frame itself (output shape must equal input's) */
  PT_LOSS_NEXT_FRAME,     /* target = the next input frame; adds one frame of delay */
} pt_loss;

typedef enum pt_optimizer { PT_OPT_SGD = 0, PT_OPT_ADAM } pt_optimizer;

/* Parses "cross-entropy", "mse", "reconstruction", "next-frame" / "sgd", "adam". */
pt_status pt_loss_from_string(const char *s, pt_loss *out);
const char *pt_loss_name(pt_loss l);
pt_status pt_optimizer_from_string(const char *s, pt_optimizer *out);
const char *pt_optimizer_name(pt_optimizer o);

typedef struct pt_train_opts {
  bool enabled;
  pt_loss loss;
  pt_optimizer optimizer;
  float lr;           /* default 1e-3; 0 freezes the weights while gradients still flow */
  float momentum;     /* SGD momentum, default 0.9 */
  float weight_decay; /* L2, added to the gradient (PyTorch's convention); default 0 */
  float beta1, beta2, eps; /* Adam; defaults 0.9, 0.999, 1e-8 */
  int guard_limit;    /* consecutive non-finite updates before the last good weights are restored;
                         default 3 */
} pt_train_opts;

typedef struct pt_stream_opts {
  int stages;          /* D >= 1; 0 means one stage per device */
  const char *devices; /* "cpu", "cpu,cpu", "cuda:0,cuda:1"; NULL means "cpu" */
  const char *balance; /* "auto" or node counts "3,4,-1"; "9+16,-1" also gives the first stage
                          output channels 0-15 of node 9, whose other channels begin the second
                          (a convolution split across the cut); NULL means "auto" */
  bool threaded;       /* run each stage on its own worker thread (default true); false runs the
                          same schedule on the calling thread, for tests and tools */
  pt_train_opts train;
  bool cuda_graphs;    /* CUDA stages capture each kind of tick's compute into a CUDA graph once
                          and replay it, saving the per-launch cost (default false) */
  pt_log_fn log;
  void *log_user;
  /* Optional input conversion, run by stage 0's worker so that format conversion, scaling and
   * normalization stay off the pushing thread (DESIGN §3): turns a raw frame of n <= raw_bytes
   * bytes, given to pt_stream_push_raw(), into the model's input (pt_shape_numel(input) floats).
   * With the next-frame loss it runs inside push instead (the frame is another frame's target). */
  void (*preprocess)(void *user, const void *raw, size_t n, float *input);
  void *preprocess_user;
  size_t raw_bytes;
} pt_stream_opts;

/* Fills `o` with the defaults above. */
void pt_stream_opts_init(pt_stream_opts *o);

typedef struct pt_stream pt_stream;

/* A frame's target for supervised losses: a class index (cross-entropy) or a tensor of the
 * output's shape (mse). NULL target: the frame does not train the last stage. */
typedef struct pt_target {
  int64_t class_index; /* cross-entropy */
  const float *tensor; /* mse: pt_shape_numel(output) floats, copied at push */
} pt_target;

/* Builds a stream over `m`. The stream uses `m`'s weights in place and updates them when
 * training; `m` must outlive the stream. */
pt_status pt_stream_new(pt_model *m, const pt_stream_opts *o, pt_stream **out, pt_error *err);
void pt_stream_free(pt_stream *s);

/* Feeds one frame (pt_shape_numel(input) floats, NCHW, copied before return) and runs one tick.
 * `user` travels with the frame and comes back in its result. Returns PT_AGAIN, taking nothing,
 * when the results of depth + 18 frames wait to be popped: pop, then push again. */
pt_status pt_stream_push(pt_stream *s, const float *frame, const pt_target *target, void *user);

/* Like pt_stream_push, for a raw frame that opts.preprocess converts on stage 0's worker; the n
 * bytes are copied before return. Four raw frames may wait for conversion; a fifth push waits
 * until stage 0 has converted the oldest. */
pt_status pt_stream_push_raw(pt_stream *s, const void *raw, size_t n, const pt_target *target,
                             void *user);

/* pt_stream_push_raw without the copy: the caller writes the frame straight into the stream's
 * buffer. pt_stream_raw_begin returns that buffer (opts.raw_bytes bytes), waiting as push_raw
 * does while four frames wait for conversion, or NULL when the stream has no preprocess function;
 * it returns the same buffer again until a commit succeeds. pt_stream_raw_commit pushes the
 * buffer's first n bytes as the next frame, as push_raw would; when it fails (PT_AGAIN included)
 * the buffer and what it holds stay the caller's, to commit again. */
void *pt_stream_raw_begin(pt_stream *s);
pt_status pt_stream_raw_commit(pt_stream *s, size_t n, const pt_target *target, void *user);

/* Where the next frame pushed (by any push call) writes its output: pt_shape_numel(output) floats
 * of the caller's, written by the last stage instead of the stream's own memory, and its result's
 * output points there. The memory must stay valid and untouched until that result is popped, or
 * until pt_stream_flush or pt_stream_free returns. It applies to one successful push; a failed
 * push keeps it for the next; NULL cancels it. Saves the caller a copy of each output it keeps
 * (the GStreamer element hands the memory of a pooled buffer). CPU stages only:
 * PT_ERR_UNSUPPORTED on a stream of GPU stages. */
pt_status pt_stream_set_output(pt_stream *s, float *dst);

/* A frame already in GPU memory: 8-bit packed pixels (RGB, BGR, RGBA, BGRx, ...) at a CUDA
 * device pointer on the device of stage 0, for streams whose stages run on GPUs. Channel c of the
 * model's input reads the byte at offset[c] of each pixel: input[c][y][x] =
 * data[y * pitch + x * pixel_stride + offset[c]] * a[c] + b[c]. width and height must be the
 * model input's; the model takes 1 to 4 channels. */
typedef struct pt_device_frame {
  const void *data;
  size_t pitch;     /* bytes from one row to the next */
  int width, height;
  int pixel_stride; /* bytes per pixel */
  int offset[4];
  float a[4], b[4];
} pt_device_frame;

/* Like pt_stream_push, for a frame in GPU memory: converted to the model's input on stage 0's
 * device before return (the caller may release it then). PT_ERR_STATE on a stream of CPU stages,
 * PT_ERR_SHAPE when the size or channels do not fit the model, PT_ERR_UNSUPPORTED with the
 * next-frame loss (its targets are kept in host memory). */
pt_status pt_stream_push_device(pt_stream *s, const pt_device_frame *frame,
                                const pt_target *target, void *user);

/* The primary context of GPU `device` (a CUcontext, and its CUdevice), the one libpartime's GPU
 * stages run in, so that a frame producer can allocate in it and hand frames over without a copy
 * (the element shares it through GstContext). PT_ERR_DEVICE when the GPU cannot be used,
 * PT_ERR_UNSUPPORTED in a build without a real CUDA backend. */
pt_status pt_cuda_primary_context(int device, void **context, int *cu_device, pt_error *err);

typedef struct pt_result {
  int64_t frame;       /* index of the frame, counted from 0 since creation or the last flush */
  void *user;          /* what was pushed with it */
  const float *output; /* pt_shape_numel(output) floats; valid until the next pop */
  float loss;          /* the frame's loss; NaN when it was not computed */
  bool trained;        /* whether the last stage learned from this frame */
  int64_t step;        /* number of updates the last stage has made so far */
} pt_result;

/* Takes the oldest frame's result: PT_OK, or PT_AGAIN when it is not finished and the tick that
 * finishes it has not been issued yet (the pipeline is filling). When that tick has been issued,
 * pop waits for the stage workers to finish it, so after pushing frame k pop returns frame
 * k - D + 1, exactly as the tick contract says. */
pt_status pt_stream_pop(pt_stream *s, pt_result *r);
/* Runs the ticks that bring every frame in flight out (their results wait for pop). */
pt_status pt_stream_drain(pt_stream *s);
/* Drops every frame in flight and every result not yet popped. */
pt_status pt_stream_flush(pt_stream *s);
/* Number of stages D (frame t leaves at tick t + D - 1). */
int pt_stream_depth(const pt_stream *s);
/* Frames pushed that have not left yet: pop cannot return them before their tick (on CPU stages
 * their results may already be computed, ahead of it). */
int pt_stream_in_flight(const pt_stream *s);
/* Switches training on or off at the next tick. */
pt_status pt_stream_set_training(pt_stream *s, bool on);
/* Changes the learning rate, SGD momentum and weight decay from the next tick on, keeping the
 * optimizer state (each frame trains with the values in force when it entered). */
pt_status pt_stream_set_hyperparams(pt_stream *s, float lr, float momentum, float weight_decay);
/* Writes the model with the current weights (atomically); waits for the tick in progress. */
pt_status pt_stream_save(pt_stream *s, const char *path);
/* The message of this stream's last error. */
const char *pt_stream_last_error(const pt_stream *s);

#define PT_MAX_STAGES 64

typedef struct pt_stage_stats {
  int first_node, n_nodes; /* the stage's node range */
  int split_channels;      /* > 0: the stage also runs output channels [0, split_channels) of
                            * node first_node + n_nodes, a convolution it shares with the next
                            * stage (balance "N+C"), which begins with that node's other channels */
  char device[32];         /* "cpu", "cuda:1" */
  double busy_s;           /* seconds spent computing */
  double predicted_s;      /* the partitioner's cost estimate per tick (seconds) */
  int64_t ticks;           /* ticks with a real frame */
  int64_t done;            /* ticks this stage has finished (bubbles included); a CPU stage j
                            * may be up to j ticks ahead of the pushes */
  int64_t updates;         /* optimizer steps taken */
} pt_stage_stats;

typedef struct pt_stream_stats {
  int stages;
  pt_stage_stats stage[PT_MAX_STAGES];
  int64_t ticks;          /* pushes so far */
  double elapsed_s;       /* wall time since the first push */
  double ticks_per_s;     /* ticks / elapsed_s */
  int in_flight;
  int64_t skipped_updates; /* updates skipped by the divergence guard */
  int64_t restores;        /* times the last good weights were restored */
} pt_stream_stats;

void pt_stream_get_stats(const pt_stream *s, pt_stream_stats *st);

/* The stream's cut as a balance string ("8+16,9"), which gives the same cut again when passed as
 * pt_stream_opts.balance; truncated to n - 1 characters. */
void pt_stream_balance(const pt_stream *s, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
