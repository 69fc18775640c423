"""Seeded random roadmaps for tests, benchmarks and the quiz."""

from __future__ import annotations

import warnings

import numpy as np

from derisk.graphs._load import roadmap_from_dict
from derisk.graphs._model import Roadmap


def random_roadmap(
    n: int,
    *,
    seed: int = 0,
    density: float = 0.3,
    rewards: int = 1,
    hypotheses: int = 0,
    stochastic_costs: float = 0.0,
    any_groups: float = 0.0,
    compute_price: float = 0.0,
    budget_levels: int = 50,
    budget_fraction: float = 0.6,
) -> Roadmap:
    """A random acyclic roadmap with `n` experiments.

    Args:
        density: probability of an edge i -> j for each earlier i (before capping
            each node at three prerequisites).
        rewards: how many nodes carry a reward (the last ones, in order).
        hypotheses: number of latent hypotheses; about half the nodes depend on one.
        stochastic_costs: fraction of nodes with a lognormal cost.
        any_groups: fraction of nodes with two or more prerequisites whose
            prerequisites are alternatives (`{any: [...]}`) rather than all required.
        compute_price: reward lost per unit of compute.
        budget_levels: the budget in units of the resolution (resolution is 1).
        budget_fraction: the budget as a fraction of the total median cost.

    >>> r = random_roadmap(5, seed=1)
    >>> len(r.experiments)
    5
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    costs = rng.integers(1, 10, size=n).astype(float)
    total = costs.sum()
    scale = budget_levels / max(total * budget_fraction, 1e-9)
    costs = np.maximum(1, np.round(costs * scale))
    hyp_names = [f"h{k}" for k in range(hypotheses)]
    experiments = []
    for j in range(n):
        parents = [i for i in range(j) if rng.random() < density]
        if len(parents) > 3:
            parents = sorted(rng.choice(parents, size=3, replace=False).tolist())
        e: dict = {"id": f"e{j}"}
        if parents:
            if len(parents) >= 2 and rng.random() < any_groups:
                e["after"] = [{"any": [f"e{i}" for i in parents]}]
            else:
                e["after"] = [f"e{i}" for i in parents]
        if hyp_names and rng.random() < 0.5:
            hi, lo = sorted(rng.uniform(0.05, 0.95, size=2))[::-1]
            e["p"] = {
                "if": str(rng.choice(hyp_names)),
                "then": round(float(hi), 3),
                "else": round(float(lo), 3),
            }
        else:
            e["p"] = round(float(rng.uniform(0.2, 0.95)), 3)
        if rng.random() < stochastic_costs:
            med = float(costs[j])
            e["cost"] = {"median": med, "p90": round(med * float(rng.uniform(1.2, 2.5)), 2)}
        else:
            e["cost"] = float(costs[j])
        if j >= n - rewards:
            e["reward"] = float(rng.integers(10, 100))
        experiments.append(e)
    data = {
        "name": f"random-{n}-{seed}",
        "budget": float(budget_levels),
        "resolution": 1.0,
        "compute_price": compute_price,
        "hypotheses": {h: round(float(rng.uniform(0.2, 0.8)), 3) for h in hyp_names},
        "experiments": experiments,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return roadmap_from_dict(data, source=f"<random n={n} seed={seed}>")
