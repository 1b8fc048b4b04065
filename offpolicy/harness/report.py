"""Tables and plots of a grid: final performance and estimator error against staleness,
per correction (matplotlib, Agg backend)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

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
    return {"perf": perf, "rmse": "qtarget_rmse", "bias": "qtarget_bias", "extra": ["sample_age"]}


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
    sd.columns = [f"{c}_sd" for c in sd.columns]
    out = pd.concat([out, sd], axis=1)
    out.insert(0, "seeds", g.size())
    if "J_opt" in df.columns:
        out["J_opt"] = g["J_opt"].first()
    return out.reset_index()


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


def _pm(mean, sd) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return _fmt(mean)
    return f"{_fmt(mean)} ± {_fmt(sd)}"


def summary_table(agg: pd.DataFrame, algo: str, axis_keys: list[str],
                  tabular: bool) -> pd.DataFrame:
    """The compact table for the markdown file: axes, seeds, mean ± sd of the main metrics."""
    m = metric_names(algo, tabular)
    cols = [m["perf"], m["rmse"], m["bias"], *m["extra"], "sps"]
    if tabular:
        cols[1:1] = ["mean_J_frac", "final_J"]
    out = agg[[k for k in axis_keys if k in agg.columns] + ["seeds"]].copy()
    for c in cols:
        if c in agg.columns:
            sd = agg[f"{c}_sd"] if f"{c}_sd" in agg.columns else [float("nan")] * len(agg)
            out[c] = [_pm(a, b) for a, b in zip(agg[c], sd, strict=False)]
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
            sd = sub.get(f"{col}_sd", pd.Series([0.0] * len(sub))).fillna(0.0).to_numpy()
            ax.errorbar(xs, sub[col].to_numpy(), yerr=sd, marker="o", capsize=3,
                        label=label or algo)
            if xt:
                ax.set_xlabel(xt)
        if col.endswith("bias"):
            ax.axhline(0.0, color="k", lw=0.5)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axs[0][0].legend(fontsize=8)
    env = agg["env"].iloc[0] if "env" in agg.columns else ""
    fig.suptitle(f"{algo.upper()} on {env}: staleness vs correction (mean ± sd over seeds)",
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


def write_report(results: list[dict], algo: str, axes: dict[str, list], out_dir,
                 stem: str | None = None) -> dict:
    """Write ``<stem>_runs.csv`` (one row per run), ``<stem>_table.csv`` (mean and sd over
    seeds), ``<stem>_table.md`` and the plots; returns the paths."""
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
    paths["table_md"].write_text(to_markdown(summary_table(agg, algo, axis_keys, tabular)))
    plot_staleness(agg, algo, axes, tabular, paths["staleness_png"])
    plot_curves(results, algo, axes, tabular, paths["curves_png"])
    return {k: str(v) for k, v in paths.items()}
