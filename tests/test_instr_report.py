"""The report's bookkeeping (issue 20): which cells ``--check`` compares, which standard errors
scale its Monte Carlo tolerances, and what names a run directory (so that a different seed or a
change to any module computing figures never resumes old cells)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from offpolicy.report import check, cli, grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, "reports", "baseline")
SUBSET = ["--mdps", "chain", "--estimators", "gae,vtrace"]


def _mc_record(cid, **metrics):
    return {"id": cid, "cell": {"mc": True}, "metrics": metrics}


def _mc_metrics(mse, mse_se, bias, bias_se):
    # exact figures 0 on both sides; z = 0 so the self-consistency half stays quiet
    m = {k: 0.0 for k in check.EXACT_METRICS}
    m.update(mc_n=100, mc_mse=mse, mc_mse_se=mse_se, mc_bias_mean=bias, mc_bias_mean_se=bias_se,
             z_mse=0.0, z_bias=0.0)
    return m


@pytest.mark.parametrize("move,regressed", [(19.9, False), (20.1, True), (-20.1, True)])
def test_mse_tolerance_is_z_base_times_both_standard_errors_combined(move, regressed):
    """se_now = 3, se_base = 4: tolerance 4 * sqrt(3^2 + 4^2) = 20 for mc_mse; the bias
    column's own standard errors (30, 40: tolerance 200) must not widen it."""
    base = {"cells": {"c": {"metrics": _mc_metrics(0.0, 4.0, 0.0, 40.0)}}}
    now = _mc_record("c", **_mc_metrics(move, 3.0, 0.0, 30.0))
    regs = check.compare([now], base, {"c"})
    assert [r["metric"] for r in regs] == (["mc_mse"] if regressed else [])
    if regressed:
        assert regs[0]["tolerance"] == pytest.approx(20.0, rel=1e-12)


@pytest.mark.parametrize("move,regressed", [(199.0, False), (201.0, True)])
def test_bias_tolerance_uses_the_bias_standard_errors(move, regressed):
    """mc_bias_mean: se 30 now, 40 in the baseline -> tolerance 4 * 50 = 200 (the mse column's
    standard errors, 3 and 4, would give 20)."""
    base = {"cells": {"c": {"metrics": _mc_metrics(0.0, 4.0, 0.0, 40.0)}}}
    now = _mc_record("c", **_mc_metrics(0.0, 3.0, move, 30.0))
    regs = check.compare([now], base, {"c"})
    assert [r["metric"] for r in regs] == (["mc_bias_mean"] if regressed else [])


def test_only_the_baseline_standard_error_can_make_the_tolerance():
    """se_now = 0, se_base = 5: tolerance 20, so a move of 19 passes (a gate reading only the
    fresh run's standard error would fail it)."""
    base = {"cells": {"c": {"metrics": _mc_metrics(0.0, 5.0, 0.0, 5.0)}}}
    assert check.compare([_mc_record("c", **_mc_metrics(19.0, 0.0, 19.0, 0.0))], base,
                         {"c"}) == []
    base = {"cells": {"c": {"metrics": _mc_metrics(0.0, 0.0, 0.0, 0.0)}}}
    assert check.compare([_mc_record("c", **_mc_metrics(19.0, 5.0, 19.0, 5.0))], base,
                         {"c"}) == []


def test_every_baseline_cell_missing_from_the_run_is_reported():
    base = {"cells": {i: {"metrics": {k: 0.0 for k in check.EXACT_METRICS}}
                      for i in ("a", "b", "c")}}
    now = [{"id": "b", "cell": {"mc": False}, "metrics": {k: 0.0 for k in check.EXACT_METRICS}}]
    regs = check.compare(now, base, set(base["cells"]))
    assert sorted((r["cell"], r["why"]) for r in regs) == [
        ("a", "cell not recomputed"), ("c", "cell not recomputed")]


# ---- --check on the command line: the set of cells compared ------------------------------------


def _fake(monkeypatch, extra_ids):
    """The committed baseline with extra cells (ids in ``extra_ids``) that the grid does not
    produce; the check's computation returns the baseline's own figures."""
    real = check.load_baseline(BASELINE)
    cells = dict(real["cells"])
    for cid in extra_ids:
        cells[cid] = cells[next(iter(cells))]
    monkeypatch.setattr(check, "load_baseline", lambda d: {"meta": real["meta"], "cells": cells})

    def fake_compute(args, profile, grid_cells, run_dir, progress):
        return [{"id": grid.cell_id(c), "cell": c,
                 "metrics": dict(real["cells"][grid.cell_id(c)]["metrics"])}
                for c in grid_cells]

    monkeypatch.setattr(cli, "compute", fake_compute)


def _stale_id(mdp, est):
    c = next(c for c in grid.cells(grid.PROFILES["quick"], [mdp], [est]))
    return grid.cell_id(dict(c, T=999))


def test_check_reports_a_baseline_cell_the_grid_no_longer_produces(monkeypatch, capsys):
    stale = _stale_id("chain", "gae")
    _fake(monkeypatch, [stale])
    assert cli.main(["--check", BASELINE, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"cell {stale}" in out and "cell not recomputed" in out


def test_restricted_check_reports_a_baseline_cell_of_the_selection_that_is_gone(
        monkeypatch, capsys):
    stale = _stale_id("chain", "gae")
    _fake(monkeypatch, [stale])
    assert cli.main(["--check", BASELINE, "--no-progress"] + SUBSET) == 1
    assert f"cell {stale}" in capsys.readouterr().out


def test_restricted_check_ignores_baseline_cells_outside_the_selection(monkeypatch, capsys):
    _fake(monkeypatch, [_stale_id("sb_loop", "p3o")])
    assert cli.main(["--check", BASELINE, "--no-progress"] + SUBSET) == 0


# ---- run directories: what resumes -------------------------------------------------------------


def _report(tmp_path, *args):
    cmd = [sys.executable, "-m", "offpolicy.report", "--out", str(tmp_path / "out"),
           "--mdps", "sb_loop", "--estimators", "gae", "--limit", "1", "--no-progress",
           "--jobs", "1", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    runs = tmp_path / "out" / "_runs"
    return {d.name: len((d / "cells.jsonl").read_text().splitlines())
            for d in sorted(runs.iterdir())}


def test_same_command_resumes_and_another_seed_starts_a_fresh_run_directory(tmp_path):
    first = _report(tmp_path, "--seed", "0")
    assert list(first.values()) == [1]
    again = _report(tmp_path, "--seed", "0")  # resumes: one more cell in the same directory
    assert again == {k: 2 for k in first}
    other = _report(tmp_path, "--seed", "1")  # never the seed-0 cells
    assert len(other) == 2
    new = next(k for k in other if k not in first)
    assert other[new] == 1


def _computing_modules() -> list[str]:
    """The project files loaded while computing one exact and one Monte Carlo cell of each
    estimator kind (in a fresh interpreter, so nothing else was imported first)."""
    code = textwrap.dedent("""
        import os, sys
        from offpolicy.report import grid, compute
        seen = set()
        for c in grid.cells(grid.PROFILES["quick"], ["sb_loop"], None):
            key = (c["estimator"], c["mc"])
            if key not in seen:
                seen.add(key)
                compute.compute_cell(c, 0, 50)
        root = sys.argv[1]
        for m in list(sys.modules.values()):
            f = getattr(m, "__file__", None)
            if f and os.path.abspath(f).startswith(root + os.sep):
                print(os.path.relpath(os.path.abspath(f), root))
    """)
    r = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    return sorted(set(r.stdout.split()))


# loaded while computing but not computing figures: package re-exports, argument parsing, the
# optional-dependency check, the worker pool and its thread settings, the report's command line
NOT_COMPUTING = {"estimators/__init__.py", "offpolicy/__init__.py", "offpolicy/_cli.py",
                 "offpolicy/parallel.py", "offpolicy/report/__init__.py",
                 "offpolicy/report/_blas.py", "offpolicy/report/cli.py",
                 "offpolicy/_extras.py"}  # names the install extra of a missing import


def test_a_change_to_any_module_computing_figures_changes_the_code_fingerprint(tmp_path):
    """Each module the computation loads (except NOT_COMPUTING) is edited by one appended
    comment in a copy of the tree: the run directory's code fingerprint must change."""
    modules = [m for m in _computing_modules() if m not in NOT_COMPUTING]
    assert "estimators/numpy.py" in modules and "offpolicy/moments.py" in modules
    for pkg in ("offpolicy", "estimators"):
        shutil.copytree(os.path.join(ROOT, pkg), tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    code = textwrap.dedent("""
        import sys
        from offpolicy.report.run import code_fingerprint
        unchanged = code_fingerprint()
        for rel in sys.argv[1:]:
            with open(rel, "a") as f:
                f.write("# edited\\n")
            changed = code_fingerprint()
            with open(rel) as f:
                text = f.read()
            with open(rel, "w") as f:
                f.write(text[:-len("# edited\\n")])
            assert code_fingerprint() == unchanged
            print(rel, changed != unchanged)
    """)
    r = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    missed = [line.split()[0] for line in r.stdout.splitlines() if line.endswith("False")]
    assert len(r.stdout.splitlines()) == len(modules)
    assert missed == [], f"not in the code fingerprint: {missed}"
