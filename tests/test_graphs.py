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


def test_a_hypothesis_with_a_bad_prior_is_reported_once(tmp_path):
    """Its prior is the mistake; the experiments that use it are not also told it is
    unknown (it is declared)."""
    p = write(
        tmp_path,
        """budget: 10
hypotheses:
  h: 5
experiments:
  - {id: a, cost: 1, p: {if: h, then: 0.5, else: 0.2}, reward: 1}
  - {id: b, cost: 1, p: {if: h, then: 0.6, else: 0.1}, reward: 1}
""",
    )
    msgs = [x.message for x in problems(p)]
    assert msgs == ["prior of hypothesis `h` must be in [0, 1], got 5"]


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
    assert any("`no-train` has `success:` but no `train:`" in m for m in msgs)
    assert any("`both` has both `p` and `success`" in m for m in msgs)
    assert any("`no-tokens` needs `tokens`" in m for m in msgs)
    [conv] = [m for m in msgs if "`no-conversion` is in FLOPs" in m]
    assert "hardware:" in conv and "mfu:" in conv and "flops_per_gpu_hour" in conv
    assert all(x.line for x in probs)
    assert not any("my-law" in m for m in msgs)  # laws are the estimators' business


def test_a_missing_law_is_a_located_problem_of_the_resolve_stage(tmp_path, monkeypatch):
    from derisk.estimators import resolve

    monkeypatch.setenv("DERISK_LAWS", str(tmp_path))  # no user laws, only the shipped ones
    p = write(
        tmp_path,
        """budget: 1e15 flops
experiments:
  - id: unfitted
    train: {arch: dense, params: 1e9, tokens: 2e10}
    success: {loss_below: 2.45, law: my-law}
    reward: 1
""",
    )
    r = load_roadmap(p)  # parsing reads no law
    assert r.pending == ("unfitted",) and r.experiment("unfitted").pending == ("p", "cost")
    with pytest.raises(RoadmapError) as exc:
        resolve(r)
    [law] = exc.value.problems
    assert "no fitted law `my-law`" in law.message
    assert (law.line, law.col) == (5, 38)  # points at the law's name


def test_train_node_p_and_cost_come_from_the_law(tmp_path, monkeypatch):
    """p = P(loss < x) under the law's bootstrap parameters and run noise, recomputed here
    from the law file; cost = tokens x the trainer's FLOPs per token in the roadmap's
    unit. The point is inside the law's fitted range, where its extrapolation term adds
    nothing."""
    from pathlib import Path

    import numpy as np
    from scipy import stats

    import derisk.scaling
    from derisk.estimators import resolve

    monkeypatch.setenv("DERISK_LAWS", str(tmp_path))
    law_file = Path(derisk.scaling.__file__).parent.parent / "estimators/data/laws/cpu-dense.json"
    law = json.loads(law_file.read_text())
    N, D, x, fpgh = 389760, 1e7, 1.3, 1.4e18  # N: the count of d_model 128, 2 layers
    r = resolve(
        load_roadmap(
            write(
                tmp_path,
                f"""budget: 100 gpu_hours
flops_per_gpu_hour: {fpgh}
experiments:
  - id: big
    train: {{arch: dense, tokens: {D}, d_model: 128, layers: 2, seq_len: 64}}
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
    ).roadmap
    a, b, e, alpha, beta = np.array(law["bootstrap"]).T
    mean = np.exp(e) + np.exp(a) / N**alpha + np.exp(b) / D**beta
    want = stats.norm.cdf((np.log(x) - np.log(mean)) / law["sigma_log"]).mean()
    big = r.experiment("big")
    # two nodes under one law share its worlds: p is a table over them, its mean the law's
    mean = big.p_mean(r.hypotheses, r.categories)
    assert mean == pytest.approx(want, rel=1e-9) and big.estimate["p"] == pytest.approx(want)
    looser = r.experiment("looser")
    assert 0 < mean < looser.p_mean(r.hypotheses, r.categories) < 1  # an easier target
    # the trainer's count, by hand for d_model 128, 2 layers, seq 64, vocab 256: SwiGLU
    # width round(8/3 x 128 / 16) x 16 = 336; per token 3 x (2 x matmul params + 2 x head
    # + causal attention 2 x 2 x layers x d x (seq + 1) / 2)
    matmul = 2 * (4 * 128 * 128 + 3 * 128 * 336)
    flops = D * 3 * (2 * matmul + 2 * 128 * 256 + 2 * 2 * 2 * 128 * 65 / 2)
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


def test_overrides_are_validated_and_recorded():
    path = example_path("moe-at-scale")
    r = load_with_overrides(path, ["dense-baseline.p=0.5", "budget=3000"])
    assert r.experiment("dense-baseline").p == 0.5 and r.budget == 3000
    assert r.overrides == (
        {"set": "dense-baseline.p=0.5", "target": "dense-baseline.p", "before": 0.95, "after": 0.5},
        {"set": "budget=3000", "target": "budget", "before": 2000.0, "after": 3000.0},
    )
    assert load_roadmap(path).overrides == ()
    hash(r)  # still hashable
    with pytest.raises(RoadmapError, match="did you mean `pilot`"):
        load_with_overrides(path, ["pilott.p=0.5"])
    with pytest.raises(RoadmapError, match=r"\[0, 1\]"):
        load_with_overrides(path, ["dense-baseline.p=2"])


def test_conditional_p_override_names_the_branch():
    path = example_path("moe-at-scale")
    with pytest.raises(RoadmapError) as exc:
        load_with_overrides(path, ["pilot.p=0.3"])
    [prob] = exc.value.problems
    assert str(prob).startswith("--set pilot.p=0.3: ")
    assert "pilot.p.then=0.3" in prob.message and "pilot.p.else=0.3" in prob.message
    r = load_with_overrides(path, ["pilot.p.then=0.3", "pilot.p.else=0.1"])
    assert r.experiment("pilot").p == Conditional(
        hypothesis="routing_stable", then=0.3, otherwise=0.1
    )
    assert [(o["target"], o["before"], o["after"]) for o in r.overrides] == [
        ("pilot.p.then", 0.9, 0.3),
        ("pilot.p.else", 0.2, 0.1),
    ]
    # replacing the whole conditional is explicit, so it is allowed
    r = load_with_overrides(path, ["pilot.p={if: routing_stable, then: 0.5, else: 0.4}"])
    assert r.experiment("pilot").p.then == 0.5
    with pytest.raises(RoadmapError, match="plain probability"):
        load_with_overrides(path, ["dense-baseline.p.then=0.3"])


def test_prior_cost_and_unit_overrides_are_recorded():
    path = example_path("moe-at-scale")
    r = load_with_overrides(path, ["routing_stable=0.4", "budget=100 GPU-days"])
    assert r.hypotheses["routing_stable"] == 0.4 and r.budget == 2400
    assert r.overrides[0]["target"] == "hypotheses.routing_stable"
    assert r.overrides[0]["before"] == 0.6 and r.overrides[0]["after"] == 0.4
    r = load_with_overrides(path, ["hypotheses.routing_stable=0.3"])
    assert r.hypotheses["routing_stable"] == 0.3
    r = load_with_overrides(path, ["big.cost.median=800 gpu_hours"])
    assert r.experiment("big").cost.median == 800
    assert r.overrides[0]["before"] == 900


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("pilot.p.then=abc", "must be a number in [0, 1]"),
        ("nope.p=0.3", "no experiment `nope`"),
        ("pilot.colour=red", "settable: pilot.p"),
        ("hypotheses.nope=0.5", "no hypothesis `nope`"),
        ("budget=ten", "must be a number"),
        ("budget=1e300", "at most 10,000,000"),
        ("pilot.p=", "no value"),
        ("pilot.p", "expected `id.field=value`"),
        ("dense-baseline.p=[1", "cannot read the value"),
        ("budget=1 parsec", "unknown unit"),
        ("pilot.p.then=0.3 --set pilot.p.then=0.4", None),
    ],
)
def test_bad_override_blames_the_flag(flag, expected):
    flags = flag.split(" --set ")
    with pytest.raises(RoadmapError) as exc:
        load_with_overrides(example_path("moe-at-scale"), flags)
    [prob] = exc.value.problems
    assert str(prob).startswith(f"--set {flags[-1]}: "), str(prob)
    assert (expected or "already set") in prob.message


def test_display_units_read_back(tmp_path):
    from derisk.graphs._load import _Checker, _quantity

    ck = _Checker("--budget")
    for text, want in [
        ("10 GPU-h", (10, "gpu_hours")),
        ("10 gpu-hours", (10, "gpu_hours")),
        ("10 GPU hours", (10, "gpu_hours")),
        ("2 GPU-days", (48, "gpu_hours")),
        ("1 gpu_day", (24, "gpu_hours")),
        ("3e21 FLOP", (3e21, "flops")),
        ("9,910 GPU-h", (9910, "gpu_hours")),
        ("12", (12, None)),
    ]:
        assert _quantity(ck, text, None, "--budget") == want, text
    assert not ck.problems
    assert _quantity(ck, "10 parsecs", None, "--budget") is None
    assert "GPU-h" in ck.problems[0].message and "gpu_days" in ck.problems[0].message
    r = load_roadmap(
        write(tmp_path, "budget: 10 GPU-h\nexperiments: [{id: a, cost: 1, p: 1, reward: 1}]")
    )
    assert r.budget == 10 and r.unit == "gpu_hours"


def test_units_in_the_budget_and_costs_convert(tmp_path):
    r = load_roadmap(
        write(
            tmp_path,
            "budget: 30 gpu_days\nexperiments: [{id: a, cost: 120 GPU-h, p: 1, reward: 1}]",
        )
    )
    assert r.budget == 720 and r.experiment("a").cost.median == 120


@pytest.mark.parametrize(
    ("text", "expected", "where"),
    [
        (  # billion laughs: nine lines expanding to 1e9 values
            "".join(
                f"{a}: &{a} [{', '.join([f'*{p}'] * 10 if p else ['x'] * 10)}]\n"
                for p, a in zip([None, *"abcdefgh"], "abcdefghi", strict=True)
            ),
            "aliases expand to more than",
            (5, None),
        ),
        ("budget: 10\nexperiments: &a [*a]\n", "recursive alias", (2, 18)),
        ("budget: 10\nexperiments: " + "[" * 900 + "]" * 900 + "\n", "nested more than", (2, None)),
        ("budget: !!int abc\nexperiments: []\n", "not a valid `!!int`", (1, 9)),
        ("budget: 1" + "0" * 5000 + "\nexperiments: []\n", "5,001 digits", (1, 9)),
        ("budget: 1" + "0" * 400 + "\nexperiments: []\n", "finite number", (1, 9)),
        ("budget: !foo 1\nexperiments: []\n", "remove the tag", (1, 9)),
        ("budget: 1\n---\nbudget: 2\n", "second document", (2, 1)),
    ],
)
def test_hostile_yaml_is_a_located_error(tmp_path, text, expected, where):
    import time

    t0 = time.perf_counter()
    probs = problems(write(tmp_path, text))
    assert time.perf_counter() - t0 < 5
    assert any(expected in p.message for p in probs), probs
    first = next(p for p in probs if expected in p.message)
    assert first.line == where[0] and (where[1] is None or first.col == where[1]), first


def test_deep_json_and_huge_json_numbers(tmp_path):
    probs = problems(write(tmp_path, "[" * 100_000 + "]" * 100_000, "r.json"))
    assert probs[0].line == 1 and "nest" in probs[0].message
    probs = problems(write(tmp_path, '{"budget": 1' + "0" * 5000 + "}", "r.json"))
    assert "digits" in probs[0].message


def test_validation_is_linear_in_the_file_size(tmp_path):
    """3,000 experiments, each with an unknown prerequisite, a bad p and a misspelt key.
    "did you mean" hints were quadratic (2,000 such experiments took 28 s); a budget of
    fuzzy comparisons keeps it linear."""
    import time

    lines = ["budget: 1000 gpu_hours", "experiments:"]
    for i in range(3000):
        lines += [
            f"  - id: exp-{i}",
            f"    after: [exp-{i + 1_000_000}]",
            "    p: 1.5",
            "    cost: 10 gpu_hourz",
            "    rewrd: 3",
        ]
    path = write(tmp_path, "\n".join(lines))
    t0 = time.perf_counter()
    probs = problems(path)
    assert len(probs) == 4 * 3000
    assert time.perf_counter() - t0 < 10  # ~0.5 s here; quadratic took minutes


def test_resolution_too_fine_is_refused_where_it_is_written(tmp_path):
    [prob] = problems(
        write(tmp_path, "budget: 100\nresolution: 1e-300\nexperiments: [{id: a, cost: 1, p: 1}]")
    )
    assert (prob.line, prob.col) == (2, 13)
    assert "at most 10,000,000" in prob.message and "leave it out" in prob.message


def test_record_warns_when_spending_exceeds_the_budget(tmp_path):
    from derisk.errors import StateFileError
    from derisk.graphs import load_state, record_outcomes, state_path

    p = write(tmp_path, "budget: 100\nexperiments: [{id: a, cost: 60, p: 0.5, reward: 1}]")
    r = load_roadmap(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record_outcomes(r, state_path(p), {"a": ("failure", 90.0)})
    with pytest.warns(DeriskWarning, match="more than the budget of 100"):
        record_outcomes(r, state_path(p), {"a": ("failure", 150.0)})
    with pytest.raises(StateFileError, match="finite"):
        record_outcomes(r, state_path(p), {"a": ("failure", float("inf"))})
    for bad in ("Infinity", "NaN", "-1", "true"):
        record = f'{{"outcome": "failure", "spent": {bad}}}'
        state_path(p).write_text(f'{{"outcomes": {{"a": {record}}}}}')
        with pytest.raises(StateFileError, match="finite non-negative"):
            load_state(r, state_path(p))


def test_generator_is_seeded_and_acyclic():
    a = random_roadmap(12, seed=7, hypotheses=2, any_groups=0.5, stochastic_costs=0.5)
    b = random_roadmap(12, seed=7, hypotheses=2, any_groups=0.5, stochastic_costs=0.5)
    assert a.experiments == b.experiments
    assert a.experiments != random_roadmap(12, seed=8).experiments
    import networkx as nx

    assert nx.is_directed_acyclic_graph(a.graph())
