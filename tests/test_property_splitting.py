"""Theorem 2 (proofs/T02_splitting.md): done boundaries split a batch into independent episodes.

Batches come with consistent and inconsistent next values alike (the theorem reads only
``next_values[t]``); each (estimator, output) is its own parametrisation, so each gets the
whole example budget (one draw of ``estimator_configs()`` per example would give the rarely
drawn ones a couple of examples)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from estimators import numpy as ref
from offpolicy import registry, strategies

pytestmark = pytest.mark.property


def _run(batch, est, out, params):
    y = registry.call_estimator(ref, est, batch, gamma=batch["gamma"], output=out, **params)
    return np.asarray(y).reshape(batch["rewards"].shape)


def _pieces(term_col, trunc_col):
    """[start, end) of each episode piece of one column."""
    done = np.flatnonzero(term_col | trunc_col)
    ends = [int(e) + 1 for e in done if e + 1 < len(term_col)] + [len(term_col)]
    starts = [0] + ends[:-1]
    return list(zip(starts, ends, strict=True))


def _slice(batch, b, start, end):
    piece = {k: (v[start:end, b:b + 1] if isinstance(v, np.ndarray) else v)
             for k, v in batch.items()}
    piece["truncated"] = piece["truncated"].copy()
    piece["truncated"][-1] = False  # a truncation at the piece's end is its segment end
    return piece


CONFIGS = [pytest.param(est, out, id=f"{est}-{out}") for est, out in strategies.ESTIMATOR_OUTPUTS]


def configs(est, out):
    return strategies.estimator_configs(estimators=(est,), outputs=(out,))


@pytest.mark.parametrize("est,out", CONFIGS)
@given(batch=strategies.trajectory_batches(), data=st.data())
def test_T02_batch_equals_episodes_computed_apart(est, out, batch, data):
    _, _, params = data.draw(configs(est, out))
    whole = _run(batch, est, out, params)
    assert np.all(np.isfinite(whole))
    B = batch["rewards"].shape[1]
    for b in range(B):
        for start, end in _pieces(batch["terminated"][:, b], batch["truncated"][:, b]):
            apart = _run(_slice(batch, b, start, end), est, out, params)[:, 0]
            np.testing.assert_allclose(whole[start:end, b], apart, rtol=1e-9, atol=1e-9,
                                       err_msg=f"{est}/{out} column {b} piece {start}:{end}")


@pytest.mark.parametrize("est,out", CONFIGS)
@given(batch=strategies.trajectory_batches(), data=st.data(),
       garbage=st.sampled_from([np.nan, np.inf, -1e6, 0.0, 7.0]))
def test_T02_next_values_under_terminated_never_read(est, out, batch, data, garbage):
    _, _, params = data.draw(configs(est, out))
    clean = _run(batch, est, out, params)
    dirty = dict(batch)
    term = batch["terminated"]
    dirty["next_values"] = np.where(term, garbage, batch["next_values"])
    dirty["next_expected_q"] = np.where(term, garbage, batch["next_expected_q"])
    np.testing.assert_array_equal(_run(dirty, est, out, params), clean)


@pytest.mark.parametrize("est,out", CONFIGS)
@given(batch=strategies.trajectory_batches(), data=st.data())
def test_T02_truncation_at_segment_end_changes_nothing(est, out, batch, data):
    """The segment end cuts and bootstraps: a truncation flag at t = T-1 is a no-op."""
    _, _, params = data.draw(configs(est, out))
    a = dict(batch, truncated=batch["truncated"].copy())
    b = dict(batch, truncated=batch["truncated"].copy())
    a["truncated"][-1] = True
    b["truncated"][-1] = False
    np.testing.assert_array_equal(_run(a, est, out, params), _run(b, est, out, params))
