"""Ray for real (issue 15 section 1): a local two-node cluster (``ray.cluster_utils.Cluster``,
one CPU and its own temporary directory per node) runs the report and a harness grid; the files
are byte-identical to the process pool's, both nodes compute, no result is written on a node's
disk, and a report run killed with ``kill -9`` loses its Ray tasks and resumes byte-identically.

Skipped when Ray is not installed (``pip install 'offpolicy[ray]'``); CI installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from offpolicy import parallel
from offpolicy.harness import __main__ as harness_cli
from offpolicy.report import cli as report_cli

pytestmark = [
    pytest.mark.skipif(not parallel.ray_available(),
                       reason="ray is not installed (pip install 'offpolicy[ray]')"),
    pytest.mark.skipif(not os.path.isdir("/proc/self"),
                       reason="watches the Ray workers through /proc (Linux)"),
]

REPORT = ["--mdps", "chain", "--seed", "7", "--quiet", "--no-progress"]
REPORT_FILES = ["results.csv", "results.json", "results.md", "mse_vs_staleness.png",
                "mse_vs_lambda.png", "bias_variance.png"]
HARNESS = ["--algo", "ppo", "--env", "chain", "--lag", "0,2", "--estimator", "gae,vtrace",
           "--seeds", "1", "--total-steps", "1024", "--set", "num_envs=8", "--no-timing",
           "--no-progress"]
HARNESS_FILES = ["ppo_chain_runs.csv", "ppo_chain_table.csv", "ppo_chain_table.md",
                 "ppo_chain_staleness.png", "ppo_chain_curves.png"]
TASK_TITLE = "ray::_ray_call"  # the process title of a Ray worker running one of our tasks


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine, one CPU each, each with its own temporary directory."""
    from ray.cluster_utils import Cluster

    base = tempfile.mkdtemp(prefix="ofr", dir="/tmp")  # short: Ray's socket paths must fit
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = base  # Ray writes its "current cluster" file here, not /tmp/ray
    os.makedirs(os.path.join(base, "ray"))
    dirs = [os.path.join(base, "head"), os.path.join(base, "node2")]
    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 1, "temp_dir": dirs[0], "include_dashboard": False})
    c.add_node(num_cpus=1, temp_dir=dirs[1])
    c.wait_for_nodes()
    c.node_dirs = dirs
    c.raylets = {n.all_processes["raylet"][0].process.pid for n in c.list_all_nodes()}
    try:
        yield c
    finally:
        c.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(base, ignore_errors=True)


def ray_task_processes(raylets) -> dict[int, int]:
    """pid -> parent pid (its node's raylet) of every Ray worker of ``raylets`` (one cluster:
    other test runs on this machine have their own) running one of our tasks."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(TASK_TITLE.encode()):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            if parent in raylets:
                found[int(entry)] = parent
        except (OSError, ValueError, IndexError):
            continue
    return found


class NodeWatch:
    """Samples, while a run goes on, which raylets (nodes) have workers running our tasks."""

    def __init__(self, cluster):
        self.cluster = cluster

    def __enter__(self):
        self.raylets: set[int] = set()
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.raylets.update(ray_task_processes(self.cluster.raylets).values())
                time.sleep(0.01)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def same_files(a, b, names):
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name


def no_results_on_node_disks(cluster, names):
    for d in cluster.node_dirs:
        for _, _, files in os.walk(d):
            assert not set(files) & set(names), (d, set(files) & set(names))


@pytest.fixture(scope="module")
def report_reference(tmp_path_factory):
    """The report slice computed on the process pool (two workers)."""
    out = tmp_path_factory.mktemp("report_pool")
    assert report_cli.main(REPORT + ["--jobs", "2", "--out", str(out)]) == 0
    return out


def test_report_on_two_nodes_is_byte_identical_to_the_process_pool(
        cluster, report_reference, tmp_path, capsys):
    out = tmp_path / "ray"
    with NodeWatch(cluster) as watch:
        rc = report_cli.main(REPORT + ["--executor", "ray", "--address", cluster.address,
                                       "--out", str(out)])
    assert rc == 0
    assert watch.raylets == cluster.raylets  # both nodes computed cells
    same_files(out, report_reference, REPORT_FILES)
    no_results_on_node_disks(cluster, ["cells.jsonl", *REPORT_FILES])
    capsys.readouterr()


def test_harness_on_two_nodes_is_byte_identical_to_the_process_pool(cluster, tmp_path, capsys):
    pool, ray_out = tmp_path / "pool", tmp_path / "ray"
    assert harness_cli.main(HARNESS + ["--jobs", "2", "--out", str(pool)]) == 0
    with NodeWatch(cluster) as watch:
        rc = harness_cli.main(HARNESS + ["--executor", "ray", "--address", cluster.address,
                                         "--out", str(ray_out)])
    assert rc == 0
    assert watch.raylets == cluster.raylets
    same_files(ray_out, pool, HARNESS_FILES)
    runs = sorted(p.name for p in (pool / "runs").glob("*.json"))
    assert len(runs) == 4 and sorted(p.name for p in (ray_out / "runs").glob("*.json")) == runs
    same_files(ray_out / "runs", pool / "runs", runs)  # the resume state too
    no_results_on_node_disks(cluster, runs + HARNESS_FILES)
    capsys.readouterr()


def test_report_killed_on_ray_stops_its_tasks_and_resumes_byte_identical(
        cluster, report_reference, tmp_path, capsys):
    out = tmp_path / "killed"
    argv = REPORT + ["--executor", "ray", "--address", cluster.address, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "offpolicy.report", *argv],
                            env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running():
        cells = list(out.glob("_runs/*/cells.jsonl"))
        return (bool(cells) and cells[0].stat().st_size > 0
                and bool(ray_task_processes(cluster.raylets)))

    deadline = time.monotonic() + 120
    while not running():
        assert proc.poll() is None and time.monotonic() < deadline, "never got going"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not (out / "results.json").exists()
    # the rest of the grid is several seconds of work: Ray must drop it with the driver's job
    deadline = time.monotonic() + 3.0
    while ray_task_processes(cluster.raylets) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ray_task_processes(cluster.raylets), \
        "Ray tasks kept running after their driver was killed"

    assert report_cli.main(argv) == 0  # the same command resumes
    (jsonl,) = out.glob("_runs/*/cells.jsonl")
    assert len(jsonl.read_bytes().splitlines()) == 150  # nothing computed twice
    same_files(out, report_reference, REPORT_FILES)
    capsys.readouterr()


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of every live process in session ``sid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) != sid or fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_kill_9_takes_down_the_local_ray_instance_it_started(tmp_path):
    """Without --address the driver starts Ray itself; kill -9 of the driver must take the
    task workers, raylet and GCS with it. Ray's two agent processes are the exception: they
    notice their raylet is gone and exit on their own, but only after about a minute here."""
    out = tmp_path / "local"
    ray_tmp = tempfile.mkdtemp(prefix="ofl", dir="/tmp")
    proc = subprocess.Popen(
        [sys.executable, "-m", "offpolicy.report", *REPORT, "--executor", "ray", "--jobs", "2",
         "--out", str(out)], start_new_session=True,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1", RAY_TMPDIR=ray_tmp),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sid = proc.pid

    def running():
        cells = list(out.glob("_runs/*/cells.jsonl"))
        tasks = [c for c in session_processes(sid).values() if c.startswith(TASK_TITLE)]
        return bool(cells) and cells[0].stat().st_size > 0 and bool(tasks)

    try:
        deadline = time.monotonic() + 120
        while not running():
            assert proc.poll() is None and time.monotonic() < deadline, "never got going"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

        def left():
            return {p: c for p, c in session_processes(sid).items()
                    if not c.startswith(RAY_AGENTS)}

        deadline = time.monotonic() + 5.0
        while left() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left(), f"left running after kill -9 of the driver: {left()}"
    finally:
        for pid in session_processes(sid):  # the agents (or anything after a failure)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_worker_running_other_code_is_refused(cluster):
    # a fingerprint that differs between processes stands in for a node with other code
    # installed (a lambda: Ray ships it by value, so the worker calls this very function)
    with pytest.raises(parallel.WorkerCodeMismatch, match="same offpolicy version"):
        with parallel.Pool("ray", address=cluster.address,
                           fingerprint=lambda: str(os.getpid())) as pool:
            list(pool.imap_unordered(abs, [-1, -2]))
    with parallel.Pool("ray", address=cluster.address, fingerprint=lambda: "same") as pool:
        assert sorted(pool.imap_unordered(abs, [-1, -2])) == [(0, 1), (1, 2)]


def test_sigterm_stops_a_ray_driver_cleanly(cluster, tmp_path):
    """Ray's core worker swaps the driver's SIGTERM handler for a stack dump and abort; the
    command line keeps its own: exit 130 with its one message, and the tasks stop."""
    out = tmp_path / "term"
    proc = subprocess.Popen(
        [sys.executable, "-m", "offpolicy.report", *REPORT, "--executor", "ray", "--address",
         cluster.address, "--out", str(out)], env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ray_task_processes(cluster.raylets):
        assert proc.poll() is None and time.monotonic() < deadline, "never got going"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: finished cells are kept" in err
    assert "SIGTERM received" not in err and "Traceback" not in err
    deadline = time.monotonic() + 5.0
    while ray_task_processes(cluster.raylets) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ray_task_processes(cluster.raylets)
