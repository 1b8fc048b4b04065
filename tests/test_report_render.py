"""The report's terminal tables at 80 columns (issue 21): every number shown whole, no line
wider than the terminal."""

from __future__ import annotations

import re

import pytest

from offpolicy.report import cli, grid, render

rich = pytest.importorskip("rich")

# one row per (MDP, staleness level), as render.best_by_staleness gives them; the longest
# settings the grid has (garnet_medium, puff_advantage with its three parameters)
BEST = [
    {"mdp": "garnet_medium", "k": 2, "kl": 0.0103, "tv": 0.0355,
     "A": "puff_advantage lam=0.5 rho=1 c=1", "A_mse": 1.39,
     "V": "vtrace lam=0.5 rho=inf c=inf", "V_mse": 4.44,
     "Q": "tree_backup lam=0.95", "Q_mse": 3.83},
    {"mdp": "garnet_small", "k": 8, "kl": 0.554, "tv": 0.441,
     "A": "gae lam=0.5", "A_mse": 0.223, "V": "vtrace lam=0.95 rho=1 c=1", "V_mse": 8.38},
]
NUMBERS = ["0.0103", "0.0355", "1.39", "4.44", "3.83", "0.554", "0.441", "0.223", "8.38"]


def _terminal(monkeypatch, capsys, width):
    """What ``report`` prints to a terminal ``width`` columns wide."""
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    cli._print_tables([], grid.PROFILES["quick"], {"best_by_staleness": BEST, "mc_cells": 0})
    return re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # colours and styles


@pytest.mark.parametrize("width", [80, 100])
def test_lowest_mse_table_shows_every_number_whole_at_80_columns(monkeypatch, capsys, width):
    out = _terminal(monkeypatch, capsys, width)
    lines = out.splitlines()
    assert max(len(x) for x in lines) <= width
    start = next(i for i, x in enumerate(lines) if "Lowest MSE" in x)
    table = "\n".join(lines[start:])
    cells = re.findall(r"[^\s│┃]+", table)
    for number in NUMBERS:  # a whole cell, not the head of a number cut by an ellipsis
        assert number in cells, number
    assert "…" not in table
    for word in ("puff_advantage", "vtrace", "tree_backup", "rho=inf", "c=inf", "lam=0.95"):
        assert word in table, word


def test_long_form_has_one_row_per_quantity_and_the_group_once():
    header, body = render.best_table(BEST, long=True)
    assert len(header) == 7
    assert [row[4] for row in body] == ["A", "V", "Q", "A", "V"]  # no Q cell in the second
    assert [row[0] for row in body] == ["garnet_medium", "", "", "garnet_small", ""]
    assert body[0][1:4] == ["2", "0.0103", "0.0355"] and body[3][1:4] == ["8", "0.554", "0.441"]
    assert [row[6] for row in body] == ["1.39", "4.44", "3.83", "0.223", "8.38"]


def test_markdown_keeps_the_wide_form():
    header, body = render.best_table(BEST)
    assert header == ["mdp", "k", "KL", "TV", "best A", "MSE", "best V", "MSE", "best Q", "MSE"]
    assert body[1][-2:] == ["-", "-"]
