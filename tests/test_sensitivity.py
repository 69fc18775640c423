"""Sensitivity and EVPI against independent re-solves of edited roadmaps.

Every reference value here comes from editing the roadmap itself (dataclasses.replace
on an experiment or a hypothesis prior) and solving it afresh with `solve`: none goes
through the perturbation code under test.
"""

from dataclasses import replace

import numpy as np
import pytest

from derisk.graphs import Cost, random_roadmap, roadmap_from_dict
from derisk.planner import compile_roadmap, solve
from derisk.planner._sensitivity import evpi, sensitivity


def _edit(roadmap, node, param, branch, x):
    if param == "prior":
        return replace(roadmap, hypotheses={**roadmap.hypotheses, node: x})
    exps = []
    for e in roadmap.experiments:
        if e.id == node:
            if param == "cost":
                scale = x / e.cost.median
                p90 = None if e.cost.p90 is None else e.cost.p90 * scale
                e = replace(e, cost=Cost(median=x, p90=p90))
            elif branch is None:
                e = replace(e, p=x)
            else:
                key = "then" if branch == "then" else "otherwise"
                e = replace(e, p=replace(e.p, **{key: x}))
        exps.append(e)
    return replace(roadmap, experiments=tuple(exps))


def _resolve(roadmap, base_problem):
    """Independent solve at the base problem's budget and step."""
    sol = solve(
        compile_roadmap(
            roadmap,
            budget=base_problem.levels * base_problem.resolution + base_problem.surplus,
            resolution=base_problem.resolution,
        )
    )
    s, b = sol.space.root, sol.problem.start_budget
    a = int(sol.policy[s, b])
    return sol.root_value, (None if a < 0 else sol.problem.ids[a])


CASES = [
    random_roadmap(
        5 + seed % 3,
        seed=seed,
        hypotheses=seed % 3,
        stochastic_costs=0.4 if seed % 2 else 0.0,
        compute_price=0.3 if seed % 3 == 1 else 0.0,
        rewards=1 + seed % 2,
        budget_levels=25,
    )
    for seed in range(12)
]


@pytest.mark.parametrize("roadmap", CASES, ids=lambda r: r.source)
def test_probability_gradients_match_finite_differences(roadmap):
    sol = solve(compile_roadmap(roadmap))
    res = sensitivity(roadmap, sol)
    checked = 0
    for par in res.parameters:
        if par.param == "cost":
            continue
        h = 1e-6
        x0 = min(max(par.base, h), 1 - h)
        lo, _ = _resolve(_edit(roadmap, par.node, par.param, par.branch, x0 - h), sol.problem)
        hi, _ = _resolve(_edit(roadmap, par.node, par.param, par.branch, x0 + h), sol.problem)
        fd = (hi - lo) / (2 * h)
        # V* is convex and piecewise affine in each input; a kink inside [x0-h, x0+h]
        # would show as a gap between the one-sided slopes, which random inputs avoid.
        assert par.gradient == pytest.approx(fd, rel=1e-4, abs=1e-4), (par, fd)
        checked += 1
    assert checked >= 5


def test_cost_gradient_is_one_step_of_the_fixed_policy():
    """A serial project with a compute price and ample budget: raising a cost by one
    step changes the value by -price x P(it runs) per unit, and re-solving agrees."""
    r = roadmap_from_dict(
        {
            "name": "serial",
            "budget": 100,
            "resolution": 1,
            "compute_price": 0.5,
            "experiments": [
                {"id": "a", "cost": 4, "p": 0.6},
                {"id": "b", "cost": 2, "p": 0.7, "after": ["a"], "reward": 30},
            ],
        }
    )
    sol = solve(compile_roadmap(r))
    res = sensitivity(r, sol)
    grads = {(p.node, p.param): p.gradient for p in res.parameters}
    assert grads[("a", "cost")] == pytest.approx(-0.5 * 1.0)
    assert grads[("b", "cost")] == pytest.approx(-0.5 * 0.6)
    for node in ("a", "b"):
        base = r.experiment(node).cost.median
        v1, _ = _resolve(_edit(r, node, "cost", None, base + 1), sol.problem)
        assert (v1 - sol.root_value) / 1.0 == pytest.approx(grads[(node, "cost")])


@pytest.mark.parametrize("roadmap", CASES[:8], ids=lambda r: r.source)
def test_flip_points_match_independent_resolves(roadmap):
    sol = solve(compile_roadmap(roadmap))
    res = sensitivity(roadmap, sol)
    flips = 0
    for par in res.parameters:
        tol = 1e-3 if par.param != "cost" else sol.problem.resolution
        for flip, sign in ((par.flip_below, -1), (par.flip_above, +1)):
            if flip is None:
                continue
            flips += 1
            _, at = _resolve(_edit(roadmap, par.node, par.param, par.branch, flip), sol.problem)
            assert at != res.next, (par, flip)
            # unchanged on a grid from the base up to within tol of the flip point
            inner = flip - sign * tol
            for x in np.linspace(par.base, inner, 12):
                _, a = _resolve(_edit(roadmap, par.node, par.param, par.branch, x), sol.problem)
                assert a == res.next, (par, x)
    assert flips >= 1


def test_no_flip_means_unchanged_over_the_range():
    r = CASES[3]
    sol = solve(compile_roadmap(r))
    res = sensitivity(r, sol)
    for par in res.parameters:
        if par.param == "cost" or par.flip_above is not None:
            continue
        for x in np.linspace(par.base, 1.0, 7):
            _, a = _resolve(_edit(r, par.node, par.param, par.branch, x), sol.problem)
            assert a == res.next, (par, x)


def test_tornado_values_are_resolves_at_the_ends():
    r = CASES[5]
    sol = solve(compile_roadmap(r))
    res = sensitivity(r, sol, p_step=0.2, cost_factor=3.0)
    for par in res.parameters:
        if par.param == "cost":
            assert par.low == pytest.approx(par.base / 3) and par.high == pytest.approx(
                par.base * 3
            )
        else:
            assert par.low == pytest.approx(max(0.0, par.base - 0.2))
            assert par.high == pytest.approx(min(1.0, par.base + 0.2))
        for x, v in ((par.low, par.value_low), (par.high, par.value_high)):
            ref, _ = _resolve(_edit(r, par.node, par.param, par.branch, x), sol.problem)
            assert v == pytest.approx(ref, abs=1e-9), par
    swings = [p.swing for p in res.parameters]
    assert swings == sorted(swings, reverse=True)


# ------------------------------------------------------------------ EVPI by hand

PILOT = {
    "name": "pilot",
    "budget": 100,
    "resolution": 1,
    "compute_price": 0.2,
    "hypotheses": {"works": 0.5},
    "experiments": [
        {"id": "pilot", "cost": 5, "p": {"if": "works", "then": 0.9, "else": 0.2}},
        {"id": "big", "cost": 60, "p": {"if": "works", "then": 0.8, "else": 0.05}, "reward": 100},
        {"id": "side", "cost": 3, "p": 0.5, "reward": 4},
        {"id": "idle", "cost": 1, "p": 0.5},
    ],
}


def _value(d):
    return solve(compile_roadmap(roadmap_from_dict(d))).root_value


def test_evpi_of_a_hypothesis_by_conditioning():
    r = roadmap_from_dict(PILOT)
    sol = solve(compile_roadmap(r))
    v1 = _value({**PILOT, "hypotheses": {"works": 1.0}})
    v0 = _value({**PILOT, "hypotheses": {"works": 0.0}})
    expected = 0.5 * v1 + 0.5 * v0 - sol.root_value
    assert evpi(sol, hypothesis="works") == pytest.approx(expected, abs=1e-9)
    assert expected > 0


def test_evpi_of_an_experiment_by_conditioning():
    r = roadmap_from_dict(PILOT)
    sol = solve(compile_roadmap(r))
    # pilot's outcome revealed: Bayes on `works`, pilot then certain
    ps = 0.5 * 0.9 + 0.5 * 0.2
    post_s, post_f = 0.5 * 0.9 / ps, 0.5 * 0.1 / (1 - ps)

    def cond(prior, p):
        exps = [dict(e) for e in PILOT["experiments"]]
        exps[0]["p"] = p
        return _value({**PILOT, "hypotheses": {"works": prior}, "experiments": exps})

    expected = ps * cond(post_s, 1.0) + (1 - ps) * cond(post_f, 0.0) - sol.root_value
    assert evpi(sol, experiment="pilot") == pytest.approx(expected, abs=1e-9)
    # an independent experiment: its p set to 1 or 0
    exps1 = [dict(e) for e in PILOT["experiments"]]
    exps0 = [dict(e) for e in PILOT["experiments"]]
    exps1[2]["p"], exps0[2]["p"] = 1.0, 0.0
    side = (
        0.5 * _value({**PILOT, "experiments": exps1})
        + 0.5 * _value({**PILOT, "experiments": exps0})
        - sol.root_value
    )
    assert evpi(sol, experiment="side") == pytest.approx(side, abs=1e-9)


def test_evpi_is_zero_for_an_irrelevant_experiment_and_never_negative():
    r = roadmap_from_dict(PILOT)
    sol = solve(compile_roadmap(r))
    assert evpi(sol, experiment="idle") == 0.0
    for roadmap in CASES:
        s = solve(compile_roadmap(roadmap))
        res = sensitivity(roadmap, s)
        assert all(v >= 0 for v in res.evpi_experiments.values())
        assert all(v >= 0 for v in res.evpi_hypotheses.values())


def test_sensitivity_json_shape():
    r = roadmap_from_dict(PILOT)
    sol = solve(compile_roadmap(r))
    d = sensitivity(r, sol).as_dict()
    keys = {(p["node"], p["param"], p["branch"]) for p in d["parameters"]}
    assert ("pilot", "p", "then") in keys and ("pilot", "p", "else") in keys
    assert ("works", "prior", None) in keys and ("side", "p", None) in keys
    assert ("big", "cost", None) in keys
    assert set(d["evpi"]["experiments"]) == {"pilot", "big", "side", "idle"}
    assert set(d["evpi"]["hypotheses"]) == {"works"}
