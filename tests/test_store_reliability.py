"""The run store, `train` and `sweep` under abuse: concurrent processes, kill -9, damaged
and foreign store files, malformed sweep specs and flags.

Every command must end with exit 0 or 2 (one red line), never a traceback; reading never
changes a file; no run is lost or clobbered.
"""

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from derisk.cli import app
from derisk.errors import DataError, RoadmapError
from derisk.estimators import (
    ModelConfig,
    RunResult,
    RunStore,
    TrainConfig,
    load_corpus,
    load_sweep,
    param_counts,
    run_key,
)
from derisk.estimators._store import APP_ID

TINY = ["--d-model", "16", "--n-layer", "1", "--n-head", "2", "--seq-len", "32"]
TINY += ["--batch-size", "8"]
HYP = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def clean(res) -> bool:
    """Exit 0 or 2 and no traceback."""
    return (
        res.exit_code in (0, 2)
        and (res.exception is None or isinstance(res.exception, SystemExit))
        and "Traceback" not in res.output
    )


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """A small corpus file (60 kB of the package's own sources)."""
    src = b"\n".join(p.read_bytes() for p in sorted(Path("derisk").rglob("*.py")))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(src[:60_000])
    return path


def fake_run(store, d_model=16, tokens=2000, loss=2.5, digest="abc", status="finished"):
    """Record a run without training."""
    m = ModelConfig(d_model=d_model, n_layer=1, n_head=2, seq_len=32)
    tc = TrainConfig(tokens=tokens, batch_size=8, lr=0.096 / d_model)
    key = run_key(m, tc, digest)
    claim = store.claim(key, m, tc, SimpleNamespace(source="x", digest=digest))
    store.finish(
        key,
        RunResult(
            status=status,
            final_val_loss=loss,
            best_val_loss=loss,
            curve=[(tokens, loss, loss)],
            tokens=tokens,
            params=param_counts(m),
        ),
    )
    return claim.id


@pytest.fixture(scope="module")
def template_path(tmp_path_factory, text) -> Path:
    """A store of four finished runs, one of them the point `train TINY --tokens 2000
    --corpus text` asks for (so a train against it reports, not trains)."""
    path = tmp_path_factory.mktemp("tpl") / "runs.sqlite"
    store = RunStore(path)
    digest = load_corpus(text).digest
    fake_run(store, digest=digest)
    for d in (24, 32, 48):
        fake_run(store, d_model=d, tokens=20_000, loss=2.0 + 10 / d)
    store.close()
    return path


@pytest.fixture(scope="module")
def template(template_path) -> bytes:
    return template_path.read_bytes()


# ---------------------------------------------------------------- the store's boundary


def test_store_files_that_are_not_stores_are_refused_with_the_fix(tmp_path, template):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (id, name)")
    con.commit()
    con.close()
    other_bytes = other.read_bytes()
    wrong = tmp_path / "wrong.sqlite"
    con = sqlite3.connect(wrong)
    con.execute("CREATE TABLE runs (id, name)")
    con.commit()
    con.close()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(os.urandom(5000))
    cut = tmp_path / "cut.sqlite"
    cut.write_bytes(template[: len(template) // 2])
    cases = {
        blocker / "runs.sqlite": "is a file, not a folder",
        tmp_path: "is a folder",
        other: "not a derisk run store",
        wrong: "missing columns",
        junk: "not an SQLite database",
        cut: "damaged",
    }
    for path, msg in cases.items():
        for args in (["runs"], ["predict", "--run", "1"], ["train", *TINY, "--tokens", "2000"]):
            res = invoke("--store", path, *args)
            assert res.exit_code == 2 and msg in res.stderr, (path, args, res.output)
            assert clean(res) and str(path) in res.stderr
    # neither a reader nor a refused writer touched another program's database
    assert other.read_bytes() == other_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["file", "other.sqlite", "wrong.sqlite", "junk.sqlite", "cut.sqlite"]
    )


def test_unwritable_folder_is_refused_before_training(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway: make the permission check say no
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **kw: False if str(p) == str(folder) else real(p, mode)
        )
    try:
        res = invoke("--store", folder / "runs.sqlite", "train", *TINY, "--tokens", "2000")
        assert res.exit_code == 2 and "cannot write in the folder" in res.stderr
    finally:
        folder.chmod(0o755)


def test_reading_changes_nothing_and_a_bad_row_is_skipped_by_id(tmp_path, template):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(template)
    con = sqlite3.connect(path)
    con.execute("UPDATE runs SET model = '{not json' WHERE id = 2")
    con.execute("UPDATE runs SET val_loss = 'abc' WHERE id = 3")
    con.commit()
    con.close()
    before = path.read_bytes()
    res = invoke("--store", path, "runs", "--json", "--csv", tmp_path / "out.csv")
    assert res.exit_code == 0, res.output
    assert [r["id"] for r in json.loads(res.stdout)["runs"]] == [1, 4]
    assert "skipped run 2" in res.stderr and "skipped run 3" in res.stderr
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 3
    res = invoke("--store", path, "predict", "--law", "cpu-dense", "--run", "2")
    assert res.exit_code == 2 and "run 2 cannot be read" in res.stderr
    res = invoke("--store", path, "predict", "--law", "cpu-dense", "--run", "all", "--json")
    assert res.exit_code == 0, res.output
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "runs.sqlite"]


V1_SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE NOT NULL, arch TEXT NOT NULL,
    model TEXT NOT NULL, train TEXT NOT NULL, params INTEGER, active_params INTEGER,
    non_embedding INTEGER, experts INTEGER, granularity INTEGER, tokens INTEGER,
    val_loss REAL, best_val_loss REAL, curve TEXT, flops REAL, wall_s REAL,
    tokens_per_s REAL, mfu REAL, device TEXT, corpus TEXT, corpus_hash TEXT, version TEXT,
    status TEXT NOT NULL, started REAL, finished REAL)"""


def test_a_store_of_the_previous_version_is_read_as_is_and_upgraded_by_a_writer(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(V1_SCHEMA)
    m = ModelConfig(d_model=16, n_layer=1, n_head=2, seq_len=32)
    tc = TrainConfig(tokens=2000, batch_size=8)
    row = (json.dumps(dataclasses.asdict(m)), json.dumps(dataclasses.asdict(tc)))
    con.execute(
        "INSERT INTO runs (key, arch, model, train, tokens, val_loss, non_embedding, "
        "experts, granularity, corpus_hash, curve, status) "
        "VALUES ('k1', 'dense', ?, ?, 2000, 2.5, 3376, 1, 1, 'h', '[]', 'finished')",
        row,
    )
    con.execute(  # left running by a version-1 process: retaken
        "INSERT INTO runs (key, arch, model, train, status) "
        "VALUES ('k2', 'dense', ?, ?, 'running')",
        row,
    )
    con.commit()
    con.close()
    res = invoke("--store", path, "runs", "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)["runs"]) == 2
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA application_id").fetchone()[0] == 0  # read: not converted
    con.close()
    store = RunStore(path)  # a writer upgrades it in place
    claim = store.claim("k2", m, tc, SimpleNamespace(source="x", digest="h"))
    assert claim.state == "claimed" and claim.id == 2 and "gone" in claim.previous
    assert store.claim("k1", m, tc, SimpleNamespace(source="x", digest="h")).state == "done"
    store.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA application_id").fetchone()[0] == APP_ID
    cols = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
    assert {"owner", "heartbeat", "error"} <= cols
    con.close()


def test_a_failure_during_a_run_marks_it_failed_and_a_rerun_retakes_it(tmp_path, text, monkeypatch):
    import derisk.estimators

    path = tmp_path / "runs.sqlite"
    real = derisk.estimators.train

    def broken(*a, **k):
        raise RuntimeError("device fell over")

    monkeypatch.setattr(derisk.estimators, "train", broken)
    args = ["--store", path, "train", *TINY, "--tokens", "2000", "--corpus", text, "--json"]
    res = invoke(*args)
    assert isinstance(res.exception, RuntimeError)
    (run,) = RunStore(path, create=False).runs()
    assert run["status"].startswith("failed: RuntimeError: device fell over")
    monkeypatch.setattr(derisk.estimators, "train", real)
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["id"] == run["id"] and out["status"] == "finished" and not out["reused"]
    again = json.loads(invoke(*args).stdout)  # the same point again: reported, not trained
    assert again["reused"] and again["id"] == run["id"] and again["tokens"] == out["tokens"]
    res = invoke(*args[:-1], "--seq-len", "20000")  # corpus too short: refused before
    assert res.exit_code == 2 and "--seq-len" in res.stderr
    assert len(RunStore(path, create=False).runs()) == 1


# ---------------------------------------------------------------- sweep specs and flags


def test_sweep_spec_errors_are_located(tmp_path):
    cases = {
        "tokens: [1e5, lots]\nd_model: 16\n": ":1:",
        "tokens: 1e5\nmax_flops: big\n": ":2:12",
        "tokens: 1e5\nmax_bytes: [1, 2]\n": ":2:",
        "tokens: 1e5\nlr_by_d_model: [0.1]\n": ":2:16",
        "tokens: 1e5\nd_modle: 16\n": "did you mean `d_model`",
        "tokens: [1e5\n": ":2:",
        "d_model: 16\n": "add `tokens:`",
        "": "empty",
        "{}": "empty",
        "tokens: .nan\n": "finite",
        "tokens: 1e5\nd_model: [16, 32]\nlr: 0.1\nlr_by_d_model: {16: 0.1}\n": "not both",
    }
    for text, msg in cases.items():
        spec = tmp_path / "spec.yaml"
        spec.write_text(text)
        res = invoke("--store", tmp_path / "s.sqlite", "sweep", spec)
        assert res.exit_code == 2 and msg in res.stderr, (text, res.output)
        assert f"{spec}:" in res.stderr and clean(res)
    (tmp_path / "bin.yaml").write_bytes(b"\x00\x01\xff" * 100)
    for path, msg in ((tmp_path, "is a folder"), (tmp_path / "bin.yaml", "binary")):
        res = invoke("--store", tmp_path / "s.sqlite", "sweep", path)
        assert res.exit_code == 2 and msg in res.stderr
    assert not (tmp_path / "s.sqlite").exists()
    with pytest.raises(RoadmapError, match="10,000,000 points"):
        grid = "\n".join(f"{k}: {list(range(1, 101))}" for k in ("seed", "tokens", "eval_every"))
        (tmp_path / "big.yaml").write_text(grid + "\nbatch_size: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]")
        load_sweep(tmp_path / "big.yaml")


def test_train_flags_out_of_range_name_the_flag(tmp_path):
    for flag, value in [
        ("--tokens", "inf"),
        ("--tokens", "nan"),
        ("--tokens", "-5"),
        ("--tokens", "1e30"),
        ("--lr", "nan"),
        ("--lr", "-1"),
        ("--seed", "-1"),
        ("--max-bytes", "0"),
        ("--d-model", "4"),
        ("--batch-size", "0"),
        ("--seq-len", "1"),
    ]:
        res = invoke("--store", tmp_path / "s.sqlite", "train", flag, value)
        assert res.exit_code == 2 and f"{flag} must" in res.stderr, (flag, value, res.output)
    assert not (tmp_path / "s.sqlite").exists()


# ---------------------------------------------------------------- property tests


@contextlib.contextmanager
def no_training():
    """`train` and `sweep` in process, without training or reading a big corpus."""
    import derisk.cli.runs
    import derisk.estimators

    def fake_corpus(path=None, *, max_bytes=None, **_):
        if path is not None and not Path(path).exists():
            raise DataError(f"corpus {path}: no such file or folder")
        data = np.frombuffer(bytes(range(256)) * 40, dtype=np.uint8)
        return SimpleNamespace(train=data, valid=data[:3000], digest="fake", source="fake")

    def fake_point(store, model, tc, corpus, **_):
        return SimpleNamespace(state="done", id=1, owner=None), None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(derisk.estimators, "load_corpus", fake_corpus)
        mp.setattr(derisk.cli.runs, "_train_point", fake_point)
        mp.setattr(
            derisk.cli.runs,
            "_stored_result",
            lambda store, claim: {"status": "x", "final_val_loss": None},
        )
        yield


def damage(template: bytes, data):
    kind = data.draw(st.sampled_from(["bytes", "truncate", "overwrite", "schema", "row"]))
    if kind == "bytes":
        return data.draw(st.binary(max_size=3000)), kind
    if kind == "truncate":
        return template[: data.draw(st.integers(0, len(template) - 1))], kind
    if kind == "overwrite":
        at = data.draw(st.integers(0, len(template) - 1))
        junk = data.draw(st.binary(min_size=1, max_size=600))
        return template[:at] + junk + template[at + len(junk) :], kind
    return None, kind


def write_damaged(path: Path, template: bytes, data) -> str:
    raw, kind = damage(template, data)
    if raw is not None:
        path.write_bytes(raw)
        return kind
    path.write_bytes(template)
    con = sqlite3.connect(path)
    if kind == "schema":
        cols = data.draw(
            st.lists(st.sampled_from(["id", "key", "model", "x", "status"]), min_size=1, max_size=4)
        )
        con.execute("DROP TABLE runs")
        con.execute(f"CREATE TABLE runs ({', '.join(dict.fromkeys(cols))})")
        if data.draw(st.booleans()):
            con.execute(f"PRAGMA application_id = {data.draw(st.integers(-(2**31), 2**31 - 1))}")
    else:
        column = data.draw(
            st.sampled_from(["model", "train", "curve", "val_loss", "tokens", "status", "arch"])
        )
        value = data.draw(
            st.one_of(
                st.text(max_size=30),
                st.integers(-(2**63), 2**63 - 1),
                st.floats(),
                st.binary(max_size=10),
                st.sampled_from(['{"d_model": "x"}', "[1]", "[" * 3000, '{"arch": "moe"}']),
            )
        )
        rid = data.draw(st.integers(1, 4))
        with contextlib.suppress(sqlite3.IntegrityError):  # NOT NULL refuses it itself
            con.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, rid))
    con.commit()
    con.close()
    return kind


@settings(HYP, max_examples=40)
@given(data=st.data())
def test_damaged_stores_give_exit_0_or_2_and_reading_changes_nothing(
    tmp_path_factory, template_path, text, data
):
    template = template_path.read_bytes()
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / "runs.sqlite"
    kind = write_damaged(path, template, data)
    before = path.read_bytes()
    for args in (
        ["runs", "--json", "--csv", folder / "out.csv"],
        ["predict", "--law", "cpu-dense", "--run", data.draw(st.sampled_from(["1", "3", "all"]))],
    ):
        res = invoke("--store", path, *args)
        assert clean(res), (kind, args, res.output, res.exception)
        assert path.read_bytes() == before, (kind, args)
    assert {p.name for p in folder.iterdir()} <= {"runs.sqlite", "out.csv"}
    with no_training():
        res = invoke("--store", path, "train", *TINY, "--tokens", "2000", "--corpus", text)
    assert clean(res), (kind, res.output, res.exception)


SPEC_KEYS = ["tokens", "d_model", "n_head", "lr", "max_flops", "max_bytes", "lr_by_d_model"]
SPEC_KEYS += ["arch", "seed", "corpus", "warmup", "bogus", "seq_len", "experts", "top_k"]
scalar = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(),
    st.sampled_from(["1e5", "abc", "inf", ".nan", "dense", "moe", "", "~", "!!int abc", "[", "{"]),
    st.booleans(),
)
value = st.one_of(scalar, st.lists(scalar, max_size=4), st.dictionaries(scalar, scalar, max_size=3))


@HYP
@given(
    spec=st.one_of(
        st.dictionaries(st.sampled_from(SPEC_KEYS), value, max_size=6).map(json.dumps),
        st.dictionaries(st.sampled_from(SPEC_KEYS), value, max_size=6).map(
            lambda d: "\n".join(f"{k}: {v}" for k, v in d.items())
        ),
        st.text(max_size=200),
        st.binary(max_size=200),
    )
)
def test_malformed_sweep_specs_give_exit_0_or_2(tmp_path_factory, spec):
    folder = tmp_path_factory.mktemp("spec")
    path = folder / "spec.yaml"
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    else:
        path.write_text(spec)
    with no_training():
        res = invoke("--store", folder / "s.sqlite", "sweep", path, "--json")
    assert clean(res), (spec, res.output, res.exception)


flag_value = st.one_of(
    st.floats().map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "abc", "", "0", "1e-300"]),
)


@HYP
@given(
    flags=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "--tokens",
                    "--lr",
                    "--seed",
                    "--d-model",
                    "--n-head",
                    "--seq-len",
                    "--batch-size",
                    "--max-bytes",
                    "--experts",
                    "--top-k",
                    "--granularity",
                    "--n-layer",
                ]
            ),
            flag_value,
        ),
        min_size=1,
        max_size=4,
    ),
    arch=st.sampled_from(["dense", "moe"]),
)
def test_malformed_train_flags_give_exit_0_or_2(tmp_path_factory, text, flags, arch):
    folder = tmp_path_factory.mktemp("flags")
    args = [a for pair in flags for a in pair]
    with no_training():
        res = invoke(
            "--store", folder / "s.sqlite", "train", "--arch", arch, *args, "--corpus", text
        )
    assert clean(res), (args, res.output, res.exception)


# ---------------------------------------------------------------- real processes


def derisk(*args) -> list[str]:
    return [sys.executable, "-m", "derisk.cli", *map(str, args)]


def test_two_identical_trains_at_once_keep_one_run_and_both_report_it(tmp_path, text):
    store = tmp_path / "runs.sqlite"
    cmd = derisk("--store", store, "train", *TINY, "--tokens", "60000", "--corpus", text, "--json")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, e) in zip(procs, outs, strict=True):
        assert p.returncode == 0, e.decode()
    results = [json.loads(o) for o, _ in outs]
    assert results[0]["id"] == results[1]["id"]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert results[0]["final_val_loss"] == results[1]["final_val_loss"]
    (run,) = RunStore(store, create=False).runs()
    assert run["status"] == "finished"


WRITER = """
import sys
from types import SimpleNamespace
from derisk.estimators import ModelConfig, RunResult, RunStore, TrainConfig, run_key
store = RunStore(sys.argv[1])
worker, n = int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    m = ModelConfig(d_model=16, n_head=2)
    tc = TrainConfig(tokens=1000 + i, seed=worker)
    key = run_key(m, tc, "h")
    assert store.claim(key, m, tc, SimpleNamespace(source="x", digest="h")).state == "claimed"
    store.finish(key, RunResult(status="finished", final_val_loss=1.0, best_val_loss=1.0,
                                tokens=tc.tokens))
print("ok")
"""


def test_many_processes_writing_distinct_runs_lose_none(tmp_path):
    store = tmp_path / "runs.sqlite"  # created concurrently too
    n, each = 4, 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store), str(w), str(each)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(n)
    ]
    for p in procs:
        out, errs = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == b"ok", errs.decode()
    runs = RunStore(store, create=False).runs()
    assert len(runs) == n * each and {r["status"] for r in runs} == {"finished"}
    assert len({r["key"] for r in runs}) == n * each


def test_a_train_killed_mid_run_leaves_a_readable_store_and_is_retaken(tmp_path, text):
    store = tmp_path / "runs.sqlite"
    args = ["--store", store, "train", *TINY, "--tokens", "600000", "--corpus", text, "--json"]
    proc = subprocess.Popen(derisk(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    seen = None
    while time.time() < deadline and proc.poll() is None and seen is None:
        time.sleep(0.2)
        if store.exists():
            try:
                runs = RunStore(store, create=False).runs()
            except DataError:
                continue  # being created right now
            seen = runs[0] if runs else None
    time.sleep(1.0)  # into compilation or training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen is not None and seen["status"] == "running", proc.stderr.read().decode()
    res = invoke("--store", store, "runs", "--json")
    (listed,) = json.loads(res.stdout)["runs"]
    if listed["status"] == "running":  # killed before it finished, as intended
        assert listed["stale"] is True
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["id"] == seen["id"] and out["status"] == "finished"
    (run,) = RunStore(store, create=False).runs()
    assert run["status"] == "finished" and run["tokens"] == out["tokens"]


@pytest.mark.parametrize("loss", [0, -1.5, float("nan"), "x"])
def test_a_stored_loss_that_is_not_a_positive_number_is_a_damaged_row(
    tmp_path, template_path, loss
):
    """Found by the damaged-store fuzz: a finished run whose loss reads 0 made `predict
    --run` raise a ValueError (a traceback) instead of naming the damaged row."""
    path = tmp_path / "runs.sqlite"
    path.write_bytes(template_path.read_bytes())
    con = sqlite3.connect(path)
    con.execute("UPDATE runs SET val_loss = ? WHERE id = 1", (loss,))
    con.commit()
    con.close()
    res = invoke("--store", path, "predict", "--law", "cpu-dense", "--run", "1")
    assert res.exit_code == 2 and clean(res), (res.output, res.exception)
    assert "run 1" in res.output  # named; 0 and -1.5 as a damaged row, the rest unreadable
