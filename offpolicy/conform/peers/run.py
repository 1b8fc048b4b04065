"""Running the peers table: one entry through :func:`offpolicy.conform.check`, or all of them;
each entry becomes one row per case family (``ROW_FIELDS``), or one ``not run`` row saying
why."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import time
import traceback

from . import table
from .base import Peer

__all__ = ["ROW_FIELDS", "row", "run_peer", "run_peers", "entry_verdict"]

# columns of peers.csv (and the keys of each row dict)
ROW_FIELDS = ("library", "distribution", "version", "function", "estimator", "layout", "output",
              "fixed_params", "note", "family", "verdict", "reason", "failure_class",
              "failure_why", "design_section", "diagnosis", "repro", "seconds")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _resolve(peer: Peer):
    obj = importlib.import_module(peer.module)
    for part in peer.attr.split("."):
        obj = getattr(obj, part)
    return obj


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _layout_name(peer: Peer) -> str:
    try:
        return peer.make_layout().describe()
    except Exception:  # a broken layout entry still gets its row
        return str(peer.layout)


def row(peer: Peer, version, **kw) -> dict:
    """One row of the table for ``peer`` (every ``ROW_FIELDS`` key); ``kw`` overrides. A
    failing family gets the class the entry's ``findings`` give it ("unclassified" if none)."""
    r = dict(library=peer.library, distribution=peer.distribution, version=version or "",
             function=peer.function, estimator=peer.estimator, layout=_layout_name(peer),
             output=peer.output or "", fixed_params=json.dumps(peer.params, sort_keys=True),
             note=peer.note, family="", verdict="", reason="", failure_class="",
             failure_why="", design_section="", diagnosis="", repro="", seconds="")
    r.update(kw)
    if r["verdict"] == "fail" and not r["failure_class"]:
        finding = peer.finding(r["family"])
        if finding is None:
            r["failure_class"] = "unclassified"
        else:
            r.update(failure_class=finding.kind, failure_why=finding.why,
                     design_section=finding.design or "")
    return r


def _repro(report, family: str) -> str:
    cx = report.counterexample
    if cx is None or cx.family != family:
        return ""
    d = cx.to_dict()
    keep = {k: d[k] for k in ("T", "B", "params", "inputs", "expected", "got", "error")}
    return json.dumps(keep, separators=(",", ":"))


def run_peer(peer: Peer, *, examples: int | None = None, seed: int = 0,
             timeout: float | None = 60.0) -> list[dict]:
    """Run one peer entry; rows (one per case family), or one ``not run`` row saying why."""
    version = _version(peer.distribution)
    if peer.unavailable:
        return [row(peer, version, verdict="not run", reason=peer.unavailable)]
    if version is None:
        return [row(peer, None, verdict="not run",
                    reason=f"{peer.distribution} is not installed (pip install "
                           f"'offpolicy[peers]')")]
    try:
        if peer.setup is not None:
            peer.setup()
        fn = _resolve(peer)
        if peer.adapter is not None:
            fn = peer.adapter(fn)
        layout = peer.make_layout()
    except Exception as e:  # a peer that does not import is a row, not a crash
        return [row(peer, version, verdict="not run", reason=f"does not import: {_one_line(e)}")]
    from .. import check

    kwargs = dict(layout=layout, output=peer.output, seed=seed, timeout=timeout,
                  **peer.params)
    if peer.array:
        kwargs["array"] = peer.array
    if peer.dtype:
        kwargs["dtype"] = peer.dtype
    if examples is not None:
        kwargs["examples"] = examples
    start = time.perf_counter()
    try:
        report = check(fn, peer.estimator, **kwargs)
    except Exception as e:  # a usage error here is an adapter bug: say so, keep going
        return [row(peer, version, layout=layout.describe(), verdict="error",
                    reason=f"the runner refused the entry: {_one_line(e)}",
                    seconds=round(time.perf_counter() - start, 2))]
    rows = []
    for case in report.cases:
        failed = case.verdict == "fail"
        rows.append(row(peer, version, layout=report.layout, output=report.output,
                        family=case.name, verdict=case.verdict, reason=case.reason,
                        diagnosis=(report.diagnosis or "") if failed else "",
                        repro=_repro(report, case.name) if failed else "",
                        seconds=round(report.seconds, 2)))
    return rows


def run_peers(out_dir=None, *, peers=None, examples: int | None = None, seed: int = 0,
              progress=sys.stderr) -> list[dict]:
    """Run every peer entry; return the rows (see ``ROW_FIELDS``). ``out_dir`` is where
    :func:`~offpolicy.conform.peers.write.write_peer_reports` will write (nothing is written
    here); progress goes to ``progress`` (a stream, or None). ``peers``: the entries to run
    (default :data:`~offpolicy.conform.peers.table.PEERS`)."""
    peers = table.PEERS if peers is None else peers
    rows = []
    for i, peer in enumerate(peers, 1):
        label = f"[{i}/{len(peers)}] {peer.library} {peer.attr} ({peer.estimator}/{peer.output})"
        if progress is not None:
            print(label, "...", file=progress, end=" ", flush=True)
        try:
            got = run_peer(peer, examples=examples, seed=seed)
        except Exception as e:  # never let one peer end the run
            where = traceback.format_exc(limit=2).splitlines()[-1]
            got = [row(peer, _version(peer.distribution), verdict="error",
                       reason=f"{_one_line(e)} | {where}")]
        rows.extend(got)
        if progress is not None:
            print(entry_verdict(got), file=progress, flush=True)
    return rows


def entry_verdict(rows: list[dict]) -> str:
    """One entry's verdict from its rows: ``not run``, ``error``, ``conforms`` or
    ``DOES NOT CONFORM (families)``."""
    verdicts = {r["verdict"] for r in rows}
    for v in ("not run", "error"):
        if v in verdicts:
            return v
    if "fail" in verdicts:
        return "DOES NOT CONFORM (" + ", ".join(r["family"] for r in rows
                                                if r["verdict"] == "fail") + ")"
    return "conforms"
