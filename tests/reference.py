"""A brute-force planner, independent of derisk.planner, for cross-checking.

Plain recursion over raw histories: no canonical collapsing, no layers, no
vectorisation, beliefs by enumerating hypothesis configurations. Exponential, so
only for small roadmaps; its value is that it shares no code with the solvers.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

from scipy import stats

from derisk.graphs import Categorical, Conditional, Roadmap


def _cost_dist(cost, res, bins=8):
    if cost.p90 is None or cost.p90 <= cost.median:
        vals, probs = [cost.median], [1.0]
    else:
        sigma = math.log(cost.p90 / cost.median) / stats.norm.ppf(0.9)
        vals = [
            cost.median * math.exp(sigma * stats.norm.ppf((k + 0.5) / bins)) for k in range(bins)
        ]
        probs = [1 / bins] * bins
    out: dict[int, float] = {}
    for v, q in zip(vals, probs, strict=True):
        u = max(1 if v > 0 else 0, math.ceil(v / res - 1e-9))
        out[u] = out.get(u, 0.0) + q
    return sorted(out.items())


def brute_force_value(roadmap: Roadmap, budget_units: int | None = None) -> float:
    """Optimal expected reward minus price x compute, from the empty history."""
    exps = roadmap.experiments
    res = roadmap.effective_resolution()
    B = int(math.floor(roadmap.budget / res + 1e-9)) if budget_units is None else budget_units
    price = roadmap.compute_price * res
    hyps = list(roadmap.hypotheses)
    cats = list(getattr(roadmap, "categories", {}) or {})
    # a configuration: a truth value per boolean hypothesis, then a value per categorical
    configs = list(
        itertools.product(
            *[(True, False)] * len(hyps), *[tuple(roadmap.categories[c]) for c in cats]
        )
    )

    def prior(cfg):
        w = math.prod(
            roadmap.hypotheses[h] if v else 1 - roadmap.hypotheses[h]
            for h, v in zip(hyps, cfg, strict=False)
        )
        for c, v in zip(cats, cfg[len(hyps) :], strict=True):
            w *= roadmap.categories[c][v]
        return w

    def p_under(e, cfg):
        if isinstance(e.p, Conditional):
            return e.p.then if cfg[hyps.index(e.p.hypothesis)] else e.p.otherwise
        if isinstance(e.p, Categorical):
            return dict(e.p.table)[cfg[len(hyps) + cats.index(e.p.hypothesis)]]
        return e.p

    costs = [_cost_dist(e.cost, res) for e in exps]

    @cache
    def value(history: tuple, b: int) -> float:
        # history[i]: None untried, True success, False failure, "cut" cut off
        weights = []
        for cfg in configs:
            w = prior(cfg)
            for e, h in zip(exps, history, strict=True):
                if h is True:
                    w *= p_under(e, cfg)
                elif h is False:
                    w *= 1 - p_under(e, cfg)
            weights.append(w)
        total = sum(weights)
        best = 0.0
        for i, e in enumerate(exps):
            if history[i] is not None:
                continue
            if not all(
                any(history[[x.id for x in exps].index(a)] is True for a in clause)
                for clause in e.requires
            ):
                continue
            if costs[i][0][0] > b:
                continue
            p = (
                (sum(w * p_under(e, cfg) for w, cfg in zip(weights, configs, strict=True)) / total)
                if total > 0
                else 0.0
            )
            q = 0.0
            for c, qc in costs[i]:
                if c <= b:
                    hs = history[:i] + (True,) + history[i + 1 :]
                    hf = history[:i] + (False,) + history[i + 1 :]
                    q += qc * (
                        p * (e.reward + value(hs, b - c)) + (1 - p) * value(hf, b - c) - price * c
                    )
                else:
                    hd = history[:i] + ("cut",) + history[i + 1 :]
                    q += qc * (value(hd, 0) - price * b)
            best = max(best, q)
        return best

    return value((None,) * len(exps), B)
