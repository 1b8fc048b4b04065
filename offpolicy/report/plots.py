"""PNG plots (matplotlib, Agg backend, no date or version metadata: byte-identical per seed)."""

from __future__ import annotations

import io
import math
import os

from . import grid
from .store import write_atomic

_EST_ORDER = tuple(grid.ESTIMATORS)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 80, "font.size": 8, "svg.hashsalt": "offpolicy",
                         "path.simplify": False})
    return plt


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    write_atomic(path, buf.getvalue())


def _m(rec, k):
    v = rec["metrics"].get(k)
    return float("nan") if v is None else float(v)


def _positive(x):
    return x if (x > 0 and math.isfinite(x)) else float("nan")


def _style(plt, name):
    i = _EST_ORDER.index(name)
    return {"color": plt.get_cmap("tab10")(i % 10), "linestyle": "-" if i < 10 else "--"}


def _limit(ax, values, axis="y"):
    """Log-scale limits that keep the bulk of the points readable: a decade beyond the 5th and
    95th percentiles of the positive finite values; exploding estimators (unclipped importance
    sampling) leave the chart instead of flattening everything else."""
    v = sorted(x for x in values if x > 0 and math.isfinite(x))
    if len(v) < 2:
        return
    lo, hi = v[int(0.05 * (len(v) - 1))], v[int(0.95 * (len(v) - 1))]
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lo / 10, hi * 10)


def _legend(fig, axes):
    """One legend for the figure, in the free corner below the last panel."""
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.68, 0.06), fontsize=7, ncol=2,
               frameon=False)


def _grid_axes(plt, n, title):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    fig.suptitle(title)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _mse_lines(plt, mdps, records, path, *, title, x_key, xlabel, keep):
    """One panel per MDP: MSE against cell[x_key], a line per estimator over the cells `keep`s."""
    fig, axes = _grid_axes(plt, len(mdps), title)
    for ax, mdp in zip(axes, mdps, strict=True):
        ys = []
        for est in _EST_ORDER:
            pts = sorted((r["cell"][x_key], _positive(_m(r, "mse"))) for r in records
                         if r["cell"]["mdp"] == mdp and r["cell"]["estimator"] == est
                         and keep(est, r["cell"]))
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=est,
                        **_style(plt, est))
                ys += [p[1] for p in pts]
        ax.set_yscale("log")
        _limit(ax, ys)
        ax.set_title(mdp)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("MSE")
    _legend(fig, axes)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_all(out_dir, records, profile) -> list[str]:
    plt = _plt()
    mdps = [m for m in profile.mdps if any(r["cell"]["mdp"] == m for r in records)]
    if not mdps:
        return []
    paths = []
    s = profile
    ks = sorted({r["cell"]["stale"] for r in records})
    k_mid = ks[len(ks) // 2]

    # 1. bias^2 vs variance per estimator (its whole lambda / n / clip grid), at k_mid
    fig, axes = _grid_axes(plt, len(mdps),
                           f"bias^2 vs variance over each estimator's grid (k={k_mid}, "
                           f"T={s.show_T}, values={s.show_values})")
    for ax, mdp in zip(axes, mdps, strict=True):
        xs, ys = [], []
        for est in _EST_ORDER:
            pts = [(_positive(_m(r, "bias_target") ** 2), _positive(_m(r, "var")))
                   for r in records if r["cell"]["mdp"] == mdp and r["cell"]["estimator"] == est
                   and r["cell"]["stale"] == k_mid and r["cell"]["T"] == s.show_T
                   and r["cell"]["values"] == s.show_values]
            pts = [p for p in pts if not (math.isnan(p[0]) or math.isnan(p[1]))]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=12, color=_style(plt, est)["color"],
                           marker="o" if _EST_ORDER.index(est) < 10 else "x", label=est)
                xs += [p[0] for p in pts]
                ys += [p[1] for p in pts]
        ax.set_xscale("log")
        ax.set_yscale("log")
        _limit(ax, xs, "x")
        _limit(ax, ys, "y")
        ax.set_title(mdp)
        ax.set_xlabel("bias^2 (vs target)")
        ax.set_ylabel("variance")
    _legend(fig, axes)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "bias_variance.png"))
    _save(fig, paths[-1])
    plt.close(fig)

    # 2. MSE vs staleness, default slice
    paths.append(_mse_lines(
        plt, mdps, records, os.path.join(out_dir, "mse_vs_staleness.png"),
        title=f"MSE vs staleness k (lam={grid.fmt_param(s.show_lam)}, n={s.show_n}, "
              f"clip={grid.fmt_param(s.show_clip[0])}, T={s.show_T}, values={s.show_values})",
        x_key="stale", xlabel="staleness k (improvement steps behind)",
        keep=lambda est, cell: grid.is_shown(s, cell)))

    # 3. MSE vs lambda at k_mid, estimators with a lambda, their default clip
    def at_k_mid_default_clip(est, cell):
        spec = grid.ESTIMATORS[est]
        return (spec.uses_lam and cell["stale"] == k_mid and cell["T"] == s.show_T
                and cell["values"] == s.show_values
                and (not spec.uses_clip or (cell["rho_clip"], cell["c_clip"]) == s.show_clip))

    paths.append(_mse_lines(
        plt, mdps, records, os.path.join(out_dir, "mse_vs_lambda.png"),
        title=f"MSE vs lambda (k={k_mid}, T={s.show_T}, values={s.show_values})",
        x_key="lam", xlabel="lambda", keep=at_k_mid_default_clip))
    return paths
