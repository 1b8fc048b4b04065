"""PufferLib adapters: the kernel ``compute_puff_advantage`` in the ``puffer_rows`` layout
(rows ``[S, T+1]``, reward and done stored one column later), built for CPU torch from the
wheel's own source when its ``_C`` extension (linked against CUDA torch) does not import."""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from pathlib import Path

__all__ = ["build_kernel", "advantage", "TRAINER_FOLD"]

_BUILD = os.environ.get("OFFPOLICY_PEERS_BUILD") or os.path.join(
    tempfile.gettempdir(), "offpolicy-peers-build")


def build_kernel():
    """Make ``torch.ops.pufferlib.compute_puff_advantage`` available on CPU torch.

    The pufferlib-core wheel's ``_C`` extension links CUDA torch (libtorch_cuda.so,
    libcudart.so.12), so it does not import on a CPU build. The wheel also ships the kernel's
    CPU source, ``pufferlib/extensions/pufferlib.cpp``, which registers the same op with a CPU
    implementation: use ``_C`` when it imports, otherwise build that installed file with
    ``torch.utils.cpp_extension.load`` (once, cached outside the repository in
    ``$OFFPOLICY_PEERS_BUILD`` or the temp dir)."""
    import torch

    if hasattr(torch.ops, "pufferlib") and hasattr(torch.ops.pufferlib,
                                                   "compute_puff_advantage"):
        return
    try:
        importlib.import_module("pufferlib._C")
        return
    except ImportError as e:
        cuda_error = str(e)
    spec = importlib.util.find_spec("pufferlib")
    if spec is None or spec.origin is None:
        raise ImportError("pufferlib is not installed")
    source = Path(spec.origin).parent / "extensions" / "pufferlib.cpp"
    if not source.is_file():
        raise ImportError(f"pufferlib._C does not import ({cuda_error}) and the wheel ships no "
                          f"CPU source to build")
    from torch.utils import cpp_extension

    os.makedirs(_BUILD, exist_ok=True)
    cpp_extension.load(name="pufferlib_cpu_advantage", sources=[str(source)],
                       build_directory=_BUILD, is_python_module=False, verbose=False)


def advantage(op):
    """The kernel ``compute_puff_advantage(values, rewards, dones, importance, advantages,
    gamma, lambda, rho_clip, c_clip)`` fills ``advantages`` in place (rows ``[S, T+1]``,
    float32, contiguous); returning None makes the layout read the buffer back."""

    def puff_advantage(values, rewards, dones, importance, advantages, gamma, lam, rho_clip,
                       c_clip):
        op(values, rewards, dones, importance, advantages, float(gamma), float(lam),
           float(rho_clip), float(c_clip))

    return puff_advantage


# what PufferLib's trainer stores (Fold's fields): terminals = d, truncations not stored,
# nothing added to the reward
TRAINER_FOLD = dict(add="nothing", done=False)
