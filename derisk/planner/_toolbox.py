"""The pymdptoolbox reference: the MDP written out as explicit transition matrices.

Each (status-state, budget level) pair is one explicit state, plus one absorbing
terminal state. pymdptoolbox has no terminal states, so the terminal is a zero-reward
self-loop; stopping goes there with reward 0, and illegal actions go there with a large
penalty. The objective is undiscounted: ValueIteration with discount 1 and epsilon
1e-9 (its default epsilon of 0.01 stops early with a wrong value).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import scipy.sparse as sp

from derisk.errors import SolverError
from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace

ILLEGAL = -1e9
MAX_EXPLICIT_STATES = 300_000


def _patch_checks(util) -> None:
    """pymdptoolbox 4.0b3's isStochastic and isNonNegative are O(S^2) on sparse input.

    isStochastic subtracts a length-S vector from an (S, 1) np.matrix, which broadcasts
    to S x S; isNonNegative evaluates `matrix >= 0` on a sparse matrix, which is dense.
    The replacements reject the same inputs in O(nnz).
    """
    if getattr(util, "_derisk_patched", False):
        return

    def is_stochastic(matrix) -> bool:
        sums = np.asarray(matrix.sum(axis=1)).ravel()
        return bool(np.abs(sums - 1.0).max() <= 10 * np.spacing(np.float64(1)))

    def is_non_negative(matrix) -> bool:
        data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
        return bool((data >= 0).all())

    util.isStochastic = is_stochastic
    util.isNonNegative = is_non_negative
    util._derisk_patched = True


def toolbox_matrices(problem: PlanningProblem, space: StateSpace):
    """Explicit (P, R): P a tuple of A sparse (N, N) matrices, R dense (N, A).

    Explicit state index of (s, b) is s * L + b; the terminal is N - 1.
    Action i < n runs node i; action n stops.
    """
    S, L, n = space.size, problem.levels + 1, problem.n
    N = S * L + 1
    if N > MAX_EXPLICIT_STATES:
        raise SolverError(
            f"the pymdptoolbox reference needs {N:,} explicit states (limit "
            f"{MAX_EXPLICIT_STATES:,}); use the exact or jax solver for this roadmap"
        )
    T = N - 1
    price = problem.price_per_unit
    b = np.arange(L)
    R = np.full((N, n + 1), ILLEGAL)
    R[:, n] = 0.0
    R[T, :] = 0.0
    P = []
    for i in range(n):
        st = np.flatnonzero(space.avail[:, i])  # (m,)
        p = space.p[st, i][:, None]  # (m, 1)
        src = st[:, None] * L + b[None, :]  # (m, L) explicit index of (s, b)
        lo = int(problem.cost_units[i][0])
        started = np.broadcast_to(b[None, :] >= lo, src.shape)  # legal: can start
        rows, cols, vals = [], [], []
        reward = np.zeros(src.shape)
        for c, q in zip(problem.cost_units[i], problem.cost_probs[i], strict=True):
            c = int(c)
            ok = np.broadcast_to(b[None, :] >= c, src.shape)
            after = np.maximum(b - c, 0)[None, :]
            ss, sf = (x[st, i].astype(np.int64) for x in (space.succ_s, space.succ_f))
            for succ, w in ((ss, q * p), (sf, q * (1 - p))):
                rows.append(src[ok])
                cols.append((succ[:, None] * L + after)[ok])
                vals.append(np.broadcast_to(w, src.shape)[ok])
            reward += np.where(ok, q * (p * problem.reward[i] - price * c), 0.0)
            cut = started & ~ok  # started, then overran the budget: cut off, all spent
            if cut.any():
                rows.append(src[cut])
                sd = space.succ_d[st, i].astype(np.int64)[:, None] * L
                cols.append(np.broadcast_to(sd, src.shape)[cut])
                vals.append(np.full(int(cut.sum()), q))
                reward += np.where(cut, q * (-price * b[None, :]), 0.0)
        legal = np.zeros(N, dtype=bool)
        legal[src[started]] = True
        R[src[started], i] = reward[started]
        # Illegal (and terminal) rows go to the terminal with certainty.
        ill = np.flatnonzero(~legal)
        rows.append(ill)
        cols.append(np.full(len(ill), T))
        vals.append(np.ones(len(ill)))
        m = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(N, N)
        )
        m.sum_duplicates()
        # Drop zero-probability entries (p = 0 or 1) so rows hold only real successors.
        m.eliminate_zeros()
        P.append(m)
    stop = sp.csr_matrix((np.ones(N), (np.arange(N), np.full(N, T))), shape=(N, N))
    P.append(stop)
    return tuple(P), R


def solve_toolbox(problem: PlanningProblem, space: StateSpace, progress=None):
    """Values (S, L) and policy (S, L) int8 from pymdptoolbox's ValueIteration."""
    try:
        import mdptoolbox.mdp as mdp
        import mdptoolbox.util as util
    except ImportError as exc:  # not on every machine (e.g. the GPU box)
        raise SolverError("the mdptoolbox solver needs `pip install pymdptoolbox`") from exc
    _patch_checks(util)
    S, L, n = space.size, problem.levels + 1, problem.n
    P, R = toolbox_matrices(problem, space)
    # It prints a convergence warning to stdout at discount 1; keep stdout for results.
    with contextlib.redirect_stdout(io.StringIO()):
        vi = mdp.ValueIteration(P, R, discount=1.0, epsilon=1e-9, max_iter=10_000)
        vi.run()
    V = np.asarray(vi.V)[: S * L].reshape(S, L)
    pol = np.asarray(vi.policy)[: S * L].reshape(S, L)
    pol = np.where(pol == n, -1, pol).astype(np.int8)
    if progress is not None:
        progress(S)
    return V, pol, int(vi.iter)
