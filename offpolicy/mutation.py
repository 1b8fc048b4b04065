"""The bug catalogue: bugs that real return/advantage code ships, injected into a copy of the
reference (``estimators/numpy.py``), each of which the property suite must kill.

    python -m offpolicy.mutation [--list] [--only NAME ...] [--tests DIR] [--jobs N]
                                 [-- extra pytest args]

Each entry of :data:`CATALOGUE` is a :class:`Mutant`: a bug class (``bug``), where it is seen
(``seen_in``: a library, file, issue or pull request, or an honest "hand-written" /
"hypothetical"), the contract estimators whose outputs it changes (``estimators``), and the
bug itself as a textual patch of exact lines of ``estimators/numpy.py`` (``edits``). A patch
whose text no longer occurs exactly once is ``STALE`` and fails the run, so drift in the
reference is caught.

The check: for each mutant, copy the ``estimators`` package into a temporary directory, apply
the patch, and run the property suite (``pytest -m property -x -k "not T12"`` over the files
holding property tests, ``HYPOTHESIS_PROFILE=ci``) with the copy first on the import path; the
tests whose ids name an estimator the mutant changes run first (this module is also the pytest
plugin that orders them), and ``--jobs`` suites run at once. A mutant is *killed* when the
suite fails; the order never changes that verdict, only how soon ``-x`` stops. Theorem 12
(backends agree with the reference) is left out: an unmutated torch twin would kill every
mutant trivially, and the point is that the theorems themselves catch each bug. The unmutated
copy must pass. Exit status: 0 every mutant killed, 1 a mutant survived or a patch is stale, 2 usage
error (unknown name, no tests directory, the unmutated reference fails).

Diagnosis (``offpolicy.conform``): :func:`load` returns a mutant as an importable in-memory
module, so a user's estimator can be compared with each known bug.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import estimators as _estimators_package

from . import registry as _registry
from ._cli import OneLineParser, UsageError, positive_int, usage_error

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(_estimators_package.__file__).resolve().parent
TARGET = "estimators/numpy.py"

#: the contract estimators (docs/DESIGN.md section 2), as :mod:`offpolicy.registry` names them
ESTIMATORS = _registry.names()
# the state-value trace (docs/DESIGN.md section 2: the estimators that read ``values``)
_STATE = tuple(n for n in _registry.names("state") if "values" in _registry.lookup(n).inputs)
_ACTION = _registry.names("action")
_VTRACE = tuple(n for n in ESTIMATORS if _registry.lookup(n).moments_name == "vtrace")
_RATIO = _registry.names(takes_ratios=True)

# property test files run first, in this order: they kill most mutants within seconds
_FAST_FIRST = ("test_property_splitting.py", "test_property_moments.py",
               "test_property_catalogue.py")


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One bug class, as a patch of exact lines of ``estimators/numpy.py``."""

    name: str
    bug: str  # one line
    seen_in: str  # where real code ships it
    estimators: tuple[str, ...]  # the contract estimators whose outputs it changes
    edits: tuple[tuple[str, str], ...]  # (old, new): old must occur exactly once

    def __post_init__(self):
        unknown = set(self.estimators) - set(ESTIMATORS)
        if unknown or not self.estimators:
            raise ValueError(f"{self.name}: estimators {sorted(unknown)} are not in ESTIMATORS")
        if not self.edits:
            raise ValueError(f"{self.name}: no edits")

    @property
    def old(self) -> str:
        return self.edits[0][0]

    @property
    def new(self) -> str:
        return self.edits[0][1]


def _m(name, bug, seen_in, estimators, *edits) -> Mutant:
    return Mutant(name, bug, seen_in, tuple(estimators), tuple(edits))


# exact lines of estimators/numpy.py the patches replace
_SV_BOOTSTRAP = ("    bootstrap = np.where(beta, next_values, 0.0)  # next_values under "
                 "terminated is never read\n")
_SV_MASKS = "    kappa, beta = _masks(terminated, truncated)\n" + _SV_BOOTSTRAP
_SV_DELTA = "        delta = rho_hat * (rewards + gamma * bootstrap - values)\n"
_SV_STEP = "            advantages[t] = delta[t] + gamma[t] * lam[t] * trace\n"
# the trace is read only where gamma_t lam_t > 0: a bug in the trace's factor changes this too
_SV_READ = "            read = kappa[t] & (gamma[t] * lam[t] > 0)\n"
_BETA = "    beta = ~terminated  # a terminal s'_t has value 0: no bootstrap\n"
_VT_CALL = ("    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), "
            "_clip(rho, c_clip),\n")
_VT_Q = ("        q = r + gamma * np.where(kappa, lam * v_next + (1 - lam) * bootstrap, "
         "bootstrap)\n")
_VT_PG = "        pg = _clip(rho, pg_rho_clip) * (q - v)\n"
_NS_CLOSES = ("                closes = is_open & (~kappa[t + k] | (k == n - 1))  # t+k is the "
              "window's last\n")
_NS_BOOT = "                total = total + np.where(closes, discount * bootstrap[t + k], 0.0)\n"
_P3O_LOOP = """\
    for t in range(T):
        total = np.zeros_like(r[0])
        is_open = np.ones(r.shape[1], dtype=bool)  # the window from t still covers step t+k
        for k in range(min(H, T - t)):
            total = total + np.where(is_open, weights[t, :, k] * (r[t + k] - mean[t, :, k]), 0.0)
            is_open = is_open & kappa[t + k]
        advantages[t] = total
"""
_P3O_LOOP_CUT_NORMALISED = """\
    with _quiet():
        raw = _p3o_weights(std, batch_reward_std, "none")
    for t in range(T):
        window = np.zeros(raw.shape[1:], dtype=bool)  # [B,H]: offsets inside the cut window
        is_open = np.ones(r.shape[1], dtype=bool)
        for k in range(min(H, T - t)):
            window[:, k] = is_open
            is_open = is_open & kappa[t + k]
        w = np.where(window, raw[t], 0.0)
        scale = {"max": w.max(axis=-1), "sum": w.sum(axis=-1)}.get(normalize, np.ones(w.shape[0]))
        w = w / np.where(scale > 0, scale, 1.0)[:, None]
        total = np.zeros_like(r[0])
        for k in range(min(H, T - t)):
            total = total + np.where(window[:, k], w[:, k] * (r[t + k] - mean[t, :, k]), 0.0)
        advantages[t] = total
"""
_NEXT_ROW = "    next_values = np.concatenate([values[1:], next_values[-1:]])  # values[t+1]\n"

CATALOGUE = (
    # ---- dones: truncation vs termination, and where the flags are read --------------------
    _m("trace_not_cut_at_truncation",
       "the trace runs on across a time-limit truncation (only terminations cut it)",
       "GAE loops masked by `(1 - terminateds[t])` only (ai-glimpse/toyrl a2c.py, flagged in "
       "the ai-glimpse/toyrl#22 review)",
       ESTIMATORS,
       ("    kappa = ~done\n", "    kappa = ~terminated\n")),
    _m("truncation_as_termination",
       "a time-limit truncation is treated as a termination (no bootstrap)",
       "CleanRL ppo*.py `next_done = np.logical_or(terminations, truncations)` (vwxyzjn/cleanrl"
       "#408 review, Farama-Foundation/PettingZoo#1126); anthonytorlucci/rlevo#170; "
       "jsboige/CoursIA#7821; SB3 PPO before the timeout fix (DLR-RM/stable-baselines3#633)",
       _STATE + ("nstep_returns",) + _ACTION,
       (_BETA, "    beta = ~(terminated | truncated)\n")),
    _m("bootstrap_at_termination",
       "next_values is bootstrapped even where terminated",
       "the unmasked `delta = rew + v_s_ * gamma - v_s` questioned in thu-ml/tianshou#869 "
       "(right only if v_s_ is zeroed upstream); hand-written trainers",
       _STATE + ("nstep_returns",) + _ACTION,
       (_BETA, "    beta = np.ones_like(terminated)\n")),
    _m("nan_leak_under_terminated",
       "next_values under terminated multiplied by 0 instead of masked (NaN * 0 = NaN)",
       "every `gamma * next_value * (1 - done)` GAE loop (CleanRL, SB3, rl-games) when the "
       "value read after a termination is NaN/inf (an unset final observation)",
       _STATE,
       (_SV_BOOTSTRAP, "    bootstrap = beta * next_values\n")),
    _m("segment_end_not_bootstrapped",
       "the last step of a segment does not bootstrap from next_values",
       "hand-written GAE loops that start from `prev_value = 0` at the segment end "
       "(Renzhenxuexidemaimai/DeepRL_Algorithms Common/GAE.py)",
       _STATE + ("nstep_returns",) + _ACTION,
       (_BETA, _BETA + "    beta[-1] = False\n")),
    _m("done_read_one_step_late",
       "the done flags are read one step late (done_{t+1} masks step t)",
       "CleanRL's `nextnonterminal = 1 - dones[t + 1]` (dones = 'obs_t starts an episode') "
       "applied to Gymnasium's per-step flags; ray-project/ray#10638; EdanToledo/Stoix#142",
       ESTIMATORS,
       ("    done = terminated | truncated\n",
        "    terminated, truncated = _next_step(terminated), _next_step(truncated)\n"
        "    done = terminated | truncated\n")),
    _m("next_value_from_next_row",
       "bootstraps from the next stored row values[t+1] instead of next_values[t] (after a "
       "truncation that row is the next episode's first state)",
       "GAE loops `nextvalues = values[t + 1]` that keep bootstrapping at truncations with an "
       "auto-resetting vector env (the leak of pytorch/rl#4209 in GAE form); ElegantRL/"
       "hand-written trainers storing values only",
       _STATE,
       (_SV_BOOTSTRAP, _NEXT_ROW + "    bootstrap = np.where(beta, next_values, 0.0)\n")),
    _m("truncations_ignored",
       "truncations are not passed at all: the trace runs on and bootstraps from values[t+1]",
       "PufferLib compute_puff_advantage(values, rewards, terminals, ...) takes terminals only "
       "and reads values[t+1] (pufferlib/pufferl.py; PufferDrive PR #208 adds truncations)",
       _STATE,
       (_SV_MASKS, "    kappa, beta = _masks(terminated, np.zeros_like(truncated))\n" + _NEXT_ROW
        + "    bootstrap = np.where(beta, next_values, 0.0)\n")),
    _m("next_values_rolled",
       "next_values = np.roll(values, -1): the last step bootstraps from values[0]",
       "hand-written vectorised GAE on GitHub: `next_values = np.roll(values, -1, axis=1)` "
       "then `deltas = rewards + gamma * next_values - values`",
       _STATE,
       (_SV_BOOTSTRAP, "    next_values = np.roll(values, -1, axis=0)\n"
                       "    bootstrap = np.where(beta, next_values, 0.0)\n")),
    _m("timeout_bootstrap_from_current_value",
       "at a truncation the bootstrap is V(s_t) of the current state instead of V(s'_t)",
       "rsl_rl PPO.process_env_step `rewards += gamma * values * time_outs` (legged_gym/"
       "IsaacLab lineage); DexForce/EmbodiChain#612 review",
       _STATE,
       (_SV_BOOTSTRAP,
        "    bootstrap = np.where(beta, np.where(truncated, values, next_values), 0.0)\n")),
    _m("truncated_step_advantage_zeroed",
       "the advantage of a truncated step is set to 0 (its value target is V(s_t))",
       "pytorch-a2c-ppo-acktr-gail storage.py `gae = gae * bad_masks[step + 1]` "
       "(use_proper_time_limits), copied into MAPPO's on-policy buffers",
       _STATE,
       (_SV_DELTA, _SV_DELTA + "        delta = np.where(truncated & ~terminated, 0.0, delta)\n")),
    # ---- time-outs as rollout loops fold them, and the same on a step flagged terminated
    # and truncated at once (the *_both_flags variants: the loop applies its time-out handling
    # wherever the time-out flag is set, the terminal step included) ----------------------------
    _m("timeout_bootstrap_from_current_value_both_flags",
       "the time-out fold r_t += gamma V(s_t) (V of the current state) is applied on every "
       "time-out flag, also where the step terminated",
       "rsl_rl algorithms/ppo.py process_env_step `rewards += gamma * values * time_outs` with "
       "legged_gym/IsaacLab time_outs set whatever the termination; skrl agents/torch/ppo "
       "`rewards += discount_factor * values * truncated` (time_limit_bootstrap); rl-games "
       "a2c_common.py play_steps value_bootstrap `gamma * values * time_outs`",
       _STATE,
       (_SV_BOOTSTRAP,
        "    bootstrap = np.where(truncated, values, np.where(beta, next_values, 0.0))\n")),
    _m("truncated_step_advantage_zeroed_both_flags",
       "the advantage of every step flagged truncated is set to 0, also where the step "
       "terminated (its value target is V(s_t) instead of r_t)",
       "ikostrikov/pytorch-a2c-ppo-acktr-gail storage.py `gae = gae * bad_masks[step + 1]` "
       "with envs.py TimeLimitMask setting bad_transition whenever the time limit is hit, "
       "terminal or not; marlbenchmark/on-policy utils/shared_buffer.py (same bad_masks)",
       _STATE,
       (_SV_DELTA, _SV_DELTA + "        delta = np.where(truncated, 0.0, delta)\n")),
    _m("bootstrap_at_terminated_and_truncated",
       "the time-out fold r_t += gamma V(final obs) is applied on every truncated flag, so a "
       "step that terminated and was truncated at once still bootstraps",
       "Eclectic-Sheep/sheeprl algos/ppo/ppo.py `truncated_envs = np.nonzero(truncated)` "
       "then `rewards[truncated_envs] += gamma * vals` (its utils' fold uses truncated & "
       "~terminated); Gymnasium-era loops that fold on `truncated` alone",
       _STATE,
       (_SV_BOOTSTRAP, "    bootstrap = np.where(beta | truncated, next_values, 0.0)\n")),
    _m("timeout_checked_before_termination",
       "the loop bootstraps 'if the time limit or the segment end was reached, else 0': a step "
       "that also terminated there is bootstrapped",
       "openai/spinningup spinup/algos/pytorch/ppo/ppo.py and vpg/vpg.py main loop "
       "(`if timeout or epoch_ended:` bootstrap `v`, checked before `d`)",
       _STATE,
       (_SV_BOOTSTRAP, "    reached = beta | truncated\n    reached[-1] = True\n"
                       "    bootstrap = np.where(reached, next_values, 0.0)\n")),
    _m("timeout_folded_without_gamma",
       "at a time-out the bootstrap V(s'_t) is added without the discount (r_t += V(final "
       "obs)); other steps are discounted",
       "Eclectic-Sheep/sheeprl algos/ppo/ppo_decoupled.py and ppo_recurrent/ppo_recurrent.py "
       "(older versions) `rewards[truncated_envs] += vals` with no gamma",
       _STATE,
       (_SV_DELTA, "        delta = rho_hat * (rewards + np.where(truncated & ~terminated, 1.0, "
                   "gamma) * bootstrap - values)\n")),
    _m("timeout_folded_without_gamma_both_flags",
       "r_t += V(final obs) without the discount on every truncated flag, also where the step "
       "terminated",
       "Eclectic-Sheep/sheeprl ppo_decoupled.py (older versions): `np.nonzero(truncated)` "
       "selects the envs, terminal or not, then `rewards[truncated_envs] += vals`",
       _STATE,
       (_SV_DELTA, "        delta = rho_hat * (rewards + np.where(truncated, 1.0, gamma) * "
                   "np.where(truncated, next_values, bootstrap) - values)\n")),
    # ---- episode boundaries -----------------------------------------------------------------
    _m("trace_not_cut_at_termination",
       "the done mask zeroes the bootstrap but not the trace: the advantage of the next "
       "episode is carried into the previous one",
       "seungeunrho/minimalRL ppo.py (`advantage = gamma * lmbda * advantage + delta_t`, no "
       "mask; its loop trains at each done); boyu-ai/Hands-on-RL rl_utils.py "
       "compute_advantage (no mask; called per episode)",
       _STATE,
       (_SV_READ, "            read = np.full(kappa[t].shape, t < T - 1) & "
                  "(gamma[t] * lam[t] > 0)\n")),
    _m("discount_not_reset_at_dones",
       "an O(T^2) loop sums (gamma lam)^(k-t) delta_k for k >= t without stopping at dones "
       "(only delta's bootstrap is masked) and never computes the last step",
       "philtabor/Youtube-Code-Repository ReinforcementLearning/PolicyGradient/PPO/torch/"
       "ppo_torch.py learn(): `for k in range(t, len(reward_arr)-1)`, `discount *= "
       "gamma*gae_lambda`",
       _STATE,
       (_SV_DELTA, _SV_DELTA + "        delta[-1] = 0.0\n"),
       (_SV_READ, "            read = np.full(kappa[t].shape, t < T - 1) & "
                  "(gamma[t] * lam[t] > 0)\n")),
    _m("dones_ignored",
       "the episode boundaries are not read: the discounted sum runs on across every done and "
       "bootstraps from the next row values[t+1] (G_t = r_t + gamma G_{t+1})",
       "nikhilbarhate99/PPO-PyTorch PPO.py (commit 0c1e9d2: no done flags stored, "
       "`discounted_reward = reward + gamma * discounted_reward` over the whole buffer)",
       _STATE,
       (_SV_MASKS, "    kappa, beta = _masks(np.zeros_like(terminated), "
                   "np.zeros_like(truncated))\n" + _NEXT_ROW
        + "    bootstrap = np.where(beta, next_values, 0.0)\n")),
    _m("trajectory_end_never_bootstrapped",
       "the last step of every trajectory is not bootstrapped: time-outs and the segment end "
       "are treated as terminations",
       "rlworkgroup/garage torch/_functions.py compute_advantages (`F.pad(baselines, (0, 1))`: "
       "value 0 after every path); rll/rllab sampler/base.py (`np.append(path_baselines, 0)`)",
       _STATE + ("nstep_returns",) + _ACTION,
       (_BETA, "    beta = ~(terminated | truncated)\n    beta[-1] = False\n")),
    # ---- value targets -----------------------------------------------------------------------
    _m("value_target_lambda_1",
       "GAE's returns (value targets) are the lambda = 1 discounted reward-to-go, not V + A "
       "with the advantages' lambda",
       "openai/spinningup spinup/algos/pytorch/ppo/ppo.py and vpg/vpg.py finish_path "
       "(`ret_buf = discount_cumsum(rews, gamma)[:-1]`, advantages GAE-lambda); "
       "nikhilbarhate99/PPO-PyTorch (Monte Carlo returns)",
       ("gae",),
       ("    adv, ret = _finite((adv, v + adv))\n",
        "    ret = v + _state_value_trace(r, v, nv, term, trunc, ones, ones, gamma, "
        "np.ones_like(lam))\n    adv, ret = _finite((adv, ret))\n")),
    _m("value_target_one_step_td",
       "GAE's returns (value targets) are the one-step TD target r_t + gamma V(s'_t), not "
       "V + A",
       "seungeunrho/minimalRL ppo.py (`td_target = r + gamma * v(s_prime) * done_mask` is the "
       "value loss target); boyu-ai/Hands-on-RL PPO (critic loss on td_target)",
       ("gae",),
       ("    adv, ret = _finite((adv, v + adv))\n",
        "    ret = v + _state_value_trace(r, v, nv, term, trunc, ones, ones, gamma, "
        "np.zeros_like(lam))\n    adv, ret = _finite((adv, ret))\n")),
    _m("last_step_advantage_zero",
       "the last row of a segment is a state, not a transition: its advantage is 0",
       "PufferLib 3 trainer: advantages[:, -1] always 0 (PufferAI/PufferLib#363)",
       _STATE,
       (_SV_DELTA, _SV_DELTA + "        delta[-1] = 0.0\n")),
    # ---- the state-value recurrence -------------------------------------------------------
    _m("lambda_on_first_step",
       "lambda also weights the first TD error (A = lam delta_t + gamma lam c A_{t+1})",
       "hypothetical: a misread lambda-average (cf. the weight formula fixed in labmlai/"
       "annotated_deep_learning_paper_implementations#255)",
       _STATE,
       (_SV_STEP, "            advantages[t] = lam[t] * delta[t] + gamma[t] * lam[t] * trace\n")),
    _m("lambda_missing_from_trace",
       "lambda left out of the trace (A = delta + gamma c A'): every lambda acts as 1",
       "hypothetical: lambda = 1 hard-wired in a hand-written loop (no public instance "
       "found)",
       _STATE,
       (_SV_STEP, "            advantages[t] = delta[t] + gamma[t] * trace\n"),
       (_SV_READ, "            read = kappa[t] & (gamma[t] > 0)\n")),
    _m("gamma_missing_from_trace",
       "gamma left out of the trace (A = delta + lam c A')",
       "hypothetical: a hand-written recursion slip (cf. the threads on its factors, "
       "ikostrikov/pytorch-a3c#34, boyu-ai/Hands-on-RL#22)",
       _STATE,
       (_SV_STEP, "            advantages[t] = delta[t] + lam[t] * trace\n"),
       (_SV_READ, "            read = kappa[t] & (lam[t] > 0)\n")),
    _m("per_step_gamma_read_one_step_late",
       "with per-step discounts the trace uses gamma_{t+1} instead of gamma_t",
       "suspected wherever per-step discounts are shifted by one against the rewards (rlax's "
       "discount_t convention vs. the step's own flag; cf. EdanToledo/Stoix#142)",
       _STATE,
       (_SV_STEP,
        "            advantages[t] = delta[t] + _next_step(gamma)[t] * lam[t] * trace\n"),
       (_SV_READ, "            read = kappa[t] & (_next_step(gamma)[t] * lam[t] > 0)\n")),
    _m("bootstrap_without_gamma",
       "the TD error bootstraps without the discount (delta = r + V(s') - V(s))",
       "XanderJC/scalable-birl#4 (TD error without the discount factor); SB3-style timeout "
       "folding written `rewards += terminal_value` without gamma",
       _STATE,
       (_SV_DELTA, "        delta = rho_hat * (rewards + bootstrap - values)\n")),
    _m("ratio_on_reward_only",
       "the clipped ratio multiplies the reward only (delta = rho r + gamma V' - V)",
       "PufferLib CUDA puff_advantage_row_scalar `delta = rho_t*r_nxt + gamma*v_nxt*"
       "nextnonterminal - v`, unlike its vectorised twin (PufferAI/PufferLib pufferlib.cu)",
       ("vtrace", "puff_advantage", "per_decision_is"),
       (_SV_DELTA, "        delta = rho_hat * rewards + gamma * bootstrap - values\n")),
    _m("returns_from_stale_advantages",
       "GAE returns built from a not-yet-written advantages buffer (returns = values)",
       "CleanRL ppo_atari_envpool_async_jax: `returns = storage.advantages + storage.values` "
       "(vwxyzjn/cleanrl#337)",
       ("gae",),
       ("    adv, ret = _finite((adv, v + adv))\n",
        "    adv, ret = _finite((adv, v + np.zeros_like(adv)))\n")),
    # ---- V-trace ---------------------------------------------------------------------------
    _m("vtrace_c_next_step",
       "V-trace's trace uses c_{t+1} instead of c_t",
       "hypothetical: V-trace ported with Retrace's c_{t+1} indexing (cf. the alignment "
       "question google-deepmind/trfl#24)",
       _VTRACE,
       (_VT_CALL, "    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), "
                  "_next_step(_clip(rho, c_clip)),\n")),
    _m("clip_on_td_error_only",
       "V-trace clips the TD-error ratio but leaves the trace coefficient unclipped",
       "hypothetical: a hand-written V-trace with a single clip (no public instance found)",
       _VTRACE,
       (_VT_CALL,
        "    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, rho_clip), rho,\n")),
    _m("rho_c_clip_swapped",
       "rho_clip and c_clip swapped (the TD error clipped at c_clip, the trace at rho_clip)",
       "hypothetical: an argument-order slip (no public instance found); PufferLib exposes "
       "both as vtrace_rho_clip/vtrace_c_clip",
       _VTRACE,
       (_VT_CALL, "    adv = _state_value_trace(r, v, nv, term, trunc, _clip(rho, c_clip), "
                  "_clip(rho, rho_clip),\n")),
    _m("vtrace_pg_from_next_trajectory",
       "V-trace pg advantage at a truncation uses v_{t+1} of the next row (next episode)",
       "TorchRL vtrace_advantage_estimate (pytorch/rl#4209, fixed in #4210)",
       ("vtrace",),
       (_VT_Q, "        q = r + gamma * np.where(beta & _next_step(np.ones_like(beta)), "
               "lam * v_next + (1 - lam) * bootstrap, bootstrap)\n")),
    _m("vtrace_pg_lambda_part_from_next_row",
       "V-trace pg advantage bootstraps its (1-lam) part (and a cut step) from V(s_{t+1}), the "
       "next row, instead of V(s'_t)",
       "rlax vtrace_td_error_and_advantage: pg q_t uses v_tm1[t+1] (docs/DESIGN.md section 1, "
       "Other libraries: not exact at truncations)",
       ("vtrace",),
       (_VT_Q, "        nrow = np.where(beta & _next_step(np.ones_like(beta)), _next_step(v), "
               "bootstrap)\n"
               "        q = r + gamma * np.where(kappa, lam * v_next + (1 - lam) * nrow, nrow)\n")),
    _m("vtrace_pg_bootstraps_from_value",
       "V-trace pg advantage bootstraps from V(s'_t) instead of the V-trace target v_{t+1}",
       "hypothetical: the A2C-style advantage in IMPALA ports (no public instance found)",
       ("vtrace",),
       (_VT_Q, "        q = r + gamma * bootstrap\n")),
    _m("vtrace_pg_ratio_unclipped",
       "the V-trace policy-gradient ratio is not clipped at pg_rho_clip",
       "hypothetical: pg advantages weighted by the raw ratio (PufferAI/PufferLib#306 notes "
       "the ratio applied twice, once unclipped in the surrogate)",
       ("vtrace",),
       (_VT_PG, "        pg = rho * (q - v)\n")),
    # ---- ratios and action-value traces -----------------------------------------------------
    _m("ratio_inverted",
       "the importance ratio computed as mu/pi",
       "hypothetical: the log-ratio written `behaviour_logp - target_logp` (no public "
       "instance found)",
       _RATIO,
       ("        return np.exp(log_rhos)\n", "        return np.exp(-log_rhos)\n")),
    _m("retrace_c_same_step",
       "Retrace's (Q-trace's) trace uses c_t instead of c_{t+1}",
       "suspected in trfl retrace_ops (the exp_q/qa alignment question, google-deepmind/"
       "trfl#24); Retrace ported with V-trace's c_t indexing",
       ("q_trace", "retrace", "tree_backup", "importance_sampling_q"),
       ("    next_traces = _next_step(traces)", "    next_traces = traces")),
    _m("q_segment_end_bootstraps_from_last_state",
       "the segment end bootstraps from E_pi Q(s_{T-1}, .) of the last stored state instead "
       "of E_pi Q(s'_{T-1}, .) of the state after it",
       "seungeunrho/minimalRL acer.py train(): `q_ret = v[-1] * done_mask[-1]` with v = sum "
       "pi Q over the stored states s_0..s_{T-1} (the next state is never stored)",
       _ACTION,
       ("    bootstrap = np.where(beta, next_expected_q, 0.0)  # never read under terminated\n",
        "    last_state = next_expected_q[-2:-1] if T > 1 else next_expected_q[-1:]  # E Q(s_T-1)\n"
        "    bootstrap = np.where(beta, np.concatenate([next_expected_q[:-1], last_state]), "
        "0.0)\n")),
    _m("retrace_ratio_unclipped",
       "Retrace with the unclipped ratio c = rho (that is per-decision IS)",
       "hypothetical: Retrace written without min(1, .) (no public instance found)",
       ("retrace",),
       ("                    \"log_rhos\", log_rhos, lambda lr: _clip(_ratio(lr), 1.0))\n",
        "                    \"log_rhos\", log_rhos, _ratio)\n")),
    _m("qtrace_correction_uses_expected_q",
       "the Q-trace correction subtracts E_pi Q(s'_t, .) instead of Q(s_{t+1}, a_{t+1})",
       "hypothetical: ACER's Q_ret with V in place of Q (no public instance found)",
       _ACTION,
       ("    next_q_taken = _next_step(q_taken)  # Q(s_{t+1}, a_{t+1})\n",
        "    next_q_taken = bootstrap\n")),
    # ---- n-step -----------------------------------------------------------------------------
    _m("nstep_window_crosses_done",
       "the n-step window does not stop at a done: it sums the next episode's rewards",
       "FastTD3 n-step buffer sampling across episodes (younggyoseo/FastTD3#6, fixed in #7); "
       "tianshou nstep indexing question (thu-ml/tianshou#135)",
       ("nstep_returns",),
       (_NS_CLOSES, "                closes = is_open & ((t + k == T - 1) | (k == n - 1))\n")),
    _m("nstep_bootstrap_gamma_once",
       "the n-step bootstrap is discounted by gamma instead of gamma^m",
       "FastTD3 (younggyoseo/FastTD3#6); keras-rl n-step DQN (jakegrigsby/AdvancedPacmanDQNs"
       "#2); qfettes/DeepRL-Tutorials#1; HorizonRobotics/SocialRobot#8",
       ("nstep_returns",),
       (_NS_BOOT,
        "                total = total + np.where(closes, gamma[t + k] * bootstrap[t + k], "
        "0.0)\n")),
    _m("nstep_bootstrap_gamma_n_fixed",
       "the n-step bootstrap is discounted by gamma^n even when the window is cut short",
       "the gamma ** n_steps fallback discussed in Stable-Baselines-Team/stable-baselines3-"
       "contrib#297 (right only without early termination)",
       ("nstep_returns",),
       (_NS_BOOT,
        "                total = total + np.where(closes, gamma[t] ** n * bootstrap[t + k], "
        "0.0)\n")),
    _m("nstep_truncation_not_bootstrapped",
       "the n-step return does not bootstrap at a truncation",
       "off-policy agents zeroing the bootstrap at truncation (anthonytorlucci/rlevo#170; the "
       "FastTD3 truncation bug pinned in strands-labs/robots#967)",
       ("nstep_returns",),
       ("    bootstrap = np.where(beta, nv, 0.0)\n",
        "    bootstrap = np.where(beta & ~trunc, nv, 0.0)\n")),
    # ---- P3O --------------------------------------------------------------------------------
    _m("p3o_max_over_cut_window",
       "P3O weights normalised over the window cut at the first done instead of all H offsets",
       "PufferLib p3o_kernel: `gamma_max` is taken over j < k, the window already cut at "
       "dones[t+1] (PufferLib's CUDA extension, P3O experiment)",
       ("p3o_advantage",),
       (_P3O_LOOP, _P3O_LOOP_CUT_NORMALISED)),
    _m("p3o_window_drops_last_offset",
       "the P3O window covers at most H-1 offsets: the last prediction is never used",
       "PufferLib p3o_kernel: the window loop `for (int j = 0; j < horizon-1; j++)`",
       ("p3o_advantage",),
       ("        for k in range(min(H, T - t)):\n",
        "        for k in range(min(H - 1, T - t)):\n")),
    _m("p3o_window_not_cut_at_truncation",
       "the P3O window runs on across a truncation (cut at terminations only)",
       "inferred: PufferLib passes `terminals` only to its advantage kernels (no public P3O "
       "instance found)",
       ("p3o_advantage",),
       ("            is_open = is_open & kappa[t + k]\n",
        "            is_open = is_open & ~term[t + k]\n")),
)

MUTANTS = CATALOGUE  # the historical name

#: time-out classes whose patch leaves a step flagged terminated *and* truncated as the contract
#: has it (a test checks it): they have no ``_both_flags`` variant
SAME_ON_BOTH_FLAGS = ("trace_not_cut_at_truncation", "truncation_as_termination",
                      "next_value_from_next_row", "truncations_ignored",
                      "nstep_truncation_not_bootstrapped", "p3o_window_not_cut_at_truncation")

_BY_NAME = {m.name: m for m in CATALOGUE}
if len(_BY_NAME) != len(CATALOGUE):
    raise RuntimeError("two mutants share a name")


def by_name(name: str) -> Mutant:
    """The catalogue entry called ``name`` (``KeyError`` listing the names otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no mutant {name!r}; known: {', '.join(_BY_NAME)}") from None


def catalogue_markdown() -> str:
    """The bug-class page (``docs/bug-classes.md``), generated from :data:`CATALOGUE`: one row
    per class with what it does, the estimators it changes and where it is seen. A test keeps
    the page equal to this text; regenerate it with ``python -c "from offpolicy import mutation;
    print(mutation.catalogue_markdown(), end='')" > docs/bug-classes.md``."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Bug classes",
        "",
        "The catalogue of `offpolicy.mutation`: bugs that real return/advantage code ships, each "
        "written as a patch of the reference (`estimators/numpy.py`). `python -m "
        "offpolicy.mutation` checks that the property suite kills every one; "
        "`offpolicy.conform` runs them as implementations to name the bug of a failing "
        "function (see [Conformance](conformance.md)). Classes ending in `_both_flags` are the "
        "time-out classes applied also on a step flagged terminated and truncated at once, as "
        "rollout loops that read the time-out flag alone do. The other time-out classes "
        f"({', '.join(f'`{n}`' for n in SAME_ON_BOTH_FLAGS)}) already act on such a step "
        "as the contract does (the termination decides), so they need no such variant.",
        "",
        "This page is generated from the catalogue (`offpolicy.mutation.catalogue_markdown`); "
        "a test keeps it in step.",
        "",
        f"{len(CATALOGUE)} classes.",
        "",
        "| class | what it does | estimators it changes | where it is seen |",
        "|---|---|---|---|",
    ]
    for m in CATALOGUE:
        estimators = ("every estimator" if set(m.estimators) == set(ESTIMATORS)
                      else ", ".join(f"`{e}`" for e in m.estimators))
        lines.append(f"| `{m.name}` | {cell(m.bug)} | {estimators} | {cell(m.seen_in)} |")
    return "\n".join(lines) + "\n"


class StalePatch(Exception):
    pass


def apply(source: str, mutant: Mutant) -> str:
    """``source`` with every edit of ``mutant`` applied (each old text must occur once)."""
    for old, new in mutant.edits:
        count = source.count(old)
        if count != 1:
            raise StalePatch(f"{mutant.name}: the patched text occurs {count} times in "
                             f"{TARGET}: {old.strip()[:60]!r}")
        source = source.replace(old, new)
    return source


# ---------------------------------------------------------------------------------------------
# diagnosis: a mutant as an in-memory module


_LOADED: dict[str, types.ModuleType] = {}


def reference_source() -> str:
    """The source of the imported reference, ``estimators/numpy.py``."""
    return (PACKAGE_DIR / "numpy.py").read_text()


def load(mutant: Mutant | str | None) -> types.ModuleType:
    """The reference with ``mutant`` applied (a :class:`Mutant` or its name; ``None``: the
    unmutated source loaded the same way), as a module ``estimators._mutant_<name>`` of the
    ``estimators`` package so its relative imports work. Cached; writes no file and leaves
    ``sys.modules`` (``estimators.numpy`` included) untouched. Raises :class:`StalePatch`
    if the patch no longer applies."""
    if isinstance(mutant, str):
        mutant = by_name(mutant)
    key = "unmutated" if mutant is None else mutant.name
    if key not in _LOADED:
        source = reference_source()
        if mutant is not None:
            source = apply(source, mutant)
        name = f"estimators._mutant_{key}"
        module = types.ModuleType(name, f"estimators/numpy.py with the mutant {key!r}")
        module.__package__ = "estimators"
        module.__file__ = str(PACKAGE_DIR / "numpy.py")
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)
        _LOADED[key] = module
    return _LOADED[key]


# ---------------------------------------------------------------------------------------------
# the check


def find_tests(explicit: str | None = None) -> Path:
    """The tests directory: ``explicit``, else the checkout's ``tests/`` next to the package,
    else ``./tests``; it must hold the property suite (``test_proofs_index.py``)."""
    candidates = [Path(explicit)] if explicit else [ROOT / "tests", Path.cwd() / "tests"]
    for path in candidates:
        if (path / "test_proofs_index.py").is_file() and (path / "conftest.py").is_file():
            return path.resolve()
    where = explicit or f"{ROOT / 'tests'} or {Path.cwd() / 'tests'}"
    raise UsageError(f"no property test suite found at {where} (the mutation check needs a "
                     "source checkout: run it from the repository or pass --tests DIR)")


def property_files(tests: Path) -> list[Path]:
    """Files holding property tests other than theorem 12's, fast killers first."""
    files = []
    for path in sorted(tests.glob("test_*.py")):
        text = path.read_text()
        if "mark.property" not in text:
            continue
        names = re.findall(r"^def (test_\w+)", text, re.M)
        if names and all(n.startswith("test_T12_") for n in names):
            continue  # deselected by -k "not T12" anyway; skipping spares its imports
        files.append(path)
    rank = {name: i for i, name in enumerate(_FAST_FIRST)}
    return sorted(files, key=lambda p: rank.get(p.name, len(rank)))


# words that name each estimator in test ids: its registry names (tests and offpolicy.moments
# also call some by their aliases: nstep, puff, pdis, p3o)
_TEST_WORDS = {e.name: e.all_names for e in _registry.ESTIMATORS.values()}
_FIRST_ENV = "OFFPOLICY_MUTATION_FIRST"


def pytest_collection_modifyitems(session, config, items):
    """pytest plugin hook (``-p offpolicy.mutation``): run first the tests whose ids name an
    estimator the mutant changes (the words in $OFFPOLICY_MUTATION_FIRST), the rest after in
    their usual order. Only the order changes: with ``-x`` a mutant dies sooner, and one that
    survives still ran the whole suite."""
    words = [w for w in os.environ.get(_FIRST_ENV, "").split(",") if w]
    if words:
        items.sort(key=lambda item: not any(w in item.nodeid for w in words))


def run_suite(package_dir: Path, tests: Path, pytest_args: list[str],
              first: tuple[str, ...] = ()) -> tuple[bool, float, str]:
    """Run the property suite with ``package_dir`` first on the path, the tests that name the
    estimators ``first`` first; (passed, seconds, tail)."""
    env = dict(os.environ)
    env[_FIRST_ENV] = ",".join(w for name in first for w in _TEST_WORDS[name])
    env["HYPOTHESIS_PROFILE"] = "ci"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(package_dir), str(ROOT),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    check = subprocess.run(
        [sys.executable, "-c", "import estimators; print(estimators.__file__)"],
        cwd=package_dir, env=env, capture_output=True, text=True,
    )
    if not check.stdout.strip().startswith(str(package_dir)):
        raise RuntimeError(f"the copy is not imported first: {check.stdout}{check.stderr}")
    cmd = [sys.executable, "-m", "pytest", *map(str, property_files(tests)), "-m", "property",
           "-x", "-q", "-k", "not T12", "-p", "no:cacheprovider", "-p", "offpolicy.mutation",
           "--rootdir",
           str(tests.parent), *pytest_args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=package_dir, env=env, capture_output=True, text=True)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return proc.returncode == 0, time.perf_counter() - start, tail


def _check(mutant: Mutant | None, source: str, tmp: Path, tests: Path, pytest_args):
    """Run the suite on a fresh copy of the package with ``mutant`` applied (None: unmutated);
    (status, seconds, detail) with status "passes"/"FAILS" for None, else "killed",
    "SURVIVED" or "STALE"."""
    try:
        text = source if mutant is None else apply(source, mutant)
    except StalePatch as exc:
        return "STALE", 0.0, str(exc)
    work = Path(tempfile.mkdtemp(dir=tmp))
    shutil.copytree(PACKAGE_DIR, work / "estimators",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (work / TARGET).write_text(text)
    passed, secs, tail = run_suite(work, tests, pytest_args,
                                   () if mutant is None else mutant.estimators)
    if mutant is None:
        return ("passes", secs, "") if passed else ("FAILS", secs, tail)
    if passed:
        return "SURVIVED", secs, f"({mutant.bug})"
    first = next((ln for ln in tail.splitlines() if ln.startswith("FAILED")), tail)
    return "killed", secs, first.split("::")[-1] if "::" in first else first


PROG = "python -m offpolicy.mutation"


def main(argv=None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true",
                        help="list the catalogue (name, estimators, seen in) and exit")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only these mutants")
    parser.add_argument("--tests", default=None, metavar="DIR",
                        help="the tests directory (default: the checkout's tests/)")
    parser.add_argument("--jobs", type=positive_int, default=min(2, os.cpu_count() or 1),
                        metavar="N",
                        help="suites run at once (default: min(2, CPUs))")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.list:
        for m in CATALOGUE:
            print(f"{m.name}\n    bug:        {m.bug}\n    estimators: "
                  f"{', '.join(m.estimators)}\n    seen in:    {m.seen_in}")
        return 0
    try:
        unknown = [n for n in args.only or () if n not in _BY_NAME]
        if unknown:
            raise UsageError(f"unknown mutant {', '.join(map(repr, unknown))}; valid names: "
                             f"{', '.join(_BY_NAME)}")
        tests = find_tests(args.tests)
    except UsageError as exc:
        return usage_error(PROG, str(exc))
    mutants = [m for m in CATALOGUE if args.only is None or m.name in args.only]
    source = reference_source()
    start = time.perf_counter()
    counts = {"killed": 0, "SURVIVED": 0, "STALE": 0}
    with tempfile.TemporaryDirectory(prefix="offpolicy-mutation-") as tmp, \
            ThreadPoolExecutor(max_workers=args.jobs) as pool:
        # the unmutated copy runs alongside the first mutants; its verdict is printed first
        jobs = [pool.submit(_check, m, source, Path(tmp), tests, args.pytest_args)
                for m in [None, *mutants]]
        for m, job in zip([None, *mutants], jobs, strict=True):
            status, secs, detail = job.result()
            name = "(unmutated reference)" if m is None else m.name
            print(f"{name:36s} {status:8s} {secs:6.1f}s  {detail[:90]}".rstrip(), flush=True)
            if m is None and status != "passes":
                print(detail)
                for other in jobs:
                    other.cancel()
                return 2
            if m is not None:
                counts[status] += 1
        print(f"\n{counts['killed']}/{len(mutants)} mutants killed in "
              f"{time.perf_counter() - start:.0f}s ({args.jobs} at a time)")
    return 1 if counts["SURVIVED"] or counts["STALE"] else 0


if __name__ == "__main__":
    from offpolicy._cli import run_main

    run_main(main, PROG)
