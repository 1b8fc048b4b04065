"""Hand-checked cases for the numpy reference (each worked out in the comments).

Every case uses B = 1 and is run both as ``[T]`` and as ``[T, 1]``.
"""

import math

import numpy as np
import pytest

import estimators.numpy as E
from estimators import layout as L

F, T_ = False, True


def both_layouts(fn, *arrays, **kw):
    """Run fn on [T] arrays and on [T,1] arrays; check they agree and return the [T] result."""
    flat = fn(*arrays, **kw)
    col = fn(*[np.asarray(a)[:, None] for a in arrays], **kw)
    flat_parts = flat if isinstance(flat, tuple) else (flat,)
    col_parts = col if isinstance(col, tuple) else (col,)
    for a, b in zip(flat_parts, col_parts, strict=True):
        assert b.shape == a.shape + (1,)
        np.testing.assert_array_equal(a, b[:, 0])
    return flat


# --- GAE ------------------------------------------------------------------------------------
# Lecture example: r = [1,1,1], V = [0.5,0.4,0.3], gamma = 0.9, terminated after the last step.
# delta = [1 + .9*.4 - .5, 1 + .9*.3 - .4, 1 - .3] = [0.86, 0.87, 0.70].
# lam = 0.5: A_2 = 0.70, A_1 = 0.87 + .45*.70 = 1.185, A_0 = 0.86 + .45*1.185 = 1.39325.
# lam = 1:   A_1 = 0.87 + .9*.70 = 1.50, A_0 = 0.86 + .9*1.50 = 2.21.
LECTURE = dict(rewards=[1.0, 1.0, 1.0], values=[0.5, 0.4, 0.3], next_values=[0.4, 0.3, 0.0],
               terminated=[F, F, T_], truncated=[F, F, F])


@pytest.mark.parametrize("lam, expected", [
    (0.0, [0.86, 0.87, 0.70]),
    (0.5, [1.39325, 1.185, 0.70]),
    (1.0, [2.21, 1.50, 0.70]),
])
def test_gae_lecture_example(lam, expected):
    args = [LECTURE[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")]
    adv, ret = both_layouts(E.gae, *args, gamma=0.9, lam=lam)
    np.testing.assert_allclose(adv, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret, np.add(expected, LECTURE["values"]), rtol=1e-12)
    assert adv.dtype == np.float64


def test_gae_lecture_example_ignores_next_value_after_termination():
    args = [LECTURE[k] for k in ("rewards", "values", "next_values", "terminated", "truncated")]
    args[2] = [0.4, 0.3, math.nan]
    adv, _ = E.gae(*args, gamma=0.9, lam=1.0)
    np.testing.assert_allclose(adv, [2.21, 1.50, 0.70], rtol=1e-12)


def test_gae_truncation_bootstraps_and_cuts():
    # r = 1, V = 0, V(s') = [2, 5, 7], truncated after step 1, gamma = 0.5, lam = 1.
    # A_2 = 1 + .5*7 = 4.5; A_1 = 1 + .5*5 = 3.5 (bootstrap, trace cut); A_0 = 1 + .5*2 + .5*3.5.
    adv, _ = both_layouts(E.gae, [1.0, 1, 1], [0.0, 0, 0], [2.0, 5, 7], [F, F, F], [F, T_, F],
                          gamma=0.5, lam=1.0)
    np.testing.assert_allclose(adv, [3.75, 3.5, 4.5], rtol=1e-12)


# --- V-trace --------------------------------------------------------------------------------
# r = [1, 2], V = [0.5, 1], V(s') = [1, 3], no done, gamma = 0.5, rho = [2, 0.5].
VT = ([1.0, 2.0], [0.5, 1.0], [1.0, 3.0], [F, F], [F, F], [math.log(2.0), math.log(0.5)])


def test_vtrace_clipped_lambda_one():
    # rho_hat = c = [1, .5]. A_1 = .5*(2 + .5*3 - 1) = 1.25; A_0 = 1*(1 + .5*1 - .5) + .5*1*1.25
    # = 1.625; v = [2.125, 2.25]. q_0 = 1 + .5*v_1 = 2.125, pg_0 = 1*(2.125 - .5) = 1.625;
    # q_1 = 2 + .5*3 = 3.5, pg_1 = .5*(3.5 - 1) = 1.25.
    out = both_layouts(E.vtrace, *VT, gamma=0.5)
    np.testing.assert_allclose(out.advantages, [1.625, 1.25], rtol=1e-12)
    np.testing.assert_allclose(out.value_targets, [2.125, 2.25], rtol=1e-12)
    np.testing.assert_allclose(out.pg_advantages, [1.625, 1.25], rtol=1e-12)
    np.testing.assert_allclose(E.puff_advantage(*VT, gamma=0.5), [1.625, 1.25], rtol=1e-12)


def test_vtrace_lambda_half_pg_mixes_target_and_value():
    # A_1 = 1.25; A_0 = 1 + .5*.5*1*1.25 = 1.3125; v = [1.8125, 2.25];
    # q_0 = 1 + .5*(.5*2.25 + .5*1) = 1.8125, pg_0 = 1.3125; pg_1 = 1.25 as before.
    out = both_layouts(E.vtrace, *VT, gamma=0.5, lam=0.5)
    np.testing.assert_allclose(out.advantages, [1.3125, 1.25], rtol=1e-12)
    np.testing.assert_allclose(out.value_targets, [1.8125, 2.25], rtol=1e-12)
    np.testing.assert_allclose(out.pg_advantages, [1.3125, 1.25], rtol=1e-12)


def test_vtrace_trace_uses_c_of_the_same_step():
    # rho_clip = inf, c_clip = 1: rho_hat = [2, .5], c = [1, .5].
    # A_1 = 1.25; A_0 = 2*(1 + .5 - .5) + .5*c_0*1.25 = 2 + .625 = 2.625 (c_1 would give 2.3125).
    # pg_rho_clip = 3: pg_0 = 2*(1 + .5*v_1 - .5) with v_1 = 2.25: 2*1.625 = 3.25.
    out = E.vtrace(*VT, gamma=0.5, rho_clip=math.inf, c_clip=1.0, pg_rho_clip=3.0)
    np.testing.assert_allclose(out.advantages, [2.625, 1.25], rtol=1e-12)
    np.testing.assert_allclose(out.pg_advantages, [3.25, 0.5 * 2.5], rtol=1e-12)


def test_per_decision_is_hand_case():
    # rho = [2, .5] unclipped, lam = 1: A_1 = .5*2.5 = 1.25; A_0 = 2*1 + .5*2*1.25 = 3.25.
    adv, vt = both_layouts(E.per_decision_is, *VT, gamma=0.5, lam=1.0)
    np.testing.assert_allclose(adv, [3.25, 1.25], rtol=1e-12)
    np.testing.assert_allclose(vt, [3.75, 2.25], rtol=1e-12)


# --- Q-traces -------------------------------------------------------------------------------
# r = [1, 2], Q(s_t,a_t) = [.5, 1], E_pi Q(s'_t) = [.8, 3], no done, gamma = 0.5.
# G_1 = 2 + .5*3 = 3.5; G_0 = 1 + .5*.8 + .5*lam*c_1*(G_1 - Q_1) = 1.4 + .5*lam*c_1*2.5.
QT = ([1.0, 2.0], [0.5, 1.0], [0.8, 3.0], [F, F], [F, F])


def test_retrace_hand_case_uses_next_step_trace():
    # rho = [.5, .25] -> c = [.5, .25]; G_0 = 1.4 + .5*.25*2.5 = 1.7125 (c_0 would give 2.025).
    g = both_layouts(E.retrace, *QT, [math.log(0.5), math.log(0.25)], gamma=0.5, lam=1.0)
    np.testing.assert_allclose(g, [1.7125, 3.5], rtol=1e-12)


def test_retrace_clips_and_is_does_not():
    # rho = [.5, 2]: retrace c_1 = 1 -> 1.4 + 1.25 = 2.65; IS c_1 = 2 -> 1.4 + 2.5 = 3.9.
    lr = [math.log(0.5), math.log(2.0)]
    np.testing.assert_allclose(E.retrace(*QT, lr, gamma=0.5, lam=1.0), [2.65, 3.5], rtol=1e-12)
    np.testing.assert_allclose(E.importance_sampling_q(*QT, lr, gamma=0.5, lam=1.0), [3.9, 3.5],
                               rtol=1e-12)


def test_tree_backup_and_q_lambda_hand_cases():
    # TB, pi(a_t|s_t) = [.9, .2]: G_0 = 1.4 + .5*.2*2.5 = 1.65.
    # Q(lambda), lam = .5: G_0 = 1.4 + .5*.5*1*2.5 = 2.025.
    tb = both_layouts(E.tree_backup, *QT, [0.9, 0.2], gamma=0.5, lam=1.0)
    np.testing.assert_allclose(tb, [1.65, 3.5], rtol=1e-12)
    np.testing.assert_allclose(E.q_lambda(*QT, gamma=0.5, lam=0.5), [2.025, 3.5], rtol=1e-12)
    np.testing.assert_allclose(E.q_trace(*QT, [7.0, 0.4], gamma=0.5, lam=1.0), [1.9, 3.5],
                               rtol=1e-12)


def test_q_trace_terminated_and_truncated():
    # terminated at 1 (E Q = NaN there, never read): G_1 = 2; G_0 = 1.4 + .5*1*(2 - 1) = 1.9.
    g = E.q_lambda([1.0, 2.0], [0.5, 1.0], [0.8, math.nan], [F, T_], [F, F], gamma=0.5, lam=1.0)
    np.testing.assert_allclose(g, [1.9, 2.0], rtol=1e-12)
    # truncated at 0: no correction, G_0 = 1.4.
    g = E.q_lambda(*QT[:3], [F, F], [T_, F], gamma=0.5, lam=1.0)
    np.testing.assert_allclose(g, [1.4, 3.5], rtol=1e-12)


# --- n-step ---------------------------------------------------------------------------------
# r = [1,2,3,4], V(s') = [10,20,30,40], gamma = .5, n = 2, done after step 1.
NS = ([1.0, 2, 3, 4], [10.0, 20, 30, 40])


def test_nstep_hand_case_terminated():
    # t=0: m = 2, 1 + .5*2 + .25*0 = 2; t=1: m = 1, 2 + 0 = 2;
    # t=2: m = 2, 3 + .5*4 + .25*40 = 15; t=3: m = 1 (segment end), 4 + .5*40 = 24.
    g = both_layouts(E.nstep_returns, *NS, [F, T_, F, F], [F, F, F, F], gamma=0.5, n=2)
    np.testing.assert_allclose(g, [2.0, 2.0, 15.0, 24.0], rtol=1e-12)


def test_nstep_hand_case_truncated():
    # truncated after 1: t=0: 1 + 1 + .25*20 = 7; t=1: 2 + .5*20 = 12.
    g = E.nstep_returns(*NS, [F, F, F, F], [F, T_, F, F], gamma=0.5, n=2)
    np.testing.assert_allclose(g, [7.0, 12.0, 15.0, 24.0], rtol=1e-12)
    # n = 1 is the one-step TD target r_t + gamma V(s'_t).
    g = E.nstep_returns(*NS, [F, F, F, F], [F, T_, F, F], gamma=0.5, n=1)
    np.testing.assert_allclose(g, [6.0, 12.0, 18.0, 24.0], rtol=1e-12)


# --- P3O ------------------------------------------------------------------------------------
# r = [1,2,3], H = 2, mu = [[.5,1],[1,1],[2,0]], sigma = [[1,2],[.5,1],[1,1]], sigma_r = 2:
# sigma^-2 = [[1,.25],[4,1],[1,1]], w = max(0, sigma^-2 - .25) = [[.75,0],[3.75,.75],[.75,.75]].
P3 = ([1.0, 2.0, 3.0], [[0.5, 1.0], [1.0, 1.0], [2.0, 0.0]], [[1.0, 2.0], [0.5, 1.0], [1.0, 1.0]])


@pytest.mark.parametrize("normalize, expected", [
    # none: t0 = .75*.5 + 0 = .375; t1 = 3.75*1 + .75*2 = 5.25; t2 (m = 1) = .75*1 = .75.
    ("none", [0.375, 5.25, 0.75]),
    # max: w/max = [[1,0],[1,.2],[1,1]]: t0 = .5, t1 = 1 + .4 = 1.4, t2 = 1.
    ("max", [0.5, 1.4, 1.0]),
    # sum: w/sum = [[1,0],[5/6,1/6],[.5,.5]]: t0 = .5, t1 = 5/6 + 2/6 = 7/6, t2 = .5.
    ("sum", [0.5, 7 / 6, 0.5]),
])
def test_p3o_hand_case(normalize, expected):
    a = E.p3o_advantage(*P3, [F, F, F], [F, F, F], batch_reward_std=2.0, normalize=normalize)
    np.testing.assert_allclose(a, expected, rtol=1e-12)
    col = E.p3o_advantage(*[np.asarray(x)[:, None] for x in P3], [[F]] * 3, [[F]] * 3,
                          batch_reward_std=2.0, normalize=normalize)
    np.testing.assert_allclose(col[:, 0], expected, rtol=1e-12)


def test_p3o_window_stops_at_done_and_all_zero_weights_give_zero():
    # done after step 1: t1's window is m = 1: none -> 3.75; t0 still covers steps 0 and 1.
    a = E.p3o_advantage(*P3, [F, T_, F], [F, F, F], batch_reward_std=2.0, normalize="none")
    np.testing.assert_allclose(a, [0.375, 3.75, 0.75], rtol=1e-12)
    # sigma = 3 > sigma_r: every weight is max(0, 1/9 - 1/4) = 0 -> A = 0, no division by zero.
    for normalize in ("max", "sum", "none"):
        a = E.p3o_advantage(P3[0], P3[1], np.full((3, 2), 3.0), [F] * 3, [F] * 3,
                            batch_reward_std=2.0, normalize=normalize)
        np.testing.assert_array_equal(a, [0.0, 0.0, 0.0])


# --- layout ---------------------------------------------------------------------------------


def test_next_values_from_values_gives_the_textbook_gae():
    # Textbook GAE over values[0..T] (V(s_T) the bootstrap), one stream, no truncation:
    # delta_t = r_t + gamma V_{t+1} (1 - d_t) - V_t, A_t = delta_t + gamma lam (1 - d_t) A_{t+1}.
    rng = np.random.default_rng(3)
    T, gamma, lam = 9, 0.9, 0.8
    v_ext, r = rng.normal(size=T + 1), rng.normal(size=T)
    d = rng.random(T) < 0.3
    expected, a = np.zeros(T), 0.0
    for t in reversed(range(T)):
        a = r[t] + gamma * v_ext[t + 1] * (1 - d[t]) - v_ext[t] + gamma * lam * (1 - d[t]) * a
        expected[t] = a
    nv = L.next_values_from_values(v_ext[:-1], v_ext[-1])
    adv, _ = E.gae(r, v_ext[:-1], nv, d, np.zeros(T, bool), gamma=gamma, lam=lam)
    np.testing.assert_allclose(adv, expected, rtol=1e-12, atol=1e-12)


def test_next_values_from_values_truncation_values():
    v = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    trunc = np.array([[F, T_], [F, F], [T_, T_]])
    nv = L.next_values_from_values(v, [7.0, 8.0], truncated=trunc, truncation_values=-v)
    # inside truncation at (0, 1) takes -2; the last row's truncation keeps the bootstrap.
    np.testing.assert_array_equal(nv, [[3.0, -2.0], [5.0, 6.0], [7.0, 8.0]])
    with pytest.raises(ValueError, match="truncation_values"):
        L.next_values_from_values(v, [7.0, 8.0], truncated=trunc)


def pufferlib_row_loop(values, rewards, dones, importance, gamma, lam, rho_clip, c_clip):
    """A transcription of PufferLib's puff_advantage_row loop (rows [S, H], reward/done at j+1)."""
    S, H = values.shape
    adv = np.zeros((S, H))
    for s in range(S):
        last = 0.0
        for t in range(H - 2, -1, -1):
            nonterminal = 1.0 - dones[s, t + 1]
            rho_t = min(importance[s, t], rho_clip)
            c_t = min(importance[s, t], c_clip)
            delta = rho_t * (rewards[s, t + 1] + gamma * values[s, t + 1] * nonterminal
                             - values[s, t])
            last = delta + gamma * lam * c_t * last * nonterminal
            adv[s, t] = last
    return adv


@pytest.mark.parametrize("rho_clip, c_clip, lam", [(1.0, 1.0, 1.0), (1.5, 0.7, 0.9),
                                                   (math.inf, math.inf, 0.95)])
def test_from_pufferlib_matches_pufferlib_row_loop(rho_clip, c_clip, lam):
    rng = np.random.default_rng(7)
    S, H = 4, 6
    values, rewards = rng.normal(size=(S, H)), rng.normal(size=(S, H))
    dones = (rng.random((S, H)) < 0.25).astype(np.float32)
    importance = rng.uniform(0.2, 2.0, size=(S, H))
    expected = pufferlib_row_loop(values, rewards, dones, importance, 0.97, lam, rho_clip, c_clip)
    d = L.from_pufferlib(values, rewards, dones, importance)
    got = L.to_pufferlib(E.puff_advantage(**d, gamma=0.97, lam=lam, rho_clip=rho_clip,
                                          c_clip=c_clip))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_from_pufferlib_truncations_bootstrap_from_the_final_observation():
    # One row, H = 3: o_0 -a_0-> (r=1, truncated, stored o_1 = reset state) -a_1-> (r=2, o_2).
    values = np.array([[0.5, 100.0, 0.25]])
    d = L.from_pufferlib(values, [[9.0, 1.0, 2.0]], [[1, 1, 0]], truncations=[[0, 1, 0]],
                         truncation_values=[[0.0, 4.0, 0.0]])
    np.testing.assert_array_equal(d["next_values"], [[4.0], [0.25]])
    np.testing.assert_array_equal(d["truncated"], [[T_], [F]])
    np.testing.assert_array_equal(d["terminated"], [[F], [F]])
    np.testing.assert_array_equal(d["rewards"], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="truncation_values"):
        L.from_pufferlib(values, [[9.0, 1.0, 2.0]], [[1, 1, 0]], truncations=[[0, 1, 0]])
