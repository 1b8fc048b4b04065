"""Theorems 1, 3-11 and 13 of docs/DESIGN.md section 4 (one proofs/Tnn_*.md file each).

Naming rule (enforced by tests/test_proofs_index.py): every property test is called
``test_Tnn_...`` after the proofs/ file it checks. "moments" tests check offpolicy.moments
(the exact recursion); "reference" tests check estimators.numpy, exactly, by enumerating
every trajectory of a short segment (offpolicy.moments.enumerate_segments).

Tests that hold the reference estimator to a figure go through a ``*_violation`` function
taking the backend as an argument; the ``test_Tnn_check_..._detects_...`` tests run the same
function on a deliberately broken copy of the reference and assert that it reports the
violation, so each of those checks is shown to be able to fail.
"""

import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators import numpy as ref
from offpolicy import exact, moments, registry, strategies
from offpolicy import mdp as mdp_mod

pytestmark = pytest.mark.property

LAMS = st.sampled_from([0.0, 0.3, 0.9, 1.0])
# where a trace can matter: lambda > 0, two steps or more, an estimate that is not the fixed
# point (hypothesis favours the first entry and the low end: lam = 0 or h = 1 would make
# most of a trace test's 25 examples blind to the trace)
TRACE_LAMS = st.sampled_from([0.9, 0.3, 1.0])
TRACE_HORIZONS = st.integers(2, 3)
WRONG = st.sampled_from(["stale", "noisy"])
# per-step probability of a time-limit truncation inside an enumerated segment
CUTS = st.sampled_from([0.0, 0.3])
small_mdps = strategies.mdps(max_states=4, max_actions=3)
# for statements about traces: a discount that lets later steps matter, and A >= 2 so that
# behaviour and target can differ
trace_mdps = strategies.mdps(max_states=4, min_actions=2, max_actions=3, min_gamma=0.5)


def close(a, b, tol=1e-9):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def rel_gap(got, want):
    return abs(got - want) / (1.0 + abs(want))


def enum_mean(m, mu, pi, est, out, h, s, a=None, values=None, q=None, backend=ref,
              truncation_prob=0.0, **params):
    seg = moments.enumerate_segments(m, mu, h, start_state=s, start_action=a,
                                     truncation_prob=truncation_prob)
    x = seg.inputs(behaviour=mu, target=pi, values=values, q=q)
    x["states"] = seg.states
    y = registry.call_estimator(backend, est, x, gamma=m.gamma, output=out, **params)
    return seg.moments(np.asarray(y)[0])[0]


def broken(**overrides):
    """A copy of the reference backend with some estimators replaced by buggy ones."""
    return types.SimpleNamespace(**{**{n: getattr(ref, n) for n in ref.__all__}, **overrides})


def traced_mean(m, mu, v, rho_hat, c_hat, lam, h, s, a=None, truncation_prob=0.0):
    """E[A_0 | s_0 = s (, a_0 = a)] of the state-value trace, written as the sum it unrolls to,
    ``sum_{l<h} (gamma lam)^l E[prod_{i<l} c_i kappa_i * rho_hat_l delta_l]``, and evaluated
    forwards in time (offpolicy.moments recurses backwards): ``x_l(s, a)`` is the expected
    trace weight on reaching (s_l, a_l) = (s, a). A step continues the trace only if s' is not
    terminal and no truncation (probability ``truncation_prob``) cut the episode after it."""
    S, A = m.shape
    live = (~m.terminal).astype(float)
    mean_delta = m.R + m.gamma * np.einsum("ijk,k->ij", m.P, live * v) - v[:, None]
    x = np.zeros((S, A))
    if a is None:
        x[s] = mu[s]
    else:
        x[s, a] = 1.0
    total = 0.0
    for _ in range(h):
        total += float(np.sum(x * rho_hat * mean_delta))
        reach = np.einsum("ij,ijk->k", x * c_hat, m.P * live[None, None, :])
        x = m.gamma * lam * (1.0 - truncation_prob) * reach[:, None] * mu
    return total


def cut_windows(term, trunc):
    """m_t: steps from t to the cut (first done at or after t, or the segment end), [T,B]."""
    T = term.shape[0]
    done = term | trunc
    m = np.zeros(term.shape, int)
    m[T - 1] = 1
    for t in range(T - 2, -1, -1):
        m[t] = np.where(done[t], 1, 1 + m[t + 1])
    return m


def td_errors(x, gamma):
    boot = np.where(x["terminated"], 0.0, x["next_values"])
    return x["rewards"] + gamma * boot - x["values"]


# ---- Theorem 1: GAE identities --------------------------------------------------------------


@given(strategies.trajectory_batches())
def test_T01_gae_lambda0_is_td_error(x):
    g = x["gamma"]
    adv = ref.gae(x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"],
                  gamma=g, lam=0.0).advantages
    close(adv, td_errors(x, g))


@given(strategies.trajectory_batches(consistent=True), LAMS)
def test_T01_gae_is_discounted_sum_of_td_errors_and_lambda1_is_return_to_cut(x, lam):
    g = x["gamma"]
    adv = ref.gae(x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"],
                  gamma=g, lam=lam).advantages
    delta = td_errors(x, g)
    m = cut_windows(x["terminated"], x["truncated"])
    T, B = delta.shape
    for t in range(T):
        for b in range(B):
            k = np.arange(m[t, b])
            close(adv[t, b], np.sum((g * lam) ** k * delta[t + k, b]))
            if lam == 1.0:  # the discounted return to the cut, bootstrapped, minus V(s_t)
                last = t + m[t, b] - 1
                boot = 0.0 if x["terminated"][last, b] else x["next_values"][last, b]
                ret = np.sum(g**k * x["rewards"][t + k, b]) + g ** m[t, b] * boot
                close(adv[t, b], ret - x["values"][t, b])


@given(strategies.trajectory_batches(consistent=True), LAMS)
def test_T01_gae_is_lambda_mixture_of_kstep_advantages(x, lam):
    g = x["gamma"]
    args = (x["terminated"], x["truncated"])
    adv = ref.gae(x["rewards"], x["values"], x["next_values"], *args, gamma=g,
                  lam=lam).advantages
    T = adv.shape[0]
    m = cut_windows(*args)
    ks = [ref.nstep_returns(x["rewards"], x["next_values"], *args, gamma=g, n=k) - x["values"]
          for k in range(1, T + 1)]
    for t in range(T):
        for b in range(adv.shape[1]):
            M = m[t, b]
            mix = sum((1 - lam) * lam ** (k - 1) * ks[k - 1][t, b] for k in range(1, M))
            close(adv[t, b], mix + lam ** (M - 1) * ks[M - 1][t, b])


@given(small_mdps, st.data(), st.integers(1, 6))
def test_T01_moments_gae_lambda1_is_nstep_and_lambda0_is_one_step(m, data, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    v = data.draw(strategies.value_estimates(m, mu))
    kw = dict(behaviour=mu, target=pi, horizon=h, values=v)
    g1 = moments.exact_moments(m, "gae", output="value", lam=1.0, **kw)
    n = moments.exact_moments(m, "nstep", n=h, **kw)
    close(g1.mean_sa, n.mean_sa)
    close(g1.var_sa, n.var_sa)
    g0 = moments.exact_moments(m, "gae", lam=0.0, **kw)
    one = moments.exact_moments(m, "gae", lam=0.7, **dict(kw, horizon=1))
    close(g0.mean_sa, one.mean_sa)
    close(g0.var_sa, one.var_sa)


# ---- Theorem 3: on-policy GAE with V^pi is unbiased for A^pi ---------------------------------


@given(small_mdps, st.data(), LAMS, st.integers(1, 8))
def test_T03_moments_gae_unbiased_for_a_pi(m, data, lam, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    mom = moments.exact_moments(m, "gae", behaviour=pi, target=pi, horizon=h,
                                values=exact.v_pi(m, pi), lam=lam)
    close(mom.mean_sa, exact.a_pi(m, pi), 1e-8)


@given(small_mdps, st.data(), LAMS, st.integers(1, 3), CUTS)
def test_T03_reference_gae_unbiased_for_a_pi(m, data, lam, h, p_cut):
    """(Time-limit truncations inside the segment keep it unbiased: they bootstrap.)"""
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    a_pi = exact.a_pi(m, pi)
    for s in range(S):
        for a in range(A):
            got = enum_mean(m, pi, pi, "gae", "advantage", h, s, a, values=exact.v_pi(m, pi),
                            truncation_prob=p_cut, lam=lam)
            assert abs(got - a_pi[s, a]) < 1e-8 * (1 + abs(a_pi[s, a]))


def gae_trace_violation(m, pi, v, lam, h, truncation_prob, backend=ref):
    """Largest relative gap between E[GAE_0 | s, a] of ``backend`` (every trajectory, with
    truncations inside the segment) and :func:`traced_mean`, over all (s, a)."""
    ones = np.ones(m.shape)
    return max(rel_gap(enum_mean(m, pi, pi, "gae", "advantage", h, s, a, values=v,
                                 backend=backend, truncation_prob=truncation_prob, lam=lam),
                       traced_mean(m, pi, v, ones, ones, lam, h, s, a, truncation_prob))
               for s in range(m.shape[0]) for a in range(m.shape[1]))


@given(trace_mdps, st.data(), TRACE_LAMS, TRACE_HORIZONS, CUTS)
def test_T03_gae_mean_with_another_critic_is_the_traced_sum(m, data, lam, h, p_cut):
    """V != V^pi: the later TD errors no longer have mean zero, so E[A_0 | s, a] is the whole
    sum over the trace (proofs/T03, the derivation with V^pi replaced by V). Dropping or
    mis-cutting the trace changes it: the reference and the exact moments must both match it,
    with time-limit truncations inside the segment."""
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    v = data.draw(strategies.value_estimates(m, pi, kind=data.draw(WRONG)))
    assert gae_trace_violation(m, pi, v, lam, h, p_cut) < 1e-8
    ones = np.ones((S, A))
    mom = moments.exact_moments(m, "gae", behaviour=pi, target=pi, horizon=h, values=v,
                                lam=lam, truncation_prob=p_cut)
    want = [[traced_mean(m, pi, v, ones, ones, lam, h, s, a, p_cut) for a in range(A)]
            for s in range(S)]
    close(mom.mean_sa, want, 1e-8)


def _gae_check_example():
    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=3, num_terminal=1)
    pi = np.random.default_rng(1).dirichlet(np.ones(2), size=3)
    v = exact.v_pi(m, pi) + np.array([1.0, -2.0, 0.0])
    return m, pi, v


def test_T03_check_detects_a_dropped_trace():
    m, pi, v = _gae_check_example()
    assert gae_trace_violation(m, pi, v, 0.9, 3, 0.3) < 1e-9
    no_trace = broken(gae=lambda *args, lam, **kw: ref.gae(*args, lam=0.0, **kw))
    assert gae_trace_violation(m, pi, v, 0.9, 3, 0.3, backend=no_trace) > 1e-2


def test_T03_check_detects_a_trace_run_through_a_truncation():
    m, pi, v = _gae_check_example()

    def through(r, v_, nv, term, trunc, **kw):  # truncations treated as "not done"
        return ref.gae(r, v_, nv, term, np.zeros_like(trunc), **kw)

    assert gae_trace_violation(m, pi, v, 0.9, 3, 0.3, backend=broken(gae=through)) > 1e-2


# ---- Theorem 4: V-trace on-policy is GAE; lambda = 1 gives the return to the cut -------------


def lambda_sum_advantages(x, gamma, lam):
    """``sum_{l<m_t} (gamma lam)^l delta_{t+l}``, each term written out (no recursion)."""
    delta = td_errors(x, gamma)
    m = cut_windows(x["terminated"], x["truncated"])
    out = np.zeros_like(delta)
    for t, b in np.ndindex(*delta.shape):
        for k in range(m[t, b]):
            out[t, b] += (gamma * lam) ** k * delta[t + k, b]
    return out


def returns_to_cut(x, gamma):
    """``sum_{k<m_t} gamma^k r_{t+k} + gamma^m_t beta V(s'_{last})``, written out."""
    m = cut_windows(x["terminated"], x["truncated"])
    out = np.zeros_like(x["rewards"])
    for t, b in np.ndindex(*out.shape):
        last = t + m[t, b] - 1
        boot = 0.0 if x["terminated"][last, b] else x["next_values"][last, b]
        k = np.arange(m[t, b])
        out[t, b] = np.sum(gamma**k * x["rewards"][t + k, b]) + gamma ** m[t, b] * boot
    return out


def vtrace_on_policy_violation(x, lam, rho_clip, c_clip, consistent, backend=ref):
    """Largest gap between on-policy V-trace of ``backend`` and the closed forms: advantages
    = the lambda-sum of TD errors, value targets = V + that, and at lambda = 1 with consistent
    data the discounted return to the cut. GAE runs the same core as V-trace in the reference,
    so the closed forms, not GAE, are the independent side."""
    g = x["gamma"]
    base = (x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"])
    vt = backend.vtrace(*base, x["log_rhos"], gamma=g, lam=lam, rho_clip=rho_clip,
                        c_clip=c_clip)
    want = lambda_sum_advantages(x, g, lam)
    gaps = [np.abs(vt.advantages - want), np.abs(vt.value_targets - x["values"] - want)]
    if lam == 1.0 and consistent:
        gaps.append(np.abs(vt.value_targets - returns_to_cut(x, g)))
    return max(float(np.max(gap / (1 + np.abs(want)))) for gap in gaps)


@given(st.booleans().flatmap(lambda c: st.tuples(
    st.just(c), strategies.trajectory_batches(ratios="equal", consistent=c))),
    LAMS, st.sampled_from([1.0, 1.5, np.inf]), st.sampled_from([1.0, 2.0, np.inf]))
def test_T04_vtrace_on_policy_equals_gae(consistent_x, lam, rho_clip, c_clip):
    consistent, x = consistent_x
    assert vtrace_on_policy_violation(x, lam, rho_clip, c_clip, consistent) < 1e-9
    g = x["gamma"]
    base = (x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"])
    vt = ref.vtrace(*base, x["log_rhos"], gamma=g, lam=lam, rho_clip=rho_clip, c_clip=c_clip)
    ga = ref.gae(*base, gamma=g, lam=lam)
    close(vt.advantages, ga.advantages)
    close(vt.value_targets, ga.returns)


def _on_policy_batch():
    """Two columns, a truncation inside the first, next_values != values[t+1] in the second."""
    rng = np.random.default_rng(4)
    T, B = 5, 2
    term = np.zeros((T, B), bool)
    trunc = np.zeros((T, B), bool)
    trunc[1, 0] = True
    values = rng.normal(size=(T, B))
    next_values = np.vstack([values[1:], rng.normal(size=(1, B))])
    next_values[1, 0] = 3.0  # the final observation of the truncated episode
    x = {"rewards": rng.normal(size=(T, B)), "values": values, "next_values": next_values,
         "terminated": term, "truncated": trunc, "log_rhos": np.zeros((T, B)), "gamma": 0.9}
    other = dict(x, next_values=next_values.copy())
    other["next_values"][2, 1] += 1.0  # another critic's value of s_3
    return x, other


def test_T04_check_detects_values_read_for_next_values():
    x, other = _on_policy_batch()

    def next_step_values(r, v, nv, term, trunc, lr, **kw):  # V(s_{t+1}) where the trace runs
        shifted = np.vstack([v[1:], nv[-1:]])
        return ref.vtrace(r, v, np.where(term | trunc, nv, shifted), term, trunc, lr, **kw)

    bad = broken(vtrace=next_step_values)
    assert vtrace_on_policy_violation(x, 0.9, 1.0, 1.0, True) < 1e-12
    assert vtrace_on_policy_violation(other, 0.9, 1.0, 1.0, False) < 1e-12
    assert vtrace_on_policy_violation(x, 0.9, 1.0, 1.0, True, backend=bad) < 1e-12
    assert vtrace_on_policy_violation(other, 0.9, 1.0, 1.0, False, backend=bad) > 0.1


def test_T04_check_detects_a_trace_run_through_a_truncation():
    x, _ = _on_policy_batch()

    def through(r, v, nv, term, trunc, lr, **kw):
        return ref.vtrace(r, v, nv, term, np.zeros_like(trunc), lr, **kw)

    assert vtrace_on_policy_violation(x, 1.0, 1.0, 1.0, True, backend=broken(vtrace=through)) \
        > 0.1


@given(small_mdps, st.data(), LAMS, st.integers(1, 6))
def test_T04_moments_vtrace_on_policy_equals_gae(m, data, lam, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    v = data.draw(strategies.value_estimates(m, pi))
    kw = dict(behaviour=pi, target=pi, horizon=h, values=v, lam=lam)
    vt = moments.exact_moments(m, "vtrace", output="advantage", rho_clip=1.0, c_clip=1.5, **kw)
    ga = moments.exact_moments(m, "gae", **kw)
    close(vt.mean_sa, ga.mean_sa)
    close(vt.var_sa, ga.var_sa)
    # both run offpolicy.moments' one state-trace recursion: hold the mean to the closed form
    ones = np.ones((S, A))
    close(vt.mean_sa, [[traced_mean(m, pi, v, ones, ones, lam, h, s, a) for a in range(A)]
                       for s in range(S)], 1e-8)


# ---- Theorem 5: V-trace fixed point and modulus ---------------------------------------------


def _vtrace_pair(data, m):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A, full_support_target=True))
    return mu, pi, data.draw(st.sampled_from([0.5, 1.0, 3.0])), \
        data.draw(st.sampled_from([0.0, 0.5, 1.0, 5.0]))


@given(small_mdps, st.data(), LAMS, st.integers(1, 6))
def test_T05_moments_vtrace_mean_is_truncated_operator(m, data, lam, h):
    mu, pi, rc, cc = _vtrace_pair(data, m)
    v = data.draw(strategies.value_estimates(m, mu))
    mom = moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=h, values=v,
                                lam=lam, rho_clip=rc, c_clip=cc)
    op = exact.vtrace_operator(m, pi, mu, v, rho_clip=rc, c_clip=cc, lam=lam, n=h)
    live = ~m.terminal
    close(mom.mean_s[live], op[live], 1e-8)


@given(small_mdps, st.data(), LAMS, st.integers(1, 4))
def test_T05_vtrace_fixed_point_for_every_c_clip(m, data, lam, h):
    mu, pi, rc, cc = _vtrace_pair(data, m)
    fixed = exact.v_pi(m, exact.vtrace_policy(pi, mu, rc))
    mom = moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=h,
                                values=fixed, lam=lam, rho_clip=rc, c_clip=cc)
    close(mom.mean_s, fixed, 1e-8)
    s = data.draw(st.integers(0, m.shape[0] - 1))
    got = enum_mean(m, mu, pi, "vtrace", "value", min(h, 3), s, values=fixed, lam=lam,
                    rho_clip=rc, c_clip=cc)
    assert abs(got - fixed[s]) < 1e-8 * (1 + abs(fixed[s]))


def vtrace_operator_violation(m, mu, pi, v, lam, h, rho_clip, c_clip, backend=ref):
    """Largest relative gap between E[v_0 | s] of ``backend``'s V-trace (every trajectory of
    the segment) and the h-step truncated V-trace operator of offpolicy.exact, live s."""
    op = exact.vtrace_operator(m, pi, mu, v, rho_clip=rho_clip, c_clip=c_clip, lam=lam, n=h)
    return max((rel_gap(enum_mean(m, mu, pi, "vtrace", "value", h, s, values=v,
                                  backend=backend, lam=lam, rho_clip=rho_clip, c_clip=c_clip),
                        op[s]) for s in np.flatnonzero(~m.terminal)), default=0.0)


# clip pairs with c_clip != rho_clip: below and above it, 0 (no trace), 1e3 (all but unclipped)
CLIP_PAIRS = st.sampled_from([(0.5, 2.0), (1.0, 0.3), (3.0, 1.0), (1.0, 1e3), (2.0, 0.0),
                              (0.5, 0.8)])


@given(trace_mdps, st.data(), TRACE_LAMS, TRACE_HORIZONS, CLIP_PAIRS)
def test_T05_reference_vtrace_mean_is_truncated_operator_for_every_c_clip(m, data, lam, h,
                                                                         clips):
    """The V-trace *estimator* with c_clip != rho_clip and a critic away from the fixed point
    (where every later TD error has non-zero mean, so the trace coefficients min(c_clip, rho)
    matter): its exact mean over every trajectory is the truncated operator."""
    mu, pi, _, _ = _vtrace_pair(data, m)
    v = data.draw(strategies.value_estimates(m, mu, kind=data.draw(WRONG)))
    assert vtrace_operator_violation(m, mu, pi, v, lam, h, *clips) < 1e-8


def _vtrace_check_example():
    m = mdp_mod.garnet(3, 2, 3, gamma=0.9, seed=5)
    rng = np.random.default_rng(2)
    mu, pi = rng.dirichlet(np.ones(2), size=3), rng.dirichlet(np.ones(2) * 0.3, size=3)
    return m, mu, pi, exact.v_pi(m, mu) + np.array([2.0, -1.0, 0.5])


def test_T05_check_detects_an_ignored_c_clip():
    m, mu, pi, v = _vtrace_check_example()
    assert vtrace_operator_violation(m, mu, pi, v, 1.0, 3, 2.0, 0.3) < 1e-9
    for c_hat in (lambda rc, cc: rc, lambda rc, cc: np.inf):  # c = min(rho_clip, rho); c = rho
        def bug(*args, rho_clip=1.0, c_clip=1.0, c_hat=c_hat, **kw):
            return ref.vtrace(*args, rho_clip=rho_clip, c_clip=c_hat(rho_clip, c_clip), **kw)

        assert vtrace_operator_violation(m, mu, pi, v, 1.0, 3, 2.0, 0.3,
                                         backend=broken(vtrace=bug)) > 1e-2


@given(small_mdps, st.data())
def test_T05_vtrace_modulus_bound(m, data):
    mu, pi, rc, cc = _vtrace_pair(data, m)
    S = m.shape[0]
    rho = pi / mu
    d_rho = (mu * np.minimum(rc, rho)).sum(axis=1)
    bound = 1 - (1 - m.gamma) * d_rho.min()
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    for _ in range(3):
        v1, v2 = rng.normal(size=(2, S)) * 3
        o1 = exact.vtrace_operator(m, pi, mu, v1, rho_clip=rc, c_clip=min(cc, rc))
        o2 = exact.vtrace_operator(m, pi, mu, v2, rho_clip=rc, c_clip=min(cc, rc))
        assert np.abs(o1 - o2).max() <= bound * np.abs(v1 - v2).max() + 1e-9


def test_T05_modulus_bound_needs_c_clip_at_most_rho_clip():
    """Counterexample (proofs/T05): with c_clip > rho_clip the bound, and contraction, fail."""
    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=0)
    rng = np.random.default_rng(0)
    mu, pi = rng.dirichlet(np.ones(2), size=3), rng.dirichlet(np.ones(2), size=3)
    rc, cc = 0.3, 5.0
    B = np.stack([exact.vtrace_operator(m, pi, mu, e, rho_clip=rc, c_clip=cc)
                  - exact.vtrace_operator(m, pi, mu, 0 * e, rho_clip=rc, c_clip=cc)
                  for e in np.eye(3)], axis=1)
    d_rho = (mu * np.minimum(rc, pi / mu)).sum(axis=1)
    assert 1 - (1 - m.gamma) * d_rho.min() < 1 < np.abs(B).sum(axis=1).max()
    # the fixed point is still V^{pi_rhobar}
    fixed = exact.vtrace_fixed_point(m, pi, mu, rc)
    close(exact.vtrace_operator(m, pi, mu, fixed, rho_clip=rc, c_clip=cc), fixed, 1e-8)


# ---- Theorem 6: Retrace / TB / IS fixed point Q^pi, modulus eta <= gamma; Q(lambda) fails ---


def _traces(kind, pi, mu, lam):
    if kind == "retrace":
        return exact.retrace_traces(pi, mu, lam)
    if kind == "tree_backup":
        return exact.tree_backup_traces(pi, lam)
    return exact.is_traces(pi, mu, lam)


SAFE_QTRACES = ["retrace", "tree_backup", "importance_sampling_q"]


def perturbations(data, shape):
    """Q - Q^pi: a drawn direction (one sign, mixed signs, one entry) at a drawn scale."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    kind = data.draw(st.sampled_from(["normal", "positive", "one_entry"]))
    e = rng.normal(size=shape)
    if kind == "positive":
        e = np.abs(e)
    elif kind == "one_entry":
        e = np.zeros(shape)
        e[tuple(rng.integers(0, n) for n in shape)] = 1.0
    return e * data.draw(st.sampled_from([1e-3, 1.0, 50.0]))


@pytest.mark.parametrize("kind", SAFE_QTRACES)
@given(small_mdps, st.data(), LAMS)
def test_T06_qtrace_fixed_point_and_modulus(kind, m, data, lam):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    c = _traces(kind, pi, mu, lam)
    qpi = exact.q_pi(m, pi)
    close(exact.retrace_operator(m, pi, mu, qpi, c), qpi, 1e-7)
    eta = exact.retrace_eta(m, mu, c)
    assert np.all(eta <= m.gamma + 1e-12)
    q = qpi + perturbations(data, (S, A))
    err = np.abs(exact.retrace_operator(m, pi, mu, q, c) - qpi)
    assert np.all(err <= eta * np.abs(q - qpi).max() * (1 + 1e-9) + 1e-8)
    # the sampled target with Q = Q^pi is unbiased at every horizon
    mom = moments.exact_moments(m, kind, behaviour=mu, target=pi, horizon=4, q=qpi, lam=lam)
    close(mom.mean_sa, qpi, 1e-7)


def qtrace_contraction_violation(m, mu, pi, q, kind, lam, h, backend=ref):
    """Largest violation, over (s, a), of: E[G_0 | s, a] of ``backend``'s target (every
    trajectory of the segment) equals the h-step truncated operator, and lies within
    gamma max|Q - Q^pi| of Q^pi (the truncated operator's modulus is at most gamma for
    0 <= c <= pi/mu, proofs/T06). Relative units; <= 0 when both hold."""
    c = _traces(kind, pi, mu, lam)
    op = exact.retrace_operator(m, pi, mu, q, c, n=h)
    qpi = exact.q_pi(m, pi)
    radius = m.gamma * np.abs(q - qpi).max()
    worst = -np.inf
    for s, a in np.ndindex(*m.shape):
        got = enum_mean(m, mu, pi, kind, "target", h, s, a, q=q, backend=backend, lam=lam)
        worst = max(worst, rel_gap(got, op[s, a]) - 1e-8,
                    (abs(got - qpi[s, a]) - radius) / (1 + radius) - 1e-8)
    return worst


@pytest.mark.parametrize("kind", SAFE_QTRACES)
@given(trace_mdps, st.data(), TRACE_LAMS, TRACE_HORIZONS)
def test_T06_reference_qtrace_mean_is_the_operator_and_contracts(kind, m, data, lam, h):
    """The sampled estimator at a drawn Q != Q^pi: its exact mean is the operator applied to
    Q, which moves Q towards Q^pi by at least the factor gamma."""
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    q = exact.q_pi(m, pi) + perturbations(data, (S, A))
    assert qtrace_contraction_violation(m, mu, pi, q, kind, lam, h) <= 0


def test_T06_check_detects_broken_traces():
    m = mdp_mod.garnet(3, 2, 3, gamma=0.9, seed=7)
    rng = np.random.default_rng(3)
    mu, pi = rng.dirichlet(np.ones(2), size=3), rng.dirichlet(np.ones(2) * 0.3, size=3)
    q = exact.q_pi(m, pi) + rng.normal(size=(3, 2))
    assert qtrace_contraction_violation(m, mu, pi, q, "retrace", 1.0, 3) <= 0

    def same_step(r, q_, nq, term, trunc, lr, *, gamma, lam):  # c_t instead of c_{t+1}
        c = np.minimum(1.0, np.exp(lr))
        return ref.q_trace(r, q_, nq, term, trunc, np.vstack([np.ones_like(c[:1]), c[:-1]]),
                           gamma=gamma, lam=lam)

    for bug in (lambda *a, lam, **kw: ref.retrace(*a, lam=0.0, **kw),  # no trace
                lambda r, q_, nq, term, trunc, lr, **kw: ref.q_lambda(r, q_, nq, term, trunc,
                                                                       **kw),  # c = 1
                same_step):
        assert qtrace_contraction_violation(m, mu, pi, q, "retrace", 1.0, 3,
                                            backend=broken(retrace=bug)) > 1e-3


def test_T06_q_lambda_diverges_beyond_its_bound():
    m, pi, mu, lam = mdp_mod.q_lambda_counterexample()
    gamma = m.gamma
    eps = np.abs(pi - mu).sum(axis=1).max()
    assert lam > (1 - gamma) / (gamma * eps)
    qpi = exact.q_pi(m, pi)
    # iterate the operator through the sampled estimator's exact mean (long segment)
    q = qpi + np.array([[1.0, 1.0], [-1.0, -1.0]])
    for _ in range(12):
        q = moments.exact_moments(m, "q_lambda", behaviour=mu, target=pi, horizon=300, q=q,
                                  lam=lam).mean_sa
    assert np.abs(q - qpi).max() > 100  # |error| grows like 1.6^k
    # Retrace on the same problem contracts
    q = qpi + np.array([[1.0, 1.0], [-1.0, -1.0]])
    for _ in range(12):
        q = moments.exact_moments(m, "retrace", behaviour=mu, target=pi, horizon=300, q=q,
                                  lam=lam).mean_sa
    assert np.abs(q - qpi).max() < gamma**12
    # below the bound Q(lambda) contracts
    small = 0.9 * (1 - gamma) / (gamma * eps)
    B = exact.retrace_linear_part(m, pi, mu, exact.q_lambda_traces(pi, small))
    assert np.abs(B).sum(axis=1).max() < 1


# ---- Theorem 7: the sampled Q-trace mean is the truncated operator --------------------------


QTRACES = ["retrace", "tree_backup", "q_lambda", "importance_sampling_q"]


@pytest.mark.parametrize("kind", QTRACES)
@given(small_mdps, st.data(), LAMS, st.integers(1, 6))
def test_T07_moments_qtrace_mean_is_truncated_operator(kind, m, data, lam, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    q = data.draw(strategies.q_estimates(m, pi))
    c = exact.q_lambda_traces(pi, lam) if kind == "q_lambda" else _traces(kind, pi, mu, lam)
    mom = moments.exact_moments(m, kind, behaviour=mu, target=pi, horizon=h, q=q, lam=lam)
    close(mom.mean_sa, exact.retrace_operator(m, pi, mu, q, c, n=h), 1e-8)


@pytest.mark.parametrize("kind", QTRACES)
@given(trace_mdps, st.data(), TRACE_LAMS, TRACE_HORIZONS)
def test_T07_reference_qtrace_mean_is_truncated_operator(kind, m, data, lam, h):
    """(lam = 0 and h = 1, where no trace enters, are in the moments test above.)"""
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    q = data.draw(strategies.q_estimates(m, pi, kind=data.draw(WRONG)))
    c = exact.q_lambda_traces(pi, lam) if kind == "q_lambda" else _traces(kind, pi, mu, lam)
    op = exact.retrace_operator(m, pi, mu, q, c, n=h)
    for s in range(S):
        for a in range(A):
            got = enum_mean(m, mu, pi, kind, "target", h, s, a, q=q, lam=lam)
            assert abs(got - op[s, a]) < 1e-8 * (1 + abs(op[s, a]))


# ---- Theorem 8: per-decision IS is unbiased --------------------------------------------------


@given(small_mdps, st.data(), LAMS, st.integers(1, 6))
def test_T08_moments_pdis_unbiased_for_on_policy_return(m, data, lam, h):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    v = data.draw(strategies.value_estimates(m, mu))
    off = moments.exact_moments(m, "per_decision_is", behaviour=mu, target=pi, horizon=h,
                                values=v, lam=lam)
    on = moments.exact_moments(m, "gae", output="value", behaviour=pi, target=pi, horizon=h,
                               values=v, lam=lam)
    close(off.mean_s, on.mean_s, 1e-8)


@given(small_mdps, st.data(), LAMS, st.integers(1, 3), CUTS)
def test_T08_reference_pdis_unbiased_for_on_policy_return(m, data, lam, h, p_cut):
    """(With time-limit truncations inside the segment on both sides.)"""
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A))
    v = data.draw(strategies.value_estimates(m, mu))
    on = moments.exact_moments(m, "gae", output="value", behaviour=pi, target=pi, horizon=h,
                               values=v, lam=lam, truncation_prob=p_cut)
    for s in range(S):
        got = enum_mean(m, mu, pi, "per_decision_is", "value", h, s, values=v, lam=lam,
                        truncation_prob=p_cut)
        assert abs(got - on.mean_s[s]) < 1e-8 * (1 + abs(on.mean_s[s]))


# ---- Theorem 9: V-trace's clip level interpolates between V^mu and V^pi -----------------------


def _vtrace_fixed_point_of_mean(m, mu, pi, rc, h, lam):
    """Fixed point of V -> E[v_0 | s; V] (affine in V), from the exact moments."""
    S = m.shape[0]
    f = lambda v: moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=h,
                                        values=v, lam=lam, rho_clip=rc, c_clip=1.0).mean_s
    c = f(np.zeros(S))
    M = np.stack([f(e) - c for e in np.eye(S)], axis=1)
    live = ~m.terminal
    sol = np.zeros(S)
    idx = np.flatnonzero(live)
    sol[idx] = np.linalg.solve(np.eye(len(idx)) - M[np.ix_(idx, idx)], c[idx])
    return sol


@given(small_mdps, st.data(), st.integers(1, 3), LAMS)
def test_T09_vtrace_clip_limits_are_v_pi_and_v_mu(m, data, h, lam):
    S, A = m.shape
    mu, pi = data.draw(strategies.policy_pairs(S, A, full_support_target=True))
    rho = pi / mu
    live = ~m.terminal
    high = _vtrace_fixed_point_of_mean(m, mu, pi, rho.max() * 1.01, h, lam)
    close(high[live], exact.v_pi(m, pi)[live], 1e-6)
    low = _vtrace_fixed_point_of_mean(m, mu, pi, rho.min() * 0.99, h, lam)
    close(low[live], exact.v_pi(m, mu)[live], 1e-6)


# ---- Theorem 10: n-step contraction ----------------------------------------------------------


@given(small_mdps, st.data(), st.integers(1, 5), st.integers(1, 6))
def test_T10_nstep_error_contracts_by_gamma_n(m, data, n, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    v = data.draw(strategies.value_estimates(m, pi, kind="noisy"))
    vpi = exact.v_pi(m, pi)
    mom = moments.exact_moments(m, "nstep", behaviour=pi, target=pi, horizon=h, values=v, n=n)
    k = min(n, h)
    assert np.abs(mom.mean_s - vpi).max() <= m.gamma**k * np.abs(v - vpi).max() + 1e-9
    if h <= 3:
        s = data.draw(st.integers(0, S - 1))
        assert abs(enum_mean(m, pi, pi, "nstep", "value", h, s, values=v, n=n)
                   - mom.mean_s[s]) < 1e-9 * (1 + abs(mom.mean_s[s]))


# ---- Theorem 11: P3O with w_k = gamma^k and exact means is the truncated advantage -----------


def _truncated_advantage(m, pi, H):
    q = np.zeros(m.shape)
    for _ in range(H):
        q = m.R + m.gamma * np.einsum("ijk,k->ij", m.P_continue, (pi * q).sum(axis=1))
    return q - (pi * q).sum(axis=1, keepdims=True)


@given(strategies.mdps(max_states=4, max_actions=3, terminal=False), st.data(),
       st.integers(1, 4), st.integers(1, 6))
def test_T11_p3o_is_truncated_advantage(m, data, H, h):
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    means = moments.p3o_exact_means(m, pi, H)
    mom = moments.exact_moments(m, "p3o", behaviour=pi, target=pi, horizon=h, p3o_horizon=H,
                                means=means)
    close(mom.mean_sa, _truncated_advantage(m, pi, min(H, h)), 1e-8)
    if h <= 3:
        w = m.gamma ** np.arange(H)
        for s in range(S):
            got = enum_mean(m, pi, pi, "p3o", "advantage", h, s, 0, weights=w, means=means)
            assert abs(got - mom.mean_sa[s, 0]) < 1e-8


def p3o_contract_weights(sigma, sigma_r, normalize):
    """w_k = max(0, sigma_k^-2 - sigma_r^-2), normalised over the H offsets of each row by
    their max, their sum or not (docs/DESIGN.md section 2; an all-zero row stays 0)."""
    with np.errstate(divide="ignore"):
        w = np.maximum(0.0, 1.0 / sigma**2 - 1.0 / sigma_r**2)
    scale = {"max": w.max(axis=-1), "sum": w.sum(axis=-1),
             "none": np.ones(w.shape[:-1])}[normalize]
    return w / np.where(scale > 0, scale, 1.0)[..., None]


def p3o_sigma_violation(m, pi, means, sigma, sigma_r, normalize, h, p_cut, backend=ref):
    """Largest relative gap, over start states, between E[A_0 | s] of ``backend``'s P3O fed
    the predicted stds ``sigma`` [S,H] (every trajectory, truncations inside) and the exact
    moments with the weights the contract derives from them."""
    H = means.shape[1]
    w = p3o_contract_weights(sigma, sigma_r, normalize)
    mom = moments.exact_moments(m, "p3o", behaviour=pi, target=pi, horizon=h, p3o_horizon=H,
                                weights=w, means=means, truncation_prob=p_cut)
    worst = 0.0
    for s in range(m.shape[0]):
        seg = moments.enumerate_segments(m, pi, h, start_state=s, truncation_prob=p_cut)
        y = backend.p3o_advantage(seg.rewards, means[seg.states], sigma[seg.states],
                                  seg.terminated, seg.truncated, batch_reward_std=sigma_r,
                                  normalize=normalize)
        worst = max(worst, rel_gap(seg.moments(np.asarray(y)[0])[0], mom.mean_s[s]))
    return worst


@pytest.mark.parametrize("normalize", ["max", "sum", "none"])
@given(small_mdps, st.data(), st.integers(1, 4), st.integers(1, 3), CUTS)
def test_T11_reference_p3o_sigma_weights_and_normalisation(normalize, m, data, H, h, p_cut):
    """The estimator's own weighting: predicted stds (some at or above the batch std, which
    zero their weight, some inf), the batch std floor, and the max/sum normalisation."""
    S, _ = m.shape
    pi = data.draw(strategies.policies(*m.shape))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    sigma_r = data.draw(st.sampled_from([0.7, 1.5, np.inf]))
    sigma = rng.uniform(0.2, 2.0, size=(S, H))
    sigma[rng.random((S, H)) < 0.2] = np.inf
    means = rng.normal(size=(S, H))
    assert p3o_sigma_violation(m, pi, means, sigma, sigma_r, normalize, h, p_cut) < 1e-9


@pytest.mark.parametrize("normalize", ["max", "sum", "none"])
@given(strategies.mdps(max_states=4, max_actions=3, terminal=False), st.data(),
       st.integers(1, 4), st.integers(1, 3), st.sampled_from([1.0, 2.0, np.inf]))
def test_T11_p3o_from_predicted_sigmas_is_truncated_advantage(normalize, m, data, H, h,
                                                             sigma_r):
    """sigma_k = (gamma^k + sigma_r^-2)^-1/2 gives w_k = gamma^k before normalising; the max is
    w_0 = 1, so "max" and "none" give the truncated advantage and "sum" gives it divided by
    sum_k gamma^k, for the reference estimator fed those stds."""
    S, A = m.shape
    pi = data.draw(strategies.policies(S, A))
    means = moments.p3o_exact_means(m, pi, H)
    discounts = m.gamma ** np.arange(H)
    with np.errstate(divide="ignore"):
        sigma = np.broadcast_to((discounts + 1.0 / sigma_r**2) ** -0.5, (S, H))
    want = _truncated_advantage(m, pi, min(H, h))
    if normalize == "sum":
        want = want / discounts.sum()
    for s, a in np.ndindex(S, A):
        seg = moments.enumerate_segments(m, pi, h, start_state=s, start_action=a)
        y = ref.p3o_advantage(seg.rewards, means[seg.states], sigma[seg.states],
                              seg.terminated, seg.truncated, batch_reward_std=sigma_r,
                              normalize=normalize)
        assert abs(seg.moments(y[0])[0] - want[s, a]) < 1e-8 * (1 + abs(want[s, a]))


def test_T11_check_detects_broken_weights():
    m = mdp_mod.garnet(3, 2, 2, gamma=0.9, seed=8)
    pi = np.full((3, 2), 0.5)
    rng = np.random.default_rng(5)
    means, sigma = rng.normal(size=(3, 3)), rng.uniform(0.2, 1.0, size=(3, 3))
    args = (m, pi, means, sigma, 1.5)
    for norm in ("max", "sum", "none"):
        assert p3o_sigma_violation(*args, norm, 3, 0.3) < 1e-9
    no_norm = lambda *a, normalize, **kw: ref.p3o_advantage(*a, normalize="none", **kw)
    no_floor = lambda *a, batch_reward_std, **kw: ref.p3o_advantage(
        *a, batch_reward_std=np.inf, **kw)
    assert p3o_sigma_violation(*args, "sum", 3, 0.3, backend=broken(p3o_advantage=no_norm)) \
        > 1e-2
    assert p3o_sigma_violation(*args, "max", 3, 0.3, backend=broken(p3o_advantage=no_floor)) \
        > 1e-2


def test_T11_terminations_break_the_identity():
    """Counterexample (proofs/T11): the window stops at a termination, so mu_{t,k} is no longer
    subtracted there; with a terminal state inside H the identity fails."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 1] = 1.0  # action 0 terminates
    P[0, 1, 0] = 1.0  # action 1 stays
    P[1, :, 1] = 1.0
    R = np.array([[1.0, 1.0], [0.0, 0.0]])
    m = mdp_mod.TabularMDP(P, R, 0.99, terminal=[1])
    pi = np.full((2, 2), 0.5)
    means = moments.p3o_exact_means(m, pi, 2)
    mom = moments.exact_moments(m, "p3o", behaviour=pi, target=pi, horizon=2, p3o_horizon=2,
                                means=means)
    truth = _truncated_advantage(m, pi, 2)
    close(truth[0], [-0.495, 0.495])
    close(mom.mean_sa[0], [0.0, 0.495])  # the terminating action's advantage is 0, not -0.495


# ---- Theorem 13: ordinary IS on Sutton & Barto's loop has unbounded variance -----------------


def test_T13_sutton_barto_second_moment_partial_sums():
    m = mdp_mod.sutton_barto_loop()
    pi, mu = mdp_mod.sutton_barto_policies()
    zero = np.zeros(2)
    for K, want in [(5, 4.47), (10, 89.0), (20, 31870)]:
        mom = moments.exact_moments(m, "per_decision_is", behaviour=mu, target=pi, horizon=K,
                                    values=zero, lam=1.0)
        close(mom.second_s[0], 0.25 * (1.8**K - 1), 1e-10)
        assert abs(mom.second_s[0] - want) <= 0.005 * want
    # the reference estimator, every trajectory of length 5
    seg = moments.enumerate_segments(m, mu, 5, start_state=0)
    x = seg.inputs(behaviour=mu, target=pi, values=zero)
    out = ref.per_decision_is(x["rewards"], x["values"], x["next_values"], x["terminated"],
                              x["truncated"], x["log_rhos"], gamma=1.0, lam=1.0).value_targets
    assert abs(seg.weight @ out[0] ** 2 - 0.25 * (1.8**5 - 1)) < 1e-10


def test_T13_clipping_bounds_the_second_moment():
    m = mdp_mod.sutton_barto_loop()
    pi, mu = mdp_mod.sutton_barto_policies()
    seconds = [moments.exact_moments(m, "vtrace", behaviour=mu, target=pi, horizon=K,
                                     values=np.zeros(2), rho_clip=1.0, c_clip=1.0).second_s[0]
               for K in (5, 10, 20, 100)]
    assert max(seconds) <= 1.0
    assert np.all(np.diff(seconds) >= -1e-12)
