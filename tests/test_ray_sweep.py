"""`derisk sweep --ray`: grid points as Ray tasks, the driver alone writing the store.

The Ray tests start a local Ray cluster on this machine (as CI does): one in process with a
stand-in trainer (retries after a killed worker, a failure recorded with its reason, the
resume that retakes it), and one end to end through the CLI with the real trainer, whose
driver is killed after its first finished run lands and is then run again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import run

from derisk.errors import RoadmapError
from derisk.estimators import Corpus, RunStore, load_sweep, run_key, sweep_points

TINY = """\
arch: [dense, moe]
d_model: 16
n_layer: 1
n_head: 1
seq_len: 16
experts: 2
batch_size: 4
eval_batches: 1
max_bytes: 100000
num_cpus: 1
"""


def _rows(path) -> dict:
    """key -> (id, status, finished, val_loss, error), read with plain sqlite3."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, id, status, finished, val_loss, error FROM runs").fetchall()
    finally:
        db.close()
    return {r[0]: r[1:] for r in rows}


# ----------------------------------------------------------------------------- no Ray needed


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("num_gpus: -1", "num_gpus: must be at least 0"),
        ("num_gpus: 1.5", "num_gpus: a number above 1 must be whole"),
        ("num_cpus: [1, 2]", "num_cpus takes one value, not a list"),
        ("num_cpus: many", "num_cpus: must be a number"),
    ],
)
def test_resource_keys_are_validated_with_their_line(tmp_path, line, message):
    spec = tmp_path / "s.yaml"
    spec.write_text("tokens: 1000\n" + line + "\n")
    with pytest.raises(RoadmapError) as exc:
        load_sweep(spec)
    text = str(exc.value.problems[0])
    assert text.startswith(f"{spec}:2:"), text  # the file and line of the bad key
    assert message in text


def test_resource_keys_do_not_change_the_points(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(TINY + "tokens: [1000, 2000]\n")
    b.write_text(TINY.replace("num_cpus: 1\n", "") + "tokens: [1000, 2000]\n")
    assert load_sweep(a)["num_cpus"] == 1.0
    assert sweep_points(load_sweep(a))[0] == sweep_points(load_sweep(b))[0]


def test_without_ray_installed_ray_exits_2_naming_the_install(tmp_path, monkeypatch):
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY + "tokens: 1000\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    res = run("--store", tmp_path / "s.sqlite", "sweep", spec, "--ray", "local")
    assert res.exit_code == 2, res.output
    assert "pip install 'derisk[ray]'" in res.output
    assert not (tmp_path / "s.sqlite").exists()  # refused before any work


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray", "not an address"], "is not a Ray address"),
        (["--ray", "local", "--retries", "-1"], "--retries must be 0 or more"),
    ],
)
def test_bad_ray_flags_exit_2(tmp_path, args, message):
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY + "tokens: 1000\n")
    res = run("--store", tmp_path / "s.sqlite", "sweep", spec, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output


# ----------------------------------------------------------------------------- on Ray


def _corpus() -> Corpus:
    data = np.frombuffer(b"def f(x):\n    return x + 1\n" * 2000, dtype=np.uint8)
    return Corpus(train=data, valid=data[:5000], digest="test-corpus", source="test", files=1)


def test_retries_failures_and_resume_on_a_local_cluster(tmp_path):
    ray = pytest.importorskip("ray")
    from derisk.estimators._ray import TaskResources, run_sweep_on_ray
    from derisk.estimators._train import RunResult

    spec = tmp_path / "s.yaml"
    spec.write_text(TINY + "tokens: [1000, 2000]\n")
    points, _ = sweep_points(load_sweep(spec))
    assert len(points) == 4
    corpus = _corpus()
    keys = [run_key(m, t, corpus.digest) for m, t in points]
    # one worker dies on its first try; one point always raises; one runs out of memory
    crash, broken, oom = keys[0], keys[1], keys[3]
    calls = tmp_path / "calls"
    calls.mkdir()
    fixed = tmp_path / "fixed"

    def fake_train(model, tc, data):  # runs in a Ray worker process
        key = run_key(model, tc, data.digest)
        log = calls / key
        n = len(log.read_text()) if log.exists() else 0
        log.write_text("x" * (n + 1))
        if key == crash and n == 0:
            os._exit(1)  # the worker process dies mid-task, as if killed
        if key == broken and not fixed.exists():
            raise ValueError("boom in the trainer")
        if key == oom and not fixed.exists():
            raise MemoryError("no room")  # not retried: it would only fail again
        loss = 1.0 + tc.tokens / 1e4 + (model.arch == "moe")  # tells the points apart
        return RunResult(status="finished", final_val_loss=loss, best_val_loss=loss, tokens=1)

    def attempts(key):
        return len((calls / key).read_text()) if (calls / key).exists() else 0

    events = []
    store = RunStore(tmp_path / "s.sqlite")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep_on_ray(
            store,
            points,
            corpus,
            resources=TaskResources(num_cpus=1),
            retries=1,
            train_fn=fake_train,
            on_event=lambda kind, info: events.append(kind),
        )
        assert ray.is_initialized()  # a connection it did not make is left open
        by_key = {o.key: o for o in result.outcomes}
        assert attempts(crash) == 2 and by_key[crash].state == "trained"
        assert by_key[crash].attempts == 2
        assert attempts(broken) == 2 and by_key[broken].state == "failed"  # 1 + retries
        assert by_key[broken].error == "ValueError: boom in the trainer (after 2 attempts)"
        assert attempts(oom) == 1 and by_key[oom].state == "failed"
        assert by_key[oom].error == "out of memory: MemoryError: no room (after 1 attempt)"
        assert attempts(keys[2]) == 1 and by_key[keys[2]].state == "trained"
        assert events.count("retry") == 2 and events.count("failed") == 2
        rows = _rows(store.path)
        assert rows[broken][1].startswith("failed: ValueError: boom")
        assert rows[broken][4] == "ValueError: boom in the trainer (after 2 attempts)"
        for k, (m, t) in zip(keys, points, strict=True):
            if k not in (broken, oom):
                assert rows[k][1] == "finished"
                assert rows[k][3] == 1.0 + t.tokens / 1e4 + (m.arch == "moe")
        before = dict(rows)

        fixed.touch()  # re-run: finished points are skipped, the failed ones are retaken
        again = run_sweep_on_ray(store, points, corpus, retries=0, train_fn=fake_train)
        states = {o.key: o.state for o in again.outcomes}
        assert states == {k: ("trained" if k in (broken, oom) else "done") for k in keys}
        assert [attempts(k) for k in keys] == [2, 3, 1, 2]  # nothing finished was retrained
        rows = _rows(store.path)
        for k in (broken, oom):
            assert rows[k][0] == before[k][0]  # retaken in place, same id
            assert rows[k][1] == "finished" and rows[k][4] is None
        assert all(rows[k] == before[k] for k in keys if k not in (broken, oom))
    finally:
        store.close()
        ray.shutdown()


def _derisk(store, spec, *args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "derisk.cli", "--store", str(store), "sweep", str(spec), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: the Ray processes it starts too
    )


def _kill_group(proc):
    """SIGKILL what is left of a driver's process group (Ray leaves two agents behind a
    killed driver; the test must not leave them running)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _finished(store) -> dict:
    try:
        return {k: r for k, r in _rows(store).items() if r[1] == "finished"}
    except sqlite3.OperationalError:  # not created yet
        return {}


def test_killed_driver_loses_no_finished_run_and_resumes(tmp_path):
    pytest.importorskip("ray")
    spec = tmp_path / "s.yaml"
    # three seeds of one model: one program to compile (the seed is data, not code)
    spec.write_text(TINY.replace("[dense, moe]", "dense") + "tokens: 1500\nseed: [0, 1, 2]\n")
    store = tmp_path / "s.sqlite"
    # Compiling dominates these tiny runs (~10 s of ~11): the processes share a persistent
    # JAX compilation cache, so what one compiled the next only loads.
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }
    driver = _derisk(store, spec, "--ray", "local", "--json", env=env)
    try:
        deadline = time.monotonic() + 240
        while not _finished(store) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        assert _finished(store), "no run finished in time"
        driver.send_signal(signal.SIGKILL)  # the driver alone: its workers die with it
        driver.wait(30)
    finally:
        _kill_group(driver)
        driver.communicate()
    rows = _rows(store)
    kept = {k: r for k, r in rows.items() if r[1] == "finished"}
    assert 1 <= len(kept) < 3, "the driver finished everything before it was killed"
    assert all(r[1] in ("finished", "running") for r in rows.values())

    again = _derisk(store, spec, "--ray", "local", "--json", env=env)
    try:
        stdout, stderr = again.communicate(timeout=300)
    finally:
        _kill_group(again)
    assert again.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["points"] == 3 and summary["failed"] == 0
    assert sorted(summary["skipped_ids"]) == sorted(r[0] for r in kept.values())
    assert summary["ran"] == 3 - len(kept)
    rows = _rows(store)
    assert len(rows) == 3 and all(r[1] == "finished" for r in rows.values())
    for k, r in kept.items():
        assert rows[k] == r  # not retrained: same id, finish time and loss

    # The runs trained on Ray are the runs the sequential sweep trains here, point by point.
    here = _derisk(tmp_path / "here.sqlite", spec, "--json", env=env)
    stdout, stderr = here.communicate(timeout=300)
    assert here.returncode == 0, stderr[-3000:]
    losses = {r["key"]: r["val_loss"] for r in json.loads(stdout)["results"]}
    assert losses.keys() == rows.keys()
    for k, loss in losses.items():
        assert math.isclose(rows[k][3], loss, rel_tol=1e-6), (k, rows[k][3], loss)


def test_a_bare_ray_flag_means_a_local_cluster():
    from derisk.cli import hoist_global_options as hoist

    assert hoist(["sweep", "s.yaml", "--ray"]) == ["sweep", "s.yaml", "--ray", "local"]
    assert hoist(["sweep", "--ray", "s.yaml"]) == ["sweep", "--ray", "local", "s.yaml"]
    assert hoist(["sweep", "s.yaml", "--ray", "--json"])[3] == "local"
    assert hoist(["sweep", "s.yaml", "--ray", "auto"]) == ["sweep", "s.yaml", "--ray", "auto"]
    assert hoist(["x", "--", "--ray"]) == ["x", "--", "--ray"]  # past `--`: an argument
