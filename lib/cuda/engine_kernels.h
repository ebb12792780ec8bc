/* The engine's per-tick decisions on the device (internal): whether a stage updates, whether the
 * gradient it sends is real, the guard's counters, so no tick waits for the host to decide.
 * The same rules as the CPU path of ../stream.c (DESIGN §4), one thread each. */
#ifndef PT_CUDA_ENGINE_KERNELS_H
#define PT_CUDA_ENGINE_KERNELS_H

#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One stage's state on its device; copied to the host after every tick it trains. */
typedef struct pt_tick_state {
  int real;        /* the incoming gradient came from a real frame (with a finite loss) */
  int finite;      /* every gradient checked this tick was finite */
  int ok;          /* the update is applied */
  int bad;         /* this tick's update was skipped for a non-finite value */
  int backup_now;  /* refresh the backup after this update */
  int restore_now; /* too many bad ticks in a row: restore the backup */
  int bad_run;
  int pad_;
  int64_t t; /* Adam's step count */
  int64_t updates, skipped, restores, good_updates;
} pt_tick_state;

/* Starts a training tick: real from the incoming gradient's flag (a float after the packed
 * gradient, nonzero = real) or, at the last stage (flag NULL), from the loss being finite. n = 1.
 */
typedef struct ptk_tick_begin_args {
  pt_tick_state *st;
  const float *flag;
  const float *loss;
} ptk_tick_begin_args;
void ptk_tick_begin(cudaStream_t s, int64_t n, const ptk_tick_begin_args *a);

/* Decides the update after the backward and the finite checks; writes the flag of the gradient
 * sent upstream (out_flag, may be NULL). n = 1. */
typedef struct ptk_tick_decide_args {
  pt_tick_state *st;
  float *out_flag;
  int last;
  int guard_limit;
  int backup_every;
} ptk_tick_decide_args;
void ptk_tick_decide(cudaStream_t s, int64_t n, const ptk_tick_decide_args *a);

/* y[i] = 0 where *cond != 0 (optimizer state reset on restore). */
typedef struct ptk_zero_if_args {
  float *y;
  const int *cond;
} ptk_zero_if_args;
void ptk_zero_if(cudaStream_t s, int64_t n, const ptk_zero_if_args *a);

/* *y = value (a gradient's flag). n = 1. */
typedef struct ptk_set_args {
  float *y;
  float value;
} ptk_set_args;
void ptk_set(cudaStream_t s, int64_t n, const ptk_set_args *a);

/* A frame of 8-bit packed pixels in device memory into the model's float input (C, H, W):
 * out[c][y][x] = src[y * pitch + x * ps + off[c]] * a[c] + b[c]. n = C * H * W. */
typedef struct ptk_unpack_args {
  float *out;
  const unsigned char *src;
  int64_t pitch;
  int W, H, ps;
  int off[4];
  float a[4], b[4];
} ptk_unpack_args;
void ptk_unpack_u8(cudaStream_t s, int64_t n, const ptk_unpack_args *a);

#ifdef __cplusplus
}
#endif

#endif
