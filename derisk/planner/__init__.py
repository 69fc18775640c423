"""The planning MDP: compile a roadmap, enumerate states, solve, evaluate, simulate."""

from derisk.planner._approx import (
    ApproxConfig,
    ApproxSimulation,
    ApproxSolution,
    approx_curve,
    simulate_approx,
    solve_approx,
)
from derisk.planner._approx_report import approx_plan_report
from derisk.planner._evaluate import StartValue, evaluate_policy, rewarded_nodes, start_value
from derisk.planner._explain import Explanation, explain, hypothesis_posteriors
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
from derisk.planner._sensitivity import (
    Parameter,
    Sensitivity,
    evpi,
    sensitivity,
    sensitivity_steps,
)
from derisk.planner._simulate import (
    PolicyCheck,
    SimulationCheck,
    SimulationResult,
    check_simulation,
    simulate,
)
from derisk.planner._solve import (
    SOLVERS,
    Policy,
    Solution,
    SolveConfig,
    build_space,
    solve,
)
from derisk.planner._states import StateSpace, config_posterior, enumerate_states, estimate_bytes
from derisk.planner._table import Table, reachable_top

__all__ = [
    "ApproxConfig",
    "ApproxSimulation",
    "ApproxSolution",
    "approx_curve",
    "simulate_approx",
    "approx_plan_report",
    "solve_approx",
    "Explanation",
    "Parameter",
    "Sensitivity",
    "evpi",
    "explain",
    "hypothesis_posteriors",
    "sensitivity",
    "sensitivity_steps",
    "DEAD",
    "FAILED",
    "HEURISTICS",
    "SOLVERS",
    "SUCCESS",
    "UNTRIED",
    "PlanReport",
    "PlanningProblem",
    "Policy",
    "PolicyCheck",
    "SimulationCheck",
    "SimulationResult",
    "Solution",
    "SolveConfig",
    "StartValue",
    "StateSpace",
    "Table",
    "WhatIf",
    "build_space",
    "check_simulation",
    "compile_roadmap",
    "config_posterior",
    "enumerate_states",
    "estimate_bytes",
    "reachable_top",
    "evaluate_policy",
    "heuristic_policy",
    "heuristic_scores",
    "plan_report",
    "policy_tree",
    "rewarded_nodes",
    "simulate",
    "solve",
    "start_value",
    "whatif_report",
]
