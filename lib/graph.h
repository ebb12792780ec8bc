/* The in-memory graph behind pt_model (internal).
 *
 * Values are the graph's tensors: inputs, parameters (trainable initializers), constants (other
 * initializers and Constant nodes, folded at load time) and activations (node outputs). Nodes are
 * kept in topological order; node i only reads values produced by nodes < i, inputs, parameters or
 * constants. Every op's attributes are resolved at load time into its parameter struct (ops.h),
 * with every dimension filled in, so running a node needs no lookups. */
#ifndef PT_GRAPH_H
#define PT_GRAPH_H

#include <stdbool.h>
#include <stdint.h>
#include <partime/model.h>
#include "cpu/ops.h"

typedef enum pt_val_kind {
  PT_VAL_INPUT,  /* a graph input fed at run time */
  PT_VAL_PARAM,  /* a trainable initializer */
  PT_VAL_CONST,  /* an initializer or folded constant that is not trained */
  PT_VAL_ACT,    /* produced by a node */
} pt_val_kind;

typedef struct pt_value {
  char *name;
  pt_shape shape;
  int64_t numel;
  pt_val_kind kind;
  bool is_int;     /* an int64 constant (shapes, axes, sizes): lives in ival, never in float math */
  float *data;     /* PARAM / CONST float contents (owned; parameters are updated in place) */
  int64_t *ival;   /* is_int constants (owned) */
  int producer;    /* index of the producing node, or -1 */
  int init_index;  /* index in the ONNX graph's initializer list, or -1 */
} pt_value;

#define PT_MAX_NODE_IN 16
#define PT_MAX_NODE_OUT 2

typedef struct pt_node {
  pt_op op;
  char *name;
  char *op_type; /* as written in the file */
  int n_in;
  int in[PT_MAX_NODE_IN]; /* value indices; -1 for an omitted optional input */
  int n_out;
  int out[PT_MAX_NODE_OUT];
  pt_op_params p;
  int64_t aux_bytes; /* per-node run-time buffer (max-pool argmax); allocated by the executor */
  int64_t scratch_floats; /* scratch the op needs while running (im2col); shared per stage */
  double flops;
} pt_node;

struct pt_model {
  char *name; /* file path or "builtin:NAME" */
  pt_value *vals;
  int n_vals;
  pt_node *nodes;
  int n_nodes;
  int input;  /* the streaming input value */
  int output; /* the streaming output value */
  int *inputs; /* every graph input that is not an initializer */
  int n_inputs;
  int *outputs;
  int n_outputs;
  int64_t opset;
  void *proto; /* Onnx__ModelProto, kept for saving */
};

/* Allocation helpers used by the importer and the builtin models. */
int pt_graph_add_value(pt_model *m, const char *name, pt_error *err);
int pt_graph_find_value(const pt_model *m, const char *name);

/* Frees everything a model owns (also used on half-built models). */
void pt_graph_free(pt_model *m);

#endif
