"""Fuzz: malformed, random and hostile roadmaps through validation and `derisk plan`.

Whatever the file says, the answer is a roadmap or a `RoadmapError` (exit code 0 or 2
in the CLI), never a traceback, and it comes quickly: alias bombs, deep nesting and
huge numbers included. Plans are kept to <= 8 experiments, so that the test does not
depend on the memory guard of large state spaces.
"""

import time
import warnings

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from derisk.cli import app
from derisk.errors import RoadmapError
from derisk.graphs import Conditional, load_roadmap, random_roadmap, roadmap_from_dict

TIME_CAP_S = 5.0  # per example; each takes milliseconds when all is well
FAST = settings(
    max_examples=60,
    deadline=None,  # timed by hand against TIME_CAP_S: the first call imports things
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def as_dict(r) -> dict:
    """A validated roadmap back to file data."""
    exps = []
    for e in r.experiments:
        d: dict = {"id": e.id, "title": e.title}
        if e.requires:
            d["after"] = [c[0] if len(c) == 1 else {"any": list(c)} for c in e.requires]
        if isinstance(e.p, Conditional):
            d["p"] = {"if": e.p.hypothesis, "then": e.p.then, "else": e.p.otherwise}
        else:
            d["p"] = e.p
        d["cost"] = (
            {"median": e.cost.median, "p90": e.cost.p90} if e.cost.stochastic else e.cost.median
        )
        if e.reward:
            d["reward"] = e.reward
        exps.append(d)
    out = {"name": r.name, "budget": r.budget, "experiments": exps}
    if r.resolution is not None:
        out["resolution"] = r.resolution
    if r.hypotheses:
        out["hypotheses"] = dict(r.hypotheses)
    if r.compute_price:
        out["compute_price"] = r.compute_price
    return out


KEYS = ["id", "p", "cost", "after", "reward", "if", "then", "else", "median", "p90", "any"]
KEYS += ["budget", "resolution", "compute_price", "hypotheses", "experiments", "train"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(10**15, 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 1e300, 9.3e18, 1e19, -0.0, 0.5, 2.0]),
    st.text(max_size=12),
    st.sampled_from(["10 GPU-h", "3 gpu_days", "1e21 flops", "1,000", "5 parsecs", "e0", "h0"]),
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def mutated_roadmaps(draw, max_n: int = 8) -> dict:
    """A random valid roadmap with a few random parts replaced, removed or added."""
    r = random_roadmap(
        draw(st.integers(1, max_n)),
        seed=draw(st.integers(0, 10**6)),
        hypotheses=draw(st.integers(0, 2)),
        stochastic_costs=draw(st.sampled_from([0.0, 0.5])),
        any_groups=draw(st.sampled_from([0.0, 0.5])),
        compute_price=draw(st.sampled_from([0.0, 0.01])),
        budget_levels=draw(st.integers(1, 60)),
    )
    data = as_dict(r)
    for _ in range(draw(st.integers(0, 3))):
        # walk to a random container, then replace / delete / add one of its entries
        node = data
        for _ in range(draw(st.integers(0, 3))):
            children = list(node.values()) if isinstance(node, dict) else node
            children = [c for c in children if isinstance(c, dict | list) and c]
            if not children:
                break
            node = draw(st.sampled_from(children))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node, key=str)))
            if action == "delete":
                del node[key]
            elif action == "add":
                node[draw(st.sampled_from(KEYS))] = draw(junk)
            else:
                node[key] = draw(junk)
        elif isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            if action == "delete":
                del node[i]
            elif action == "add":
                node.append(draw(junk))
            else:
                node[i] = draw(junk)
    return data


def validate(path_or_data):
    """Load or validate; a roadmap or a RoadmapError, within the time cap."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if isinstance(path_or_data, dict):
                roadmap_from_dict(path_or_data)
            else:
                load_roadmap(path_or_data)
        except RoadmapError as exc:
            assert exc.problems and all(str(p) for p in exc.problems)
    assert time.perf_counter() - t0 < TIME_CAP_S


@FAST
@given(data=mutated_roadmaps(max_n=12))
def test_random_and_mutated_roadmaps_validate_or_fail_cleanly(tmp_path, data):
    validate(data)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    validate(path)


@FAST
@given(data=junk)
def test_junk_at_the_top_level(tmp_path, data):
    validate(data if isinstance(data, dict) else {"budget": 10, "experiments": data})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    validate(path)


@FAST
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_random_text(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    validate(path)
    json_path = tmp_path / "r.json"
    json_path.write_text(text, encoding="utf-8")
    validate(json_path)


def bomb(width: int, depth: int) -> str:
    """Billion laughs: `depth` lines of `width` aliases to the line before."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for k in range(1, depth):
        lines.append(f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]")
    return "budget: 10\nexperiments:\n  - {id: a, p: 0.5, cost: 1, reward: 1}\n" + "\n".join(lines)


def huge_number(field: str, digits: int) -> str:
    """A roadmap with an integer of `digits` digits as one of its numbers."""
    values = {"budget": "100", "cost": "1", "reward": "1", "p": "0.5"}
    values[field] = "1" + "0" * digits
    return (
        f"budget: {values['budget']}\nexperiments:\n"
        f"  - {{id: a, p: {values['p']}, cost: {values['cost']}, reward: {values['reward']}}}\n"
    )


hostile = st.one_of(
    st.builds(bomb, st.integers(5, 12), st.integers(6, 12)),
    st.builds(
        lambda d, flow: (
            "budget: 10\nexperiments: "
            + ("[" * d + "]" * d if flow else "".join(f"\n{'  ' * i}- " for i in range(d)) + "x")
        ),
        st.integers(65, 3000),
        st.booleans(),
    ),
    st.builds(
        huge_number, st.sampled_from(["budget", "cost", "reward", "p"]), st.integers(309, 6000)
    ),
    st.sampled_from(
        [
            "budget: 10\nexperiments: &a [*a]\n",
            "budget: !!int abc\nexperiments: []\n",
            "budget: !!float x\nexperiments: []\n",
            "budget: !!binary '@@'\nexperiments: []\n",
            "budget: !!python/object:os.system ls\nexperiments: []\n",
            "budget: !custom 1\nexperiments: []\n",
            "budget: 1\n---\nbudget: 2\n",
            "budget: 10\nexperiments:\n  - &e {id: a, p: 0.5, cost: 1}\n  - *e\n",
            "budget: 10\nexperiments: [{id: a, p: 0.5, cost: 1, <<: {reward: 1}}]\n",
        ]
    ),
)


@settings(FAST, max_examples=40)
@given(text=hostile)
def test_hostile_yaml_is_refused_quickly_with_a_position(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RoadmapError) as exc:
            load_roadmap(path)
    assert time.perf_counter() - t0 < TIME_CAP_S
    assert exc.value.problems[0].line is not None, exc.value.problems


runner = CliRunner()


@settings(FAST, max_examples=25)
@given(data=mutated_roadmaps(max_n=8) | hostile)
def test_plan_exits_0_or_2_without_a_traceback(tmp_path, data):
    path = tmp_path / "r.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    t0 = time.perf_counter()
    result = runner.invoke(app, ["plan", str(path), "--json", "--max-memory", "0.5"])
    elapsed = time.perf_counter() - t0
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception,
        result.output,
    )
    assert result.exit_code in (0, 2), result.output
    assert elapsed < 4 * TIME_CAP_S
