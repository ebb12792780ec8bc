/* Models: a network imported from ONNX (or built in), its weights, and writing it back as ONNX.
 *
 * A model is a topologically ordered graph of nodes over float32 NCHW tensors whose shapes are all
 * fixed at load time. Initializers that feed a trainable input (conv and linear weights and
 * biases, the operand of an Add or Mul, batch-norm scale and bias) are parameters; the others are
 * constants. Saving writes the original ONNX model back with the current parameter values, so a
 * model trained on a stream opens again in PyTorch or onnxruntime. */
#ifndef PARTIME_MODEL_H
#define PARTIME_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <partime/status.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PT_MAX_DIMS 6

typedef struct pt_model pt_model;

typedef struct pt_shape {
  int ndim;
  int64_t d[PT_MAX_DIMS];
} pt_shape;

/* Number of elements of a shape (1 for a scalar). */
int64_t pt_shape_numel(const pt_shape *s);
/* Writes "1x3x32x32" into buf; returns buf. */
const char *pt_shape_str(const pt_shape *s, char *buf, size_t n);

/* Loads `spec`: a path to an .onnx file, or "builtin:NAME" (see pt_builtin_names()). */
pt_status pt_model_load(const char *spec, pt_model **out, pt_error *err);
/* Loads an ONNX model from memory; `name` is used in messages. */
pt_status pt_model_load_memory(const void *data, size_t size, const char *name, pt_model **out,
                               pt_error *err);
void pt_model_free(pt_model *m);

/* Writes the model with its current weights as ONNX: a temporary file beside `path`, flushed and
 * renamed over it, so `path` is always either the old file or the whole new one. */
pt_status pt_model_save(const pt_model *m, const char *path, pt_error *err);
/* Serializes the model with its current weights; *data is malloc'ed and owned by the caller. */
pt_status pt_model_serialize(const pt_model *m, void **data, size_t *size, pt_error *err);

/* Copies the parameter values of `src` into `dst`; both must come from the same ONNX graph
 * (same parameter names and shapes). Used to restore checkpoints and last good weights. */
pt_status pt_model_copy_weights(pt_model *dst, const pt_model *src, pt_error *err);

const char *pt_model_name(const pt_model *m);
/* The streaming input (the first graph input that is not an initializer) and output (the first
 * graph output). */
pt_shape pt_model_input_shape(const pt_model *m);
pt_shape pt_model_output_shape(const pt_model *m);
int pt_model_n_nodes(const pt_model *m);
/* Total number of trainable parameter elements. */
int64_t pt_model_n_params(const pt_model *m);

typedef struct pt_node_info {
  const char *name;    /* node name (generated when the file has none) */
  const char *op_type; /* ONNX op type */
  pt_shape out_shape;  /* shape of its first output */
  int64_t n_params;    /* parameter elements it owns */
  double flops;        /* forward floating-point operations (a multiply-add counts 2) */
} pt_node_info;

pt_status pt_model_node_info(const pt_model *m, int i, pt_node_info *info);

/* The names accepted after "builtin:", NULL-terminated. */
const char *const *pt_builtin_names(void);

#ifdef __cplusplus
}
#endif
#endif
