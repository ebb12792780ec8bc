/* An application that teaches the partimenet element and reads its results.
 *
 * videotestsrc shows one of three patterns, switching every 10 frames. A probe on its source pad
 * attaches the pattern's index to every frame as a GstPartimenetTargetMeta (supervised online
 * learning with a cross-entropy loss); a probe at the sink reads the GstPartimenetMeta the
 * element attached to the same frame, one frame later with two stages. The classifier learns the
 * patterns as the stream goes: watch the loss fall and the top class follow the target.
 *
 *   app-meta [NUM_BUFFERS]
 *
 * Exits with 0 when every frame came out with a result.
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#include <math.h>
#include <stdlib.h>

#include <gst/gst.h>
#include <partimenetmeta.h>

static const gchar *patterns[] = { "smpte", "checkers-8", "circular" };

typedef struct
{
  GstElement *src;
  gint cls;                     /* the pattern the next frame shows */
  guint64 in, out, with_meta, correct_last;
  guint64 n;
} App;

/* Labels each frame with the pattern it shows, then picks the pattern of the next ones. */
static GstPadProbeReturn
label_frame (GstPad * pad, GstPadProbeInfo * info, gpointer user)
{
  App *app = user;
  GstBuffer *buf = gst_buffer_make_writable (GST_PAD_PROBE_INFO_BUFFER (info));

  gst_buffer_add_partimenet_target_meta (buf, app->cls, NULL, 0);
  GST_PAD_PROBE_INFO_DATA (info) = buf;
  if (++app->in % 10 == 0) {
    app->cls = (app->cls + 1) % G_N_ELEMENTS (patterns);
    gst_util_set_object_arg (G_OBJECT (app->src), "pattern",
        patterns[app->cls]);
  }
  return GST_PAD_PROBE_OK;
}

/* Reads the result of each frame. */
static GstPadProbeReturn
read_result (GstPad * pad, GstPadProbeInfo * info, gpointer user)
{
  App *app = user;
  GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER (info);
  GstPartimenetMeta *m = gst_buffer_get_partimenet_meta (buf);
  guint64 idx = app->out++;

  if (!m)
    return GST_PAD_PROBE_OK;
  app->with_meta++;
  /* the target this frame was labelled with: the same schedule as label_frame */
  {
    gint target = (gint) ((idx / 10) % G_N_ELEMENTS (patterns));
    gboolean right = m->n_top > 0 && m->class_ids[0] == target;
    if (idx + 30 >= app->n && right)
      app->correct_last++;
    if (idx % 10 == 9 || idx + 1 == app->n)
      g_print ("frame %3" G_GUINT64_FORMAT ": target %d, top class %d (p=%.2f)"
          ", loss %.4f, step %" G_GINT64_FORMAT ", %u stages%s\n", m->frame,
          target, m->n_top ? m->class_ids[0] : -1,
          m->n_top ? m->scores[0] : 0.0f, m->loss, m->step, m->stages,
          right ? "" : "  (wrong)");
  }
  return GST_PAD_PROBE_OK;
}

int
main (int argc, char **argv)
{
  App app = { 0 };
  GstElement *pipeline, *net, *sink;
  GstPad *pad;
  GstBus *bus;
  GstMessage *msg;
  GError *err = NULL;
  gchar *desc;
  int ret = 1;

  gst_init (&argc, &argv);
  app.n = argc > 1 ? g_ascii_strtoull (argv[1], NULL, 10) : 300;
  if (app.n == 0)
    app.n = 300;

  desc = g_strdup_printf ("videotestsrc name=src pattern=%s num-buffers=%"
      G_GUINT64_FORMAT " ! video/x-raw,width=64,height=64 ! partimenet name=net "
      "model=builtin:classifier:3 loss=cross-entropy optimizer=adam "
      "learning-rate=0.001 stages=2 ! fakesink name=sink", patterns[0], app.n);
  pipeline = gst_parse_launch (desc, &err);
  g_free (desc);
  if (!pipeline) {
    g_printerr ("cannot build the pipeline: %s\n", err->message);
    g_clear_error (&err);
    return 1;
  }
  app.src = gst_bin_get_by_name (GST_BIN (pipeline), "src");
  net = gst_bin_get_by_name (GST_BIN (pipeline), "net");
  sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");

  pad = gst_element_get_static_pad (app.src, "src");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, label_frame, &app, NULL);
  gst_object_unref (pad);
  pad = gst_element_get_static_pad (sink, "sink");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, read_result, &app, NULL);
  gst_object_unref (pad);

  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  bus = gst_element_get_bus (pipeline);
  msg = gst_bus_timed_pop_filtered (bus, GST_CLOCK_TIME_NONE,
      GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    gchar *dbg = NULL;
    gst_message_parse_error (msg, &err, &dbg);
    g_printerr ("error: %s\n%s\n", err->message, dbg ? dbg : "");
    g_clear_error (&err);
    g_free (dbg);
  } else {
    guint64 trained;
    g_object_get (net, "frames-trained", &trained, NULL);
    g_print ("end of stream: %" G_GUINT64_FORMAT " frames, %" G_GUINT64_FORMAT
        " with results, %" G_GUINT64_FORMAT " trained; last 30 frames: %"
        G_GUINT64_FORMAT " right\n", app.out, app.with_meta, trained,
        app.correct_last);
    ret = app.out == app.n && app.with_meta == app.n ? 0 : 1;
  }
  gst_message_unref (msg);
  gst_object_unref (bus);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (app.src);
  gst_object_unref (net);
  gst_object_unref (sink);
  gst_object_unref (pipeline);
  return ret;
}
