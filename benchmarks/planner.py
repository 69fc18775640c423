"""Planner benchmark: exact vs jax vs pymdptoolbox vs the Storm model checker.

Each case is a generated roadmap; every case runs in its own subprocess so that its
peak memory (max RSS) is its own. For each case we time, in the same run:

- exact: state enumeration + backward induction (all budget levels at once), the first
  run in a fresh process; under a second also the best of five more (warm);
- jax: the same MDP by synchronous sweeps (first call includes compilation; the second
  call is the warm time);
- mdptoolbox: explicit matrices + pymdptoolbox ValueIteration (where the explicit MDP
  has at most 300k states and is predicted to take under a minute);
- storm: stormpy, one budget level per call as a Storm user would do for a budget
  sweep: the explicit MDP reachable from (start, b) written as DRN, then
  build_model_from_drn + `Rmax=? [F "done"]`. The sweep time is measured on a sample
  of levels and scaled to all levels (marked "~").

Every value is cross-checked against exact. Usage:

    python benchmarks/planner.py                 # all cases, table on stdout
    python benchmarks/planner.py --only F --json # one case
    python benchmarks/planner.py --only D2 --exact-only  # its exact solve alone
    python benchmarks/planner.py --only E --yaml e.yaml  # the case as a roadmap file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# name: (nodes, budget levels, rewards, density, hypotheses, stochastic cost fraction, seed)
CASES = {
    "A": (6, 50, 1, 0.3, 1, 0.3, 1),
    "B": (10, 100, 2, 0.3, 1, 0.3, 1),
    "C": (12, 100, 4, 0.2, 2, 0.3, 1),
    "D": (16, 200, 6, 0.15, 1, 0.2, 1),
    "D2": (18, 200, 18, 0.15, 0, 0.0, 1),
    "E": (20, 200, 20, 0.1, 0, 0.0, 1),
    "F": (24, 200, 24, 0.05, 0, 0.0, 2),
}
STORM_SAMPLE_LEVELS = 5
STORM_MAX_EXPLICIT = 1_500_000  # reachable explicit states per level (DRN is written by Python)
TOOLBOX_MAX_EXPLICIT = 4_000_000


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


def write_yaml(name: str, path: Path) -> None:
    """Case `name`'s roadmap in the roadmap format, for timing the CLI on it (the cases
    have fixed costs, single prerequisites or OR-groups, and no hypotheses)."""
    import yaml

    r = roadmap_for(name)
    exps = []
    for e in r.experiments:
        cost = float(e.cost.median)
        if e.cost.p90:
            cost = {"median": cost, "p90": float(e.cost.p90)}
        d = {"id": e.id, "cost": cost, "p": float(e.p), "reward": float(e.reward)}
        if e.requires:
            d["after"] = [c[0] if len(c) == 1 else {"any": list(c)} for c in e.requires]
        exps.append(d)
    doc = {"name": f"benchmark case {name}", "budget": float(r.budget), "experiments": exps}
    doc["resolution"] = float(r.resolution)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def reachable_explicit(P, start: int) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order

    adj = sp.csr_matrix(sum(m for m in P[:-1]))  # stop only leads to the terminal
    order = breadth_first_order(adj, start, directed=True, return_predecessors=False)
    return np.unique(np.append(order, adj.shape[0] - 1))


def write_drn(path: Path, P, R, states: np.ndarray, start: int) -> int:
    """The explicit MDP restricted to `states` in Storm's DRN format; returns #choices."""
    from derisk.planner._toolbox import ILLEGAL

    index = {int(s): k for k, s in enumerate(states)}
    terminal = P[0].shape[0] - 1
    lines, choices = [], 0
    A = len(P)
    for s in states:
        s = int(s)
        label = " init" if s == start else (" done" if s == terminal else "")
        lines.append(f"state {index[s]}{label}")
        if s == terminal:
            lines.append(f"\taction stop [0]\n\t\t{index[s]} : 1")
            choices += 1
            continue
        for a in range(A):
            if R[s, a] <= ILLEGAL / 2:
                continue
            row = P[a][s]
            lines.append(f"\taction a{a} [{float(R[s, a])!r}]")
            lines.extend(
                f"\t\t{index[int(t)]} : {float(v)!r}"
                for t, v in zip(row.indices, row.data, strict=True)
            )
            choices += 1
    head = [
        "@type: MDP",
        "@parameters",
        "",
        "@reward_models",
        "value",
        f"@nr_states\n{len(states)}",
        f"@nr_choices\n{choices}",
        "@model",
    ]
    path.write_text("\n".join(head + lines) + "\n")
    return choices


def max_err(values, ref) -> float:
    """Largest difference from the exact values, on the cells the exact solver stores
    (every cell with code that stores full tables)."""
    if not hasattr(ref, "stored"):
        return float(np.abs(values - ref).max())
    kept = ref.stored()
    return float(np.abs(values.dense()[kept] - ref.dense()[kept]).max())


def run_case(name: str, exact_only: bool = False) -> dict:
    from derisk.planner import SolveConfig, build_space, compile_roadmap, solve

    roadmap = roadmap_for(name)
    pr = compile_roadmap(roadmap)
    L = pr.levels + 1
    out = {"case": name, "nodes": pr.n, "levels": L}
    config = SolveConfig(max_states=5_000_000, max_memory_gb=16)
    t0 = time.perf_counter()
    space = build_space(pr, config)
    out["enumerate_s"] = time.perf_counter() - t0
    out["states"], out["pairs"] = space.size, space.pairs
    exact = solve(pr, space=space)
    try:  # which engine the exact solver used (numpy, C, or XLA past a size); older: numpy
        from derisk.planner._exact import auto_engine

        out["exact_engine"] = auto_engine(space.pairs * L)
    except ImportError:
        out["exact_engine"] = "numpy"
    out["exact_solve_s"] = exact.seconds
    out["exact_s"] = out["enumerate_s"] + exact.seconds
    out["value"] = exact.root_value
    out["exact_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    ref = exact.values
    if hasattr(ref, "cells"):  # the exact solver stores the cells the start can reach
        out["stored_fraction"] = ref.cells / (space.size * L)
    if out["exact_s"] < 1.0:
        # The first run in a fresh process pays one-off costs (lazy imports, the
        # allocator growing its heap); the best of five later runs is the steady state.
        warm = []
        for _ in range(5):
            t0 = time.perf_counter()
            again = solve(pr, space=build_space(pr, config))
            warm.append(time.perf_counter() - t0)
            assert again.root_value == exact.root_value
        out["exact_warm_s"] = min(warm)
    if exact_only:
        return out

    if space.size * L <= 3_000_000 * 4:
        t0 = time.perf_counter()
        js = solve(pr, space=space, config=SolveConfig(solver="jax"))
        out["jax_first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        js = solve(pr, space=space, config=SolveConfig(solver="jax"))
        out["jax_s"] = time.perf_counter() - t0
        out["jax_max_err"] = max_err(js.values, ref)

    explicit = space.size * L + 1
    out["explicit_states"] = explicit
    if explicit <= TOOLBOX_MAX_EXPLICIT:
        import derisk.planner._toolbox as tbmod

        tbmod.MAX_EXPLICIT_STATES = TOOLBOX_MAX_EXPLICIT  # the library default is 300k
        t0 = time.perf_counter()
        tb = solve(pr, space=space, config=SolveConfig(solver="mdptoolbox"))
        out["toolbox_s"] = time.perf_counter() - t0
        out["toolbox_max_err"] = max_err(tb.values, ref)

    try:
        import stormpy
    except ImportError:
        stormpy = None
    if stormpy is not None and explicit <= 15_000_000:
        import derisk.planner._toolbox as tbmod

        tbmod.MAX_EXPLICIT_STATES = explicit
        P, R = tbmod.toolbox_matrices(pr, space)
        levels = np.unique(np.linspace(1, L - 1, STORM_SAMPLE_LEVELS).round().astype(int))
        times, errs, sizes = [], [], []
        prop = stormpy.parse_properties('Rmax=? [F "done"]')[0]
        with tempfile.TemporaryDirectory() as tmp:
            for b in levels:
                start = space.root * L + int(b)
                states = reachable_explicit(P, start)
                if len(states) > STORM_MAX_EXPLICIT:
                    break
                path = Path(tmp) / f"m{b}.drn"
                write_drn(path, P, R, states, start)
                t0 = time.perf_counter()
                model = stormpy.build_model_from_drn(str(path))
                try:
                    res = stormpy.model_checking(model, prop)
                    val = res.get_value(model.initial_states[0])
                except RuntimeError as exc:  # no reward reachable at this level: value 0
                    if "Reward model for formula is empty" not in str(exc):
                        raise
                    val = 0.0
                times.append(time.perf_counter() - t0)
                errs.append(abs(val - ref[space.root, b]))
                sizes.append(len(states))
        if times:
            out["storm_levels_measured"] = len(times)
            out["storm_per_level_s"] = float(np.mean(times))
            # A budget sweep solves every level once; levels grow with b, so the mean of
            # evenly spaced levels times L estimates the sum.
            out["storm_sweep_s"] = float(np.mean(times)) * L
            out["storm_max_err"] = float(max(errs))
            out["storm_max_explicit"] = int(max(sizes))
    out["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return f"{x:,}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run one case in this process and print JSON")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--exact-only",
        action="store_true",
        help="with --only: the exact solver alone (no other solver in the process)",
    )
    ap.add_argument(
        "--yaml",
        metavar="PATH",
        help="with --only: write that case's roadmap as YAML to PATH (to time the CLI on it)",
    )
    args = ap.parse_args()
    if args.yaml:
        if not args.only:
            ap.error("--yaml needs --only CASE")
        write_yaml(args.only, Path(args.yaml))
        return
    if args.only:
        print(json.dumps(run_case(args.only, exact_only=args.exact_only)))
        return
    rows = []
    for name in CASES:
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
        print(f"case {name} done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    head = (
        "case",
        "nodes",
        "levels",
        "states",
        "exact s (solve)",
        "jax s (first)",
        "toolbox s",
        "toolbox/exact solve",
        "storm s/level",
        "storm sweep s",
        "sweep storm/exact",
        "max err",
        "exact peak GB",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        err = max(r.get(k, 0.0) for k in ("jax_max_err", "toolbox_max_err", "storm_max_err"))
        tb = r.get("toolbox_s")
        st = r.get("storm_sweep_s")
        print(
            "| "
            + " | ".join(
                [
                    r["case"],
                    str(r["nodes"]),
                    str(r["levels"]),
                    fmt(r["states"]),
                    f"{fmt(r['exact_s'])} ({fmt(r['exact_solve_s'])})",
                    f"{fmt(r.get('jax_s'))} ({fmt(r.get('jax_first_s'))})" if "jax_s" in r else "-",
                    fmt(tb),
                    f"{tb / r['exact_solve_s']:.1f}x" if tb else "-",
                    fmt(r.get("storm_per_level_s")),
                    f"~{fmt(st)}" if st else "-",
                    f"{st / r['exact_s']:.1f}x" if st else "-",
                    f"{err:.1e}",
                    f"{r['exact_peak_gb']:.2f}",
                ]
            )
            + " |"
        )


if __name__ == "__main__":
    main()
