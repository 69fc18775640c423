"""The resolve stage: train/success specs -> p, cost and provenance (issue 12, items 1-4)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from derisk.errors import RoadmapError
from derisk.estimators import resolve
from derisk.graphs import load_roadmap
from tests.conftest import run, run_json

H100 = 989e12  # NVIDIA's datasheet: 1,979 TFLOPS bf16 with sparsity, half dense


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def by_hand_flops(d, layers, seq, vocab, tokens):
    """The trainer's count by hand for a dense model: SwiGLU width round(8/3 d / 16) 16."""
    ff = round(8 / 3 * d / 16) * 16
    matmul = layers * (4 * d * d + 3 * d * ff)
    return tokens * 3 * (2 * matmul + 2 * d * vocab + 2 * 2 * layers * d * (seq + 1) / 2)


def test_hardware_mfu_and_money_price_a_run(tmp_path):
    p = write(
        tmp_path,
        """\
        budget: 50000 usd
        hardware: h100
        mfu: 0.4
        usd_per_gpu_hour: 2.5
        experiments:
          - id: fixed
            train: {d_model: 2048, layers: 24, seq_len: 2048, vocab: 32000, tokens: 2e10}
            p: 0.5
            reward: 1
          - id: ranged
            train: {d_model: 2048, layers: 24, vocab: 32000, tokens: 2e10, hardware: a100,
                    mfu: [0.3, 0.45]}
            p: 0.5
            reward: 1
        """,
    )
    r = resolve(load_roadmap(p)).roadmap
    flops = by_hand_flops(2048, 24, 2048, 32000, 2e10)
    hours = flops / (H100 * 0.4 * 3600)
    assert r.experiment("fixed").cost.median == pytest.approx(hours * 2.5, rel=1e-12)
    assert r.experiment("fixed").cost.p90 is None
    ranged = r.experiment("ranged").cost  # 80% of MFU in [0.3, 0.45]: cost log-normal
    a100 = 312e12
    assert ranged.median == pytest.approx(flops / (a100 * (0.3 * 0.45) ** 0.5 * 3600) * 2.5)
    assert ranged.p90 == pytest.approx(flops / (a100 * 0.3 * 3600) * 2.5)
    est = r.experiment("ranged").estimate
    assert est["hardware"] == "a100" and est["mfu"] == [0.3, 0.45] and est["flops"] == flops


def test_flops_per_gpu_hour_still_works_and_a_shape_is_counted(tmp_path):
    p = write(
        tmp_path,
        """\
        budget: 100 gpu_hours
        flops_per_gpu_hour: 1e18
        experiments:
          - id: a
            train: {params: 1e9, tokens: 1e10}
            p: 0.5
            reward: 1
          - id: typo
            train: {params: 1e9, d_model: 128, layers: 2, tokens: 1e10}
            p: 0.5
            reward: 1
        """,
    )
    with pytest.raises(RoadmapError) as exc:
        resolve(load_roadmap(p))
    [prob] = exc.value.problems
    assert (
        (prob.line, prob.col) == (9, 21)
        and "389760" in prob.message
        and "leave `params` out" in prob.message
    )
    text = p.read_text().replace("params: 1e9, d_model", "d_model")
    r = resolve(load_roadmap(write(tmp_path, text))).roadmap
    assert r.experiment("typo").cost.median == pytest.approx(
        by_hand_flops(128, 2, 2048, 256, 1e10) / 1e18
    )
    # params only: the same count on d_model = 128 x layers, N = 12 layers d_model^2
    layers = (1e9 / (12 * 128**2)) ** (1 / 3)
    d = 128 * layers
    per_token = 3 * (2 * 1e9 + 2 * d * 256 + 2 * 2 * layers * d * 2049 / 2)
    assert r.experiment("a").cost.median == pytest.approx(1e10 * per_token / 1e18)


def test_pricing_problems_are_located_and_say_the_fix(tmp_path):
    p = write(
        tmp_path,
        """\
        budget: 100 gpu_hours
        experiments:
          - id: nohw
            train: {params: 1e9, tokens: 1e10}
            p: 0.5
          - id: nomfu
            train: {params: 1e9, tokens: 1e10, hardware: h100}
            p: 0.5
          - id: badmfu
            train: {params: 1e9, tokens: 1e10, hardware: h100, mfu: 1.5}
            p: 0.5
        """,
    )
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(p)
    msgs = {q.line: q.message for q in exc.value.problems}
    assert "hardware:" in msgs[4] and "mfu:" in msgs[4]
    assert "no `mfu`" in msgs[7]
    assert "(0, 1]" in msgs[10]
    text = p.read_text().replace("hardware: h100, mfu: 1.5", "hardware: h1000, mfu: 0.4")
    text = text.replace("hardware: h100}", "hardware: h100, mfu: 0.4}")
    text = text.replace(
        "tokens: 1e10}\n    p: 0.5\n  - id: nomfu",
        "tokens: 1e10, hardware: a100, mfu: 0.3}\n    p: 0.5\n  - id: nomfu",
    )
    with pytest.raises(RoadmapError) as exc:
        resolve(load_roadmap(write(tmp_path, text)))
    [prob] = exc.value.problems
    assert prob.line == 10 and "h1000" in prob.message and "h100" in prob.message


def test_far_extrapolation_warns_and_strict_laws_refuses(tmp_path):
    p = write(
        tmp_path,
        """\
        budget: 1e17 flops
        experiments:
          - id: near
            train: {d_model: 128, layers: 2, seq_len: 64, tokens: 1e7}
            success: {loss_below: 1.3, law: cpu-dense}
            reward: 1
          - id: far
            train: {d_model: 1024, layers: 8, seq_len: 64, tokens: 1e8}
            success: {loss_below: 1.0, law: cpu-dense}
            reward: 1
        """,
    )
    res = resolve(load_roadmap(p))
    far = res.estimates["far"].extrapolation
    assert far["params"] > 10 and res.estimates["near"].extrapolation["params"] < 3
    [w] = [w for w in res.warnings if "`far`" in w]
    assert "cpu-dense" in w and f"{far['params']:.3g}x" in w
    assert not any("`near`" in w for w in res.warnings)
    out = run_json("plan", p)
    assert any("`far`" in w for w in out["warnings"])
    assert out["estimates"]["far"]["extrapolation"]["params"] == pytest.approx(far["params"])
    assert set(out["estimates"]["near"]) >= {
        "p",
        "cost",
        "flops",
        "law",
        "loss",
        "loss_interval",
        "extrapolation",
    }
    bad = run("plan", p, "--strict-laws")
    assert bad.exit_code == 2 and "--strict-laws" in bad.stderr and ":8:" in bad.stderr
    assert run("validate", p, "--strict-laws").exit_code == 2
    assert run("explain", p, "--strict-laws").exit_code == 2


def test_planning_a_law_driven_roadmap_never_imports_jax(tmp_path):
    code = (
        "import sys, json\n"
        "from derisk.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['plan', sys.argv[1], '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(json.dumps({'jax': 'jax' in sys.modules}))\n"
    )
    from derisk.graphs import example_path

    out = subprocess.run(
        [sys.executable, "-c", code, str(example_path("tiny-lm"))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.splitlines()[-1]) == {"jax": False}


def test_beats_is_the_joint_probability_by_simulation(tmp_path):
    """P(loss_a < loss_b): one law's runs share a bootstrap sample; two laws do not.
    Checked against a Monte Carlo simulation of the same model, written here."""
    import numpy as np

    from derisk.scaling import LAWS, law_inputs, load_law, prob_beats

    rng = np.random.default_rng(0)
    dense, moe = load_law("cpu-dense"), load_law("cpu-moe")
    xa = law_inputs("chinchilla", 3e5, 3e6)
    xb = law_inputs("chinchilla", 2e5, 5e6)
    xm = law_inputs("moe_experts", 2e5, 3e6, experts=8)

    def simulate(fa, x1, fb, x2, shared, n=400_000):
        k = rng.integers(0, len(fa.bootstrap), n)
        l = k if shared else rng.integers(0, len(fb.bootstrap), n)
        la = LAWS[fa.law].log_predict(fa.bootstrap, x1)[:, 0][k]
        lb = LAWS[fb.law].log_predict(fb.bootstrap, x2)[:, 0][l]
        sa = np.hypot(fa.sigma_log, fa.extrapolation_sigma(x1)[0])
        sb = np.hypot(fb.sigma_log, fb.extrapolation_sigma(x2)[0])
        return np.mean(la + sa * rng.standard_normal(n) < lb + sb * rng.standard_normal(n))

    same = prob_beats(dense, xa, dense, xb)
    assert same == pytest.approx(simulate(dense, xa, dense, xb, True), abs=4e-3)
    cross = prob_beats(moe, xm, dense, xa)
    assert cross == pytest.approx(simulate(moe, xm, dense, xa, False), abs=4e-3)
    # sharing matters: treating one law's two runs as independent gives another number
    independent = simulate(dense, xa, dense, xb, False)
    assert abs(independent - same) > 0.01


def test_beats_in_a_roadmap(tmp_path):
    from derisk.scaling import law_inputs, load_law, prob_beats

    p = write(
        tmp_path,
        """\
        budget: 1e15 flops
        experiments:
          - id: dense
            train: {d_model: 128, layers: 2, seq_len: 64, tokens: 3e6}
            p: 0.9
          - id: moe
            train: {arch: moe, experts: 8, top_k: 1, d_model: 128, layers: 2, seq_len: 64,
                    tokens: 3e6}
            success: {beats: dense}
            reward: 1
        """,
    )
    r = resolve(load_roadmap(p)).roadmap
    moe, dense = load_law("cpu-moe"), load_law("cpu-dense")
    want = prob_beats(
        moe,
        law_inputs("moe_experts", 391808, 3e6, experts=8),  # active count of that shape
        dense,
        law_inputs("chinchilla", 389760, 3e6),
    )
    assert r.experiment("moe").p == pytest.approx(want, rel=1e-12)
    assert r.experiment("moe").estimate["beats"] == "dense"
    text = p.read_text()
    bad = text.replace("beats: dense", "beats: dens")
    with pytest.raises(RoadmapError, match="did you mean `dense`"):
        load_roadmap(write(tmp_path, bad, "bad.yaml"))
    both = text.replace("beats: dense", "beats: dense, loss_below: 1.3")
    with pytest.raises(RoadmapError, match="one of `loss_below`"):
        load_roadmap(write(tmp_path, both, "both.yaml"))


def test_a_law_fitted_from_python_keeps_its_parameter_column_and_status(tmp_path):
    import derisk.estimators
    from derisk.scaling import fit_law, load_law, load_runs_csv, save_law, uses_active_params

    csv = Path(derisk.estimators.__file__).parent / "data" / "runs_cpu_moe.csv"
    data = load_runs_csv(csv, columns={"params": "active_params"})
    fit = fit_law(data, "chinchilla", starts=4)
    back = load_law(str(save_law(fit, tmp_path / "moe-dense-form.json")))
    assert back.summary["params_col"] == "active_params" and uses_active_params(back)
    assert (back.status, back.flags, back.message) == (fit.status, fit.flags, fit.message)


SHARED = """\
budget: 2e14 flops
experiments:
  - id: small
    train: {d_model: 64, layers: 2, seq_len: 64, tokens: 3e6}
    success: {loss_below: 1.45, law: cpu-dense}
  - id: big
    train: {d_model: 384, layers: 2, seq_len: 64, tokens: 3e6}
    success: {loss_below: 1.25, law: cpu-dense}
    reward: 10
  - id: other
    train: {d_model: 128, layers: 2, seq_len: 64, tokens: 3e6}
    success: {loss_below: 1.35, law: cpu-dense}
    reward: 4
"""


def _world_ps(law, idx, params, tokens, below):
    """P(loss < below | bootstrap sample k), from the law file's numbers, written here."""
    import numpy as np
    from scipy import stats

    a, b, e, alpha, beta = np.array(law["bootstrap"])[idx].T
    loss = np.exp(e) + np.exp(a) / params**alpha + np.exp(b) / tokens**beta
    extra = 0.0
    for axis, term in law["calibration"]["axes"].items():
        x = {"params": params, "tokens": tokens}.get(axis, 6 * params * tokens)
        extra = max(extra, term["per_decade"] * max(0.0, np.log10(x / term["reference"])))
    return stats.norm.cdf((np.log(below) - np.log(loss)) / np.hypot(law["sigma_log"], extra))


def test_law_worlds_are_a_shared_latent_variable(tmp_path):
    """Nodes under one law get p = P(success | world k) for K bootstrap worlds, checked
    against the law file by hand; the planner's value equals a brute-force solve over
    histories and worlds; the marginal p is the mean over worlds."""
    import numpy as np

    from derisk.graphs import Categorical
    from derisk.planner import compile_roadmap, solve
    from derisk.scaling import load_law  # noqa: F401  (the shipped law's file, below)
    from tests.reference import brute_force_value

    law_file = Path(__import__("derisk").__file__).parent / "estimators/data/laws/cpu-dense.json"
    law = json.loads(law_file.read_text())
    r = resolve(load_roadmap(write(tmp_path, SHARED)), worlds=6).roadmap  # 6 of 200
    assert set(r.categories) == {"law cpu-dense"}
    assert list(r.categories["law cpu-dense"].values()) == [1 / 6] * 6
    idx = np.unique(np.linspace(0, len(law["bootstrap"]) - 1, 6).round().astype(int))
    for eid, (params, tokens, below) in {
        "small": (100672, 3e6, 1.45),
        "big": (3540864, 3e6, 1.25),
        "other": (389760, 3e6, 1.35),
    }.items():
        p = r.experiment(eid).p
        assert isinstance(p, Categorical) and p.hypothesis == "law cpu-dense"
        want = _world_ps(law, idx, params, tokens, below)
        np.testing.assert_allclose([q for _, q in p.table], want, rtol=1e-9)
        assert r.experiment(eid).estimate["p"] == pytest.approx(want.mean())
    sol = solve(compile_roadmap(r))
    assert sol.root_value == pytest.approx(brute_force_value(r), rel=1e-9)
    alone = resolve(load_roadmap(write(tmp_path, SHARED)), independent_laws=True).roadmap
    assert not alone.categories and isinstance(alone.experiment("big").p, float)


def test_a_small_runs_outcome_moves_the_big_runs_p(tmp_path):
    """Record a failure of the small law-driven run: the other runs' p become the Bayes
    posterior over the law's worlds (by hand below); with --independent-laws they stay.
    The law's parameters trade off: the failure lowers the p of a run of similar size and
    raises the p of a larger one."""
    import numpy as np

    p = write(tmp_path, SHARED)
    r = resolve(load_roadmap(p)).roadmap

    def table(eid):
        return np.array([q for _, q in r.experiment(eid).p.table])

    small = table("small")
    before = {a["id"]: a["p"] for a in run_json("plan", p)["actions"]}
    assert run("record", p, "small=failure").exit_code == 0
    after = {a["id"]: a["p"] for a in run_json("plan", p)["actions"]}
    for eid in ("big", "other"):
        assert before[eid] == pytest.approx(table(eid).mean())
        posterior = np.sum(table(eid) * (1 - small)) / np.sum(1 - small)
        assert after[eid] == pytest.approx(posterior, rel=1e-9)
    assert after["other"] < before["other"] - 0.005  # similar size: failure is bad news
    assert after["big"] > before["big"] + 0.005  # larger: the law's trade-off
    fixed = {a["id"]: a["p"] for a in run_json("plan", p, "--independent-laws")["actions"]}
    for eid in ("big", "other"):
        assert fixed[eid] == pytest.approx(before[eid], rel=1e-9)  # the marginal, unmoved


def test_sensitivity_of_a_law_driven_p_shifts_every_world(tmp_path):
    """The `p (law)` input moves every world's p by the same amount: its derivative
    matches a central difference of fresh solves of roadmaps shifted by hand."""
    import dataclasses

    from derisk.graphs import Categorical
    from derisk.planner import compile_roadmap, sensitivity, solve

    r = resolve(load_roadmap(write(tmp_path, SHARED))).roadmap
    sol = solve(compile_roadmap(r))
    sens = sensitivity(r, sol, flips=False)
    [knob] = [q for q in sens.parameters if q.node == "other" and q.param == "p"]
    assert knob.branch == "shift"

    def shifted(d):
        e = r.experiment("other")
        table = tuple((v, q + d) for v, q in e.p.table)
        other = dataclasses.replace(e, p=Categorical(hypothesis=e.p.hypothesis, table=table))
        exps = tuple(other if x.id == "other" else x for x in r.experiments)
        return solve(compile_roadmap(dataclasses.replace(r, experiments=exps))).root_value

    h = 1e-4  # every world's p stays inside [0, 1]: no clipping
    assert knob.gradient == pytest.approx((shifted(h) - shifted(-h)) / (2 * h), rel=1e-4)
    assert knob.value_high == pytest.approx(shifted(knob.high - knob.base), rel=1e-9)


def test_one_flop_count_for_the_trainer_the_roadmap_optimal_and_predict(tmp_path):
    """The roadmap prices a run at exactly the FLOPs the trainer records for it, and
    `optimal --exact` / `predict --d-model` count with the same function."""
    from derisk.estimators import ModelConfig, flops_per_token, param_counts
    from derisk.scaling import flops_per_token as law_flops_per_token

    cfg = ModelConfig(arch="moe", d_model=96, n_layer=3, n_head=4, seq_len=64, experts=4, top_k=2)
    p = write(
        tmp_path,
        """\
        budget: 1e15 flops
        experiments:
          - id: run
            train: {arch: moe, d_model: 96, layers: 3, seq_len: 64, experts: 4, top_k: 2,
                    tokens: 1e6}
            p: 0.5
            reward: 1
        """,
    )
    r = resolve(load_roadmap(p))
    assert r.roadmap.experiment("run").cost.median == pytest.approx(1e6 * flops_per_token(cfg))
    counts = param_counts(cfg)
    est = r.estimates["run"]
    assert est.flops_from == "shape"
    # given only the active count, the law side uses the same per-token formula
    n = counts["non_embedding_active"]
    assert law_flops_per_token(n, seq_len=64) == pytest.approx(
        3
        * (
            2 * n
            + 2 * 128 * (n / (12 * 128**2)) ** (1 / 3) * 256
            + 2 * 2 * (n / (12 * 128**2)) ** (1 / 3) * 128 * (n / (12 * 128**2)) ** (1 / 3) * 65 / 2
        ),
        rel=1e-12,
    )
    out = run_json("predict", "--d-model", "96", "--n-layer", "3", "--tokens", "1e6")
    dense = param_counts(ModelConfig(d_model=96, n_layer=3, n_head=4))["non_embedding"]
    assert out["predictions"][0]["params"] == dense


def test_an_unknown_default_hardware_is_one_problem_at_its_line(tmp_path):
    p = write(
        tmp_path,
        """\
        budget: 100 gpu_hours
        hardware: h1OO
        mfu: 0.4
        experiments:
          - {id: a, train: {params: 1e9, tokens: 1e10}, p: 0.5, reward: 1}
          - {id: b, train: {params: 2e9, tokens: 1e10}, p: 0.5, reward: 1}
        """,
    )
    with pytest.raises(RoadmapError) as exc:
        resolve(load_roadmap(p))
    [prob] = exc.value.problems
    assert (prob.line, prob.col) == (2, 11) and "h1OO" in prob.message and "h100" in prob.message


CATEGORICAL = """\
budget: 30
hypotheses:
  arch: {a: 0.5, b: 0.3, c: 0.2}
  stable: 0.6
experiments:
  - {id: probe, cost: 3, p: {if: arch, a: 0.9, b: 0.5, c: 0.1}}
  - {id: pilot, cost: 5, p: {if: stable, then: 0.8, else: 0.2}}
  - {id: big, after: [pilot], cost: 15, p: {if: arch, a: 0.8, b: 0.4, c: 0.05}, reward: 10}
  - {id: alt, cost: 12, p: {if: stable, then: 0.7, else: 0.3}, reward: 4}
"""


def test_categorical_hypotheses_plan_like_brute_force_and_show_posteriors(tmp_path):
    from derisk.planner import compile_roadmap, solve
    from tests.reference import brute_force_value

    p = write(tmp_path, CATEGORICAL)
    r = load_roadmap(p)
    assert r.categories == {"arch": {"a": 0.5, "b": 0.3, "c": 0.2}}
    assert solve(compile_roadmap(r)).root_value == pytest.approx(brute_force_value(r), rel=1e-12)
    assert run("record", p, "probe=failure").exit_code == 0
    post = run_json("explain", p)["posteriors"]
    # Bayes by hand: P(arch = v | probe failed) = prior(v) (1 - p_probe(v)) / sum
    w = {"a": 0.5 * 0.1, "b": 0.3 * 0.5, "c": 0.2 * 0.9}
    for v, x in w.items():
        assert post[f"arch={v}"] == pytest.approx(x / sum(w.values()))
    assert post["stable"] == pytest.approx(0.6)


def test_categorical_mistakes_are_located(tmp_path):
    bad = CATEGORICAL.replace("c: 0.2}\n  stable", "c: 0.1}\n  stable")
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(write(tmp_path, bad, "sum.yaml"))
    [prob] = exc.value.problems  # one problem: the nodes using it are not blamed too
    assert prob.line == 3 and "sum to 1" in prob.message
    missing = CATEGORICAL.replace("b: 0.5, c: 0.1}", "b: 0.5}")
    with pytest.raises(RoadmapError) as exc:
        load_roadmap(write(tmp_path, missing, "missing.yaml"))
    [prob] = exc.value.problems
    assert prob.line == 6 and "missing: c" in prob.message


def test_a_total_parameter_law_is_given_total_parameters(tmp_path):
    """Hoffmann et al. count every parameter, embeddings and output layer included (Kaplan
    et al. count non-embedding ones; Pearce & Song 2024), so the shipped `chinchilla`
    law (`params_kind: total`) must be fed the total count, while derisk's own CPU laws
    take the non-embedding count they were fitted on."""
    from derisk.scaling import law_inputs, load_law, prob_below_at

    def prob_below(law, params, tokens, below):
        return prob_below_at(law, law_inputs(law.law, params, tokens), below)

    p = write(
        tmp_path,
        """\
        budget: 1e22 flops
        experiments:
          - id: big
            train: {d_model: 2048, layers: 24, vocab: 32000, tokens: 2.6e10}
            success: {loss_below: 2.48, law: chinchilla}
            reward: 1
          - id: sized
            train: {params: 1.2e9, tokens: 2.6e10}
            p: 0.5
            reward: 1
        """,
    )
    res = resolve(load_roadmap(p))
    d, layers, vocab = 2048, 24, 32000
    ff = round(8 / 3 * d / 16) * 16  # SwiGLU width, as the trainer rounds it
    non_embedding = layers * (4 * d * d + 3 * d * ff + 2 * d) + d
    total = non_embedding + 2 * vocab * d  # input embedding and untied output layer
    est = res.estimates["big"]
    assert est.params == pytest.approx(total, rel=1e-12)
    assert est.law_data["params_kind"] == "total"
    law = load_law("chinchilla")
    assert est.p == pytest.approx(prob_below(law, total, 2.6e10, 2.48), rel=1e-9)
    assert est.p != pytest.approx(prob_below(law, non_embedding, 2.6e10, 2.48), rel=1e-3)
    # a size without a shape cannot be turned into a total count: located, with the fix
    bad = write(
        tmp_path,
        """\
        budget: 1e22 flops
        experiments:
          - id: sized
            train: {params: 1.2e9, tokens: 2.6e10}
            success: {loss_below: 2.48, law: chinchilla}
            reward: 1
        """,
        name="bad.yaml",
    )
    out = run("validate", bad)
    assert out.exit_code == 2 and "bad.yaml:4:" in out.stderr
    assert "total parameter counts" in out.stderr and "d_model" in out.stderr


def test_a_bad_pricing_default_is_one_problem(tmp_path):
    """A top-level `mfu` out of range is one error at its line, not one more per node
    saying the node lacks an mfu."""
    p = write(
        tmp_path,
        """\
        budget: 15000 usd
        hardware: h100
        mfu: 1.5
        usd_per_gpu_hour: 2.5
        experiments:
          - id: a
            train: {d_model: 512, layers: 8, vocab: 32000, tokens: 1e9}
            p: 0.5
            reward: 1
          - id: b
            train: {d_model: 512, layers: 8, vocab: 32000, tokens: 2e9}
            p: 0.5
            reward: 1
        """,
    )
    out = run("validate", p)
    assert out.exit_code == 2
    lines = [ln for ln in out.stderr.splitlines() if "r.yaml:" in ln]
    assert len(lines) == 1 and "r.yaml:3:" in lines[0] and "mfu" in lines[0]


def test_a_law_files_parameter_count_kind_is_checked(tmp_path):
    import json as _json

    from derisk.scaling import LawFileError, fit_from_json

    shipped = Path(__file__).parent.parent / "derisk/estimators/data/laws/chinchilla.json"
    d = _json.loads(shipped.read_text())
    assert d["data"]["params_kind"] == "total"
    d["data"]["params_kind"] = "embedding"
    with pytest.raises(LawFileError, match="data.params_kind"):
        fit_from_json(d, "x")


def test_a_total_parameter_law_needs_the_vocabulary(tmp_path):
    """Without `vocab` the embeddings cannot be counted: refused, not counted at the
    trainer's byte vocabulary."""
    p = write(
        tmp_path,
        """\
        budget: 1e22 flops
        experiments:
          - id: big
            train: {d_model: 2048, layers: 24, tokens: 2.6e10}
            success: {loss_below: 2.48, law: chinchilla}
            reward: 1
        """,
    )
    out = run("validate", p)
    assert out.exit_code == 2 and "r.yaml:4:" in out.stderr and "`vocab`" in out.stderr


@pytest.mark.parametrize(
    ("name", "unit", "kind"),
    [
        ("chinchilla", "nats per token", "total"),
        ("cpu-dense", "nats per byte", None),
        ("cpu-moe", "nats per byte", None),
    ],
)
def test_shipped_laws_say_their_loss_unit_and_parameter_count(name, unit, kind):
    """A refit of a shipped law must keep what the roadmap tables print beside it."""
    shipped = Path(__file__).parent.parent / f"derisk/estimators/data/laws/{name}.json"
    data = json.loads(shipped.read_text())["data"]
    assert data["loss_unit"].startswith(unit)
    assert data.get("params_kind") in ((kind,) if kind else (None, "non_embedding"))


def test_a_per_byte_law_refuses_a_token_vocabulary(tmp_path):
    """A per-byte law judging a run over a 32,000-token vocabulary would compare a loss
    per token with one per byte: refused at the `vocab` key, with the fix."""
    p = write(
        tmp_path,
        """\
        budget: 1e17 flops
        experiments:
          - id: tok
            train: {d_model: 128, layers: 2, vocab: 32000, tokens: 1e7}
            success: {loss_below: 1.3, law: cpu-dense}
            reward: 1
        """,
    )
    out = run("validate", p)
    assert out.exit_code == 2 and "r.yaml:4:" in out.stderr
    assert "per byte" in out.stderr and "Leave `vocab` out" in out.stderr
