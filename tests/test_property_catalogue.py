"""Property tests that close blind spots the bug catalogue (offpolicy.mutation) found.

Each test states a general theorem of docs/DESIGN.md (named ``test_Tnn_...`` after its
proofs/ file), not a particular bug; a mutant of the catalogue that the rest of the property
suite let through is what showed the statement was unchecked.

- per-step discounts and trace parameters (``gamma``, ``lam`` as ``[T,B]`` arrays): GAE is the
  sum of TD errors discounted by the products of ``gamma_t lam_t``, and with ``lam = 1`` the
  return to the cut equals the n-step return over the whole segment with the same discounts
  (theorem 1 with ``gamma_t``, ``lam_t`` in every formula, docs/DESIGN.md section 1).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators import numpy as ref
from offpolicy import strategies

pytestmark = pytest.mark.property


def close(a, b, tol=1e-9):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def cut_windows(term, trunc):
    """m_t: steps from t to the cut (first done at or after t, or the segment end), [T,B]."""
    T = term.shape[0]
    done = term | trunc
    m = np.zeros(term.shape, int)
    m[T - 1] = 1
    for t in range(T - 2, -1, -1):
        m[t] = np.where(done[t], 1, 1 + m[t + 1])
    return m


@st.composite
def per_step(draw, shape):
    """A [T,B] array in [0, 1] with the landmarks 0 and 1 likely (or, sometimes, a scalar)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "landmarks", "scalar"]))
    if kind == "scalar":
        return draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    if kind == "landmarks":
        return rng.choice([0.0, 0.5, 0.9, 1.0], size=shape)
    return rng.uniform(0.0, 1.0, size=shape)


def _as_array(x, shape):
    return np.broadcast_to(np.asarray(x, float), shape)


@given(strategies.trajectory_batches(), st.data())
def test_T01_gae_with_per_step_gamma_lam_is_discounted_sum_of_td_errors(x, data):
    """A_t = sum_{k<m_t} (prod_{j<k} gamma_{t+j} lam_{t+j}) delta_{t+k},
    delta_t = r_t + gamma_t beta_t V(s'_t) - V(s_t)."""
    shape = x["rewards"].shape
    gamma = data.draw(per_step(shape), label="gamma")
    lam = data.draw(per_step(shape), label="lam")
    adv = ref.gae(x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"],
                  gamma=gamma, lam=lam).advantages
    g, lm = _as_array(gamma, shape), _as_array(lam, shape)
    boot = np.where(x["terminated"], 0.0, x["next_values"])
    delta = x["rewards"] + g * boot - x["values"]
    m = cut_windows(x["terminated"], x["truncated"])
    T, B = shape
    for t in range(T):
        for b in range(B):
            weight, want = 1.0, 0.0
            for k in range(m[t, b]):
                want += weight * delta[t + k, b]
                weight *= g[t + k, b] * lm[t + k, b]
            close(adv[t, b], want)


@given(strategies.trajectory_batches(), st.data())
def test_T01_gae_lambda1_with_per_step_gamma_is_the_return_to_the_cut(x, data):
    """With lam = 1 and consistent next values (V(s'_t) = V(s_{t+1}) inside an episode),
    V(s_t) + A_t is the n-step return to the cut (n = T) with the same per-step discounts:
    sum_k D_{t,k} r_{t+k} + D_{t,m} beta V(s'), D_{t,k} = prod gamma."""
    shape = x["rewards"].shape
    gamma = data.draw(per_step(shape), label="gamma")
    args = (x["terminated"], x["truncated"])
    x = dict(x, next_values=x["next_values"].copy())
    follows = ~(x["terminated"] | x["truncated"])[:-1]
    x["next_values"][:-1] = np.where(follows, x["values"][1:], x["next_values"][:-1])
    ret = ref.gae(x["rewards"], x["values"], x["next_values"], *args, gamma=gamma,
                  lam=1.0).returns
    nstep = ref.nstep_returns(x["rewards"], x["next_values"], *args, gamma=gamma, n=shape[0])
    close(ret, nstep)
    g = _as_array(gamma, shape)
    m = cut_windows(*args)
    for t in range(shape[0]):
        for b in range(shape[1]):
            discount, want = 1.0, 0.0
            for k in range(m[t, b]):
                want += discount * x["rewards"][t + k, b]
                discount *= g[t + k, b]
            last = t + m[t, b] - 1
            if not x["terminated"][last, b]:
                want += discount * x["next_values"][last, b]
            close(nstep[t, b], want)
