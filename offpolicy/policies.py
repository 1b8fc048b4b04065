"""Tabular policies ``pi[S, A]`` (rows are action distributions) and divergences between them.

Every function returns a fresh float64 array ``[S, A]`` with rows summing to one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._checks import as_float_array, check_int, check_policy, check_scalar

if TYPE_CHECKING:
    from .mdp import TabularMDP

__all__ = [
    "uniform_policy",
    "random_policy",
    "greedy",
    "epsilon_greedy",
    "softmax",
    "mixture",
    "stale_policy",
    "kl_divergence",
    "total_variation",
    "max_ratio",
    "validate_policy",
]


def _shape(num_states, num_actions) -> tuple[int, int]:
    # accept (S, A) or a TabularMDP-like object with .num_states/.num_actions
    if num_actions is None and hasattr(num_states, "num_actions"):
        return int(num_states.num_states), int(num_states.num_actions)
    return (check_int(num_states, "num_states", low=1),
            check_int(num_actions, "num_actions", low=1))


def validate_policy(policy: npt.ArrayLike, num_states: int, num_actions: int,
                    name: str = "policy") -> np.ndarray:
    """``policy`` as a float64 ``[S, A]`` array; raises ``ValueError`` naming ``name`` unless it
    has that shape, is finite and non-negative and its rows sum to one."""
    return check_policy(policy, name, num_states, num_actions)


def uniform_policy(num_states: int | TabularMDP, num_actions: int | None = None) -> np.ndarray:
    """Uniform over actions in every state. ``uniform_policy(S, A)`` or ``uniform_policy(mdp)``."""
    S, A = _shape(num_states, num_actions)
    return np.full((S, A), 1.0 / A)


def random_policy(num_states: int | TabularMDP, num_actions: int | None = None, *, seed: int = 0,
                  concentration: float = 1.0, min_prob: float = 0.0) -> np.ndarray:
    """Each row drawn from ``Dirichlet(concentration * 1)``, then mixed with the uniform policy so
    that every action has probability at least ``min_prob`` (``0 <= min_prob <= 1/A``).
    ``random_policy(S, A, seed=...)`` or ``random_policy(mdp, seed=...)``."""
    S, A = _shape(num_states, num_actions)
    conc = check_scalar(concentration, "concentration", low=0.0, low_open=True)
    floor = check_scalar(min_prob, "min_prob", low=0.0, high=1.0 / A)
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(A, conc), size=S)
    p = (1.0 - A * floor) * p + floor
    return p / p.sum(axis=1, keepdims=True)


def _greedy_mask(q: np.ndarray, tol: float) -> np.ndarray:
    qmax = q.max(axis=1, keepdims=True)
    return q >= qmax - tol * np.maximum(1.0, np.abs(qmax))


def greedy(q: npt.ArrayLike, *, tol: float = 1e-12) -> np.ndarray:
    """Greedy policy of a Q table ``[S, A]``; ties (within ``tol``, relative) share equally."""
    q = as_float_array(q, "q", ndim=2)
    mask = _greedy_mask(q, tol).astype(np.float64)
    return mask / mask.sum(axis=1, keepdims=True)


def epsilon_greedy(q: npt.ArrayLike, epsilon: float, *, tol: float = 1e-12) -> np.ndarray:
    """``(1 - epsilon) * greedy(q) + epsilon * uniform``."""
    q = as_float_array(q, "q", ndim=2)
    eps = check_scalar(epsilon, "epsilon", low=0.0, high=1.0)
    return (1.0 - eps) * greedy(q, tol=tol) + eps / q.shape[1]


def softmax(q: npt.ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Boltzmann policy ``pi(a|s) ∝ exp(q[s, a] / temperature)`` (numerically stable)."""
    q = as_float_array(q, "q", ndim=2)
    temp = check_scalar(temperature, "temperature", low=0.0, low_open=True)
    z = q / temp
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mixture(p: npt.ArrayLike, q: npt.ArrayLike, weight: float) -> np.ndarray:
    """``(1 - weight) * p + weight * q`` for two policies of the same shape."""
    p = as_float_array(p, "p", ndim=2)
    q = as_float_array(q, "q", shape=p.shape)
    w = check_scalar(weight, "weight", low=0.0, high=1.0)
    return (1.0 - w) * p + w * q


def stale_policy(mdp: TabularMDP, target: npt.ArrayLike, k: int, *,
                 step_size: float = 1.0) -> np.ndarray:
    """A policy ``k`` softmax policy-improvement steps *behind* ``target`` on ``mdp``.

    Construction (``k = 0`` returns ``target``): softmax policy improvement (natural policy
    gradient / mirror descent with step ``eta = step_size``) moves ``pi`` to
    ``pi'(a|s) ∝ pi(a|s) exp(eta A^pi(s, a))``. Going back one step, we take

        pi_{-(j+1)}(a|s) ∝ pi_{-j}(a|s) exp(-eta A^{pi_{-j}}(s, a)),   pi_0 = target,

    i.e. the explicit (backward-Euler) reversal of that step: one forward improvement step from
    ``pi_{-(j+1)}`` lands on ``pi_{-j}`` up to ``O(eta^2)``. Each backward step satisfies
    ``sum_a pi_{-(j+1)}(a|s) A^{pi_{-j}}(s, a) <= 0`` in every state, so by the performance
    difference lemma ``V^{pi_{-(j+1)}} <= V^{pi_{-j}}`` everywhere: staler policies are never
    better, and they differ more from the target as ``k`` grows. The stale policy has the same
    support as the target (zero-probability actions stay at zero), so importance ratios between
    the two are finite; soften a deterministic target (e.g. :func:`epsilon_greedy`) first,
    otherwise it cannot move.
    """
    # local import: exact imports this module
    from . import exact

    S, A = mdp.num_states, mdp.num_actions
    pi = validate_policy(target, S, A, "target")
    k = check_int(k, "k", low=0)
    eta = check_scalar(step_size, "step_size", low=0.0)
    for _ in range(k):
        adv = exact.a_pi(mdp, pi)
        with np.errstate(divide="ignore"):
            logits = np.log(pi) - eta * adv
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        pi = e / e.sum(axis=1, keepdims=True)
    return pi


# ---- divergences ---------------------------------------------------------------------------


def _reduce(per_state: np.ndarray, weights, return_per_state: bool) -> np.ndarray | float:
    if return_per_state:
        if weights is not None:
            raise ValueError("weights: not used when per_state=True")
        return per_state
    if weights is None:
        return float(per_state.max())
    w = as_float_array(weights, "weights", shape=per_state.shape)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights: must be non-negative with a positive sum")
    w = w / w.sum()
    mask = w > 0  # states of zero weight do not count, even where the divergence is inf
    return float(np.sum(w[mask] * per_state[mask]))


def _pair(p, q, p_name: str, q_name: str) -> tuple[np.ndarray, np.ndarray]:
    p = as_float_array(p, p_name, ndim=2)
    q = as_float_array(q, q_name, shape=p.shape)
    validate_policy(p, *p.shape, p_name)  # type: ignore[call-arg]  # p is [S, A]
    validate_policy(q, *p.shape, q_name)  # type: ignore[call-arg]
    return p, q


def kl_divergence(p: npt.ArrayLike, q: npt.ArrayLike, *, weights: npt.ArrayLike | None = None,
                  per_state: bool = False) -> float | np.ndarray:
    """``KL(p(.|s) || q(.|s)) = sum_a p log(p / q)`` (inf where ``q = 0 < p``).

    Returns ``max_s`` of it by default, ``sum_s weights(s) KL(s)`` (weights normalised; e.g.
    ``exact.state_distribution(mdp, behaviour)``) when ``weights`` is given, or the ``[S]``
    array when ``per_state=True``.
    """
    p, q = _pair(p, q, "p", "q")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return _reduce(terms.sum(axis=1), weights, per_state)


def total_variation(p: npt.ArrayLike, q: npt.ArrayLike, *, weights: npt.ArrayLike | None = None,
                    per_state: bool = False) -> float | np.ndarray:
    """``TV(s) = 0.5 * sum_a |p - q|`` (note ``||p - q||_1 = 2 TV``, the epsilon of the
    Q^pi(lambda) bound). Reduction as in :func:`kl_divergence`."""
    p, q = _pair(p, q, "p", "q")
    return _reduce(0.5 * np.abs(p - q).sum(axis=1), weights, per_state)


def max_ratio(target: npt.ArrayLike, behaviour: npt.ArrayLike, *,
              weights: npt.ArrayLike | None = None, per_state: bool = False) -> float | np.ndarray:
    """``max_a target(a|s) / behaviour(a|s)`` over actions with ``target > 0`` (inf where the
    behaviour is 0 there). Reduction as in :func:`kl_divergence`."""
    p, q = _pair(target, behaviour, "target", "behaviour")
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(p > 0, p / q, 0.0)
    return _reduce(r.max(axis=1), weights, per_state)
