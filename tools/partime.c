/* partime: the command-line face of libpartime.
 *
 *   partime run MODEL --input FRAMES.npy [--targets T.npy] [--output OUT.npy] [--trace T.csv]
 *               [--train --loss L --optimizer sgd|adam --lr X [--momentum M] [--weight-decay W]]
 *               [--save CKPT.onnx] [--stages D] [--devices LIST] [--balance auto|N,N,-1|N+C,-1]
 *               [--cuda-graphs]
 *   partime run MODEL --synthetic N [...]
 *   partime inspect MODEL
 *   partime export builtin:NAME OUT.onnx
 *   partime balance MODEL --stages D [--train]
 *   partime bench MODEL [--train] --stages 1,2,4 --frames N [--cuda-graphs]
 *
 * `run` streams frames one at a time exactly as a live source would: push one frame, pop whatever
 * is finished, and drain at the end. Results come back in frame order; --output row t and --trace
 * row t belong to frame t whatever the number of stages or devices. Exit status: 0 success,
 * 1 a failure at run time (the library's message is printed), 2 bad arguments (with usage). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tool.h"

static int cmd_inspect(int argc, char **argv) {
  tool_opts o;
  int rc = tool_parse_opts(argc, argv, 0, 1, 1, &o);
  if (rc) return rc < 0 ? TOOL_EXIT_OK : rc;

  pt_error err;
  pt_model *m;
  if (pt_model_load(o.pos[0], &m, &err) != PT_OK) return tool_fail("%s", err.msg);
  char in_s[96], out_s[96];
  pt_shape in = pt_model_input_shape(m), out = pt_model_output_shape(m);
  printf("model   %s\n", pt_model_name(m));
  printf("input   %s\n", pt_shape_str(&in, in_s, sizeof in_s));
  printf("output  %s\n\n", pt_shape_str(&out, out_s, sizeof out_s));
  printf("%4s  %-28s %-20s %-18s %12s %12s\n", "#", "name", "op", "output", "params", "MFLOPs");
  int n = pt_model_n_nodes(m);
  double flops = 0;
  int64_t params = 0;
  for (int i = 0; i < n; i++) {
    pt_node_info ni;
    if (pt_model_node_info(m, i, &ni) != PT_OK) {
      pt_model_free(m);
      return tool_fail("%s: cannot read node %d", o.pos[0], i);
    }
    char shp[96];
    printf("%4d  %-28s %-20s %-18s %12" PRId64 " %12.3f\n", i, ni.name ? ni.name : "",
           ni.op_type ? ni.op_type : "", pt_shape_str(&ni.out_shape, shp, sizeof shp), ni.n_params,
           ni.flops / 1e6);
    flops += ni.flops;
    params += ni.n_params;
  }
  printf("\ntotal   %d nodes, %" PRId64 " parameters, %.6f GFLOPs per frame\n", n, params,
         flops / 1e9);
  if (params != pt_model_n_params(m))
    printf("        (%" PRId64 " trainable parameter elements in the model)\n",
           pt_model_n_params(m));
  pt_model_free(m);
  return TOOL_EXIT_OK;
}

static int cmd_export(int argc, char **argv) {
  tool_opts o;
  int rc = tool_parse_opts(argc, argv, 0, 2, 2, &o);
  if (rc) return rc < 0 ? TOOL_EXIT_OK : rc;
  pt_error err;
  pt_model *m;
  if (pt_model_load(o.pos[0], &m, &err) != PT_OK) return tool_fail("%s", err.msg);
  pt_status st = pt_model_save(m, o.pos[1], &err);
  if (st == PT_OK)
    printf("wrote %s (%d nodes, %" PRId64 " parameters)\n", o.pos[1], pt_model_n_nodes(m),
           pt_model_n_params(m));
  pt_model_free(m);
  return st == PT_OK ? TOOL_EXIT_OK : tool_fail("%s", err.msg);
}

/* Everything `run` holds, so one cleanup path frees it all. */
typedef struct run_state {
  pt_model *model;
  pt_stream *stream;
  pt_npy frames, targets;
  float *synth;   /* one synthetic frame */
  float *outputs; /* N rows, when --output is given */
  float *losses;  /* N losses */
  unsigned char *seen;
} run_state;

static void run_state_free(run_state *r) {
  pt_stream_free(r->stream);
  pt_model_free(r->model);
  pt_npy_free(&r->frames);
  pt_npy_free(&r->targets);
  free(r->synth);
  free(r->outputs);
  free(r->losses);
  free(r->seen);
}

/* Mean of the computed (non-NaN) losses in [from, to). */
static double mean_loss(const float *l, int64_t from, int64_t to, int64_t *count) {
  double s = 0;
  *count = 0;
  for (int64_t i = from; i < to; i++)
    if (!isnan(l[i])) {
      s += l[i];
      (*count)++;
    }
  return *count ? s / (double)*count : NAN;
}

static int write_trace(const char *path, const float *losses, int64_t n) {
  FILE *f = fopen(path, "w");
  if (!f) return tool_fail("cannot write %s: %s", path, strerror(errno));
  fputs("frame,loss\n", f);
  for (int64_t i = 0; i < n; i++) {
    if (isnan(losses[i]))
      fprintf(f, "%" PRId64 ",nan\n", i);
    else
      fprintf(f, "%" PRId64 ",%.9g\n", i, losses[i]);
  }
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) return tool_fail("cannot write %s: %s", path, strerror(errno));
  return TOOL_EXIT_OK;
}

/* Takes every finished result off the stream. */
static int collect(run_state *r, int64_t n, int64_t row_len, int64_t *done) {
  pt_result res;
  pt_status st;
  while ((st = pt_stream_pop(r->stream, &res)) == PT_OK) {
    int64_t t = (int64_t)(intptr_t)res.user;
    if (t < 0 || t >= n || r->seen[t] || res.frame != t)
      return tool_fail("stream returned frame %" PRId64 " (pushed as frame %" PRId64
                       ") out of order or twice",
                       res.frame, t);
    r->seen[t] = 1;
    r->losses[t] = res.loss;
    if (r->outputs) memcpy(r->outputs + t * row_len, res.output, sizeof(float) * (size_t)row_len);
    (*done)++;
  }
  if (st != PT_AGAIN) return tool_fail("%s", pt_stream_last_error(r->stream));
  return TOOL_EXIT_OK;
}

static int cmd_run(int argc, char **argv) {
  const char *cmd = "run";
  tool_opts o;
  int rc =
      tool_parse_opts(argc, argv,
                      OPT_INPUT | OPT_TARGETS | OPT_OUTPUT | OPT_TRACE | OPT_TRAIN | OPT_SAVE |
                          OPT_STAGES | OPT_DEVICES | OPT_BALANCE | OPT_SYNTHETIC | OPT_CUDA_GRAPHS,
                      1, 1, &o);
  if (rc) return rc < 0 ? TOOL_EXIT_OK : rc;
  if (!o.input == !o.synthetic)
    return tool_usage_error(cmd, "give exactly one of --input FRAMES.npy and --synthetic N");
  int stages = 1;
  if (o.stages) {
    char *end;
    long v = strtol(o.stages, &end, 10);
    if (end == o.stages || *end || v < 1 || v > PT_MAX_STAGES)
      return tool_usage_error(cmd, "--stages needs a number from 1 to %d, not '%s'", PT_MAX_STAGES,
                              o.stages);
    stages = (int)v;
  } else if (o.devices) {
    stages = 0; /* one stage per device */
  }

  run_state r = {0};
  pt_error err;
  rc = TOOL_EXIT_OK;
  if (pt_model_load(o.pos[0], &r.model, &err) != PT_OK) return tool_fail("%s", err.msg);
  pt_shape in = pt_model_input_shape(r.model), out = pt_model_output_shape(r.model);
  int64_t in_len = pt_shape_numel(&in), out_len = pt_shape_numel(&out);
  char in_s[96], out_s[96];
  pt_shape_str(&in, in_s, sizeof in_s);
  pt_shape_str(&out, out_s, sizeof out_s);

  /* Frames: from the file, or the synthetic clip. `form` says how the file stacks them and
   * --output follows the same convention. */
  int64_t n;
  int form;
  if (o.input) {
    if (pt_npy_load(o.input, &r.frames, &err) != PT_OK) {
      rc = tool_fail("%s", err.msg);
      goto done;
    }
    form = r.frames.dtype == PT_NPY_F32 && r.frames.ndim >= 1
               ? tool_stack_form(r.frames.ndim, r.frames.shape, &in)
               : 0;
    if (!form) {
      rc = tool_fail("%s: expected float32 frames of shape (N, %s) stacked on a new first axis, "
                     "got %s array with %d dimensions",
                     o.input, in_s, r.frames.dtype == PT_NPY_F32 ? "a float32" : "an int64",
                     r.frames.ndim);
      goto done;
    }
    n = r.frames.shape[0];
    if (n == 0) {
      rc = tool_fail("%s: holds no frames", o.input);
      goto done;
    }
  } else {
    n = o.synthetic;
    form = in.ndim >= 1 && in.d[0] == 1 ? 1 : 2;
    r.synth = malloc(sizeof(float) * (size_t)in_len);
    if (!r.synth) {
      rc = tool_fail("out of memory");
      goto done;
    }
  }

  /* Targets: their dtype picks the loss when --loss is not given. */
  if (o.targets && pt_npy_load(o.targets, &r.targets, &err) != PT_OK) {
    rc = tool_fail("%s", err.msg);
    goto done;
  }
  pt_stream_opts so;
  if ((rc = tool_stream_opts(cmd, &o, r.model, &so)) != TOOL_EXIT_OK) goto done;
  if (o.targets && !o.loss)
    so.train.loss = r.targets.dtype == PT_NPY_I64 ? PT_LOSS_CROSS_ENTROPY : PT_LOSS_MSE;
  pt_loss loss = so.train.loss;
  bool supervised = loss == PT_LOSS_CROSS_ENTROPY || loss == PT_LOSS_MSE;
  bool synth_classes = false;
  if (supervised && !o.targets) {
    if (o.synthetic && loss == PT_LOSS_CROSS_ENTROPY) {
      synth_classes = true; /* the synthetic clip carries its scene classes */
    } else {
      rc = tool_usage_error(cmd, "loss %s needs --targets", pt_loss_name(loss));
      goto done;
    }
  }
  if (o.targets && !supervised) {
    rc = tool_usage_error(cmd, "--targets needs a supervised loss (cross-entropy or mse), not %s",
                          loss == PT_LOSS_NONE ? "none" : pt_loss_name(loss));
    goto done;
  }
  if (o.targets && loss == PT_LOSS_CROSS_ENTROPY) {
    if (r.targets.dtype != PT_NPY_I64 ||
        !(r.targets.ndim == 1 || (r.targets.ndim == 2 && r.targets.shape[1] == 1)) ||
        r.targets.shape[0] != n) {
      rc = tool_fail("%s: cross-entropy needs int64 class indices of shape (%" PRId64 ",)",
                     o.targets, n);
      goto done;
    }
    const int64_t *c = r.targets.data;
    for (int64_t i = 0; i < n; i++)
      if (c[i] < 0 || c[i] >= out_len) {
        rc = tool_fail("%s: class %" PRId64 " of frame %" PRId64 " is outside [0, %" PRId64 ")",
                       o.targets, c[i], i, out_len);
        goto done;
      }
  }
  if (o.targets && loss == PT_LOSS_MSE &&
      (r.targets.dtype != PT_NPY_F32 || r.targets.ndim < 1 ||
       !tool_stack_form(r.targets.ndim, r.targets.shape, &out) || r.targets.shape[0] != n)) {
    rc = tool_fail("%s: mse needs float32 targets of shape (%" PRId64 ", %s), one per frame",
                   o.targets, n, out_s);
    goto done;
  }

  so.stages = stages;
  if (pt_stream_new(r.model, &so, &r.stream, &err) != PT_OK) {
    rc = tool_fail("%s", err.msg);
    goto done;
  }
  r.losses = malloc(sizeof(float) * (size_t)n);
  r.seen = calloc((size_t)n, 1);
  if (o.output) r.outputs = malloc(sizeof(float) * (size_t)(n * out_len));
  if (!r.losses || !r.seen || (o.output && !r.outputs)) {
    rc = tool_fail("out of memory for %" PRId64 " frames", n);
    goto done;
  }

  double t0 = tool_now();
  int64_t done_frames = 0;
  for (int64_t t = 0; t < n && rc == TOOL_EXIT_OK; t++) {
    const float *frame;
    if (o.input) {
      frame = (const float *)r.frames.data + t * in_len;
    } else {
      tool_synth_frame(&in, t, out_len, r.synth);
      frame = r.synth;
    }
    pt_target target = {0};
    const pt_target *tp = NULL;
    if (o.targets && loss == PT_LOSS_CROSS_ENTROPY) {
      target.class_index = ((const int64_t *)r.targets.data)[t];
      tp = &target;
    } else if (o.targets && loss == PT_LOSS_MSE) {
      target.tensor = (const float *)r.targets.data + t * out_len;
      tp = &target;
    } else if (synth_classes) {
      target.class_index = tool_synth_class(t, out_len);
      tp = &target;
    }
    pt_status st = pt_stream_push(r.stream, frame, tp, (void *)(intptr_t)t);
    if (st != PT_OK && st != PT_AGAIN) {
      rc = tool_fail("frame %" PRId64 ": %s", t, pt_stream_last_error(r.stream));
      break;
    }
    rc = collect(&r, n, out_len, &done_frames);
  }
  if (rc == TOOL_EXIT_OK && pt_stream_drain(r.stream) != PT_OK)
    rc = tool_fail("%s", pt_stream_last_error(r.stream));
  if (rc == TOOL_EXIT_OK) rc = collect(&r, n, out_len, &done_frames);
  double elapsed = tool_now() - t0;
  if (rc == TOOL_EXIT_OK && done_frames != n)
    rc = tool_fail("the stream returned %" PRId64 " of %" PRId64 " frames", done_frames, n);
  if (rc != TOOL_EXIT_OK) goto done;

  if (o.save && pt_stream_save(r.stream, o.save) != PT_OK) {
    rc = tool_fail("%s", pt_stream_last_error(r.stream));
    goto done;
  }
  if (o.output) {
    int64_t shape[9];
    int ndim = 0;
    shape[ndim++] = n;
    for (int i = form == 1 && out.ndim >= 1 && out.d[0] == 1 ? 1 : 0; i < out.ndim; i++)
      shape[ndim++] = out.d[i];
    if (ndim > 8) {
      rc = tool_fail("%s: an output of %d dimensions does not fit an .npy file", o.output, ndim);
      goto done;
    }
    if (pt_npy_save(o.output, PT_NPY_F32, ndim, shape, r.outputs, &err) != PT_OK) {
      rc = tool_fail("%s", err.msg);
      goto done;
    }
  }
  if (o.trace && (rc = write_trace(o.trace, r.losses, n)) != TOOL_EXIT_OK) goto done;

  pt_stream_stats stats;
  pt_stream_get_stats(r.stream, &stats);
  printf("model       %s (%s -> %s)\n", pt_model_name(r.model), in_s, out_s);
  printf("frames      %" PRId64 " %s in %.2f s, %.1f frames/s\n", n,
         o.synthetic ? "synthetic" : "from the input", elapsed, (double)n / elapsed);
  printf("stages      %d on %s\n", stats.stages, o.devices ? o.devices : "cpu");
  if (so.train.enabled) {
    printf("training    %s loss, %s, lr %g", pt_loss_name(loss),
           pt_optimizer_name(so.train.optimizer), (double)so.train.lr);
    if (so.train.optimizer == PT_OPT_SGD) printf(", momentum %g", (double)so.train.momentum);
    if (so.train.weight_decay > 0) printf(", weight decay %g", (double)so.train.weight_decay);
    printf(" (%" PRId64 " updates skipped, %" PRId64 " restores)\n", stats.skipped_updates,
           stats.restores);
  }
  int64_t tenth = n >= 10 ? n / 10 : 1, c1, c2;
  double first = mean_loss(r.losses, 0, tenth, &c1), last = mean_loss(r.losses, n - tenth, n, &c2);
  if (c1 || c2)
    printf("loss        first 10%%: %.6g   last 10%%: %.6g   (mean per frame)\n", first, last);
  if (o.save) printf("saved       %s\n", o.save);

done:
  run_state_free(&r);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs("partime: missing command\n", stderr);
    tool_print_usage(stderr, NULL);
    return TOOL_EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    tool_print_usage(stdout, argc > 2 && strcmp(cmd, "help") == 0 ? argv[2] : NULL);
    return TOOL_EXIT_OK;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
    printf("partime %s\n", PARTIME_VERSION);
    return TOOL_EXIT_OK;
  }
  if (strcmp(cmd, "run") == 0) return cmd_run(argc - 1, argv + 1);
  if (strcmp(cmd, "inspect") == 0) return cmd_inspect(argc - 1, argv + 1);
  if (strcmp(cmd, "export") == 0) return cmd_export(argc - 1, argv + 1);
  if (strcmp(cmd, "balance") == 0) return tool_cmd_balance(argc - 1, argv + 1);
  if (strcmp(cmd, "bench") == 0) return tool_cmd_bench(argc - 1, argv + 1);
  return tool_usage_error(NULL, "unknown command '%s'", cmd);
}
