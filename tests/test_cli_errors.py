"""Bad input to the command lines (issue 15 section 3): exit code 2, one line on stderr naming
the argument, no traceback, nothing computed first and nothing written into the checkout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from offpolicy import bench, parallel
from offpolicy.harness import __main__ as harness_cli
from offpolicy.harness import grid as harness_grid
from offpolicy.report import cli as report_cli
from offpolicy.report import run as report_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = ["--algo", "ppo", "--env", "chain", "--no-progress"]


def call(main, argv, capsys):
    """(exit code, stdout, stderr) of ``main(argv)``, whether it returns or exits."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_usage_error(rc, err, *words):
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def no_computing(monkeypatch):
    """Any computation fails the test: arguments must be checked before it starts."""

    def refuse(*args, **kw):
        raise AssertionError("computation started despite bad arguments")

    monkeypatch.setattr(report_run, "run_cells", refuse)
    monkeypatch.setattr(harness_grid, "run_grid", refuse)
    monkeypatch.setattr(bench, "run", refuse)


def _unwritable(tmp_path, kind):
    """An --out that cannot be a directory of files: a file, a path below a file, or a
    read-only directory."""
    f = tmp_path / "a_file"
    f.write_text("not a directory")
    if kind == "file":
        return str(f)
    if kind == "below_file":
        return str(f / "sub")
    d = tmp_path / "read_only"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").write_text("")
    except OSError:
        return str(d)
    pytest.skip("this user writes through permission bits (root): no read-only directory")


# ---- harness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--estimator", "bogus"], ["--estimator", "bogus", "gae"]),
    (["--lag", "-1"], ["--lag", ">= 0", "-1"]),
    (["--lag", "two"], ["--lag", "'two'"]),
    (["--seeds", "0"], ["--seeds", ">= 1"]),
    (["--seed-offset", "-3"], ["--seed-offset"]),
    (["--jobs", "0"], ["--jobs"]),
    (["--set", "no_such_knob=1"], ["--set no_such_knob", "no config field"]),
    (["--set", "lag"], ["--set", "FIELD=V1"]),
    (["--set", "gamma=1.5"], ["--set gamma", "(0, 1]"]),
    (["--refresh", "sometimes"], ["--refresh", "sometimes"]),
    (["--lam", "2"], ["--lam", "[0, 1]"]),
    (["--env", "nowhere"], ["--env", "nowhere", "chain"]),
    (["--address", "auto"], ["--address", "--executor ray"]),
])
def test_harness_rejects_bad_arguments(argv, words, capsys, no_computing, tmp_path):
    rc, _, err = call(harness_cli.main, HARNESS + ["--out", str(tmp_path)] + argv, capsys)
    assert_usage_error(rc, err, *words)


def test_harness_rejects_bad_dqn_arguments(capsys, no_computing, tmp_path):
    base = ["--algo", "dqn", "--out", str(tmp_path), "--no-progress"]
    rc, _, err = call(harness_cli.main, base + ["--min-age", "10", "--max-age", "5"], capsys)
    assert_usage_error(rc, err, "--max-age", ">= 10")
    rc, _, err = call(harness_cli.main, base + ["--estimator", "gae"], capsys)  # a PPO one
    assert_usage_error(rc, err, "--estimator", "nstep")


def test_harness_without_algo_is_one_line(capsys):
    rc, _, err = call(harness_cli.main, [], capsys)
    assert_usage_error(rc, err, "--algo")


@pytest.mark.parametrize("kind", ["file", "below_file", "read_only"])
def test_harness_unwritable_out_fails_before_running(kind, tmp_path, capsys, no_computing):
    out = _unwritable(tmp_path, kind)
    rc, _, err = call(harness_cli.main, HARNESS + ["--out", out], capsys)
    assert_usage_error(rc, err, "--out", out)


def test_harness_default_output_is_outside_the_committed_tables(tmp_path, monkeypatch, capsys):
    assert not harness_cli.DEFAULT_OUT.startswith("reports")
    monkeypatch.chdir(tmp_path)
    rc, _, _ = call(harness_cli.main, HARNESS + ["--seeds", "1", "--total-steps", "256",
                                                 "--set", "num_envs=8", "--executor", "serial"],
                    capsys)
    assert rc == 0
    assert (tmp_path / harness_cli.DEFAULT_OUT / "ppo_chain_table.md").exists()
    assert not (tmp_path / "reports").exists()


# ---- report ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--limit", "-5"], ["--limit", ">= 1", "-5"]),
    (["--limit", "0"], ["--limit"]),
    (["--seed", "-1"], ["--seed", ">= 0"]),
    (["--jobs", "0"], ["--jobs"]),
    (["--executor", "threads"], ["--executor", "threads"]),
    (["--address", "auto"], ["--address", "--executor ray"]),
    (["--mdps", "garnet_huge"], ["--mdps", "garnet_huge"]),
    (["--profile", "huge"], ["--profile"]),
])
def test_report_rejects_bad_arguments(argv, words, capsys, no_computing, tmp_path):
    rc, _, err = call(report_cli.main, ["--out", str(tmp_path), "--no-progress"] + argv, capsys)
    assert_usage_error(rc, err, *words)


@pytest.mark.parametrize("kind", ["file", "below_file", "read_only"])
@pytest.mark.parametrize("flag", ["--out", "--update-baseline"])
def test_report_unwritable_out_fails_before_computing(flag, kind, tmp_path, capsys,
                                                      no_computing):
    out = _unwritable(tmp_path, kind)
    rc, _, err = call(report_cli.main, [flag, out, "--mdps", "chain", "--no-progress"], capsys)
    assert_usage_error(rc, err, flag, out)


# ---- bench -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--repeats", "0"], ["--repeats"]),
    (["--sizes", "8by4"], ["--sizes", "8by4"]),
    (["--sizes", "0x4"], ["--sizes", ">= 1"]),
    (["--estimators", "nope"], ["--estimators", "nope"]),
    (["--backends", "cuda"], ["--backends", "cuda"]),
])
def test_bench_rejects_bad_arguments(argv, words, capsys, no_computing, tmp_path):
    rc, _, err = call(bench.main, ["--quick", "--out", str(tmp_path)] + argv, capsys)
    assert_usage_error(rc, err, *words)


@pytest.mark.parametrize("kind", ["file", "below_file", "read_only"])
def test_bench_unwritable_out_fails_before_timing(kind, tmp_path, capsys, no_computing):
    out = _unwritable(tmp_path, kind)
    rc, _, err = call(bench.main, ["--quick", "--out", out], capsys)
    assert_usage_error(rc, err, "--out", out)


def test_bench_and_harness_defaults_are_git_ignored():
    assert not bench.DEFAULT_OUT.startswith("reports")
    ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
    for default in (bench.DEFAULT_OUT, harness_cli.DEFAULT_OUT):
        top = default.split(os.sep)[0]
        assert f"/{top}/" in ignored, default


# ---- the real command lines, end to end --------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["offpolicy.harness", "--algo", "ppo", "--estimator", "bogus"], ["--estimator", "bogus"]),
    (["offpolicy.report", "--limit", "-5"], ["--limit"]),
    (["offpolicy.bench", "--quick", "--out", "{file}"], ["--out"]),
])
def test_command_lines_exit_2_with_one_line(argv, words, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("")
    argv = [a.replace("{file}", str(f)) for a in argv]
    p = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert_usage_error(p.returncode, p.stderr, *words)
    assert not list(tmp_path.glob("offpolicy-out")) and not list(tmp_path.glob("reports"))


@pytest.mark.skipif(not parallel.ray_available(), reason="ray is not installed")
@pytest.mark.parametrize("main, argv", [
    (report_cli.main, ["--mdps", "chain", "--no-progress"]),
    (harness_cli.main, HARNESS),
])
def test_unreachable_ray_address_fails_fast_with_one_line(main, argv, tmp_path, capsys):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    address = f"127.0.0.1:{port}"
    start = time.monotonic()
    rc, _, err = call(main, argv + ["--executor", "ray", "--address", address,
                                    "--out", str(tmp_path)], capsys)
    assert_usage_error(rc, err, "--address", address, "nothing answers")
    assert time.monotonic() - start < 30  # ray.init alone would wait for minutes


# ---- usage errors come before the heavy imports (issue 21) -------------------------------------

HEAVY = ("torch", "gymnasium", "pandas", "matplotlib", "scipy")
# run the command line in a fresh interpreter; report its exit code, what it printed and which
# heavy packages it had imported when it exited
PROBE = """
import json, runpy, sys
sys.argv = ["offpolicy.harness", *json.loads(sys.argv[1])]
try:
    runpy.run_module("offpolicy.harness", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"rc": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize("argv, words", [
    ([], ["--algo"]),
    (["--algo", "sac"], ["--algo", "sac"]),
    (["--algo", "ppo", "--seeds", "0"], ["--seeds", ">= 1"]),
    (["--algo", "ppo", "--jobs", "0"], ["--jobs"]),
    (["--algo", "ppo", "--executor", "threads"], ["--executor", "threads"]),
    (["--algo", "ppo", "--address", "auto"], ["--address", "--executor ray"]),
    (["--algo", "ppo", "--set", "lag"], ["--set", "FIELD=V1"]),
    (["--algo", "ppo", "--no-such-flag"], ["--no-such-flag"]),
])
def test_harness_usage_errors_exit_before_importing_torch(argv, words, tmp_path):
    import json

    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    got = json.loads(p.stdout.splitlines()[-1])
    assert_usage_error(got["rc"], p.stderr, *words)
    assert got["heavy"] == [], f"imported before the usage error: {got['heavy']}"


def test_harness_algo_names_are_the_grids():
    assert sorted(harness_cli.ALGOS) == sorted(harness_grid.ALGOS)
