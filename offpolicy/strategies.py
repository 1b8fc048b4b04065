"""Hypothesis strategies for estimator tests (importable by users).

The numbers inside an MDP or policy come from a numpy generator seeded by hypothesis, while
the structure (sizes, branching, terminal states, divergence kind, done patterns) is drawn by
hypothesis itself, so examples stay fast and shrink on what matters.

- :func:`mdps`: small tabular MDPs (S 1-8, A 1-4, any branching, optional terminal states,
  optional reward noise);
- :func:`policy_pairs`: ``(behaviour, target)`` with a controlled divergence
  (``"equal"``, ``"random"``, ``"near_deterministic"``, ``"deterministic"``, ``"tiny_mu"``);
- :func:`value_estimates` / :func:`q_estimates`: exact, stale (another policy's) or noisy
  (terminal states may then hold non-zero values, as a learned critic does);
- :func:`done_patterns` and :func:`trajectory_batches`: estimator inputs ``[T,B]`` with
  arbitrary terminations and truncations (adjacent, both at once, at t = 0 and t = T-1),
  NaN in ``next_values``/``next_expected_q`` wherever terminated, and ``next_values`` that
  may differ from ``values[t+1]`` inside an episode (``consistent=True`` forbids it);
- :func:`estimator_configs`: ``(estimator, output, params)``, optionally restricted to some
  estimators / outputs.

Every strategy checks its arguments when it is made, before anything is drawn: a bad one
raises hypothesis's ``InvalidArgument`` naming it. One keyword means one thing throughout:
``divergence`` how a target differs from its behaviour (:data:`DIVERGENCES`), ``kind`` the
quality of a value estimate (:data:`ESTIMATE_KINDS`), ``ratios`` the importance ratios of a
batch (:data:`RATIO_KINDS`).

tests/test_strategies.py holds every strategy to the case families it exists for (counted
over a fixed set of derandomized draws), so none of them can quietly stop producing one.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NoReturn

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from . import exact as _exact
from . import registry as _registry
from .mdp import TabularMDP

__all__ = [
    "DIVERGENCES",
    "ESTIMATE_KINDS",
    "RATIO_KINDS",
    "mdps",
    "policies",
    "policy_pairs",
    "value_estimates",
    "q_estimates",
    "done_patterns",
    "trajectory_batches",
    "ESTIMATOR_OUTPUTS",
    "estimator_configs",
]

#: ``policy_pairs(divergence=...)``: how the target differs from the behaviour
DIVERGENCES = ("equal", "random", "near_deterministic", "deterministic", "tiny_mu")
#: ``value_estimates(kind=...)``, ``q_estimates(kind=...)``: the quality of the estimate
ESTIMATE_KINDS = ("exact", "stale", "noisy")
#: ``trajectory_batches(ratios=...)``: the importance ratios of the batch
RATIO_KINDS = ("equal", "mixed", "tiny", "zero")
_seeds = st.integers(0, 2**32 - 1)


@st.composite
def _mdps(draw: st.DrawFn, *, min_states: int = 1, max_states: int = 8, min_actions: int = 1,
         max_actions: int = 4, terminal: bool | None = None, gamma: float | None = None,
         noise: float | None = None, min_gamma: float = 0.0) -> TabularMDP:
    proper = gamma == 1.0  # undiscounted: every policy must terminate with probability 1
    S = draw(st.integers(max(min_states, 2) if proper else min_states, max_states))
    A = draw(st.integers(min_actions, max_actions))
    if S == 1 or terminal is False:
        n_term = 0
    else:
        n_term = draw(st.integers(1 if terminal or proper else 0, max(1, S // 3)))
    if gamma is None:
        fixed = [x for x in (0.0, 0.5, 0.9, 0.99) if x >= min_gamma]
        g = draw(st.sampled_from(fixed) | st.floats(min_gamma, 0.99))
    else:
        g = gamma
    std = draw(st.sampled_from([0.0, 0.3, 1.0])) if noise is None else noise
    rng = np.random.default_rng(draw(_seeds))
    n_live = S - n_term
    P = np.zeros((S, A, S))
    for s in range(n_live):
        for a in range(A):
            k = int(rng.integers(1, S + 1))  # any branching, deterministic included
            nxt = rng.choice(S, size=k, replace=False)
            P[s, a, nxt] = rng.dirichlet(np.ones(k))
            if proper and not P[s, a, n_live:].any():  # half the mass to a terminal state
                P[s, a] *= 0.5
                P[s, a, n_live + int(rng.integers(n_term))] += 0.5
    for s in range(n_live, S):
        P[s, :, s] = 1.0
    R = np.zeros((S, A, S))
    R[:n_live] = rng.normal(size=(n_live, A, S))
    rstd = np.zeros((S, A))
    rstd[:n_live] = std
    return TabularMDP(P, R, g, terminal=np.arange(n_live, S), reward_std=rstd, name="drawn")


def _random_policy(rng, S, A):
    return rng.dirichlet(np.ones(A), size=S)


@st.composite
def _policies(draw: st.DrawFn, S: int, A: int) -> np.ndarray:
    return _random_policy(np.random.default_rng(draw(_seeds)), S, A)


@st.composite
def _policy_pairs(draw: st.DrawFn, S: int, A: int, divergence: str | None = None,
                 full_support_target: bool = False) -> tuple[np.ndarray, np.ndarray]:
    kinds = [d for d in DIVERGENCES if not (full_support_target and d == "deterministic")]
    kind = draw(st.sampled_from(kinds)) if divergence is None else divergence
    rng = np.random.default_rng(draw(_seeds))
    mu = _random_policy(rng, S, A)
    if kind == "tiny_mu" and A > 1:
        tiny = rng.random((S, A)) < 0.5
        mu = np.where(tiny, 10.0 ** rng.uniform(-4, -2, size=(S, A)), mu)
        mu = mu / mu.sum(axis=1, keepdims=True)
    if kind == "equal":
        return mu, mu.copy()
    if kind == "near_deterministic" and A > 1:
        best = rng.integers(0, A, size=S)
        pi = np.full((S, A), 1e-3 / max(A - 1, 1))
        pi[np.arange(S), best] = 1 - 1e-3
        return mu, pi
    if kind == "deterministic":
        pi = np.zeros((S, A))
        pi[np.arange(S), rng.integers(0, A, size=S)] = 1.0
        return mu, pi
    return mu, _random_policy(rng, S, A)


@st.composite
def _value_estimates(draw: st.DrawFn, mdp: TabularMDP, policy: np.ndarray,
                    kind: str | None = None) -> np.ndarray:
    kind = draw(st.sampled_from(ESTIMATE_KINDS)) if kind is None else kind
    rng = np.random.default_rng(draw(_seeds))
    if kind == "exact":
        return _exact.v_pi(mdp, policy)
    if kind == "stale":
        return _exact.v_pi(mdp, _random_policy(rng, *policy.shape))
    return _exact.v_pi(mdp, policy) + rng.normal(size=policy.shape[0])


@st.composite
def _q_estimates(draw: st.DrawFn, mdp: TabularMDP, policy: np.ndarray,
                kind: str | None = None) -> np.ndarray:
    kind = draw(st.sampled_from(ESTIMATE_KINDS)) if kind is None else kind
    rng = np.random.default_rng(draw(_seeds))
    if kind == "exact":
        return _exact.q_pi(mdp, policy)
    if kind == "stale":
        return _exact.q_pi(mdp, _random_policy(rng, *policy.shape))
    return _exact.q_pi(mdp, policy) + rng.normal(size=policy.shape)


@st.composite
def _done_patterns(draw: st.DrawFn, T: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    kind = draw(st.sampled_from(["random", "dense", "edges", "none"]))
    rng = np.random.default_rng(draw(_seeds))
    if kind == "none":
        z = np.zeros((T, B), bool)
        return z, z.copy()
    p = {"random": 0.2, "dense": 0.6, "edges": 0.0}[kind]
    term = rng.random((T, B)) < p
    trunc = rng.random((T, B)) < p
    if kind == "edges":  # at t = 0, at t = T-1, adjacent, and both at one step
        for b in range(B):
            which = rng.integers(0, 4)
            flags = (term, trunc)
            flags[rng.integers(0, 2)][0, b] = True
            flags[rng.integers(0, 2)][T - 1, b] = True
            if which == 1 and T > 2:
                term[1, b] = trunc[2, b] = True
            if which == 2:
                term[T // 2, b] = trunc[T // 2, b] = True
    return term, trunc


@st.composite
def _trajectory_batches(draw: st.DrawFn, *, min_T: int = 1, max_T: int = 8, max_B: int = 3,
                        ratios: str | None = None,
                        consistent: bool | None = None) -> dict[str, Any]:
    T = draw(st.integers(min_T, max_T))
    B = draw(st.integers(1, max_B))
    term, trunc = draw(_done_patterns(T, B))
    if consistent is None:
        consistent = draw(st.booleans())
    rng = np.random.default_rng(draw(_seeds))
    kind = draw(st.sampled_from(RATIO_KINDS)) if ratios is None else ratios
    probs_pi = rng.uniform(0.05, 1.0, size=(T, B))
    if kind == "equal":
        log_rhos = np.zeros((T, B))
    else:
        log_rhos = rng.normal(scale=1.5 if kind == "tiny" else 0.7, size=(T, B))
        if kind == "zero":
            zero = rng.random((T, B)) < 0.3
            log_rhos = np.where(zero, -np.inf, log_rhos)
            probs_pi = np.where(zero, 0.0, probs_pi)
    values = rng.normal(size=(T, B))
    q = rng.normal(size=(T, B))
    # without a done, the next observation is the next step's state: consistent data repeat
    # V(s_{t+1}) there; inconsistent data keep a fresh draw at some (at least one) such steps
    next_values = rng.normal(size=(T, B))
    follows = ~(term | trunc)[:-1]
    same = follows.copy()
    if not consistent and follows.any():
        same &= rng.random(follows.shape) < 0.5
        t, b = np.argwhere(follows)[rng.integers(0, int(follows.sum()))]
        same[t, b] = False
    next_values[:-1] = np.where(same, values[1:], next_values[:-1])
    out = {
        "rewards": rng.normal(size=(T, B)),
        "values": values,
        "next_values": np.where(term, np.nan, next_values),
        "terminated": term,
        "truncated": trunc,
        "log_rhos": log_rhos,
        "q_taken": q,
        "next_expected_q": np.where(term, np.nan, rng.normal(size=(T, B))),
        "target_probs_taken": probs_pi,
        "states": rng.integers(0, 8, size=(T, B)),
        "gamma": draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])),
    }
    return out


#: every (estimator, output quantity) with exact moments (:mod:`offpolicy.moments`), in registry
#: order: contract names and the quantities :func:`offpolicy.moments.exact_moments` takes
ESTIMATOR_OUTPUTS = tuple((e.name, e.quantities[out]) for e in _registry.ESTIMATORS.values()
                          if e.moments_name is not None for out in e.outputs)


@st.composite
def _estimator_configs(draw: st.DrawFn, pool: tuple[tuple[str, str], ...],
                       p3o_states: int) -> tuple[str, str, dict[str, Any]]:
    est, out = draw(st.sampled_from(pool))
    info = _registry.lookup(est)
    lam = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    clip = st.sampled_from([0.5, 1.0, 2.0, np.inf])
    params: dict[str, Any] = {}
    if "lam" in info.params:
        params["lam"] = lam
    if "rho_clip" in info.params:
        params["rho_clip"] = draw(clip)
        params["c_clip"] = draw(clip)
        if out == "pg_advantage":
            params["pg_rho_clip"] = draw(clip)
    if "n" in info.params:
        params["n"] = draw(st.integers(1, 4))
    if info.kind == "reward":
        H = draw(st.integers(1, 4))
        rng = np.random.default_rng(draw(_seeds))
        params["weights"] = rng.uniform(0.0, 1.0, size=H)
        params["means"] = rng.normal(size=(p3o_states, H))
    return est, out, params


# ---------------------------------------------------------------------------------------------
# the public strategies: arguments are checked when the strategy is made, before any draw;
# a bad one raises hypothesis's InvalidArgument naming it


def _fail(message: str) -> NoReturn:
    raise InvalidArgument(message)


def _int(x: Any, name: str, low: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer):
        _fail(f"{name}: expected an integer, got {x!r}")
    if x < low:
        _fail(f"{name}: must be >= {low}, got {x!r}")
    return int(x)


def _real(x: Any, name: str, low: float, high: float) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        _fail(f"{name}: expected a real number, got {x!r}")
    if not low <= float(x) <= high:  # NaN fails too
        _fail(f"{name}: must be in [{low}, {high}], got {x!r}")
    return float(x)


def _choice(x: Any, name: str, choices: tuple) -> Any:
    if x is not None and x not in choices:
        _fail(f"{name}: one of {', '.join(map(repr, choices))} or None, got {x!r}")
    return x


def _optional_bool(x: Any, name: str) -> Any:
    if x is not None and not isinstance(x, bool | np.bool_):
        _fail(f"{name}: True, False or None, got {x!r}")
    return x


def _names(x: Any, name: str) -> tuple[str, ...] | None:
    if x is None:
        return None
    if isinstance(x, str) or not isinstance(x, Collection) \
            or not all(isinstance(v, str) for v in x):
        _fail(f"{name}: expected a collection of names (not a bare string), got {x!r}")
    return tuple(x)


def mdps(*, min_states: int = 1, max_states: int = 8, min_actions: int = 1,
         max_actions: int = 4, terminal: bool | None = None, gamma: float | None = None,
         noise: float | None = None, min_gamma: float = 0.0) -> st.SearchStrategy[TabularMDP]:
    """A random tabular MDP.

    ``terminal``: None (maybe), True (at least one terminal state, when S >= 2) or False.
    ``gamma``: a fixed discount or None (drawn from [min_gamma, 0.99]; hypothesis favours the
    low end, and at gamma = 0 no trace can matter, so statements about traces should raise
    ``min_gamma``, as they should ``min_actions`` to 2 for off-policy data). ``gamma = 1``
    draws proper MDPs only (S >= 2, at least one terminal state, and every live (s, a) moves
    to a terminal state with probability >= 1/2 when its drawn row reaches none), because
    TabularMDP refuses an undiscounted MDP that some policy never ends.
    ``noise``: reward noise std (None: maybe some).
    """
    min_states = _int(min_states, "min_states", 1)
    max_states = _int(max_states, "max_states", min_states)
    min_actions = _int(min_actions, "min_actions", 1)
    max_actions = _int(max_actions, "max_actions", min_actions)
    _optional_bool(terminal, "terminal")
    min_gamma = _real(min_gamma, "min_gamma", 0.0, 0.99)
    if gamma is not None:
        gamma = _real(gamma, "gamma", 0.0, 1.0)
        if gamma == 1.0 and (max_states < 2 or terminal is False):
            _fail(f"gamma: 1 needs a terminal state (max_states >= 2, terminal not False), got "
                  f"max_states={max_states}, terminal={terminal!r}")
    if noise is not None:
        noise = _real(noise, "noise", 0.0, float("inf"))
    return _mdps(min_states=min_states, max_states=max_states, min_actions=min_actions,
                 max_actions=max_actions, terminal=terminal, gamma=gamma, noise=noise,
                 min_gamma=min_gamma)


def policies(S: int, A: int) -> st.SearchStrategy[np.ndarray]:
    """One random stochastic policy [S,A] (full support)."""
    return _policies(_int(S, "S", 1), _int(A, "A", 1))


def policy_pairs(S: int, A: int, divergence: str | None = None,
                 full_support_target: bool = False
                 ) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """``(behaviour, target)`` [S,A] each; the behaviour always has full support.

    ``divergence`` one of :data:`DIVERGENCES` or None (any). ``full_support_target`` excludes
    the deterministic target (for statements that need pi > 0).
    """
    S, A = _int(S, "S", 1), _int(A, "A", 1)
    _choice(divergence, "divergence", DIVERGENCES)
    if not isinstance(full_support_target, bool | np.bool_):
        _fail(f"full_support_target: True or False, got {full_support_target!r}")
    if full_support_target and divergence == "deterministic":
        _fail("divergence: 'deterministic' contradicts full_support_target=True")
    return _policy_pairs(S, A, divergence, bool(full_support_target))


def _mdp_and_policy(mdp: Any, policy: Any) -> np.ndarray:
    if not isinstance(mdp, TabularMDP):
        _fail(f"mdp: expected a TabularMDP, got {type(mdp).__name__}")
    policy = np.asarray(policy, dtype=float)
    if policy.shape != mdp.shape:
        _fail(f"policy: expected shape {mdp.shape} (S, A), got {policy.shape}")
    return policy


def value_estimates(mdp: TabularMDP, policy: np.ndarray,
                    kind: str | None = None) -> st.SearchStrategy[np.ndarray]:
    """V [S]: ``"exact"`` (V^policy), ``"stale"`` (V of another policy) or ``"noisy"``."""
    policy = _mdp_and_policy(mdp, policy)
    return _value_estimates(mdp, policy, _choice(kind, "kind", ESTIMATE_KINDS))


def q_estimates(mdp: TabularMDP, policy: np.ndarray,
                kind: str | None = None) -> st.SearchStrategy[np.ndarray]:
    """Q [S,A]: ``"exact"`` (Q^policy), ``"stale"`` or ``"noisy"``."""
    policy = _mdp_and_policy(mdp, policy)
    return _q_estimates(mdp, policy, _choice(kind, "kind", ESTIMATE_KINDS))


def done_patterns(T: int, B: int) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """``(terminated, truncated)`` bool [T,B]: arbitrary, with the edge cases made likely."""
    return _done_patterns(_int(T, "T", 1), _int(B, "B", 1))


def trajectory_batches(*, min_T: int = 1, max_T: int = 8, max_B: int = 3,
                       ratios: str | None = None,
                       consistent: bool | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Estimator inputs ``[T,B]`` (a dict) with arbitrary done patterns.

    Keys: rewards, values, next_values (NaN where terminated), terminated, truncated,
    log_rhos (with -inf where the target probability is 0), q_taken, next_expected_q (NaN
    where terminated), target_probs_taken (pi(a_t|s_t) in [0, 1]), states (for P3O: indices into an
    8-state table), gamma.

    ``ratios``: the importance ratios, one of :data:`RATIO_KINDS` or None (any):
    ``"equal"`` (on-policy, ``log_rhos = 0``), ``"mixed"``, ``"tiny"`` (heavy-tailed) or
    ``"zero"`` (some target probabilities 0, ``log_rhos = -inf``).

    ``consistent``: whether ``next_values[t] == values[t+1]`` where step t is not done and
    t < T-1 (as when both come from one critic evaluated on one trajectory). True: always;
    False: at least one such step (when there is one) holds another value, as with a critic
    evaluated twice (dropout, a target network for next states, values stored at collection
    time against next values recomputed later); None (default): either. The contract reads
    ``next_values[t]``, never ``values[t+1]``, so every estimator identity holds for both;
    only statements that telescope through ``values[t+1]`` (the lambda-return / n-step closed
    forms) need ``consistent=True`` and must ask for it.
    """
    min_T = _int(min_T, "min_T", 1)
    max_T = _int(max_T, "max_T", min_T)
    max_B = _int(max_B, "max_B", 1)
    return _trajectory_batches(min_T=min_T, max_T=max_T, max_B=max_B,
                               ratios=_choice(ratios, "ratios", RATIO_KINDS),
                               consistent=_optional_bool(consistent, "consistent"))


def estimator_configs(estimators: Collection[str] | None = None, p3o_states: int = 8,
                      outputs: Collection[str] | None = None
                      ) -> st.SearchStrategy[tuple[str, str, dict[str, Any]]]:
    """``(estimator, output, params)`` for :func:`offpolicy.moments.exact_moments` and
    :func:`offpolicy.registry.call_estimator` (P3O: ``weights`` [H] and ``means`` [p3o_states, H];
    pass ``p3o_horizon=H`` to exact_moments).

    ``estimators`` / ``outputs``: restrict the draw to these estimator / output names (e.g.
    ``estimators=("vtrace",), outputs=("pg_advantage",)`` for one entry of
    :data:`ESTIMATOR_OUTPUTS`, to give it a test's whole example budget). Estimator names
    are :mod:`offpolicy.registry`'s (an alias selects its estimator: ``"nstep"``,
    ``"nstep_returns"``)."""
    wanted = _names(estimators, "estimators")
    outs = _names(outputs, "outputs")
    p3o_states = _int(p3o_states, "p3o_states", 1)
    if wanted is not None:
        unknown = [e for e in wanted if e not in _registry.ESTIMATORS
                   and e not in _registry.ALIASES]
        if unknown:
            _fail(f"estimators: unknown {unknown!r}; known: "
                  f"{', '.join(sorted({e for e, _ in ESTIMATOR_OUTPUTS}))}")
        wanted = tuple(_registry.canonical(e) for e in wanted)
    if outs is not None:
        known = {o for _, o in ESTIMATOR_OUTPUTS}
        if set(outs) - known:
            _fail(f"outputs: unknown {sorted(set(outs) - known)!r}; known: {sorted(known)}")
    pool = tuple(c for c in ESTIMATOR_OUTPUTS
                 if (wanted is None or _registry.canonical(c[0]) in wanted)
                 and (outs is None or c[1] in outs))
    if not pool:
        _fail(f"estimators/outputs: no entry of ESTIMATOR_OUTPUTS matches "
              f"{estimators!r} / {outputs!r}")
    return _estimator_configs(pool, p3o_states)
