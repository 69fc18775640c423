"""The closed loop (`derisk run`), law versions (`derisk laws`) and the bundled examples
at real scale.

The end-to-end test trains a real tiny model (d_model 32, 2 layers, 200k tokens: seconds
on a CPU), records it, refits the shipped `cpu-dense` law as version 2 in a temporary
laws folder and replans; references are computed independently (CSV read by hand, the
law's prediction, `derisk plan` after the fact, FLOP counts written out by hand).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import copy_example, run, run_json

from derisk.errors import DataError
from derisk.scaling import load_law, predict_loss
from derisk.scaling._optimal import packaged_laws_dir


@pytest.fixture
def private(tmp_path, monkeypatch):
    """Laws and run store in the test's folder: never the user's."""
    monkeypatch.setenv("DERISK_LAWS", str(tmp_path / "laws"))
    monkeypatch.setenv("DERISK_STORE", str(tmp_path / "runs.sqlite"))
    return tmp_path


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ law versions


def test_save_version_keeps_every_version(private):
    from derisk.scaling._versions import law_versions, save_version

    fit = load_law("cpu-dense")
    other = load_law("cpu-moe")
    first = save_version(fit, "mylaw", provenance={"note": "first"})
    assert first.version == 1 and first.current and first.previous is None
    v1 = private / "laws" / "mylaw.json"
    v1_text, v1_sha = v1.read_text(), sha(v1)

    second = save_version(other, "mylaw", provenance={"note": "second"})
    assert second.version == 2 and second.current
    archived = private / "laws" / "mylaw@1.json"
    assert archived.read_text() == v1_text  # the old version, byte for byte
    body = json.loads(v1.read_text())
    assert body["provenance"]["law_version"] == 2
    assert body["provenance"]["previous"] == {"version": 1, "path": str(archived), "sha256": v1_sha}
    assert body["provenance"]["note"] == "second"
    # each version loads by its label; the plain name is the current one
    assert load_law("mylaw@1").params == fit.params
    assert load_law("mylaw@2").params == other.params
    assert load_law("mylaw").params == other.params
    assert [(v.version, v.current) for v in law_versions("mylaw")] == [(1, False), (2, True)]


def test_a_refit_of_a_shipped_law_never_writes_the_shipped_file(private):
    from derisk.scaling._versions import current_version, save_version

    shipped = packaged_laws_dir() / "cpu-dense.json"
    before = sha(shipped)
    fit = load_law("cpu-moe")  # any other fit: what matters is where it goes
    new = save_version(fit, "cpu-dense")
    assert sha(shipped) == before
    assert new.version == 2 and new.where == "user"
    assert new.previous == {"version": 1, "path": str(shipped), "sha256": before}
    assert current_version("cpu-dense").path == private / "laws" / "cpu-dense.json"
    assert load_law("cpu-dense@1").params == json.loads(shipped.read_text())["params"]
    assert load_law("cpu-dense").law == "moe_experts"


def test_an_archive_is_never_replaced(private):
    from derisk.scaling._versions import save_version

    save_version(load_law("cpu-dense"), "mylaw")
    save_version(load_law("cpu-moe"), "mylaw")  # v1 -> mylaw@1, v2 current
    clash = private / "laws" / "mylaw@2.json"
    clash.write_text("{}")  # someone else's file where v2 would be kept
    current = (private / "laws" / "mylaw.json").read_text()
    with pytest.raises(DataError, match="already holds another law"):
        save_version(load_law("cpu-dense"), "mylaw")
    assert clash.read_text() == "{}"
    assert (private / "laws" / "mylaw.json").read_text() == current


def test_laws_command_lists_shipped_and_user_versions(private):
    from derisk.scaling._versions import save_version

    save_version(load_law("cpu-dense"), "cpu-dense")
    got = run_json("laws")
    by_name = {x["name"]: x for x in got["laws"]}
    assert {"chinchilla", "cpu-dense", "cpu-moe"} <= set(by_name)
    dense = by_name["cpu-dense"]
    assert dense["current"] == 2
    assert [(v["version"], v["where"], v["current"]) for v in dense["versions"]] == [
        (1, "shipped", False),
        (2, "user", True),
    ]
    assert by_name["chinchilla"]["current"] == 1
    res = run("laws", "no-such-law")
    assert res.exit_code == 2 and "no law `no-such-law`" in res.output


def test_listing_laws_never_imports_jax(private):
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from derisk.cli import app\n"
        "r = CliRunner().invoke(app, ['laws', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(json.dumps({'jax': 'jax' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"jax": False}


# ------------------------------------------------------------------ the loop's parts


def test_law_data_is_the_runs_the_shipped_law_was_fitted_on(private):
    from derisk.estimators._loop import law_data
    from derisk.scaling._versions import current_version

    data, fit, _ = law_data(current_version("cpu-dense"))
    # by hand: the CSV's rows with at least the law's min_tokens
    with open(packaged_laws_dir().parent / "runs_cpu_dense.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if float(r["tokens"]) >= 90000]
    assert data.n == len(rows) == fit.n == 24
    assert np.allclose(data.params, [float(r["params"]) for r in rows])
    assert np.allclose(data.tokens, [float(r["tokens"]) for r in rows])
    assert np.allclose(data.loss, [float(r["loss"]) for r in rows])
    assert data.setting["corpus_hash"] == [r["corpus_hash"] for r in rows]


@pytest.mark.parametrize(
    ("status", "loss", "below", "want"),
    [
        ("finished", 2.49, 2.5, "success"),
        ("finished", 2.5, 2.5, "failure"),  # the rule is strict: loss < loss_below
        ("finished", 2.51, 2.5, "failure"),
        ("diverged: train loss 9 at step 3", 1.0, 2.5, "failure"),
        ("finished", None, 2.5, "failure"),
        ("finished", math.nan, 2.5, "failure"),
    ],
)
def test_outcome_rule(status, loss, below, want):
    from derisk.estimators._loop import outcome_of

    assert outcome_of(status, loss, below) == want


def _stored(run_id, d_model, tokens_per_s, *, device="cpu", seq_len=64, wall=12.0, tokens=1e5):
    return {
        "id": run_id,
        "status": "finished",
        "device": device,
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "wall_s": wall,
        "model": {
            "arch": "dense",
            "d_model": d_model,
            "n_layer": 2,
            "n_head": 2,
            "seq_len": seq_len,
        },
        "train": {"batch_size": 16},
    }


def test_wall_estimate_scales_the_nearest_stored_run():
    from derisk.estimators._loop import LoopRun, estimate_from_runs
    from derisk.estimators._model import ModelConfig
    from derisk.estimators._train import TrainConfig

    def fpt(d):  # training FLOPs per token, written out (derisk/_flops.py's docstring)
        d_ff = max(16, round(8 / 3 * d / 16) * 16)
        matmul = 2 * (4 * d * d + 3 * d * d_ff)
        return 3 * (2 * matmul + 2 * d * 256 + 4 * 2 * d * 65 / 2)

    node = LoopRun(
        node="n",
        model=ModelConfig(d_model=48, n_layer=2, n_head=2, seq_len=64),
        train=TrainConfig(tokens=300_000, batch_size=16),
        law="cpu-dense",
        loss_below=2.0,
        source="x.yaml",
    )
    runs = [
        _stored(1, 32, 50_000.0),  # nearest in FLOPs per token
        _stored(2, 128, 9_000.0),
        _stored(3, 48, 1.0, device="NVIDIA H100 80GB HBM3"),  # another device: ignored
        _stored(4, 48, 1.0, seq_len=128),  # another context: ignored
    ]
    est = estimate_from_runs(node, runs, "cpu")
    assert est.run == 1
    flop_rate = 50_000.0 * fpt(32)
    overhead = 12.0 - 1e5 / 50_000.0
    assert est.seconds == pytest.approx(300_000 * fpt(48) / flop_rate + overhead, rel=1e-9)
    # nothing within 4x of the node's FLOPs per token: no estimate from the store
    assert estimate_from_runs(node, [_stored(2, 512, 9_000.0)], "cpu") is None
    assert estimate_from_runs(node, runs[2:], "cpu") is None


# ------------------------------------------------------------------ derisk run


def test_run_refuses_what_it_cannot_train(private):
    f = private / "r.yaml"
    f.write_text(
        "name: t\nbudget: 1e14 flops\nexperiments:\n"
        "  - id: by-count\n"
        "    train: {params: 30000, tokens: 2e5}\n"
        "    success: {loss_below: 2.5, law: cpu-dense}\n"
        "  - id: no-rule\n"
        "    train: {d_model: 32, layers: 2, seq_len: 64, tokens: 2e5}\n"
        "    p: 0.5\n"
        "  - id: by-hand\n"
        "    cost: 1e9 flops\n"
        "    p: 0.5\n"
        "    reward: 1\n"
        "  - id: pinned\n"
        "    train: {d_model: 32, layers: 2, heads: 2, seq_len: 64, tokens: 2e5}\n"
        "    success: {loss_below: 2.5, law: cpu-dense@1}\n"
        "  - id: long-context\n"
        "    train: {d_model: 32, layers: 2, heads: 2, seq_len: 128, tokens: 2e5}\n"
        "    success: {loss_below: 2.5, law: cpu-dense}\n"
    )
    cases = {
        "by-count": "gives no shape",
        "no-rule": "needs `success: {loss_below: X}`",
        "by-hand": "has no `train:` block",
        "long-context": "seq_len 128 (the law's runs: 64)",
        "pinned": "version 1 of `cpu-dense`: a refit makes a new version",
        "bogus": "no experiment `bogus`",
    }
    for node, message in cases.items():
        res = run("run", f, node, "--yes")
        assert res.exit_code == 2, (node, res.output)
        assert message in res.output, (node, res.output)
        assert "Traceback" not in res.output
    res = run("run", f, "by-count", "--yes")
    assert f"{f}:5:" in res.output  # located at the node's `train:` block
    # a token vocabulary under a per-byte law is refused when the roadmap is resolved,
    # before `run` looks at the node (its p would compare two units)
    g = private / "v.yaml"
    g.write_text(
        "name: t\nbudget: 1e14 flops\nexperiments:\n"
        "  - id: other-vocab\n"
        "    train: {d_model: 32, layers: 2, seq_len: 64, vocab: 32000, tokens: 2e5}\n"
        "    success: {loss_below: 2.5, law: cpu-dense}\n"
    )
    res = run("run", g, "other-vocab", "--yes")
    assert res.exit_code == 2 and "per byte" in res.output and f"{g}:5:" in res.output
    assert not (private / "runs.sqlite").exists()  # refused before anything was trained


def test_run_refuses_a_node_beyond_max_minutes(private):
    f = copy_example(private, "tiny-lm")
    # hopeless even at the device's peak: refused before any warm-up
    res = run("run", f, "dense-d384-3M", "--yes", "--max-minutes", "0.05")
    assert res.exit_code == 2
    assert "more than --max-minutes 0.05" in res.output and "even at its" in res.output
    assert not (f.parent / f"{f.name}.state.json").exists()


def test_run_times_a_warm_up_when_the_bounds_do_not_decide(private):
    # 7e12 FLOPs: ~18 s at this machine's peak, ~2 h at 1 GFLOP/s; measured, a d_model 32
    # model trains at tens of thousands of tokens/s on a CPU: 30M tokens take many minutes
    f = private / "long.yaml"
    f.write_text(
        "name: t\nbudget: 1e14 flops\nexperiments:\n"
        "  - id: long\n"
        "    train: {d_model: 32, layers: 2, heads: 2, seq_len: 64, tokens: 3e7}\n"
        "    success: {loss_below: 2.5, law: cpu-dense}\n"
        "    reward: 1\n"
    )
    res = run("run", f, "long", "--yes", "--max-minutes", "1")
    assert res.exit_code == 2, res.output
    assert "from a timed warm-up of 20 steps" in res.output
    assert "more than --max-minutes 1" in res.output
    assert not (f.parent / f"{f.name}.state.json").exists()
    assert run_json("runs")["runs"] == []  # the warm-up is not a run


def test_run_needs_yes_when_it_cannot_ask(private):
    f = copy_example(private, "tiny-lm")
    res = run("run", f, "probe")
    assert res.exit_code == 2 and "--yes" in res.output


def test_run_trains_records_refits_and_replans(private):
    """`derisk run` on the tiny-lm probe, end to end, checked against independent views."""
    f = copy_example(private, "tiny-lm")
    shipped = packaged_laws_dir() / "cpu-dense.json"
    shipped_sha = sha(shipped)
    opts = ("--bootstrap", "8", "--backtest-bootstrap", "2", "--starts", "8")
    got = run_json("run", f, "probe", "--yes", *opts)
    assert set(got) >= {"run", "outcome", "loss", "law_before", "law_after", "before", "after"}

    # the run is in the store with the loss reported, and the outcome follows the rule
    runs = run_json("runs")["runs"]
    assert [r["id"] for r in runs] == [got["run"]["id"]]
    stored = runs[0]
    assert stored["val_loss"] == pytest.approx(got["loss"])
    assert stored["params"] == 23712  # d_model 32, 2 layers: 2 x (4 d^2 + 3 d 80 + 2 d) + d
    assert got["outcome"] == ("success" if got["loss"] < 2.5 else "failure")
    # 4.3e10 FLOPs: under 2 min even at 1 GFLOP/s, so no warm-up was needed
    assert got["run"]["estimate"]["upper"] and got["run"]["estimate"]["seconds"] < 120
    state = json.loads((f.parent / f"{f.name}.state.json").read_text())["outcomes"]
    assert state == {"probe": {"outcome": got["outcome"], "spent": got["run"]["flops"]}}

    # the law: version 1 (shipped, untouched) -> version 2, one run more
    assert got["law_before"]["version"] == 1 and got["law_before"]["where"] == "shipped"
    assert got["law_after"]["version"] == 2 and got["law_after"]["current"]
    assert (got["law_before"]["runs"], got["law_after"]["runs"]) == (24, 25)
    assert sha(shipped) == shipped_sha
    new_path = private / "laws" / "cpu-dense.json"
    prov = json.loads(new_path.read_text())["provenance"]
    assert prov["refit"]["bootstrap"] == 8 and prov["refit"]["backtest_bootstrap"] == 2
    assert prov["refit"]["starts"] == 8
    assert prov["previous"]["sha256"] == shipped_sha
    assert prov["added_run"]["id"] == stored["id"] and prov["added_run"]["node"] == "probe"
    last = prov["data_rows"]["rows"][-1]
    assert last[:3] == [23712.0, float(stored["tokens"]), pytest.approx(stored["val_loss"])]
    assert len(prov["data_rows"]["rows"]) == 25

    # before: the shipped law's p; after: the new version's, computed here on their own
    def p(law):
        return predict_loss(load_law(law), 23712.0, 2e5, below=2.5).p_below

    assert got["before"]["p"]["probe"] == pytest.approx(p(str(shipped)))
    assert got["after"]["p"]["probe"] == pytest.approx(p(str(new_path)))
    assert set(got["before"]["p"]) == {"probe", "dense-d128-10M", "dense-d384-3M", "moe8-d128-3M"}
    # cpu-moe was not touched: its node's p is the same
    assert got["after"]["p"]["moe8-d128-3M"] == got["before"]["p"]["moe8-d128-3M"]
    # the plan after is what `derisk plan` now says (new law, recorded outcome)
    plan = run_json("plan", f)
    assert plan["next"] == got["after"]["next"]
    assert plan["value"] == pytest.approx(got["after"]["value"])
    assert plan["recorded"] == {"probe": got["outcome"]}

    # recorded: a second run is refused; cleared, the stored run is reused and not added
    # to the law twice
    res = run("run", f, "probe", "--yes")
    assert res.exit_code == 2 and "already recorded" in res.output
    run_json("record", f, "probe=untried")
    again = run_json("run", f, "probe", "--yes", *opts)
    assert again["run"]["reused"] and again["run"]["id"] == stored["id"]
    assert again["law_after"] is None and "already in the law's data" in again["refit_skipped"]
    assert [v["version"] for v in run_json("laws", "cpu-dense")["laws"][0]["versions"]] == [1, 2]


# ------------------------------------------------------------------ bundled examples


def test_llm_at_scale_prices_runs_on_h100s_by_hand():
    """The real-scale example: its big runs' FLOPs, dollars and p, recomputed here."""
    from derisk.graphs import example_path

    got = run_json("validate", example_path("llm-at-scale"))
    assert got["warnings"] == []
    est = got["estimates"]

    def flops(d, layers, tokens, seq=2048, vocab=32000):
        d_ff = round(8 / 3 * d / 16) * 16  # SwiGLU width, a multiple of 16
        per_token = 3 * (
            2 * layers * (4 * d * d + 3 * d * d_ff) + 2 * d * vocab + 4 * layers * d * (seq + 1) / 2
        )
        return tokens * per_token

    peak = 989e12  # H100 SXM, dense BF16 (NVIDIA datasheet: 1,979 TFLOPS with sparsity)
    for node, (d, layers, tokens) in {
        "proxy-200M": (1024, 16, 6e9),
        "proxy-1B": (2048, 24, 2.6e10),
        "dense-7B": (4096, 32, 1.4e11),
    }.items():
        e = est[node]
        f = flops(d, layers, tokens)
        assert e["flops"] == pytest.approx(f, rel=1e-12)
        assert e["cost"] == pytest.approx(f / (peak * math.sqrt(0.35 * 0.48) * 3600) * 2.5)
        assert e["cost_p90"] == pytest.approx(f / (peak * 0.35 * 3600) * 2.5)
        assert e["law"] == "chinchilla"
        assert max(e["extrapolation"].values()) < 3  # within the law's data: no warning
        n = layers * (4 * d * d + 3 * d * round(8 / 3 * d / 16) * 16 + 2 * d) + d  # + norms
        n += 2 * 32000 * d  # chinchilla counts total parameters: embeddings, output layer
        want = predict_loss(load_law("chinchilla"), float(n), tokens, below=e["loss_below"])
        assert e["p"] == pytest.approx(want.p_below)
    plan = run_json("plan", example_path("llm-at-scale"))
    assert plan["warnings"] == [] and plan["next"] == "data-mix"
    run_json("explain", example_path("llm-at-scale"))


def test_tiny_lm_nodes_are_trainable_by_derisk_run():
    """Every law-driven node of tiny-lm gives a shape the trainer builds, in the setting
    of the law it is judged by (so `derisk run` can add it to the law's data)."""
    from derisk.estimators._loop import law_accepts, run_setting, training_run
    from derisk.graphs import example_path, load_roadmap

    rm = load_roadmap(example_path("tiny-lm"))
    corpus_hash = "59346bed2d87c547"  # the shipped sweep's corpus (the stdlib sources)
    trained = []
    for e in rm.experiments:
        if e.success is None:
            continue
        loop = training_run(rm, e.id)
        assert (
            law_accepts(load_law(loop.law), run_setting(loop.model, loop.train, corpus_hash)) == []
        )
        trained.append(e.id)
    assert "probe" in trained and len(trained) == 4
