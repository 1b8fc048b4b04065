"""The bias/variance report (issue 5): grid, resumable store, byte-identical outputs, the CI
check passing on the untouched tree and failing readably on a broken estimator."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import estimators.numpy as reference
from offpolicy import moments
from offpolicy.report import check, cli, compute, grid, render
from offpolicy.report.store import CellStore, encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, "reports", "baseline")
# a small slice of the quick grid with Monte Carlo cells for every estimator kind used below
SUBSET = ["--mdps", "chain", "--estimators", "gae,vtrace,retrace,nstep"]


def run(argv, capsys):
    rc = cli.main(argv + ["--no-progress"])
    return rc, capsys.readouterr().out


# ---- grid ------------------------------------------------------------------------------------


def test_cell_ids_are_unique_and_parse_back():
    for profile in grid.PROFILES.values():
        cells = grid.cells(profile)
        ids = [grid.cell_id(c) for c in cells]
        assert len(set(ids)) == len(ids)
        c = cells[len(cells) // 2]
        fields = dict(part.split("=", 1) for part in grid.cell_id(c).split())
        for axis in grid.AXES:
            assert grid.parse_param(axis, fields[grid.LABELS[axis]]) == c[axis]


def test_every_estimator_has_monte_carlo_cells_in_the_quick_profile():
    cells = grid.cells(grid.PROFILES["quick"])
    assert {c["estimator"] for c in cells if c["mc"]} == set(grid.ESTIMATORS)
    assert {c["stale"] for c in cells if c["mc"]} >= {0, 2}  # on- and off-policy


def test_mse_is_bias_squared_plus_variance_and_on_policy_bias_vanishes():
    cell = dict(mdp="garnet_small", estimator="gae", lam=0.9, n=None, rho_clip=None,
                c_clip=None, stale=0, T=16, values="exact", mc=False)
    m = compute.compute_cell(cell, 0, 0)["metrics"]
    assert m["bias_target"] < 1e-12  # Theorem 3: on-policy GAE with V^pi is unbiased for A^pi
    assert m["mse"] == pytest.approx(m["bias_target"] ** 2 + m["var"], rel=1e-12)
    off = compute.compute_cell(dict(cell, stale=2, estimator="vtrace", rho_clip=1.0,
                                    c_clip=1.0), 0, 0)["metrics"]
    assert off["kl"] > 0 and 0 < off["tv"] < 1
    assert off["modulus"] < 1


# ---- store and resume ------------------------------------------------------------------------


def test_store_drops_a_partial_last_line_and_keeps_appending(tmp_path):
    path = str(tmp_path / "cells.jsonl")
    with CellStore(path) as s:
        s.add({"id": "a", "metrics": {"x": 1.0}})
        s.add({"id": "b", "metrics": {"x": float("nan")}})
    with open(path, "ab") as f:
        f.write(b'{"id":"c","metr')  # killed mid-write
    with CellStore(path) as s:
        assert set(s.records) == {"a", "b"}
        s.add({"id": "c", "metrics": {"x": 3.0}})
    lines = open(path, "rb").read().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["a", "b", "c"]
    assert encode({"b": 1, "a": float("inf")}) == '{"a":"inf","b":1}'


def test_interrupted_run_resumes_to_byte_identical_files(tmp_path, capsys):
    args = SUBSET + ["--seed", "3"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    rc, _ = run(args + ["--out", a, "--limit", "9", "--quiet"], capsys)
    assert rc == 0 and not os.path.exists(os.path.join(a, "results.json"))
    (jsonl,) = [os.path.join(r, f) for r, _, fs in os.walk(a) for f in fs if f == "cells.jsonl"]
    assert len(open(jsonl).read().splitlines()) >= 9
    with open(jsonl, "ab") as f:
        f.write(b'{"cell":{"T":16')  # and the kill came in the middle of a write
    rc, out = run(args + ["--out", a], capsys)
    assert rc == 0 and "MSE by staleness" in out
    rc, _ = run(args + ["--out", b, "--quiet", "--jobs", "2"], capsys)
    assert rc == 0
    names = sorted(f for f in os.listdir(b) if not f.startswith("_"))
    assert {"results.csv", "results.json", "results.md", "mse_vs_staleness.png"} <= set(names)
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


def test_unknown_names_are_rejected_with_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--mdps", "garnet_huge"])
    assert "known: garnet_small" in capsys.readouterr().err


# ---- the CI check ----------------------------------------------------------------------------


def test_check_passes_on_the_untouched_tree(capsys):
    rc, out = run(["--check", BASELINE] + SUBSET, capsys)
    assert rc == 0, out
    assert "check passed" in out


def _broken_vtrace(original):
    def vtrace(*args, **kw):  # the trace coefficient forgets its clip: c_t = rho_t
        kw["c_clip"] = float("inf")
        return original(*args, **kw)

    return vtrace


def test_check_fails_readably_when_an_estimator_is_broken(monkeypatch, capsys):
    monkeypatch.setattr(reference, "vtrace", _broken_vtrace(reference.vtrace))
    rc, out = run(["--check", BASELINE] + SUBSET, capsys)
    assert rc == 1
    assert "check FAILED" in out
    assert "estimator=vtrace" in out and "k=2" in out
    assert "disagrees with its exact moments" in out
    assert "estimator=gae" not in out  # only the broken estimator is named


def test_check_fails_when_an_exact_moment_coefficient_is_broken(monkeypatch, capsys):
    spec = moments._SPECS["retrace"]
    broken = moments._q_trace(lambda c: np.minimum(1.0, c.rho) ** 2)  # c = min(1, rho)^2
    monkeypatch.setitem(moments._SPECS, "retrace",
                        dataclasses.replace(spec, coeffs={"target": broken}))
    rc, out = run(["--check", BASELINE] + SUBSET, capsys)
    assert rc == 1
    assert "estimator=retrace" in out and "exact figure changed" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("mse "))
    assert "baseline" in line and "now" in line and "tolerance" in line


def test_missing_and_extra_cells_are_regressions():
    base = {"cells": {"x": {"metrics": {}}}, "meta": {}}
    rec = {"id": "y", "cell": {"mc": False}, "metrics": {}}
    regs = check.compare([rec], base, {"x"})
    assert {r["why"] for r in regs} == {"cell not recomputed",
                                        "cell not in the baseline (--update-baseline?)"}
    text = check.format_regressions(regs, "B", 1)
    assert text.startswith("check FAILED: 2 regression(s)")


def test_number_format_is_fixed():
    assert [render.num(x) for x in (0.1 + 0.2, -0.0, float("inf"), None, 1e-300)] == [
        "0.3", "0", "inf", "", "1e-300"]


# ---- the gate's tolerances, column by column (no computing: the fresh run is the baseline) ---


_BASELINE_CELLS: dict = {}


def _baseline_cells():
    """The committed baseline's cells, parsed once (callers copy what they change)."""
    if not _BASELINE_CELLS:
        _BASELINE_CELLS.update(check.load_baseline(BASELINE)["cells"])
    return _BASELINE_CELLS


def _fake_run(monkeypatch, edit=None):
    """Make the check's computation return the baseline's own figures (``edit(records)`` may
    change them first), so each test is about the comparison alone."""
    base = _baseline_cells()

    def fake_compute(args, profile, cells, run_dir, progress):
        records = [{"id": grid.cell_id(c), "cell": c,
                    "metrics": dict(base[grid.cell_id(c)]["metrics"])} for c in cells]
        if edit is not None:
            edit(records)
        return records

    monkeypatch.setattr(cli, "compute", fake_compute)


def _first(records, column, mc):
    """The first record (of Monte Carlo cells if ``mc``) whose ``column`` is finite, non-zero."""
    return next(r for r in records if bool(r["cell"]["mc"]) == mc
                and np.isfinite(float(r["metrics"].get(column, np.nan)))
                and float(r["metrics"][column]) != 0)


def _tolerance(column, metrics):
    """The tolerance the gate documents for ``column`` (baseline = now before the edit)."""
    x = float(metrics[column])
    if column in render.EXACT_METRICS:
        return check.RTOL * abs(x) + check.ATOL
    se = dict(check.MC_PAIRS)[column]
    return check.Z_BASE * np.hypot(float(metrics[se]), float(metrics[se]))


TOLERANCE_COLUMNS = list(render.EXACT_METRICS) + [m for m, _ in check.MC_PAIRS]


@pytest.mark.parametrize("column", TOLERANCE_COLUMNS)
@pytest.mark.parametrize("factor,rc", [(1.01, 1), (-1.01, 1), (0.99, 0), (-0.99, 0)])
def test_check_tolerance_edges(monkeypatch, capsys, column, factor, rc):
    """Just past the documented tolerance fails (exit 1), just inside passes (exit 0)."""
    mc = column not in render.EXACT_METRICS

    def edit(records):
        rec = _first(records, column, mc)
        rec["metrics"][column] = float(rec["metrics"][column]) + factor * _tolerance(
            column, rec["metrics"])

    _fake_run(monkeypatch, edit)
    got, out = run(["--check", BASELINE] + SUBSET, capsys)
    assert got == rc, out
    assert (f"  {column} " in out) == (rc == 1)


COMPARED_COLUMNS = TOLERANCE_COLUMNS + ["mc_n", "mc_mse_se", "mc_bias_mean_se", "z_mse",
                                        "z_bias"]


@pytest.mark.parametrize("column", COMPARED_COLUMNS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_check_fails_on_a_non_finite_figure(monkeypatch, capsys, column, value):
    mc = column not in render.EXACT_METRICS

    def edit(records):
        _first(records, column, mc)["metrics"][column] = value

    _fake_run(monkeypatch, edit)
    got, out = run(["--check", BASELINE] + SUBSET, capsys)
    assert got == 1, out


@pytest.mark.parametrize("column", ["z_mse", "z_bias"])
@pytest.mark.parametrize("z,rc", [(1.01, 1), (-1.01, 1), (0.99, 0), (-0.99, 0)])
def test_check_z_score_edges(monkeypatch, capsys, column, z, rc):
    def edit(records):
        _first(records, column, True)["metrics"][column] = z * check.Z_EXACT

    _fake_run(monkeypatch, edit)
    got, out = run(["--check", BASELINE] + SUBSET, capsys)
    assert got == rc, out


def test_check_fails_when_the_sample_count_changes(monkeypatch, capsys):
    def edit(records):
        rec = _first(records, "mc_n", True)
        rec["metrics"]["mc_n"] = float(rec["metrics"]["mc_n"]) + 1

    _fake_run(monkeypatch, edit)
    got, out = run(["--check", BASELINE] + SUBSET, capsys)
    assert got == 1 and "sample count" in out


def test_check_passes_on_its_own_figures_and_nan_matches_nan(monkeypatch, capsys):
    """The untouched figures pass, including exact figures that are nan on both sides."""
    _fake_run(monkeypatch)
    got, out = run(["--check", BASELINE], capsys)
    assert got == 0, out
    base = check.load_baseline(BASELINE)["cells"].values()
    assert any(np.isnan(float(c["metrics"]["modulus"])) for c in base)


# ---- malformed baselines: exit 2, one line naming the file, nothing computed -----------------


def _copy_baseline(tmp_path):
    d = tmp_path / "base"
    d.mkdir()
    for name in ("results.json", "results.csv"):
        (d / name).write_bytes(open(os.path.join(BASELINE, name), "rb").read())
    return d


def _drop_json_column(d):
    doc = json.loads((d / "results.json").read_text())
    del doc["cells"][3]["metrics"]["mse"]
    (d / "results.json").write_text(json.dumps(doc))


def _json_text_metric(d):
    doc = json.loads((d / "results.json").read_text())
    doc["cells"][0]["metrics"]["var"] = "0.1"
    (d / "results.json").write_text(json.dumps(doc))


def _unknown_profile(d):
    doc = json.loads((d / "results.json").read_text())
    doc["meta"]["profile"] = "huge"
    (d / "results.json").write_text(json.dumps(doc))


def _cut(d, name, keep):
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[:keep(data)])


def _drop_csv_column(d):
    lines = (d / "results.csv").read_text().splitlines()
    col = lines[0].split(",").index("mse")
    (d / "results.csv").write_text("\n".join(
        ",".join(x for i, x in enumerate(line.split(",")) if i != col) for line in lines) + "\n")


MALFORMED = {
    "json_is_a_list": ("results.json", lambda d: (d / "results.json").write_text("[]")),
    "json_empty": ("results.json", lambda d: (d / "results.json").write_text("")),
    "json_truncated": ("results.json", lambda d: _cut(d, "results.json", lambda b: len(b) // 2)),
    "json_missing_column": ("results.json", _drop_json_column),
    "json_text_figure": ("results.json", _json_text_metric),
    "json_unknown_profile": ("results.json", _unknown_profile),
    "json_absent": ("results.json", lambda d: (d / "results.json").unlink()),
    "csv_truncated_mid_line": ("results.csv",
                               lambda d: _cut(d, "results.csv", lambda b: len(b) // 2)),
    "csv_truncated_mid_number": ("results.csv", lambda d: _cut(d, "results.csv",
                                                               lambda b: len(b) - 3)),
    "csv_truncated_at_a_line": ("results.csv", lambda d: _cut(
        d, "results.csv", lambda b: b.rstrip(b"\n").rfind(b"\n") + 1)),
    "csv_missing_column": ("results.csv", _drop_csv_column),
    "csv_empty": ("results.csv", lambda d: (d / "results.csv").write_text("")),
    "csv_absent": ("results.csv", lambda d: (d / "results.csv").unlink()),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_baseline_exits_2_with_one_line_naming_the_file(tmp_path, monkeypatch,
                                                                   capsys, case):
    name, damage = MALFORMED[case]
    d = _copy_baseline(tmp_path)
    damage(d)

    def no_compute(*args, **kw):
        raise AssertionError("computed before validating the baseline")

    monkeypatch.setattr(cli, "compute", no_compute)
    rc = cli.main(["--check", str(d), "--no-progress"])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, captured.out + captured.err
    assert "\n" not in err and str(d / name) in err, err
    assert captured.out == ""


def test_malformed_baseline_from_the_command_line(tmp_path):
    """The real process: exit status 2, one line on stderr, no traceback."""
    import subprocess
    import sys

    d = tmp_path / "base"
    d.mkdir()
    (d / "results.json").write_text("[]")
    proc = subprocess.run([sys.executable, "-m", "offpolicy.report", "--check", str(d)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(d / "results.json") in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_the_committed_baseline_is_well_formed():
    base = check.load_baseline(BASELINE)
    assert len(base["cells"]) == base["meta"]["cells"]
