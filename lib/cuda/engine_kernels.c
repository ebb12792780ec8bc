/* The engine's device-side decisions (see engine_kernels.h). The rules mirror run_tick() in
 * ../stream.c: a stage updates when its gradient is real and everything it computed is finite; the
 * last stage's gradient is real when its loss is finite, and a non-finite loss counts as a bad
 * tick; guard_limit bad ticks in a row restore the backup and reset the optimizer. */
#include <math.h>
#include "launch.h"
#include "engine_kernels.h"

static PT_HD void ptk_tick_begin_body(int64_t i, const ptk_tick_begin_args *a) {
  (void)i;
  pt_tick_state *st = a->st;
  st->real = a->flag ? *a->flag != 0.0f : (a->loss && isfinite(*a->loss));
  st->finite = 1;
}
PT_KERNEL(ptk_tick_begin, ptk_tick_begin_args)

static PT_HD void ptk_tick_decide_body(int64_t i, const ptk_tick_decide_args *a) {
  (void)i;
  pt_tick_state *st = a->st;
  st->ok = st->real && st->finite;
  st->bad = a->last ? !st->ok : (st->real && !st->finite);
  if (a->out_flag) *a->out_flag = st->ok ? 1.0f : 0.0f;
  st->backup_now = 0;
  st->restore_now = 0;
  if (st->ok) {
    st->t++;
    st->updates++;
    st->bad_run = 0;
    st->good_updates++;
    st->backup_now = st->good_updates % a->backup_every == 0;
  }
  if (st->bad) {
    st->bad_run++;
    st->skipped++;
  }
  if (a->guard_limit > 0 && st->bad_run >= a->guard_limit) {
    st->restore_now = 1;
    st->bad_run = 0;
    st->restores++;
    st->t = 0;
  }
}
PT_KERNEL(ptk_tick_decide, ptk_tick_decide_args)

static PT_HD void ptk_zero_if_body(int64_t i, const ptk_zero_if_args *a) {
  if (*a->cond) a->y[i] = 0.0f;
}
PT_KERNEL(ptk_zero_if, ptk_zero_if_args)

static PT_HD void ptk_set_body(int64_t i, const ptk_set_args *a) {
  (void)i;
  *a->y = a->value;
}
PT_KERNEL(ptk_set, ptk_set_args)

static PT_HD void ptk_unpack_u8_body(int64_t i, const ptk_unpack_args *a) {
  int64_t plane = (int64_t)a->W * a->H;
  int c = (int)(i / plane);
  int64_t p = i - c * plane;
  int64_t y = p / a->W, x = p - y * a->W;
  a->out[i] = (float)a->src[y * a->pitch + x * a->ps + a->off[c]] * a->a[c] + a->b[c];
}
PT_KERNEL(ptk_unpack_u8, ptk_unpack_args)
