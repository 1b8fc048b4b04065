"""Fuzzing every estimator on every backend and kernel form (issue 21): for inputs at the
edges (T = 0, B = 0, one-element axes, 1-D inputs, non-contiguous arrays, mixed and
non-float dtypes), each backend has the numpy reference's outcome: the same values (to the
precision of the inputs), or an error of the same kind (ValueError, TypeError), and never a
dead process.

The numpy reference is also run on contiguous float64 copies (the layout must not change its
values); torch gets the same arrays as tensors (strides kept); the Taichi backend runs in a
worker process, in every kernel form the backend has (forced as tests/test_taichi_backend.py
does), so that a crash in a kernel (SIGFPE) fails the test instead of killing the suite."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from estimators import numpy as ref
from offpolicy import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = tuple(registry.ESTIMATORS)
FLAG_INPUTS = ("terminated", "truncated")
# (form, threads) as tests/test_taichi_backend.py: None picks by size (the lean path for numpy
# inputs); the CPU forms both on the calling thread and on Taichi's thread pool
TAICHI_VARIANTS = ((None, None), ("vec4", "serial"), ("vec4", "parallel"), ("rows", "serial"),
                   ("rows", "parallel"), ("naive", None), ("chunked", None))


# ---- cases -----------------------------------------------------------------------------------


def _values(name, shape, rng):
    if name == "log_rhos":
        return rng.normal(0.0, 1.0, shape)
    if name in ("target_probs_taken",):
        return rng.uniform(0.0, 1.0, shape)
    if name == "traces":
        return rng.uniform(0.0, 2.0, shape)
    if name == "reward_std":
        return rng.uniform(0.5, 2.0, shape)
    return rng.normal(0.0, 1.0, shape)


def _layout(a, how):
    """``a`` as a C-contiguous, a strided (every other element of a larger array) or a
    Fortran-ordered array; the same values."""
    if how == "strided":
        big = np.empty((2 * a.shape[0],) + a.shape[1:], a.dtype) if a.ndim else a
        big[::2] = a
        return big[::2]
    if how == "fortran":
        return np.asfortranarray(a)
    return np.ascontiguousarray(a)


@st.composite
def cases(draw):
    name = draw(st.sampled_from(NAMES))
    info = registry.ESTIMATORS[name]
    T = draw(st.sampled_from([0, 1, 2, 5]))
    B = draw(st.sampled_from([None, 0, 1, 3]))  # None: [T] inputs
    shape = (T,) if B is None else (T, B)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    # one dtype for every float input, or each its own (mixed)
    common = draw(st.sampled_from(["float64", "float32", None]))
    arrays = {}
    for inp in info.inputs:
        if inp in FLAG_INPUTS:
            p = draw(st.sampled_from([0.0, 0.3, 1.0]))
            flags = rng.random(shape) < p
            dtype = draw(st.sampled_from(["bool", "bool", "bool", "int64", "float64"]))
            a = flags.astype(dtype)
        else:
            dtype = common or draw(st.sampled_from(["float64", "float32", "float16", "int64"]))
            a = _values(inp, shape, rng)
            a = (np.round(a * 2) if dtype == "int64" else a).astype(dtype)
        arrays[inp] = _layout(a, draw(st.sampled_from(["c", "c", "strided", "fortran"])))
    kwargs = {}
    for p in info.params:
        if p == "gamma":
            kwargs[p] = draw(st.sampled_from([0.0, 0.5, 0.99, 1.0]))
        elif p == "lam":
            kwargs[p] = draw(st.sampled_from([0.0, 0.7, 1.0]))
        elif p in ("rho_clip", "c_clip", "pg_rho_clip"):
            kwargs[p] = draw(st.sampled_from([0.5, 1.0, float("inf")]))
        elif p == "n":
            kwargs[p] = draw(st.sampled_from([1, 2, 7]))
        elif p == "batch_reward_std":
            kwargs[p] = draw(st.sampled_from([0.5, 1.0, float("inf")]))
        elif p == "normalize":
            kwargs[p] = draw(st.sampled_from(["max", "sum", "none"]))
    return name, arrays, kwargs


def case_of(name, shape, dtype="float64", **kwargs):
    """A fixed case: every input of ``name`` zeros of ``shape`` (flags False)."""
    info = registry.ESTIMATORS[name]
    arrays = {inp: np.zeros(shape, bool if inp in FLAG_INPUTS else dtype) for inp in info.inputs}
    given_kw = dict(gamma=0.9, lam=0.9, rho_clip=1.0, c_clip=1.0, pg_rho_clip=1.0, n=2,
                    batch_reward_std=1.0, normalize="max")
    given_kw.update(kwargs)
    return name, arrays, {p: given_kw[p] for p in info.params}


# ---- outcomes --------------------------------------------------------------------------------


def outcome(fn, arrays, kwargs):
    """("ok", [float64 arrays]) or ("error", kind): ValueError, TypeError or another class's
    name."""
    try:
        out = fn(*arrays.values(), **kwargs)
    except (ValueError, TypeError) as e:
        return ("error", "ValueError" if isinstance(e, ValueError) else "TypeError", str(e))
    except Exception as e:  # noqa: BLE001 (any other class is reported by name)
        return ("error", type(e).__name__, str(e))
    outs = out if isinstance(out, tuple) else (out,)
    return ("ok", [np.array(_numpy(o), dtype=np.float64) for o in outs])


def _numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x)


def _tolerance(arrays):
    kinds = {a.dtype for a in arrays.values() if a.dtype != bool}
    if np.dtype("float16") in kinds:
        return 2e-2
    return 1e-4 if np.dtype("float32") in kinds else 1e-9


def assert_same_outcome(got, want, arrays, what):
    if want[0] == "error":
        assert got[0] == "error", f"{what}: the reference raised {want[1]} ({want[2]}), " \
            f"this returned values"
        assert got[1] == want[1], f"{what}: raised {got[1]} ({got[2]}); the reference " \
            f"raised {want[1]} ({want[2]})"
        return
    assert got[0] == "ok", f"{what}: raised {got[1]} ({got[2]}); the reference returned values"
    assert len(got[1]) == len(want[1]), what
    tol = _tolerance(arrays)
    for g, w in zip(got[1], want[1], strict=True):
        assert g.shape == w.shape, f"{what}: shape {g.shape}, reference {w.shape}"
        finite = np.isfinite(w)
        assert np.array_equal(np.isfinite(g), finite), f"{what}: non-finite cells differ"
        if w.size:
            scale = 1.0 + np.max(np.abs(w[finite]), initial=0.0)
            err = np.max(np.abs(g[finite] - w[finite]), initial=0.0)
            assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


# ---- the Taichi worker -----------------------------------------------------------------------

WORKER = r"""
import os, pickle, struct, sys
# the answers go through a copy of stdout; what Taichi prints goes to stderr
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
sys.path.insert(0, sys.argv[1])
from tests.test_fuzz_estimators import TAICHI_VARIANTS, outcome
from estimators import taichi as X

inp = sys.stdin.buffer
while True:
    head = inp.read(8)
    if len(head) < 8:
        break
    name, arrays, kwargs = pickle.loads(inp.read(struct.unpack("<Q", head)[0]))
    results = []
    for form, threads in TAICHI_VARIANTS:
        # says which variant runs, in case it dies there
        sys.stderr.write(f"variant {form} {threads}\n")
        sys.stderr.flush()
        with X._form(form), X._threads(threads):
            results.append(outcome(getattr(X, name), arrays, kwargs))
    blob = pickle.dumps(results)
    out.write(struct.pack("<Q", len(blob)) + blob)
    out.flush()
"""


class TaichiWorker:
    """A process that runs cases on the Taichi backend; a case that kills it is reported with
    its signal and the kernel form it was in, and the next case starts a new process."""

    def __init__(self):
        self.proc = None

    def _start(self):
        self.err = tempfile.TemporaryFile()  # a file: a pipe nobody reads would fill up
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, ROOT], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err)

    def run(self, case):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        blob = pickle.dumps(case)
        try:
            self.proc.stdin.write(struct.pack("<Q", len(blob)) + blob)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(8)
        except BrokenPipeError:
            head = b""
        if len(head) < 8:  # it died
            self.proc.stdin.close()
            rc = self.proc.wait(timeout=60)
            self.err.seek(0)
            err = self.err.read().decode(errors="replace").splitlines()
            self.err.close()
            self.proc = None
            where = next((x for x in reversed(err) if x.startswith("variant ")), "starting")
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            return f"the Taichi worker died ({how}) in {where}: {err[-3:]}"
        return pickle.loads(self.proc.stdout.read(struct.unpack("<Q", head)[0]))

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.err.close()
        self.proc = None


@pytest.fixture(scope="module")
def taichi_worker():
    pytest.importorskip("taichi")
    worker = TaichiWorker()
    yield worker
    worker.close()


FUZZ = settings(max_examples=settings.default.max_examples, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
# the edges written out: the repro (B = 0, which killed the Taichi backend by SIGFPE),
# T = 0, one-element axes
EDGES = [case_of("gae", (5, 0)), case_of("vtrace", (5, 0)), case_of("retrace", (5, 0)),
         case_of("p3o_advantage", (5, 0)), case_of("nstep_returns", (0, 3)),
         case_of("tree_backup", (0,)), case_of("q_lambda", (1, 1)),
         case_of("per_decision_is", (1,), "float32")]


def _with_edges(test):
    for case in EDGES:
        test = example(case=case)(test)
    return test


# ---- the tests -------------------------------------------------------------------------------


@FUZZ
@_with_edges
@given(case=cases())
def test_numpy_reference_does_not_depend_on_layout(case):
    name, arrays, kwargs = case
    want = outcome(getattr(ref, name), {k: np.ascontiguousarray(a) for k, a in arrays.items()},
                   kwargs)
    got = outcome(getattr(ref, name), arrays, kwargs)
    assert_same_outcome(got, want, arrays, f"numpy {name}")


@FUZZ
@_with_edges
@given(case=cases())
def test_torch_backend_has_the_references_outcome(case):
    torch = pytest.importorskip("torch")
    from estimators import torch as backend

    name, arrays, kwargs = case
    want = outcome(getattr(ref, name), arrays, kwargs)
    tensors = {k: torch.from_numpy(a) for k, a in arrays.items()}
    got = outcome(getattr(backend, name), tensors, kwargs)
    assert_same_outcome(got, want, arrays, f"torch {name}")


@FUZZ
@_with_edges
@given(case=cases())
def test_taichi_backend_in_every_form_has_the_references_outcome(case, taichi_worker):
    name, arrays, kwargs = case
    want = outcome(getattr(ref, name), arrays, kwargs)
    got = taichi_worker.run(case)
    assert not isinstance(got, str), f"taichi {name} {[a.shape for a in arrays.values()]}: {got}"
    for (form, threads), result in zip(TAICHI_VARIANTS, got, strict=True):
        assert_same_outcome(result, want, arrays, f"taichi {name} [{form} {threads}]")
