/* Shared pieces of the `partime` command-line tool: its options, the synthetic clip, frame layout
 * checks and error reporting. The tool uses only the public libpartime API. */
#ifndef PARTIME_TOOL_H
#define PARTIME_TOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <partime/partime.h>

/* Exit codes: 0 success, 1 a run-time failure (library, file contents), 2 bad arguments. */
enum { TOOL_EXIT_OK = 0, TOOL_EXIT_FAIL = 1, TOOL_EXIT_USAGE = 2 };

/* Every option of every subcommand; each subcommand says which it accepts. */
typedef struct tool_opts {
  const char *input, *targets, *output, *trace, *save;
  const char *stages; /* an integer, or for bench a list "1,2,4" */
  const char *devices, *balance;
  const char *loss, *optimizer;
  bool train, verbose;
  bool cuda_graphs; /* --cuda-graphs */
  bool independent; /* bench: --independent */
  bool have_lr, have_momentum, have_weight_decay;
  double lr, momentum, weight_decay;
  int64_t frames;     /* bench: --frames */
  int64_t synthetic;  /* run: --synthetic N */
  const char *pos[4]; /* positional arguments */
  int n_pos;
} tool_opts;

/* Option bits for tool_parse_opts' `allowed`. */
enum {
  OPT_INPUT = 1 << 0,
  OPT_TARGETS = 1 << 1,
  OPT_OUTPUT = 1 << 2,
  OPT_TRACE = 1 << 3,
  OPT_TRAIN = 1 << 4, /* --train and the optimizer options */
  OPT_SAVE = 1 << 5,
  OPT_STAGES = 1 << 6,
  OPT_DEVICES = 1 << 7,
  OPT_BALANCE = 1 << 8,
  OPT_FRAMES = 1 << 9,
  OPT_SYNTHETIC = 1 << 10,
  OPT_CUDA_GRAPHS = 1 << 11,
  OPT_INDEPENDENT = 1 << 12,
};

/* Parses argv (argv[0] is the subcommand). Returns TOOL_EXIT_OK, TOOL_EXIT_USAGE after printing
 * the message and the subcommand's usage, or -1 when --help was printed (exit 0). */
int tool_parse_opts(int argc, char **argv, unsigned allowed, int min_pos, int max_pos,
                    tool_opts *o);

/* Prints "partime CMD: message" and the usage of `cmd` to stderr; returns TOOL_EXIT_USAGE. */
int tool_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "partime: message" to stderr; returns TOOL_EXIT_FAIL. */
int tool_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tool_print_usage(FILE *f, const char *cmd);

/* Fills stream options from the parsed command line (training, devices, balance, CUDA graphs; not
 * stages). */
int tool_stream_opts(const char *cmd, const tool_opts *o, const pt_model *m, pt_stream_opts *so);
void tool_log(void *user, pt_log_level level, const char *msg);

/* Seconds on a monotonic clock. */
double tool_now(void);

/* The synthetic clip: a colour pattern drifting smoothly across the frame. The clip is cut into
 * scenes of TOOL_SCENE_FRAMES frames; a scene's class sets the pattern's direction and frequency,
 * so the class of a frame is learnable from the frame itself. */
#define TOOL_SCENE_FRAMES 32
/* frame: pt_shape_numel(shape) floats in [0, 1], read as [N, C, H, W] when 4-D. */
void tool_synth_frame(const pt_shape *shape, int64_t t, int64_t n_classes, float *frame);
int64_t tool_synth_class(int64_t t, int64_t n_classes);

/* Whether a stacked file of shape (ndim, dims) holds rows of `row`: (N, *row), or (N, *row[1:])
 * when row[0] == 1. Returns 2 for the full form, 1 for the squeezed one, 0 for no match. */
int tool_stack_form(int ndim, const int64_t *dims, const pt_shape *row);

/* The subcommands in bench.c; argv[0] is the subcommand. */
int tool_cmd_bench(int argc, char **argv);
int tool_cmd_balance(int argc, char **argv);

#endif
