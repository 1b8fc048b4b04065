"""Measurements shared by the learners: tabular policies read off networks, exact errors of
the advantages/targets used in an update, and per-run summaries."""
from __future__ import annotations

import math

import numpy as np
import torch


def tabular_policy(agent, env) -> np.ndarray:
    """pi[S, A] of a softmax-policy network on a one-hot tabular env."""
    with torch.no_grad():
        pi = torch.softmax(agent.logits(env.all_obs()).double(), dim=-1).numpy()
    return pi / pi.sum(axis=1, keepdims=True)


def greedy_policy(q_values: np.ndarray, epsilon: float = 0.0) -> np.ndarray:
    """epsilon-greedy pi[S, A] w.r.t. q_values [S, A] (ties to the lowest index, as argmax)."""
    S, A = q_values.shape
    pi = np.full((S, A), epsilon / A)
    pi[np.arange(S), q_values.argmax(axis=1)] += 1.0 - epsilon
    return pi


def _stats(err: np.ndarray, prefix: str) -> dict:
    if err.size == 0:
        return {f"{prefix}_bias": float("nan"), f"{prefix}_rmse": float("nan")}
    return {f"{prefix}_bias": float(err.mean()),
            f"{prefix}_rmse": float(np.sqrt((err ** 2).mean()))}


def error_stats(adv, targets, states, actions, exact: dict) -> dict:
    """Bias (mean error) and RMS error of the advantages against the current policy's true
    A^pi(s_t, a_t), and of the value targets against V^pi(s_t), over the whole batch."""
    adv = torch.as_tensor(adv).double().numpy().reshape(-1)
    targets = torch.as_tensor(targets).double().numpy().reshape(-1)
    s = np.asarray(states).reshape(-1)
    a = np.asarray(actions).reshape(-1)
    out = _stats(adv - exact["A"][s, a], "adv")
    out.update(_stats(targets - exact["V"][s], "vtarget"))
    return out


def tabular_gradient(logits, actions, states, loss_fn, num_states: int) -> np.ndarray:
    """``-dL/dtheta [S, A]`` of a policy loss as if the policy were the table of its logits:
    the gradient w.r.t. each sample's logits, summed over the samples of each state.

    ``logits [M, A]`` (detached; the policy's logits at the samples' states), ``actions``,
    ``states [M]``; ``loss_fn(logp [M]) -> scalar`` closes over everything else."""
    lg = torch.as_tensor(logits).detach().double().requires_grad_(True)
    a = torch.as_tensor(np.asarray(actions).reshape(-1), dtype=torch.long)
    logp = torch.log_softmax(lg, dim=-1).gather(1, a[:, None]).squeeze(1)
    (g,) = torch.autograd.grad(-loss_fn(logp), lg)
    out = np.zeros((num_states, lg.shape[1]))
    np.add.at(out, np.asarray(states).reshape(-1), g.numpy())
    return out


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    return float((x * y).sum() / (nx * ny)) if nx > 0 and ny > 0 else float("nan")


CLIP_MARGIN = 1e-5  # relative: rho within round-off of the clip level is not "clipped"


def behaviour_stats(log_rhos, rho_clip: float, c_clip: float, logpi_full=None,
                    logmu_full=None) -> dict:
    """How far the behaviour mu is from the learner's policy pi on one batch.

    ``kl_pi_mu`` = mean over visited states of KL(pi(.|s) || mu(.|s)), ``kl_mu_pi`` the
    reverse, from the full distributions ``logpi_full``/``logmu_full`` ``[..., A]`` when given;
    without them, the sample estimates over the taken actions a ~ mu: KL(mu||pi) ~ mean(-log
    rho), KL(pi||mu) ~ mean(rho log rho). ``rho_q05/q50/q95``: the 5/50/95% quantiles of rho =
    exp(log_rhos) over the batch (linear interpolation, as ``numpy.quantile``);
    ``rho_clipped_frac``/``c_clipped_frac``: the fraction of samples with rho > rho_clip /
    rho > c_clip (the samples whose weight V-trace clips), with a relative margin of 1e-5 so
    that float32 round-off in two forward passes of the same parameters (rho = 1 +- 1e-7)
    never counts as clipped."""
    lr = torch.as_tensor(log_rhos).double().reshape(-1)
    rho = lr.exp()
    if logpi_full is not None and logmu_full is not None:
        lp = torch.as_tensor(logpi_full).double()
        lm = torch.as_tensor(logmu_full).double()
        p, m = lp.exp(), lm.exp()
        # 0 log 0 = 0: where a probability is exactly 0 its term is dropped
        kl_pm = torch.where(p > 0, p * (lp - lm), 0.0).sum(-1)
        kl_mp = torch.where(m > 0, m * (lm - lp), 0.0).sum(-1)
        kl_pi_mu, kl_mu_pi = float(kl_pm.mean()), float(kl_mp.mean())
    else:
        kl_pi_mu, kl_mu_pi = float((rho * lr).mean()), float((-lr).mean())
    q = np.quantile(rho.numpy(), [0.05, 0.5, 0.95])
    return {"kl_pi_mu": kl_pi_mu, "kl_mu_pi": kl_mu_pi,
            "rho_q05": float(q[0]), "rho_q50": float(q[1]), "rho_q95": float(q[2]),
            "rho_clipped_frac": float((rho > rho_clip * (1 + CLIP_MARGIN)).double().mean()),
            "c_clipped_frac": float((rho > c_clip * (1 + CLIP_MARGIN)).double().mean())}


def _nanmean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")


def summarize(curve: list[dict], tabular: bool, tail: float = 0.1) -> dict:
    """Final performance = mean over the last ``tail`` fraction of the curve; ``mean_J`` (the
    normalised area under the learning curve) and the error columns = means over the whole
    run (over the rows that carry them)."""
    if not curve:
        return {}
    k = max(1, int(round(len(curve) * tail)))
    last = curve[-k:]
    out = {
        "env_steps": curve[-1]["env_steps"],
        "wall_time": curve[-1]["wall_time"],
        "sps": curve[-1]["sps"],
        "env_sps": curve[-1].get("env_sps", float("nan")),
        "final_return": _nanmean([r.get("episodic_return") for r in last]),
        # the area under the return curve (speed of learning on Gymnasium envs)
        "mean_return": _nanmean([r.get("episodic_return") for r in curve]),
    }
    if tabular:
        out["final_J"] = _nanmean([r.get("J") for r in last])
        out["J_opt"] = curve[-1].get("J_opt")
        out["mean_J"] = _nanmean([r.get("J") for r in curve])  # area under the curve
        if out["J_opt"]:
            out["final_J_frac"] = out["final_J"] / out["J_opt"]
            out["mean_J_frac"] = out["mean_J"] / out["J_opt"]
    for key in ("adv_bias", "adv_rmse", "vtarget_bias", "vtarget_rmse", "qtarget_bias",
                "qtarget_rmse", "sample_age", "kl_pi_mu", "kl_mu_pi", "rho_q05", "rho_q50",
                "rho_q95", "rho_clipped_frac", "c_clipped_frac", "J_mu", "grad_cos",
                "grad_cos_exact_adv"):
        vals = [r.get(key) for r in curve if key in r]
        if vals:
            out[key] = _nanmean(vals)
            out[key + "_abs"] = _nanmean([abs(v) for v in vals]) if key.endswith("bias") else None
    return {k: v for k, v in out.items() if v is not None}


# ---- config checks ----------------------------------------------------------------------


class ConfigError(ValueError):
    """A config value out of its domain; ``field`` names the config field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.detail = field, message


def check_fields(cfg, *, choices=(), at_least=(), optional_at_least=(), unit=(), positive=(),
                 optional_positive=()) -> None:
    """Raise :class:`ConfigError` for the first field of ``cfg`` out of its domain.

    ``choices``: ``(field, allowed)`` pairs; ``at_least``: ``(field, minimum)`` pairs of ints;
    ``optional_at_least``: the same, ``None`` allowed; ``unit``: fields in [0, 1];
    ``positive``: fields > 0 (inf allowed); ``optional_positive``: the same, ``None`` allowed.
    """
    def value(name):
        return getattr(cfg, name)

    for name, allowed in choices:
        if value(name) not in allowed:
            raise ConfigError(name, f"unknown {value(name)!r}; choose from {', '.join(allowed)}")
    for name, low in at_least:
        v = value(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(name, f"must be an integer >= {low}, got {v!r}")
    for name, low in optional_at_least:
        v = value(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ConfigError(name, f"must be None or an integer >= {low}, got {v!r}")
    for name in unit:
        v = value(name)
        if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:  # NaN fails too
            raise ConfigError(name, f"must be in [0, 1], got {v!r}")
    for name in positive:
        v = value(name)
        if not isinstance(v, int | float) or not v > 0:
            raise ConfigError(name, f"must be > 0, got {v!r}")
    for name in optional_positive:
        v = value(name)
        if v is not None and (not isinstance(v, int | float) or not v > 0):
            raise ConfigError(name, f"must be None or > 0, got {v!r}")


def check_gamma(cfg) -> None:
    g = cfg.gamma
    if g is not None and (not isinstance(g, int | float) or not 0.0 < g <= 1.0):
        raise ConfigError("gamma", f"must be None (the MDP's own) or in (0, 1], got {g!r}")
