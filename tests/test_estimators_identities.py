"""Identities between the numpy reference estimators (docs/DESIGN.md section 4, theorems 1, 2, 4).

Random batches come from a hypothesis-drawn seed and small shapes (T <= 8, B <= 3).
"""

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import estimators.numpy as E
from estimators import layout as L

TOL = dict(rtol=1e-10, atol=1e-10)

seeds = st.integers(0, 2**32 - 1)
lengths = st.integers(1, 8)
widths = st.integers(1, 3)
done_rates = st.sampled_from([0.0, 0.2, 0.5])
unit = st.floats(0.0, 1.0)


def make_batch(seed, T, B, p_done):
    rng = np.random.default_rng(seed)
    H = int(rng.integers(1, 5))
    normal = lambda: rng.normal(size=(T, B))
    return dict(
        rewards=normal(), values=normal(), next_values=normal(), q_taken=normal(),
        next_expected_q=normal(), log_rhos=rng.uniform(-1.5, 1.5, size=(T, B)),
        probs=rng.uniform(0.0, 1.0, size=(T, B)),
        terminated=rng.random((T, B)) < p_done, truncated=rng.random((T, B)) < p_done,
        reward_mean=rng.normal(size=(T, B, H)), reward_std=rng.uniform(0.3, 3.0, size=(T, B, H)),
    )


def run_all(b, gamma, lam, n):
    """Every estimator on batch b, as name -> tuple of arrays."""
    flags = (b["terminated"], b["truncated"])
    state = (b["rewards"], b["values"], b["next_values"], *flags)
    action = (b["rewards"], b["q_taken"], b["next_expected_q"], *flags)
    lr = b["log_rhos"]
    return {
        "gae": E.gae(*state, gamma=gamma, lam=lam),
        "vtrace": E.vtrace(*state, lr, gamma=gamma, lam=lam, rho_clip=1.2, c_clip=0.9),
        "puff": (E.puff_advantage(*state, lr, gamma=gamma, lam=lam),),
        "pdis": E.per_decision_is(*state, lr, gamma=gamma, lam=lam),
        "nstep": (E.nstep_returns(b["rewards"], b["next_values"], *flags, gamma=gamma, n=n),),
        "q_trace": (E.q_trace(*action, b["probs"] * 2, gamma=gamma, lam=lam),),
        "retrace": (E.retrace(*action, lr, gamma=gamma, lam=lam),),
        "tree_backup": (E.tree_backup(*action, b["probs"], gamma=gamma, lam=lam),),
        "q_lambda": (E.q_lambda(*action, gamma=gamma, lam=lam),),
        "is_q": (E.importance_sampling_q(*action, lr, gamma=gamma, lam=lam),),
        "p3o": (E.p3o_advantage(b["rewards"], b["reward_mean"], b["reward_std"], *flags,
                                batch_reward_std=1.0, normalize="sum"),),
    }


def consistent_next_values(b, seed):
    """next_values with V(s'_t) = V(s_{t+1}) inside episodes (the final observation's value,
    random, after a truncation). Telescoping identities (GAE lam=1 = n-step return, V-trace's
    pg = GAE) need it: the contract takes V(s'_t) and V(s_{t+1}) as separate inputs."""
    T, B = b["values"].shape
    rng = np.random.default_rng(seed + 1)
    return L.next_values_from_values(b["values"], rng.normal(size=B), truncated=b["truncated"],
                                     truncation_values=rng.normal(size=(T, B)))


def assert_same(got, expected, **tol):
    assert got.keys() == expected.keys()
    for name in got:
        for g, e in zip(got[name], expected[name], strict=True):
            np.testing.assert_allclose(g, e, err_msg=name, **(tol or TOL))


def episodes(done):
    """[start, stop) pieces of one stream, each ending at a done or at the segment's end."""
    stops = [t + 1 for t in np.flatnonzero(done)]
    bounds = [0] + [s for s in stops if s < len(done)] + [len(done)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@given(seeds, lengths, widths, done_rates, unit, unit, st.integers(1, 10))
def test_splitting_at_done_boundaries_and_streams_equals_the_batch(seed, T, B, p, gamma, lam, n):
    """Theorem 2: a batch equals its streams run apart, and a stream its episodes run apart."""
    batch = make_batch(seed, T, B, p)
    full = run_all(batch, gamma, lam, n)
    for b in range(B):
        stream = {k: v[:, b : b + 1] for k, v in batch.items()}
        whole = run_all(stream, gamma, lam, n)
        assert_same(whole, {k: tuple(x[:, b : b + 1] for x in v) for k, v in full.items()})
        for start, stop in episodes(stream["terminated"][:, 0] | stream["truncated"][:, 0]):
            piece = run_all({k: v[start:stop] for k, v in stream.items()}, gamma, lam, n)
            assert_same(piece, {k: tuple(x[start:stop] for x in v) for k, v in whole.items()})


@given(seeds, lengths, widths, st.sampled_from([0.2, 0.5, 1.0]), unit, unit,
       st.integers(1, 10), st.sampled_from([math.nan, math.inf, -math.inf, 1e300]))
def test_values_under_terminated_never_reach_the_output(seed, T, B, p, gamma, lam, n, junk):
    """Theorem 2: next_values / next_expected_q under terminated may hold anything."""
    batch = make_batch(seed, T, B, p)
    clean = run_all(batch, gamma, lam, n)
    dirty = dict(batch)
    for key in ("next_values", "next_expected_q"):
        dirty[key] = np.where(batch["terminated"], junk, batch[key])
    got = run_all(dirty, gamma, lam, n)
    assert_same(got, clean, rtol=0, atol=0)
    assert all(np.isfinite(x).all() for v in got.values() for x in v)


@given(seeds, lengths, widths, done_rates, unit, unit)
def test_gae_is_the_sum_of_discounted_td_errors(seed, T, B, p, gamma, lam):
    """Theorem 1: A_t = sum_l (gamma lam)^l delta_{t+l}, stopping after the first cut."""
    b = make_batch(seed, T, B, p)
    adv, returns = E.gae(b["rewards"], b["values"], b["next_values"], b["terminated"],
                         b["truncated"], gamma=gamma, lam=lam)
    boot = np.where(b["terminated"], 0.0, b["next_values"])
    delta = b["rewards"] + gamma * boot - b["values"]
    done = b["terminated"] | b["truncated"]
    expected = np.zeros((T, B))
    for t in range(T):
        weight = np.ones(B)
        for u in range(t, T):
            expected[t] += weight * delta[u]
            weight = weight * gamma * lam * ~done[u]
    np.testing.assert_allclose(adv, expected, **TOL)
    np.testing.assert_allclose(returns, b["values"] + adv, **TOL)
    lam0, _ = E.gae(b["rewards"], b["values"], b["next_values"], b["terminated"], b["truncated"],
                    gamma=gamma, lam=0.0)
    np.testing.assert_allclose(lam0, delta, **TOL)


@given(seeds, lengths, widths, done_rates, unit, unit,
       st.floats(1.0, math.inf), st.floats(1.0, math.inf), st.floats(1.0, math.inf))
def test_vtrace_on_policy_with_clips_at_least_one_is_gae(seed, T, B, p, gamma, lam, rc, cc, pc):
    """Theorem 4: log_rhos = 0, clips >= 1: advantages = GAE, targets = TD(lam) returns; with
    consistent next_values (V(s'_t) = V(s_{t+1}) inside episodes) pg_advantages = GAE too."""
    b = make_batch(seed, T, B, p)
    nv = consistent_next_values(b, seed)
    state = (b["rewards"], b["values"], nv, b["terminated"], b["truncated"])
    adv, returns = E.gae(*state, gamma=gamma, lam=lam)
    out = E.vtrace(*state, np.zeros((T, B)), gamma=gamma, lam=lam, rho_clip=rc, c_clip=cc,
                   pg_rho_clip=pc)
    np.testing.assert_allclose(out.advantages, adv, **TOL)
    np.testing.assert_allclose(out.value_targets, returns, **TOL)
    np.testing.assert_allclose(out.pg_advantages, adv, **TOL)


@given(seeds, lengths, widths, done_rates, unit, unit)
def test_per_decision_is_is_unclipped_vtrace(seed, T, B, p, gamma, lam):
    b = make_batch(seed, T, B, p)
    state = (b["rewards"], b["values"], b["next_values"], b["terminated"], b["truncated"])
    pdis = E.per_decision_is(*state, b["log_rhos"], gamma=gamma, lam=lam)
    vt = E.vtrace(*state, b["log_rhos"], gamma=gamma, lam=lam, rho_clip=math.inf,
                  c_clip=math.inf)
    np.testing.assert_allclose(pdis.advantages, vt.advantages, **TOL)
    np.testing.assert_allclose(pdis.value_targets, vt.value_targets, **TOL)


@given(seeds, lengths, widths, done_rates, unit, unit)
def test_q_traces_with_unit_coefficients_are_q_lambda(seed, T, B, p, gamma, lam):
    """Retrace with log_rhos = 0 (or >= 0), IS with log_rhos = 0, TB with pi(a|s) = 1 and
    q_trace with traces = 1 all equal Q(lambda)."""
    b = make_batch(seed, T, B, p)
    action = (b["rewards"], b["q_taken"], b["next_expected_q"], b["terminated"], b["truncated"])
    expected = E.q_lambda(*action, gamma=gamma, lam=lam)
    zeros, ones = np.zeros((T, B)), np.ones((T, B))
    for got in (E.retrace(*action, zeros, gamma=gamma, lam=lam),
                E.retrace(*action, np.abs(b["log_rhos"]), gamma=gamma, lam=lam),
                E.importance_sampling_q(*action, zeros, gamma=gamma, lam=lam),
                E.tree_backup(*action, ones, gamma=gamma, lam=lam),
                E.q_trace(*action, ones, gamma=gamma, lam=lam)):
        np.testing.assert_allclose(got, expected, **TOL)


@given(seeds, lengths, widths, done_rates, unit, st.integers(0, 5))
def test_nstep_with_n_at_least_T_is_gae_lambda_one(seed, T, B, p, gamma, extra):
    """With consistent next_values; n = 1 is GAE lam = 0's TD target for any next_values."""
    b = make_batch(seed, T, B, p)
    b["next_values"] = consistent_next_values(b, seed)
    args = (b["rewards"], b["next_values"], b["terminated"], b["truncated"])
    state = (b["rewards"], b["values"], b["next_values"], b["terminated"], b["truncated"])
    np.testing.assert_allclose(E.nstep_returns(*args, gamma=gamma, n=T + extra),
                               E.gae(*state, gamma=gamma, lam=1.0).returns, **TOL)
    np.testing.assert_allclose(E.nstep_returns(*args, gamma=gamma, n=1),
                               E.gae(*state, gamma=gamma, lam=0.0).returns, **TOL)


@given(seeds, lengths, widths, done_rates, unit, st.floats(0.1, 10.0))
def test_p3o_with_discount_weights_is_the_truncated_discounted_advantage(seed, T, B, p, gamma,
                                                                         sigma_r):
    """Theorem 11's premise: sigma^-2 = gamma^k + sigma_r^-2 gives w_k = gamma^k, and with
    normalize="none" A_t = sum_{k<m} gamma^k (r_{t+k} - mu_{t,k})."""
    b = make_batch(seed, T, B, p)
    H = b["reward_mean"].shape[-1]
    disc = gamma ** np.arange(H)
    std = np.broadcast_to((disc + sigma_r**-2.0) ** -0.5, (T, B, H))
    got = E.p3o_advantage(b["rewards"], b["reward_mean"], std, b["terminated"], b["truncated"],
                          batch_reward_std=sigma_r, normalize="none")
    done = b["terminated"] | b["truncated"]
    expected = np.zeros((T, B))
    for t in range(T):
        alive = np.ones(B, bool)
        for k in range(min(H, T - t)):
            expected[t] += alive * disc[k] * (b["rewards"][t + k] - b["reward_mean"][t, :, k])
            alive &= ~done[t + k]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
