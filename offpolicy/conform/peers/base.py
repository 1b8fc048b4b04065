"""What every peer module shares: the :class:`Peer` entry, the failure classes and the small
array helpers the adapters use."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Peer", "Finding", "FAILURE_CLASSES", "pick_field", "gamma_tensor", "as_torch",
           "as_numpy"]

# what a failing case family of a peer is (peers.json's ``failure_class``)
FAILURE_CLASSES = ("bug", "convention", "layout limit")


@dataclasses.dataclass(frozen=True)
class Finding:
    """Why a peer fails a case family. ``kind``: ``"bug"`` (the library's output is wrong for
    an input its own pipeline produces), ``"convention"`` (a different definition that
    docs/DESIGN.md documents; ``design`` names the section) or ``"layout limit"`` (the check
    feeds an input the library's pipeline can never produce). ``why``: one line."""

    kind: str
    why: str
    design: str | None = None

    def __post_init__(self):
        if self.kind not in FAILURE_CLASSES:
            raise ValueError(f"kind: expected one of {FAILURE_CLASSES}, got {self.kind!r}")
        if (self.kind == "convention") != (self.design is not None):
            raise ValueError("design: a convention names its docs/DESIGN.md section, and only "
                             "a convention does")


@dataclasses.dataclass(frozen=True)
class Peer:
    """One peer function and how to run it through :func:`offpolicy.conform.check`.

    ``module``/``attr``: the import path and the attribute path inside it (``"A.b"`` for a
    method). ``adapter``: ``None`` (the function is called as it is) or ``adapter(obj)``
    returning the callable to check. ``layout``: a layout name or a zero-argument factory of a
    layout instance (so the table builds without importing anything). ``params``: parameters the
    function hard-codes (fixed, not drawn). ``setup``: run once before the import (e.g. JAX's
    float64 switch, building PufferLib's CPU kernel); it raises to mark the peer not run.
    ``unavailable``: the peer ships no importable function (the row says why; nothing runs).
    ``findings``: the class of each case family the entry fails, by family name; the key
    ``"*"`` covers every failing family not named.
    """

    library: str
    distribution: str
    module: str
    attr: str
    estimator: str
    layout: Any = "contract"
    output: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    adapter: Callable[[Any], Callable[..., Any]] | None = None
    array: str | None = None
    dtype: str | None = None
    setup: Callable[[], None] | None = None
    note: str = ""
    unavailable: str | None = None
    findings: dict = dataclasses.field(default_factory=dict)

    @property
    def function(self) -> str:
        return f"{self.module}.{self.attr}"

    def make_layout(self):
        from ..layouts import get_layout

        return get_layout(self.layout() if callable(self.layout) else self.layout)

    def finding(self, family: str) -> Finding | None:
        """The class of a failing ``family`` (None: not classified)."""
        return self.findings.get(family, self.findings.get("*"))


def pick_field(pick, name):
    """Wrap ``fn`` so that it returns ``{name: pick(result)}``; the wrapper keeps ``fn``'s
    signature (``functools.wraps``), so the runner passes it the same keywords."""

    def adapter(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return {name: pick(fn(*args, **kwargs))}

        return wrapper

    return adapter


def gamma_tensor(adapter=None, keyword="gamma"):
    """Pass ``gamma`` as a 0-d float64 tensor instead of a Python float. TorchRL's and skrl's
    code multiply the Python float by an int/bool mask, which makes a default-dtype (float32)
    tensor, so float64 inputs get a float32-rounded discount; a float64 tensor keeps it exact
    and lets the check see the logic under that rounding."""

    def wrap(fn):
        inner = adapter(fn) if adapter is not None else fn

        @functools.wraps(inner)
        def wrapper(*args, **kwargs):
            import torch

            kwargs[keyword] = torch.tensor(kwargs[keyword], dtype=torch.float64)
            return inner(*args, **kwargs)

        return wrapper

    return wrap


def as_torch(x, like=None):
    import torch

    t = torch.as_tensor(np.asarray(x) if not hasattr(x, "detach") else x)
    return t if like is None else t.to(like.dtype)


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
