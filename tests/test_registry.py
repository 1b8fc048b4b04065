"""The estimator registry (issue 12, "one name per thing"): its entries agree with the reference
functions' signatures, every name means one estimator, every consumer reads its names from it,
and the package's import graph has no cycle."""

from __future__ import annotations

import ast
import inspect
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import estimators.numpy as ref
from offpolicy import moments, mutation, registry, strategies
from offpolicy.conform import registry as conform_registry
from offpolicy.report import grid as report_grid

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_reference_function_has_one_entry_in_order():
    assert tuple(registry.ESTIMATORS) == tuple(ref.__all__)
    assert registry.names() == tuple(ref.__all__)


@pytest.mark.parametrize("name", list(registry.ESTIMATORS))
def test_entry_matches_the_reference_signature(name):
    """Inputs are the reference's positional parameters in order, params its keyword-only
    ones in order: a renamed or reordered argument fails here."""
    info = registry.ESTIMATORS[name]
    sig = inspect.signature(info.reference())
    positional = tuple(p.name for p in sig.parameters.values()
                       if p.kind is p.POSITIONAL_OR_KEYWORD)
    keyword = tuple(p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY)
    assert info.inputs == positional
    assert info.params == keyword
    assert info.kind in registry.KINDS
    assert info.takes_ratios == ("log_rhos" in positional)


def _batch(T=5, B=3, H=3, seed=7):
    rng = np.random.default_rng(seed)
    term = rng.random((T, B)) < 0.2
    return {
        "rewards": rng.normal(size=(T, B)), "values": rng.normal(size=(T, B)),
        "next_values": np.where(term, np.nan, rng.normal(size=(T, B))),
        "terminated": term, "truncated": rng.random((T, B)) < 0.2,
        "log_rhos": rng.uniform(-1, 1, size=(T, B)), "q_taken": rng.normal(size=(T, B)),
        "next_expected_q": np.where(term, np.nan, rng.normal(size=(T, B))),
        "target_probs_taken": rng.uniform(0.1, 1, size=(T, B)),
        "traces": rng.uniform(0, 1, size=(T, B)),
        "reward_mean": rng.normal(size=(T, B, H)),
        "reward_std": rng.uniform(0.5, 2, size=(T, B, H)),
    }


@pytest.mark.parametrize("name", [n for n in registry.ESTIMATORS if n != "p3o_advantage"])
def test_call_estimator_calls_the_reference_with_the_entry_inputs(name):
    """Each output, named by its contract name or by the quantity it estimates, is the
    reference's output of that name (the reference called by hand, keywords spelled out)."""
    x = _batch()
    info = registry.ESTIMATORS[name]
    kw = {"gamma": 0.9, "lam": 0.7, "rho_clip": 1.3, "c_clip": 0.8, "pg_rho_clip": 1.1, "n": 2}
    direct = info.reference()(*(x[k] for k in info.inputs),
                              **{k: v for k, v in kw.items() if k in info.params})
    params = {k: v for k, v in kw.items() if k != "gamma"}
    for out in info.outputs:
        want = direct if len(info.outputs) == 1 else getattr(direct, out)
        for label in (out, info.quantities[out]):
            got = registry.call_estimator(ref, name, x, gamma=0.9, output=label, **params)
            np.testing.assert_array_equal(got, want)


def test_names_are_unique_and_resolve():
    every = [n for e in registry.ESTIMATORS.values() for n in e.all_names]
    every += list(registry.OUTPUT_ALIASES)
    assert len(every) == len(set(every))
    assert registry.canonical("puff") == "puff_advantage"
    assert registry.canonical("nstep") == "nstep_returns"
    assert registry.canonical("pdis") == "per_decision_is"
    assert registry.resolve("td_lambda")[1] == "returns"
    assert registry.resolve("vtrace") == (registry.ESTIMATORS["vtrace"], "value_targets")
    assert registry.resolve("vtrace", "pg_advantage")[1] == "pg_advantages"
    assert registry.names("action") == ("q_trace", "retrace", "tree_backup", "q_lambda",
                                        "importance_sampling_q")
    assert registry.names(takes_ratios=True) == ("vtrace", "puff_advantage", "per_decision_is",
                                                 "retrace", "importance_sampling_q")


@pytest.mark.parametrize("call, word", [
    (lambda: registry.lookup("puf"), "^estimator"),
    (lambda: registry.lookup(3), "^estimator"),
    (lambda: registry.resolve("gae", "targets"), "^output"),
    (lambda: registry.names("value"), "^kind"),
])
def test_bad_names_raise_naming_the_argument(call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_moments_reads_the_registry():
    """Every registry name of an estimator with exact moments is accepted by exact_moments,
    with the same recursion and output as the contract name."""
    for info in registry.ESTIMATORS.values():
        if info.moments_name is None:
            assert info.name == "q_trace"
            continue
        coeffs = moments._SPECS[info.moments_name].coeffs
        assert set(info.quantities.values()) <= set(coeffs)
        for name in info.all_names:
            assert name in moments.ESTIMATORS
            assert moments._resolve(name, None) == moments._resolve(info.name, None)
    assert moments._resolve("td_lambda", None) == ("gae", "value")
    assert moments._resolve("puff", None) == ("vtrace", "advantage")
    assert moments._resolve("nstep_returns", "returns") == ("nstep", "value")
    with pytest.raises(ValueError, match="^estimator"):
        moments._resolve("q_trace", None)


def test_consumers_use_registry_names():
    assert mutation.ESTIMATORS == registry.names()
    for m in mutation.CATALOGUE:
        assert set(m.estimators) <= set(registry.ESTIMATORS)
    assert set(conform_registry.ESTIMATORS) <= set(registry.ESTIMATORS)
    for name, spec in conform_registry.ESTIMATORS.items():
        assert spec is registry.ESTIMATORS[name]
    assert conform_registry.spec_for("puff") is registry.ESTIMATORS["puff_advantage"]
    for name in report_grid.ESTIMATORS:  # the report's names are registry names
        registry.lookup(name)
    for est, out in strategies.ESTIMATOR_OUTPUTS:
        info, _ = registry.resolve(est, out)
        assert info.moments_name is not None


# ---- the passport: theorems, exact counterparts, docs page ---------------------------------


def _theorem_files() -> dict[str, pathlib.Path]:
    return {p.name[:3]: p for p in sorted((ROOT / "proofs").glob("T[0-9][0-9]_*.md"))}


def test_every_theorem_is_linked_from_an_estimator():
    """A theorem of proofs/ that no registry entry names is missing from every estimator's
    page; the index of proofs is the set of files, read independently of the registry."""
    linked = {t for e in registry.ESTIMATORS.values() for t in e.theorems}
    assert set(_theorem_files()) - linked == set()
    assert len(_theorem_files()) >= 22  # T01..T22 at least: the glob found the proofs


def test_every_passport_link_resolves():
    """Each named theorem is one proofs/ file, each exact counterpart a public function of
    offpolicy.exact or offpolicy.moments, each docs page a file, each moments recursion one of
    offpolicy.moments'."""
    import offpolicy.exact

    modules = {"exact": offpolicy.exact, "moments": moments}
    theorems = _theorem_files()
    dead = []
    for e in registry.ESTIMATORS.values():
        assert e.theorems and len(set(e.theorems)) == len(e.theorems), e.name
        dead += [f"{e.name}: {t}" for t in e.theorems if t not in theorems]
        for qualified in e.exact:
            module, _, fn = qualified.partition(".")
            if module not in modules or fn not in modules[module].__all__:
                dead.append(f"{e.name}: {qualified}")
        if not (ROOT / e.docs_page).is_file():
            dead.append(f"{e.name}: {e.docs_page}")
        if e.moments_name is not None and e.moments_name not in moments._SPECS:
            dead.append(f"{e.name}: moments {e.moments_name}")
    assert not dead, dead


def test_the_passport_names_what_the_proofs_say():
    """Spot checks against the proofs' statements: tree-backup is one of the traces of T06,
    T07 and T19; the puff advantage is V-trace's A_t (T04, T05); T12 (every backend) and T02
    (every estimator) are on every entry."""
    assert {"T06", "T07", "T19"} <= set(registry.ESTIMATORS["tree_backup"].theorems)
    assert {"T04", "T05"} <= set(registry.ESTIMATORS["puff_advantage"].theorems)
    assert all({"T02", "T12"} <= set(e.theorems) for e in registry.ESTIMATORS.values())
    assert "exact.vtrace_fixed_point" in registry.ESTIMATORS["puff_advantage"].exact


def test_one_validation_vocabulary():
    """The two validation modules (estimator arrays; tabular objects) share no public name, so
    a check's name has one meaning; the two probability checks mean what they say."""
    from estimators import _validate
    from offpolicy import _checks

    def public(module):
        return {n for n, v in vars(module).items()
                if not n.startswith("_") and callable(v) and v.__module__ == module.__name__}

    assert public(_validate) & public(_checks) == set()
    rows = np.array([[0.5, 0.5], [0.2, 0.8]])
    _checks.check_distribution(rows, "p")
    with pytest.raises(ValueError, match="^p: probabilities sum to 0.9"):
        _checks.check_distribution(np.array([0.4, 0.5]), "p")
    _validate.check_unit_entries("t", np.array([0.4, 0.5]))  # need not sum to one
    with pytest.raises(ValueError, match=r"^t: must lie in \[0, 1\]"):
        _validate.check_unit_entries("t", np.array([1.5]))


# ---- the import graph ------------------------------------------------------------------------


def _import_graph(package: pathlib.Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, from every import statement (top level or
    inside a function); ``from . import x`` counts as importing the submodule x."""
    mods = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                names = subs or [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[mod].update(n for n in names if n in mods and n != mod)
    return graph


def _cycle(graph):
    state: dict[str, int] = {}

    def visit(v, path):
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path + [w]
            if w not in state and (found := visit(w, path + [w])):
                return found
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v, [v])):
            return found
    return None


def test_the_package_import_graph_has_no_cycle():
    graph = _import_graph(ROOT / "offpolicy")
    assert "offpolicy.report.cell" in graph["offpolicy.report.montecarlo"]
    assert "offpolicy.report.compute" not in graph["offpolicy.report.montecarlo"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", ["offpolicy.report.montecarlo", "offpolicy.report.compute"])
def test_module_imports_alone_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_harness_estimator_values_are_registry_names():
    """The harness's --estimator values are registry names or aliases, except the harness's
    own decoupled PPO (not an estimator of the contract)."""
    from offpolicy.harness import grid

    for value in (*grid.ESTIMATORS["ppo"], *grid.ESTIMATORS["dqn"]):
        if value == "decoupled":
            continue
        registry.lookup(value)


def test_harness_maps_registry_names_to_its_own_values():
    from offpolicy.harness import grid

    assert grid.estimator_value("ppo", "puff_advantage") == "puff"
    assert grid.estimator_value("ppo", "per_decision_is") == "pdis"
    assert grid.estimator_value("ppo", "puff") == "puff"
    assert grid.estimator_value("ppo", "decoupled") == "decoupled"
    assert grid.estimator_value("dqn", "nstep_returns") == "nstep"
    assert grid.estimator_value("dqn", "typo") == "typo"  # the config's check names it


def test_with_defaults_fills_the_shared_defaults_and_the_entrys_own():
    # the one table of parameter defaults: lam, rho_clip, c_clip 1, pg_rho_clip = rho_clip;
    # importance sampling's trace is unclipped (c_clip = inf); a given value always wins
    assert registry.with_defaults("retrace", {}) == {
        "lam": 1.0, "rho_clip": 1.0, "c_clip": 1.0, "pg_rho_clip": 1.0}
    assert registry.with_defaults("importance_sampling_q", {})["c_clip"] == np.inf
    assert registry.with_defaults("importance_sampling_q", {"c_clip": 2.0})["c_clip"] == 2.0
    assert registry.with_defaults("vtrace", {"rho_clip": 3.0})["pg_rho_clip"] == 3.0
    assert registry.with_defaults("puff", {"lam": 0.5, "n": 4}) == {
        "lam": 0.5, "n": 4, "rho_clip": 1.0, "c_clip": 1.0, "pg_rho_clip": 1.0}
    with pytest.raises(ValueError, match="estimator"):
        registry.with_defaults("nope", {})


def test_exact_moments_take_importance_samplings_unclipped_trace_from_the_registry():
    # importance sampling for Q is Retrace's recursion with c = rho unclipped: its default
    # moments are Retrace's at c_clip = inf, and differ from Retrace's own c = min(1, rho)
    # where a ratio exceeds 1 (pi = (1, 0) against mu = (1/4, 3/4): rho = 4 on action 0)
    from offpolicy import mdp as mdp_mod

    m = mdp_mod.garnet(3, 2, 2, seed=0)
    mu = np.tile([0.25, 0.75], (3, 1))
    pi = np.tile([1.0, 0.0], (3, 1))
    kw = dict(behaviour=mu, target=pi, horizon=3, lam=1.0)
    is_q = moments.exact_moments(m, "importance_sampling_q", **kw)
    unclipped = moments.exact_moments(m, "retrace", c_clip=np.inf, **kw)
    retrace = moments.exact_moments(m, "retrace", **kw)
    np.testing.assert_array_equal(is_q.var_sa, unclipped.var_sa)
    np.testing.assert_array_equal(is_q.mean_sa, unclipped.mean_sa)
    assert np.max(np.abs(is_q.var_sa - retrace.var_sa)) > 1e-3


def test_call_outputs_returns_every_output_of_one_call_by_name():
    # V-trace on one step (T = 1, B = 1): rho = 2 clipped to 1; r = 1, V = 0.5, V' = 2,
    # gamma = 0.5: delta = 1 + 0.5 * 2 - 0.5 = 1.5, value target 0.5 + 1.5 = 2.0,
    # advantage 1.5; pg advantage rho_pg (r + gamma v_{t+1} - V) = 1 * (1 + 1 - 0.5) = 1.5
    inputs = dict(rewards=[[1.0]], values=[[0.5]], next_values=[[2.0]],
                  terminated=[[False]], truncated=[[False]], log_rhos=[[np.log(2.0)]])
    out = registry.call_outputs(ref, "vtrace", inputs, gamma=0.5)
    assert list(out) == ["advantages", "value_targets", "pg_advantages"]
    assert out["value_targets"][0, 0] == pytest.approx(2.0)
    assert out["advantages"][0, 0] == pytest.approx(1.5)
    assert out["pg_advantages"][0, 0] == pytest.approx(1.5)
    single = registry.call_outputs(ref, "puff", inputs, gamma=0.5)
    assert list(single) == ["advantages"] and single["advantages"][0, 0] == pytest.approx(1.5)


def test_the_harness_learners_take_their_estimators_from_the_registry():
    from offpolicy.harness import dqn, ppo

    # PPO: each state-value estimator with an advantage, by its short registry name, and the
    # decoupled loss; the importance-weighted ones are those reading log-ratios
    assert ppo.ESTIMATORS == ("gae", "vtrace", "puff", "pdis", "decoupled")
    assert ppo.WEIGHTED_ADVANTAGE == ("vtrace", "puff", "pdis")
    # DQN: n-step, then each Q estimator whose inputs a replayed sequence has (not q_trace)
    assert dqn.ESTIMATORS == ("nstep", "retrace", "tree_backup", "q_lambda",
                              "importance_sampling_q")
    for name in (*ppo.ESTIMATORS[:-1], *dqn.ESTIMATORS):
        assert registry.lookup(name).short_name == name
