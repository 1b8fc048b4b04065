"""``python -m offpolicy.bench --quick`` runs and writes its CSV and markdown tables."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("taichi")

from offpolicy import bench  # noqa: E402


def test_quick_benchmark_writes_tables(tmp_path):
    rows = bench.main(["--quick", "--sizes", "16x8,4x32", "--repeats", "2",
                       "--estimators", "gae,vtrace,retrace,nstep_returns,p3o_advantage",
                       "--backends", "numpy,numpy-loop,taichi,taichi-naive",
                       "--out", str(tmp_path)])
    with open(tmp_path / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) > 0
    seen = {(r["estimator"], r["backend"]) for r in table}
    assert ("gae", "taichi") in seen and ("gae", "numpy-loop") in seen
    assert ("vtrace", "taichi-naive") in seen and ("p3o_advantage", "numpy") in seen
    for r in table:
        assert float(r["median_ms"]) > 0 and float(r["copy_floor_ms"]) > 0
        if r["backend"] != "numpy":
            assert r["speedup_vs_numpy"]
    text = (tmp_path / "bench.md").read_text()
    assert "## B x T = 16 x 8" in text and "| gae | taichi |" in text


def test_bench_rejects_unknown_names():
    with pytest.raises(SystemExit):
        bench.main(["--estimators", "nope", "--quick"])
    assert bench.parse_sizes("4096x128,64x64") == ((4096, 128), (64, 64))
