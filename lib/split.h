/* A convolution split across a stage cut by output channels (internal).
 *
 * Stage i computes output channels [0, C) of the convolution and stage i + 1 the rest; stage i + 1
 * joins the two halves with a Concat. Where an elementwise activation is the convolution's only
 * reader it moves with each half (it commutes with the Concat), so both halves keep their fused
 * activation and the cut follows an activation, as auto prefers; unless stage i + 1 holds nothing
 * but the rest of the convolution, when the activation begins stage i + 2 as it is.
 *
 * The stream runs a derived graph: the model's values (their data shared, not copied), the split
 * nodes replaced by conv_a [act_a] conv_b [act_b] concat, and the weights and bias of each half as
 * parameters aliasing the rows of the original initializer. Output channels are the leading
 * dimension of the weights, so each half is contiguous; training updates the model's own weights in
 * place and a saved model has the original graph. */
#ifndef PT_SPLIT_H
#define PT_SPLIT_H

#include "partition.h"

/* The channel step auto uses to split node i (16 or 8 where the output channels allow, so halves
 * keep oneDNN's vector blocks), or 0 where node i cannot be split: not a Conv, grouped, or with
 * weights that are not initializers. */
int pt_split_step(const pt_model *m, int i);

/* True when node i (splittable) is read only by an elementwise activation at node i + 1, which then
 * moves with each half. */
bool pt_split_carries_act(const pt_model *m, int i);

/* Why node i cannot be split at C output channels, or NULL when it can. */
const char *pt_split_refusal(const pt_model *m, int i, int C);

/* The derived graph for partition p (which has at least one split) and its stage ranges:
 * stage j runs derived nodes [first[j], first[j + 1]). Free with pt_split_free(). */
pt_status pt_split_derive(const pt_model *m, const pt_partition *p, pt_model **out, int *first,
                          pt_error *err);
void pt_split_free(pt_model *d);

#endif
