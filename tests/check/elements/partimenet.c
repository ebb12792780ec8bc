/* GstCheck tests of the partimenet element.
 *
 * The built-in models keep them small: builtin:autoencoder (1x3x64x64 -> same) learns by
 * reconstruction, builtin:classifier (1x3x32x32 -> 1x10) by cross-entropy. Frames of exactly the
 * model's size in RGB skip the converter, so a test can feed libpartime the same floats the
 * element computes and compare results bit for bit (or nearly). Tiny ONNX models for the corners
 * (gray, RGBA, 2 channels, a Softmax output) are in tests/check/data (make-models.py).
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <gst/video/video.h>
#include <partime/partime.h>

#include "partimenetmeta.h"

#define AE "builtin:autoencoder"
#define CLS "builtin:classifier"
#define AE_CAPS "video/x-raw,format=RGB,width=64,height=64,framerate=30/1"
#define CLS_CAPS "video/x-raw,format=RGB,width=32,height=32,framerate=30/1"
#define FRAME_NS (GST_SECOND / 30)

static const gchar *
data_path (const gchar * name)
{
  static gchar buf[4096];
  const gchar *dir = g_getenv ("PARTIMENET_TEST_DATA");
  g_snprintf (buf, sizeof (buf), "%s/%s", dir ? dir : "tests/check/data", name);
  return buf;
}

/* A partimenet element with properties set, on its own bus, inside a harness (which starts it). */
static GstHarness *
harness_new (GstBus ** bus, const gchar * first, ...)
{
  GstElement *e = gst_element_factory_make ("partimenet", NULL);
  GstHarness *h;
  va_list ap;

  fail_unless (e != NULL, "partimenet not found: check GST_PLUGIN_PATH");
  va_start (ap, first);
  if (first)
    g_object_set_valist (G_OBJECT (e), first, ap);
  va_end (ap);
  if (bus) {
    *bus = gst_bus_new ();
    gst_element_set_bus (e, *bus);
  }
  h = gst_harness_new_with_element (e, "sink", "src");
  gst_object_unref (e);
  return h;
}

static GstVideoInfo
info_from_string (const gchar * caps_str)
{
  GstVideoInfo info;
  GstCaps *caps = gst_caps_from_string (caps_str);
  fail_unless (gst_video_info_from_caps (&info, caps));
  gst_caps_unref (caps);
  return info;
}

/* A frame whose bytes follow a pattern that depends on `seed`. */
static GstBuffer *
make_frame (const GstVideoInfo * info, guint seed, GstClockTime pts)
{
  GstBuffer *b = gst_buffer_new_allocate (NULL, GST_VIDEO_INFO_SIZE (info),
      NULL);
  GstMapInfo map;
  gsize i;

  gst_buffer_map (b, &map, GST_MAP_WRITE);
  for (i = 0; i < map.size; i++)
    map.data[i] = (guint8) ((i * 7 + seed * 31 + (i / 97) * 3) & 0xff);
  gst_buffer_unmap (b, &map);
  GST_BUFFER_PTS (b) = pts;
  GST_BUFFER_DTS (b) = pts;
  GST_BUFFER_DURATION (b) = FRAME_NS;
  return b;
}

/* The floats the element feeds the model for an RGB frame of the model's size, normalized with
 * `scale` (mean 0, std 1). */
static void
frame_to_input_scaled (const GstVideoInfo * info, GstBuffer * b, gdouble scale,
    gfloat * out)
{
  GstVideoFrame f;
  gint W = GST_VIDEO_INFO_WIDTH (info), H = GST_VIDEO_INFO_HEIGHT (info);
  const gfloat a = (gfloat) scale / 1.0f, off = -0.0f / 1.0f;
  gint x, y, c;

  fail_unless (gst_video_frame_map (&f, (GstVideoInfo *) info, b,
          GST_MAP_READ));
  for (c = 0; c < 3; c++)
    for (y = 0; y < H; y++) {
      const guint8 *row = (const guint8 *) GST_VIDEO_FRAME_PLANE_DATA (&f,
          0) + y * GST_VIDEO_FRAME_PLANE_STRIDE (&f, 0);
      for (x = 0; x < W; x++)
        out[(c * H + y) * W + x] = row[x * 3 + c] * a + off;
    }
  gst_video_frame_unmap (&f);
}

/* The same with the default normalization (pixel / 255). */
static void
frame_to_input (const GstVideoInfo * info, GstBuffer * b, gfloat * out)
{
  frame_to_input_scaled (info, b, 1.0 / 255.0, out);
}

static gboolean
buffers_equal (GstBuffer * a, GstBuffer * b)
{
  GstMapInfo ma, mb;
  gboolean eq;

  gst_buffer_map (a, &ma, GST_MAP_READ);
  gst_buffer_map (b, &mb, GST_MAP_READ);
  eq = ma.size == mb.size && memcmp (ma.data, mb.data, ma.size) == 0;
  gst_buffer_unmap (a, &ma);
  gst_buffer_unmap (b, &mb);
  return eq;
}

static gboolean
close_enough (gfloat a, gfloat b)
{
  if (isnan (a) || isnan (b))
    return isnan (a) && isnan (b);
  return fabsf (a - b) <= 1e-6f * MAX (1.0f, fabsf (a));
}

/* Pops messages until one of `type` (and, for element messages, structure `name`). */
static GstMessage *
wait_message (GstBus * bus, GstMessageType type, const gchar * name,
    GstClockTime timeout)
{
  gint64 end = g_get_monotonic_time () + timeout / GST_USECOND;

  for (;;) {
    gint64 left = end - g_get_monotonic_time ();
    GstMessage *m;
    if (left <= 0)
      return NULL;
    m = gst_bus_timed_pop_filtered (bus, left * GST_USECOND, type);
    if (!m)
      return NULL;
    if (!name || (gst_message_get_structure (m)
            && gst_structure_has_name (gst_message_get_structure (m), name)))
      return m;
    gst_message_unref (m);
  }
}

/* Tears down a harness made with a bus: messages still queued hold the element. */
static void
teardown_with_bus (GstHarness * h, GstBus * bus)
{
  gst_bus_set_flushing (bus, TRUE);
  gst_harness_teardown (h);
  gst_object_unref (bus);
}

static void
push_eos (GstHarness * h)
{
  fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));
}

/* ---- caps and formats ---- */

GST_START_TEST (test_formats_and_sizes)
{
  static const gchar *formats[] = { "RGB", "BGR", "RGBx", "BGRx", "xRGB",
    "xBGR", "RGBA", "BGRA", "ARGB", "ABGR", "GRAY8", "I420", "YV12", "NV12",
    "NV21", "YUY2", "UYVY", "Y444"
  };
  static const gint sizes[][2] = { {64, 64}, {33, 17}, {97, 61}, {2, 2},
  {640, 360}
  };
  guint f, s, i;

  for (f = 0; f < G_N_ELEMENTS (formats); f++) {
    for (s = 0; s < G_N_ELEMENTS (sizes); s++) {
      GstHarness *h;
      GstVideoInfo info;
      gchar *caps;

      /* subsampled formats need even sizes only for the 2x2 case to be meaningful */
      caps = g_strdup_printf ("video/x-raw,format=%s,width=%d,height=%d,"
          "framerate=30/1", formats[f], sizes[s][0], sizes[s][1]);
      info = info_from_string (caps);
      h = harness_new (NULL, "model", AE, NULL);
      gst_harness_set_src_caps_str (h, caps);
      for (i = 0; i < 2; i++) {
        GstBuffer *in = make_frame (&info, i, i * FRAME_NS);
        GstBuffer *ref = gst_buffer_copy_deep (in);
        GstBuffer *out = gst_harness_push_and_pull (h, in);
        GstPartimenetMeta *m;

        fail_unless (out != NULL, "no output for %s", caps);
        fail_unless (buffers_equal (out, ref), "%s: video changed", caps);
        m = gst_buffer_get_partimenet_meta (out);
        fail_unless (m != NULL, "%s: no meta", caps);
        fail_unless_equals_int (m->output_size, 3 * 64 * 64);
        fail_unless_equals_int (m->output_ndim, 4);
        fail_unless (isfinite (m->loss), "%s: loss %f", caps, m->loss);
        fail_unless_equals_uint64 (m->frame, i);
        gst_buffer_unref (ref);
        gst_buffer_unref (out);
      }
      gst_harness_teardown (h);
      g_free (caps);
    }
  }
}

GST_END_TEST;

/* The element converts to the model's picture: gray for a 1-channel model, RGBA for 4. */
GST_START_TEST (test_gray_and_rgba_models)
{
  static const struct
  {
    const gchar *model;
    gint numel;
  } models[] = { {"gray16.onnx", 16 * 16}, {"rgba8.onnx", 4 * 8 * 8} };
  guint i;

  for (i = 0; i < G_N_ELEMENTS (models); i++) {
    GstHarness *h = harness_new (NULL, "model", data_path (models[i].model),
        NULL);
    GstVideoInfo info = info_from_string
        ("video/x-raw,format=I420,width=40,height=30,framerate=30/1");
    GstBuffer *out;
    GstPartimenetMeta *m;

    gst_harness_set_src_caps_str (h,
        "video/x-raw,format=I420,width=40,height=30,framerate=30/1");
    out = gst_harness_push_and_pull (h, make_frame (&info, 1, 0));
    m = gst_buffer_get_partimenet_meta (out);
    fail_unless (m != NULL);
    fail_unless_equals_int (m->output_size, models[i].numel);
    /* same output and input shape: reconstruction by default */
    fail_unless (isfinite (m->loss));
    gst_buffer_unref (out);
    gst_harness_teardown (h);
  }
}

GST_END_TEST;

GST_START_TEST (test_caps_passthrough)
{
  GstHarness *h = harness_new (NULL, NULL);
  GstCaps *caps, *tmpl;
  GstPad *sink;

  /* what the element accepts is what downstream accepts, within its formats */
  gst_harness_set_sink_caps_str (h,
      "video/x-raw,format=NV12,width=[1,1000],height=[1,1000]");
  sink = gst_element_get_static_pad (h->element, "sink");
  caps = gst_pad_query_caps (sink, NULL);
  fail_unless (gst_caps_is_fixed (caps) == FALSE);
  fail_unless (!gst_caps_is_empty (caps));
  tmpl = gst_caps_from_string ("video/x-raw,format=RGB,width=64,height=64");
  fail_if (gst_caps_can_intersect (caps, tmpl), "%" GST_PTR_FORMAT, caps);
  gst_caps_unref (tmpl);
  tmpl = gst_caps_from_string ("video/x-raw,format=NV12,width=64,height=64");
  fail_unless (gst_caps_can_intersect (caps, tmpl));
  gst_caps_unref (tmpl);
  gst_caps_unref (caps);
  /* not video at all */
  caps = gst_caps_from_string ("audio/x-raw,format=S16LE");
  fail_if (gst_pad_query_accept_caps (sink, caps));
  gst_caps_unref (caps);
  gst_object_unref (sink);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* Frames in GPU memory are accepted exactly when the plugin was built with GStreamer's CUDA
 * library and a CUDA libpartime (they pass through, like system memory). */
GST_START_TEST (test_caps_cuda_memory)
{
  GstElement *e = gst_element_factory_make ("partimenet", NULL);
  GstPad *sink = gst_element_get_static_pad (e, "sink");
  GstCaps *tmpl = gst_pad_get_pad_template_caps (sink);
  GstCaps *cuda = gst_caps_from_string ("video/x-raw(memory:CUDAMemory),"
      "format=BGRx,width=64,height=64,framerate=30/1");

#ifdef HAVE_GST_CUDA
  fail_unless (gst_caps_can_intersect (tmpl, cuda), "%" GST_PTR_FORMAT, tmpl);
#else
  fail_if (gst_caps_can_intersect (tmpl, cuda), "%" GST_PTR_FORMAT, tmpl);
#endif
  gst_caps_unref (cuda);
  /* planar YUV stays system memory only */
  cuda = gst_caps_from_string ("video/x-raw(memory:CUDAMemory),"
      "format=NV12,width=64,height=64,framerate=30/1");
  fail_if (gst_caps_can_intersect (tmpl, cuda), "%" GST_PTR_FORMAT, tmpl);
  gst_caps_unref (cuda);
  gst_caps_unref (tmpl);
  gst_object_unref (sink);
  gst_object_unref (e);
}

GST_END_TEST;

/* Results survive conversion and scaling downstream. */
GST_START_TEST (test_meta_survives_downstream_conversion)
{
  GstHarness *h = gst_harness_new_parse ("partimenet model=" CLS
      " ! videoconvert ! videoscale ! capsfilter "
      "caps=video/x-raw,format=I420,width=16,height=16");
  GstVideoInfo info = info_from_string (CLS_CAPS);
  GstBuffer *b;
  GstPartimenetMeta *m;

  gst_harness_set_src_caps_str (h, CLS_CAPS);
  b = gst_harness_push_and_pull (h, make_frame (&info, 1, 0));
  fail_unless (b != NULL);
  fail_unless_equals_int (gst_buffer_get_size (b), 16 * 16 * 3 / 2);
  m = gst_buffer_get_partimenet_meta (b);
  fail_unless (m != NULL);
  fail_unless_equals_int (m->output_size, 10);
  fail_unless_equals_int (m->n_top, 5);
  gst_buffer_unref (b);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* ---- timing ---- */

GST_START_TEST (test_timestamps_flags_metas)
{
  GstHarness *h = harness_new (NULL, "stages", 2, "balance", "4,-1", NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstBufferFlags flags[] = { GST_BUFFER_FLAG_DISCONT, 0,
    GST_BUFFER_FLAG_DELTA_UNIT, GST_BUFFER_FLAG_MARKER, 0,
    GST_BUFFER_FLAG_DELTA_UNIT | GST_BUFFER_FLAG_HEADER
  };
  GstCaps *ref_caps = gst_caps_from_string ("timestamp/x-test");
  guint i, n = G_N_ELEMENTS (flags);

  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (i = 0; i < n; i++) {
    GstBuffer *b = make_frame (&info, i, 1000 + i * FRAME_NS);
    GST_BUFFER_DTS (b) = 500 + i * FRAME_NS;
    GST_BUFFER_DURATION (b) = FRAME_NS + i;
    GST_BUFFER_OFFSET (b) = 10 + i;
    GST_BUFFER_OFFSET_END (b) = 11 + i;
    GST_BUFFER_FLAG_SET (b, flags[i]);
    gst_buffer_add_reference_timestamp_meta (b, ref_caps, 42 * i, 7);
    fail_unless_equals_int (gst_harness_push (h, b), GST_FLOW_OK);
  }
  push_eos (h);
  fail_unless_equals_int (gst_harness_buffers_in_queue (h), n);
  for (i = 0; i < n; i++) {
    GstBuffer *b = gst_harness_pull (h);
    GstReferenceTimestampMeta *r;
    GstPartimenetMeta *m;

    fail_unless_equals_uint64 (GST_BUFFER_PTS (b), 1000 + i * FRAME_NS);
    fail_unless_equals_uint64 (GST_BUFFER_DTS (b), 500 + i * FRAME_NS);
    fail_unless_equals_uint64 (GST_BUFFER_DURATION (b), FRAME_NS + i);
    fail_unless_equals_uint64 (GST_BUFFER_OFFSET (b), 10 + i);
    fail_unless_equals_uint64 (GST_BUFFER_OFFSET_END (b), 11 + i);
    fail_unless_equals_int (GST_BUFFER_FLAGS (b) & (GST_BUFFER_FLAG_DISCONT |
            GST_BUFFER_FLAG_DELTA_UNIT | GST_BUFFER_FLAG_MARKER |
            GST_BUFFER_FLAG_HEADER), flags[i]);
    r = gst_buffer_get_reference_timestamp_meta (b, ref_caps);
    fail_unless (r != NULL);
    fail_unless_equals_uint64 (r->timestamp, 42 * i);
    m = gst_buffer_get_partimenet_meta (b);
    fail_unless (m != NULL);
    fail_unless_equals_uint64 (m->frame, i);
    fail_unless_equals_int (m->stages, 2);
    gst_buffer_unref (b);
  }
  gst_caps_unref (ref_caps);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* Frame t leaves when frame t + D - 1 enters; EOS brings out the rest, in order. */
GST_START_TEST (test_lag_and_drain)
{
  guint D;

  for (D = 1; D <= 3; D++) {
    GstHarness *h = harness_new (NULL, "stages", D, "balance",
        D == 1 ? "auto" : D == 2 ? "4,-1" : "3,3,-1", NULL);
    GstVideoInfo info = info_from_string (AE_CAPS);
    guint i, n = 8;

    gst_harness_set_src_caps_str (h, AE_CAPS);
    for (i = 0; i < n; i++) {
      fail_unless_equals_int (gst_harness_push (h, make_frame (&info, i,
                  i * FRAME_NS)), GST_FLOW_OK);
      /* pushing frame i brought out frames 0 .. i - D + 1 */
      fail_unless_equals_int (gst_harness_buffers_received (h),
          i + 1 >= D ? i + 2 - D : 0);
    }
    push_eos (h);
    fail_unless_equals_int (gst_harness_buffers_received (h), n);
    for (i = 0; i < n; i++) {
      GstBuffer *b = gst_harness_pull (h);
      GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (b);
      fail_unless_equals_uint64 (GST_BUFFER_PTS (b), i * FRAME_NS);
      fail_unless (m != NULL);
      fail_unless_equals_uint64 (m->frame, i);
      fail_unless_equals_int (m->stages, D);
      fail_unless (isfinite (m->loss));
      gst_buffer_unref (b);
    }
    gst_harness_teardown (h);
  }
}

GST_END_TEST;

GST_START_TEST (test_latency_query)
{
  GstBus *bus;
  GstHarness *h = harness_new (&bus, "stages", 3, "balance", "3,3,-1", NULL);
  GstMessage *m;
  guint64 lat;

  gst_harness_set_upstream_latency (h, 10 * GST_MSECOND);
  gst_harness_set_src_caps_str (h, AE_CAPS);
  /* D - 1 = 2 frames at 30 fps */
  fail_unless_equals_uint64 (gst_harness_query_latency (h),
      10 * GST_MSECOND + 2 * gst_util_uint64_scale_int (GST_SECOND, 1, 30));
  g_object_get (h->element, "latency", &lat, NULL);
  fail_unless_equals_uint64 (lat, 2 * gst_util_uint64_scale_int (GST_SECOND,
          1, 30));
  m = wait_message (bus, GST_MESSAGE_LATENCY, NULL, GST_SECOND);
  fail_unless (m != NULL, "no latency message");
  gst_message_unref (m);

  /* a new frame rate changes the latency and says so */
  gst_harness_set_src_caps_str (h,
      "video/x-raw,format=RGB,width=64,height=64,framerate=10/1");
  fail_unless_equals_uint64 (gst_harness_query_latency (h),
      10 * GST_MSECOND + 2 * (GST_SECOND / 10));
  m = wait_message (bus, GST_MESSAGE_LATENCY, NULL, GST_SECOND);
  fail_unless (m != NULL, "no latency message after a rate change");
  gst_message_unref (m);

  teardown_with_bus (h, bus);

  /* one stage adds nothing */
  h = harness_new (NULL, NULL);
  gst_harness_set_upstream_latency (h, 10 * GST_MSECOND);
  gst_harness_set_src_caps_str (h, AE_CAPS);
  fail_unless_equals_uint64 (gst_harness_query_latency (h), 10 * GST_MSECOND);
  gst_harness_teardown (h);
}

GST_END_TEST;

GST_START_TEST (test_flush_drops_in_flight)
{
  GstHarness *h = harness_new (NULL, "stages", 3, "balance", "3,3,-1", NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstSegment seg;
  GstBuffer *b;
  guint i;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (i = 0; i < 5; i++)
    gst_harness_push (h, make_frame (&info, i, i * FRAME_NS));
  fail_unless_equals_int (gst_harness_buffers_received (h), 3);
  /* new caps wait behind the frames in flight... */
  gst_harness_set_src_caps_str (h,
      "video/x-raw,format=RGB,width=64,height=64,framerate=25/1");

  fail_unless (gst_harness_push_event (h, gst_event_new_flush_start ()));
  fail_unless (gst_harness_push_event (h, gst_event_new_flush_stop (TRUE)));
  gst_segment_init (&seg, GST_FORMAT_TIME);
  fail_unless (gst_harness_push_event (h, gst_event_new_segment (&seg)));
  /* ...and still reach downstream when those frames are dropped */
  {
    GstCaps *caps = gst_pad_get_current_caps (h->sinkpad);
    gint num = 0, den = 0;
    fail_unless (caps != NULL);
    gst_structure_get_fraction (gst_caps_get_structure (caps, 0), "framerate",
        &num, &den);
    fail_unless_equals_int (num, 25);
    gst_caps_unref (caps);
  }

  /* the pipeline fills again from empty */
  gst_harness_push (h, make_frame (&info, 100, 100 * FRAME_NS));
  gst_harness_push (h, make_frame (&info, 101, 101 * FRAME_NS));
  fail_unless_equals_int (gst_harness_buffers_received (h), 3);
  push_eos (h);
  fail_unless_equals_int (gst_harness_buffers_received (h), 5);
  for (i = 0; i < 3; i++)
    gst_buffer_unref (gst_harness_pull (h));
  /* the two frames in flight at the flush never came out */
  b = gst_harness_pull (h);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (b), 100 * FRAME_NS);
  gst_buffer_unref (b);
  b = gst_harness_pull (h);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (b), 101 * FRAME_NS);
  gst_buffer_unref (b);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* Events stay in order with the buffers around them, caps changes included. */
static GstPadProbeReturn
record_probe (GstPad * pad, GstPadProbeInfo * info, gpointer user)
{
  GString *s = user;
  if (GST_PAD_PROBE_INFO_TYPE (info) & GST_PAD_PROBE_TYPE_BUFFER)
    g_string_append_c (s, 'B');
  else if (GST_EVENT_TYPE (GST_PAD_PROBE_INFO_EVENT (info)) == GST_EVENT_CAPS)
    g_string_append_c (s, 'C');
  else if (GST_EVENT_TYPE (GST_PAD_PROBE_INFO_EVENT (info)) == GST_EVENT_EOS)
    g_string_append_c (s, 'E');
  return GST_PAD_PROBE_OK;
}

GST_START_TEST (test_caps_change_mid_stream)
{
  GstHarness *h = harness_new (NULL, "stages", 3, "balance", "3,3,-1", NULL);
  GstVideoInfo a = info_from_string (AE_CAPS);
  GstVideoInfo b = info_from_string
      ("video/x-raw,format=NV12,width=97,height=61,framerate=30/1");
  /* bigger frames than the stream was built for: it is rebuilt, cut where it was */
  GstVideoInfo c = info_from_string
      ("video/x-raw,format=I420,width=320,height=240,framerate=30/1");
  GString *seq = g_string_new (NULL);
  GstPad *src = gst_element_get_static_pad (h->element, "src");
  guint i;

  gst_pad_add_probe (src, GST_PAD_PROBE_TYPE_BUFFER |
      GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, record_probe, seq, NULL);
  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (i = 0; i < 4; i++)
    gst_harness_push (h, make_frame (&a, i, i * FRAME_NS));
  gst_harness_set_src_caps_str (h,
      "video/x-raw,format=NV12,width=97,height=61,framerate=30/1");
  for (i = 4; i < 8; i++)
    gst_harness_push (h, make_frame (&b, i, i * FRAME_NS));
  gst_harness_set_src_caps_str (h,
      "video/x-raw,format=I420,width=320,height=240,framerate=30/1");
  for (i = 8; i < 12; i++)
    gst_harness_push (h, make_frame (&c, i, i * FRAME_NS));
  push_eos (h);
  fail_unless_equals_string (seq->str, "CBBBBCBBBBCBBBBE");
  for (i = 0; i < 12; i++) {
    GstBuffer *buf = gst_harness_pull (h);
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (buf);
    fail_unless (m != NULL);
    fail_unless_equals_uint64 (m->frame, i);
    fail_unless_equals_int (m->stages, 3);
    fail_unless (isfinite (m->loss), "frame %u: loss %g", i, m->loss);
    fail_unless_equals_int (gst_buffer_get_size (buf),
        i < 4 ? GST_VIDEO_INFO_SIZE (&a) : i < 8 ? GST_VIDEO_INFO_SIZE (&b) :
        GST_VIDEO_INFO_SIZE (&c));
    gst_buffer_unref (buf);
  }
  g_string_free (seq, TRUE);
  gst_object_unref (src);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* ---- states and threads ---- */

GST_START_TEST (test_state_cycling)
{
  GstElement *e = gst_element_factory_make ("partimenet", NULL);
  GstElement *pipe;
  gint i;

  for (i = 0; i < 50; i++) {
    fail_unless (gst_element_set_state (e, GST_STATE_PLAYING) !=
        GST_STATE_CHANGE_FAILURE);
    fail_unless (gst_element_set_state (e, GST_STATE_NULL) ==
        GST_STATE_CHANGE_SUCCESS);
  }
  gst_object_unref (e);

  /* and with data flowing, stopped in the middle of the stream */
  pipe = gst_parse_launch ("videotestsrc ! partimenet stages=2 balance=4,-1 ! "
      "fakesink sync=false", NULL);
  fail_unless (pipe != NULL);
  for (i = 0; i < 10; i++) {
    fail_unless (gst_element_set_state (pipe, GST_STATE_PLAYING) !=
        GST_STATE_CHANGE_FAILURE);
    fail_unless (gst_element_get_state (pipe, NULL, NULL,
            10 * GST_SECOND) == GST_STATE_CHANGE_SUCCESS);
    g_usleep (i * 2000);
    fail_unless (gst_element_set_state (pipe, GST_STATE_NULL) ==
        GST_STATE_CHANGE_SUCCESS);
  }
  gst_object_unref (pipe);
}

GST_END_TEST;

typedef struct
{
  GstElement *e;
  volatile gint stop;
  guint changes;
} Changer;

static gpointer
change_properties (gpointer data)
{
  Changer *c = data;
  guint i = 0;

  while (!g_atomic_int_get (&c->stop)) {
    switch (i % 6) {
      case 0:
        g_object_set (c->e, "learning-rate", 0.01 * (1 + i % 5), NULL);
        break;
      case 1:
        g_object_set (c->e, "train", (i / 6) % 2 == 0, NULL);
        break;
      case 2:
        g_object_set (c->e, "momentum", 0.5, NULL);
        break;
      case 3:
        g_object_set (c->e, "scale", 1.0 / (200 + i % 100), NULL);
        break;
      case 4:
        g_object_set (c->e, "mean", i % 2 ? "0.5" : "0.4,0.5,0.6", NULL);
        break;
      case 5:
        g_object_set (c->e, "train", TRUE, "top-k", 1 + i % 10, NULL);
        break;
    }
    i++;
    c->changes++;
    g_usleep (500);
  }
  return NULL;
}

GST_START_TEST (test_properties_from_another_thread)
{
  GstHarness *h = harness_new (NULL, "model", CLS, "stages", 2, "balance",
      "4,-1", NULL);
  GstVideoInfo info = info_from_string (CLS_CAPS);
  Changer c = { h->element, 0, 0 };
  GThread *t;
  guint i, n = 1000;
  guint64 trained;
  gint64 last_step = 0;

  gst_harness_set_src_caps_str (h, CLS_CAPS);
  t = g_thread_new ("changer", change_properties, &c);
  for (i = 0; i < n; i++) {
    GstBuffer *b = make_frame (&info, i, i * FRAME_NS);
    gst_buffer_add_partimenet_target_meta (b, i % 10, NULL, 0);
    fail_unless_equals_int (gst_harness_push (h, b), GST_FLOW_OK);
  }
  g_atomic_int_set (&c.stop, 1);
  g_thread_join (t);
  push_eos (h);
  fail_unless (c.changes > 10);
  fail_unless_equals_int (gst_harness_buffers_received (h), n);
  for (i = 0; i < n; i++) {
    GstBuffer *b = gst_harness_pull (h);
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (b);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (b), i * FRAME_NS);
    fail_unless (m != NULL);
    fail_unless_equals_int (m->output_size, 10);
    fail_unless (m->n_top >= 1 && m->n_top <= 10);
    /* learning rate and momentum changes keep the stream: its step count never restarts */
    fail_unless (m->step >= last_step, "frame %u: step %" G_GINT64_FORMAT
        " after %" G_GINT64_FORMAT, i, m->step, last_step);
    last_step = m->step;
    gst_buffer_unref (b);
  }
  fail_unless (last_step > 0);
  g_object_get (h->element, "frames-trained", &trained, NULL);
  fail_unless (trained > 0);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* ---- errors ---- */

/* Starts an element with the given properties, which must fail with an error from `domain`
 * whose text contains `needle`. */
static void
expect_start_error (GQuark domain, const gchar * needle,
    const gchar * first_prop, ...)
{
  GstElement *e = gst_element_factory_make ("partimenet", NULL);
  GstBus *bus = gst_bus_new ();
  GstMessage *msg;
  GError *err = NULL;
  gchar *dbg = NULL;
  va_list ap;

  va_start (ap, first_prop);
  g_object_set_valist (G_OBJECT (e), first_prop, ap);
  va_end (ap);
  gst_element_set_bus (e, bus);
  fail_unless_equals_int (gst_element_set_state (e, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (msg != NULL, "no error message for '%s'", needle);
  gst_message_parse_error (msg, &err, &dbg);
  fail_unless (err->domain == domain, "domain %s for '%s'",
      g_quark_to_string (err->domain), err->message);
  fail_unless (strstr (err->message, needle) != NULL, "'%s' not in '%s'",
      needle, err->message);
  g_clear_error (&err);
  g_free (dbg);
  gst_message_unref (msg);
  fail_unless_equals_int (gst_element_set_state (e, GST_STATE_NULL),
      GST_STATE_CHANGE_SUCCESS);
  gst_element_set_bus (e, NULL);
  gst_object_unref (bus);
  gst_object_unref (e);
}

GST_START_TEST (test_errors)
{
  gchar *dir = g_dir_make_tmp ("partimenet-XXXXXX", NULL);
  gchar *corrupt = g_build_filename (dir, "corrupt.onnx", NULL);
  gchar *truncated = g_build_filename (dir, "truncated.onnx", NULL);
  gchar *contents;
  gsize len;

  expect_start_error (GST_RESOURCE_ERROR, "/no/such/model.onnx", "model",
      "/no/such/model.onnx", NULL);
  expect_start_error (GST_RESOURCE_ERROR, "builtin:nosuch", "model",
      "builtin:nosuch", NULL);

  fail_unless (g_file_set_contents (corrupt, "this is not a model\n", -1,
          NULL));
  expect_start_error (GST_RESOURCE_ERROR, corrupt, "model", corrupt, NULL);
  fail_unless (g_file_get_contents (data_path ("softmax4.onnx"), &contents,
          &len, NULL));
  fail_unless (g_file_set_contents (truncated, contents, len / 2, NULL));
  g_free (contents);
  expect_start_error (GST_RESOURCE_ERROR, truncated, "model", truncated, NULL);

  expect_start_error (GST_RESOURCE_ERROR, "gpu:7", "devices", "cpu,gpu:7",
      NULL);
  expect_start_error (GST_RESOURCE_ERROR, "cpu:9999", "devices", "cpu:9999",
      NULL);
  /* whatever the build (no CUDA, no GPU, too few GPUs), the message names the device */
  expect_start_error (GST_RESOURCE_ERROR, "cuda:9", "devices", "cuda:9", NULL);
  expect_start_error (GST_RESOURCE_ERROR, "mixing", "devices", "cpu,cuda:0",
      NULL);
  expect_start_error (GST_STREAM_ERROR, "2 input channels", "model",
      data_path ("twochannels.onnx"), NULL);
  expect_start_error (GST_RESOURCE_ERROR, "/no/such/dir", "checkpoint",
      "/no/such/dir/ckpt.onnx", NULL);
  expect_start_error (GST_RESOURCE_ERROR, "/no/labels.txt", "labels",
      "/no/labels.txt", NULL);
  expect_start_error (GST_RESOURCE_ERROR, "mean", "mean", "0.1,0.2", NULL);
  if (getuid () != 0) {
    gchar *ro = g_build_filename (dir, "ro", NULL);
    gchar *ck = g_build_filename (ro, "ckpt.onnx", NULL);
    g_mkdir (ro, 0555);
    expect_start_error (GST_RESOURCE_ERROR, "not writable", "checkpoint", ck,
        NULL);
    g_rmdir (ro);
    g_free (ck);
    g_free (ro);
  }

  g_unlink (corrupt);
  g_unlink (truncated);
  g_rmdir (dir);
  g_free (corrupt);
  g_free (truncated);
  g_free (dir);
}

GST_END_TEST;

/* ---- checkpoints ---- */

/* The output of `model` (a spec) on `input`, without training, straight from libpartime. */
static void
reference_output (const gchar * spec, const gfloat * input, gfloat * out,
    gint64 n)
{
  pt_model *m = NULL;
  pt_stream *s = NULL;
  pt_stream_opts o;
  pt_error err;
  pt_result r;

  fail_unless_equals_int (pt_model_load (spec, &m, &err), PT_OK);
  pt_stream_opts_init (&o);
  o.threaded = false;
  fail_unless_equals_int (pt_stream_new (m, &o, &s, &err), PT_OK);
  fail_unless_equals_int (pt_stream_push (s, input, NULL, NULL), PT_OK);
  fail_unless_equals_int (pt_stream_pop (s, &r), PT_OK);
  memcpy (out, r.output, n * sizeof (gfloat));
  pt_stream_free (s);
  pt_model_free (m);
}

GST_START_TEST (test_checkpoint_round_trip)
{
  gchar *dir = g_dir_make_tmp ("partimenet-XXXXXX", NULL);
  gchar *ck = g_build_filename (dir, "ae.onnx", NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  const gint64 n = 3 * 64 * 64;
  gfloat *input = g_new (gfloat, n), *want = g_new (gfloat, n);
  gfloat *fresh = g_new (gfloat, n);
  GstBuffer *probe = make_frame (&info, 77, 0), *out;
  GstPartimenetMeta *m;
  GstHarness *h;
  pt_model *loaded = NULL;
  pt_error err;
  gint64 i, differ = 0;
  guint k;

  /* train a few frames, then stop: the checkpoint is written on the way to READY */
  h = harness_new (NULL, "checkpoint", ck, "learning-rate", 0.05, NULL);
  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (k = 0; k < 6; k++)
    gst_buffer_unref (gst_harness_push_and_pull (h, make_frame (&info, k,
                k * FRAME_NS)));
  fail_if (g_file_test (ck, G_FILE_TEST_EXISTS), "saved before asked to");
  gst_harness_teardown (h);
  fail_unless (g_file_test (ck, G_FILE_TEST_IS_REGULAR), "no checkpoint");
  fail_unless_equals_int (pt_model_load (ck, &loaded, &err), PT_OK);
  pt_model_free (loaded);

  /* a new element resumes from it: its output is the saved model's */
  frame_to_input (&info, probe, input);
  reference_output (ck, input, want, n);
  reference_output (AE, input, fresh, n);
  h = harness_new (NULL, "checkpoint", ck, "train", FALSE, NULL);
  gst_harness_set_src_caps_str (h, AE_CAPS);
  out = gst_harness_push_and_pull (h, gst_buffer_ref (probe));
  m = gst_buffer_get_partimenet_meta (out);
  fail_unless (m != NULL && m->output_size == (gsize) n);
  for (i = 0; i < n; i++) {
    fail_unless (close_enough (m->output[i], want[i]), "output %"
        G_GINT64_FORMAT ": %g vs %g", i, m->output[i], want[i]);
    differ += m->output[i] != fresh[i];
  }
  fail_unless (differ > n / 2, "the checkpoint did not change the weights");
  fail_unless (!m->trained);
  gst_buffer_unref (out);
  /* nothing learned: nothing rewritten */
  {
    GStatBuf st0, st1;
    g_stat (ck, &st0);
    gst_harness_teardown (h);
    g_stat (ck, &st1);
    fail_unless_equals_int (st0.st_mtime, st1.st_mtime);
  }

  /* a checkpoint of another model is refused */
  expect_start_error (GST_RESOURCE_ERROR, "does not belong", "model", CLS,
      "checkpoint", ck, NULL);

  gst_buffer_unref (probe);
  g_free (input);
  g_free (want);
  g_free (fresh);
  g_unlink (ck);
  g_rmdir (dir);
  g_free (ck);
  g_free (dir);
}

GST_END_TEST;

/* Checkpoints every N frames and at EOS. */
GST_START_TEST (test_checkpoint_interval_and_eos)
{
  gchar *dir = g_dir_make_tmp ("partimenet-XXXXXX", NULL);
  gchar *ck = g_build_filename (dir, "ae.onnx", NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstHarness *h = harness_new (NULL, "checkpoint", ck, "checkpoint-interval",
      3, NULL);
  guint k;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (k = 0; k < 2; k++)
    gst_harness_push (h, make_frame (&info, k, k * FRAME_NS));
  fail_if (g_file_test (ck, G_FILE_TEST_EXISTS));
  gst_harness_push (h, make_frame (&info, 2, 2 * FRAME_NS));
  fail_unless (g_file_test (ck, G_FILE_TEST_EXISTS));
  g_unlink (ck);
  gst_harness_push (h, make_frame (&info, 3, 3 * FRAME_NS));
  push_eos (h);
  fail_unless (g_file_test (ck, G_FILE_TEST_EXISTS), "not saved at EOS");
  gst_harness_teardown (h);
  g_unlink (ck);
  g_rmdir (dir);
  g_free (ck);
  g_free (dir);
}

GST_END_TEST;

/* A process killed while it writes checkpoints leaves a whole one behind. */
GST_START_TEST (test_kill_during_checkpoint)
{
  gchar *dir = g_dir_make_tmp ("partimenet-XXXXXX", NULL);
  gchar *ck = g_build_filename (dir, "ae.onnx", NULL);
  gchar *prop = g_strdup_printf ("checkpoint=%s", ck);
  gchar *argv[] = { (gchar *) "gst-launch-1.0", (gchar *) "-q",
    (gchar *) "videotestsrc", (gchar *) "!", (gchar *) "partimenet", prop,
    (gchar *) "checkpoint-interval=1", (gchar *) "learning-rate=0.01",
    (gchar *) "!", (gchar *) "fakesink", NULL
  };
  gint round;

  for (round = 0; round < 4; round++) {
    GPid pid;
    GError *error = NULL;
    pt_model *m = NULL;
    pt_error err;
    gint status, waited = 0;
    GStatBuf st0, st;

    fail_unless (g_spawn_async (NULL, argv, NULL, G_SPAWN_SEARCH_PATH |
            G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL,
            &pid, &error), "%s", error ? error->message : "");
    /* wait until it has rewritten the checkpoint at least once more */
    memset (&st0, 0, sizeof (st0));
    g_stat (ck, &st0);
    while (waited < 10000) {
      if (g_stat (ck, &st) == 0 && (st.st_mtim.tv_sec != st0.st_mtim.tv_sec
              || st.st_mtim.tv_nsec != st0.st_mtim.tv_nsec))
        break;
      g_usleep (1000);
      waited++;
    }
    fail_unless (waited < 10000, "no checkpoint written");
    g_usleep (g_random_int_range (0, 20000));
    kill (pid, SIGKILL);
    waitpid (pid, &status, 0);
    g_spawn_close_pid (pid);
    fail_unless (WIFSIGNALED (status), "the pipeline ended by itself");
    fail_unless_equals_int (pt_model_load (ck, &m, &err), PT_OK);
    pt_model_free (m);
  }
  g_unlink (ck);
  {
    /* temporary files a killed writer left */
    GDir *d = g_dir_open (dir, 0, NULL);
    const gchar *name;
    while ((name = g_dir_read_name (d))) {
      gchar *p = g_build_filename (dir, name, NULL);
      g_unlink (p);
      g_free (p);
    }
    g_dir_close (d);
  }
  g_rmdir (dir);
  g_free (prop);
  g_free (ck);
  g_free (dir);
}

GST_END_TEST;

/* ---- supervised learning ---- */

/* Class targets on the input buffers train the classifier exactly as libpartime predicts. */
GST_START_TEST (test_target_meta_cross_entropy)
{
  GstHarness *h = harness_new (NULL, "model", CLS, "learning-rate", 0.05,
      "optimizer", 0 /* sgd */ , NULL);
  GstVideoInfo info = info_from_string (CLS_CAPS);
  const gint64 in_n = 3 * 32 * 32;
  gfloat *input = g_new (gfloat, in_n);
  pt_model *model = NULL;
  pt_stream *s = NULL;
  pt_stream_opts o;
  pt_error err;
  guint k, n = 12;
  gint64 last_step = 0;

  fail_unless_equals_int (pt_model_load (CLS, &model, &err), PT_OK);
  pt_stream_opts_init (&o);
  o.threaded = false;
  o.train.enabled = true;
  o.train.loss = PT_LOSS_CROSS_ENTROPY;
  o.train.lr = (float) 0.05;
  o.train.momentum = (float) 0.9;
  fail_unless_equals_int (pt_stream_new (model, &o, &s, &err), PT_OK);

  gst_harness_set_src_caps_str (h, CLS_CAPS);
  for (k = 0; k < n; k++) {
    GstBuffer *b = make_frame (&info, k, k * FRAME_NS), *out;
    GstPartimenetMeta *m;
    pt_target t = { 0 };
    pt_result r;
    gint i;

    frame_to_input (&info, b, input);
    gst_buffer_add_partimenet_target_meta (b, k % 3, NULL, 0);
    out = gst_harness_push_and_pull (h, b);
    m = gst_buffer_get_partimenet_meta (out);
    fail_unless (m != NULL);

    t.class_index = k % 3;
    fail_unless_equals_int (pt_stream_push (s, input, &t, NULL), PT_OK);
    fail_unless_equals_int (pt_stream_pop (s, &r), PT_OK);

    fail_unless (isfinite (m->loss), "frame %u: loss %f", k, m->loss);
    fail_unless (m->trained);
    fail_unless (m->step > last_step);
    last_step = m->step;
    fail_unless (close_enough (m->loss, r.loss), "frame %u: loss %g vs %g",
        k, m->loss, r.loss);
    fail_unless_equals_int64 (m->step, r.step);
    for (i = 0; i < 10; i++)
      fail_unless (close_enough (m->output[i], r.output[i]),
          "frame %u output %d: %g vs %g", k, i, m->output[i], r.output[i]);
    gst_buffer_unref (out);
  }
  /* a frame without a target does not train */
  {
    GstBuffer *out = gst_harness_push_and_pull (h, make_frame (&info, 99,
            99 * FRAME_NS));
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (out);
    fail_unless (!m->trained);
    fail_unless (isnan (m->loss));
    gst_buffer_unref (out);
  }
  pt_stream_free (s);
  pt_model_free (model);
  g_free (input);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* Tensor targets (mse) and a model that ends in a Softmax: its output is the score. */
GST_START_TEST (test_target_meta_mse_and_softmax)
{
  GstHarness *h = harness_new (NULL, "model", data_path ("softmax4.onnx"),
      "loss", 3 /* mse */ , "top-k", 2, NULL);
  GstVideoInfo info = info_from_string
      ("video/x-raw,format=BGRx,width=20,height=10,framerate=30/1");
  const gfloat target[4] = { 0, 1, 0, 0 };
  gfloat first = NAN, last = NAN;
  guint k;

  gst_harness_set_src_caps_str (h,
      "video/x-raw,format=BGRx,width=20,height=10,framerate=30/1");
  for (k = 0; k < 20; k++) {
    GstBuffer *b = make_frame (&info, 5, k * FRAME_NS), *out;
    GstPartimenetMeta *m;
    gst_buffer_add_partimenet_target_meta (b, -1, target, 4);
    out = gst_harness_push_and_pull (h, b);
    m = gst_buffer_get_partimenet_meta (out);
    fail_unless (m && m->output_size == 4 && m->n_top == 2);
    fail_unless (m->trained);
    fail_unless (m->scores[0] == m->output[m->class_ids[0]]);
    fail_unless (m->scores[0] >= m->scores[1]);
    if (k == 0)
      first = m->loss;
    last = m->loss;
    gst_buffer_unref (out);
  }
  fail_unless (last < first, "mse did not fall: %g -> %g", first, last);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* ---- results ---- */

static void
check_list (const GstStructure * s, const gchar * field, guint n, GType type)
{
  const GValue *v = gst_structure_get_value (s, field);
  guint i;

  fail_unless (v != NULL, "no field %s", field);
  fail_unless (GST_VALUE_HOLDS_LIST (v), "%s is not a list", field);
  fail_unless_equals_int (gst_value_list_get_size (v), n);
  for (i = 0; i < n; i++)
    fail_unless (G_VALUE_TYPE (gst_value_list_get_value (v, i)) == type);
}

GST_START_TEST (test_messages)
{
  gchar *dir = g_dir_make_tmp ("partimenet-XXXXXX", NULL);
  gchar *labels = g_build_filename (dir, "labels.txt", NULL);
  GstBus *bus;
  GstHarness *h;
  GstVideoInfo info = info_from_string (CLS_CAPS);
  GstMessage *msg;
  guint k;

  fail_unless (g_file_set_contents (labels,
          "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n", -1,
          NULL));
  h = harness_new (&bus, "model", CLS, "labels", labels, "post-messages",
      TRUE, "message-interval", 2, "top-k", 3, "stages", 2, "balance", "4,-1",
      NULL);
  msg = wait_message (bus, GST_MESSAGE_ELEMENT, "partimenet-model",
      GST_SECOND);
  fail_unless (msg != NULL);
  {
    const GstStructure *s = gst_message_get_structure (msg);
    gint stages;
    fail_unless_equals_string (gst_structure_get_string (s, "model"), CLS);
    fail_unless (gst_structure_get_int (s, "stages", &stages) && stages == 2);
    check_list (s, "devices", 2, G_TYPE_STRING);
    check_list (s, "nodes", 2, G_TYPE_STRING);
  }
  gst_message_unref (msg);

  gst_harness_set_src_caps_str (h, CLS_CAPS);
  for (k = 0; k < 7; k++) {
    GstBuffer *b = make_frame (&info, k, k * FRAME_NS);
    gst_buffer_add_partimenet_target_meta (b, 4, NULL, 0);
    gst_harness_push (h, b);
  }
  push_eos (h);
  for (k = 0; k < 7; k += 2) {
    const GstStructure *s;
    guint64 frame, ts, lat;
    gdouble loss, s0, s1;
    gboolean trained;
    gint64 step;
    gint stages;
    const GValue *labs;

    msg = wait_message (bus, GST_MESSAGE_ELEMENT, "partimenet", GST_SECOND);
    fail_unless (msg != NULL, "no message for frame %u", k);
    s = gst_message_get_structure (msg);
    fail_unless (gst_structure_get_uint64 (s, "frame", &frame));
    fail_unless_equals_uint64 (frame, k);
    fail_unless (gst_structure_get_uint64 (s, "timestamp", &ts));
    fail_unless_equals_uint64 (ts, k * FRAME_NS);
    fail_unless (gst_structure_has_field_typed (s, "running-time",
            G_TYPE_UINT64));
    fail_unless (gst_structure_has_field_typed (s, "stream-time",
            G_TYPE_UINT64));
    fail_unless (gst_structure_has_field_typed (s, "duration", G_TYPE_UINT64));
    fail_unless (gst_structure_get_double (s, "loss", &loss));
    fail_unless (isfinite (loss));
    fail_unless (gst_structure_get_boolean (s, "trained", &trained));
    fail_unless (trained);
    fail_unless (gst_structure_get_int64 (s, "step", &step));
    fail_unless (step >= 1);
    fail_unless (gst_structure_get_int (s, "stages", &stages));
    fail_unless_equals_int (stages, 2);
    fail_unless (gst_structure_get_uint64 (s, "latency", &lat));
    fail_unless_equals_uint64 (lat, gst_util_uint64_scale_int (GST_SECOND, 1,
            30));
    check_list (s, "classes", 3, G_TYPE_INT);
    check_list (s, "scores", 3, G_TYPE_DOUBLE);
    check_list (s, "labels", 3, G_TYPE_STRING);
    s0 = g_value_get_double (gst_value_list_get_value (gst_structure_get_value
            (s, "scores"), 0));
    s1 = g_value_get_double (gst_value_list_get_value (gst_structure_get_value
            (s, "scores"), 1));
    fail_unless (s0 >= s1 && s0 <= 1.0 && s1 >= 0.0);
    labs = gst_structure_get_value (s, "labels");
    {
      gint c0 = g_value_get_int (gst_value_list_get_value
          (gst_structure_get_value (s, "classes"), 0));
      static const gchar *names[] = { "zero", "one", "two", "three", "four",
        "five", "six", "seven", "eight", "nine"
      };
      fail_unless_equals_string (g_value_get_string (gst_value_list_get_value
              (labs, 0)), names[c0]);
    }
    gst_message_unref (msg);
  }
  /* every second frame only */
  fail_unless (wait_message (bus, GST_MESSAGE_ELEMENT, "partimenet",
          100 * GST_MSECOND) == NULL);

  /* the meta says the same */
  {
    GstBuffer *b = gst_harness_pull (h);
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (b);
    GstBuffer *copy;
    fail_unless (m->n_top == 3);
    fail_unless (m->labels[0] != NULL);
    fail_unless (m->scores[0] >= m->scores[1] && m->scores[1] >= m->scores[2]);
    /* a copy of the buffer carries the result too */
    copy = gst_buffer_copy (b);
    fail_unless (gst_buffer_get_partimenet_meta (copy) != NULL);
    fail_unless (gst_buffer_get_partimenet_meta (copy)->output == m->output);
    gst_buffer_unref (b);
    /* the copy keeps the shared output alive on its own */
    fail_unless (isfinite (gst_buffer_get_partimenet_meta (copy)->output[0]));
    gst_buffer_unref (copy);
  }
  teardown_with_bus (h, bus);
  g_unlink (labels);
  g_rmdir (dir);
  g_free (labels);
  g_free (dir);
}

GST_END_TEST;

/* ---- input conversion on stage 0 ---- */

/* Holds the element's conversion of a frame where it runs, to show which thread runs it and what
 * the streaming thread does meanwhile. The hook is the log line gst_partimenet_preprocess()
 * writes before it converts: a log function sees it on the converting thread and can make that
 * thread wait there. */
typedef struct
{
  GMutex lock;
  GCond cond;
  GThread *streaming;           /* the test thread: the harness pushes from it */
  guint on_streaming, elsewhere;        /* conversions seen on each side */
  gboolean hold;                /* make the next conversion off the streaming thread wait */
  gboolean holding;             /* one waits now */
} Gate;

static Gate gate;

static void
gate_log (GstDebugCategory * cat, GstDebugLevel level, const gchar * file,
    const gchar * function, gint line, GObject * object, GstDebugMessage * msg,
    gpointer user)
{
  if (g_strcmp0 (gst_debug_category_get_name (cat), "partimenet") != 0
      || g_strcmp0 (function, "gst_partimenet_preprocess") != 0)
    return;
  g_mutex_lock (&gate.lock);
  if (g_thread_self () == gate.streaming) {
    gate.on_streaming++;
  } else {
    gate.elsewhere++;
    if (gate.hold) {
      gate.hold = FALSE;
      gate.holding = TRUE;
      g_cond_broadcast (&gate.cond);
      while (gate.holding)
        g_cond_wait (&gate.cond, &gate.lock);
    }
  }
  g_mutex_unlock (&gate.lock);
}

static void
gate_install (void)
{
#ifdef GST_DISABLE_GST_DEBUG
  fail ("GStreamer was built without its debug system: cannot observe "
      "the conversion");
#endif
  g_mutex_lock (&gate.lock);
  gate.streaming = g_thread_self ();
  gate.on_streaming = gate.elsewhere = 0;
  gate.hold = gate.holding = FALSE;
  g_mutex_unlock (&gate.lock);
  gst_debug_set_active (TRUE);
  gst_debug_set_threshold_for_name ("partimenet", GST_LEVEL_LOG);
  /* the element's other LOG lines would flood the test's output */
  gst_debug_remove_log_function (gst_debug_log_default);
  gst_debug_add_log_function (gate_log, NULL, NULL);
}

static void
gate_remove (void)
{
  gst_debug_remove_log_function (gate_log);
  gst_debug_add_log_function (gst_debug_log_default, NULL, NULL);
  gst_debug_set_threshold_for_name ("partimenet", GST_LEVEL_WARNING);
}

static void
gate_reset_counts (void)
{
  g_mutex_lock (&gate.lock);
  gate.on_streaming = gate.elsewhere = 0;
  g_mutex_unlock (&gate.lock);
}

static void
gate_count (guint * on_streaming, guint * elsewhere)
{
  g_mutex_lock (&gate.lock);
  *on_streaming = gate.on_streaming;
  *elsewhere = gate.elsewhere;
  g_mutex_unlock (&gate.lock);
}

/* The next conversion off the streaming thread will wait for gate_release(). */
static void
gate_hold (void)
{
  g_mutex_lock (&gate.lock);
  gate.hold = TRUE;
  g_mutex_unlock (&gate.lock);
}

/* Waits until a conversion is held; FALSE if none comes within 10 s. */
static gboolean
gate_wait_held (void)
{
  gint64 end = g_get_monotonic_time () + 10 * G_TIME_SPAN_SECOND;
  gboolean held;

  g_mutex_lock (&gate.lock);
  while (!gate.holding && g_cond_wait_until (&gate.cond, &gate.lock, end));
  held = gate.holding;
  g_mutex_unlock (&gate.lock);
  return held;
}

static void
gate_release (void)
{
  g_mutex_lock (&gate.lock);
  gate.holding = FALSE;
  g_cond_broadcast (&gate.cond);
  g_mutex_unlock (&gate.lock);
}

/* The chain function only copies a frame: stage 0's worker converts it, so pushing returns while
 * the conversion has not even started. */
GST_START_TEST (test_conversion_off_streaming_thread)
{
  const gchar *caps =
      "video/x-raw,format=NV12,width=97,height=61,framerate=30/1";
  GstVideoInfo info = info_from_string (caps);
  GstHarness *h;
  guint i, on_streaming, elsewhere;

  gate_install ();
  /* two stages: frame 0 leaves with frame 1, so pushing it waits for no result */
  h = harness_new (NULL, "stages", 2, "balance", "4,-1", NULL);
  gst_harness_set_src_caps_str (h, caps);
  gate_hold ();
  fail_unless_equals_int (gst_harness_push (h, make_frame (&info, 0, 0)),
      GST_FLOW_OK);
  /* the push returned; the conversion of frame 0 cannot finish until released */
  fail_unless (gate_wait_held (), "frame 0 was never converted");
  gate_count (&on_streaming, &elsewhere);
  fail_unless_equals_int (on_streaming, 0);
  fail_unless_equals_int (elsewhere, 1);
  fail_unless_equals_int (gst_harness_buffers_received (h), 0);
  gate_release ();
  for (i = 1; i < 6; i++)
    fail_unless_equals_int (gst_harness_push (h, make_frame (&info, i,
                i * FRAME_NS)), GST_FLOW_OK);
  push_eos (h);
  fail_unless_equals_int (gst_harness_buffers_received (h), 6);
  for (i = 0; i < 6; i++) {
    GstBuffer *b = gst_harness_pull (h);
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (b);
    fail_unless (m != NULL);
    fail_unless_equals_uint64 (m->frame, i);
    fail_unless (isfinite (m->loss) && m->loss > 0);
    gst_buffer_unref (b);
  }
  gate_count (&on_streaming, &elsewhere);
  fail_unless_equals_int (on_streaming, 0);
  fail_unless_equals_int (elsewhere, 6);
  gst_harness_teardown (h);

  /* with the next-frame loss a frame is its predecessor's target: push converts it, so the
   * streaming thread does (and the hook tells the two apart) */
  gate_reset_counts ();
  h = harness_new (NULL, "stages", 2, "balance", "4,-1", "loss",
      5 /* next-frame */ , NULL);
  gst_harness_set_src_caps_str (h, caps);
  for (i = 0; i < 4; i++)
    gst_harness_push (h, make_frame (&info, i, i * FRAME_NS));
  push_eos (h);
  fail_unless_equals_int (gst_harness_buffers_received (h), 4);
  gate_count (&on_streaming, &elsewhere);
  fail_unless_equals_int (on_streaming, 4);
  fail_unless_equals_int (elsewhere, 0);
  gst_harness_teardown (h);
  gate_remove ();
}

GST_END_TEST;

/* A frame that arrives while stage 0 still works on the previous tick skips the network with
 * overload=drop. */
GST_START_TEST (test_overload_drop_when_busy)
{
  GstBus *bus;
  GstHarness *h;
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstMessage *msg;
  GstBuffer *b;
  guint64 processed, dropped;
  GstFormat fmt;

  gate_install ();
  h = harness_new (&bus, "overload", 1 /* drop */ , "stages", 2, "balance",
      "4,-1", NULL);
  gst_harness_set_src_caps_str (h, AE_CAPS);
  gate_hold ();
  fail_unless_equals_int (gst_harness_push (h, make_frame (&info, 0, 0)),
      GST_FLOW_OK);
  fail_unless (gate_wait_held ());
  /* stage 0 is stuck in tick 0: frame 1 passes without a result, behind frame 0 */
  fail_unless_equals_int (gst_harness_push (h, make_frame (&info, 1,
              FRAME_NS)), GST_FLOW_OK);
  fail_unless_equals_int (gst_harness_buffers_received (h), 0);
  msg = wait_message (bus, GST_MESSAGE_QOS, NULL, GST_SECOND);
  fail_unless (msg != NULL, "no QoS message");
  gst_message_parse_qos_stats (msg, &fmt, &processed, &dropped);
  fail_unless_equals_int (fmt, GST_FORMAT_BUFFERS);
  fail_unless_equals_uint64 (processed, 1);
  fail_unless_equals_uint64 (dropped, 1);
  {
    GstClockTime rt, ts;
    gboolean live;
    gst_message_parse_qos (msg, &live, &rt, NULL, &ts, NULL);
    fail_unless_equals_uint64 (ts, FRAME_NS);
    fail_unless_equals_uint64 (rt, FRAME_NS);
  }
  gst_message_unref (msg);
  gate_release ();
  push_eos (h);
  fail_unless_equals_int (gst_harness_buffers_received (h), 2);
  b = gst_harness_pull (h);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (b), 0);
  fail_unless (gst_buffer_get_partimenet_meta (b) != NULL);
  gst_buffer_unref (b);
  b = gst_harness_pull (h);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (b), FRAME_NS);
  fail_unless (gst_buffer_get_partimenet_meta (b) == NULL);
  gst_buffer_unref (b);
  teardown_with_bus (h, bus);
  gate_remove ();
}

GST_END_TEST;

/* A frame is normalized with the scale in force when it arrived, even when stage 0 converts it
 * after the scale changed. */
GST_START_TEST (test_normalization_per_frame)
{
  GstHarness *h = harness_new (NULL, "train", FALSE, "stages", 3, "balance",
      "3,3,-1", NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  const gint64 n = 3 * 64 * 64;
  gfloat *input = g_new (gfloat, n), *want = g_new (gfloat, n);
  GstBuffer *frames[6];
  guint i;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (i = 0; i < 6; i++) {
    frames[i] = make_frame (&info, i, i * FRAME_NS);
    if (i == 3)
      g_object_set (h->element, "scale", 0.5 / 255.0, NULL);
    gst_harness_push (h, gst_buffer_ref (frames[i]));
  }
  push_eos (h);
  for (i = 0; i < 6; i++) {
    GstBuffer *b = gst_harness_pull (h);
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (b);
    gint64 k;

    frame_to_input_scaled (&info, frames[i], i < 3 ? 1.0 / 255.0 : 0.5 / 255.0,
        input);
    reference_output (AE, input, want, n);
    for (k = 0; k < n; k++)
      fail_unless (close_enough (m->output[k], want[k]), "frame %u output %"
          G_GINT64_FORMAT ": %g vs %g", i, k, m->output[k], want[k]);
    gst_buffer_unref (b);
    gst_buffer_unref (frames[i]);
  }
  g_free (input);
  g_free (want);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* Frames with padded rows and planes (a video meta) give what the same frames packed give. */
GST_START_TEST (test_strided_frames)
{
  const gchar *caps =
      "video/x-raw,format=I420,width=40,height=30,framerate=30/1";
  GstVideoInfo info = info_from_string (caps);
  GstHarness *packed = harness_new (NULL, "train", FALSE, NULL);
  GstHarness *strided = harness_new (NULL, "train", FALSE, NULL);
  guint k;

  gst_harness_set_src_caps_str (packed, caps);
  gst_harness_set_src_caps_str (strided, caps);
  for (k = 0; k < 3; k++) {
    GstBuffer *a = make_frame (&info, k, k * FRAME_NS), *b, *oa, *ob;
    GstVideoFrame fa, fb;
    GstVideoInfo pad = info;
    gsize offset = 0;
    guint p;

    /* the same picture with 13 spare bytes per row and 100 between planes */
    for (p = 0; p < GST_VIDEO_INFO_N_PLANES (&info); p++) {
      pad.stride[p] = info.stride[p] + 13;
      pad.offset[p] = offset + 100;
      offset = pad.offset[p] + (gsize) pad.stride[p] *
          GST_VIDEO_FORMAT_INFO_SCALE_HEIGHT (info.finfo, p, info.height);
    }
    pad.size = offset;
    b = gst_buffer_new_allocate (NULL, pad.size, NULL);
    gst_buffer_memset (b, 0, 0xab, pad.size);
    gst_buffer_add_video_meta_full (b, GST_VIDEO_FRAME_FLAG_NONE,
        GST_VIDEO_INFO_FORMAT (&info), info.width, info.height,
        GST_VIDEO_INFO_N_PLANES (&info), pad.offset, pad.stride);
    fail_unless (gst_video_frame_map (&fa, &info, a, GST_MAP_READ));
    fail_unless (gst_video_frame_map (&fb, &info, b, GST_MAP_WRITE));
    fail_unless (gst_video_frame_copy (&fb, &fa));
    gst_video_frame_unmap (&fb);
    gst_video_frame_unmap (&fa);
    GST_BUFFER_PTS (b) = GST_BUFFER_PTS (a);

    oa = gst_harness_push_and_pull (packed, a);
    ob = gst_harness_push_and_pull (strided, b);
    {
      GstPartimenetMeta *ma = gst_buffer_get_partimenet_meta (oa);
      GstPartimenetMeta *mb = gst_buffer_get_partimenet_meta (ob);
      fail_unless (ma && mb);
      fail_unless_equals_int (ma->output_size, mb->output_size);
      fail_unless (memcmp (ma->output, mb->output,
              ma->output_size * sizeof (gfloat)) == 0, "frame %u differs", k);
      fail_unless (ma->loss == mb->loss);
    }
    gst_buffer_unref (oa);
    gst_buffer_unref (ob);
  }
  gst_harness_teardown (packed);
  gst_harness_teardown (strided);
}

GST_END_TEST;

/* ---- overload ---- */

GST_START_TEST (test_overload_drop_posts_qos)
{
  GstBus *bus;
  GstHarness *h = harness_new (&bus, "overload", 1 /* drop */ , NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstMessage *msg;
  GstBuffer *b;
  guint64 processed, dropped;
  GstFormat fmt;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  /* downstream: everything before 10 s is late */
  fail_unless (gst_harness_push_upstream_event (h,
          gst_event_new_qos (GST_QOS_TYPE_UNDERFLOW, 0.5, 10 * GST_SECOND,
              0)));
  b = gst_harness_push_and_pull (h, make_frame (&info, 0, GST_SECOND));
  fail_unless (gst_buffer_get_partimenet_meta (b) == NULL);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (b), GST_SECOND);
  gst_buffer_unref (b);
  msg = wait_message (bus, GST_MESSAGE_QOS, NULL, GST_SECOND);
  fail_unless (msg != NULL, "no QoS message");
  gst_message_parse_qos_stats (msg, &fmt, &processed, &dropped);
  fail_unless_equals_int (fmt, GST_FORMAT_BUFFERS);
  fail_unless_equals_uint64 (dropped, 1);
  gst_message_unref (msg);

  /* on time again */
  b = gst_harness_push_and_pull (h, make_frame (&info, 1, 11 * GST_SECOND));
  fail_unless (gst_buffer_get_partimenet_meta (b) != NULL);
  gst_buffer_unref (b);

  /* discard: late frames do not come out at all */
  g_object_set (h->element, "overload", 2, NULL);
  fail_unless (gst_harness_push_upstream_event (h,
          gst_event_new_qos (GST_QOS_TYPE_UNDERFLOW, 0.5, 10 * GST_SECOND,
              11 * GST_SECOND)));
  fail_unless_equals_int (gst_harness_push (h, make_frame (&info, 2,
              12 * GST_SECOND)), GST_FLOW_OK);
  fail_unless_equals_int (gst_harness_buffers_in_queue (h), 0);
  msg = wait_message (bus, GST_MESSAGE_QOS, NULL, GST_SECOND);
  fail_unless (msg != NULL);
  gst_message_unref (msg);

  /* block: never skips */
  g_object_set (h->element, "overload", 0, NULL);
  b = gst_harness_push_and_pull (h, make_frame (&info, 3, 13 * GST_SECOND));
  fail_unless (gst_buffer_get_partimenet_meta (b) != NULL);
  gst_buffer_unref (b);
  teardown_with_bus (h, bus);
}

GST_END_TEST;

/* Live: a frame that reaches the element more than a frame late against the clock is skipped. */
GST_START_TEST (test_overload_live_clock)
{
  GstBus *bus;
  GstHarness *h = harness_new (&bus, "overload", 1, NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstBuffer *b;
  GstMessage *msg;

  gst_harness_use_testclock (h);
  gst_element_set_base_time (h->element, 0);
  gst_harness_set_src_caps_str (h, AE_CAPS);
  /* the pipeline's latency: the sink shows a frame 40 ms after its running time */
  fail_unless (gst_harness_push_upstream_event (h,
          gst_event_new_latency (40 * GST_MSECOND)));
  gst_harness_set_time (h, 10 * GST_SECOND);

  /* due at 0.04 s, allowed one frame more: at 10 s it is hopelessly late */
  b = gst_harness_push_and_pull (h, make_frame (&info, 0, 0));
  fail_unless (gst_buffer_get_partimenet_meta (b) == NULL);
  gst_buffer_unref (b);
  msg = wait_message (bus, GST_MESSAGE_QOS, NULL, GST_SECOND);
  fail_unless (msg != NULL);
  {
    GstClockTime rt;
    gboolean live;
    gst_message_parse_qos (msg, &live, &rt, NULL, NULL, NULL);
    fail_unless (live);
    fail_unless_equals_uint64 (rt, 0);
  }
  gst_message_unref (msg);
  /* a frame that arrives on time is processed */
  b = gst_harness_push_and_pull (h, make_frame (&info, 1,
          10 * GST_SECOND - 20 * GST_MSECOND));
  fail_unless (gst_buffer_get_partimenet_meta (b) != NULL);
  gst_buffer_unref (b);
  /* 50 ms late is within the frame of slack (40 ms + 33 ms) */
  b = gst_harness_push_and_pull (h, make_frame (&info, 2,
          10 * GST_SECOND - 50 * GST_MSECOND));
  fail_unless (gst_buffer_get_partimenet_meta (b) != NULL);
  gst_buffer_unref (b);
  /* 100 ms late is not */
  b = gst_harness_push_and_pull (h, make_frame (&info, 3,
          10 * GST_SECOND - 100 * GST_MSECOND));
  fail_unless (gst_buffer_get_partimenet_meta (b) == NULL);
  gst_buffer_unref (b);
  teardown_with_bus (h, bus);
}

GST_END_TEST;

/* A skipped frame still leaves in order behind the frames in flight. */
GST_START_TEST (test_overload_keeps_order)
{
  GstHarness *h = harness_new (NULL, "stages", 3, "balance", "3,3,-1", NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  guint i;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  /* frames 0-3 go in (block: whatever the network's pace), 0 and 1 leave */
  for (i = 0; i < 4; i++)
    gst_harness_push (h, make_frame (&info, i, i * FRAME_NS));
  fail_unless_equals_int (gst_harness_buffers_received (h), 2);
  /* frames 4 and 5 are late: they skip the network but wait behind 2 and 3 */
  g_object_set (h->element, "overload", 1 /* drop */ , NULL);
  gst_harness_push_upstream_event (h,
      gst_event_new_qos (GST_QOS_TYPE_UNDERFLOW, 0.5, 6 * FRAME_NS - 1, 0));
  for (i = 4; i < 6; i++)
    gst_harness_push (h, make_frame (&info, i, i * FRAME_NS));
  fail_unless_equals_int (gst_harness_buffers_received (h), 2);
  g_object_set (h->element, "overload", 0 /* block */ , NULL);
  for (i = 6; i < 10; i++)
    gst_harness_push (h, make_frame (&info, i, (i + 100) * FRAME_NS));
  push_eos (h);
  fail_unless_equals_int (gst_harness_buffers_received (h), 10);
  for (i = 0; i < 10; i++) {
    GstBuffer *b = gst_harness_pull (h);
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (b);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (b), (i < 6 ? i : i + 100) *
        FRAME_NS);
    fail_unless ((m != NULL) == (i < 4 || i >= 6), "frame %u", i);
    /* frames are numbered all the same, skipped or not */
    if (m)
      fail_unless_equals_uint64 (m->frame, i);
    gst_buffer_unref (b);
  }
  gst_harness_teardown (h);
}

GST_END_TEST;

/* ---- model swap ---- */

GST_START_TEST (test_model_swap)
{
  GstBus *bus;
  GstHarness *h = harness_new (&bus, "stages", 2, "balance", "4,-1", NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstMessage *msg;
  guint i, pushed = 0, swapped_at = 0;
  gchar *model;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (i = 0; i < 3; i++)
    gst_harness_push (h, make_frame (&info, i, (pushed++) * FRAME_NS));
  msg = wait_message (bus, GST_MESSAGE_ELEMENT, "partimenet-model",
      GST_SECOND);
  gst_message_unref (msg);

  /* a good model: loads in the background, then new frames get its results */
  g_object_set (h->element, "model", CLS, NULL);
  msg = NULL;
  for (i = 0; i < 2000 && !msg; i++) {
    gst_harness_push (h, make_frame (&info, i, (pushed++) * FRAME_NS));
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
    if (msg && !gst_structure_has_name (gst_message_get_structure (msg),
            "partimenet-model"))
      gst_clear_message (&msg);
    if (!msg)
      g_usleep (2000);
  }
  fail_unless (msg != NULL, "the new model never started");
  gst_message_unref (msg);
  swapped_at = pushed;
  gst_harness_push (h, make_frame (&info, 1, (pushed++) * FRAME_NS));
  push_eos (h);
  /* every frame came out, in order: the old ones with the old model's output */
  fail_unless_equals_int (gst_harness_buffers_received (h), pushed);
  for (i = 0; i < pushed; i++) {
    GstBuffer *b = gst_harness_pull (h);
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (b);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (b), i * FRAME_NS);
    fail_unless (m != NULL, "frame %u has no result", i);
    if (i >= swapped_at) {
      fail_unless_equals_int (m->output_size, 10);
    } else if (m->output_size != 10) {
      fail_unless_equals_int (m->output_size, 3 * 64 * 64);
    }
    gst_buffer_unref (b);
  }
  teardown_with_bus (h, bus);

  /* a bad model: a warning, and the old one keeps running */
  h = harness_new (&bus, "model", CLS, NULL);
  gst_harness_set_src_caps_str (h, AE_CAPS);
  g_object_set (h->element, "model", "/no/such/new-model.onnx", NULL);
  msg = wait_message (bus, GST_MESSAGE_WARNING, NULL, 5 * GST_SECOND);
  fail_unless (msg != NULL, "no warning for a bad model");
  {
    GError *err = NULL;
    gst_message_parse_warning (msg, &err, NULL);
    fail_unless (strstr (err->message, "/no/such/new-model.onnx") != NULL);
    g_clear_error (&err);
  }
  gst_message_unref (msg);
  for (i = 0; i < 5; i++) {
    GstBuffer *b = gst_harness_push_and_pull (h, make_frame (&info, i,
            i * FRAME_NS));
    fail_unless_equals_int (gst_buffer_get_partimenet_meta (b)->output_size,
        10);
    gst_buffer_unref (b);
  }
  g_object_get (h->element, "model", &model, NULL);
  fail_unless_equals_string (model, CLS);
  g_free (model);
  teardown_with_bus (h, bus);
}

GST_END_TEST;

/* After a swap the checkpoint path belongs to the new model. */
GST_START_TEST (test_model_swap_checkpoint)
{
  gchar *dir = g_dir_make_tmp ("partimenet-XXXXXX", NULL);
  gchar *ck = g_build_filename (dir, "ck.onnx", NULL);
  GstBus *bus;
  GstHarness *h = harness_new (&bus, "checkpoint", ck, NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstMessage *msg = NULL;
  pt_model *m = NULL;
  pt_error err;
  pt_shape in;
  guint i;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  gst_buffer_unref (gst_harness_push_and_pull (h, make_frame (&info, 0, 0)));
  gst_bus_set_flushing (bus, TRUE);
  gst_bus_set_flushing (bus, FALSE);
  g_object_set (h->element, "model", CLS, NULL);
  for (i = 1; i < 2000 && !msg; i++) {
    gst_buffer_unref (gst_harness_push_and_pull (h, make_frame (&info, i,
                i * FRAME_NS)));
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
    if (msg && !gst_structure_has_name (gst_message_get_structure (msg),
            "partimenet-model"))
      gst_clear_message (&msg);
    if (!msg)
      g_usleep (2000);
  }
  fail_unless (msg != NULL);
  gst_message_unref (msg);
  /* the old model's weights were saved at the swap */
  fail_unless_equals_int (pt_model_load (ck, &m, &err), PT_OK);
  in = pt_model_input_shape (m);
  fail_unless_equals_int (in.d[2], 64);
  pt_model_free (m);
  gst_buffer_unref (gst_harness_push_and_pull (h, make_frame (&info, 1, 0)));
  teardown_with_bus (h, bus);
  /* the new one's at stop, although it learned nothing (no targets) */
  fail_unless_equals_int (pt_model_load (ck, &m, &err), PT_OK);
  in = pt_model_input_shape (m);
  fail_unless_equals_int (in.d[2], 32);
  pt_model_free (m);
  g_unlink (ck);
  g_rmdir (dir);
  g_free (ck);
  g_free (dir);
}

GST_END_TEST;

/* ---- statistics ---- */

GST_START_TEST (test_statistics)
{
  GstHarness *h = harness_new (NULL, "learning-rate", 0.02, NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  gdouble loss, fps;
  guint64 trained;
  guint k;

  g_object_get (h->element, "last-loss", &loss, NULL);
  fail_unless (isnan (loss));
  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (k = 0; k < 40; k++)
    gst_buffer_unref (gst_harness_push_and_pull (h, make_frame (&info, 3,
                k * FRAME_NS)));
  g_object_get (h->element, "last-loss", &loss, "frames-trained", &trained,
      "fps", &fps, NULL);
  fail_unless (isfinite (loss) && loss > 0);
  fail_unless_equals_uint64 (trained, 40);
  fail_unless (fps >= 0);

  /* training off: the loss is still an anomaly score, nothing is learned */
  g_object_set (h->element, "train", FALSE, NULL);
  for (k = 0; k < 3; k++) {
    GstBuffer *b = gst_harness_push_and_pull (h, make_frame (&info, 3,
            (40 + k) * FRAME_NS));
    GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (b);
    fail_unless (isfinite (m->loss) && !m->trained);
    gst_buffer_unref (b);
  }
  g_object_get (h->element, "frames-trained", &trained, NULL);
  fail_unless_equals_uint64 (trained, 40);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* Learning rate and momentum change from the next frame on, without a new stream: the step count
 * and the optimizer state go on. A new optimizer starts afresh. */
GST_START_TEST (test_learning_rate_in_playing)
{
  GstHarness *h = harness_new (NULL, "learning-rate", 0.01, NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  const gint64 n = 3 * 64 * 64;
  gfloat *prev = g_new (gfloat, n);
  guint k;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (k = 0; k < 12; k++) {
    GstBuffer *b;
    GstPartimenetMeta *m;

    if (k == 5)
      g_object_set (h->element, "learning-rate", 0.0, NULL);
    else if (k == 8)
      g_object_set (h->element, "learning-rate", 0.01, "momentum", 0.5, NULL);
    b = gst_harness_push_and_pull (h, make_frame (&info, 5, k * FRAME_NS));
    m = gst_buffer_get_partimenet_meta (b);
    fail_unless (m != NULL && m->trained);
    /* one stream all along: the last stage's step count never restarts */
    fail_unless_equals_int64 (m->step, k + 1);
    /* frame k shows the weights after frame k - 1's update: frozen by frames 5-7 */
    if (k == 6 || k == 7 || k == 8)
      fail_unless (memcmp (m->output, prev, n * sizeof (gfloat)) == 0,
          "frame %u: the weights moved at learning rate 0", k);
    else if (k > 0)
      fail_unless (memcmp (m->output, prev, n * sizeof (gfloat)) != 0,
          "frame %u: the weights did not move", k);
    memcpy (prev, m->output, n * sizeof (gfloat));
    gst_buffer_unref (b);
  }

  /* a new optimizer needs a new stream: its state and step count start afresh */
  g_object_set (h->element, "optimizer", 0 /* sgd */ , NULL);
  {
    GstBuffer *b = gst_harness_push_and_pull (h, make_frame (&info, 5,
            12 * FRAME_NS));
    fail_unless_equals_int64 (gst_buffer_get_partimenet_meta (b)->step, 1);
    gst_buffer_unref (b);
  }
  g_free (prev);
  gst_harness_teardown (h);
}

GST_END_TEST;

/* A loss the model cannot learn, set in PLAYING: a warning, and the old settings keep running. */
GST_START_TEST (test_bad_loss_in_playing)
{
  GstBus *bus;
  GstHarness *h = harness_new (&bus, "model", CLS, NULL);
  GstVideoInfo info = info_from_string (CLS_CAPS);
  GstMessage *msg;
  guint k;

  gst_harness_set_src_caps_str (h, CLS_CAPS);
  gst_buffer_unref (gst_harness_push_and_pull (h, make_frame (&info, 0, 0)));
  /* reconstruction compares the output with the input: not for a classifier */
  g_object_set (h->element, "loss", 4 /* reconstruction */ , NULL);
  for (k = 1; k < 4; k++) {
    GstBuffer *b = make_frame (&info, k, k * FRAME_NS), *out;
    GstPartimenetMeta *m;
    gst_buffer_add_partimenet_target_meta (b, 2, NULL, 0);
    out = gst_harness_push_and_pull (h, b);
    m = gst_buffer_get_partimenet_meta (out);
    fail_unless (m != NULL);
    fail_unless_equals_int (m->output_size, 10);
    /* still cross-entropy, still learning */
    fail_unless (m->trained && isfinite (m->loss));
    fail_unless_equals_int64 (m->step, k);
    gst_buffer_unref (out);
  }
  msg = wait_message (bus, GST_MESSAGE_WARNING, NULL, GST_SECOND);
  fail_unless (msg != NULL, "no warning");
  {
    GError *err = NULL;
    gst_message_parse_warning (msg, &err, NULL);
    fail_unless (strstr (err->message, "reconstruction") != NULL, "%s",
        err->message);
    g_clear_error (&err);
  }
  gst_message_unref (msg);
  teardown_with_bus (h, bus);
}

GST_END_TEST;

/* A learning rate that blows the weights up: the last good ones come back, with a warning. */
GST_START_TEST (test_divergence_warning)
{
  GstBus *bus;
  GstHarness *h = harness_new (&bus, "model", data_path ("gray16.onnx"),
      "optimizer", 0, "learning-rate", 10.0, NULL);
  GstVideoInfo info = info_from_string (AE_CAPS);
  GstMessage *msg = NULL;
  guint k;

  gst_harness_set_src_caps_str (h, AE_CAPS);
  for (k = 0; k < 100 && !msg; k++) {
    gst_buffer_unref (gst_harness_push_and_pull (h, make_frame (&info, k,
                k * FRAME_NS)));
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING);
  }
  fail_unless (msg != NULL, "no warning after %u frames", k);
  {
    GError *err = NULL;
    gst_message_parse_warning (msg, &err, NULL);
    fail_unless (strstr (err->message, "diverged") != NULL, "%s",
        err->message);
    g_clear_error (&err);
  }
  gst_message_unref (msg);
  /* and the video keeps flowing */
  gst_buffer_unref (gst_harness_push_and_pull (h, make_frame (&info, 0, 0)));
  teardown_with_bus (h, bus);
}

GST_END_TEST;

static Suite *
partimenet_suite (void)
{
  Suite *s = suite_create ("partimenet");
  TCase *tc = tcase_create ("general");

  suite_add_tcase (s, tc);
  tcase_set_timeout (tc, 120);
  tcase_add_test (tc, test_formats_and_sizes);
  tcase_add_test (tc, test_gray_and_rgba_models);
  tcase_add_test (tc, test_caps_passthrough);
  tcase_add_test (tc, test_caps_cuda_memory);
  tcase_add_test (tc, test_meta_survives_downstream_conversion);
  tcase_add_test (tc, test_timestamps_flags_metas);
  tcase_add_test (tc, test_lag_and_drain);
  tcase_add_test (tc, test_latency_query);
  tcase_add_test (tc, test_flush_drops_in_flight);
  tcase_add_test (tc, test_caps_change_mid_stream);
  tcase_add_test (tc, test_state_cycling);
  tcase_add_test (tc, test_properties_from_another_thread);
  tcase_add_test (tc, test_errors);
  tcase_add_test (tc, test_checkpoint_round_trip);
  tcase_add_test (tc, test_checkpoint_interval_and_eos);
  tcase_add_test (tc, test_kill_during_checkpoint);
  tcase_add_test (tc, test_target_meta_cross_entropy);
  tcase_add_test (tc, test_target_meta_mse_and_softmax);
  tcase_add_test (tc, test_messages);
  tcase_add_test (tc, test_conversion_off_streaming_thread);
  tcase_add_test (tc, test_normalization_per_frame);
  tcase_add_test (tc, test_strided_frames);
  tcase_add_test (tc, test_overload_drop_posts_qos);
  tcase_add_test (tc, test_overload_drop_when_busy);
  tcase_add_test (tc, test_overload_keeps_order);
  tcase_add_test (tc, test_overload_live_clock);
  tcase_add_test (tc, test_model_swap);
  tcase_add_test (tc, test_model_swap_checkpoint);
  tcase_add_test (tc, test_statistics);
  tcase_add_test (tc, test_learning_rate_in_playing);
  tcase_add_test (tc, test_bad_loss_in_playing);
  tcase_add_test (tc, test_divergence_warning);
  return s;
}

GST_CHECK_MAIN (partimenet);
