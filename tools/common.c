/* The `partime` tool's shared pieces: command-line parsing, usage and errors, stream options,
 * the synthetic clip and the layout of stacked .npy files. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tool.h"

static const char usage_run[] =
    "  partime run MODEL (--input FRAMES.npy | --synthetic N) [options]\n"
    "      Streams frames one by one through MODEL and prints a summary.\n"
    "      --input FRAMES.npy     frames stacked on a new first axis: (N, *input_shape), or\n"
    "                             (N, *input_shape[1:]) when the first input dimension is 1\n"
    "      --synthetic N          stream N frames of a built-in moving colour pattern instead\n"
    "      --targets T.npy        per-frame targets: int64 (N,) class indices for cross-entropy,\n"
    "                             float32 tensors stacked like the outputs for mse\n"
    "      --output OUT.npy       every frame's output tensor, stacked in frame order\n"
    "      --trace TRACE.csv      one row per frame: frame,loss\n"
    "      --train                learn on every frame\n"
    "      --loss L               cross-entropy, mse, reconstruction or next-frame (default:\n"
    "                             reconstruction when the output shape is the input shape,\n"
    "                             cross-entropy otherwise)\n"
    "      --optimizer O          sgd or adam (default sgd)\n"
    "      --lr X                 learning rate (default 0.001; 0 freezes the weights)\n"
    "      --momentum M           SGD momentum (default 0.9)\n"
    "      --weight-decay W       L2 weight decay (default 0)\n"
    "      --save CKPT.onnx       write the model with its current weights at the end\n"
    "      --stages D             pipeline stages (default 1, or one per device with --devices)\n"
    "      --devices LIST         devices the stages run on, e.g. cpu or cpu,cpu (default cpu)\n"
    "      --balance B            auto, or node counts per stage such as 3,4,-1; 9+16,-1 also "
    "gives\n"
    "                             stage 0 channels 0-15 of node 9 (default auto)\n"
    "      --cuda-graphs          on cuda devices, replay each stage's per-frame work as a CUDA\n"
    "                             graph (captured once) instead of launching it piece by piece\n";
static const char usage_inspect[] =
    "  partime inspect MODEL\n"
    "      Prints every node (name, op, output shape, parameters, MFLOPs) and the totals.\n";
static const char usage_export[] = "  partime export builtin:NAME OUT.onnx\n"
                                   "      Writes a built-in model as an ONNX file.\n";
static const char usage_balance[] =
    "  partime balance MODEL --stages D [--train] [--devices LIST] [--balance B]\n"
    "      Prints each stage's node range, ops and measured cost, and the predicted speedup.\n";
static const char usage_bench[] =
    "  partime bench MODEL --stages 1,2,4 --frames N [--train] [--devices LIST] [--balance B]\n"
    "                [--cuda-graphs] [--independent]\n"
    "      Streams N synthetic frames per stage count and prints frames/s, mean latency,\n"
    "      each stage's busy fraction and the speedup over one stage. --cuda-graphs as for run.\n"
    "      --independent          after each D-stage row, also run D one-stage streams at once,\n"
    "                             one per core (the first D the process may use), each with\n"
    "                             its own copy of the model: what D cores give together with\n"
    "                             nothing passed between them, the ceiling the D-stage row is\n"
    "                             compared with\n";

void tool_print_usage(FILE *f, const char *cmd) {
  const char *one = NULL;
  if (cmd && strcmp(cmd, "run") == 0) one = usage_run;
  if (cmd && strcmp(cmd, "inspect") == 0) one = usage_inspect;
  if (cmd && strcmp(cmd, "export") == 0) one = usage_export;
  if (cmd && strcmp(cmd, "balance") == 0) one = usage_balance;
  if (cmd && strcmp(cmd, "bench") == 0) one = usage_bench;
  fputs("Usage:\n", f);
  if (one) {
    fputs(one, f);
  } else {
    fprintf(f, "%s%s%s%s%s", usage_run, usage_inspect, usage_export, usage_balance, usage_bench);
    fputs("  partime --help | --version\n", f);
  }
  fputs("MODEL is an .onnx file or builtin:NAME (", f);
  const char *const *names = pt_builtin_names();
  for (int i = 0; names && names[i]; i++) fprintf(f, "%sbuiltin:%s", i ? ", " : "", names[i]);
  fputs(").\nEvery command also takes --help, and --verbose to show the library's log.\n", f);
}

int tool_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "partime%s%s: ", cmd ? " " : "", cmd ? cmd : "");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  tool_print_usage(stderr, cmd);
  return TOOL_EXIT_USAGE;
}

int tool_fail(const char *fmt, ...) {
  va_list ap;
  fputs("partime: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return TOOL_EXIT_FAIL;
}

void tool_log(void *user, pt_log_level level, const char *msg) {
  bool verbose = user && *(const bool *)user;
  static const char *const names[] = {"error", "warning", "info", "debug"};
  if (level <= PT_LOG_WARNING || verbose)
    fprintf(stderr, "partime: %s: %s\n", names[level <= PT_LOG_DEBUG ? level : PT_LOG_DEBUG], msg);
}

double tool_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Strict number parsing: the whole argument must be the number. */
static bool parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || !isfinite(v)) return false;
  *out = v;
  return true;
}

static bool parse_count(const char *s, int64_t max, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end || errno || v < 1 || v > max) return false;
  *out = v;
  return true;
}

/* "auto", or a comma-separated list of node counts (>= 1) where -1 means "the rest", a count
 * optionally followed by "+C" (C output channels of the next node). Whether the counts fit the
 * model is the library's to judge. */
static bool balance_syntax_ok(const char *s) {
  if (strcmp(s, "auto") == 0) return true;
  const char *p = s;
  for (;;) {
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (end == p || errno || (v < 1 && v != -1 && !(v == 0 && *end == '+'))) return false;
    if (*end == '+' && v >= 0) {
      const char *c = end + 1;
      long ch = strtol(c, &end, 10);
      if (end == c || errno || ch < 1) return false;
    }
    if (*end != ',' && *end != '\0') return false;
    if (*end == '\0') return true;
    p = end + 1;
  }
}

enum {
  KEY_INPUT = 256,
  KEY_TARGETS,
  KEY_OUTPUT,
  KEY_TRACE,
  KEY_TRAIN,
  KEY_LOSS,
  KEY_OPTIMIZER,
  KEY_LR,
  KEY_MOMENTUM,
  KEY_WEIGHT_DECAY,
  KEY_SAVE,
  KEY_STAGES,
  KEY_DEVICES,
  KEY_BALANCE,
  KEY_FRAMES,
  KEY_SYNTHETIC,
  KEY_CUDA_GRAPHS,
  KEY_INDEPENDENT,
  KEY_VERBOSE,
  KEY_HELP,
};

static const struct option long_opts[] = {
    {"input", required_argument, NULL, KEY_INPUT},
    {"targets", required_argument, NULL, KEY_TARGETS},
    {"output", required_argument, NULL, KEY_OUTPUT},
    {"trace", required_argument, NULL, KEY_TRACE},
    {"train", no_argument, NULL, KEY_TRAIN},
    {"loss", required_argument, NULL, KEY_LOSS},
    {"optimizer", required_argument, NULL, KEY_OPTIMIZER},
    {"lr", required_argument, NULL, KEY_LR},
    {"momentum", required_argument, NULL, KEY_MOMENTUM},
    {"weight-decay", required_argument, NULL, KEY_WEIGHT_DECAY},
    {"save", required_argument, NULL, KEY_SAVE},
    {"stages", required_argument, NULL, KEY_STAGES},
    {"devices", required_argument, NULL, KEY_DEVICES},
    {"balance", required_argument, NULL, KEY_BALANCE},
    {"frames", required_argument, NULL, KEY_FRAMES},
    {"synthetic", required_argument, NULL, KEY_SYNTHETIC},
    {"cuda-graphs", no_argument, NULL, KEY_CUDA_GRAPHS},
    {"independent", no_argument, NULL, KEY_INDEPENDENT},
    {"verbose", no_argument, NULL, KEY_VERBOSE},
    {"help", no_argument, NULL, KEY_HELP},
    {NULL, 0, NULL, 0},
};

/* The option bit each key needs (0: always allowed). */
static unsigned key_bit(int key) {
  switch (key) {
  case KEY_INPUT:
    return OPT_INPUT;
  case KEY_TARGETS:
    return OPT_TARGETS;
  case KEY_OUTPUT:
    return OPT_OUTPUT;
  case KEY_TRACE:
    return OPT_TRACE;
  case KEY_TRAIN:
  case KEY_LOSS:
  case KEY_OPTIMIZER:
  case KEY_LR:
  case KEY_MOMENTUM:
  case KEY_WEIGHT_DECAY:
    return OPT_TRAIN;
  case KEY_SAVE:
    return OPT_SAVE;
  case KEY_STAGES:
    return OPT_STAGES;
  case KEY_DEVICES:
    return OPT_DEVICES;
  case KEY_BALANCE:
    return OPT_BALANCE;
  case KEY_FRAMES:
    return OPT_FRAMES;
  case KEY_SYNTHETIC:
    return OPT_SYNTHETIC;
  case KEY_CUDA_GRAPHS:
    return OPT_CUDA_GRAPHS;
  case KEY_INDEPENDENT:
    return OPT_INDEPENDENT;
  default:
    return 0;
  }
}

int tool_parse_opts(int argc, char **argv, unsigned allowed, int min_pos, int max_pos,
                    tool_opts *o) {
  const char *cmd = argv[0];
  memset(o, 0, sizeof *o);
  /* getopt's own messages start with argv[0]; make that "partime CMD". */
  char prog[64];
  snprintf(prog, sizeof prog, "partime %s", cmd);
  char *saved0 = argv[0];
  argv[0] = prog;
  optind = 1;
  opterr = 1;
  int key, rc = TOOL_EXIT_OK;
  while (rc == TOOL_EXIT_OK && (key = getopt_long(argc, argv, "-h", long_opts, NULL)) != -1) {
    if (key == '?') {
      argv[0] = saved0;
      tool_print_usage(stderr, cmd);
      return TOOL_EXIT_USAGE;
    }
    if (key == 'h' || key == KEY_HELP) {
      argv[0] = saved0;
      tool_print_usage(stdout, cmd);
      return -1;
    }
    if (key == 1) { /* a positional argument, in place */
      if (o->n_pos >= max_pos) {
        rc = tool_usage_error(cmd, "unexpected argument '%s'", optarg);
        break;
      }
      o->pos[o->n_pos++] = optarg;
      continue;
    }
    unsigned bit = key_bit(key);
    if (bit && !(allowed & bit)) {
      const struct option *lo = long_opts;
      while (lo->name && lo->val != key) lo++;
      rc = tool_usage_error(cmd, "option --%s does not apply to '%s'", lo->name, cmd);
      break;
    }
    const char *a = optarg;
    switch (key) {
    case KEY_INPUT:
      o->input = a;
      break;
    case KEY_TARGETS:
      o->targets = a;
      break;
    case KEY_OUTPUT:
      o->output = a;
      break;
    case KEY_TRACE:
      o->trace = a;
      break;
    case KEY_SAVE:
      o->save = a;
      break;
    case KEY_STAGES:
      o->stages = a;
      break;
    case KEY_DEVICES:
      o->devices = a;
      break;
    case KEY_BALANCE:
      if (!balance_syntax_ok(a))
        rc = tool_usage_error(cmd, "--balance needs 'auto' or node counts such as 3,4,-1, not '%s'",
                              a);
      o->balance = a;
      break;
    case KEY_TRAIN:
      o->train = true;
      break;
    case KEY_VERBOSE:
      o->verbose = true;
      break;
    case KEY_CUDA_GRAPHS:
      o->cuda_graphs = true;
      break;
    case KEY_INDEPENDENT:
      o->independent = true;
      break;
    case KEY_LOSS: {
      pt_loss l;
      if (pt_loss_from_string(a, &l) != PT_OK)
        rc = tool_usage_error(cmd,
                              "unknown loss '%s' (cross-entropy, mse, reconstruction, "
                              "next-frame)",
                              a);
      o->loss = a;
      break;
    }
    case KEY_OPTIMIZER: {
      pt_optimizer op;
      if (pt_optimizer_from_string(a, &op) != PT_OK)
        rc = tool_usage_error(cmd, "unknown optimizer '%s' (sgd, adam)", a);
      o->optimizer = a;
      break;
    }
    case KEY_LR:
      if (!parse_double(a, &o->lr) || o->lr < 0)
        rc = tool_usage_error(cmd, "--lr needs a number >= 0, not '%s'", a);
      o->have_lr = true;
      break;
    case KEY_MOMENTUM:
      if (!parse_double(a, &o->momentum) || o->momentum < 0 || o->momentum >= 1)
        rc = tool_usage_error(cmd, "--momentum needs a number in [0, 1), not '%s'", a);
      o->have_momentum = true;
      break;
    case KEY_WEIGHT_DECAY:
      if (!parse_double(a, &o->weight_decay) || o->weight_decay < 0)
        rc = tool_usage_error(cmd, "--weight-decay needs a number >= 0, not '%s'", a);
      o->have_weight_decay = true;
      break;
    case KEY_FRAMES:
      if (!parse_count(a, 1000000000, &o->frames))
        rc = tool_usage_error(cmd, "--frames needs a positive count, not '%s'", a);
      break;
    case KEY_SYNTHETIC:
      if (!parse_count(a, 1000000000, &o->synthetic))
        rc = tool_usage_error(cmd, "--synthetic needs a positive frame count, not '%s'", a);
      break;
    }
  }
  argv[0] = saved0;
  if (rc != TOOL_EXIT_OK) return rc;
  if (o->n_pos < min_pos)
    return tool_usage_error(cmd, "missing %s", o->n_pos == 0 ? "MODEL" : "OUT.onnx");
  if (!o->train && (o->optimizer || o->have_lr || o->have_momentum || o->have_weight_decay))
    return tool_usage_error(cmd, "--optimizer, --lr, --momentum and --weight-decay need --train");
  return TOOL_EXIT_OK;
}

int tool_stream_opts(const char *cmd, const tool_opts *o, const pt_model *m, pt_stream_opts *so) {
  pt_stream_opts_init(so);
  so->devices = o->devices;
  so->balance = o->balance;
  so->cuda_graphs = o->cuda_graphs;
  so->log = tool_log;
  so->log_user = (void *)&o->verbose;
  pt_train_opts *t = &so->train;
  t->enabled = o->train;
  if (o->loss) {
    pt_loss_from_string(o->loss, &t->loss);
  } else if (o->train) {
    pt_shape in = pt_model_input_shape(m), out = pt_model_output_shape(m);
    bool same = in.ndim == out.ndim;
    for (int i = 0; same && i < in.ndim; i++) same = in.d[i] == out.d[i];
    t->loss = same ? PT_LOSS_RECONSTRUCTION : PT_LOSS_CROSS_ENTROPY;
  }
  if (o->optimizer) pt_optimizer_from_string(o->optimizer, &t->optimizer);
  if (o->have_lr) t->lr = (float)o->lr;
  if (o->have_momentum) t->momentum = (float)o->momentum;
  if (o->have_weight_decay) t->weight_decay = (float)o->weight_decay;
  if (t->momentum != 0 && o->have_momentum && t->optimizer == PT_OPT_ADAM)
    return tool_usage_error(cmd, "--momentum applies to sgd, not adam");
  return TOOL_EXIT_OK;
}

int64_t tool_synth_class(int64_t t, int64_t n_classes) {
  if (n_classes < 1) return 0;
  /* Scenes visit the classes in a scrambled but fixed order. */
  int64_t scene = t / TOOL_SCENE_FRAMES;
  return (scene * 7 + scene / n_classes) % n_classes;
}

void tool_synth_frame(const pt_shape *shape, int64_t t, int64_t n_classes, float *frame) {
  int64_t C = 1, H = 1, W = pt_shape_numel(shape);
  if (shape->ndim >= 3) {
    W = shape->d[shape->ndim - 1];
    H = shape->d[shape->ndim - 2];
    C = pt_shape_numel(shape) / (W * H);
  }
  int64_t k = tool_synth_class(t, n_classes > 0 ? n_classes : 1);
  double angle = 2.0 * M_PI * (double)k / (double)(n_classes > 0 ? n_classes : 1) + 0.3;
  double freq = 1.0 + (double)(k % 3);
  double dx = cos(angle) * freq / (double)W, dy = sin(angle) * freq / (double)H;
  double phase = 0.15 * (double)t; /* drifts a little every frame */
  for (int64_t c = 0; c < C; c++) {
    double pc = 2.1 * (double)c;
    for (int64_t y = 0; y < H; y++)
      for (int64_t x = 0; x < W; x++) {
        double v = sin(2.0 * M_PI * ((double)x * dx + (double)y * dy) + phase + pc);
        frame[(c * H + y) * W + x] = (float)(0.5 + 0.4 * v);
      }
  }
}

int tool_stack_form(int ndim, const int64_t *dims, const pt_shape *row) {
  if (ndim == row->ndim + 1) {
    bool same = true;
    for (int i = 0; same && i < row->ndim; i++) same = dims[i + 1] == row->d[i];
    if (same) return 2;
  }
  if (row->ndim >= 1 && row->d[0] == 1 && ndim == row->ndim) {
    bool same = true;
    for (int i = 1; same && i < row->ndim; i++) same = dims[i] == row->d[i];
    if (same) return 1;
  }
  return 0;
}
