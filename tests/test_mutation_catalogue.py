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
