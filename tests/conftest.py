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


def run(*args, **kw):
    """Invoke the command line in process (paths and numbers as strings)."""
    from typer.testing import CliRunner

    from derisk.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def run_json(*args, **kw):
    """Invoke with --json; the command must succeed; its stdout parsed."""
    import json

    res = run(*args, "--json", **kw)
    assert res.exit_code == 0, res.output + str(res.exception)
    return json.loads(res.stdout)


def copy_example(tmp_path, name="moe-at-scale"):
    """A bundled example copied out, so outcomes can be recorded beside it."""
    from derisk.graphs import example_path

    p = tmp_path / f"{name}.yaml"
    p.write_text(example_path(name).read_text())
    return p
