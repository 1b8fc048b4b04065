"""``python -m offpolicy.bench``: it runs and writes its CSV and markdown tables; the ratios
against the fastest peer; no peer library is needed (peers are stand-ins here)."""

from __future__ import annotations

import csv
import time

import pytest

from offpolicy import bench


def test_quick_benchmark_writes_tables(tmp_path):
    pytest.importorskip("taichi")
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
        assert r["speedup_vs_best_peer"] == "" and r["best_peer"] == ""  # no peer ran
    text = (tmp_path / "bench.md").read_text()
    assert "## B x T = 16 x 8" in text and "| gae | taichi |" in text


def _sleeper(seconds):
    def run():
        time.sleep(seconds)
    return run


def test_the_fastest_peer_is_the_yardstick(tmp_path, monkeypatch):
    """Stand-in peers (TorchRL batch-major sleeping 4 ms, rlax time-major 0.5 ms, rlax
    batch-major 2 ms): every row of GAE is compared with the fastest, named with its layout,
    and the ratio is the peer's median over the row's median."""
    monkeypatch.setattr(bench, "_torchrl_call",
                        lambda name, d, vectorised=False, time_major=False:
                        _sleeper(0.004) if name == "gae" and not vectorised and not time_major
                        else None)
    monkeypatch.setattr(bench, "_rlax_call", lambda name, d, time_major=False:
                        (_sleeper(0.0005 if time_major else 0.002) if name == "gae" else None))
    lines = []
    rows = bench.run([(8, 16)], ["gae", "nstep_returns"],
                     ["numpy", "numpy-loop", "torch", "torchrl-bm", "torchrl-vec-bm", "rlax-tm",
                      "rlax-bm"], 6, log=lines.append, rounds=3)
    gae = {r["backend"]: r for r in rows if r["estimator"] == "gae"}
    assert set(gae) == {"numpy", "numpy-loop", "torch", "torchrl-bm", "rlax-tm", "rlax-bm"}
    peer_ms = gae["rlax-tm"]["median_ms"]
    assert peer_ms < gae["rlax-bm"]["median_ms"] < gae["torchrl-bm"]["median_ms"]
    for backend, r in gae.items():
        assert r["best_peer"] == "rlax-tm", backend
        # the row's ratio comes from unrounded medians; the CSV keeps them to 1e-4 ms
        assert r["speedup_vs_best_peer"] == pytest.approx(peer_ms / r["median_ms"], rel=0.01,
                                                          abs=0.01), backend
        assert r["repeats"] == 6  # 3 rounds of 2 calls
    assert gae["rlax-tm"]["speedup_vs_best_peer"] == 1.0
    assert gae["torchrl-bm"]["speedup_vs_best_peer"] < 1.0
    for r in rows:
        if r["estimator"] == "nstep_returns":  # no peer computes it
            assert r["speedup_vs_best_peer"] is None and r["best_peer"] == ""
    assert any("vs best peer x1.0 (rlax-tm)" in line for line in lines)
    bench.write(rows, str(tmp_path), dict(command="c", machine="m", python="p", numpy="n",
                                          versions="v", rounds=3, load="l"))
    text = (tmp_path / "bench.md").read_text()
    assert "| vs best peer | load |" in text and "(rlax-tm) |" in text


def test_rounds_interleave_the_backends():
    """Each round calls every backend in turn, the order rotating: with 3 backends and 3 rounds
    of 2 calls the call sequence is a a b b c c | b b c c a a | c c a a b b."""
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    timed = bench.interleaved(fns, repeats=6, rounds=3)
    assert "".join(calls) == "aabbcc" "bbccaa" "ccaabb"
    assert {k: v[2] for k, v in timed.items()} == {"a": 6, "b": 6, "c": 6}


def test_targets_table_reads_the_rows():
    def row(name, backend, size, ms, **kw):
        base = dict(estimator=name, backend=backend, B=size[0], T=size[1], median_ms=ms,
                    best_peer="rlax-tm", x_copy_floor=None, speedup_vs_loop=None)
        return dict(base, **kw)

    rows = [row("gae", "taichi", (4096, 128), 1.0, x_copy_floor=1.2, speedup_vs_loop=9.0),
            row("gae", "rlax-tm", (4096, 128), 1.4), row("gae", "rlax-bm", (4096, 128), 5.0),
            row("gae", "torch", (4096, 128), 3.0, speedup_vs_loop=0.5)]
    text = "\n".join(bench.targets(rows))
    # 1.4 / 1.0 against the faster rlax layout: below 1.5, missed, and named
    assert "| taichi >= 1.5x rlax's best layout | 4096x128 | gae | 1.4x (rlax-tm) | NO |" in text
    assert "| taichi <= 1.3x copy floor | 4096x128 | gae | 1.2x | yes |" in text
    assert "| torch no slower than numpy loop | 4096x128 | gae | 0.5x | NO |" in text


def test_ratios_never_round_to_zero():
    assert bench._ratio(1.0, 400.0) == 0.0025
    assert bench._ratio(3.0, 2.0) == 1.5 and bench._ratio(None, 2.0) is None


def test_small_batches_are_default_sizes():
    for size in ((4, 128), (16, 128), (128, 4), (128, 16), (64, 64), (128, 4096)):
        assert size in bench.DEFAULT_SIZES


def test_bench_rejects_bad_arguments_in_one_line(capsys):
    for argv in (["--estimators", "nope", "--quick"], ["--backends", "jax", "--quick"],
                 ["--sizes", "4by4"], ["--repeats", "0"]):
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, argv
    assert bench.parse_sizes("4096x128,64x64") == ((4096, 128), (64, 64))
