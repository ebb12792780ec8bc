/* Direct convolution, one group, no dilation, any stride: forward and gradients, and
 * ConvTranspose on them.
 *
 * The forward takes any number of taps (input channels x kernel rows x kernel columns). conv.c
 * runs every such layer here (it beat im2col and the matrix product 1.1-2.4x), and the executor
 * prefers it to oneDNN where the sum runs over few taps (pt_direct_few_taps: at most
 * PT_DIRECT_MAX_TAPS): an image network's first layer (3 input channels) and its 1x1 heads.
 * oneDNN's direct kernels ran the benchmark networks' first layers 1.2-2x slower, and each of its
 * primitive executions allocates on the heap, as does the sgemm a head went to: these were the
 * only layers of those networks' inference that allocated. Below the forward, the gradients, for
 * the same reason in training (see "gradients"), and ConvTranspose, which the executor leaves
 * here with small strided convolutions (cpu/dnnl_conv.c's rule).
 *
 * A vector holds 16 output pixels of one row: each tap loads one vector from a zero-padded copy
 * of the input and multiplies it by 16 output channels' weights (broadcast), into 16
 * accumulators. The weights are laid out [block of 16 output channels][tap][16], zeros past OC,
 * so a head of 10 channels runs one block with 6 idle accumulators. With at most 4 output
 * channels, 4 rows of 16 pixels share each tap's 4 weights instead (direct_narrow).
 *
 * Scratch (pt_direct_scratch floats): the padded input of one image, then the weights. The copy
 * has Hp = (OH - 1) x SH + KH rows, each split into SW phases (columns x with the same x mod SW)
 * of Wq = OW rounded up to 16, plus (KW - 1) / SW, columns: at any stride, a tap's 16 pixels are
 * 16 consecutive floats of one phase, and every load stays inside. Without padding, at stride 1
 * along rows and with rows of whole vectors (OW a multiple of 16), the input is read in place,
 * and there is no copy: it would double the memory traffic of a 1x1 layer. */
#include <string.h>
#include "ops.h"
#include "vec16.h"
#include "wino.h"

bool pt_direct_fits(const pt_conv_params *p) {
  return p->G == 1 && p->SH >= 1 && p->SW >= 1 && p->DH == 1 && p->DW == 1 && p->OH >= 1 &&
         p->OW >= 1 && p->PT >= 0 && p->PL >= 0 && p->PB >= 0 && p->PR >= 0;
}

bool pt_direct_few_taps(const pt_conv_params *p) {
  return pt_direct_fits(p) && (int64_t)p->C * p->KH * p->KW <= PT_DIRECT_MAX_TAPS;
}

static int padded_rows(const pt_conv_params *p) {
  return (p->OH - 1) * p->SH + p->KH;
}

/* The columns of one phase of a padded row: a vector's 16 outputs read 16 consecutive columns of
 * one phase, whatever the tap. */
static int phase_cols(const pt_conv_params *p) {
  return (p->OW + 15) / 16 * 16 + (p->KW - 1) / p->SW;
}

/* The phases that get kernel taps along an axis of stride S and kernel size K: offsets i <
 * min(S, K), whose taps are i, i + S, ... At most K of them, however wide the stride. */
static int tap_phases(int S, int K) {
  return S < K ? S : K;
}

/* The column phases a padded row keeps: those some tap reads. A stride past the kernel's width
 * leaves the other columns unread. */
static int phases(const pt_conv_params *p) {
  return tap_phases(p->SW, p->KW);
}

/* Whether the input itself can be read: no padding, stride 1 along rows, rows of whole vectors. */
static bool in_place(const pt_conv_params *p) {
  return p->PT == 0 && p->PL == 0 && p->PB == 0 && p->PR == 0 && p->SW == 1 && p->OW % 16 == 0;
}

/* The floats of the padded copy, at the start of the scratch; the weights follow. */
static size_t pad_floats(const pt_conv_params *p) {
  return in_place(p) ? 0 : (size_t)p->C * padded_rows(p) * phases(p) * phase_cols(p);
}

int64_t pt_direct_scratch(const pt_conv_params *p) {
  const int64_t taps = (int64_t)p->C * p->KH * p->KW, blocks = (p->OC + 15) / 16;
  return (int64_t)pad_floats(p) + taps * 16 * blocks;
}

/* One output vector: y = acc (+ bias, ReLU) stored, or added, into the first cols of dst. */
INLINE void put16(float *dst, v16 y, float bias, bool relu, bool add, int cols) {
  y += bias;
  if (relu) y = (v16)((v16i)y & ~(y < 0.0f)); /* NaN < 0 is false: passed on */
  if (cols == 16) {
    STORE16(dst, add ? LOAD16(dst) + y : y);
  } else {
    float part[16];
    STORE16(part, y);
    for (int i = 0; i < cols; i++) dst[i] = add ? dst[i] + part[i] : part[i];
  }
}

/* One image: out (OC, OH, OW) from the (padded) input, Hp rows of SW phases of Wq columns, and
 * the laid-out weights; add: out += the convolution (then b is NULL and relu false). Sixteen
 * output channels at once, a vector of 16 pixels of one row each. */
PT_CLONES static void direct_wide(float *out, const float *pad, int Hp, int Wq, const float *wt,
                                  const float *b, bool relu, bool add, const pt_conv_params *p) {
  const int C = p->C, KH = p->KH, KW = p->KW, OC = p->OC, OH = p->OH, OW = p->OW;
  const int SH = p->SH, SW = p->SW, NP = phases(p), taps = C * KH * KW;
  for (int oc0 = 0; oc0 < OC; oc0 += 16) {
    const int nb = OC - oc0 < 16 ? OC - oc0 : 16;
    const float *wb = wt + (size_t)oc0 * taps;
    for (int oy = 0; oy < OH; oy++)
      for (int ox0 = 0; ox0 < OW; ox0 += 16) {
        v16 acc[16];
        for (int o = 0; o < 16; o++) acc[o] = (v16){0};
        const float *wk = wb;
        for (int c = 0; c < C; c++)
          for (int kh = 0; kh < KH; kh++) {
            const float *row = pad + (size_t)(c * Hp + oy * SH + kh) * NP * Wq + ox0;
            for (int ph = 0; ph < NP; ph++, row += Wq)
              for (int kw = ph, m = 0; kw < KW; kw += SW, m++, wk += 16) {
                const v16 v = LOAD16(row + m);
                for (int o = 0; o < 16; o++) acc[o] += wk[o] * v;
              }
          }
        const int cols = OW - ox0 < 16 ? OW - ox0 : 16;
        for (int o = 0; o < nb; o++)
          put16(out + ((size_t)(oc0 + o) * OH + oy) * OW + ox0, acc[o], b ? b[oc0 + o] : 0.0f, relu,
                add, cols);
      }
  }
}

/* direct_wide for at most NARROW output channels, which would leave most of its 16 accumulators
 * idle: NARROW channels times NARROW rows of 16 pixels at once (rows past OH recompute the last
 * one and are not stored). */
enum { NARROW = 4 };

PT_CLONES static void direct_narrow(float *out, const float *pad, int Hp, int Wq, const float *wt,
                                    const float *b, bool relu, bool add, const pt_conv_params *p) {
  const int C = p->C, KH = p->KH, KW = p->KW, OC = p->OC, OH = p->OH, OW = p->OW;
  const int SH = p->SH, SW = p->SW, NP = phases(p);
  for (int oy0 = 0; oy0 < OH; oy0 += NARROW) {
    const int rows = OH - oy0 < NARROW ? OH - oy0 : NARROW;
    for (int ox0 = 0; ox0 < OW; ox0 += 16) {
      v16 acc[NARROW][NARROW];
      for (int r = 0; r < NARROW; r++)
        for (int o = 0; o < NARROW; o++) acc[r][o] = (v16){0};
      const float *wk = wt;
      for (int c = 0; c < C; c++)
        for (int kh = 0; kh < KH; kh++) {
          const float *row[NARROW];
          for (int r = 0; r < NARROW; r++) {
            const int oy = oy0 + (r < rows ? r : rows - 1);
            row[r] = pad + (size_t)(c * Hp + oy * SH + kh) * NP * Wq + ox0;
          }
          for (int ph = 0; ph < NP; ph++)
            for (int kw = ph, m = ph * Wq; kw < KW; kw += SW, m++, wk += 16) {
              v16 v[NARROW];
              for (int r = 0; r < NARROW; r++) v[r] = LOAD16(row[r] + m);
              for (int r = 0; r < NARROW; r++)
                for (int o = 0; o < NARROW; o++) acc[r][o] += wk[o] * v[r];
            }
        }
      const int cols = OW - ox0 < 16 ? OW - ox0 : 16;
      for (int r = 0; r < rows; r++)
        for (int o = 0; o < OC; o++)
          put16(out + ((size_t)o * OH + oy0 + r) * OW + ox0, acc[r][o], b ? b[o] : 0.0f, relu, add,
                cols);
    }
  }
}

static void direct_image(float *out, const float *pad, int Hp, int Wq, const float *wt,
                         const float *b, bool relu, bool add, const pt_conv_params *p) {
  if (p->OC <= NARROW)
    direct_narrow(out, pad, Hp, Wq, wt, b, relu, add, p);
  else
    direct_wide(out, pad, Hp, Wq, wt, b, relu, add, p);
}

/* The weights (OC, C, KH, KW), read through get(oc, c, kh, kw), with output channel oc + 1 at
 * ostride floats past oc, laid out for direct_image in wt: [block of 16 output channels][c][kh]
 * [phase][tap of the phase][16], zeros past OC. The geometry is read once, before the loops (a
 * store into wt could otherwise alias p). */
#define LAY_OUT_WEIGHTS(wt, p, get, ostride)                                                       \
  do {                                                                                             \
    const int OC_ = (p)->OC, C_ = (p)->C, KH_ = (p)->KH, KW_ = (p)->KW, SW_ = (p)->SW;             \
    const int NP_ = phases(p);                                                                     \
    const size_t os_ = (ostride);                                                                  \
    float *dst_ = (wt);                                                                            \
    for (int oc0_ = 0; oc0_ < OC_; oc0_ += 16) {                                                   \
      const int on_ = OC_ - oc0_ < 16 ? OC_ - oc0_ : 16;                                           \
      for (int c_ = 0; c_ < C_; c_++)                                                              \
        for (int kh_ = 0; kh_ < KH_; kh_++)                                                        \
          for (int ph_ = 0; ph_ < NP_; ph_++)                                                      \
            for (int kw_ = ph_; kw_ < KW_; kw_ += SW_, dst_ += 16) {                               \
              const float *src_ = &get(oc0_, c_, kh_, kw_);                                        \
              int o_ = 0;                                                                          \
              for (; o_ < on_; o_++) dst_[o_] = src_[o_ * os_];                                    \
              for (; o_ < 16; o_++) dst_[o_] = 0.0f;                                               \
            }                                                                                      \
    }                                                                                              \
  } while (0)

/* One image's zero-padded copy: input column ix of row iy goes to phase (ix + PL) % SW, column
 * (ix + PL) / SW of padded row iy + PT. Rows and columns the padding puts outside are left out. */
PT_CLONES static void pad_image(float *pad, const float *in, const pt_conv_params *p) {
  const int C = p->C, H = p->H, W = p->W, SW = p->SW, PL = p->PL;
  const int Hp = padded_rows(p), Wq = phase_cols(p);
  const int64_t span = (int64_t)SW * Wq - PL; /* padded columns a phase row holds */
  const int lo = PL < 0 ? -PL : 0, hi = W < span ? W : (int)span, NP = phases(p);
  memset(pad, 0, sizeof(float) * pad_floats(p));
  if (hi <= lo) return;
  for (int ph = 0; ph < NP; ph++) {
    /* the phase's first column, then every SW-th */
    const int64_t ix0 = lo + ((ph - (lo + PL) % SW) % SW + SW) % SW;
    if (ix0 >= hi) continue;
    const size_t at = (size_t)ph * Wq + (size_t)(ix0 + PL) / SW;
    for (int c = 0; c < C; c++)
      for (int iy = 0; iy < H; iy++) {
        const int py = iy + p->PT;
        if (py < 0 || py >= Hp) continue;
        const float *src = in + ((size_t)c * H + iy) * W;
        float *d = pad + (size_t)(c * Hp + py) * NP * Wq + at;
        if (SW == 1) {
          memcpy(d, src + lo, sizeof(float) * (size_t)(hi - lo));
        } else if (SW == 2) { /* the common case, in vectors */
          for (int64_t ix = ix0; ix < hi; ix += 2) *d++ = src[ix];
        } else {
          for (int64_t ix = ix0; ix < hi; ix += SW) *d++ = src[ix];
        }
      }
  }
}

/* out from in (N images) through the weights laid out at the end of scratch: direct_image on
 * the input in place, or on a zero-padded copy of each image, its columns split into SW phases.
 * Pads may be negative (rows and columns of the input left out), as may the bottom and right
 * ones be larger than what is read. add: out += instead of out =. */
static void direct_run(float *out, const float *in, const float *b, const pt_conv_params *p,
                       bool relu, bool add, float *scratch) {
  const int C = p->C, H = p->H, W = p->W, OC = p->OC;
  float *pad = scratch, *wt = scratch + pad_floats(p);
  for (int n = 0; n < p->N; n++) {
    const float *x = in + (size_t)n * C * H * W;
    float *y = out + (size_t)n * OC * p->OH * p->OW;
    if (in_place(p)) {
      direct_image(y, x, H, W, wt, b, relu, add, p);
    } else {
      pad_image(pad, x, p);
      direct_image(y, pad, padded_rows(p), phase_cols(p), wt, b, relu, add, p);
    }
  }
}

/* The weights w (OC, C, KH, KW) of p laid out after its padded copy in scratch. */
static void forward_weights(float *scratch, const float *w, const pt_conv_params *p) {
  const int C = p->C, KH = p->KH, KW = p->KW;
#define FWD_W(oc, c, kh, kw) w[(((size_t)(oc)*C + (c)) * KH + (kh)) * KW + (kw)]
  LAY_OUT_WEIGHTS(scratch + pad_floats(p), p, FWD_W, (size_t)C * KH * KW);
#undef FWD_W
}

void pt_direct_forward(float *out, const float *in, const float *w, const float *b,
                       const pt_conv_params *p, bool relu, float *scratch) {
  forward_weights(scratch, w, p);
  direct_run(out, in, p->has_bias ? b : NULL, p, relu, false, scratch);
}

/* ---- gradients ----
 *
 * The input gradient runs on direct_image, as the stride-1 convolutions it is (data_phase), adding
 * into din. The weights' gradient has a kernel of its own (wg_block). Both allocate nothing; they
 * took over from oneDNN's direct kernels and dnnl_sgemm, which allocate at every call, for the
 * layers of the benchmark networks whose gradients cpu/wino.c does not run: on the first layers,
 * the 16-channel 3x3 layers and the heads they ran 0.5-1.1x as fast (docs/performance.md), the
 * 16-channel layers about even. */

bool pt_direct_grad_fits(const pt_conv_params *p) {
  return pt_direct_fits(p) && p->PT < p->KH && p->PB < p->KH && p->PL < p->KW && p->PR < p->KW &&
         p->OH == (p->H + p->PT + p->PB - p->KH) / p->SH + 1 &&
         p->OW == (p->W + p->PL + p->PR - p->KW) / p->SW + 1;
}

/* A stride-1 1x1 layer of 16 channels or more on either side: a plain matrix product reads its
 * tensors in place, and conv.c's sgemm ran 1x1 64->64 at 16x16 1.8x (input) and 2.2x (weights)
 * faster than these kernels. */
static bool wide_pointwise(const pt_conv_params *p) {
  return p->KH == 1 && p->KW == 1 && p->SH == 1 && p->SW == 1 && p->C >= 16 && p->OC >= 16;
}

bool pt_direct_weights_suit(const pt_conv_params *p) {
  return pt_direct_grad_fits(p) && !wide_pointwise(p);
}

/* Its vectors hold 16 input channels, and 16 columns of a row: 64->64 3x3 at 8x8 ran 1.5x slower
 * than im2col and the matrix product. */
bool pt_direct_data_suits(const pt_conv_params *p) {
  return pt_direct_grad_fits(p) && !wide_pointwise(p) && p->C >= 16 && p->W / p->SW >= 16;
}

/* Phase (ry, rx) of the input gradient: the input pixels (ry + SH i, rx + SW j). Pixel (i, j)
 * sums the taps kh = kh0 + SH m over output rows i + a - m (and likewise along the row): a
 * stride-1 convolution q of the output gradient with those taps turned by 180 degrees and the
 * channel axes swapped. At stride 1 there is one phase, the whole input gradient, padded by the
 * kernel size less one less the forward's padding. Pads may come out negative, or larger than
 * what is read (direct_run's copy leaves those rows and columns out). */
typedef struct phase {
  pt_conv_params q;
  int ry, rx, kh0, kw0;
} phase;

static phase data_phase(const pt_conv_params *p, int ry, int rx) {
  phase f;
  pt_conv_params *q = &f.q;
  *q = *p;
  f.ry = ry;
  f.rx = rx;
  f.kh0 = (ry + p->PT) % p->SH;
  f.kw0 = (rx + p->PL) % p->SW;
  const int a = (ry + p->PT) / p->SH, b = (rx + p->PL) / p->SW;
  q->N = 1;
  q->SH = q->SW = 1;
  q->has_bias = false;
  q->C = p->OC;
  q->H = p->OH;
  q->W = p->OW;
  q->OC = p->C;
  q->OH = ry < p->H ? (int)(((int64_t)p->H - ry + p->SH - 1) / p->SH) : 0;
  q->OW = rx < p->W ? (int)(((int64_t)p->W - rx + p->SW - 1) / p->SW) : 0;
  q->KH = f.kh0 < p->KH ? (int)(((int64_t)p->KH - f.kh0 + p->SH - 1) / p->SH) : 0;
  q->KW = f.kw0 < p->KW ? (int)(((int64_t)p->KW - f.kw0 + p->SW - 1) / p->SW) : 0;
  q->PT = q->KH - 1 - a;
  q->PL = q->KW - 1 - b;
  q->PB = q->OH - 1 + a - (p->OH - 1);
  q->PR = q->OW - 1 + b - (p->OW - 1);
  return f;
}

static bool phase_empty(const phase *f) {
  return f->q.KH < 1 || f->q.KW < 1 || f->q.OH < 1 || f->q.OW < 1;
}

static bool strided(const pt_conv_params *p) {
  return p->SH > 1 || p->SW > 1;
}

/* The phases that hold input pixels: a stride past the input's size leaves the rest empty. */
static int col_phases(const pt_conv_params *p) {
  return p->SW < p->W ? p->SW : p->W;
}

/* The input offset r (mod S) of the phase whose taps start at kernel offset i < tap_phases(S, K),
 * with a leading pad: (i - pad) mod S. It may fall past the input (then the phase is empty). */
static int64_t phase_at(int i, int pad, int S) {
  return (((int64_t)i - pad) % S + S) % S;
}

/* The phase whose taps start at kernel offsets (ti, tj) into f; false where it holds no pixel or
 * no tap. */
static bool tap_phase(const pt_conv_params *p, int ti, int tj, phase *f) {
  const int64_t ry = phase_at(ti, p->PT, p->SH), rx = phase_at(tj, p->PL, p->SW);
  if (ry >= p->H || rx >= p->W) return false;
  *f = data_phase(p, (int)ry, (int)rx);
  return !phase_empty(f);
}

static int64_t phase_rows(const pt_conv_params *p) {
  return ((int64_t)p->H + p->SH - 1) / p->SH;
}

static int64_t phase_cols_in(const pt_conv_params *p) {
  return ((int64_t)p->W + p->SW - 1) / p->SW;
}

/* The input gradient of one image's row phase, when strided: its column phases (at most the
 * input's width of them) of C x rows x cols floats, rows and cols the most any phase has,
 * interleaved into din from there. */
static int64_t row_phase_floats(const pt_conv_params *p) {
  return strided(p) ? (int64_t)col_phases(p) * p->C * phase_rows(p) * phase_cols_in(p) : 0;
}

/* The phases of a strided input gradient read one zero-padded copy of the output gradient,
 * padded by the most any phase needs: phase q starts top - q.PT rows and left - q.PL columns into
 * it. */
typedef struct shared_pad {
  int top, left, rows, cols;
} shared_pad;

static shared_pad common_pad(const pt_conv_params *p) {
  shared_pad s = {0, 0, 0, 0};
  bool first = true;
  int below = 0, right = 0; /* rows and columns each phase reads past its own padding */
  for (int ti = 0; ti < tap_phases(p->SH, p->KH); ti++)
    for (int tj = 0; tj < tap_phases(p->SW, p->KW); tj++) {
      phase f;
      if (!tap_phase(p, ti, tj, &f)) continue;
      const int r = f.q.OH + f.q.KH - 1 - f.q.PT, c = (f.q.OW + 15) / 16 * 16 + f.q.KW - 1 - f.q.PL;
      if (first || f.q.PT > s.top) s.top = f.q.PT;
      if (first || f.q.PL > s.left) s.left = f.q.PL;
      if (first || r > below) below = r;
      if (first || c > right) right = c;
      first = false;
    }
  s.rows = s.top + below;
  s.cols = s.left + right;
  return s;
}

/* Strided: the row phases' buffer, the shared copy, then the weights of the phase at work. At
 * stride 1: the one phase's padded copy and weights. */
static int64_t data_scratch(const pt_conv_params *p) {
  int64_t most = 0;
  for (int ti = 0; ti < tap_phases(p->SH, p->KH); ti++)
    for (int tj = 0; tj < tap_phases(p->SW, p->KW); tj++) {
      phase f;
      if (!tap_phase(p, ti, tj, &f)) continue;
      const int64_t s = strided(p) ? pt_direct_scratch(&f.q) - (int64_t)pad_floats(&f.q)
                                   : pt_direct_scratch(&f.q);
      if (s > most) most = s;
    }
  if (!strided(p)) return most;
  const shared_pad s = common_pad(p);
  return row_phase_floats(p) + (int64_t)p->OC * s.rows * s.cols + most;
}

/* One image's output gradient dy (OC, OH, OW) into the shared copy. Its rows are short (16 and
 * 32 floats in the autoencoder, a thousand of them a frame), so they are copied in vectors here
 * rather than through a call to memcpy each. */
PT_CLONES static void pad_shared(float *pad, const float *dy, const pt_conv_params *p,
                                 const shared_pad *s) {
  const int OH = p->OH, OW = p->OW;
  const int lo = s->left < 0 ? -s->left : 0, hi = OW < s->cols - s->left ? OW : s->cols - s->left;
  memset(pad, 0, sizeof(float) * (size_t)p->OC * s->rows * s->cols);
  if (hi <= lo) return;
  for (int oc = 0; oc < p->OC; oc++)
    for (int oy = 0; oy < OH; oy++) {
      const int py = oy + s->top;
      if (py < 0 || py >= s->rows) continue;
      float *d = pad + ((size_t)oc * s->rows + py) * s->cols + s->left + lo;
      const float *src = dy + ((size_t)oc * OH + oy) * OW + lo;
      int i = 0;
      for (; i + 16 <= hi - lo; i += 16) STORE16(d + i, LOAD16(src + i));
      for (; i < hi - lo; i++) d[i] = src[i];
    }
}

/* din (C, H, W) of one image += the row phase ry in t: column phase rx of channel c, row i, column
 * j at t[((rx * C + c) * R + i) * Q + j]. */
PT_CLONES static void interleave_add(float *din, const float *t, const pt_conv_params *p, int ry) {
  const int C = p->C, H = p->H, W = p->W, SH = p->SH, SW = p->SW;
  const int64_t R = phase_rows(p), Q = phase_cols_in(p), plane = (int64_t)C * R * Q;
  for (int c = 0; c < C; c++)
    for (int iy = ry, i = 0; iy < H; iy += SH, i++) {
      float *d = din + ((size_t)c * H + iy) * W;
      const float *s = t + ((size_t)c * R + i) * Q;
      if (SW == 2) { /* the common case, in vectors */
        const float *s1 = s + plane;
        int j = 0;
        for (; 2 * j + 1 < W; j++) {
          d[2 * j] += s[j];
          d[2 * j + 1] += s1[j];
        }
        if (2 * j < W) d[2 * j] += s[j];
        continue;
      }
      for (int ix = 0; ix < W; ix++) d[ix] += s[(ix % SW) * plane + ix / SW];
    }
}

/* q's weights for phase f, turned, for direct_image: q's output channels are p's input channels,
 * and the other way round. */
static void phase_weights(float *wt, const float *w, const pt_conv_params *p, const phase *f) {
  const pt_conv_params *q = &f->q;
  const int C = p->C, KH = p->KH, KW = p->KW, SH = p->SH, SW = p->SW, qKH = q->KH, qKW = q->KW;
#define DATA_W(c, oc, kh, kw)                                                                      \
  w[(((size_t)(oc)*C + (c)) * KH + f->kh0 + SH * (qKH - 1 - (kh))) * KW + f->kw0 +                 \
    SW * (qKW - 1 - (kw))]
  LAY_OUT_WEIGHTS(wt, q, DATA_W, (size_t)KH * KW);
#undef DATA_W
}

void pt_direct_backward_data(float *din, const float *dout, const float *w, const pt_conv_params *p,
                             float *scratch) {
  const int C = p->C, H = p->H, W = p->W, OC = p->OC;
  if (!strided(p)) {
    const phase f = data_phase(p, 0, 0);
    phase_weights(scratch + pad_floats(&f.q), w, p, &f);
    for (int n = 0; n < p->N; n++)
      direct_run(din + (size_t)n * C * H * W, dout + (size_t)n * OC * p->OH * p->OW, NULL, &f.q,
                 false, true, scratch);
    return;
  }
  const int64_t R = phase_rows(p), Q = phase_cols_in(p);
  const shared_pad s = common_pad(p);
  float *rows = scratch, *pad = rows + row_phase_floats(p),
        *wt = pad + (size_t)OC * s.rows * s.cols;
  for (int n = 0; n < p->N; n++) {
    pad_shared(pad, dout + (size_t)n * OC * p->OH * p->OW, p, &s);
    for (int ti = 0; ti < tap_phases(p->SH, p->KH); ti++) {
      const int64_t ry = phase_at(ti, p->PT, p->SH);
      if (ry >= p->H) continue;
      memset(rows, 0, sizeof(float) * (size_t)row_phase_floats(p));
      for (int tj = 0; tj < tap_phases(p->SW, p->KW); tj++) {
        phase f;
        if (!tap_phase(p, ti, tj, &f)) continue;
        const pt_conv_params *q = &f.q;
        phase_weights(wt, w, p, &f);
        /* into rows, as C planes of q->OH x q->OW, then spread over R x Q */
        float *t = rows + (size_t)f.rx * C * R * Q;
        direct_image(t, pad + (size_t)(s.top - q->PT) * s.cols + (s.left - q->PL), s.rows, s.cols,
                     wt, NULL, false, false, q);
        if (q->OW != Q || q->OH != R)
          for (int k = C * q->OH - 1; k >= 0; k--) { /* the last row moves first */
            const int c = k / q->OH, i = k % q->OH;
            memmove(t + ((size_t)c * R + i) * Q, t + (size_t)k * q->OW, sizeof(float) * q->OW);
          }
      }
      interleave_add(din + (size_t)n * C * H * W, rows, p, (int)ry);
    }
  }
}

/* The weights' gradient sums, over the output pixels, the output gradient's channels (a vector of
 * 16, from a pixel-major copy) times each tap's input value (broadcast). For one kernel row kh,
 * the taps (kw, c) of an output pixel are KW x C consecutive floats of a pixel-major padded copy
 * of the input, at constant offsets from the pixel's own: a block of up to WG_MAX of them stays in
 * registers while the pixels go by. Two output-channel blocks share each broadcast where there
 * are 32 channels or more. Layout: xp (Hp, Wp, C) zero-padded, then WG_SLACK floats a block may
 * read past its taps; dyt (OH * OW, OCp); dwt (KH, KW * C, OCp) the sums, added into dw at the
 * end. */
enum { WG_MAX = 28, WG_SLACK = 32 };

static int64_t wg_ocp(const pt_conv_params *p) {
  return (p->OC + 15) / 16 * 16;
}

static int64_t wg_xp(const pt_conv_params *p) {
  return (int64_t)(p->H + p->PT + p->PB) * (p->W + p->PL + p->PR) * p->C + WG_SLACK;
}

static int64_t wg_dyt(const pt_conv_params *p) {
  return (int64_t)p->OH * p->OW * wg_ocp(p);
}

static int64_t wg_dwt(const pt_conv_params *p) {
  return (int64_t)p->KH * p->KW * p->C * wg_ocp(p);
}

int64_t pt_direct_grad_scratch(const pt_conv_params *p) {
  const int64_t d = data_scratch(p), w = wg_xp(p) + wg_dyt(p) + wg_dwt(p);
  return d > w ? d : w;
}

/* One block: S taps (of which the first `used` are real) times OB output-channel blocks, summed
 * over every output pixel into dwt (rows of ocp floats, one per tap). x: the block's first tap
 * for output pixel (0, 0); xs: the floats between output rows; step: between pixels. */
INLINE void wg_block(const int S, const int OB, float *dwt, int used, const float *x, size_t xs,
                     int step, const float *dyt, int OH, int OW, int ocp) {
  v16 acc[WG_MAX];
  PT_UNROLL(28) for (int t = 0; t < S; t++) {
    PT_UNROLL(2) for (int b = 0; b < OB; b++) {
      acc[t * OB + b] = t < used ? LOAD16(dwt + (size_t)t * ocp + b * 16) : (v16){0};
    }
  }
  for (int oy = 0; oy < OH; oy++) {
    const float *xr = x + (size_t)oy * xs, *dr = dyt + (size_t)oy * OW * ocp;
    for (int ox = 0; ox < OW; ox++, xr += step, dr += ocp) {
      v16 d[2];
      PT_UNROLL(2) for (int b = 0; b < OB; b++) {
        d[b] = LOAD16(dr + b * 16);
      }
      PT_UNROLL(28) for (int t = 0; t < S; t++) {
        PT_UNROLL(2) for (int b = 0; b < OB; b++) {
          acc[t * OB + b] += xr[t] * d[b];
        }
      }
    }
  }
  PT_UNROLL(28) for (int t = 0; t < S && t < used; t++) {
    PT_UNROLL(2) for (int b = 0; b < OB; b++) {
      STORE16(dwt + (size_t)t * ocp + b * 16, acc[t * OB + b]);
    }
  }
}

/* wg_block with S the taps rounded up to a multiple of 4 (one channel block) or 2 (two): one
 * unrolled copy per S. */
PT_CLONES static void wg_run(int OB, int used, float *dwt, const float *x, size_t xs, int step,
                             const float *dyt, int OH, int OW, int ocp) {
  const int k = OB == 2 ? (used + 1) / 2 : (used + 3) / 4;
#define WG_CASE(K)                                                                                 \
  case K:                                                                                          \
    if (OB == 2)                                                                                   \
      wg_block(2 * K, 2, dwt, used, x, xs, step, dyt, OH, OW, ocp);                                \
    else                                                                                           \
      wg_block(4 * K, 1, dwt, used, x, xs, step, dyt, OH, OW, ocp);                                \
    return;
  switch (k < WG_MAX / 4 ? k : WG_MAX / 4) {
    WG_CASE(1)
    WG_CASE(2)
    WG_CASE(3)
    WG_CASE(4)
    WG_CASE(5)
    WG_CASE(6)
    WG_CASE(7)
  }
#undef WG_CASE
}

/* The weights' gradient of a 1x1 layer without padding: each entry is the dot product of an
 * output-gradient row and an input row, both read in place (NCHW), over the pixels. Blocks of
 * PW_O output by PW_C input channels sum in registers, 16 pixels a vector (the last partial
 * vector one by one); rows past the channels read `zero`, a row of zeros. */
enum { PW_O = 5, PW_C = 4 };

PT_CLONES static void pointwise_weights(float *dw, const float *dy, const float *x, int OC, int C,
                                        int64_t P, const float *zero) {
  const int64_t P16 = P / 16 * 16;
  for (int o0 = 0; o0 < OC; o0 += PW_O)
    for (int c0 = 0; c0 < C; c0 += PW_C) {
      const float *yr[PW_O], *xr[PW_C];
      for (int o = 0; o < PW_O; o++) yr[o] = o0 + o < OC ? dy + (o0 + o) * P : zero;
      for (int c = 0; c < PW_C; c++) xr[c] = c0 + c < C ? x + (c0 + c) * P : zero;
      v16 acc[PW_O * PW_C];
      for (int k = 0; k < PW_O * PW_C; k++) acc[k] = (v16){0};
      for (int64_t i = 0; i < P16; i += 16) {
        v16 a[PW_O], v[PW_C];
        for (int o = 0; o < PW_O; o++) a[o] = LOAD16(yr[o] + i);
        for (int c = 0; c < PW_C; c++) v[c] = LOAD16(xr[c] + i);
        for (int o = 0; o < PW_O; o++)
          for (int c = 0; c < PW_C; c++) acc[o * PW_C + c] += a[o] * v[c];
      }
      for (int o = 0; o < PW_O && o0 + o < OC; o++)
        for (int c = 0; c < PW_C && c0 + c < C; c++) {
          float lanes[16], s = 0;
          STORE16(lanes, acc[o * PW_C + c]);
          for (int l = 0; l < 16; l++) s += lanes[l];
          for (int64_t i = P16; i < P; i++) s += yr[o][i] * xr[c][i];
          dw[(size_t)(o0 + o) * C + c0 + c] += s;
        }
    }
}

void pt_direct_backward_weights(float *dw, const float *dout, const float *in,
                                const pt_conv_params *p, float *scratch) {
  if (p->KH == 1 && p->KW == 1 && !strided(p)) { /* no padding either: under the kernel size */
    const int64_t P = (int64_t)p->H * p->W;
    memset(scratch, 0, sizeof(float) * (size_t)P);
    for (int n = 0; n < p->N; n++)
      pointwise_weights(dw, dout + (size_t)n * p->OC * P, in + (size_t)n * p->C * P, p->OC, p->C, P,
                        scratch);
    return;
  }
  const int C = p->C, H = p->H, W = p->W, OC = p->OC, KH = p->KH, KW = p->KW;
  const int OH = p->OH, OW = p->OW, Wp = W + p->PL + p->PR, KWC = KW * C;
  const int ocp = (int)wg_ocp(p);
  /* floats between output pixels (a stride wider than the padded input leaves one pixel a row) */
  const int step = OW > 1 ? p->SW * C : C;
  float *xp = scratch, *dyt = xp + wg_xp(p), *dwt = dyt + wg_dyt(p);
  memset(dwt, 0, sizeof(float) * (size_t)wg_dwt(p));
  if (OC < ocp) /* the lanes past OC: zero once, the images' gradients fill the rest */
    memset(dyt, 0, sizeof(float) * (size_t)wg_dyt(p));
  /* the padding and the slack: zero once, the images fill the rest */
  const size_t row = (size_t)Wp * C, Hp = (size_t)(H + p->PT + p->PB);
  memset(xp, 0, sizeof(float) * row * (size_t)p->PT);
  memset(xp + (Hp - (size_t)p->PB) * row, 0, sizeof(float) * (row * (size_t)p->PB + WG_SLACK));
  for (int iy = 0; iy < H; iy++) {
    float *r = xp + (size_t)(iy + p->PT) * row;
    memset(r, 0, sizeof(float) * (size_t)p->PL * C);
    memset(r + (size_t)(p->PL + W) * C, 0, sizeof(float) * (size_t)p->PR * C);
  }
  for (int n = 0; n < p->N; n++) {
    const float *x = in + (size_t)n * C * H * W;
    for (int iy = 0; iy < H; iy++)
      pt_transpose(xp + ((size_t)(iy + p->PT) * Wp + p->PL) * C, (size_t)C, x + (size_t)iy * W,
                   (size_t)H * W, C, W);
    pt_transpose(dyt, (size_t)ocp, dout + (size_t)n * OC * OH * OW, (size_t)OH * OW, OC, OH * OW);
    for (int b0 = 0; b0 < ocp / 16; b0 += 2) {
      const int OB = ocp / 16 - b0 >= 2 ? 2 : 1, smax = WG_MAX / OB;
      const int nblk = (KWC + smax - 1) / smax, per = (KWC + nblk - 1) / nblk;
      for (int kh = 0; kh < KH; kh++)
        for (int j0 = 0; j0 < KWC; j0 += per)
          wg_run(OB, KWC - j0 < per ? KWC - j0 : per, dwt + ((size_t)kh * KWC + j0) * ocp + b0 * 16,
                 xp + (size_t)kh * Wp * C + j0, (size_t)p->SH * Wp * C, step, dyt + b0 * 16, OH, OW,
                 ocp);
    }
  }
  for (int oc = 0; oc < OC; oc++)
    for (int c = 0; c < C; c++)
      for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++)
          dw[(((size_t)oc * C + c) * KH + kh) * KW + kw] +=
              dwt[((size_t)kh * KWC + (size_t)kw * C + c) * ocp + oc];
}

/* ---- ConvTranspose ----
 *
 * A ConvTranspose p (C channels of H x W in, OC of OH x OW out, weights (C, OC, KH, KW)) is the
 * input gradient of the convolution from OC channels of OH x OW to C of H x W with the same
 * weights and geometry: its forward runs as that gradient, its input gradient as that
 * convolution's forward, and its weights' gradient as that convolution's with the roles of input
 * and output gradient swapped. */
static pt_conv_params transposed(const pt_conv_params *p) {
  pt_conv_params c = *p;
  c.C = p->OC;
  c.H = p->OH;
  c.W = p->OW;
  c.OC = p->C;
  c.OH = p->H;
  c.OW = p->W;
  c.has_bias = false;
  return c;
}

bool pt_direct_transpose_fits(const pt_conv_params *p) {
  const pt_conv_params c = transposed(p);
  return pt_direct_grad_fits(&c);
}

int64_t pt_direct_transpose_scratch(const pt_conv_params *p) {
  const pt_conv_params c = transposed(p);
  const int64_t f = pt_direct_scratch(&c), g = pt_direct_grad_scratch(&c);
  return f > g ? f : g;
}

void pt_direct_transpose_forward(float *out, const float *in, const float *w, const float *b,
                                 const pt_conv_params *p, float *scratch) {
  const pt_conv_params c = transposed(p);
  const int64_t P = (int64_t)p->OH * p->OW;
  for (int n = 0; n < p->N; n++)
    for (int oc = 0; oc < p->OC; oc++) {
      float *o = out + ((size_t)n * p->OC + oc) * P;
      const float v = p->has_bias && b ? b[oc] : 0.0f;
      for (int64_t i = 0; i < P; i++) o[i] = v;
    }
  pt_direct_backward_data(out, in, w, &c, scratch);
}

void pt_direct_transpose_backward(float *din, float *dw, const float *dout, const float *in,
                                  const float *w, const pt_conv_params *p, float *scratch) {
  const pt_conv_params c = transposed(p);
  if (dw) pt_direct_backward_weights(dw, in, dout, &c, scratch);
  if (din) {
    forward_weights(scratch, w, &c);
    direct_run(din, dout, NULL, &c, false, true, scratch);
  }
}
