"""The mutation-score driver .ci/mutation_score: its statistics, its sample, its groups and
the CI gate (--recheck), with mutmut and git replaced where a test must not run them."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "mutation_score"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="needs the source tree's .ci/")


@pytest.fixture()
def ms():
    loader = importlib.machinery.SourceFileLoader("mutation_score_under_test", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_wilson_interval_matches_the_closed_form_at_hand_checked_points(ms):
    assert ms.wilson(0, 0) == (0.0, 1.0)
    # k = n: lower end n / (n + z^2) = 30 / 33.8415 = 0.88648, upper end 1
    lo, hi = ms.wilson(30, 30)
    assert lo == pytest.approx(0.88648, abs=1e-4) and hi == 1.0
    # k = n/2 is symmetric about 1/2: half-width z sqrt(1/(4n) + z^2/(4n^2)) / (1 + z^2/n)
    # = 1.96 * 0.096954 / 1.12805 = 0.16846 at n = 30
    lo, hi = ms.wilson(15, 30)
    assert lo == pytest.approx(0.33154, abs=1e-4) and hi == pytest.approx(0.66846, abs=1e-4)
    # k = 0: lower end 0, upper end z^2 / (n + z^2) = 3.8415 / 33.8415 = 0.11352
    assert ms.wilson(0, 30) == pytest.approx((0.0, 0.11352), abs=1e-4)


def test_the_sample_depends_only_on_seed_group_and_names(ms):
    pool = {"m/a.py": [f"a_{i}" for i in range(20)], "m/b.py": [f"b_{i}" for i in range(15)]}
    shuffled = {"m/b.py": list(reversed(pool["m/b.py"])), "m/a.py": pool["m/a.py"][::-1]}
    first = ms.draw(pool, 10, 21, "core")
    assert first == ms.draw(shuffled, 10, 21, "core")  # input order does not matter
    assert len(first) == len(set(first)) == 10 and first == sorted(first)
    assert set(first) <= set(pool["m/a.py"]) | set(pool["m/b.py"])
    assert ms.draw(pool, 10, 22, "core") != first  # another seed, another draw
    assert ms.draw(pool, 10, 21, "report") != first  # another group, another draw
    assert len(ms.draw(pool, 100, 21, "core")) == 35  # never more than the pool


@pytest.mark.parametrize("path, group", [
    ("offpolicy/report/gradients.py", "gradients"),  # before report's offpolicy/report/*.py
    ("offpolicy/report/cli.py", "report"),
    ("offpolicy/conform/runner.py", "conform"),
    ("offpolicy/conform/peers/rlax.py", None),  # excluded: third-party adapters
    ("estimators/taichi/_lean.py", None),  # excluded: Taichi compiles its own source
    ("offpolicy/bench.py", None),
    ("offpolicy/registry.py", "core"),
    ("estimators/losses/torch.py", "gradients"),
    ("README.md", None),
])
def test_group_of(ms, path, group):
    assert ms.group_of(path) == group


def _record(path, group, commit, mutants):
    path.parent.mkdir(parents=True, exist_ok=True)
    mods = {v["module"] for v in mutants.values()}
    path.write_text(json.dumps({
        "groups": {group: {"commit": commit}},
        "modules": {m: {"group": group} for m in mods},
        "mutants": mutants}))


def _head(n=0):
    return subprocess.run(["git", "rev-parse", "--short", f"HEAD~{n}"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_records_keep_the_newest_record_per_group_and_its_killed_mutants(ms, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(ms, "REPORT", str(tmp_path))
    try:
        old, new = _head(1), _head(0)
    except subprocess.CalledProcessError:
        pytest.skip("needs a git history of two commits")
    m = "offpolicy/registry.py"
    _record(tmp_path / "sampled.json", "core", old,
            {"x_a__mutmut_1": {"module": m, "status": "killed"}})
    _record(tmp_path / "runs" / "core_s21.json", "core", new + "+dirty", {
        "x_b__mutmut_1": {"module": m, "status": "killed"},
        "x_b__mutmut_2": {"module": m, "status": "timeout"},
        "x_b__mutmut_3": {"module": m, "status": "survived"},
        "x_b__mutmut_4": {"module": m, "status": "no tests"}})
    _record(tmp_path / "runs" / "report_s21.json", "report", "0" * 40, {})  # unknown commit
    recs = ms.records()
    assert set(recs) == {"core"}
    assert recs["core"]["commit"] == new and recs["core"]["age"] == 0
    assert recs["core"]["killed"] == ["x_b__mutmut_1", "x_b__mutmut_2"]


def _gate(ms, monkeypatch, tmp_path, *, changed, statuses, budget=900.0, budget_ok=False,
          write=False):
    """--recheck with the record, git's diff and mutmut replaced: ``statuses`` is what the
    rerun finds for each recorded-killed mutant (absent: no longer generated)."""
    monkeypatch.setattr(ms, "records", lambda: {"core": {
        "file": "runs/core_s21.json", "commit": "abc", "age": 0,
        "killed": ["x_a__mutmut_1", "x_a__mutmut_2"]}})
    monkeypatch.setattr(ms, "touched", lambda g, c: changed)
    calls = []

    def fake_run_group(name, modules, jobs, log, sample=None, names=None):
        calls.append((name, list(names)))
        return {"offpolicy/registry.py": {"generated": 9, "sampled": dict(statuses)}}

    monkeypatch.setattr(ms, "run_group", fake_run_group)
    args = ["--recheck", "--group", "core", "--log", str(tmp_path / "log"),
            "--budget", str(budget)] + (["--budget-ok"] if budget_ok else []) + (
                ["--write"] if write else [])
    return ms.main(args), calls


def test_recheck_passes_when_every_recorded_kill_is_still_killed(ms, monkeypatch, tmp_path,
                                                                 capsys):
    rc, calls = _gate(ms, monkeypatch, tmp_path, changed=["offpolicy/registry.py"],
                      statuses={"x_a__mutmut_1": "killed", "x_a__mutmut_2": "timeout"})
    assert rc == 0
    assert calls == [("core", ["x_a__mutmut_1", "x_a__mutmut_2"])]  # exactly the record's
    assert "2/2 still killed" in capsys.readouterr().out


def test_recheck_fails_naming_a_recorded_kill_that_now_survives(ms, monkeypatch, tmp_path,
                                                                capsys):
    rc, _ = _gate(ms, monkeypatch, tmp_path, changed=["tests/test_registry.py"],
                  statuses={"x_a__mutmut_1": "killed", "x_a__mutmut_2": "survived"})
    out = capsys.readouterr().out
    assert rc == 1
    assert "NOT KILLED now: x_a__mutmut_2 (survived)" in out and "FAILED" in out


def test_recheck_names_a_recorded_mutant_that_is_no_longer_generated(ms, monkeypatch,
                                                                     tmp_path, capsys):
    rc, _ = _gate(ms, monkeypatch, tmp_path, changed=["offpolicy/registry.py"],
                  statuses={"x_a__mutmut_1": "killed"})
    assert rc == 0
    assert "1 recorded mutant(s) no longer generated" in capsys.readouterr().out


def test_recheck_skips_an_unchanged_group_without_running_mutmut(ms, monkeypatch, tmp_path,
                                                                 capsys):
    rc, calls = _gate(ms, monkeypatch, tmp_path, changed=[], statuses={})
    assert rc == 0 and calls == []
    assert "core: unchanged since abc" in capsys.readouterr().out


def test_recheck_fails_on_a_group_left_over_by_the_budget_unless_allowed(ms, monkeypatch,
                                                                        tmp_path, capsys):
    rc, calls = _gate(ms, monkeypatch, tmp_path, changed=["offpolicy/registry.py"],
                      statuses={}, budget=-1.0)
    assert rc == 1 and calls == []
    assert "core: NOT rechecked" in capsys.readouterr().out
    rc, _ = _gate(ms, monkeypatch, tmp_path, changed=["offpolicy/registry.py"],
                  statuses={}, budget=-1.0, budget_ok=True)
    assert rc == 0


@pytest.mark.parametrize("argv, word", [(["--jobs", "0"], "--jobs"),
                                        (["--sample", "0"], "--sample"),
                                        (["--group", "nope"], "--group"),
                                        (["--modules", "README.md"], "--modules")])
def test_usage_errors_exit_2_naming_the_argument(ms, argv, word, capsys):
    with pytest.raises(SystemExit) as e:
        ms.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]


def test_recheck_write_records_the_rechecked_kills_for_the_next_gate(ms, monkeypatch, tmp_path):
    monkeypatch.setattr(ms, "REPORT", str(tmp_path / "report"))
    rc, _ = _gate(ms, monkeypatch, tmp_path, changed=["offpolicy/registry.py"],
                  statuses={"x_a__mutmut_1": "killed", "x_a__mutmut_2": "timeout"}, write=True)
    assert rc == 0
    rec = json.loads((tmp_path / "report" / "runs" / "core_recheck.json").read_text())
    assert rec["groups"]["core"]["rechecked_from"] == "runs/core_s21.json at abc"
    assert rec["modules"] == {"offpolicy/registry.py": {"group": "core"}}
    assert rec["mutants"] == {"x_a__mutmut_1": {"module": "offpolicy/registry.py",
                                                "status": "killed"},
                              "x_a__mutmut_2": {"module": "offpolicy/registry.py",
                                                "status": "timeout"}}
    # a record the gate reads back: the same kills, at this commit
    monkeypatch.undo()
    monkeypatch.setattr(ms, "REPORT", str(tmp_path / "report"))
    recs = ms.records()
    assert recs["core"]["killed"] == ["x_a__mutmut_1", "x_a__mutmut_2"]
    assert recs["core"]["age"] == 0


def test_recheck_write_records_nothing_when_a_kill_survives(ms, monkeypatch, tmp_path):
    monkeypatch.setattr(ms, "REPORT", str(tmp_path / "report"))
    rc, _ = _gate(ms, monkeypatch, tmp_path, changed=["offpolicy/registry.py"],
                  statuses={"x_a__mutmut_1": "survived", "x_a__mutmut_2": "killed"}, write=True)
    assert rc == 1
    assert not (tmp_path / "report" / "runs").exists()
