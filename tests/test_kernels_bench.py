"""The GPU benchmark's harness runs end to end on a CPU (interpret mode, tiny sizes)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import moe_kernel  # noqa: E402


def test_moe_kernel_smoke_checks_and_times_every_cpu_variant(tmp_path, capsys):
    # Triton only: the Mosaic interpreter takes minutes through the whole harness on two
    # cores; its kernels are tested in test_kernels_mosaic.py.
    rc = moe_kernel.main(["--smoke", "--impls", "triton", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    saved = json.loads((tmp_path / "moe_kernel_smoke.json").read_text())
    row = saved["rows"][0]
    for key in ("ours_triton", "ragged_dot", "capacity", "ours_triton_fb", "capacity_fb"):
        assert row[f"{key}_ms"] > 0, key
    # each compared variant was checked against the reference before it was timed
    assert row["ours_triton_err"] < 2e-2 and row["ours_triton_fb_err"] < 4e-2
    assert saved["checks"][0]["ok"]


def test_a_wrong_variant_is_reported_and_not_timed():
    row = {}
    bad = moe_kernel.Row(row, deadline=float("inf"), per_batch=1)
    x = moe_kernel.jnp.ones((4, 4))
    bad.run("broken", lambda: (lambda a: a * 2, (x,), lambda o: (o,)), ref=(x,))
    assert "wrong result" in row["broken_error"] and "broken_ms" not in row
