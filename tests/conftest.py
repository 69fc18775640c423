import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from derisk.graphs import random_roadmap  # noqa: E402


def generated_roadmaps(count: int, *, max_nodes: int = 8, levels: int = 15):
    """A deterministic spread of small roadmaps covering every feature."""
    out = []
    for seed in range(count):
        n = 3 + seed % (max_nodes - 2)
        out.append(
            random_roadmap(
                n,
                seed=seed,
                density=0.25 + 0.1 * (seed % 4),
                rewards=1 + seed % 2,
                hypotheses=seed % 3,
                stochastic_costs=0.35 if seed % 2 else 0.0,
                any_groups=0.5 if seed % 3 == 0 else 0.0,
                compute_price=0.4 if seed % 4 == 1 else 0.0,
                budget_levels=levels,
                budget_fraction=0.4 + 0.2 * (seed % 3),
            )
        )
    return out


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
