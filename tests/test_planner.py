import itertools
import math

import numpy as np
import pytest
from conftest import generated_roadmaps
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import brute_force_value

from derisk.errors import ProblemTooLarge, SolverError
from derisk.graphs import example_path, examples, load_roadmap, random_roadmap, roadmap_from_dict
from derisk.planner import (
    HEURISTICS,
    SolveConfig,
    build_space,
    compile_roadmap,
    evaluate_policy,
    simulate,
    solve,
    start_value,
)

ROADMAPS = generated_roadmaps(200)


def _solve_all(roadmap):
    pr = compile_roadmap(roadmap)
    space = build_space(pr)
    return {
        name: solve(pr, config=SolveConfig(solver=name), space=space)
        for name in ("exact", "jax", "mdptoolbox")
    }


@pytest.mark.parametrize("chunk", range(4))
def test_three_solvers_agree_on_200_generated_roadmaps(chunk):
    """exact, jax and pymdptoolbox agree to 1e-6 at every state and budget level."""
    features = {"hyp": 0, "stoch": 0, "any": 0, "price": 0}
    for r in ROADMAPS[chunk * 50 : (chunk + 1) * 50]:
        sols = _solve_all(r)
        ref = sols["exact"].values  # stored where the start can reach; the others: all
        kept = ref.stored()
        assert kept[sols["exact"].space.root].all()
        for name in ("jax", "mdptoolbox"):
            np.testing.assert_allclose(
                sols[name].values.dense()[kept],
                ref.dense()[kept],
                atol=1e-6,
                rtol=0,
                err_msg=f"{name} on {r.source}",
            )
        features["hyp"] += bool(r.hypotheses)
        features["stoch"] += any(e.cost.stochastic for e in r.experiments)
        features["any"] += any(len(c) > 1 for e in r.experiments for c in e.requires)
        features["price"] += r.compute_price > 0
    assert all(v > 0 for v in features.values()), features


def test_exact_matches_independent_brute_force():
    """A recursion over raw histories (no collapsing, no vectorisation) gives the same value."""
    for r in generated_roadmaps(60, max_nodes=7, levels=10):
        sol = solve(compile_roadmap(r))
        assert sol.root_value == pytest.approx(brute_force_value(r), abs=1e-9), r.source


def _serial(ps, cs, reward, price, budget=1000.0):
    exps = [{"id": f"s{i}", "p": p, "cost": c} for i, (p, c) in enumerate(zip(ps, cs, strict=True))]
    exps.append(
        {"id": "goal", "after": [e["id"] for e in exps], "p": 1.0, "cost": 0, "reward": reward}
    )
    return roadmap_from_dict(
        {"budget": budget, "resolution": 0.1, "compute_price": price, "experiments": exps}
    )


def _order_cost(order, ps, cs):
    total, alive = 0.0, 1.0
    for i in order:
        total += alive * cs[i]
        alive *= ps[i]
    return total


def test_serial_project_closed_form():
    """All-must-succeed, no budget limit: V = R prod(p) - price x min expected cost, and
    the minimum is the c/(1-p) order (the classical sequential-testing result)."""
    ps, cs = [0.5, 0.8, 0.3, 0.9], [2.0, 1.0, 4.0, 0.5]
    price, reward = 1.0, 200.0
    best = min(_order_cost(o, ps, cs) for o in itertools.permutations(range(4)))
    rule = sorted(range(4), key=lambda i: cs[i] / (1 - ps[i]))
    assert _order_cost(rule, ps, cs) == pytest.approx(best)
    sol = solve(compile_roadmap(_serial(ps, cs, reward, price)))
    assert sol.root_value == pytest.approx(reward * math.prod(ps) - price * best)
    assert sol.root_curves("least_cost")["value"][-1] == pytest.approx(sol.root_value)
    assert sol.start_value("least_cost").value == pytest.approx(sol.root_value)


def test_steinhardt_rule_is_not_optimal_here():
    """a: p=.1 c=10 ranks first by log(1/p)/c (0.230 > 0.223) but second by c/(1-p).
    a first costs 10 + 0.1*1 = 10.1 in expectation; b first costs 1 + 0.8*10 = 9."""
    sol = solve(compile_roadmap(_serial([0.1, 0.8], [10.0, 1.0], 1000.0, 1.0)))
    assert sol.root_value == pytest.approx(1000 * 0.08 - 9.0)
    stein = sol.start_value("steinhardt").value
    assert sol.root_value - stein == pytest.approx(1.1)
    assert sol.as_policy().action({}, 1000.0) == "s1"


def test_optimal_value_is_consistent_with_its_evaluation():
    for r in generated_roadmaps(30):
        sol = solve(compile_roadmap(r))
        ev = evaluate_policy(sol.problem, sol.space, sol.policy)
        kept = sol.values.stored()
        np.testing.assert_allclose(ev["value"][kept], sol.values.dense()[kept], atol=1e-9)
        # value = sum_k R_k P(reward k) - price x compute, at every state and level
        pr = sol.problem
        rebuilt = sum(pr.reward[j] * ev["p_reward"][k] for k, j in enumerate(ev["rewarded"]))
        rebuilt = rebuilt - pr.price_per_unit * ev["compute"]
        np.testing.assert_allclose(rebuilt[kept], sol.values.dense()[kept], atol=1e-8)
        assert ev["p_reward"].min() >= -1e-12 and ev["p_reward"].max() <= 1 + 1e-12


def test_forward_occupancy_matches_backward_evaluation():
    """The start state's numbers from one forward pass equal the backward tables there,
    for the optimal policy, every heuristic and the random policy, at every level."""
    for r in generated_roadmaps(40):
        sol = solve(compile_roadmap(r))
        pr, sp = sol.problem, sol.space
        for name in ("optimal", *HEURISTICS):
            table = sol.policy_table(name)
            full = evaluate_policy(pr, sp, table)
            curves = sol.root_curves(name)
            np.testing.assert_allclose(curves["value"], full["value"][sp.root], atol=1e-9)
            np.testing.assert_allclose(curves["p_reward"], full["p_reward"][:, sp.root], atol=1e-9)
            for b in {0, pr.levels // 2, pr.levels}:
                fw = start_value(pr, sp, table, level=b)
                assert fw.value == pytest.approx(full["value"][sp.root, b], abs=1e-9), r.source
                assert fw.compute == pytest.approx(full["compute"][sp.root, b], abs=1e-9)
                np.testing.assert_allclose(fw.p_reward, full["p_reward"][:, sp.root, b], atol=1e-9)
                assert np.all(fw.p_run >= -1e-12)
                assert np.all(fw.p_run <= 1 + 1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 7),
    seed=st.integers(0, 10_000),
    hyps=st.integers(0, 2),
    stoch=st.sampled_from([0.0, 0.5]),
    anyg=st.sampled_from([0.0, 0.6]),
)
def test_properties(n, seed, hyps, stoch, anyg):
    r = random_roadmap(
        n, seed=seed, hypotheses=hyps, stochastic_costs=stoch, any_groups=anyg, budget_levels=12
    )
    sol = solve(compile_roadmap(r))
    curve = sol.value_curve()
    assert curve.min() >= 0  # stopping is always allowed
    # Without a compute price more budget never hurts (one can always leave it unspent).
    assert np.all(np.diff(curve) >= -1e-9)
    for h in HEURISTICS:
        ev = evaluate_policy(sol.problem, sol.space, sol.policy_table(h), channels=("value",))
        kept = sol.values.stored()
        assert np.all(ev["value"][kept] <= sol.values.dense()[kept] + 1e-9), h


def test_simulation_agrees_with_exact_values():
    from derisk.estimators import resolve

    for name in examples():
        sol = solve(compile_roadmap(resolve(load_roadmap(example_path(name))).roadmap))
        for policy in ("optimal", "steinhardt", "random"):
            sim = simulate(sol, policy, episodes=20_000, seed=3)
            exact = sol.start_value(policy).value
            assert abs(sim.mean - exact) < 4 * sim.stderr + 1e-9, (name, policy)


def test_simulation_detects_a_wrong_value():
    """The agreement check has teeth: a perturbed problem's value is rejected."""
    r = load_roadmap(example_path("two-approaches"))
    sol = solve(compile_roadmap(r))
    sim = simulate(sol, episodes=20_000, seed=1)
    wrong = sol.root_value * 1.1
    assert abs(sim.mean - wrong) > 4 * sim.stderr


def test_state_limit_refuses_before_solving():
    r = random_roadmap(16, seed=1, density=0.1, budget_levels=100, rewards=16)
    pr = compile_roadmap(r)
    with pytest.raises(ProblemTooLarge) as exc:
        build_space(pr, SolveConfig(max_states=500))
    assert exc.value.states > 500 and "budget levels" in str(exc.value)
    with pytest.raises(ProblemTooLarge):
        build_space(pr, SolveConfig(max_memory_gb=1e-4))


def test_collapsing_merges_dead_states():
    """A serial project has exactly one state per set of successes (failure ends it)."""
    r = _serial([0.5] * 5, [1.0] * 5, 100.0, 0.0)
    sp = build_space(compile_roadmap(r))
    # subsets of the 5 steps that have all succeeded, plus the one terminal state
    assert sp.size == 2**5 + 1


def test_recorded_outcomes_change_the_plan():
    r = load_roadmap(example_path("moe-at-scale"))
    fresh = solve(compile_roadmap(r))
    after = solve(compile_roadmap(r, outcomes={"pilot": "failure"}, spent=40))
    assert after.root_value < fresh.root_value
    assert fresh.as_policy().value({"pilot": "failure"}, 1960) == pytest.approx(after.root_value)


def test_unknown_solver_and_bad_budget():
    pr = compile_roadmap(load_roadmap(example_path()))
    with pytest.raises(SolverError, match="unknown solver"):
        solve(pr, config=SolveConfig(solver="magic"))
    with pytest.raises(SolverError, match="budget"):
        compile_roadmap(load_roadmap(example_path()), budget=-1)


def test_toolbox_checks_are_linear_and_still_reject_bad_input():
    import mdptoolbox.util as util
    import scipy.sparse as sp

    from derisk.planner._toolbox import _patch_checks

    _patch_checks(util)
    big = sp.identity(200_000, format="csr")  # S^2 dense would be 40 GB
    assert util.isStochastic(big) and util.isNonNegative(big)
    bad = sp.csr_matrix(np.array([[0.5, 0.4], [0.0, 1.0]]))
    assert not util.isStochastic(bad)
    neg = sp.csr_matrix(np.array([[1.5, -0.5], [0.0, 1.0]]))
    assert util.isStochastic(neg) and not util.isNonNegative(neg)


def test_a_chain_past_64_experiments_is_solved_exactly():
    """Clause masks are Python ints past 63 nodes: a chain of 70, each node rewarded and
    needing the one before, the budget covering all. Its value is the closed form
    sum_k r_k prod_{j<=k} p_j (running on never loses: no price)."""
    n = 70
    ps = [0.9 + 0.001 * (i % 7) for i in range(n)]
    rs = [1.0 + i % 3 for i in range(n)]
    exps = [{"id": "e0", "p": ps[0], "cost": 1, "reward": rs[0]}]
    exps += [
        {"id": f"e{i}", "after": [f"e{i - 1}"], "p": ps[i], "cost": 1, "reward": rs[i]}
        for i in range(1, n)
    ]
    pr = compile_roadmap(roadmap_from_dict({"budget": n, "resolution": 1, "experiments": exps}))
    sol = solve(pr)
    assert sol.solver == "exact" and sol.space.size == n + 1
    expect = sum(r * math.prod(ps[: k + 1]) for k, r in enumerate(rs))
    assert sol.root_value == pytest.approx(expect, rel=1e-12)
