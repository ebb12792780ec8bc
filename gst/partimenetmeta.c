/* GStreamer partimenet: result and target metadata (see partimenetmeta.h).
 *
 * The result meta keeps its output tensor in a GstBuffer, usually one from the element's buffer
 * pool, mapped for as long as the meta lives: copies of the meta (a tee, a writable copy of the
 * frame) share it by reference, and when the last one goes the memory returns to the pool, so the
 * element allocates nothing per frame once the pool is warm.
 *
 * Neither meta has tags: a classification or a loss stays true of a frame that is scaled or
 * converted downstream, so transforms keep them.
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <string.h>

#define BUILDING_GST_PARTIMENET_META
#include "partimenetmeta.h"

/* ---- result meta ---- */

GType
gst_partimenet_meta_api_get_type (void)
{
  static GType type = 0;
  static const gchar *tags[] = { NULL };

  if (g_once_init_enter (&type)) {
    GType t = gst_meta_api_type_register ("GstPartimenetMetaAPI", tags);
    g_once_init_leave (&type, t);
  }
  return type;
}

static void
partimenet_meta_clear_tensor (GstPartimenetMeta * m)
{
  if (m->tensor) {
    gst_buffer_unmap (m->tensor, &m->tensor_map);
    gst_buffer_unref (m->tensor);
    m->tensor = NULL;
  }
  m->output = NULL;
  m->output_size = 0;
}

static gboolean
partimenet_meta_init (GstMeta * meta, gpointer params, GstBuffer * buffer)
{
  GstPartimenetMeta *m = (GstPartimenetMeta *) meta;

  m->frame = 0;
  m->stages = 0;
  m->loss = NAN;
  m->trained = FALSE;
  m->step = 0;
  m->output = NULL;
  m->output_size = 0;
  m->output_ndim = 0;
  memset (m->output_shape, 0, sizeof (m->output_shape));
  m->n_top = 0;
  memset (m->labels, 0, sizeof (m->labels));
  m->tensor = NULL;
  return TRUE;
}

static void
partimenet_meta_free (GstMeta * meta, GstBuffer * buffer)
{
  partimenet_meta_clear_tensor ((GstPartimenetMeta *) meta);
}

static gboolean
partimenet_meta_transform (GstBuffer * dest, GstMeta * meta,
    GstBuffer * buffer, GQuark type, gpointer data)
{
  GstPartimenetMeta *src = (GstPartimenetMeta *) meta;
  GstPartimenetMeta *dst;

  /* the result describes the frame's content, which any transform keeps */
  dst = gst_buffer_add_partimenet_meta (dest);
  if (!dst)
    return FALSE;

  dst->frame = src->frame;
  dst->stages = src->stages;
  dst->loss = src->loss;
  dst->trained = src->trained;
  dst->step = src->step;
  dst->n_top = src->n_top;
  memcpy (dst->class_ids, src->class_ids, sizeof (src->class_ids));
  memcpy (dst->scores, src->scores, sizeof (src->scores));
  memcpy (dst->labels, src->labels, sizeof (src->labels));
  if (src->tensor)
    gst_partimenet_meta_set_output (dst, gst_buffer_ref (src->tensor),
        src->output_ndim, src->output_shape);
  return TRUE;
}

const GstMetaInfo *
gst_partimenet_meta_get_info (void)
{
  static const GstMetaInfo *info = NULL;

  if (g_once_init_enter ((GstMetaInfo **) & info)) {
    const GstMetaInfo *mi = gst_meta_register (GST_PARTIMENET_META_API_TYPE,
        "GstPartimenetMeta", sizeof (GstPartimenetMeta),
        partimenet_meta_init, partimenet_meta_free, partimenet_meta_transform);
    g_once_init_leave ((GstMetaInfo **) & info, (GstMetaInfo *) mi);
  }
  return info;
}

GstPartimenetMeta *
gst_buffer_get_partimenet_meta (GstBuffer * buffer)
{
  g_return_val_if_fail (GST_IS_BUFFER (buffer), NULL);
  return (GstPartimenetMeta *) gst_buffer_get_meta (buffer,
      GST_PARTIMENET_META_API_TYPE);
}

GstPartimenetMeta *
gst_buffer_add_partimenet_meta (GstBuffer * buffer)
{
  g_return_val_if_fail (GST_IS_BUFFER (buffer), NULL);
  return (GstPartimenetMeta *) gst_buffer_add_meta (buffer,
      GST_PARTIMENET_META_INFO, NULL);
}

gboolean
gst_partimenet_meta_set_output (GstPartimenetMeta * meta, GstBuffer * tensor,
    guint ndim, const gint64 * shape)
{
  guint i;

  g_return_val_if_fail (meta != NULL, FALSE);
  g_return_val_if_fail (GST_IS_BUFFER (tensor), FALSE);

  partimenet_meta_clear_tensor (meta);
  if (ndim > GST_PARTIMENET_MAX_DIMS
      || !gst_buffer_map (tensor, &meta->tensor_map, GST_MAP_READ)) {
    gst_buffer_unref (tensor);
    return FALSE;
  }
  meta->tensor = tensor;
  meta->output = (const gfloat *) meta->tensor_map.data;
  meta->output_size = meta->tensor_map.size / sizeof (gfloat);
  meta->output_ndim = ndim;
  for (i = 0; i < GST_PARTIMENET_MAX_DIMS; i++)
    meta->output_shape[i] = i < ndim ? shape[i] : 0;
  return TRUE;
}

/* ---- target meta ---- */

GType
gst_partimenet_target_meta_api_get_type (void)
{
  static GType type = 0;
  static const gchar *tags[] = { NULL };

  if (g_once_init_enter (&type)) {
    GType t = gst_meta_api_type_register ("GstPartimenetTargetMetaAPI", tags);
    g_once_init_leave (&type, t);
  }
  return type;
}

static gboolean
partimenet_target_meta_init (GstMeta * meta, gpointer params,
    GstBuffer * buffer)
{
  GstPartimenetTargetMeta *m = (GstPartimenetTargetMeta *) meta;

  m->class_index = -1;
  m->tensor = NULL;
  m->tensor_size = 0;
  return TRUE;
}

static void
partimenet_target_meta_free (GstMeta * meta, GstBuffer * buffer)
{
  GstPartimenetTargetMeta *m = (GstPartimenetTargetMeta *) meta;

  g_free (m->tensor);
  m->tensor = NULL;
}

static gboolean
partimenet_target_meta_transform (GstBuffer * dest, GstMeta * meta,
    GstBuffer * buffer, GQuark type, gpointer data)
{
  GstPartimenetTargetMeta *src = (GstPartimenetTargetMeta *) meta;

  return gst_buffer_add_partimenet_target_meta (dest, src->class_index,
      src->tensor, src->tensor_size) != NULL;
}

const GstMetaInfo *
gst_partimenet_target_meta_get_info (void)
{
  static const GstMetaInfo *info = NULL;

  if (g_once_init_enter ((GstMetaInfo **) & info)) {
    const GstMetaInfo *mi =
        gst_meta_register (GST_PARTIMENET_TARGET_META_API_TYPE,
        "GstPartimenetTargetMeta", sizeof (GstPartimenetTargetMeta),
        partimenet_target_meta_init, partimenet_target_meta_free,
        partimenet_target_meta_transform);
    g_once_init_leave ((GstMetaInfo **) & info, (GstMetaInfo *) mi);
  }
  return info;
}

GstPartimenetTargetMeta *
gst_buffer_add_partimenet_target_meta (GstBuffer * buffer, gint64 class_index,
    const gfloat * tensor, gsize tensor_size)
{
  GstPartimenetTargetMeta *m;

  g_return_val_if_fail (GST_IS_BUFFER (buffer), NULL);
  g_return_val_if_fail (tensor != NULL || tensor_size == 0, NULL);

  m = (GstPartimenetTargetMeta *) gst_buffer_add_meta (buffer,
      GST_PARTIMENET_TARGET_META_INFO, NULL);
  if (!m)
    return NULL;
  m->class_index = class_index;
  if (tensor && tensor_size > 0) {
    m->tensor = g_memdup2 (tensor, tensor_size * sizeof (gfloat));
    m->tensor_size = tensor_size;
  }
  return m;
}

GstPartimenetTargetMeta *
gst_buffer_get_partimenet_target_meta (GstBuffer * buffer)
{
  g_return_val_if_fail (GST_IS_BUFFER (buffer), NULL);
  return (GstPartimenetTargetMeta *) gst_buffer_get_meta (buffer,
      GST_PARTIMENET_TARGET_META_API_TYPE);
}
