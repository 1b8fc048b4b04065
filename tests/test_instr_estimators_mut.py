"""Mutation-guided tests of the estimators group (issue 20, group ``estimators`` of
.ci/mutation_score): the layout helper's dtype contract, the numpy reference given torch
per-step parameters, and the torch scan form chosen for very large arrays on a GPU.

Expected values are worked out by hand in the comments (the recurrences of docs/DESIGN.md
section 2) or stated by the docstrings (``next_values_from_values``: "the result has values'
shape and dtype").
"""

import numpy as np
import pytest
import torch

import estimators.numpy as ref
import estimators.torch as E
from estimators.layout import next_values_from_values


@pytest.mark.parametrize("boot", [0.5, np.float64(0.5), np.array([0.5, 0.5]), [0.5, 0.5]])
def test_next_values_keeps_float32_values_float32_numpy(boot):
    values = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    out = next_values_from_values(values, boot)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[3.0, 4.0], [0.5, 0.5]], np.float32))


@pytest.mark.parametrize("boot", [torch.tensor(0.5, dtype=torch.float64),
                                  torch.tensor([0.5, 0.5], dtype=torch.float64), 0.5])
def test_next_values_keeps_float32_values_float32_torch(boot):
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32)
    out = next_values_from_values(values, boot)
    assert out.dtype == torch.float32
    assert out.tolist() == [[3.0, 4.0], [0.5, 0.5]]


def test_next_values_truncation_values_take_the_values_dtype():
    """An inside truncation at t = 0 reads truncation_values[0] (float64 given) into float32."""
    values = np.array([1.0, 2.0, 3.0], np.float32)
    out = next_values_from_values(values, 9.0, truncated=[True, False, False],
                                  truncation_values=np.array([7.0, 0.0, 0.0]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([7.0, 3.0, 9.0], np.float32))


def test_numpy_reference_takes_torch_per_step_gamma_and_lam():
    """GAE, T = 2, rewards 1, V = 0, next V = 0, gamma_t = (0.5, 0.9), lam_t = (1, 0.3):
    A_1 = delta_1 = 1; A_0 = delta_0 + gamma_0 lam_0 A_1 = 1 + 0.5 = 1.5. Torch arrays give the
    same float64 numpy result as numpy arrays."""
    z = np.zeros(2)
    args = (np.ones(2), z, z, np.zeros(2, bool), np.zeros(2, bool))
    out = ref.gae(*args, gamma=torch.tensor([0.5, 0.9]), lam=torch.tensor([1.0, 0.3]))
    assert isinstance(out.advantages, np.ndarray) and out.advantages.dtype == np.float64
    np.testing.assert_allclose(out.advantages, [1.5, 1.0], rtol=0, atol=1e-7)
    # torch float32 0.9 and 0.3 are not exactly 0.9 and 0.3, but 0.5 and 1.0 are: A_0 exact
    assert out.advantages[0] == 1.5


def test_numpy_reference_per_step_lam_follows_the_rewards_shape():
    """Per-step lam [T, B] = [[1, 0], [1, 1]], gamma 1, rewards 1, V = 0: column 0 sums both
    rewards (A_0 = 2), column 1 stops after one (lam_0 = 0: A_0 = 1)."""
    r = np.ones((2, 2))
    z = np.zeros((2, 2))
    f = np.zeros((2, 2), bool)
    out = ref.gae(r, z, z, f, f, gamma=1.0, lam=np.array([[1.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_array_equal(out.advantages, [[2.0, 1.0], [1.0, 1.0]])


def test_gpu_scan_form_is_chunked_for_very_large_arrays():
    """On a GPU: doubling, or chunked for very large arrays (doubling's autograd keeps log2 T
    arrays of [T, B]). [16384, 4096] is 2^26 entries: 14 doubling copies of a 256 MiB float32
    array; a long narrow [2^20, 64] likewise. A moderate [4096, 128] stays doubling."""
    assert E._scan_form(1 << 14, 1 << 12, "cuda") == "chunked"
    assert E._scan_form(1 << 20, 64, "cuda") == "chunked"
    assert E._scan_form(1 << 12, 1 << 14, "cuda") == "chunked"
    assert E._scan_form(4096, 128, "cuda") == "doubling"


# ---- seed-21 sample ------------------------------------------------------------------------------


def test_to_pufferlib_names_a_bad_shape():
    from estimators.layout import to_pufferlib

    with pytest.raises(ValueError, match=r"^x: expected shape \[T, B\], got \(3,\)$"):
        to_pufferlib(np.zeros(3))
    # [T=2, B=1] -> one row of T+1 = 3 columns, the last 0
    np.testing.assert_array_equal(to_pufferlib(np.array([[1.0], [2.0]])), [[1.0, 2.0, 0.0]])


def _q_args(**bad):
    z = np.zeros(2)
    args = dict(rewards=z, q_taken=z, next_expected_q=z, terminated=np.zeros(2, bool),
                truncated=np.zeros(2, bool))
    return {**args, **bad}


@pytest.mark.parametrize("fn,extra", [
    ("q_trace", {"traces": np.ones(2)}), ("retrace", {"log_rhos": np.zeros(2)}),
    ("tree_backup", {"target_probs_taken": np.ones(2)}), ("q_lambda", {}),
    ("importance_sampling_q", {"log_rhos": np.zeros(2)})])
@pytest.mark.parametrize("bad", ["rewards", "q_taken", "next_expected_q"])
def test_torch_q_traces_name_a_non_numeric_input(fn, extra, bad):
    """A list of strings where an array belongs: TypeError naming that input (not another)."""
    args = _q_args(**{bad: ["a", "b"]})
    with pytest.raises(TypeError, match=f"^{bad}: "):
        getattr(E, fn)(*args.values(), *extra.values(), gamma=0.9, lam=1.0)


def test_usable_cpus_without_sched_getaffinity_counts_the_cpus(monkeypatch):
    """Off Linux (no os.sched_getaffinity): os.cpu_count(), at least 1 (None counts as 1)."""
    import os

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(E, "_CPUS", [])
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert E._usable_cpus() == 6
    monkeypatch.setattr(E, "_CPUS", [])
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert E._usable_cpus() == 1
