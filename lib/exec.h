/* The executor: runs a contiguous range of a model's nodes (a stage, or the whole graph) forward
 * and backward on the CPU (internal).
 *
 * One allocation each for activations, gradients and per-node aux buffers, carved by a size table
 * at init; nothing is allocated while running. Values the range reads but does not produce (graph
 * inputs, or a predecessor stage's boundary tensors) are "external": their buffers are supplied by
 * the caller with pt_exec_bind(), and their gradients, when wanted, are written into buffers the
 * executor owns (pt_exec_grad()). Parameters are updated in place in the model's values.
 *
 * Activations inside the range are the executor's business: a Conv's output that only a Relu reads
 * holds the Relu's output (the two are one buffer), and without train a value one oneDNN
 * convolution hands another in its blocked layout is never written. pt_exec_act() is sure of
 * external values and of values that leave the range (read by a node after it, or graph outputs).
 *
 * Without train, parameters are taken to stay as they are (the executor updates none): after
 * changing them in place, call pt_exec_params_changed().
 *
 * Gradients: pt_exec_backward() expects the caller to have zeroed the gradients
 * (pt_exec_zero_grad()) and written the gradient of each output it cares about into
 * pt_exec_grad(x, v); every backward adds (+=) into its inputs' gradients. */
#ifndef PT_EXEC_H
#define PT_EXEC_H

#include <stdbool.h>
#include "graph.h"

typedef struct pt_exec {
  pt_model *m;
  int first, end;   /* node range [first, end) */
  bool train;       /* gradients allocated */
  float **act;      /* per value: activation buffer (own, bound, or the model's data) */
  float **grad;     /* per value: gradient buffer, NULL where none is needed */
  bool *needs_grad; /* per value */
  void **aux;       /* per node in range (indexed node - first) */
  void **plan;      /* per node in range: a Conv / ConvTranspose's oneDNN plan
                     * (cpu/dnnl_conv.h), NULL where the node runs cpu/conv.c */
  bool *folded;     /* per node in range: a Relu that the plan of the convolution before it runs;
                     * its output is its input's buffer */
  float *scratch;
  int64_t scratch_floats;
  float *act_arena, *grad_arena;
  unsigned char *aux_arena;
  int *params; /* parameter values read by nodes in range */
  int n_params;
} pt_exec;

/* Prepares to run nodes [first, end). With `train`, gradient buffers exist for every parameter
 * read in range and every value that depends on one; `grad_external` also asks for gradients of
 * the external float inputs (a stage that must send a gradient to its predecessor).
 * Convolutions of the shapes where oneDNN is faster get a oneDNN plan, unless the environment
 * sets PARTIME_DNNL=0 (everything then runs on cpu/conv.c); PARTIME_WINOGRAD=0 keeps the plans on
 * direct convolution where the rule would pick Winograd. */
pt_status pt_exec_init(pt_exec *x, pt_model *m, int first, int end, bool train, bool grad_external,
                       pt_error *err);
void pt_exec_free(pt_exec *x);

/* The gradient plan shared by every backend: marks in needs_grad (n_vals, zeroed by the caller)
 * each value of nodes [first, end) that needs a gradient, and lists the parameters read there in
 * params (n_vals entries of room), in value order. */
void pt_exec_plan_grads(const pt_model *m, int first, int end, bool grad_external, bool *needs_grad,
                        int *params, int *n_params);

/* Points an external value at caller-owned memory (read by forward and backward), or a value that
 * leaves the range at memory that forward writes. */
void pt_exec_bind(pt_exec *x, int value, const float *data);
float *pt_exec_act(const pt_exec *x, int value);
float *pt_exec_grad(const pt_exec *x, int value);
/* Tells an executor without train that parameter values changed in place (its convolution plans
 * keep a copy of the weights in oneDNN's layout). */
void pt_exec_params_changed(pt_exec *x);

void pt_exec_forward(pt_exec *x);
/* One node of the range (the partitioner times nodes one by one). */
void pt_exec_forward_node(pt_exec *x, int node);
void pt_exec_backward_node(pt_exec *x, int node);
void pt_exec_zero_grad(pt_exec *x);
void pt_exec_backward(pt_exec *x);

/* True when value v is read by a node in [first, end) and not produced there. */
bool pt_exec_is_external(const pt_exec *x, int v);

#endif
