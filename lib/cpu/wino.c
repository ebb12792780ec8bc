/* 3x3 and 5x5 convolutions by Winograd F(2x2, 3x3) and F(2x2, 5x5) (wino.h).
 *
 * The matrices of F(2x2, 3x3), with the interpolation points 0, 1, -1 and infinity:
 *
 *   B^T = [ 1  0 -1  0 ]   G = [ 1    0    0   ]   A^T = [ 1 1  1  0 ]
 *         [ 0  1  1  0 ]       [ 1/2  1/2  1/2 ]         [ 0 1 -1 -1 ]
 *         [ 0 -1  1  0 ]       [ 1/2 -1/2  1/2 ]
 *         [ 0  1  0 -1 ]       [ 0    0    1   ]
 *
 * and of F(2x2, 5x5), with the points 0, 1, -1, 2, -2 and infinity, scaled so that the input
 * transform B^T has small integer entries (exact in float for the common cases):
 *
 *   B^T = [ 4  0 -5  0  1  0 ]   G = [ 1/4    0      0      0      0    ]   A^T = [ 1 1  1 1  1 0 ]
 *         [ 0  4  4 -1 -1  0 ]       [ 1/6   1/6    1/6    1/6    1/6   ]         [ 0 1 -1 2 -2 1 ]
 *         [ 0 -4  4  1 -1  0 ]       [ 1/6  -1/6    1/6   -1/6    1/6   ]
 *         [ 0 -2 -1  2  1  0 ]       [ 1/24  1/12   1/6    1/3    2/3   ]
 *         [ 0  2 -1 -2  1  0 ]       [ 1/24 -1/12   1/6   -1/3    2/3   ]
 *         [ 0  4  0 -5  0  1 ]       [ 0      0      0      0      1    ]
 *
 * With n = r + 1 for an r x r filter, a tile's input block is n x n and there are E = n^2
 * elements. Layouts: U [E][OC][C] (transformed weights), V [E][C][TWp] (one row of transformed
 * input tiles, TWp = tiles per row rounded up to 16), M [E][OC][TWp] (their products). Everything
 * runs 16 neighbouring tiles at once, one per vector lane. A tile's n input columns start at even
 * columns 2 apart, so with each padded input row split into its even and odd columns, column k of
 * 16 tiles is 16 consecutive floats; each channel keeps its last n such rows, so a row of tiles
 * splits only the 2 input rows it adds. The products keep 8 output channels by 32 tiles in
 * registers. The output transform's 2x2 blocks of 16 tiles interleave into 32 consecutive outputs
 * of each of 2 rows. Each step is written once for both filter sizes and compiled for each, with
 * n a constant. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "vec16.h"
#include "wino.h"

enum { TILE_BLOCK = 16 };

struct pt_wino {
  pt_conv_params p; /* the convolution this kernel computes (for backward data, the reversed one) */
  bool relu;
  int r, n, E; /* the filter's size (3 or 5), the tile's input block's (r + 1), and n^2 */
  /* FORWARD and BACKWARD_DATA hold U and M; BACKWARD_DATA reads the layer's weights (p.C, p.OC,
   * r, r) transposed and turned by 180 degrees, and adds its outputs into the caller's;
   * BACKWARD_WEIGHTS holds the three below instead */
  enum { FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS } kind;
  float *dyt;        /* dout of the current image, pixel-major: [OH OW][OC] */
  float *Z;          /* the tile row's transformed dout: [E][TWp][OC] */
  float *S;          /* the sums over tiles of V times Z: [E][C][OC] */
  int TH, TW, TWp;   /* rows and columns of tiles; columns rounded up to TILE_BLOCK */
  int half;          /* floats per even or odd half of a padded input row: TWp + 2 */
  float *U;          /* [E][OC][C] */
  const float *u_of; /* the weights U was made from; NULL when stale */
  float *V;          /* [E][C][TWp] */
  float *M;          /* [E][OC][TWp] */
  float *rows;       /* per channel, the input rows of the current tile row, split in even and
                      * odd columns: [C][n (input row mod n)][2][half] */
  /* floats from one of the E planes of U, V, M, Z or S to the next: the plane's size and 16
   * more, so that the same place in the E planes (E stores of one tile) falls in different sets
   * of the cache (planes of 4 KB apart would all share one set) */
  size_t u_es, v_es, m_es, z_es, s_es;
};

bool pt_wino_fits(const pt_conv_params *p) {
  return (p->KH == 3 || p->KH == 5) && p->KW == p->KH && p->SH == 1 && p->SW == 1 && p->DH == 1 &&
         p->DW == 1 && p->G == 1 && p->OC % 16 == 0 && p->OH >= 1 && p->OW >= 1;
}

static void *alloc64(size_t floats) {
  size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
  void *q = aligned_alloc(64, bytes ? bytes : 64);
  if (q) memset(q, 0, bytes ? bytes : 64);
  return q;
}

/* The convolution whose output is the input gradient of layer p: dout (p.OC channels, OH x OW)
 * convolved with p's weights transposed and turned, padded by r - 1 minus p's pads, gives (p.C,
 * H, W). */
static pt_conv_params reversed(const pt_conv_params *p) {
  pt_conv_params q = *p;
  const int e = p->KH - 1;
  q.C = p->OC, q.H = p->OH, q.W = p->OW;
  q.OC = p->C, q.OH = p->H, q.OW = p->W;
  q.PT = e - p->PT, q.PL = e - p->PL, q.PB = e - p->PB, q.PR = e - p->PR;
  q.has_bias = false;
  return q;
}

bool pt_wino_backward_data_fits(const pt_conv_params *p) {
  if (!pt_wino_fits(p)) return false;
  const int pads[4] = {p->PT, p->PL, p->PB, p->PR};
  for (int i = 0; i < 4; i++)
    if (pads[i] < 0 || pads[i] > p->KH - 1) return false;
  const pt_conv_params q = reversed(p);
  return pt_wino_fits(&q);
}

static size_t plane_stride(size_t floats) {
  return (floats + 15) / 16 * 16 + 16;
}

static pt_wino *make(const pt_conv_params *p, bool relu, int kind, pt_error *err) {
  pt_wino *w = calloc(1, sizeof *w);
  if (!w) goto nomem;
  w->p = *p;
  w->relu = relu;
  w->kind = kind;
  w->r = p->KH;
  w->n = w->r + 1;
  w->E = w->n * w->n;
  w->TH = (p->OH + 1) / 2;
  w->TW = (p->OW + 1) / 2;
  w->TWp = (w->TW + TILE_BLOCK - 1) / TILE_BLOCK * TILE_BLOCK;
  w->half = w->TWp + 2;
  w->u_es = plane_stride((size_t)p->OC * p->C);
  w->v_es = plane_stride((size_t)p->C * w->TWp);
  w->m_es = plane_stride((size_t)p->OC * w->TWp);
  w->z_es = plane_stride((size_t)w->TWp * p->OC);
  w->s_es = plane_stride((size_t)p->C * p->OC);
  w->V = alloc64(w->E * w->v_es);
  w->rows = alloc64((size_t)p->C * w->n * 2 * w->half);
  if (!w->V || !w->rows) goto nomem;
  if (kind == BACKWARD_WEIGHTS) {
    w->dyt = alloc64((size_t)p->OH * p->OW * p->OC);
    w->Z = alloc64(w->E * w->z_es);
    w->S = alloc64(w->E * w->s_es);
    if (!w->dyt || !w->Z || !w->S) goto nomem;
  } else {
    w->U = alloc64(w->E * w->u_es);
    w->M = alloc64(w->E * w->m_es);
    if (!w->U || !w->M) goto nomem;
  }
  return w;
nomem:
  pt_wino_free(w);
  pt_error_set(err, PT_ERR_NOMEM, "Winograd F(2x2, %dx%d): out of memory", p->KH, p->KW);
  return NULL;
}

pt_wino *pt_wino_create(const pt_conv_params *p, bool relu, pt_error *err) {
  if (!pt_wino_fits(p)) {
    pt_error_set(err, PT_ERR_UNSUPPORTED,
                 "Winograd F(2x2, 3x3) or F(2x2, 5x5): not a shape it takes");
    return NULL;
  }
  return make(p, relu, FORWARD, err);
}

pt_wino *pt_wino_create_backward_data(const pt_conv_params *p, pt_error *err) {
  if (!pt_wino_backward_data_fits(p)) {
    pt_error_set(err, PT_ERR_UNSUPPORTED,
                 "Winograd F(2x2, %dx%d): no input gradient for this shape (input channels a "
                 "multiple of 16, pads 0 to %d)",
                 p->KH, p->KW, p->KH - 1);
    return NULL;
  }
  const pt_conv_params q = reversed(p);
  return make(&q, false, BACKWARD_DATA, err);
}

pt_wino *pt_wino_create_backward_weights(const pt_conv_params *p, pt_error *err) {
  if (!pt_wino_fits(p)) {
    pt_error_set(err, PT_ERR_UNSUPPORTED,
                 "Winograd F(2x2, 3x3) or F(2x2, 5x5): not a shape it takes");
    return NULL;
  }
  return make(p, false, BACKWARD_WEIGHTS, err);
}

void pt_wino_free(pt_wino *w) {
  if (!w) return;
  free(w->U);
  free(w->V);
  free(w->M);
  free(w->rows);
  free(w->dyt);
  free(w->Z);
  free(w->S);
  free(w);
}

void pt_wino_weights_changed(pt_wino *w) {
  w->u_of = NULL;
}

/* Helpers inlined into each clone, and each compiled for a constant n (4 or 6) where it is
 * called: arrays of vectors, never vectors by value (that would change the ABI between the
 * clones). */
#define INLINE static inline __attribute__((always_inline))

/* The helpers below are inlined into each clone, each compiled for a constant n (4 or 6) where
 * it is called. */

/* G over n - 1 vectors d: n vectors r. */
INLINE void g_rows(v16 *r, const v16 *d, int n) {
  if (n == 4) {
    const v16 s = (d[0] + d[2]) * 0.5f, h = d[1] * 0.5f;
    r[0] = d[0];
    r[1] = s + h;
    r[2] = s - h;
    r[3] = d[2];
    return;
  }
  const v16 e = d[0] + d[2] + d[4], o = d[1] + d[3];
  const v16 e2 = d[0] * (1.0f / 24) + d[2] * (1.0f / 6) + d[4] * (2.0f / 3),
            o2 = d[1] * (1.0f / 12) + d[3] * (1.0f / 3);
  r[0] = d[0] * 0.25f;
  r[1] = (e + o) * (1.0f / 6);
  r[2] = (e - o) * (1.0f / 6);
  r[3] = e2 + o2;
  r[4] = e2 - o2;
  r[5] = d[4];
}

/* B^T over n vectors d: n vectors r. */
INLINE void bt_rows(v16 *r, const v16 *d, int n) {
  if (n == 4) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
    return;
  }
  r[0] = 4 * d[0] - 5 * d[2] + d[4];
  r[1] = 4 * (d[1] + d[2]) - d[3] - d[4];
  r[2] = 4 * (d[2] - d[1]) + d[3] - d[4];
  r[3] = 2 * (d[3] - d[1]) - d[2] + d[4];
  r[4] = 2 * (d[1] - d[3]) - d[2] + d[4];
  r[5] = 4 * d[1] - 5 * d[3] + d[5];
}

/* A^T over n vectors m: two vectors r. */
INLINE void at_rows(v16 *r, const v16 *m, int n) {
  if (n == 4) {
    r[0] = m[0] + m[1] + m[2];
    r[1] = m[1] - m[2] - m[3];
    return;
  }
  r[0] = m[0] + m[1] + m[2] + m[3] + m[4];
  r[1] = m[1] - m[2] + 2 * (m[3] - m[4]) + m[5];
}

/* A over two vectors y: n vectors r. */
INLINE void a_rows(v16 *r, const v16 *y, int n) {
  if (n == 4) {
    r[0] = y[0];
    r[1] = y[0] + y[1];
    r[2] = y[0] - y[1];
    r[3] = -y[1];
    return;
  }
  r[0] = y[0];
  r[1] = y[0] + y[1];
  r[2] = y[0] - y[1];
  r[3] = y[0] + 2 * y[1];
  r[4] = y[0] - 2 * y[1];
  r[5] = y[1];
}

/* G^T over n vectors m: n - 1 vectors r. */
INLINE void gt_rows(v16 *r, const v16 *m, int n) {
  if (n == 4) {
    const v16 s = (m[1] + m[2]) * 0.5f;
    r[0] = m[0] + s;
    r[1] = (m[1] - m[2]) * 0.5f;
    r[2] = s + m[3];
    return;
  }
  const v16 p = (m[1] + m[2]) * (1.0f / 6), q = (m[1] - m[2]) * (1.0f / 6);
  const v16 s = m[3] + m[4], d = m[3] - m[4];
  r[0] = m[0] * 0.25f + p + s * (1.0f / 24);
  r[1] = q + d * (1.0f / 12);
  r[2] = p + s * (1.0f / 6);
  r[3] = q + d * (1.0f / 3);
  r[4] = p + s * (2.0f / 3) + m[5];
}

/* The step fn(w, ...) compiled for the kernel's filter size. */
#define FOR_SIZE(fn, w, ...)                                                                       \
  do {                                                                                             \
    if ((w)->n == 4)                                                                               \
      fn(w, __VA_ARGS__, 4);                                                                       \
    else                                                                                           \
      fn(w, __VA_ARGS__, 6);                                                                       \
  } while (0)

/* U = G g G^T for every (output, input) channel pair, 16 input channels at a time (one per
 * lane); for BACKWARD_DATA, g is the layer's filter from input channel oc to output channel c,
 * turned by 180 degrees. */
INLINE void transform_weights_n(pt_wino *w, const float *wt, int n) {
  const int C = w->p.C, OC = w->p.OC, r = n - 1, taps = r * r;
  for (int oc = 0; oc < OC; oc++)
    for (int c0 = 0; c0 < C; c0 += 16) {
      const int lanes = C - c0 < 16 ? C - c0 : 16;
      float g[25][16]; /* tap k of the 16 filters */
      memset(g, 0, sizeof g);
      for (int l = 0; l < lanes; l++) {
        const int c = c0 + l;
        if (w->kind == BACKWARD_DATA) {
          const float *f = wt + ((size_t)c * OC + oc) * taps;
          for (int k = 0; k < taps; k++) g[k][l] = f[taps - 1 - k];
        } else {
          const float *f = wt + ((size_t)oc * C + c) * taps;
          for (int k = 0; k < taps; k++) g[k][l] = f[k];
        }
      }
      v16 t[6][5]; /* G g: [row][column] */
      for (int j = 0; j < r; j++) {
        v16 d[5], col[6];
        for (int i = 0; i < r; i++) d[i] = LOAD16(g[i * r + j]);
        g_rows(col, d, n);
        for (int a = 0; a < n; a++) t[a][j] = col[a];
      }
      for (int a = 0; a < n; a++) {
        v16 row[6];
        g_rows(row, t[a], n);
        for (int b = 0; b < n; b++) {
          float *u = w->U + (a * n + b) * w->u_es + (size_t)oc * C + c0;
          if (lanes == 16) {
            STORE16(u, row[b]);
          } else {
            float tmp[16];
            STORE16(tmp, row[b]);
            memcpy(u, tmp, sizeof(float) * (size_t)lanes);
          }
        }
      }
    }
  w->u_of = wt;
}

PT_CLONES static void transform_weights(pt_wino *w, const float *wt) {
  FOR_SIZE(transform_weights_n, w, wt);
}

/* Channel c's ring slot for input row iy (its even half, then its odd half). */
INLINE float *ring_row(const pt_wino *w, int c, int iy, int n) {
  return w->rows + ((size_t)c * n + (size_t)((iy % n + n) % n)) * 2 * w->half;
}

/* Input row iy of channel c (zeros outside the image), padded (P[j] = row[j - PL]) and split into
 * its even and odd columns (ev[i] = P[2 i], od[i] = P[2 i + 1]), into ring slot iy mod n. The
 * row's even and odd columns are split straight from the image, 32 columns at a time, and land
 * in ev and od shifted by the padding. */
INLINE void split_row(pt_wino *w, const float *img, int c, int iy, int n) {
  const pt_conv_params *p = &w->p;
  const int half = w->half, W = p->W, PL = p->PL;
  float *ev = ring_row(w, c, iy, n), *od = ev + half;
  if (iy < 0 || iy >= p->H) {
    memset(ev, 0, sizeof(float) * 2 * (size_t)half);
    return;
  }
  const float *src = img + ((size_t)c * p->H + iy) * W;
  /* column x is P[x + PL]: with PL even, column 2k goes to ev[k + PL / 2] and 2k + 1 to od[k +
   * PL / 2]; with PL odd, 2k to od[k + PL / 2] and 2k + 1 to ev[k + PL / 2 + 1] */
  float *to_even = PL & 1 ? od + PL / 2 : ev + PL / 2,
        *to_odd = PL & 1 ? ev + PL / 2 + 1 : od + PL / 2;
  for (int i = 0; i < (PL + 1) / 2 && i < half; i++) ev[i] = 0.0f;
  for (int i = 0; i < PL / 2 && i < half; i++) od[i] = 0.0f;
  int x = 0;
  for (; x + 32 <= W; x += 32) {
    const v16 a = LOAD16(src + x), b = LOAD16(src + x + 16);
    STORE16(to_even + x / 2, EVENS(a, b));
    STORE16(to_odd + x / 2, ODDS(a, b));
  }
  for (; x < W; x++) {
    const int j = x + PL;
    if (j / 2 < half) (j & 1 ? od : ev)[j / 2] = src[x];
  }
  for (int i = (W + PL + 1) / 2; i < half; i++) ev[i] = 0.0f;
  for (int i = (W + PL) / 2; i < half; i++) od[i] = 0.0f;
}

/* One tile row of one channel: V[.][c][.] for every tile of row th, from the ring's rows. */
INLINE void transform_input_n(pt_wino *w, int c, int th, int n) {
  const int TWp = w->TWp, half = w->half;
  const float *row[6];
  for (int y = 0; y < n; y++) {
    const int iy = 2 * th + y - w->p.PT;
    row[y] = ring_row(w, c, iy, n);
  }
  for (int t0 = 0; t0 < TWp; t0 += TILE_BLOCK) {
    v16 tmp[6][6]; /* B^T d: [transformed row][column k] */
    for (int k = 0; k < n; k++) {
      v16 d[6], col[6];
      for (int y = 0; y < n; y++) d[y] = LOAD16(row[y] + (k & 1) * half + t0 + k / 2);
      bt_rows(col, d, n);
      for (int a = 0; a < n; a++) tmp[a][k] = col[a];
    }
    for (int a = 0; a < n; a++) {
      v16 out[6];
      bt_rows(out, tmp[a], n);
      for (int b = 0; b < n; b++)
        STORE16(w->V + (a * n + b) * w->v_es + (size_t)c * TWp + t0, out[b]);
    }
  }
}

/* V for tile row th of image img, every channel. */
INLINE void transform_input_row_n(pt_wino *w, const float *img, int th, int n) {
  for (int c = 0; c < w->p.C; c++) {
    /* the tile row reads input rows 2 th - PT .. + n - 1; the row before read all but the last 2 */
    for (int y = th ? n - 2 : 0; y < n; y++) split_row(w, img, c, 2 * th + y - w->p.PT, n);
    transform_input_n(w, c, th, n);
  }
}

PT_CLONES static void transform_input_row(pt_wino *w, const float *img, int th) {
  FOR_SIZE(transform_input_row_n, w, img, th);
}

/* The products' register blocks: acc (8 rows by 32 columns, or up to 8 rows by 16) = a (rows x
 * K, rows lda apart) times b (K x 32 or 16, rows ldb apart). */
INLINE void block_8x32(v16 acc[8][2], const float *a, size_t lda, const float *b, size_t ldb,
                       int K) {
  memset(acc, 0, sizeof(v16) * 16);
  for (int k = 0; k < K; k++) {
    const v16 b0 = LOAD16(b + (size_t)k * ldb), b1 = LOAD16(b + (size_t)k * ldb + 16);
    for (int i = 0; i < 8; i++) {
      const float x = a[(size_t)i * lda + k];
      acc[i][0] += x * b0;
      acc[i][1] += x * b1;
    }
  }
}

/* acc[i] (i < NR <= 8) = sum over k < K of a[i lda + k] times b[k ldb .. + 16]. */
INLINE void block_rows_x16(v16 *acc, int NR, const float *a, size_t lda, const float *b, size_t ldb,
                           int K) {
  for (int i = 0; i < NR; i++) acc[i] = (v16){0};
  for (int k = 0; k < K; k++) {
    const v16 bk = LOAD16(b + (size_t)k * ldb);
    for (int i = 0; i < NR; i++) acc[i] += a[(size_t)i * lda + k] * bk;
  }
}

/* M[e][oc][t] = sum over c of U[e][oc][c] V[e][c][t], for the E elements e: 8 output channels
 * by 32 (or 16) tiles at a time. */
PT_CLONES static void multiply(pt_wino *w) {
  const int C = w->p.C, OC = w->p.OC, TWp = w->TWp;
  for (int e = 0; e < w->E; e++) {
    const float *U = w->U + e * w->u_es, *V = w->V + e * w->v_es;
    float *M = w->M + e * w->m_es;
    for (int oc0 = 0; oc0 < OC; oc0 += 8) {
      int t0 = 0;
      for (; t0 + 32 <= TWp; t0 += 32) {
        v16 acc[8][2];
        block_8x32(acc, U + (size_t)oc0 * C, C, V + t0, TWp, C);
        for (int i = 0; i < 8; i++) {
          STORE16(M + (size_t)(oc0 + i) * TWp + t0, acc[i][0]);
          STORE16(M + (size_t)(oc0 + i) * TWp + t0 + 16, acc[i][1]);
        }
      }
      for (; t0 < TWp; t0 += 16) {
        v16 acc[8];
        block_rows_x16(acc, 8, U + (size_t)oc0 * C, C, V + t0, TWp, C);
        for (int i = 0; i < 8; i++) STORE16(M + (size_t)(oc0 + i) * TWp + t0, acc[i]);
      }
    }
  }
}

/* The 2x2 outputs of every tile of row th, 16 tiles at a time, with bias and ReLU (NaN passed
 * on): each output row gets the two columns of the 16 tiles interleaved, 32 consecutive floats. */
INLINE void transform_output_n(pt_wino *w, float *img, const float *b, int th, int n) {
  const pt_conv_params *p = &w->p;
  const int OC = p->OC, TWp = w->TWp;
  for (int oc = 0; oc < OC; oc++) {
    const float bias = b ? b[oc] : 0.0f;
    for (int t0 = 0; t0 < w->TW; t0 += TILE_BLOCK) {
      v16 tmp[2][6]; /* A^T m: [output row][column] */
      for (int k = 0; k < n; k++) {
        v16 m[6], two[2];
        for (int a = 0; a < n; a++)
          m[a] = LOAD16(w->M + (a * n + k) * w->m_es + (size_t)oc * TWp + t0);
        at_rows(two, m, n);
        tmp[0][k] = two[0];
        tmp[1][k] = two[1];
      }
      for (int i = 0; i < 2; i++) {
        const int oy = 2 * th + i;
        if (oy >= p->OH) break;
        v16 r[2];
        at_rows(r, tmp[i], n);
        for (int j = 0; j < 2; j++) {
          r[j] += bias;
          if (w->relu) r[j] = (v16)((v16i)r[j] & ~(r[j] < 0.0f)); /* NaN < 0 is false */
        }
        float *dst = img + ((size_t)oc * p->OH + oy) * p->OW + 2 * t0;
        const int left = p->OW - 2 * t0; /* outputs left in the row */
        v16 lo = INTERLEAVE_LO(r[0], r[1]), hi = INTERLEAVE_HI(r[0], r[1]);
        if (left >= 32) {
          if (w->kind == BACKWARD_DATA) lo += LOAD16(dst), hi += LOAD16(dst + 16);
          STORE16(dst, lo);
          STORE16(dst + 16, hi);
        } else {
          float tile[32];
          if (w->kind == BACKWARD_DATA) { /* added into din */
            memcpy(tile, dst, sizeof(float) * (size_t)left);
            memset(tile + left, 0, sizeof(float) * (size_t)(32 - left));
            lo += LOAD16(tile), hi += LOAD16(tile + 16);
          }
          STORE16(tile, lo);
          STORE16(tile + 16, hi);
          memcpy(dst, tile, sizeof(float) * (size_t)left);
        }
      }
    }
  }
}

PT_CLONES static void transform_output(pt_wino *w, float *img, const float *b, int th) {
  FOR_SIZE(transform_output_n, w, img, b, th);
}

/* ---- the weights' gradient ----
 *
 * Y = A^T [U . V] A is linear in the filter g (U = G g G^T), so for an output gradient dY the
 * filter's gradient is G^T [V . (A dY A^T)] G, summed over the tiles: per element e of the n x n
 * domain, S[e] (C x OC) is the sum over tiles of V[e] (C x tiles) times Z[e]^T (tiles x OC),
 * Z = A dY A^T being each 2x2 block of dY taken to n x n. The products run 8 input channels by 32
 * output channels in registers, one tile at a time, with Z pixel-major (output channels
 * consecutive), for which dout is first transposed to pixel-major. */

PT_CLONES void pt_transpose(float *dst, size_t ldd, const float *src, size_t lds, int rows,
                            int cols) {
  int r0 = 0;
  for (; r0 + 16 <= rows; r0 += 16) {
    const float *s = src + (size_t)r0 * lds;
    int c0 = 0;
    for (; c0 + 16 <= cols; c0 += 16) {
      v16 r[16];
      /* one pointer stepped along the 16 rows; the empty asm keeps GCC from turning it into 16
       * pointers carried across the loop, which do not fit in registers (they took half the
       * transpose's time, spilled) */
      const float *q = s + c0;
      __asm__("" : "+r"(q));
      for (int i = 0; i < 16; i++, q += lds) r[i] = LOAD16(q);
      TRANSPOSE16(r);
      float *d = dst + (size_t)c0 * ldd + r0;
      __asm__("" : "+r"(d));
      for (int i = 0; i < 16; i++, d += ldd) STORE16(d, r[i]);
    }
    for (; c0 < cols; c0++)
      for (int i = 0; i < 16; i++) dst[(size_t)c0 * ldd + r0 + i] = s[i * lds + c0];
  }
  for (; r0 < rows; r0++)
    for (int c = 0; c < cols; c++) dst[(size_t)c * ldd + r0] = src[(size_t)r0 * lds + c];
}

/* Z for tile row th, from dyt: zeros outside the image. */
INLINE void transform_dout_n(pt_wino *w, int th, int n) {
  const pt_conv_params *p = &w->p;
  const int OC = p->OC;
  for (int t = 0; t < w->TW; t++)
    for (int oc0 = 0; oc0 < OC; oc0 += 16) {
      v16 y[2][2]; /* [row i][column j] */
      for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
          const int oy = 2 * th + i, ox = 2 * t + j;
          y[i][j] = oy < p->OH && ox < p->OW ? LOAD16(w->dyt + ((size_t)oy * p->OW + ox) * OC + oc0)
                                             : (v16){0};
        }
      v16 s[6][2]; /* A dY: [row a][column j] */
      for (int j = 0; j < 2; j++) {
        const v16 col[2] = {y[0][j], y[1][j]};
        v16 r[6];
        a_rows(r, col, n);
        for (int a = 0; a < n; a++) s[a][j] = r[a];
      }
      for (int a = 0; a < n; a++) {
        v16 r[6];
        a_rows(r, s[a], n);
        for (int b = 0; b < n; b++)
          STORE16(w->Z + (a * n + b) * w->z_es + (size_t)t * OC + oc0, r[b]);
      }
    }
}

PT_CLONES static void transform_dout(pt_wino *w, int th) {
  FOR_SIZE(transform_dout_n, w, th);
}

/* S[e][c][oc] += sum over the row's tiles t of V[e][c][t] Z[e][t][oc]: 8 input channels by 32
 * (or 16) output channels at a time. The row's sums are added to S after, a sum of two levels
 * that rounds less than one running sum over the image. */
PT_CLONES static void accumulate_products(pt_wino *w) {
  const int C = w->p.C, OC = w->p.OC, TW = w->TW, TWp = w->TWp;
  for (int e = 0; e < w->E; e++) {
    const float *V = w->V + e * w->v_es, *Z = w->Z + e * w->z_es;
    float *S = w->S + e * w->s_es;
    int c0 = 0;
    for (; c0 + 8 <= C; c0 += 8) {
      int oc0 = 0;
      for (; oc0 + 32 <= OC; oc0 += 32) {
        v16 acc[8][2];
        block_8x32(acc, V + (size_t)c0 * TWp, TWp, Z + oc0, OC, TW);
        for (int i = 0; i < 8; i++) {
          float *s0 = S + (size_t)(c0 + i) * OC + oc0;
          STORE16(s0, LOAD16(s0) + acc[i][0]);
          STORE16(s0 + 16, LOAD16(s0 + 16) + acc[i][1]);
        }
      }
      for (; oc0 < OC; oc0 += 16) {
        v16 acc[8];
        block_rows_x16(acc, 8, V + (size_t)c0 * TWp, TWp, Z + oc0, OC, TW);
        for (int i = 0; i < 8; i++) {
          float *s0 = S + (size_t)(c0 + i) * OC + oc0;
          STORE16(s0, LOAD16(s0) + acc[i]);
        }
      }
    }
    for (; c0 < C; c0++) /* the last input channels, one at a time */
      for (int oc0 = 0; oc0 < OC; oc0 += 16) {
        v16 acc = {0};
        for (int t = 0; t < TW; t++)
          acc += V[(size_t)c0 * TWp + t] * LOAD16(Z + (size_t)t * OC + oc0);
        STORE16(S + (size_t)c0 * OC + oc0, LOAD16(S + (size_t)c0 * OC + oc0) + acc);
      }
  }
}

/* dw[oc][c] += G^T S[.][c][oc] G, 16 output channels at a time. */
INLINE void add_filter_gradients_n(pt_wino *w, float *dw, int n) {
  const int C = w->p.C, OC = w->p.OC, r = n - 1, taps = r * r;
  for (int c = 0; c < C; c++)
    for (int oc0 = 0; oc0 < OC; oc0 += 16) {
      v16 t[5][6]; /* G^T S: [row i][column b] */
      for (int b = 0; b < n; b++) {
        v16 m[6], col[5];
        for (int a = 0; a < n; a++)
          m[a] = LOAD16(w->S + (a * n + b) * w->s_es + (size_t)c * OC + oc0);
        gt_rows(col, m, n);
        for (int i = 0; i < r; i++) t[i][b] = col[i];
      }
      float g[25][16];
      for (int i = 0; i < r; i++) {
        v16 row[5];
        gt_rows(row, t[i], n);
        for (int j = 0; j < r; j++) STORE16(g[i * r + j], row[j]);
      }
      for (int l = 0; l < 16; l++) {
        float *d = dw + ((size_t)(oc0 + l) * C + c) * taps;
        for (int k = 0; k < taps; k++) d[k] += g[k][l];
      }
    }
}

PT_CLONES static void add_filter_gradients(pt_wino *w, float *dw) {
  FOR_SIZE(add_filter_gradients_n, w, dw);
}

void pt_wino_backward_weights(pt_wino *w, float *dw, const float *dout, const float *in) {
  if (w->kind != BACKWARD_WEIGHTS) return;
  const pt_conv_params *p = &w->p;
  memset(w->S, 0, sizeof(float) * w->E * w->s_es);
  for (int n = 0; n < p->N; n++) {
    const float *img = in + (size_t)n * p->C * p->H * p->W;
    /* dout to pixel-major */
    pt_transpose(w->dyt, p->OC, dout + (size_t)n * p->OC * p->OH * p->OW, (size_t)p->OH * p->OW,
                 p->OC, p->OH * p->OW);
    for (int th = 0; th < w->TH; th++) {
      transform_input_row(w, img, th);
      transform_dout(w, th);
      accumulate_products(w);
    }
  }
  add_filter_gradients(w, dw);
}

static void run(pt_wino *w, float *out, const float *in, const float *wt, const float *b) {
  const pt_conv_params *p = &w->p;
  if (w->u_of != wt) transform_weights(w, wt);
  for (int n = 0; n < p->N; n++) {
    const float *img = in + (size_t)n * p->C * p->H * p->W;
    float *o = out + (size_t)n * p->OC * p->OH * p->OW;
    for (int th = 0; th < w->TH; th++) {
      transform_input_row(w, img, th);
      multiply(w);
      transform_output(w, o, b, th);
    }
  }
}

void pt_wino_forward(pt_wino *w, float *out, const float *in, const float *wt, const float *b) {
  if (w->kind == FORWARD) run(w, out, in, wt, b);
}

void pt_wino_backward_data(pt_wino *w, float *din, const float *dout, const float *wt) {
  if (w->kind == BACKWARD_DATA) run(w, din, dout, wt, NULL);
}

/* ---- F(4x4, 3x3) over channel vectors ----
 *
 * With points 0, 1, -1, 2, -2 and infinity, a 4x4 output tile of a 3x3 filter comes from a 6x6
 * input block through the same B^T as F(2x2, 5x5) above, with
 *
 *   G = [ 1/4    0     0   ]   A^T = [ 1 1  1 1  1 0 ]
 *       [ 1/6   1/6   1/6  ]         [ 0 1 -1 2 -2 0 ]
 *       [ 1/6  -1/6   1/6  ]         [ 0 1  1 4  4 0 ]
 *       [ 1/24  1/12  1/6  ]         [ 0 1 -1 8 -8 1 ]
 *       [ 1/24 -1/12  1/6  ]
 *       [ 0      0     1   ]
 *
 * Here a vector holds 16 channels of one pixel: the image is first transposed to pixel-major
 * (zero padded, so every tile reads a full 6x6 block), each tile's block transforms 16 channels at
 * once, the products run 8 tiles by 16 output channels in registers, and the output, written
 * pixel-major, is transposed back. Work goes one row of tiles at a time, as for F(2x2, r x r).
 * Layouts: X [8 (padded row mod 8)][Wp][C] (Wp = 4 TW + 2; a row of tiles reads padded rows 4 ty
 * to 4 ty + 5, of which the row before read the first 2), U [36][C][OC], V [36][TW][C] and
 * M [36][TW][OC] for one row of tiles, Y [4][OW][OC] its output rows. A kernel linked to the
 * next (pt_wino4_link) writes its output straight into the next kernel's padded layout instead of
 * Y, and that one reads its rows there in place of X. */

enum { X_RING = 8 };

struct pt_wino4 {
  pt_conv_params p;
  bool relu;
  int TH, TW, Wp;
  float *X, *U, *V, *M, *Y;
  const float *u_of; /* the weights U was made from; NULL when stale */
  size_t u_es, v_es, m_es;
  /* linked (pt_wino4_link): the whole output, pixel-major and already padded as the next kernel
   * reads it, [N][pm_rows][pm_cols][OC] with output pixel (y, x) at (y + pm_top, x + pm_left) and
   * zeros around, written instead of the caller's NCHW output; and the kernel whose such output
   * is this one's input, read in place */
  float *out_pm;
  int pm_rows, pm_cols, pm_top, pm_left;
  const pt_wino4 *src;
};

bool pt_wino4_fits(const pt_conv_params *p) {
  return p->KH == 3 && p->KW == 3 && p->SH == 1 && p->SW == 1 && p->DH == 1 && p->DW == 1 &&
         p->G == 1 && p->C % 16 == 0 && p->OC % 16 == 0 && p->OH >= 1 && p->OW >= 1 && p->PT >= 0 &&
         p->PL >= 0 && p->PB >= 0 && p->PR >= 0;
}

pt_wino4 *pt_wino4_create(const pt_conv_params *p, bool relu, pt_error *err) {
  if (!pt_wino4_fits(p)) {
    pt_error_set(err, PT_ERR_UNSUPPORTED, "Winograd F(4x4, 3x3): not a shape it takes");
    return NULL;
  }
  pt_wino4 *w = calloc(1, sizeof *w);
  if (!w) goto nomem;
  w->p = *p;
  w->relu = relu;
  w->TH = (p->OH + 3) / 4;
  w->TW = (p->OW + 3) / 4;
  w->Wp = 4 * w->TW + 2;
  w->u_es = plane_stride((size_t)p->C * p->OC);
  w->v_es = plane_stride((size_t)w->TW * p->C);
  w->m_es = plane_stride((size_t)w->TW * p->OC);
  w->X = alloc64((size_t)X_RING * w->Wp * p->C);
  w->U = alloc64(36 * w->u_es);
  w->V = alloc64(36 * w->v_es);
  w->M = alloc64(36 * w->m_es);
  w->Y = alloc64((size_t)4 * p->OW * p->OC);
  if (!w->X || !w->U || !w->V || !w->M || !w->Y) goto nomem;
  return w;
nomem:
  pt_wino4_free(w);
  pt_error_set(err, PT_ERR_NOMEM, "Winograd F(4x4, 3x3): out of memory");
  return NULL;
}

void pt_wino4_free(pt_wino4 *w) {
  if (!w) return;
  free(w->out_pm);
  free(w->X);
  free(w->U);
  free(w->V);
  free(w->M);
  free(w->Y);
  free(w);
}

void pt_wino4_weights_changed(pt_wino4 *w) {
  w->u_of = NULL;
}

bool pt_wino4_link(pt_wino4 *from, pt_wino4 *to) {
  const pt_conv_params *f = &from->p, *t = &to->p;
  if (from == to || from->out_pm || to->src || f->N != t->N || f->OC != t->C || f->OH != t->H ||
      f->OW != t->W)
    return false;
  /* to reads padded rows 0 to 4 TH + 1, Wp wide, with the image at (PT, PL) */
  const int rows = 4 * to->TH + 2;
  if (t->PT + t->H > rows || t->PL + t->W > to->Wp) return false;
  const size_t n = (size_t)f->N * rows * to->Wp * f->OC;
  if (!(from->out_pm = alloc64(n))) return false;
  memset(from->out_pm, 0, n * sizeof(float)); /* the padding: never written after this */
  from->pm_rows = rows;
  from->pm_cols = to->Wp;
  from->pm_top = t->PT;
  from->pm_left = t->PL;
  to->src = from;
  free(to->X); /* to reads from's rows in place */
  to->X = NULL;
  return true;
}

/* G over three vectors: six. */
INLINE void g3_rows(v16 *r, const v16 *d) {
  const v16 e = d[0] + d[2], e2 = d[0] * (1.0f / 24) + d[2] * (1.0f / 6), o2 = d[1] * (1.0f / 12);
  r[0] = d[0] * 0.25f;
  r[1] = (e + d[1]) * (1.0f / 6);
  r[2] = (e - d[1]) * (1.0f / 6);
  r[3] = e2 + o2;
  r[4] = e2 - o2;
  r[5] = d[2];
}

/* A^T over six vectors: four. */
INLINE void at4_rows(v16 *r, const v16 *m) {
  const v16 s1 = m[1] + m[2], d1 = m[1] - m[2], s3 = m[3] + m[4], d3 = m[3] - m[4];
  r[0] = m[0] + s1 + s3;
  r[1] = d1 + 2 * d3;
  r[2] = s1 + 4 * s3;
  r[3] = d1 + 8 * d3 + m[5];
}

/* U[e][c][oc] = (G g G^T)[e] of filter (oc, c), 16 output channels at a time. */
PT_CLONES static void wino4_transform_weights(pt_wino4 *w, const float *wt) {
  const int C = w->p.C, OC = w->p.OC;
  for (int c = 0; c < C; c++)
    for (int oc0 = 0; oc0 < OC; oc0 += 16) {
      float g[9][16];
      for (int l = 0; l < 16; l++)
        for (int k = 0; k < 9; k++) g[k][l] = wt[((size_t)(oc0 + l) * C + c) * 9 + k];
      v16 t[6][3]; /* G g: [row][column] */
      for (int j = 0; j < 3; j++) {
        const v16 d[3] = {LOAD16(g[j]), LOAD16(g[3 + j]), LOAD16(g[6 + j])};
        v16 col[6];
        g3_rows(col, d);
        for (int a = 0; a < 6; a++) t[a][j] = col[a];
      }
      for (int a = 0; a < 6; a++) {
        v16 row[6];
        g3_rows(row, t[a]);
        for (int b = 0; b < 6; b++)
          STORE16(w->U + (a * 6 + b) * w->u_es + (size_t)c * OC + oc0, row[b]);
      }
    }
  w->u_of = wt;
}

/* X's slot for padded row y. */
static float *x_slot(const pt_wino4 *w, int y) {
  return w->X + (size_t)(y % X_RING) * w->Wp * w->p.C;
}

/* Padded row y of image n: X's slot for it, or the row in the linked kernel's output. */
static const float *x_row(const pt_wino4 *w, int n, int y) {
  if (w->src) return w->src->out_pm + ((size_t)n * w->src->pm_rows + y) * w->Wp * w->p.C;
  return x_slot(w, y);
}

/* Padded row y (input row y - PT, zeros outside the image) of image img into X, pixel-major. */
static void wino4_fill_row(pt_wino4 *w, const float *img, int y) {
  const pt_conv_params *p = &w->p;
  const int C = p->C, iy = y - p->PT;
  float *x = x_slot(w, y);
  if (iy < 0 || iy >= p->H) {
    memset(x, 0, sizeof(float) * (size_t)w->Wp * C);
    return;
  }
  const int cols = p->W < w->Wp - p->PL ? p->W : w->Wp - p->PL;
  memset(x, 0, sizeof(float) * (size_t)p->PL * C);
  pt_transpose(x + (size_t)p->PL * C, C, img + (size_t)iy * p->W, (size_t)p->H * p->W, C, cols);
  memset(x + (size_t)(p->PL + cols) * C, 0, sizeof(float) * (size_t)(w->Wp - p->PL - cols) * C);
}

/* V for tile row ty: each tile's 6x6 block of X, 16 channels at a time. */
PT_CLONES static void wino4_transform_input(pt_wino4 *w, int n, int ty) {
  const int C = w->p.C;
  const float *rows[6];
  for (int i = 0; i < 6; i++) rows[i] = x_row(w, n, 4 * ty + i);
  for (int tx = 0; tx < w->TW; tx++)
    for (int c0 = 0; c0 < C; c0 += 16) {
      const size_t at = (size_t)4 * tx * C + c0;
      v16 t[6][6]; /* B^T d: [row][column] */
      for (int j = 0; j < 6; j++) {
        v16 d[6], col[6];
        for (int i = 0; i < 6; i++) d[i] = LOAD16(rows[i] + at + (size_t)j * C);
        bt_rows(col, d, 6);
        for (int a = 0; a < 6; a++) t[a][j] = col[a];
      }
      for (int a = 0; a < 6; a++) {
        v16 row[6];
        bt_rows(row, t[a], 6);
        for (int b = 0; b < 6; b++)
          STORE16(w->V + (a * 6 + b) * w->v_es + (size_t)tx * C + c0, row[b]);
      }
    }
}

/* M[e][t][oc] = sum over c of V[e][t][c] U[e][c][oc]: 8 tiles by 16 output channels at a time. */
PT_CLONES static void wino4_multiply(pt_wino4 *w) {
  const int C = w->p.C, OC = w->p.OC, TW = w->TW;
  for (int e = 0; e < 36; e++) {
    const float *U = w->U + e * w->u_es, *V = w->V + e * w->v_es;
    float *M = w->M + e * w->m_es;
    for (int oc0 = 0; oc0 < OC; oc0 += 16) {
      int t0 = 0;
      for (; t0 + 8 <= TW; t0 += 8) {
        v16 acc[8];
        block_rows_x16(acc, 8, V + (size_t)t0 * C, C, U + oc0, OC, C);
        for (int i = 0; i < 8; i++) STORE16(M + (size_t)(t0 + i) * OC + oc0, acc[i]);
      }
      if (t0 < TW) {
        v16 acc[8];
        const int nt = TW - t0;
        block_rows_x16(acc, nt, V + (size_t)t0 * C, C, U + oc0, OC, C);
        for (int i = 0; i < nt; i++) STORE16(M + (size_t)(t0 + i) * OC + oc0, acc[i]);
      }
    }
  }
}

/* The 4x4 outputs of every tile of row ty, with bias and ReLU (NaN passed on), pixel-major into
 * rows: output row 4 ty + i at rows + i stride. */
PT_CLONES static void wino4_transform_output(pt_wino4 *w, float *rows, size_t stride,
                                             const float *b, int ty) {
  const pt_conv_params *p = &w->p;
  const int OC = p->OC;
  for (int tx = 0; tx < w->TW; tx++)
    for (int oc0 = 0; oc0 < OC; oc0 += 16) {
      v16 bias = {0};
      if (b) bias = LOAD16(b + oc0);
      v16 t[4][6]; /* A^T m: [output row][column] */
      for (int k = 0; k < 6; k++) {
        v16 m[6], four[4];
        for (int a = 0; a < 6; a++)
          m[a] = LOAD16(w->M + (a * 6 + k) * w->m_es + (size_t)tx * OC + oc0);
        at4_rows(four, m);
        for (int i = 0; i < 4; i++) t[i][k] = four[i];
      }
      for (int i = 0; i < 4; i++) {
        const int oy = 4 * ty + i;
        if (oy >= p->OH) break;
        v16 r[4];
        at4_rows(r, t[i]);
        for (int j = 0; j < 4; j++) {
          const int ox = 4 * tx + j;
          if (ox >= p->OW) break;
          v16 y = r[j] + bias;
          if (w->relu) y = (v16)((v16i)y & ~(y < 0.0f)); /* NaN < 0 is false */
          STORE16(rows + (size_t)i * stride + (size_t)ox * OC + oc0, y);
        }
      }
    }
}

void pt_wino4_forward(pt_wino4 *w, float *out, const float *in, const float *wt, const float *b) {
  const pt_conv_params *p = &w->p;
  const int C = p->C, OC = p->OC;
  if (w->u_of != wt) wino4_transform_weights(w, wt);
  for (int n = 0; n < p->N; n++) {
    const float *img = in + (size_t)n * C * p->H * p->W;
    float *o = out + (size_t)n * OC * p->OH * p->OW;
    for (int ty = 0; ty < w->TH; ty++) {
      if (!w->src)
        for (int y = ty ? 4 * ty + 2 : 0; y < 4 * ty + 6; y++) wino4_fill_row(w, img, y);
      wino4_transform_input(w, n, ty);
      wino4_multiply(w);
      if (w->out_pm) { /* the linked kernel reads it as it is */
        const size_t stride = (size_t)w->pm_cols * OC;
        wino4_transform_output(w,
                               w->out_pm + ((size_t)n * w->pm_rows + w->pm_top + 4 * ty) * stride +
                                   (size_t)w->pm_left * OC,
                               stride, b, ty);
        continue;
      }
      wino4_transform_output(w, w->Y, (size_t)p->OW * OC, b, ty);
      for (int i = 0; i < 4 && 4 * ty + i < p->OH; i++)
        pt_transpose(o + (size_t)(4 * ty + i) * p->OW, (size_t)p->OH * p->OW,
                     w->Y + (size_t)i * p->OW * OC, OC, p->OW, OC);
    }
  }
}
