"""The README findings are generated from the committed tables and checked (issue 22).

``reports/README.md``'s findings come from ``reports/full/results.csv`` through
``offpolicy.report.findings``; these tests fail when the committed text differs from what the
table generates, when a condition a sentence relies on no longer holds, and show that an edit
of the table changes the generated quantifier the way it should.
"""

from __future__ import annotations

import os
import shutil

import pytest

from offpolicy.report import findings as F

# the checkout's files, not the module's defaults: the suite also runs against the installed wheel
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "reports", "README.md")
TABLE = os.path.join(ROOT, "reports", "full", "results.csv")


def test_committed_report_findings_match_the_table():
    assert F.check(README, TABLE) == []


def test_cli_check_exit_codes(tmp_path, capsys):
    assert F.main(["--check", "--readme", README, "--table", TABLE]) == 0
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    text = readme.read_text(encoding="utf-8").replace("largest |z| = ", "largest |z| = 9", 1)
    readme.write_text(text, encoding="utf-8")
    assert F.main(["--check", "--readme", str(readme), "--table", TABLE]) == 1
    assert "differs" in capsys.readouterr().out
    assert F.main(["--check", "--readme", README, "--table", str(tmp_path / "missing.csv")]) == 2
    readme.write_text("no markers\n", encoding="utf-8")
    assert F.main(["--check", "--readme", str(readme), "--table", TABLE]) == 1


def test_write_regenerates_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{F.BEGIN}\nstale text\n{F.END}\ntail\n", encoding="utf-8")
    assert F.main(["--write", "--readme", str(readme), "--table", TABLE]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"head\n{F.BEGIN}\n") and text.endswith(f"{F.END}\ntail\n")
    assert "stale text" not in text
    assert F.check(str(readme), TABLE) == []


def test_helpers():
    assert F.fmt(0.0040417) == "0.0040"
    assert F.fmt(3873.8) == "3.9e3"
    assert F.fmt(1.0254e46) == "1.0e46"
    assert F.fmt(54.3) == "54"
    assert F.count(5, 5) == "all 5 MDPs"
    assert F.count(4, 5) == "4 of 5 MDPs"
    assert F.count(0, 5) == "none of the 5 MDPs"
    # holds at 8 and 16 but not at 4: "from k = 8"; failing at the last k: None
    assert F.from_k([0, 4, 8, 16], {0: True, 4: False, 8: True, 16: True}) == 8
    assert F.from_k([0, 4, 8], {0: True, 4: True, 8: False}) is None


@pytest.fixture(scope="module")
def table():
    return F.load(TABLE)


def _set(t, metric, value, **axes):
    """A copy of the table with ``metric`` of the one matching row set to ``value``."""
    t = [dict(r) for r in t]
    hits = [r for r in t if all(r[a] == str(v) for a, v in axes.items())]
    assert len(hits) == 1
    hits[0][metric] = value
    return t


def test_quantifier_follows_the_table(table):
    # committed: V-trace lam=1 rho=2 c=1 is the best V target at k = 4 on 2 of 5 MDPs. Make it
    # the best on garnet_medium too (MSE 0.1, below every other V cell there, which are > 1):
    # the generated text must now say 3 of 5 at k = 4.
    text = F.render(F.findings(table))
    assert "at k = 4 on 2 of 5 MDPs" in text
    t = _set(table, "mse", 0.1, mdp="garnet_medium", estimator="vtrace", lam=1, rho=2, c=1,
             k=4, T=16, V="stale")
    assert "at k = 4 on 3 of 5 MDPs" in F.render(F.findings(t))


def test_failed_condition_is_reported(table):
    # a q_lambda winner whose modulus is below 1 breaks "its modulus is above 1 in every one of
    # those cells": the finding's condition must fail.
    t = _set(table, "modulus", 0.5, mdp="chain", estimator="q_lambda", lam=1, k=8, T=16,
             V="stale")
    failed = [d for f in F.findings(t) for d, ok in f.conditions if not ok]
    assert failed == ["q_lambda winners have modulus > 1"]


def test_no_monte_carlo_word_without_a_monte_carlo_cell(table):
    # issue 22: "a sampled MSE of 0.0107" named an exact figure; the cell has no MC column, so
    # the text must call it exact, and would call it Monte Carlo-confirmed only with one.
    text = F.render(F.findings(table))
    assert "an exact MSE (no Monte Carlo cell) of 0.0107" in text
    t = _set(table, "mc_mse", 0.0107, mdp="garnet_small", estimator="vtrace", lam=1, rho=1, c=1,
             k=16, T=16, V="exact")
    assert "a Monte Carlo-confirmed MSE of 0.0107" in F.render(F.findings(t))
