import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from derisk.cli import app
from derisk.errors import DataError
from derisk.estimators import (
    ModelConfig,
    TrainConfig,
    batch,
    flops_per_token,
    init_params,
    load_corpus,
    loss_fn,
    param_counts,
    sweep_points,
    train,
)
from derisk.scaling import load_runs_csv


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(max_bytes=400_000)


def test_corpus_is_split_by_file_and_hashed(corpus):
    again = load_corpus(max_bytes=400_000)
    assert again.digest == corpus.digest and corpus.files > 10
    assert len(corpus.valid) > 0.03 * len(corpus.train)
    b1 = batch(corpus.train, batch_size=4, seq_len=16, step=3, seed=1)
    b2 = batch(corpus.train, batch_size=4, seq_len=16, step=3, seed=1)
    assert b1.shape == (4, 17) and np.array_equal(b1, b2)
    assert not np.array_equal(b1, batch(corpus.train, batch_size=4, seq_len=16, step=4, seed=1))
    with pytest.raises(DataError, match="no such"):
        load_corpus("/nonexistent/corpus")


def test_tiny_model_loss_falls(corpus):
    cfg = ModelConfig(d_model=32, n_layer=1, n_head=2, seq_len=32)
    r = train(cfg, TrainConfig(tokens=60_000, batch_size=8, lr=3e-3), corpus)
    assert r.status == "finished"
    first_val, last_val = r.curve[0][2], r.curve[-1][2]
    assert last_val < first_val - 0.5 and last_val < math.log(256) - 1.5
    assert r.flops == pytest.approx(flops_per_token(cfg) * r.tokens)


def test_budget_shorter_than_two_steps_still_trains(corpus):
    cfg = ModelConfig(d_model=16, n_layer=1, n_head=2, seq_len=16)
    r = train(cfg, TrainConfig(tokens=40, batch_size=2), corpus)  # one step
    assert r.status == "finished" and r.tokens == 32


def test_flops_match_a_hand_count():
    cfg = ModelConfig(d_model=64, n_layer=2, n_head=4, seq_len=128)  # d_ff = 176
    d, f, L, T = 64, 176, 2, 128
    assert cfg.d_ff == f
    per_layer = 2 * (4 * d * d) + 2 * (3 * d * f) + 2 * 2 * d * (T + 1) / 2
    forward = L * per_layer + 2 * d * 256
    assert flops_per_token(cfg) == pytest.approx(3 * forward)
    moe = ModelConfig(arch="moe", d_model=64, n_layer=2, n_head=4, seq_len=128, experts=8, top_k=2)
    per_layer = 2 * (4 * d * d) + 2 * (2 * 3 * d * f + d * 8) + 2 * 2 * d * (T + 1) / 2
    assert flops_per_token(moe) == pytest.approx(3 * (L * per_layer + 2 * d * 256))
    c = param_counts(moe)
    assert c["non_embedding"] - c["non_embedding_active"] == L * 6 * 3 * d * f
    real = sum(x.size for x in jax.tree_util.tree_leaves(init_params(moe, jax.random.PRNGKey(0))))
    assert real == c["total"]


def test_moe_gradients_match_kernel_and_reference():
    base = dict(arch="moe", d_model=16, n_layer=1, n_head=2, seq_len=16, experts=4, top_k=2)
    cfg_k = ModelConfig(**base, impl="pallas")  # interpret mode on the CPU
    cfg_r = ModelConfig(**base, impl="reference")
    params = init_params(cfg_r, jax.random.PRNGKey(1))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 17)), jnp.int32)
    (lk, _), gk = jax.value_and_grad(lambda p: loss_fn(cfg_k, p, tokens), has_aux=True)(params)
    (lr, _), gr = jax.value_and_grad(lambda p: loss_fn(cfg_r, p, tokens), has_aux=True)(params)
    assert float(lk) == pytest.approx(float(lr), rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(gk), jax.tree_util.tree_leaves(gr), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-6)


def test_run_key_ignores_kernel_choice_and_defaults():
    from derisk.estimators import run_key

    a = ModelConfig(arch="moe", d_model=16, n_head=2)
    b = ModelConfig(arch="moe", d_model=16, n_head=2, impl="reference", compute_dtype="float32")
    tc = TrainConfig(tokens=1000)
    assert run_key(a, tc, "h") == run_key(b, tc, "h")
    assert run_key(a, tc, "h") != run_key(a, TrainConfig(tokens=2000), "h")
    assert run_key(a, tc, "h") != run_key(a, tc, "other corpus")


def test_bad_configs_are_clear_errors():
    runner = CliRunner()
    cases = [
        (["train", "--d-model", "30", "--n-head", "4"], "divisible"),
        (["train", "--arch", "moe", "--experts", "4", "--top-k", "5"], "top_k"),
        (["train", "--corpus", "/nonexistent/x"], "no such"),
        (["train", "--d-model", "200000", "--n-head", "4"], "GiB"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and msg in r.stderr and "Traceback" not in r.output, args
    with pytest.raises(Exception, match="did you mean `d_model`"):
        sweep_points({"d_modle": [16]})
    pts, _ = sweep_points(
        {"d_model": [16, 32], "n_head": 2, "lr_by_d_model": {16: 0.006, 32: 0.003}}
    )
    assert {(m.d_model, t.lr) for m, t in pts} == {(16, 0.006), (32, 0.003)}
    with pytest.raises(Exception, match="no entry for d_model 64"):
        sweep_points({"d_model": [64], "lr_by_d_model": {16: 0.006}})


SPEC = """
arch: [dense, moe]
d_model: 16
n_layer: 1
n_head: 2
seq_len: 32
experts: 4
top_k: 2
tokens: [15000, 30000, 60000]
batch_size: 8
max_bytes: 300000
"""


def _finished(db):
    if not os.path.exists(db):
        return {}
    try:
        con = sqlite3.connect(db, timeout=5)
        rows = con.execute(
            "SELECT key, val_loss, id FROM runs WHERE status = 'finished'"
        ).fetchall()
        con.close()
    except sqlite3.OperationalError:
        return {}
    return {k: (v, i) for k, v, i in rows}


def test_killed_sweep_loses_nothing_and_resumes(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    db = str(tmp_path / "runs.sqlite")
    cmd = [sys.executable, "-m", "derisk.cli", "--store", db, "sweep", str(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(_finished(db)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _finished(db)
    assert len(before) >= 2, "the sweep should have finished some runs before the kill"
    res = CliRunner().invoke(app, ["--store", db, "sweep", str(spec), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["points"] == 6
    assert out["skipped_finished"] >= len(before)
    assert out["skipped_finished"] + out["ran"] == 6
    after = _finished(db)
    assert len(after) == 6
    for k, v in before.items():
        assert after[k] == v, "a finished run was rewritten"
    runs = CliRunner().invoke(
        app, ["--store", db, "runs", "--json", "--csv", str(tmp_path / "r.csv")]
    )
    listed = json.loads(runs.stdout)["runs"]
    assert {r["status"] for r in listed} == {"finished"}
    for key in ("id", "arch", "params", "tokens", "val_loss", "status"):
        assert key in listed[0]
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("params,tokens,loss") and len(lines) == 7


def _fake_run(store, model, tc, loss, digest="abc"):
    """Record a run without training (the store and export are what is under test)."""
    from types import SimpleNamespace

    from derisk.estimators import RunResult, RunStore, run_key

    assert isinstance(store, RunStore)
    key = run_key(model, tc, digest)
    store.start(key, model, tc, SimpleNamespace(source="x", digest=digest))
    store.finish(
        key,
        RunResult(
            status="finished",
            final_val_loss=loss,
            best_val_loss=loss,
            tokens=tc.tokens,
            params=param_counts(model),
        ),
    )


def test_law_records_its_runs_setting_and_predict_flags_a_different_run(tmp_path):
    """Runs exported from the store carry how they were trained; a law fitted to them
    remembers it, and `derisk predict --run` scores a stored run and says when it was
    trained differently (context length, learning-rate rule)."""
    from derisk.estimators import RunStore, lr_for_width

    store = RunStore(tmp_path / "runs.sqlite")
    rng = np.random.default_rng(0)
    for d in (16, 24, 32, 48, 64):
        for tokens in (20_000, 60_000, 200_000, 600_000):
            m = ModelConfig(arch="dense", d_model=d, n_layer=1, n_head=2, seq_len=32)
            n = param_counts(m)["non_embedding"]
            loss = (1.0 + 30 / n**0.4 + 300 / tokens**0.4) * np.exp(rng.normal(0, 0.002))
            _fake_run(store, m, TrainConfig(tokens=tokens, lr=lr_for_width(d)), float(loss))
    csv_path = tmp_path / "runs.csv"
    csv_path.write_text(store.export_csv(arch="dense"))
    data = load_runs_csv(csv_path)
    seen = data.summary()["setting"]
    assert seen["seq_len"] == ["32"] and seen["arch"] == ["dense"]
    assert seen["lr_x_d_model"] == pytest.approx([0.096, 0.096])

    runner = CliRunner()
    law = tmp_path / "law.json"
    r = runner.invoke(
        app,
        ["fit", str(csv_path), "--bootstrap", "20", "--starts", "8", "--save", str(law), "--json"],
    )
    assert r.exit_code == 0, r.output
    # a larger held-out run, same setting: predicted close, no setting warning
    big = ModelConfig(arch="dense", d_model=96, n_layer=1, n_head=2, seq_len=32)
    n = param_counts(big)["non_embedding"]
    true = 1.0 + 30 / n**0.4 + 300 / 600_000**0.4
    _fake_run(store, big, TrainConfig(tokens=600_000, lr=lr_for_width(96)), true)
    # the same model trained with another context length and a fixed lr
    odd = ModelConfig(arch="dense", d_model=96, n_layer=1, n_head=2, seq_len=128)
    _fake_run(store, odd, TrainConfig(tokens=600_000, lr=3e-3), true)
    ids = [str(x["id"]) for x in store.runs()][-2:]
    r = runner.invoke(
        app,
        [
            "--store",
            str(tmp_path / "runs.sqlite"),
            "predict",
            "--law",
            str(law),
            "--run",
            ids[0],
            "--run",
            ids[1],
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    same, other = out["predictions"]
    assert same["observed"] == pytest.approx(true) and abs(same["error"]) < 0.02
    assert same["setting_differs"] == [] and same["params_beyond"] > 1
    assert any("seq_len 128" in m for m in other["setting_differs"])
    assert any(m.startswith("lr 0.003") for m in other["setting_differs"])
    assert out["summary"]["runs"] == 2
    bad = runner.invoke(
        app,
        ["--store", str(tmp_path / "runs.sqlite"), "predict", "--law", str(law), "--run", "999"],
    )
    assert bad.exit_code == 2 and "no run with id 999" in bad.stderr


def test_divergence_stops_the_run_at_the_step_it_happened(corpus):
    """A run whose loss explodes ends as data ("diverged ... at step k"), found at the same
    step whether the host reads the loss every step or every 16; a healthy run is the
    same computation either way."""
    m = ModelConfig(arch="dense", d_model=16, n_layer=1, n_head=2, seq_len=32)
    wild = TrainConfig(tokens=8 * 32 * 80, batch_size=8, lr=30.0)
    a, b = train(m, wild, corpus, sync_every=1), train(m, wild, corpus, sync_every=16)
    assert a.status.startswith("diverged: train loss") and a.status == b.status
    step = int(a.status.split(" at step ")[1].split()[0])
    assert step < 80 and a.tokens == b.tokens == (step + 1) * 8 * 32
    assert math.isnan(a.final_val_loss)
    calm = TrainConfig(tokens=8 * 32 * 40, batch_size=8, lr=3e-3)
    c, d = train(m, calm, corpus, sync_every=1), train(m, calm, corpus, sync_every=16)
    assert c.status == d.status == "finished"
    np.testing.assert_allclose(np.array(c.curve), np.array(d.curve), rtol=1e-6)
