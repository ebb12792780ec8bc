/* Internals shared by the simulated runtime, cuBLAS, cuDNN and NCCL (cuda/sim).
 *
 * A task is one heap block: this header, then its payload, which must be flat (no pointers it
 * owns), because the block is freed as a whole once the task has run. Build a task with
 * sim_task_new, fill sim_task_payload, hand it to sim_submit; from then on the stream owns it.
 * On a capturing stream the task goes into the capture and runs once per launch of the graph: its
 * run function must leave the payload as it found it. NCCL's tasks pair transfers when issued and
 * cannot run twice: NCCL calls must not be made on a capturing stream.
 *
 * All bookkeeping (queues, counters, event and NCCL state) sits under one lock, sim_lock; compute
 * and copies run outside it. Every time a task completes, sim_progress is broadcast; anything
 * waiting for work elsewhere (event waits, synchronize, NCCL peers) waits on it. */
#ifndef PT_SIM_INTERNAL_H
#define PT_SIM_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#define SIM_MAX_DEVICES 16

/* Internal to the simulation: kept out of the dynamic symbol table of a library that embeds it. */
#pragma GCC visibility push(hidden)

typedef struct sim_task sim_task;
typedef void (*sim_run_fn)(void *payload);

extern pthread_mutex_t sim_lock;
extern pthread_cond_t sim_progress;

sim_task *sim_task_new(sim_run_fn run, size_t payload_size);
void *sim_task_payload(sim_task *t);

/* Why sim_submit refused a task (it is freed then). */
enum {
  SIM_BAD_STREAM = -1,     /* not a live stream */
  SIM_INVALIDATED = -2,    /* the stream's capture was invalidated earlier */
  SIM_LEGACY_BLOCKED = -3, /* NULL-stream work while a blocking stream of the device captures (the
                              capture is invalidated) */
};

/* Runs t on s: queued, kept in s's capture, or on the NULL stream synchronously after draining
 * dev's blocking streams (dev < 0: the caller's current device). Returns 0 or a SIM_* refusal. */
int sim_submit(cudaStream_t s, int dev, sim_task *t);

/* Waits for everything already queued on dev's blocking streams (what NULL-stream work waits
 * for). */
void sim_legacy_sync(int dev);
/* 1 when s is NULL or a live stream. */
int sim_stream_valid(cudaStream_t s);
/* The stream's device; the caller's current device for NULL. */
int sim_stream_device(cudaStream_t s);
/* Number of simulated devices (0 means none). */
int sim_device_count(void);

/* Device memory registry. sim_dev_range: the device of the allocation holding all of
 * [p, p + bytes), -1 when p is not device memory, -2 when it starts in an allocation but runs off
 * its end. */
int sim_dev_range(const void *p, size_t bytes);

/* One line on stderr for misuse the real libraries do not report at the call (a host pointer
 * where device memory is required): they fault later instead, so the sim says why it refused. */
void sim_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#pragma GCC visibility pop

#endif
