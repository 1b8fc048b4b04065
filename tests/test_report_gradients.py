"""The report's gradient section: its gate, its computed findings and its wiring into
``python -m offpolicy.report --check``."""

import shutil
import subprocess
import sys
from pathlib import Path

from offpolicy.report import gradients as RG

ROOT = Path(__file__).resolve().parents[1]


def row(mdp, k, loss, est, cos, **kw):
    r = {"mdp": mdp, "behaviour": "lag", "k": k, "H": 3, "loss": loss, "estimator": est,
         "weight": "once", "kl": 0.1 * k, "cos_grad_j": cos, "cos_reference": 1.0, "rel_bias": 0.0,
         "total_var": 1.0}
    r.update(kw)
    return r


def grid(once, twice, gae):
    """rows over lags 0, 1, 4, 8 with the given cosines per lag (index 0 = lag 0)"""
    rows = []
    for i, k in enumerate((0, 1, 4, 8)):
        rows += [row("m", k, "impala", "vtrace", once[i]),
                 row("m", k, "ppo_clip", "vtrace", twice[i]),
                 row("m", k, "ppo_clip", "gae", gae[i])]
    return rows


def test_findings_name_the_first_lag_where_once_is_not_closer():
    rows = grid(once=[1, .9, .8, .5], twice=[1, .7, .8, .6], gae=[1, .5, -.2, .1])
    text = RG.findings(rows)
    assert "stops pointing closer to grad J than the twice-counted one (PPO-clip on the " \
           "V-trace pg advantage) at k = 4" in text[0]  # a tie counts as not closer
    assert "from k = 4" in text[1] and "not at every larger lag" in text[1]


def test_findings_say_every_lag_only_when_every_lag_agrees():
    rows = grid(once=[1, .9, .8, .7], twice=[1, .5, .4, .3], gae=[1, -.1, -.2, -.3])
    text = RG.findings(rows)
    assert text[0].startswith("m: at every lag of the grid (k = 1, 4, 8)")
    assert "from k = 1" in text[1] and text[1].endswith("(1, 4, 8).")


def test_compare_reports_moved_missing_and_extra_rows(tmp_path):
    rows = grid(once=[1, .9, .8, .7], twice=[1, .5, .4, .3], gae=[1, .1, .2, .3])
    RG.write(str(tmp_path), rows)
    assert RG.compare(rows, str(tmp_path)) == []
    moved = [dict(r) for r in rows]
    moved[4]["cos_grad_j"] += 1e-5
    problems = RG.compare(moved, str(tmp_path))
    assert len(problems) == 1 and "cos_grad_j" in problems[0] and "'lag', 1.0," in problems[0]
    assert any("not produced" in p for p in RG.compare(rows[:-1], str(tmp_path)))
    extra = rows + [row("m2", 0, "impala", "vtrace", 1.0)]
    assert any("not in the baseline" in p for p in RG.compare(extra, str(tmp_path)))
    assert "missing" in RG.compare(rows, str(tmp_path / "nowhere"))[0]


def test_committed_baseline_is_what_the_quick_grid_computes():
    assert RG.compare(RG.compute("quick"), str(ROOT / "reports" / "baseline")) == []


def test_report_check_fails_on_a_gradient_regression(tmp_path):
    # one figure moved, one row gone: --check exits 1 and names both
    base = tmp_path / "baseline"
    shutil.copytree(ROOT / "reports" / "baseline", base)
    lines = (base / RG.CSV).read_text().splitlines()
    cells = lines[7].split(",")
    cells[8] = repr(float(cells[8]) + 0.01)  # cos_grad_j
    lines[7] = ",".join(cells)
    del lines[12]
    (base / RG.CSV).write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "offpolicy.report", "--check", str(base)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "check FAILED: gradients: 2 regression(s)" in proc.stdout
    assert "cos_grad_j" in proc.stdout and "not in the baseline" in proc.stdout


def test_value_findings_say_every_only_when_every_stale_row_is_one():
    rows = [row("m", k, "value", "gae", float("nan"), rel_bias=1.0) for k in (1, 4)]
    rows += [row("m", 0, "value", "gae", float("nan"), rel_bias=7.0)]  # lag 0: not a stale row
    rows += [row("m", k, "value", "vtrace", 0.9, rel_bias=b) for k, b in ((1, 0.5), (4, 1.0))]
    text = RG.findings(rows)
    assert any(t.startswith("gae (value loss)") and "every one of the 2 stale rows" in t
               for t in text)
    assert any(t.startswith("vtrace (value loss)") and "relative bias 0.500-1.000 over the 2"
               in t for t in text)
