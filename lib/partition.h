/* Cutting a model into D contiguous stages (internal).
 *
 * `balance` is PARTIME's list of node counts per stage, -1 meaning "the rest", or "auto": the exact
 * min-max contiguous partition over measured per-node cost plus the cost of what crosses each cut.
 * Among the partitions within 5% of that optimum, auto prefers cuts that follow an activation or a
 * pooling layer (a cut between a convolution and its activation learns badly under the delayed
 * gradients of the training rule).
 *
 * A cut may also fall inside a convolution, between its output channels ("N+C" in a balance: N
 * whole nodes, then output channels [0, C) of the next node, whose other channels begin the next
 * stage). A network of a few equally heavy layers balances no better than one layer in D
 * otherwise. auto considers such a cut where it lowers the slowest stage by more than 5%, and
 * prefers it where the activation that follows the convolution moves with each half (split.h). */
#ifndef PT_PARTITION_H
#define PT_PARTITION_H

#include <stdbool.h>
#include "graph.h"

typedef struct pt_partition {
  int D;
  int first[65];     /* stage i runs nodes [first[i], first[i+1]) */
  int split[64];     /* > 0: stage i also runs output channels [0, split[i]) of node first[i+1],
                      * whose other channels start stage i + 1 */
  double cost[64];   /* estimated seconds per tick of each stage; NaN without measured costs */
  double node_total; /* sum of all node costs (the one-stage time); NaN without costs */
} pt_partition;

/* Measures the cost of every node (forward, plus backward when `train`) on the CPU: cost[i] in
 * seconds, the median of a few runs. */
pt_status pt_measure_node_costs(pt_model *m, bool train, double *cost, pt_error *err);

/* True when a cut after node i follows an activation or pooling layer. */
bool pt_cut_is_preferred(const pt_model *m, int i);

/* Writes a partition as a balance string ("9+16,8"): what auto chose, in a form that gives the same
 * cut again. */
void pt_partition_str(const pt_partition *p, char *buf, size_t n);

/* Splits by `balance` ("auto" or counts). `cost` (n_nodes entries) is needed for "auto" and
 * fills p->cost either way; it may be NULL for explicit counts. */
pt_status pt_partition_make(const pt_model *m, int D, const char *balance, const double *cost,
                            bool train, pt_partition *p, pt_error *err);

#endif
