"""Compiling a roadmap into budget units: overflow, level limits, the automatic step."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derisk.errors import DeriskWarning, SolverError
from derisk.graphs import (
    MAX_AUTO_LEVELS,
    MAX_LEVELS,
    Cost,
    choose_resolution,
    load_roadmap,
    roadmap_from_dict,
)
from derisk.planner import compile_roadmap, plan_report, solve


def quiet(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return roadmap_from_dict(data)


def test_a_cost_beyond_the_budget_is_unaffordable_whatever_its_size():
    """budget 100 in steps of 1, a cost of 1e19 steps: it used to wrap around int64 to a
    cost of 0 and be recommended; it must be unaffordable and the value 0."""
    r = quiet(
        {
            "budget": 100,
            "resolution": 1,
            "experiments": [{"id": "x", "cost": 1e19, "p": 0.9, "reward": 10}],
        }
    )
    pr = compile_roadmap(r)
    assert pr.levels == 100
    assert pr.min_cost[0] > pr.levels  # unaffordable at every budget level
    sol = solve(pr)
    assert sol.root_value == 0.0
    assert np.all(sol.value_curve() == 0.0)
    assert np.all(sol.policy[sol.space.root] == -1)  # stop, never run x


@pytest.mark.parametrize("cost", [9.3e18, 1e19, 1e300, 1.7e308])
def test_huge_costs_clamp_to_more_than_the_budget(cost):
    pr = compile_roadmap(
        quiet(
            {
                "budget": 100,
                "resolution": 1,
                "experiments": [
                    {"id": "x", "cost": cost, "p": 0.9, "reward": 10},
                    {"id": "y", "cost": {"median": 50, "p90": cost}, "p": 0.9, "reward": 10},
                    {"id": "z", "cost": 10, "p": 0.5, "reward": 1},
                ],
            }
        )
    )
    assert pr.cost_units[0].tolist() == [101]
    assert pr.cost_units[1].max() == 101  # its tail clamps too
    assert pr.cost_units[2].tolist() == [10]
    sol = solve(pr)
    q = sol.q_values()
    assert np.isnan(q[0])  # x cannot be started
    assert sol.policy[sol.space.root, pr.start_budget] != 0


def test_cost_levels_never_wrap_without_a_cap():
    units, _ = Cost(median=1e300).levels(1e-10)
    assert units[0] > 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"resolution": 1e-300}, "--resolution"),
        ({"resolution": float("nan")}, "--resolution"),
        ({"budget": float("inf")}, "--budget"),
    ],
)
def test_extreme_level_counts_are_refused(kwargs, field):
    r = quiet({"budget": 100, "experiments": [{"id": "x", "cost": 10, "p": 0.5, "reward": 1}]})
    with pytest.raises(SolverError, match=field):
        compile_roadmap(r, **kwargs)


def test_budget_beyond_what_can_be_spent_plans_as_enough():
    """A what-if budget far above every cost together changes nothing: same value, same
    step (not a step coarsened until cheap runs round up, or down to free), and the
    budget left is reported whole."""
    d = {
        "budget": 100,
        "experiments": [
            {"id": "a", "cost": 3, "p": 0.5},
            {"id": "b", "cost": {"median": 20, "p90": 30}, "p": 0.6, "after": ["a"], "reward": 5},
        ],
    }
    base = solve(compile_roadmap(quiet(d), resolution=1.0))
    for budget in (1e6, 1e300):
        auto = compile_roadmap(quiet(d), budget=budget)
        assert auto.levels <= 2000
        assert auto.cost_units[0][0] * auto.resolution <= 3 * 1.05  # a's 3 within 5%
        pr = compile_roadmap(quiet(d), budget=budget, resolution=1.0)
        assert pr.levels <= 100
        sol = solve(pr)
        assert sol.root_value == pytest.approx(base.root_value)
        assert plan_report(sol).budget_left == pytest.approx(budget)


def test_spent_is_clipped_and_must_be_finite():
    r = quiet({"budget": 100, "experiments": [{"id": "x", "cost": 10, "p": 0.5, "reward": 1}]})
    assert compile_roadmap(r, spent=1e308).start_budget == 0
    with pytest.raises(SolverError, match="finite"):
        compile_roadmap(r, spent=float("inf"))


def test_gpu_days_budget_does_not_inflate_a_gpu_hour_cost(tmp_path):
    """The reported case: a budget in gpu_days, an experiment of 120 GPU-h; the old rule
    (budget / 200) planned it as 360 GPU-h."""
    p = tmp_path / "r.yaml"
    p.write_text(
        "budget: 300 gpu_days\n"
        "experiments:\n"
        "  - {id: a, cost: 120 gpu_hours, p: 0.5, reward: 1}\n"
        "  - {id: b, cost: {median: 2 gpu_days, p90: 3 gpu_days}, p: 0.5, reward: 1}\n"
    )
    r = load_roadmap(p)
    assert r.budget == 7200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = r.effective_resolution()
    assert r.budget / res <= MAX_AUTO_LEVELS
    units, _ = r.experiment("a").cost.levels(res)
    assert units[0] * res <= 120 * 1.05
    p.write_text("budget: 30 gpu_days\nexperiments: [{id: a, cost: 120 GPU-h, p: 1, reward: 1}]")
    r = load_roadmap(p)
    assert r.effective_resolution() in (1, 2, 2.5, 5, 10, 20)  # a nice step, 120 exact


def test_a_cost_the_cap_cannot_keep_within_5_percent_is_warned_about():
    r = quiet(
        {
            "budget": "3000 gpu_days",
            "experiments": [
                {"id": "big", "cost": "120 gpu_hours", "p": 0.5, "reward": 1},
                {"id": "tiny", "cost": "0.5 gpu_days", "p": 0.5, "reward": 1},
            ],
        }
    )
    with pytest.warns(DeriskWarning) as rec:
        res = r.effective_resolution()
    msg = str(rec[0].message)
    assert "`tiny` costing 12 GPU-h plans as" in msg and "--resolution" in msg
    assert r.budget / res <= MAX_AUTO_LEVELS


def test_nice_steps_are_preferred():
    choice = choose_resolution(2000.0, [("a", Cost(median=40.0)), ("b", Cost(median=300.0))])
    assert choice.step in (1, 2, 2.5, 5, 10, 20) and choice.inflation == 0


def inflation(res: float, cost: Cost, budget: float) -> float:
    """Worst relative rounding error of a cost (or median), and of a stochastic cost's
    mean over its bins within the budget, each bin rounded up as `Cost.levels` does."""

    def rounded(v):
        return Cost(median=float(v)).levels(res)[0][0] * res

    worst = 0.0
    if 0 < cost.median <= budget:
        worst = abs(rounded(cost.median) - cost.median) / cost.median
    if cost.stochastic:
        values, probs = cost.values()
        keep = values <= budget
        if keep.any():
            mean = values[keep] @ probs[keep]
            up = np.array([rounded(v) for v in values[keep]]) @ probs[keep]
            worst = max(worst, abs(up - mean) / mean)
    return worst


costs = st.one_of(
    st.floats(1e-3, 1e6, allow_nan=False).map(lambda m: Cost(median=m)),
    st.integers(1, 10_000).map(lambda m: Cost(median=float(m))),
    st.tuples(st.floats(1e-2, 1e5), st.floats(1.01, 5)).map(
        lambda t: Cost(median=t[0], p90=t[0] * t[1])
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    budget=st.one_of(st.floats(1, 1e7), st.integers(1, 100_000).map(float)),
    experiment_costs=st.lists(costs, min_size=1, max_size=8),
)
def test_automatic_step_inflates_no_cost_beyond_5_percent_unless_it_warns(budget, experiment_costs):
    r = quiet(
        {
            "budget": budget,
            "experiments": [
                {"id": f"e{i}", "cost": {"median": c.median, "p90": c.p90} if c.p90 else c.median}
                | {"p": 0.5, "reward": 1}
                for i, c in enumerate(experiment_costs)
            ],
        }
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = r.effective_resolution()
    warned = [w for w in caught if issubclass(w.category, DeriskWarning)]
    assert math.isfinite(res) and res > 0
    assert r.budget / res <= MAX_AUTO_LEVELS * (1 + 1e-9)
    assert r.budget / res <= MAX_LEVELS
    if not warned:
        for e in r.experiments:
            assert inflation(res, e.cost, r.budget) <= 0.05 + 1e-9, (e.id, e.cost, res)
        # the budget loses at most 5% to rounding down
        assert math.floor(r.budget / res + 1e-9) * res >= 0.95 * r.budget - 1e-9
    else:
        assert "--resolution" in str(warned[0].message) or "smaller budget" in str(
            warned[0].message
        )
