"""Peers: the estimators of other RL libraries, run through the conformance runner.

``python -m offpolicy.conform --peers [--out DIR]`` runs every entry of :data:`PEERS` whose
library is installed (the ``[peers]`` extra) and writes ``peers.md``, ``peers.csv`` and
``peers.json`` (one row per entry and case family: library, version, function, estimator,
case family, verdict, minimal repro, diagnosis). A peer that is not installed, does not
import, or ships no importable function is listed as ``not run`` with why.

Each entry names the *installed* function by its import path; the only code here is a thin
adapter where the library's call shape differs from the layout's (renaming, reshaping, a
stand-in ``self`` for a method, filling the library's own buffer object, picking an output
field). The libraries' code is called, never copied. What each adapter does and why is in
its docstring; the conventions found are in ``reports/peers/README.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

__all__ = ["Peer", "PEERS", "run_peers", "run_peer", "write_peer_reports", "ROW_FIELDS"]

# columns of peers.csv (and the keys of each row dict)
ROW_FIELDS = ("library", "distribution", "version", "function", "estimator", "layout", "output",
              "fixed_params", "note", "family", "verdict", "reason", "diagnosis", "repro",
              "seconds")


@dataclasses.dataclass(frozen=True)
class Peer:
    """One peer function and how to run it through :func:`offpolicy.conform.check`.

    ``module``/``attr``: the import path and the attribute path inside it (``"A.b"`` for a
    method). ``adapter``: ``None`` (the function is called as it is) or ``adapter(obj)``
    returning the callable to check. ``layout``: a layout name or a zero-argument factory of a
    layout instance (so the table builds without importing anything). ``params``: parameters the
    function hard-codes (fixed, not drawn). ``setup``: run once before the import (e.g. JAX's
    float64 switch, building PufferLib's CPU kernel); it raises to mark the peer not run.
    ``unavailable``: the peer ships no importable function (the row says why; nothing runs).
    """

    library: str
    distribution: str
    module: str
    attr: str
    estimator: str
    layout: object = "contract"
    output: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    adapter: object = None
    array: str | None = None
    dtype: str | None = None
    setup: object = None
    note: str = ""
    unavailable: str | None = None

    @property
    def function(self) -> str:
        return f"{self.module}.{self.attr}"

    def make_layout(self):
        from .layouts import get_layout

        return get_layout(self.layout() if callable(self.layout) else self.layout)


# ---------------------------------------------------------------------------------------------
# adapters: each takes the library object and returns the function to check


def _field(pick, name):
    """Wrap ``fn`` so that it returns ``{name: pick(result)}``; the wrapper keeps ``fn``'s
    signature (``functools.wraps``), so the runner passes it the same keywords."""

    def adapter(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return {name: pick(fn(*args, **kwargs))}

        return wrapper

    return adapter


def _gamma_tensor(adapter=None):
    """Pass ``gamma`` as a 0-d float64 tensor instead of a Python float. TorchRL's functionals
    multiply the Python float by an int/bool mask, which makes a default-dtype (float32) tensor,
    so float64 inputs get a float32-rounded discount; a float64 tensor keeps it exact and lets
    the check see the logic under that rounding."""

    def wrap(fn):
        inner = adapter(fn) if adapter is not None else fn

        @functools.wraps(inner)
        def wrapper(*args, **kwargs):
            import torch

            kwargs["gamma"] = torch.tensor(kwargs["gamma"], dtype=torch.float64)
            return inner(*args, **kwargs)

        return wrapper

    return wrap


def _torch(x, like=None):
    import torch

    t = torch.as_tensor(np.asarray(x) if not hasattr(x, "detach") else x)
    return t if like is None else t.to(like.dtype)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


# -- rlax (one sequence per call, jax arrays) ----------------------------------------------------


def _rlax_nstep(fn):
    """rlax's ``n_step_bootstrapped_returns(r_t, discount_t, v_t, n, lambda_t)``: the layout's
    per-step ``lambda_`` (1 inside an episode, 0 where the trace is cut) goes to ``lambda_t``,
    rlax's way to cut the window (DESIGN §1)."""

    def rlax_n_step(r_t, discount_t, v_t, lambda_, n):
        return fn(r_t, discount_t, v_t, n, lambda_t=lambda_)

    return rlax_n_step


def _rlax_retrace(fn, eps=None):
    """``rlax.retrace`` takes ``mu_t`` as the behaviour probability of the action taken
    (rank 1) and returns ``target - q_tm1[a_tm1]``: index the layout's table and add
    ``q_tm1[a_tm1]`` back to get the target. ``eps``: rlax's ``mu_t + eps`` guard (default
    1e-8)."""
    import jax.numpy as jnp

    def rlax_retrace(q_tm1, q_t, a_tm1, a_t, r_t, discount_t, pi_t, mu_t, lambda_):
        rows = jnp.arange(a_t.shape[0])
        extra = {} if eps is None else {"eps": eps}
        errors = fn(q_tm1, q_t, a_tm1, a_t, r_t, discount_t, pi_t, mu_t[rows, a_t], lambda_,
                    **extra)
        return errors + q_tm1[rows, a_tm1]

    return rlax_retrace


def _rlax_general(trace):
    """rlax's ``general_off_policy_returns_from_action_values(q_t, a_t, r_t, discount_t, c_t,
    pi_t)`` with ``c_t`` as its docstring lists it for each algorithm (``trace``), times the
    layout's per-step ``lambda_`` (0 where the trace is cut)."""
    def adapter(fn):
        import jax.numpy as jnp

        coefficient = {
            "retrace": lambda pi, mu: jnp.minimum(1.0, pi / mu),
            "tree_backup": lambda pi, mu: pi,
            "q_lambda": lambda pi, mu: jnp.ones_like(pi),
            "importance_sampling_q": lambda pi, mu: pi / mu,
        }[trace]

        def rlax_general_off_policy(q_t, a_t, r_t, discount_t, pi_t, mu_t, lambda_):
            rows = jnp.arange(a_t.shape[0])
            c_t = lambda_ * coefficient(pi_t[rows, a_t], mu_t[rows, a_t])
            return fn(q_t, a_t, r_t, discount_t, c_t, pi_t)

        return rlax_general_off_policy

    return adapter


def _jit(adapter=None, static=()):
    """Compile the (adapted) rlax function with ``jax.jit``, as rlax is meant to be used: called
    eagerly, each ``lax.scan`` re-traces and compiles its freshly made body on every call
    (minutes per verdict); jitted, it compiles once per shape."""

    def wrap(fn):
        import jax

        inner = adapter(fn) if adapter is not None else fn
        return jax.jit(inner, static_argnames=static)

    return wrap


def _jax_float64():
    """JAX computes in float32 unless told otherwise; the peers run it in float64 so that the
    float64 family means something (rlax's own tests do the same)."""
    import jax

    jax.config.update("jax_enable_x64", True)


# -- Stable-Baselines3 ---------------------------------------------------------------------------


def _sb3_rollout_buffer(compute_returns_and_advantage):
    """SB3's ``RolloutBuffer.compute_returns_and_advantage(self, last_values, dones)``: fill a
    real ``RolloutBuffer`` through its own ``add`` (episode_start flags, float32 arrays, as the
    rollout loop does), call the method on it and read ``advantages``/``returns`` back."""
    import torch
    from gymnasium import spaces

    box = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def sb3_gae(rewards, values, dones, last_values, last_dones, gamma, lam):
        from stable_baselines3.common.buffers import RolloutBuffer

        T, B = rewards.shape
        buffer = RolloutBuffer(T, box, box, device="cpu", gae_lambda=lam, gamma=gamma,
                               n_envs=B)
        for t in range(T):
            buffer.add(np.zeros((B, 1), np.float32), np.zeros((B, 1), np.float32),
                       _numpy(rewards[t]), _numpy(dones[t]), torch.as_tensor(values[t]),
                       torch.zeros(B))
        compute_returns_and_advantage(buffer, last_values=torch.as_tensor(last_values),
                                      dones=_numpy(last_dones))
        return {"advantages": buffer.advantages, "returns": buffer.returns}

    return sb3_gae


# -- tianshou ------------------------------------------------------------------------------------


def _tianshou_buffer(rewards, terminated, truncated):
    from tianshou.data import Batch, ReplayBuffer

    T = len(rewards)
    buffer = ReplayBuffer(T)
    for t in range(T):
        buffer.add(Batch(obs=np.zeros(1), act=0, rew=float(rewards[t]),
                         terminated=bool(terminated[t]), truncated=bool(truncated[t]),
                         obs_next=np.zeros(1), info={}))
    indices = np.arange(T)
    return buffer, buffer[indices], indices


def _tianshou_gae(fn):
    """tianshou's ``Algorithm.compute_episodic_return(batch, buffer, indices, v_s_, v_s, gamma,
    gae_lambda)`` on one stream held in a real ``ReplayBuffer`` (the segment's unfinished end is
    the buffer's ``unfinished_index``); returns ``(returns, advantage)``."""

    def tianshou_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
        buffer, batch, indices = _tianshou_buffer(rewards, terminated, truncated)
        returns, advantages = fn(batch, buffer, indices, v_s_=next_values, v_s=values,
                                 gamma=gamma, gae_lambda=lam)
        return {"advantages": advantages, "returns": returns}

    return tianshou_gae


def _tianshou_nstep(fn):
    """tianshou's ``Algorithm.compute_nstep_return(batch, buffer, indices, target_q_fn, gamma,
    n_step)`` on one stream in a ``ReplayBuffer``; ``target_q_fn(buffer, idx)`` returns the
    bootstrap value of the window's last step (``next_values[idx]``)."""

    def tianshou_nstep(rewards, next_values, terminated, truncated, gamma, n):
        buffer, batch, indices = _tianshou_buffer(rewards, terminated, truncated)
        bootstrap = np.array(next_values, dtype=np.float64)

        def target_q_fn(_buffer, idx):
            return _torch(bootstrap[idx])

        out = fn(batch, buffer, indices, target_q_fn, gamma=gamma, n_step=int(n))
        return _numpy(out.returns).reshape(-1)

    return tianshou_nstep


# -- skrl ----------------------------------------------------------------------------------------


def _skrl_gae(time_limit_bootstrap: bool, gamma_tensor: bool = False):
    """skrl's PPO ``compute_gae(*, rewards, terminated, truncated, values, last_values,
    discount_factor, lambda_coefficient, time_limit_bootstrap)``: flags of the step itself
    (the done_next layout's episode-start flags shifted back one step), ``V(s_{t+1}) =
    values[t+1]``. Its advantages come back normalised, so the check reads ``returns``.
    ``gamma_tensor``: pass ``discount_factor`` as a 0-d float64 tensor (``discount_factor *
    not_done`` with a Python float and a bool mask is float32)."""

    def adapter(fn):
        import torch

        def skrl_gae(rewards, values, dones, last_values, last_dones, gamma, lam):
            if gamma_tensor:
                gamma = torch.tensor(gamma, dtype=torch.float64)
            step_done = torch.cat([dones[1:], last_dones[None]]).bool()
            returns, _normalised = fn(
                rewards=rewards, terminated=step_done, truncated=torch.zeros_like(step_done),
                values=values, last_values=last_values, discount_factor=gamma,
                lambda_coefficient=lam, time_limit_bootstrap=time_limit_bootstrap)
            return {"returns": returns}

        return skrl_gae

    return adapter


# -- rl-games ------------------------------------------------------------------------------------


def _rl_games_discount_values(fn):
    """rl-games' ``A2CBase.discount_values(self, fdones, last_extrinsic_values, mb_fdones,
    mb_extrinsic_values, mb_rewards)`` reads ``self.horizon_length``, ``self.gamma`` and
    ``self.tau``: a stand-in ``self`` holds them; values and rewards get rl-games' trailing
    value dimension ``[T, B, 1]``."""
    from types import SimpleNamespace

    def rl_games_gae(rewards, values, dones, last_values, last_dones, gamma, lam):
        agent = SimpleNamespace(horizon_length=rewards.shape[0], gamma=gamma, tau=lam)
        advantages = fn(agent, last_dones, last_values[:, None], dones, values[..., None],
                        rewards[..., None])
        return advantages[..., 0]

    return rl_games_gae


def _rl_games_rollout(fn):
    """rl-games' whole rollout as ``A2CBase.play_steps`` stores it, then ``discount_values``:
    every done (terminated or timed out) is flagged, and with ``value_bootstrap`` (its default)
    a time-out adds ``gamma * res_dict['values']`` to the reward, the value of the observation
    *before* the step (``V(s_t)``), not of the final observation. Contract layout (the fold needs
    both flags and ``values``); one line of the loop restated, the GAE is rl-games'."""
    from types import SimpleNamespace

    import torch

    def rl_games_rollout_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
        T = rewards.shape[0]
        time_outs = (truncated & ~terminated).to(rewards.dtype)
        shaped = rewards + gamma * values * time_outs
        done = (terminated | truncated).to(rewards.dtype)
        starts = torch.cat([torch.zeros_like(done[:1]), done[:-1]])
        agent = SimpleNamespace(horizon_length=T, gamma=gamma, tau=lam)
        advantages = fn(agent, done[-1], next_values[-1][:, None], starts, values[..., None],
                        shaped[..., None])
        return advantages[..., 0]

    return rl_games_rollout_gae


# -- PufferLib -----------------------------------------------------------------------------------

_PUFFER_BUILD = os.environ.get("OFFPOLICY_PEERS_BUILD") or os.path.join(
    tempfile.gettempdir(), "offpolicy-peers-build")


def _puffer_kernel():
    """Make ``torch.ops.pufferlib.compute_puff_advantage`` available on CPU torch.

    The pufferlib-core wheel's ``_C`` extension links CUDA torch (libtorch_cuda.so,
    libcudart.so.12), so it does not import on a CPU build. The wheel also ships the kernel's
    CPU source, ``pufferlib/extensions/pufferlib.cpp``, which registers the same op with a CPU
    implementation: use ``_C`` when it imports, otherwise build that installed file with
    ``torch.utils.cpp_extension.load`` (once, about a minute, cached outside the repository in
    ``$OFFPOLICY_PEERS_BUILD`` or the temp dir)."""
    import torch

    if hasattr(torch.ops, "pufferlib") and hasattr(torch.ops.pufferlib,
                                                   "compute_puff_advantage"):
        return
    try:
        importlib.import_module("pufferlib._C")
        return
    except ImportError as e:
        cuda_error = str(e)
    spec = importlib.util.find_spec("pufferlib")
    if spec is None or spec.origin is None:
        raise ImportError("pufferlib is not installed")
    source = Path(spec.origin).parent / "extensions" / "pufferlib.cpp"
    if not source.is_file():
        raise ImportError(f"pufferlib._C does not import ({cuda_error}) and the wheel ships no "
                          f"CPU source to build")
    from torch.utils import cpp_extension

    os.makedirs(_PUFFER_BUILD, exist_ok=True)
    cpp_extension.load(name="pufferlib_cpu_advantage", sources=[str(source)],
                       build_directory=_PUFFER_BUILD, is_python_module=False, verbose=False)


def _puffer_advantage(op):
    """The kernel ``compute_puff_advantage(values, rewards, dones, importance, advantages,
    gamma, lambda, rho_clip, c_clip)`` fills ``advantages`` in place (rows ``[S, T+1]``,
    float32, contiguous); returning None makes the layout read the buffer back."""

    def puff_advantage(values, rewards, dones, importance, advantages, gamma, lam, rho_clip,
                       c_clip):
        op(values, rewards, dones, importance, advantages, float(gamma), float(lam),
           float(rho_clip), float(c_clip))

    return puff_advantage


def _puffer_op(_module):
    """The attribute path ``compute_puff_advantage`` resolves through ``torch.ops``."""
    import torch

    return torch.ops.pufferlib.compute_puff_advantage


# ---------------------------------------------------------------------------------------------
# the table


def _done_next(fold):
    def make():
        from .layouts import DoneNext

        return DoneNext(truncation_fold=fold)

    return make


def _puffer_rows(fold):
    def make():
        from .layouts import PufferRows

        return PufferRows(truncation_fold=fold)

    return make


def _contract_one_stream():
    from .layouts import Contract

    return Contract(batched=False)


_TRL = "torchrl.objectives.value.functional"
_RLAX_X64 = dict(array="jax", setup=_jax_float64)
_G64 = "gamma passed as a float64 tensor"
_TORCHRL_VTRACE_NOTE = ("no lambda (=1); the pg advantage's clip is rho_thresh, so rho_clip and "
                        "pg_rho_clip are fixed equal")

PEERS: tuple[Peer, ...] = (
    # --- TorchRL: batch-major [B, T, 1], done (cut) + terminated (no bootstrap) --------------
    Peer("TorchRL", "torchrl", _TRL, "generalized_advantage_estimate", "gae", "torchrl",
         "advantages"),
    Peer("TorchRL", "torchrl", _TRL, "generalized_advantage_estimate", "gae", "torchrl",
         "returns", note="value_target = advantage + state_value"),
    Peer("TorchRL", "torchrl", _TRL, "vec_generalized_advantage_estimate", "gae", "torchrl",
         "advantages"),
    Peer("TorchRL", "torchrl", _TRL, "td0_advantage_estimate", "gae", "torchrl", "advantages",
         params={"lam": 0.0}, note="TD(0) = GAE with lambda 0"),
    Peer("TorchRL", "torchrl", _TRL, "td1_advantage_estimate", "gae", "torchrl", "advantages",
         params={"lam": 1.0}, note="TD(1) = GAE with lambda 1"),
    Peer("TorchRL", "torchrl", _TRL, "td_lambda_return_estimate", "gae", "torchrl", "returns",
         note="lambda-return from next_state_value only"),
    Peer("TorchRL", "torchrl", _TRL, "vec_td_lambda_return_estimate", "gae", "torchrl",
         "returns", note="lambda-return from next_state_value only"),
    Peer("TorchRL", "torchrl", _TRL, "td0_return_estimate", "nstep_returns", "torchrl",
         "returns", params={"n": 1}, note="one-step return = n-step with n 1"),
    Peer("TorchRL", "torchrl", _TRL, "vtrace_advantage_estimate", "vtrace", "torchrl",
         "value_targets", params={"lam": 1.0, "pg_rho_clip": 1.0},
         note="returns (pg advantage, vs); no lambda (=1)"),
    Peer("TorchRL", "torchrl", _TRL, "vtrace_advantage_estimate", "vtrace", "torchrl",
         "pg_advantages", params={"lam": 1.0, "rho_clip": 1.0, "pg_rho_clip": 1.0},
         adapter=_field(lambda out: out[0], "pg_advantages"), note=_TORCHRL_VTRACE_NOTE),
    # the same with gamma as a float64 tensor (no float32 rounding of the discount)
    Peer("TorchRL", "torchrl", _TRL, "generalized_advantage_estimate", "gae", "torchrl",
         "advantages", adapter=_gamma_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "vec_generalized_advantage_estimate", "gae", "torchrl",
         "advantages", adapter=_gamma_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "vec_generalized_advantage_estimate", "gae", "torchrl",
         "advantages", params={"lam": 0.9}, adapter=_gamma_tensor(),
         note=_G64 + "; lam fixed at 0.9 (lmbda=0 raises)"),
    Peer("TorchRL", "torchrl", _TRL, "vec_td_lambda_return_estimate", "gae", "torchrl",
         "returns", adapter=_gamma_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "vec_td_lambda_return_estimate", "gae", "torchrl",
         "returns", params={"lam": 0.9}, adapter=_gamma_tensor(),
         note=_G64 + "; lam fixed at 0.9 (lmbda=0 raises)"),
    Peer("TorchRL", "torchrl", _TRL, "td0_advantage_estimate", "gae", "torchrl", "advantages",
         params={"lam": 0.0}, adapter=_gamma_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "td0_return_estimate", "nstep_returns", "torchrl",
         "returns", params={"n": 1}, adapter=_gamma_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "vtrace_advantage_estimate", "vtrace", "torchrl",
         "value_targets", params={"lam": 1.0, "pg_rho_clip": 1.0}, adapter=_gamma_tensor(),
         note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "vtrace_advantage_estimate", "vtrace", "torchrl",
         "pg_advantages", params={"lam": 1.0, "rho_clip": 1.0, "pg_rho_clip": 1.0},
         adapter=_gamma_tensor(_field(lambda out: out[0], "pg_advantages")), note=_G64),
    # --- rlax: one sequence per call, discount_t, per-step lambda_ (jitted, float64) ----------
    Peer("rlax", "rlax", "rlax", "lambda_returns", "gae", "rlax", "returns", adapter=_jit(),
         **_RLAX_X64, note="lambda-return from v_t (next values) only"),
    Peer("rlax", "rlax", "rlax", "truncated_generalized_advantage_estimation", "gae", "rlax",
         "advantages", adapter=_jit(), **_RLAX_X64,
         note="one values[T+1] array: no slot for a truncation's bootstrap value"),
    Peer("rlax", "rlax", "rlax", "n_step_bootstrapped_returns", "nstep_returns", "rlax",
         "returns", adapter=_jit(_rlax_nstep, static=("n",)), **_RLAX_X64,
         note="cut via lambda_t"),
    Peer("rlax", "rlax", "rlax", "vtrace", "vtrace", "rlax", "advantages",
         params={"c_clip": 1.0, "pg_rho_clip": 1.0}, adapter=_jit(), **_RLAX_X64,
         note="errors = vs - v_tm1; c clip hard-coded 1"),
    Peer("rlax", "rlax", "rlax", "vtrace_td_error_and_advantage", "vtrace", "rlax",
         "pg_advantages", params={"c_clip": 1.0},
         adapter=_jit(_field(lambda out: out.pg_advantage, "pg_advantages")), **_RLAX_X64,
         note="VTraceOutput.pg_advantage; c clip hard-coded 1"),
    Peer("rlax", "rlax", "rlax", "retrace", "retrace", "rlax", "targets",
         adapter=_jit(_rlax_retrace), **_RLAX_X64,
         note="mu_t of the taken action; eps=1e-8 default"),
    Peer("rlax", "rlax", "rlax", "retrace", "retrace", "rlax", "targets",
         adapter=_jit(functools.partial(_rlax_retrace, eps=0.0)), **_RLAX_X64,
         note="mu_t of the taken action; eps=0 (no guard on pi/mu)"),
    Peer("rlax", "rlax", "rlax", "general_off_policy_returns_from_action_values", "retrace",
         "rlax", "targets", adapter=_jit(_rlax_general("retrace")), **_RLAX_X64,
         note="c_t = lambda min(1, pi/mu)"),
    Peer("rlax", "rlax", "rlax", "general_off_policy_returns_from_action_values", "tree_backup",
         "rlax", "targets", adapter=_jit(_rlax_general("tree_backup")), **_RLAX_X64,
         note="c_t = lambda pi"),
    Peer("rlax", "rlax", "rlax", "general_off_policy_returns_from_action_values", "q_lambda",
         "rlax", "targets", adapter=_jit(_rlax_general("q_lambda")), **_RLAX_X64,
         note="c_t = lambda (Harutyunyan et al.)"),
    Peer("rlax", "rlax", "rlax", "general_off_policy_returns_from_action_values",
         "importance_sampling_q", "rlax", "targets",
         adapter=_jit(_rlax_general("importance_sampling_q")), **_RLAX_X64,
         note="c_t = lambda pi/mu"),
    # --- Stable-Baselines3: episode-start flags; the rollout folds gamma V(final obs) -------
    Peer("Stable-Baselines3", "stable-baselines3", "stable_baselines3.common.buffers",
         "RolloutBuffer.compute_returns_and_advantage", "gae",
         _done_next("bootstrap_reward"), "advantages", adapter=_sb3_rollout_buffer,
         array="torch", note="collect_rollouts adds gamma V(terminal_observation) on "
                             "TimeLimit.truncated; float32 buffers"),
    # --- tianshou: flags of the step itself, V(obs_next), one flat buffer -----------------
    Peer("tianshou", "tianshou", "tianshou.algorithm.algorithm_base",
         "Algorithm.compute_episodic_return", "gae",
         _contract_one_stream, "advantages", adapter=_tianshou_gae,
         note="one ReplayBuffer per stream"),
    Peer("tianshou", "tianshou", "tianshou.algorithm.algorithm_base",
         "Algorithm.compute_nstep_return", "nstep_returns", _contract_one_stream, "returns",
         adapter=_tianshou_nstep, note="target_q_fn = next_values at the window's last step"),
    # --- skrl: flags of the step itself, values[t+1]; advantages come back normalised -------
    Peer("skrl", "skrl", "skrl.agents.torch.ppo.ppo", "compute_gae", "gae",
         _done_next("ignored"), "returns", adapter=_skrl_gae(False), array="torch",
         note="default time_limit_bootstrap=False: not_done = ~terminated"),
    Peer("skrl", "skrl", "skrl.agents.torch.ppo.ppo", "compute_gae", "gae",
         _done_next("bootstrap_reward"), "returns", adapter=_skrl_gae(True), array="torch",
         note="time_limit_bootstrap=True: record_transition adds gamma V(next obs) on "
              "truncation"),
    Peer("skrl", "skrl", "skrl.agents.torch.ppo.ppo", "compute_gae", "gae",
         _done_next("ignored"), "returns", adapter=_skrl_gae(False, gamma_tensor=True),
         array="torch", note="default config; discount_factor as a float64 tensor"),
    Peer("skrl", "skrl", "skrl.agents.torch.ppo.ppo", "compute_gae", "gae",
         _done_next("bootstrap_reward"), "returns", adapter=_skrl_gae(True, gamma_tensor=True),
         array="torch", note="time_limit_bootstrap=True; discount_factor as a float64 tensor"),
    # --- rl-games: episode-start flags (mb_fdones); play_steps folds gamma V(s_t) -----------
    Peer("rl-games", "rl-games", "rl_games.common.a2c_common", "A2CBase.discount_values", "gae",
         _done_next("bootstrap_reward"), "advantages", adapter=_rl_games_discount_values,
         array="torch", note="the GAE alone, given a loop that folds gamma V(final obs)"),
    Peer("rl-games", "rl-games", "rl_games.common.a2c_common", "A2CBase.discount_values", "gae",
         "contract", "advantages", adapter=_rl_games_rollout, array="torch",
         note="with play_steps' value_bootstrap fold: gamma * V(s_t) on time_outs"),
    # --- PufferLib: rows [S, T+1], reward/done stored one column later ---------------------
    Peer("PufferLib", "pufferlib-core", "torch", "ops.pufferlib.compute_puff_advantage",
         "puff_advantage", _puffer_rows(None), "advantages", adapter=_puffer_advantage,
         array="torch", dtype="float32", setup=_puffer_kernel,
         note="CPU kernel built from the wheel's pufferlib/extensions/pufferlib.cpp"),
    Peer("PufferLib", "pufferlib-core", "torch", "ops.pufferlib.compute_puff_advantage",
         "puff_advantage", _puffer_rows("ignored"), "advantages", adapter=_puffer_advantage,
         array="torch", dtype="float32", setup=_puffer_kernel,
         note="as PufferLib's trainer stores it: terminals only, truncations dropped"),
    # --- not importable -----------------------------------------------------------------------
    Peer("CleanRL", "cleanrl", "cleanrl.ppo", "(inline GAE loop)", "gae", _done_next("as_done"),
         "advantages",
         unavailable="inline, not importable: the GAE loop is in the body of the script "
                     "cleanrl/ppo.py (0.4.8 runs argparse and builds environments at import; "
                     "1.2.0, which needs Python < 3.11, keeps it under __main__)"),
    Peer("TRL", "trl", "trl", "PPOTrainer (GAE in train())", "gae", "single_episode_rows",
         "advantages",
         unavailable="the installed trl ships no PPO trainer (1.x has GRPO/RLOO/DPO/...; in "
                     "0.x the GAE was inline in PPOTrainer.train(), not a function)"),
)


# ---------------------------------------------------------------------------------------------
# running


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _resolve(peer: Peer):
    obj = importlib.import_module(peer.module)
    for part in peer.attr.split("."):
        obj = getattr(obj, part)
    return obj


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _layout_name(peer: Peer) -> str:
    try:
        return peer.make_layout().describe()
    except Exception:  # a broken layout entry still gets its row
        return str(peer.layout)


def _row(peer: Peer, version, **kw) -> dict:
    row = dict(library=peer.library, distribution=peer.distribution, version=version or "",
               function=peer.function, estimator=peer.estimator, layout=_layout_name(peer),
               output=peer.output or "", fixed_params=json.dumps(peer.params, sort_keys=True),
               note=peer.note,
               family="", verdict="", reason="", diagnosis="", repro="", seconds="")
    row.update(kw)
    return row


def _repro(report, family: str) -> str:
    cx = report.counterexample
    if cx is None or cx.family != family:
        return ""
    d = cx.to_dict()
    keep = {k: d[k] for k in ("T", "B", "params", "inputs", "expected", "got", "error")}
    return json.dumps(keep, separators=(",", ":"))


def run_peer(peer: Peer, *, examples: int | None = None, seed: int = 0,
             timeout: float | None = 60.0) -> list[dict]:
    """Run one peer entry; rows (one per case family), or one ``not run`` row saying why."""
    version = _version(peer.distribution)
    if peer.unavailable:
        return [_row(peer, version, verdict="not run", reason=peer.unavailable)]
    if version is None:
        return [_row(peer, None, verdict="not run",
                     reason=f"{peer.distribution} is not installed (pip install "
                            f"'offpolicy[peers]')")]
    try:
        if peer.setup is not None:
            peer.setup()
        fn = _resolve(peer)
        if peer.adapter is not None:
            fn = peer.adapter(fn)
        layout = peer.make_layout()
    except Exception as e:  # a peer that does not import is a row, not a crash
        return [_row(peer, version, verdict="not run", reason=f"does not import: {_one_line(e)}")]
    from . import check

    kwargs = dict(layout=layout, output=peer.output, seed=seed, timeout=timeout,
                  **peer.params)
    if peer.array:
        kwargs["array"] = peer.array
    if peer.dtype:
        kwargs["dtype"] = peer.dtype
    if examples is not None:
        kwargs["examples"] = examples
    start = time.perf_counter()
    try:
        report = check(fn, peer.estimator, **kwargs)
    except Exception as e:  # a usage error here is an adapter bug: say so, keep going
        return [_row(peer, version, layout=layout.describe(), verdict="error",
                     reason=f"the runner refused the entry: {_one_line(e)}",
                     seconds=round(time.perf_counter() - start, 2))]
    rows = []
    for case in report.cases:
        rows.append(_row(peer, version, layout=report.layout, output=report.output,
                         family=case.name, verdict=case.verdict, reason=case.reason,
                         diagnosis=(report.diagnosis or "") if case.verdict == "fail" else "",
                         repro=_repro(report, case.name) if case.verdict == "fail" else "",
                         seconds=round(report.seconds, 2)))
    return rows


def run_peers(out_dir=None, *, peers=None, examples: int | None = None, seed: int = 0,
              progress=sys.stderr) -> list[dict]:
    """Run every peer entry; return the rows (see ``ROW_FIELDS``). ``out_dir`` is where
    :func:`write_peer_reports` will write (nothing is written here); progress goes to
    ``progress`` (a stream, or None). ``peers``: the entries to run (default :data:`PEERS`)."""
    peers = PEERS if peers is None else peers
    rows = []
    for i, peer in enumerate(peers, 1):
        label = f"[{i}/{len(peers)}] {peer.library} {peer.attr} ({peer.estimator}/{peer.output})"
        if progress is not None:
            print(label, "...", file=progress, end=" ", flush=True)
        try:
            got = run_peer(peer, examples=examples, seed=seed)
        except Exception as e:  # never let one peer end the run
            where = traceback.format_exc(limit=2).splitlines()[-1]
            got = [_row(peer, _version(peer.distribution), verdict="error",
                        reason=f"{_one_line(e)} | {where}")]
        rows.extend(got)
        if progress is not None:
            print(_entry_verdict(got), file=progress, flush=True)
    return rows


def _entry_verdict(rows: list[dict]) -> str:
    verdicts = {r["verdict"] for r in rows}
    for v in ("not run", "error"):
        if v in verdicts:
            return v
    if "fail" in verdicts:
        return "DOES NOT CONFORM (" + ", ".join(r["family"] for r in rows
                                                if r["verdict"] == "fail") + ")"
    return "conforms"


# ---------------------------------------------------------------------------------------------
# writing


def _entries(rows: list[dict]) -> list[list[dict]]:
    """Rows grouped by entry, in order."""
    groups, keys = [], []
    for r in rows:
        key = (r["library"], r["function"], r["estimator"], r["layout"], r["output"],
               r["fixed_params"], r.get("note", ""))
        if not keys or keys[-1] != key:
            keys.append(key)
            groups.append([])
        groups[-1].append(r)
    return groups


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_peer_reports(rows: list[dict], out_dir) -> list[Path]:
    """Write ``peers.md``, ``peers.csv`` and ``peers.json`` into ``out_dir``; return the
    paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "peers.csv", out / "peers.json", out / "peers.md"]

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in ROW_FIELDS})
    paths[0].write_text(buffer.getvalue())

    entries = []
    for group in _entries(rows):
        head = group[0]
        entry = {k: head.get(k, "") for k in ("library", "distribution", "version", "function",
                                              "estimator", "layout", "output", "note")}
        entry["fixed_params"] = json.loads(head["fixed_params"])
        entry["verdict"] = _entry_verdict(group)
        entry["seconds"] = head["seconds"]
        entry["diagnosis"] = next((r["diagnosis"] for r in group if r["diagnosis"]), None)
        repro = next((r["repro"] for r in group if r["repro"]), "")
        entry["repro"] = json.loads(repro) if repro else None
        entry["cases"] = [{"family": r["family"], "verdict": r["verdict"], "reason": r["reason"]}
                          for r in group]
        entries.append(entry)
    paths[1].write_text(json.dumps({"entries": entries}, indent=1) + "\n")
    paths[2].write_text(_markdown(entries))
    return paths


def _verdict_cell(entry: dict) -> str:
    if entry["verdict"] in ("not run", "error"):
        return f"{entry['verdict']}: {entry['cases'][0]['reason']}"
    return entry["verdict"]


def _markdown(entries: list[dict]) -> str:
    lines = ["# Peer libraries through `offpolicy.conform`", "",
             "Written by `python -m offpolicy.conform --peers`. One line per peer entry (a "
             "function, the layout and output it is checked in, and the parameters it "
             "hard-codes); each entry's case families follow. `n/a`: the layout cannot hold "
             "the case. `s`: seconds the verdict took.", "",
             "| # | library | version | function | estimator / output | layout | fixed | note | "
             "verdict | diagnosis | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(entries, 1):
        fixed = ", ".join(f"{k}={v}" for k, v in e["fixed_params"].items()) or "—"
        lines.append("| " + " | ".join(_md_escape(x) for x in (
            i, e["library"], e["version"] or "—", f"`{e['function']}`",
            f"{e['estimator']} / {e['output']}", e["layout"] or "—", fixed, e["note"] or "—",
            _verdict_cell(e), e["diagnosis"] or "—",
            e["seconds"] if e["seconds"] != "" else "—")) + " |")
    lines += ["", "## Case families", ""]
    for i, e in enumerate(entries, 1):
        lines.append(f"### {i}. {e['library']} `{e['function']}` ({e['estimator']} / "
                     f"{e['output']}, {e['layout']})")
        lines.append("")
        if e["note"]:
            lines += [e["note"], ""]
        if len(e["cases"]) == 1 and not e["cases"][0]["family"]:
            lines += [f"{e['verdict']}: {e['cases'][0]['reason']}", ""]
            continue
        lines += ["| family | verdict | reason |", "|---|---|---|"]
        for c in e["cases"]:
            lines.append(f"| {c['family']} | {c['verdict']} | {_md_escape(c['reason'])} |")
        if e["diagnosis"]:
            lines += ["", f"diagnosis: **{e['diagnosis']}**"]
        if e["repro"]:
            lines += ["", "minimal repro:", "", "```json",
                      json.dumps(e["repro"], separators=(", ", ": ")), "```"]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - the CLI is python -m offpolicy.conform --peers
    raise SystemExit("use: python -m offpolicy.conform --peers [--out DIR]")
