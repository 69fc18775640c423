"""The size guard bounds what a command really holds: peak RSS measured in a child."""

import json
import subprocess
import sys

import yaml

# Peak RSS of the child itself: VmHWM belongs to its address space, which exec made new
# (getrusage's ru_maxrss would carry over the pytest worker's peak across exec).
RUN = """
import sys, time
from derisk.cli import main
sys.argv = ["derisk", *sys.argv[1:]]
t0 = time.perf_counter()
try:
    main()
finally:
    sys.stderr.write("\\nSECONDS %f\\n" % (time.perf_counter() - t0))
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    sys.stderr.write("\\nPEAK_RSS_KB %s\\n" % hwm)
"""


def _sixteen(tmp_path):
    """16 independent rewarded experiments: 65,536 states x 501 budget levels."""
    exps = [
        {"id": f"e{i}", "cost": 10 + i, "p": round(0.3 + 0.04 * i, 2), "reward": 10 + i}
        for i in range(16)
    ]
    path = tmp_path / "sixteen.yaml"
    path.write_text(
        yaml.safe_dump({"name": "sixteen", "budget": 500, "resolution": 1, "experiments": exps})
    )
    return path


def _run(*args):
    """(result, peak RSS in bytes, seconds of the command after start-up imports)."""
    done = subprocess.run(
        [sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=300
    )
    peak = int(done.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) * 1024
    seconds = float(done.stderr.rsplit("SECONDS", 1)[1].split()[0])
    return done, peak, seconds


def test_over_the_limit_is_refused_quickly(tmp_path):
    path = _sixteen(tmp_path)
    exact = ["--solver", "exact"]  # plan, whatif and simulate would fall back to approx
    for cmd in (
        ["plan", *exact],
        ["whatif", *exact],
        ["simulate", *exact],
        ["explain"],
        ["sensitivity"],
    ):
        done, peak, seconds = _run(*cmd, str(path), "--max-memory", "0.4", "--json")
        assert done.returncode == 2, (cmd, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert "--max-memory" in done.stderr
        assert seconds < 5, (cmd, seconds)
        assert peak < 0.4 * 2**30


def test_auto_falls_back_to_approx_within_the_limit(tmp_path):
    path = _sixteen(tmp_path)
    done, peak, _ = _run("plan", str(path), "--max-memory", "0.4", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["solver"] == "approx" and "approx" in done.stderr
    assert out["bounds"][0] <= out["value"] <= out["bounds"][1] + 1e-9
    assert peak < 0.4 * 2**30


def test_under_the_limit_plans_within_it(tmp_path):
    path = _sixteen(tmp_path)
    limit = 1.5
    done, peak, _ = _run("plan", str(path), "--max-memory", str(limit), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["next"] is not None and len(out["p_reward"]) == 16
    assert peak < limit * 2**30, peak / 2**30
