/* GStreamer partimenet: the metadata the partimenet element reads and writes.
 *
 * GstPartimenetMeta carries the result of one frame: the model's output tensor, top-k classes
 * with scores and label names, the training loss (the anomaly score of a reconstruction model) and
 * the training step. The element attaches it to the very buffer the result belongs to, D - 1
 * frames after that buffer entered (D stages).
 *
 * GstPartimenetTargetMeta is what an application attaches to an input buffer to teach the model
 * with a supervised loss: a class index (cross-entropy) or a float tensor of the output's shape
 * (mse).
 *
 * Both live in libgstpartimenetmeta so that applications can link against them; the element
 * registers them too, so a Python application can read the same results from the element's bus
 * messages without linking anything.
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifndef __GST_PARTIMENET_META_H__
#define __GST_PARTIMENET_META_H__

#include <gst/gst.h>

G_BEGIN_DECLS

#ifndef GST_PARTIMENET_META_API
# if defined (BUILDING_GST_PARTIMENET_META) && defined (__GNUC__)
#  define GST_PARTIMENET_META_API extern __attribute__ ((visibility ("default")))
# else
#  define GST_PARTIMENET_META_API extern
# endif
#endif

/**
 * GST_PARTIMENET_MAX_TOP_K:
 *
 * The largest number of classes a #GstPartimenetMeta ranks.
 */
#define GST_PARTIMENET_MAX_TOP_K 32

/**
 * GST_PARTIMENET_MAX_DIMS:
 *
 * The largest rank of an output tensor.
 */
#define GST_PARTIMENET_MAX_DIMS 6

#define GST_PARTIMENET_META_API_TYPE (gst_partimenet_meta_api_get_type ())
#define GST_PARTIMENET_META_INFO (gst_partimenet_meta_get_info ())

#define GST_PARTIMENET_TARGET_META_API_TYPE (gst_partimenet_target_meta_api_get_type ())
#define GST_PARTIMENET_TARGET_META_INFO (gst_partimenet_target_meta_get_info ())

typedef struct _GstPartimenetMeta GstPartimenetMeta;
typedef struct _GstPartimenetTargetMeta GstPartimenetTargetMeta;

/**
 * GstPartimenetMeta:
 * @meta: the parent #GstMeta
 * @frame: index of the frame, counted from 0 since the element started
 * @stages: number of pipeline stages D the frame went through
 * @loss: the frame's training loss, NaN when none was computed; with a reconstruction loss this
 *   is the frame's anomaly score
 * @trained: whether the last stage learned from this frame
 * @step: number of optimizer steps the last stage had taken after this frame
 * @output: the model's output for this frame, @output_size floats in C order (NCHW); owned by
 *   the meta and valid as long as the meta
 * @output_size: number of floats in @output
 * @output_ndim: rank of the output
 * @output_shape: the output's dimensions
 * @n_top: number of valid entries in @class_ids, @scores and @labels (0 when the output is not a
 *   class vector)
 * @class_ids: the top classes, best first
 * @scores: their probabilities (the softmax of the output unless the model ends in a Softmax)
 * @labels: their names from the element's labels file, or %NULL; the strings are interned and
 *   never freed
 *
 * The result of one frame.
 */
struct _GstPartimenetMeta
{
  GstMeta meta;

  guint64 frame;
  guint stages;
  gfloat loss;
  gboolean trained;
  gint64 step;

  const gfloat *output;
  gsize output_size;
  guint output_ndim;
  gint64 output_shape[GST_PARTIMENET_MAX_DIMS];

  guint n_top;
  gint class_ids[GST_PARTIMENET_MAX_TOP_K];
  gfloat scores[GST_PARTIMENET_MAX_TOP_K];
  const gchar *labels[GST_PARTIMENET_MAX_TOP_K];

  /*< private >*/
  GstBuffer *tensor;            /* holds @output (mapped), shared between copies */
  GstMapInfo tensor_map;
  gpointer _gst_reserved[GST_PADDING];
};

/**
 * GstPartimenetTargetMeta:
 * @meta: the parent #GstMeta
 * @class_index: the class of the frame for a cross-entropy loss, -1 when none
 * @tensor: the target tensor for an mse loss (@tensor_size floats of the output's shape), or
 *   %NULL; owned by the meta
 * @tensor_size: number of floats in @tensor
 *
 * The training target of one input frame.
 */
struct _GstPartimenetTargetMeta
{
  GstMeta meta;

  gint64 class_index;
  gfloat *tensor;
  gsize tensor_size;

  /*< private >*/
  gpointer _gst_reserved[GST_PADDING];
};

GST_PARTIMENET_META_API
GType gst_partimenet_meta_api_get_type (void);

GST_PARTIMENET_META_API
const GstMetaInfo *gst_partimenet_meta_get_info (void);

GST_PARTIMENET_META_API
GType gst_partimenet_target_meta_api_get_type (void);

GST_PARTIMENET_META_API
const GstMetaInfo *gst_partimenet_target_meta_get_info (void);

/**
 * gst_buffer_get_partimenet_meta:
 * @buffer: a #GstBuffer
 *
 * Returns: (transfer none) (nullable): the partimenet result on @buffer, or %NULL
 */
GST_PARTIMENET_META_API
GstPartimenetMeta *gst_buffer_get_partimenet_meta (GstBuffer * buffer);

/**
 * gst_buffer_add_partimenet_meta:
 * @buffer: a writable #GstBuffer
 *
 * Adds an empty result (no output, NaN loss). The element fills it with
 * gst_partimenet_meta_set_output().
 *
 * Returns: (transfer none): the new meta
 */
GST_PARTIMENET_META_API
GstPartimenetMeta *gst_buffer_add_partimenet_meta (GstBuffer * buffer);

/**
 * gst_partimenet_meta_set_output:
 * @meta: a #GstPartimenetMeta
 * @tensor: (transfer full): a buffer in system memory holding @ndim dimensions' worth of floats
 * @ndim: rank of the output, at most %GST_PARTIMENET_MAX_DIMS
 * @shape: (array length=ndim): the dimensions
 *
 * Makes @meta hold @tensor as its output. Buffers from a #GstBufferPool let the element reuse the
 * memory of results once downstream has let go of them.
 *
 * Returns: %TRUE on success
 */
GST_PARTIMENET_META_API
gboolean gst_partimenet_meta_set_output (GstPartimenetMeta * meta,
    GstBuffer * tensor, guint ndim, const gint64 * shape);

/**
 * gst_buffer_add_partimenet_target_meta:
 * @buffer: a writable #GstBuffer
 * @class_index: the frame's class (cross-entropy), or -1
 * @tensor: (array length=tensor_size) (nullable): the target tensor (mse), copied; or %NULL
 * @tensor_size: number of floats in @tensor
 *
 * Attaches a training target to an input frame of the partimenet element.
 *
 * Returns: (transfer none): the new meta
 */
GST_PARTIMENET_META_API
GstPartimenetTargetMeta *gst_buffer_add_partimenet_target_meta (GstBuffer *
    buffer, gint64 class_index, const gfloat * tensor, gsize tensor_size);

/**
 * gst_buffer_get_partimenet_target_meta:
 * @buffer: a #GstBuffer
 *
 * Returns: (transfer none) (nullable): the training target on @buffer, or %NULL
 */
GST_PARTIMENET_META_API
GstPartimenetTargetMeta *gst_buffer_get_partimenet_target_meta (GstBuffer *
    buffer);

G_END_DECLS

#endif /* __GST_PARTIMENET_META_H__ */
