/* 5x5 convolutions by Winograd F(2x2, 5x5) (wino5.h).
 *
 * The matrices, with the interpolation points 0, 1, -1, 2, -2 and infinity, scaled so that the
 * input transform B^T has small integer entries (exact in float for the common cases):
 *
 *   B^T = [ 4  0 -5  0  1  0 ]   G = [ 1/4    0      0      0      0    ]   A^T = [ 1 1  1 1  1 0 ]
 *         [ 0  4  4 -1 -1  0 ]       [ 1/6   1/6    1/6    1/6    1/6   ]         [ 0 1 -1 2 -2 1 ]
 *         [ 0 -4  4  1 -1  0 ]       [ 1/6  -1/6    1/6   -1/6    1/6   ]
 *         [ 0 -2 -1  2  1  0 ]       [ 1/24  1/12   1/6    1/3    2/3   ]
 *         [ 0  2 -1 -2  1  0 ]       [ 1/24 -1/12   1/6   -1/3    2/3   ]
 *         [ 0  4  0 -5  0  1 ]       [ 0      0      0      0      1    ]
 *
 * Layouts: U [36][OC][C] (transformed weights), V [36][C][TWp] (one row of transformed input
 * tiles, TWp = tiles per row rounded up to 16), M [36][OC][TWp] (their products). Everything runs
 * 16 neighbouring tiles at once, one per vector lane. A tile's 6 input columns start at even
 * columns 2 apart, so with each padded input row split into its even and odd columns, column k of
 * 16 tiles is 16 consecutive floats; each channel keeps its last 6 such rows, so a row of tiles
 * splits only the 2 input rows it adds. The products keep 8 output channels by 32 tiles in
 * registers. The output transform's 2x2 blocks of 16 tiles interleave into 32 consecutive outputs
 * of each of 2 rows. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "wino5.h"

typedef float v16 __attribute__((vector_size(64)));

/* One copy per instruction set, picked when the library loads (an ifunc). Not under
 * ThreadSanitizer, whose runtime is not up yet when ifunc resolvers run. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                             \
    !defined(__SANITIZE_THREAD__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define PT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef PT_CLONES
#define PT_CLONES
#endif

enum { TILE_BLOCK = 16 };

struct pt_wino5 {
  pt_conv_params p;
  bool relu;
  int TH, TW, TWp;   /* rows and columns of tiles; columns rounded up to TILE_BLOCK */
  int half;          /* floats per even or odd half of a padded input row: TWp + 2 */
  float *U;          /* [36][OC][C] */
  const float *u_of; /* the weights U was made from; NULL when stale */
  float *V;          /* [36][C][TWp] */
  float *M;          /* [36][OC][TWp] */
  float *rows;       /* per channel, the input rows of the current tile row, split in even and
                      * odd columns: [C][6 (input row mod 6)][2][half] */
};

typedef int v16i __attribute__((vector_size(64)));

/* The lanes of a and b interleaved: a0 b0 a1 b1 ... (the low half) and a8 b8 ... (the high). */
#ifdef __clang__
#define INTERLEAVE_LO(a, b)                                                                        \
  __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define INTERLEAVE_HI(a, b)                                                                        \
  __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
#else
#define INTERLEAVE_LO(a, b)                                                                        \
  __builtin_shuffle(a, b, (v16i){0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23})
#define INTERLEAVE_HI(a, b)                                                                        \
  __builtin_shuffle(a, b, (v16i){8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31})
#endif

/* Unaligned 16-float loads and stores (macros: a function passing v16 by value would change the
 * ABI between the clones) */
#define LOAD16(p)                                                                                  \
  ({                                                                                               \
    v16 v_;                                                                                        \
    memcpy(&v_, (p), sizeof v_);                                                                   \
    v_;                                                                                            \
  })
#define STORE16(p, v)                                                                              \
  do {                                                                                             \
    v16 t_ = (v);                                                                                  \
    memcpy((p), &t_, sizeof t_);                                                                   \
  } while (0)

bool pt_wino5_fits(const pt_conv_params *p) {
  return p->KH == 5 && p->KW == 5 && p->SH == 1 && p->SW == 1 && p->DH == 1 && p->DW == 1 &&
         p->G == 1 && p->OC % 16 == 0 && p->OH >= 1 && p->OW >= 1;
}

static void *alloc64(size_t floats) {
  size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
  void *q = aligned_alloc(64, bytes ? bytes : 64);
  if (q) memset(q, 0, bytes ? bytes : 64);
  return q;
}

pt_wino5 *pt_wino5_create(const pt_conv_params *p, bool relu, pt_error *err) {
  if (!pt_wino5_fits(p)) {
    pt_error_set(err, PT_ERR_UNSUPPORTED, "Winograd F(2x2, 5x5): not a shape it takes");
    return NULL;
  }
  pt_wino5 *w = calloc(1, sizeof *w);
  if (!w) goto nomem;
  w->p = *p;
  w->relu = relu;
  w->TH = (p->OH + 1) / 2;
  w->TW = (p->OW + 1) / 2;
  w->TWp = (w->TW + TILE_BLOCK - 1) / TILE_BLOCK * TILE_BLOCK;
  w->half = w->TWp + 2;
  w->U = alloc64((size_t)36 * p->C * p->OC);
  w->V = alloc64((size_t)36 * p->C * w->TWp);
  w->M = alloc64((size_t)36 * w->TWp * p->OC);
  w->rows = alloc64((size_t)p->C * 6 * 2 * w->half);
  if (!w->U || !w->V || !w->M || !w->rows) goto nomem;
  return w;
nomem:
  pt_wino5_free(w);
  pt_error_set(err, PT_ERR_NOMEM, "Winograd F(2x2, 5x5): out of memory");
  return NULL;
}

void pt_wino5_free(pt_wino5 *w) {
  if (!w) return;
  free(w->U);
  free(w->V);
  free(w->M);
  free(w->rows);
  free(w);
}

void pt_wino5_weights_changed(pt_wino5 *w) {
  w->u_of = NULL;
}

/* U = G g G^T for every (output, input) channel pair, in double. */
static void transform_weights(pt_wino5 *w, const float *wt) {
  static const double G[6][5] = {{1.0 / 4, 0, 0, 0, 0},
                                 {1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6},
                                 {1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 6},
                                 {1.0 / 24, 1.0 / 12, 1.0 / 6, 1.0 / 3, 2.0 / 3},
                                 {1.0 / 24, -1.0 / 12, 1.0 / 6, -1.0 / 3, 2.0 / 3},
                                 {0, 0, 0, 0, 1}};
  const int C = w->p.C, OC = w->p.OC;
  for (int oc = 0; oc < OC; oc++)
    for (int c = 0; c < C; c++) {
      const float *g = wt + ((size_t)oc * C + c) * 25;
      double t[6][5]; /* G g */
      for (int a = 0; a < 6; a++)
        for (int j = 0; j < 5; j++) {
          double s = 0;
          for (int i = 0; i < 5; i++) s += G[a][i] * g[i * 5 + j];
          t[a][j] = s;
        }
      for (int a = 0; a < 6; a++)
        for (int b = 0; b < 6; b++) {
          double s = 0;
          for (int j = 0; j < 5; j++) s += t[a][j] * G[b][j];
          w->U[((size_t)(a * 6 + b) * OC + oc) * C + c] = (float)s;
        }
    }
  w->u_of = wt;
}

/* B^T over six vectors. */
#define BT6(d, r)                                                                                  \
  do {                                                                                             \
    r[0] = 4 * d[0] - 5 * d[2] + d[4];                                                             \
    r[1] = 4 * (d[1] + d[2]) - d[3] - d[4];                                                        \
    r[2] = 4 * (d[2] - d[1]) + d[3] - d[4];                                                        \
    r[3] = 2 * (d[3] - d[1]) - d[2] + d[4];                                                        \
    r[4] = 2 * (d[1] - d[3]) - d[2] + d[4];                                                        \
    r[5] = 4 * d[1] - 5 * d[3] + d[5];                                                             \
  } while (0)

/* Splits input row iy of channel c (zeros outside the image) into the even and odd columns of
 * the padded row, into ring slot iy mod 6. */
/* Channel c's ring slot for input row iy (its even half, then its odd half). */
static float *ring_row(const pt_wino5 *w, int c, int iy) {
  return w->rows + ((size_t)c * 6 + (size_t)((iy % 6 + 6) % 6)) * 2 * w->half;
}

static int floor_div2(int a) {
  return a >= 0 ? a / 2 : -((1 - a) / 2);
}

static void split_row(pt_wino5 *w, const float *img, int c, int iy) {
  const pt_conv_params *p = &w->p;
  const int half = w->half, W = p->W, PL = p->PL;
  float *ev = ring_row(w, c, iy), *od = ev + half;
  if (iy < 0 || iy >= p->H) {
    memset(ev, 0, sizeof(float) * 2 * half);
    return;
  }
  const float *src = img + ((size_t)c * p->H + iy) * W;
  /* ev[i] = src[2i - PL], od[i] = src[2i + 1 - PL] where those are in the row, else 0 */
  for (int par = 0; par < 2; par++) {
    float *dst = par ? od : ev;
    int i0 = floor_div2(PL - par + 1), i1 = floor_div2(W - 1 + PL - par) + 1;
    if (i0 < 0) i0 = 0;
    if (i1 > half) i1 = half;
    if (i1 < i0) i1 = i0;
    const float *s0 = src + par - PL;
    for (int i = 0; i < i0; i++) dst[i] = 0.0f;
    for (int i = i0; i < i1; i++) dst[i] = s0[2 * i];
    for (int i = i1; i < half; i++) dst[i] = 0.0f;
  }
}

/* One tile row of one channel: V[.][c][.] for every tile of row th, from the ring's rows. */
PT_CLONES static void transform_input(pt_wino5 *w, int c, int th) {
  const int TWp = w->TWp, half = w->half, C = w->p.C;
  const float *row[6];
  for (int y = 0; y < 6; y++) {
    const int iy = 2 * th + y - w->p.PT;
    row[y] = ring_row(w, c, iy);
  }
  for (int t0 = 0; t0 < TWp; t0 += TILE_BLOCK) {
    v16 tmp[6][6]; /* B^T d: [transformed row][column k] */
    for (int k = 0; k < 6; k++) {
      v16 d[6], r[6];
      for (int y = 0; y < 6; y++) d[y] = LOAD16(row[y] + (k & 1) * half + t0 + k / 2);
      BT6(d, r);
      for (int a = 0; a < 6; a++) tmp[a][k] = r[a];
    }
    for (int a = 0; a < 6; a++) {
      v16 r[6];
      BT6(tmp[a], r);
      for (int b = 0; b < 6; b++) STORE16(w->V + ((size_t)(a * 6 + b) * C + c) * TWp + t0, r[b]);
    }
  }
}

/* M[e][oc][t] = sum over c of U[e][oc][c] V[e][c][t], for the 36 elements e: 8 output channels
 * by 32 (or 16) tiles at a time. */
PT_CLONES static void multiply(pt_wino5 *w) {
  const int C = w->p.C, OC = w->p.OC, TWp = w->TWp;
  for (int e = 0; e < 36; e++) {
    const float *U = w->U + (size_t)e * OC * C, *V = w->V + (size_t)e * C * TWp;
    float *M = w->M + (size_t)e * OC * TWp;
    for (int oc0 = 0; oc0 < OC; oc0 += 8) {
      int t0 = 0;
      for (; t0 + 32 <= TWp; t0 += 32) {
        v16 acc[8][2];
        memset(acc, 0, sizeof acc);
        for (int c = 0; c < C; c++) {
          const v16 v0 = LOAD16(V + (size_t)c * TWp + t0),
                    v1 = LOAD16(V + (size_t)c * TWp + t0 + 16);
          for (int i = 0; i < 8; i++) {
            const float u = U[(size_t)(oc0 + i) * C + c];
            acc[i][0] += u * v0;
            acc[i][1] += u * v1;
          }
        }
        for (int i = 0; i < 8; i++) {
          STORE16(M + (size_t)(oc0 + i) * TWp + t0, acc[i][0]);
          STORE16(M + (size_t)(oc0 + i) * TWp + t0 + 16, acc[i][1]);
        }
      }
      for (; t0 < TWp; t0 += 16) {
        v16 acc[8];
        memset(acc, 0, sizeof acc);
        for (int c = 0; c < C; c++) {
          const v16 v0 = LOAD16(V + (size_t)c * TWp + t0);
          for (int i = 0; i < 8; i++) acc[i] += U[(size_t)(oc0 + i) * C + c] * v0;
        }
        for (int i = 0; i < 8; i++) STORE16(M + (size_t)(oc0 + i) * TWp + t0, acc[i]);
      }
    }
  }
}

/* A^T over six vectors. */
#define AT6(m, r)                                                                                  \
  do {                                                                                             \
    r[0] = m[0] + m[1] + m[2] + m[3] + m[4];                                                       \
    r[1] = m[1] - m[2] + 2 * (m[3] - m[4]) + m[5];                                                 \
  } while (0)

/* The 2x2 outputs of every tile of row th, 16 tiles at a time, with bias and ReLU (NaN passed
 * on): each output row gets the two columns of the 16 tiles interleaved, 32 consecutive floats. */
PT_CLONES static void transform_output(pt_wino5 *w, float *img, const float *b, int th) {
  const pt_conv_params *p = &w->p;
  const int OC = p->OC, TWp = w->TWp;
  for (int oc = 0; oc < OC; oc++) {
    const float bias = b ? b[oc] : 0.0f;
    for (int t0 = 0; t0 < w->TW; t0 += TILE_BLOCK) {
      v16 tmp[2][6]; /* A^T m: [output row][column] */
      for (int k = 0; k < 6; k++) {
        v16 m[6], r[2];
        for (int a = 0; a < 6; a++)
          m[a] = LOAD16(w->M + ((size_t)(a * 6 + k) * OC + oc) * TWp + t0);
        AT6(m, r);
        tmp[0][k] = r[0];
        tmp[1][k] = r[1];
      }
      for (int i = 0; i < 2; i++) {
        const int oy = 2 * th + i;
        if (oy >= p->OH) break;
        v16 r[2];
        AT6(tmp[i], r);
        for (int j = 0; j < 2; j++) {
          r[j] += bias;
          if (w->relu) r[j] = (v16)((v16i)r[j] & ~(r[j] < 0.0f)); /* NaN < 0 is false */
        }
        float *dst = img + ((size_t)oc * p->OH + oy) * p->OW + 2 * t0;
        const int n = p->OW - 2 * t0; /* outputs left in the row */
        const v16 lo = INTERLEAVE_LO(r[0], r[1]), hi = INTERLEAVE_HI(r[0], r[1]);
        if (n >= 32) {
          STORE16(dst, lo);
          STORE16(dst + 16, hi);
        } else {
          float tile[32];
          STORE16(tile, lo);
          STORE16(tile + 16, hi);
          memcpy(dst, tile, sizeof(float) * (size_t)n);
        }
      }
    }
  }
}

void pt_wino5_forward(pt_wino5 *w, float *out, const float *in, const float *wt, const float *b) {
  const pt_conv_params *p = &w->p;
  if (w->u_of != wt) transform_weights(w, wt);
  for (int n = 0; n < p->N; n++) {
    const float *img = in + (size_t)n * p->C * p->H * p->W;
    float *o = out + (size_t)n * p->OC * p->OH * p->OW;
    for (int th = 0; th < w->TH; th++) {
      for (int c = 0; c < p->C; c++) {
        /* the tile row reads input rows 2 th - PT .. + 5; the row before read all but the last 2 */
        for (int y = th ? 4 : 0; y < 6; y++) split_row(w, img, c, 2 * th + y - p->PT);
        transform_input(w, c, th);
      }
      multiply(w);
      transform_output(w, o, b, th);
    }
  }
}
