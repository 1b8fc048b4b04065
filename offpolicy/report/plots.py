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


def _color(plt, name):
    return plt.get_cmap("tab20")(_EST_ORDER.index(name) % 20)


def _grid_axes(plt, n, title):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    fig.suptitle(title)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


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
        for est in _EST_ORDER:
            pts = [(_positive(_m(r, "bias_target") ** 2), _positive(_m(r, "var")))
                   for r in records if r["cell"]["mdp"] == mdp and r["cell"]["estimator"] == est
                   and r["cell"]["stale"] == k_mid and r["cell"]["T"] == s.show_T
                   and r["cell"]["values"] == s.show_values]
            pts = [p for p in pts if not (math.isnan(p[0]) or math.isnan(p[1]))]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=12, color=_color(plt, est), label=est)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(mdp)
        ax.set_xlabel("bias^2 (vs target)")
        ax.set_ylabel("variance")
    axes[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "bias_variance.png"))
    _save(fig, paths[-1])
    plt.close(fig)

    # 2. MSE vs staleness, default slice
    fig, axes = _grid_axes(plt, len(mdps), f"MSE vs staleness k (lam={grid.fmt_param(s.show_lam)}, "
                           f"n={s.show_n}, clip={grid.fmt_param(s.show_clip[0])}, T={s.show_T}, "
                           f"values={s.show_values})")
    for ax, mdp in zip(axes, mdps, strict=True):
        for est in _EST_ORDER:
            pts = sorted((r["cell"]["stale"], _positive(_m(r, "mse"))) for r in records
                         if r["cell"]["mdp"] == mdp and r["cell"]["estimator"] == est
                         and grid.is_shown(s, r["cell"]))
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, color=_color(plt, est),
                        label=est)
        ax.set_yscale("log")
        ax.set_title(mdp)
        ax.set_xlabel("staleness k (improvement steps behind)")
        ax.set_ylabel("MSE")
    axes[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "mse_vs_staleness.png"))
    _save(fig, paths[-1])
    plt.close(fig)

    # 3. MSE vs lambda at k_mid, estimators with a lambda, their default clip
    fig, axes = _grid_axes(plt, len(mdps), f"MSE vs lambda (k={k_mid}, T={s.show_T}, "
                           f"values={s.show_values})")
    for ax, mdp in zip(axes, mdps, strict=True):
        for est in _EST_ORDER:
            spec = grid.ESTIMATORS[est]
            if not spec.uses_lam:
                continue
            pts = sorted((r["cell"]["lam"], _positive(_m(r, "mse"))) for r in records
                         if r["cell"]["mdp"] == mdp and r["cell"]["estimator"] == est
                         and r["cell"]["stale"] == k_mid and r["cell"]["T"] == s.show_T
                         and r["cell"]["values"] == s.show_values
                         and (not spec.uses_clip
                              or (r["cell"]["rho_clip"], r["cell"]["c_clip"]) == s.show_clip))
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, color=_color(plt, est),
                        label=est)
        ax.set_yscale("log")
        ax.set_title(mdp)
        ax.set_xlabel("lambda")
        ax.set_ylabel("MSE")
    axes[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "mse_vs_lambda.png"))
    _save(fig, paths[-1])
    plt.close(fig)
    return paths
