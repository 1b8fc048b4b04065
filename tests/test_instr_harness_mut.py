"""The harness's run files, tables and plots (issue 20, mutation pass): each test states an
input and the output expected by hand, at the helper that writes what a report quotes.

Written against the sampled mutmut survivors of group ``harness`` (reports/mutation/groups/
harness.md names the mutant each test kills); every test is fast; only the section-builder
test reads committed files (reports/harness)."""

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


# ---- findings: each sentence's figures, comparisons and quantifiers on tables known by hand -----

from offpolicy.harness import findings as F  # noqa: E402


def _write(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)


def _cells(*names, stem="g"):
    return [F.Cell(n, stem, {"estimator": n}) for n in names]


def test_touching_intervals_overlap_and_disjoint_ones_separate():
    """Pins ``_separate``: closed intervals that share an end point overlap (0); the sign says
    which lies above."""
    assert F._separate((1.0, 0.25), (0.5, 0.25)) == 0  # [0.75, 1.25] and [0.25, 0.75] touch
    assert F._separate((0.5, 0.25), (1.0, 0.25)) == 0
    assert F._separate((1.0, 0.25), (0.5, 0.125)) == 1  # [0.75, 1.25] above [0.375, 0.625]
    assert F._separate((0.5, 0.125), (1.0, 0.25)) == -1


def test_a_comparison_fails_its_condition_when_the_direction_the_text_relies_on_changes(
        tmp_path):
    """Pins ``Compare.evaluate``'s condition: expect=+1 holds when a is above b on seeds 0-4,
    fails when it is below or when they overlap; the condition names the expected word."""
    _write(tmp_path / "g_table.csv", [{"estimator": "a", "m": 1.0, "m_ci": 0.1},
                                      {"estimator": "b", "m": 0.5, "m_ci": 0.1},
                                      {"estimator": "c", "m": 0.95, "m_ci": 0.1}])
    tb = F.Tables(str(tmp_path))
    a, b, c = _cells("a", "b", "c")
    text, conds = F.Compare("m", a, b, expect=1).evaluate(tb)
    assert conds == [("m: a vs b expected higher on seeds 0–4", True), ("_status", None)]
    assert text == ("m: a 1.000 ± 0.100 vs b 0.500 ± 0.100 (seeds 0–4, separate): "
                    "**not replicated (second seed set not run)**")
    _, conds = F.Compare("m", b, a, expect=1).evaluate(tb)
    assert conds[0] == ("m: b vs a expected higher on seeds 0–4", False)
    _, conds = F.Compare("m", a, c, expect=0).evaluate(tb)
    assert conds == [("m: a vs c expected no difference on seeds 0–4", True), ("_status", 0)]
    _, conds = F.Compare("m", b, a, expect=-1).evaluate(tb)
    assert conds[0] == ("m: b vs a expected lower on seeds 0–4", True)
    # a labelled metric prints its label
    _write(tmp_path / "h_table.csv", [{"estimator": "a", "adv_rmse": 1.0, "adv_rmse_ci": 0.1},
                                      {"estimator": "b", "adv_rmse": 0.5, "adv_rmse_ci": 0.1}])
    text, _ = F.Compare("adv_rmse", *_cells("a", "b", stem="h")).evaluate(F.Tables(str(tmp_path)))
    assert text.startswith("advantage RMSE: a 1.000 ± 0.100 vs b 0.500 ± 0.100")


def test_the_replicated_verdict_is_lower_when_a_is_below_on_both_sets(tmp_path):
    """Pins the word of a replicated difference and its status (−1: a below b)."""
    for suffix, shift in (("", 0.0), ("_s100", 0.05)):
        _write(tmp_path / f"g_table{suffix}.csv",
               [{"estimator": "a", "m": 0.5 + shift, "m_ci": 0.1},
                {"estimator": "b", "m": 1.0, "m_ci": 0.1}])
    text, conds = F.Compare("m", *_cells("a", "b")).evaluate(F.Tables(str(tmp_path)))
    assert text.endswith("**a lower on both seed sets**")
    assert "a 0.550 ± 0.100 vs b 1.000 ± 0.100 (seeds 100–104, separate)" in text
    assert conds == [("_status", -1)]


def test_contains_zero_at_the_interval_end_and_in_every_cell(tmp_path):
    """Pins ``ContainsZero``: |mean| = half-width still contains 0 (a closed interval); when
    every cell contains it the sentence counts cells, settings and seed sets; expect=False
    turns the condition around; the first cell that excludes 0 is the one quoted."""
    _write(tmp_path / "g_table.csv", [{"estimator": "a", "m": -0.25, "m_ci": 0.25},
                                      {"estimator": "b", "m": 0.0, "m_ci": 0.5},
                                      {"estimator": "c", "m": 0.5, "m_ci": 0.25},
                                      {"estimator": "d", "m": -1.0, "m_ci": 0.25}])
    _write(tmp_path / "g_table_s100.csv", [{"estimator": "a", "m": 0.125, "m_ci": 0.25},
                                           {"estimator": "b", "m": 0.25, "m_ci": 0.25},
                                           {"estimator": "c", "m": 0.0, "m_ci": 0.25},
                                           {"estimator": "d", "m": 0.0, "m_ci": 0.25}])
    tb = F.Tables(str(tmp_path))
    text, conds = F.ContainsZero("m", _cells("a", "b"), "a and b").evaluate(tb)
    assert text == ("m of a and b: the interval contains 0 in every one of the 4 cells "
                    "(2 settings × seeds 0–4 and seeds 100–104)")
    assert conds == [("m contains 0 in every cell", True)]
    _, conds = F.ContainsZero("m", _cells("a", "b"), "x", expect=False).evaluate(tb)
    assert conds == [("m contains 0 in every cell", False)]
    text, conds = F.ContainsZero("m", _cells("a", "c", "d"), "x", expect=False).evaluate(tb)
    assert text == ("m of x: the interval contains 0 in 4 of 6 cells (seeds 0–4 and seeds "
                    "100–104); not in c, seeds 0–4: 0.500 ± 0.250")
    assert conds == [("m contains 0 in every cell", True)]


def test_figure_range_and_zero_everywhere_quote_the_tables(tmp_path):
    """Pins ``Figure`` (each cell on each seed set held), ``Range`` (min–max of the means per
    seed set; a table without its second seed set gives one range) and ``ZeroEverywhere`` (rows
    counted over every table and seed set; one nonzero row fails the condition)."""
    _write(tmp_path / "g_table.csv", [{"estimator": "a", "m": 0.25, "m_ci": 0.05, "z": 0},
                                      {"estimator": "b", "m": 0.75, "m_ci": 0.0, "z": 0}])
    _write(tmp_path / "g_table_s100.csv", [{"estimator": "a", "m": 0.5, "m_ci": 0.05, "z": 0},
                                           {"estimator": "b", "m": 1.0, "m_ci": 0.25, "z": 0}])
    _write(tmp_path / "h_table.csv", [{"estimator": "a", "m": 12.5, "m_ci": 1.5, "z": 2}])
    tb = F.Tables(str(tmp_path))
    text, conds = F.Figure("m", _cells("a", "b")).evaluate(tb)
    assert text == ("m — a: 0.250 ± 0.050 (seeds 0–4), 0.500 ± 0.050 (seeds 100–104); "
                    "b: 0.750 ± 0 (seeds 0–4), 1.000 ± 0.250 (seeds 100–104)")
    assert conds == []
    text, _ = F.Range("m", _cells("b", "a"), "two cells").evaluate(tb)
    assert text == "m over two cells: 0.250–0.750 (seeds 0–4), 0.500–1.000 (seeds 100–104)"
    text, _ = F.Range("m", [F.Cell("a", "h", {"estimator": "a"})], "one").evaluate(tb)
    assert text == "m over one: 12.500–12.500 (seeds 0–4)"
    text, conds = F.ZeroEverywhere("z", ["g"], "nothing relaxed").evaluate(tb)
    assert text == "nothing relaxed: z = 0 in 4 of 4 cells of `g`"
    assert conds == [("z = 0 in every cell", True)]
    text, conds = F.ZeroEverywhere("z", ["g", "h"], "w").evaluate(tb)
    assert text == "w: z = 0 in 4 of 5 cells of `g`, `h`"
    assert conds == [("z = 0 in every cell", False)]
    assert F.pm(12.5, 1.5) == "12.5 ± 1.5" and F.pm(-12.5, float("nan")) == "-12.5 ± 0"


def test_table_rows_match_numbers_within_round_off_and_strings_exactly(tmp_path):
    """Pins ``Tables.row``: a numeric column matches 8 and 8.0 (not 8.5); a string column
    matches by its text; no row or two rows is a LookupError naming the table; a missing table
    is None."""
    _write(tmp_path / "g_table.csv", [{"estimator": "a", "lag": 8, "m": 1.0},
                                      {"estimator": "a", "lag": 32, "m": 2.0},
                                      {"estimator": "b", "lag": 8, "m": 3.0}])
    tb = F.Tables(str(tmp_path))
    assert tb.row("g", {"estimator": "a", "lag": 8.0})["m"] == 1.0
    assert tb.row("g", {"estimator": "b", "lag": 8})["m"] == 3.0
    with pytest.raises(LookupError, match=r"g_table.csv: .* matches 0 rows"):
        tb.row("g", {"estimator": "a", "lag": 8.5})
    with pytest.raises(LookupError, match="matches 2 rows"):
        tb.row("g", {"estimator": "a"})
    assert tb.row("g", {"estimator": "a"}, "_s100") is None and tb.get("nope") is None


def test_lowest_seed_sentence_names_the_worst_seed_and_its_rank(tmp_path):
    """Pins ``LowestSeed``: the seed with the smallest metric in the cell, its value, its other
    figure and that figure's rank from the lowest among the cell's seeds (other cells ignored)."""
    _write(tmp_path / "g_runs.csv", [
        {"lag": 8, "seed": 0, "J": 0.9, "r": 1.5}, {"lag": 8, "seed": 1, "J": 0.2, "r": 1.25},
        {"lag": 8, "seed": 2, "J": 0.7, "r": 1.0}, {"lag": 0, "seed": 0, "J": 0.1, "r": 9.0}])
    text, conds = F.LowestSeed("g", {"lag": 8}, "J", "r",
                               "s{seed} {value} {other} rank {rank}/{n}").evaluate(
                                   F.Tables(str(tmp_path)))
    assert text == "s1 0.200 1.25 rank 2/3" and conds == []


def test_generate_check_and_write_round_trip_on_a_synthetic_readme(tmp_path, monkeypatch):
    """Pins ``render_section``/``generate``/``check``/``write``: bullets wrapped at 98 with a
    two-space continuation, a Note as a paragraph, a failed condition reported as "condition
    no longer holds", a changed body reported as differing, and --write restoring it."""
    _write(tmp_path / "g_table.csv", [{"estimator": "a", "m": 1.0, "m_ci": 0.1},
                                      {"estimator": "b", "m": 0.5, "m_ci": 0.1}])
    a, b = _cells("a", "b")
    monkeypatch.setattr(F, "SECTIONS", {"s": [F.Note("Lead-in:"),
                                              F.Compare("m", a, b, expect=-1),
                                              F.Hypothesis("it is so.")]})
    sections, failed = F.generate(str(tmp_path))
    # the first bullet line is 96 characters; one more word would make it 100 > 98
    body = ("Lead-in:\n\n- m: a 1.000 ± 0.100 vs b 0.500 ± 0.100 (seeds 0–4, separate): **not "
            "replicated (second seed set\n  not run)**\n"
            "- Hypothesis (not isolated by any experiment here): it is so.\n")
    assert sections == {"s": body}
    assert failed == ["s: m: a vs b expected lower on seeds 0–4"]
    begin, end = F._marks("s")
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{begin}\nold\n{end}\ntail\n", encoding="utf-8")
    problems = F.check(str(readme), str(tmp_path))
    assert problems[0] == "condition no longer holds: s: m: a vs b expected lower on seeds 0–4"
    assert len(problems) == 2 and "section 's' differs" in problems[1]
    F.write(str(readme), str(tmp_path))
    assert readme.read_text(encoding="utf-8") == f"# t\n{begin}\n{body}{end}\ntail\n"
    assert F.check(str(readme), str(tmp_path)) == problems[:1]
    readme.write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no markers for section 's'"):
        F.check(str(readme), str(tmp_path))


def test_findings_cli_prints_exit_2_and_check_exit_1_when_a_table_lacks_a_cell(
        tmp_path, monkeypatch, capsys):
    """Pins ``main``'s error exit: a sentence whose cell is not in its table (LookupError) is a
    one-line "findings: ..." on stderr, exit 2 when printing (malformed input) and exit 1
    with --check (the check failed)."""
    _write(tmp_path / "g_table.csv", [{"estimator": "a", "m": 1.0, "m_ci": 0.1}])
    (tmp_path / "README.md").write_text("# t\n", encoding="utf-8")
    monkeypatch.setattr(F, "SECTIONS", {"s": [F.Compare("m", *_cells("a", "b"))]})
    assert F.main(["--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("findings: g_table.csv: {'estimator': 'b'} matches 0 rows")
    assert len(err.strip().splitlines()) == 1
    assert F.main(["--check", "--dir", str(tmp_path)]) == 1


# ---- the harness CLI, the Gymnasium wrapper and the PPO config checks ---------------------------


def test_harness_help_documents_the_set_option():
    """Pins ``build_parser``'s --set: repeatable FIELD=V1[,V2] whose help says what it does."""
    from offpolicy.harness.__main__ import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--set FIELD=V1[,V2]" in text
    assert "any config field; several values make an axis" in text


def test_gym_reset_with_a_seed_seeds_the_action_space_with_that_seed():
    """Pins ``GymVecEnv.reset``: reset(seed=s) seeds the vector action space with s (the
    same draws as a wrapper built with seed s and reset without one), not the constructor's."""
    from offpolicy.harness.envs import make_env

    def draws(env, **kw):
        env.reset(**kw)
        return [env.envs.action_space.sample().tolist() for _ in range(16)]

    a = draws(make_env("cartpole", 2, seed=0), seed=7)
    b = draws(make_env("cartpole", 2, seed=7))
    c = draws(make_env("cartpole", 2, seed=0))
    assert a == b and a != c  # 32 binary draws: equal by chance with probability 2**-32


@pytest.mark.parametrize("over, field, message", [
    ({"max_episode_steps": 0}, "max_episode_steps", "must be None or an integer >= 1, got 0"),
    ({"estimator": "decoupled", "pg_loss": "impala"}, "pg_loss",
     "decoupled PPO has its own clipped surrogate; use auto, ppo_clip or prox_clip"),
])
def test_ppo_config_errors_name_the_field_and_say_why(over, field, message):
    """Pins ``ppo.check_config``'s time-limit check and the decoupled/impala message."""
    from offpolicy.harness import measure, ppo

    with pytest.raises(measure.ConfigError) as e:
        ppo.check_config(ppo.PPOConfig(**over))
    assert (e.value.field, e.value.detail) == (field, message)


def test_ppo_wall_time_is_the_time_since_the_run_started():
    """Pins ``train``'s clock: every row's wall_time lies between 0 and the time measured
    around the call (never the clock's absolute reading), non-decreasing, and sps =
    env_steps / wall_time. An inequality of two clock readings, not a speed."""
    import time

    from offpolicy.harness import ppo

    cfg = ppo.PPOConfig(env="chain", seed=0, num_envs=2, num_steps=4, total_steps=16, hidden=4,
                        update_epochs=1, num_minibatches=1, measure_exact=False)
    t0 = time.perf_counter()
    curve = ppo.train(cfg)["curve"]
    outside = time.perf_counter() - t0
    walls = [r["wall_time"] for r in curve]
    assert len(curve) == 2 and 0 < walls[0] <= walls[1] <= outside
    for r in curve:
        assert r["sps"] == pytest.approx(r["env_steps"] / r["wall_time"], rel=1e-12)


# ---- report.runs_frame / aggregate / write_report: from run files to the table ------------------


def test_a_grid_of_two_seeds_per_cell_aggregates_to_mean_sd_and_t_interval(tmp_path):
    """Pins ``runs_frame`` (axes and scalar summary fields become columns; lists do not),
    ``aggregate`` (per cell: seeds, mean, sd with ddof=1, half-width t_{0.975,1} sd/sqrt(2)
    with t_{0.975,1} = 12.7062047...) and ``write_report``'s file set. By hand: lag 0 seeds
    J 1 and 3 -> mean 2, sd sqrt(2), half-width 12.7062047; lag 4 seeds 0.5 and 0.5 -> sd 0."""
    def run(lag, seed, j):
        return {"algo": "ppo", "config": {"env": "chain", "seed": seed}, "axes": {"lag": lag},
                "summary": {"final_J": j, "final_J_frac": j / 4, "J_opt": 4.0, "curve": [1]},
                "curve": [{"env_steps": 8, "J": j, "J_opt": 4.0}]}

    results = [run(0, 0, 1.0), run(0, 1, 3.0), run(4, 0, 0.5), run(4, 1, 0.5)]
    df = R.runs_frame(results)
    assert list(df.columns) == ["algo", "env", "seed", "lag", "final_J", "final_J_frac", "J_opt"]
    agg = R.aggregate(df, ["lag"])
    assert agg["lag"].tolist() == [0, 4] and agg["seeds"].tolist() == [2, 2]
    assert agg["final_J"].tolist() == [2.0, 0.5] and agg["J_opt"].tolist() == [4.0, 4.0]
    assert agg["final_J_sd"].tolist() == pytest.approx([math.sqrt(2), 0.0], abs=1e-15)
    assert agg["final_J_ci"].tolist() == pytest.approx([12.706204736, 0.0], abs=1e-8)
    assert "seed_ci" not in agg.columns and "J_opt_ci" not in agg.columns
    paths = R.write_report(results, "ppo", {"lag": [0, 4]}, tmp_path, stem="s")
    assert sorted(paths) == ["curves_png", "runs_csv", "staleness_png", "table_csv", "table_md"]
    back = pd.read_csv(paths["table_csv"])
    assert back["final_J_ci"].tolist() == pytest.approx([12.706204736, 0.0], abs=1e-8)
    assert len(pd.read_csv(paths["runs_csv"])) == 4
    # final_J_frac: mean 0.5, half-width 12.7062 sd(0.25, 0.75)/sqrt(2) = 3.1766; three
    # decimals for means below 10 (the table's rule)
    md = open(paths["table_md"]).read()
    assert "| 0 | 2 | 0.500 ± 3.177 | 2.000 ± 12.706 |\n| 4 | 2 | 0.125 ± 0 | 0.500 ± 0 |" in md


def test_the_section_builders_called_now_generate_the_committed_findings(monkeypatch):
    """Pins every section builder (``_pg_loss`` ... ``_dqn_target_lag``) when it runs inside
    the test, not only when ``findings`` is imported: SECTIONS is rebuilt here from the
    builders (``_<section name>``), and the committed README must be what they generate. (A
    mutation tool that imports the module before activating a mutant builds SECTIONS from the
    original builders; this test calls them under the mutant.)"""
    import os

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "reports", "harness")
    rebuilt = {name: (items if name == "seed_sets" else getattr(F, f"_{name}")())
               for name, items in F.SECTIONS.items()}
    assert len(rebuilt) == 12
    monkeypatch.setattr(F, "SECTIONS", rebuilt)
    assert F.check(os.path.join(folder, "README.md"), folder) == []


def test_dqn_skips_updates_until_the_buffer_holds_one_sequence_and_still_returns_its_run():
    """Pins ``dqn.train``'s empty-buffer branch: with learning_starts 0, one env, replay ratio 1
    and n = 3, the update attempts of the first n - 1 = 2 steps find no complete sequence
    (valid starts = size - n + 1 <= 0) and are skipped, every later step makes one update: 24
    steps give 22 updates, and the run returns its curve and summary."""
    from offpolicy.harness import dqn

    cfg = dqn.DQNConfig(env="chain", seed=0, num_envs=1, total_steps=24, learning_starts=0,
                        batch_size=2, n=3, hidden=4, buffer_capacity=64, replay_ratio=1.0,
                        log_points=2, measure_exact=False)
    result = dqn.train(cfg)
    last = result["curve"][-1]
    assert (last["env_steps"], last["updates"]) == (24, 22)
    assert result["summary"]["env_steps"] == 24
