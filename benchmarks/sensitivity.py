"""Sensitivity benchmark: `derisk sensitivity` relative to one `derisk plan`, per case.

The baseline is one plan (compile, enumerate states, solve, plan report with the
heuristics' exact values), measured in the same process just before. Sensitivity does
two fixed-policy evaluations per probability (the exact gradient), two re-solves per
input (the tornado), a scan and bisection of re-solves per input and direction (flip
points), and two re-solves per experiment and hypothesis (EVPI), all on the plan's
state space. Cases are the planner benchmark's (benchmarks/planner.py).

    python benchmarks/sensitivity.py              # cases A-C and the examples
    python benchmarks/sensitivity.py --only B --json
    python benchmarks/sensitivity.py --only E --no-flips
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from planner import roadmap_for  # noqa: E402


def run(name: str, flips: bool = True) -> dict:
    from derisk.graphs import example_path, examples, load_roadmap
    from derisk.planner import compile_roadmap, plan_report, solve
    from derisk.planner._sensitivity import sensitivity

    roadmap = load_roadmap(example_path(name)) if name in examples() else roadmap_for(name)
    t0 = time.perf_counter()
    sol = solve(compile_roadmap(roadmap))
    plan_report(sol)
    t_plan = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = sensitivity(roadmap, sol, flips=flips)
    t_sens = time.perf_counter() - t1
    return {
        "case": name + ("" if flips else " (--no-flips)"),
        "experiments": len(roadmap.experiments),
        "inputs": len(res.parameters),
        "states": sol.space.size,
        "levels": sol.problem.levels + 1,
        "plan_s": t_plan,
        "sensitivity_s": t_sens,
        "ratio": t_sens / t_plan,
        "solves": res.solves,
        "solve_s": sol.seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-flips", action="store_true", help="skip the flip points")
    args = ap.parse_args()
    cases = args.only or ["moe-at-scale", "two-approaches", "A", "B", "C"]
    rows = [run(c, flips=not args.no_flips) for c in cases]
    if args.json:
        print(json.dumps({"machine": platform.platform(), "rows": rows}, indent=1))
        return
    print(f"{platform.processor() or platform.machine()}, {platform.platform()}")
    print(
        "| case | experiments | inputs | states x levels | plan | sensitivity | ratio | re-solves |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['experiments']} | {r['inputs']} | {r['states']:,} x "
            f"{r['levels']} | {r['plan_s']:.3f} s | {r['sensitivity_s']:.2f} s | "
            f"{r['ratio']:.0f}x | {r['solves']} |"
        )


if __name__ == "__main__":
    main()
