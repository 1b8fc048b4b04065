"""Exact mean and variance of the policy-gradient updates that the losses take (docs/DESIGN.md
section 6), against the exact policy gradient.

Setting: a tabular MDP, a tabular softmax policy ``pi = softmax(theta)`` (``theta [S, A]``, the
current parameters, the *target*), a behaviour ``mu`` that collected the data (a lagged
policy, an epsilon- or temperature-behaviour). One update is the gradient of a policy loss
(:mod:`estimators.losses.numpy`) on one segment of ``horizon`` steps of interaction from
``mdp.initial``, the environment reset from ``mdp.initial`` after every termination (as a
vectorised rollout does), advantages from an estimator of the registry (numpy reference) with
a fixed critic ``values`` (default: the exact ``V^pi``). We report ``g_hat = -dL/dtheta``, the
ascent direction, aggregated with the constant ``1 / horizon`` (``aggregation="constant"``)
or the mean over the segment's steps (``"token_mean"``, the same here: every segment has
``horizon`` steps).

Every segment is enumerated with its probability (reward noise as the two-point distribution
mean +- std, which has the MDP's mean and variance), so ``E[g_hat]`` and the total variance
``E||g_hat - E g_hat||^2`` are exact, with no sampling; the size is bounded by
``max_branches``.

Against:

* ``true_gradient``: ``grad J``, ``J(theta) = sum_s initial(s) V^pi(s)``; by the
  policy-gradient theorem for the tabular softmax, ``dJ/dtheta[s, b] = d(s) pi(b|s)
  A^pi(s, b)`` with ``d = initial^T (I - gamma P_pi)^{-1}`` (discounted visits, unnormalised);
* ``reference``: ``w(s) pi(b|s) A^pi(s, b)`` with ``w(s) = (1/horizon) sum_t P_pi(s_t = s)``,
  the expected update of an on-policy learner with exact advantages on the same segments
  (Theorem T23: PPO-clip at theta = theta_old with GAE on ``V^pi`` takes exactly this; it is
  ``grad J`` with the discounted visits replaced by the segment's undiscounted ones).

Public API: :func:`softmax_policy`, :func:`objective`, :func:`policy_gradient`,
:func:`segment_visits`, :func:`exact_gradient_moments` -> :class:`GradientMoments`,
:func:`clipped_pg_bias` (Theorem T24's closed form).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from . import exact as _exact
from . import registry as _registry
from .mdp import TabularMDP

__all__ = [
    "LOSSES", "ADVANTAGE_OUTPUT", "GradientMoments", "softmax_policy", "objective",
    "policy_gradient", "segment_visits", "exact_gradient_moments",
    "exact_value_gradient_moments", "clipped_pg_bias", "sequence_gradient_moments",
]

LOSSES = ("ppo_clip", "prox_clip", "impala")
# The advantage each estimator feeds a policy loss, and whether it already carries the
# (clipped) importance weight (then the loss adds none: the weight is counted once).
ADVANTAGE_OUTPUT = {
    "gae": ("advantages", False),
    "vtrace": ("pg_advantages", True),
    "puff_advantage": ("advantages", True),
    "per_decision_is": ("advantages", True),
}


def softmax_policy(logits: npt.ArrayLike) -> np.ndarray:
    """``pi(a|s) = exp(theta[s, a]) / sum_b exp(theta[s, b])``, ``theta [S, A]``."""
    th = np.asarray(logits, dtype=np.float64)
    if th.ndim != 2 or not np.isfinite(th).all():
        raise ValueError("logits: expected a finite [S, A] array")
    z = np.exp(th - th.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def objective(mdp: TabularMDP, policy: npt.ArrayLike) -> float:
    """``J = sum_s initial(s) V^pi(s)``."""
    return float(np.asarray(mdp.initial) @ _exact.v_pi(mdp, policy))


def _visits(mdp: TabularMDP, policy: np.ndarray, discount: float) -> np.ndarray:
    Ppi = _exact.state_transition(mdp, policy)
    M = np.eye(mdp.num_states) - discount * Ppi
    return np.linalg.solve(M.T, np.asarray(mdp.initial, float))


def policy_gradient(mdp: TabularMDP, policy: npt.ArrayLike) -> np.ndarray:
    """``dJ/dtheta [S, A]`` for ``pi = softmax(theta)``: ``d(s) pi(b|s) A^pi(s, b)``,
    ``d = initial^T (I - gamma P_pi)^{-1}`` (Sutton et al. 2000)."""
    pi = np.asarray(policy, float)
    d = _visits(mdp, pi, mdp.gamma)
    return d[:, None] * pi * _exact.a_pi(mdp, pi)


def _reset_transition(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """``[S, S]``: one step of interaction with resets (a transition into a terminal state
    continues from ``initial``)."""
    P = np.einsum("sa,sax->sx", policy, np.asarray(mdp.P, float))
    term = np.asarray(mdp.terminal, bool)
    into_terminal = P[:, term].sum(axis=1)
    out = P.copy()
    out[:, term] = 0.0
    return out + into_terminal[:, None] * np.asarray(mdp.initial, float)[None, :]


def segment_visits(mdp: TabularMDP, behaviour: npt.ArrayLike, horizon: int) -> np.ndarray:
    """``w(s) = (1/horizon) sum_{t<horizon} P_mu(s_t = s)`` with resets from ``initial``
    after terminations (a probability vector over states)."""
    K = _reset_transition(mdp, np.asarray(behaviour, float))
    p = np.asarray(mdp.initial, float).copy()
    w = np.zeros_like(p)
    for _ in range(horizon):
        w += p
        p = p @ K
    return w / horizon


@dataclasses.dataclass(frozen=True)
class GradientMoments:
    """Exact moments of ``g_hat`` (``[S, A]``) and what it is compared with."""

    mean: np.ndarray
    total_variance: float
    true_gradient: np.ndarray
    reference: np.ndarray

    @staticmethod
    def _cos(x: np.ndarray, y: np.ndarray) -> float:
        """NaN where either vector is round-off (its norm below 1e-10 of the other's): the
        direction of an update that is zero up to round-off depends on the machine."""
        nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
        if nx <= 1e-10 * ny or ny <= 1e-10 * nx or nx == 0 or ny == 0:
            return float("nan")
        return float((x * y).sum() / (nx * ny))

    @property
    def cosine(self) -> float:
        """``cos(E g_hat, grad J)``."""
        return self._cos(self.mean, self.true_gradient)

    @property
    def cosine_reference(self) -> float:
        """``cos(E g_hat, reference)``."""
        return self._cos(self.mean, self.reference)

    @property
    def relative_bias(self) -> float:
        """``||E g_hat - reference|| / ||reference||``."""
        ref = float(np.linalg.norm(self.reference))
        return float(np.linalg.norm(self.mean - self.reference) / ref) if ref > 0 else float("nan")


def _check_horizon(horizon) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon: expected an int >= 1, got {horizon!r}")


def _check_policies(mdp: TabularMDP, **policies: np.ndarray) -> None:
    for name, x in policies.items():
        if x.shape != (mdp.num_states, mdp.num_actions):
            raise ValueError(f"{name}: expected shape {(mdp.num_states, mdp.num_actions)}")


def _per_segment(cells: np.ndarray, values: np.ndarray, size: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    """``[N, size]``: column n of ``values`` ``[T, N]`` summed into the cells ``cells[t, n]``
    (added into ``out`` when given)."""
    out = np.zeros((cells.shape[1], size)) if out is None else out
    rows = np.broadcast_to(np.arange(cells.shape[1]), cells.shape)
    np.add.at(out, (rows.ravel(), cells.ravel()), values.ravel())
    return out


def _score_sums(s: np.ndarray, a: np.ndarray, coef: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``[N, S*A]``: per segment, ``sum_t coef_t dlog pi(a_t|s_t)/dtheta`` for the tabular
    softmax, ``dlog pi(a|s)/dtheta[s, :] = e_a - pi(.|s)``."""
    S, A = pi.shape
    G = _per_segment(s * A + a, coef, S * A)
    for b in range(A):
        _per_segment(s * A + b, -(coef * pi[s, b]), S * A, out=G)
    return G


def _weighted_moments(weight: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, float]:
    """(mean, total variance ``E||g - Eg||^2``) of the rows of ``G`` under ``weight``."""
    mean = weight @ G
    second = weight @ (G * G).sum(axis=1)
    return mean, float(max(second - (mean * mean).sum(), 0.0))


def _enumerate(mdp: TabularMDP, behaviour: np.ndarray, horizon: int, max_branches: int):
    """Every segment of ``horizon`` steps with resets: time-major ``[T, N]`` states, actions,
    rewards, next states, terminated, and the probabilities ``[N]``."""
    from .moments import mdp_arrays

    m = mdp_arrays(mdp)
    R_std = np.sqrt(m.R_var)
    init = np.asarray(mdp.initial, float)
    starts = np.nonzero(init > 0)[0]
    state, weight = starts.copy(), init[starts].copy()
    cols: list[list[np.ndarray]] = [[], [], [], [], []]
    for _ in range(horizon):
        pr = behaviour[state][:, :, None] * m.P[state]  # [N, A, S']
        b, a, s2 = np.nonzero(pr > 0)
        p = pr[b, a, s2]
        # reward noise: two branches, mean +- std, probability 1/2 each
        noisy = R_std[state[b], a, s2] > 0
        b, a, s2 = (np.concatenate([x, x[noisy]]) for x in (b, a, s2))
        sign = np.concatenate([noisy.astype(float), -np.ones(int(noisy.sum()))])
        p = np.concatenate([np.where(noisy, 0.5 * p, p), 0.5 * p[noisy]])
        r = m.R[state[b], a, s2] + sign * R_std[state[b], a, s2]
        # after a termination the next step starts from initial: one branch per start state
        t_ = m.terminal[s2]
        reps = np.where(t_, starts.size, 1)
        idx = np.repeat(np.arange(b.size), reps)
        if idx.size > max_branches:
            raise ValueError(f"horizon: more than {max_branches} segments; use a shorter one")
        within = np.arange(idx.size) - np.repeat(np.cumsum(reps) - reps, reps)
        nxt = np.where(t_[idx], starts[within % starts.size], s2[idx])
        p_next = np.where(t_[idx], init[nxt], 1.0)
        parent = b[idx]
        cols = [[c[parent] for c in col] + [x] for col, x in
                zip(cols, (state[parent], a[idx], r[idx], s2[idx], t_[idx]), strict=True)]
        weight = weight[parent] * p[idx] * p_next
        state = nxt
    return (*(np.stack(c) for c in cols), weight)


def exact_gradient_moments(mdp: TabularMDP, loss: str, estimator: str, *,
                           target: npt.ArrayLike, behaviour: npt.ArrayLike, horizon: int,
                           values: npt.ArrayLike | None = None,
                           proximal: npt.ArrayLike | None = None, clip_coef: float = 0.2,
                           normalize: bool = False, lam: float = 1.0, rho_clip: float = 1.0,
                           c_clip: float = 1.0, pg_rho_clip: float | None = None,
                           max_branches: int = 400_000) -> GradientMoments:
    """Exact ``E[g_hat]`` and total variance of one segment's policy-gradient update.

    ``loss``: ``ppo_clip`` (``r = pi/mu``), ``prox_clip`` (``r = pi/proximal``, default
    ``proximal = target``; weight ``min(pg_rho_clip, proximal/mu)`` for a GAE advantage) or
    ``impala`` (weight ``min(pg_rho_clip, pi/mu)`` for a GAE advantage); an advantage that
    carries the weight (V-trace's ``pg_advantages``, puff, per-decision IS) gets none.
    ``estimator``: a key of :data:`ADVANTAGE_OUTPUT`. ``normalize``: per segment, as
    ``estimators.losses.numpy.normalize_advantages``.
    """
    from estimators import numpy as ref
    from estimators.losses import numpy as L

    if loss not in LOSSES:
        raise ValueError(f"loss: unknown {loss!r}; choose from {', '.join(LOSSES)}")
    info, _ = _registry.resolve(estimator)
    if info.name not in ADVANTAGE_OUTPUT:
        raise ValueError(f"estimator: {estimator!r} has no policy-gradient advantage; choose "
                         f"from {', '.join(ADVANTAGE_OUTPUT)}")
    _check_horizon(horizon)
    output, weighted = ADVANTAGE_OUTPUT[info.name]
    pi = np.asarray(target, float)
    mu = np.asarray(behaviour, float)
    prox = pi if proximal is None else np.asarray(proximal, float)
    _check_policies(mdp, target=pi, behaviour=mu, proximal=prox)
    v = _exact.v_pi(mdp, pi) if values is None else np.asarray(values, float)
    pg_clip = rho_clip if pg_rho_clip is None else pg_rho_clip

    s, a, r, s2, term, w = _enumerate(mdp, mu, horizon, max_branches)
    with np.errstate(divide="ignore"):
        logp, logmu, logprox = (np.log(x[s, a]) for x in (pi, mu, prox))
    inputs = {"rewards": r, "values": v[s], "next_values": np.where(term, np.nan, v[s2]),
              "terminated": term, "truncated": np.zeros_like(term), "log_rhos": logp - logmu}
    adv = np.asarray(_registry.call_estimator(
        ref, info.name, inputs, gamma=mdp.gamma, output=output, lam=lam, rho_clip=rho_clip,
        c_clip=c_clip, pg_rho_clip=pg_clip), float)
    if normalize:
        mean = adv.mean(axis=0)
        std = adv.std(axis=0, ddof=1) if horizon > 1 else np.full(adv.shape[1], np.nan)
        if not np.isfinite(std).all():
            raise ValueError("normalize: needs horizon >= 2")
        adv = (adv - mean) / (std + L.NORMALIZE_EPS)
    T = horizon
    if loss == "impala":
        is_w = None if weighted else np.minimum(pg_clip, np.exp(logp - logmu))
        grad_logp = L.impala_pg(logp, adv, is_weights=is_w, aggregation="constant",
                                constant=T).grad_logp
    elif loss == "ppo_clip":
        grad_logp = L.ppo_clip(logp, logmu, adv, clip_coef=clip_coef, aggregation="constant",
                               constant=T).grad_logp
    else:
        is_w = None if weighted else np.minimum(pg_clip, np.exp(logprox - logmu))
        grad_logp = L.prox_clip(logp, logprox, adv, is_weights=is_w, clip_coef=clip_coef,
                                aggregation="constant", constant=T).grad_logp
    # g_hat = -sum_t dL/dlogp_t * dlogp_t/dtheta
    S, A = pi.shape
    mean, var = _weighted_moments(w, _score_sums(s, a, -grad_logp, pi))
    true = policy_gradient(mdp, pi)
    reference = segment_visits(mdp, pi, horizon)[:, None] * pi * _exact.a_pi(mdp, pi)
    return GradientMoments(mean.reshape(S, A), var, true, reference)



def exact_value_gradient_moments(mdp: TabularMDP, estimator: str, *, target: npt.ArrayLike,
                                 behaviour: npt.ArrayLike, horizon: int,
                                 values: npt.ArrayLike | None = None,
                                 q: npt.ArrayLike | None = None, lam: float = 1.0,
                                 rho_clip: float = 1.0, c_clip: float = 1.0,
                                 n: int | None = None,
                                 max_branches: int = 400_000) -> GradientMoments:
    """Exact ``E[g_hat]`` and total variance of one segment's value (or TD) update.

    The squared loss ``0.5 (V(s_t) - G_t)^2`` (``estimators.losses.numpy.squared_value_loss``)
    on the estimator's value output (``returns`` / ``value_targets``), or the TD loss
    ``0.5 (Q(s_t, a_t) - G_t)^2`` (``td_loss``) on a Q-trace's ``targets``, over a segment of
    ``horizon`` steps (as :func:`exact_gradient_moments`), aggregated by ``1/horizon``, targets
    detached; ``g_hat = -dL/dV`` (``[S]``) or ``-dL/dQ`` (``[S, A]``), the tabular
    semi-gradient. ``values`` (default ``V^pi``) / ``q`` (default ``Q^pi``) are the current
    estimates. ``reference`` and ``true_gradient`` are both ``w_mu(s) (V^pi(s) - V(s))`` (or
    ``w_mu(s) mu(a|s) (Q^pi(s, a) - Q(s, a))``): the expected update of a regression onto
    the exact values on the same states, ``w_mu`` the behaviour's segment frequencies."""
    from estimators import numpy as ref
    from estimators.losses import numpy as L

    info, _ = _registry.resolve(estimator)
    if info.kind not in ("state", "action"):
        raise ValueError(f"estimator: {estimator!r} has no value or Q target")
    _check_horizon(horizon)
    output = info.output_for("value" if info.kind == "state" else "target")
    pi = np.asarray(target, float)
    mu = np.asarray(behaviour, float)
    _check_policies(mdp, target=pi, behaviour=mu)
    S, A = pi.shape
    s, a, r, s2, term, w = _enumerate(mdp, mu, horizon, max_branches)
    with np.errstate(divide="ignore"):
        log_rhos = np.log(pi[s, a]) - np.log(mu[s, a])
    inputs: dict = {"rewards": r, "terminated": term, "truncated": np.zeros_like(term),
                    "log_rhos": log_rhos}
    params: dict = {"lam": lam, "rho_clip": rho_clip, "c_clip": c_clip}
    if n is not None:
        params["n"] = n
    if info.kind == "state":
        v = _exact.v_pi(mdp, pi) if values is None else np.asarray(values, float)
        inputs.update(values=v[s], next_values=np.where(term, np.nan, v[s2]))
        estimate, cells, size = v[s], s, S
        truth = _exact.v_pi(mdp, pi) - v
        reference = segment_visits(mdp, mu, horizon) * truth
    else:
        qq = _exact.q_pi(mdp, pi) if q is None else np.asarray(q, float)
        next_q = (pi * qq).sum(axis=1)
        inputs.update(q_taken=qq[s, a], next_expected_q=np.where(term, np.nan, next_q[s2]),
                      target_probs_taken=pi[s, a])
        estimate, cells, size = qq[s, a], s * A + a, S * A
        truth = _exact.q_pi(mdp, pi) - qq
        reference = (segment_visits(mdp, mu, horizon)[:, None] * mu * truth).ravel()
    G = np.asarray(_registry.call_estimator(ref, info.name, inputs, gamma=mdp.gamma,
                                            output=output, **params), float)
    grad = L.squared_value_loss(estimate, G, aggregation="constant",
                                constant=horizon).grad_values
    mean, var = _weighted_moments(w, _per_segment(cells, -grad, size))
    shape = (S,) if info.kind == "state" else (S, A)
    return GradientMoments(mean.reshape(shape), var, reference.reshape(shape),
                           reference.reshape(shape))


def clipped_pg_bias(target: npt.ArrayLike, behaviour: npt.ArrayLike,
                    advantages: npt.ArrayLike, rho_clip: float, *,
                    counted: str = "once") -> np.ndarray:
    """Theorem T24: per state, ``E_{a~mu}[weight(a) A(s, a) (e_a - pi(.|s))] -
    E_{a~pi}[A(s, a) (e_a - pi(.|s))]`` for a fixed advantage ``A [S, A]``.

    ``counted="once"`` (IMPALA): weight ``min(rho, rho_clip)``, bias
    ``-sum_a (pi(a) - rho_clip mu(a))_+ A(s, a) (e_a - pi)``; ``"twice"`` (PPO's ratio on a
    clipped-weight advantage, no clip active): weight ``rho min(rho, rho_clip)``, bias
    ``sum_a pi(a) (min(rho(a), rho_clip) - 1) A(s, a) (e_a - pi)``. Returns ``[S, A]``."""
    pi = np.asarray(target, float)
    mu = np.asarray(behaviour, float)
    A_ = np.asarray(advantages, float)
    c = float(rho_clip)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(mu > 0, pi / np.where(mu > 0, mu, 1.0), np.inf)
    if counted == "once":
        coef = -np.clip(pi - c * mu, 0.0, None)
    elif counted == "twice":
        coef = pi * (np.minimum(rho, c) - 1.0)
    else:
        raise ValueError(f"counted: expected 'once' or 'twice', got {counted!r}")
    x = coef * A_  # [S, A]: the weight on e_a
    return x - x.sum(axis=1, keepdims=True) * pi


SEQUENCE_AGGREGATIONS = ("token_mean", "seq_mean", "constant")


def sequence_gradient_moments(mdp: TabularMDP, policy: npt.ArrayLike, *, horizon: int,
                              aggregation: str, batch_size: int = 1,
                              constant: float | None = None) -> GradientMoments:
    """The RLHF layout (single-episode rows): exact ``E[g_hat]`` and total variance of the
    update from ``batch_size`` (1 or 2) whole episodes drawn on-policy, every token's term
    ``A^pi(s_t, a_t) (e_{a_t} - pi(.|s_t))`` (exact advantages), aggregated by
    ``aggregation`` (``estimators.losses.numpy.aggregation_weights``): ``token_mean``
    divides by the batch's token count, ``seq_mean`` each sequence by its own length and the
    batch by ``batch_size``, ``constant`` by ``batch_size * constant``.

    Every episode must end within ``horizon`` steps and ``mdp.gamma`` must be 1 (the sequence
    objective ``J = E[sum_t r_t]``). ``true_gradient`` is ``grad J``; ``reference`` is
    ``grad J / constant`` for ``constant`` (Theorem T25: that mode is unbiased for it) and
    ``grad J / E[L]`` otherwise (the direction a per-token mean aims at)."""
    from .moments import enumerate_segments

    if mdp.gamma != 1.0:
        raise ValueError("mdp: the sequence objective needs gamma = 1")
    if aggregation not in SEQUENCE_AGGREGATIONS:
        raise ValueError(f"aggregation: unknown {aggregation!r}; choose from "
                         f"{', '.join(SEQUENCE_AGGREGATIONS)}")
    if batch_size not in (1, 2):
        raise ValueError(f"batch_size: 1 or 2 (exact enumeration), got {batch_size!r}")
    if aggregation == "constant" and (constant is None or not constant > 0):
        raise ValueError("constant: required and > 0 with aggregation='constant'")
    pi = np.asarray(policy, float)
    S, A = pi.shape
    adv = _exact.a_pi(mdp, pi)
    init = np.asarray(mdp.initial, float)
    sums, lengths, probs = [], [], []
    for s0 in np.nonzero(init > 0)[0]:
        seg = enumerate_segments(mdp, pi, horizon, start_state=int(s0))
        done = seg.terminated
        live = np.cumsum(np.vstack([np.zeros((1, done.shape[1]), bool), done[:-1]]),
                         axis=0) == 0
        if not (done & live).any(axis=0).all():
            raise ValueError("horizon: an episode is still running after horizon steps")
        # every live token's A^pi(s_t, a_t) (e_{a_t} - pi(.|s_t)); the filler after the end: 0
        coef = np.where(live, adv[seg.states, seg.actions], 0.0)
        sums.append(_score_sums(seg.states, seg.actions, coef, pi))
        lengths.append(live.sum(axis=0))
        probs.append(init[s0] * seg.weight)
    Gs, Ls, ps = (np.concatenate(x) for x in (sums, lengths, probs))

    def update(g_rows, n_rows):
        # g_rows, n_rows: the batch's sequences (a list of [N, S*A] sums and [N] lengths)
        if aggregation == "constant":
            return sum(g_rows) / (batch_size * constant)
        if aggregation == "token_mean":
            return sum(g_rows) / sum(n_rows)[:, None]
        return sum(g / n[:, None] for g, n in zip(g_rows, n_rows, strict=True)) / batch_size

    if batch_size == 1:
        combos = [(update([Gs], [Ls]), ps)]
    else:
        combos = [(update([Gs[i][None, :], Gs], [Ls[i:i + 1], Ls]), ps[i] * ps)
                  for i in range(len(ps))]
    mean, var = _weighted_moments(np.concatenate([p for _, p in combos]),
                                  np.concatenate([g for g, _ in combos]))
    true = policy_gradient(mdp, pi)
    scale = constant if aggregation == "constant" else float(ps @ Ls)  # E[L]
    return GradientMoments(mean.reshape(S, A), var, true, true / scale)
