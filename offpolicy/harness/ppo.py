"""PPO with controllable staleness, in one file (CleanRL style).

Read top to bottom: the config, the network, then ``train`` — rollout with a lagged actor,
advantage estimation through ``estimators.torch``, clipped-surrogate updates, measurement.

Staleness knobs
    lag          actors act with the parameters of ``lag`` updates ago (an update = one
                 iteration: a rollout followed by ``update_epochs`` x ``num_minibatches``
                 gradient steps; a snapshot is published after each), as in asynchronous
                 IMPALA/APPO learners.  lag=0 is synchronous PPO.
    update_epochs, num_minibatches
                 sample reuse within an update.
    refresh      how stale the ratios/values feeding the advantage are between minibatches:
                 "none"    advantages are computed once per update, before the first
                           minibatch (CleanRL);
                 "puffer"  PufferLib 3: after each minibatch's forward pass the stored
                           ratios and values of that minibatch's samples are overwritten
                           with the fresh ones (and so is next_value = V(s_{t+1}) inside an
                           episode, since PufferLib bootstraps from the same array), and the
                           advantages of the whole batch are recomputed from the stored
                           arrays before every minibatch;
                 "full"    before every minibatch, ratios and values of the whole batch are
                           recomputed with the current parameters, then the advantages.

Corrections (``estimator``)
    gae        uncorrected GAE(gamma, lambda); surrogate ratio pi/mu.
    vtrace     V-trace value targets, policy-gradient advantage
               min(pg_rho_clip, rho)(q_t - V(s_t)); surrogate ratio pi/mu.
    puff       PufferLib's "puff advantage" A_t = v_t - V(s_t) of V-trace(rho_clip, c_clip).
    pdis       per-decision importance sampling with control variate.
    decoupled  Hilton et al. (2021): proximal policy = the learner's policy at the start of
               the update; surrogate clips pi/pi_prox, and the advantage (GAE) is weighted by
               pi_prox/mu (optionally clipped at ``decoupled_weight_clip``).

Values and next_values are always recomputed by the *learner* (the actor's stale critic is
never used), and after a time-limit cut next_values is V(final observation).
"""
from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn

from offpolicy.harness import measure
from offpolicy.harness.envs import env_names, is_tabular, make_env

ESTIMATORS = ("gae", "vtrace", "puff", "pdis", "decoupled")
REFRESH = ("none", "puffer", "full")


@dataclass
class PPOConfig:
    # experiment
    env: str = "chain"
    seed: int = 0
    total_steps: int = 40_000  # environment steps, all envs together
    env_kwargs: dict | None = None
    max_episode_steps: int | None = None  # time limit (tabular default 100; gym: env's own)
    # rollout
    num_envs: int = 16
    num_steps: int = 32  # steps per env per rollout; batch = num_envs * num_steps
    # staleness
    lag: int = 0
    update_epochs: int = 4
    num_minibatches: int = 4
    refresh: str = "none"
    # correction
    estimator: str = "gae"
    gamma: float | None = None  # None: the tabular MDP's own discount, else 0.99
    gae_lambda: float = 0.95
    rho_clip: float = 1.0
    c_clip: float = 1.0
    pg_rho_clip: float = 1.0
    decoupled_weight_clip: float | None = None
    # optimisation
    learning_rate: float = 2.5e-3
    anneal_lr: bool = False
    clip_coef: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    hidden: int = 64
    # measurement
    measure_exact: bool = True  # tabular envs only: exact J and advantage errors per update


class Agent(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()

        def mlp(out, std):
            layers = [nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                      nn.Linear(hidden, out)]
            for layer in layers:
                if isinstance(layer, nn.Linear):
                    nn.init.orthogonal_(layer.weight, np.sqrt(2))
                    nn.init.zeros_(layer.bias)
            nn.init.orthogonal_(layers[-1].weight, std)
            return nn.Sequential(*layers)

        self.critic = mlp(1, 1.0)
        self.actor = mlp(n_actions, 0.01)

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def logits(self, obs):
        return self.actor(obs)


def advantages(cfg: PPOConfig, rewards, values, next_values, terminated, truncated, log_rhos):
    """(advantage used by the policy loss, value target): one call into estimators.torch."""
    from estimators import torch as E

    common = dict(rewards=rewards, values=values, next_values=next_values,
                  terminated=terminated, truncated=truncated, gamma=cfg.gamma)
    if cfg.estimator in ("gae", "decoupled"):
        out = E.gae(**common, lam=cfg.gae_lambda)
        return out.advantages, out.returns
    if cfg.estimator == "vtrace":
        out = E.vtrace(**common, log_rhos=log_rhos, lam=cfg.gae_lambda, rho_clip=cfg.rho_clip,
                       c_clip=cfg.c_clip, pg_rho_clip=cfg.pg_rho_clip)
        return out.pg_advantages, out.value_targets
    if cfg.estimator == "puff":
        adv = E.puff_advantage(**common, log_rhos=log_rhos, lam=cfg.gae_lambda,
                               rho_clip=cfg.rho_clip, c_clip=cfg.c_clip)
        return adv, adv + values
    if cfg.estimator == "pdis":
        out = E.per_decision_is(**common, log_rhos=log_rhos, lam=cfg.gae_lambda)
        return out.advantages, out.value_targets
    raise ValueError(f"unknown estimator {cfg.estimator!r}; choose from {ESTIMATORS}")


def check_config(cfg: PPOConfig) -> None:
    """Raise :class:`~offpolicy.harness.measure.ConfigError` naming the first bad field."""
    measure.check_fields(
        cfg, choices=(("estimator", ESTIMATORS), ("refresh", REFRESH), ("env", env_names())),
        at_least=(("seed", 0), ("total_steps", 1), ("num_envs", 1), ("num_steps", 1),
                  ("lag", 0), ("update_epochs", 1), ("num_minibatches", 1), ("hidden", 1)),
        optional_at_least=(("max_episode_steps", 1),), unit=("gae_lambda",),
        positive=("rho_clip", "c_clip", "pg_rho_clip", "learning_rate", "clip_coef",
                  "max_grad_norm"),
        optional_positive=("decoupled_weight_clip",))
    measure.check_gamma(cfg)


def train(cfg: PPOConfig, progress=None) -> dict:
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    env = make_env(cfg.env, cfg.num_envs, seed=cfg.seed, max_steps=cfg.max_episode_steps,
                   env_kwargs=cfg.env_kwargs)
    tabular = is_tabular(env) and cfg.measure_exact
    if cfg.gamma is None:  # discount the learner uses; exact J/V/Q use the MDP's own
        cfg = replace(cfg, gamma=env.gamma if is_tabular(env) else 0.99)
    agent = Agent(env.obs_dim, env.n_actions, cfg.hidden)
    actor = copy.deepcopy(agent)  # the acting copy, loaded with lagged parameters
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    snapshots = deque([copy.deepcopy(agent.state_dict())], maxlen=cfg.lag + 1)

    T, N = cfg.num_steps, cfg.num_envs
    batch = T * N
    mb_size = batch // cfg.num_minibatches
    iterations = max(1, cfg.total_steps // batch)
    obs_buf = torch.zeros(T, N, env.obs_dim)
    next_obs_buf = torch.zeros(T, N, env.obs_dim)
    act_buf = torch.zeros(T, N, dtype=torch.long)
    logmu_buf = torch.zeros(T, N)
    rew_buf = torch.zeros(T, N)
    term_buf = torch.zeros(T, N, dtype=torch.bool)
    trunc_buf = torch.zeros(T, N, dtype=torch.bool)
    state_buf = np.zeros((T, N), dtype=np.int64) if tabular else None

    opt_J = env.optimal_J() if tabular else None
    curve, recent_returns = [], deque(maxlen=100)
    obs = env.reset(seed=cfg.seed)
    global_step, t0, env_time = 0, time.perf_counter(), 0.0

    for it in range(iterations):
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - it / iterations)
        # ---- rollout with parameters `lag` updates old ------------------------------
        actor.load_state_dict(snapshots[0])
        t_env = time.perf_counter()
        with torch.no_grad():
            for t in range(T):
                obs_buf[t] = obs
                if tabular:
                    state_buf[t] = env.state
                dist = torch.distributions.Categorical(logits=actor.logits(obs))
                action = dist.sample()
                logmu_buf[t] = dist.log_prob(action)
                act_buf[t] = action
                step = env.step(action)
                rew_buf[t], term_buf[t], trunc_buf[t] = step.reward, step.terminated, step.truncated
                next_obs_buf[t] = step.final_obs
                obs = step.obs
                recent_returns.extend(step.episode_returns)
        env_time += time.perf_counter() - t_env
        global_step += batch

        # ---- learner: fresh values, ratios and advantages -------------------------
        def evaluate(idx_obs, idx_act):
            logits = agent.logits(idx_obs)
            dist = torch.distributions.Categorical(logits=logits)
            return dist.log_prob(idx_act), dist.entropy(), agent.value(idx_obs)

        with torch.no_grad():
            logp_pi, _, values = evaluate(obs_buf, act_buf)
            next_values = agent.value(next_obs_buf)
            log_rhos = logp_pi - logmu_buf
            logp_prox = logp_pi.clone()  # decoupled PPO: proximal policy = policy now
            adv, targets = advantages(cfg, rew_buf, values, next_values, term_buf, trunc_buf,
                                      log_rhos)

        row = {"iteration": it + 1, "env_steps": global_step}
        if tabular:
            pi = measure.tabular_policy(agent, env)
            ex = env.exact(pi)
            row.update(measure.error_stats(adv, targets, state_buf, act_buf.numpy(), ex))
            row["log_rho_abs"] = float(log_rhos.abs().mean())

        flat = lambda x: x.reshape(batch, *x.shape[2:])
        b_obs, b_act = flat(obs_buf), flat(act_buf)
        b_logmu, b_logprox = flat(logmu_buf), flat(logp_prox)
        b_adv, b_targets = flat(adv), flat(targets)
        clipfracs = []
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(batch)
            for start in range(0, batch, mb_size):
                idx = perm[start:start + mb_size]
                if cfg.refresh != "none" and not (_epoch == 0 and start == 0):
                    with torch.no_grad():
                        if cfg.refresh == "full":
                            logp_pi, _, values = evaluate(obs_buf, act_buf)
                            next_values = agent.value(next_obs_buf)
                            log_rhos = logp_pi - logmu_buf
                        adv, targets = advantages(cfg, rew_buf, values, next_values, term_buf,
                                                  trunc_buf, log_rhos)
                    b_adv, b_targets = flat(adv), flat(targets)

                new_logp, entropy, new_value = evaluate(b_obs[idx], b_act[idx])
                mb_adv = b_adv[idx]
                if cfg.norm_adv and len(idx) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                if cfg.estimator == "decoupled":
                    ratio = (new_logp - b_logprox[idx]).exp()
                    weight = (b_logprox[idx] - b_logmu[idx]).exp()
                    if cfg.decoupled_weight_clip is not None:
                        weight = weight.clamp(max=cfg.decoupled_weight_clip)
                else:
                    ratio = (new_logp - b_logmu[idx]).exp()
                    weight = torch.ones_like(ratio)
                pg_loss = -(weight * torch.min(
                    ratio * mb_adv,
                    ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef) * mb_adv)).mean()
                v_loss = 0.5 * ((new_value - b_targets[idx]) ** 2).mean()
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy.mean()
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                optimizer.step()
                clipfracs.append(float(((ratio - 1).abs() > cfg.clip_coef).float().mean()))

                if cfg.refresh == "puffer":  # overwrite this minibatch's stored ratio and value
                    with torch.no_grad():
                        lr_flat, v_flat = log_rhos.view(batch), values.view(batch)
                        lr_flat[idx] = new_logp.detach() - b_logmu[idx]
                        v_flat[idx] = new_value.detach()
                        # PufferLib bootstraps from the same value array: V(s'_t) is V(s_{t+1})
                        # wherever the episode goes on inside the segment, so refresh it too
                        cont = ~(term_buf[:-1] | trunc_buf[:-1])
                        next_values[:-1] = torch.where(cont, values[1:], next_values[:-1])

        snapshots.append(copy.deepcopy(agent.state_dict()))  # publish a new policy version

        # ---- measurement ----------------------------------------------------------
        elapsed = time.perf_counter() - t0
        row.update(wall_time=elapsed, sps=global_step / elapsed,
                   env_sps=global_step / max(env_time, 1e-9),
                   clipfrac=float(np.mean(clipfracs)),
                   episodic_return=float(np.mean(recent_returns)) if recent_returns
                   else float("nan"))
        if tabular:
            row["J"] = env.exact(measure.tabular_policy(agent, env))["J"]
            row["J_opt"] = opt_J
        curve.append(row)
        if progress is not None:
            progress(global_step)

    return {"algo": "ppo", "config": asdict(cfg), "curve": curve,
            "summary": measure.summarize(curve, tabular)}
