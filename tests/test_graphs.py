import json
import warnings

import pytest

from derisk.errors import DeriskWarning, RoadmapError
from derisk.graphs import (
    Conditional,
    example_path,
    examples,
    load_roadmap,
    load_with_overrides,
    random_roadmap,
    roadmap_from_dict,
)


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(path):
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(path)
    return exc.value.problems


def test_examples_load_without_warnings():
    assert len(examples()) >= 3
    for name, path in examples().items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = load_roadmap(path)
        assert r.experiments and r.budget > 0, name
        assert any(e.reward > 0 for e in r.experiments)


def test_design_format_parses(tmp_path):
    p = write(
        tmp_path,
        """
name: t
budget: 2000 gpu_hours
resolution: 10 gpu_hours
compute_price: 0.5
hypotheses: {routing_stable: 0.6}
experiments:
  - id: pilot
    cost: 40 gpu_hours
    p: {if: routing_stable, then: 0.9, else: 0.2}
  - id: base
    cost: {median: 200 gpu_hours, p90: 300 gpu_hours}
    p: 0.95
  - id: big
    after: [pilot, {any: [base, pilot]}]
    cost: 3 gpu_days
    p: 0.5
    reward: 100
""",
    )
    r = load_roadmap(p)
    assert r.unit == "gpu_hours" and r.budget == 2000 and r.resolution == 10
    big = r.experiment("big")
    assert big.requires == (("pilot",), ("base", "pilot"))
    assert big.cost.median == 72  # 3 GPU-days
    assert isinstance(r.experiment("pilot").p, Conditional)
    assert r.experiment("base").cost.stochastic
    assert r.graph().has_edge("base", "big")


def test_every_problem_reported_with_line_and_column(tmp_path):
    p = write(
        tmp_path,
        """budget: 100
experiments:
  - id: a
    cost: -5
    p: 1.5
  - id: a
    cost: 5
    p: 0.5
    rewrd: 3
  - id: c
    after: [b]
    cost: 5 parsecs
    p: 0.5
""",
    )
    probs = problems(p)
    text = "\n".join(str(x) for x in probs)
    assert len(probs) == 6, text
    assert [x.line for x in probs] == sorted(x.line for x in probs)
    by_line = {x.line: x for x in probs}
    assert "negative" in by_line[4].message and by_line[4].col == 11
    assert "[0, 1]" in by_line[5].message
    assert "duplicate experiment id `a`" in by_line[6].message and "line 3" in by_line[6].message
    assert "did you mean `reward`" in by_line[9].message
    assert "unknown experiment `b`" in by_line[11].message
    assert "unknown unit" in by_line[12].message
    assert all(str(x).startswith(f"{p}:") for x in probs)


def test_cycle_is_an_error(tmp_path):
    p = write(
        tmp_path,
        """budget: 10
experiments:
  - {id: a, after: [c], cost: 1, p: 0.5}
  - {id: b, after: [a], cost: 1, p: 0.5}
  - {id: c, after: [b], cost: 1, p: 0.5, reward: 1}
""",
    )
    msgs = [x.message for x in problems(p)]
    assert any("cycle" in m and "a" in m and "c" in m for m in msgs)


def test_unknown_top_key_and_hypothesis(tmp_path):
    p = write(
        tmp_path,
        """budgte: 10
experiments:
  - {id: a, cost: 1, p: {if: h, then: 0.5, else: 0.2}, reward: 1}
""",
    )
    msgs = [x.message for x in problems(p)]
    assert any("did you mean `budget`" in m for m in msgs)
    assert any("missing `budget`" in m for m in msgs)
    assert any("unknown hypothesis `h`" in m for m in msgs)


def test_unconvertible_units(tmp_path):
    text = """budget: 100 gpu_hours
experiments:
  - {id: a, cost: 3.6e18 flops, p: 0.5, reward: 1}
"""
    msgs = [x.message for x in problems(write(tmp_path, text))]
    assert any("flops_per_gpu_hour" in m for m in msgs)
    r = load_roadmap(write(tmp_path, "flops_per_gpu_hour: 1.8e18\n" + text, "ok.yaml"))
    assert r.experiment("a").cost.median == pytest.approx(2.0)


def test_train_blocks_are_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("DERISK_LAWS", str(tmp_path))  # no user laws, only the shipped ones
    p = write(
        tmp_path,
        """budget: 100 gpu_hours
experiments:
  - id: big
    train: {arch: moe, experts: 8, top_k: 16, tokens: 2e10, active_params: 1e9}
    success: {loss_below: 2.45, law: moe}
    reward: 1
  - id: unfitted
    train: {arch: dense, params: 1e9, tokens: 2e10}
    success: {loss_below: 2.45, law: my-law}
    cost: 10 gpu_hours
  - id: no-train
    success: {loss_below: 2.45}
    cost: 10 gpu_hours
  - id: both
    train: {params: 1e9, tokens: 2e10}
    success: {loss_below: 2.45}
    p: 0.5
    cost: 10 gpu_hours
  - id: no-tokens
    train: {params: 1e9}
    p: 0.5
  - id: no-conversion
    train: {params: 1e9, tokens: 2e10}
    p: 0.5
""",
    )
    probs = problems(p)
    msgs = [x.message for x in probs]
    assert any("exceeds `experts`" in m for m in msgs)
    [law] = [x for x in probs if "no fitted law `my-law`" in x.message]
    assert (law.line, law.col) == (9, 38)  # points at the law's name
    assert any("`no-train` has `success:` but no `train:`" in m for m in msgs)
    assert any("`both` has both `p` and `success`" in m for m in msgs)
    assert any("`no-tokens` needs `tokens`" in m for m in msgs)
    assert any("`no-conversion` is in flops" in m and "flops_per_gpu_hour" in m for m in msgs)
    assert all(x.line for x in probs)


def test_train_node_p_and_cost_come_from_the_law(tmp_path, monkeypatch):
    """p = P(loss < x) under the law's bootstrap parameters and run noise, recomputed here
    from the law file; cost = tokens x (6N + attention) FLOPs in the roadmap's unit."""
    from pathlib import Path

    import numpy as np
    from scipy import stats

    import derisk.scaling

    monkeypatch.setenv("DERISK_LAWS", str(tmp_path))
    law_file = Path(derisk.scaling.__file__).parent.parent / "estimators/data/laws/cpu-dense.json"
    law = json.loads(law_file.read_text())
    N, D, x, fpgh = 2e6, 1e7, 1.2, 1.4e18
    r = load_roadmap(
        write(
            tmp_path,
            f"""budget: 100 gpu_hours
flops_per_gpu_hour: {fpgh}
experiments:
  - id: big
    train: {{arch: dense, params: {N}, tokens: {D}, d_model: 256, layers: 2, seq_len: 64}}
    success: {{loss_below: {x}, law: cpu-dense}}
    reward: 1
  - id: looser
    train: {{arch: dense, params: {N}, tokens: {D}}}
    success: {{loss_below: {x + 0.2}}}
    cost: 3 gpu_hours
    reward: 1
""",
        )
    )
    a, b, e, alpha, beta = np.array(law["bootstrap"]).T
    mean = np.exp(e) + np.exp(a) / N**alpha + np.exp(b) / D**beta
    want = stats.norm.cdf((np.log(x) - np.log(mean)) / law["sigma_log"]).mean()
    big = r.experiment("big")
    assert big.p == pytest.approx(want, rel=1e-9)
    assert 0 < big.p < r.experiment("looser").p < 1  # an easier target is likelier
    flops = D * (6 * N + 6 * 2 * 64 * 256)
    assert big.cost.median == pytest.approx(flops / fpgh, rel=1e-9)
    assert r.experiment("looser").cost.median == 3  # a given cost wins
    assert big.estimate["derived"] == ["p", "cost"]


def test_malformed_yaml_and_json(tmp_path):
    [prob] = problems(write(tmp_path, "budget: [1\nexperiments: x\n"))
    assert "invalid YAML" in prob.message and prob.line is not None
    [prob] = problems(write(tmp_path, '{"budget": 1,', "r.json"))
    assert "invalid JSON" in prob.message
    [prob] = problems(tmp_path / "missing.yaml")
    assert "no such file" in prob.message


def test_json_roadmap_equals_yaml(tmp_path):
    data = {
        "budget": 50,
        "experiments": [
            {"id": "a", "cost": 10, "p": 0.5},
            {"id": "b", "after": ["a"], "cost": 10, "p": 0.5, "reward": 5},
        ],
    }
    r = load_roadmap(write(tmp_path, json.dumps(data), "r.json"))
    assert r.experiments == roadmap_from_dict(data).experiments


def test_warnings_not_errors(tmp_path):
    p = write(
        tmp_path,
        """budget: 5
experiments:
  - {id: a, cost: 10, p: 0.5, reward: 3}
  - {id: b, cost: 1, p: 0}
""",
    )
    with pytest.warns(DeriskWarning) as rec:
        load_roadmap(p)
    msgs = " | ".join(str(w.message) for w in rec)
    assert "cannot be earned within the budget" in msgs
    assert "p = 0" in msgs
    assert "nothing depends on `b`" in msgs


def test_overrides_are_validated(tmp_path):
    path = example_path("moe-at-scale")
    r = load_with_overrides(path, ["pilot.p=0.5", "budget=3000"])
    assert r.experiment("pilot").p == 0.5 and r.budget == 3000
    with pytest.raises(RoadmapError, match="did you mean `pilot`"):
        load_with_overrides(path, ["pilott.p=0.5"])
    with pytest.raises(RoadmapError, match=r"\[0, 1\]"):
        load_with_overrides(path, ["pilot.p=2"])


def test_generator_is_seeded_and_acyclic():
    a = random_roadmap(12, seed=7, hypotheses=2, any_groups=0.5, stochastic_costs=0.5)
    b = random_roadmap(12, seed=7, hypotheses=2, any_groups=0.5, stochastic_costs=0.5)
    assert a.experiments == b.experiments
    assert a.experiments != random_roadmap(12, seed=8).experiments
    import networkx as nx

    assert nx.is_directed_acyclic_graph(a.graph())
