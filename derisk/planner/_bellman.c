/* Backward induction over (state, experiment) pairs: the numpy solver's loop
 * (`_exact.solve_exact`, engine "numpy", the reference) in C, one state at a time.
 *
 * Built at install as an optional extension and called through ctypes
 * (`_native.py`); where it is not built the numpy engine runs instead. Every
 * operation is the reference's, in the reference's order, with no contraction
 * into fused multiply-adds (-ffp-contract=off), so values and policies are equal
 * bit for bit (tests/test_native.py). (NaN aside: a comparison drops it where numpy's
 * maximum keeps it; validation keeps every input finite.)
 *
 * `derisk_evaluate` is the same for a fixed policy (`_evaluate._channel`), one channel
 * (value, compute or one reward's probability) per call.
 *
 * Tables are flat: row s of V (double) and act (int8) starts at start[s]; levels
 * 0..width[s]-1 of each solved state are computed. A backup at level b reads its
 * successors at b - cost, inside their own widths (`_table.reachable_top`). The
 * caller fills V with 0 (stopping is worth 0) and act with -1 (stop).
 */
#include <stdint.h>

#ifdef _WIN32
#define EXPORT __declspec(dllexport)
/* setuptools links a Python extension's init function into the DLL; ctypes loads this
 * library, and nothing imports it as a module. */
EXPORT void *PyInit__bellman(void) { return 0; }
#else
#define EXPORT __attribute__((visibility("default")))
#endif

/* The interface's version: `_native.VERSION` must equal it, so that a library built
 * from an older source (a checkout updated without reinstalling) is not called. Bump
 * both with any change to the arguments, the struct or the arithmetic. */
EXPORT int64_t derisk_bellman_version(void) { return 3; }

typedef struct {
    int64_t n_nodes;           /* at most 127: int8 policies */
    int64_t wide;              /* successor indices are int64 (1) or int32 (0) */
    const int64_t *cost_first; /* (n+1,) each node's cost outcomes: [first[i], first[i+1]) */
    const int64_t *cost_units; /* cost outcomes in units, increasing */
    const double *cost_probs;  /* their probabilities */
    const double *gain;        /* (n,) what a success pays */
    const uint8_t *same;       /* (n,) success and failure lead to one state */
    double price;              /* what one unit spent adds (-price per unit) */
    double tie;                /* a node replaces a lower-index one only if better by this */
} Problem;

static void deterministic(const Problem *pr, int64_t i, double p, const double *restrict vs,
                          const double *restrict vf, double *restrict row,
                          int8_t *restrict act, int64_t width) {
    /* Branch-free, so that it vectorises. Adding a zero gain or price changes nothing:
     * values are never -0.0 (every row starts at +0.0 and only grows). */
    const int64_t c = pr->cost_units[pr->cost_first[i]];
    const int8_t node = (int8_t)i;
    const double g = pr->gain[i], q_fail = 1.0 - p, tie = pr->tie;
    const double paid = pr->price != 0.0 && c != 0 ? pr->price * (double)c : 0.0;
    if (pr->same[i]) { /* p (gain + x) + (1 - p) x = x + p gain */
        const double gp = g != 0.0 ? g * p : 0.0;
        for (int64_t b = c; b < width; b++) {
            const double q = vs[b - c] + gp + paid, r = row[b];
            act[b] = q > r + tie ? node : act[b];
            row[b] = q > r ? q : r;
        }
    } else {
        for (int64_t b = c; b < width; b++) {
            const double q = (vs[b - c] + g) * p + vf[b - c] * q_fail + paid, r = row[b];
            act[b] = q > r + tie ? node : act[b];
            row[b] = q > r ? q : r;
        }
    }
}

/* Successor j of an int32 or int64 index table (the space's own, not a copy). */
static inline int64_t at(const Problem *pr, const void *table, int64_t j) {
    return pr->wide ? ((const int64_t *)table)[j] : (int64_t)((const int32_t *)table)[j];
}

/* The return of running node i (pair j's state) at level b, at least its cheapest cost:
 * `_backup.action_value`, the general backup policy evaluation uses. A mixture over the
 * cost outcomes; an outcome over the budget left is a cut-off (everything left spent,
 * the run counts as failed). */
static double action_at(const Problem *pr, int64_t i, double p, const double *vs,
                        const double *vf, const double *d0, int64_t b) {
    const int64_t lo = pr->cost_first[i], hi = pr->cost_first[i + 1];
    const double g = pr->gain[i], q_fail = 1.0 - p, w = pr->price;
    if (hi - lo == 1) { /* a fixed cost: a shift */
        const int64_t c = pr->cost_units[lo];
        double t = vs[b - c];
        if (g != 0.0) t = t + g;
        double q = t * p + vf[b - c] * q_fail;
        if (w != 0.0 && c != 0) q = q + w * (double)c;
        return q;
    }
    double q = 0.0;
    for (int64_t k = lo; k < hi; k++) {
        const int64_t c = pr->cost_units[k];
        const double pk = pr->cost_probs[k];
        if (b >= c) {
            double t = vs[b - c];
            if (g != 0.0) t = t + g;
            const double cont = t * p + vf[b - c] * q_fail;
            q = q + pk * (cont + w * (double)c);
        } else if (d0 != 0) {
            q = q + pk * (*d0 + w * (double)b);
        }
    }
    return q;
}

static void stochastic(const Problem *pr, int64_t i, double p, const double *vs,
                       const double *vf, const double *d0, double *restrict row,
                       int8_t *restrict act, int64_t width) {
    const int64_t cheapest = pr->cost_units[pr->cost_first[i]];
    for (int64_t b = cheapest < width ? cheapest : width; b < width; b++) {
        const double q = action_at(pr, i, p, vs, vf, d0, b);
        if (q > row[b] + pr->tie) act[b] = (int8_t)i;
        if (q > row[b]) row[b] = q;
    }
}

/* Solve states state[0..count): state k runs pairs [first[k], first[k + 1]), in
 * increasing node order. Every successor of a state must be solved before it.
 * succ_d may be NULL: no node has a stochastic cost. */
EXPORT void derisk_backup(const Problem *pr, int64_t count, const int64_t *state,
                          const int64_t *first, const int64_t *node, const void *succ_s,
                          const void *succ_f, const void *succ_d, const double *p,
                          const int64_t *start, const int64_t *width, double *V,
                          int8_t *act) {
    for (int64_t k = 0; k < count; k++) {
        const int64_t s = state[k];
        double *row = V + start[s];
        int8_t *a = act + start[s];
        for (int64_t j = first[k]; j < first[k + 1]; j++) {
            const int64_t i = node[j];
            const double *vs = V + start[at(pr, succ_s, j)], *vf = V + start[at(pr, succ_f, j)];
            if (pr->cost_first[i + 1] - pr->cost_first[i] == 1) {
                deterministic(pr, i, p[j], vs, vf, row, a, width[s]);
            } else {
                const int64_t d = succ_d ? at(pr, succ_d, j) : -1;
                const double *d0 = d >= 0 ? V + start[d] : 0;
                stochastic(pr, i, p[j], vs, vf, d0, row, a, width[s]);
            }
        }
    }
}

/* One backward channel of a fixed policy (`_evaluate._channel`): X[s, b] is the
 * return of following `policy` (int8 rows at start[s], -1 = stop; NULL: uniformly at
 * random among the runnable and affordable experiments) from state s with b units left,
 * the gains and price of `pr` counted. Rows of states with nothing to run are left as
 * they are (0). count: (L,) scratch for the random policy. */
EXPORT void derisk_evaluate(const Problem *pr, int64_t count, const int64_t *state,
                            const int64_t *first, const int64_t *node, const void *succ_s,
                            const void *succ_f, const void *succ_d, const double *p,
                            const int64_t *start, const int64_t *width, const int8_t *policy,
                            double *X, double *tally) {
    int64_t pair_of[128]; /* node -> pair of the state, -1: not runnable there */
    if (pr->n_nodes > 127) return; /* refused before the call (`_native.Layout.of`) */
    for (int64_t i = 0; i < 128; i++) pair_of[i] = -1;
    for (int64_t k = 0; k < count; k++) {
        const int64_t s = state[k], W = width[s];
        double *row = X + start[s];
        if (policy) {
            const int8_t *a = policy + start[s];
            for (int64_t j = first[k]; j < first[k + 1]; j++) pair_of[node[j]] = j;
            for (int64_t b = 0; b < W; b++) {
                double q = 0.0;
                const int64_t i = a[b], j = i >= 0 ? pair_of[i] : -1;
                if (j >= 0 && b >= pr->cost_units[pr->cost_first[i]]) {
                    const int64_t d = succ_d ? at(pr, succ_d, j) : -1;
                    q = q + action_at(pr, i, p[j], X + start[at(pr, succ_s, j)],
                                      X + start[at(pr, succ_f, j)], d >= 0 ? X + start[d] : 0, b);
                }
                row[b] = q;
            }
            for (int64_t j = first[k]; j < first[k + 1]; j++) pair_of[node[j]] = -1;
        } else {
            for (int64_t b = 0; b < W; b++) row[b] = 0.0, tally[b] = 0.0;
            for (int64_t j = first[k]; j < first[k + 1]; j++) {
                const int64_t i = node[j], cheapest = pr->cost_units[pr->cost_first[i]];
                const int64_t d = succ_d ? at(pr, succ_d, j) : -1;
                const double *d0 = d >= 0 ? X + start[d] : 0;
                const double *vs = X + start[at(pr, succ_s, j)], *vf = X + start[at(pr, succ_f, j)];
                for (int64_t b = 0; b < W; b++) {
                    if (b >= cheapest) {
                        row[b] = row[b] + action_at(pr, i, p[j], vs, vf, d0, b);
                        tally[b] = tally[b] + 1.0;
                    } else {
                        row[b] = row[b] + 0.0;
                    }
                }
            }
            for (int64_t b = 0; b < W; b++) row[b] = row[b] / (tally[b] > 1.0 ? tally[b] : 1.0);
        }
    }
}
