"""Numbers that could mislead a research lead (audit, session 3): each test fails on the
output as it was before its fix."""

import json
import math
import re

import numpy as np
import pytest
import yaml
from conftest import copy_example, run, run_json

from derisk._numbers import fmt, fmt_distinct, fmt_range


@pytest.fixture
def wide(monkeypatch):
    """Tables 200 columns wide, whatever the terminal (or xdist worker) says."""
    from derisk.cli._output import out

    monkeypatch.setattr(out, "width", 200)


# ---------------------------------------------------------------- #1 record books the cost


def test_record_books_the_resolved_median_cost_of_a_train_node(tmp_path):
    p = copy_example(tmp_path, "tiny-lm")
    est = run_json("plan", p)["estimates"]["dense-d384-3M"]
    assert est["cost"] > 1e13  # priced from its `train:` block: 6.6e13 FLOP
    rec = run_json("record", p, "dense-d384-3M=failure")
    assert rec["outcomes"]["dense-d384-3M"]["spent"] == pytest.approx(est["cost"], rel=1e-12)
    assert rec["spent"] == pytest.approx(est["cost"], rel=1e-12)
    assert rec["budget_left"] == pytest.approx(2e14 - est["cost"], rel=1e-12)
    after = run_json("plan", p)
    assert after["spent"] == pytest.approx(est["cost"], rel=1e-12)
    assert after["budget_left"] <= 2e14 - est["cost"] + 1e-6 * 2e14


def test_record_books_train_and_given_costs_together(tmp_path):
    p = copy_example(tmp_path, "llm-at-scale")
    est = run_json("plan", p)["estimates"]["proxy-1B"]
    rec = run_json("record", p, "data-mix=success", "proxy-1B=failure")
    assert rec["outcomes"]["data-mix"]["spent"] == 400  # given in the file
    assert rec["outcomes"]["proxy-1B"]["spent"] == pytest.approx(est["cost"], rel=1e-12)
    assert rec["budget_left"] == pytest.approx(15000 - 400 - est["cost"], rel=1e-12)
    text = run("record", p, "proxy-1B=failure").stdout
    assert f"proxy-1B: failure ({fmt(est['cost'], 'USD')})" in text


def test_record_never_prints_the_budget_left_as_unchanged(tmp_path):
    p = copy_example(tmp_path, "tiny-lm")
    probe = run_json("plan", p)["estimates"]["probe"]["cost"]  # 4.3e10 of a 2e14 budget
    text = run("record", p, "probe=success").stdout
    left = re.search(r"budget left (\S+) FLOP", text).group(1)
    assert left != fmt(2e14) and float(left) == pytest.approx(2e14 - probe, rel=1e-4)


def test_record_spent_flag_still_wins(tmp_path):
    p = copy_example(tmp_path, "tiny-lm")
    rec = run_json("record", p, "dense-d384-3M=failure", "--spent", "1e13")
    assert rec["outcomes"]["dense-d384-3M"]["spent"] == 1e13


def test_record_refuses_to_guess_a_cost_it_cannot_price(tmp_path):
    p = copy_example(tmp_path, "llm-at-scale")
    p.write_text(p.read_text().replace("law: chinchilla", "law: no-such-law"))
    res = run("record", p, "data-mix=success", "proxy-1B=failure")
    assert res.exit_code == 2 and "--spent" in res.stderr and "`proxy-1B`" in res.stderr
    assert "`data-mix`" not in res.stderr.splitlines()[-1]  # its cost is given
    assert not (tmp_path / "llm-at-scale.yaml.state.json").exists()
    ok = run_json("record", p, "data-mix=success")  # a given cost needs no law
    assert ok["spent"] == 400
    ok = run_json("record", p, "proxy-1B=failure", "--spent", "350")
    assert ok["outcomes"]["proxy-1B"]["spent"] == 350


def test_record_outcomes_refuses_an_unresolved_train_cost(tmp_path):
    from derisk.errors import StateFileError
    from derisk.graphs import load_roadmap, record_outcomes, state_path

    p = copy_example(tmp_path, "tiny-lm")
    with pytest.raises(StateFileError, match="not resolved"):
        record_outcomes(load_roadmap(p), state_path(p), {"probe": ("failure", None)})
    state = record_outcomes(load_roadmap(p), state_path(p), {"probe": ("failure", 5e10)})
    assert state["probe"]["spent"] == 5e10


# ---------------------------------------------------------------- #6, #7 the formatter


@pytest.mark.parametrize("x", [1 - 1e-15, 1 - 2.3e-6, 0.99951])
def test_a_p_below_one_never_prints_as_one(x):
    assert fmt(x, p=True) == ">0.999"


@pytest.mark.parametrize("x", [1e-300, 3e-7, 0.000499])
def test_a_p_above_zero_never_prints_as_zero(x):
    assert fmt(x, p=True) == "<0.001"


def test_exact_and_ordinary_probabilities():
    assert fmt(1.0, p=True) == "1.000" and fmt(0.0, p=True) == "0.000"
    assert fmt(0.9994, p=True) == "0.999" and fmt(0.0005, p=True) == "0.001"
    # a derived p (a posterior, a sum over paths) within 1e-9 of 0 or 1 is float noise
    assert fmt(1 - 1.1e-16, p=True, derived=True) == "1.000"
    assert fmt(1.1e-16, p=True, derived=True) == "0.000"
    assert fmt(1 - 1e-6, p=True, derived=True) == ">0.999"  # not noise


def test_a_nonzero_number_never_prints_as_zero():
    assert fmt(2e-13) == "2e-13"
    for x in np.logspace(-300, 300, 601):
        for s in (x, -x):
            text = fmt(s)
            assert text not in ("0", "-0") and float(text.replace(",", "")) != 0, (s, text)
            assert math.isclose(float(text.replace(",", "")), s, rel_tol=6e-3), (s, text)
    assert fmt(3e-12, derived=True) == "0"  # only a derived sum's noise is cleaned


def test_distinct_labels_for_distinct_neighbours():
    rng = np.random.default_rng(0)
    for _ in range(200):
        base = 10 ** rng.uniform(-5, 20)
        xs = np.sort(base * (1 + rng.uniform(0, 1e-3, size=6)))
        labels = fmt_distinct(xs, "FLOP")
        for a, b, la, lb in zip(xs, xs[1:], labels, labels[1:], strict=False):
            if a != b:
                assert la != lb, (a, b, la, lb)
        for x, label in zip(xs, labels, strict=True):  # more digits, same number
            assert math.isclose(float(label.split()[0].replace(",", "")), x, rel_tol=6e-3)
    assert fmt_distinct([100.0, 200.0]) == ["100", "200"]  # no extra digits when not needed


def test_a_range_keeps_one_notation():
    assert fmt_range(5e8, 2e9, "FLOP") == "5e8-2e9 FLOP"
    assert fmt_range(25, 100) == "25-100"


def test_predict_never_prints_a_near_certain_p_as_certain():
    for below in (3.0, 2.98, 3.05, 3.1, 3.2):
        d = run_json("predict", "--law", "chinchilla", "--params", "2.67e8", "--tokens", "6e9",
                     "--below", below)  # fmt: skip
        p = d["predictions"][0]["p_below"]
        if p is not None and 0.9995 <= p < 1:
            break
    else:
        pytest.fail("no --below gave a p in [0.9995, 1) to check")
    text = run("predict", "--law", "chinchilla", "--params", "2.67e8", "--tokens", "6e9",
               "--below", below).stdout  # fmt: skip
    assert ">0.999" in text and "1.000" not in text


NOISE_ROADMAP = """\
name: noise
budget: 10
hypotheses: {h: 0.3}
experiments:
  - id: a
    cost: 1
    p: {if: h, then: 0.9, else: 0.1}
  - id: b
    after: [a]
    cost: 1
    p: {if: h, then: 1.0, else: 1.0}
    reward: 10
"""


def test_policy_tree_has_no_float_noise_branch(tmp_path):
    """b's posterior after a success is 1 - 1.1e-16 (a ratio of sums over h): its
    'failure' branch is float noise, not an outcome."""
    from derisk.graphs import load_roadmap
    from derisk.planner import compile_roadmap, solve

    p = tmp_path / "noise.yaml"
    p.write_text(NOISE_ROADMAP)
    sol = solve(compile_roadmap(load_roadmap(p)))
    ib = sol.problem.ids.index("b")
    post = sol.space.p[sol.space.succ_s[sol.space.root, 0], ib]
    assert post != 1.0 and abs(post - 1) < 1e-15  # the noise this test is about

    def branches(node):
        for o in node.get("outcomes", []):
            yield o
            yield from branches(o["next"])

    tree = run_json("plan", p)["tree"]
    probs = [o["prob"] for o in branches(tree)]
    assert probs and all(q > 1e-12 for q in probs), probs
    text = run("plan", p).stdout
    assert "failure (0.000)" not in text and "failure (<0.001)" not in text
    assert "success (1.000)" in text  # the noise on the kept branch is cleaned in print


# ---------------------------------------------------------------- #7, #17 the report


def test_report_prints_the_compute_price_and_law_p_like_the_cli(tmp_path):
    p = copy_example(tmp_path, "tiny-lm")
    run_json("report", p, "-o", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Compute price: 2e-13 reward per FLOP" in md
    assert ".p.shift" not in md and "dense-d128-10M.p (law)" in md
    est = run_json("plan", p)["estimates"]["dense-d128-10M"]
    row = re.search(r"\| dense-d128-10M \| - \| (\S+) \(law cpu-dense", md)
    assert row and row.group(1) == fmt(est["p"], p=True)  # three decimals, as the CLI


# ---------------------------------------------------------------- #10 prior and now


def test_estimates_p_is_labelled_prior_and_the_runnable_p_now(tmp_path, wide):
    p = copy_example(tmp_path, "llm-at-scale")
    run_json("record", p, "data-mix=success", "proxy-1B=failure")
    for cmd in ("plan", "explain"):
        text = run(cmd, p).stdout
        assert "p (prior)" in text and "p now" in text
        assert "proxy-1B (recorded failure)" in text
    d = run_json("plan", p)
    assert {"p", "cost"} <= set(d["estimates"]["dense-7B"])  # JSON keys unchanged
    assert {"p", "cost"} <= set(d["actions"][0])


# ---------------------------------------------------------------- #11 why plan stops


def test_plan_says_nothing_is_affordable_and_names_the_cheapest(tmp_path, wide):
    p = copy_example(tmp_path, "llm-at-scale")
    res = run("plan", p, "--budget", "100")
    assert res.exit_code == 0
    assert "worth its compute" not in res.stdout
    assert "nothing runnable is affordable" in res.stdout
    assert "data-mix, costs 400 USD" in res.stdout
    d = run_json("plan", p, "--budget", "100")
    assert d["next"] is None and d["unaffordable"] == [{"id": "data-mix", "cost": 400.0}]


def test_plan_still_says_when_nothing_is_worth_its_compute(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        "name: dear\nbudget: 100\ncompute_price: 1\n"
        "experiments:\n  - {id: a, cost: 10, p: 0.5, reward: 1}\n"
    )
    res = run("plan", p)
    assert "no experiment is worth its compute" in res.stdout
    assert run_json("plan", p)["unaffordable"] == []


# ---------------------------------------------------------------- #12 simulate


def test_simulate_says_what_agrees_means_and_what_it_checks(tmp_path, wide):
    p = copy_example(tmp_path, "tiny-lm")
    text = run("simulate", p, "-n", "200").stdout
    assert "agrees (|z| < 4)" in text
    assert "within 4 standard errors" in text and "discretised" in text
    d = run_json("simulate", p, "-n", "200")
    assert d["z_limit"] == 4 and d["costs_from"] == "discretised"


# ---------------------------------------------------------------- #13 rounding


def test_rounded_up_costs_and_budget_ranges_are_labelled(tmp_path, wide):
    p = copy_example(tmp_path, "tiny-lm")
    probe = run_json("plan", p)["estimates"]["probe"]["cost"]
    text = run("plan", p).stdout
    assert "rounded up to whole budget steps of 5e10 FLOP" in text
    assert f"before rounding: probe {fmt(probe)}" in text
    p2 = copy_example(tmp_path, "llm-at-scale")
    text = run("plan", p2).stdout
    assert "(median; range " in text and "min-max over the discretised cost levels" in text


def test_whatif_rows_never_share_a_budget_label(tmp_path, wide):
    p = copy_example(tmp_path, "tiny-lm")
    d = run_json("whatif", p)
    text = run("whatif", p, "--rows", "40").stdout
    labels = re.findall(r"^│\s*([0-9.,e]+ FLOP)", text, flags=re.M)
    assert len(labels) > 10
    assert all(a != b for a, b in zip(labels, labels[1:], strict=False)), labels
    # the step where the plan changes is one budget step apart from the row before it
    k = int(np.searchsorted(d["budgets"], d["changes"][-1]))
    before, at = d["budgets"][k - 1], d["budgets"][k]
    assert fmt(before) == fmt(at)  # what made two rows look the same
    assert fmt_distinct([before, at], "FLOP")[0] in labels


def test_tiny_lm_comment_gives_the_probe_cost_the_plan_uses(tmp_path):
    p = copy_example(tmp_path, "tiny-lm")
    m = re.search(r"the probe \(([0-9.e]+) FLOPs\)", p.read_text())
    probe = run_json("plan", p)["estimates"]["probe"]["cost"]
    assert m and float(m.group(1)) == pytest.approx(probe, rel=5e-3)


# ---------------------------------------------------------------- #9 the proxies


def test_llm_at_scale_proxies_are_described_as_they_behave(tmp_path):
    """The example says the plan never runs a proxy under this law: check it by removing
    them, which must leave the optimal value unchanged."""
    p = copy_example(tmp_path, "llm-at-scale")
    text = p.read_text()
    assert "tests of the law" not in text and "lands in the law's band" not in text
    data = yaml.safe_load(text)
    data["experiments"] = [e for e in data["experiments"] if not e["id"].startswith("proxy")]
    q = tmp_path / "no-proxies.yaml"
    q.write_text(json.dumps(data))
    with_proxies, without = run_json("plan", p)["value"], run_json("plan", q)["value"]
    assert with_proxies == pytest.approx(without, abs=1e-9)


def test_optimal_says_how_far_its_allocation_extrapolates():
    """`optimal` far beyond the law's runs says so (stderr, and in --json), with the same
    ratios as the law's data ranges give by hand; inside them, it says it is inside."""
    law = json.loads(
        (
            __import__("pathlib").Path(__file__).parent.parent
            / "derisk/estimators/data/laws/chinchilla.json"
        ).read_text()
    )
    n_hi, d_hi = law["data"]["params"][1], law["data"]["tokens"][1]
    far = run("optimal", "--flops", "1e25", "--json")
    assert far.exit_code == 0
    d = json.loads(far.stdout)
    assert d["extrapolation"]["params"] == pytest.approx(d["params"] / n_hi)
    assert d["extrapolation"]["tokens"] == pytest.approx(d["tokens"] / d_hi)
    assert d["extrapolation"]["params"] > 10 and "may not hold that far" in far.stderr
    near = run("optimal", "--flops", "1e22")
    assert near.exit_code == 0 and "within the law's runs" in near.stdout
    assert "may not hold" not in near.stderr
    # far below the smallest runs is extrapolation too, not "within"
    small = run("optimal", "--flops", "1e14", "--json")
    d = json.loads(small.stdout)
    n_lo = law["data"]["params"][0]
    assert (
        d["below_runs"]["params"] == pytest.approx(d["params"] / n_lo) and n_lo > 10 * d["params"]
    )
    assert "below the smallest fitted model" in small.stderr


def test_predict_all_runs_of_an_empty_store_says_so(tmp_path, monkeypatch):
    from derisk.estimators import RunStore

    monkeypatch.setenv("DERISK_STORE", str(tmp_path / "runs.sqlite"))
    RunStore(tmp_path / "runs.sqlite", create=True)  # a store with no runs
    res = run("predict", "--law", "cpu-dense", "--run", "all", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["predictions"] == []
    assert "no finished runs" in res.stderr


def test_fit_reads_training_compute_and_records_the_parameter_count(tmp_path):
    """`--flops-col` takes tokens as C / (6 N) (Epoch's and Hoffmann et al.'s data give
    N and C): the fit equals the one on a file with those tokens written out by hand, and
    `--params-kind total` is recorded in the saved law."""
    rng = np.random.default_rng(0)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e9), 40)).tolist()
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e11), 40)).tolist()
    loss = [
        (1.7 + 400 / a**0.34 + 410 / b**0.28) * math.exp(e)
        for a, b, e in zip(n, d, rng.normal(0, 0.005, 40).tolist(), strict=True)
    ]
    flops_csv, tokens_csv = tmp_path / "c.csv", tmp_path / "t.csv"
    flops_csv.write_text(
        "Model Size,Training FLOP,loss\n"
        + "".join(f"{a!r},{6 * a * b!r},{c!r}\n" for a, b, c in zip(n, d, loss, strict=True))
    )
    tokens_csv.write_text(
        "params,tokens,loss\n"
        + "".join(
            f"{a!r},{6 * a * b / (6 * a)!r},{c!r}\n" for a, b, c in zip(n, d, loss, strict=True)
        )
    )
    law = tmp_path / "law.json"
    a = run_json(
        "fit",
        flops_csv,
        "--params-col",
        "Model Size",
        "--flops-col",
        "Training FLOP",
        "--params-kind",
        "total",
        "--bootstrap",
        "2",
        "--save",
        law,
    )
    b = run_json("fit", tokens_csv, "--bootstrap", "2")
    for k in ("E", "A", "B", "alpha", "beta"):
        assert a[k] == pytest.approx(b[k], rel=1e-9)
    assert json.loads(law.read_text())["data"]["params_kind"] == "total"
    both = run("fit", flops_csv, "--flops-col", "Training FLOP", "--tokens-col", "D")
    assert both.exit_code == 2 and "give one" in both.stderr
    bad = run("fit", tokens_csv, "--params-kind", "embeddings")
    assert bad.exit_code == 2 and "--params-kind" in bad.stderr


def test_predict_counts_a_shape_as_the_law_does():
    """`predict --d-model` feeds a total-count law (chinchilla) the total count, and
    derisk's own law the non-embedding one (the trainer's byte vocabulary, 256)."""
    from derisk._flops import Shape, param_counts

    c = param_counts(Shape(d_model=256, layers=4))
    for law, key in (("chinchilla", "total"), ("cpu-dense", "non_embedding")):
        d = run_json(
            "predict", "--law", law, "--d-model", "256", "--n-layer", "4", "--tokens", "1e8"
        )
        assert d["predictions"][0]["params"] == c[key]
