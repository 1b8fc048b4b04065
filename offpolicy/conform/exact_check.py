"""The exact-moment family: the function's mean and variance against ``offpolicy.moments``.

Independent of the reference code: on a small Garnet MDP with terminal states, every
trajectory of a short segment from each start state is enumerated with its probability
(``moments.enumerate_segments``), the function is run on all of them at once, and the
probability-weighted mean and variance of its output at t = 0 are compared with the exact
figures of ``moments.exact_moments`` — the backward recursion over the transition tensor, which
never calls estimator code. Enumeration is exhaustive, so the comparison is exact up to
floating-point error: no standard errors are involved.
"""

from __future__ import annotations

import numpy as np

from offpolicy import mdp as mdp_module
from offpolicy import moments, policies

from .cases import Case, family_not_applicable
from .report import CaseResult

NAME = "exact_moments"
HORIZON = 3
TRUNCATION_PROB = 0.25
_VAR_RTOL = {"float64": 1e-7, "float32": 1e-3}
_MEAN_RTOL = {"float64": 1e-9, "float32": 1e-4}


def _params(runner) -> dict:
    defaults = dict(gamma=0.9, lam=0.8, rho_clip=1.0, c_clip=0.8, pg_rho_clip=1.0, n=2)
    if runner.spec.name == "importance_sampling_q":
        defaults["c_clip"] = np.inf
    return {p: runner.fixed.get(p, defaults[p]) for p in runner.spec.params}


def _case(segments, mdp, mu, pi, values, q) -> Case:
    x = segments.inputs(behaviour=mu, target=pi, values=values, q=q, terminal_next_value=0.0)
    s, a, s2 = segments.states, segments.actions, segments.next_states
    cont = ~(segments.terminated | segments.truncated)
    cont[-1] = False
    next_a = np.where(cont, np.concatenate([a[1:], a[:1]]), np.argmax(pi[s2], axis=-1))
    inputs = dict(rewards=x["rewards"], values=x["values"], next_values=x["next_values"],
                  terminated=x["terminated"], truncated=x["truncated"], log_rhos=x["log_rhos"],
                  q_taken=x["q_taken"], next_expected_q=x["next_expected_q"],
                  target_probs_taken=x["target_probs_taken"])
    world = dict(q_values=q[s], next_q_values=q[s2], actions=a, next_actions=next_a,
                 target_probs=pi[s], next_target_probs=pi[s2], behaviour_probs=mu[s],
                 next_behaviour_probs=mu[s2], log_mu=np.log(mu[s, a]))
    return Case(NAME, inputs, {}, world)


def _what_went_wrong(e: BaseException) -> str:
    from .layouts import ModifiedInput, WrongReturn

    if isinstance(e, ModifiedInput):
        return str(e)
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    if isinstance(e, (WrongReturn, ValueError)) and str(e).startswith(("returned", "could not")):
        return str(e) if str(e).startswith("returned") else f"returned no numbers ({e})"
    first = str(e).splitlines()[0] if str(e) else ""
    return f"raised {type(e).__name__}: {first}".rstrip(": ")


def run(runner) -> CaseResult:
    spec = runner.spec
    reason = None
    if runner.constraints.terminal_last:
        reason = "the layout holds only episodes that terminate at the last step"
    elif family_not_applicable("terminations_inside", spec, runner.fixed, runner.constraints):
        reason = "the layout holds no termination inside a segment"
    if reason:
        return CaseResult(NAME, "n/a", reason)
    params = _params(runner)
    gamma = params["gamma"]
    mdp = mdp_module.garnet(4, 2, 2, gamma=gamma, seed=runner.seed, num_terminal=1,
                            reward_std=0.5)
    rng = np.random.default_rng(runner.seed)
    mu = policies.random_policy(4, 2, seed=runner.seed + 1)
    pi = policies.random_policy(4, 2, seed=runner.seed + 2)
    values = rng.uniform(-1, 1, 4)
    values[-1] = 0.0
    q = rng.uniform(-1, 1, (4, 2))
    q[-1] = 0.0
    m_params = {k: v for k, v in params.items() if k != "gamma"}
    # time-limit truncations inside the segments wherever the layout can say so
    cut = TRUNCATION_PROB if runner.constraints.truncations_inside else 0.0
    exact = moments.exact_moments(mdp, spec.moments_name, behaviour=mu, target=pi,
                                  horizon=HORIZON, values=values, q=q,
                                  output=spec.quantities[runner.output],
                                  truncation_prob=cut, **m_params)
    worst = 0.0  # largest |mean - exact| over the start states
    trajectories = 0
    for s0 in range(3):  # the non-terminal start states
        segments = moments.enumerate_segments(mdp, mu, HORIZON, start_state=s0,
                                              truncation_prob=cut)
        case = runner.round_inputs(_case(segments, mdp, mu, pi, values, q))
        case.params = dict(params)
        trajectories += segments.weight.size
        try:
            got = np.asarray(runner.call(case), dtype=np.float64)
        except (Exception, SystemExit) as e:  # a verdict, never the runner's crash
            return CaseResult(NAME, "fail", f"on the enumerated segments the function "
                                            f"{_what_went_wrong(e)}")
        if got.shape != segments.rewards.shape:
            return CaseResult(NAME, "fail", f"returned shape {got.shape} on the enumerated "
                                            f"segments, expected {segments.rewards.shape}")
        if not np.isfinite(got[0]).all():
            return CaseResult(NAME, "fail", "returned NaN/inf on the enumerated segments "
                                            "(finite inputs)")
        mean, var = segments.moments(got[0])
        dtype = "float32" if "float32" in runner.dtypes_seen else "float64"
        scale = max(1.0, float(np.abs(got[0]).max()))
        d_mean = abs(mean - exact.mean_s[s0])
        d_var = abs(var - exact.var_s[s0])
        if d_mean > _MEAN_RTOL[dtype] * scale or d_var > _VAR_RTOL[dtype] * scale ** 2:
            return CaseResult(NAME, "fail", (
                f"from s0={s0}: mean {mean:.12g} vs exact {exact.mean_s[s0]:.12g} "
                f"(off by {mean - exact.mean_s[s0]:.3g}), variance {var:.12g} vs exact "
                f"{exact.var_s[s0]:.12g} (off by {var - exact.var_s[s0]:.3g}) (all "
                f"{segments.weight.size} "
                f"trajectories of a horizon-{HORIZON} Garnet segment, truncation probability "
                f"{cut}, params {params})"))
        worst = max(worst, d_mean)
    return CaseResult(NAME, "pass", (
        f"mean and variance at t=0 over all {trajectories} trajectories (3 start states, "
        f"horizon {HORIZON}, terminations, {'truncations, ' if cut else ''}reward noise) equal "
        f"offpolicy.moments' exact figures (max |d mean| {worst:.1e})"))
