"""Reachable status-states: enumeration, canonical collapsing, beliefs, transitions.

A status-state is one status per experiment (UNTRIED, SUCCESS, FAILED, DEAD), stored
as a base-4 int64 code. Canonicalisation collapses states that cannot differ in value:
untried nodes that can never run or can no longer help earn a reward become DEAD, and
tried nodes whose outcome no longer matters (to the graph or to a belief) become DEAD.
Every transition lowers the number of UNTRIED nodes, so states sorted by that count
form the layers of an exact backward induction.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from derisk.errors import ProblemTooLarge
from derisk.planner._masks import MAX_NODES as MASK_FAST_NODES
from derisk.planner._masks import MaskModel, bits_of, popcount, to_codes, to_masks, to_status
from derisk.planner._masks import available as mask_available
from derisk.planner._masks import canonical as canonical_masks
from derisk.planner._problem import DEAD, FAILED, SUCCESS, UNTRIED, PlanningProblem

_POW4 = 4 ** np.arange(32, dtype=np.int64)
WORD = 31  # nodes per int64 word of a state code (two bits each, sign bit unused)
MASK_NODES = 62  # past this many nodes the int64 bit masks give way to boolean arrays


def encode(status: np.ndarray) -> np.ndarray:
    """(F, n) int8 statuses -> (F,) codes: int64 up to 31 nodes; past that, one
    fixed-size byte string (numpy void) of ceil(n / 31) int64 words, which sorts,
    compares and binary-searches like a number (in a fixed byte order)."""
    n = status.shape[1]
    if n <= WORD:
        return status.astype(np.int64) @ _POW4[:n]
    words = np.stack(
        [
            status[:, w : w + WORD].astype(np.int64) @ _POW4[: min(WORD, n - w)]
            for w in range(0, n, WORD)
        ],
        axis=1,
    )  # (F, W)
    return np.ascontiguousarray(words).view(np.dtype((np.void, 8 * words.shape[1])))[:, 0]


def decode(codes: np.ndarray, n: int) -> np.ndarray:
    """(F,) codes -> (F, n) int8 statuses (the inverse of `encode`)."""
    if n <= WORD:
        return ((codes[:, None] // _POW4[None, :n]) % 4).astype(np.int8)
    words = np.ascontiguousarray(codes).view(np.int64).reshape(len(codes), -1)
    parts = [
        (words[:, k, None] // _POW4[None, : min(WORD, n - w)]) % 4
        for k, w in enumerate(range(0, n, WORD))
    ]
    return np.concatenate(parts, axis=1).astype(np.int8)


def _success_masks(status: np.ndarray) -> np.ndarray:
    bits = np.int64(1) << np.arange(status.shape[1], dtype=np.int64)
    return (status == SUCCESS).astype(np.int64) @ bits


def _clause_ok(mask_ok: np.ndarray, clause: int) -> np.ndarray:
    return (mask_ok & np.int64(clause)) != 0


def available(problem: PlanningProblem, status: np.ndarray) -> np.ndarray:
    """(F, n) bool: untried and every prerequisite clause has a success."""
    if problem.n > MASK_NODES:
        return _available_bool(problem, status)
    smask = _success_masks(status)
    out = status == UNTRIED
    for i, clauses in enumerate(problem.clauses):
        for c in clauses:
            out[:, i] &= _clause_ok(smask, c)
    return out


def _members(clause: int, n: int) -> list[int]:
    return [i for i in range(n) if clause >> i & 1]


def _available_bool(problem: PlanningProblem, status: np.ndarray) -> np.ndarray:
    succ = status == SUCCESS
    out = status == UNTRIED
    n = problem.n
    for i, clauses in enumerate(problem.clauses):
        for c in clauses:
            out[:, i] &= succ[:, [k for k in range(n) if c >> k & 1]].any(axis=1)
    return out


def canonicalize(problem: PlanningProblem, status: np.ndarray) -> np.ndarray:
    """Collapse statuses that cannot change the value; returns a new (F, n) array."""
    if problem.n > MASK_NODES:  # the same rules on boolean arrays (bit masks overflow)
        from derisk.planner._approx import _Model, canonical

        return canonical(_Model.of(problem), status)[0]
    status = status.copy()
    n = problem.n
    F = status.shape[0]
    bits = np.int64(1) << np.arange(n, dtype=np.int64)
    untried = status == UNTRIED
    # alive: untried and could still become runnable (each clause has a success or an
    # alive alternative). `can` = succeeded or alive, as a bit mask.
    alive = np.zeros((F, n), dtype=bool)
    can = _success_masks(status)
    for i in problem.topo:
        ok = untried[:, i].copy()
        for c in problem.clauses[i]:
            ok &= _clause_ok(can, c)
        alive[:, i] = ok
        can |= np.where(ok, bits[i], np.int64(0))
    smask = _success_masks(status)
    # useful: alive and on a path to a reward, or informative about a hypothesis that a
    # useful node depends on. Iterate to a fixed point (informative nodes make their own
    # prerequisites useful).
    target = alive & (problem.reward > 0)[None, :]
    hyp = problem.hyp_of
    while True:
        useful = target.copy()
        # propagate to prerequisites: i helps j if i is in a clause of useful j that
        # has no success yet.
        for j in reversed(problem.topo):
            for c in problem.clauses[j]:
                need = useful[:, j] & ~_clause_ok(smask, c)
                for i in _members(c, n):
                    useful[:, i] |= need & alive[:, i]
        new_target = target.copy()
        for h in range(len(problem.hypotheses)):
            nodes = np.flatnonzero(hyp == h)
            if len(nodes) < 2:
                continue
            count = useful[:, nodes].sum(axis=1)
            for i in nodes:
                others = count - useful[:, i]
                new_target[:, i] |= alive[:, i] & (others > 0)
        if np.array_equal(new_target, target):
            break
        target = new_target
    # untried and not useful -> DEAD
    status[untried & ~useful] = DEAD
    # tried nodes: keep the outcome only if it still matters.
    keep = np.zeros((F, n), dtype=bool)
    for h in range(len(problem.hypotheses)):
        nodes = np.flatnonzero(hyp == h)
        if len(nodes):
            relevant = useful[:, nodes].any(axis=1)
            keep[:, nodes] |= relevant[:, None]
    is_succ = status == SUCCESS
    for j in range(n):
        for c in problem.clauses[j]:
            for i in _members(c, n):
                keep[:, i] |= useful[:, j] & is_succ[:, i]
    tried = (status == SUCCESS) | (status == FAILED)
    status[tried & ~keep] = DEAD
    return status


def config_posterior(problem: PlanningProblem, status: np.ndarray) -> np.ndarray:
    """(F, C) posterior over the C hypothesis configurations given each row's outcomes.

    Bayes' rule: SUCCESS and FAILED are evidence, UNTRIED and DEAD are not. A history of
    probability zero is never reached; the prior stands in for it.
    """
    w = np.broadcast_to(problem.prior, (status.shape[0], len(problem.prior))).copy()
    for i in np.flatnonzero(problem.hyp_of >= 0):
        s = status[:, i]
        lik = np.where(
            (s == SUCCESS)[:, None],
            problem.p_table[i][None, :],
            np.where((s == FAILED)[:, None], 1 - problem.p_table[i][None, :], 1.0),
        )
        w *= lik
    total = w.sum(axis=1, keepdims=True)
    return np.where(total > 0, w / np.where(total > 0, total, 1), problem.prior[None, :])


def beliefs(problem: PlanningProblem, status: np.ndarray) -> np.ndarray:
    """(F, n) posterior success probability of each node given the observed outcomes.
    Without hypotheses this is just p."""
    if not problem.hypotheses:
        return np.broadcast_to(problem.p_table[:, 0], status.shape).copy()
    return config_posterior(problem, status) @ problem.p_table.T


@dataclass(frozen=True, eq=False)
class StateSpace:
    """All reachable canonical status-states and their transitions.

    codes: (S,) sorted int64 codes. status: (S, n). untried: (S,) count of UNTRIED.
    avail: (S, n) whether node i can run (ignoring budget). p: (S, n) posterior p.
    succ_s / succ_f / succ_d: (S, n) index (int32 below 2**31 states, else int64) of the
    state after success, failure, and a budget cut-off (-1 where node i is not
    available); succ_d is a read-only broadcast of -1 without stochastic costs, and p a
    read-only broadcast of the prior without hypotheses.
    root: index of the start state.
    """

    codes: np.ndarray
    status: np.ndarray
    untried: np.ndarray
    avail: np.ndarray
    p: np.ndarray
    succ_s: np.ndarray
    succ_f: np.ndarray
    succ_d: np.ndarray
    root: int
    # what the solvers derive from the transitions alone, kept for every re-solve (the
    # sensitivity analysis solves one space hundreds of times with other p and costs):
    # "pairs" (`_table.SolvePairs`), and each ("top", levels, minimum costs)
    # (`_table.reachable_top`)
    memo: dict = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return len(self.codes)

    @property
    def pairs(self) -> int:
        return int(self.avail.sum())

    def index(self, codes: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.codes, codes)
        idx = np.minimum(idx, len(self.codes) - 1)
        if not np.all(self.codes[idx] == codes):
            raise KeyError("state not in the state space")
        return idx

    def layers(self) -> list[np.ndarray]:
        """State indices grouped by untried count, fewest first (solve order)."""
        order = np.argsort(self.untried.astype(np.int8), kind="stable")  # a radix sort
        counts = np.bincount(self.untried, minlength=int(self.untried.max()) + 1)
        return [g for g in np.split(order, np.cumsum(counts)[:-1]) if len(g)]


# Bytes per (state, budget level) at the peak of any command, in two parts. Every cell:
# one evaluation or occupancy array (8) with the evaluated policy read dense (1), and the
# four heuristic policy tables (4). Per stored cell (the solvers keep each state's
# reachable levels only, `_table`): the optimal values and policy (9), and a second
# solve's while sensitivity or EVPI re-solves (9).
BYTES_PER_STATE_LEVEL = 13
BYTES_PER_STORED_CELL = 18
# Bytes per (state, experiment): avail, status (1 each), posterior p (8), three
# successor indices (24), and the heuristic scores built per table (8).
BYTES_PER_STATE_NODE = 42
# Bytes per runnable (state, experiment) pair: the solve pairs (`_table.SolvePairs`) and
# the C loops' layout of them (`_native.Layout`): 47-49 at the peak of building them on
# the benchmark's roadmaps (tracemalloc), with the per-state arrays spread over the pairs.
BYTES_PER_PAIR = 52
OVERHEAD_BYTES = 64 * 2**20  # block temporaries of the backups (a few MB each) and slack
TRIM_MIN_CELLS = 1 << 22  # (state, experiment) cells past which enumeration trims the heap
ENUM_CHUNK = 1 << 16  # (state, node) pairs canonicalised at once while enumerating
ENUM_CHUNK_MASKS = 1 << 18  # the same with bit masks: (pairs,) int64 temporaries, 2 MB each


def _index_type(count: int):
    """int32 state numbers below 2**31 states (half the memory), else int64."""
    return np.int32 if count < 2**31 - 1 else np.int64


def _unique(codes: np.ndarray) -> np.ndarray:
    """Sorted distinct codes. For int64, a sort and a neighbour compare: numpy's own
    `unique` hashes integers, 3-8x slower than this past ~10^5 distinct codes."""
    if codes.dtype != np.int64:
        return np.unique(codes)
    codes = np.sort(codes, kind="stable")  # timsort: the codes arrive in sorted runs
    return codes[np.r_[True, codes[1:] != codes[:-1]]] if len(codes) else codes


def _successors_masks(model, masks, rows, nodes, outcome):
    """Codes and untried counts of the canonical successors of (state, node) pairs, each
    with its outcome (SUCCESS, FAILED or DEAD)."""
    U, S, F = (m[rows] for m in masks)
    bit = np.int64(1) << nodes.astype(np.int64)
    U &= ~bit
    S |= bit * (outcome == SUCCESS)
    F |= bit * (outcome == FAILED)
    U, S, F = canonical_masks(model, U, S, F)
    return to_codes(U, S, F, model.n), popcount(U)


def outcome_free(problem: PlanningProblem) -> np.ndarray:
    """(n,) bool: experiments whose outcome the canonical state forgets at once (no
    hypothesis, in no prerequisite clause), so that success and failure lead to the
    same state (`succ_s == succ_f` on every pair of such an experiment)."""
    n = problem.n
    members = 0  # a clause is a Python int of any width (bit i: node i)
    for clauses in problem.clauses:
        for c in clauses:
            members |= int(c)
    in_clause = np.array([members >> i & 1 == 1 for i in range(n)], dtype=bool)
    return (problem.hyp_of < 0) & ~in_clause


def estimate_bytes(
    states: int, levels: int, n: int, stored: int | None = None, pairs: int = 0
) -> int:
    """Peak memory of the arrays any planning command holds, for `levels` + 1 levels.

    stored: cells the solvers' tables keep (`_table.reachable_top`); None: every cell,
    an upper bound before those are known. pairs: runnable (state, experiment) pairs,
    once known.
    """
    cells = states * (levels + 1)
    stored = cells if stored is None else stored
    return (
        cells * BYTES_PER_STATE_LEVEL
        + stored * BYTES_PER_STORED_CELL
        + states * n * BYTES_PER_STATE_NODE
        + pairs * BYTES_PER_PAIR
        + OVERHEAD_BYTES
    )


def _release_freed_memory() -> None:
    """Hand the enumeration's freed temporaries back to the system (glibc only).

    glibc keeps freed blocks below its adaptive mmap threshold (up to 32 MB) in the heap,
    so after an enumeration's many mid-sized temporaries the process holds ~0.6 GB it no
    longer uses on a 1.5M-state problem: memory the solver's (S, L) arrays then sit on top
    of. `malloc_trim` returns it (measured in BENCHMARKS.md)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once (`find_library` runs a subprocess)."""
    import ctypes
    import ctypes.util

    try:
        name = ctypes.util.find_library("c")
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


@contextmanager
def _small_pages():
    """Ask numpy for ordinary 4 KiB pages, not transparent huge pages, meanwhile.

    numpy advises the kernel to back every allocation of 4 MB or more with huge pages.
    On the benchmark machine (a virtual machine) filling a fresh 2.4 GB array takes a
    steady ~1 s on 4 KiB pages but 0.25-4.8 s with the advice, slow whenever 2 MB blocks
    must first be assembled, so the enumeration's temporaries and the solver's (S, L)
    arrays pay seconds for nothing (BENCHMARKS.md). An explicit NUMPY_MADVISE_HUGEPAGE
    setting is left as it is."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2.0
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            _set_madvise_hugepage = None
    if _set_madvise_hugepage is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        yield
        return
    before = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(before)


def small_pages(fn):
    """Decorator: run `fn` under `_small_pages`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _small_pages():
            return fn(*args, **kwargs)

    return wrapper


def resident_bytes() -> int:
    """This process's resident memory now (0 where the platform does not say)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@small_pages
def enumerate_states(
    problem: PlanningProblem,
    *,
    max_states: int = 2_000_000,
    max_bytes: int = 8 * 2**30,
    limit_bytes: int | None = None,
    fast: bool = True,
    progress=None,
) -> StateSpace:
    """Enumerate reachable canonical states layer by layer (vectorised).

    Raises `ProblemTooLarge` as soon as the count passes `max_states` or the memory
    estimate passes `max_bytes`, before anything large is allocated (and before
    enumerating at all when one state's budget levels alone are over). `limit_bytes`
    is the user's limit, when `max_bytes` is what is left of it, for the message.
    `fast=False` uses the (F, n) status-array rules at every size (the reference).
    `progress(k)` is called with the number of states of each layer as it is found.
    """
    n = problem.n

    def too_large(total: int, need: int) -> ProblemTooLarge:
        held = (limit_bytes or max_bytes) - max_bytes
        used = f"; this process already holds {held / 2**30:.2f} GiB" if held > 0 else ""
        return ProblemTooLarge(
            f"at least {total:,} reachable states x {problem.levels + 1:,} budget levels "
            f"need ~{need / 2**30:.2f} GiB, over the limit of {max_states:,} states / "
            f"{(limit_bytes or max_bytes) / 2**30:.2f} GiB{used}",
            states=total,
            levels=problem.levels + 1,
            bytes_needed=need,
        )

    # While states are found only the memory every cell takes is certain (the stored
    # cells are known once the space is); past the upper bound at the end, the stored
    # cells are counted.
    if estimate_bytes(1, problem.levels, n, stored=0) > max_bytes:
        raise too_large(1, estimate_bytes(1, problem.levels, n, stored=0))
    start = canonicalize(problem, problem.start_status[None, :])
    stochastic = np.array([len(c) > 1 for c in problem.cost_units])
    # Outcomes that are the same state once canonical, canonicalised once: without a
    # hypothesis a cut-off (DEAD) is a failure (neither is a success, neither is
    # evidence); and an experiment also in no prerequisite clause is forgotten however
    # it ends, so its failure is its success (85% of the pairs on the benchmark's
    # largest case).
    no_hyp = problem.hyp_of < 0
    fail_is_success = outcome_free(problem)
    root_code = encode(start)[0]
    # Successor codes wait in `pending` under their untried count until that layer is
    # reached: (codes, source layer, positions in that layer's `dest`).
    pending: dict[int, list[tuple]] = {
        int((start == UNTRIED).sum()): [(np.array([root_code]), -1, None)]
    }
    layers_codes, layers_status = [], []
    trans = []  # per layer: (rows, nodes, which triple holds each s/f/d successor, dest)
    total = 0
    u = max(pending)
    # Up to 31 experiments the states are handled as bit masks (`_masks`); past that,
    # as (F, n) status arrays (the reference rules, which the fast path is tested against).
    model = MaskModel.of(problem) if fast and n <= MASK_FAST_NODES else None
    chunk = ENUM_CHUNK_MASKS if model is not None else ENUM_CHUNK
    while u >= 0:
        if u not in pending:
            u -= 1
            continue
        pieces = pending.pop(u)
        arrived = np.concatenate([c for c, _, _ in pieces])
        codes = _unique(arrived)
        # A layer's states are numbered in enumeration order (`total` before it); each
        # arrived successor learns its number here, by a search in this layer only.
        ids = total + np.searchsorted(codes, arrived)
        at = 0
        for c, li, pos in pieces:
            if li >= 0:
                trans[li][3][pos] = ids[at : at + len(c)]
            at += len(c)
        del arrived, ids, pieces
        total += len(codes)
        need = estimate_bytes(total, problem.levels, n, stored=0)
        if total > max_states or need > max_bytes:
            raise too_large(total, need)
        if model is not None:
            masks = to_masks(codes, n)
            status = to_status(*masks, n)
            runnable = mask_available(model, masks[0], masks[1])
            # bits -> (n, F) uint8 (not an (F, n) int64 temporary: 8x less memory)
            bits = np.ascontiguousarray(bits_of(runnable, n).T)
        else:
            status = decode(codes, n)
            bits = np.ascontiguousarray(available(problem, status).T)
        # Every (state, node) pair, node by node: for one node and outcome the successors
        # of the (sorted) states come out nearly sorted, so the stable sort that finds a
        # layer's distinct codes runs over long sorted runs (13x faster than unordered).
        nodes, rows = np.nonzero(bits)
        del bits
        # Every (state, node, outcome) triple of the layer canonicalised together (in
        # chunks that bound the temporaries), not one call per node or outcome: the
        # Python overhead is per call.
        P = len(rows)
        own_f = np.flatnonzero(~fail_is_success[nodes])
        cut = np.flatnonzero(stochastic[nodes])
        cut_own = ~no_hyp[nodes[cut]]  # a cut-off that is not simply a failure
        own_d = cut[cut_own]
        pair = np.concatenate([np.arange(P), own_f, own_d])
        outcome = np.repeat(
            np.array([SUCCESS, FAILED, DEAD], dtype=np.int8), [P, len(own_f), len(own_d)]
        )
        # the triple that holds each pair's failure, and each cut pair's cut-off
        f_of = np.arange(P)
        f_of[own_f] = P + np.arange(len(own_f))
        d_of = f_of[cut]
        d_of[cut_own] = P + len(own_f) + np.arange(len(own_d))
        # (pairs, the triple of each) for the s/f/d tables; pairs None: every pair
        links = ((None, slice(0, P)), (None, f_of), (cut, d_of))
        li = len(trans)
        trans.append((rows, nodes, links, np.empty(len(pair), dtype=_index_type(max_states))))
        for lo in range(0, len(pair), chunk):
            part, out = pair[lo : lo + chunk], outcome[lo : lo + chunk]
            if model is not None:
                c, k = _successors_masks(model, masks, rows[part], nodes[part], out)
            else:
                nxt = status[rows[part]]
                nxt[np.arange(len(part)), nodes[part]] = out
                nxt = canonicalize(problem, nxt)
                c = encode(nxt)
                k = (nxt == UNTRIED).sum(axis=1)
            # split by untried count: one stable (radix) sort of the small counts
            by = np.argsort(k.astype(np.int8), kind="stable")
            counts = np.bincount(k, minlength=n + 1)
            ends = np.cumsum(counts)
            for kk in np.flatnonzero(counts):
                seg = by[ends[kk] - counts[kk] : ends[kk]]
                pending.setdefault(int(kk), []).append((c[seg], li, lo + seg))
        del pair, outcome
        layers_codes.append(codes)
        layers_status.append(status)
        if progress is not None:
            progress(len(codes))
        u -= 1

    all_codes = np.concatenate(layers_codes)
    S = len(all_codes)
    # The space is stored in code order (`index` searches it); each layer is sorted, so
    # the stable sort merges a few long runs.
    order = np.argsort(all_codes, kind="stable")
    codes = all_codes[order]
    status = np.concatenate(layers_status)[order]
    offsets = np.cumsum([0] + [len(c) for c in layers_codes])
    # int32 indices (half the memory of the (S, n) tables, and of every gather's index)
    # while they fit; users that multiply an index by the level count widen it first.
    idx = _index_type(S)
    inv = np.empty(S, dtype=idx)
    inv[order] = np.arange(S, dtype=idx)  # enumeration number -> sorted index
    del all_codes, order, layers_codes, layers_status
    succ = [np.full((S, n), -1, dtype=idx) for _ in range(2)]
    # Without stochastic costs there is no cut-off successor, and without hypotheses the
    # posterior is the prior: read-only broadcasts instead of two (S, n) arrays.
    if stochastic.any():
        succ.append(np.full((S, n), -1, dtype=idx))
    else:
        succ.append(np.broadcast_to(idx(-1), (S, n)))
    for li, (rows, nodes, links, dest) in enumerate(trans):
        flat = inv[offsets[li] + rows].astype(np.int64) * n + nodes
        for k, (sel, triple) in enumerate(links):
            at = flat if sel is None else flat[sel]
            if len(at):
                succ[k].reshape(-1)[at] = inv[dest[triple]]
    del trans, inv
    if S * n >= TRIM_MIN_CELLS:  # a trim walks the heap: worth it after large temporaries
        _release_freed_memory()
    av = succ[0] >= 0
    if problem.hypotheses:
        p = beliefs(problem, status)
    else:
        p = np.broadcast_to(problem.p_table[:, 0], (S, n))
    space = StateSpace(
        codes=codes,
        status=status,
        untried=(status == UNTRIED).sum(axis=1).astype(np.int64),
        avail=av,
        p=p,
        succ_s=succ[0],
        succ_f=succ[1],
        succ_d=succ[2],
        root=int(np.searchsorted(codes, root_code)),
    )
    L = problem.levels + 1
    P = space.pairs
    if estimate_bytes(S, problem.levels, n, pairs=P) > max_bytes:
        from derisk.planner._exact import auto_engine
        from derisk.planner._table import reachable_top  # kept on the space for the solver

        # The numpy engine keeps its tables dense: only the compiled one stores less.
        stored = S * L
        if auto_engine(space.pairs * L) == "xla":
            stored = int(reachable_top(problem, space).sum(dtype=np.int64)) + S
        need = estimate_bytes(S, problem.levels, n, stored=stored, pairs=P)
        if need > max_bytes:
            raise too_large(S, need)
    return space
