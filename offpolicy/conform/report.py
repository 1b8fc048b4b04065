"""The verdict of a conformance check: per-family results, the minimal counterexample, the
diagnosis; printable for people (``str``) and for machines (``to_json``)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

__all__ = ["CaseResult", "Counterexample", "Report"]


def _plain(x):
    """numpy arrays/scalars as nested lists of short Python numbers (NaN/inf as strings)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return float(f"{x:.10g}")
    return x


@dataclasses.dataclass
class CaseResult:
    """One case family: ``verdict`` is ``"pass"``, ``"fail"`` or ``"n/a"``; ``reason`` says
    why (for a pass, what was checked; a pass with a warning starts ``"warning:"``)."""

    name: str
    verdict: str
    reason: str
    examples: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "reason": self.reason}


@dataclasses.dataclass
class Counterexample:
    """The smallest failing input found (shrunk by hypothesis), in the contract's time-major
    form, with the expected and the returned output (``got`` is None when the call raised)."""

    family: str
    inputs: dict  # contract names -> [T, B] arrays
    params: dict
    expected: np.ndarray
    got: np.ndarray | None
    error: str | None = None
    call: dict | None = None  # what the function was called with, in the layout's names

    @property
    def T(self) -> int:
        return int(np.shape(self.expected)[0])

    @property
    def B(self) -> int:
        return int(np.shape(self.expected)[1])

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "T": self.T,
            "B": self.B,
            "inputs": _plain(self.inputs),
            "params": _plain(self.params),
            "expected": _plain(self.expected),
            "got": None if self.got is None else _plain(self.got),
            "error": self.error,
            "call": None if self.call is None else _plain(self.call),
        }


@dataclasses.dataclass
class Report:
    """What :func:`offpolicy.conform.check` found. ``ok`` is True when no family failed."""

    estimator: str
    layout: str
    output: str
    function: str
    cases: list
    counterexample: Counterexample | None
    diagnosis: str | None
    diagnosis_detail: str | None = None
    warnings: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    dtype: str = "float64"

    @property
    def ok(self) -> bool:
        return not any(c.verdict == "fail" for c in self.cases)

    @property
    def failed(self) -> list:
        return [c.name for c in self.cases if c.verdict == "fail"]

    def case(self, name: str) -> CaseResult:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "estimator": self.estimator,
            "layout": self.layout,
            "output": self.output,
            "function": self.function,
            "dtype": self.dtype,
            "cases": [c.to_dict() for c in self.cases],
            "counterexample": None if self.counterexample is None
            else self.counterexample.to_dict(),
            "diagnosis": self.diagnosis,
            "diagnosis_detail": self.diagnosis_detail,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 1} | kw))

    def __str__(self) -> str:
        head = "CONFORMS" if self.ok else "DOES NOT CONFORM"
        lines = [f"{self.function}: {head} to the {self.estimator} contract "
                 f"(layout {self.layout}, output {self.output}, {self.dtype}, "
                 f"{self.seconds:.1f} s)"]
        width = max(len(c.name) for c in self.cases) if self.cases else 0
        for c in self.cases:
            lines.append(f"  {c.name:<{width}}  {c.verdict:<4}  {c.reason}")
        if self.diagnosis:
            lines.append(f"diagnosis: {self.diagnosis} — {self.diagnosis_detail}")
        elif not self.ok:
            lines.append("diagnosis: no known bug class matches (see the counterexample)")
        cx = self.counterexample
        if cx is not None:
            lines.append(f"counterexample ({cx.family}, T={cx.T}, B={cx.B}, "
                         f"params {_plain(cx.params)}):")
            for name, value in cx.inputs.items():
                lines.append(f"  {name} = {_plain(value)}")
            if cx.call:
                lines.append(f"  the function was called ({self.layout}) with:")
                for name, value in cx.call.items():
                    lines.append(f"    {name} = {_plain(value)}")
            lines.append(f"  expected = {_plain(cx.expected)}")
            lines.append(f"  got      = {cx.error if cx.got is None else _plain(cx.got)}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines)
