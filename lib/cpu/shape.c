/* CPU Concat and nearest-neighbour Resize.
 *
 * Concat copies each input's block of dims[i]*inner floats per outer index; its backward adds the
 * matching slices back (NULL input gradients are skipped).
 *
 * Resize takes every source index from pt_resize_src_index() so the CPU and CUDA backends agree
 * element for element. Column indices are computed in chunks into a small stack table and reused
 * for every row of every plane; the backward scatter-adds, since one source pixel feeds several
 * outputs when upsampling. */
#include <string.h>
#include "ops.h"
#include "../pointwise.h"

/* out: (outer, sum of dims, inner); ins[i]: (outer, dims[i], inner). */
void pt_concat_forward(float *out, const float *const *ins, const pt_concat_params *p) {
  int64_t total = 0;
  for (int i = 0; i < p->n; i++) total += p->dims[i];
  const int64_t row = total * p->inner;
  for (int64_t o = 0; o < p->outer; o++) {
    float *dst = out + o * row;
    for (int i = 0; i < p->n; i++) {
      const int64_t len = p->dims[i] * p->inner;
      memcpy(dst, ins[i] + o * len, sizeof(float) * (size_t)len);
      dst += len;
    }
  }
}

/* dins[i]: (outer, dims[i], inner), NULL to skip; dout: (outer, sum of dims, inner). */
void pt_concat_backward(float *const *dins, const float *dout, const pt_concat_params *p) {
  int64_t total = 0;
  for (int i = 0; i < p->n; i++) total += p->dims[i];
  const int64_t row = total * p->inner;
  for (int64_t o = 0; o < p->outer; o++) {
    const float *src = dout + o * row;
    for (int i = 0; i < p->n; i++) {
      const int64_t len = p->dims[i] * p->inner;
      if (dins[i]) {
        float *dst = dins[i] + o * len;
        for (int64_t k = 0; k < len; k++) dst[k] += src[k];
      }
      src += len;
    }
  }
}

/* Output columns handled per pass: their source columns fit a stack table. */
#define RESIZE_CHUNK 256

/* out: (N,C,OH,OW); in: (N,C,H,W). */
void pt_resize_forward(float *out, const float *in, const pt_resize_params *p) {
  const int64_t planes = (int64_t)p->N * p->C;
  const int64_t in_plane = (int64_t)p->H * p->W, out_plane = (int64_t)p->OH * p->OW;
  int32_t col[RESIZE_CHUNK];
  for (int ow0 = 0; ow0 < p->OW; ow0 += RESIZE_CHUNK) {
    const int m = p->OW - ow0 < RESIZE_CHUNK ? p->OW - ow0 : RESIZE_CHUNK;
    for (int j = 0; j < m; j++)
      col[j] = pt_resize_src_index(ow0 + j, p->W, p->OW, p->scale_w, p->coord, p->nearest);
    for (int64_t pl = 0; pl < planes; pl++) {
      for (int oh = 0; oh < p->OH; oh++) {
        const int ih = pt_resize_src_index(oh, p->H, p->OH, p->scale_h, p->coord, p->nearest);
        const float *src = in + pl * in_plane + (int64_t)ih * p->W;
        float *dst = out + pl * out_plane + (int64_t)oh * p->OW + ow0;
        for (int j = 0; j < m; j++) dst[j] = src[col[j]];
      }
    }
  }
}

/* din: (N,C,H,W); dout: (N,C,OH,OW). */
void pt_resize_backward(float *din, const float *dout, const pt_resize_params *p) {
  if (!din) return;
  const int64_t planes = (int64_t)p->N * p->C;
  const int64_t in_plane = (int64_t)p->H * p->W, out_plane = (int64_t)p->OH * p->OW;
  int32_t col[RESIZE_CHUNK];
  for (int ow0 = 0; ow0 < p->OW; ow0 += RESIZE_CHUNK) {
    const int m = p->OW - ow0 < RESIZE_CHUNK ? p->OW - ow0 : RESIZE_CHUNK;
    for (int j = 0; j < m; j++)
      col[j] = pt_resize_src_index(ow0 + j, p->W, p->OW, p->scale_w, p->coord, p->nearest);
    for (int64_t pl = 0; pl < planes; pl++) {
      for (int oh = 0; oh < p->OH; oh++) {
        const int ih = pt_resize_src_index(oh, p->H, p->OH, p->scale_h, p->coord, p->nearest);
        float *dst = din + pl * in_plane + (int64_t)ih * p->W;
        const float *src = dout + pl * out_plane + (int64_t)oh * p->OW + ow0;
        for (int j = 0; j < m; j++) dst[col[j]] += src[j];
      }
    }
  }
}
