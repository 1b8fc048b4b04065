"""Tables and plots of a grid: final performance and estimator error against staleness,
per correction (matplotlib, Agg backend).

Every cell of a table is the mean over seeds and the half-width of its 95% confidence
interval, a Student t-interval: ``mean ± t_{0.975, n-1} sd / sqrt(n)`` with ``n`` seeds
(``<metric>_ci`` in the CSV, next to ``<metric>_sd``).  :func:`compare` says whether two
cells' intervals separate; a finding "X beats Y" is claimed only where they do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

CI_LEVEL = 0.95

# knobs read as "staleness", in the order we prefer for the x axis of the plots
STALENESS = {
    "ppo": ("lag", "update_epochs", "num_minibatches", "refresh"),
    "dqn": ("min_age", "max_age", "buffer_capacity", "replay_ratio", "n"),
}
CORRECTION = "estimator"


def metric_names(algo: str, tabular: bool) -> dict:
    """The columns the table and plots show, by role."""
    perf = "final_J_frac" if tabular else "final_return"
    if algo == "ppo":
        return {"perf": perf, "rmse": "adv_rmse", "bias": "adv_bias",
                "extra": ["vtarget_rmse", "vtarget_bias"]}
    return {"perf": perf, "rmse": "qtarget_rmse", "bias": "qtarget_bias",
            "extra": ["qtarget_lag", "qtarget_value", "qtarget_corr", "sample_age"]}


def runs_frame(results: list[dict]) -> pd.DataFrame:
    rows = []
    for r in results:
        row = {"algo": r["algo"], "env": r["config"]["env"], "seed": r["config"]["seed"]}
        row.update(r.get("axes", {}))
        row.update({k: v for k, v in r["summary"].items() if not isinstance(v, (list, dict))})
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(df: pd.DataFrame, axis_keys: list[str]) -> pd.DataFrame:
    keys = [k for k in ["algo", "env", *axis_keys] if k in df.columns]
    skip = set(keys) | {"seed", "J_opt"}
    metrics = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
    g = df.groupby(keys, sort=False, dropna=False)
    out = g[metrics].mean()
    sd = g[metrics].std(ddof=1)
    count = g[metrics].count()  # seeds with a value (a NaN metric is left out of its interval)
    ci = pd.DataFrame(t_halfwidth(sd.to_numpy(), count.to_numpy()), index=sd.index,
                      columns=[f"{c}_ci" for c in metrics])
    sd.columns = [f"{c}_sd" for c in sd.columns]
    out = pd.concat([out, sd, ci], axis=1)
    out.insert(0, "seeds", g.size())
    if "J_opt" in df.columns:
        out["J_opt"] = g["J_opt"].first()
    return out.reset_index()


def t_halfwidth(sd, n, level: float = CI_LEVEL):
    """Half-width of the two-sided ``level`` Student t confidence interval of a mean of ``n``
    values with sample standard deviation ``sd``: ``t_{(1+level)/2, n-1} sd / sqrt(n)``
    (NaN where ``n < 2``). Broadcasts over arrays."""
    sd = np.asarray(sd, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = stats.t.ppf(0.5 + level / 2, np.where(n >= 2, n - 1, np.nan))
        half = t * sd / np.sqrt(n)
    return np.where(n >= 2, half, np.nan)


def intervals_separate(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether the closed intervals ``a = (lo, hi)`` and ``b`` are disjoint (False when either
    has a NaN end: an interval that is not known separates from nothing)."""
    if any(math.isnan(x) for x in (*a, *b)):
        return False
    return a[1] < b[0] or b[1] < a[0]


@dataclass(frozen=True)
class Comparison:
    """Two cells of an aggregated table on one metric (see :func:`compare`)."""

    metric: str
    a: dict
    b: dict
    mean_a: float
    ci_a: float
    mean_b: float
    ci_b: float
    seeds_a: int
    seeds_b: int

    @property
    def interval_a(self) -> tuple[float, float]:
        return (self.mean_a - self.ci_a, self.mean_a + self.ci_a)

    @property
    def interval_b(self) -> tuple[float, float]:
        return (self.mean_b - self.ci_b, self.mean_b + self.ci_b)

    @property
    def separated(self) -> bool:
        """The two 95% intervals are disjoint: only then may the text say one differs."""
        return intervals_separate(self.interval_a, self.interval_b)

    def describe(self) -> str:
        """One line: both cells as mean [lo, hi] and whether the intervals separate."""
        def cell(where, mean, half, n):
            lo, hi = mean - half, mean + half
            label = ", ".join(f"{k}={v}" for k, v in where.items())
            return f"{label}: {_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}] (n={n})"
        verdict = "separate" if self.separated else "overlap"
        return (f"{self.metric}: {cell(self.a, self.mean_a, self.ci_a, self.seeds_a)} vs "
                f"{cell(self.b, self.mean_b, self.ci_b, self.seeds_b)}: intervals {verdict}")


def _one_row(agg: pd.DataFrame, where: dict) -> pd.Series:
    mask = pd.Series(True, index=agg.index)
    for k, v in where.items():
        if k not in agg.columns:
            raise ValueError(f"where: the table has no column {k!r}")
        col = agg[k]
        if v is None:
            mask &= col.isna()
        elif isinstance(v, int | float) and not isinstance(v, bool) \
                and pd.api.types.is_numeric_dtype(col):
            mask &= np.isclose(col.to_numpy(dtype=float), float(v))  # 1 matches 1.0
        else:
            mask &= col.astype(str) == str(v)
    rows = agg[mask]
    if len(rows) != 1:
        raise ValueError(f"where: {where} matches {len(rows)} rows of the table, expected 1")
    return rows.iloc[0]


def compare(agg: pd.DataFrame, metric: str, a: dict, b: dict) -> Comparison:
    """Compare two cells of an aggregated table (:func:`aggregate`'s output, or its CSV read
    back) on ``metric``: ``a`` and ``b`` select one row each by column values (e.g.
    ``{"estimator": "nstep", "min_age": 0}``). ``.separated`` says whether the 95%
    t-intervals are disjoint; ``.describe()`` is the line a report cites."""
    if metric not in agg.columns or f"{metric}_ci" not in agg.columns:
        raise ValueError(f"metric: the table has no column {metric!r} with an interval")
    ra, rb = _one_row(agg, a), _one_row(agg, b)
    return Comparison(metric, dict(a), dict(b), float(ra[metric]), float(ra[f"{metric}_ci"]),
                      float(rb[metric]), float(rb[f"{metric}_ci"]), int(ra["seeds"]),
                      int(rb["seeds"]))


def _fmt(x) -> str:
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return ""
        if abs(x) >= 1000:
            return f"{x:.0f}"
        return f"{x:.3g}" if abs(x) < 0.01 and x != 0 else f"{x:.3f}"
    return str(x)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _pm(mean, half) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if half is None or (isinstance(half, float) and math.isnan(half)):
        return _fmt(mean)
    if half == 0:
        return f"{_fmt(mean)} ± 0"
    # the half-width to two significant digits, the mean to the same decimal place (at least
    # three decimals below 10, as the plain cells)
    decimals = min(4, max(3 if abs(mean) < 10 else 0, 1 - math.floor(math.log10(abs(half)))))
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def summary_table(agg: pd.DataFrame, algo: str, axis_keys: list[str],
                  tabular: bool) -> pd.DataFrame:
    """The compact table for the markdown file: axes, seeds, and per metric the mean ± the
    half-width of its 95% t-interval over seeds."""
    m = metric_names(algo, tabular)
    cols = [m["perf"], m["rmse"], m["bias"], *m["extra"], "sps"]
    if tabular:
        cols[1:1] = ["mean_J_frac", "final_J"]
    out = agg[[k for k in axis_keys if k in agg.columns] + ["seeds"]].copy()
    for c in cols:
        if c in agg.columns:
            ci = agg[f"{c}_ci"] if f"{c}_ci" in agg.columns else [float("nan")] * len(agg)
            out[c] = [_pm(a, b) for a, b in zip(agg[c], ci, strict=False)]
    return out


def staleness_axis(algo: str, axes: dict[str, list]) -> str | None:
    for k in STALENESS.get(algo, ()):
        if k in axes and len(axes[k]) > 1:
            return k
    for k, v in axes.items():
        if k != CORRECTION and len(v) > 1:
            return k
    return None


def plot_staleness(agg: pd.DataFrame, algo: str, axes: dict[str, list], tabular: bool, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = metric_names(algo, tabular)
    x = staleness_axis(algo, axes)
    panels = [(m["perf"], "final J / J* (last 10% of run)" if tabular else "final episodic return")]
    if tabular:
        panels += [(m["rmse"], f"RMS error of {'advantages' if algo == 'ppo' else 'Q targets'}"),
                   (m["bias"], f"bias of {'advantages' if algo == 'ppo' else 'Q targets'}")]
        if algo == "dqn":  # the bias split into its parts (offpolicy/harness/dqn.py)
            panels += [("qtarget_lag", "target-network lag part of the bias"),
                       ("qtarget_corr", "correction part of the bias (exact bootstrap)")]
    line_keys = [k for k in axes if k != x]
    fig, axs = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (col, title) in zip(axs[0], panels, strict=False):
        if col not in agg.columns:
            ax.set_visible(False)
            continue
        groups = agg.groupby(line_keys, sort=False) if line_keys else [((), agg)]
        for key, sub in groups:
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{k}={v}" if k != CORRECTION else str(v)
                              for k, v in zip(line_keys, key, strict=False))
            if x is None:
                xs, xt = [0], None
            else:
                sub = sub.sort_values(x, key=lambda s: s.astype(str) if s.dtype == object else s)
                xs, xt = sub[x].astype(str).tolist(), x
            ci = sub.get(f"{col}_ci", pd.Series([0.0] * len(sub))).fillna(0.0).to_numpy()
            ax.errorbar(xs, sub[col].to_numpy(), yerr=ci, marker="o", capsize=3,
                        label=label or algo)
            if xt:
                ax.set_xlabel(xt)
        if col.endswith("bias") or col in ("qtarget_lag", "qtarget_corr"):
            ax.axhline(0.0, color="k", lw=0.5)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axs[0][0].legend(fontsize=8)
    env = agg["env"].iloc[0] if "env" in agg.columns else ""
    fig.suptitle(f"{algo.upper()} on {env}: staleness vs correction (mean ± 95% CI over seeds)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(results: list[dict], algo: str, axes: dict[str, list], tabular: bool, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ycol = "J" if tabular else "episodic_return"
    x = staleness_axis(algo, axes)
    panel_vals = axes[x] if x else [None]
    line_keys = [k for k in axes if k != x]
    fig, axs = plt.subplots(1, len(panel_vals), figsize=(4.2 * len(panel_vals), 3.5),
                            squeeze=False, sharey=True)
    for ax, pv in zip(axs[0], panel_vals, strict=False):
        curves: dict[str, list] = {}
        for r in results:
            if x is not None and r["axes"].get(x) != pv:
                continue
            label = ", ".join(str(r["axes"].get(k)) for k in line_keys) or algo
            curves.setdefault(label, []).append(r["curve"])
        for label, cs in curves.items():
            n = min(len(c) for c in cs)
            steps = np.array([row["env_steps"] for row in cs[0][:n]])
            ys = np.array([[np.nan if row.get(ycol) is None else row[ycol] for row in c[:n]]
                           for c in cs])
            ax.plot(steps, np.nanmean(ys, axis=0), label=label)
        if tabular and results and results[0]["curve"][-1].get("J_opt") is not None:
            ax.axhline(results[0]["curve"][-1]["J_opt"], color="k", ls="--", lw=0.8, label="J*")
        ax.set_title(f"{x}={pv}" if x else algo, fontsize=10)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel("exact J(pi)" if tabular else "episodic return")
    axs[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TABLE_CAPTION = ("Cells: mean ± half-width of the 95% Student t confidence interval over the "
                 "`seeds` runs (mean, sd and half-width per metric: the `_table.csv`).\n\n")


def write_report(results: list[dict], algo: str, axes: dict[str, list], out_dir,
                 stem: str | None = None) -> dict:
    """Write ``<stem>_runs.csv`` (one row per run), ``<stem>_table.csv`` (mean, sd and 95%
    t-interval half-width over seeds), ``<stem>_table.md`` and the plots; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not results:
        return {}
    env = results[0]["config"]["env"]
    stem = stem or f"{algo}_{env}"
    tabular = "final_J" in results[0]["summary"]
    axis_keys = list(axes)
    df = runs_frame(results)
    agg = aggregate(df, axis_keys)
    paths = {
        "runs_csv": out_dir / f"{stem}_runs.csv",
        "table_csv": out_dir / f"{stem}_table.csv",
        "table_md": out_dir / f"{stem}_table.md",
        "staleness_png": out_dir / f"{stem}_staleness.png",
        "curves_png": out_dir / f"{stem}_curves.png",
    }
    df.to_csv(paths["runs_csv"], index=False)
    agg.to_csv(paths["table_csv"], index=False)
    paths["table_md"].write_text(TABLE_CAPTION + to_markdown(summary_table(agg, algo, axis_keys,
                                                                          tabular)))
    plot_staleness(agg, algo, axes, tabular, paths["staleness_png"])
    plot_curves(results, algo, axes, tabular, paths["curves_png"])
    return {k: str(v) for k, v in paths.items()}
