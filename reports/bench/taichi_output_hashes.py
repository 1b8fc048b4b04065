"""Hash every Taichi estimator's outputs, for every kernel form, on fixed inputs.

Run before and after a change that must not change a byte (the package split of issue 24):
``python reports/bench/taichi_output_hashes.py > before.txt``, the change, the same command to
``after.txt``, then ``diff before.txt after.txt``. One line per case: the estimator, the forced
form (``auto``: the automatic choice and the lean path), threads, dtype, B, scalar or per-step
gamma, and the SHA-256 of the outputs' bytes (and of the input gradients, for the autograd
cases). The hashes depend on the CPU (vector width, FMA) and on Taichi's code generation, so
they are compared on one machine, not committed as expected values in a test.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

from estimators import taichi as X

T = 9
FORMS = (None, "vec4", "rows", "naive", "chunked")
THREADS = ("serial", "parallel")


def inputs(B, dtype, seed):
    rng = np.random.default_rng(seed)
    f = lambda s=1.0: (s * rng.standard_normal((T, B))).astype(dtype)
    te, tr = rng.random((T, B)) < 0.15, rng.random((T, B)) < 0.1
    return dict(r=f(), v=f(), nv=f(), q=f(), nq=f(), lr=f(0.7), te=te, tr=tr,
                probs=rng.random((T, B)).astype(dtype),
                traces=(1.5 * rng.random((T, B))).astype(dtype),
                mean=(0.3 * rng.standard_normal((T, B, 3))).astype(dtype),
                std=(0.4 + rng.random((T, B, 3))).astype(dtype),
                gamma=rng.uniform(0.8, 1.0, (T, B)), lam=rng.uniform(0.5, 1.0, (T, 1)))


def calls(d, per_step):
    g = d["gamma"] if per_step else 0.97
    l = d["lam"] if per_step else 0.9
    s = (d["r"], d["v"], d["nv"], d["te"], d["tr"])
    a = (d["r"], d["q"], d["nq"], d["te"], d["tr"])
    kw = dict(gamma=g, lam=l)
    yield "gae", s, kw
    yield "vtrace", s + (d["lr"],), dict(kw, rho_clip=1.3, c_clip=0.9)
    yield "puff_advantage", s + (d["lr"],), dict(kw, rho_clip=1.1)
    yield "per_decision_is", s + (d["lr"],), kw
    yield "nstep_returns", (d["r"], d["nv"], d["te"], d["tr"]), dict(gamma=g, n=3)
    yield "q_trace", a + (d["traces"],), kw
    yield "retrace", a + (d["lr"],), kw
    yield "tree_backup", a + (d["probs"],), kw
    yield "q_lambda", a, kw
    yield "importance_sampling_q", a + (d["lr"],), kw
    if not per_step:
        yield "p3o_advantage", (d["r"], d["mean"], d["std"], d["te"], d["tr"]), \
            dict(batch_reward_std=0.8)


def digest(out):
    outs = out if isinstance(out, tuple) else (out,)
    h = hashlib.sha256()
    for x in outs:
        x = x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)
        h.update(str(x.dtype).encode() + str(x.shape).encode() + x.tobytes())
    return h.hexdigest()[:16]


def main():
    lines = []
    for B in (16, 12, 6):
        for dtype in (np.float32, np.float64):
            d = inputs(B, dtype, seed=B)
            for per_step in (False, True):
                for name, args, kw in calls(d, per_step):
                    for form in FORMS:
                        for threads in THREADS:
                            with X._form(form), X._threads(threads):
                                out = getattr(X, name)(*args, **kw)
                            lines.append(f"{name} {form or 'auto'} {threads} "
                                         f"{np.dtype(dtype).name} B={B} "
                                         f"{'per-step' if per_step else 'scalar'} {digest(out)}")
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None:  # torch inputs (lean path) and the autograd path (adjoint scan)
        for B in (16, 6):
            d = inputs(B, np.float32, seed=100 + B)
            for name, args, kw in calls(d, False):
                for form in (None, "rows", "naive"):
                    for threads in THREADS:
                        tensors = [torch.from_numpy(x) for x in args]
                        grads = [x.clone().requires_grad_(True) if x.is_floating_point() else x
                                 for x in tensors]
                        with X._form(form), X._threads(threads):
                            plain = getattr(X, name)(*tensors, **kw)
                            out = getattr(X, name)(*grads, **kw)
                            first = out[0] if isinstance(out, tuple) else out
                            w = torch.linspace(-1, 1, first.numel()).reshape(first.shape)
                            (first * w).sum().backward()
                        gr = tuple(x.grad for x in grads if x.is_floating_point())
                        lines.append(f"{name} {form or 'auto'} {threads} torch B={B} "
                                     f"{digest(plain)} grad {digest(gr)}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
