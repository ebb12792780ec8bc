/* Simulated NCCL: communicators of one process and point-to-point send/receive (cuda/sim).
 *
 * Pairing happens when an operation is issued (at the call, or at ncclGroupEnd inside a group):
 * each ordered pair of ranks (sender, receiver) has a channel holding the transfers issued by one
 * side that still wait for the other side's call. The first side creates a transfer, the second
 * takes the oldest one, so the k-th send pairs with the k-th receive.
 *
 * Execution: the operations of one issue that share a stream become one task. It marks its sides
 * of the transfers as reached, copies every transfer whose both sides are now reached, and then
 * waits until all of its transfers are done. Marking all sides before waiting is what lets a
 * grouped exchange in both directions complete; a lone operation is a group of one, so it holds
 * its stream until the peer's side runs, as on a GPU.
 *
 * Mismatched count or type (a bug NCCL does not reliably report) still pairs, so nothing hangs:
 * the shorter length is copied, a line goes to stderr and the call that paired returns
 * ncclInvalidUsage. */
#include <stdlib.h>
#include <string.h>
#include <nccl.h>
#include "sim.h"

enum { SIDE_SEND = 1, SIDE_RECV = 2 };

typedef struct transfer {
  struct transfer *next; /* in its channel while unpaired */
  const void *src;
  void *dst;
  size_t bytes;         /* of the side that created it; then the copied length */
  int reached, copying; /* reached: SIDE_* bits; copying: a task has claimed the copy */
  int done, refs;       /* refs: the sides whose tasks still hold it */
} transfer;

typedef struct {
  transfer *head, *tail;
  int side; /* which side the waiting transfers were issued by */
} channel;

typedef struct {
  int nranks, live;
  channel *chan; /* [sender * nranks + receiver] */
} clique;

struct ncclComm {
  clique *cl;
  int rank, dev;
};

typedef struct {
  ncclComm_t comm;
  int peer, side;
  void *buf;
  size_t bytes;
  cudaStream_t stream;
} p2p_op;

/* The calling thread's open group. */
static _Thread_local int group_depth;
static _Thread_local p2p_op *group_ops;
static _Thread_local int group_n, group_cap;
static _Thread_local ncclResult_t group_err;

static const size_t type_size[ncclNumTypes] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2};

const char *ncclGetErrorString(ncclResult_t result) {
  switch (result) {
  case ncclSuccess:
    return "no error";
  case ncclUnhandledCudaError:
    return "unhandled cuda error";
  case ncclSystemError:
    return "unhandled system error";
  case ncclInternalError:
    return "internal error";
  case ncclInvalidArgument:
    return "invalid argument";
  case ncclInvalidUsage:
    return "invalid usage";
  case ncclRemoteError:
    return "remote process exited or there was a network error";
  case ncclInProgress:
    return "NCCL operation in progress";
  default:
    return "unknown result code";
  }
}

ncclResult_t ncclGetVersion(int *version) {
  if (!version) return ncclInvalidArgument;
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclCommInitAll(ncclComm_t *comm, int ndev, const int *devlist) {
  int count;
  if (!comm || ndev < 1) return ncclInvalidArgument;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return ncclUnhandledCudaError;
  for (int i = 0; i < ndev; i++) {
    int d = devlist ? devlist[i] : i;
    if (d < 0 || d >= count) return ncclInvalidArgument;
    for (int j = 0; j < i; j++)
      if (devlist && devlist[j] == d) return ncclInvalidUsage; /* one rank per device */
  }
  clique *cl = calloc(1, sizeof *cl);
  ncclComm_t *made = calloc((size_t)ndev, sizeof *made);
  if (cl) cl->chan = calloc((size_t)ndev * ndev, sizeof *cl->chan);
  for (int i = 0; made && cl && cl->chan && i < ndev; i++)
    if ((made[i] = malloc(sizeof **made)))
      *made[i] = (struct ncclComm){cl, i, devlist ? devlist[i] : i};
  int ok = made && cl && cl->chan;
  for (int i = 0; ok && i < ndev; i++) ok = made[i] != NULL;
  if (!ok) {
    for (int i = 0; made && i < ndev; i++) free(made[i]);
    if (cl) free(cl->chan);
    free(cl);
    free(made);
    return ncclSystemError;
  }
  cl->nranks = cl->live = ndev;
  memcpy(comm, made, (size_t)ndev * sizeof *comm);
  free(made);
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  clique *cl = comm->cl;
  pthread_mutex_lock(&sim_lock);
  int last = --cl->live == 0;
  pthread_mutex_unlock(&sim_lock);
  free(comm);
  if (!last) return ncclSuccess;
  /* transfers never paired: their first side would wait forever anyway */
  for (int i = 0; i < cl->nranks * cl->nranks; i++)
    for (transfer *t = cl->chan[i].head, *next; t; t = next) {
      next = t->next;
      free(t);
    }
  free(cl->chan);
  free(cl);
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
  if (!comm || !count) return ncclInvalidArgument;
  *count = comm->cl->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
  if (!comm || !rank) return ncclInvalidArgument;
  *rank = comm->rank;
  return ncclSuccess;
}

/* ---- execution ---- */

typedef struct {
  transfer *t;
  int side, copy; /* copy: this task completed the pair, so it moves the data */
} p2p_side;

typedef struct {
  int n;
  p2p_side op[];
} p2p_args;

static void p2p_run(void *p) {
  p2p_args *a = p;
  pthread_mutex_lock(&sim_lock);
  for (int i = 0; i < a->n; i++) a->op[i].t->reached |= a->op[i].side;
  for (int i = 0; i < a->n; i++) {
    transfer *t = a->op[i].t;
    if ((a->op[i].copy = t->reached == (SIDE_SEND | SIDE_RECV) && !t->copying)) t->copying = 1;
  }
  pthread_mutex_unlock(&sim_lock);
  for (int i = 0; i < a->n; i++)
    if (a->op[i].copy && a->op[i].t->bytes)
      memcpy(a->op[i].t->dst, a->op[i].t->src, a->op[i].t->bytes);
  pthread_mutex_lock(&sim_lock);
  for (int i = 0; i < a->n; i++)
    if (a->op[i].copy) a->op[i].t->done = 1;
  pthread_cond_broadcast(&sim_progress);
  for (int i = 0; i < a->n; i++)
    while (!a->op[i].t->done) pthread_cond_wait(&sim_progress, &sim_lock);
  for (int i = 0; i < a->n; i++)
    if (--a->op[i].t->refs == 0) free(a->op[i].t);
  pthread_mutex_unlock(&sim_lock);
}

/* Pairs op with its channel under sim_lock; returns the transfer, NULL when out of memory. */
static transfer *pair_locked(const p2p_op *op, ncclResult_t *err) {
  int me = op->comm->rank, n = op->comm->cl->nranks;
  channel *ch = &op->comm->cl->chan[op->side == SIDE_SEND ? me * n + op->peer : op->peer * n + me];
  transfer *t = ch->head;
  if (t && ch->side != op->side) {
    if (!(ch->head = t->next)) ch->tail = NULL;
    if (t->bytes != op->bytes) {
      int send = op->side == SIDE_SEND;
      sim_warn("ncclSend/ncclRecv rank %d -> rank %d: %zu bytes sent, %zu received",
               send ? me : op->peer, send ? op->peer : me, send ? op->bytes : t->bytes,
               send ? t->bytes : op->bytes);
      *err = ncclInvalidUsage;
      if (op->bytes < t->bytes) t->bytes = op->bytes;
    }
  } else {
    if (!(t = calloc(1, sizeof *t))) return NULL;
    t->bytes = op->bytes;
    t->refs = 2;
    if (ch->tail)
      ch->tail->next = t;
    else
      ch->head = t;
    ch->tail = t;
    ch->side = op->side;
  }
  if (op->side == SIDE_SEND)
    t->src = op->buf;
  else
    t->dst = op->buf;
  return t;
}

/* Pairs and queues ops: one task per distinct stream, the NULL-stream ones together (they run
 * synchronously in this thread, so splitting them could leave one waiting for the other). */
static ncclResult_t issue(const p2p_op *ops, int n) {
  ncclResult_t err = ncclSuccess;
  transfer **t = malloc((size_t)n * sizeof *t);
  char *queued = calloc((size_t)n, 1);
  if (!t || !queued) {
    free(t);
    free(queued);
    return ncclSystemError;
  }
  pthread_mutex_lock(&sim_lock);
  for (int i = 0; i < n; i++)
    if (!(t[i] = pair_locked(&ops[i], &err))) abort(); /* a half-paired group cannot be undone */
  pthread_mutex_unlock(&sim_lock);
  for (int i = 0; i < n; i++) {
    if (queued[i]) continue;
    int m = 0;
    for (int j = i; j < n; j++) m += ops[j].stream == ops[i].stream;
    sim_task *task = sim_task_new(p2p_run, sizeof(p2p_args) + (size_t)m * sizeof(p2p_side));
    p2p_args *a = sim_task_payload(task);
    a->n = 0;
    for (int j = i; j < n; j++)
      if (ops[j].stream == ops[i].stream) {
        queued[j] = 1;
        a->op[a->n].t = t[j];
        a->op[a->n++].side = ops[j].side;
        if (!ops[i].stream && ops[j].comm->dev != ops[i].comm->dev)
          sim_legacy_sync(ops[j].comm->dev);
      }
    if (sim_submit(ops[i].stream, ops[i].comm->dev, task)) {
      /* destroyed since the call that named it; the peer's side now waits forever, as it would */
      sim_warn("ncclGroupEnd: stream %p is gone", (void *)ops[i].stream);
      err = ncclInvalidUsage;
    }
  }
  free(t);
  free(queued);
  return err;
}

/* ---- API ---- */

static ncclResult_t p2p_check(const p2p_op *op, ncclDataType_t datatype, const char *fn) {
  if (!op->comm || (unsigned)datatype >= ncclNumTypes || op->peer < 0 ||
      op->peer >= op->comm->cl->nranks || !sim_stream_valid(op->stream) ||
      (op->stream && sim_stream_device(op->stream) != op->comm->dev))
    return ncclInvalidArgument;
  if (op->bytes && sim_dev_range(op->buf, op->bytes) != op->comm->dev) {
    sim_warn("%s: buffer %p (%zu bytes) is not device memory of rank %d's device %d", fn, op->buf,
             op->bytes, op->comm->rank, op->comm->dev);
    return ncclInvalidArgument;
  }
  return ncclSuccess;
}

static ncclResult_t group_add(const p2p_op *op) {
  if (group_n == group_cap) {
    int cap = group_cap ? 2 * group_cap : 16;
    p2p_op *g = realloc(group_ops, (size_t)cap * sizeof *g);
    if (!g) return ncclSystemError;
    group_ops = g, group_cap = cap;
  }
  group_ops[group_n++] = *op;
  return ncclSuccess;
}

static ncclResult_t p2p(void *buf, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                        cudaStream_t stream, int side) {
  size_t bytes = (unsigned)datatype < ncclNumTypes ? count * type_size[datatype] : 0;
  p2p_op op = {comm, peer, side, buf, bytes, stream};
  ncclResult_t err = p2p_check(&op, datatype, side == SIDE_SEND ? "ncclSend" : "ncclRecv");
  if (!err && !group_depth) return issue(&op, 1);
  if (!err) err = group_add(&op);
  if (err && group_depth && !group_err) group_err = err;
  return err;
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return p2p((void *)sendbuff, count, datatype, peer, comm, stream, SIDE_SEND);
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return p2p(recvbuff, count, datatype, peer, comm, stream, SIDE_RECV);
}

ncclResult_t ncclGroupStart(void) {
  group_depth++;
  return ncclSuccess;
}

/* A group with a failed call issues nothing and reports that call's error. */
ncclResult_t ncclGroupEnd(void) {
  ncclResult_t err;
  if (!group_depth) return ncclInvalidUsage;
  if (--group_depth) return ncclSuccess;
  err = group_err ? group_err : group_n ? issue(group_ops, group_n) : ncclSuccess;
  free(group_ops);
  group_ops = NULL;
  group_n = group_cap = 0;
  group_err = ncclSuccess;
  return err;
}
