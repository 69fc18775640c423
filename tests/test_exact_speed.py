"""The exact solver's fast paths against plain references: the layer-batched enumeration
against a state-by-state search, the compact tables (int32 successors, broadcast
posteriors and cut-off successors), and the deterministic-cost backup against the
general one."""

import numpy as np
import pytest
from conftest import generated_roadmaps

from derisk.graphs import random_roadmap
from derisk.planner import compile_roadmap, enumerate_states, evaluate_policy, solve
from derisk.planner._problem import DEAD, FAILED, SUCCESS, UNTRIED
from derisk.planner._states import available, beliefs, canonicalize, encode


def _reference_space(pr):
    """Every reachable canonical state and its successors, one state at a time."""
    start = canonicalize(pr, pr.start_status[None, :])[0]
    seen = {encode(start[None, :])[0].item(): start}
    todo = [start]
    edges = {}
    while todo:
        st = todo.pop()
        key = encode(st[None, :])[0].item()
        for i in np.flatnonzero(available(pr, st[None, :])[0]):
            outs = (SUCCESS, FAILED, DEAD) if len(pr.cost_units[i]) > 1 else (SUCCESS, FAILED)
            for o in outs:
                nxt = st.copy()
                nxt[i] = o
                nxt = canonicalize(pr, nxt[None, :])[0]
                k = encode(nxt[None, :])[0].item()
                edges[key, int(i), o] = k
                if k not in seen:
                    seen[k] = nxt
                    todo.append(nxt)
    return seen, edges


@pytest.mark.parametrize("chunk", range(3))
def test_batched_enumeration_matches_a_state_by_state_search(chunk):
    for r in generated_roadmaps(30, max_nodes=9)[chunk::3]:
        pr = compile_roadmap(r)
        space = enumerate_states(pr)
        seen, edges = _reference_space(pr)
        assert sorted(seen) == [c.item() for c in space.codes]
        for (key, i, o), k in edges.items():
            s = int(np.searchsorted(space.codes, key))
            succ = {SUCCESS: space.succ_s, FAILED: space.succ_f, DEAD: space.succ_d}[o]
            assert space.codes[succ[s, i]].item() == k
        # no transition where the reference has none
        count = sum(1 for (_, _, o) in edges if o == SUCCESS)
        assert int((space.succ_s >= 0).sum()) == count
        np.testing.assert_allclose(space.p, beliefs(pr, space.status))
        assert ((space.status == UNTRIED).sum(axis=1) == space.untried).all()


def test_compact_tables():
    det = compile_roadmap(random_roadmap(8, seed=1, rewards=2, budget_levels=20))
    assert all(len(c) == 1 for c in det.cost_units) and not det.hypotheses
    space = enumerate_states(det)
    assert space.succ_s.dtype == np.int32 and space.succ_f.dtype == np.int32
    # read-only broadcasts: no cut-off successor, the prior as posterior
    assert space.succ_d.strides == (0, 0) and (space.succ_d == -1).all()
    assert space.p.strides[0] == 0
    with pytest.raises(ValueError):
        space.p[0, 0] = 0.5


def test_deterministic_cost_path_matches_the_general_backup():
    """The solver compares shifted views for a fixed cost; the policy evaluation (which
    uses the general mixture backup) must find the solver's policy worth its values."""
    for r in generated_roadmaps(16, max_nodes=8):
        pr = compile_roadmap(r)
        sol = solve(pr)
        ev = evaluate_policy(pr, sol.space, sol.policy, channels=("value",))
        kept = sol.values.stored()
        np.testing.assert_allclose(ev["value"][kept], sol.values.dense()[kept], atol=1e-9)


def _mask_model_cases():
    from derisk.planner._states import decode  # noqa: F401  (the reference codec)

    rs = generated_roadmaps(24, max_nodes=12)
    # the fast path's edge: 31 experiments (one int64 code), with OR-groups and hypotheses
    rs.append(random_roadmap(31, seed=5, density=0.15, rewards=3, hypotheses=2, any_groups=0.5))
    return [compile_roadmap(r) for r in rs]


def test_bit_mask_collapsing_matches_the_status_array_rules():
    """`_masks.canonical` / `available` against `_states.canonicalize` / `available` on
    random statuses (any mix of untried, succeeded, failed, dead), and the mask codec
    against `encode`."""
    from derisk.planner import _masks

    rng = np.random.default_rng(7)
    for pr in _mask_model_cases():
        status = rng.integers(0, 4, size=(400, pr.n)).astype(np.int8)
        codes = encode(status)
        U, S, F = _masks.to_masks(codes, pr.n)
        assert np.array_equal(U, (status == UNTRIED) @ (1 << np.arange(pr.n)))
        assert np.array_equal(_masks.to_codes(U, S, F, pr.n), codes)
        model = _masks.MaskModel.of(pr)
        got = _masks.canonical(model, U, S, F)
        ref = canonicalize(pr, status)
        assert np.array_equal(_masks.to_codes(*got, pr.n), encode(ref))
        runnable = _masks.available(model, got[0], got[1])
        bits = ((runnable[:, None] >> np.arange(pr.n)) & 1).astype(bool)
        assert np.array_equal(bits, available(pr, ref))
        assert np.array_equal(_masks.popcount(got[0]), (ref == UNTRIED).sum(axis=1))


def test_bit_mask_enumeration_matches_the_reference_enumeration():
    """The same state space, field for field, from the mask path and the status-array
    path, on roadmaps larger than the state-by-state search can afford."""
    rs = generated_roadmaps(12, max_nodes=14)[6:]
    rs += [
        random_roadmap(13, seed=s, hypotheses=2, stochastic_costs=0.3, any_groups=0.4)
        for s in (2, 3)
    ]
    rs.append(random_roadmap(18, seed=1, density=0.15, rewards=18))  # 6,752 states
    for r in rs:
        pr = compile_roadmap(r)
        fast, ref = enumerate_states(pr), enumerate_states(pr, fast=False)
        for field in ("codes", "status", "untried", "avail", "p", "succ_s", "succ_f", "succ_d"):
            assert np.array_equal(getattr(fast, field), getattr(ref, field)), field
        assert fast.root == ref.root and fast.size >= 30


def test_compiled_solver_matches_the_numpy_solver(monkeypatch):
    """`_fused` (XLA) against the numpy backward induction on roadmaps with every
    feature (stochastic costs and cut-offs, hypotheses, OR-groups, a compute price), in
    chunks small enough that layers span several: the same values, and its policy is
    worth them (evaluated exactly by the general backup). The numpy solver keeps every
    level at these sizes; past its threshold it keeps the compiled one's levels."""
    import derisk.planner._exact as exact_mod
    from derisk.planner._exact import solve_exact
    from derisk.planner._fused import solve_fused

    rs = generated_roadmaps(12, max_nodes=10)[3:]
    rs.append(random_roadmap(12, seed=4, hypotheses=2, stochastic_costs=0.4, compute_price=0.3))
    for r in rs:
        pr = compile_roadmap(r)
        space = enumerate_states(pr)
        V, pol = solve_exact(pr, space, engine="numpy")
        Vx, polx = solve_fused(pr, space, chunk=2 * pr.n)
        assert (V.top == pr.levels).all()
        kept = Vx.stored()
        np.testing.assert_allclose(Vx.dense()[kept], V.dense()[kept], atol=1e-9, rtol=0)
        with monkeypatch.context() as m:
            m.setattr(exact_mod, "WIDTH_MIN_WORK", 0)
            Vw, _ = solve_exact(pr, space, engine="numpy")
        np.testing.assert_array_equal(Vw.top, Vx.top)
        np.testing.assert_allclose(Vw.dense()[kept], V.dense()[kept], atol=1e-9, rtol=0)
        px = polx.dense()
        assert (
            polx.dtype == np.int8
            and ((px < 0) | space.avail[np.arange(space.size)[:, None], np.maximum(px, 0)]).all()
        )
        ev = evaluate_policy(pr, space, polx, channels=("value",))
        np.testing.assert_allclose(ev["value"][kept], V.dense()[kept], atol=1e-9, rtol=0)


def test_compiled_solver_chunks_hold_whole_states_of_one_layer():
    from derisk.planner._fused import chunk_layout, pair_slots

    pr = compile_roadmap(random_roadmap(12, seed=4, hypotheses=2, stochastic_costs=0.4))
    space = enumerate_states(pr)
    by_layer = np.argsort(space.untried, kind="stable")
    rows, _ = np.nonzero(space.avail[by_layer])
    states = by_layer[rows]  # the pairs, state by state in solve order
    st = states
    chunk = 2 * pr.n
    counts = space.avail.sum(axis=1)[by_layer]
    first_slot, n_chunks, of_state = chunk_layout(space.untried[by_layer], counts, chunk, pr.n)
    slot = pair_slots(first_slot, counts)
    assert len(slot) == len(states) and len(set(slot)) == len(slot)
    # listed in another order, every state's pairs get the same slots
    shuffled = np.random.default_rng(0).permutation(len(counts))
    again = pair_slots(first_slot[shuffled], counts[shuffled])
    by_state = np.split(slot, np.cumsum(counts)[:-1])
    for q, got in zip(shuffled, np.split(again, np.cumsum(counts[shuffled])[:-1]), strict=True):
        assert np.array_equal(got, by_state[q])
    assert slot.min() >= 0 and slot.max() < n_chunks * chunk
    cid = slot // chunk
    assert np.array_equal(of_state[rows], cid)  # the per-state chunk is its pairs' chunk
    assert (of_state[counts == 0] == -1).all()
    for c in np.unique(cid):
        assert len(np.unique(space.untried[states[cid == c]])) == 1  # one layer
    for s in np.unique(st):  # a state's pairs all in one chunk
        assert len(np.unique(cid[states == s])) == 1
    # chunks come in layer order: a chunk never precedes one of a lower layer
    first_layer = [space.untried[states[cid == c][0]] for c in np.unique(cid)]
    assert first_layer == sorted(first_layer)
    assert n_chunks > len(np.unique(space.untried[st]))  # some layer spans chunks
    with pytest.raises(ValueError, match="must hold"):
        chunk_layout(space.untried[by_layer], counts, pr.n, pr.n)


def test_popcount_table_matches_bit_counting():
    from derisk.planner._masks import _popcount_table, popcount

    m = np.random.default_rng(0).integers(0, 2**62, size=2000)
    want = np.array([bin(int(x)).count("1") for x in m])
    assert np.array_equal(_popcount_table(m), want) and np.array_equal(popcount(m), want)


def test_heuristic_tables_match_a_state_by_state_choice():
    """Each heuristic's (S, L) table, built column by column as experiments become
    affordable, against the rule applied at every (state, level) in plain Python: the
    highest score among runnable experiments whose minimum cost fits (first index on a
    tie), else stop. Covers a tie on purpose (two experiments of equal cost)."""
    from derisk.planner._heuristics import HEURISTICS, heuristic_policy, heuristic_scores

    rs = generated_roadmaps(10, max_nodes=7)
    rs.append(random_roadmap(6, seed=3, rewards=2, hypotheses=1, budget_levels=12))
    ties = 0
    for r in rs:
        pr = compile_roadmap(r)
        space = enumerate_states(pr)
        lo = pr.min_cost
        for name in HEURISTICS[:-1]:  # "random" has no table
            table = heuristic_policy(name, pr, space)
            score = np.array(heuristic_scores(name, pr, np.asarray(space.p)))
            for s in range(space.size):
                for b in range(pr.levels + 1):
                    best, top = -1, -np.inf
                    for i in range(pr.n):
                        if space.avail[s, i] and lo[i] <= b:
                            ties += score[s, i] == top
                            if score[s, i] > top:
                                best, top = i, score[s, i]
                    assert table[s, b] == best, (name, s, b)
    assert ties > 0  # the first-index rule was exercised


def test_small_pages_is_scoped_and_respects_the_environment(monkeypatch):
    """The planner turns numpy's huge-page advice off only while it works, puts the
    setting back, and leaves an explicit NUMPY_MADVISE_HUGEPAGE alone."""
    from numpy._core.multiarray import _set_madvise_hugepage

    from derisk.planner._states import _small_pages

    def current():
        before = _set_madvise_hugepage(True)  # returns the previous setting
        _set_madvise_hugepage(before)
        return before

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    _set_madvise_hugepage(True)
    with _small_pages():
        assert current() is False
    assert current() is True
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    with _small_pages():
        assert current() is True


def test_progress_counts_every_state_once_and_only_when_done():
    """Enumeration reports each layer's states as it finds them, the compiled solver
    each call's states (and those with nothing to run): both bars end at the state
    count."""
    from derisk.planner._fused import solve_fused

    pr = compile_roadmap(random_roadmap(12, seed=4, hypotheses=2, stochastic_costs=0.4))
    found = []
    space = enumerate_states(pr, progress=found.append)
    assert sum(found) == space.size and len(found) == len(space.layers())
    done = []
    values, _ = solve_fused(pr, space, progress=done.append, chunk=2 * pr.n)
    assert sum(done) == space.size and len(done) >= 2
    assert np.isfinite(values.dense()[values.stored()]).all()
