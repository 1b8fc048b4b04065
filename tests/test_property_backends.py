"""Theorem 12 (proofs/T12_backends_agree.md): every backend agrees with the numpy reference
on arbitrary batches (done patterns, -inf log-ratios, NaN under terminated), every estimator."""

import importlib

import numpy as np
import pytest
from hypothesis import given, settings

from estimators import numpy as ref
from offpolicy import registry, strategies

pytestmark = pytest.mark.property


def _backend(name):
    try:
        return importlib.import_module(f"estimators.{name}")
    except Exception as exc:  # noqa: BLE001 - an optional backend that cannot load is skipped
        pytest.skip(f"estimators.{name} unavailable: {exc}")


def _compare(backend, convert, batch, config):
    est, out, params = config
    want = registry.call_estimator(ref, est, batch, gamma=batch["gamma"], output=out, **params)
    x = {k: (convert(v) if isinstance(v, np.ndarray) and k != "states" else v)
         for k, v in batch.items()}
    got = registry.call_estimator(backend, est, x, gamma=batch["gamma"], output=out, **params)
    got = got.detach().cpu().numpy() if hasattr(got, "detach") else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=f"{est}/{out}")


@given(strategies.trajectory_batches(), strategies.estimator_configs())
def test_T12_torch_agrees_with_numpy(batch, config):
    torch = pytest.importorskip("torch")
    backend = _backend("torch")
    _compare(backend, lambda v: torch.as_tensor(v), batch, config)


@settings(max_examples=10)
@given(strategies.trajectory_batches(), strategies.estimator_configs())
def test_T12_taichi_agrees_with_numpy(batch, config):
    backend = _backend("taichi")
    _compare(backend, lambda v: v, batch, config)
