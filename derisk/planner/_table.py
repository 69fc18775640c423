"""(state, budget level) tables stored only where the planning start can reach them.

From the start state with at most `levels` budget units, a state s can be entered with
at most `levels - m(s)` units left, where m(s) is the cheapest total minimum cost of a
path to it. Cells past that budget are never read by any question asked from the start
(a backup at (s, b) reads its successors at b - cost, which stay inside their own
reachable range). The compiled solver stores row s for levels 0..top(s) only (29% of
the cells on the benchmark's largest roadmap, BENCHMARKS.md); the numpy solver computes
only those levels past a size and keeps its tables dense (`_exact.WIDTH_MIN_WORK`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace

MEMO_MAX_PAIRS = 1 << 22  # (state, experiment) pairs kept on their space (~100 MB)


@dataclass(frozen=True, eq=False)
class SolvePairs:
    """The (state, experiment) pairs in solve order (fewest untried experiments first).

    order: (P,) the states with something to run, in solve order, and counts: (P,) the
    pairs of each; pair k is state order[rows[k]] running experiment node[k], which
    leads to state succ_s[k] on a success and succ_f[k] on a failure. A state's pairs
    are consecutive.
    """

    order: np.ndarray
    counts: np.ndarray
    rows: np.ndarray
    node: np.ndarray
    succ_s: np.ndarray
    succ_f: np.ndarray

    @classmethod
    def of(cls, space: StateSpace) -> SolvePairs:
        """The space's pairs, found once per space (`StateSpace.memo`) up to
        `MEMO_MAX_PAIRS`; past it found again each time, not held beside the tables
        (F's would be 0.35 GB)."""
        if "pairs" in space.memo:
            return space.memo["pairs"]
        pairs = cls._find(space)
        if len(pairs.rows) <= MEMO_MAX_PAIRS:
            space.memo["pairs"] = pairs
        return pairs

    @classmethod
    def _find(cls, space: StateSpace) -> SolvePairs:
        counts = space.avail.sum(axis=1)
        by_layer = np.concatenate(space.layers())
        order = by_layer[counts[by_layer] > 0]
        rows, node = np.nonzero(space.avail[order])
        st = order[rows]
        return cls(order, counts[order], rows, node, space.succ_s[st, node], space.succ_f[st, node])


def reachable_top(
    problem: PlanningProblem, space: StateSpace, pairs: SolvePairs | None = None
) -> np.ndarray:
    """(S,) the highest budget level each state can be entered with from the start.

    levels - (cheapest path's total minimum cost), and at least 0: every state keeps
    level 0 (a budget cut-off enters its state with nothing left). One forward pass over
    the pairs, layer by layer from the most untried experiments (the order transitions
    go); a cut-off's state is entered at level 0, which every state keeps.
    """
    key = ("top", problem.levels, problem.min_cost.tobytes())  # all the answer depends on
    if key in space.memo:
        return space.memo[key]
    if pairs is None:
        pairs = SolvePairs.of(space)
    big = np.iinfo(np.int32).max // 2
    spent = np.full(space.size, big, dtype=np.int32)
    spent[space.root] = 0
    cheapest = problem.min_cost.astype(np.int32)
    layer = space.untried[pairs.order]
    first = np.r_[0, np.cumsum(pairs.counts)]  # each state's first pair, and the end
    cut = first[np.r_[np.flatnonzero(np.diff(layer)) + 1, len(layer)]]  # layer ends
    for hi, lo in zip(cut[::-1], np.r_[cut[-2::-1], 0], strict=True):
        via = spent[pairs.order[pairs.rows[lo:hi]]] + cheapest[pairs.node[lo:hi]]
        np.minimum.at(spent, pairs.succ_s[lo:hi], via)
        np.minimum.at(spent, pairs.succ_f[lo:hi], via)
    top = np.maximum(problem.levels - spent, 0).astype(np.int32)
    top.setflags(write=False)
    space.memo[key] = top
    return top


@dataclass(frozen=True, eq=False)
class Table:
    """An (S, L) table of which row s is stored for levels 0..top[s] only.

    data: flat storage, row s at data[start[s] : start[s] + top[s] + 1] (the layout may
    hold padding between and around rows); start: (S,) int64; top: (S,) int32.
    `table[s, b]` (ints or arrays) reads stored cells and raises IndexError past a
    row's top; `table[rows]` returns dense rows with `fill` past each top (nan for
    values, -1, stop, for policies).
    """

    data: np.ndarray
    start: np.ndarray
    top: np.ndarray
    levels: int
    fill: float | int

    @classmethod
    def over(cls, dense: np.ndarray, top: np.ndarray, fill) -> Table:
        """A dense (S, L) array read as a table up to each row's top (no copy: for
        tables small enough that compacting them costs more than it saves)."""
        S, L = dense.shape
        dense.setflags(write=False)
        return cls(
            data=dense.reshape(-1),
            start=np.arange(S, dtype=np.int64) * L,
            top=np.minimum(np.asarray(top, dtype=np.int32), L - 1),
            levels=L,
            fill=fill,
        )

    @classmethod
    def full(cls, dense: np.ndarray, fill) -> Table:
        """Every cell of a dense (S, L) array (no copy)."""
        S, L = dense.shape
        return cls.over(dense, np.full(S, L - 1, dtype=np.int32), fill)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.top), self.levels)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def cells(self) -> int:
        """Cells that can be read (levels 0..top of every row)."""
        return int(self.top.astype(np.int64).sum() + len(self.top))

    def __len__(self) -> int:
        return len(self.top)

    def stored(self) -> np.ndarray:
        """(S, L) bool: which cells are stored."""
        return np.arange(self.levels)[None, :] <= self.top[:, None]

    def rows(self, idx) -> np.ndarray:
        """Dense rows (one row for an int index), `fill` past each row's top."""
        idx = np.asarray(idx)
        L = self.levels
        lv = np.arange(L)
        keep = lv <= self.top[idx][..., None]
        pos = self.start[idx][..., None] + lv
        out = np.where(keep, self.data[np.where(keep, pos, 0)], self.fill)
        return out.astype(self.data.dtype, copy=False)

    def dense(self) -> np.ndarray:
        """(S, L) with `fill` past each row's top, built a few thousand rows at a time."""
        S = len(self.top)
        out = np.empty((S, self.levels), dtype=self.data.dtype)
        step = max(1, (1 << 22) // self.levels)  # (rows, L) int64 positions: 32 MB
        for k in range(0, S, step):
            out[k : k + step] = self.rows(np.arange(k, min(k + step, S)))
        return out

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.rows(key)
        s, b = key
        if isinstance(s, slice):
            s = np.arange(len(self.top))[s]
        if isinstance(b, slice):
            return self.rows(s)[..., b]
        s, b = np.broadcast_arrays(np.asarray(s), np.asarray(b))
        bad = (b < 0) | (b > self.top[s])
        if bad.any():
            k = np.flatnonzero(bad.ravel())[0]
            ss, bb = int(s.ravel()[k]), int(b.ravel()[k])
            raise IndexError(
                f"level {bb} of state {ss} is not stored: from the planning start that "
                f"state is entered with at most {int(self.top[ss])} budget units left"
            )
        return self.data[self.start[s] + b]
