"""Reference losses in float64: the surrogate and value losses that PPO, IMPALA and TD learners
take from an advantage or a target (docs/DESIGN.md section 6).

Every policy loss is ``L = sum_{t,b} w_{t,b} l_{t,b}`` with a per-element term ``l`` and
aggregation weights ``w`` (below); it returns ``PolicyLoss(loss, grad_logp)`` where
``grad_logp[t, b] = dL / d logp[t, b]`` exactly (advantages, behaviour and proximal
log-probabilities are constants: detached, as every learner treats them). Value and TD losses
return ``ValueLoss(loss, grad_values)``. Shapes: time-major ``[T]`` or ``[T, B]``, every column
``b`` one sequence; RLHF rows ``[B, L]`` are passed transposed.

Policy terms, with ``r = exp(logp - logp_ref)``:

* clipped surrogate (Schulman et al. 2017): ``l = -w_is min(r A, clip(r, 1-eps, 1+eps) A)``,
  ``dl/dlogp = -w_is r A`` where ``r A <= clip(r) A`` (the unclipped branch is the minimum;
  at a tie both branches carry the same gradient), else 0. :func:`ppo_clip` takes
  ``logp_ref`` = the behaviour's log-probabilities (PPO; with a V-trace pg advantage the
  importance weight is then counted twice); :func:`prox_clip` the proximal policy's
  (Hilton et al. 2021, decoupled PPO: ``w_is`` carries the behaviour correction once).
* policy gradient (Espeholt et al. 2018, IMPALA): ``l = -w_is A logp``, ``dl/dlogp = -w_is A``
  (:func:`impala_pg`; ``w_is = 1`` when the advantage already carries the clipped ratio, as
  V-trace's ``pg_advantages`` does).

Aggregation (``aggregation``; ``m`` the mask, 1 where a step counts):

* ``"token_mean"`` (default): ``w = m / sum(m)``, the mean over every counted element;
* ``"seq_mean"``: ``w_{t,b} = m_{t,b} / (B sum_t m_{t,b})``, the mean over sequences of each
  sequence's mean (a column with no counted element is refused);
* ``"constant"``: ``w = m / constant``, a fixed normaliser (e.g. ``B * max_len``).

Advantage normalisation (``normalize=True``): ``(A - mean A) / (std A + 1e-8)`` over the
counted elements, ``std`` with ``ddof=1`` (CleanRL's ``ppo.py``, torch's default ``std``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "PolicyLoss", "ValueLoss", "AGGREGATIONS", "aggregation_weights", "normalize_advantages",
    "clipped_surrogate", "ppo_clip", "prox_clip", "impala_pg", "squared_value_loss",
    "clipped_value_loss", "td_loss",
]

AGGREGATIONS = ("token_mean", "seq_mean", "constant")
NORMALIZE_EPS = 1e-8


class PolicyLoss(NamedTuple):
    loss: float
    grad_logp: np.ndarray


class ValueLoss(NamedTuple):
    loss: float
    grad_values: np.ndarray


def _floats(x: npt.ArrayLike, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a numeric array") from None
    if a.ndim not in (1, 2):
        raise ValueError(f"{name}: expected shape [T] or [T, B], got {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name}: shape {a.shape} differs from logp's {shape}")
    return a


def _coef(x: float, name: str, *, low: float = 0.0) -> float:
    v = float(x)
    if not np.isfinite(v) or v < low:
        raise ValueError(f"{name}: must be a finite number >= {low}, got {x!r}")
    return v


def aggregation_weights(shape: tuple[int, ...], *, mask: npt.ArrayLike | None = None,
                        aggregation: str = "token_mean",
                        constant: float | None = None) -> np.ndarray:
    """The weights ``w`` with ``L = sum(w * l)`` for ``aggregation`` (module docstring)."""
    m = np.ones(shape) if mask is None else np.asarray(mask, dtype=bool).astype(np.float64)
    if m.shape != shape:
        raise ValueError(f"mask: shape {m.shape} differs from logp's {shape}")
    if aggregation == "token_mean":
        n = m.sum()
        if n == 0:
            raise ValueError("mask: no element counts (token_mean would divide by 0)")
        return m / n
    if aggregation == "seq_mean":
        m2 = m.reshape(shape[0], -1)
        per_seq = m2.sum(axis=0)
        if (per_seq == 0).any():
            raise ValueError("mask: a sequence has no counted element (seq_mean)")
        return (m2 / (per_seq * m2.shape[1])).reshape(shape)
    if aggregation == "constant":
        if constant is None:
            raise ValueError("constant: required with aggregation='constant'")
        c = _coef(constant, "constant")
        if c == 0:
            raise ValueError("constant: must be > 0")
        return m / c
    raise ValueError(f"aggregation: unknown {aggregation!r}; choose from {', '.join(AGGREGATIONS)}")


def normalize_advantages(advantages: npt.ArrayLike, mask: npt.ArrayLike | None = None
                         ) -> np.ndarray:
    """``(A - mean A) / (std A + 1e-8)`` over the counted elements (``ddof=1``); the others
    are returned unchanged (they carry zero weight)."""
    a = _floats(advantages, "advantages")
    m = np.ones(a.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    sel = a[m]
    if sel.size < 2:
        raise ValueError("advantages: normalising needs at least 2 counted elements")
    out = a.copy()
    out[m] = (sel - sel.mean()) / (sel.std(ddof=1) + NORMALIZE_EPS)
    return out


def clipped_surrogate(logp: npt.ArrayLike, logp_ref: npt.ArrayLike, advantages: npt.ArrayLike,
                      *, clip_coef: float = 0.2, is_weights: npt.ArrayLike | None = None,
                      normalize: bool = False, mask: npt.ArrayLike | None = None,
                      aggregation: str = "token_mean",
                      constant: float | None = None) -> PolicyLoss:
    """``L = sum w * (-w_is min(r A, clip(r, 1-eps, 1+eps) A))``, ``r = exp(logp - logp_ref)``.

    The core of :func:`ppo_clip` and :func:`prox_clip`; see the module docstring."""
    lp = _floats(logp, "logp")
    ref = _floats(logp_ref, "logp_ref", lp.shape)
    adv = _floats(advantages, "advantages", lp.shape)
    eps = _coef(clip_coef, "clip_coef")
    w_is = np.ones(lp.shape) if is_weights is None else _floats(is_weights, "is_weights",
                                                                  lp.shape)
    w = aggregation_weights(lp.shape, mask=mask, aggregation=aggregation, constant=constant)
    if normalize:
        adv = normalize_advantages(adv, w > 0)
    with np.errstate(over="raise", invalid="raise"):
        try:
            r = np.exp(lp - ref)
        except FloatingPointError:
            raise ValueError("logp: exp(logp - logp_ref) overflows float64") from None
    unclipped = r * adv
    clipped = np.clip(r, 1.0 - eps, 1.0 + eps) * adv
    term = -w_is * np.minimum(unclipped, clipped)
    grad = np.where(unclipped <= clipped, -w_is * unclipped, 0.0)
    return PolicyLoss(float((w * term).sum()), w * grad)


def ppo_clip(logp: npt.ArrayLike, logp_behaviour: npt.ArrayLike, advantages: npt.ArrayLike, *,
             clip_coef: float = 0.2, normalize: bool = False, mask: npt.ArrayLike | None = None,
             aggregation: str = "token_mean", constant: float | None = None) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017), ``r = pi / mu``.

    ``logp``, ``logp_behaviour``, ``advantages``: ``[T]`` or ``[T, B]``. With an advantage that
    already carries a clipped ratio (V-trace's ``pg_advantages``) the weight on a sample is
    ``r min(rho_clip, r)``: the ratio is counted twice (PufferLib 3's ``PuffeRL.train``)."""
    return clipped_surrogate(logp, logp_behaviour, advantages, clip_coef=clip_coef,
                             normalize=normalize, mask=mask, aggregation=aggregation,
                             constant=constant)


def prox_clip(logp: npt.ArrayLike, logp_prox: npt.ArrayLike, advantages: npt.ArrayLike, *,
              is_weights: npt.ArrayLike | None = None, clip_coef: float = 0.2,
              normalize: bool = False, mask: npt.ArrayLike | None = None,
              aggregation: str = "token_mean", constant: float | None = None) -> PolicyLoss:
    """The proximal clipped surrogate (Hilton et al. 2021, "Batch size-invariance for policy
    optimization"): ``r = pi / pi_prox`` with ``pi_prox`` the learner's policy at the start of
    the update, times ``is_weights`` (``min(rho_clip, pi_prox / mu)`` for a GAE advantage, 1
    when the advantage carries the weight): the importance weight is counted once."""
    return clipped_surrogate(logp, logp_prox, advantages, clip_coef=clip_coef,
                             is_weights=is_weights, normalize=normalize, mask=mask,
                             aggregation=aggregation, constant=constant)


def impala_pg(logp: npt.ArrayLike, advantages: npt.ArrayLike, *,
              is_weights: npt.ArrayLike | None = None, normalize: bool = False,
              mask: npt.ArrayLike | None = None, aggregation: str = "token_mean",
              constant: float | None = None) -> PolicyLoss:
    """IMPALA's policy gradient (Espeholt et al. 2018): ``l = -w_is A logp``; with V-trace's
    ``pg_advantages`` (``min(pg_rho_clip, rho_t)(r_t + gamma v_{t+1} - V(s_t))``) ``w_is = 1``
    and the clipped weight is counted once."""
    lp = _floats(logp, "logp")
    adv = _floats(advantages, "advantages", lp.shape)
    w_is = np.ones(lp.shape) if is_weights is None else _floats(is_weights, "is_weights",
                                                                  lp.shape)
    w = aggregation_weights(lp.shape, mask=mask, aggregation=aggregation, constant=constant)
    if normalize:
        adv = normalize_advantages(adv, w > 0)
    return PolicyLoss(float((w * -w_is * adv * lp).sum()), w * -w_is * adv)


def squared_value_loss(values: npt.ArrayLike, targets: npt.ArrayLike, *,
                       mask: npt.ArrayLike | None = None, aggregation: str = "token_mean",
                       constant: float | None = None) -> ValueLoss:
    """``L = sum w * 0.5 (V - G)^2``, ``dL/dV = w (V - G)`` (targets detached)."""
    v = _floats(values, "values")
    g = _floats(targets, "targets", v.shape)
    w = aggregation_weights(v.shape, mask=mask, aggregation=aggregation, constant=constant)
    return ValueLoss(float((w * 0.5 * (v - g) ** 2).sum()), w * (v - g))


def clipped_value_loss(values: npt.ArrayLike, old_values: npt.ArrayLike,
                       targets: npt.ArrayLike, *, clip_coef: float = 0.2,
                       mask: npt.ArrayLike | None = None, aggregation: str = "token_mean",
                       constant: float | None = None) -> ValueLoss:
    """PPO's clipped value loss (baselines ``ppo2``, CleanRL ``clip_vloss``):
    ``0.5 max((V - G)^2, (V_old + clip(V - V_old, -eps, eps) - G)^2)``. Its derivative follows
    the larger branch; the clipped branch's is 0 where ``|V - V_old| > eps``."""
    v = _floats(values, "values")
    v_old = _floats(old_values, "old_values", v.shape)
    g = _floats(targets, "targets", v.shape)
    eps = _coef(clip_coef, "clip_coef")
    w = aggregation_weights(v.shape, mask=mask, aggregation=aggregation, constant=constant)
    diff = v - v_old
    v_clipped = v_old + np.clip(diff, -eps, eps)
    plain, clipped = (v - g) ** 2, (v_clipped - g) ** 2
    inside = np.abs(diff) <= eps
    grad = np.where(plain >= clipped, v - g, np.where(inside, v_clipped - g, 0.0))
    return ValueLoss(float((w * 0.5 * np.maximum(plain, clipped)).sum()), w * grad)


def td_loss(q_taken: npt.ArrayLike, targets: npt.ArrayLike, *,
            mask: npt.ArrayLike | None = None, aggregation: str = "token_mean",
            constant: float | None = None) -> ValueLoss:
    """The TD loss on a multi-step target (n-step, Retrace, tree-backup, Q(lambda)):
    ``0.5 (Q(s_t, a_t) - G_t)^2`` aggregated, ``G`` detached (the estimators' ``returns`` /
    ``targets``); :func:`squared_value_loss` on ``Q(s_t, a_t)``."""
    return squared_value_loss(q_taken, targets, mask=mask, aggregation=aggregation,
                              constant=constant)
