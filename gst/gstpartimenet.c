/* GStreamer partimenet: live video analytics and continual learning with a neural network cut
 * into stages that run as a pipeline over time (libpartime).
 *
 * The element is glue around a pt_stream: the chain function copies a frame's pixels, pushes
 * them (one tick) and then pushes downstream every buffer whose result popped. With D stages a
 * result trails its frame by D - 1 ticks, so buffers wait in a queue in arrival order, together
 * with the serialized events and the frames that skipped the network, and leave in that same
 * order: a frame goes out only when everything that arrived before it has.
 *
 * Input conversion (format, scaling, normalization) is real work, so it runs on stage 0's worker
 * and not on the streaming thread: the chain function only copies the frame, behind the
 * normalization in force when it arrived, straight into one of the stream's raw buffers
 * (RawHeader + pixels laid out as the caps say); stage 0 converts it with GstVideoConverter and
 * normalizes it (gst_partimenet_preprocess). The converter is shared with that worker, so the
 * streaming thread rebuilds it only when no raw frame waits for conversion: on a caps change
 * after draining the stream, or before a new stream's first frame.
 *
 * Threads. Properties and statistics live under the object lock. The engine (model + stream)
 * and the queue belong to the streaming thread (the sink pad's stream lock);
 * start and stop touch them only while the pads are inactive. Anything that must change the
 * engine while data flows is recorded under the object lock and applied by the streaming thread
 * at the next tick boundary: learning rate and momentum, and training on or off, go straight to
 * the stream (they apply from the next tick, optimizer state kept); a new loss or optimizer
 * rebuilds the stream after its frames in flight have been drained out; a new model is loaded by
 * a background thread so that the stream never waits for a file, then swapped in the same way.
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

/**
 * SECTION:element-partimenet
 * @title: partimenet
 *
 * Runs a neural network on every video frame, one stage per device as a pipeline over time,
 * and keeps learning from the stream. Video passes through untouched; each frame leaves with a
 * #GstPartimenetMeta holding its result (output tensor, top-k classes with labels, loss,
 * training step). With D stages a frame leaves D - 1 frames after it entered; the element adds
 * that delay to the LATENCY query.
 *
 * With no property set the built-in autoencoder learns to reconstruct the video on the CPU and
 * its per-frame reconstruction loss is an anomaly score.
 *
 * ## Example launch lines
 * |[
 * gst-launch-1.0 -m videotestsrc num-buffers=100 ! partimenet post-messages=true ! fakesink
 * ]|
 * |[
 * gst-launch-1.0 -m filesrc location=clip.ogv ! decodebin ! videoconvert ! partimenet \
 *     model=net.onnx labels=labels.txt devices=cpu,cpu post-messages=true ! fakesink
 * ]|
 *
 * ## Element messages
 * With #GstPartimenet:post-messages, every #GstPartimenet:message-interval frames the element
 * posts an element message named `partimenet` with the fields: `frame` (G_TYPE_UINT64),
 * `timestamp`, `running-time`, `stream-time`, `duration` (GstClockTime), `loss` (G_TYPE_DOUBLE,
 * NaN when none), `trained` (G_TYPE_BOOLEAN), `step` (G_TYPE_INT64), `stages` (G_TYPE_INT),
 * `latency` (G_TYPE_UINT64, ns) and, for a classifier, `classes` (list of G_TYPE_INT), `scores`
 * (list of G_TYPE_DOUBLE) and `labels` (list of G_TYPE_STRING, only with a labels file), best
 * first. Whenever a model starts (at start and after a swap) it posts `partimenet-model` with
 * `model`, `stages`, `devices` and `nodes` (per stage), `input-shape`, `output-shape`, `loss`
 * and `parameters`.
 */

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "gstpartimenet.h"
#include "partimenetmeta.h"

#ifdef HAVE_GST_CUDA
#include <gst/cuda/gstcudacontext.h>
#include <gst/cuda/gstcudaloader.h>
#include <gst/cuda/gstcudamemory.h>
#include <gst/cuda/gstcudautils.h>
#endif

/* classification results as analytics metadata came with GStreamer 1.24 */
#if defined (HAVE_GST_ANALYTICS) && GST_CHECK_VERSION (1, 24, 0)
#define USE_ANALYTICS_META 1
#include <gst/analytics/analytics.h>
#endif

GST_DEBUG_CATEGORY_STATIC (gst_partimenet_debug);
#define GST_CAT_DEFAULT gst_partimenet_debug

#define DEFAULT_MODEL "builtin:autoencoder"
#define DEFAULT_STAGES 0
#define DEFAULT_BALANCE "auto"
#define DEFAULT_TRAIN TRUE
#define DEFAULT_LOSS GST_PARTIMENET_LOSS_AUTO
#define DEFAULT_OPTIMIZER GST_PARTIMENET_OPTIMIZER_ADAM
#define DEFAULT_LEARNING_RATE 1e-3
#define DEFAULT_MOMENTUM 0.9
#define DEFAULT_CHECKPOINT_INTERVAL 0
#define DEFAULT_OVERLOAD GST_PARTIMENET_OVERLOAD_BLOCK
#define DEFAULT_POST_MESSAGES FALSE
#define DEFAULT_MESSAGE_INTERVAL 1
#define DEFAULT_TOP_K 5
#define DEFAULT_SCALE (1.0 / 255.0)
#define DEFAULT_MEAN "0"
#define DEFAULT_STD "1"

enum
{
  PROP_0,
  PROP_MODEL,
  PROP_LABELS,
  PROP_DEVICES,
  PROP_CUDA_GRAPHS,
  PROP_STAGES,
  PROP_BALANCE,
  PROP_TRAIN,
  PROP_LOSS,
  PROP_OPTIMIZER,
  PROP_LEARNING_RATE,
  PROP_MOMENTUM,
  PROP_CHECKPOINT,
  PROP_CHECKPOINT_INTERVAL,
  PROP_OVERLOAD,
  PROP_POST_MESSAGES,
  PROP_MESSAGE_INTERVAL,
  PROP_TOP_K,
  PROP_SCALE,
  PROP_MEAN,
  PROP_STD,
  PROP_LATENCY,
  PROP_FPS,
  PROP_LAST_LOSS,
  PROP_FRAMES_TRAINED,
};

#define VIDEO_FORMATS "{ RGB, BGR, RGBx, BGRx, xRGB, xBGR, RGBA, BGRA, ARGB, ABGR, " \
  "GRAY8, I420, YV12, NV12, NV21, YUY2, UYVY, Y444 }"

/* Built with GStreamer's CUDA library and a CUDA libpartime, packed RGB frames in GPU memory
 * (from cudaupload or NVIDIA decoders) come first: with GPU stages they go to stage 0 without a
 * trip through the host (gst_partimenet_cuda_frame), otherwise they are downloaded. */
#ifdef HAVE_GST_CUDA
#define VIDEO_CAPS \
  GST_VIDEO_CAPS_MAKE_WITH_FEATURES (GST_CAPS_FEATURE_MEMORY_CUDA_MEMORY, \
      "{ RGB, BGR, RGBx, BGRx, RGBA, BGRA }") "; " GST_VIDEO_CAPS_MAKE (VIDEO_FORMATS)
#else
#define VIDEO_CAPS GST_VIDEO_CAPS_MAKE (VIDEO_FORMATS)
#endif

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (VIDEO_CAPS));

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (VIDEO_CAPS));

/* What waits in the output queue, in arrival order. */
typedef enum
{
  ITEM_FRAME,                   /* a buffer inside the stream, waiting for its result */
  ITEM_PASS,                    /* a buffer that skipped the network */
  ITEM_EVENT,                   /* a serialized event */
} ItemKind;

typedef struct
{
  ItemKind kind;
  gpointer obj;                 /* GstBuffer or GstEvent, owned */
  guint64 index;                /* frame index (buffers) */
  GstBuffer *tensor;            /* a frame's pooled output buffer, mapped: the stream writes
                                 * the output there (pt_stream_set_output); owned, or NULL */
  GstMapInfo map;
} Item;

/* Gives back the output buffer of a frame that leaves without its result. */
static void
item_drop_tensor (Item * it)
{
  if (it->tensor) {
    gst_buffer_unmap (it->tensor, &it->map);
    gst_buffer_unref (it->tensor);
    it->tensor = NULL;
  }
}

/* The settings a stream is built from, copied out of the properties. */
typedef struct
{
  gchar *devices;
  gboolean cuda_graphs;
  gchar *balance;
  guint stages;
  gboolean train;
  GstPartimenetLoss loss;
  GstPartimenetOptimizer optimizer;
  gdouble lr;
  gdouble momentum;
  gsize raw_bytes;              /* the largest raw frame the stream must take */
} Settings;

/* A raw frame as pushed to the stream: the normalization x * a[c] + b[c] in force when the frame
 * arrived, then, RAW_HEADER_SIZE bytes from the start, its pixels packed as the caps describe.
 * Each frame carries its own normalization so that scale, mean or std changed in PLAYING apply
 * from the next frame on, never to a frame that already waits for stage 0. */
typedef struct
{
  gfloat a[4], b[4];
} RawHeader;

#define RAW_HEADER_SIZE 64
G_STATIC_ASSERT (sizeof (RawHeader) <= RAW_HEADER_SIZE);

/* Turns raw frames into the model's input. Used by stage 0's worker (by the pushing thread with
 * the next-frame loss); changed by the streaming thread only while no raw frame waits. */
typedef struct
{
  gboolean ready;
  GstVideoInfo info;            /* layout of the raw frames' pixels */
  GstVideoInfo model_info;      /* the model's picture */
  GstVideoConverter *convert;   /* NULL: frames already have the model's format, size */
  GstBuffer *out_buf;
  GstVideoFrame out_frame;      /* the converted picture */
  gboolean out_mapped;
  gint C, H, W;
} Converter;

/* A model, its stream and what the element derives from their shapes. */
typedef struct
{
  gchar *spec;
  pt_model *model;
  pt_stream *stream;
  pt_shape in_shape, out_shape;
  gint C, H, W;
  gint64 in_numel, out_numel;
  gsize raw_bytes;              /* the largest raw frame its stream takes */
  pt_loss loss;
  gint depth;                   /* D */
  gint lag;                     /* ticks a result trails its frame: D - 1, one more for next-frame */
  gint n_classes;               /* > 0 when the output is a class vector */
  gboolean out_is_prob, out_is_logprob;
} Engine;

struct _GstPartimenet
{
  GstElement parent;

  GstPad *sinkpad, *srcpad;

  /* properties (object lock) */
  gchar *model_spec;
  gchar *labels_path;
  gchar *devices;
  gboolean cuda_graphs;
  guint stages;
  gchar *balance;
  gboolean train;
  GstPartimenetLoss loss;
  GstPartimenetOptimizer optimizer;
  gdouble lr, momentum;
  gchar *checkpoint;
  guint checkpoint_interval;
  GstPartimenetOverload overload;
  gboolean post_messages;
  guint message_interval;
  guint top_k;
  gdouble scale;
  gchar *mean_str, *std_str;
  gfloat mean[4], std[4];
  guint n_mean, n_std;
  gboolean norm_dirty;          /* scale/mean/std changed: recompute at the next tick */
  gboolean hyper_dirty;         /* learning rate or momentum changed: tell the stream */
  gboolean settings_dirty;      /* loss or optimizer changed: rebuild the stream */
  gsize raw_hint;               /* raw block size of the current caps, for the model loader */

  /* statistics (object lock) */
  GstClockTime stat_latency;
  gdouble stat_fps;
  gdouble stat_loss;
  guint64 stat_trained;

  /* downstream timing (object lock) */
  GstClockTime earliest_time;   /* from QoS events, running time */
  GstClockTime pipeline_latency;        /* from the LATENCY event */

  /* model swap (object lock) */
  gchar *swap_request;          /* spec waiting for the loader */
  GThread *loader;
  gboolean loader_running;
  Engine *pending;              /* loaded, waiting for the next tick boundary */
  gchar *active_spec;           /* the spec of the running engine */
  guint swap_seq;

  /* streaming state (stream lock; start/stop with inactive pads) */
  gboolean started;
  Engine *eng;
  gboolean stream_train;        /* training state applied to the stream */
  const gchar **labels;         /* interned */
  guint n_labels;
  GQuark *label_quarks;
  GstVideoInfo in_info;
  gboolean have_info;
  Converter conv;               /* shared with stage 0's worker, see above */
  gsize raw_size;               /* bytes of a raw frame (RawHeader + pixels) of the caps */
  gfloat *probs;                /* n_classes */
  gfloat norm_a[4], norm_b[4];  /* the normalization frames get from now on */
#ifdef HAVE_GST_CUDA
  GstCudaContext *cuda_ctx;     /* stage 0's GPU's primary context, shared through GstContext */
  gint cuda_device;             /* stage 0's GPU, -1 when the stages run on CPU cores */
  gboolean in_cuda;             /* the negotiated caps carry memory:CUDAMemory */
  gboolean cuda_fallback_logged;
#endif
  GstBufferPool *tensor_pool;
  GstQueueArray *items;
  GstSegment segment;
  guint64 n_frames;             /* buffers seen since start */
  guint64 n_processed, n_dropped;
  gint64 updates_base;          /* optimizer steps of streams rebuilt since the engine started */
  gint64 updates_at_save;
  guint64 frames_since_save;
  gint64 restores_seen;
  gdouble tick_s;               /* smoothed wall time of one tick, seconds */
  GstClockTime reported_latency;
  gint64 fps_t0;
  guint64 fps_frames;
  gchar *ckpt_path;             /* checkpoint path applied to this run */
};

G_DEFINE_TYPE (GstPartimenet, gst_partimenet, GST_TYPE_ELEMENT);
GST_ELEMENT_REGISTER_DEFINE (partimenet, "partimenet", GST_RANK_NONE,
    GST_TYPE_PARTIMENET);

static void gst_partimenet_finalize (GObject * object);
static void gst_partimenet_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec);
static void gst_partimenet_get_property (GObject * object, guint prop_id,
    GValue * value, GParamSpec * pspec);
static GstStateChangeReturn gst_partimenet_change_state (GstElement * element,
    GstStateChange transition);
static GstFlowReturn gst_partimenet_chain (GstPad * pad, GstObject * parent,
    GstBuffer * buf);
static gboolean gst_partimenet_sink_event (GstPad * pad, GstObject * parent,
    GstEvent * event);
static gboolean gst_partimenet_src_event (GstPad * pad, GstObject * parent,
    GstEvent * event);
#ifdef HAVE_GST_CUDA
static gboolean gst_partimenet_cuda_frame (GstPartimenet * self,
    GstBuffer * buf, GstVideoFrame * vf, pt_device_frame * df);
#endif
static gboolean gst_partimenet_context_query (GstPartimenet * self,
    GstQuery * query);
static gboolean gst_partimenet_sink_query (GstPad * pad, GstObject * parent,
    GstQuery * query);
static gboolean gst_partimenet_src_query (GstPad * pad, GstObject * parent,
    GstQuery * query);

/* ---- enums ---- */

#define GST_TYPE_PARTIMENET_OVERLOAD (gst_partimenet_overload_get_type ())
static GType
gst_partimenet_overload_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {GST_PARTIMENET_OVERLOAD_BLOCK,
        "Process every frame; a slow network back-pressures upstream", "block"},
    {GST_PARTIMENET_OVERLOAD_DROP,
        "A late frame skips the network and passes on without results", "drop"},
    {GST_PARTIMENET_OVERLOAD_DISCARD,
        "A late frame skips the network and is thrown away", "discard"},
    {0, NULL, NULL},
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstPartimenetOverload", values);
    g_once_init_leave (&type, t);
  }
  return type;
}

#define GST_TYPE_PARTIMENET_LOSS (gst_partimenet_loss_get_type ())
static GType
gst_partimenet_loss_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {GST_PARTIMENET_LOSS_AUTO,
        "reconstruction when the output has the input's shape, else cross-entropy",
        "auto"},
    {GST_PARTIMENET_LOSS_NONE, "No loss: inference only", "none"},
    {GST_PARTIMENET_LOSS_CROSS_ENTROPY,
        "Cross-entropy against the class in GstPartimenetTargetMeta",
        "cross-entropy"},
    {GST_PARTIMENET_LOSS_MSE,
        "Mean squared error against the tensor in GstPartimenetTargetMeta", "mse"},
    {GST_PARTIMENET_LOSS_RECONSTRUCTION,
        "Mean squared error against the input frame itself", "reconstruction"},
    {GST_PARTIMENET_LOSS_NEXT_FRAME,
        "Mean squared error against the next input frame", "next-frame"},
    {0, NULL, NULL},
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstPartimenetLoss", values);
    g_once_init_leave (&type, t);
  }
  return type;
}

#define GST_TYPE_PARTIMENET_OPTIMIZER (gst_partimenet_optimizer_get_type ())
static GType
gst_partimenet_optimizer_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {GST_PARTIMENET_OPTIMIZER_SGD, "SGD with momentum", "sgd"},
    {GST_PARTIMENET_OPTIMIZER_ADAM, "Adam", "adam"},
    {0, NULL, NULL},
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstPartimenetOptimizer", values);
    g_once_init_leave (&type, t);
  }
  return type;
}

/* ---- small helpers ---- */

static void
gst_partimenet_log (void *user, pt_log_level level, const char *msg)
{
  GstDebugLevel l;

  switch (level) {
    case PT_LOG_ERROR:
      l = GST_LEVEL_ERROR;
      break;
    case PT_LOG_WARNING:
      l = GST_LEVEL_WARNING;
      break;
    case PT_LOG_INFO:
      l = GST_LEVEL_INFO;
      break;
    default:
      l = GST_LEVEL_DEBUG;
      break;
  }
  GST_CAT_LEVEL_LOG (gst_partimenet_debug, l, user, "%s", msg);
}

/* Posts an error or a warning from a GError (the domain and code decide the message). */
static void
post_gerror (GstPartimenet * self, GstMessageType type, GError * err,
    const gchar * debug)
{
  gst_element_message_full (GST_ELEMENT (self), type, err->domain, err->code,
      g_strdup (err->message), g_strdup (debug), __FILE__, GST_FUNCTION,
      __LINE__);
}

/* Parses "a,b,c" into at most 4 floats; FALSE on anything else. */
static gboolean
parse_floats (const gchar * str, gfloat * out, guint * n)
{
  gchar **parts;
  guint i, len;
  gboolean ok = TRUE;

  if (!str)
    return FALSE;
  parts = g_strsplit (str, ",", -1);
  len = g_strv_length (parts);
  if (len < 1 || len > 4)
    ok = FALSE;
  for (i = 0; ok && i < len; i++) {
    gchar *end;
    gdouble v = g_ascii_strtod (g_strstrip (parts[i]), &end);
    if (end == parts[i] || *end != '\0' || !isfinite (v))
      ok = FALSE;
    else
      out[i] = (gfloat) v;
  }
  if (ok)
    *n = len;
  g_strfreev (parts);
  return ok;
}

static void
settings_clear (Settings * s)
{
  g_free (s->devices);
  g_free (s->balance);
  memset (s, 0, sizeof (*s));
}

/* Copies the stream settings out of the properties. Caller holds the object lock. */
static void
settings_snapshot (GstPartimenet * self, Settings * s)
{
  s->devices = g_strdup (self->devices);
  s->cuda_graphs = self->cuda_graphs;
  s->balance = g_strdup (self->balance);
  s->stages = self->stages;
  s->train = self->train;
  s->loss = self->loss;
  s->optimizer = self->optimizer;
  s->lr = self->lr;
  s->momentum = self->momentum;
  s->raw_bytes = self->raw_hint;
}

static pt_loss
resolve_loss (GstPartimenetLoss l, const pt_model * m)
{
  switch (l) {
    case GST_PARTIMENET_LOSS_NONE:
      return PT_LOSS_NONE;
    case GST_PARTIMENET_LOSS_CROSS_ENTROPY:
      return PT_LOSS_CROSS_ENTROPY;
    case GST_PARTIMENET_LOSS_MSE:
      return PT_LOSS_MSE;
    case GST_PARTIMENET_LOSS_RECONSTRUCTION:
      return PT_LOSS_RECONSTRUCTION;
    case GST_PARTIMENET_LOSS_NEXT_FRAME:
      return PT_LOSS_NEXT_FRAME;
    case GST_PARTIMENET_LOSS_AUTO:
    default:{
      pt_shape a = pt_model_input_shape (m), b = pt_model_output_shape (m);
      gboolean same = a.ndim == b.ndim;
      gint i;
      for (i = 0; same && i < a.ndim; i++)
        same = a.d[i] == b.d[i];
      return same ? PT_LOSS_RECONSTRUCTION : PT_LOSS_CROSS_ENTROPY;
    }
  }
}

static void
engine_free (Engine * e)
{
  if (!e)
    return;
  if (e->stream)
    pt_stream_free (e->stream);
  if (e->model)
    pt_model_free (e->model);
  g_free (e->spec);
  g_free (e);
}

static const gchar *
shape_str (const pt_shape * s, gchar * buf, gsize n)
{
  return pt_shape_str (s, buf, n);
}

static void gst_partimenet_preprocess (void *user, const void *raw, size_t n,
    float *input);

/* Builds the stream of `e` over its model, cut as `balance` says (NULL: as the settings say),
 * taking raw frames of up to s->raw_bytes bytes (at least the model's picture in RGBA). */
static gboolean
engine_make_stream (GstPartimenet * self, Engine * e, const Settings * s,
    const gchar * balance, GError ** error)
{
  pt_stream_opts o;
  pt_error err;

  pt_error_clear (&err);
  pt_stream_opts_init (&o);
  o.stages = (int) s->stages;
  o.devices = s->devices && *s->devices ? s->devices : NULL;
  o.cuda_graphs = s->cuda_graphs;
  if (!balance)
    balance = s->balance && *s->balance ? s->balance : "auto";
  o.balance = balance;
  o.threaded = TRUE;
  o.preprocess = gst_partimenet_preprocess;
  o.preprocess_user = self;
  e->raw_bytes = MAX (s->raw_bytes,
      RAW_HEADER_SIZE + (gsize) e->W * (gsize) e->H * 4);
  o.raw_bytes = e->raw_bytes;
  e->loss = resolve_loss (s->loss, e->model);
  /* training is configured whenever there is a loss so that it can be switched on later */
  o.train.enabled = e->loss != PT_LOSS_NONE;
  o.train.loss = e->loss;
  o.train.optimizer = s->optimizer == GST_PARTIMENET_OPTIMIZER_ADAM ?
      PT_OPT_ADAM : PT_OPT_SGD;
  o.train.lr = (float) s->lr;
  o.train.momentum = (float) s->momentum;
  o.log = gst_partimenet_log;
  o.log_user = self;

  if (pt_stream_new (e->model, &o, &e->stream, &err) != PT_OK) {
    e->stream = NULL;
    g_set_error (error, GST_RESOURCE_ERROR,
        err.code == PT_ERR_DEVICE ? GST_RESOURCE_ERROR_NOT_FOUND :
        GST_RESOURCE_ERROR_SETTINGS, "Cannot run model '%s': %s", e->spec,
        err.msg);
    return FALSE;
  }
  e->depth = pt_stream_depth (e->stream);
  e->lag = e->depth - 1 + (e->loss == PT_LOSS_NEXT_FRAME ? 1 : 0);
  if (!s->train && e->loss != PT_LOSS_NONE)
    pt_stream_set_training (e->stream, false);
  return TRUE;
}

/* Loads a model (and the weights of an existing checkpoint), checks that video can feed it and
 * builds its stream. Runs on the state-change thread or the loader thread: touches nothing of
 * the element but the settings it is handed. */
static Engine *
engine_new (GstPartimenet * self, const gchar * spec, const gchar * checkpoint,
    const Settings * s, GError ** error)
{
  Engine *e = g_new0 (Engine, 1);
  pt_error err;
  gchar sbuf[96];
  gint nd;

  pt_error_clear (&err);
  e->spec = g_strdup (spec);
  if (!spec || !*spec) {
    g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_NOT_FOUND,
        "No model given");
    goto fail;
  }
  if (!g_str_has_prefix (spec, "builtin:")
      && !g_file_test (spec, G_FILE_TEST_EXISTS)) {
    g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_NOT_FOUND,
        "Model file '%s' does not exist", spec);
    goto fail;
  }
  if (pt_model_load (spec, &e->model, &err) != PT_OK) {
    e->model = NULL;
    g_set_error (error, GST_RESOURCE_ERROR,
        err.code == PT_ERR_IO ? GST_RESOURCE_ERROR_OPEN_READ :
        err.code == PT_ERR_INVALID ? GST_RESOURCE_ERROR_NOT_FOUND :
        GST_RESOURCE_ERROR_READ, "Cannot load model '%s': %s", spec, err.msg);
    goto fail;
  }

  if (checkpoint && *checkpoint && g_file_test (checkpoint,
          G_FILE_TEST_IS_REGULAR)) {
    pt_model *ck = NULL;
    if (pt_model_load (checkpoint, &ck, &err) != PT_OK) {
      g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_READ,
          "Cannot load checkpoint '%s': %s", checkpoint, err.msg);
      goto fail;
    }
    if (pt_model_copy_weights (e->model, ck, &err) != PT_OK) {
      pt_model_free (ck);
      g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_SETTINGS,
          "Checkpoint '%s' does not belong to model '%s' (remove it or choose "
          "another checkpoint path): %s", checkpoint, spec, err.msg);
      goto fail;
    }
    pt_model_free (ck);
    GST_INFO_OBJECT (self, "resumed the weights of '%s' from checkpoint '%s'",
        spec, checkpoint);
  }

  e->in_shape = pt_model_input_shape (e->model);
  e->out_shape = pt_model_output_shape (e->model);
  e->in_numel = pt_shape_numel (&e->in_shape);
  e->out_numel = pt_shape_numel (&e->out_shape);
  nd = e->in_shape.ndim;
  if (!((nd == 4 && e->in_shape.d[0] == 1) || nd == 3)) {
    g_set_error (error, GST_STREAM_ERROR, GST_STREAM_ERROR_FORMAT,
        "Model '%s' takes a %s input: video can feed only 1xCxHxW or CxHxW",
        spec, shape_str (&e->in_shape, sbuf, sizeof (sbuf)));
    goto fail;
  }
  e->C = (gint) e->in_shape.d[nd - 3];
  e->H = (gint) e->in_shape.d[nd - 2];
  e->W = (gint) e->in_shape.d[nd - 1];
  if (e->C != 1 && e->C != 3 && e->C != 4) {
    g_set_error (error, GST_STREAM_ERROR, GST_STREAM_ERROR_FORMAT,
        "Model '%s' takes %d input channels (input %s): video can feed 1 "
        "(gray), 3 (RGB) or 4 (RGBA)", spec, e->C,
        shape_str (&e->in_shape, sbuf, sizeof (sbuf)));
    goto fail;
  }
  if (e->H < 1 || e->W < 1 || e->H > 32768 || e->W > 32768) {
    g_set_error (error, GST_STREAM_ERROR, GST_STREAM_ERROR_FORMAT,
        "Model '%s' takes a %s input, which is not a picture", spec,
        shape_str (&e->in_shape, sbuf, sizeof (sbuf)));
    goto fail;
  }

  /* a class vector: one dimension above 1, the others 1 */
  {
    gint i, big = 0;
    gint64 n = 1;
    for (i = 0; i < e->out_shape.ndim; i++)
      if (e->out_shape.d[i] > 1) {
        big++;
        n = e->out_shape.d[i];
      }
    e->n_classes = big == 1 && e->out_numel != e->in_numel && n <= G_MAXINT ?
        (gint) n : 0;
  }
  if (e->n_classes > 0) {
    pt_node_info info;
    gint last = pt_model_n_nodes (e->model) - 1;
    if (last >= 0 && pt_model_node_info (e->model, last, &info) == PT_OK
        && info.op_type) {
      e->out_is_prob = strcmp (info.op_type, "Softmax") == 0;
      e->out_is_logprob = strcmp (info.op_type, "LogSoftmax") == 0;
    }
  }

  if (!engine_make_stream (self, e, s, NULL, error))
    goto fail;
  return e;

fail:
  engine_free (e);
  return NULL;
}

/* The delay the element adds to a frame. Caller holds the object lock or the stream lock. */
static GstClockTime
gst_partimenet_added_latency (GstPartimenet * self, const Engine * e)
{
  GstClockTime frame;

  if (!e || e->lag <= 0)
    return 0;
  if (self->have_info && GST_VIDEO_INFO_FPS_N (&self->in_info) > 0)
    frame = gst_util_uint64_scale_int (GST_SECOND,
        GST_VIDEO_INFO_FPS_D (&self->in_info),
        GST_VIDEO_INFO_FPS_N (&self->in_info));
  else
    frame = (GstClockTime) (self->tick_s * GST_SECOND);
  return frame * (GstClockTime) e->lag;
}

/* Posts a LATENCY message when the delay the element adds has changed. Streaming thread. */
static void
gst_partimenet_update_latency (GstPartimenet * self)
{
  GstClockTime lat = gst_partimenet_added_latency (self, self->eng);
  gboolean changed;

  GST_OBJECT_LOCK (self);
  changed = lat != self->stat_latency;
  self->stat_latency = lat;
  GST_OBJECT_UNLOCK (self);
  if (changed && lat != self->reported_latency) {
    GST_DEBUG_OBJECT (self, "latency now %" GST_TIME_FORMAT,
        GST_TIME_ARGS (lat));
    self->reported_latency = lat;
    gst_element_post_message (GST_ELEMENT (self),
        gst_message_new_latency (GST_OBJECT (self)));
  }
}

/* ---- conversion to the model input ---- */

/* Describes `data`, pixels packed as `info` says, as a video frame without mapping a buffer: the
 * converter and gst_video_frame_copy() read only the info and the plane pointers. */
static void
frame_over_bytes (GstVideoFrame * f, const GstVideoInfo * info, guint8 * data)
{
  guint p;

  memset (f, 0, sizeof (*f));
  f->info = *info;
  f->flags = GST_VIDEO_FRAME_FLAG_NONE;
  f->id = -1;
  for (p = 0; p < GST_VIDEO_INFO_N_PLANES (info); p++)
    f->data[p] = data + GST_VIDEO_INFO_PLANE_OFFSET (info, p);
}

static void
converter_clear (Converter * cv)
{
  if (cv->convert)
    gst_video_converter_free (cv->convert);
  if (cv->out_mapped)
    gst_video_frame_unmap (&cv->out_frame);
  gst_clear_buffer (&cv->out_buf);
  memset (cv, 0, sizeof (*cv));
}

/* Drops the converter. No raw frame may wait for conversion. */
static void
gst_partimenet_free_converter (GstPartimenet * self)
{
  converter_clear (&self->conv);
  self->raw_size = 0;
}

/* Recomputes the per-channel affine map x * a + b from scale, mean and std; frames pushed from
 * now on carry it. */
static gboolean
gst_partimenet_update_norm (GstPartimenet * self, GError ** error)
{
  gfloat mean[4], std[4], scale;
  guint n_mean, n_std, c, C;

  if (!self->eng)
    return TRUE;
  C = (guint) self->eng->C;
  GST_OBJECT_LOCK (self);
  memcpy (mean, self->mean, sizeof (mean));
  memcpy (std, self->std, sizeof (std));
  n_mean = self->n_mean;
  n_std = self->n_std;
  scale = (gfloat) self->scale;
  self->norm_dirty = FALSE;
  GST_OBJECT_UNLOCK (self);

  if ((n_mean != 1 && n_mean != C) || (n_std != 1 && n_std != C)) {
    g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_SETTINGS,
        "mean has %u and std %u values, but the model takes %u channels: give "
        "one value or one per channel", n_mean, n_std, C);
    return FALSE;
  }
  for (c = 0; c < C; c++) {
    gfloat m = mean[n_mean == 1 ? 0 : c];
    gfloat s = std[n_std == 1 ? 0 : c];
    self->norm_a[c] = scale / s;
    self->norm_b[c] = -m / s;
  }
  return TRUE;
}

/* Builds the converter from the input caps to the model's picture, and sets the size of the raw
 * frames the chain function writes into the stream. Streaming thread, while no raw frame waits
 * for conversion (the stream drained, or new). */
static gboolean
gst_partimenet_setup_converter (GstPartimenet * self, GError ** error)
{
  const Engine *e = self->eng;
  Converter *cv = &self->conv;
  GstVideoFormat fmt;
  gboolean direct;
  gsize size;

  converter_clear (cv);
  if (!e || !self->have_info)
    return TRUE;

  fmt = e->C == 1 ? GST_VIDEO_FORMAT_GRAY8 : e->C == 3 ?
      GST_VIDEO_FORMAT_RGB : GST_VIDEO_FORMAT_RGBA;
  cv->info = self->in_info;
  gst_video_info_set_format (&cv->model_info, fmt, e->W, e->H);
  /* the converter changes format and size only: the rest must match */
  GST_VIDEO_INFO_FPS_N (&cv->model_info) = GST_VIDEO_INFO_FPS_N (&cv->info);
  GST_VIDEO_INFO_FPS_D (&cv->model_info) = GST_VIDEO_INFO_FPS_D (&cv->info);
  GST_VIDEO_INFO_INTERLACE_MODE (&cv->model_info) =
      GST_VIDEO_INFO_INTERLACE_MODE (&cv->info);
  cv->C = e->C;
  cv->H = e->H;
  cv->W = e->W;

  direct = GST_VIDEO_INFO_FORMAT (&cv->info) == fmt
      && GST_VIDEO_INFO_WIDTH (&cv->info) == e->W
      && GST_VIDEO_INFO_HEIGHT (&cv->info) == e->H;
  if (!direct) {
    /* one thread: the conversion already runs beside the stream's other stages */
    GstStructure *config = gst_structure_new ("GstVideoConverter",
        GST_VIDEO_CONVERTER_OPT_RESAMPLER_METHOD,
        GST_TYPE_VIDEO_RESAMPLER_METHOD, GST_VIDEO_RESAMPLER_METHOD_LINEAR,
        GST_VIDEO_CONVERTER_OPT_DITHER_METHOD, GST_TYPE_VIDEO_DITHER_METHOD,
        GST_VIDEO_DITHER_NONE,
        GST_VIDEO_CONVERTER_OPT_THREADS, G_TYPE_UINT, 1, NULL);

    cv->convert = gst_video_converter_new (&cv->info, &cv->model_info, config);
    if (!cv->convert) {
      g_set_error (error, GST_CORE_ERROR, GST_CORE_ERROR_NEGOTIATION,
          "Cannot convert %s %dx%d video to the model's %s %dx%d input",
          gst_video_format_to_string (GST_VIDEO_INFO_FORMAT (&cv->info)),
          GST_VIDEO_INFO_WIDTH (&cv->info), GST_VIDEO_INFO_HEIGHT (&cv->info),
          gst_video_format_to_string (fmt), e->W, e->H);
      return FALSE;
    }
    cv->out_buf = gst_buffer_new_allocate (NULL,
        GST_VIDEO_INFO_SIZE (&cv->model_info), NULL);
    if (!cv->out_buf || !gst_video_frame_map (&cv->out_frame,
            &cv->model_info, cv->out_buf, GST_MAP_READWRITE)) {
      g_set_error (error, GST_CORE_ERROR, GST_CORE_ERROR_FAILED,
          "Cannot allocate the %dx%d conversion frame", e->W, e->H);
      return FALSE;
    }
    cv->out_mapped = TRUE;
  }

  size = RAW_HEADER_SIZE + GST_VIDEO_INFO_SIZE (&cv->info);
  self->raw_size = size;
  GST_OBJECT_LOCK (self);
  self->raw_hint = size;
  GST_OBJECT_UNLOCK (self);
  cv->ready = TRUE;

  GST_DEBUG_OBJECT (self, "input %s %dx%d -> model %s %dx%d%s",
      gst_video_format_to_string (GST_VIDEO_INFO_FORMAT (&cv->info)),
      GST_VIDEO_INFO_WIDTH (&cv->info), GST_VIDEO_INFO_HEIGHT (&cv->info),
      gst_video_format_to_string (fmt), e->W, e->H,
      direct ? " (no conversion)" : "");
  return TRUE;
}

/* opts.preprocess: turns one raw frame (RawHeader + pixels) into normalized float NCHW
 * (C x H x W). Runs on stage 0's worker, or inside push with the next-frame loss. */
static void
gst_partimenet_preprocess (void *user, const void *raw, size_t n,
    float *input)
{
  GstPartimenet *self = user;
  Converter *cv = &self->conv;
  const RawHeader *hdr = raw;
  GstVideoFrame src, *f = &src;
  const guint8 *data;
  gint stride, ps, x, y, c;
  gsize plane_px;

  GST_LOG_OBJECT (self, "converting a frame of %" G_GSIZE_FORMAT " bytes", n);
  if (G_UNLIKELY (!cv->ready
          || n != RAW_HEADER_SIZE + GST_VIDEO_INFO_SIZE (&cv->info))) {
    /* cannot happen unless the converter changed under a waiting frame */
    GST_ERROR_OBJECT (self, "a raw frame of %" G_GSIZE_FORMAT " bytes does "
        "not match the converter", n);
    memset (input, 0, (gsize) cv->C * cv->H * cv->W * sizeof (gfloat));
    return;
  }
  frame_over_bytes (&src, &cv->info, (guint8 *) raw + RAW_HEADER_SIZE);
  if (cv->convert) {
    gst_video_converter_frame (cv->convert, &src, &cv->out_frame);
    f = &cv->out_frame;
  }
  data = GST_VIDEO_FRAME_PLANE_DATA (f, 0);
  stride = GST_VIDEO_FRAME_PLANE_STRIDE (f, 0);
  ps = GST_VIDEO_FRAME_COMP_PSTRIDE (f, 0);
  plane_px = (gsize) cv->H * cv->W;
  for (c = 0; c < cv->C; c++) {
    const gint off = GST_VIDEO_FRAME_COMP_OFFSET (f, c);
    const gfloat a = hdr->a[c], b = hdr->b[c];
    gfloat *dst = input + (gsize) c * plane_px;
    for (y = 0; y < cv->H; y++) {
      const guint8 *row = data + (gsize) y * stride + off;
      gfloat *d = dst + (gsize) y * cv->W;
      for (x = 0; x < cv->W; x++)
        d[x] = row[(gsize) x * ps] * a + b;
    }
  }
}

/* Copies `buf`, behind the current normalization, into the stream's next raw buffer; the chain
 * function then commits it (pt_stream_raw_commit). One copy of the pixels, the only one the
 * streaming thread makes. */
static gboolean
gst_partimenet_pack_frame (GstPartimenet * self, GstBuffer * buf)
{
  guint8 *raw = pt_stream_raw_begin (self->eng->stream);
  RawHeader *hdr = (RawHeader *) raw;
  GstVideoFrame in, out;
  gboolean ok;

  if (!raw || !gst_video_frame_map (&in, &self->in_info, buf, GST_MAP_READ))
    return FALSE;
  memcpy (hdr->a, self->norm_a, sizeof (hdr->a));
  memcpy (hdr->b, self->norm_b, sizeof (hdr->b));
  frame_over_bytes (&out, &self->conv.info, raw + RAW_HEADER_SIZE);
  ok = gst_video_frame_copy (&out, &in);
  gst_video_frame_unmap (&in);
  return ok;
}

/* ---- installing an engine ---- */

/* Sums the optimizer steps of all stages of a stream. */
static gint64
stream_updates (const pt_stream * s)
{
  pt_stream_stats *st = (pt_stream_stats *) g_alloca (sizeof (pt_stream_stats));
  gint64 n = 0;
  gint j;

  pt_stream_get_stats (s, st);
  for (j = 0; j < st->stages; j++)
    n += st->stage[j].updates;
  return n;
}

/* The optimizer steps the running engine's weights took: they changed since a save when this
 * moved. */
static gint64
gst_partimenet_total_updates (GstPartimenet * self)
{
  return self->updates_base + stream_updates (self->eng->stream);
}


static void
gst_partimenet_post_model_message (GstPartimenet * self, const Engine * e)
{
  pt_stream_stats *st = g_new0 (pt_stream_stats, 1);
  GValue devs = G_VALUE_INIT, nodes = G_VALUE_INIT, v = G_VALUE_INIT;
  gchar in_s[96], out_s[96];
  GstStructure *s;
  gint j;

  pt_stream_get_stats (e->stream, st);
  g_value_init (&devs, GST_TYPE_LIST);
  g_value_init (&nodes, GST_TYPE_LIST);
  for (j = 0; j < st->stages; j++) {
    gchar *r;
    g_value_init (&v, G_TYPE_STRING);
    g_value_set_string (&v, st->stage[j].device);
    gst_value_list_append_and_take_value (&devs, &v);
    /* "0-8+16": nodes 0-8 and output channels 0-15 of node 9 */
    r = st->stage[j].split_channels ?
        g_strdup_printf ("%d-%d+%d", st->stage[j].first_node,
        st->stage[j].first_node + st->stage[j].n_nodes - 1,
        st->stage[j].split_channels) : g_strdup_printf ("%d-%d",
        st->stage[j].first_node,
        st->stage[j].first_node + st->stage[j].n_nodes - 1);
    g_value_init (&v, G_TYPE_STRING);
    g_value_take_string (&v, r);
    gst_value_list_append_and_take_value (&nodes, &v);
  }
  s = gst_structure_new ("partimenet-model",
      "model", G_TYPE_STRING, e->spec,
      "stages", G_TYPE_INT, e->depth,
      "input-shape", G_TYPE_STRING, shape_str (&e->in_shape, in_s,
          sizeof (in_s)), "output-shape", G_TYPE_STRING,
      shape_str (&e->out_shape, out_s, sizeof (out_s)), "loss", G_TYPE_STRING,
      pt_loss_name (e->loss), "parameters", G_TYPE_INT64,
      (gint64) pt_model_n_params (e->model), NULL);
  gst_structure_take_value (s, "devices", &devs);
  gst_structure_take_value (s, "nodes", &nodes);
  for (j = 0; j < st->stages; j++)
    GST_INFO_OBJECT (self, "stage %d: nodes %d-%d on %s", j,
        st->stage[j].first_node,
        st->stage[j].first_node + st->stage[j].n_nodes - 1,
        st->stage[j].device);
  g_free (st);
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
}

/* Replaces the running engine's stream by one built from the current settings, cut as `balance`
 * says (NULL: as the settings say) and taking raw frames of at least `raw_bytes`. The weights
 * live in the model and stay; the optimizer state starts afresh. The old stream must be drained.
 * On failure the old stream keeps running. */
static gboolean
gst_partimenet_rebuild_stream (GstPartimenet * self, const gchar * balance,
    gsize raw_bytes, GError ** error)
{
  Engine *e = self->eng;
  Engine old = *e;
  Settings s = { 0 };
  gboolean ok;

  GST_OBJECT_LOCK (self);
  settings_snapshot (self, &s);
  /* the new stream takes the current loss, optimizer and hyperparameters */
  self->settings_dirty = FALSE;
  self->hyper_dirty = FALSE;
  GST_OBJECT_UNLOCK (self);
  s.raw_bytes = MAX (s.raw_bytes, raw_bytes);

  e->stream = NULL;
  ok = engine_make_stream (self, e, &s, balance, error);
  if (!ok) {
    e->stream = old.stream;
    e->loss = old.loss;
    e->depth = old.depth;
    e->lag = old.lag;
    e->raw_bytes = old.raw_bytes;
    settings_clear (&s);
    return FALSE;
  }
  self->updates_base += stream_updates (old.stream);
  pt_stream_free (old.stream);
  self->stream_train = s.train && e->loss != PT_LOSS_NONE;
  self->restores_seen = 0;
  if (old.depth != e->depth)
    self->reported_latency = GST_CLOCK_TIME_NONE;
  gst_partimenet_update_latency (self);
  settings_clear (&s);
  return TRUE;
}

/* Makes sure the stream takes raw frames of the current caps: a bigger frame needs a new stream,
 * cut where the running one is. Streaming thread, with the stream drained or new. */
static gboolean
gst_partimenet_fit_raw (GstPartimenet * self, GError ** error)
{
  gchar balance[1024];

  if (!self->eng || !self->have_info || self->raw_size <= self->eng->raw_bytes)
    return TRUE;
  pt_stream_balance (self->eng->stream, balance, sizeof (balance));
  GST_DEBUG_OBJECT (self, "frames of %" G_GSIZE_FORMAT " bytes need a new "
      "stream (the running one takes %" G_GSIZE_FORMAT "); balance %s",
      self->raw_size, self->eng->raw_bytes, balance);
  return gst_partimenet_rebuild_stream (self, balance, self->raw_size, error);
}

/* Makes `e` the running engine: buffers sized for its shapes, converter, pool. Streaming thread
 * or start. Takes ownership of `e`. */
static gboolean
gst_partimenet_install (GstPartimenet * self, Engine * e, GError ** error)
{
  GstStructure *config;
  pt_stream_stats *st;

  /* frees the old stream first: its stage 0 no longer uses the converter rebuilt below */
  engine_free (self->eng);
  self->eng = e;
  g_free (self->probs);
  self->probs = e->n_classes > 0 ? g_new0 (gfloat, e->n_classes) : NULL;
  GST_OBJECT_LOCK (self);
  self->stream_train = self->train && e->loss != PT_LOSS_NONE;
  g_free (self->active_spec);
  self->active_spec = g_strdup (e->spec);
  GST_OBJECT_UNLOCK (self);

  st = g_new0 (pt_stream_stats, 1);
  pt_stream_get_stats (e->stream, st);
  self->restores_seen = st->restores;
  g_free (st);
  self->updates_base = 0;
  self->updates_at_save = stream_updates (e->stream);

  if (self->tensor_pool) {
    gst_buffer_pool_set_active (self->tensor_pool, FALSE);
    gst_clear_object (&self->tensor_pool);
  }
  self->tensor_pool = gst_buffer_pool_new ();
  config = gst_buffer_pool_get_config (self->tensor_pool);
  gst_buffer_pool_config_set_params (config, NULL,
      (guint) (e->out_numel * sizeof (gfloat)), 2, 0);
  if (!gst_buffer_pool_set_config (self->tensor_pool, config)
      || !gst_buffer_pool_set_active (self->tensor_pool, TRUE)) {
    g_set_error (error, GST_CORE_ERROR, GST_CORE_ERROR_FAILED,
        "Cannot set up a pool for %" G_GINT64_FORMAT " output values",
        e->out_numel);
    return FALSE;
  }

  if (!gst_partimenet_update_norm (self, error))
    return FALSE;
  if (!gst_partimenet_setup_converter (self, error))
    return FALSE;
  if (!gst_partimenet_fit_raw (self, error))
    return FALSE;
  gst_partimenet_post_model_message (self, e);
  return TRUE;
}

/* ---- results ---- */

/* Fills the top-k part of the meta from the output. */
static void
gst_partimenet_top_k (GstPartimenet * self, GstPartimenetMeta * meta,
    const gfloat * out, guint k)
{
  const Engine *e = self->eng;
  gint n = e->n_classes, i;
  gfloat *p = self->probs;
  guint j, filled = 0;

  if (e->out_is_prob) {
    memcpy (p, out, n * sizeof (gfloat));
  } else if (e->out_is_logprob) {
    for (i = 0; i < n; i++)
      p[i] = expf (out[i]);
  } else {
    gfloat mx = -INFINITY, sum = 0;
    for (i = 0; i < n; i++)
      if (out[i] > mx)
        mx = out[i];
    for (i = 0; i < n; i++) {
      p[i] = expf (out[i] - mx);
      sum += p[i];
    }
    for (i = 0; i < n; i++)
      p[i] /= sum;
  }

  if (k > (guint) n)
    k = n;
  if (k > GST_PARTIMENET_MAX_TOP_K)
    k = GST_PARTIMENET_MAX_TOP_K;
  /* insertion into a sorted list of k: k is small */
  for (i = 0; i < n; i++) {
    gfloat v = p[i];
    if (!(v == v))
      continue;
    if (filled == k && v <= meta->scores[k - 1])
      continue;
    j = filled < k ? filled++ : k - 1;
    while (j > 0 && meta->scores[j - 1] < v) {
      meta->scores[j] = meta->scores[j - 1];
      meta->class_ids[j] = meta->class_ids[j - 1];
      j--;
    }
    meta->scores[j] = v;
    meta->class_ids[j] = i;
  }
  meta->n_top = filled;
  for (j = 0; j < filled; j++)
    meta->labels[j] = (guint) meta->class_ids[j] < self->n_labels ?
        self->labels[meta->class_ids[j]] : NULL;
}

static void
gst_partimenet_post_result (GstPartimenet * self, GstBuffer * buf,
    const GstPartimenetMeta * meta)
{
  GstClockTime pts = GST_BUFFER_PTS (buf);
  GstStructure *s;
  GstClockTime rt = GST_CLOCK_TIME_NONE, strt = GST_CLOCK_TIME_NONE;
  GstClockTime latency;

  if (self->segment.format == GST_FORMAT_TIME && GST_CLOCK_TIME_IS_VALID (pts)) {
    rt = gst_segment_to_running_time (&self->segment, GST_FORMAT_TIME, pts);
    strt = gst_segment_to_stream_time (&self->segment, GST_FORMAT_TIME, pts);
  }
  GST_OBJECT_LOCK (self);
  latency = self->stat_latency;
  GST_OBJECT_UNLOCK (self);

  s = gst_structure_new ("partimenet",
      "frame", G_TYPE_UINT64, meta->frame,
      "timestamp", G_TYPE_UINT64, pts,
      "running-time", G_TYPE_UINT64, rt,
      "stream-time", G_TYPE_UINT64, strt,
      "duration", G_TYPE_UINT64, GST_BUFFER_DURATION (buf),
      "loss", G_TYPE_DOUBLE, (gdouble) meta->loss,
      "trained", G_TYPE_BOOLEAN, meta->trained,
      "step", G_TYPE_INT64, meta->step,
      "stages", G_TYPE_INT, (gint) meta->stages,
      "latency", G_TYPE_UINT64, latency, NULL);

  if (self->eng->n_classes > 0) {
    GValue classes = G_VALUE_INIT, scores = G_VALUE_INIT, labels = G_VALUE_INIT;
    GValue v = G_VALUE_INIT;
    guint i;

    g_value_init (&classes, GST_TYPE_LIST);
    g_value_init (&scores, GST_TYPE_LIST);
    g_value_init (&labels, GST_TYPE_LIST);
    for (i = 0; i < meta->n_top; i++) {
      g_value_init (&v, G_TYPE_INT);
      g_value_set_int (&v, meta->class_ids[i]);
      gst_value_list_append_and_take_value (&classes, &v);
      g_value_init (&v, G_TYPE_DOUBLE);
      g_value_set_double (&v, meta->scores[i]);
      gst_value_list_append_and_take_value (&scores, &v);
      g_value_init (&v, G_TYPE_STRING);
      g_value_set_static_string (&v, meta->labels[i] ? meta->labels[i] : "");
      gst_value_list_append_and_take_value (&labels, &v);
    }
    gst_structure_take_value (s, "classes", &classes);
    gst_structure_take_value (s, "scores", &scores);
    if (self->n_labels > 0)
      gst_structure_take_value (s, "labels", &labels);
    else
      g_value_unset (&labels);
  }
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
}

/* Attaches the result to its buffer (made writable) and updates the statistics. */
static GstBuffer *
gst_partimenet_attach_result (GstPartimenet * self, Item * it,
    const pt_result * r)
{
  const Engine *e = self->eng;
  GstBuffer *buf = it->obj;
  guint64 index = it->index;
  GstPartimenetMeta *meta;
  GstBuffer *tensor = NULL;
  gboolean in_place;
  gboolean post;
  guint top_k, interval;
  gint64 dims[GST_PARTIMENET_MAX_DIMS];
  gint i, ndim;

  GST_OBJECT_LOCK (self);
  top_k = self->top_k;
  post = self->post_messages;
  interval = MAX (self->message_interval, 1);
  GST_OBJECT_UNLOCK (self);

  buf = gst_buffer_make_writable (buf);
  meta = gst_buffer_add_partimenet_meta (buf);
  meta->frame = index;
  meta->stages = (guint) e->depth;
  meta->loss = r->loss;
  meta->trained = r->trained;
  meta->step = r->step;

  ndim = MIN (e->out_shape.ndim, GST_PARTIMENET_MAX_DIMS);
  for (i = 0; i < ndim; i++)
    dims[i] = e->out_shape.d[i];
  /* the stream wrote the output into the frame's pooled buffer: no copy */
  in_place = it->tensor && r->output == (const gfloat *) it->map.data;
  if (in_place) {
    tensor = it->tensor;
    it->tensor = NULL;
  } else if (gst_buffer_pool_acquire_buffer (self->tensor_pool, &tensor,
          NULL) == GST_FLOW_OK) {
    gst_buffer_fill (tensor, 0, r->output, e->out_numel * sizeof (gfloat));
  } else {
    GST_WARNING_OBJECT (self, "no buffer for the output tensor of frame %"
        G_GUINT64_FORMAT, index);
  }
  if (e->n_classes > 0 && top_k > 0)
    gst_partimenet_top_k (self, meta, r->output, top_k);
  if (in_place)
    gst_buffer_unmap (tensor, &it->map);
  if (tensor)
    gst_partimenet_meta_set_output (meta, tensor, (guint) ndim, dims);

#ifdef USE_ANALYTICS_META
  if (meta->n_top > 0) {
    GstAnalyticsRelationMeta *rmeta;
    GstAnalyticsClsMtd cls;
    GQuark quarks[GST_PARTIMENET_MAX_TOP_K];
    gfloat conf[GST_PARTIMENET_MAX_TOP_K];
    guint q;

    rmeta = gst_buffer_get_analytics_relation_meta (buf);
    if (!rmeta)
      rmeta = gst_buffer_add_analytics_relation_meta (buf);
    for (q = 0; q < meta->n_top; q++) {
      gint id = meta->class_ids[q];
      if ((guint) id < self->n_labels)
        quarks[q] = self->label_quarks[id];
      else {
        gchar name[32];
        g_snprintf (name, sizeof (name), "class-%d", id);
        quarks[q] = g_quark_from_string (name);
      }
      conf[q] = meta->scores[q];
    }
    if (rmeta)
      gst_analytics_relation_meta_add_cls_mtd (rmeta, meta->n_top, conf, quarks,
          &cls);
  }
#endif

  GST_OBJECT_LOCK (self);
  if (isfinite (r->loss))
    self->stat_loss = r->loss;
  if (r->trained)
    self->stat_trained++;
  GST_OBJECT_UNLOCK (self);

  GST_LOG_OBJECT (self, "frame %" G_GUINT64_FORMAT " (stream frame %"
      G_GINT64_FORMAT ") loss %g trained %d step %" G_GINT64_FORMAT, index,
      r->frame, r->loss, r->trained, r->step);

  if (post && index % interval == 0)
    gst_partimenet_post_result (self, buf, meta);
  return buf;
}

static GstFlowReturn
combine_flow (GstFlowReturn acc, GstFlowReturn ret)
{
  return acc == GST_FLOW_OK ? ret : acc;
}

/* Sends one queued item downstream. */
static GstFlowReturn
gst_partimenet_emit (GstPartimenet * self, Item * it, GstFlowReturn acc)
{
  item_drop_tensor (it);
  if (it->kind == ITEM_EVENT) {
    gst_pad_push_event (self->srcpad, GST_EVENT_CAST (it->obj));
    return acc;
  }
  return combine_flow (acc, gst_pad_push (self->srcpad,
          GST_BUFFER_CAST (it->obj)));
}

/* Sends out everything at the head of the queue that does not wait for a result. */
static GstFlowReturn
gst_partimenet_emit_ready (GstPartimenet * self, GstFlowReturn acc)
{
  while (!gst_queue_array_is_empty (self->items)) {
    Item *head = gst_queue_array_peek_head_struct (self->items);
    Item it;
    if (head->kind == ITEM_FRAME)
      break;
    it = *head;
    gst_queue_array_pop_head_struct (self->items);
    acc = gst_partimenet_emit (self, &it, acc);
  }
  return acc;
}

/* Updates the smoothed statistics after a tick and warns when the divergence guard fired. */
static void
gst_partimenet_tick_stats (GstPartimenet * self, gint64 t0, guint popped)
{
  gint64 now = g_get_monotonic_time ();
  gdouble dt = (now - t0) / 1e6;
  pt_stream_stats *st;
  gboolean first_estimate = self->tick_s == 0;

  self->tick_s = first_estimate ? dt : 0.9 * self->tick_s + 0.1 * dt;
  self->fps_frames += popped;
  if (self->fps_t0 == 0)
    self->fps_t0 = now;
  else if (now - self->fps_t0 >= G_USEC_PER_SEC / 2) {
    gdouble fps = self->fps_frames * 1e6 / (now - self->fps_t0);
    GST_OBJECT_LOCK (self);
    self->stat_fps = fps;
    GST_OBJECT_UNLOCK (self);
    self->fps_t0 = now;
    self->fps_frames = 0;
  }

  /* an unknown frame rate: the latency follows the measured tick time */
  if (first_estimate || (self->have_info
          && GST_VIDEO_INFO_FPS_N (&self->in_info) == 0
          && self->n_processed == 16))
    gst_partimenet_update_latency (self);

  /* the guard restores weights only on training ticks: while the stream does not train, a look
   * every 64 frames catches those of the frames still in flight (the statistics take the
   * stream's lock and copy every stage's figures: about 1 us, a share of a short tick) */
  if (!self->stream_train && (self->n_processed & 63) != 0)
    return;
  st = (pt_stream_stats *) g_alloca (sizeof (pt_stream_stats));
  pt_stream_get_stats (self->eng->stream, st);
  if (st->restores > self->restores_seen) {
    GST_ELEMENT_WARNING (self, STREAM, FAILED,
        ("Training diverged: the last good weights were restored"),
        ("%" G_GINT64_FORMAT " restores so far, %" G_GINT64_FORMAT
            " updates skipped", st->restores, st->skipped_updates));
    self->restores_seen = st->restores;
  }
}

/* Pops every finished result and sends out what waited for it, in arrival order. */
static GstFlowReturn
gst_partimenet_collect (GstPartimenet * self, guint * n_popped)
{
  GstFlowReturn acc = GST_FLOW_OK;
  pt_result r;
  guint n = 0;

  while (self->eng && pt_stream_pop (self->eng->stream, &r) == PT_OK) {
    gboolean found = FALSE;
    n++;
    while (!gst_queue_array_is_empty (self->items)) {
      Item it = *(Item *) gst_queue_array_peek_head_struct (self->items);
      gst_queue_array_pop_head_struct (self->items);
      if (it.kind != ITEM_FRAME) {
        acc = gst_partimenet_emit (self, &it, acc);
        continue;
      }
      if (it.obj != r.user) {
        /* cannot happen unless the stream breaks its contract: keep going without results */
        GST_ERROR_OBJECT (self, "result of stream frame %" G_GINT64_FORMAT
            " does not belong to the oldest buffer", r.frame);
        acc = gst_partimenet_emit (self, &it, acc);
        continue;
      }
      it.obj = gst_partimenet_attach_result (self, &it, &r);
      acc = gst_partimenet_emit (self, &it, acc);
      found = TRUE;
      break;
    }
    if (!found)
      GST_ERROR_OBJECT (self, "a result came out for a buffer no longer queued");
  }
  if (n_popped)
    *n_popped = n;
  return gst_partimenet_emit_ready (self, acc);
}

/* Writes the checkpoint if training changed the weights since the last one; a failure only
 * warns: losing a checkpoint must not stop the video. */
static void
gst_partimenet_save_checkpoint (GstPartimenet * self, const gchar * why)
{
  gchar *path;
  gint64 updates;

  if (!self->eng)
    return;
  GST_OBJECT_LOCK (self);
  path = g_strdup (self->checkpoint);
  GST_OBJECT_UNLOCK (self);
  if (!path || !*path) {
    g_free (path);
    return;
  }
  updates = gst_partimenet_total_updates (self);
  if (updates == self->updates_at_save && g_file_test (path,
          G_FILE_TEST_EXISTS)) {
    GST_DEBUG_OBJECT (self, "weights unchanged since the last checkpoint");
    g_free (path);
    return;
  }
  if (pt_stream_save (self->eng->stream, path) != PT_OK) {
    GST_ELEMENT_WARNING (self, RESOURCE, WRITE,
        ("Could not write checkpoint '%s': %s", path,
            pt_stream_last_error (self->eng->stream)), ("while saving %s",
            why));
  } else {
    GST_INFO_OBJECT (self, "checkpoint '%s' written (%s, %" G_GINT64_FORMAT
        " updates)", path, why, updates);
    self->updates_at_save = updates;
  }
  self->frames_since_save = 0;
  g_free (path);
}

/* Runs the remaining ticks of the running stream and sends every frame in flight out. */
static GstFlowReturn
gst_partimenet_drain (GstPartimenet * self)
{
  GstFlowReturn ret;

  if (!self->eng)
    return gst_partimenet_emit_ready (self, GST_FLOW_OK);
  if (pt_stream_drain (self->eng->stream) != PT_OK)
    GST_WARNING_OBJECT (self, "drain: %s",
        pt_stream_last_error (self->eng->stream));
  ret = gst_partimenet_collect (self, NULL);
  /* anything still queued as a frame lost its result: let it go without one */
  while (!gst_queue_array_is_empty (self->items)) {
    Item it = *(Item *) gst_queue_array_peek_head_struct (self->items);
    gst_queue_array_pop_head_struct (self->items);
    if (it.kind == ITEM_FRAME)
      GST_WARNING_OBJECT (self, "frame %" G_GUINT64_FORMAT
          " left the stream without a result", it.index);
    ret = gst_partimenet_emit (self, &it, ret);
  }
  return ret;
}

static void
gst_partimenet_clear_items (GstPartimenet * self, gboolean resend_sticky)
{
  if (!self->items)
    return;
  while (!gst_queue_array_is_empty (self->items)) {
    Item it = *(Item *) gst_queue_array_peek_head_struct (self->items);
    gst_queue_array_pop_head_struct (self->items);
    item_drop_tensor (&it);
    if (it.kind == ITEM_EVENT) {
      GstEvent *ev = GST_EVENT_CAST (it.obj);
      /* caps and tags upstream will not send again must still reach downstream */
      if (resend_sticky && GST_EVENT_IS_STICKY (ev)
          && GST_EVENT_TYPE (ev) != GST_EVENT_SEGMENT
          && GST_EVENT_TYPE (ev) != GST_EVENT_EOS) {
        gst_pad_push_event (self->srcpad, ev);
        continue;
      }
    }
    gst_mini_object_unref (GST_MINI_OBJECT_CAST (it.obj));
  }
}

/* ---- model swap ---- */

static gpointer
gst_partimenet_loader (gpointer data)
{
  GstPartimenet *self = data;

  GST_OBJECT_LOCK (self);
  while (self->swap_request && self->started) {
    gchar *spec = self->swap_request;
    guint seq = self->swap_seq;
    Settings s = { 0 };
    GError *error = NULL;
    Engine *e;

    self->swap_request = NULL;
    settings_snapshot (self, &s);
    GST_OBJECT_UNLOCK (self);

    GST_INFO_OBJECT (self, "loading model '%s' in the background", spec);
    e = engine_new (self, spec, NULL, &s, &error);
    settings_clear (&s);

    GST_OBJECT_LOCK (self);
    if (e && ((self->n_mean != 1 && self->n_mean != (guint) e->C)
            || (self->n_std != 1 && self->n_std != (guint) e->C))) {
      g_set_error (&error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_SETTINGS,
          "Model '%s' takes %d channels but mean and std have %u and %u values",
          spec, e->C, self->n_mean, self->n_std);
      engine_free (e);
      e = NULL;
    }
    if (e && self->started) {
      engine_free (self->pending);
      self->pending = e;
    } else if (e) {
      engine_free (e);
    } else {
      gboolean latest = seq == self->swap_seq && !self->swap_request;
      GST_OBJECT_UNLOCK (self);
      GST_WARNING_OBJECT (self, "model swap failed: %s", error->message);
      gst_element_message_full (GST_ELEMENT (self), GST_MESSAGE_WARNING,
          error->domain, error->code,
          g_strdup_printf ("Keeping the running model: %s", error->message),
          NULL, __FILE__, GST_FUNCTION, __LINE__);
      g_clear_error (&error);
      GST_OBJECT_LOCK (self);
      /* the property tells what runs, unless a newer request came meanwhile */
      if (latest && self->active_spec) {
        g_free (self->model_spec);
        self->model_spec = g_strdup (self->active_spec);
        GST_OBJECT_UNLOCK (self);
        g_object_notify (G_OBJECT (self), "model");
        GST_OBJECT_LOCK (self);
      }
    }
    g_free (spec);
  }
  self->loader_running = FALSE;
  GST_OBJECT_UNLOCK (self);
  return NULL;
}

/* Starts the loader for `spec`. Caller holds the object lock. */
static void
gst_partimenet_request_swap (GstPartimenet * self, const gchar * spec)
{
  g_free (self->swap_request);
  self->swap_request = g_strdup (spec);
  self->swap_seq++;
  if (self->loader_running)
    return;
  if (self->loader) {
    /* finished: its last act was to clear loader_running under this lock */
    GThread *t = self->loader;
    self->loader = NULL;
    GST_OBJECT_UNLOCK (self);
    g_thread_join (t);
    GST_OBJECT_LOCK (self);
    if (self->loader_running || !self->swap_request)
      return;
  }
  self->loader_running = TRUE;
  self->loader = g_thread_new ("partimenet-load", gst_partimenet_loader, self);
}

/* Applies at a tick boundary what other threads asked for. Streaming thread. */
static GstFlowReturn
gst_partimenet_tick_boundary (GstPartimenet * self)
{
  Engine *pending;
  gboolean rebuild, hyper, norm, train;
  gdouble lr, momentum;
  GstFlowReturn ret = GST_FLOW_OK;
  GError *error = NULL;

  GST_OBJECT_LOCK (self);
  pending = self->pending;
  self->pending = NULL;
  rebuild = self->settings_dirty;
  self->settings_dirty = FALSE;
  hyper = self->hyper_dirty;
  self->hyper_dirty = FALSE;
  lr = self->lr;
  momentum = self->momentum;
  norm = self->norm_dirty;
  train = self->train;
  GST_OBJECT_UNLOCK (self);

  if (pending) {
    gint old_depth = self->eng ? self->eng->depth : 0;
    GST_INFO_OBJECT (self, "switching to model '%s'", pending->spec);
    ret = gst_partimenet_drain (self);
    gst_partimenet_save_checkpoint (self, "model swap");
    if (!gst_partimenet_install (self, pending, &error)) {
      post_gerror (self, GST_MESSAGE_ERROR, error, "installing a new model");
      g_clear_error (&error);
      return GST_FLOW_ERROR;
    }
    if (old_depth != self->eng->depth)
      self->reported_latency = GST_CLOCK_TIME_NONE;
    /* the checkpoint file now holds the old model: the next save must replace it */
    self->updates_at_save = -1;
    gst_partimenet_update_latency (self);
    rebuild = FALSE;
    norm = FALSE;
  } else if (rebuild && self->eng) {
    /* a new loss or optimizer: the optimizer state cannot carry over */
    GST_DEBUG_OBJECT (self, "loss or optimizer changed: rebuilding the stream");
    ret = gst_partimenet_drain (self);
    if (gst_partimenet_rebuild_stream (self, NULL, self->raw_size, &error)) {
      hyper = FALSE;            /* the new stream has them */
    } else {
      GST_WARNING_OBJECT (self, "new training settings: %s", error->message);
      gst_element_message_full (GST_ELEMENT (self), GST_MESSAGE_WARNING,
          error->domain, error->code,
          g_strdup_printf ("Keeping the previous training settings: %s",
              error->message), NULL, __FILE__, GST_FUNCTION, __LINE__);
      g_clear_error (&error);
    }
  }
  if (hyper && self->eng) {
    /* applies from the next tick on; optimizer state (momentum, Adam's moments) carries over */
    if (pt_stream_set_hyperparams (self->eng->stream, (float) lr,
            (float) momentum, 0.0f) == PT_OK)
      GST_DEBUG_OBJECT (self, "learning rate %g, momentum %g", lr, momentum);
    else
      GST_WARNING_OBJECT (self, "cannot set learning rate %g, momentum %g: %s",
          lr, momentum, pt_stream_last_error (self->eng->stream));
  }
  if (norm && !gst_partimenet_update_norm (self, &error)) {
    post_gerror (self, GST_MESSAGE_WARNING, error, "keeping the old values");
    g_clear_error (&error);
  }
  if (self->eng && train != self->stream_train) {
    if (pt_stream_set_training (self->eng->stream, train) == PT_OK) {
      GST_INFO_OBJECT (self, "training %s", train ? "on" : "off");
      self->stream_train = train;
    } else if (train) {
      GST_WARNING_OBJECT (self, "cannot train: %s",
          pt_stream_last_error (self->eng->stream));
      self->stream_train = train;       /* tried once; do not retry every frame */
    }
  }
  return ret;
}

/* ---- overload ---- */

/* A frame is late when downstream said so (QoS) or, live, when it reaches the element more than
 * a frame duration after upstream could deliver it (running time + upstream latency): the
 * previous frames' work held it up, and every frame behind it will be later still. */
static gboolean
gst_partimenet_is_late (GstPartimenet * self, GstBuffer * buf,
    GstClockTime * running_time, GstClockTimeDiff * jitter)
{
  GstClockTime pts = GST_BUFFER_PTS (buf), rt, earliest, plat;
  GstClock *clock;
  GstClockTime base;

  if (self->segment.format != GST_FORMAT_TIME || !GST_CLOCK_TIME_IS_VALID (pts))
    return FALSE;
  rt = gst_segment_to_running_time (&self->segment, GST_FORMAT_TIME, pts);
  if (!GST_CLOCK_TIME_IS_VALID (rt))
    return FALSE;
  *running_time = rt;

  GST_OBJECT_LOCK (self);
  earliest = self->earliest_time;
  plat = self->pipeline_latency;
  clock = GST_ELEMENT_CLOCK (self) ? gst_object_ref (GST_ELEMENT_CLOCK (self))
      : NULL;
  base = GST_ELEMENT_CAST (self)->base_time;
  GST_OBJECT_UNLOCK (self);

  if (GST_CLOCK_TIME_IS_VALID (earliest) && rt < earliest) {
    *jitter = GST_CLOCK_DIFF (rt, earliest);
    if (clock)
      gst_object_unref (clock);
    return TRUE;
  }
  if (clock && GST_CLOCK_TIME_IS_VALID (plat)
      && GST_STATE (self) == GST_STATE_PLAYING) {
    GstClockTime now = gst_clock_get_time (clock);
    GstClockTime own = gst_partimenet_added_latency (self, self->eng);
    GstClockTime frame = GST_BUFFER_DURATION (buf);
    GstClockTime deadline;

    if (!GST_CLOCK_TIME_IS_VALID (frame) || frame == 0) {
      if (self->have_info && GST_VIDEO_INFO_FPS_N (&self->in_info) > 0)
        frame = gst_util_uint64_scale_int (GST_SECOND,
            GST_VIDEO_INFO_FPS_D (&self->in_info),
            GST_VIDEO_INFO_FPS_N (&self->in_info));
      else
        frame = (GstClockTime) (self->tick_s * GST_SECOND);
    }
    deadline = rt + (plat > own ? plat - own : 0) + frame;
    gst_object_unref (clock);
    if (now >= base && now - base > deadline) {
      *jitter = GST_CLOCK_DIFF (deadline, now - base);
      return TRUE;
    }
    return FALSE;
  }
  if (clock)
    gst_object_unref (clock);
  return FALSE;
}

/* The pipeline is busy when stage 0 or the last stage has not finished the tick issued last: a
 * frame pushed now would wait for earlier frames' work (and, when the source is faster than the
 * network for good, so would every frame after it). `jitter` estimates how far behind that
 * stage is, from its mean time per tick. */
static gboolean
gst_partimenet_is_busy (GstPartimenet * self, GstClockTimeDiff * jitter)
{
  pt_stream_stats *st = (pt_stream_stats *) g_alloca (sizeof (pt_stream_stats));
  const pt_stage_stats *first, *last, *slow;
  gint64 behind_first, behind_last, behind;
  gdouble per_tick;

  pt_stream_get_stats (self->eng->stream, st);
  first = &st->stage[0];
  last = &st->stage[st->stages - 1];
  behind_first = st->ticks - first->done;
  behind_last = st->ticks - last->done;
  if (behind_first <= 0 && behind_last <= 0)
    return FALSE;
  slow = behind_first >= behind_last ? first : last;
  behind = MAX (behind_first, behind_last);
  per_tick = slow->ticks > 0 ? slow->busy_s / slow->ticks : self->tick_s;
  *jitter = (GstClockTimeDiff) (behind * per_tick * GST_SECOND);
  GST_LOG_OBJECT (self, "busy: %" G_GINT64_FORMAT " tick(s) issued, stage 0 "
      "finished %" G_GINT64_FORMAT ", stage %d %" G_GINT64_FORMAT, st->ticks,
      first->done, st->stages - 1, last->done);
  return TRUE;
}

static void
gst_partimenet_post_qos (GstPartimenet * self, GstBuffer * buf,
    GstClockTime rt, GstClockTimeDiff jitter)
{
  GstMessage *msg;
  GstClockTime pts = GST_BUFFER_PTS (buf);
  guint64 processed = self->n_processed, dropped = self->n_dropped;

  msg = gst_message_new_qos (GST_OBJECT (self), TRUE, rt,
      gst_segment_to_stream_time (&self->segment, GST_FORMAT_TIME, pts), pts,
      GST_BUFFER_DURATION (buf));
  gst_message_set_qos_values (msg, jitter,
      processed + dropped > 0 ? (gdouble) processed / (processed + dropped) :
      1.0, 1000000);
  gst_message_set_qos_stats (msg, GST_FORMAT_BUFFERS, processed, dropped);
  gst_element_post_message (GST_ELEMENT (self), msg);
}

/* ---- data flow ---- */

static GstFlowReturn
gst_partimenet_chain (GstPad * pad, GstObject * parent, GstBuffer * buf)
{
  GstPartimenet *self = GST_PARTIMENET (parent);
  GstPartimenetOverload overload;
  GstPartimenetTargetMeta *tmeta;
  GstFlowReturn ret;
  pt_target target, *tp = NULL;
  Item it = { 0, };
  guint64 index;
  guint interval, popped = 0;
  gint64 t0;
  gboolean on_gpu = FALSE;
  pt_status pushed;
#ifdef HAVE_GST_CUDA
  GstVideoFrame gpu_frame;
  pt_device_frame dev_frame;
#endif

  ret = gst_partimenet_tick_boundary (self);
  if (ret != GST_FLOW_OK && ret != GST_FLOW_NOT_LINKED) {
    gst_buffer_unref (buf);
    return ret;
  }
  if (!self->eng) {
    GST_ELEMENT_ERROR (self, CORE, FAILED, ("No model is running"), (NULL));
    gst_buffer_unref (buf);
    return GST_FLOW_ERROR;
  }
  if (!self->have_info) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, ("Data before caps"), (NULL));
    gst_buffer_unref (buf);
    return GST_FLOW_NOT_NEGOTIATED;
  }

  index = self->n_frames++;
  GST_OBJECT_LOCK (self);
  overload = self->overload;
  interval = self->checkpoint_interval;
  GST_OBJECT_UNLOCK (self);

  if (overload != GST_PARTIMENET_OVERLOAD_BLOCK) {
    GstClockTime rt = GST_CLOCK_TIME_NONE;
    GstClockTimeDiff jitter = 0;
    gboolean late = gst_partimenet_is_late (self, buf, &rt, &jitter);
    gboolean busy = !late && gst_partimenet_is_busy (self, &jitter);

    if (late || busy) {
      self->n_dropped++;
      if (busy && self->segment.format == GST_FORMAT_TIME)
        rt = gst_segment_to_running_time (&self->segment, GST_FORMAT_TIME,
            GST_BUFFER_PTS (buf));
      GST_DEBUG_OBJECT (self, "frame %" G_GUINT64_FORMAT " is %"
          GST_STIME_FORMAT " late%s: skipping the network", index,
          GST_STIME_ARGS (jitter), busy ? " (the network is busy)" : "");
      gst_partimenet_post_qos (self, buf, rt, jitter);
      if (overload == GST_PARTIMENET_OVERLOAD_DISCARD) {
        gst_buffer_unref (buf);
        return ret;
      }
      it.kind = ITEM_PASS;
      it.obj = buf;
      it.index = index;
      gst_queue_array_push_tail_struct (self->items, &it);
      return combine_flow (ret, gst_partimenet_emit_ready (self, GST_FLOW_OK));
    }
  }

  t0 = g_get_monotonic_time ();
#ifdef HAVE_GST_CUDA
  on_gpu = gst_partimenet_cuda_frame (self, buf, &gpu_frame, &dev_frame);
#endif
  /* only a copy here: stage 0 converts it (gst_partimenet_preprocess) */
  if (!on_gpu && !gst_partimenet_pack_frame (self, buf)) {
    GST_ELEMENT_ERROR (self, STREAM, FORMAT, ("Cannot read the video frame"),
        ("buffer of %" G_GSIZE_FORMAT " bytes for %s", gst_buffer_get_size (buf),
            gst_video_format_to_string (GST_VIDEO_INFO_FORMAT
                (&self->in_info))));
    gst_buffer_unref (buf);
    return GST_FLOW_ERROR;
  }

  tmeta = gst_buffer_get_partimenet_target_meta (buf);
  if (tmeta) {
    const Engine *e = self->eng;
    memset (&target, 0, sizeof (target));
    target.class_index = -1;
    if (e->loss == PT_LOSS_CROSS_ENTROPY && tmeta->class_index >= 0) {
      if (tmeta->class_index < e->out_numel) {
        target.class_index = tmeta->class_index;
        tp = &target;
      } else {
        GST_WARNING_OBJECT (self, "target class %" G_GINT64_FORMAT
            " is outside the model's %" G_GINT64_FORMAT " outputs: ignored",
            tmeta->class_index, e->out_numel);
      }
    } else if (e->loss == PT_LOSS_MSE && tmeta->tensor) {
      if ((gint64) tmeta->tensor_size == e->out_numel) {
        target.tensor = tmeta->tensor;
        tp = &target;
      } else {
        GST_WARNING_OBJECT (self, "target tensor of %" G_GSIZE_FORMAT
            " values for an output of %" G_GINT64_FORMAT ": ignored",
            tmeta->tensor_size, e->out_numel);
      }
    }
  }

  if (on_gpu) {
#ifdef HAVE_GST_CUDA
    /* converted on stage 0's GPU before the call returns: the frame can be unmapped */
    pushed = pt_stream_push_device (self->eng->stream, &dev_frame, tp, buf);
    gst_video_frame_unmap (&gpu_frame);
#endif
  } else {
    /* the last stage writes the output straight into a pooled buffer of the frame's */
    if (gst_buffer_pool_acquire_buffer (self->tensor_pool, &it.tensor,
            NULL) == GST_FLOW_OK) {
      if (gst_buffer_map (it.tensor, &it.map, GST_MAP_WRITE))
        pt_stream_set_output (self->eng->stream, (gfloat *) it.map.data);
      else
        gst_clear_buffer (&it.tensor);
    }
    pushed = pt_stream_raw_commit (self->eng->stream, self->raw_size, tp, buf);
  }
  if (pushed != PT_OK) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED, ("The network failed on frame %"
            G_GUINT64_FORMAT ": %s", index,
            pt_stream_last_error (self->eng->stream)), (NULL));
    pt_stream_set_output (self->eng->stream, NULL);
    item_drop_tensor (&it);
    gst_buffer_unref (buf);
    return GST_FLOW_ERROR;
  }
  self->n_processed++;
  self->frames_since_save++;
  it.kind = ITEM_FRAME;
  it.obj = buf;
  it.index = index;
  gst_queue_array_push_tail_struct (self->items, &it);

  ret = combine_flow (ret, gst_partimenet_collect (self, &popped));
  gst_partimenet_tick_stats (self, t0, popped);

  if (interval > 0 && self->frames_since_save >= interval)
    gst_partimenet_save_checkpoint (self, "checkpoint-interval");
  return ret;
}

/* Queues a serialized event behind the buffers in flight, or sends it now if none. */
static gboolean
gst_partimenet_queue_event (GstPartimenet * self, GstEvent * event)
{
  Item it = { 0, };

  if (!self->items || gst_queue_array_is_empty (self->items))
    return gst_pad_push_event (self->srcpad, event);
  it.kind = ITEM_EVENT;
  it.obj = event;
  gst_queue_array_push_tail_struct (self->items, &it);
  return TRUE;
}

/* Whether frames of `a` and `b` differ in what the converter reads (anything but the rate). */
static gboolean
layout_differs (const GstVideoInfo * a, const GstVideoInfo * b)
{
  GstVideoInfo t = *b;

  GST_VIDEO_INFO_FPS_N (&t) = GST_VIDEO_INFO_FPS_N (a);
  GST_VIDEO_INFO_FPS_D (&t) = GST_VIDEO_INFO_FPS_D (a);
  return !gst_video_info_is_equal (a, &t);
}

static gboolean
gst_partimenet_set_caps (GstPartimenet * self, GstCaps * caps)
{
  GstVideoInfo info;
  GError *error = NULL;
  gboolean rate_changed, layout_changed;

  if (!gst_video_info_from_caps (&info, caps)) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, ("Invalid caps"),
        ("%" GST_PTR_FORMAT, caps));
    return FALSE;
  }
  rate_changed = !self->have_info
      || GST_VIDEO_INFO_FPS_N (&info) != GST_VIDEO_INFO_FPS_N (&self->in_info)
      || GST_VIDEO_INFO_FPS_D (&info) != GST_VIDEO_INFO_FPS_D (&self->in_info);
  layout_changed = !self->have_info || !self->conv.ready
      || layout_differs (&self->in_info, &info);
  if (layout_changed && self->have_info) {
    /* frames waiting for stage 0 are in the old layout: bring them all out before the converter
     * changes (the caps event then follows them) */
    GST_DEBUG_OBJECT (self, "new frame layout: draining the stream");
    gst_partimenet_drain (self);
  }
  self->in_info = info;
  self->have_info = TRUE;
#ifdef HAVE_GST_CUDA
  self->in_cuda = gst_caps_features_contains (gst_caps_get_features (caps, 0),
      GST_CAPS_FEATURE_MEMORY_CUDA_MEMORY);
#endif
  if (layout_changed && (!gst_partimenet_setup_converter (self, &error)
          || !gst_partimenet_fit_raw (self, &error))) {
    post_gerror (self, GST_MESSAGE_ERROR, error, NULL);
    g_clear_error (&error);
    self->have_info = FALSE;
    return FALSE;
  }
  if (rate_changed)
    gst_partimenet_update_latency (self);
  return TRUE;
}

static gboolean
gst_partimenet_sink_event (GstPad * pad, GstObject * parent, GstEvent * event)
{
  GstPartimenet *self = GST_PARTIMENET (parent);

  GST_LOG_OBJECT (self, "event %" GST_PTR_FORMAT, event);
  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_CAPS:{
      GstCaps *caps;
      gst_event_parse_caps (event, &caps);
      if (!gst_partimenet_set_caps (self, caps)) {
        gst_event_unref (event);
        return FALSE;
      }
      return gst_partimenet_queue_event (self, event);
    }
    case GST_EVENT_SEGMENT:{
      const GstSegment *seg;
      gst_event_parse_segment (event, &seg);
      gst_segment_copy_into (seg, &self->segment);
      return gst_partimenet_queue_event (self, event);
    }
    case GST_EVENT_EOS:
      gst_partimenet_tick_boundary (self);
      gst_partimenet_drain (self);
      gst_partimenet_save_checkpoint (self, "end of stream");
      return gst_pad_push_event (self->srcpad, event);
    case GST_EVENT_FLUSH_STOP:{
      gboolean res;
      if (self->eng)
        pt_stream_flush (self->eng->stream);
      gst_segment_init (&self->segment, GST_FORMAT_UNDEFINED);
      GST_OBJECT_LOCK (self);
      self->earliest_time = GST_CLOCK_TIME_NONE;
      GST_OBJECT_UNLOCK (self);
      res = gst_pad_push_event (self->srcpad, event);
      /* the frames in flight go; caps and tags that waited behind them still apply */
      gst_partimenet_clear_items (self, TRUE);
      return res;
    }
    default:
      if (GST_EVENT_IS_SERIALIZED (event))
        return gst_partimenet_queue_event (self, event);
      return gst_pad_event_default (pad, parent, event);
  }
}

static gboolean
gst_partimenet_src_event (GstPad * pad, GstObject * parent, GstEvent * event)
{
  GstPartimenet *self = GST_PARTIMENET (parent);

  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_QOS:{
      GstQOSType type;
      gdouble proportion;
      GstClockTimeDiff diff;
      GstClockTime timestamp;
      gst_event_parse_qos (event, &type, &proportion, &diff, &timestamp);
      GST_OBJECT_LOCK (self);
      if (diff > 0 && GST_CLOCK_TIME_IS_VALID (timestamp))
        self->earliest_time = timestamp + (type == GST_QOS_TYPE_OVERFLOW ?
            2 * diff : diff);
      else
        self->earliest_time = GST_CLOCK_TIME_NONE;
      GST_OBJECT_UNLOCK (self);
      break;
    }
    case GST_EVENT_LATENCY:{
      GstClockTime lat;
      gst_event_parse_latency (event, &lat);
      GST_OBJECT_LOCK (self);
      self->pipeline_latency = lat;
      GST_OBJECT_UNLOCK (self);
      break;
    }
    default:
      break;
  }
  return gst_pad_event_default (pad, parent, event);
}

/* Answers a context query with the GPU context the element shares, if any. */
static gboolean
gst_partimenet_context_query (GstPartimenet * self, GstQuery * query)
{
#ifdef HAVE_GST_CUDA
  return GST_QUERY_TYPE (query) == GST_QUERY_CONTEXT
      && gst_cuda_handle_context_query (GST_ELEMENT (self), query,
      self->cuda_ctx);
#else
  return FALSE;
#endif
}

static gboolean
gst_partimenet_sink_query (GstPad * pad, GstObject * parent, GstQuery * query)
{
  GstPartimenet *self = GST_PARTIMENET (parent);

  if (gst_partimenet_context_query (self, query))
    return TRUE;
  switch (GST_QUERY_TYPE (query)) {
    case GST_QUERY_ALLOCATION:{
      guint i, n, extra;
      if (!gst_pad_peer_query (self->srcpad, query))
        return FALSE;
      /* buffers wait here for D - 1 ticks: upstream pools need that many more */
      extra = self->eng ? (guint) self->eng->lag + 1 : 1;
      n = gst_query_get_n_allocation_pools (query);
      for (i = 0; i < n; i++) {
        GstBufferPool *pool;
        guint size, min, max;
        gst_query_parse_nth_allocation_pool (query, i, &pool, &size, &min,
            &max);
        min += extra;
        if (max != 0 && max < min)
          max = min;
        gst_query_set_nth_allocation_pool (query, i, pool, size, min, max);
        if (pool)
          gst_object_unref (pool);
      }
      return TRUE;
    }
    default:
      return gst_pad_query_default (pad, parent, query);
  }
}

static gboolean
gst_partimenet_src_query (GstPad * pad, GstObject * parent, GstQuery * query)
{
  GstPartimenet *self = GST_PARTIMENET (parent);

  if (gst_partimenet_context_query (self, query))
    return TRUE;
  switch (GST_QUERY_TYPE (query)) {
    case GST_QUERY_LATENCY:{
      gboolean live;
      GstClockTime min, max, own;
      if (!gst_pad_peer_query (self->sinkpad, query))
        return FALSE;
      gst_query_parse_latency (query, &live, &min, &max);
      GST_OBJECT_LOCK (self);
      own = self->stat_latency;
      GST_OBJECT_UNLOCK (self);
      min += own;
      if (GST_CLOCK_TIME_IS_VALID (max))
        max += own;
      GST_DEBUG_OBJECT (self, "latency: upstream + %" GST_TIME_FORMAT
          " = min %" GST_TIME_FORMAT " max %" GST_TIME_FORMAT,
          GST_TIME_ARGS (own), GST_TIME_ARGS (min), GST_TIME_ARGS (max));
      gst_query_set_latency (query, live, min, max);
      return TRUE;
    }
    default:
      return gst_pad_query_default (pad, parent, query);
  }
}

/* ---- start / stop ---- */

static gboolean
load_labels (GstPartimenet * self, const gchar * path, GError ** error)
{
  gchar *contents = NULL;
  gchar **lines;
  GError *err = NULL;
  guint i, n;

  if (!g_file_get_contents (path, &contents, NULL, &err)) {
    g_set_error (error, GST_RESOURCE_ERROR,
        g_error_matches (err, G_FILE_ERROR, G_FILE_ERROR_NOENT) ?
        GST_RESOURCE_ERROR_NOT_FOUND : GST_RESOURCE_ERROR_OPEN_READ,
        "Cannot read labels file '%s': %s", path, err->message);
    g_clear_error (&err);
    return FALSE;
  }
  lines = g_strsplit (contents, "\n", -1);
  n = g_strv_length (lines);
  /* a final newline does not make one more class */
  while (n > 0 && *g_strstrip (lines[n - 1]) == '\0')
    n--;
  self->labels = g_new0 (const gchar *, n + 1);
  self->label_quarks = g_new0 (GQuark, n + 1);
  for (i = 0; i < n; i++) {
    self->labels[i] = g_intern_string (g_strstrip (lines[i]));
    self->label_quarks[i] = g_quark_from_string (self->labels[i]);
  }
  self->n_labels = n;
  g_strfreev (lines);
  g_free (contents);
  return TRUE;
}

static gboolean
check_checkpoint_dir (const gchar * path, GError ** error)
{
  gchar *dir = g_path_get_dirname (path);
  gboolean ok = TRUE;

  if (!g_file_test (dir, G_FILE_TEST_IS_DIR)) {
    g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_OPEN_WRITE,
        "Checkpoint directory '%s' does not exist", dir);
    ok = FALSE;
  } else if (g_access (dir, W_OK) != 0) {
    g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_OPEN_WRITE,
        "Checkpoint directory '%s' is not writable: %s", dir,
        g_strerror (errno));
    ok = FALSE;
  } else if (g_file_test (path, G_FILE_TEST_IS_DIR)) {
    g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_OPEN_WRITE,
        "Checkpoint path '%s' is a directory", path);
    ok = FALSE;
  } else if (g_file_test (path, G_FILE_TEST_EXISTS)
      && g_access (path, W_OK) != 0) {
    g_set_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_OPEN_WRITE,
        "Checkpoint '%s' is not writable: %s", path, g_strerror (errno));
    ok = FALSE;
  }
  g_free (dir);
  return ok;
}

static gboolean
gst_partimenet_start (GstPartimenet * self)
{
  Settings s = { 0 };
  gchar *spec, *labels, *ckpt;
  GError *error = NULL;
  Engine *e;

  GST_OBJECT_LOCK (self);
  self->raw_hint = 0;           /* no caps yet */
  settings_snapshot (self, &s);
  spec = g_strdup (self->model_spec);
  labels = g_strdup (self->labels_path);
  ckpt = g_strdup (self->checkpoint);
  self->earliest_time = GST_CLOCK_TIME_NONE;
  self->pipeline_latency = GST_CLOCK_TIME_NONE;
  self->stat_latency = 0;
  self->stat_fps = 0;
  self->stat_loss = NAN;
  self->stat_trained = 0;
  self->settings_dirty = FALSE;
  self->hyper_dirty = FALSE;
  self->norm_dirty = FALSE;
  GST_OBJECT_UNLOCK (self);

  self->n_frames = self->n_processed = self->n_dropped = 0;
  self->frames_since_save = 0;
  self->tick_s = 0;
  self->fps_t0 = 0;
  self->fps_frames = 0;
  self->reported_latency = GST_CLOCK_TIME_NONE;
  self->have_info = FALSE;
  gst_segment_init (&self->segment, GST_FORMAT_UNDEFINED);

  if (ckpt && *ckpt && !check_checkpoint_dir (ckpt, &error))
    goto fail;
  if (labels && *labels && !load_labels (self, labels, &error))
    goto fail;
  e = engine_new (self, spec, ckpt, &s, &error);
  if (!e)
    goto fail;
  self->items = gst_queue_array_new_for_struct (sizeof (Item), 16);
  if (!gst_partimenet_install (self, e, &error))
    goto fail;
  GST_INFO_OBJECT (self, "model '%s': %d stage(s), input %dx%dx%d, loss %s",
      e->spec, e->depth, e->C, e->H, e->W, pt_loss_name (e->loss));

  GST_OBJECT_LOCK (self);
  self->started = TRUE;
  GST_OBJECT_UNLOCK (self);
  settings_clear (&s);
  g_free (spec);
  g_free (labels);
  g_free (ckpt);
  return TRUE;

fail:
  post_gerror (self, GST_MESSAGE_ERROR, error, NULL);
  g_clear_error (&error);
  settings_clear (&s);
  g_free (spec);
  g_free (labels);
  g_free (ckpt);
  return FALSE;
}

static void
gst_partimenet_stop (GstPartimenet * self)
{
  GThread *loader;

  GST_OBJECT_LOCK (self);
  self->started = FALSE;
  g_clear_pointer (&self->swap_request, g_free);
  loader = self->loader;
  self->loader = NULL;
  GST_OBJECT_UNLOCK (self);
  if (loader)
    g_thread_join (loader);
  GST_OBJECT_LOCK (self);
  g_clear_pointer (&self->pending, engine_free);
  self->loader_running = FALSE;
  GST_OBJECT_UNLOCK (self);

  if (self->eng)
    gst_partimenet_save_checkpoint (self, "stop");
  /* the stream first: its stage 0 may use the converter, and its last stage the frames' output
   * buffers, until it stops */
  g_clear_pointer (&self->eng, engine_free);
  gst_partimenet_clear_items (self, FALSE);
  if (self->items) {
    gst_queue_array_free (self->items);
    self->items = NULL;
  }
  gst_partimenet_free_converter (self);
  g_clear_pointer (&self->probs, g_free);
  if (self->tensor_pool) {
    gst_buffer_pool_set_active (self->tensor_pool, FALSE);
    gst_clear_object (&self->tensor_pool);
  }
  g_clear_pointer (&self->labels, g_free);
  g_clear_pointer (&self->label_quarks, g_free);
  self->n_labels = 0;
  self->have_info = FALSE;
}

#ifdef HAVE_GST_CUDA
/* With stage 0 on GPU N, wraps N's primary context (the one libpartime runs in) and offers it to
 * the pipeline, so that upstream CUDA elements allocate their frames where stage 0 can read them.
 * Without a usable GPU nothing happens: frames in GPU memory are then downloaded. */
static void
gst_partimenet_cuda_open (GstPartimenet * self)
{
  gchar *devices;
  gint device = -1;
  void *ctx = NULL;
  int cu_device = 0;
  pt_error err;

  GST_OBJECT_LOCK (self);
  devices = g_strdup (self->devices);
  GST_OBJECT_UNLOCK (self);
  if (devices && g_str_has_prefix (devices, "cuda"))
    device = devices[4] == ':' ? (gint) g_ascii_strtoll (devices + 5, NULL, 10) : 0;
  g_free (devices);
  self->cuda_device = device;
  if (device < 0 || self->cuda_ctx)
    return;
  pt_error_clear (&err);
  if (pt_cuda_primary_context (device, &ctx, &cu_device, &err) != PT_OK
      || !gst_cuda_load_library ()) {
    GST_INFO_OBJECT (self, "no CUDA context to share: %s", err.msg);
    return;
  }
  self->cuda_ctx = gst_cuda_context_new_wrapped ((CUcontext) ctx,
      (CUdevice) cu_device);
  if (self->cuda_ctx) {
    GstContext *c = gst_context_new_cuda_context (self->cuda_ctx);
    gst_element_post_message (GST_ELEMENT (self),
        gst_message_new_have_context (GST_OBJECT (self), c));
    GST_INFO_OBJECT (self, "sharing cuda:%d's primary context", device);
  }
}

static void
gst_partimenet_set_context (GstElement * element, GstContext * context)
{
  GstPartimenet *self = GST_PARTIMENET (element);

  /* ours, when we have one: stage 0 reads frames in its own context */
  if (self->cuda_device >= 0 && !self->cuda_ctx)
    gst_cuda_handle_set_context (element, context, self->cuda_device,
        &self->cuda_ctx);
  GST_ELEMENT_CLASS (gst_partimenet_parent_class)->set_context (element,
      context);
}

/* Maps a frame in GPU memory for pt_stream_push_device when stage 0 can read it in place: GPU
 * stages, our context, the model's size, packed RGB. FALSE: use the host path (which downloads). */
static gboolean
gst_partimenet_cuda_frame (GstPartimenet * self, GstBuffer * buf,
    GstVideoFrame * vf, pt_device_frame * df)
{
  const Engine *e = self->eng;
  GstMemory *mem = gst_buffer_n_memory (buf) == 1 ?
      gst_buffer_peek_memory (buf, 0) : NULL;
  const GstVideoInfo *info = &self->in_info;
  gint c;

  if (!self->in_cuda || !self->cuda_ctx || !e || e->C != 3 || !mem
      || !gst_is_cuda_memory (mem)
      || gst_cuda_context_get_handle (((GstCudaMemory *) mem)->context) !=
      gst_cuda_context_get_handle (self->cuda_ctx)
      || GST_VIDEO_INFO_WIDTH (info) != e->W
      || GST_VIDEO_INFO_HEIGHT (info) != e->H
      || !GST_VIDEO_INFO_IS_RGB (info) || GST_VIDEO_INFO_N_PLANES (info) != 1) {
    if (self->in_cuda && !self->cuda_fallback_logged) {
      GST_INFO_OBJECT (self, "frames in GPU memory go through the host "
          "(not in stage 0's context, or not the model's size and packed RGB)");
      self->cuda_fallback_logged = TRUE;
    }
    return FALSE;
  }
  if (!gst_video_frame_map (vf, info, buf, GST_MAP_READ | GST_MAP_CUDA))
    return FALSE;
  memset (df, 0, sizeof (*df));
  df->data = GST_VIDEO_FRAME_PLANE_DATA (vf, 0);
  df->pitch = (size_t) GST_VIDEO_FRAME_PLANE_STRIDE (vf, 0);
  df->width = e->W;
  df->height = e->H;
  df->pixel_stride = GST_VIDEO_FRAME_COMP_PSTRIDE (vf, 0);
  for (c = 0; c < 3; c++) {
    df->offset[c] = GST_VIDEO_FRAME_COMP_OFFSET (vf, c);
    df->a[c] = self->norm_a[c];
    df->b[c] = self->norm_b[c];
  }
  return TRUE;
}
#endif

static GstStateChangeReturn
gst_partimenet_change_state (GstElement * element, GstStateChange transition)
{
  GstPartimenet *self = GST_PARTIMENET (element);
  GstStateChangeReturn ret;

  switch (transition) {
#ifdef HAVE_GST_CUDA
    case GST_STATE_CHANGE_NULL_TO_READY:
      gst_partimenet_cuda_open (self);
      break;
#endif
    case GST_STATE_CHANGE_READY_TO_PAUSED:
      if (!gst_partimenet_start (self)) {
        gst_partimenet_stop (self);
        return GST_STATE_CHANGE_FAILURE;
      }
      break;
    default:
      break;
  }

  ret = GST_ELEMENT_CLASS (gst_partimenet_parent_class)->change_state (element,
      transition);
  if (ret == GST_STATE_CHANGE_FAILURE) {
    if (transition == GST_STATE_CHANGE_READY_TO_PAUSED)
      gst_partimenet_stop (self);
    return ret;
  }

  switch (transition) {
    case GST_STATE_CHANGE_PAUSED_TO_READY:
      gst_partimenet_stop (self);
      break;
#ifdef HAVE_GST_CUDA
    case GST_STATE_CHANGE_READY_TO_NULL:
      gst_clear_object (&self->cuda_ctx);
      break;
#endif
    default:
      break;
  }
  return ret;
}

/* ---- properties ---- */

static gboolean
gst_partimenet_running (GstPartimenet * self)
{
  return self->started;
}

static void
gst_partimenet_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstPartimenet *self = GST_PARTIMENET (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL:{
      const gchar *spec = g_value_get_string (value);
      g_free (self->model_spec);
      self->model_spec = g_strdup (spec ? spec : DEFAULT_MODEL);
      if (gst_partimenet_running (self))
        gst_partimenet_request_swap (self, self->model_spec);
      break;
    }
    case PROP_LABELS:
      g_free (self->labels_path);
      self->labels_path = g_value_dup_string (value);
      break;
    case PROP_DEVICES:
      g_free (self->devices);
      self->devices = g_value_dup_string (value);
      break;
    case PROP_CUDA_GRAPHS:
      self->cuda_graphs = g_value_get_boolean (value);
      break;
    case PROP_STAGES:
      self->stages = g_value_get_uint (value);
      break;
    case PROP_BALANCE:{
      const gchar *b = g_value_get_string (value);
      g_free (self->balance);
      self->balance = g_strdup (b ? b : DEFAULT_BALANCE);
      break;
    }
    case PROP_TRAIN:
      self->train = g_value_get_boolean (value);
      break;
    case PROP_LOSS:
      self->loss = g_value_get_enum (value);
      self->settings_dirty |= gst_partimenet_running (self);
      break;
    case PROP_OPTIMIZER:
      self->optimizer = g_value_get_enum (value);
      self->settings_dirty |= gst_partimenet_running (self);
      break;
    case PROP_LEARNING_RATE:
      self->lr = g_value_get_double (value);
      self->hyper_dirty = gst_partimenet_running (self);
      break;
    case PROP_MOMENTUM:
      self->momentum = g_value_get_double (value);
      self->hyper_dirty = gst_partimenet_running (self);
      break;
    case PROP_CHECKPOINT:
      g_free (self->checkpoint);
      self->checkpoint = g_value_dup_string (value);
      break;
    case PROP_CHECKPOINT_INTERVAL:
      self->checkpoint_interval = g_value_get_uint (value);
      break;
    case PROP_OVERLOAD:
      self->overload = g_value_get_enum (value);
      break;
    case PROP_POST_MESSAGES:
      self->post_messages = g_value_get_boolean (value);
      break;
    case PROP_MESSAGE_INTERVAL:
      self->message_interval = g_value_get_uint (value);
      break;
    case PROP_TOP_K:
      self->top_k = g_value_get_uint (value);
      break;
    case PROP_SCALE:
      self->scale = g_value_get_double (value);
      self->norm_dirty = TRUE;
      break;
    case PROP_MEAN:
    case PROP_STD:{
      const gchar *str = g_value_get_string (value);
      gfloat v[4];
      guint n = 0, i;
      gboolean ok = parse_floats (str, v, &n);
      for (i = 0; ok && prop_id == PROP_STD && i < n; i++)
        ok = v[i] != 0;
      if (!ok) {
        GST_OBJECT_UNLOCK (self);
        g_warning ("partimenet: %s '%s' is not 1 to 4 comma-separated numbers"
            "%s; keeping the old value", pspec->name, str ? str : "(null)",
            prop_id == PROP_STD ? " (none zero)" : "");
        return;
      }
      if (prop_id == PROP_MEAN) {
        g_free (self->mean_str);
        self->mean_str = g_strdup (str);
        memcpy (self->mean, v, sizeof (v));
        self->n_mean = n;
      } else {
        g_free (self->std_str);
        self->std_str = g_strdup (str);
        memcpy (self->std, v, sizeof (v));
        self->n_std = n;
      }
      self->norm_dirty = TRUE;
      break;
    }
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_partimenet_get_property (GObject * object, guint prop_id, GValue * value,
    GParamSpec * pspec)
{
  GstPartimenet *self = GST_PARTIMENET (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL:
      g_value_set_string (value, self->model_spec);
      break;
    case PROP_LABELS:
      g_value_set_string (value, self->labels_path);
      break;
    case PROP_DEVICES:
      g_value_set_string (value, self->devices);
      break;
    case PROP_CUDA_GRAPHS:
      g_value_set_boolean (value, self->cuda_graphs);
      break;
    case PROP_STAGES:
      g_value_set_uint (value, self->stages);
      break;
    case PROP_BALANCE:
      g_value_set_string (value, self->balance);
      break;
    case PROP_TRAIN:
      g_value_set_boolean (value, self->train);
      break;
    case PROP_LOSS:
      g_value_set_enum (value, self->loss);
      break;
    case PROP_OPTIMIZER:
      g_value_set_enum (value, self->optimizer);
      break;
    case PROP_LEARNING_RATE:
      g_value_set_double (value, self->lr);
      break;
    case PROP_MOMENTUM:
      g_value_set_double (value, self->momentum);
      break;
    case PROP_CHECKPOINT:
      g_value_set_string (value, self->checkpoint);
      break;
    case PROP_CHECKPOINT_INTERVAL:
      g_value_set_uint (value, self->checkpoint_interval);
      break;
    case PROP_OVERLOAD:
      g_value_set_enum (value, self->overload);
      break;
    case PROP_POST_MESSAGES:
      g_value_set_boolean (value, self->post_messages);
      break;
    case PROP_MESSAGE_INTERVAL:
      g_value_set_uint (value, self->message_interval);
      break;
    case PROP_TOP_K:
      g_value_set_uint (value, self->top_k);
      break;
    case PROP_SCALE:
      g_value_set_double (value, self->scale);
      break;
    case PROP_MEAN:
      g_value_set_string (value, self->mean_str);
      break;
    case PROP_STD:
      g_value_set_string (value, self->std_str);
      break;
    case PROP_LATENCY:
      g_value_set_uint64 (value, self->stat_latency);
      break;
    case PROP_FPS:
      g_value_set_double (value, self->stat_fps);
      break;
    case PROP_LAST_LOSS:
      g_value_set_double (value, self->stat_loss);
      break;
    case PROP_FRAMES_TRAINED:
      g_value_set_uint64 (value, self->stat_trained);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

/* ---- class ---- */

static void
gst_partimenet_finalize (GObject * object)
{
  GstPartimenet *self = GST_PARTIMENET (object);

  g_free (self->model_spec);
  g_free (self->labels_path);
  g_free (self->devices);
  g_free (self->balance);
  g_free (self->checkpoint);
  g_free (self->mean_str);
  g_free (self->std_str);
  g_free (self->swap_request);
  g_free (self->active_spec);
  G_OBJECT_CLASS (gst_partimenet_parent_class)->finalize (object);
}

static void
gst_partimenet_class_init (GstPartimenetClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  const GParamFlags rw = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
      GST_PARAM_DOC_SHOW_DEFAULT;
  const GParamFlags ro = G_PARAM_READABLE | G_PARAM_STATIC_STRINGS;

  GST_DEBUG_CATEGORY_INIT (gst_partimenet_debug, "partimenet", 0,
      "partimenet neural network element (and libpartime)");

  gobject_class->set_property = gst_partimenet_set_property;
  gobject_class->get_property = gst_partimenet_get_property;
  gobject_class->finalize = gst_partimenet_finalize;

  /**
   * GstPartimenet:model:
   *
   * The network: a path to an ONNX file or `builtin:NAME` (`builtin:autoencoder`,
   * `builtin:classifier`). Set in PLAYING, the new model loads in the background and replaces
   * the running one between two frames; one that fails to load leaves the old one running and
   * posts a warning.
   */
  g_object_class_install_property (gobject_class, PROP_MODEL,
      g_param_spec_string ("model", "Model",
          "ONNX file or builtin:NAME; changeable in PLAYING (loaded in the "
          "background, swapped between frames)", DEFAULT_MODEL,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_LABELS,
      g_param_spec_string ("labels", "Labels",
          "Text file with one class name per line (line N names class N)",
          NULL, rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_DEVICES,
      g_param_spec_string ("devices", "Devices",
          "Comma-separated devices the stages run on: cpu, cpu:N (core N), "
          "cuda:N; stage i of S runs on device floor(i*G/S). "
          "NULL: one CPU core per stage", NULL, rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_CUDA_GRAPHS,
      g_param_spec_boolean ("cuda-graphs", "CUDA graphs",
          "On GPU stages, capture each kind of tick's device work as a CUDA "
          "graph once and replay it (fewer launches per frame)", FALSE,
          rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_STAGES,
      g_param_spec_uint ("stages", "Stages",
          "Number of pipeline stages D (a frame leaves D-1 frames later); "
          "0: one per device in 'devices' (1 without devices)",
          0, PT_MAX_STAGES, DEFAULT_STAGES, rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_BALANCE,
      g_param_spec_string ("balance", "Balance",
          "How to cut the network into stages: 'auto' (balanced by measured "
          "cost) or node counts per stage such as '3,4,-1' (-1: the rest); "
          "'9+16,-1' also gives the first stage output channels 0-15 of node 9",
          DEFAULT_BALANCE, rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_TRAIN,
      g_param_spec_boolean ("train", "Train",
          "Learn from every frame (with the loss below); when off the loss is "
          "still reported", DEFAULT_TRAIN, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_LOSS,
      g_param_spec_enum ("loss", "Loss", "Training loss; changing it in "
          "PLAYING restarts the optimizer state", GST_TYPE_PARTIMENET_LOSS,
          DEFAULT_LOSS, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_OPTIMIZER,
      g_param_spec_enum ("optimizer", "Optimizer",
          "Optimizer of every stage; changing it in PLAYING restarts its state",
          GST_TYPE_PARTIMENET_OPTIMIZER, DEFAULT_OPTIMIZER,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_LEARNING_RATE,
      g_param_spec_double ("learning-rate", "Learning rate",
          "Step size; 0 freezes the weights while losses are still computed. "
          "Changed in PLAYING it applies from the next frame, optimizer state "
          "kept",
          0.0, 10.0, DEFAULT_LEARNING_RATE, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_MOMENTUM,
      g_param_spec_double ("momentum", "Momentum", "SGD momentum (changed in "
          "PLAYING: from the next frame, optimizer state kept)",
          0.0, 0.999999, DEFAULT_MOMENTUM, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_CHECKPOINT,
      g_param_spec_string ("checkpoint", "Checkpoint",
          "ONNX file the learned weights are saved to (atomically: every "
          "checkpoint-interval frames, at EOS and on PAUSED->READY) and resumed "
          "from at start when it exists", NULL,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_CHECKPOINT_INTERVAL,
      g_param_spec_uint ("checkpoint-interval", "Checkpoint interval",
          "Save the checkpoint every N frames (0: only at EOS and on stop)",
          0, G_MAXUINT, DEFAULT_CHECKPOINT_INTERVAL,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_OVERLOAD,
      g_param_spec_enum ("overload", "Overload",
          "What to do with a frame that arrives too late to be processed in "
          "time (downstream QoS, a live clock, or the network still busy with "
          "earlier frames); a QoS message is posted for each skipped frame",
          GST_TYPE_PARTIMENET_OVERLOAD, DEFAULT_OVERLOAD,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_POST_MESSAGES,
      g_param_spec_boolean ("post-messages", "Post messages",
          "Post a 'partimenet' element message with the results",
          DEFAULT_POST_MESSAGES, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_MESSAGE_INTERVAL,
      g_param_spec_uint ("message-interval", "Message interval",
          "Post a message for every Nth frame", 1, G_MAXUINT,
          DEFAULT_MESSAGE_INTERVAL, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_TOP_K,
      g_param_spec_uint ("top-k", "Top k",
          "Number of best classes reported for a classifier", 0,
          GST_PARTIMENET_MAX_TOP_K, DEFAULT_TOP_K,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_SCALE,
      g_param_spec_double ("scale", "Scale",
          "Input normalization: x = (pixel * scale - mean) / std", -G_MAXFLOAT,
          G_MAXFLOAT, DEFAULT_SCALE, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_MEAN,
      g_param_spec_string ("mean", "Mean",
          "Per-channel mean (one value, or one per channel: \"0.485,0.456,0.406\")",
          DEFAULT_MEAN, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_STD,
      g_param_spec_string ("std", "Std",
          "Per-channel standard deviation (one value, or one per channel)",
          DEFAULT_STD, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_LATENCY,
      g_param_spec_uint64 ("latency", "Latency",
          "Delay the element adds to a frame in ns: (D-1) frame durations, "
          "one more with the next-frame loss", 0, G_MAXUINT64, 0, ro));
  g_object_class_install_property (gobject_class, PROP_FPS,
      g_param_spec_double ("fps", "FPS", "Frames per second leaving the "
          "network, measured", 0, G_MAXDOUBLE, 0, ro));
  g_object_class_install_property (gobject_class, PROP_LAST_LOSS,
      g_param_spec_double ("last-loss", "Last loss",
          "Loss of the latest frame that had one (NaN before the first)",
          -G_MAXDOUBLE, G_MAXDOUBLE, 0, ro));
  g_object_class_install_property (gobject_class, PROP_FRAMES_TRAINED,
      g_param_spec_uint64 ("frames-trained", "Frames trained",
          "Frames the last stage has learned from since start", 0,
          G_MAXUINT64, 0, ro));

  gst_element_class_set_static_metadata (element_class,
      "Pipelined neural network with continual learning",
      "Filter/Analyzer/Video",
      "Runs a neural network one stage per device as a pipeline over time on "
      "every frame, learning from the stream; results go out as metadata",
      "partimenet developers");
  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);
  element_class->change_state = GST_DEBUG_FUNCPTR (gst_partimenet_change_state);
#ifdef HAVE_GST_CUDA
  element_class->set_context = GST_DEBUG_FUNCPTR (gst_partimenet_set_context);
#endif

  gst_type_mark_as_plugin_api (GST_TYPE_PARTIMENET_OVERLOAD, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_PARTIMENET_LOSS, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_PARTIMENET_OPTIMIZER, 0);

  /* make the metas known before any buffer needs them */
  gst_partimenet_meta_get_info ();
  gst_partimenet_target_meta_get_info ();
}

static void
gst_partimenet_init (GstPartimenet * self)
{
#ifdef HAVE_GST_CUDA
  self->cuda_device = -1;
#endif
  self->sinkpad = gst_pad_new_from_static_template (&sink_template, "sink");
  gst_pad_set_chain_function (self->sinkpad,
      GST_DEBUG_FUNCPTR (gst_partimenet_chain));
  gst_pad_set_event_function (self->sinkpad,
      GST_DEBUG_FUNCPTR (gst_partimenet_sink_event));
  gst_pad_set_query_function (self->sinkpad,
      GST_DEBUG_FUNCPTR (gst_partimenet_sink_query));
  GST_PAD_SET_PROXY_CAPS (self->sinkpad);
  gst_element_add_pad (GST_ELEMENT (self), self->sinkpad);

  self->srcpad = gst_pad_new_from_static_template (&src_template, "src");
  gst_pad_set_event_function (self->srcpad,
      GST_DEBUG_FUNCPTR (gst_partimenet_src_event));
  gst_pad_set_query_function (self->srcpad,
      GST_DEBUG_FUNCPTR (gst_partimenet_src_query));
  GST_PAD_SET_PROXY_CAPS (self->srcpad);
  gst_element_add_pad (GST_ELEMENT (self), self->srcpad);

  self->model_spec = g_strdup (DEFAULT_MODEL);
  self->stages = DEFAULT_STAGES;
  self->balance = g_strdup (DEFAULT_BALANCE);
  self->train = DEFAULT_TRAIN;
  self->loss = DEFAULT_LOSS;
  self->optimizer = DEFAULT_OPTIMIZER;
  self->lr = DEFAULT_LEARNING_RATE;
  self->momentum = DEFAULT_MOMENTUM;
  self->checkpoint_interval = DEFAULT_CHECKPOINT_INTERVAL;
  self->overload = DEFAULT_OVERLOAD;
  self->post_messages = DEFAULT_POST_MESSAGES;
  self->message_interval = DEFAULT_MESSAGE_INTERVAL;
  self->top_k = DEFAULT_TOP_K;
  self->scale = DEFAULT_SCALE;
  self->mean_str = g_strdup (DEFAULT_MEAN);
  self->std_str = g_strdup (DEFAULT_STD);
  self->mean[0] = 0.0f;
  self->std[0] = 1.0f;
  self->n_mean = self->n_std = 1;
  self->stat_loss = NAN;
  self->earliest_time = GST_CLOCK_TIME_NONE;
  self->pipeline_latency = GST_CLOCK_TIME_NONE;
  self->reported_latency = GST_CLOCK_TIME_NONE;
  gst_segment_init (&self->segment, GST_FORMAT_UNDEFINED);
}
