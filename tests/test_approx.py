"""The approximate solver: its interval against exact values, its relaxation against brute
force, its policy evaluated exactly, the state encoding past 31 experiments, the CLI."""

import itertools
import warnings

import numpy as np
import pytest
from conftest import generated_roadmaps, run, run_json

from derisk.graphs import random_roadmap, roadmap_from_dict
from derisk.planner import (
    ApproxConfig,
    compile_roadmap,
    evaluate_policy,
    heuristic_policy,
    solve,
    solve_approx,
)
from derisk.planner._approx import (
    _Model,
    _Relaxation,
    _scenarios,
    brute_force_relaxation,
    canonical,
    heuristic_act,
    make_policy,
)
from derisk.planner._states import available, canonicalize, decode, encode, enumerate_states

FAST = ApproxConfig(episodes=300, scenarios=200, rollouts=8, penalty_rounds=3)


def _problems(count, max_nodes=8, levels=15):
    return [
        compile_roadmap(r) for r in generated_roadmaps(count, max_nodes=max_nodes, levels=levels)
    ]


def test_boolean_collapsing_matches_the_bit_mask_one():
    rng = np.random.default_rng(0)
    for pr in _problems(24, max_nodes=10):
        status = rng.integers(0, 4, size=(300, pr.n)).astype(np.int8)
        ref = canonicalize(pr, status)
        got, runnable = canonical(_Model.of(pr), status)
        assert np.array_equal(got, ref)
        assert np.array_equal(runnable, available(pr, ref))


def test_heuristics_pick_as_their_exact_tables():
    for pr in _problems(12):
        space = enumerate_states(pr)
        model = _Model.of(pr)
        L = pr.levels + 1
        s = np.repeat(np.arange(space.size), L)
        b = np.tile(np.arange(L), space.size)
        for name in ("steinhardt", "least_cost", "cheapest", "greedy"):
            table = heuristic_policy(name, pr, space)
            got = heuristic_act(model, name)(space.status[s], b)
            assert np.array_equal(got, table[s, b]), name


@pytest.mark.parametrize("n", [40, 70])
def test_state_codes_past_31_experiments(n):
    rng = np.random.default_rng(n)
    status = rng.integers(0, 4, size=(200, n)).astype(np.int8)
    codes = encode(status)
    assert np.array_equal(decode(codes, n), status)
    # equal codes exactly for equal rows; sorted codes binary-search back to themselves
    same = (status[:, None, :] == status[None, :, :]).all(axis=2)
    assert np.array_equal(codes[:, None] == codes[None, :], same)
    u = np.unique(codes)
    assert np.array_equal(u[np.searchsorted(u, codes)], codes)


def _padded(core: dict, extra: int) -> dict:
    """`core` plus `extra` experiments that can never matter (no reward, nothing needs
    them): collapsed away, so the optimum is the core's."""
    exps = list(core["experiments"]) + [
        {"id": f"pad{k}", "p": 0.5, "cost": 1} for k in range(extra)
    ]
    return {**core, "experiments": exps}


def test_exact_solver_past_31_experiments_matches_the_small_problem():
    core = {
        "name": "core",
        "budget": 12,
        "hypotheses": {"h": 0.4},
        "experiments": [
            {"id": "a", "p": {"if": "h", "then": 0.9, "else": 0.2}, "cost": 2},
            {"id": "b", "p": 0.7, "cost": 3},
            {"id": "c", "p": {"if": "h", "then": 0.8, "else": 0.3}, "cost": 4, "after": ["a"]},
            {"id": "d", "p": 0.6, "cost": {"median": 3, "p90": 6}, "after": ["b"], "reward": 5},
            {"id": "e", "p": 0.5, "cost": 2, "after": ["c", "d"], "reward": 20},
            {"id": "f", "p": 0.9, "cost": 1, "after": ["c"], "reward": 3},
        ],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = solve(compile_roadmap(roadmap_from_dict(core, source="<core>")))
        for extra in (30, 60):
            big = solve(compile_roadmap(roadmap_from_dict(_padded(core, extra), source="<p>")))
            assert big.problem.n == 6 + extra
            np.testing.assert_allclose(big.value_curve(), small.value_curve(), atol=1e-12)


def test_relaxation_matches_brute_force_per_scenario():
    rng = np.random.default_rng(1)
    for pr in _problems(10, max_nodes=7):
        model = _Model.of(pr)
        rel = _Relaxation(model)
        cfg, succ, cost = _scenarios(model, 15, rng)
        for s in range(len(cfg)):
            lam = rng.normal(0, 2, size=pr.n) * (s % 2)  # every other one with penalties
            pc = pr.p_table[:, cfg[s]]
            got, proven, _ = rel.solve(succ[s], cost[s], lam, pc, 5.0)
            assert proven
            ref = brute_force_relaxation(model, succ[s], cost[s], lam, pc)
            assert got == pytest.approx(ref, abs=1e-7)


def _exact_relaxation_mean(pr) -> float:
    """E over every scenario (configuration, outcomes, cost bins) of the best plan that
    knows them all, each by brute force: the upper bound with no sampling at all."""
    model = _Model.of(pr)
    total = 0.0
    bins = [range(len(c)) for c in pr.cost_units]
    for c, wc in enumerate(pr.prior):
        pc = pr.p_table[:, c]
        for bits in itertools.product((0, 1), repeat=pr.n):
            s = np.array(bits, dtype=bool)
            ws = np.prod(np.where(s, pc, 1 - pc))
            for ks in itertools.product(*bins):
                cost = np.array([pr.cost_units[i][k] for i, k in enumerate(ks)])
                wk = np.prod([pr.cost_probs[i][k] for i, k in enumerate(ks)])
                w = wc * ws * wk
                if w > 0:
                    total += w * brute_force_relaxation(model, s, cost, np.zeros(pr.n), pc)
    return total


@pytest.mark.parametrize("seed", range(4))
def test_upper_bound_against_brute_force_on_tiny_roadmaps(seed):
    r = random_roadmap(
        4, seed=seed, density=0.4, rewards=2, hypotheses=seed % 2,
        stochastic_costs=0.3 * (seed % 3 == 2), budget_levels=8, budget_fraction=0.5,
    )  # fmt: skip
    pr = compile_roadmap(r, cost_bins=2)
    exact = solve(pr).root_value
    expected = _exact_relaxation_mean(pr)
    assert expected >= exact - 1e-9  # knowing the future never hurts
    sol = solve_approx(pr, config=ApproxConfig(episodes=300, scenarios=2000, penalty_rounds=0))
    # the sampled relaxation estimates the brute-force mean (no penalties: the same problem)
    assert abs(sol.perfect_information - expected) <= 4 * sol.relaxation_se + 1e-9
    assert sol.lower <= exact + 1e-9 <= sol.upper + 2e-9


@pytest.mark.parametrize("chunk", range(3))
def test_bounds_contain_the_exact_value(chunk):
    for pr in _problems(24, max_nodes=9)[chunk::3]:
        exact = solve(pr).root_value
        sol = solve_approx(pr, config=FAST)
        assert sol.lower <= exact + 1e-9, (sol.bounds, exact)
        assert exact <= sol.upper + 1e-9, (sol.bounds, exact)
        if sol.exact_lower:  # the returned policy's value is exact: never above optimal
            assert sol.policy_value <= exact + 1e-9


def test_policy_value_is_its_exact_value():
    """The returned policy, tabulated at every (state, budget) and evaluated by the
    backward pass, is worth what the solver says (it used a forward pass)."""
    for pr in _problems(8, max_nodes=8):
        sol = solve_approx(pr, config=FAST)
        assert sol.exact_lower
        space = enumerate_states(pr)
        L = pr.levels + 1
        s = np.repeat(np.arange(space.size), L)
        b = np.tile(np.arange(L), space.size)
        table = sol.policy.actions(space.status[s], b).reshape(space.size, L).astype(np.int8)
        ev = evaluate_policy(pr, space, table, state=space.root, channels=("value",))
        assert ev["value"][pr.start_budget] == pytest.approx(sol.policy_value, abs=1e-9)
        # and the policy is a fixed function of the state: asked twice, the same answer
        again = sol.policy.actions(space.status[s], b)
        assert np.array_equal(again, table.reshape(-1))


def test_rollout_is_never_below_its_base_heuristic_where_exact():
    for pr in _problems(8, max_nodes=9):
        sol = solve_approx(pr, config=FAST)
        exact_solution = solve(pr)
        best = max(exact_solution.start_value(h).value for h in ("steinhardt", "least_cost",
                                                                 "cheapest", "greedy"))  # fmt: skip
        assert sol.policy_value >= sol.base_value - 1e-9
        assert sol.policy_value <= exact_solution.root_value + 1e-9
        assert sol.base_value <= best + 1e-9


def test_simulated_lower_bound_when_not_exact():
    pr = compile_roadmap(random_roadmap(10, seed=3, density=0.3, rewards=2, budget_levels=30))
    exact = solve(pr).root_value
    cfg = ApproxConfig(episodes=600, scenarios=300, rollouts=8, penalty_rounds=0, exact_pairs=1)
    sol = solve_approx(pr, config=cfg)
    assert not sol.exact_lower and sol.policy_se > 0
    assert sol.lower <= exact <= sol.upper


def test_policy_answers_outcomes_and_budget():
    pr = compile_roadmap(random_roadmap(6, seed=2, rewards=2, budget_levels=20))
    sol = solve_approx(pr, config=FAST)
    first = sol.action({}, budget=pr.start_budget * pr.resolution)
    a, _, _ = sol.next_action()
    assert first == (None if a < 0 else pr.ids[a])
    assert sol.action({}, budget=0.0) is None  # nothing is affordable
    pol = make_policy(pr, base="greedy", config=FAST)
    st = np.repeat(pr.start_status[None, :].astype(np.int8), 3, axis=0)
    assert len(set(pol.actions(st, np.full(3, pr.start_budget)).tolist())) == 1


def test_bad_config_is_refused():
    pr = compile_roadmap(random_roadmap(4, seed=0))
    with pytest.raises(ValueError, match="episodes"):
        solve_approx(pr, config=ApproxConfig(episodes=1))
    with pytest.raises(ValueError, match="z"):
        solve_approx(pr, config=ApproxConfig(z=float("nan")))


# ---------------------------------------------------------------- command line


def test_plan_json_has_bounds_and_solver(tmp_path):
    d = run_json("plan", "--solver", "approx")
    assert d["solver"] == "approx"
    lo, hi = d["bounds"]
    exact = run_json("plan", "--solver", "exact")
    assert exact["solver"] == "exact" and exact["bounds"] == [exact["value"]] * 2
    assert lo <= exact["value"] + 1e-9 <= hi + 2e-9
    assert d["next"] is not None and d["tree"]["action"] == d["next"]
    # the tree is the returned policy: its root value is that policy's (the lower end)
    assert d["tree"]["value"] == d["value"] == lo


def test_auto_falls_back_to_approx_and_says_so():
    res = run("plan", "--max-states", "3", "--json")
    assert res.exit_code == 0, res.output
    import json

    d = json.loads(res.stdout)
    assert d["solver"] == "approx"
    assert "approximate solver" in res.stderr
    assert run_json("plan")["solver"] == "exact"  # the guard admits it: exact


def test_exact_refusal_names_the_approx_solver():
    res = run("plan", "--solver", "exact", "--max-states", "3")
    assert res.exit_code == 2
    assert "--solver approx" in res.stderr


def test_bad_solver_is_a_user_error():
    res = run("plan", "--solver", "fast")
    assert res.exit_code == 2
    assert "--solver" in res.stderr and "approx" in res.stderr


def test_simulate_and_whatif_with_approx():
    d = run_json("simulate", "--solver", "approx", "-n", "400")
    assert d["solver"] == "approx" and d["policies"][0]["policy"] == "policy"
    assert d["policies"][0]["in_bounds"]
    from derisk.graphs import example_path

    w = run_json("whatif", str(example_path()), "--solver", "approx", "--rows", "2")
    assert w["solver"] == "approx" and len(w["bounds"]) == len(w["budgets"]) == 2
    for (lo, hi), v in zip(w["bounds"], w["value"], strict=True):
        assert lo <= v + 1e-9 and lo <= hi + 1e-9
