"""The instruments: every hypothesis strategy of offpolicy.strategies keeps producing every case
family it exists for.

Each test draws a fixed number of examples (derandomized, no example database: the same
examples on every run) and counts, per family, the examples that belong to it. A strategy that
stopped producing a family (a refactor that loses the truncation at t = T-1, data that became
consistent again, lambda that no longer reaches 1) fails here instead of silently weakening
every property test that uses it.
"""

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from offpolicy import exact, strategies
from offpolicy import mdp as mdp_mod

N_DRAWS = 200


def draws(strategy, n=N_DRAWS):
    """``n`` examples of ``strategy``, the same ones on every run."""
    out = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out


def assert_every_family(counts: Counter, families, n):
    missing = [f for f in families if counts[f] == 0]
    assert not missing, f"no example of {missing} in {n} draws; counts: {dict(counts)}"


# ---- estimator inputs ------------------------------------------------------------------------


def flag_families(term, trunc):
    """The done-pattern families present in one [T,B] pair of flags."""
    T, B = term.shape
    out = set()
    if term[:-1].any():
        out.add("termination inside")
    if trunc[:-1].any():
        out.add("truncation inside")
    if (term & trunc).any():
        out.add("both flags on one step")
    if term[-1].any():
        out.add("termination at the last step")
    if trunc[-1].any():
        out.add("truncation at the last step")
    if term[0].any() or trunc[0].any():
        out.add("done at t = 0")
    if T > 1 and ((term | trunc)[:-1] & (term | trunc)[1:]).any():
        out.add("adjacent dones")
    if not (term | trunc).any():
        out.add("no done")
    return out


DONE_FAMILIES = ("termination inside", "truncation inside", "both flags on one step",
                 "termination at the last step", "truncation at the last step", "done at t = 0",
                 "adjacent dones", "no done")


def continuing_steps(x):
    """[T-1,B]: step t is not done, so s_{t+1} is the observation that followed a_t."""
    return ~(x["terminated"] | x["truncated"])[:-1]


def inconsistent(x):
    follows = continuing_steps(x)
    return bool(np.any(follows & (x["next_values"][:-1] != x["values"][1:])))


def batch_families(x):
    T, B = x["rewards"].shape
    out = flag_families(x["terminated"], x["truncated"])
    if B == 1:
        out.add("B = 1")
    if T == 1:
        out.add("T = 1")
    if B > 1 and T > 1:
        out.add("T, B > 1")
    out.add("inconsistent next values" if inconsistent(x) else "consistent next values")
    if continuing_steps(x).any() and not inconsistent(x):
        out.add("consistent, with a continuing step")
    lr = x["log_rhos"]
    if np.any(np.abs(lr) > 2):
        out.add("|log rho| > 2")
    if np.any(np.isneginf(lr)):
        out.add("target probability 0")
    if np.all(lr == 0):
        out.add("on-policy")
    out.add(f"gamma = {x['gamma']:g}" if x["gamma"] in (0.0, 1.0) else "0 < gamma < 1")
    return out


BATCH_FAMILIES = DONE_FAMILIES + (
    "B = 1", "T = 1", "T, B > 1", "inconsistent next values", "consistent next values",
    "consistent, with a continuing step", "|log rho| > 2", "target probability 0", "on-policy",
    "gamma = 0", "gamma = 1", "0 < gamma < 1")


def test_trajectory_batches_cover_every_family():
    examples = draws(strategies.trajectory_batches())
    counts = Counter(f for x in examples for f in batch_families(x))
    assert_every_family(counts, BATCH_FAMILIES, len(examples))
    for x in examples:  # the contract's invariants hold in every example
        assert np.all(np.isnan(x["next_values"][x["terminated"]]))
        assert np.all(np.isnan(x["next_expected_q"][x["terminated"]]))
        assert np.all(np.isfinite(x["next_values"][~x["terminated"]]))


@pytest.mark.parametrize("consistent", [True, False])
def test_trajectory_batches_consistency_option(consistent):
    examples = draws(strategies.trajectory_batches(consistent=consistent), n=100)
    with_follow = [x for x in examples if continuing_steps(x).any()]
    assert len(with_follow) > 20
    # True: V(s_{t+1}) repeated wherever the episode continues; False: not everywhere
    assert all(inconsistent(x) != consistent for x in with_follow)


@pytest.mark.parametrize("divergence", strategies.RATIO_KINDS)
def test_trajectory_batches_ratios_option(divergence):
    examples = draws(strategies.trajectory_batches(ratios=divergence), n=50)
    lr = [x["log_rhos"] for x in examples]
    if divergence == "equal":
        assert all(np.all(x == 0) for x in lr)
    else:
        assert sum(np.any(x != 0) for x in lr) > 40
    assert any(np.any(np.isneginf(x)) for x in lr) == (divergence == "zero")


def test_done_patterns_cover_every_family():
    examples = draws(strategies.done_patterns(5, 3))
    counts = Counter(f for term, trunc in examples for f in flag_families(term, trunc))
    assert_every_family(counts, DONE_FAMILIES, len(examples))


# ---- MDPs, policies, estimates ---------------------------------------------------------------


def mdp_families(m):
    S, A = m.shape
    terminal = np.asarray(m.terminal)
    live = ~terminal
    support = (np.asarray(m.P)[live] > 0).sum(axis=-1)
    out = {f"S = {S}" if S == 1 else "S > 1", "A = 1" if A == 1 else "A > 1",
           "terminal states" if terminal.any() else "no terminal state"}
    if support.size and (support == 1).any():
        out.add("a deterministic transition")
    if support.size and (support > 1).any():
        out.add("a stochastic transition")
    out.add("reward noise" if np.any(np.asarray(m.reward_std) > 0) else "no reward noise")
    out.add(f"gamma = {m.gamma:g}" if m.gamma in (0.0, 0.99) else "0 < gamma < 0.99")
    return out


MDP_FAMILIES = ("S = 1", "S > 1", "A = 1", "A > 1", "terminal states", "no terminal state",
                "a deterministic transition", "a stochastic transition", "reward noise",
                "no reward noise", "gamma = 0", "gamma = 0.99", "0 < gamma < 0.99")


def test_mdps_cover_every_family():
    examples = draws(strategies.mdps())
    counts = Counter(f for m in examples for f in mdp_families(m))
    assert_every_family(counts, MDP_FAMILIES, len(examples))


def test_mdps_options_are_obeyed():
    for m in draws(strategies.mdps(max_states=4, min_actions=2, max_actions=3, min_gamma=0.5,
                                   terminal=True), n=50):
        S, A = m.shape
        assert S <= 4 and 2 <= A <= 3 and 0.5 <= m.gamma <= 0.99
        assert S == 1 or np.asarray(m.terminal).any()


def pair_families(pair, full_support):
    mu, pi = pair
    assert np.all(mu > 0) and np.allclose(mu.sum(1), 1) and np.allclose(pi.sum(1), 1)
    if full_support:
        assert np.all(pi > 0)
    with np.errstate(divide="ignore"):
        lr = np.log(pi) - np.log(mu)
    out = {"equal" if np.array_equal(mu, pi) else "different"}
    if np.any(np.abs(lr) > 2):
        out.add("|log rho| > 2")
    if np.any(pi == 0):
        out.add("target probability 0")
    if np.any(mu < 1e-2):
        out.add("behaviour probability < 0.01")
    return out


@pytest.mark.parametrize("full_support", [False, True])
def test_policy_pairs_cover_every_family(full_support):
    pairs = st.integers(2, 4).flatmap(
        lambda A: strategies.policy_pairs(3, A, full_support_target=full_support))
    examples = draws(pairs)
    counts = Counter(f for p in examples for f in pair_families(p, full_support))
    families = ["equal", "different", "|log rho| > 2", "behaviour probability < 0.01"]
    families += [] if full_support else ["target probability 0"]
    assert_every_family(counts, families, len(examples))


def test_value_and_q_estimates_cover_exact_and_wrong():
    def with_estimates(m):
        S, A = m.shape
        pol = strategies.policies(S, A)
        return pol.flatmap(lambda p: st.tuples(
            st.just(m), st.just(p), strategies.value_estimates(m, p),
            strategies.q_estimates(m, p)))

    examples = draws(strategies.mdps(max_states=4, max_actions=3).flatmap(with_estimates),
                     n=60)
    counts = Counter()
    for m, p, v, q in examples:
        counts["V exact" if np.allclose(v, exact.v_pi(m, p)) else "V wrong"] += 1
        counts["Q exact" if np.allclose(q, exact.q_pi(m, p)) else "Q wrong"] += 1
    assert_every_family(counts, ["V exact", "V wrong", "Q exact", "Q wrong"], len(examples))


# ---- estimator configurations ----------------------------------------------------------------


def config_families(config):
    est, out, params = config
    fam = {f"{est}/{out}"}
    if "lam" in params:
        fam.add(f"lam = {params['lam']:g}" if params["lam"] in (0.0, 1.0) else "0 < lam < 1")
    if "c_clip" in params:
        if params["c_clip"] != params["rho_clip"]:
            fam.add("c_clip != rho_clip")
        if np.isinf(params["c_clip"]) or np.isinf(params["rho_clip"]):
            fam.add("a clip at inf")
        if params["rho_clip"] < 1:
            fam.add("rho_clip < 1")
    if "n" in params:
        fam.add("n = 1" if params["n"] == 1 else "n > 1")
    if "weights" in params:
        fam.add("H = 1" if len(params["weights"]) == 1 else "H > 1")
    return fam


def test_estimator_configs_cover_every_family():
    examples = draws(strategies.estimator_configs(), n=400)
    counts = Counter(f for c in examples for f in config_families(c))
    families = [f"{e}/{o}" for e, o in strategies.ESTIMATOR_OUTPUTS]
    families += ["lam = 0", "lam = 1", "0 < lam < 1", "c_clip != rho_clip", "a clip at inf",
                 "rho_clip < 1", "n = 1", "n > 1", "H = 1", "H > 1"]
    assert_every_family(counts, families, len(examples))


@pytest.mark.parametrize("est,out", strategies.ESTIMATOR_OUTPUTS)
def test_estimator_configs_restricted_to_one_entry(est, out):
    examples = draws(strategies.estimator_configs(estimators=(est,), outputs=(out,)), n=30)
    assert {(e, o) for e, o, _ in examples} == {(est, out)}
    if any("lam" in p for _, _, p in examples):  # both endpoints within a test's budget
        assert {0.0, 1.0} <= {p["lam"] for _, _, p in examples}


def test_estimator_configs_reject_an_empty_selection():
    with pytest.raises(InvalidArgument, match="^estimators/outputs"):
        strategies.estimator_configs(estimators=("gae",), outputs=("target",))


def test_estimator_configs_accept_registry_names():
    """A contract name or alias selects the entries of the estimator it names."""
    for name in ("nstep_returns", "nstep"):
        examples = draws(strategies.estimator_configs(estimators=(name,)), n=5)
        assert {(e, o) for e, o, _ in examples} == {("nstep_returns", "value")}
        assert all(p["n"] >= 1 for _, _, p in examples)


_M = mdp_mod.chain(3)
_BAD_ARGUMENTS = [
    (lambda: strategies.policy_pairs(2, 2, divergence="typo"), "^divergence"),
    (lambda: strategies.policy_pairs(2, 2, divergence="deterministic",
                                     full_support_target=True), "^divergence"),
    (lambda: strategies.policy_pairs(0, 2), "^S"),
    (lambda: strategies.policy_pairs(2, 2.5), "^A"),
    (lambda: strategies.policies(2, True), "^A"),
    (lambda: strategies.mdps(max_states=0), "^max_states"),
    (lambda: strategies.mdps(min_states=3, max_states=2), "^max_states"),
    (lambda: strategies.mdps(max_actions=0), "^max_actions"),
    (lambda: strategies.mdps(terminal="yes"), "^terminal"),
    (lambda: strategies.mdps(gamma=1.5), "^gamma"),
    (lambda: strategies.mdps(gamma=float("nan")), "^gamma"),
    (lambda: strategies.mdps(noise=-1.0), "^noise"),
    (lambda: strategies.mdps(min_gamma=0.995), "^min_gamma"),
    (lambda: strategies.value_estimates(_M, np.full((3, 2), 0.5), kind="good"), "^kind"),
    (lambda: strategies.q_estimates(_M, np.full((3, 2), 0.5), kind="divergence"), "^kind"),
    (lambda: strategies.value_estimates("chain", np.full((3, 2), 0.5)), "^mdp"),
    (lambda: strategies.q_estimates(_M, np.full((2, 2), 0.5)), "^policy"),
    (lambda: strategies.done_patterns(0, 1), "^T"),
    (lambda: strategies.trajectory_batches(ratios="random"), "^ratios"),
    (lambda: strategies.trajectory_batches(min_T=4, max_T=3), "^max_T"),
    (lambda: strategies.trajectory_batches(max_B=0), "^max_B"),
    (lambda: strategies.trajectory_batches(consistent="no"), "^consistent"),
    (lambda: strategies.estimator_configs(estimators="gae"), "^estimators"),
    (lambda: strategies.estimator_configs(estimators=("gea",)), "^estimators"),
    (lambda: strategies.estimator_configs(outputs=("values",)), "^outputs"),
    (lambda: strategies.estimator_configs(p3o_states=0), "^p3o_states"),
]


@pytest.mark.parametrize("make,message", _BAD_ARGUMENTS)
def test_bad_arguments_raise_invalid_argument_when_the_strategy_is_made(make, message):
    """Not at the first draw, not silently (``policy_pairs(divergence="typo")`` once returned
    a random pair): hypothesis's InvalidArgument, naming the argument."""
    with pytest.raises(InvalidArgument, match=message):
        make()
