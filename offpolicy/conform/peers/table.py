"""The peers table: every peer entry (library, function, estimator, layout, output, adapter)
and the class of each case family it fails (:class:`~.base.Finding`).

A finding is written here by hand once the failure has been read on its minimal repro; the
writers copy it into ``peers.json``. ``convention`` names the docs/DESIGN.md section that
documents it; a failing family no finding covers is written ``unclassified``."""

from __future__ import annotations

import functools
from typing import Any

from . import (
    lightning_bolts,
    mushroom_rl,
    pufferlib,
    rl_games,
    rlax,
    rsl_rl,
    sample_factory,
    sb3,
    skrl,
    tianshou,
    torchrl,
)
from .base import Finding, Peer, gamma_tensor

__all__ = ["PEERS", "DESIGN_SECTIONS"]


def _fold(fields):
    from ..layouts import Fold

    return None if fields is None else Fold(**fields)


def _done_next(fold):
    """The done_next layout with a rollout ``fold`` (Fold's fields, or None)."""

    def make():
        from ..layouts import DoneNext

        return DoneNext(truncation_fold=_fold(fold))

    return make


def _stored_values(fold):
    """values[t+1], last_values, terminated and truncated flags of the step, and ``fold``."""

    def make():
        from ..layouts import StoredValues

        return StoredValues(flags="terminated_timeouts", fold=_fold(fold))

    return make


def _stored(fold, **options):
    """The stored_values layout with ``options`` (flags, calls, bootstrap) and ``fold``."""

    def make():
        from ..layouts import StoredValues

        return StoredValues(fold=_fold(fold), **options)

    return make


def _puffer_rows(fold):
    def make():
        from ..layouts import PufferRows

        return PufferRows(truncation_fold=_fold(fold))

    return make


def _contract_one_stream():
    from ..layouts import Contract

    return Contract(batched=False)


# docs/DESIGN.md sections a convention finding may name (a test checks each heading exists)
DESIGN_SECTIONS = {
    "lambda_returns": "§1 Conventions of other libraries: λ-returns from next values",
    "ratio_guard": "§1 Conventions of other libraries: A guard on μ",
}

_FLOAT32_GAMMA = Finding("bug", "gamma * (~done).int() with a Python-float gamma is a float32 "
                                "tensor: float64 inputs get gamma rounded to float32")
_FLOAT32_LAMBDA = Finding("bug", "1 - not_done * lmbda with a Python-float lmbda is float32: "
                                 "lambda rounded to float32")
_LMBDA_0 = Finding("bug", "raises IndexError at lmbda=0 (_custom_conv1d with an empty filter)")
_VEC_GAMMA = Finding("bug", _FLOAT32_GAMMA.why + "; and it " + _LMBDA_0.why)
_VEC_LAMBDA = Finding("bug", _FLOAT32_LAMBDA.why + "; and it " + _LMBDA_0.why)
_LAMBDA_RETURN = Finding("convention", "lambda-return built from next_state_value alone: "
                                       "equals GAE + V only where next_values[t] = values[t+1]",
                         DESIGN_SECTIONS["lambda_returns"])
_TRUNCATIONS_DROPPED = Finding("bug", "the time-out flag its pipeline receives is dropped: the "
                                      "trace runs on into the next episode and bootstraps from "
                                      "its first value")
_CURRENT_VALUE_FOLD = Finding("bug", "the rollout folds gamma V(s_t), the value before the "
                                     "step, on every time-out, terminated or not")
_TERMINAL_FOLD = Finding("bug", "the rollout folds gamma V(final obs) on every truncated step, "
                                "terminated ones too: a terminal step bootstraps")
_TIMEOUT_AS_TERMINAL = Finding("bug", "a time-out is stored as a done with nothing folded: the "
                                       "time-out step never bootstraps from V(final obs)")
_SKRL_FLOAT32 = "; and discount_factor * not_done (a bool mask) rounds gamma to float32"
_SKRL_GAMMA = Finding("bug", "discount_factor * not_done (a bool mask) with a Python-float "
                             "discount is a float32 tensor: gamma rounded to float32")
_RSL_GAMMA = Finding("bug", "(1 - dones.float()) * gamma is float32: gamma rounded to float32")
_FAKE_LAST_VALUE = Finding("bug", "the learner's fake last value (V - r)/gamma zeroes the last "
                                  "step's advantage: the segment's end never bootstraps")

# the isolated families that draw no time-out flag (offpolicy.conform.cases): a bug that acts
# only on time-outs cannot show there, so an entry with two bugs fails them for the other one
_NO_TIMEOUT = ("no_dones", "terminations_inside", "terminated_at_last_step", "T_equals_1",
               "B_equals_1", "inconsistent_next_values", "ratios_far_from_1",
               "rho_clip_ne_c_clip", "lambda_0", "lambda_0.5", "lambda_1", "float64_precision",
               "nan_under_terminated", "per_step_gamma_lambda")


def _two_bugs(both: Finding, alone: Finding, families) -> dict[str, Finding]:
    """Findings of an entry with two bugs: ``alone`` (the one bug that can act there) for
    ``families``, ``both`` for every other failing family."""
    return {**{f: alone for f in families}, "*": both}


def _vec(both: Finding, rounding: Finding, **more: Finding) -> dict[str, Finding]:
    """TorchRL's vec_* estimators: lambda_0 always raises (the rounding cannot show), lambda_0.5
    and lambda_1 never draw lmbda = 0 (only the rounding shows); the rest draw both."""
    return {"lambda_0": _LMBDA_0, "lambda_0.5": rounding, "lambda_1": rounding, **more,
            "*": both}

_TRL = torchrl.MODULE
_RLAX_X64: dict[str, Any] = dict(array="jax", setup=rlax.float64)
_G64 = "gamma passed as a float64 tensor"
_TORCHRL_VTRACE_NOTE = ("no lambda (=1); the pg advantage's clip is rho_thresh, so rho_clip and "
                        "pg_rho_clip are fixed equal")

PEERS: tuple[Peer, ...] = (
    # --- TorchRL: batch-major [B, T, 1], done (cut) + terminated (no bootstrap) --------------
    Peer("TorchRL", "torchrl", _TRL, "generalized_advantage_estimate", "gae", "torchrl",
         "advantages", findings={"*": _FLOAT32_GAMMA}),
    Peer("TorchRL", "torchrl", _TRL, "generalized_advantage_estimate", "gae", "torchrl",
         "returns", note="value_target = advantage + state_value",
         findings={"*": _FLOAT32_GAMMA}),
    Peer("TorchRL", "torchrl", _TRL, "vec_generalized_advantage_estimate", "gae", "torchrl",
         "advantages", findings=_vec(_VEC_GAMMA, _FLOAT32_GAMMA)),
    Peer("TorchRL", "torchrl", _TRL, "td0_advantage_estimate", "gae", "torchrl", "advantages",
         params={"lam": 0.0}, note="TD(0) = GAE with lambda 0", findings={"*": _FLOAT32_GAMMA}),
    Peer("TorchRL", "torchrl", _TRL, "td1_advantage_estimate", "gae", "torchrl", "advantages",
         params={"lam": 1.0}, note="TD(1) = GAE with lambda 1",
         findings={"inconsistent_next_values": _LAMBDA_RETURN, "*": _FLOAT32_GAMMA}),
    Peer("TorchRL", "torchrl", _TRL, "td_lambda_return_estimate", "gae", "torchrl", "returns",
         note="lambda-return from next_state_value only",
         findings={"inconsistent_next_values": _LAMBDA_RETURN, "*": _FLOAT32_GAMMA}),
    Peer("TorchRL", "torchrl", _TRL, "vec_td_lambda_return_estimate", "gae", "torchrl",
         "returns", note="lambda-return from next_state_value only",
         findings=_vec(_VEC_GAMMA, _FLOAT32_GAMMA, inconsistent_next_values=_LAMBDA_RETURN)),
    Peer("TorchRL", "torchrl", _TRL, "td0_return_estimate", "nstep_returns", "torchrl",
         "returns", params={"n": 1}, note="one-step return = n-step with n 1",
         findings={"*": _FLOAT32_GAMMA}),
    Peer("TorchRL", "torchrl", _TRL, "vtrace_advantage_estimate", "vtrace", "torchrl",
         "value_targets", params={"lam": 1.0, "pg_rho_clip": 1.0},
         note="returns (pg advantage, vs); no lambda (=1)", findings={"*": _FLOAT32_GAMMA}),
    Peer("TorchRL", "torchrl", _TRL, "vtrace_advantage_estimate", "vtrace", "torchrl",
         "pg_advantages", params={"lam": 1.0, "rho_clip": 1.0, "pg_rho_clip": 1.0},
         adapter=torchrl.vtrace_pg_advantage, note=_TORCHRL_VTRACE_NOTE,
         findings={"*": _FLOAT32_GAMMA}),
    # the same with gamma as a float64 tensor (no float32 rounding of the discount)
    Peer("TorchRL", "torchrl", _TRL, "generalized_advantage_estimate", "gae", "torchrl",
         "advantages", adapter=torchrl.gamma_as_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "vec_generalized_advantage_estimate", "gae", "torchrl",
         "advantages", adapter=torchrl.gamma_as_tensor(), note=_G64, findings={"*": _LMBDA_0}),
    Peer("TorchRL", "torchrl", _TRL, "vec_generalized_advantage_estimate", "gae", "torchrl",
         "advantages", params={"lam": 0.9}, adapter=torchrl.gamma_as_tensor(),
         note=_G64 + "; lam fixed at 0.9 (lmbda=0 raises)"),
    Peer("TorchRL", "torchrl", _TRL, "vec_td_lambda_return_estimate", "gae", "torchrl",
         "returns", adapter=torchrl.gamma_as_tensor(), note=_G64,
         findings=_vec(_VEC_LAMBDA, _FLOAT32_LAMBDA, inconsistent_next_values=_LAMBDA_RETURN)),
    Peer("TorchRL", "torchrl", _TRL, "vec_td_lambda_return_estimate", "gae", "torchrl",
         "returns", params={"lam": 0.9}, adapter=torchrl.gamma_as_tensor(),
         note=_G64 + "; lam fixed at 0.9 (lmbda=0 raises)",
         findings={"inconsistent_next_values": _LAMBDA_RETURN, "*": _FLOAT32_LAMBDA}),
    Peer("TorchRL", "torchrl", _TRL, "td0_advantage_estimate", "gae", "torchrl", "advantages",
         params={"lam": 0.0}, adapter=torchrl.gamma_as_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "td0_return_estimate", "nstep_returns", "torchrl",
         "returns", params={"n": 1}, adapter=torchrl.gamma_as_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "vtrace_advantage_estimate", "vtrace", "torchrl",
         "value_targets", params={"lam": 1.0, "pg_rho_clip": 1.0},
         adapter=torchrl.gamma_as_tensor(), note=_G64),
    Peer("TorchRL", "torchrl", _TRL, "vtrace_advantage_estimate", "vtrace", "torchrl",
         "pg_advantages", params={"lam": 1.0, "rho_clip": 1.0, "pg_rho_clip": 1.0},
         adapter=torchrl.gamma_as_tensor(torchrl.vtrace_pg_advantage), note=_G64),
    # --- rlax: one sequence per call, discount_t, per-step lambda_ (jitted, float64) ----------
    Peer("rlax", "rlax", "rlax", "lambda_returns", "gae", "rlax", "returns", adapter=rlax.jit(),
         **_RLAX_X64, note="lambda-return from v_t (next values) only",
         findings={"*": _LAMBDA_RETURN}),
    Peer("rlax", "rlax", "rlax", "truncated_generalized_advantage_estimation", "gae", "rlax",
         "advantages", adapter=rlax.jit(), **_RLAX_X64,
         note="one values[T+1] array: no slot for a truncation's bootstrap value"),
    Peer("rlax", "rlax", "rlax", "n_step_bootstrapped_returns", "nstep_returns", "rlax",
         "returns", adapter=rlax.jit(rlax.n_step, static=("n",)), **_RLAX_X64,
         note="cut via lambda_t"),
    Peer("rlax", "rlax", "rlax", "vtrace", "vtrace", "rlax", "advantages",
         params={"c_clip": 1.0, "pg_rho_clip": 1.0}, adapter=rlax.jit(), **_RLAX_X64,
         note="errors = vs - v_tm1; c clip hard-coded 1"),
    Peer("rlax", "rlax", "rlax", "vtrace_td_error_and_advantage", "vtrace", "rlax",
         "pg_advantages", params={"c_clip": 1.0}, adapter=rlax.jit(rlax.pg_advantage),
         **_RLAX_X64, note="VTraceOutput.pg_advantage; c clip hard-coded 1",
         findings={"*": Finding("bug", "takes v_t and ignores it in pg_advantage: its q_t "
                                       "bootstraps from v_tm1[t+1] = V(s_{t+1}), the next "
                                       "episode's first value after a cut")}),
    Peer("rlax", "rlax", "rlax", "retrace", "retrace", "rlax", "targets",
         adapter=rlax.jit(rlax.retrace), **_RLAX_X64,
         note="mu_t of the taken action; eps=1e-8 default",
         findings={"*": Finding("convention", "pi / (mu + eps) with eps = 1e-8 by default: "
                                              "every ratio off by ~1e-8 relative",
                                DESIGN_SECTIONS["ratio_guard"])}),
    Peer("rlax", "rlax", "rlax", "retrace", "retrace", "rlax", "targets",
         adapter=rlax.jit(functools.partial(rlax.retrace, eps=0.0)), **_RLAX_X64,
         note="mu_t of the taken action; eps=0 (no guard on pi/mu)"),
    Peer("rlax", "rlax", "rlax", "general_off_policy_returns_from_action_values", "retrace",
         "rlax", "targets", adapter=rlax.jit(rlax.general_off_policy("retrace")), **_RLAX_X64,
         note="c_t = lambda min(1, pi/mu)"),
    Peer("rlax", "rlax", "rlax", "general_off_policy_returns_from_action_values", "tree_backup",
         "rlax", "targets", adapter=rlax.jit(rlax.general_off_policy("tree_backup")),
         **_RLAX_X64, note="c_t = lambda pi"),
    Peer("rlax", "rlax", "rlax", "general_off_policy_returns_from_action_values", "q_lambda",
         "rlax", "targets", adapter=rlax.jit(rlax.general_off_policy("q_lambda")), **_RLAX_X64,
         note="c_t = lambda (Harutyunyan et al.)"),
    Peer("rlax", "rlax", "rlax", "general_off_policy_returns_from_action_values",
         "importance_sampling_q", "rlax", "targets",
         adapter=rlax.jit(rlax.general_off_policy("importance_sampling_q")), **_RLAX_X64,
         note="c_t = lambda pi/mu"),
    # --- Stable-Baselines3: episode-start flags; collect_rollouts folds gamma V(final obs) on
    # TimeLimit.truncated, which its VecEnvs set to `truncated and not terminated` ------------
    Peer("Stable-Baselines3", "stable-baselines3", "stable_baselines3.common.buffers",
         "RolloutBuffer.compute_returns_and_advantage", "gae", _done_next(sb3.FOLD),
         "advantages", adapter=sb3.rollout_buffer, array="torch",
         note="collect_rollouts adds gamma V(terminal_observation) where TimeLimit.truncated "
              "(= truncated and not terminated); float32 buffers"),
    # --- tianshou: flags of the step itself, V(obs_next), one flat buffer -----------------
    Peer("tianshou", "tianshou", "tianshou.algorithm.algorithm_base",
         "Algorithm.compute_episodic_return", "gae",
         _contract_one_stream, "advantages", adapter=tianshou.episodic_return,
         note="one ReplayBuffer per stream"),
    Peer("tianshou", "tianshou", "tianshou.algorithm.algorithm_base",
         "Algorithm.compute_nstep_return", "nstep_returns", _contract_one_stream, "returns",
         adapter=tianshou.nstep_return,
         note="target_q_fn = next_values at the window's last step"),
    # --- skrl: terminated/truncated of the step, values[t+1], last_values; record_transition's
    # fold; advantages come back normalised, so returns are read -----------------------------
    Peer("skrl", "skrl", "skrl.agents.torch.ppo.ppo", "compute_gae", "gae",
         _stored_values(skrl.FOLDS[False]), "returns", adapter=skrl.ppo_gae(False),
         array="torch", note="default time_limit_bootstrap=False: not_done = ~terminated, "
                             "nothing folded",
         # not_done = ~terminated: a both-flags step is cut as it should be
         findings=_two_bugs(Finding("bug", _TRUNCATIONS_DROPPED.why + _SKRL_FLOAT32), _SKRL_GAMMA,
                            _NO_TIMEOUT + ("both_flags_one_step",))),
    Peer("skrl", "skrl", "skrl.agents.torch.ppo.ppo", "compute_gae", "gae",
         _stored_values(skrl.FOLDS[True]), "returns", adapter=skrl.ppo_gae(True),
         array="torch", note="time_limit_bootstrap=True: record_transition adds "
                             "gamma V(next obs) * truncated",
         # the fold is right on a time-out that did not terminate (the float64-gamma entry
         # passes those families)
         findings=_two_bugs(Finding("bug", _TERMINAL_FOLD.why + _SKRL_FLOAT32), _SKRL_GAMMA,
                            _NO_TIMEOUT + ("truncations_inside", "truncated_at_last_step",
                                           "exact_moments"))),
    Peer("skrl", "skrl", "skrl.agents.torch.ppo.ppo", "compute_gae", "gae",
         _stored_values(skrl.FOLDS[False]), "returns",
         adapter=gamma_tensor(skrl.ppo_gae(False)), array="torch",
         note="default config; discount_factor as a float64 tensor",
         findings={"*": _TRUNCATIONS_DROPPED}),
    Peer("skrl", "skrl", "skrl.agents.torch.ppo.ppo", "compute_gae", "gae",
         _stored_values(skrl.FOLDS[True]), "returns", adapter=gamma_tensor(skrl.ppo_gae(True)),
         array="torch", note="time_limit_bootstrap=True; discount_factor as a float64 tensor",
         findings={"*": _TERMINAL_FOLD}),
    # --- rl-games: episode-start flags (mb_fdones); play_steps folds gamma V(s_t) -----------
    Peer("rl-games", "rl-games", "rl_games.common.a2c_common", "A2CBase.discount_values", "gae",
         _done_next(rl_games.FOLD), "advantages", adapter=rl_games.discount_values,
         array="torch", note="with play_steps' value_bootstrap fold: gamma * V(s_t) on every "
                             "time_out",
         findings={"*": _CURRENT_VALUE_FOLD}),
    Peer("rl-games", "rl-games", "rl_games.common.a2c_common", "A2CBase.discount_values", "gae",
         _done_next(sb3.FOLD), "advantages", adapter=rl_games.discount_values, array="torch",
         note="the GAE alone under SB3's fold (gamma V(final obs) where truncated and not "
              "terminated): not rl-games' own loop"),
    # --- PufferLib: rows [S, T+1], reward/done stored one column later ---------------------
    Peer("PufferLib", "pufferlib-core", "torch", "ops.pufferlib.compute_puff_advantage",
         "puff_advantage", _puffer_rows(None), "advantages", adapter=pufferlib.advantage,
         array="torch", dtype="float32", setup=pufferlib.build_kernel,
         note="the kernel alone (CPU build of the wheel's pufferlib/extensions/pufferlib.cpp)"),
    Peer("PufferLib", "pufferlib-core", "torch", "ops.pufferlib.compute_puff_advantage",
         "puff_advantage", _puffer_rows(pufferlib.TRAINER_FOLD), "advantages",
         adapter=pufferlib.advantage, array="torch", dtype="float32",
         setup=pufferlib.build_kernel,
         note="as PufferLib's trainer stores it: terminals = d, truncations not stored",
         findings={"*": _TRUNCATIONS_DROPPED}),
    # --- MushroomRL: one flat stream, absorbing/last flags of the step, V(s) and V(ss) ------
    Peer("MushroomRL", "mushroom-rl", "mushroom_rl.utils.value_functions", "compute_gae", "gae",
         _contract_one_stream, "advantages", adapter=mushroom_rl.gae,
         note="absorbing = terminated, last = terminated or time limit (Core); V by index"),
    Peer("MushroomRL", "mushroom-rl", "mushroom_rl.utils.value_functions", "compute_gae", "gae",
         _contract_one_stream, "returns", adapter=mushroom_rl.gae, note="v_target"),
    # --- Sample Factory 1.x: dones of the step, values[T+1]; gym's done, nothing folded ----
    Peer("Sample Factory", "sample-factory", "sample_factory.algorithms.utils.algo_utils",
         "calculate_gae", "gae",
         _stored(sample_factory.FOLD, flags="dones", bootstrap="values_plus_one"),
         "advantages", adapter=sample_factory.calculate_gae, dtype="float32",
         note="the function alone, given the real bootstrap value; a time-out is gym's done",
         findings={"*": _TIMEOUT_AS_TERMINAL}),
    Peer("Sample Factory", "sample-factory", "sample_factory.algorithms.utils.algo_utils",
         "calculate_gae", "gae",
         _stored(sample_factory.FOLD, flags="dones", bootstrap="values_plus_one"),
         "advantages", adapter=sample_factory.learner_gae, dtype="float32",
         note="as APPOLearner._calculate_gae calls it: fake last value (V - r) / gamma",
         # a both-flags step is a done either way: only the fake last value shows there
         findings=_two_bugs(Finding("bug", _TIMEOUT_AS_TERMINAL.why + "; and "
                                           + _FAKE_LAST_VALUE.why), _FAKE_LAST_VALUE,
                            _NO_TIMEOUT + ("both_flags_one_step",))),
    # --- rsl_rl: dones of the step, values[t+1]; process_env_step folds gamma V(s_t) --------
    Peer("rsl_rl", "rsl-rl-lib", "rsl_rl.algorithms.ppo", "PPO.compute_returns", "gae",
         _stored(rsl_rl.FOLD, flags="dones"), "advantages", adapter=rsl_rl.compute_returns,
         array="torch", note="with process_env_step's fold: gamma * V(s_t) on every time_out",
         findings=_two_bugs(Finding("bug", _CURRENT_VALUE_FOLD.why + "; and "
                                           + _RSL_GAMMA.why), _RSL_GAMMA, _NO_TIMEOUT)),
    # --- Lightning Bolts: one call per trajectory with its last value -------------------------
    Peer("Lightning Bolts", "lightning-bolts", "pl_bolts.models.rl.ppo_model",
         "PPO.calc_advantage", "gae",
         _stored(lightning_bolts.GYM_TIME_LIMIT_FOLD, calls="trajectory"), "advantages",
         adapter=lightning_bolts.calc_advantage,
         note="a gym TimeLimit time-out is a done: last_value 0",
         findings={"*": _TIMEOUT_AS_TERMINAL}),
    Peer("Lightning Bolts", "lightning-bolts", "pl_bolts.models.rl.ppo_model",
         "PPO.calc_advantage", "gae",
         _stored(lightning_bolts.MAX_EPISODE_LEN_FOLD, calls="trajectory"), "advantages",
         adapter=lightning_bolts.calc_advantage,
         note="its own max_episode_len: last_value = V(next state) unless done"),
    # --- not importable -----------------------------------------------------------------------
    Peer("CleanRL", "cleanrl", "cleanrl.ppo", "(inline GAE loop)", "gae",
         _done_next(dict(add="nothing")),
         "advantages",
         unavailable="inline, not importable: the GAE loop is in the body of the script "
                     "cleanrl/ppo.py (0.4.8 runs argparse and builds environments at import; "
                     "1.2.0, which needs Python < 3.11, keeps it under __main__)"),
    Peer("TRL", "trl", "trl", "PPOTrainer (GAE in train())", "gae", "single_episode_rows",
         "advantages",
         unavailable="the installed trl ships no PPO trainer (1.x has GRPO/RLOO/DPO/...; in "
                     "0.x the GAE was inline in PPOTrainer.train(), not a function)"),
)
