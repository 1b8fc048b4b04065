"""A vectorized, seeded sampler of B parallel streams from a tabular MDP.

:class:`VecEnv` steps B copies of an MDP at once (numpy over B, no Python loop over streams),
with resets after termination and per-stream episode time limits. :func:`sample` rolls it out
for T steps under a behaviour policy and returns a :class:`Batch` of the contract's time-major
``[T, B]`` arrays (docs/DESIGN.md §1):

- ``rewards[t] = R_sas[s_t, a_t, s'_t] + reward_std[s_t, a_t] * N(0, 1)``;
- ``next_states[t]`` is the observation that followed ``a_t`` (the final observation on
  termination or truncation, never the reset state), ``states[t + 1]`` the one the stream
  continues from (the reset state after a done);
- ``terminated[t]``: ``s'_t`` is terminal; ``truncated[t]``: the episode hit ``time_limit``
  after step ``t``, or was cut at random (``truncation_prob``, a geometric time limit),
  without terminating (the two are exclusive); either one resets the stream from
  ``mdp.initial``.

Discrete draws use precomputed cumulative distributions (next states: over each (s, a)'s
support only) and ``argmax(cdf > u)`` with one uniform per stream, so a step costs a few
vectorized numpy operations.
"""

from __future__ import annotations

import dataclasses
import numbers
import time

import numpy as np

from ._checks import as_float_array, check_distribution, check_int, check_policy
from .mdp import TabularMDP

__all__ = ["VecEnv", "StepResult", "Batch", "Segments", "sample", "sample_segments", "throughput"]


def _cdf(p: np.ndarray) -> np.ndarray:
    """Cumulative distribution along the last axis, safe for ``(cdf <= u).sum(-1)`` with
    ``u ~ U[0, 1)``: entries from the last positive-probability outcome on are exactly 1, so
    rounding can neither select a zero-probability outcome nor run past the end."""
    cdf = np.cumsum(p, axis=-1)
    n = p.shape[-1]
    last = n - 1 - np.argmax((p > 0)[..., ::-1], axis=-1)  # index of the last positive entry
    cdf[np.arange(n) >= last[..., None]] = 1.0
    return cdf


def _draw(cdf_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index of the first entry of each row exceeding ``u`` (rows end in exactly 1 > u)."""
    return (cdf_rows > u[:, None]).argmax(axis=1)


def _sparse_cdf(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``p`` ``[N, S]`` reduced to their supports: ``(cdf [N, K], index [N, K])`` with
    ``K`` the largest support size; padding repeats the last support index with cdf 1."""
    nz = p > 0
    K = int(nz.sum(axis=1).max())
    # stable sort puts each row's support first, in state order
    order = np.argsort(~nz, axis=1, kind="stable")[:, :K]
    probs = np.take_along_axis(p, order, axis=1)
    counts = nz.sum(axis=1)
    pad = np.arange(K)[None, :] >= counts[:, None]
    last = np.take_along_axis(order, (counts - 1)[:, None], axis=1)
    order = np.where(pad, last, order)
    probs = np.where(pad, 0.0, probs)
    return _cdf(probs), order


def _rng(seed, rng) -> np.random.Generator:
    if rng is not None:
        if seed is not None:
            raise ValueError("seed: give either seed or rng, not both")
        if not isinstance(rng, np.random.Generator):
            raise TypeError("rng: expected a numpy.random.Generator")
        return rng
    return np.random.default_rng(seed)


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One vectorized step (all ``[B]``). ``states`` are where the streams continue (reset
    where done); ``next_states`` the observations that followed the actions."""

    states: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


class VecEnv:
    """B parallel copies of a :class:`~offpolicy.mdp.TabularMDP`.

    Parameters: ``num_envs`` streams, ``seed`` or ``rng`` (a ``numpy.random.Generator``),
    ``time_limit`` (steps per episode before truncation; ``None``: no limit), ``initial`` (an
    ``[S]`` reset distribution overriding ``mdp.initial``; it may not put mass on terminal
    states), ``truncation_prob`` (after every step that does not terminate, the episode is
    also cut with this probability, independently: a truncation anywhere in a segment; 0 by
    default, and then no extra random numbers are drawn, so seeded streams are unchanged).
    After construction the streams are reset; ``states`` and ``steps`` (the step counter
    within each stream's episode) are public arrays.
    """

    def __init__(self, mdp: TabularMDP, num_envs: int, *, seed=None, rng=None,
                 time_limit: int | None = None, initial=None, truncation_prob: float = 0.0):
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp: expected a TabularMDP, got {type(mdp).__name__}")
        self.mdp = mdp
        self.num_envs = check_int(num_envs, "num_envs", low=1)
        self.time_limit = None if time_limit is None else check_int(time_limit, "time_limit",
                                                                    low=1)
        if isinstance(truncation_prob, bool) or not isinstance(truncation_prob, numbers.Real):
            raise TypeError(f"truncation_prob: expected a number, got "
                            f"{type(truncation_prob).__name__}")
        if not 0.0 <= truncation_prob <= 1.0:
            raise ValueError(f"truncation_prob: must be in [0, 1], got {truncation_prob!r}")
        self.truncation_prob = float(truncation_prob)
        if initial is None:
            init = mdp.initial
        else:
            init = as_float_array(initial, "initial", shape=(mdp.num_states,))
            check_distribution(init, "initial")
            if np.any(init[mdp.terminal] > 0):
                raise ValueError("initial: puts mass on a terminal state")
        self.rng = _rng(seed, rng)
        S, A = mdp.shape
        self._init_cdf = _cdf(init)
        self._P_cdf, self._P_idx = _sparse_cdf(np.asarray(mdp.P).reshape(S * A, S))
        self._R_flat = np.ascontiguousarray(mdp.R_sas).reshape(-1)
        self._std_flat = np.ascontiguousarray(mdp.reward_std).reshape(-1)
        self._noisy = bool(np.any(self._std_flat > 0))
        self._terminal = np.asarray(mdp.terminal)
        self.states = np.zeros(self.num_envs, dtype=np.int64)
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.reset()

    def reset(self) -> np.ndarray:
        """Reset every stream; returns the new ``states``."""
        self.states = self._draw_initial(self.num_envs)
        self.steps[:] = 0
        return self.states

    def _draw_initial(self, n: int) -> np.ndarray:
        u = self.rng.random(n)
        return _draw(np.broadcast_to(self._init_cdf, (n, self._init_cdf.size)), u)

    def step(self, actions) -> StepResult:
        """Take ``actions`` (``[B]`` ints) in every stream; resets the done streams."""
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions: expected {self.num_envs} integer actions, got "
                             f"shape {a.shape} dtype {a.dtype}")
        A = self.mdp.num_actions
        if np.any((a < 0) | (a >= A)):
            raise ValueError(f"actions: out of range [0, {A})")
        return self._step(a.astype(np.int64, copy=False))

    def _step(self, a: np.ndarray) -> StepResult:
        B, S, A = self.num_envs, self.mdp.num_states, self.mdp.num_actions
        s = self.states
        sa = s * A + a
        u = self.rng.random((2, B))
        s2 = self._P_idx[sa, _draw(np.take(self._P_cdf, sa, axis=0), u[0])]
        r = self._R_flat[sa * S + s2]
        if self._noisy:
            r = r + self._std_flat[sa] * self.rng.standard_normal(B)
        terminated = self._terminal[s2]
        self.steps += 1
        if self.time_limit is not None:
            truncated = (self.steps >= self.time_limit) & ~terminated
        else:
            truncated = np.zeros(B, dtype=bool)
        if self.truncation_prob > 0:  # drawn only when asked for: seeded streams stay the same
            truncated |= (self.rng.random(B) < self.truncation_prob) & ~terminated
        done = terminated | truncated
        new = s2.copy()
        if done.any():
            ud = u[1][done]
            new[done] = _draw(np.broadcast_to(self._init_cdf, (ud.size, S)), ud)
            self.steps[done] = 0
        self.states = new
        return StepResult(new, r, s2, terminated, truncated)


@dataclasses.dataclass(frozen=True)
class Batch:
    """``T`` steps of ``B`` streams, time-major ``[T, B]`` (docs/DESIGN.md §1).

    ``states, actions, next_states``: int64. ``rewards, log_rhos, behaviour_probs_taken,
    target_probs_taken``: float64. ``terminated, truncated``: bool. ``values = V[states]`` and
    ``next_values = V[next_states]`` (the final observation on a cut; the table's value of the
    terminal state where terminated, which estimators must ignore) are ``None`` unless a
    ``values`` table was given; ``q_taken = Q[states, actions]`` and ``next_expected_q =
    sum_a pi(a|s') Q(s', a)`` (or ``max_a``) are ``None`` unless ``q`` was given. Without a
    target, ``target = behaviour``: ``log_rhos`` are 0. ``final_states`` / ``final_steps``
    (``[B]``) are where the streams stand after the batch (pass ``env`` to :func:`sample`
    again to continue them).
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    log_rhos: np.ndarray
    behaviour_probs_taken: np.ndarray
    target_probs_taken: np.ndarray
    values: np.ndarray | None
    next_values: np.ndarray | None
    q_taken: np.ndarray | None
    next_expected_q: np.ndarray | None
    final_states: np.ndarray
    final_steps: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.states.shape

    def inputs(self) -> dict:
        """The estimator inputs present in this batch, by their docs/DESIGN.md names."""
        keys = ("rewards", "values", "next_values", "terminated", "truncated", "log_rhos",
                "q_taken", "next_expected_q")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def sample(
    mdp: TabularMDP,
    behaviour,
    *,
    T: int,
    B: int | None = None,
    seed=None,
    rng=None,
    target=None,
    values=None,
    q=None,
    next_q: str = "expected",
    time_limit: int | None = None,
    initial=None,
    env: VecEnv | None = None,
    truncation_prob: float | None = None,
) -> Batch:
    """Roll out ``B`` streams for ``T`` steps under ``behaviour`` (``[S, A]``).

    ``seed`` / ``rng`` seed a fresh :class:`VecEnv` (with ``time_limit`` and ``initial``);
    alternatively pass ``env`` to continue its streams (its rng, limits and reset distribution
    are used; ``B``, ``seed``, ``rng``, ``time_limit``, ``initial``, ``truncation_prob`` must
    then be left out). ``truncation_prob``: see :class:`VecEnv` (default 0).
    ``target`` (``[S, A]``) gives ``log_rhos``; ``values`` (``[S]``) gives ``values`` and
    ``next_values``; ``q`` (``[S, A]``) gives ``q_taken`` and ``next_expected_q``, the latter
    under ``target`` (``next_q="expected"``, behaviour if no target) or ``max_a``
    (``next_q="max"``).
    """
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp: expected a TabularMDP, got {type(mdp).__name__}")
    S, A = mdp.shape
    mu = check_policy(behaviour, "behaviour", S, A)
    pi = mu if target is None else check_policy(target, "target", S, A)
    T = check_int(T, "T", low=1)
    if next_q not in ("expected", "max"):
        raise ValueError(f"next_q: expected 'expected' or 'max', got {next_q!r}")
    v_tab = None if values is None else as_float_array(values, "values", shape=(S,))
    q_tab = None if q is None else as_float_array(q, "q", shape=(S, A))
    if env is None:
        if B is None:
            raise ValueError("B: the number of streams is required (or pass env)")
        env = VecEnv(mdp, B, seed=seed, rng=rng, time_limit=time_limit, initial=initial,
                     truncation_prob=0.0 if truncation_prob is None else truncation_prob)
    else:
        if env.mdp is not mdp:
            raise ValueError("env: was built for a different MDP")
        given = dict(seed=seed, rng=rng, time_limit=time_limit, initial=initial,
                     truncation_prob=truncation_prob)
        clash = [k for k, v in given.items() if v is not None]
        if B is not None and B != env.num_envs:
            clash.append("B")
        if clash:
            raise ValueError(f"{clash[0]}: not allowed together with env")
    B = env.num_envs

    mu_cdf = _cdf(mu)
    states = np.empty((T, B), dtype=np.int64)
    actions = np.empty((T, B), dtype=np.int64)
    next_states = np.empty((T, B), dtype=np.int64)
    rewards = np.empty((T, B))
    terminated = np.empty((T, B), dtype=bool)
    truncated = np.empty((T, B), dtype=bool)
    rng_ = env.rng
    for t in range(T):
        s = env.states
        a = _draw(np.take(mu_cdf, s, axis=0), rng_.random(B))
        out = env._step(a)
        states[t], actions[t], next_states[t] = s, a, out.next_states
        rewards[t], terminated[t], truncated[t] = out.rewards, out.terminated, out.truncated

    sa = states * A + actions
    mu_taken = mu.ravel().take(sa)
    pi_taken = pi.ravel().take(sa)
    if target is None:
        log_rhos = np.zeros((T, B))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):  # nan only where mu = 0: never taken
            log_rhos = (np.log(pi) - np.log(mu)).ravel().take(sa)
    v_t = nv_t = q_t = nq_t = None
    if v_tab is not None:
        v_t, nv_t = v_tab.take(states), v_tab.take(next_states)
    if q_tab is not None:
        ev = q_tab.max(axis=1) if next_q == "max" else (pi * q_tab).sum(axis=1)
        q_t, nq_t = q_tab.ravel().take(sa), ev.take(next_states)
    return Batch(states, actions, rewards, next_states, terminated, truncated, log_rhos,
                 mu_taken, pi_taken, v_t, nv_t, q_t, nq_t, env.states.copy(), env.steps.copy())


@dataclasses.dataclass(frozen=True)
class Segments:
    """All trajectories of a segment as time-major [T,B] arrays, with probabilities ``weight``.

    Reward noise is a two-point distribution (mean +- std, probability 1/2 each): the same
    mean and variance as the MDP's noise, which is all the moments depend on. After a
    termination or a truncation the remaining steps hold a fixed filler (start state, first
    action, reward 0, no flags) that the output at t = 0 must not depend on; at a truncation
    ``next_states`` keeps the final observation, so ``next_values`` differs from the filler's
    ``values`` there, as after a real reset.
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    weight: np.ndarray

    def inputs(self, *, behaviour: np.ndarray, target: np.ndarray,
               values: np.ndarray | None = None, q: np.ndarray | None = None,
               next_q: str = "expected", terminal_next_value: float = np.nan) -> dict:
        """Estimator inputs (docs/DESIGN.md section 1 names, as :mod:`offpolicy.registry`
        reads them) for these trajectories: ``rewards``, ``terminated``, ``truncated``,
        ``log_rhos``; with ``values``: ``values``, ``next_values``; with ``q``: ``q_taken``,
        ``next_expected_q``, ``target_probs_taken``.

        ``next_values`` holds ``terminal_next_value`` (default NaN) wherever terminated.
        """
        out = {
            "rewards": self.rewards,
            "terminated": self.terminated,
            "truncated": self.truncated,
        }
        mu = np.asarray(behaviour, float)
        pi = np.asarray(target, float)
        with np.errstate(divide="ignore"):
            out["log_rhos"] = np.log(pi[self.states, self.actions]) - np.log(
                mu[self.states, self.actions])
        if values is not None:
            values = np.asarray(values, float)
            out["values"] = values[self.states]
            out["next_values"] = np.where(self.terminated, terminal_next_value,
                                          values[self.next_states])
        if q is not None:
            q = np.asarray(q, float)
            eq = q.max(axis=1) if next_q == "max" else np.einsum("ij,ij->i", pi, q)
            out["q_taken"] = q[self.states, self.actions]
            out["next_expected_q"] = np.where(self.terminated, terminal_next_value,
                                              eq[self.next_states])
            out["target_probs_taken"] = pi[self.states, self.actions]
        return out

    def moments(self, x0: np.ndarray) -> tuple[float, float]:
        """Probability-weighted mean and variance of a per-trajectory output ``x0`` [B]."""
        x0 = np.asarray(x0, float)
        mean = float(self.weight @ x0)
        return mean, float(self.weight @ (x0 - mean) ** 2)


def sample_segments(mdp: TabularMDP, behaviour, T: int, n: int, *, rng=None, seed=None,
                    initial=None, time_limit: int | None = None,
                    truncation_prob: float = 0.0) -> Segments:
    """``n`` independent segments of length ``T`` (one per stream, each starting an episode),
    starting from ``initial`` (default ``mdp.initial``), as :class:`Segments` with equal
    weights ``1/n``: the Monte Carlo counterpart of ``moments.enumerate_segments`` (with the
    same ``time_limit`` and ``truncation_prob``; default: no truncation inside the segment).
    Steps after a termination or truncation belong to a fresh episode; outputs at ``t = 0``
    ignore them."""
    b = sample(mdp, behaviour, T=T, B=n, rng=rng, seed=seed, initial=initial,
               time_limit=time_limit, truncation_prob=truncation_prob)
    n = b.states.shape[1]
    return Segments(states=b.states, actions=b.actions, rewards=b.rewards,
                    next_states=b.next_states, terminated=b.terminated,
                    truncated=b.truncated, weight=np.full(n, 1.0 / n))


def throughput(S: int = 50, A: int = 4, B: int = 1024, T: int = 128, *, branching: int = 5,
               repeats: int = 5, seed: int = 0) -> float:
    """Best-of-``repeats`` sampler throughput in steps/s (``T * B`` steps per call, with a
    target, a value table, a Q table and a time limit) on a Garnet MDP with reward noise whose
    (s, a) pairs each reach ``branching`` next states (``branching = S``: dense ``P``)."""
    from . import mdp as mdp_mod
    from . import policies

    m = mdp_mod.garnet(S, A, min(branching, S), seed=seed, reward_std=0.1)
    mu = policies.random_policy(m, seed=seed + 1, min_prob=0.01)
    pi = policies.random_policy(m, seed=seed + 2)
    v = np.zeros(S)
    q = np.zeros((S, A))
    best = np.inf
    for r in range(repeats):
        t0 = time.perf_counter()
        sample(m, mu, T=T, B=B, seed=r, target=pi, values=v, q=q, time_limit=100)
        best = min(best, time.perf_counter() - t0)
    return T * B / best


if __name__ == "__main__":
    for b in (5, 50):
        rate = throughput(branching=b)
        print(f"sampler throughput (S=50, A=4, B=1024, T=128, branching={b}): "
              f"{rate / 1e6:.2f}M steps/s")
