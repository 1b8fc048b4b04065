"""Peers: the estimators of other RL libraries, run through the conformance runner.

``python -m offpolicy.conform --peers [--out DIR]`` runs every entry of :data:`PEERS` whose
library is installed (the ``[peers]`` extra) and writes ``peers.md``, ``peers.csv`` and
``peers.json`` (one row per entry and case family: library, version, function, estimator,
case family, verdict, the class of a failure — bug, documented convention or layout limit —,
minimal repro, diagnosis). A peer that is not installed, does not import, or ships no
importable function is listed as ``not run`` with why.

Each entry names the *installed* function by its import path; the only code here is a thin
adapter per library (one module each: ``torchrl``, ``rlax``, ``sb3``, ``tianshou``, ``skrl``,
``rl_games``, ``pufferlib``, ...) that reproduces that library's own pipeline and nothing more:
renaming, reshaping, a stand-in ``self`` for a method, filling the library's own buffer
object, the one line of the library's rollout loop that folds a time-out into the reward
(:func:`base.timeout_fold`, named for what it adds and on which steps). The libraries' code is
called, never copied. The table is :mod:`.table`; running, :mod:`.run`; the files,
:mod:`.write`. The findings are in ``reports/peers/README.md``.
"""

from __future__ import annotations

import importlib  # noqa: F401  (tests patch importlib.import_module / metadata through here)
import importlib.metadata  # noqa: F401

from .base import FAILURE_CLASSES, Finding, Peer
from .run import ROW_FIELDS, row, run_peer, run_peers
from .table import PEERS
from .write import write_peer_reports

__all__ = ["Peer", "Finding", "FAILURE_CLASSES", "PEERS", "run_peers", "run_peer",
           "write_peer_reports", "ROW_FIELDS", "row"]
