/* Resolving ONNX nodes into pt_node: attribute parsing, shape inference and the parameter structs
 * of ops.h, once, at load time.
 *
 * Rules kept here:
 * - Every shape is static. Inputs that decide a shape (Reshape's shape, Squeeze/Unsqueeze axes,
 *   Resize scales or sizes) must be constants; a run-time value there is refused, not guessed.
 * - 1-D convolutions and pools run as 2-D ones with H = 1; 3-D ones are refused.
 * - Only a node's first output is computed (MaxPool indices, Dropout masks, batch-norm training
 *   statistics are refused by the importer before we get here).
 * - Copies (Flatten, Reshape, Identity, Dropout, Squeeze, Unsqueeze) and Resize keep only their
 *   data input in pt_node.in: the others are load-time constants the kernels never read.
 * - Anything we cannot compute exactly is PT_ERR_UNSUPPORTED, never an approximate answer. Every
 *   message starts with "FILE: node 'NAME' (OP): ". */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "onnx_internal.h"

typedef struct rctx {
  pt_model *m;
  pt_node *nd;
  const Onnx__NodeProto *np;
  pt_error *err;
} rctx;

__attribute__((format(printf, 3, 4))) static pt_status fail(rctx *c, pt_status code,
                                                            const char *fmt, ...) {
  char msg[PT_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return pt_error_set(c->err, code, "%s: node '%s' (%s): %s", c->m->name, c->nd->name,
                      c->nd->op_type, msg);
}

/* ---- attributes ---- */

static const Onnx__AttributeProto *attr_find(const rctx *c, const char *name) {
  for (size_t i = 0; i < c->np->n_attribute; i++) {
    const Onnx__AttributeProto *a = c->np->attribute[i];
    if (a && a->name && strcmp(a->name, name) == 0) return a;
  }
  return NULL;
}

/* Each getter returns PT_OK and the default when the attribute is absent; a present attribute of
 * the wrong type is an error rather than silently ignored. */
static pt_status attr_int(rctx *c, const char *name, int64_t def, int64_t *out) {
  const Onnx__AttributeProto *a = attr_find(c, name);
  *out = def;
  if (!a) return PT_OK;
  if ((a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT) || !a->has_i)
    return fail(c, PT_ERR_PARSE, "attribute '%s' is not an int", name);
  *out = a->i;
  return PT_OK;
}

static pt_status attr_float(rctx *c, const char *name, float def, float *out) {
  const Onnx__AttributeProto *a = attr_find(c, name);
  *out = def;
  if (!a) return PT_OK;
  if ((a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT) || !a->has_f)
    return fail(c, PT_ERR_PARSE, "attribute '%s' is not a float", name);
  *out = a->f;
  return PT_OK;
}

/* Copies a string attribute into buf (attributes are bytes, not NUL-terminated). */
static pt_status attr_str(rctx *c, const char *name, const char *def, char *buf, size_t n) {
  const Onnx__AttributeProto *a = attr_find(c, name);
  snprintf(buf, n, "%s", def);
  if (!a) return PT_OK;
  if ((a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING) || !a->has_s)
    return fail(c, PT_ERR_PARSE, "attribute '%s' is not a string", name);
  size_t len = a->s.len < n - 1 ? a->s.len : n - 1;
  if (len) memcpy(buf, a->s.data, len);
  buf[len] = '\0';
  return PT_OK;
}

/* *count = -1 when absent. */
static pt_status attr_ints(rctx *c, const char *name, int64_t *out, int max, int *count) {
  const Onnx__AttributeProto *a = attr_find(c, name);
  *count = -1;
  if (!a) return PT_OK;
  if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS)
    return fail(c, PT_ERR_PARSE, "attribute '%s' is not a list of ints", name);
  if (a->n_ints > (size_t)max)
    return fail(c, PT_ERR_UNSUPPORTED, "attribute '%s' has %zu values (at most %d supported)", name,
                a->n_ints, max);
  for (size_t i = 0; i < a->n_ints; i++) out[i] = a->ints[i];
  *count = (int)a->n_ints;
  return PT_OK;
}

static pt_status attr_floats(rctx *c, const char *name, float *out, int max, int *count) {
  const Onnx__AttributeProto *a = attr_find(c, name);
  *count = -1;
  if (!a) return PT_OK;
  if (a->has_type && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS)
    return fail(c, PT_ERR_PARSE, "attribute '%s' is not a list of floats", name);
  if (a->n_floats > (size_t)max)
    return fail(c, PT_ERR_UNSUPPORTED, "attribute '%s' has %zu values (at most %d supported)", name,
                a->n_floats, max);
  for (size_t i = 0; i < a->n_floats; i++) out[i] = a->floats[i];
  *count = (int)a->n_floats;
  return PT_OK;
}

#define TRY(x)                                                                                     \
  do {                                                                                             \
    pt_status st_ = (x);                                                                           \
    if (st_ != PT_OK) return st_;                                                                  \
  } while (0)

/* ---- inputs and outputs ---- */

static const char *shape_s(const pt_shape *s, char *buf) {
  return pt_shape_str(s, buf, 96);
}

/* The value at input `slot`, or -1 when the slot is absent or empty. */
static int in_val(const rctx *c, int slot) {
  return slot < c->nd->n_in ? c->nd->in[slot] : -1;
}

/* A float tensor input that a kernel reads. */
static pt_status float_in(rctx *c, int slot, bool required, int *v) {
  *v = in_val(c, slot);
  if (*v < 0) {
    if (required) return fail(c, PT_ERR_PARSE, "input %d is missing", slot);
    return PT_OK;
  }
  const pt_value *val = &c->m->vals[*v];
  if (val->is_int)
    return fail(c, PT_ERR_UNSUPPORTED,
                "input '%s' is an integer tensor; only float data is supported here", val->name);
  if (val->numel == 0) return fail(c, PT_ERR_UNSUPPORTED, "input '%s' is empty", val->name);
  return PT_OK;
}

static const pt_shape *shp(const rctx *c, int v) {
  return &c->m->vals[v].shape;
}

/* An int64 constant input (shape, axes, sizes); n = -1 when the slot is absent or empty. */
static pt_status const_ints(rctx *c, int slot, const char *what, const int64_t **data, int64_t *n) {
  int v = in_val(c, slot);
  *data = NULL;
  *n = -1;
  if (v < 0) return PT_OK;
  const pt_value *val = &c->m->vals[v];
  if (val->kind != PT_VAL_CONST && val->kind != PT_VAL_PARAM)
    return fail(c, PT_ERR_UNSUPPORTED,
                "%s '%s' is computed at run time; only constant %s are supported", what, val->name,
                what);
  if (!val->is_int)
    return fail(c, PT_ERR_PARSE, "%s '%s' must be an INT64 tensor", what, val->name);
  *data = val->ival;
  *n = val->numel;
  return PT_OK;
}

static pt_status const_floats(rctx *c, int slot, const char *what, const float **data, int64_t *n) {
  int v = in_val(c, slot);
  *data = NULL;
  *n = -1;
  if (v < 0) return PT_OK;
  const pt_value *val = &c->m->vals[v];
  if (val->kind != PT_VAL_CONST && val->kind != PT_VAL_PARAM)
    return fail(c, PT_ERR_UNSUPPORTED,
                "%s '%s' is computed at run time; only constant %s are supported", what, val->name,
                what);
  if (val->is_int) return fail(c, PT_ERR_PARSE, "%s '%s' must be a FLOAT tensor", what, val->name);
  *data = val->data;
  *n = val->numel;
  return PT_OK;
}

static pt_status set_out(rctx *c, const pt_shape *s) {
  if (s->ndim > PT_MAX_DIMS)
    return fail(c, PT_ERR_UNSUPPORTED, "output has %d dimensions (at most %d)", s->ndim,
                PT_MAX_DIMS);
  pt_value *o = &c->m->vals[c->nd->out[0]];
  o->shape = *s;
  o->numel = pt_shape_numel(s);
  o->is_int = false;
  if (o->numel <= 0) {
    char b[96];
    return fail(c, PT_ERR_UNSUPPORTED, "output '%s' would be empty (%s)", o->name, shape_s(s, b));
  }
  return PT_OK;
}

static int64_t prod(const int64_t *d, int from, int to) {
  int64_t n = 1;
  for (int i = from; i < to; i++) n *= d[i];
  return n;
}

static bool fits_int(int64_t x) {
  return x >= 0 && x <= INT_MAX;
}

/* ---- convolution ---- */

typedef enum { PAD_NOTSET, PAD_SAME_UPPER, PAD_SAME_LOWER, PAD_VALID } pad_mode;

static pt_status get_auto_pad(rctx *c, pad_mode *mode) {
  char s[32];
  TRY(attr_str(c, "auto_pad", "NOTSET", s, sizeof s));
  if (strcmp(s, "NOTSET") == 0 || s[0] == '\0')
    *mode = PAD_NOTSET;
  else if (strcmp(s, "SAME_UPPER") == 0)
    *mode = PAD_SAME_UPPER;
  else if (strcmp(s, "SAME_LOWER") == 0)
    *mode = PAD_SAME_LOWER;
  else if (strcmp(s, "VALID") == 0)
    *mode = PAD_VALID;
  else
    return fail(c, PT_ERR_UNSUPPORTED, "auto_pad '%s' is not supported", s);
  return PT_OK;
}

/* Spatial attributes shared by Conv, ConvTranspose and the pools, for `ns` spatial axes. */
typedef struct spatial {
  int ns;
  int64_t k[2], s[2], d[2], pb[2], pe[2];
  pad_mode pad;
} spatial;

static pt_status get_spatial(rctx *c, spatial *sp, int ns, const int64_t *kernel, bool has_dil) {
  int n;
  int64_t buf[4];
  sp->ns = ns;
  for (int i = 0; i < ns; i++) {
    sp->s[i] = sp->d[i] = 1;
    sp->pb[i] = sp->pe[i] = 0;
  }
  TRY(attr_ints(c, "kernel_shape", buf, 2, &n));
  if (n >= 0) {
    if (n != ns) return fail(c, PT_ERR_SHAPE, "kernel_shape has %d values for %d axes", n, ns);
    for (int i = 0; i < ns; i++) {
      if (kernel && buf[i] != kernel[i])
        return fail(c, PT_ERR_SHAPE, "kernel_shape %lld disagrees with the weight's %lld",
                    (long long)buf[i], (long long)kernel[i]);
      sp->k[i] = buf[i];
    }
  } else if (kernel) {
    for (int i = 0; i < ns; i++) sp->k[i] = kernel[i];
  } else {
    return fail(c, PT_ERR_PARSE, "attribute 'kernel_shape' is missing");
  }
  TRY(attr_ints(c, "strides", buf, 2, &n));
  if (n >= 0) {
    if (n != ns) return fail(c, PT_ERR_SHAPE, "strides has %d values for %d axes", n, ns);
    for (int i = 0; i < ns; i++) sp->s[i] = buf[i];
  }
  TRY(attr_ints(c, "dilations", buf, 2, &n));
  if (n >= 0) {
    if (n != ns) return fail(c, PT_ERR_SHAPE, "dilations has %d values for %d axes", n, ns);
    for (int i = 0; i < ns; i++) {
      if (!has_dil && buf[i] != 1)
        return fail(c, PT_ERR_UNSUPPORTED, "dilations other than 1 are not supported");
      sp->d[i] = buf[i];
    }
  }
  TRY(attr_ints(c, "pads", buf, 4, &n));
  if (n >= 0) {
    if (n != 2 * ns) return fail(c, PT_ERR_SHAPE, "pads has %d values for %d axes", n, ns);
    for (int i = 0; i < ns; i++) {
      sp->pb[i] = buf[i];
      sp->pe[i] = buf[ns + i];
    }
  }
  TRY(get_auto_pad(c, &sp->pad));
  if (sp->pad == PAD_VALID)
    for (int i = 0; i < ns; i++) sp->pb[i] = sp->pe[i] = 0;
  for (int i = 0; i < ns; i++) {
    if (sp->k[i] < 1 || sp->s[i] < 1 || sp->d[i] < 1 || sp->pb[i] < 0 || sp->pe[i] < 0 ||
        sp->k[i] > INT_MAX / 2 || sp->s[i] > INT_MAX / 2 || sp->d[i] > INT_MAX / 2 ||
        sp->pb[i] > INT_MAX / 2 || sp->pe[i] > INT_MAX / 2)
      return fail(c, PT_ERR_PARSE, "invalid kernel, stride, dilation or pad values");
  }
  return PT_OK;
}

/* Output size of a convolution or pool along one axis; fills the pads for auto_pad. */
static pt_status window_axis(rctx *c, spatial *sp, int i, int64_t in, bool ceil_mode,
                             int64_t *out) {
  int64_t ek = (sp->k[i] - 1) * sp->d[i] + 1;
  if (sp->pad == PAD_SAME_UPPER || sp->pad == PAD_SAME_LOWER) {
    *out = (in + sp->s[i] - 1) / sp->s[i];
    int64_t total = (*out - 1) * sp->s[i] + ek - in;
    if (total < 0) total = 0;
    /* SAME_UPPER puts the odd pad at the end, SAME_LOWER at the beginning */
    sp->pb[i] = sp->pad == PAD_SAME_UPPER ? total / 2 : total - total / 2;
    sp->pe[i] = total - sp->pb[i];
    return PT_OK;
  }
  int64_t span = in + sp->pb[i] + sp->pe[i] - ek;
  if (span < 0)
    return fail(c, PT_ERR_SHAPE, "the window (%lld) is larger than the padded input (%lld)",
                (long long)ek, (long long)(in + sp->pb[i] + sp->pe[i]));
  if (ceil_mode) {
    *out = (span + sp->s[i] - 1) / sp->s[i] + 1;
    /* the last window must start inside the input or its leading pad (PyTorch, onnxruntime) */
    if ((*out - 1) * sp->s[i] >= in + sp->pb[i]) (*out)--;
  } else {
    *out = span / sp->s[i] + 1;
  }
  return PT_OK;
}

static pt_status fill_conv_2d(rctx *c, pt_conv_params *p, const spatial *sp, int64_t N, int64_t C,
                              int64_t H, int64_t W, int64_t OC, int64_t OH, int64_t OW, int64_t G) {
  if (!fits_int(N) || !fits_int(C) || !fits_int(H) || !fits_int(W) || !fits_int(OC) ||
      !fits_int(OH) || !fits_int(OW) || !fits_int(G))
    return fail(c, PT_ERR_UNSUPPORTED, "dimensions too large");
  p->N = (int)N;
  p->C = (int)C;
  p->H = (int)H;
  p->W = (int)W;
  p->OC = (int)OC;
  p->OH = (int)OH;
  p->OW = (int)OW;
  p->G = (int)G;
  if (sp->ns == 1) {
    p->KH = p->SH = p->DH = 1;
    p->PT = p->PB = 0;
    p->KW = (int)sp->k[0];
    p->SW = (int)sp->s[0];
    p->DW = (int)sp->d[0];
    p->PL = (int)sp->pb[0];
    p->PR = (int)sp->pe[0];
  } else {
    p->KH = (int)sp->k[0];
    p->KW = (int)sp->k[1];
    p->SH = (int)sp->s[0];
    p->SW = (int)sp->s[1];
    p->DH = (int)sp->d[0];
    p->DW = (int)sp->d[1];
    p->PT = (int)sp->pb[0];
    p->PL = (int)sp->pb[1];
    p->PB = (int)sp->pe[0];
    p->PR = (int)sp->pe[1];
  }
  return PT_OK;
}

static pt_status r_conv(rctx *c, bool transpose) {
  int x, w, b;
  char s1[96], s2[96];
  TRY(float_in(c, 0, true, &x));
  TRY(float_in(c, 1, true, &w));
  TRY(float_in(c, 2, false, &b));
  const pt_shape *xs = shp(c, x), *ws = shp(c, w);
  if (xs->ndim == 5)
    return fail(c, PT_ERR_UNSUPPORTED, "3-D convolutions are not supported (input %s)",
                shape_s(xs, s1));
  if (xs->ndim != 3 && xs->ndim != 4)
    return fail(c, PT_ERR_UNSUPPORTED, "input %s: only 1-D and 2-D convolutions are supported",
                shape_s(xs, s1));
  if (ws->ndim != xs->ndim)
    return fail(c, PT_ERR_SHAPE, "weight %s does not match input %s", shape_s(ws, s1),
                shape_s(xs, s2));
  int ns = xs->ndim - 2;
  int64_t G;
  TRY(attr_int(c, "group", 1, &G));
  if (G < 1 || G > INT_MAX) return fail(c, PT_ERR_PARSE, "group %lld is invalid", (long long)G);
  int64_t N = xs->d[0], C = xs->d[1], OC;
  if (!transpose) {
    if (ws->d[1] * G != C)
      return fail(c, PT_ERR_SHAPE,
                  "input has %lld channels but weight %s with group %lld expects %lld",
                  (long long)C, shape_s(ws, s1), (long long)G, (long long)(ws->d[1] * G));
    OC = ws->d[0];
    if (OC % G != 0)
      return fail(c, PT_ERR_SHAPE, "%lld output channels do not divide into %lld groups",
                  (long long)OC, (long long)G);
  } else {
    if (ws->d[0] != C)
      return fail(c, PT_ERR_SHAPE, "input has %lld channels but weight %s expects %lld",
                  (long long)C, shape_s(ws, s1), (long long)ws->d[0]);
    if (C % G != 0)
      return fail(c, PT_ERR_SHAPE, "%lld input channels do not divide into %lld groups",
                  (long long)C, (long long)G);
    OC = ws->d[1] * G;
  }
  if (b >= 0 && (shp(c, b)->ndim != 1 || shp(c, b)->d[0] != OC))
    return fail(c, PT_ERR_SHAPE, "bias %s does not match %lld output channels",
                shape_s(shp(c, b), s1), (long long)OC);
  spatial sp;
  TRY(get_spatial(c, &sp, ns, ws->d + 2, true));
  int64_t out[2];
  if (!transpose) {
    for (int i = 0; i < ns; i++) TRY(window_axis(c, &sp, i, xs->d[2 + i], false, &out[i]));
  } else {
    int64_t op[2] = {0, 0}, os[4];
    int n_op, n_os;
    TRY(attr_ints(c, "output_padding", op, 2, &n_op));
    if (n_op >= 0 && n_op != ns)
      return fail(c, PT_ERR_SHAPE, "output_padding has %d values for %d axes", n_op, ns);
    TRY(attr_ints(c, "output_shape", os, 4, &n_os));
    if (n_os >= 0 && n_os != ns) {
      /* output_shape may also be written with the batch and channel dims */
      if (n_os == ns + 2)
        memmove(os, os + 2, sizeof(int64_t) * (size_t)ns);
      else
        return fail(c, PT_ERR_SHAPE, "output_shape has %d values for %d axes", n_os, ns);
    }
    for (int i = 0; i < ns; i++) {
      int64_t in = xs->d[2 + i], ek = (sp.k[i] - 1) * sp.d[i] + 1;
      if (op[i] < 0) return fail(c, PT_ERR_PARSE, "negative output_padding");
      int64_t full = sp.s[i] * (in - 1) + op[i] + ek; /* output size with no padding */
      if (n_os >= 0 || sp.pad == PAD_SAME_UPPER || sp.pad == PAD_SAME_LOWER) {
        out[i] = n_os >= 0 ? os[i] : in * sp.s[i];
        int64_t total = full - out[i];
        /* a requested size beyond the full output extends it at the end, like output_padding */
        if (total < 0) total = 0;
        if (sp.pad == PAD_SAME_UPPER) {
          sp.pb[i] = total / 2;
          sp.pe[i] = total - sp.pb[i];
        } else {
          sp.pe[i] = total / 2;
          sp.pb[i] = total - sp.pe[i];
        }
      } else {
        out[i] = full - sp.pb[i] - sp.pe[i];
      }
      if (out[i] < 1)
        return fail(c, PT_ERR_SHAPE, "output size %lld is not positive", (long long)out[i]);
    }
  }
  for (int i = 0; i < ns; i++)
    if (out[i] < 1)
      return fail(c, PT_ERR_SHAPE, "output size %lld is not positive", (long long)out[i]);
  pt_conv_params *p = &c->nd->p.conv;
  int64_t H = ns == 2 ? xs->d[2] : 1, W = xs->d[1 + ns];
  int64_t OH = ns == 2 ? out[0] : 1, OW = out[ns - 1];
  TRY(fill_conv_2d(c, p, &sp, N, C, H, W, OC, OH, OW, G));
  p->has_bias = b >= 0;
  pt_shape os = {.ndim = xs->ndim};
  os.d[0] = N;
  os.d[1] = OC;
  for (int i = 0; i < ns; i++) os.d[2 + i] = out[i];
  TRY(set_out(c, &os));
  double n_out = (double)N * (double)OC * (double)OH * (double)OW;
  if (!transpose) {
    c->nd->op = PT_OP_CONV;
    c->nd->flops = 2.0 * n_out * (double)(C / G) * p->KH * p->KW;
    c->nd->scratch_floats = pt_conv2d_scratch(p);
  } else {
    c->nd->op = PT_OP_CONV_TRANSPOSE;
    c->nd->flops =
        2.0 * (double)N * (double)C * (double)H * (double)W * (double)(OC / G) * p->KH * p->KW;
    c->nd->scratch_floats = pt_conv_transpose2d_scratch(p);
  }
  if (p->has_bias) c->nd->flops += n_out;
  return PT_OK;
}

/* ---- pooling ---- */

static pt_status r_pool(rctx *c, bool is_max) {
  int x;
  char s1[96];
  TRY(float_in(c, 0, true, &x));
  const pt_shape *xs = shp(c, x);
  if (xs->ndim == 5)
    return fail(c, PT_ERR_UNSUPPORTED, "3-D pooling is not supported (input %s)", shape_s(xs, s1));
  if (xs->ndim != 3 && xs->ndim != 4)
    return fail(c, PT_ERR_UNSUPPORTED, "input %s: only 1-D and 2-D pooling is supported",
                shape_s(xs, s1));
  int ns = xs->ndim - 2;
  spatial sp;
  TRY(get_spatial(c, &sp, ns, NULL, true));
  int64_t ceil_mode, cip = 0, order;
  TRY(attr_int(c, "ceil_mode", 0, &ceil_mode));
  if (is_max) {
    TRY(attr_int(c, "storage_order", 0, &order));
    if (order != 0)
      return fail(c, PT_ERR_UNSUPPORTED, "storage_order %lld is not supported", (long long)order);
  } else {
    TRY(attr_int(c, "count_include_pad", 0, &cip));
  }
  int64_t out[2];
  for (int i = 0; i < ns; i++) {
    TRY(window_axis(c, &sp, i, xs->d[2 + i], ceil_mode != 0, &out[i]));
    int64_t ek = (sp.k[i] - 1) * sp.d[i] + 1;
    if (sp.pb[i] >= ek || sp.pe[i] >= ek)
      return fail(c, PT_ERR_UNSUPPORTED, "padding must be smaller than the window");
    if (out[i] < 1) return fail(c, PT_ERR_SHAPE, "output size is not positive");
  }
  pt_pool_params *p = &c->nd->p.pool;
  pt_conv_params cp;
  int64_t H = ns == 2 ? xs->d[2] : 1, W = xs->d[1 + ns];
  int64_t OH = ns == 2 ? out[0] : 1, OW = out[ns - 1];
  TRY(fill_conv_2d(c, &cp, &sp, xs->d[0], xs->d[1], H, W, xs->d[1], OH, OW, 1));
  p->N = cp.N;
  p->C = cp.C;
  p->H = cp.H;
  p->W = cp.W;
  p->OH = cp.OH;
  p->OW = cp.OW;
  p->KH = cp.KH;
  p->KW = cp.KW;
  p->SH = cp.SH;
  p->SW = cp.SW;
  p->DH = cp.DH;
  p->DW = cp.DW;
  p->PT = cp.PT;
  p->PL = cp.PL;
  p->PB = cp.PB;
  p->PR = cp.PR;
  p->count_include_pad = cip != 0;
  pt_shape os = *xs;
  for (int i = 0; i < ns; i++) os.d[2 + i] = out[i];
  TRY(set_out(c, &os));
  double n_out = (double)pt_shape_numel(&os);
  c->nd->op = is_max ? PT_OP_MAXPOOL : PT_OP_AVGPOOL;
  c->nd->flops = n_out * p->KH * p->KW;
  if (is_max) c->nd->aux_bytes = (int64_t)sizeof(int32_t) * pt_shape_numel(&os);
  return PT_OK;
}

static pt_status r_global_avgpool(rctx *c) {
  int x;
  char s1[96];
  TRY(float_in(c, 0, true, &x));
  const pt_shape *xs = shp(c, x);
  if (xs->ndim < 3)
    return fail(c, PT_ERR_SHAPE, "input %s has no spatial dimensions", shape_s(xs, s1));
  int64_t HW = prod(xs->d, 2, xs->ndim);
  if (!fits_int(xs->d[0]) || !fits_int(xs->d[1]) || !fits_int(HW))
    return fail(c, PT_ERR_UNSUPPORTED, "dimensions too large");
  /* every spatial position is one column of a single window */
  pt_pool_params *p = &c->nd->p.pool;
  memset(p, 0, sizeof *p);
  p->N = (int)xs->d[0];
  p->C = (int)xs->d[1];
  p->H = (int)HW;
  p->W = 1;
  p->OH = p->OW = 1;
  p->KH = (int)HW;
  p->KW = 1;
  p->SH = p->SW = p->DH = p->DW = 1;
  pt_shape os = *xs;
  for (int i = 2; i < os.ndim; i++) os.d[i] = 1;
  TRY(set_out(c, &os));
  c->nd->op = PT_OP_AVGPOOL;
  c->nd->flops = (double)pt_shape_numel(xs);
  return PT_OK;
}

/* ---- matrix products ---- */

static pt_status r_gemm(rctx *c) {
  int a, b, cv;
  char s1[96], s2[96];
  TRY(float_in(c, 0, true, &a));
  TRY(float_in(c, 1, true, &b));
  TRY(float_in(c, 2, false, &cv));
  int64_t ta, tb;
  float alpha, beta;
  TRY(attr_int(c, "transA", 0, &ta));
  TRY(attr_int(c, "transB", 0, &tb));
  TRY(attr_float(c, "alpha", 1.0f, &alpha));
  TRY(attr_float(c, "beta", 1.0f, &beta));
  const pt_shape *as = shp(c, a), *bs = shp(c, b);
  if (as->ndim != 2 || bs->ndim != 2)
    return fail(c, PT_ERR_SHAPE, "A %s and B %s must be matrices", shape_s(as, s1),
                shape_s(bs, s2));
  int64_t M = ta ? as->d[1] : as->d[0], K = ta ? as->d[0] : as->d[1];
  int64_t K2 = tb ? bs->d[1] : bs->d[0], N = tb ? bs->d[0] : bs->d[1];
  if (K != K2)
    return fail(c, PT_ERR_SHAPE, "A %s and B %s do not agree (K %lld vs %lld)", shape_s(as, s1),
                shape_s(bs, s2), (long long)K, (long long)K2);
  if (!fits_int(M) || !fits_int(N) || !fits_int(K))
    return fail(c, PT_ERR_UNSUPPORTED, "dimensions too large");
  pt_gemm_params *p = &c->nd->p.gemm;
  p->M = (int)M;
  p->N = (int)N;
  p->K = (int)K;
  p->trans_a = ta != 0;
  p->trans_b = tb != 0;
  p->alpha = alpha;
  p->beta = beta;
  p->c_mode = PT_GEMM_C_NONE;
  if (cv >= 0) {
    const pt_shape *cs = shp(c, cv);
    int64_t cn = pt_shape_numel(cs);
    if (cn == 1)
      p->c_mode = PT_GEMM_C_SCALAR;
    else if (cs->ndim == 1 && cs->d[0] == N)
      p->c_mode = PT_GEMM_C_ROW;
    else if (cs->ndim == 2 && cs->d[0] == 1 && cs->d[1] == N)
      p->c_mode = PT_GEMM_C_ROW;
    else if (cs->ndim == 2 && cs->d[0] == M && cs->d[1] == 1)
      p->c_mode = PT_GEMM_C_COL;
    else if (cs->ndim == 2 && cs->d[0] == M && cs->d[1] == N)
      p->c_mode = PT_GEMM_C_FULL;
    else
      return fail(c, PT_ERR_SHAPE, "C %s does not broadcast to %lldx%lld", shape_s(cs, s1),
                  (long long)M, (long long)N);
  }
  pt_shape os = {.ndim = 2, .d = {M, N}};
  TRY(set_out(c, &os));
  c->nd->op = PT_OP_GEMM;
  c->nd->flops = 2.0 * (double)M * (double)N * (double)K + (cv >= 0 ? (double)M * N : 0.0);
  return PT_OK;
}

static pt_status r_matmul(rctx *c) {
  int a, b;
  char s1[96], s2[96];
  TRY(float_in(c, 0, true, &a));
  TRY(float_in(c, 1, true, &b));
  const pt_shape *as = shp(c, a), *bs = shp(c, b);
  if (as->ndim < 1 || bs->ndim < 1) return fail(c, PT_ERR_SHAPE, "MatMul of a scalar");
  /* numpy matmul: a 1-D A is a row (1,K), a 1-D B a column (K,1); the added dim is dropped */
  int64_t M = as->ndim >= 2 ? as->d[as->ndim - 2] : 1, K = as->d[as->ndim - 1];
  int64_t K2 = bs->ndim >= 2 ? bs->d[bs->ndim - 2] : bs->d[0],
          N = bs->ndim >= 2 ? bs->d[bs->ndim - 1] : 1;
  if (K != K2)
    return fail(c, PT_ERR_SHAPE, "A %s and B %s do not agree", shape_s(as, s1), shape_s(bs, s2));
  int na = as->ndim >= 2 ? as->ndim - 2 : 0, nb = bs->ndim >= 2 ? bs->ndim - 2 : 0;
  int nbat = na > nb ? na : nb;
  int64_t ab[PT_MAX_DIMS], bb[PT_MAX_DIMS], ob[PT_MAX_DIMS];
  for (int i = 0; i < nbat; i++) {
    ab[i] = i - (nbat - na) >= 0 ? as->d[i - (nbat - na)] : 1;
    bb[i] = i - (nbat - nb) >= 0 ? bs->d[i - (nbat - nb)] : 1;
  }
  int64_t a_batch = prod(ab, 0, nbat), b_batch = prod(bb, 0, nbat);
  bool same = true;
  for (int i = 0; i < nbat; i++) {
    if (ab[i] != bb[i]) same = false;
    if (ab[i] != bb[i] && ab[i] != 1 && bb[i] != 1)
      return fail(c, PT_ERR_SHAPE, "batch dims of A %s and B %s do not broadcast", shape_s(as, s1),
                  shape_s(bs, s2));
    ob[i] = ab[i] > bb[i] ? ab[i] : bb[i];
  }
  /* one matrix against a batch, or batch against batch; mixed broadcasting is not */
  if (!same && a_batch != 1 && b_batch != 1)
    return fail(c, PT_ERR_UNSUPPORTED, "broadcasting A %s against B %s is not supported",
                shape_s(as, s1), shape_s(bs, s2));
  int64_t batch = prod(ob, 0, nbat);
  if (!fits_int(batch) || !fits_int(M) || !fits_int(N) || !fits_int(K))
    return fail(c, PT_ERR_UNSUPPORTED, "dimensions too large");
  pt_matmul_params *p = &c->nd->p.matmul;
  p->batch = (int)batch;
  p->M = (int)M;
  p->K = (int)K;
  p->N = (int)N;
  p->a_stride = a_batch == 1 ? 0 : M * K;
  p->b_stride = b_batch == 1 ? 0 : K * N;
  pt_shape os = {.ndim = 0};
  for (int i = 0; i < nbat; i++) os.d[os.ndim++] = ob[i];
  if (as->ndim >= 2) os.d[os.ndim++] = M;
  if (bs->ndim >= 2) os.d[os.ndim++] = N;
  TRY(set_out(c, &os));
  c->nd->op = PT_OP_MATMUL;
  c->nd->flops = 2.0 * (double)batch * (double)M * (double)N * (double)K;
  return PT_OK;
}

/* ---- elementwise ---- */

static pt_status r_binary(rctx *c, pt_binary_kind kind) {
  int a, b;
  char s1[96], s2[96];
  TRY(float_in(c, 0, true, &a));
  TRY(float_in(c, 1, true, &b));
  pt_shape as = *shp(c, a), bs = *shp(c, b);
  if (c->m->opset < 7) {
    /* before opset 7, B is aligned at `axis` (default: trailing) when broadcast=1 */
    int64_t bc, axis;
    TRY(attr_int(c, "broadcast", 0, &bc));
    TRY(attr_int(c, "axis", as.ndim - bs.ndim, &axis));
    if (bc) {
      if (axis < 0) axis += as.ndim;
      if (axis < 0 || axis + bs.ndim > as.ndim)
        return fail(c, PT_ERR_SHAPE, "axis %lld does not fit B %s into A %s", (long long)axis,
                    shape_s(&bs, s1), shape_s(&as, s2));
      pt_shape nb = {.ndim = as.ndim};
      for (int i = 0; i < as.ndim; i++)
        nb.d[i] = i >= axis && i < axis + bs.ndim ? bs.d[i - axis] : 1;
      bs = nb;
    } else if (as.ndim != bs.ndim || memcmp(as.d, bs.d, sizeof(int64_t) * (size_t)as.ndim)) {
      return fail(c, PT_ERR_SHAPE, "A %s and B %s differ and broadcast is not set",
                  shape_s(&as, s1), shape_s(&bs, s2));
    }
  }
  int nd = as.ndim > bs.ndim ? as.ndim : bs.ndim;
  pt_binary_params *p = &c->nd->p.binary;
  memset(p, 0, sizeof *p);
  p->kind = kind;
  p->ndim = nd;
  int64_t sa = 1, sb = 1;
  for (int i = nd - 1; i >= 0; i--) {
    int ia = i - (nd - as.ndim), ib = i - (nd - bs.ndim);
    int64_t da = ia >= 0 ? as.d[ia] : 1, db = ib >= 0 ? bs.d[ib] : 1;
    if (da != db && da != 1 && db != 1)
      return fail(c, PT_ERR_SHAPE, "A %s and B %s do not broadcast", shape_s(&as, s1),
                  shape_s(&bs, s2));
    p->shape[i] = da > db ? da : db;
    p->sa[i] = da == 1 ? 0 : sa;
    p->sb[i] = db == 1 ? 0 : sb;
    sa *= da;
    sb *= db;
  }
  pt_shape os = {.ndim = nd};
  for (int i = 0; i < nd; i++) os.d[i] = p->shape[i];
  TRY(set_out(c, &os));
  p->n = pt_shape_numel(&os);
  c->nd->op = PT_OP_BINARY;
  c->nd->flops = (double)p->n;
  return PT_OK;
}

static pt_status r_unary(rctx *c, pt_unary_kind kind) {
  int x;
  TRY(float_in(c, 0, true, &x));
  pt_unary_params *p = &c->nd->p.unary;
  p->kind = kind;
  p->alpha = 0.0f;
  if (kind == PT_UN_LEAKY_RELU) TRY(attr_float(c, "alpha", 0.01f, &p->alpha));
  TRY(set_out(c, shp(c, x)));
  p->n = c->m->vals[x].numel;
  c->nd->op = PT_OP_UNARY;
  c->nd->flops = (double)p->n;
  return PT_OK;
}

/* ---- normalization ---- */

static pt_status r_batchnorm(rctx *c) {
  int x, sc, bi, mu, var;
  char s1[96], s2[96];
  TRY(float_in(c, 0, true, &x));
  TRY(float_in(c, 1, true, &sc));
  TRY(float_in(c, 2, true, &bi));
  TRY(float_in(c, 3, true, &mu));
  TRY(float_in(c, 4, true, &var));
  int64_t training, spatial_attr;
  TRY(attr_int(c, "training_mode", 0, &training));
  if (training)
    return fail(c, PT_ERR_UNSUPPORTED, "training_mode=1 is not supported (inference form only)");
  TRY(attr_int(c, "spatial", 1, &spatial_attr));
  if (c->m->opset < 9 && spatial_attr != 1)
    return fail(c, PT_ERR_UNSUPPORTED, "spatial=0 is not supported");
  const pt_shape *xs = shp(c, x);
  if (xs->ndim < 2)
    return fail(c, PT_ERR_SHAPE, "input %s has no channel dimension", shape_s(xs, s1));
  int64_t C = xs->d[1];
  int ins[4] = {sc, bi, mu, var};
  for (int i = 0; i < 4; i++)
    if (c->m->vals[ins[i]].numel != C)
      return fail(c, PT_ERR_SHAPE, "'%s' %s does not match %lld channels of input %s",
                  c->m->vals[ins[i]].name, shape_s(shp(c, ins[i]), s1), (long long)C,
                  shape_s(xs, s2));
  pt_batchnorm_params *p = &c->nd->p.bn;
  if (!fits_int(xs->d[0]) || !fits_int(C))
    return fail(c, PT_ERR_UNSUPPORTED, "dimensions too large");
  p->N = (int)xs->d[0];
  p->C = (int)C;
  p->HW = prod(xs->d, 2, xs->ndim);
  TRY(attr_float(c, "epsilon", 1e-5f, &p->eps));
  TRY(set_out(c, xs));
  c->nd->op = PT_OP_BATCHNORM;
  c->nd->flops = 2.0 * (double)pt_shape_numel(xs);
  return PT_OK;
}

static pt_status r_softmax(rctx *c, bool log) {
  int x;
  TRY(float_in(c, 0, true, &x));
  const pt_shape *xs = shp(c, x);
  int64_t axis;
  bool opset13 = c->m->opset >= 13;
  TRY(attr_int(c, "axis", opset13 ? -1 : 1, &axis));
  if (axis < 0) axis += xs->ndim;
  if (axis < 0 || axis >= (xs->ndim ? xs->ndim : 1))
    return fail(c, PT_ERR_PARSE, "axis is out of range");
  pt_softmax_params *p = &c->nd->p.softmax;
  p->log = log;
  p->outer = prod(xs->d, 0, (int)axis);
  /* before opset 13 the input is coerced to 2-D at axis: one softmax over all trailing dims */
  p->dim = opset13 ? (xs->ndim ? xs->d[axis] : 1) : prod(xs->d, (int)axis, xs->ndim);
  p->inner = opset13 ? prod(xs->d, (int)axis + 1, xs->ndim) : 1;
  TRY(set_out(c, xs));
  c->nd->op = PT_OP_SOFTMAX;
  c->nd->flops = 4.0 * (double)pt_shape_numel(xs);
  return PT_OK;
}

/* ---- shape ops (copies) ---- */

static pt_status finish_copy(rctx *c, int x, const pt_shape *os) {
  char s1[96], s2[96];
  if (pt_shape_numel(os) != c->m->vals[x].numel)
    return fail(c, PT_ERR_SHAPE, "cannot reshape %s into %s", shape_s(shp(c, x), s1),
                shape_s(os, s2));
  TRY(set_out(c, os));
  c->nd->p.copy.n = c->m->vals[x].numel;
  c->nd->op = PT_OP_COPY;
  c->nd->flops = 0.0;
  c->nd->n_in = 1;
  return PT_OK;
}

static pt_status r_flatten(rctx *c) {
  int x;
  TRY(float_in(c, 0, true, &x));
  const pt_shape *xs = shp(c, x);
  int64_t axis;
  TRY(attr_int(c, "axis", 1, &axis));
  if (axis < 0) axis += xs->ndim;
  if (axis < 0 || axis > xs->ndim) return fail(c, PT_ERR_PARSE, "axis is out of range");
  pt_shape os = {.ndim = 2, .d = {prod(xs->d, 0, (int)axis), prod(xs->d, (int)axis, xs->ndim)}};
  return finish_copy(c, x, &os);
}

static pt_status r_reshape(rctx *c) {
  int x;
  TRY(float_in(c, 0, true, &x));
  const pt_shape *xs = shp(c, x);
  int64_t buf[PT_MAX_DIMS + 1];
  const int64_t *sh;
  int64_t n;
  if (c->m->opset < 5) {
    int cnt;
    TRY(attr_ints(c, "shape", buf, PT_MAX_DIMS + 1, &cnt));
    if (cnt < 0) return fail(c, PT_ERR_PARSE, "attribute 'shape' is missing");
    sh = buf;
    n = cnt;
  } else {
    TRY(const_ints(c, 1, "shape", &sh, &n));
    if (n < 0) return fail(c, PT_ERR_PARSE, "input 'shape' is missing");
  }
  if (n > PT_MAX_DIMS)
    return fail(c, PT_ERR_UNSUPPORTED, "target shape has %lld dimensions (at most %d)",
                (long long)n, PT_MAX_DIMS);
  int64_t allowzero;
  TRY(attr_int(c, "allowzero", 0, &allowzero));
  pt_shape os = {.ndim = (int)n};
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < n; i++) {
    int64_t d = sh[i];
    if (d == 0 && !allowzero) {
      if (i >= xs->ndim) return fail(c, PT_ERR_SHAPE, "shape copies dim %d the input lacks", i);
      d = xs->d[i];
    }
    if (d == -1) {
      if (infer >= 0) return fail(c, PT_ERR_SHAPE, "shape has more than one -1");
      infer = i;
      d = 1;
    } else if (d < 0) {
      return fail(c, PT_ERR_SHAPE, "shape has a negative dim %lld", (long long)d);
    }
    os.d[i] = d;
    if (d > 0 && known > INT64_MAX / d)
      return fail(c, PT_ERR_SHAPE, "target shape has more than 2^63 elements");
    known *= d;
  }
  if (infer >= 0) {
    if (known == 0 || c->m->vals[x].numel % known != 0)
      return fail(c, PT_ERR_SHAPE, "cannot infer the -1 dim of the shape");
    os.d[infer] = c->m->vals[x].numel / known;
  }
  return finish_copy(c, x, &os);
}

/* Axes of Squeeze/Unsqueeze from the attribute (before opset 13) or the constant input. */
static pt_status get_axes(rctx *c, int64_t *axes, int *n) {
  if (c->m->opset < 13) {
    TRY(attr_ints(c, "axes", axes, PT_MAX_DIMS, n));
    return PT_OK;
  }
  const int64_t *a;
  int64_t cnt;
  TRY(const_ints(c, 1, "axes", &a, &cnt));
  if (cnt > PT_MAX_DIMS) return fail(c, PT_ERR_UNSUPPORTED, "too many axes");
  for (int64_t i = 0; i < cnt; i++) axes[i] = a[i];
  *n = (int)cnt;
  return PT_OK;
}

static pt_status r_squeeze(rctx *c) {
  int x;
  TRY(float_in(c, 0, true, &x));
  const pt_shape *xs = shp(c, x);
  int64_t axes[PT_MAX_DIMS];
  int n;
  TRY(get_axes(c, axes, &n));
  bool drop[PT_MAX_DIMS] = {false};
  if (n < 0) {
    for (int i = 0; i < xs->ndim; i++) drop[i] = xs->d[i] == 1;
  } else {
    for (int i = 0; i < n; i++) {
      int64_t a = axes[i] < 0 ? axes[i] + xs->ndim : axes[i];
      if (a < 0 || a >= xs->ndim)
        return fail(c, PT_ERR_PARSE, "axis %lld is out of range", (long long)axes[i]);
      if (xs->d[a] != 1)
        return fail(c, PT_ERR_SHAPE, "cannot squeeze dim %lld of size %lld", (long long)a,
                    (long long)xs->d[a]);
      drop[a] = true;
    }
  }
  pt_shape os = {.ndim = 0};
  for (int i = 0; i < xs->ndim; i++)
    if (!drop[i]) os.d[os.ndim++] = xs->d[i];
  return finish_copy(c, x, &os);
}

static pt_status r_unsqueeze(rctx *c) {
  int x;
  TRY(float_in(c, 0, true, &x));
  const pt_shape *xs = shp(c, x);
  int64_t axes[PT_MAX_DIMS];
  int n;
  TRY(get_axes(c, axes, &n));
  if (n < 0) return fail(c, PT_ERR_PARSE, "axes are missing");
  int r = xs->ndim + n;
  if (r > PT_MAX_DIMS)
    return fail(c, PT_ERR_UNSUPPORTED, "output would have %d dimensions (at most %d)", r,
                PT_MAX_DIMS);
  bool ins[PT_MAX_DIMS] = {false};
  for (int i = 0; i < n; i++) {
    int64_t a = axes[i] < 0 ? axes[i] + r : axes[i];
    if (a < 0 || a >= r || ins[a])
      return fail(c, PT_ERR_PARSE, "axis %lld is out of range or repeated", (long long)axes[i]);
    ins[a] = true;
  }
  pt_shape os = {.ndim = r};
  for (int i = 0, j = 0; i < r; i++) os.d[i] = ins[i] ? 1 : xs->d[j++];
  return finish_copy(c, x, &os);
}

static pt_status r_dropout(rctx *c) {
  int x;
  TRY(float_in(c, 0, true, &x));
  if (c->m->opset >= 12) {
    /* inference: identity, whatever the ratio, unless training_mode is a constant true */
    int t = in_val(c, 2);
    if (t >= 0) {
      const pt_value *tv = &c->m->vals[t];
      if (tv->kind != PT_VAL_CONST || !tv->is_int || tv->numel != 1)
        return fail(c, PT_ERR_UNSUPPORTED, "training_mode must be a constant");
      if (tv->ival[0]) {
        const float *r;
        int64_t nr;
        int rv = in_val(c, 1);
        bool zero = false;
        if (rv >= 0 && c->m->vals[rv].kind == PT_VAL_CONST) {
          TRY(const_floats(c, 1, "ratio", &r, &nr));
          zero = nr == 1 && r[0] == 0.0f;
        }
        if (!zero) return fail(c, PT_ERR_UNSUPPORTED, "training mode dropout is not supported");
      }
    }
  }
  return finish_copy(c, x, shp(c, x));
}

static pt_status r_identity(rctx *c) {
  int x;
  TRY(float_in(c, 0, true, &x));
  return finish_copy(c, x, shp(c, x));
}

/* ---- concat, resize ---- */

static pt_status r_concat(rctx *c) {
  char s1[96], s2[96];
  int n = c->nd->n_in;
  if (n < 1) return fail(c, PT_ERR_PARSE, "no inputs");
  if (n > PT_MAX_CONCAT)
    return fail(c, PT_ERR_UNSUPPORTED, "%d inputs (at most %d)", n, PT_MAX_CONCAT);
  int x0;
  TRY(float_in(c, 0, true, &x0));
  const pt_shape *s0 = shp(c, x0);
  int64_t axis;
  const Onnx__AttributeProto *aa = attr_find(c, "axis");
  if (!aa && c->m->opset >= 4) return fail(c, PT_ERR_PARSE, "attribute 'axis' is missing");
  TRY(attr_int(c, "axis", 1, &axis));
  if (axis < 0) axis += s0->ndim;
  if (axis < 0 || axis >= s0->ndim) return fail(c, PT_ERR_PARSE, "axis is out of range");
  pt_concat_params *p = &c->nd->p.concat;
  p->n = n;
  p->outer = prod(s0->d, 0, (int)axis);
  p->inner = prod(s0->d, (int)axis + 1, s0->ndim);
  pt_shape os = *s0;
  os.d[axis] = 0;
  for (int i = 0; i < n; i++) {
    int xi;
    TRY(float_in(c, i, true, &xi));
    const pt_shape *si = shp(c, xi);
    bool ok = si->ndim == s0->ndim;
    for (int k = 0; ok && k < s0->ndim; k++)
      if (k != axis && si->d[k] != s0->d[k]) ok = false;
    if (!ok)
      return fail(c, PT_ERR_SHAPE, "input %s does not match %s outside axis %lld", shape_s(si, s1),
                  shape_s(s0, s2), (long long)axis);
    p->dims[i] = si->d[axis];
    os.d[axis] += si->d[axis];
  }
  TRY(set_out(c, &os));
  c->nd->op = PT_OP_CONCAT;
  c->nd->flops = 0.0;
  return PT_OK;
}

static pt_status r_resize(rctx *c, bool upsample) {
  int x;
  char s1[96], mode[32], coord[32], nearest[32];
  TRY(float_in(c, 0, true, &x));
  const pt_shape *xs = shp(c, x);
  TRY(attr_str(c, "mode", "nearest", mode, sizeof mode));
  if (strcmp(mode, "nearest") != 0)
    return fail(c, PT_ERR_UNSUPPORTED, "mode '%s' is not supported (nearest only)", mode);
  if (xs->ndim != 4)
    return fail(c, PT_ERR_UNSUPPORTED, "input %s: only 4-D (NCHW) resizing is supported",
                shape_s(xs, s1));
  float fs[PT_MAX_DIMS];
  const float *scales = NULL;
  const int64_t *sizes = NULL;
  int64_t n_scales = -1, n_sizes = -1;
  pt_resize_params *p = &c->nd->p.resize;
  bool legacy = upsample || c->m->opset < 11;
  if (upsample && c->m->opset < 9) {
    int cnt;
    TRY(attr_floats(c, "scales", fs, PT_MAX_DIMS, &cnt));
    if (cnt < 0) return fail(c, PT_ERR_PARSE, "attribute 'scales' is missing");
    scales = fs;
    n_scales = cnt;
  } else if (legacy) {
    TRY(const_floats(c, 1, "scales", &scales, &n_scales));
  } else {
    TRY(const_floats(c, 2, "scales", &scales, &n_scales));
    TRY(const_ints(c, 3, "sizes", &sizes, &n_sizes));
  }
  if (legacy) {
    p->coord = PT_COORD_ASYMMETRIC;
    p->nearest = PT_NEAREST_FLOOR;
  } else {
    TRY(attr_str(c, "coordinate_transformation_mode", "half_pixel", coord, sizeof coord));
    TRY(attr_str(c, "nearest_mode", "round_prefer_floor", nearest, sizeof nearest));
    if (strcmp(coord, "half_pixel") == 0)
      p->coord = PT_COORD_HALF_PIXEL;
    else if (strcmp(coord, "asymmetric") == 0)
      p->coord = PT_COORD_ASYMMETRIC;
    else if (strcmp(coord, "align_corners") == 0)
      p->coord = PT_COORD_ALIGN_CORNERS;
    else if (strcmp(coord, "pytorch_half_pixel") == 0)
      p->coord = PT_COORD_PYTORCH_HALF_PIXEL;
    else if (strcmp(coord, "tf_half_pixel_for_nn") == 0)
      p->coord = PT_COORD_TF_HALF_PIXEL_FOR_NN;
    else
      return fail(c, PT_ERR_UNSUPPORTED, "coordinate_transformation_mode '%s' is not supported",
                  coord);
    if (strcmp(nearest, "round_prefer_floor") == 0)
      p->nearest = PT_NEAREST_ROUND_PREFER_FLOOR;
    else if (strcmp(nearest, "round_prefer_ceil") == 0)
      p->nearest = PT_NEAREST_ROUND_PREFER_CEIL;
    else if (strcmp(nearest, "floor") == 0)
      p->nearest = PT_NEAREST_FLOOR;
    else if (strcmp(nearest, "ceil") == 0)
      p->nearest = PT_NEAREST_CEIL;
    else
      return fail(c, PT_ERR_UNSUPPORTED, "nearest_mode '%s' is not supported", nearest);
  }
  int64_t OH, OW;
  if (n_sizes > 0) {
    if (n_sizes != 4)
      return fail(c, PT_ERR_SHAPE, "sizes has %lld values for a 4-D input", (long long)n_sizes);
    if (sizes[0] != xs->d[0] || sizes[1] != xs->d[1])
      return fail(c, PT_ERR_UNSUPPORTED, "resizing the batch or channel dims is not supported");
    OH = sizes[2];
    OW = sizes[3];
    if (OH < 1 || OW < 1) return fail(c, PT_ERR_SHAPE, "sizes must be positive");
    p->scale_h = (float)OH / (float)xs->d[2];
    p->scale_w = (float)OW / (float)xs->d[3];
  } else if (n_scales > 0) {
    if (n_scales != 4)
      return fail(c, PT_ERR_SHAPE, "scales has %lld values for a 4-D input", (long long)n_scales);
    if (scales[0] != 1.0f || scales[1] != 1.0f)
      return fail(c, PT_ERR_UNSUPPORTED, "scaling the batch or channel dims is not supported");
    if (!(scales[2] > 0.0f) || !(scales[3] > 0.0f))
      return fail(c, PT_ERR_PARSE, "scales must be positive");
    /* ONNX: output size = floor(input size * scale), computed in float like onnxruntime */
    OH = (int64_t)floorf((float)xs->d[2] * scales[2]);
    OW = (int64_t)floorf((float)xs->d[3] * scales[3]);
    p->scale_h = scales[2];
    p->scale_w = scales[3];
  } else {
    return fail(c, PT_ERR_PARSE, "neither scales nor sizes are given");
  }
  if (OH < 1 || OW < 1 || !fits_int(OH) || !fits_int(OW) || !fits_int(xs->d[0]) ||
      !fits_int(xs->d[1]) || !fits_int(xs->d[2]) || !fits_int(xs->d[3]))
    return fail(c, PT_ERR_SHAPE, "invalid output size %lldx%lld", (long long)OH, (long long)OW);
  p->N = (int)xs->d[0];
  p->C = (int)xs->d[1];
  p->H = (int)xs->d[2];
  p->W = (int)xs->d[3];
  p->OH = (int)OH;
  p->OW = (int)OW;
  pt_shape os = {.ndim = 4, .d = {xs->d[0], xs->d[1], OH, OW}};
  TRY(set_out(c, &os));
  c->nd->op = PT_OP_RESIZE;
  c->nd->flops = 0.0;
  c->nd->n_in = 1;
  return PT_OK;
}

/* ---- dispatch ---- */

typedef enum {
  K_CONV,
  K_CONVT,
  K_GEMM,
  K_MATMUL,
  K_ADD,
  K_SUB,
  K_MUL,
  K_DIV,
  K_RELU,
  K_LEAKY,
  K_SIGMOID,
  K_TANH,
  K_MAXPOOL,
  K_AVGPOOL,
  K_GAP,
  K_BN,
  K_FLATTEN,
  K_RESHAPE,
  K_SOFTMAX,
  K_LOGSOFTMAX,
  K_CONCAT,
  K_RESIZE,
  K_UPSAMPLE,
  K_IDENTITY,
  K_DROPOUT,
  K_SQUEEZE,
  K_UNSQUEEZE,
  K_CONSTANT
} op_kind;

static const struct {
  const char *name;
  op_kind kind;
  unsigned trainable; /* bit i: an initializer at input i is a trainable parameter */
} op_table[] = {
    {"Conv", K_CONV, 0x6},
    {"ConvTranspose", K_CONVT, 0x6},
    {"Gemm", K_GEMM, 0x7},
    {"MatMul", K_MATMUL, 0x3},
    {"Add", K_ADD, 0x3},
    {"Sub", K_SUB, 0x3},
    {"Mul", K_MUL, 0x3},
    {"Div", K_DIV, 0x3},
    {"Relu", K_RELU, 0},
    {"LeakyRelu", K_LEAKY, 0},
    {"Sigmoid", K_SIGMOID, 0},
    {"Tanh", K_TANH, 0},
    {"MaxPool", K_MAXPOOL, 0},
    {"AveragePool", K_AVGPOOL, 0},
    {"GlobalAveragePool", K_GAP, 0},
    {"BatchNormalization", K_BN, 0x6},
    {"Flatten", K_FLATTEN, 0},
    {"Reshape", K_RESHAPE, 0},
    {"Softmax", K_SOFTMAX, 0},
    {"LogSoftmax", K_LOGSOFTMAX, 0},
    {"Concat", K_CONCAT, 0},
    {"Resize", K_RESIZE, 0},
    {"Upsample", K_UPSAMPLE, 0},
    {"Identity", K_IDENTITY, 0},
    {"Dropout", K_DROPOUT, 0},
    {"Squeeze", K_SQUEEZE, 0},
    {"Unsqueeze", K_UNSQUEEZE, 0},
    {"Constant", K_CONSTANT, 0},
};

static int op_index(const char *op_type) {
  if (!op_type) return -1;
  for (size_t i = 0; i < sizeof op_table / sizeof op_table[0]; i++)
    if (strcmp(op_table[i].name, op_type) == 0) return (int)i;
  return -1;
}

int pt_resolve_known_op(const char *op_type) {
  return op_index(op_type) >= 0;
}

int pt_resolve_trainable_slot(const char *op_type, int slot) {
  int i = op_index(op_type);
  return i >= 0 && slot >= 0 && slot < 32 && ((op_table[i].trainable >> slot) & 1u);
}

pt_status pt_resolve_node(pt_model *m, int ni, const Onnx__NodeProto *np, pt_error *err) {
  rctx c = {.m = m, .nd = &m->nodes[ni], .np = np, .err = err};
  int i = op_index(c.nd->op_type);
  if (i < 0) return fail(&c, PT_ERR_UNSUPPORTED, "unsupported op");
  memset(&c.nd->p, 0, sizeof c.nd->p);
  c.nd->flops = 0.0;
  c.nd->aux_bytes = 0;
  c.nd->scratch_floats = 0;
  switch (op_table[i].kind) {
  case K_CONV:
    return r_conv(&c, false);
  case K_CONVT:
    return r_conv(&c, true);
  case K_GEMM:
    return r_gemm(&c);
  case K_MATMUL:
    return r_matmul(&c);
  case K_ADD:
    return r_binary(&c, PT_BIN_ADD);
  case K_SUB:
    return r_binary(&c, PT_BIN_SUB);
  case K_MUL:
    return r_binary(&c, PT_BIN_MUL);
  case K_DIV:
    return r_binary(&c, PT_BIN_DIV);
  case K_RELU:
    return r_unary(&c, PT_UN_RELU);
  case K_LEAKY:
    return r_unary(&c, PT_UN_LEAKY_RELU);
  case K_SIGMOID:
    return r_unary(&c, PT_UN_SIGMOID);
  case K_TANH:
    return r_unary(&c, PT_UN_TANH);
  case K_MAXPOOL:
    return r_pool(&c, true);
  case K_AVGPOOL:
    return r_pool(&c, false);
  case K_GAP:
    return r_global_avgpool(&c);
  case K_BN:
    return r_batchnorm(&c);
  case K_FLATTEN:
    return r_flatten(&c);
  case K_RESHAPE:
    return r_reshape(&c);
  case K_SOFTMAX:
    return r_softmax(&c, false);
  case K_LOGSOFTMAX:
    return r_softmax(&c, true);
  case K_CONCAT:
    return r_concat(&c);
  case K_RESIZE:
    return r_resize(&c, false);
  case K_UPSAMPLE:
    return r_resize(&c, true);
  case K_IDENTITY:
    return r_identity(&c);
  case K_DROPOUT:
    return r_dropout(&c);
  case K_SQUEEZE:
    return r_squeeze(&c);
  case K_UNSQUEEZE:
    return r_unsqueeze(&c);
  case K_CONSTANT:
    break;
  }
  return fail(&c, PT_ERR_INVALID, "Constant nodes are folded at load time");
}
