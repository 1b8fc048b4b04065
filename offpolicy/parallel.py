"""Independent tasks on a pool of workers; results come back to the driver, which alone writes.

Executors (``--executor`` of ``python -m offpolicy.report`` and ``python -m offpolicy.harness``):

    serial   every task in this process;
    process  a local process pool of ``jobs`` workers;
    ray      Ray tasks, on a local Ray instance started here with ``jobs`` CPUs, or on an existing
             cluster (``address``: ``auto`` for the one running on this machine, or
             ``HOST:PORT``). A task's result travels back as its return value through Ray's
             object store, never through a file on the worker's disk, so it does not matter
             which node ran it.

Results are yielded to the driver as tasks finish; the driver stores them (resume state) and
writes every output file. The same tasks give the same results on every executor.

Workers die with their driver. A process-pool worker asks the kernel to SIGKILL it when its
parent exits (Linux ``prctl(PR_SET_PDEATHSIG)``) and, on every platform, a daemon thread polls
that its parent and the driver are still there. Ctrl-C or SIGTERM in the driver kills the
workers at once (they ignore SIGINT; the driver decides). Ray tasks belong to the driver's
job: Ray kills their workers when the driver disconnects or dies, and a local instance started
here is shut down with the driver (Ray's own reaper process handles ``kill -9``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

EXECUTORS = ("process", "serial", "ray")
RAY_HINT = "pip install 'offpolicy[ray]'"
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.5


class WorkerCodeMismatch(RuntimeError):
    """A worker computed with code other than the driver's (a cluster node with another
    version installed)."""


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def check_executor(executor: str, address: str | None) -> str | None:
    """The problem with an executor/address choice, as one line naming the option, or None."""
    if executor not in EXECUTORS:
        return f"--executor: unknown {executor!r}; choose from {', '.join(EXECUTORS)}"
    if address is not None and executor != "ray":
        return "--address: only with --executor ray"
    if address is not None and not address.strip():
        return "--address: empty (use auto or HOST:PORT)"
    if executor == "ray" and not ray_available():
        return f"--executor ray: Ray is not installed ({RAY_HINT})"
    if executor == "ray" and address is not None:
        problem = _unreachable(address)
        if problem:  # ray.init would wait for minutes on an address where nothing listens
            return f"--address {address}: {problem}"
    return None


# ---- parent-death watch (process-pool workers) ---------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(driver_pid: int | None = None) -> None:
    """Make this process die when its parent (or the driver ``driver_pid``) goes away."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the polling thread below still covers it

    def orphaned() -> bool:
        return os.getppid() != parent or (driver_pid is not None and not _alive(driver_pid))

    if orphaned():  # the parent died before the kernel was told to watch it
        os._exit(1)

    def watch():
        while True:
            time.sleep(_POLL_S)
            if orphaned():
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="offpolicy-parent-watch", daemon=True).start()


def _process_worker_start(driver_pid: int, init: Callable[[], None] | None) -> None:
    die_with_parent(driver_pid)
    # Ctrl-C reaches the whole process group: the driver handles it and kills the workers;
    # a handler inherited through fork (the report turns SIGTERM into KeyboardInterrupt) must
    # not keep a worker alive either.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the driver while this process started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if init is not None:
        init()


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT in this thread while worker processes start. Ctrl-C reaches the whole
    process group; a worker still starting up would die of it with a traceback before its
    initializer ignores it. A blocked signal stays blocked through fork and exec (the worker
    unblocks it once it ignores it), and here it is only delayed, never lost: it arrives when
    the block ends (or at once through another thread of the driver)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ---- Ray task wrapper ------------------------------------------------------------------------

_RAY_INITIALISED = False


def _ray_call(fn, task, init, fingerprint):
    """Runs on a Ray worker: the worker's code fingerprint and ``fn(task)``."""
    global _RAY_INITIALISED
    if init is not None and not _RAY_INITIALISED:
        init()
        _RAY_INITIALISED = True
    return (fingerprint() if fingerprint is not None else None), fn(task)


def _unreachable(address: str, timeout_s: float = 10.0) -> str | None:
    """Why nothing can be reached at ``HOST:PORT`` (or ``ray://HOST:PORT``), or None; other
    forms (``auto``) are left to Ray, which fails fast on them."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                      timeout=timeout_s):
            return None
    except OSError as e:
        return f"nothing answers there ({e.strerror or type(e).__name__})"


class Pool:
    """``with Pool(executor, jobs) as pool: for i, result in pool.imap_unordered(fn, tasks)``.

    ``fn`` and ``init`` must be importable module-level functions. ``fingerprint`` (Ray only):
    a function returning the version of the code a result depends on; a worker whose
    fingerprint differs from the driver's raises :class:`WorkerCodeMismatch`.
    Leaving the block with an exception (Ctrl-C included) kills the workers at once.
    """

    def __init__(self, executor: str = "process", jobs: int = 1, *, address: str | None = None,
                 init: Callable[[], None] | None = None, mp_context=None,
                 fingerprint: Callable[[], str] | None = None):
        problem = check_executor(executor, None)  # the address is tried when Ray starts
        if problem:
            raise ValueError(problem)
        if address is not None and executor != "ray":
            raise ValueError("address: only with the ray executor")
        if jobs < 1:
            raise ValueError(f"jobs: must be >= 1, got {jobs}")
        self.executor, self.jobs, self.address = executor, jobs, address
        self.init, self.mp_context, self.fingerprint = init, mp_context, fingerprint
        self._pool = None
        self._ray_started = False
        self._ray_pending: list = []

    # -- lifetime

    def __enter__(self) -> Pool:
        if self.executor == "process":
            with _sigint_blocked():  # a spawn context starts its resource tracker here
                self._pool = ProcessPoolExecutor(
                    max_workers=self.jobs, mp_context=self.mp_context,
                    initializer=_process_worker_start, initargs=(os.getpid(), self.init))
        elif self.executor == "ray":
            self._ray_start()
        elif self.init is not None:
            self.init()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.executor == "process" and self._pool is not None:
            manager = getattr(self._pool, "_executor_manager_thread", None)
            if exc_type is not None:
                self._kill_process_workers()
            self._pool.shutdown(wait=exc_type is None, cancel_futures=True)
            if manager is not None and exc_type is not None:
                # The pool's manager thread closes its wake-up pipe once it sees the killed
                # workers; the interpreter's exit hook writes to that pipe without a lock, so
                # an exit while it closes printed "Exception ignored ... OSError: Bad file
                # descriptor" (issue 21). Let it finish first.
                manager.join(timeout=10)
            self._pool = None
        elif self.executor == "ray":
            self._ray_stop(abort=exc_type is not None)

    @property
    def workers(self) -> int:
        """How many tasks run at once (for a Ray cluster: its CPUs)."""
        if self.executor == "ray":
            import ray

            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        return 1 if self.executor == "serial" else self.jobs

    # -- running

    def imap_unordered(self, fn: Callable, tasks: Iterable) -> Iterator[tuple[int, object]]:
        """``(index, fn(tasks[index]))`` for every task, in the order they finish."""
        tasks = list(tasks)
        if self.executor == "serial":
            for i, t in enumerate(tasks):
                yield i, fn(t)
        elif self.executor == "process":
            with _sigint_blocked():  # the workers start here: see _sigint_blocked
                futures = {self._pool.submit(fn, t): i for i, t in enumerate(tasks)}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    yield futures.pop(f), f.result()
        else:
            yield from self._ray_map(fn, tasks)

    def _kill_process_workers(self) -> None:
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        for p in procs:
            try:
                p.kill()
            except (OSError, ValueError, AttributeError):
                pass
        for p in procs:
            try:
                p.join(timeout=5)
            except (OSError, ValueError, AssertionError):
                pass

    # -- Ray

    def _ray_start(self) -> None:
        import logging

        import ray

        if ray.is_initialized():  # the caller connected already: use that cluster as is
            return
        quiet = dict(logging_level=logging.WARNING, log_to_driver=True)
        problem = self.address is not None and _unreachable(self.address)
        if problem:  # ray.init would wait for minutes on an address where nothing listens
            raise ConnectionError(f"--address {self.address}: {problem}")
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            if self.address is None:
                # "local": a new instance even where RAY_ADDRESS names another cluster
                ray.init(address="local", num_cpus=self.jobs, include_dashboard=False, **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
            where = f"--address {self.address}" if self.address else "--executor ray"
            raise ConnectionError(f"{where}: cannot start or reach Ray: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                  ) from e
        self._ray_started = True
        if main and sigterm is not None:
            # Ray's core worker replaces the driver's SIGTERM handler with one that dumps a
            # C++ stack and aborts; keep ours (the command lines stop cleanly on SIGTERM)
            signal.signal(signal.SIGTERM, sigterm)

    def _ray_map(self, fn, tasks):
        import ray

        remote = ray.remote(num_cpus=1)(_ray_call)
        expected = self.fingerprint() if self.fingerprint is not None else None
        index = {remote.remote(fn, t, self.init, self.fingerprint): i
                 for i, t in enumerate(tasks)}
        self._ray_pending = list(index)
        while self._ray_pending:
            done, self._ray_pending = ray.wait(self._ray_pending, num_returns=1)
            for ref in done:
                got, result = ray.get(ref)
                if got != expected:
                    raise WorkerCodeMismatch(
                        f"a Ray worker runs other code (fingerprint {got}, driver {expected}): "
                        "install the same offpolicy version on every node")
                yield index.pop(ref), result  # dropping the ref frees the object store copy

    def _ray_stop(self, abort: bool) -> None:
        import ray

        # No ray.cancel on abort: cancelling tasks whose replies are in flight trips a check in
        # Ray's task manager ("Tried to complete task that was not pending") that aborts the
        # driver (seen in 1 of 5 SIGTERM runs with Ray 2.60). Disconnecting ends the job, and
        # the raylets kill the job's workers with it (tests/test_ray.py checks they are gone).
        self._ray_pending = []
        if self._ray_started:
            ray.shutdown()
            self._ray_started = False
