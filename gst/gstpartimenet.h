/* GStreamer partimenet: the element that runs a neural network as a pipeline of stages over time
 * on every video frame and keeps learning from the stream (see gstpartimenet.c).
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifndef __GST_PARTIMENET_H__
#define __GST_PARTIMENET_H__

#include <gst/gst.h>
#include <gst/base/gstqueuearray.h>
#include <gst/video/video.h>
#include <partime/partime.h>

G_BEGIN_DECLS

#define GST_TYPE_PARTIMENET (gst_partimenet_get_type ())
G_DECLARE_FINAL_TYPE (GstPartimenet, gst_partimenet, GST, PARTIMENET,
    GstElement);

/**
 * GstPartimenetOverload:
 * @GST_PARTIMENET_OVERLOAD_BLOCK: every frame is processed; a slow network back-pressures
 *   upstream
 * @GST_PARTIMENET_OVERLOAD_DROP: a late frame skips the network and passes through without
 *   results
 * @GST_PARTIMENET_OVERLOAD_DISCARD: a late frame skips the network and is not passed on
 *
 * What happens to a frame that arrives too late to be processed in time: downstream said so
 * (QoS), it reached the element late against a live clock, or the network had not finished
 * the previous frame's first or last stage yet.
 */
typedef enum
{
  GST_PARTIMENET_OVERLOAD_BLOCK,
  GST_PARTIMENET_OVERLOAD_DROP,
  GST_PARTIMENET_OVERLOAD_DISCARD,
} GstPartimenetOverload;

/**
 * GstPartimenetLoss:
 * @GST_PARTIMENET_LOSS_AUTO: reconstruction when the output has the input's shape, else
 *   cross-entropy
 * @GST_PARTIMENET_LOSS_NONE: no loss: inference only
 * @GST_PARTIMENET_LOSS_CROSS_ENTROPY: class targets from #GstPartimenetTargetMeta
 * @GST_PARTIMENET_LOSS_MSE: tensor targets from #GstPartimenetTargetMeta
 * @GST_PARTIMENET_LOSS_RECONSTRUCTION: the target is the input frame itself
 * @GST_PARTIMENET_LOSS_NEXT_FRAME: the target is the next input frame
 *
 * The training loss.
 */
typedef enum
{
  GST_PARTIMENET_LOSS_AUTO,
  GST_PARTIMENET_LOSS_NONE,
  GST_PARTIMENET_LOSS_CROSS_ENTROPY,
  GST_PARTIMENET_LOSS_MSE,
  GST_PARTIMENET_LOSS_RECONSTRUCTION,
  GST_PARTIMENET_LOSS_NEXT_FRAME,
} GstPartimenetLoss;

/**
 * GstPartimenetOptimizer:
 * @GST_PARTIMENET_OPTIMIZER_SGD: stochastic gradient descent with momentum
 * @GST_PARTIMENET_OPTIMIZER_ADAM: Adam
 *
 * The optimizer every stage steps at every tick.
 */
typedef enum
{
  GST_PARTIMENET_OPTIMIZER_SGD,
  GST_PARTIMENET_OPTIMIZER_ADAM,
} GstPartimenetOptimizer;

GST_ELEMENT_REGISTER_DECLARE (partimenet);

G_END_DECLS

#endif /* __GST_PARTIMENET_H__ */
