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
    gae        uncorrected GAE(gamma, lambda).
    vtrace     V-trace value targets, policy-gradient advantage
               min(pg_rho_clip, rho)(q_t - V(s_t)).  (The policy loss each advantage feeds
               is set by ``pg_loss``, below.)
    puff       PufferLib's "puff advantage" A_t = v_t - V(s_t) of V-trace(rho_clip, c_clip).
    pdis       per-decision importance sampling with control variate.
    decoupled  Hilton et al. (2021): proximal policy = the learner's policy at the start of
               the update; surrogate clips pi/pi_prox, and the advantage (GAE) is weighted by
               pi_prox/mu (optionally clipped at ``decoupled_weight_clip``).

Behaviour policy mu (composable with ``lag``; issue 14)
    lag_spread   per-actor lags (IMPALA/APPO-style): ``"uniform:A-B"`` draws each env's
                 extra lag uniformly from the integers A..B, ``"a/b/c"`` draws it from that
                 list; env i acts with the parameters of ``lag + extra_i`` updates ago.  The
                 draws come from ``numpy.random.default_rng([seed, 14])``: fixed per seed.
    search_depth D > 0 (tabular envs only): the actor acts with a policy improved by D-step
                 lookahead with the true model, ``softmax(Q_D / search_temperature)``,
                 ``Q_1 = R + gamma P (1-terminal) V_actor``, ``Q_d = R + gamma P (1-terminal)
                 max_a Q_{d-1}`` with the actor's (lagged) critic at the leaves (MuZero-style:
                 behaviour log-probabilities come from the search, not the network).
    temperature  the actor's logits (or the search logits) are divided by T.
    epsilon      mu = (1 - eps) * softmax(logits / T) + eps / |A|.
    ``train(cfg, behaviour_logprob_fn=f)`` records ``f(obs, actions, logits)`` as log mu(a|s)
    instead (externally supplied behaviour probabilities).

Policy loss (``pg_loss``; importance weights counted once)
    ppo_clip   the clipped surrogate -min(r A, clip(r, 1-eps, 1+eps) A), r = pi/mu (decoupled:
               pi/pi_prox).  PufferLib 3 uses this form on top of its puff advantage
               (``pufferlib/pufferl.py``, ``PuffeRL.train``: ``pg_loss1 = -adv * ratio``,
               ``pg_loss2 = -adv * clamp(ratio, 1 - clip_coef, 1 + clip_coef)``, with ``adv``
               from ``compute_puff_advantage``), so its gradient weight on a sample is
               rho * min(rho_clip, rho): the ratio is counted twice.
    impala     -w A log pi(a|s) (Espeholt et al. 2018): the importance weight appears once.
               For ``vtrace`` (pg advantage min(pg_rho_clip, rho)(q_t - V)), ``puff`` (leading
               min(rho_clip, rho) in delta_t) and ``pdis`` (rho_t in delta_t) the advantage
               already carries it and w = 1; for ``gae`` w = min(pg_rho_clip, rho) with rho =
               pi/mu under the current parameters, detached.  No trust region: with sample
               reuse (update_epochs x num_minibatches gradient steps per batch) the policy can
               collapse (measured on CartPole: reports/harness/README.md).
    prox_clip  the clipped surrogate of r = pi/pi_prox, pi_prox = the learner's policy at the
               start of the update (the trust region of decoupled PPO, Hilton et al. 2021),
               times the advantage: the importance weight appears once, as in impala (w = 1
               for vtrace/puff/pdis, w = min(pg_rho_clip, pi_prox/mu) for gae).
    auto       (default) prox_clip for vtrace/puff/pdis, ppo_clip for gae and decoupled: the
               weight is counted once whatever the estimator, and a trust region is kept;
               GAE + ppo_clip stays the on-policy default (at lag 0 with no mixing pi_prox =
               mu bit for bit, so prox_clip and ppo_clip give the same run).
               ``decoupled`` accepts auto, ppo_clip or prox_clip (the same loss for it).
               Measured (reports/harness/README.md): weight-once beats ppo_clip on the chain
               at lag 8 and 32, but ppo_clip learns better on CartPole at lag 4 and against a
               near-deterministic search behaviour; ``--pg-loss ppo_clip`` restores it.

Truncation (``truncation``)
    bootstrap  (correct, default) a time-limit cut bootstraps from V(final observation).
    terminate  the common bug: the learner treats a time-limit cut as termination (no
               bootstrap).  The env and the measurements are unchanged.

Values and next_values are always recomputed by the *learner* (the actor's stale critic is
never used except as the search's leaf values), and after a time-limit cut next_values is
V(final observation).
"""
from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn

from offpolicy import registry
from offpolicy.harness import measure
from offpolicy.harness.envs import TABULAR_ENVS, env_names, is_tabular, make_env

#: the estimators PPO learns from: every registry state-value estimator with an advantage output,
#: by its short registry name (``puff``, ``pdis``: they key the committed results), and
#: ``decoupled`` (GAE with the decoupled loss: a loss, not a contract estimator)
_ADVANTAGE_ESTIMATORS = tuple(e for e in registry.ESTIMATORS.values()
                              if e.kind == "state" and "advantage" in e.quantities.values())
ESTIMATORS = (*(e.short_name for e in _ADVANTAGE_ESTIMATORS), "decoupled")
REFRESH = ("none", "puffer", "full")
PG_LOSSES = ("auto", "impala", "ppo_clip", "prox_clip")
TRUNCATION = ("bootstrap", "terminate")
# estimators whose policy-gradient advantage already carries the importance weight (those that
# read the log-ratios)
WEIGHTED_ADVANTAGE = tuple(e.short_name for e in _ADVANTAGE_ESTIMATORS if e.takes_ratios)


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
    pg_loss: str = "auto"  # auto, impala, ppo_clip (see the module doc)
    truncation: str = "bootstrap"  # bootstrap (correct) or terminate (the common bug)
    # behaviour policy (composable with lag; see the module doc)
    epsilon: float | None = None  # mu = (1-eps) softmax(logits/T) + eps/|A|
    temperature: float = 1.0
    search_depth: int = 0  # tabular only: D-step lookahead with the true model
    search_temperature: float = 0.1
    lag_spread: str | None = None  # per-actor extra lags: "uniform:0-8" or "0/2/8"
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
    """(advantage used by the policy loss, value target): one call into estimators.torch
    through the registry. The policy loss takes the estimator's policy-gradient advantage where
    it has one (V-trace's), else its advantage; the value target is its value output, or
    advantage + V where it has none (the puff advantage)."""
    from estimators import torch as E

    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {cfg.estimator!r}; choose from {ESTIMATORS}")
    name = "gae" if cfg.estimator == "decoupled" else cfg.estimator
    quantities = registry.lookup(name).quantities
    inputs = dict(rewards=rewards, values=values, next_values=next_values,
                  terminated=terminated, truncated=truncated, log_rhos=log_rhos)
    out = {quantities[o]: x for o, x in registry.call_outputs(
        E, name, inputs, gamma=cfg.gamma, lam=cfg.gae_lambda, rho_clip=cfg.rho_clip,
        c_clip=cfg.c_clip, pg_rho_clip=cfg.pg_rho_clip).items()}
    adv = out.get("pg_advantage", out["advantage"])
    return adv, out["value"] if "value" in out else adv + values


def resolved_pg_loss(cfg: PPOConfig) -> str:
    """The policy loss a config uses: ``auto`` is prox_clip when the estimator's advantage
    already carries the importance weight (vtrace, puff, pdis), else ppo_clip."""
    if cfg.pg_loss != "auto":
        return cfg.pg_loss
    return "prox_clip" if cfg.estimator in WEIGHTED_ADVANTAGE else "ppo_clip"


def policy_loss(new_logp, logmu, adv, *, kind: str, estimator: str, clip_coef: float,
                pg_rho_clip: float = 1.0, logprox=None, decoupled_weight_clip=None):
    """(policy-gradient loss, ratio used by the clip) of one minibatch.

    ``kind="ppo_clip"``: ``-mean(w min(r A, clip(r, 1-c, 1+c) A))`` with ``r = pi/mu`` and
    ``w = 1``, or for ``estimator="decoupled"`` ``r = pi/pi_prox`` and ``w = pi_prox/mu``
    (clipped at ``decoupled_weight_clip``). ``kind="impala"``: ``-mean(w A log pi)`` with
    ``w = 1`` if the estimator's advantage carries the weight (vtrace, puff, pdis) else
    ``w = min(pg_rho_clip, pi/mu)``, detached. Shapes: all ``[B]``."""
    if kind == "impala":
        ratio = (new_logp - logmu).exp()
        if estimator in WEIGHTED_ADVANTAGE:
            weight = torch.ones_like(ratio)
        else:
            weight = ratio.detach().clamp(max=pg_rho_clip)
        return -(weight * adv * new_logp).mean(), ratio
    if kind == "prox_clip" and estimator != "decoupled":
        ratio = (new_logp - logprox).exp()
        if estimator in WEIGHTED_ADVANTAGE:
            weight = torch.ones_like(ratio)
        else:
            weight = (logprox - logmu).exp().clamp(max=pg_rho_clip)
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv)
        return -(weight * surrogate).mean(), ratio
    if kind not in ("ppo_clip", "prox_clip"):
        raise ValueError(f"pg_loss: unknown {kind!r}; choose from {', '.join(PG_LOSSES)}")
    if estimator == "decoupled":
        ratio = (new_logp - logprox).exp()
        weight = (logprox - logmu).exp()
        if decoupled_weight_clip is not None:
            weight = weight.clamp(max=decoupled_weight_clip)
    else:
        ratio = (new_logp - logmu).exp()
        weight = torch.ones_like(ratio)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv)
    return -(weight * surrogate).mean(), ratio


def value_loss(new_value, targets):
    """``0.5 mean((V(s) - target)^2)`` (unclipped, as CleanRL without ``clip_vloss``)."""
    return 0.5 * ((new_value - targets) ** 2).mean()


def update_gradient_stats(cfg: PPOConfig, pg_kind: str, agent, env, pi, ex, obs_buf, act_buf,
                          state_buf, logmu_buf, logp_prox, adv) -> dict:
    """How far this update points from grad J (tabular envs; docs/DESIGN.md section 6).

    The policy loss of the whole batch at the parameters the update starts from (the first
    minibatch's expectation; advantages normalised over the batch when ``norm_adv``),
    differentiated w.r.t. the policy's logits per state (``measure.tabular_gradient``), against
    the exact ``grad J`` of the current policy (``offpolicy.gradients.policy_gradient``):
    ``grad_cos`` with the estimator's advantages, ``grad_cos_exact_adv`` with the exact
    ``A^pi(s_t, a_t)`` in their place (what the loss form alone costs)."""
    from offpolicy.gradients import policy_gradient

    grad_j = policy_gradient(env.mdp, pi)
    with torch.no_grad():
        logits = agent.logits(obs_buf).reshape(-1, env.n_actions)
    exact_adv = torch.as_tensor(ex["A"][state_buf, act_buf.numpy()])
    out = {}
    for key, a in (("grad_cos", adv), ("grad_cos_exact_adv", exact_adv)):
        a = a.reshape(-1).double()
        if cfg.norm_adv and a.numel() > 1:
            a = (a - a.mean()) / (a.std() + 1e-8)

        def loss_fn(logp, a=a):
            return policy_loss(logp, logmu_buf.reshape(-1).double(), a, kind=pg_kind,
                               estimator=cfg.estimator, clip_coef=cfg.clip_coef,
                               pg_rho_clip=cfg.pg_rho_clip,
                               logprox=logp_prox.reshape(-1).double(),
                               decoupled_weight_clip=cfg.decoupled_weight_clip)[0]

        g = measure.tabular_gradient(logits, act_buf, state_buf, loss_fn, env.S)
        out[key] = measure.cosine(g, grad_j)
    return out


def learner_flags(cfg: PPOConfig, terminated, truncated):
    """(terminated, truncated) as the learner sees them: with ``truncation="terminate"`` a
    time-limit cut is treated as termination (no bootstrap), the common bug."""
    if cfg.truncation == "terminate":
        return terminated | truncated, torch.zeros_like(truncated)
    return terminated, truncated


# ---- behaviour policies ---------------------------------------------------------------------


def parse_lag_spread(spec: str) -> tuple[str, list[int]]:
    """``"uniform:A-B"`` -> ("uniform", [A, ..., B]); ``"a/b/c"`` (or one int) -> ("list",
    [a, b, c]). Raises ValueError naming the spec."""
    text = spec.strip()
    try:
        if text.startswith("uniform:"):
            lo, dash, hi = text[len("uniform:"):].partition("-")
            if not dash:
                raise ValueError
            a, b = int(lo), int(hi)
            if a < 0 or b < a:
                raise ValueError
            return "uniform", list(range(a, b + 1))
        lags = [int(x) for x in text.split("/")]
        if not lags or min(lags) < 0:
            raise ValueError
        return "list", lags
    except ValueError:
        raise ValueError(f"bad lag spread {spec!r}: expected uniform:A-B (0 <= A <= B) or "
                         "a/b/c (integers >= 0)") from None


def actor_lags(cfg: PPOConfig) -> np.ndarray:
    """Per-env lags ``[num_envs]``: ``lag`` plus, with ``lag_spread``, a draw per env from
    ``numpy.random.default_rng([seed, 14])`` (the same draws for the same seed)."""
    lags = np.full(cfg.num_envs, cfg.lag, dtype=np.int64)
    if cfg.lag_spread is None:
        return lags
    _, choices = parse_lag_spread(cfg.lag_spread)
    rng = np.random.default_rng([cfg.seed, 14])
    return lags + rng.choice(np.asarray(choices, dtype=np.int64), size=cfg.num_envs)


def search_q(P, R, terminal, leaf_values, gamma: float, depth: int) -> np.ndarray:
    """D-step lookahead Q_D [S, A] with the true model: ``Q_1 = R + gamma P (1-terminal)
    V_leaf``, ``Q_d = R + gamma P (1-terminal) max_a Q_{d-1}``. P [S,A,S], R [S,A] (mean
    rewards), terminal [S] bool, leaf_values [S]."""
    cont = np.asarray(P, dtype=np.float64) * (~np.asarray(terminal, bool))[None, None, :]
    v = np.asarray(leaf_values, dtype=np.float64)
    q = np.asarray(R, dtype=np.float64) + gamma * cont @ v
    for _ in range(depth - 1):
        q = np.asarray(R, dtype=np.float64) + gamma * cont @ q.max(axis=1)
    return q


def behaviour_log_probs(logits, *, temperature: float = 1.0,
                        epsilon: float | None = None) -> torch.Tensor:
    """log mu [..., A] of ``(1 - eps) softmax(logits / T) + eps / A`` (``eps=None``: 0)."""
    z = logits if temperature == 1.0 else logits / temperature
    # the same normalisation as torch.distributions.Categorical, so that at lag 0 with no
    # mixing log mu is bit-identical to the learner's log pi (rho = 1 exactly)
    logp = z - z.logsumexp(dim=-1, keepdim=True)
    if epsilon:
        A = logits.shape[-1]
        mix = torch.stack([logp + np.log1p(-epsilon) if epsilon < 1 else
                           torch.full_like(logp, -np.inf),
                           torch.full_like(logp, np.log(epsilon / A))])
        logp = torch.logsumexp(mix, dim=0)
    return logp


class Behaviour:
    """The actors of one rollout: per-env lagged networks, the search and the mixing."""

    def __init__(self, cfg: PPOConfig, agent: nn.Module, env, snapshots):
        self.cfg, self.env = cfg, env
        self.lags = actor_lags(cfg)
        self.groups = []  # (env indices, actor network, search logits [S, A] or None)
        n = len(snapshots)
        for lag in sorted(set(self.lags.tolist())):
            net = copy.deepcopy(agent)
            net.load_state_dict(snapshots[max(0, n - 1 - lag)])
            idx = torch.as_tensor(np.nonzero(self.lags == lag)[0])
            table = None
            if cfg.search_depth > 0:
                with torch.no_grad():
                    leaf = net.value(env.all_obs()).double().numpy()
                q = search_q(env.P, env.R, env.terminal, leaf, cfg.gamma, cfg.search_depth)
                table = torch.as_tensor(q / cfg.search_temperature, dtype=torch.float32)
            self.groups.append((idx, net, table))

    def logits(self, obs, states=None):
        """(network logits of the acting actors, behaviour log mu) [N, A] at ``obs``."""
        net_logits = torch.empty(obs.shape[0], self.env.n_actions)
        acting = torch.empty_like(net_logits)
        for idx, net, table in self.groups:
            net_logits[idx] = net.logits(obs[idx])
            acting[idx] = net_logits[idx] if table is None else \
                table[torch.as_tensor(states)[idx]]
        return net_logits, behaviour_log_probs(acting, temperature=self.cfg.temperature,
                                               epsilon=self.cfg.epsilon)

    def tabular(self) -> list[tuple[int, np.ndarray]]:
        """[(number of envs, mu [S, A])] per distinct actor: the behaviour policies on every
        state (tabular envs)."""
        obs = self.env.all_obs()
        out = []
        with torch.no_grad():
            for idx, net, table in self.groups:
                acting = net.logits(obs) if table is None else table
                mu = behaviour_log_probs(acting, temperature=self.cfg.temperature,
                                         epsilon=self.cfg.epsilon).exp().double().numpy()
                out.append((len(idx), mu / mu.sum(axis=1, keepdims=True)))
        return out


def check_config(cfg: PPOConfig) -> None:
    """Raise :class:`~offpolicy.harness.measure.ConfigError` naming the first bad field."""
    measure.check_fields(
        cfg, choices=(("estimator", ESTIMATORS), ("refresh", REFRESH), ("env", env_names()),
                      ("pg_loss", PG_LOSSES), ("truncation", TRUNCATION)),
        at_least=(("seed", 0), ("total_steps", 1), ("num_envs", 1), ("num_steps", 1),
                  ("lag", 0), ("update_epochs", 1), ("num_minibatches", 1), ("hidden", 1),
                  ("search_depth", 0)),
        optional_at_least=(("max_episode_steps", 1),), unit=("gae_lambda",),
        positive=("rho_clip", "c_clip", "pg_rho_clip", "learning_rate", "clip_coef",
                  "max_grad_norm", "temperature", "search_temperature"),
        optional_positive=("decoupled_weight_clip",))
    measure.check_gamma(cfg)
    eps = cfg.epsilon
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, int | float)
                            or not 0.0 <= eps <= 1.0):
        raise measure.ConfigError("epsilon", f"must be None or in [0, 1], got {eps!r}")
    if cfg.lag_spread is not None:
        try:
            parse_lag_spread(str(cfg.lag_spread))
        except ValueError as e:
            raise measure.ConfigError("lag_spread", str(e)) from None
    if cfg.search_depth > 0 and cfg.env not in TABULAR_ENVS:
        raise measure.ConfigError(
            "search_depth", f"unavailable on the Gymnasium env {cfg.env!r}: the lookahead "
            f"needs the true model (tabular envs only: {', '.join(TABULAR_ENVS)})")
    if cfg.estimator == "decoupled" and cfg.pg_loss == "impala":
        raise measure.ConfigError("pg_loss", "decoupled PPO has its own clipped surrogate; "
                                  "use auto, ppo_clip or prox_clip")


def train(cfg: PPOConfig, progress=None, behaviour_logprob_fn=None) -> dict:
    """Train PPO under ``cfg``; returns ``{"algo", "config", "curve", "summary"}``.

    ``progress(env_steps)`` is called after each update. ``behaviour_logprob_fn(obs, actions,
    logits)`` (optional; Python only, not part of the serialisable config) supplies the
    behaviour log-probabilities from outside: called at every rollout step with the actors'
    observations ``[N, obs_dim]``, sampled actions ``[N]`` and the acting networks' raw logits
    ``[N, A]``, it returns the ``[N]`` log mu(a|s) recorded for the learner's ratios (actions
    are still sampled from the configured behaviour; KL and rho statistics then use the
    recorded log mu of the taken actions only: sample estimates).

    Per-update rows hold, besides J and the error columns (tabular): ``kl_pi_mu`` and
    ``kl_mu_pi`` (KL between the learner's policy at the start of the update and the behaviour,
    averaged over the visited states), ``rho_q05/q50/q95`` (quantiles of rho = pi/mu over the
    batch), ``rho_clipped_frac``/``c_clipped_frac`` (fraction with rho > rho_clip / c_clip),
    ``J_mu`` (tabular: exact J of the behaviour policies, averaged over the envs)."""
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    env = make_env(cfg.env, cfg.num_envs, seed=cfg.seed, max_steps=cfg.max_episode_steps,
                   env_kwargs=cfg.env_kwargs)
    tabular = is_tabular(env) and cfg.measure_exact
    if cfg.gamma is None:  # discount the learner uses; exact J/V/Q use the MDP's own
        cfg = replace(cfg, gamma=env.gamma if is_tabular(env) else 0.99)
    agent = Agent(env.obs_dim, env.n_actions, cfg.hidden)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    lags = actor_lags(cfg)
    snapshots = deque([copy.deepcopy(agent.state_dict())], maxlen=int(lags.max()) + 1)
    pg_kind = resolved_pg_loss(cfg)

    T, N = cfg.num_steps, cfg.num_envs
    batch = T * N
    mb_size = batch // cfg.num_minibatches
    iterations = max(1, cfg.total_steps // batch)
    obs_buf = torch.zeros(T, N, env.obs_dim)
    next_obs_buf = torch.zeros(T, N, env.obs_dim)
    act_buf = torch.zeros(T, N, dtype=torch.long)
    logmu_buf = torch.zeros(T, N)
    mu_full_buf = torch.zeros(T, N, env.n_actions)  # log mu(.|s_t) of the behaviour
    rew_buf = torch.zeros(T, N)
    term_buf = torch.zeros(T, N, dtype=torch.bool)
    trunc_buf = torch.zeros(T, N, dtype=torch.bool)
    state_buf = np.zeros((T, N), dtype=np.int64) if is_tabular(env) else None

    opt_J = env.optimal_J() if tabular else None
    curve, recent_returns = [], deque(maxlen=100)
    obs = env.reset(seed=cfg.seed)
    global_step, t0, env_time = 0, time.perf_counter(), 0.0

    for it in range(iterations):
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - it / iterations)
        # ---- rollout: each env's actor holds the parameters of its lag updates ago ------
        t_env = time.perf_counter()
        with torch.no_grad():
            actors = Behaviour(cfg, agent, env, snapshots)
            for t in range(T):
                obs_buf[t] = obs
                if state_buf is not None:
                    state_buf[t] = env.state
                net_logits, logmu_all = actors.logits(
                    obs, env.state if state_buf is not None else None)
                action = torch.distributions.Categorical(logits=logmu_all).sample()
                mu_full_buf[t] = logmu_all
                if behaviour_logprob_fn is None:
                    logmu_buf[t] = logmu_all.gather(1, action[:, None]).squeeze(1)
                else:
                    logmu_buf[t] = torch.as_tensor(
                        behaviour_logprob_fn(obs, action, net_logits), dtype=torch.float32)
                act_buf[t] = action
                step = env.step(action)
                rew_buf[t], term_buf[t], trunc_buf[t] = step.reward, step.terminated, step.truncated
                next_obs_buf[t] = step.final_obs
                obs = step.obs
                recent_returns.extend(step.episode_returns)
        env_time += time.perf_counter() - t_env
        global_step += batch
        term_l, trunc_l = learner_flags(cfg, term_buf, trunc_buf)

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
            adv, targets = advantages(cfg, rew_buf, values, next_values, term_l, trunc_l,
                                      log_rhos)
            logpi_full = torch.log_softmax(agent.logits(obs_buf), dim=-1)

        row = {"iteration": it + 1, "env_steps": global_step}
        row.update(measure.behaviour_stats(
            log_rhos, cfg.rho_clip, cfg.c_clip,
            logpi_full=logpi_full if behaviour_logprob_fn is None else None,
            logmu_full=mu_full_buf if behaviour_logprob_fn is None else None))
        if tabular:
            pi = measure.tabular_policy(agent, env)
            ex = env.exact(pi)
            row.update(measure.error_stats(adv, targets, state_buf, act_buf.numpy(), ex))
            row["log_rho_abs"] = float(log_rhos.abs().mean())
            per_actor = actors.tabular()
            row["J_mu"] = float(sum(n * env.exact(m)["J"] for n, m in per_actor) / N)
            row.update(update_gradient_stats(cfg, pg_kind, agent, env, pi, ex, obs_buf, act_buf,
                                             state_buf, logmu_buf, logp_prox, adv))

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
                        adv, targets = advantages(cfg, rew_buf, values, next_values, term_l,
                                                  trunc_l, log_rhos)
                    b_adv, b_targets = flat(adv), flat(targets)

                new_logp, entropy, new_value = evaluate(b_obs[idx], b_act[idx])
                mb_adv = b_adv[idx]
                if cfg.norm_adv and len(idx) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss, ratio = policy_loss(
                    new_logp, b_logmu[idx], mb_adv, kind=pg_kind, estimator=cfg.estimator,
                    clip_coef=cfg.clip_coef, pg_rho_clip=cfg.pg_rho_clip,
                    logprox=b_logprox[idx], decoupled_weight_clip=cfg.decoupled_weight_clip)
                v_loss = value_loss(new_value, b_targets[idx])
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
                        cont = ~(term_l[:-1] | trunc_l[:-1])
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
