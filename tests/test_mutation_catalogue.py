"""The bug catalogue of offpolicy.mutation: its entries are well formed, every patch applies to
the current reference, ``load`` gives each mutant as an in-memory module that changes exactly
the estimators the entry names, and the CLI's usage errors are one line with exit status 2."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from estimators import numpy as ref
from offpolicy import mutation, registry

ROOT = Path(__file__).resolve().parent.parent
T, B, H = 5, 4, 3


def _case():
    """A deterministic input that exercises every convention: column 0 truncates inside the
    segment (its bootstrap value differs from the next row, the next episode's first state),
    column 1 terminates inside (NaN read after it), column 2 has no done, column 3 truncates and
    terminates at one step and truncates at the last step. Ratios on both sides of every clip
    level; gamma, lam < 1."""
    rng = np.random.default_rng(20261201)
    term = np.zeros((T, B), bool)
    trunc = np.zeros((T, B), bool)
    trunc[1, 0] = True
    term[2, 1] = True
    term[1, 3] = trunc[1, 3] = True
    trunc[T - 1, 3] = True
    values = rng.normal(size=(T, B))
    next_values = np.vstack([values[1:], rng.normal(size=(1, B))])
    next_values[1, 0] = values[2, 0] + 3.0  # the truncated state's value is not the reset's
    next_values = np.where(term, np.nan, next_values)
    log_rhos = rng.uniform(-1.2, 1.2, size=(T, B))
    return {
        "rewards": rng.normal(size=(T, B)),
        "values": values,
        "next_values": next_values,
        "terminated": term,
        "truncated": trunc,
        "log_rhos": log_rhos,
        "q_taken": rng.normal(size=(T, B)),
        "next_expected_q": np.where(term, np.nan, rng.normal(size=(T, B))),
        "traces": rng.uniform(0.0, 1.5, size=(T, B)),
        "target_probs_taken": rng.uniform(0.05, 1.0, size=(T, B)),
        "reward_mean": rng.normal(size=(T, B, H)),
        "reward_std": rng.uniform(0.5, 1.5, size=(T, B, H)),
    }


CASE = _case()
LAM = 0.7
# a scalar discount, and per-step discounts (some bugs only show when gamma_t varies)
GAMMAS = (0.9, np.linspace(0.6, 0.95, T * B).reshape(T, B))


def _call(module, name, gamma=GAMMAS[0], x=CASE):
    """The estimator's outputs as a tuple of arrays, or the exception type it raises."""
    info = registry.lookup(name)
    given = dict(gamma=gamma, lam=LAM, rho_clip=1.3, c_clip=0.8, pg_rho_clip=1.1, n=3,
                 batch_reward_std=2.0)
    kwargs = {k: given[k] for k in info.params if k in given}
    try:
        out = getattr(module, name)(*(x[k] for k in info.inputs), **kwargs)
    except (ValueError, FloatingPointError) as exc:
        return type(exc)
    return tuple(np.asarray(a) for a in (out if isinstance(out, tuple) else (out,)))


def _same(a, b):
    if isinstance(a, type) or isinstance(b, type):
        return a is b
    return len(a) == len(b) and all(
        np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("gamma", GAMMAS, ids=["scalar_gamma", "per_step_gamma"])
def test_the_case_is_valid_for_the_reference(gamma):
    for name in mutation.ESTIMATORS:
        out = _call(ref, name, gamma)
        assert not isinstance(out, type), f"{name} raises {out.__name__} on the case"
        assert all(np.all(np.isfinite(a)) for a in out), name


def test_catalogue_entries_are_well_formed():
    cat = mutation.CATALOGUE
    assert isinstance(cat, tuple) and mutation.MUTANTS is cat
    assert len(cat) >= 25
    assert len({m.name for m in cat}) == len(cat)
    for m in cat:
        assert isinstance(m, mutation.Mutant)
        assert m.name.isidentifier(), m.name
        assert m.bug and "\n" not in m.bug, m.name
        assert m.seen_in.strip() and "\n" not in m.seen_in, m.name
        assert set(m.estimators) <= set(mutation.ESTIMATORS) and m.estimators, m.name
        assert mutation.by_name(m.name) is m


def test_by_name_unknown_lists_the_names():
    with pytest.raises(KeyError, match="retrace_c_same_step"):
        mutation.by_name("ratio_inverte")


def test_every_patch_applies_to_the_current_reference():
    source = mutation.reference_source()
    for m in mutation.CATALOGUE:
        patched = mutation.apply(source, m)  # raises StalePatch on drift
        assert patched != source, m.name
        compile(patched, m.name, "exec")


def test_load_unmutated_equals_the_reference_exactly():
    base = mutation.load(None)
    assert base is not ref
    for name in mutation.ESTIMATORS:
        for gamma in GAMMAS:
            assert _same(_call(base, name, gamma), _call(ref, name, gamma)), name


@pytest.mark.parametrize("mutant", mutation.CATALOGUE, ids=lambda m: m.name)
def test_load_changes_exactly_the_named_estimators(mutant):
    """Named estimators differ from the reference on the case (with a scalar or a per-step
    discount); the others equal it exactly on both."""
    module = mutation.load(mutant)
    for name in mutation.ESTIMATORS:
        same = [_same(_call(module, name, g), _call(ref, name, g)) for g in GAMMAS]
        if name in mutant.estimators:
            assert not all(same), f"{mutant.name}: {name} is named but unchanged on the case"
        else:
            assert all(same), f"{mutant.name}: {name} changes but is not named"


def test_load_is_cached_in_memory_and_leaves_sys_modules_alone():
    before = dict(sys.modules)
    m = mutation.CATALOGUE[0]
    first = mutation.load(m)
    assert mutation.load(m.name) is first
    assert first.__name__ == f"estimators._mutant_{m.name}"
    assert first.__package__ == "estimators"
    assert sys.modules["estimators.numpy"] is ref
    assert first.__name__ not in sys.modules
    assert {k: v for k, v in sys.modules.items() if k in before} == before


def _cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "offpolicy.mutation", *args], cwd=cwd,
                          capture_output=True, text=True, env=env)


def test_cli_unknown_name_exits_2_with_one_line_listing_the_names():
    proc = _cli("--only", "ratio_inverte")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ratio_inverte" in lines[0]
    assert all(m.name in lines[0] for m in mutation.CATALOGUE)
    assert proc.stdout == ""


def test_cli_list_shows_name_estimators_seen_in():
    proc = _cli("--list")
    assert proc.returncode == 0
    for m in mutation.CATALOGUE:
        assert m.name in proc.stdout and m.seen_in in proc.stdout
        assert ", ".join(m.estimators) in proc.stdout


def test_cli_without_a_tests_directory_exits_2(tmp_path):
    """An installed (non-editable) copy of the packages has no tests/ next to it."""
    import shutil

    site = tmp_path / "site"
    for pkg in ("offpolicy", "estimators"):
        shutil.copytree(ROOT / pkg, site / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import os

    env = dict(os.environ, PYTHONPATH=str(site))
    proc = _cli(cwd=elsewhere, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tests" in lines[0], proc.stderr


# ---------------------------------------------------------------------------------------------
# the classes added from the survey of public implementations (docs/bug-classes.md): each
# patched reference against the reference on a tiny input worked out by hand. gamma = lam = 0.5
# throughout, so the trace weight gamma * lam is 0.25.

def _gae(module, r, v, nv, term, trunc, gamma=0.5, lam=0.5):
    out = module.gae(np.array(r, float), np.array(v, float), np.array(nv, float),
                     np.array(term, bool), np.array(trunc, bool), gamma=gamma, lam=lam)
    return out.advantages, out.returns


# one step r = 1, V(s) = 2, V(s') = 4, flagged terminated and truncated at once: the contract
# does not bootstrap (A = r - V = -1); each both-flags class applies its time-out handling there
_BOTH = dict(r=[1.0], v=[2.0], nv=[4.0], term=[True], trunc=[True])


@pytest.mark.parametrize("name, advantage", [
    ("timeout_bootstrap_from_current_value_both_flags", 1 + 0.5 * 2 - 2),  # gamma V(s_t) added
    ("truncated_step_advantage_zeroed_both_flags", 0.0),
    ("bootstrap_at_terminated_and_truncated", 1 + 0.5 * 4 - 2),
    ("timeout_folded_without_gamma_both_flags", 1 + 4 - 2),
])
def test_both_flags_classes_act_on_a_terminated_and_truncated_step(name, advantage):
    ref_adv, _ = _gae(ref, **_BOTH)
    assert ref_adv.tolist() == [-1.0]
    adv, ret = _gae(mutation.load(name), **_BOTH)
    assert adv.tolist() == [advantage]
    assert ret.tolist() == [2.0 + advantage]


@pytest.mark.parametrize("name, plain", [
    ("timeout_bootstrap_from_current_value_both_flags", "timeout_bootstrap_from_current_value"),
    ("truncated_step_advantage_zeroed_both_flags", "truncated_step_advantage_zeroed"),
    ("timeout_folded_without_gamma_both_flags", "timeout_folded_without_gamma"),
])
def test_both_flags_classes_equal_their_plain_class_where_the_flags_never_coincide(name, plain):
    """Columns 0-2 of the case have no step flagged twice: there the two variants agree."""
    x = {k: v[:, :3] for k, v in CASE.items()}
    for gamma in (0.9, GAMMAS[1][:, :3]):
        assert _same(_call(mutation.load(name), "gae", gamma, x),
                     _call(mutation.load(plain), "gae", gamma, x)), name


def test_the_plain_timeout_classes_leave_a_terminated_and_truncated_step_alone():
    for plain in ("timeout_bootstrap_from_current_value", "truncated_step_advantage_zeroed"):
        adv, _ = _gae(mutation.load(plain), **_BOTH)
        assert adv.tolist() == [-1.0], plain


def test_timeout_folded_without_gamma():
    """Truncated (not terminated) step: r + V(s') - V = 1 + 4 - 2 = 3 instead of
    1 + 0.5 * 4 - 2 = 1; an unflagged segment end is still discounted (1 both ways)."""
    m = mutation.load("timeout_folded_without_gamma")
    assert _gae(ref, [1.0], [2.0], [4.0], [False], [True])[0].tolist() == [1.0]
    assert _gae(m, [1.0], [2.0], [4.0], [False], [True])[0].tolist() == [3.0]
    assert _gae(m, [1.0], [2.0], [4.0], [False], [False])[0].tolist() == [1.0]


def test_trace_not_cut_at_termination():
    """Terminated at step 0; r = [1, 1], V = 0, V(s'_1) = 2. Reference: A_1 = 1 + 0.5 * 2 = 2,
    A_0 = 1 (cut). Mutant: A_0 = 1 + 0.25 * 2 = 1.5."""
    args = ([1.0, 1.0], [0.0, 0.0], [5.0, 2.0], [True, False], [False, False])
    assert _gae(ref, *args)[0].tolist() == [1.0, 2.0]
    assert _gae(mutation.load("trace_not_cut_at_termination"), *args)[0].tolist() == [1.5, 2.0]


def test_discount_not_reset_at_dones():
    """Terminated at step 0; r = 1, V = 0, V(s'_1) = V(s'_2) = 2. Reference: A_2 = 2,
    A_1 = 2 + 0.25 * 2 = 2.5, A_0 = 1. The O(T^2) loop: the last step is never computed
    (A_2 = 0), A_1 = 2, and A_0 = 1 + 0.25 * 2 = 1.5 runs across the termination."""
    args = ([1.0] * 3, [0.0] * 3, [5.0, 2.0, 2.0], [True, False, False], [False] * 3)
    assert _gae(ref, *args)[0].tolist() == [1.0, 2.5, 2.0]
    assert _gae(mutation.load("discount_not_reset_at_dones"), *args)[0].tolist() == \
        [1.5, 2.0, 0.0]


def test_dones_ignored():
    """Terminated at step 0; r = [1, 1], V = [0, 3], V(s'_1) = 2. Reference: A_0 = 1,
    A_1 = 1 + 1 - 3 = -1. Ignoring the done: delta_0 = 1 + 0.5 * 3 = 2.5 (the next row) and
    A_0 = 2.5 + 0.25 * (-1) = 2.25; with lam = 1 the return is G_0 = 1 + 0.5 * G_1 = 2."""
    args = ([1.0, 1.0], [0.0, 3.0], [5.0, 2.0], [True, False], [False, False])
    m = mutation.load("dones_ignored")
    assert _gae(ref, *args)[0].tolist() == [1.0, -1.0]
    assert _gae(m, *args)[0].tolist() == [2.25, -1.0]
    assert _gae(m, *args, lam=1.0)[1].tolist() == [2.0, 2.0]


def test_trajectory_end_never_bootstrapped():
    """Truncated at step 0; r = 1, V = 0, V(s') = [4, 2]. Reference: A = [1 + 2, 1 + 1];
    mutant: neither the time-out nor the segment end bootstraps, A = [1, 1]."""
    args = ([1.0, 1.0], [0.0, 0.0], [4.0, 2.0], [False, False], [True, False])
    assert _gae(ref, *args)[0].tolist() == [3.0, 2.0]
    assert _gae(mutation.load("trajectory_end_never_bootstrapped"), *args)[0].tolist() == \
        [1.0, 1.0]


# no flags; r = 1, V = [0, 1], V(s') = [1, 2]: delta = [1.5, 1], A = [1.5 + 0.25, 1]
_TARGETS = ([1.0, 1.0], [0.0, 1.0], [1.0, 2.0], [False, False], [False, False])


@pytest.mark.parametrize("name, returns", [
    ("value_target_lambda_1", [1 + 0.5 * 1 + 0.25 * 2, 1 + 0.5 * 2]),  # reward-to-go
    ("value_target_one_step_td", [1 + 0.5 * 1, 1 + 0.5 * 2]),  # r + gamma V(s')
])
def test_value_target_classes_change_the_returns_only(name, returns):
    assert [a.tolist() for a in _gae(ref, *_TARGETS)] == [[1.75, 1.0], [1.75, 2.0]]
    adv, ret = _gae(mutation.load(name), *_TARGETS)
    assert adv.tolist() == [1.75, 1.0]
    assert ret.tolist() == returns


def test_the_bug_classes_page_is_generated_from_the_catalogue():
    """docs/bug-classes.md is catalogue_markdown()'s text: one row per class, its bug and
    where it is seen (regenerate the page after changing the catalogue)."""
    page = (ROOT / "docs" / "bug-classes.md").read_text()
    assert page == mutation.catalogue_markdown()
    rows = [ln for ln in page.splitlines() if ln.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == [m.name for m in mutation.CATALOGUE]
    for m, row in zip(mutation.CATALOGUE, rows, strict=True):
        assert m.bug.replace("|", "\\|") in row and m.seen_in.replace("|", "\\|") in row


def test_q_segment_end_bootstraps_from_last_state():
    """Retrace, lam = 1, every ratio 1 (c = 1), gamma = 0.5, no flags; r = 1, Q(s_t, a_t) =
    [0, 2], E_pi Q(s'_t) = [3, 4] (so E_pi Q(s_1) = 3). Reference: G_1 = 1 + 0.5 * 4 = 3,
    G_0 = 1 + 0.5 * 3 + 0.5 * (3 - 2) = 3. Bootstrapping the end from E_pi Q(s_1) = 3:
    G_1 = 2.5, G_0 = 1 + 1.5 + 0.5 * (2.5 - 2) = 2.75."""
    x = [np.array(a, float) for a in ([1, 1], [0, 2], [3, 4])]
    flags = [np.zeros(2, bool)] * 2
    m = mutation.load("q_segment_end_bootstraps_from_last_state")
    assert ref.retrace(*x, *flags, np.zeros(2), gamma=0.5, lam=1.0).tolist() == [3.0, 3.0]
    assert m.retrace(*x, *flags, np.zeros(2), gamma=0.5, lam=1.0).tolist() == [2.75, 2.5]


def test_timeout_checked_before_termination():
    """r = 1, V = 0, V(s') = [4, 2], gamma = lam = 0.5. Step 0 terminated and truncated,
    step 1 terminated at the segment end: the contract gives A = [1, 1]; checking the time
    limit / segment end first bootstraps both: A = [1 + 2, 1 + 1]."""
    args = ([1.0, 1.0], [0.0, 0.0], [4.0, 2.0], [True, True], [True, False])
    assert _gae(ref, *args)[0].tolist() == [1.0, 1.0]
    assert _gae(mutation.load("timeout_checked_before_termination"), *args)[0].tolist() == \
        [3.0, 2.0]


@pytest.mark.parametrize("name", mutation.SAME_ON_BOTH_FLAGS)
def test_timeout_classes_without_a_both_flags_variant_leave_such_a_step_alone(name):
    """Column 3 of the case with its last-step truncation cleared: its only flag is one step
    terminated and truncated at once. There every estimator of these classes equals the
    reference (and each class still changes the full case, tested above)."""
    x = {k: v[:, 3:4].copy() for k, v in CASE.items()}
    x["truncated"][T - 1] = False
    assert x["terminated"].sum() == x["truncated"].sum() == 1
    assert (x["terminated"] == x["truncated"]).all()
    module = mutation.load(name)
    for est in mutation.by_name(name).estimators:
        for gamma in (0.9, GAMMAS[1][:, 3:4]):
            assert _same(_call(module, est, gamma, x), _call(ref, est, gamma, x)), (name, est)
