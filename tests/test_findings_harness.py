"""The harness README's findings: generated from the tables, a difference stated only when it
separates on both seed sets (issue 22)."""

from __future__ import annotations

import os
import shutil

import pandas as pd

from offpolicy.harness import findings as F

# the checkout's files, not the module's defaults: the suite also runs against the installed wheel
DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reports",
                   "harness")


def test_committed_harness_findings_match_the_tables():
    assert F.check(os.path.join(DIR, "README.md"), DIR) == []


def _table(path, rows):
    """A minimal aggregated table: one row per (estimator, mean, ci) of metric ``m``."""
    pd.DataFrame([{"estimator": e, "seeds": 5, "m": mean, "m_ci": ci} for e, mean, ci in rows]
                 ).to_csv(path, index=False)


def _verdict(tmp_path, first, second=None):
    _table(tmp_path / "g_table.csv", first)
    if second is not None:
        _table(tmp_path / "g_table_s100.csv", second)
    cmp = F.Compare("m", F.Cell("a", "g", {"estimator": "a"}), F.Cell("b", "g", {"estimator": "b"}))
    text, _ = cmp.evaluate(F.Tables(str(tmp_path)))
    return text


def test_replicated_difference(tmp_path):
    # a: [0.9, 1.1], b: [0.4, 0.6] on seeds 0-4; [0.85, 1.05] vs [0.5, 0.7] on seeds 100-104
    text = _verdict(tmp_path, [("a", 1.0, 0.1), ("b", 0.5, 0.1)],
                    [("a", 0.95, 0.1), ("b", 0.6, 0.1)])
    assert text.endswith("**a higher on both seed sets**")
    assert "a 1.000 ± 0.100 vs b 0.500 ± 0.100 (seeds 0–4, separate)" in text
    assert "a 0.950 ± 0.100 vs b 0.600 ± 0.100 (seeds 100–104, separate)" in text


def test_difference_on_one_seed_set_is_not_replicated(tmp_path):
    # seeds 0-4 separate ([0.9, 1.1] vs [0.7, 0.8]); seeds 100-104 overlap ([0.8, 1.0] vs
    # [0.75, 0.85]): both intervals are quoted and the verdict is "not replicated"
    text = _verdict(tmp_path, [("a", 1.0, 0.1), ("b", 0.75, 0.05)],
                    [("a", 0.9, 0.1), ("b", 0.8, 0.05)])
    assert text.endswith("**not replicated**")
    assert "(seeds 0–4, separate)" in text and "(seeds 100–104, overlap)" in text


def test_opposite_directions_are_not_replicated(tmp_path):
    text = _verdict(tmp_path, [("a", 1.0, 0.1), ("b", 0.5, 0.1)],
                    [("a", 0.5, 0.1), ("b", 1.0, 0.1)])
    assert text.endswith("**not replicated**")


def test_overlap_on_both_and_missing_second_set(tmp_path):
    text = _verdict(tmp_path, [("a", 1.0, 0.1), ("b", 0.95, 0.1)],
                    [("a", 1.0, 0.1), ("b", 1.05, 0.1)])
    assert text.endswith("**no difference on either seed set**")
    (tmp_path / "g_table_s100.csv").unlink()
    text = _verdict(tmp_path, [("a", 1.0, 0.1), ("b", 0.5, 0.1)])
    assert text.endswith("**not replicated (second seed set not run)**")
    text = _verdict(tmp_path, [("a", 1.0, 0.1), ("b", 0.95, 0.1)])
    assert text.endswith("**intervals overlap (second seed set not run)**")


def test_contains_zero_counts_every_cell_of_both_sets(tmp_path):
    # a: 0.01 ± 0.02 contains 0 on both sets; b: 0.05 ± 0.02 does not on the second
    _table(tmp_path / "g_table.csv", [("a", 0.01, 0.02), ("b", -0.01, 0.02)])
    _table(tmp_path / "g_table_s100.csv", [("a", 0.0, 0.02), ("b", 0.05, 0.02)])
    cells = [F.Cell(x, "g", {"estimator": x}) for x in ("a", "b")]
    text, conds = F.ContainsZero("m", cells, "a and b").evaluate(F.Tables(str(tmp_path)))
    assert "contains 0 in 3 of 4 cells" in text and "b, seeds 100–104: 0.050 ± 0.020" in text
    assert conds == [("m contains 0 in every cell", False)]


def test_pm_matches_the_tables_rounding():
    assert F.pm(-0.0468, 0.0041) == "−0.0468 ± 0.0041"
    assert F.pm(180.84, 3.41) == "180.8 ± 3.4"
    assert F.pm(0.9999662, 0.0) == "1.000 ± 0"


def test_cli(tmp_path, capsys):
    assert F.main(["--check", "--dir", DIR]) == 0
    d = tmp_path / "h"
    shutil.copytree(DIR, d, ignore=shutil.ignore_patterns("*.png"))
    readme = d / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("separate)", "overlap)", 1),
                      encoding="utf-8")
    assert F.main(["--check", "--dir", str(d)]) == 1
    assert "differs" in capsys.readouterr().out
    assert F.main(["--check", "--dir", str(tmp_path / "missing")]) == 2


def test_findings_cli_on_a_folder_without_tables_is_one_usage_line(tmp_path, capsys):
    assert F.main(["--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"--dir: no harness tables (*_table.csv) in {tmp_path}\n"


def test_findings_cli_names_a_missing_table_in_one_line(tmp_path, capsys):
    shutil.copy(os.path.join(DIR, "ppo_chain_table.csv"), tmp_path)
    assert F.main(["--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("findings: ") and str(tmp_path) in err
