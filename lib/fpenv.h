/* Subnormal floats (magnitude below 1.2e-38). An x86 core computes with them in microcode, about a
 * hundred times slower than with normal floats, and training drives values there: with
 * cross-entropy and Adam on `large`, tens of thousands of the gradients flowing back through the
 * convolutions are subnormal each frame after the first hundred, and a frame takes four times as
 * long. So the library computes with FTZ (subnormal results become zero) and DAZ (subnormal inputs
 * read as zero) set in MXCSR, bits 15 and 6; nothing a network computes depends on values that
 * small. Stage threads set them once and keep them; code that computes on the caller's thread
 * (an unthreaded stream's ticks, the partitioner's timing) sets them and gives the caller its own
 * setting back after. Other architectures keep their default. */
#ifndef PT_FPENV_H
#define PT_FPENV_H

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>

/* Sets FTZ and DAZ; returns the previous control word for pt_fp_restore. */
static inline unsigned pt_fp_flush_subnormals(void) {
  unsigned prev = _mm_getcsr();
  _mm_setcsr(prev | 0x8040u);
  return prev;
}

static inline void pt_fp_restore(unsigned prev) {
  _mm_setcsr(prev);
}
#else
static inline unsigned pt_fp_flush_subnormals(void) {
  return 0;
}

static inline void pt_fp_restore(unsigned prev) {
  (void)prev;
}
#endif

#endif
