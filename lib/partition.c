/* The partitioner: explicit node counts, or the exact min-max contiguous partition over measured
 * costs (two dynamic programs: the optimum, then the fewest non-preferred cuts within 5% of it).
 *
 * A boundary carries every value produced before the cut and read after it, so the cost of a cut
 * is the floats crossing it (the graph output counts as read at the very end). Moving a float
 * between CPU stages costs a copy at most; it is charged at PT_CUT_S_PER_FLOAT, twice when training
 * (the gradient goes back the same way). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "exec.h"
#include "fpenv.h"
#include "partition.h"
#include "split.h"

#define PT_CUT_S_PER_FLOAT 0.25e-9
#define PT_PREFERRED_SLACK 1.05
/* what the Concat joining a split convolution's halves costs per output float (a copy) */
#define PT_CONCAT_S_PER_FLOAT 0.5e-9

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

pt_status pt_measure_node_costs(pt_model *m, bool train, double *cost, pt_error *err) {
  pt_exec x;
  pt_status st = pt_exec_init(&x, m, 0, m->n_nodes, train, false, err);
  if (st) return st;
  /* The executor owns no buffer for runtime inputs: feed zeros-plus-noise of the right size. */
  float **inputs = calloc(m->n_inputs, sizeof *inputs);
  for (int i = 0; i < m->n_inputs && inputs; i++) {
    int v = m->inputs[i];
    inputs[i] = malloc(m->vals[v].numel * sizeof(float));
    if (!inputs[i]) break;
    for (int64_t k = 0; k < m->vals[v].numel; k++) inputs[i][k] = (float)((k * 7919) % 255) / 255.f;
    pt_exec_bind(&x, v, inputs[i]);
  }
  enum { REPS = 5 };
  double *t = calloc((size_t)m->n_nodes * REPS, sizeof *t);
  if (!inputs || !t) {
    st = pt_error_set(err, PT_ERR_NOMEM, "%s: out of memory measuring node costs", m->name);
    goto out;
  }
  /* timed as the stages will run them, subnormals flushed */
  unsigned fp = pt_fp_flush_subnormals();
  for (int r = 0; r < REPS + 1; r++) { /* the first round warms caches and is not kept */
    for (int i = 0; i < m->n_nodes; i++) {
      double t0 = now_s();
      pt_exec_forward_node(&x, i);
      if (r) t[i * REPS + r - 1] = now_s() - t0;
    }
    if (train) {
      pt_exec_zero_grad(&x);
      float *g = pt_exec_grad(&x, m->output);
      if (g)
        for (int64_t k = 0; k < m->vals[m->output].numel; k++) g[k] = 1e-3f;
      for (int i = m->n_nodes - 1; i >= 0; i--) {
        double t0 = now_s();
        pt_exec_backward_node(&x, i);
        if (r) t[i * REPS + r - 1] += now_s() - t0;
      }
    }
  }
  pt_fp_restore(fp);
  for (int i = 0; i < m->n_nodes; i++) {
    qsort(t + i * REPS, REPS, sizeof *t, cmp_double);
    cost[i] = t[i * REPS + REPS / 2];
    /* the optimizer touches every parameter once per tick */
    if (train)
      for (int k = 0; k < m->nodes[i].n_in; k++) {
        int v = m->nodes[i].in[k];
        if (v >= 0 && m->vals[v].kind == PT_VAL_PARAM) cost[i] += m->vals[v].numel * 2e-9;
      }
  }
out:
  for (int i = 0; inputs && i < m->n_inputs; i++) free(inputs[i]);
  free(inputs);
  free(t);
  pt_exec_free(&x);
  return st;
}

/* Per cut i (after node i): floats crossing it, from each value's producer and last reader. */
static void cut_floats_all(const pt_model *m, int64_t *out) {
  int n = m->n_nodes;
  int64_t *diff = calloc(n + 1, sizeof *diff);
  if (!diff) {
    memset(out, 0, n * sizeof *out);
    return;
  }
  for (int v = 0; v < m->n_vals; v++) {
    const pt_value *val = &m->vals[v];
    if (val->is_int || val->kind == PT_VAL_PARAM || val->kind == PT_VAL_CONST) continue;
    int p = val->producer; /* -1: a runtime input, there before node 0 */
    int last = (v == m->output) ? n : -2;
    for (int i = p + 1; i < n; i++)
      for (int k = 0; k < m->nodes[i].n_in; k++)
        if (m->nodes[i].in[k] == v && i > last) last = i;
    if (last == -2) continue;            /* read nowhere after its producer */
    int a = p < 0 ? 0 : p, b = last - 1; /* cuts a..b see it */
    if (b < a) continue;
    diff[a] += val->numel;
    diff[b + 1] -= val->numel;
  }
  int64_t run = 0;
  for (int i = 0; i < n; i++) {
    run += diff[i];
    out[i] = run;
  }
  free(diff);
}

bool pt_cut_is_preferred(const pt_model *m, int i) {
  const pt_node *n = &m->nodes[i];
  switch (n->op) {
  case PT_OP_UNARY:
  case PT_OP_MAXPOOL:
  case PT_OP_AVGPOOL:
    return true;
  case PT_OP_COPY: /* a flatten or reshape right after a preferred cut point keeps it preferred */
    return n->in[0] >= 0 && m->vals[n->in[0]].producer >= 0 &&
           pt_cut_is_preferred(m, m->vals[n->in[0]].producer);
  default:
    return false;
  }
}

static pt_status parse_balance(const pt_model *m, int D, const char *balance, pt_partition *p,
                               pt_error *err) {
  int n = m->n_nodes, counts[64], split[64] = {0}, k = 0, rest = -1;
  const char *s = balance;
  while (*s) {
    char *end;
    long c = strtol(s, &end, 10);
    /* 0 only before "+C": a stage that holds nothing but part of a node */
    if (end == s || (c < 1 && c != -1 && !(c == 0 && *end == '+')) || k >= 64)
      return pt_error_set(err, PT_ERR_INVALID,
                          "balance '%s': expected 'auto' or node counts like '3,4,-1' or '9+16,-1'",
                          balance);
    if (c == -1) {
      if (rest >= 0)
        return pt_error_set(err, PT_ERR_INVALID, "balance '%s': only one -1 is allowed", balance);
      rest = k;
    }
    if (c > n)
      return pt_error_set(err, PT_ERR_INVALID, "balance '%s': %ld nodes in a stage, but %s has %d",
                          balance, c, m->name, n);
    if (*end == '+') {
      const char *cs = end + 1;
      long ch = strtol(cs, &end, 10);
      if (end == cs || ch < 1 || ch > INT_MAX || c == -1)
        return pt_error_set(err, PT_ERR_INVALID,
                            "balance '%s': '+C' follows a node count and names C >= 1 output "
                            "channels of the next node, as in '9+16,-1'",
                            balance);
      split[k] = (int)ch;
    }
    counts[k++] = (int)c;
    s = end;
    if (*s == ',')
      s++;
    else if (*s)
      return pt_error_set(err, PT_ERR_INVALID, "balance '%s': unexpected '%c'", balance, *s);
  }
  if (k != D)
    return pt_error_set(err, PT_ERR_INVALID, "balance '%s' lists %d stages but %d were asked for",
                        balance, k, D);
  if (split[D - 1])
    return pt_error_set(err, PT_ERR_INVALID,
                        "balance '%s': the last stage has no next stage to share a node with",
                        balance);
  int64_t sum = 0; /* each count is at most n: no overflow */
  for (int i = 0; i < k; i++)
    if (i != rest) sum += counts[i];
  if (rest >= 0) {
    if (sum >= n)
      return pt_error_set(err, PT_ERR_INVALID,
                          "balance '%s': %lld nodes before -1 leave nothing of the model's %d",
                          balance, (long long)sum, n);
    counts[rest] = (int)(n - sum);
    sum = n;
  }
  if (sum != n)
    return pt_error_set(err, PT_ERR_INVALID, "balance '%s' covers %lld nodes but %s has %d",
                        balance, (long long)sum, m->name, n);
  p->first[0] = 0;
  for (int i = 0; i < D; i++) p->first[i + 1] = p->first[i] + counts[i];
  for (int i = 0; i + 1 < D; i++) {
    if (!split[i]) continue;
    int node = p->first[i + 1];
    if (node < 0 || node >= n)
      return pt_error_set(err, PT_ERR_INVALID, "balance '%s': no node %d to split", balance, node);
    const char *why = pt_split_refusal(m, node, split[i]);
    if (why)
      return pt_error_set(err, PT_ERR_INVALID,
                          "balance '%s': node %d ('%s') cannot be split at %d "
                          "output channels: %s",
                          balance, node, m->nodes[node].name, split[i], why);
    if (i > 0 && split[i - 1] && p->first[i] == node)
      return pt_error_set(err, PT_ERR_INVALID,
                          "balance '%s': stage %d would hold nothing but part of node %d; a node "
                          "is split between two stages at most",
                          balance, i, node);
    p->split[i] = split[i];
  }
  return PT_OK;
}

void pt_partition_str(const pt_partition *p, char *buf, size_t n) {
  size_t used = 0;
  if (n) buf[0] = '\0';
  for (int i = 0; i < p->D && used < n; i++) {
    int k = i + 1 < p->D && p->split[i] ? snprintf(buf + used, n - used, "%s%d+%d", i ? "," : "",
                                                   p->first[i + 1] - p->first[i], p->split[i])
                                        : snprintf(buf + used, n - used, "%s%d", i ? "," : "",
                                                   p->first[i + 1] - p->first[i]);
    if (k < 0) break;
    used += (size_t)k;
  }
}

/* A place a cut may fall: before node `node` (ch 0), or inside it after output channel ch. */
typedef struct cut_pos {
  int node, ch;
  double pre;  /* cost of everything before the cut */
  double cut;  /* cost of what crosses the cut (none at either end of the graph) */
  double join; /* a split: the Concat the next stage runs */
  int bad;     /* how much auto avoids this cut: 0 after an activation or pooling, 1 inside a
                  convolution whose activation moves with its halves, 2 elsewhere */
} cut_pos;

/* The cut position before node `node` (ch 0) or inside it after output channel ch; pre_node is the
 * cost of nodes [0, node). */
static cut_pos pos_at(const pt_model *m, const double *cost, const int64_t *cf, bool train,
                      int node, int ch, double pre_node) {
  int n = m->n_nodes;
  double both = train ? 2 : 1;
  if (!ch)
    return (cut_pos){.node = node,
                     .pre = pre_node,
                     .cut = node > 0 && node < n ? cf[node - 1] * PT_CUT_S_PER_FLOAT * both : 0,
                     .bad = node > 0 && node < n && !pt_cut_is_preferred(m, node - 1) ? 2 : 0};
  const pt_conv_params *cp = &m->nodes[node].p.conv;
  const pt_value *y = &m->vals[m->nodes[node].out[0]];
  int64_t plane = y->numel / cp->OC;
  int64_t before = node > 0 ? cf[node - 1] : m->vals[m->nodes[node].in[0]].numel;
  return (cut_pos){.node = node,
                   .ch = ch,
                   .pre = pre_node + (cost ? cost[node] : 1.0) * ch / cp->OC,
                   .cut = (double)(before + ch * plane) * PT_CUT_S_PER_FLOAT * both,
                   .join = (double)y->numel * PT_CONCAT_S_PER_FLOAT * both,
                   .bad = pt_split_carries_act(m, node) ? 1 : 2};
}

/* Every position a cut may take, in order; NULL when out of memory. Inside a node only where
 * costs are measured (auto). */
static cut_pos *cut_positions(const pt_model *m, const double *cost, const int64_t *cf, bool train,
                              int *n_pos) {
  int n = m->n_nodes, cap = n + 1;
  for (int i = 0; i < n && cost; i++) {
    int step = pt_split_step(m, i);
    if (step) cap += m->nodes[i].p.conv.OC / step;
  }
  cut_pos *ps = calloc((size_t)cap, sizeof *ps);
  if (!ps) return NULL;
  double pre = 0;
  int k = 0;
  for (int e = 0; e <= n; e++) {
    ps[k++] = pos_at(m, cost, cf, train, e, 0, pre);
    if (e == n) break;
    int step = cost ? pt_split_step(m, e) : 0;
    for (int ch = step; step && ch < m->nodes[e].p.conv.OC; ch += step)
      ps[k++] = pos_at(m, cost, cf, train, e, ch, pre);
    pre += cost ? cost[e] : 1.0;
  }
  *n_pos = k;
  return ps;
}

/* The cost of a stage from position a to position e: its nodes, the Concat of a split it finishes,
 * and what crosses the cut after it (nothing after the last node). */
static double stage_cost(const cut_pos *a, const cut_pos *e) {
  return e->pre - a->pre + a->join + e->cut;
}

/* A stage from position a to position b is possible when it holds something and does not take two
 * parts of one node (a node is split between two stages at most). */
static bool stage_ok(const cut_pos *a, const cut_pos *b) {
  if (b->node < a->node || (b->node == a->node && b->ch <= a->ch)) return false;
  return !(a->ch && b->ch && a->node == b->node);
}

pt_status pt_partition_make(const pt_model *m, int D, const char *balance, const double *cost,
                            bool train, pt_partition *p, pt_error *err) {
  int n = m->n_nodes;
  memset(p, 0, sizeof *p);
  p->D = D;
  if (D < 1 || D > 64)
    return pt_error_set(err, PT_ERR_INVALID, "%d stages: between 1 and 64 are supported", D);
  if (D > n)
    return pt_error_set(err, PT_ERR_INVALID, "%d stages asked for but %s has only %d nodes", D,
                        m->name, n);
  pt_status st = PT_OK;
  int np = 0;
  int64_t *cf = calloc(n, sizeof *cf);
  cut_pos *ps = NULL;
  double *best = NULL;
  int *arg = NULL;
  if (cf) {
    cut_floats_all(m, cf);
    ps = cut_positions(m, cost, cf, train, &np);
  }
  if (ps) {
    best = calloc((size_t)(D + 1) * np, sizeof *best);
    arg = calloc((size_t)(D + 1) * np, sizeof *arg);
  }
  if (!cf || !ps || !best || !arg) {
    st = pt_error_set(err, PT_ERR_NOMEM, "out of memory partitioning %s", m->name);
    goto out;
  }
  p->node_total = cost ? ps[np - 1].pre : NAN;
#define B(s, e) best[(size_t)(s)*np + (e)]
#define A(s, e) arg[(size_t)(s)*np + (e)]
  if (balance && strcmp(balance, "auto") != 0) {
    st = parse_balance(m, D, balance, p, err);
  } else {
    /* B(s, e): the least possible maximum stage cost up to position e in s stages */
    for (int s = 0; s <= D; s++)
      for (int e = 0; e < np; e++) B(s, e) = INFINITY;
    B(0, 0) = 0;
    for (int s = 1; s <= D; s++)
      for (int e = 1; e < np; e++)
        for (int a = 0; a < e; a++) {
          if (!isfinite(B(s - 1, a)) || !stage_ok(&ps[a], &ps[e])) continue;
          double c = fmax(B(s - 1, a), stage_cost(&ps[a], &ps[e]));
          if (c < B(s, e)) {
            B(s, e) = c;
            A(s, e) = a;
          }
        }
    if (!isfinite(B(D, np - 1))) {
      st = pt_error_set(err, PT_ERR_INVALID, "%d stages asked for but %s has only %d nodes", D,
                        m->name, n);
      goto out;
    }
    double limit = B(D, np - 1) * PT_PREFERRED_SLACK + 1e-12;
    /* Second pass: the least avoided cuts among partitions whose every stage fits in limit; ties
     * broken by the smaller maximum. B now holds (bad, max) packed as bad*1e6 + max. */
    for (int s = 0; s <= D; s++)
      for (int e = 0; e < np; e++) B(s, e) = INFINITY;
    B(0, 0) = 0;
    for (int s = 1; s <= D; s++)
      for (int e = 1; e < np; e++)
        for (int a = 0; a < e; a++) {
          if (!isfinite(B(s - 1, a)) || !stage_ok(&ps[a], &ps[e])) continue;
          double c = stage_cost(&ps[a], &ps[e]);
          if (c > limit) continue;
          double prev = B(s - 1, a);
          double bad = floor(prev / 1e6) + ps[e].bad; /* 0 at the end */
          double mx = fmax(prev - floor(prev / 1e6) * 1e6, c);
          double v = bad * 1e6 + mx;
          if (v < B(s, e)) {
            B(s, e) = v;
            A(s, e) = a;
          }
        }
    p->first[D] = n;
    for (int s = D, e = np - 1; s > 0; s--) {
      e = A(s, e);
      p->first[s - 1] = ps[e].node;
      if (s > 1) p->split[s - 2] = ps[e].ch;
    }
  }
  if (!st && cost) {
    double pre = 0;
    int k = 0;
    cut_pos ends[65];
    for (int e = 0; e <= n && k <= D; e++) {
      while (k <= D && p->first[k] == e) {
        ends[k] = pos_at(m, cost, cf, train, e, k > 0 && k < D ? p->split[k - 1] : 0, pre);
        k++;
      }
      if (e < n) pre += cost[e];
    }
    for (int i = 0; i < D; i++) p->cost[i] = stage_cost(&ends[i], &ends[i + 1]);
  } else if (!st) {
    for (int i = 0; i < D; i++) p->cost[i] = NAN;
  }
#undef B
#undef A
out:
  free(ps);
  free(cf);
  free(best);
  free(arg);
  return st;
}
