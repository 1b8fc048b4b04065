"""Tabular MDPs: a validated container and seeded generators.

A :class:`TabularMDP` holds ``P[S, A, S]`` (transition probabilities), rewards, optional
Gaussian reward noise, a discount ``gamma``, an initial state distribution and a set of
absorbing terminal states. All arrays are float64 (``terminal`` bool) and read-only.

Rewards may be given per state-action, ``R[S, A]``, or per transition, ``R[S, A, S]``
(the reward for ``(s, a, s')``; needed for e.g. Sutton & Barto's Example 5.5, where the
reward arrives only on the terminating transition). Both are always available:
``mdp.R`` is the expected reward ``R[s, a] = sum_s' P[s, a, s'] R_sas[s, a, s']`` (all the
exact value computations need only this) and ``mdp.R_sas`` the per-transition reward (what
the sampler emits, plus noise ``N(0, reward_std[s, a]^2)``).

Terminal states are absorbing (``P[s, a, s] = 1``), pay nothing and have value 0; the
initial distribution puts no mass on them. A transition *into* a terminal state ends the
episode (``terminated``) and nothing is bootstrapped from it: the exact code uses
``mdp.P_continue = P * ~terminal[None, None, :]``.

``gamma`` must lie in ``[0, 1)``, except that ``gamma == 1`` is allowed when the MDP is
*proper*: every policy reaches a terminal state with probability 1 (checked exactly, see
:func:`is_proper`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._checks import PROB_ATOL, as_float_array, check_distribution, check_int, check_scalar

__all__ = [
    "TabularMDP",
    "is_proper",
    "garnet",
    "chain",
    "gridworld",
    "sutton_barto_loop",
    "sutton_barto_policies",
    "QLambdaCounterexample",
    "q_lambda_counterexample",
    "LEFT",
    "RIGHT",
    "GRID_UP",
    "GRID_RIGHT",
    "GRID_DOWN",
    "GRID_LEFT",
]

# action names used by the generators
LEFT, RIGHT = 0, 1  # chain and Sutton & Barto loop
GRID_UP, GRID_RIGHT, GRID_DOWN, GRID_LEFT = 0, 1, 2, 3  # gridworld
_GRID_MOVES = {0: (0, 1), 1: (1, 0), 2: (0, -1), 3: (-1, 0)}  # action -> (dx, dy); y grows up


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def _closed_nonterminal_set(P: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    """Largest set C of non-terminal states such that every s in C has an action that stays in C
    with probability 1. Empty iff every (possibly stochastic, stationary) policy terminates a.s.
    """
    inside = ~terminal.copy()
    while True:
        # probability of staying inside C, per (s, a)
        stay = P[:, :, inside].sum(axis=-1)
        keep = inside & np.any(stay >= 1.0 - 1e-12, axis=1)
        if np.array_equal(keep, inside):
            return inside
        inside = keep


def is_proper(P: npt.ArrayLike, terminal: npt.ArrayLike) -> bool:
    """True if every stationary policy reaches a terminal state with probability 1.

    A stochastic policy fails to terminate from some state iff its chain has a closed class
    of non-terminal states; restricting it to one action per state keeps that class closed,
    so it suffices to find the largest set of non-terminal states in which some action stays
    with probability 1 (a greatest fixed point, computed by iterated pruning).
    """
    P = np.asarray(P, dtype=np.float64)
    terminal = np.asarray(terminal, dtype=bool)
    return not np.any(_closed_nonterminal_set(P, terminal))


class TabularMDP:
    """A finite MDP, validated on construction.

    Parameters
    ----------
    P : array ``[S, A, S]``
        ``P[s, a, s']``, rows summing to 1.
    R : array ``[S, A]`` or ``[S, A, S]``
        Reward per state-action, or per transition ``(s, a, s')``.
    gamma : float
        Discount in ``[0, 1)``; 1 only if the MDP is proper (see :func:`is_proper`).
    initial : array ``[S]``, optional
        Initial state distribution; default uniform over the non-terminal states.
        Must put no mass on terminal states.
    terminal : array ``[S]`` of bool, or a sequence of state indices, optional
        Absorbing terminal states (``P[s, a, s] = 1``, zero reward, zero noise).
    reward_std : float or array ``[S, A]``, optional
        Standard deviation of Gaussian reward noise (sampler only; exact values use means).
    name : str
        A label for reports.
    """

    def __init__(self, P: npt.ArrayLike, R: npt.ArrayLike, gamma: float, *,
                 initial: npt.ArrayLike | None = None, terminal: npt.ArrayLike | None = None,
                 reward_std: npt.ArrayLike = 0.0, name: str = "") -> None:
        P = as_float_array(P, "P", ndim=3)
        S, A, S2 = P.shape
        if S != S2:
            raise ValueError(f"P: expected shape (S, A, S), got {P.shape}")
        if S < 1 or A < 1:
            raise ValueError(f"P: needs at least one state and one action, got shape {P.shape}")
        check_distribution(P, "P")

        R = as_float_array(R, "R")
        if R.shape == (S, A):
            R_sas = np.broadcast_to(R[:, :, None], (S, A, S)).copy()
        elif R.shape == (S, A, S):
            R_sas = R
        else:
            raise ValueError(f"R: expected shape ({S}, {A}) or ({S}, {A}, {S}), got {R.shape}")

        if terminal is None:
            term = np.zeros(S, dtype=bool)
        else:
            t_arr = np.asarray(terminal)
            if t_arr.dtype == bool:
                if t_arr.shape != (S,):
                    raise ValueError(f"terminal: expected a bool array of shape ({S},), "
                                     f"got {t_arr.shape}")
                term = t_arr.copy()
            else:
                if t_arr.ndim > 1 or (t_arr.size and not np.issubdtype(t_arr.dtype, np.integer)):
                    raise ValueError("terminal: expected a bool mask or a list of state indices")
                idx = t_arr.astype(np.int64).ravel()
                if np.any((idx < 0) | (idx >= S)):
                    raise ValueError(f"terminal: state index out of range [0, {S})")
                term = np.zeros(S, dtype=bool)
                term[idx] = True
        if term.all():
            raise ValueError("terminal: at least one state must be non-terminal")
        for s in np.flatnonzero(term):
            if np.any(np.abs(P[s, :, s] - 1.0) > PROB_ATOL):
                raise ValueError(f"terminal: state {s} is not absorbing (P[{s}, a, {s}] != 1)")
            if np.any(R_sas[s] != 0.0):
                raise ValueError(f"R: terminal state {s} must have zero reward")

        rstd = as_float_array(reward_std, "reward_std")
        if rstd.ndim == 0:
            rstd = np.full((S, A), float(rstd))
        if rstd.shape != (S, A):
            raise ValueError(f"reward_std: expected a scalar or shape ({S}, {A}), got {rstd.shape}")
        if np.any(rstd < 0):
            raise ValueError("reward_std: must be non-negative")
        if np.any(rstd[term] != 0.0):
            raise ValueError("reward_std: terminal states must have zero reward noise")

        if initial is None:
            init = (~term).astype(np.float64) / float((~term).sum())
        else:
            init = as_float_array(initial, "initial", shape=(S,))
            check_distribution(init, "initial")
            if np.any(init[term] > 0):
                raise ValueError("initial: puts mass on a terminal state")

        g = check_scalar(gamma, "gamma", low=0.0, high=1.0)
        if g == 1.0:
            closed = _closed_nonterminal_set(P, term)
            if np.any(closed):
                raise ValueError(
                    "gamma: must be < 1 unless every policy terminates with probability 1; "
                    f"states {np.flatnonzero(closed).tolist()} can be kept from terminating"
                )

        self._P = _readonly(P)
        self._R_sas = _readonly(R_sas)
        self._R = _readonly((P * R_sas).sum(axis=-1))
        self._reward_std = _readonly(rstd)
        self._initial = _readonly(init)
        self._terminal = _readonly(term)
        self._P_continue = _readonly(P * (~term)[None, None, :])
        self._gamma = g
        self.name = str(name)

    # ---- read-only views -------------------------------------------------------------------
    @property
    def P(self) -> np.ndarray:
        """``P[s, a, s']`` (read-only)."""
        return self._P

    @property
    def R(self) -> np.ndarray:
        """Expected reward ``R[s, a]`` (read-only)."""
        return self._R

    @property
    def R_sas(self) -> np.ndarray:
        """Reward per transition ``R_sas[s, a, s']`` (read-only; ``R[s, a]`` broadcast if the
        MDP was built from ``R[S, A]``)."""
        return self._R_sas

    @property
    def reward_std(self) -> np.ndarray:
        """Reward noise std ``[S, A]`` (read-only)."""
        return self._reward_std

    @property
    def gamma(self) -> float:
        return self._gamma

    @property
    def initial(self) -> np.ndarray:
        """Initial state distribution ``[S]`` (read-only)."""
        return self._initial

    @property
    def terminal(self) -> np.ndarray:
        """Bool mask ``[S]`` of absorbing terminal states (read-only)."""
        return self._terminal

    @property
    def P_continue(self) -> np.ndarray:
        """``P[s, a, s'] * [s' not terminal]``: the kernel that bootstraps (read-only)."""
        return self._P_continue

    @property
    def num_states(self) -> int:
        return self._P.shape[0]

    @property
    def num_actions(self) -> int:
        return self._P.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, A)``."""
        return self._P.shape[:2]

    def replace(self, **changes: Any) -> TabularMDP:
        """A new validated MDP with some constructor arguments changed
        (``P, R, gamma, initial, terminal, reward_std, name``)."""
        kw: dict[str, Any] = dict(
            P=self._P,
            R=self._R_sas,
            gamma=self._gamma,
            initial=self._initial,
            terminal=self._terminal,
            reward_std=self._reward_std,
            name=self.name,
        )
        unknown = set(changes) - set(kw)
        if unknown:
            raise TypeError(f"replace: unknown argument(s) {sorted(unknown)}")
        if "terminal" in changes and "initial" not in changes:
            kw["initial"] = None
        kw.update(changes)
        return TabularMDP(kw.pop("P"), kw.pop("R"), kw.pop("gamma"), **kw)

    def __repr__(self) -> str:
        nt = int(self._terminal.sum())
        label = f"{self.name!r}, " if self.name else ""
        return (f"TabularMDP({label}S={self.num_states}, A={self.num_actions}, "
                f"gamma={self._gamma}, terminal={nt})")


# ---- generators ------------------------------------------------------------------------------


def garnet(num_states: int, num_actions: int, branching: int, *, gamma: float = 0.9, seed: int = 0,
           reward_std: float = 0.0, num_terminal: int = 0) -> TabularMDP:
    """A Garnet MDP (Archibald et al. 1995): each (s, a) of a non-terminal state moves to
    ``branching`` distinct next states drawn uniformly, with probabilities from a uniform
    partition of [0, 1] (differences of sorted uniforms); rewards ``R[s, a] ~ U(0, 1)``.

    The last ``num_terminal`` states are absorbing terminal states (reachable like any other).
    The initial distribution is uniform over the non-terminal states.
    """
    S = check_int(num_states, "num_states", low=1)
    A = check_int(num_actions, "num_actions", low=1)
    nterm = check_int(num_terminal, "num_terminal", low=0, high=S - 1)
    b = check_int(branching, "branching", low=1, high=S)
    rstd = check_scalar(reward_std, "reward_std", low=0.0)
    rng = np.random.default_rng(seed)
    n_live = S - nterm
    P = np.zeros((S, A, S))
    for s in range(n_live):
        for a in range(A):
            nxt = rng.choice(S, size=b, replace=False)
            cuts = np.sort(rng.random(b - 1))
            probs = np.diff(np.concatenate(([0.0], cuts, [1.0])))
            P[s, a, nxt] = probs
    for s in range(n_live, S):
        P[s, :, s] = 1.0
    R = np.zeros((S, A))
    R[:n_live] = rng.random((n_live, A))
    std = np.zeros((S, A))
    std[:n_live] = rstd
    return TabularMDP(
        P, R, gamma, terminal=np.arange(n_live, S), reward_std=std,
        name=f"garnet({S},{A},{b},seed={seed})",
    )


def chain(num_states: int = 10, *, gamma: float = 0.95, slip: float = 0.1, goal_reward: float = 1.0,
          step_reward: float = 0.0, reward_std: float = 0.0, start: str = "left") -> TabularMDP:
    """A chain ``0 - 1 - ... - (N-1)`` with a terminal goal at the right end.

    Actions ``LEFT = 0`` and ``RIGHT = 1`` move one step in that direction with probability
    ``1 - slip`` and one step the other way with probability ``slip`` (bumping into the left
    wall stays put). Entering the goal ``N - 1`` pays ``goal_reward`` and ends the episode;
    every other transition pays ``step_reward`` (e.g. -0.01 to reward speed). The optimal
    policy walks right from every state. ``start="left"`` starts every episode in state 0;
    ``start="uniform"`` in a uniformly random non-terminal state (easier exploration).
    With ``slip = 0`` the always-left policy never terminates, so ``gamma = 1`` needs
    ``slip > 0``.
    """
    N = check_int(num_states, "num_states", low=2)
    slip = check_scalar(slip, "slip", low=0.0, high=1.0)
    goal_reward = check_scalar(goal_reward, "goal_reward")
    step_reward = check_scalar(step_reward, "step_reward")
    rstd = check_scalar(reward_std, "reward_std", low=0.0)
    goal = N - 1
    P = np.zeros((N, 2, N))
    for s in range(goal):
        left, right = max(s - 1, 0), s + 1
        P[s, RIGHT, right] += 1.0 - slip
        P[s, RIGHT, left] += slip
        P[s, LEFT, left] += 1.0 - slip
        P[s, LEFT, right] += slip
    P[goal, :, goal] = 1.0
    R = np.full((N, 2, N), step_reward)
    R[:, :, goal] = goal_reward
    R[goal] = 0.0
    std = np.full((N, 2), rstd)
    std[goal] = 0.0
    if start == "left":
        init = np.zeros(N)
        init[0] = 1.0
    elif start == "uniform":
        init = None
    else:
        raise ValueError(f"start: expected 'left' or 'uniform', got {start!r}")
    return TabularMDP(P, R, gamma, initial=init, terminal=[goal], reward_std=std,
                      name=f"chain({N})")


def gridworld(width: int = 5, height: int = 5, *, gamma: float = 0.95, slip: float = 0.1,
              goal: tuple[int, int] | None = None, goal_reward: float = 1.0,
              step_reward: float = 0.0, reward_std: float = 0.0,
              start: tuple[int, int] = (0, 0)) -> TabularMDP:
    """A ``width x height`` grid with a terminal goal cell.

    State index ``s = y * width + x``. Actions ``UP = 0, RIGHT = 1, DOWN = 2, LEFT = 3``; with
    probability ``slip`` the move goes in a uniformly random one of the 4 directions instead.
    Moves off the grid stay put. Entering ``goal`` (default the far corner
    ``(width-1, height-1)``) pays ``goal_reward`` and terminates; other transitions pay
    ``step_reward``. ``start`` is an ``(x, y)`` cell or ``"uniform"`` (all non-goal cells).
    """
    W = check_int(width, "width", low=1)
    H = check_int(height, "height", low=1)
    if W * H < 2:
        raise ValueError("width: the grid needs at least two cells")
    slip = check_scalar(slip, "slip", low=0.0, high=1.0)
    goal_reward = check_scalar(goal_reward, "goal_reward")
    step_reward = check_scalar(step_reward, "step_reward")
    rstd = check_scalar(reward_std, "reward_std", low=0.0)
    gx, gy = (W - 1, H - 1) if goal is None else goal
    if not (0 <= gx < W and 0 <= gy < H):
        raise ValueError(f"goal: cell {goal} outside the {W}x{H} grid")
    S, A = W * H, 4
    g = gy * W + gx

    def move(s: int, a: int) -> int:
        x, y = s % W, s // W
        dx, dy = _GRID_MOVES[a]
        nx, ny = x + dx, y + dy
        if 0 <= nx < W and 0 <= ny < H:
            return ny * W + nx
        return s

    P = np.zeros((S, A, S))
    for s in range(S):
        if s == g:
            P[s, :, s] = 1.0
            continue
        for a in range(A):
            P[s, a, move(s, a)] += 1.0 - slip
            for d in range(A):
                P[s, a, move(s, d)] += slip / A
    R = np.full((S, A, S), step_reward)
    R[:, :, g] = goal_reward
    R[g] = 0.0
    std = np.full((S, A), rstd)
    std[g] = 0.0
    if isinstance(start, str):
        if start != "uniform":
            raise ValueError(f"start: expected an (x, y) cell or 'uniform', got {start!r}")
        init = None
    else:
        sx, sy = start
        if not (0 <= sx < W and 0 <= sy < H) or sy * W + sx == g:
            raise ValueError(f"start: {start} is outside the grid or is the goal")
        init = np.zeros(S)
        init[sy * W + sx] = 1.0
    return TabularMDP(P, R, gamma, initial=init, terminal=[g], reward_std=std,
                      name=f"gridworld({W}x{H})")


def sutton_barto_loop() -> TabularMDP:
    """The one-state loop of Sutton & Barto (2018), Example 5.5 (infinite-variance ordinary IS).

    State 0 is the only non-terminal state; state 1 is terminal. Action ``RIGHT = 1``
    terminates with reward 0. Action ``LEFT = 0`` returns to state 0 with probability 0.9
    (reward 0) and terminates with probability 0.1 (reward +1). ``gamma = 1`` (the MDP is
    proper). With target "always left" and uniform behaviour (:func:`sutton_barto_policies`),
    ``V^pi(0) = 1`` and the ordinary-IS second moment restricted to episodes of length at most
    K is ``sum_{k=1..K} 0.1 * 0.9^(k-1) * 0.5^k * 2^(2k) = 0.25 (1.8^K - 1)``: 4.47, 89.0 and
    31 870 at K = 5, 10, 20, diverging as K grows.
    """
    P = np.zeros((2, 2, 2))
    P[0, LEFT, 0], P[0, LEFT, 1] = 0.9, 0.1
    P[0, RIGHT, 1] = 1.0
    P[1, :, 1] = 1.0
    R = np.zeros((2, 2, 2))
    R[0, LEFT, 1] = 1.0
    return TabularMDP(P, R, 1.0, initial=[1.0, 0.0], terminal=[1], name="sutton_barto_loop")


def sutton_barto_policies() -> tuple[np.ndarray, np.ndarray]:
    """``(target, behaviour)`` of Example 5.5: target always LEFT, behaviour uniform
    (the terminal state's rows are uniform; they never matter)."""
    target = np.array([[1.0, 0.0], [0.5, 0.5]])
    behaviour = np.full((2, 2), 0.5)
    return target, behaviour


@dataclass(frozen=True)
class QLambdaCounterexample:
    """An MDP with target/behaviour policies and a ``lam`` for which Q^pi(lambda) diverges."""

    mdp: TabularMDP
    target: np.ndarray
    behaviour: np.ndarray
    lam: float

    def __iter__(self):  # allows ``mdp, pi, mu, lam = q_lambda_counterexample()``
        return iter((self.mdp, self.target, self.behaviour, self.lam))


def q_lambda_counterexample() -> QLambdaCounterexample:
    """A two-state MDP on which Q^pi(lambda) (Harutyunyan et al. 2016) diverges.

    States 0 and 1; action ``STAY = 0`` keeps the state, action ``SWITCH = 1`` moves to the
    other state (deterministically). Reward 1 for SWITCH, 0 for STAY; ``gamma = 0.9``; no
    terminal states. Target: always SWITCH. Behaviour: STAY w.p. 0.8, SWITCH w.p. 0.2 in both
    states, so ``eps = max_s ||pi - mu||_1 = 1.6`` and the safety bound of Harutyunyan et al.,
    ``lam < (1 - gamma) / (gamma * eps) = 0.0694``, is violated by ``lam = 0.5``.

    The Q^pi(lambda) operator ``Q -> Q + (I - gamma lam P^mu)^{-1} (T^pi Q - Q)`` is affine with
    linear part ``(I - gamma lam P^mu)^{-1} (gamma P^pi - gamma lam P^mu)``; at ``lam = 0.5`` its
    spectral radius is ``117/73 = 1.6027...`` (eigenvalue ``-117/73``, on the mode
    ``Q(0, .) = -Q(1, .)``), so iterating it from any ``Q != Q^pi`` with a component on that
    mode diverges, oscillating in sign. (The radius first exceeds 1 at ``lam = 5/54 = 0.0926``;
    at ``lam = 1`` it is ``72/23 = 3.13``.) ``Q^pi`` is still its fixed point:
    ``Q^pi(s, SWITCH) = 10`` and ``Q^pi(s, STAY) = 9``.

    Found by a small search over two-state deterministic MDPs (offline, not at run time).
    """
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[1, 0, 1] = 1.0  # STAY
    P[0, 1, 1] = P[1, 1, 0] = 1.0  # SWITCH
    R = np.array([[0.0, 1.0], [0.0, 1.0]])
    m = TabularMDP(P, R, 0.9, name="q_lambda_counterexample")
    target = _readonly(np.array([[0.0, 1.0], [0.0, 1.0]]))
    behaviour = _readonly(np.array([[0.8, 0.2], [0.8, 0.2]]))
    return QLambdaCounterexample(m, target, behaviour, 0.5)
