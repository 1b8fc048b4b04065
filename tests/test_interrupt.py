"""Interruption (issue 15 section 2): ``kill -9`` of a command line running ``--jobs 2`` leaves no
worker behind, and running the same command again resumes to byte-identical files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from offpolicy.harness import __main__ as harness_cli
from offpolicy.report import cli as report_cli

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"),
                                reason="finds the workers through /proc (Linux)")

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of every live process in session ``sid`` (the command line was
    started with ``start_new_session``, so its workers are in its session whatever their
    parent)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            state, session = fields[0], int(fields[3])
            if session != sid or state == "Z":  # a zombie has exited; it only awaits reaping
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return found


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_9_and_check_no_worker_left(proc, workers_at_least: int, ready, timeout=90):
    """Wait until ``proc`` runs with its workers and ``ready()``; kill -9 it; then every process
    of its session must be gone within a few seconds."""
    sid = proc.pid
    wait_for(lambda: ready() and len(session_processes(sid)) >= 1 + workers_at_least,
             timeout, f"{workers_at_least} workers and the first result")
    assert proc.poll() is None, "finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    try:
        wait_for(lambda: not session_processes(sid), 5, "the workers to die with their driver")
    except AssertionError:
        left = session_processes(sid)
        for pid in left:  # do not leave them running after the failure either
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        raise AssertionError(f"worker processes left after kill -9 of the driver: {left}") from None


def results(directory):
    """Names of the finished run files (not an atomic write's temporary)."""
    return sorted(p.name for p in directory.glob("*.json") if not p.name.startswith("."))


def same_files(a, b, names):
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


# ---- report ----------------------------------------------------------------------------------

REPORT = ["--mdps", "chain", "--seed", "5", "--quiet", "--no-progress"]
REPORT_FILES = ["results.csv", "results.json", "results.md", "mse_vs_staleness.png"]


def test_report_kill_9_leaves_no_worker_and_resumes_byte_identical(tmp_path, capsys):
    out = tmp_path / "killed"

    def first_cells():
        runs = out / "_runs"
        return any(f.stat().st_size > 0 for f in runs.glob("*/cells.jsonl"))

    proc = subprocess.Popen([sys.executable, "-m", "offpolicy.report", *REPORT, "--jobs", "2",
                             "--out", str(out)], start_new_session=True, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_9_and_check_no_worker_left(proc, 2, first_cells)
    assert not (out / "results.json").exists()
    (jsonl,) = (out / "_runs").glob("*/cells.jsonl")
    kept = len(jsonl.read_bytes().splitlines())
    assert kept > 0

    assert report_cli.main(REPORT + ["--jobs", "2", "--out", str(out)]) == 0  # the same command
    assert len(jsonl.read_bytes().splitlines()) == 150  # the kept cells were not recomputed
    reference = tmp_path / "reference"
    assert report_cli.main(REPORT + ["--out", str(reference)]) == 0  # uninterrupted, serial
    capsys.readouterr()
    same_files(out, reference, REPORT_FILES)


# ---- harness ---------------------------------------------------------------------------------

HARNESS = ["--algo", "ppo", "--env", "chain", "--lag", "0,1,2", "--estimator", "gae",
           "--seeds", "1", "--total-steps", "1024", "--set", "num_envs=8", "--no-timing",
           "--no-progress"]
HARNESS_FILES = ["ppo_chain_runs.csv", "ppo_chain_table.csv", "ppo_chain_table.md",
                 "ppo_chain_staleness.png", "ppo_chain_curves.png"]


def test_harness_kill_9_leaves_no_worker_and_resumes_byte_identical(tmp_path, capsys):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "offpolicy.harness", *HARNESS, "--jobs", "2",
                             "--out", str(out)], start_new_session=True, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_9_and_check_no_worker_left(proc, 2, lambda: bool(results(out / "runs")))
    done = results(out / "runs")
    assert 1 <= len(done) < 3

    # resume (here, in this process: the executor does not change the files, tests/test_ray.py)
    assert harness_cli.main(HARNESS + ["--executor", "serial", "--out", str(out)]) == 0
    reference = tmp_path / "reference"
    assert harness_cli.main(HARNESS + ["--executor", "serial", "--out", str(reference)]) == 0
    capsys.readouterr()
    same_files(out, reference, HARNESS_FILES)
    runs = results(reference / "runs")
    assert results(out / "runs") == runs
    same_files(out / "runs", reference / "runs", runs)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_harness_ctrl_c_or_kill_of_the_group_exits_130_without_traceback(sig, tmp_path):
    """Ctrl-C (SIGINT to the whole process group) while the workers are still starting, or
    `kill` of the group: exit 130 with one message, no traceback from any process, no worker
    left."""
    out = tmp_path / "h"
    # as from a terminal: a shell's background job (CI runners, nohup) would hand down SIGINT
    # ignored, and a command line rightly keeps ignoring it then
    proc = subprocess.Popen([sys.executable, "-m", "offpolicy.harness", *HARNESS, "--jobs", "2",
                             "--out", str(out)], start_new_session=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # driver, resource tracker and both workers, which then spend a second or more importing
    # torch: the signal lands while they start up
    wait_for(lambda: len(session_processes(proc.pid)) >= 4, 60, "the workers to start")
    time.sleep(0.3)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: finished runs are kept" in err
    wait_for(lambda: not session_processes(proc.pid), 5, "the workers to be gone")
