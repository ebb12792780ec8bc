/* What the ONNX importer, the op resolver, the exporter and the built-in models share (internal).
 *
 * The importer owns the unpacked Onnx__ModelProto for the model's whole life (m->proto): the
 * exporter writes it back with the current parameter values, so nothing here may keep pointers
 * into a proto that is freed before the model. */
#ifndef PT_ONNX_INTERNAL_H
#define PT_ONNX_INTERNAL_H

#include <stddef.h>
#include "graph.h"
#include "onnx.pb-c.h"

/* Fills node `ni` of `m` (its inputs already mapped to values, its output values created with
 * unknown shapes) from `np`: the op, its parameter struct, output shapes, flops, aux and scratch
 * sizes. Messages name the model, the node and its op. */
pt_status pt_resolve_node(pt_model *m, int ni, const Onnx__NodeProto *np, pt_error *err);

/* True when `op_type` (default ONNX domain) is one pt_resolve_node knows. */
int pt_resolve_known_op(const char *op_type);

/* Per input slot of a node: does an initializer there become a trainable parameter? */
int pt_resolve_trainable_slot(const char *op_type, int slot);

/* Serializes the built-in model `name` (the part after "builtin:") as an ONNX file in memory;
 * *data is malloc'ed. PT_ERR_INVALID for an unknown name. */
pt_status pt_builtin_build(const char *name, void **data, size_t *size, pt_error *err);

/* The ONNX name of a TensorProto data type ("FLOAT", "INT64", ...). */
const char *pt_onnx_dtype_name(int32_t dtype);

#endif
