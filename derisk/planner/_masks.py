"""Status-states as bit masks: the state enumeration's fast path (up to 31 experiments).

`_states.canonicalize` works on (F, n) int8 status arrays: every rule reads and writes
columns, O(n) strided passes per rule. Here a batch of states is three (F,) int64 masks
(bit i set: experiment i is untried / succeeded / failed; none set: DEAD), so a rule is
one pass over F integers, and the base-4 state code is built from the masks with two
table lookups instead of an (F, n) matrix product. The rules are `_states.canonicalize`'s,
rule for rule; `tests/test_exact_speed.py` checks this against it on random statuses and
the enumeration built on it against a state-by-state search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derisk.planner._problem import PlanningProblem

MAX_NODES = 31  # one int64 base-4 code (the codes' own limit)

# 16 bits -> the same bits at even positions (32 bits), and back.
_SPREAD = np.zeros(1 << 16, dtype=np.int64)
for _b in range(16):
    _SPREAD |= ((np.arange(1 << 16, dtype=np.int64) >> _b) & 1) << (2 * _b)
_EVEN = np.int64(0x5555_5555_5555_5555 & ((1 << 63) - 1))
_COMPACT = np.zeros(1 << 16, dtype=np.int64)
for _b in range(8):
    _COMPACT |= ((np.arange(1 << 16, dtype=np.int64) >> (2 * _b)) & 1) << _b


def _spread(m: np.ndarray) -> np.ndarray:
    """Bit i of m -> bit 2i (m < 2**31)."""
    return _SPREAD[m & 0xFFFF] | (_SPREAD[m >> 16] << 32)


def _compact(c: np.ndarray) -> np.ndarray:
    """Even bit 2i of c -> bit i (the inverse of `_spread` on even bits)."""
    c = c & _EVEN
    out = _COMPACT[c & 0xFFFF]
    for k in (1, 2, 3):
        out |= _COMPACT[(c >> (16 * k)) & 0xFFFF] << (8 * k)
    return out


def to_masks(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F,) base-4 codes -> untried, success, failed masks (status 1 = S, 2 = F, 3 = D)."""
    lo, hi = _compact(codes), _compact(codes >> 1)
    full = np.int64((1 << n) - 1)
    return full & ~(lo | hi), lo & ~hi, hi & ~lo


def to_codes(U: np.ndarray, S: np.ndarray, F: np.ndarray, n: int) -> np.ndarray:
    """The masks' base-4 codes, as `_states.encode` computes them from statuses."""
    D = np.int64((1 << n) - 1) & ~(U | S | F)
    return _spread(S | D) | (_spread(F | D) << 1)


def bits_of(m: np.ndarray, n: int) -> np.ndarray:
    """(F,) masks -> (F, n) uint8 bits (bit i in column i)."""
    raw = np.ascontiguousarray(m, dtype="<i8").view(np.uint8).reshape(-1, 8)
    return np.unpackbits(raw, axis=1, bitorder="little")[:, :n]


def to_status(U: np.ndarray, S: np.ndarray, F: np.ndarray, n: int) -> np.ndarray:
    """The masks' (F, n) int8 statuses, as `_states.decode` computes them from codes."""
    D = np.int64((1 << n) - 1) & ~(U | S | F)
    out = bits_of(S, n)
    out += 2 * bits_of(F, n)
    out += 3 * bits_of(D, n)
    return out.view(np.int8)


_POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.int64)


def popcount(m: np.ndarray) -> np.ndarray:
    """Set bits of each non-negative int64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(m).astype(np.int64)
    return _popcount_table(m)


def _popcount_table(m: np.ndarray) -> np.ndarray:
    """The same by a 16-bit table (numpy < 2.0 has no bitwise_count)."""
    return sum(_POP16[(m >> (16 * k)) & 0xFFFF] for k in range(4))


@dataclass(frozen=True)
class MaskModel:
    """A problem's structure as bit masks, built once per enumeration."""

    n: int
    topo: tuple[int, ...]
    clauses: tuple[tuple[int, ...], ...]
    reward_mask: int
    hyp_masks: tuple[int, ...]  # per hypothesis with nodes: the nodes depending on it

    @classmethod
    def of(cls, problem: PlanningProblem) -> MaskModel:
        if problem.n > MAX_NODES:
            raise ValueError(f"bit masks hold {MAX_NODES} experiments, not {problem.n}")
        reward = sum(1 << i for i in range(problem.n) if problem.reward[i] > 0)
        hyps = []
        for h in range(len(problem.hypotheses)):
            nodes = np.flatnonzero(problem.hyp_of == h)
            if len(nodes):
                hyps.append(sum(1 << int(i) for i in nodes))
        return cls(
            n=problem.n,
            topo=tuple(problem.topo),
            clauses=tuple(tuple(int(c) for c in cl) for cl in problem.clauses),
            reward_mask=reward,
            hyp_masks=tuple(hyps),
        )


def _bit(m: np.ndarray, i: int) -> np.ndarray:
    return (m & np.int64(1 << i)) != 0


# (bool array) * int64 scalar, not np.where(ok, c, 0): the scalar `where` is ~9x slower.


def available(model: MaskModel, U: np.ndarray, S: np.ndarray) -> np.ndarray:
    """(F,) mask of the experiments that can run: untried, every clause has a success."""
    out = U.copy()
    for i, clauses in enumerate(model.clauses):
        if clauses:
            blocked = (S & clauses[0]) == 0
            for c in clauses[1:]:
                blocked |= (S & c) == 0
            out &= ~(blocked * np.int64(1 << i))
    return out


def canonical(model: MaskModel, U: np.ndarray, S: np.ndarray, F: np.ndarray):
    """`_states.canonicalize` on masks: returns new (U, S, F)."""
    # alive: untried and each clause has a success or an alive alternative; `can` is
    # succeeded or alive, so alive = can less the successes.
    # Experiments without prerequisites are alive exactly when untried: all at once.
    free = sum(1 << i for i in range(model.n) if not model.clauses[i])
    can = S | (U & np.int64(free))
    for i in model.topo:
        if model.clauses[i]:
            ok = _bit(U, i)
            for c in model.clauses[i]:
                ok &= (can & c) != 0
            can |= ok * np.int64(1 << i)
    alive = can & ~S
    # useful: alive and on a path to a reward, or informative about a hypothesis a
    # useful node depends on; to a fixed point.
    open_clause = {c: (S & c) == 0 for cl in model.clauses for c in cl}
    target = alive & model.reward_mask
    while True:
        useful = target.copy()
        for j in reversed(model.topo):
            if model.clauses[j]:
                uj = _bit(useful, j)
                for c in model.clauses[j]:
                    useful |= ((uj & open_clause[c]) * np.int64(c)) & alive
        informing = [H for H in model.hyp_masks if H & (H - 1)]  # 2+ nodes
        if not informing:  # nothing to inform: useful is final after one pass
            break
        new_target = target.copy()
        for H in informing:
            uh = useful & H
            for i in range(model.n):
                if H >> i & 1:
                    others = (uh & ~(1 << i)) != 0
                    new_target |= (others * np.int64(1 << i)) & alive
        if np.array_equal(new_target, target):
            break
        target = new_target
    keep = np.zeros_like(U)
    for H in model.hyp_masks:
        keep |= ((useful & H) != 0) * np.int64(H)
    for j in range(model.n):
        if model.clauses[j]:
            uj = _bit(useful, j)
            for c in model.clauses[j]:
                keep |= (uj * np.int64(c)) & S
    return U & useful, S & keep, F & keep
