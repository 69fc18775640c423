"""Tables stored only where the planning start can reach: the reachable top of every state
against a search of the explicit (state, budget left) graph, and the table's reads."""

import numpy as np
import pytest
from conftest import generated_roadmaps

from derisk.graphs import random_roadmap
from derisk.planner import compile_roadmap, enumerate_states, solve
from derisk.planner._table import Table, reachable_top


def _explicit_reach(pr, space):
    """Most budget each state is ever entered with, by a search of (state, level) pairs
    from (start, top level): every experiment runnable there, every cost outcome (a cost
    past the budget left is a cut-off, which spends it all). -1: never entered."""
    L = pr.levels + 1
    most = np.full(space.size, -1)
    seen = np.zeros((space.size, L), dtype=bool)
    todo = [(space.root, pr.levels)]
    seen[space.root, pr.levels] = True
    while todo:
        s, b = todo.pop()
        most[s] = max(most[s], b)
        for i in np.flatnonzero(space.avail[s]):
            if b < pr.cost_units[i][0]:
                continue
            for c in pr.cost_units[i]:
                nxt = (
                    [(space.succ_s[s, i], b - c), (space.succ_f[s, i], b - c)]
                    if c <= b
                    else [(space.succ_d[s, i], 0)]
                )
                for t, left in nxt:
                    if not seen[t, left]:
                        seen[t, left] = True
                        todo.append((int(t), int(left)))
    return most


def test_reachable_top_is_the_most_budget_any_history_leaves():
    """Never below what a history can leave (the solver would miss a cell it needs),
    and equal to it wherever every cost is fixed and no state is entered by a cut-off."""
    rs = generated_roadmaps(30, max_nodes=8, levels=20)
    rs.append(random_roadmap(9, seed=3, hypotheses=1, stochastic_costs=0.5, budget_levels=30))
    exact_cases = 0
    for r in rs:
        pr = compile_roadmap(r)
        space = enumerate_states(pr)
        top = reachable_top(pr, space)
        most = _explicit_reach(pr, space)
        entered = most >= 0
        assert np.all(top[entered] >= most[entered]), r.source
        assert top[space.root] == pr.levels
        if all(len(c) == 1 for c in pr.cost_units):
            exact_cases += 1
            np.testing.assert_array_equal(top[entered], most[entered], err_msg=r.source)
    assert exact_cases >= 5


@pytest.mark.parametrize("engine", ["numpy", "xla"])
def test_the_stored_cells_are_fewer_and_hold_the_full_solution_there(engine, monkeypatch):
    """On a roadmap whose budget cannot run everything, the exact solver (both engines,
    the numpy one as past its size threshold) keeps well under all cells, and each kept
    cell equals the value of a solver that keeps every cell."""
    import derisk.planner._exact as exact_mod
    from derisk.planner import SolveConfig, build_space

    monkeypatch.setattr(exact_mod, "WIDTH_MIN_WORK", 0)
    monkeypatch.setattr(exact_mod, "FUSED_MIN_WORK", 0 if engine == "xla" else 1 << 62)
    pr = compile_roadmap(random_roadmap(10, seed=2, budget_levels=60, budget_fraction=0.5))
    space = build_space(pr)
    exact = solve(pr, space=space)
    full = solve(pr, space=space, config=SolveConfig(solver="jax"))
    assert full.values.cells == space.size * (pr.levels + 1)
    assert exact.values.cells < 0.8 * full.values.cells
    kept = exact.values.stored()
    np.testing.assert_allclose(exact.values.dense()[kept], full.values.dense()[kept], atol=1e-9)
    np.testing.assert_array_equal(exact.values.top, reachable_top(pr, space))


def test_table_reads():
    dense = np.arange(12.0).reshape(3, 4)
    # compact, as the compiled solver stores it: rows 0..top, padding around, rows apart
    data = np.array([-1.0, 8.0, -1.0, 4.0, 5.0, 0.0, 1.0, 2.0, 3.0, -1.0])
    t = Table(data, np.array([5, 3, 1]), np.array([3, 1, 0], dtype=np.int32), 4, np.nan)
    assert t.shape == (3, 4) and t.cells == 4 + 2 + 1 and len(t) == 3
    assert t[0, 3] == 3.0 and t[1, 1] == 5.0 and t[2, 0] == 8.0
    np.testing.assert_array_equal(t[np.array([1, 0]), np.array([0, 2])], [4.0, 2.0])
    np.testing.assert_array_equal(t[1], [4.0, 5.0, np.nan, np.nan])
    np.testing.assert_array_equal(t[[2, 0]], [[8.0, np.nan, np.nan, np.nan], [0, 1, 2, 3]])
    np.testing.assert_array_equal(t[0, 1:3], [1.0, 2.0])
    np.testing.assert_array_equal(t.stored().sum(axis=1), [4, 2, 1])
    with pytest.raises(IndexError, match="level 2 of state 1 is not stored"):
        t[1, 2]
    with pytest.raises(IndexError, match="state 2"):
        t[np.array([0, 2]), np.array([0, 1])]
    full = Table.full(dense, -1)
    np.testing.assert_array_equal(full.dense(), dense)
    assert full[2, 3] == 11.0


def test_a_history_that_cannot_leave_that_much_budget_is_refused(monkeypatch):
    """A solution queried where no history from the start can stand: a clear error,
    not a value read from another state's row; past every cost still possible the
    value is the top stored level's (the budget no longer matters)."""
    import derisk.planner._exact as exact_mod
    from derisk.graphs import roadmap_from_dict

    monkeypatch.setattr(exact_mod, "WIDTH_MIN_WORK", 0)  # keep reachable levels only
    r = roadmap_from_dict(
        {
            "budget": 10,
            "experiments": [
                {"id": "a", "p": 0.5, "cost": 6, "reward": 1},
                {"id": "b", "p": 0.5, "cost": 6, "reward": 1},
            ],
        }
    )
    pol = solve(compile_roadmap(r)).as_policy()
    assert pol.action({}, 10) in ("a", "b")
    with pytest.raises(ValueError, match="at most 4 can be left, not 9"):
        pol.value({"a": "success"}, 9)
    assert pol.value({"a": "success"}, 4) == pytest.approx(0.0)  # b no longer fits


def test_the_memory_guard_counts_the_stored_cells_once_they_are_known(monkeypatch):
    """Past the every-cell upper bound the guard counts the cells the compiled engine's
    tables will keep: a limit between the two admits the roadmap (and leaves its tops
    for the solver); a limit under the stored count refuses, naming what it needs. The
    numpy engine keeps dense tables, so for it every cell counts."""
    import derisk.planner._exact as exact
    from derisk.errors import ProblemTooLarge
    from derisk.planner import estimate_bytes

    pr = compile_roadmap(random_roadmap(12, seed=2, budget_levels=150, budget_fraction=0.4))
    space = enumerate_states(pr)
    stored = int(reachable_top(pr, space).sum()) + space.size
    full = estimate_bytes(space.size, pr.levels, pr.n, pairs=space.pairs)
    kept = estimate_bytes(space.size, pr.levels, pr.n, stored=stored, pairs=space.pairs)
    assert stored < 0.5 * space.size * (pr.levels + 1) and kept < full
    with pytest.raises(ProblemTooLarge):  # small: the numpy engine, dense tables
        enumerate_states(pr, max_bytes=(kept + full) // 2)
    # the C loops' copy of the pairs counts too: a limit that leaves no room for it
    without = estimate_bytes(space.size, pr.levels, pr.n)
    assert enumerate_states(pr, max_bytes=full).size == space.size
    with pytest.raises(ProblemTooLarge):
        enumerate_states(pr, max_bytes=(without + full) // 2)
    monkeypatch.setattr(exact, "FUSED_MIN_WORK", 0)  # as if large: the compiled engine
    admitted = enumerate_states(pr, max_bytes=(kept + full) // 2)
    assert admitted.size == space.size and sum(k != "pairs" for k in admitted.memo) == 1
    with pytest.raises(ProblemTooLarge, match="reachable states") as exc:
        enumerate_states(pr, max_bytes=kept - 1)
    assert exc.value.bytes_needed == kept


def _readings(roadmap, solution):
    """What the planning commands print, read off one solution."""
    from derisk.planner import plan_report, whatif_report
    from derisk.planner._explain import explain
    from derisk.planner._sensitivity import sensitivity
    from derisk.planner._simulate import check_simulation

    pr = solution.problem
    rep = plan_report(solution)
    w = whatif_report(solution, 0.0, pr.levels * pr.resolution)
    return {
        "next": rep.next,
        "value": rep.value,
        "heuristics": {k: v["value"] for k, v in rep.heuristics.items()},
        "explain": explain(solution).as_dict(),
        "whatif": (w.value, w.expected_compute, w.first, *w.p_reward.values()),
        "simulate": [c.as_dict() for c in check_simulation(solution, episodes=2000).policies],
        "sensitivity": sensitivity(roadmap, solution, flips=False).as_dict(),
    }


def _assert_same(a, b, path="readings"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{k}]")
    elif isinstance(a, (float, np.floating, np.ndarray)):
        np.testing.assert_allclose(a, b, atol=1e-9, rtol=0, err_msg=path)
    else:
        assert a == b, path


@pytest.mark.parametrize("stochastic", [0.0, 0.4])
def test_every_command_reads_the_same_off_compact_tables(stochastic, monkeypatch):
    """plan, explain, whatif, the simulation check and sensitivity print the same
    numbers from the compiled solver's compact tables (under a third of the cells here)
    as from the numpy solver's full ones: no reader needs a cell past a state's top."""
    import derisk.planner._exact as exact_mod

    r = random_roadmap(
        9,
        seed=3,
        hypotheses=1,
        stochastic_costs=stochastic,
        any_groups=0.5,
        compute_price=0.2,
        budget_levels=40,
        budget_fraction=0.5,
    )
    full = solve(compile_roadmap(r))
    with monkeypatch.context() as m:  # this solve as if large: compiled, compact
        m.setattr(exact_mod, "FUSED_MIN_WORK", 0)
        compact = solve(compile_roadmap(r))
    S, L = compact.space.size, compact.problem.levels + 1
    assert full.values.cells == S * L and compact.values.cells < 0.4 * S * L
    _assert_same(_readings(r, full), _readings(r, compact))
