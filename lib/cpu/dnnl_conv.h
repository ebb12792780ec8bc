/* Conv and ConvTranspose through oneDNN (internal): a per-node plan made once by the executor.
 *
 * A plan holds everything one node needs to run on oneDNN's blocked-layout kernels: its own engine
 * and stream, the primitives (forward; with `train` also backward data and backward weights), the
 * reorders between the caller's NCHW / ONNX weight layouts and oneDNN's, the blocked buffers and a
 * scratchpad. Each of the three computations runs on oneDNN or, where oneDNN is slower for the
 * shape (few channels, which its kernels pad to a block of 16), on conv.c, cpu/wino.c (3x3 and
 * 5x5 Winograd) or cpu/direct.c (the forward of layers of few taps), with scratch the plan holds.
 * Those run without allocating; a oneDNN primitive execution builds its argument map on the heap
 * inside oneDNN. Plans share no state, so two executors (or two streams) in one process are
 * independent and may run at once on different threads.
 *
 * The functions compute exactly what pt_conv2d_* / pt_conv_transpose2d_* in ops.h compute, with
 * the same arguments and the same accumulate rule: forward overwrites out; backward adds into din,
 * dw and db and skips any that is NULL. Backward reuses the blocked copies of `in` and `w` that the
 * latest forward of the plan made when it is handed the same pointers, so between the two the
 * caller must not change what they point to (the executor never does: a tick's backward follows
 * its forward).
 *
 * Inference plans (made without `train`) reorder the weights once and keep the blocked copy while
 * forward is handed the same weights pointer: weights changed in place need
 * pt_dnnl_conv_weights_changed(). Plans with `train` reorder them at every forward (an optimizer
 * step changes them between ticks).
 *
 * Every call runs on the calling thread alone: the calling thread's OpenMP thread count is set to
 * one around each oneDNN call and restored after, so a stage never spreads over other cores and a
 * given shape always runs the same kernel (results are bit-identical from run to run).
 *
 * Built without oneDNN, pt_dnnl_available() is false and no plan can be made. */
#ifndef PT_CPU_DNNL_CONV_H
#define PT_CPU_DNNL_CONV_H

#include <stdbool.h>
#include <partime/status.h>
#include "ops.h"

typedef struct pt_dnnl_conv pt_dnnl_conv;

/* The three computations of a layer, each of which a plan runs on oneDNN or on conv.c. */
enum {
  PT_DNNL_FORWARD = 1,
  PT_DNNL_BACKWARD_DATA = 2,    /* din */
  PT_DNNL_BACKWARD_WEIGHTS = 4, /* dw and db */
  PT_DNNL_ALL = 7,
  /* with the above: leave on conv.c any computation for which oneDNN picks no JIT-compiled
   * blocked-layout kernel (its reference or plain-layout gemm kernels are slower than conv.c) */
  PT_DNNL_JIT_ONLY = 8,
  /* with the above: forward writes relu(conv), as a Relu node after it would (pt_relu_f, which
   * passes NaN on): a oneDNN post-op while the inputs are finite, else a pass over the output.
   * Backward needs nothing new: relu'(x) = [x > 0] = [relu(x) > 0], NaN included. */
  PT_DNNL_RELU = 16,
  /* with the above: a 3x3 or 5x5 stride-1 layer (pt_wino_fits) runs the computations on
   * cpu/wino.c (F(2x2, 3x3) or F(2x2, 5x5)), in NCHW: the forward, the weights' gradient, and the
   * input gradient where cpu/wino.c takes it (pt_wino_backward_data_fits; else oneDNN's direct
   * kernels or conv.c). oneDNN's own Winograd kernels are not used: they were no faster on these
   * layers, and gave a wrong input gradient for a 3x3 layer of 15 input channels with pads
   * 0, 0, 1, 0. Results differ from
   * the direct kernels' by rounding (about 1e-6 of the output's scale, up to 1e-5 for the 5x5
   * weights' gradient) and are as reproducible; a NaN in the input spreads over the whole 2x2
   * output tiles around it, not only the outputs whose window holds it. */
  PT_DNNL_WINOGRAD = 32,
};

/* True when the library was built with oneDNN. */
bool pt_dnnl_available(void);

/* The static rule the executor follows: the computations (PT_DNNL_* bits) of a layer of shape p
 * that oneDNN's kernels, reorders included, ran faster than conv.c in bench/conv_bench, with
 * PT_DNNL_WINOGRAD where Winograd ran faster than direct convolution; 0 for none, and always 0
 * without oneDNN. */
unsigned pt_dnnl_conv_preferred(const pt_conv_params *p, bool transpose);

/* A plan for Conv (or ConvTranspose with `transpose`) of shape p that runs the computations in
 * `ops` on oneDNN and the others on conv.c; without `train`, forward only. NULL when no
 * computation is left on oneDNN, oneDNN has no implementation for the shape, or memory runs out:
 * err then says why, and the caller uses conv.c for the whole layer. */
pt_dnnl_conv *pt_dnnl_conv_plan_create(const pt_conv_params *p, bool transpose, bool train,
                                       unsigned ops, pt_error *err);
void pt_dnnl_conv_plan_free(pt_dnnl_conv *plan);

/* Tells plan `to` that its forward input is plan `from`'s forward output (through a fused ReLU at
 * most), which nothing else reads or changes, and that each forward of to follows one of from:
 * to then trusts from's finiteness checks (PT_DNNL_RELU) instead of repeating them. Returns
 * whether the two also share that tensor in another layout, skipping the conversions to NCHW and
 * back: in oneDNN's blocked layout between inference plans whose forwards both run on oneDNN,
 * from's output layout being to's input layout and from adding no bias outside oneDNN; or
 * pixel-major between inference plans whose forwards both run on F(4x4, 3x3) (pt_wino4_link).
 * from's forward then leaves its `out` unwritten and to's ignores its `in`. A plan is linked to at
 * most one before it; from must outlive to. */
bool pt_dnnl_conv_link(pt_dnnl_conv *from, pt_dnnl_conv *to);

/* Drops an inference plan's blocked copy of the weights, for weights changed in place. */
void pt_dnnl_conv_weights_changed(pt_dnnl_conv *plan);

/* The computations the plan runs on oneDNN (PT_DNNL_* bits). */
unsigned pt_dnnl_conv_ops(const pt_dnnl_conv *plan);
/* oneDNN's name of the kernel of the plan's forward, or "gemm" when conv.c runs it. */
const char *pt_dnnl_conv_impl(const pt_dnnl_conv *plan);

/* out (N, OC, OH, OW), in (N, C, H, W), w (OC, C/G, KH, KW) for Conv or (C, OC/G, KH, KW) for
 * ConvTranspose, b (OC) or NULL. */
void pt_dnnl_conv_forward(pt_dnnl_conv *plan, float *out, const float *in, const float *w,
                          const float *b);
/* din, dw, db shaped like in, w, b: each added into, each may be NULL. Needs a `train` plan (a
 * plan made without does nothing). */
void pt_dnnl_conv_backward(pt_dnnl_conv *plan, float *din, float *dw, float *db, const float *dout,
                           const float *in, const float *w);

#endif
