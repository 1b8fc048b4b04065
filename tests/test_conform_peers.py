"""The peers table (offpolicy.conform.peers) without any peer library installed.

The peer libraries are an optional extra; CI does not install them. These tests check that the
table is well formed against what ``offpolicy.conform`` knows (estimators, outputs, layouts,
parameter names), that every adapter asks only for what its layout provides, and that
``run_peers`` turns a peer that does not import into a ``not run`` row and writes its reports.
"""

import csv
import functools
import inspect
import json
import sys
import types
from unittest import mock

import pytest

from offpolicy.conform import ESTIMATORS, FAMILIES, LAYOUTS, peers
from offpolicy.conform.layouts import Layout

ENTRIES = [pytest.param(p, id=f"{p.library}:{p.attr}:{p.estimator}:{p.output}:"
                              f"{p.make_layout().describe()}")
           for p in peers.PEERS]


@pytest.mark.parametrize("peer", ENTRIES)
def test_entry_names_what_conform_knows(peer):
    spec = ESTIMATORS[peer.estimator]
    layout = peer.make_layout()
    assert isinstance(layout, Layout) and layout.name in LAYOUTS
    assert spec.kind in layout.kinds, f"{layout.name} cannot express {peer.estimator}"
    assert peer.output in spec.outputs
    assert set(peer.params) <= set(spec.params), f"unknown fixed params {peer.params}"
    assert peer.array in (None, "numpy", "torch", "jax")
    assert peer.dtype in (None, "float64", "float32")
    assert peer.library and peer.distribution and peer.module and peer.attr


def _stand_in_jax(monkeypatch):
    """A stand-in ``jax`` for building the rlax adapters where JAX is not installed: ``jit``
    wraps the function keeping its signature (as jax.jit does), ``jax.numpy`` is a mock."""
    try:
        import jax  # noqa: F401
    except ImportError:
        fake = types.ModuleType("jax")
        fake.jit = lambda fn, static_argnames=(): functools.wraps(fn)(
            lambda *args, **kwargs: fn(*args, **kwargs))
        fake.numpy = mock.MagicMock(name="jax.numpy")
        monkeypatch.setitem(sys.modules, "jax", fake)
        monkeypatch.setitem(sys.modules, "jax.numpy", fake.numpy)


@pytest.mark.parametrize("peer", [p for p in ENTRIES if p.values[0].adapter is not None])
def test_adapter_asks_only_for_what_the_layout_gives(peer, monkeypatch):
    """Build each adapter around a stand-in library object (the adapters import only torch,
    gymnasium and jax helpers at build time) and compare its parameter names with the layout's
    inputs and the keywords of the parameters the runner passes."""
    spec = ESTIMATORS[peer.estimator]
    layout = peer.make_layout()
    _stand_in_jax(monkeypatch)
    fn = peer.adapter(mock.MagicMock(name=peer.attr))
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        # a pass-through (output picker, gamma as a tensor): it shows the library function's
        # own signature, here the stand-in's (*args, **kwargs)
        assert hasattr(fn, "__wrapped__"), "an adapter taking **kwargs must wrap the function"
        return
    names = {p.name for p in parameters}
    if layout.name == "contract":
        offered = set(spec.inputs)
    else:
        offered = layout.provided(spec)
    params = {layout.keyword_for(p) for p in spec.params if p not in layout.folded_params}
    assert names <= offered | params, f"asks for {sorted(names - offered - params)}"
    missing = {layout.keyword_for(p) for p in spec.params
               if p not in layout.folded_params and p not in peer.params} - names
    assert not missing, f"drawn parameters it does not take: {sorted(missing)}"


def test_every_library_of_the_issue_is_listed():
    listed = {p.library for p in peers.PEERS}
    assert {"TorchRL", "rlax", "Stable-Baselines3", "tianshou", "skrl", "rl-games", "CleanRL",
            "PufferLib", "TRL"} <= listed


def _fail_import(name, *args, **kwargs):
    raise ImportError(f"No module named {name!r} (blocked by the test)")


def test_uninstalled_peers_are_not_run(tmp_path, monkeypatch):
    """Every distribution reported missing: each entry is one 'not run' row saying why."""
    def no_version(distribution):
        raise peers.importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(peers.importlib.metadata, "version", no_version)
    monkeypatch.setattr(peers.importlib, "import_module", _fail_import)
    rows = peers.run_peers(tmp_path, progress=None)
    assert len(rows) == len(peers.PEERS)
    assert {r["verdict"] for r in rows} == {"not run"}
    for peer, row in zip(peers.PEERS, rows, strict=True):
        assert row["library"] == peer.library
        if peer.unavailable:
            assert row["reason"] == peer.unavailable
        else:
            assert f"{peer.distribution} is not installed" in row["reason"]


def test_installed_but_not_importable_is_not_run(tmp_path, monkeypatch):
    """A distribution whose metadata exists but whose module fails to import (PufferLib's CUDA
    extension on CPU torch) is 'not run' with the import error, and the run goes on."""
    monkeypatch.setattr(peers.importlib.metadata, "version", lambda d: "9.9.9")
    monkeypatch.setattr(peers.importlib, "import_module", _fail_import)
    subset = tuple(p for p in peers.PEERS if p.setup is None)[:3] + tuple(
        p for p in peers.PEERS if p.unavailable)
    rows = peers.run_peers(tmp_path, peers=subset, progress=None)
    assert [r["verdict"] for r in rows] == ["not run"] * len(subset)
    assert all(r["version"] == "9.9.9" for r in rows)
    assert all("does not import: ImportError" in r["reason"]
               for r, p in zip(rows, subset, strict=True) if not p.unavailable)


def test_reports_are_written(tmp_path):
    rows = [
        peers.row(peers.PEERS[0], "1.0", family=f, verdict=v, reason="r", seconds=1.5,
                   diagnosis="bug" if v == "fail" else "",
                   repro='{"T":1}' if f == "no_dones" else "")
        for f, v in zip(FAMILIES[:3], ("fail", "pass", "n/a"), strict=True)
    ] + [peers.row(peers.PEERS[-1], None, verdict="not run", reason="why | not")]
    paths = peers.write_peer_reports(rows, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["peers.csv", "peers.json", "peers.md"]
    with open(tmp_path / "out" / "peers.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["verdict"] for r in table] == ["fail", "pass", "n/a", "not run"]
    assert tuple(table[0]) == peers.ROW_FIELDS
    entries = json.loads((tmp_path / "out" / "peers.json").read_text())["entries"]
    assert len(entries) == 2
    assert entries[0]["verdict"] == f"DOES NOT CONFORM ({FAMILIES[0]})"
    assert entries[0]["diagnosis"] == "bug" and entries[0]["repro"] == {"T": 1}
    assert entries[1]["verdict"] == "not run"
    md = (tmp_path / "out" / "peers.md").read_text()
    assert "why \\| not" in md and "DOES NOT CONFORM" in md


def test_cli_peers_writes_under_offpolicy_out_by_default(tmp_path, monkeypatch):
    """``--peers`` without ``--out`` writes under ./offpolicy-out/peers (git-ignored), never
    into reports/peers/; the rows come from ``run_peers`` (here: every peer not installed)."""
    from offpolicy.conform import __main__ as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(peers.importlib, "import_module", _fail_import)
    monkeypatch.setattr(peers.table, "PEERS", peers.PEERS[-2:])  # the two not-importable entries
    assert cli.main(["--peers"]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    assert written == ["offpolicy-out/peers/peers.csv", "offpolicy-out/peers/peers.json",
                       "offpolicy-out/peers/peers.md"]
    rows = list(csv.DictReader(open(tmp_path / "offpolicy-out/peers/peers.csv")))
    assert [r["verdict"] for r in rows] == ["not run", "not run"]


# ---------------------------------------------------------------------------------------------
# failure classes


def test_finding_needs_a_known_kind_and_a_section_only_for_a_convention():
    assert peers.Finding("bug", "x").design is None
    with pytest.raises(ValueError, match="kind"):
        peers.Finding("convention difference", "x")
    with pytest.raises(ValueError, match="design"):
        peers.Finding("convention", "x")
    with pytest.raises(ValueError, match="design"):
        peers.Finding("bug", "x", design="§1")


def test_a_failing_row_takes_its_class_from_the_entry():
    peer = peers.Peer("L", "l", "m", "f", "gae", findings={
        "lambda_0": peers.Finding("layout limit", "why"), "*": peers.Finding("bug", "other")})
    assert peers.row(peer, "1", family="lambda_0", verdict="fail")["failure_class"] == \
        "layout limit"
    assert peers.row(peer, "1", family="T_equals_1", verdict="fail")["failure_class"] == "bug"
    assert peers.row(peer, "1", family="T_equals_1", verdict="pass")["failure_class"] == ""
    bare = peers.Peer("L", "l", "m", "f", "gae")
    assert peers.row(bare, "1", family="x", verdict="fail")["failure_class"] == "unclassified"


def _design_headings():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md").read_text()
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def test_every_convention_names_a_design_section_that_exists():
    """A convention finding cites docs/DESIGN.md by the heading of the section that documents
    it ("§1 X: Y" is heading X, then the bold paragraph title Y under it)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md").read_text()
    for section in peers.table.DESIGN_SECTIONS.values():
        heading, _, paragraph = section.partition(": ")
        title = heading.split(" ", 1)[1]
        assert any(h.endswith(title) for h in _design_headings()), section
        assert f"**{paragraph}.**" in text, section
    for peer in peers.PEERS:
        for finding in peer.findings.values():
            if finding.kind == "convention":
                assert finding.design in peers.table.DESIGN_SECTIONS.values()


def test_committed_table_classifies_every_failing_family():
    """reports/peers/peers.json (the committed run): every failing family carries a class, and
    a convention its DESIGN.md section."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "reports" / "peers" / "peers.json"
    entries = json.loads(path.read_text())["entries"]
    failing = [(e["function"], c) for e in entries for c in e["cases"] if c["verdict"] == "fail"]
    assert failing, "the committed run has failures to classify"
    for function, case in failing:
        assert case["class"] in peers.FAILURE_CLASSES, (function, case["family"])
        assert case["why"], (function, case["family"])
        assert (case["class"] == "convention") == ("design_section" in case)


# ---------------------------------------------------------------------------------------------
# the time-out fold the adapters restate, by hand

def test_timeout_fold_by_hand():
    """Three steps, gamma 0.5: a time-out alone (step 0), a time-out on a terminal step
    (step 1), a plain step (step 2); V(s_t) = 1, 2, 3 and V(final obs) = 10, 20, 30."""
    import numpy as np

    from offpolicy.conform.peers.base import timeout_fold

    r = np.zeros(3)
    v, nv = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])
    term, trunc = np.array([False, True, False]), np.array([True, True, False])
    fold = functools.partial(timeout_fold, r, v, nv, term, trunc, 0.5)
    assert fold(add="gamma_final_value", on="timeout_not_terminated").tolist() == [5, 0, 0]
    assert fold(add="gamma_final_value", on="every_timeout").tolist() == [5, 10, 0]
    assert fold(add="gamma_current_value", on="every_timeout").tolist() == [0.5, 1, 0]
    assert fold(add="gamma_current_value", on="timeout_not_terminated").tolist() == [0.5, 0, 0]
    with pytest.raises(ValueError, match="add"):
        fold(add="gamma_next_value", on="every_timeout")
