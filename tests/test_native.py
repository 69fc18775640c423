"""The exact solver's C loop (`_native`, `_bellman.c`) against its numpy reference."""

import numpy as np
import pytest
from conftest import generated_roadmaps

import derisk.planner._exact as exact_mod
from derisk.graphs import random_roadmap
from derisk.planner import compile_roadmap, enumerate_states, solve
from derisk.planner._exact import solve_exact
from derisk.planner._native import available


def test_the_install_built_the_c_loop():
    # The README's install compiles it (setup.py); without it every solve falls back to
    # the numpy loop, 3-6x slower. A machine with no C compiler fails here, on purpose.
    assert available(), "derisk/planner/_bellman.c was not built: reinstall with a C compiler"


# Without the build only the test above fails, with its message: the rest compare the
# C loops with numpy and need them.
needs_c = pytest.mark.skipif(not available(), reason="the C loops were not built: see above")


def _cases():
    rs = generated_roadmaps(16, max_nodes=9)
    rs.append(random_roadmap(11, seed=4, hypotheses=2, stochastic_costs=0.4, compute_price=0.3))
    rs.append(random_roadmap(12, seed=7, rewards=12, density=0.15, budget_levels=60))
    return [compile_roadmap(r) for r in rs]


@needs_c
@pytest.mark.parametrize("cut", [False, True])
def test_c_loop_equals_the_numpy_loop_bit_for_bit(monkeypatch, cut):
    """Every feature (stochastic costs and cut-offs, hypotheses, OR-groups, a compute
    price, outcome-free experiments): the same values and the same policy, to the last
    bit, on every stored cell; with `cut` both keep only the reachable levels."""
    if cut:
        monkeypatch.setattr(exact_mod, "WIDTH_MIN_WORK", 0)
    features, narrowed = set(), False
    for pr in _cases():
        features |= {
            "stochastic" if any(len(u) > 1 for u in pr.cost_units) else "fixed",
            "hypotheses" if pr.hypotheses else "no-hypotheses",
            "price" if pr.price_per_unit else "free",
        }
        space = enumerate_states(pr)
        V, pol = solve_exact(pr, space, engine="numpy")
        Vc, polc = solve_exact(pr, space, engine="native")
        np.testing.assert_array_equal(Vc.top, V.top)
        narrowed |= bool((V.top < pr.levels).any())
        kept = V.stored()
        assert np.array_equal(Vc.dense()[kept], V.dense()[kept])  # bit for bit
        assert np.array_equal(polc.dense()[kept], pol.dense()[kept])
        assert polc.dtype == np.int8
    assert features == {"stochastic", "fixed", "hypotheses", "no-hypotheses", "price", "free"}
    assert narrowed == cut


@needs_c
def test_solve_uses_the_c_loop_where_built_and_numpy_where_not(monkeypatch):
    """The progress bar counts every state once, those with nothing to run too."""
    import derisk.planner._native as native_mod

    pr = compile_roadmap(random_roadmap(12, seed=4, hypotheses=2, stochastic_costs=0.4))
    space = enumerate_states(pr)
    work = space.pairs * (pr.levels + 1)
    assert exact_mod.auto_engine(work) == "native"
    done = []
    V, _ = solve_exact(pr, space, progress=done.append)
    assert sum(done) == space.size and len(done) == len(space.layers())
    monkeypatch.setattr(native_mod, "_library", lambda: None)  # an install without a compiler
    assert exact_mod.auto_engine(work) == "numpy"
    assert solve(pr, space=space).root_value == V[space.root, pr.levels]
    with pytest.raises(RuntimeError, match="C compiler"):
        solve_exact(pr, space, engine="native")


def test_unknown_engine_is_refused():
    pr = compile_roadmap(random_roadmap(4, seed=1))
    with pytest.raises(ValueError, match="native"):
        solve_exact(pr, enumerate_states(pr), engine="C")


@needs_c
def test_a_library_built_from_another_source_is_not_called(monkeypatch):
    """A checkout updated without reinstalling keeps an old build: its version differs,
    so the solver says so and runs the numpy loop instead of calling it."""
    import derisk.planner._native as native_mod
    from derisk.errors import DeriskWarning

    pr = compile_roadmap(random_roadmap(6, seed=2))
    space = enumerate_states(pr)
    monkeypatch.setattr(native_mod, "VERSION", native_mod.VERSION + 1)
    native_mod._library.cache_clear()
    try:
        with pytest.warns(DeriskWarning, match="rebuilt"):
            assert not native_mod.available()
        assert exact_mod.auto_engine(space.pairs * (pr.levels + 1)) == "numpy"
    finally:
        monkeypatch.undo()
        native_mod._library.cache_clear()
    assert native_mod.available()


@needs_c
@pytest.mark.parametrize("cut", [False, True])
def test_c_policy_evaluation_equals_the_numpy_one_bit_for_bit(cut):
    """Every channel (value with its price, compute, each reward's probability) of the
    optimal policy, a heuristic's and the uniformly random one, whole tables and one
    state's row, on roadmaps with every feature; with `cut` each row's reachable levels."""
    from derisk.planner import evaluate_policy, reachable_top
    from derisk.planner._heuristics import heuristic_policy

    for pr in _cases()[::2]:
        space = enumerate_states(pr)
        top = reachable_top(pr, space) if cut else None
        kept = np.arange(pr.levels + 1)[None, :] <= top[:, None] if cut else None
        optimal = solve(pr, space=space).policy
        for policy in (optimal, heuristic_policy("steinhardt", pr, space), None):
            for state in (None, space.root):
                got = [
                    evaluate_policy(pr, space, policy, state=state, top=top, engine=engine)
                    for engine in ("numpy", "native")
                ]
                for key in ("value", "compute", "p_reward"):
                    ref, new = got[0][key], got[1][key]
                    if state is None and cut:  # cells past a row's top are not computed
                        ref, new = ref[..., kept], new[..., kept]
                    assert np.array_equal(new, ref), key


@needs_c
def test_c_loops_read_int32_and_int64_successor_tables_alike():
    """Spaces hold int32 successors below 2^31 states and int64 past: the C loops read
    either as they are. The same space with int64 tables gives the same bits."""
    from dataclasses import replace

    import derisk.planner._native as native_mod
    from derisk.planner._exact import TIE

    pr = compile_roadmap(random_roadmap(11, seed=4, hypotheses=2, stochastic_costs=0.4))
    space = enumerate_states(pr)
    assert space.succ_s.dtype == np.int32
    wide = replace(
        space,
        succ_s=space.succ_s.astype(np.int64),
        succ_f=space.succ_f.astype(np.int64),
        succ_d=space.succ_d.astype(np.int64),
        memo={},
    )
    assert native_mod.Layout.of(pr, wide).wide == 1 and native_mod.Layout.of(pr, space).wide == 0
    V, pol = native_mod.solve_native(pr, space, None, TIE)
    Vw, polw = native_mod.solve_native(pr, wide, None, TIE)
    assert np.array_equal(V, Vw) and np.array_equal(pol, polw)


@needs_c
def test_c_evaluation_takes_a_buffer_with_any_finite_contents():
    """Like the numpy channel, whatever the buffer held before: the rows of states where
    nothing can run are read as successors, so they must be set (to 0), not left."""
    import derisk.planner._evaluate as ev
    import derisk.planner._native as native_mod

    pr = compile_roadmap(random_roadmap(9, seed=3, rewards=3))
    space = enumerate_states(pr)
    policy = solve(pr, space=space).policy.dense()
    assert (space.avail.sum(axis=1) == 0).any()
    layout = native_mod.Layout.of(pr, space)
    args = (pr, space, policy, pr.reward, -pr.price_per_unit, space.root)
    fresh = ev._channel(*args, X=np.zeros((space.size, pr.levels + 1)))
    for channel in (ev._channel, lambda *a, **k: ev._channel_native(layout, *a, **k)):
        stale = np.full((space.size, pr.levels + 1), 7.0)
        assert np.array_equal(channel(*args, X=stale), fresh)
