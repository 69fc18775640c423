"""Approximate solver benchmark: certified interval, time and memory, against exact.

Each case is a generated roadmap (`derisk.graphs.random_roadmap`), solved in its own
subprocess (so that its peak memory is its own):

- where the exact solver can do it (the planner benchmark's cases A-F), the exact value
  and the best heuristic's exact value are computed in the same process, and we check
  that the interval contains the exact value and how far the returned policy is from it;
- the 40- and 100-experiment cases are beyond the exact solver; we report the interval,
  its gap (upper - lower, as a share of upper) and the time.

Usage:

    python benchmarks/approx.py                  # every case, table on stdout
    python benchmarks/approx.py --only A40-1     # one case, JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

# name: (nodes, levels, rewards, density, hypotheses, stochastic fraction, seed)
EXACT_CASES = {
    "A": (6, 50, 1, 0.3, 1, 0.3, 1),
    "B": (10, 100, 2, 0.3, 1, 0.3, 1),
    "C": (12, 100, 4, 0.2, 2, 0.3, 1),
    "D": (16, 200, 6, 0.15, 1, 0.2, 1),
    "D2": (18, 200, 18, 0.15, 0, 0.0, 1),
    "E": (20, 200, 20, 0.1, 0, 0.0, 1),
    "F": (24, 200, 24, 0.05, 0, 0.0, 2),
}
LARGE_CASES = {
    "A40-1": (40, 200, 8, 0.1, 1, 0.2, 1),
    "A40-2": (40, 200, 8, 0.1, 0, 0.2, 2),
    "A40-3": (40, 200, 12, 0.08, 2, 0.0, 3),
    "A100-1": (100, 200, 20, 0.03, 2, 0.2, 1),
    "A100-2": (100, 200, 30, 0.03, 0, 0.0, 2),
}
CASES = {**EXACT_CASES, **LARGE_CASES}


def roadmap_for(name):
    from derisk.graphs import random_roadmap

    n, levels, rewards, density, hyps, stoch, seed = CASES[name]
    return random_roadmap(
        n,
        seed=seed,
        density=density,
        rewards=rewards,
        hypotheses=hyps,
        stochastic_costs=stoch,
        budget_levels=levels,
        budget_fraction=0.6,
    )


def run_case(name: str) -> dict:
    from derisk.planner import HEURISTICS, SolveConfig, compile_roadmap, solve, solve_approx

    pr = compile_roadmap(roadmap_for(name))
    out = {"case": name, "nodes": pr.n, "levels": pr.levels + 1}
    t0 = time.perf_counter()
    sol = solve_approx(pr)
    out["approx_s"] = time.perf_counter() - t0
    out["approx_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    out.update(
        lower=sol.lower,
        upper=sol.upper,
        gap_pct=100 * sol.gap / abs(sol.upper) if sol.upper else 0.0,
        policy=("rollout/" if sol.policy.use_rollout else "") + sol.base,
        policy_value=sol.policy_value,
        policy_se=sol.policy_se,
        policy_exact=sol.exact_lower,
        relaxation=sol.relaxation,
        relaxation_se=sol.relaxation_se,
        perfect_information=sol.perfect_information,
        heuristics={k: list(v) for k, v in sol.heuristics.items()},
        timings=sol.timings,
    )
    if name in EXACT_CASES:
        t0 = time.perf_counter()
        ex = solve(pr, config=SolveConfig(max_states=5_000_000, max_memory_gb=16))
        out["exact_s"] = time.perf_counter() - t0
        out["exact"] = ex.root_value
        out["states"] = ex.space.size
        best = max((h for h in HEURISTICS if h != "random"), key=lambda h: ex.start_value(h).value)
        out["best_heuristic"] = best
        out["best_heuristic_exact"] = ex.start_value(best).value
        out["contains"] = bool(sol.lower <= ex.root_value + 1e-9 <= sol.upper + 2e-9)
        out["policy_regret_pct"] = (
            100 * (ex.root_value - sol.policy_value) / abs(ex.root_value) if ex.root_value else 0.0
        )
        out["heuristic_regret_pct"] = (
            100 * (ex.root_value - out["best_heuristic_exact"]) / abs(ex.root_value)
            if ex.root_value
            else 0.0
        )
    out["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def fmt(x, digits=4):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return f"{x:,}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run one case in this process and print JSON")
    ap.add_argument("--cases", nargs="*", default=list(CASES), help="cases to run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--table", help="print the table of a saved --json run")
    args = ap.parse_args()
    if args.only:
        print(json.dumps(run_case(args.only)))
        return
    if args.table:
        with open(args.table) as f:
            print_table(json.load(f))
        return
    rows = []
    for name in args.cases:
        proc = subprocess.run(
            [sys.executable, __file__, "--only", name],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"case {name} failed")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"case {name} done: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_table(rows)


def print_table(rows) -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    head = (
        "case", "nodes", "states", "exact", "best heuristic (exact)", "interval", "gap",
        "contains", "policy", "policy value", "policy regret", "heuristic regret",
        "approx s", "exact s", "peak GB",
    )  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        pv = fmt(r["policy_value"]) + ("" if r["policy_exact"] else f" +/- {r['policy_se']:.2g}")
        print(
            "| "
            + " | ".join(
                [
                    r["case"],
                    str(r["nodes"]),
                    fmt(r.get("states")),
                    fmt(r.get("exact")),
                    f"{r['best_heuristic']} {fmt(r['best_heuristic_exact'])}"
                    if "exact" in r
                    else "-",
                    f"[{fmt(r['lower'])}, {fmt(r['upper'])}]",
                    f"{r['gap_pct']:.2f}%",
                    ("yes" if r["contains"] else "NO") if "exact" in r else "-",
                    r["policy"],
                    pv,
                    f"{r['policy_regret_pct']:.2f}%" if "exact" in r else "-",
                    f"{r['heuristic_regret_pct']:.2f}%" if "exact" in r else "-",
                    f"{r['approx_s']:.1f}",
                    fmt(r.get("exact_s"), 3),
                    f"{r['max_rss_gb']:.2f}",
                ]
            )
            + " |"
        )


if __name__ == "__main__":
    main()
