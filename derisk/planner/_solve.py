"""One entry point for every solver, and the result and policy objects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from derisk.errors import SolverError
from derisk.planner._evaluate import StartValue, evaluate_policy, rewarded_nodes, start_value
from derisk.planner._exact import solve_exact
from derisk.planner._heuristics import HEURISTICS, heuristic_policy
from derisk.planner._problem import DEAD, FAILED, SUCCESS, UNTRIED, PlanningProblem
from derisk.planner._states import (
    StateSpace,
    canonicalize,
    encode,
    enumerate_states,
    resident_bytes,
)
from derisk.planner._table import Table

SOLVERS = ("exact", "jax", "mdptoolbox")


@dataclass(frozen=True, kw_only=True)
class SolveConfig:
    """How to solve. CLI flags map one to one onto these fields."""

    solver: str = "exact"
    max_states: int = 2_000_000  # reachable status-states before we refuse
    max_memory_gb: float = 8.0  # estimated peak memory before we refuse


@dataclass(frozen=True, eq=False)
class Solution:
    """The solved MDP: optimal values and policy at every state and budget level.

    values: (S, L) optimal expected reward minus price x compute; policy: (S, L) int8,
    the node to run (-1 = stop); both `Table`s, which the exact solver stores only at
    the budget levels each state can be entered with from the start. Index
    [space.root, b] is the start state with b budget units left.
    """

    problem: PlanningProblem
    space: StateSpace
    values: Table
    policy: Table
    solver: str
    seconds: float
    iterations: int = 0
    success: bool = True
    message: str = "solved"
    _eval_cache: dict = field(default_factory=dict, repr=False)
    _table_cache: dict = field(default_factory=dict, repr=False)

    @property
    def root_value(self) -> float:
        return float(self.values[self.space.root, self.problem.start_budget])

    def value_curve(self) -> np.ndarray:
        """(L,) optimal value at the start state for every budget level."""
        return self.values[self.space.root]

    def q_values(self, state: int | None = None, level: int | None = None) -> np.ndarray:
        """(n,) value of running each node now then acting optimally; nan if not runnable."""
        s = self.space.root if state is None else state
        b = self.problem.start_budget if level is None else level
        from derisk.planner._backup import action_value

        out = np.full(self.problem.n, np.nan)
        for i in np.flatnonzero(self.space.avail[s]):
            d = self.space.succ_d[s, i]
            q = action_value(
                self.problem,
                int(i),
                self.space.p[[s], i],
                self.values[[self.space.succ_s[s, i]]],
                self.values[[self.space.succ_f[s, i]]],
                self.values[[d], 0] if d >= 0 else None,
                gain=self.problem.reward[i],
                spend_weight=-self.problem.price_per_unit,
            )[0, b]
            if np.isfinite(q):
                out[i] = q
        return out

    def start_value(self, policy: str = "optimal") -> StartValue:
        """Exact value, compute, P(reward) and P(run) of a policy from the planning start.

        One forward pass of the start state's occupancy (cached per policy).
        """
        key = ("start", policy)
        if key not in self._eval_cache:
            table = self.policy_table(policy)
            self._eval_cache[key] = start_value(
                self.problem, self.space, table, top=self.values.top
            )
        return self._eval_cache[key]

    def root_curves(self, policy: str = "optimal", progress=None) -> dict:
        """(L,) value, compute and (K, L) P(reward) of a policy from the start state,
        for every budget level (backward passes, one (S, L) array at a time).
        `progress(1)` after each pass."""
        key = ("curves", policy)
        if key not in self._eval_cache:
            table = self.policy_table(policy)
            channels = ("compute", "p_reward")
            if policy != "optimal":  # the optimal policy's value is the solution itself
                channels = ("value", *channels)
            ev = evaluate_policy(
                self.problem,
                self.space,
                table,
                state=self.space.root,
                channels=channels,
                top=self.values.top,  # the start's row reads no cell past them
                progress=progress,
            )
            if policy == "optimal":
                ev["value"] = self.values[self.space.root].copy()
            self._eval_cache[key] = ev
        return self._eval_cache[key]

    def policy_table(self, policy: str = "optimal") -> Table | np.ndarray | None:
        """(S, L) int8 table of a policy (None for "random"), built once per solution."""
        if policy == "optimal":
            return self.policy
        if policy not in HEURISTICS:
            raise ValueError(f"unknown policy {policy!r}; expected optimal or {HEURISTICS}")
        if policy not in self._table_cache:
            self._table_cache[policy] = heuristic_policy(policy, self.problem, self.space)
        return self._table_cache[policy]

    def as_policy(self) -> Policy:
        return Policy(self)


@dataclass(frozen=True)
class Policy:
    """The optimal policy, queryable at any state: outcomes so far and budget left."""

    solution: Solution

    def locate(self, outcomes: dict[str, str], budget: float) -> tuple[int, int]:
        pr = self.solution.problem
        status = np.full(pr.n, UNTRIED, dtype=np.int8)
        for eid, out in outcomes.items():
            status[pr.ids.index(eid)] = {"success": SUCCESS, "failure": FAILED, "cut": DEAD}[out]
        code = encode(canonicalize(pr, status[None, :]))
        try:
            s = int(self.solution.space.index(code)[0])
        except KeyError:
            raise ValueError(
                "this history cannot happen from the planning start state "
                "(a prerequisite was skipped?)"
            ) from None
        b = min(pr.level_of(budget), pr.levels)
        top = int(self.solution.policy.top[s])
        if b > top:
            # Past every cost still possible from here the values stop changing, so a
            # larger budget reads the top stored level; short of that, this much budget
            # cannot be left after this history.
            untried = np.flatnonzero(self.solution.space.status[s] == UNTRIED)
            if top < sum(int(pr.cost_units[i][-1]) for i in untried):
                raise ValueError(
                    f"this history spends at least {(pr.levels - top) * pr.resolution:g} "
                    f"of the planned {pr.levels * pr.resolution + pr.surplus:g}, so at "
                    f"most {top * pr.resolution + pr.surplus:g} can be left, not {budget:g}"
                )
            b = top
        return s, b

    def action(self, outcomes: dict[str, str], budget: float) -> str | None:
        """Id of the experiment to run next, or None to stop."""
        s, b = self.locate(outcomes, budget)
        a = int(self.solution.policy[s, b])
        return None if a < 0 else self.solution.problem.ids[a]

    def value(self, outcomes: dict[str, str], budget: float) -> float:
        s, b = self.locate(outcomes, budget)
        return float(self.solution.values[s, b])


def build_space(
    problem: PlanningProblem, config: SolveConfig = SolveConfig(), progress=None
) -> StateSpace:
    """Count (and keep) the reachable states, refusing past the configured limits.

    The memory limit is for the whole process: what it already holds (the interpreter,
    numpy, the roadmap) is taken off before the planner's arrays are counted.
    `progress(k)`: k more states found (one call per layer).
    """
    if not (np.isfinite(config.max_memory_gb) and config.max_memory_gb > 0):
        raise SolverError(f"max_memory_gb must be a positive number, got {config.max_memory_gb}")
    if config.max_states < 1:
        raise SolverError(f"max_states must be at least 1, got {config.max_states}")
    limit = int(min(config.max_memory_gb, 2.0**20) * 2**30)  # past 1 PiB: no limit
    return enumerate_states(
        problem,
        max_states=config.max_states,
        max_bytes=limit - resident_bytes(),
        limit_bytes=limit,
        progress=progress,
    )


def solve(
    problem: PlanningProblem,
    *,
    config: SolveConfig = SolveConfig(),
    space: StateSpace | None = None,
    progress=None,
) -> Solution:
    """Solve the planning MDP with the configured solver.

    >>> from derisk.graphs import random_roadmap
    >>> from derisk.planner import compile_roadmap, solve
    >>> sol = solve(compile_roadmap(random_roadmap(4, seed=0)))
    >>> sol.root_value >= 0
    True
    """
    if config.solver not in SOLVERS:
        raise SolverError(f"unknown solver {config.solver!r}; expected one of {SOLVERS}")
    t0 = time.perf_counter()
    if space is None:
        space = build_space(problem, config)
    iterations = 1
    if config.solver == "exact":
        V, pol = solve_exact(problem, space, progress)
    elif config.solver == "jax":
        from derisk.planner._jax import solve_jax

        V, pol, iterations = solve_jax(problem, space, progress)
        V, pol = Table.full(V, np.nan), Table.full(pol, -1)
    else:
        from derisk.planner._toolbox import solve_toolbox

        V, pol, iterations = solve_toolbox(problem, space, progress)
        V, pol = Table.full(V, np.nan), Table.full(pol, -1)
    return Solution(
        problem=problem,
        space=space,
        values=V,
        policy=pol,
        solver=config.solver,
        seconds=time.perf_counter() - t0,
        iterations=iterations,
    )


__all__ = ["SOLVERS", "Policy", "SolveConfig", "Solution", "build_space", "rewarded_nodes", "solve"]
