"""The planning MDP: compile a roadmap, enumerate states, solve, evaluate, simulate."""

from derisk.planner._exact import evaluate_policy, rewarded_nodes
from derisk.planner._heuristics import HEURISTICS, heuristic_policy, heuristic_scores
from derisk.planner._problem import (
    DEAD,
    FAILED,
    SUCCESS,
    UNTRIED,
    PlanningProblem,
    compile_roadmap,
)
from derisk.planner._report import PlanReport, WhatIf, plan_report, policy_tree, whatif_report
from derisk.planner._simulate import SimulationResult, simulate
from derisk.planner._solve import (
    SOLVERS,
    Policy,
    Solution,
    SolveConfig,
    build_space,
    solve,
)
from derisk.planner._states import StateSpace, enumerate_states, estimate_bytes

__all__ = [
    "DEAD",
    "FAILED",
    "HEURISTICS",
    "SOLVERS",
    "SUCCESS",
    "UNTRIED",
    "PlanReport",
    "PlanningProblem",
    "Policy",
    "SimulationResult",
    "Solution",
    "SolveConfig",
    "StateSpace",
    "WhatIf",
    "build_space",
    "compile_roadmap",
    "enumerate_states",
    "estimate_bytes",
    "evaluate_policy",
    "heuristic_policy",
    "heuristic_scores",
    "plan_report",
    "policy_tree",
    "rewarded_nodes",
    "simulate",
    "solve",
    "whatif_report",
]
