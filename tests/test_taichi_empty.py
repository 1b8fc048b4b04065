"""Empty batches (B = 0) and empty time axes (T = 0) in the Taichi backend (issue 21, item 1).

An empty batch ``[T, 0]`` is valid input: the numpy reference returns empty ``[T, 0]`` outputs.
The Taichi CPU forms once divided by the block size, which is B on the calling thread, and the
process died by SIGFPE (rc 136, no Python error). Every estimator, every kernel form (the GPU
forms forced on the CPU), serial and parallel, numpy and torch inputs, scalar and per-step
gamma/lam, and the autograd path must give what the reference gives: empty outputs of the
rewards' shape for B = 0, and the reference's ``ValueError`` for T = 0. The calls run in a
subprocess, so that a crash is a failed test and not a dead test runner.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("taichi")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r"""
import sys
import numpy as np
from estimators import numpy as ref, taichi as X

T, B = (int(x) for x in sys.argv[1:3])
shape = (T, B)
z = np.zeros(shape, np.float32)
f = np.zeros(shape, bool)
H = np.zeros(shape + (2,), np.float32)
calls = {
    "gae": ((z, z, z, f, f), dict(gamma=0.9, lam=0.9)),
    "vtrace": ((z, z, z, f, f, z), dict(gamma=0.9, lam=0.9)),
    "puff_advantage": ((z, z, z, f, f, z), dict(gamma=0.9, lam=0.9)),
    "per_decision_is": ((z, z, z, f, f, z), dict(gamma=0.9, lam=0.9)),
    "nstep_returns": ((z, z, f, f), dict(gamma=0.9, n=3)),
    "q_trace": ((z, z, z, f, f, z), dict(gamma=0.9, lam=0.9)),
    "retrace": ((z, z, z, f, f, z), dict(gamma=0.9, lam=0.9)),
    "tree_backup": ((z, z, z, f, f, z), dict(gamma=0.9, lam=0.9)),
    "q_lambda": ((z, z, z, f, f), dict(gamma=0.9, lam=0.9)),
    "importance_sampling_q": ((z, z, z, f, f, z), dict(gamma=0.9, lam=0.9)),
    "p3o_advantage": ((z, H, H + 1, f, f), dict(batch_reward_std=1.0)),
}
assert sorted(calls) == sorted(X.__all__[:11])


def outcome(fn, args, kw):
    try:
        out = fn(*args, **kw)
    except (ValueError, TypeError) as e:
        return ("error", type(e).__name__, str(e))
    outs = out if isinstance(out, tuple) else (out,)
    return ("ok", tuple(tuple(o.shape) for o in outs))


def variants():
    for form in (None, "vec4", "rows", "naive", "chunked"):
        for threads in (None, "serial", "parallel"):
            yield form, threads


n = 0
for name, (args, kw) in calls.items():
    want = outcome(getattr(ref, name), args, kw)
    per_step = {} if "lam" not in kw else dict(kw, gamma=np.full(shape, 0.9))
    for form, threads in variants():
        with X._form(form), X._threads(threads):
            for a, k in ((args, kw), (tuple(x.astype(np.float64) if x.dtype == np.float32
                                            else x for x in args), kw)) + (
                    ((args, per_step),) if per_step else ()):
                got = outcome(getattr(X, name), a, k)
                assert got == want, (name, form, threads, got, want)
                n += 1
if "torch" in sys.argv[3:]:
    import torch
    for name, (args, kw) in calls.items():
        want = outcome(getattr(ref, name), args, kw)
        tensors = tuple(torch.from_numpy(x) for x in args)
        got = outcome(getattr(X, name), tensors, kw)
        assert got == want, (name, "torch", got, want)
        if name == "p3o_advantage":
            continue
        grad = tuple(x.clone().requires_grad_(True) if x.is_floating_point() else x
                     for x in tensors)
        got = outcome(getattr(X, name), grad, kw)
        assert got == want, (name, "autograd", got, want)
        if got[0] == "ok":
            out = getattr(X, name)(*grad, **kw)
            first = out[0] if isinstance(out, tuple) else out
            first.sum().backward()
            assert grad[0].grad is not None and grad[0].grad.shape == shape, name
        n += 2
print("CASES", n)
"""


def _run(T, B, *extra):
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", _SCRIPT, str(T), str(B), *extra],
                          capture_output=True, text=True, cwd=_ROOT, env=env, timeout=600)


def test_empty_batch_gives_empty_outputs_like_the_reference():
    torch_arg = ("torch",) if _has_torch() else ()
    done = _run(5, 0, *torch_arg)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "CASES" in done.stdout


def test_empty_time_axis_gives_the_reference_error():
    done = _run(0, 4)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "CASES" in done.stdout


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - torch is optional
        return False
    return True
