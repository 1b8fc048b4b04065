"""The harness's run files, tables and plots (issue 20, mutation pass): each test states an
input and the output expected by hand, at the helper that writes what a report quotes.

Written against the sampled mutmut survivors of group ``harness`` (reports/mutation/groups/
harness.md names the mutant each test kills); every test is fast and reads no committed file."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from offpolicy.harness import grid
from offpolicy.harness import report as R

matplotlib.use("Agg")


# ---- grid.strip_timing: the run file without wall-clock fields ---------------------------------


def test_strip_timing_drops_the_clock_fields_of_every_curve_row_and_the_summary():
    """Pins ``strip_timing``'s curve branch and its summary branch: wall_time, sps and env_sps
    go from each curve row and from the summary; every other field stays, the input is not
    modified (the resume state is written from the stripped copy)."""
    result = {"name": "r", "curve": [{"env_steps": 8, "wall_time": 0.5, "sps": 16.0,
                                      "env_sps": 20.0, "J": 0.25},
                                     {"env_steps": 16, "wall_time": 0.9, "sps": 17.7, "J": 0.5}],
              "summary": {"final_J": 0.5, "wall_time": 0.9, "sps": 17.7, "env_sps": 20.0}}
    out = grid.strip_timing(result)
    assert out["curve"] == [{"env_steps": 8, "J": 0.25}, {"env_steps": 16, "J": 0.5}]
    assert out["summary"] == {"final_J": 0.5}
    assert out["name"] == "r"
    assert result["curve"][0]["wall_time"] == 0.5 and result["summary"]["sps"] == 17.7


# ---- report._fmt / to_markdown: how a table cell prints ----------------------------------------


def test_markdown_cells_print_small_figures_with_three_significant_digits():
    """Pins ``_fmt``'s three branches: |x| >= 1000 no decimals; 0 < |x| < 0.01 three significant
    digits (0.00123, never 0.001 or 0.000); otherwise three decimals; 0 itself 0.000; NaN an
    empty cell; non-floats as str."""
    df = pd.DataFrame({"estimator": ["gae", "vtrace"], "small": [0.0012345, -0.00004567],
                       "plain": [0.5, 0.0], "big": [1234.6, float("nan")]})
    got = R.to_markdown(df).splitlines()
    assert got[0] == "| estimator | small | plain | big |"
    assert got[1] == "|---|---|---|---|"
    assert got[2] == "| gae | 0.00123 | 0.500 | 1235 |"
    assert got[3] == "| vtrace | -4.57e-05 | 0.000 |  |"


# ---- report.summary_table: the columns of <stem>_table.md --------------------------------------


def _agg_row(**cols):
    return pd.DataFrame([cols])


def test_summary_table_of_a_tabular_ppo_grid_has_the_area_column_after_final_performance():
    """Pins ``summary_table``'s column list: tabular PPO shows axes, seeds, final_J_frac, then
    mean_J_frac (the area) and final_J, then adv_rmse, adv_bias, the value-target columns and
    sps; each mean ± its CI half-width (two significant digits), a missing CI prints the mean."""
    agg = _agg_row(algo="ppo", env="chain", lag=2, seeds=5,
                   final_J_frac=0.9, final_J_frac_ci=0.01, mean_J_frac=0.5, mean_J_frac_ci=0.1,
                   final_J=0.45, final_J_ci=0.05, adv_rmse=0.2, adv_rmse_ci=0.02,
                   adv_bias=-0.05, adv_bias_ci=0.005, vtarget_rmse=0.3, vtarget_rmse_ci=0.03,
                   vtarget_bias=0.01, vtarget_bias_ci=0.0, sps=1500.0)
    out = R.summary_table(agg, "ppo", ["lag"], tabular=True)
    assert list(out.columns) == ["lag", "seeds", "final_J_frac", "mean_J_frac", "final_J",
                                 "adv_rmse", "adv_bias", "vtarget_rmse", "vtarget_bias", "sps"]
    row = out.iloc[0]
    assert row["final_J_frac"] == "0.900 ± 0.010"
    assert row["mean_J_frac"] == "0.500 ± 0.100"
    assert row["final_J"] == "0.450 ± 0.050"
    assert row["adv_bias"] == "-0.0500 ± 0.0050"
    assert row["vtarget_bias"] == "0.010 ± 0"
    assert row["sps"] == "1500"  # no _ci column: the mean alone
    gym = R.summary_table(agg.rename(columns={"final_J_frac": "final_return",
                                              "final_J_frac_ci": "final_return_ci"}),
                          "ppo", ["lag"], tabular=False)
    assert "mean_J_frac" not in gym.columns and "final_J" not in gym.columns


# ---- report.plot_staleness: the x axis --------------------------------------------------------


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures the plotting functions save (they close them after saving)."""
    from matplotlib.figure import Figure

    figs = []
    real = Figure.savefig

    def spy(self, *a, **k):
        figs.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figs


def test_staleness_plot_puts_each_lag_at_its_own_category_in_numeric_order(tmp_path,
                                                                            saved_figures):
    """Pins ``plot_staleness``'s x data: the staleness values are categories (labels "0", "2",
    "16", evenly spaced) sorted as numbers (16 after 2), one line per estimator, the y values
    the cell means in that order."""
    agg = pd.DataFrame({"algo": "ppo", "env": "chain", "estimator": ["gae"] * 3 + ["vtrace"] * 3,
                        "lag": [16, 0, 2] * 2, "seeds": 5,
                        "final_J_frac": [0.3, 0.9, 0.8, 0.6, 0.95, 0.9],
                        "final_J_frac_ci": [0.01] * 6})
    axes = {"estimator": ["gae", "vtrace"], "lag": [0, 2, 16]}
    R.plot_staleness(agg, "ppo", axes, True, tmp_path / "s.png")
    ax = saved_figures[0].axes[0]
    assert [c.get_label() for c in ax.containers] == ["gae", "vtrace"]
    lines = [c.lines[0] for c in ax.containers]  # each errorbar's data line (not its caps)
    assert [list(ln.get_xdata()) for ln in lines] == [["0", "2", "16"]] * 2
    assert [list(ln.get_ydata()) for ln in lines] == [[0.9, 0.8, 0.3], [0.95, 0.9, 0.6]]
    assert ax.get_xlabel() == "lag"
    assert (tmp_path / "s.png").stat().st_size > 0


# ---- report.plot_curves: the J* line -----------------------------------------------------------


def test_curve_plot_draws_j_star_from_the_run_of_a_single_update(tmp_path, saved_figures):
    """Pins ``plot_curves``'s optimum line: J* is read from the curve's last row, so a run of
    one update (a one-row curve, ``iterations = max(1, ...)``) gets its dashed line at J_opt;
    the mean curve over seeds is plotted at the logged env steps."""
    results = [{"axes": {}, "curve": [{"env_steps": 32, "J": 0.2 + 0.1 * s,
                                                "J_opt": 0.75}]} for s in range(2)]
    R.plot_curves(results, "ppo", {}, True, tmp_path / "c.png")
    ax = saved_figures[0].axes[0]
    star = [ln for ln in ax.get_lines() if ln.get_label() == "J*"]
    assert len(star) == 1 and list(star[0].get_ydata()) == [0.75, 0.75]
    mean = [ln for ln in ax.get_lines() if ln.get_label() == "ppo"]
    assert list(mean[0].get_xdata()) == [32]
    assert mean[0].get_ydata()[0] == pytest.approx(0.25, abs=1e-15)
    assert not math.isnan(float(np.asarray(star[0].get_ydata())[0]))
