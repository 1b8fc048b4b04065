"""The report's instruments pinned where mutation testing found them unguarded (issue 20):
the baseline writer's refusal, the Ctrl-C and --limit messages, resuming and the run
directory's name (in-process, so that mutmut sees these paths), the code fingerprint, the
terminal table on a narrow terminal, number formatting, the plots' titles and the cells each
plot draws, and the findings' marker error.

Every expected value is worked out by hand from the profile's settings or the cells given."""

from __future__ import annotations

import io
import os
import re
import shutil

import pytest

from offpolicy.report import cli, compute, findings, grid, plots, render, run

QUICK = grid.PROFILES["quick"]
CHAIN_GAE = ["--mdps", "chain", "--estimators", "gae"]


# ---- findings: the markers ---------------------------------------------------------------------


def test_section_without_markers_names_the_missing_begin_marker():
    """findings.section: no markers (or the end before the begin) -> ValueError naming the
    begin marker's first 24 characters, ``<!-- findings:begin (gen``, then an ellipsis."""
    msg = "the README has no findings markers (<!-- findings:begin (gen…)"
    with pytest.raises(ValueError) as e:
        findings.section("a README with no marker at all")
    assert str(e.value) == msg
    with pytest.raises(ValueError) as e:
        findings.section(findings.END + "\n" + findings.BEGIN + "\n")
    assert str(e.value) == msg


def test_section_is_the_text_between_the_markers_after_the_begin_line():
    text = "intro\n" + findings.BEGIN + "\nline one\nline two\n" + findings.END + "\ntail\n"
    i, j = findings.section(text)
    assert text[i:j] == "line one\nline two\n"


# ---- the command line in-process: baseline writer, Ctrl-C, --limit, resume ---------------------


def _records(cells, z_of=lambda c: 0.0):
    """Records for ``cells`` as compute() returns them; Monte Carlo cells get z_mse = z_of(c)."""
    out = []
    for c in cells:
        m = {"mse": 1.0, "bias_mean": 0.0}
        if c["mc"]:
            m.update(mc_mse=1.5, mc_bias_mean=0.0, z_mse=z_of(c), z_bias=0.0)
        out.append({"id": grid.cell_id(c), "cell": c, "metrics": m})
    return out


def test_update_baseline_refuses_an_estimator_that_disagrees_with_its_exact_moments(
        tmp_path, monkeypatch, capsys):
    """cli._write_baseline with a self-consistency regression: chain x gae in the quick profile
    is 3 staleness levels x 2 value qualities x 2 lambdas = 12 cells; one Monte Carlo cell at
    z = 6 > 5 standard errors -> exit 1, the regression printed with the cell, "baseline NOT
    rewritten", and no results.json written."""
    cells = grid.cells(QUICK, ["chain"], ["gae"])
    assert len(cells) == 12
    bad = next(c for c in cells if c["mc"])
    monkeypatch.setattr(cli, "compute", lambda args, profile, cs, run_dir, progress: _records(
        cs, lambda c: 6.0 if grid.cell_id(c) == grid.cell_id(bad) else 0.0))
    out_dir = tmp_path / "base"
    rc = cli.main(["--update-baseline", str(out_dir), "--no-progress", "--no-plots", *CHAIN_GAE])
    out = capsys.readouterr().out
    assert rc == 1
    assert "check FAILED: 1 regression(s) against (the exact moments) (1 of 12 cells)" in out
    assert f"cell {grid.cell_id(bad)}" in out
    assert "mc_mse vs exact mse" in out and "|z| <= 5 (z = 6)" in out
    assert out.rstrip().endswith(f"baseline NOT rewritten: {out_dir}")
    assert not (out_dir / "results.json").exists()


def _tag(seed, mdps=("chain",), ests=("gae",)):
    """The run directory's name, from its definition: profile, grid fingerprint, code."""
    return f"quick-{grid.fingerprint(QUICK, seed, list(mdps), list(ests))}-{run.code_fingerprint()}"


def test_ctrl_c_keeps_the_cells_and_says_so_on_stderr_only(tmp_path, monkeypatch, capsys):
    """cli.main on KeyboardInterrupt while computing: exit 130, one message on stderr naming
    the run directory, nothing on stdout."""
    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "compute", interrupted)
    out_dir = tmp_path / "out"
    assert cli.main(["--out", str(out_dir), "--no-progress", *CHAIN_GAE]) == 130
    cap = capsys.readouterr()
    run_dir = os.path.join(str(out_dir), "_runs", _tag(0))
    assert cap.out == ""
    assert cap.err == (f"\ninterrupted: finished cells are kept in {run_dir}; run the same "
                       "command again to resume\n")


def _report(tmp_path, capsys, *args):
    """One in-process report call on sb_loop x gae computing at most one new cell; returns
    {run directory name: cells stored}."""
    rc = cli.main(["--out", str(tmp_path / "out"), "--mdps", "sb_loop", "--estimators", "gae",
                   "--limit", "1", "--no-progress", "--executor", "serial", *args])
    assert rc == 0
    err = capsys.readouterr().err
    assert "stopped after --limit 1 new cells" in err and "run again to resume" in err
    runs = tmp_path / "out" / "_runs"
    return {d.name: len((d / "cells.jsonl").read_text().splitlines())
            for d in sorted(runs.iterdir())}


def test_same_command_resumes_another_seed_or_code_starts_afresh_in_process(
        tmp_path, capsys, monkeypatch):
    """The run directory is quick-<grid and seed fingerprint>-<code fingerprint>: the same
    command adds its next cell to the same directory; --fresh empties it; another seed, or
    another code fingerprint, never sees the old cells."""
    first = _report(tmp_path, capsys, "--seed", "0")
    assert first == {_tag(0, ["sb_loop"]): 1}
    assert _report(tmp_path, capsys, "--seed", "0") == {_tag(0, ["sb_loop"]): 2}
    assert _report(tmp_path, capsys, "--seed", "0", "--fresh") == {_tag(0, ["sb_loop"]): 1}
    other = _report(tmp_path, capsys, "--seed", "1")
    assert _tag(1, ["sb_loop"]) != _tag(0, ["sb_loop"])
    assert other == {_tag(0, ["sb_loop"]): 1, _tag(1, ["sb_loop"]): 1}
    monkeypatch.setattr(run, "code_fingerprint", lambda: "0123456789ab")
    changed = _report(tmp_path, capsys, "--seed", "0")
    new = f"quick-{grid.fingerprint(QUICK, 0, ['sb_loop'], ['gae'])}-0123456789ab"
    assert changed[new] == 1 and len(changed) == 3


# ---- the code fingerprint: which files it covers -----------------------------------------------

# the modules a cell's computation loads and that compute figures (tests/test_instr_report.py
# derives them in a fresh interpreter; here they are written out so the test runs in-process)
COMPUTING = ("offpolicy/_checks.py", "offpolicy/mdp.py", "offpolicy/policies.py",
             "offpolicy/exact.py", "offpolicy/sampler.py", "offpolicy/moments.py",
             "offpolicy/registry.py", "offpolicy/report/compute.py",
             "offpolicy/report/montecarlo.py", "offpolicy/report/cell.py",
             "offpolicy/report/grid.py", "estimators/numpy.py", "estimators/_validate.py",
             "estimators/_types.py")


def test_code_fingerprint_changes_with_each_computing_module_and_only_those(tmp_path,
                                                                            monkeypatch):
    """run.code_fingerprint over a copy of the tree (run.__file__ pointed into it): 12 hex
    digits; one comment appended to any computing module changes it, removing the comment
    restores it; an edit of the command line (cli.py) or the plots does not change it; a
    computing module removed changes it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(run.__file__)))
    root = os.path.dirname(root)
    for rel in (*COMPUTING, "offpolicy/report/cli.py", "offpolicy/report/plots.py"):
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        shutil.copyfile(os.path.join(root, rel), tmp_path / rel)
    monkeypatch.setattr(run, "__file__", str(tmp_path / "offpolicy" / "report" / "run.py"))
    base = run.code_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{12}", base)
    for rel in COMPUTING:
        text = (tmp_path / rel).read_bytes()
        (tmp_path / rel).write_bytes(text + b"# edited\n")
        assert run.code_fingerprint() != base, rel
        (tmp_path / rel).write_bytes(text)
        assert run.code_fingerprint() == base, rel
    for rel in ("offpolicy/report/cli.py", "offpolicy/report/plots.py"):
        (tmp_path / rel).write_bytes((tmp_path / rel).read_bytes() + b"# edited\n")
        assert run.code_fingerprint() == base, rel
    os.remove(tmp_path / "estimators/_types.py")  # a computing module gone: another tree
    assert run.code_fingerprint() != base


# ---- the terminal table on a narrow terminal ---------------------------------------------------


def _table(width):
    buf = io.StringIO()
    from rich.console import Console

    render.print_table(["estimator", "k", "MSE"],
                       [["tree_backup lam=0.95", "2", "0.0103"], ["gae", "16", "123.456"]],
                       "T", console=Console(width=width, file=buf, color_system=None))
    return buf.getvalue()


@pytest.mark.parametrize("width", [22, 18])
def test_narrow_terminal_folds_names_and_keeps_numbers_whole_and_right_aligned(width):
    """render.print_table: the numeric columns (k, MSE) keep their full width on one line,
    right-justified (k = "2" is padded on the left to the width of "16"); only the name
    column folds; no line is wider than the terminal."""
    pytest.importorskip("rich")
    out = _table(width)
    lines = out.splitlines()
    assert max(len(x) for x in lines) <= width
    assert any(re.fullmatch(r"│[^│]*│  2 │  0\.0103 │", x) for x in lines), out
    assert any(re.fullmatch(r"│[^│]*│ 16 │ 123\.456 │", x) for x in lines), out
    assert "…" not in out
    assert "tree_backup lam=0.95" not in out  # the name column folded


def test_a_number_is_never_cut_even_when_the_table_no_longer_fits():
    """render.print_table at 16 columns, narrower than the numeric columns need (the name
    column is already down to its border): the numbers still show whole, never "123.4…"."""
    pytest.importorskip("rich")
    out = _table(16)
    cells = re.findall(r"[^\s│┃]+", out)
    assert "0.0103" in cells and "123.456" in cells, out
    assert "…" not in out


# ---- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("x,digits,text", [
    (2 / 3, 3, "0.667"), (2 / 3, 2, "0.67"), (0.001, 3, "0.001"), (1234.5678, 3, "1.23e+03"),
    (9.87654, 1, "1e+01"), (12345.678, 3, "1.23e+04"), (0.0001234, 3, "1.23e-04"),
    (123456.0, 1, "1.2e+05"), (0.0, 3, "0"), (None, 3, "-"), (float("nan"), 3, "nan"),
    (float("inf"), 3, "inf"), (-2 / 3, 3, "-0.667"),
])
def test_short_formats_with_the_requested_significant_digits(x, digits, text):
    """render.short: in [1e-3, 1e4) `digits` significant digits (%g), outside it scientific
    with digits - 1 (at least 1) decimals; 0, None, nan and inf by name."""
    assert render.short(x, digits) == text


# ---- the plots: titles and which cells each plot draws -----------------------------------------


def _plot_records():
    """chain x {gae, nstep} of the quick profile; MSE = 1 + the cell's index, bias 0.5,
    variance 2 (every figure positive: every selected cell is drawn)."""
    cells = grid.cells(QUICK, ["chain"], ["gae", "nstep"])
    return [{"id": grid.cell_id(c), "cell": c,
             "metrics": {"mse": 1.0 + i, "bias_target": 0.5, "var": 2.0}}
            for i, c in enumerate(cells)]


def test_plots_have_their_titles_and_draw_the_selected_cells(tmp_path, monkeypatch):
    """plots.plot_all on chain x {gae, nstep}: staleness levels 0, 2, 8 -> k_mid = 2.
    mse_vs_lambda draws gae only (nstep has no lambda) at k = 2, T = 16, values = stale, clip
    1/1: lambda 0.5 and 0.95; mse_vs_staleness draws the shown slice (gae lambda 0.95, nstep
    n = 8) at k = 0, 2, 8; bias_variance draws every lambda/n of both at k = 2."""
    pytest.importorskip("matplotlib")
    figs = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.__setitem__(
        os.path.basename(path), fig))
    recs = _plot_records()
    paths = plots.plot_all(str(tmp_path), recs, QUICK)
    assert [os.path.basename(p) for p in paths] == [
        "bias_variance.png", "mse_vs_staleness.png", "mse_vs_lambda.png"]
    titles = {n: f._suptitle.get_text() for n, f in figs.items()}
    assert titles == {
        "bias_variance.png": "bias^2 vs variance over each estimator's grid "
                             "(k=2, T=16, values=stale)",
        "mse_vs_staleness.png": "MSE vs staleness k (lam=0.95, n=8, clip=1, T=16, "
                                "values=stale)",
        "mse_vs_lambda.png": "MSE vs lambda (k=2, T=16, values=stale)",
    }
    mse = {grid.cell_id(r["cell"]): r["metrics"]["mse"] for r in recs}

    def mse_at(est, **axes):
        return [mse[grid.cell_id(c)] for c in grid.cells(QUICK, ["chain"], [est])
                if all(c[a] == v for a, v in axes.items())]

    (ax,) = [a for a in figs["mse_vs_lambda.png"].axes if a.get_visible() and a.get_title()]
    assert ax.get_title() == "chain"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines) == ["gae"]
    assert list(lines["gae"].get_xdata()) == [0.5, 0.95]
    assert list(lines["gae"].get_ydata()) == (mse_at("gae", stale=2, T=16, values="stale",
                                                     lam=0.5)
                                              + mse_at("gae", stale=2, T=16, values="stale",
                                                       lam=0.95))

    (ax,) = [a for a in figs["mse_vs_staleness.png"].axes if a.get_visible() and a.get_title()]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert sorted(lines) == ["gae", "nstep"]
    assert list(lines["gae"].get_xdata()) == [0, 2, 8]
    assert list(lines["gae"].get_ydata()) == mse_at("gae", T=16, values="stale", lam=0.95)
    assert list(lines["nstep"].get_ydata()) == mse_at("nstep", T=16, values="stale", n=8)

    (ax,) = [a for a in figs["bias_variance.png"].axes if a.get_visible() and a.get_title()]
    counts = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert counts == {"gae": 2, "nstep": 2}  # lambda 0.5, 0.95; n 1, 8


# ---- --help ------------------------------------------------------------------------------------


def test_help_describes_quiet(monkeypatch, capsys):
    """--help documents --quiet as suppressing the terminal tables."""
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert re.search(r"--quiet\s+no tables on the terminal\n", out), out


# ---- seed-21 sample: the MDP suite, the run seed's reach, the Monte Carlo streams --------------


def test_the_mdp_suite_is_the_one_the_report_readme_describes():
    """compute.build_mdp against reports/README.md's "What is computed": garnet_medium is a
    Garnet 25x4 with branching 3 and 2 terminal states, reward noise 0.2, gamma 0.95; gridworld
    is 5x5 with slip 0.1 (an intended move is taken with probability 0.9 + 0.1/4 = 0.925 from a
    cell whose four neighbours are all inside the grid), gamma 0.95; garnet_small 10x3,
    branching 3, gamma 0.9; chain 10 states, gamma 0.95; sb_loop gamma 1."""
    import numpy as np

    gm = compute.build_mdp("garnet_medium")
    assert gm.P.shape == (25, 4, 25) and gm.gamma == 0.95 and int(gm.terminal.sum()) == 2
    live = ~gm.terminal
    assert ((gm.P[live] > 0).sum(axis=-1) == 3).all()  # branching 3 at every live (s, a)
    assert np.allclose(gm.reward_std[live], 0.2)
    gs = compute.build_mdp("garnet_small")
    assert gs.P.shape == (10, 3, 10) and gs.gamma == 0.9 and not gs.terminal.any()
    assert ((gs.P > 0).sum(axis=-1) == 3).all()
    gw = compute.build_mdp("gridworld")
    assert gw.P.shape == (25, 4, 25) and gw.gamma == 0.95
    # cell (2, 2) = state 12; RIGHT = 1 moves to (3, 2) = state 13
    assert gw.P[12, 1, 13] == pytest.approx(0.925, abs=1e-12)
    assert gw.P[12, 1, 12] == 0.0
    ch = compute.build_mdp("chain")
    assert ch.P.shape[0] == 10 and ch.gamma == 0.95
    assert compute.build_mdp("sb_loop").gamma == 1.0
    with pytest.raises(ValueError, match="unknown MDP 'nope'; known: garnet_small"):
        compute.build_mdp("nope")


def _cell(**kw):
    c = dict(mdp="chain", estimator="gae", lam=0.95, n=None, rho_clip=None, c_clip=None,
             stale=2, T=16, values="stale", mc=False)
    c.update(kw)
    return c


def test_noisy_values_follow_the_run_seed():
    """compute.compute_cell with values = "noisy": the critic's noise is drawn from the run
    seed, so the same seed gives the same exact figures and another seed other ones."""
    c = _cell(values="noisy")
    a0, a0_again, a1 = (compute.compute_cell(c, s, 0)["metrics"]["mse"] for s in (0, 0, 1))
    assert a0 == a0_again
    assert a0 != a1


def test_each_cell_draws_its_own_monte_carlo_segments():
    """montecarlo.mc_metrics: V-trace with rho = c = inf and per_decision_is are the same
    estimator (reports/README.md, Finding 3: "the same cells"), so their exact columns agree;
    their Monte Carlo columns come from the segments of each cell's own stream, so the
    figures differ (by sampling error, here 0.27 standard errors; one shared stream would make
    them equal up to round-off) and each is within 5 standard errors of the exact MSE."""
    inf = float("inf")
    a = compute.compute_cell(_cell(estimator="vtrace", rho_clip=inf, c_clip=inf, mc=True),
                             0, 2000)["metrics"]
    b = compute.compute_cell(_cell(estimator="per_decision_is", mc=True), 0, 2000)["metrics"]
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-12)
    assert a["mc_n"] == b["mc_n"] == 2000
    se = max(a["mc_mse_se"], b["mc_mse_se"])
    assert abs(a["mc_mse"] - b["mc_mse"]) > 1e-3 * se
    assert abs(a["mc_bias_mean"] - b["mc_bias_mean"]) > 1e-3 * max(a["mc_bias_mean_se"],
                                                                   b["mc_bias_mean_se"])
    for m in (a, b):
        assert abs(m["mc_mse"] - m["mse"]) <= 5 * m["mc_mse_se"]


# ---- seed-21 sample: the findings' conditions --------------------------------------------------


@pytest.fixture(scope="module")
def table():
    # the checkout's committed table (findings.DEFAULT_TABLE points next to the installed
    # package, which an installed wheel does not carry)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return findings.load(os.path.join(here, "reports", "full", "results.csv"))


def _edited(t, metric, value, **axes):
    """A copy of the table with ``metric`` of the one row matching ``axes`` set to ``value``."""
    t = [dict(r) for r in t]
    hits = [r for r in t if all(r[a] == v for a, v in axes.items())]
    assert len(hits) == 1
    hits[0][metric] = value
    return t


def _condition(t, number, description):
    f = next(f for f in findings.findings(t) if f.title == number)
    return dict(f.conditions)[description]


SLICE = dict(lam="1", k="8", T="16", V="exact")


def test_clipping_condition_needs_both_mdps(table):
    """Finding 3's "clipping lowers the MSE on both MDPs" holds on the committed table, and
    fails when V-trace (rho = c = 1) on chain is made worse than unclipped per-decision IS there
    while garnet_small still holds."""
    what = "clipping lowers the MSE on both MDPs"
    assert _condition(table, "3", what) is True
    p_ch = findings.cell(table, mdp="chain", estimator="per_decision_is", **SLICE)["mse"]
    t = _edited(table, "mse", 2 * p_ch + 1, mdp="chain", estimator="vtrace", rho="1", c="1",
                **SLICE)
    assert _condition(t, "3", what) is False


def test_exact_critic_rho_2_condition_is_strict(table):
    """Finding 4's "exact-critic rho=2 raises MSE" needs rho = 2's MSE strictly above
    rho = 1's (garnet_medium, k = 8, vtrace lam 1, c 1, T 16, exact critic): equal MSEs fail."""
    what = "exact-critic rho=2 raises MSE (finding 1's direction)"
    assert _condition(table, "4", what) is True
    axes = dict(mdp="garnet_medium", k="8", estimator="vtrace", lam="1", c="1", T="16",
                V="exact")
    r1 = findings.cell(table, rho="1", **axes)["mse"]
    t = _edited(table, "mse", r1, rho="2", **axes)
    assert _condition(t, "4", what) is False


# ---- seed-21 sample: tables, JSON, plot labels -------------------------------------------------


def test_plain_table_pads_each_column_to_its_widest_entry_and_rejects_ragged_rows():
    """render.plain_table (the fallback without rich): columns two spaces apart, each as wide
    as its widest entry, a dash rule under the header, trailing spaces stripped."""
    text = render.plain_table(["mdp", "MSE"], [["chain", "0.5"], ["sb_loop", "12.25"]], "T")
    assert text == ("T\n"
                    "mdp      MSE\n"
                    "-------  -----\n"
                    "chain    0.5\n"
                    "sb_loop  12.25\n")
    with pytest.raises(ValueError):
        render.plain_table(["mdp", "MSE"], [["chain"]])


def test_detailed_staleness_table_names_the_largest_staleness_in_its_extra_columns():
    """render.staleness_table(detail=True) on quick-profile cells with k = 0, 2, 8: the bias,
    fixed-point gap and modulus columns are those of k = 8, the largest."""
    recs = [{"id": grid.cell_id(c), "cell": c,
             "metrics": {"mse": 1.0 + c["stale"], "bias_target": 0.5, "fp_gap": 0.25,
                         "modulus": 0.125}}
            for c in grid.cells(QUICK, ["chain"], ["gae"])]
    header, body = render.staleness_table(recs, QUICK, detail=True)
    assert header == ["mdp", "estimator", "MSE k=0", "MSE k=2", "MSE k=8", "bias_target k=8",
                      "fp_gap k=8", "modulus k=8", "MC max|z|"]
    assert body == [["chain", "gae", "1", "3", "9", "0.5", "0.25", "0.125", ""]]


def test_results_json_keeps_every_cell_under_cells():
    """render.to_json: the document's "cells" list holds each record's id, cell and metrics
    (check.load_baseline reads the baseline's cells from there)."""
    import json

    c = _cell()
    rec = {"id": grid.cell_id(c), "cell": c, "metrics": {"mse": 0.5}}
    doc = json.loads(render.to_json([rec], {"profile": "quick"}, {}))
    assert [x["id"] for x in doc["cells"]] == [grid.cell_id(c)]
    assert doc["cells"][0]["metrics"]["mse"] == 0.5


def test_plot_axes_are_labelled(tmp_path, monkeypatch):
    """plots.plot_all: bias_variance's axes read "bias^2 (vs target)" / "variance"; the MSE
    plots' y axis "MSE", x axis "staleness k (improvement steps behind)" and "lambda"."""
    pytest.importorskip("matplotlib")
    figs = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.__setitem__(
        os.path.basename(path), fig))
    plots.plot_all(str(tmp_path), _plot_records(), QUICK)
    labels = {n: [(a.get_xlabel(), a.get_ylabel()) for a in f.axes if a.get_visible()
                  and a.get_title()] for n, f in figs.items()}
    assert labels == {
        "bias_variance.png": [("bias^2 (vs target)", "variance")],
        "mse_vs_staleness.png": [("staleness k (improvement steps behind)", "MSE")],
        "mse_vs_lambda.png": [("lambda", "MSE")],
    }


# ---- seed-22 sample ----------------------------------------------------------------------------


def test_a_baseline_that_is_not_an_object_is_named_with_its_json_type(tmp_path):
    """check.load_baseline on a results.json holding a JSON list: one line naming the file
    and the type found ("list")."""
    from offpolicy.report import check

    (tmp_path / "results.json").write_text("[]\n")
    with pytest.raises(check.BaselineError) as e:
        check.load_baseline(str(tmp_path))
    assert str(e.value) == (f"{tmp_path / 'results.json'}: expected a JSON object with 'meta' "
                            "and 'cells', got list")


def test_limit_below_one_is_one_usage_line_naming_the_program(capsys):
    """--limit 0: exit 2, one line "python -m offpolicy.report: error: --limit: ..." (the
    program's name as a user types it, not the test runner's)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["--limit", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("python -m offpolicy.report: error: --limit: must be "
                                       ">= 1, got 0 (--help for usage)\n")


def test_help_describes_address(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ("--address ADDRESS with --executor ray: join this cluster (auto or HOST:PORT) "
            "instead of starting a local Ray instance") in out


@pytest.mark.parametrize("mdps,ests,expected", [
    (None, None, True), (["chain"], None, False), (None, ["gae"], False),
    (["chain"], ["gae"], False)])
def test_gradient_section_runs_for_the_whole_grid_only(mdps, ests, expected):
    """cli._with_gradients: the quick profile has a gradient grid; any subset of MDPs or of
    estimators (either one alone) leaves the section out."""
    from types import SimpleNamespace

    assert cli._with_gradients(SimpleNamespace(mdps=mdps, estimators=ests), QUICK) is expected


def test_p3o_value_head_follows_the_critic_quality():
    """compute.exact_metrics for P3O (offpolicy/report/cell.py: the value head's reward means
    are the target's with an exact critic, the behaviour's with a stale one): at k = 0 target
    and behaviour coincide, so both qualities give the same figures; at k = 2 they differ."""
    c = _cell(estimator="p3o", lam=None)
    same = [compute.compute_cell(dict(c, stale=0, values=v), 0, 0)["metrics"]["mse"]
            for v in ("exact", "stale")]
    assert same[0] == same[1]
    k2 = [compute.compute_cell(dict(c, stale=2, values=v), 0, 0)["metrics"]["mse"]
          for v in ("exact", "stale")]
    assert k2[0] != pytest.approx(k2[1], rel=1e-6)


def test_mse_lines_are_drawn_with_small_circle_markers(tmp_path, monkeypatch):
    """plots._mse_lines: each estimator's line carries circle markers of size 3 (the style
    the committed PNGs use)."""
    pytest.importorskip("matplotlib")
    figs = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.__setitem__(
        os.path.basename(path), fig))
    plots.plot_all(str(tmp_path), _plot_records(), QUICK)
    for name in ("mse_vs_staleness.png", "mse_vs_lambda.png"):
        lines = [ln for a in figs[name].axes for ln in a.get_lines()]
        assert lines and all((ln.get_marker(), ln.get_markersize()) == ("o", 3) for ln in lines)


def _markdown():
    recs = [{"id": grid.cell_id(c), "cell": c,
             "metrics": {"mse": 1.0, "bias_target": 0.5, "fp_gap": 0.25, "modulus": 0.125}}
            for c in grid.cells(QUICK, ["chain"], ["gae"])]
    summ = {"best_by_staleness": [], "mc_cells": 0, "mc_max_abs_z": None,
            "frontier": [{"mdp": "chain", "estimator": "gae", "k": 2, "setting": "lam=0.95",
                          "bias2": 0.25, "var": 0.75, "mse": 1.0}]}
    meta = {"profile": "quick", "seed": 0, "command": "python -m offpolicy.report", "cells": 12}
    return render.to_markdown(recs, QUICK, meta, summ)


def test_markdown_lists_each_metric_definition_on_its_own_line():
    lines = _markdown().splitlines()
    for k, v in render.METRIC_HELP.items():
        assert f"- `{k}`: {v}" in lines, k


def test_markdown_frontier_rows_show_the_staleness_level():
    """results.md's frontier table: one row per frontier point, k as the number."""
    assert "| chain | gae | 2 | lam=0.95 | 0.25 | 0.75 | 1 |" in _markdown().splitlines()


def test_the_pool_starts_its_workers_single_threaded(monkeypatch):
    """run.run_cells hands the pool report._blas.single_thread as the workers' initialiser
    (so one BLAS thread per worker process) and the code fingerprint."""
    from offpolicy.report import _blas

    seen = {}

    class Recorder:
        def __init__(self, executor, jobs, **kw):
            seen.update(kw, executor=executor, jobs=jobs)
            self.workers = jobs

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def imap_unordered(self, fn, work):
            return iter([])

    monkeypatch.setattr(run, "Pool", Recorder)

    class Store(dict):
        def add(self, rec):
            self[rec["id"]] = rec

    run.run_cells([_cell()], Store(), seed=0, mc_samples=10, jobs=2, progress=False)
    assert seen["init"] is _blas.single_thread
    assert seen["fingerprint"] is run.code_fingerprint
    assert (seen["executor"], seen["jobs"]) == ("process", 2)
