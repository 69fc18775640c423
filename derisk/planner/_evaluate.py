"""Exact evaluation of a fixed policy: backward (every budget level) and forward (one start).

Both read the same transition arrays and cost distributions as the solver. Memory is
bounded by one (S, L) float64 array at a time, whatever the number of rewards: the
backward pass computes its channels (value, compute, P(reward k)) one after another and
keeps only the start state's row; the forward pass propagates the start state's
occupancy measure once and reads every channel off it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from derisk.planner import _native
from derisk.planner._backup import action_value
from derisk.planner._exact import _block_rows, layer_blocks
from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace, outcome_free, small_pages
from derisk.planner._table import Table


def rewarded_nodes(problem: PlanningProblem) -> list[int]:
    return [int(i) for i in np.flatnonzero(problem.reward > 0)]


@dataclass(frozen=True)
class StartValue:
    """A fixed policy's exact value from one state and budget level.

    value: expected reward minus price x compute; compute: expected compute in budget
    units; p_reward: (K,) probability of earning each reward, in `rewarded` order;
    p_run: (n,) probability that each experiment is started.
    """

    value: float
    compute: float
    p_reward: np.ndarray
    rewarded: tuple[int, ...]
    p_run: np.ndarray


def _channel(problem, space, policy, gains, spend, keep_state, top=None, X=None):
    """One backward channel; returns the row of `keep_state` (L,) (all rows if None).

    top: (S,) the levels each state can be entered with from the start
    (`_table.reachable_top`); when given, a block computes only up to its widest top,
    and cells past a state's top are not computed (read only the start's row then).
    X: (S, L) buffer to work in (any finite contents: every cell read is written first).
    """
    S, L = space.size, problem.levels + 1
    if X is None:
        X = np.zeros((S, L))
    for layer in space.layers():
        for rows, W in layer_blocks(layer, L, top):  # the exact solver's blocks
            acc = np.zeros((len(rows), W))
            if policy is None:
                count = np.zeros((len(rows), W))
            else:
                act = policy[rows][:, :W]  # one read of the block's actions
            for i in range(problem.n):
                sel = np.flatnonzero(space.avail[rows, i])
                if not len(sel):
                    continue
                st = rows[sel]
                if policy is None:
                    chosen = np.ones((len(sel), W), dtype=bool)
                else:
                    chosen = act[sel] == i
                    if not chosen.any():
                        continue
                d = space.succ_d[st, i]
                feasible = chosen & (np.arange(W) >= problem.cost_units[i][0])[None, :]
                q = action_value(
                    problem,
                    i,
                    space.p[st, i],
                    X[space.succ_s[st, i], :W],
                    X[space.succ_f[st, i], :W],
                    X[d, 0] if d[0] >= 0 else None,
                    gain=gains[i],
                    spend_weight=spend,
                )
                acc[sel] += np.where(feasible, q, 0.0)
                if policy is None:
                    count[sel] += feasible
            if policy is None:
                acc /= np.maximum(count, 1)
            X[rows, :W] = acc
    return X if keep_state is None else X[keep_state].copy()


def _channel_native(layout, problem, space, policy, gains, spend, keep_state, top=None, X=None):
    """`_channel` by the C loop (`_native.evaluate_native`)."""
    if X is None:
        X = np.zeros((space.size, problem.levels + 1))
    _native.evaluate_native(problem, space, layout, policy, gains, spend, top, X)
    return X if keep_state is None else X[keep_state].copy()


@small_pages
def evaluate_policy(
    problem: PlanningProblem,
    space: StateSpace,
    policy: np.ndarray | None,
    *,
    state: int | None = None,
    channels: tuple[str, ...] = ("value", "compute", "p_reward"),
    top: np.ndarray | None = None,
    progress=None,
    engine: str = "auto",
) -> dict:
    """Exact value, expected compute and P(reward k) of a fixed policy, every budget level.

    `policy` is (S, L) int8 with -1 = stop, or None for the uniform random policy
    (uniform over the runnable and affordable experiments; it stops only when none is).
    With `state` given, each channel is the (L,) row of that state (memory: one (S, L)
    array at a time); with state None, full (S, L) tables (small problems, tests).

    top: (S,) each state's reachable levels (`_table.reachable_top`): cells past them
    are not computed (0), which leaves the start state's row exact and skips ~2/3 of
    the work on large roadmaps. `progress(1)` after each backward pass (one per
    channel, one per rewarded node for "p_reward").

    engine: "numpy" (`_channel`, the reference), "native" (the same backup in C,
    `_native`, equal bit for bit), or "auto": native where the install built it.

    Returns dict with "value", "compute" (budget units) and "p_reward" ((K, ...) for the
    K rewarded nodes, in the order of "rewarded").
    """
    rewarded = rewarded_nodes(problem)
    out: dict = {"rewarded": rewarded}
    if isinstance(policy, Table):
        policy = policy.dense()  # stop past each top; read once per block, every channel
    # With one state's rows kept, every channel works in one buffer: a large table's
    # pages are faulted in once (seconds on a 1.5M-state roadmap), not per channel.
    buf = np.zeros((space.size, problem.levels + 1)) if state is not None else None
    if engine not in ("auto", "numpy", "native"):
        raise ValueError(f"engine must be auto, numpy or native, got {engine!r}")
    if engine == "native" or (engine == "auto" and _native.available()):
        layout = _native.Layout.of(problem, space)  # once, for every channel
        channel = functools.partial(_channel_native, layout)
    else:
        channel = _channel

    def done(x):
        if progress is not None:
            progress(1)
        return x

    if "value" in channels:
        out["value"] = done(
            channel(
                problem, space, policy, problem.reward, -problem.price_per_unit, state, top, buf
            )
        )
    if "compute" in channels:
        out["compute"] = done(
            channel(problem, space, policy, np.zeros(problem.n), 1.0, state, top, buf)
        )
    if "p_reward" in channels:
        rows = []
        for j in rewarded:
            g = np.zeros(problem.n)
            g[j] = 1.0
            rows.append(done(channel(problem, space, policy, g, 0.0, state, top, buf)))
        L = problem.levels + 1
        shape = (L,) if state is not None else (space.size, L)
        out["p_reward"] = np.array(rows) if rows else np.zeros((0, *shape))
    return out


def start_value(
    problem: PlanningProblem,
    space: StateSpace,
    policy: np.ndarray | None,
    *,
    state: int | None = None,
    level: int | None = None,
    top: np.ndarray | None = None,
) -> StartValue:
    """A fixed policy's value, compute, P(reward) and P(run) from one (state, level).

    Propagates the occupancy measure mu(s, b) (probability of standing at state s with
    b budget units left) forward from the start, layer by layer in the order the
    transitions go; only (s, b) pairs with mass are visited, so this costs a small
    fraction of a backward pass. An action the policy picks that cannot be started (its
    minimum cost exceeds the budget left) is a stop.

    top: (S,) each state's reachable levels from the planning start
    (`_table.reachable_top`); when (state, level) lies within them the occupancy is held
    for those levels only (all its mass can reach; 29% of the cells on a 1.5M-state
    roadmap).
    """
    S, L = space.size, problem.levels + 1
    s0 = space.root if state is None else int(state)
    b0 = problem.start_budget if level is None else int(level)
    layers = list(reversed(space.layers()))  # the order transitions go
    order = np.concatenate(layers)
    if top is None or b0 > top[s0]:
        width = np.full(S, L, dtype=np.int64)
    else:
        width = top.astype(np.int64) + 1
    # Each state's levels at pos[s]..pos[s] + width[s] - 1, states in `order`: a block of
    # a layer's states is one contiguous range of `flat`.
    pos = np.empty(S, dtype=np.int64)
    pos[order] = np.cumsum(width[order]) - width[order]
    flat = np.zeros(int(width.sum()))
    flat[pos[s0] + b0] = 1.0
    same = outcome_free(problem)
    reached = np.zeros(S, dtype=bool)  # states mass has reached: only their blocks are read
    reached[s0] = True
    rewarded = rewarded_nodes(problem)
    value = compute = 0.0
    p_run = np.zeros(problem.n)
    p_succ = np.zeros(problem.n)
    lo = problem.min_cost
    price = problem.price_per_unit
    block = _block_rows(L)  # the exact solver's cache-sized blocks
    for layer in layers:
        for start in range(0, len(layer), block):
            rows = layer[start : start + block]
            if not reached[rows].any():
                continue
            first = pos[rows[0]]
            k = first + np.flatnonzero(flat[first : pos[rows[-1]] + width[rows[-1]]] > 0)
            if not len(k):
                continue
            st = rows[np.searchsorted(pos[rows], k, side="right") - 1]
            li = k - pos[st]
            mass = flat[k]
            if policy is None:
                ok = space.avail[st] & (lo[None, :] <= li[:, None])  # (m, n)
                count = ok.sum(axis=1)
                weight = np.where(count > 0, 1.0 / np.maximum(count, 1), 0.0)
            else:
                act = policy[st, li]
            for i in range(problem.n):
                if policy is None:
                    sel = np.flatnonzero(ok[:, i])
                    w = mass[sel] * weight[sel]
                else:
                    sel = np.flatnonzero((act == i) & (li >= lo[i]))
                    w = mass[sel]
                if not len(sel):
                    continue
                s, b = st[sel], li[sel]
                p = space.p[s, i]
                p_run[i] += w.sum()
                for c, q in zip(problem.cost_units[i], problem.cost_probs[i], strict=True):
                    c = int(c)
                    fit = b >= c
                    if fit.any():
                        wq = w[fit] * q
                        left = b[fit] - c
                        pf = p[fit]
                        ss = space.succ_s[s[fit], i]
                        if same[i]:  # both outcomes lead to one state: one scatter
                            np.add.at(flat, pos[ss] + left, wq)
                            reached[ss] = True
                        else:
                            sf = space.succ_f[s[fit], i]
                            np.add.at(flat, pos[ss] + left, wq * pf)
                            np.add.at(flat, pos[sf] + left, wq * (1 - pf))
                            reached[ss] = reached[sf] = True
                        won = float(wq @ pf)
                        p_succ[i] += won
                        value += won * problem.reward[i] - price * c * wq.sum()
                        compute += c * wq.sum()
                    over = ~fit
                    if over.any():  # cut off: all that is left is spent, counts as failed
                        wq = w[over] * q
                        d = space.succ_d[s[over], i]
                        np.add.at(flat, pos[d], wq)
                        reached[d] = True
                        spent = float(wq @ b[over])
                        value -= price * spent
                        compute += spent
    return StartValue(
        value=float(value),
        compute=float(compute),
        p_reward=p_succ[rewarded].copy(),
        rewarded=tuple(rewarded),
        p_run=p_run,
    )
