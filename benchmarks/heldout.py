"""Does a law fitted to small runs predict larger ones? Fit on the runs inside a box
(params <= --max-params and tokens <= --max-tokens), predict every run outside it, and
report error, 80%-band coverage and the quantile of each measured loss.

    python benchmarks/heldout.py derisk/estimators/data/runs_cpu_dense.csv \\
        --max-params 4e5 --max-tokens 3.1e6 [--law chinchilla] [--params-col params]

The CSV is what `derisk runs --csv` writes. Runs with fewer than --min-tokens are dropped
from both sides (the shipped laws leave out the 29-step runs), and so are models with
fewer than --min-params.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from derisk.scaling import fit_law, load_runs_csv, predict_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--law", default="chinchilla")
    ap.add_argument("--params-col", default="params")
    ap.add_argument("--max-params", type=float, required=True)
    ap.add_argument("--max-tokens", type=float, required=True)
    ap.add_argument("--min-tokens", type=float, default=9e4)
    ap.add_argument("--min-params", type=float, default=0)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = load_runs_csv(args.csv, columns={"params": args.params_col})
    data = data.subset((data.tokens >= args.min_tokens) & (data.params >= args.min_params))
    inside = (data.params <= args.max_params) & (data.tokens <= args.max_tokens)
    fit = fit_law(data.subset(inside), args.law, bootstrap=args.bootstrap)
    rows = []
    for i in np.flatnonzero(~inside):
        p = predict_loss(
            fit,
            data.params[i],
            data.tokens[i],
            experts=data.experts[i],
            granularity=data.granularity[i],
            observed=data.loss[i],
        )
        rows.append(p.as_dict())
    errors = np.array([r["error"] for r in rows])
    inside80 = sum(0.1 <= r["quantile"] <= 0.9 for r in rows)
    summary = {
        "csv": args.csv,
        "law": args.law,
        "fitted_runs": int(inside.sum()),
        "params": fit.params,
        "held_out": len(rows),
        "inside_80": inside80,
        "mean_abs_error": float(np.mean(np.abs(errors))) if rows else None,
        "max_abs_error": float(np.max(np.abs(errors))) if rows else None,
    }
    if args.json:
        print(json.dumps({"summary": summary, "held_out": rows}, indent=1))
        return
    print(
        f"{args.law} fitted to {summary['fitted_runs']} runs (params <= {args.max_params:g}, "
        f"tokens <= {args.max_tokens:g}): "
        + ", ".join(f"{k} {v:.4g}" for k, v in fit.params.items())
    )
    print("| params | tokens | experts | predicted | 80% band | measured | error | q |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        lo, hi = r["interval"]
        print(
            f"| {r['params']:.3g} | {r['tokens']:.3g} | {r['experts']:g} | {r['loss']:.4f} "
            f"| {lo:.3f}-{hi:.3f} | {r['observed']:.4f} | {100 * r['error']:+.1f}% "
            f"| {r['quantile']:.2f} |"
        )
    if rows:
        print(
            f"{inside80}/{len(rows)} inside the 80% band; mean |error| "
            f"{100 * summary['mean_abs_error']:.1f}%, max {100 * summary['max_abs_error']:.1f}%"
        )


if __name__ == "__main__":
    main()
