"""The instruments under the property suite: registry defaults, strategy options, CLI helpers
and the mutation CLI's exit status, each pinned by what it must do (issue 20).

Every expected figure here is read from an independent source: the reference function's own
signature default, ``moments.exact_moments``' recorded parameters, the arithmetic of the
strategy's documented option, or the exit-code table of docs/DESIGN.md / offpolicy._cli.
"""

import argparse
import inspect
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

import estimators.numpy as reference
from offpolicy import _cli, exact, mdp, moments, mutation, registry, strategies


def draws(strategy, n=60):
    out = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out


# ---- registry.call_estimator's defaults -------------------------------------------------------


class Recorder:
    """A backend whose every contract function records the keyword arguments it is given."""

    def __init__(self):
        self.kwargs = {}

    def __getattr__(self, name):
        def fn(*args, **kwargs):
            self.kwargs = kwargs
            return (np.zeros(1),) * 3
        return fn


def _inputs():
    z = np.zeros((2, 1))
    return {k: z for k in ("rewards", "values", "next_values", "log_rhos", "q_taken",
                           "next_expected_q", "traces", "target_probs_taken")} | {
        "terminated": np.zeros((2, 1), bool), "truncated": np.zeros((2, 1), bool)}


STATE_AND_ACTION = [e.name for e in registry.ESTIMATORS.values() if e.kind != "reward"]


@pytest.mark.parametrize("name", STATE_AND_ACTION)
def test_call_estimator_defaults_are_the_reference_signature_defaults(name):
    """Every parameter call_estimator fills in by itself equals the reference function's own
    default where the contract gives one (V-trace, puff: lam = rho_clip = c_clip =
    pg_rho_clip = 1), and the documented 1 where it gives none (lam of GAE, PDIS, Q-traces)."""
    rec = Recorder()
    registry.call_estimator(rec, name, _inputs(), gamma=0.9, n=2)
    sig = inspect.signature(getattr(reference, name)).parameters
    info = registry.lookup(name)
    for p in info.params:
        if p in ("gamma", "n"):
            continue
        default = sig[p].default
        want = 1.0 if default is inspect.Parameter.empty else default
        assert rec.kwargs[p] == want, (name, p, rec.kwargs[p], want)
    assert set(rec.kwargs) == set(info.params), (name, rec.kwargs)


def test_call_estimator_pg_rho_clip_follows_rho_clip_as_documented():
    rec = Recorder()
    registry.call_estimator(rec, "vtrace", _inputs(), gamma=0.9, rho_clip=2.5)
    assert rec.kwargs["pg_rho_clip"] == 2.5 and rec.kwargs["c_clip"] == 1.0
    registry.call_estimator(rec, "vtrace", _inputs(), gamma=0.9, rho_clip=2.5, pg_rho_clip=0.3)
    assert rec.kwargs["pg_rho_clip"] == 0.3


@pytest.mark.parametrize("name", [e.name for e in registry.ESTIMATORS.values()
                                  if e.moments_name and e.kind != "reward"])
def test_call_estimator_defaults_equal_the_exact_moments_defaults(name):
    """The default each side applies when a parameter is omitted is the same number: the
    exact moments record theirs in ``Moments.params``."""
    rec = Recorder()
    registry.call_estimator(rec, name, _inputs(), gamma=0.9, n=2)
    P = np.zeros((2, 2, 2))
    P[:, :, 0] = 1.0
    m = mdp.TabularMDP(P, np.ones((2, 2, 2)), 0.9)
    pol = np.full(m.shape, 1.0 / m.shape[1])
    mom = moments.exact_moments(m, registry.lookup(name).moments_name, behaviour=pol,
                                target=pol, horizon=2, n=2)
    for p, v in rec.kwargs.items():
        if p in ("gamma", "n"):
            continue
        assert mom.params[p] == v, (name, p, mom.params[p], v)


# ---- strategies: every option drawn and consistent ----------------------------------------------


@pytest.mark.parametrize("ratios", strategies.RATIO_KINDS)
def test_trajectory_batches_log_ratios_agree_with_the_target_probabilities(ratios):
    """log_rhos = -inf exactly where pi(a_t|s_t) = 0 (documented); "equal" means log_rhos = 0;
    NaN in next_values / next_expected_q exactly where terminated; probabilities in [0, 1]."""
    seen_zero = 0
    for b in draws(strategies.trajectory_batches(ratios=ratios)):
        lr, pi, term = b["log_rhos"], b["target_probs_taken"], b["terminated"]
        assert lr.shape == pi.shape == term.shape == b["truncated"].shape
        assert ((pi >= 0) & (pi <= 1)).all()
        np.testing.assert_array_equal(np.isneginf(lr), pi == 0)
        assert not np.isnan(lr).any() and not np.isposinf(lr).any()
        np.testing.assert_array_equal(np.isnan(b["next_values"]), term)
        np.testing.assert_array_equal(np.isnan(b["next_expected_q"]), term)
        for k in ("rewards", "values", "q_taken"):
            assert np.isfinite(b[k]).all()
        assert b["gamma"] in (0.0, 0.5, 0.9, 0.99, 1.0)
        assert ((0 <= b["states"]) & (b["states"] < 8)).all()
        if ratios == "equal":
            assert (lr == 0).all()
        if ratios in ("mixed", "tiny"):
            assert np.isfinite(lr).all()
        seen_zero += int((pi == 0).any())
    assert (seen_zero > 0) == (ratios == "zero")


@pytest.mark.parametrize("consistent", [True, False])
def test_trajectory_batches_consistent_option(consistent):
    held = broke = 0
    for b in draws(strategies.trajectory_batches(consistent=consistent, min_T=2)):
        follows = ~(b["terminated"] | b["truncated"])[:-1]
        same = b["next_values"][:-1] == b["values"][1:]
        if consistent:
            assert same[follows].all()
        elif follows.any():
            assert not same[follows].all()  # at least one such step holds another value
            broke += 1
        held += 1
    assert held and (consistent or broke)


@pytest.mark.parametrize("divergence", strategies.DIVERGENCES)
def test_policy_pairs_every_divergence_is_what_it_says(divergence):
    for mu, pi in draws(strategies.policy_pairs(3, 3, divergence=divergence), 30):
        np.testing.assert_allclose(mu.sum(1), 1.0)
        np.testing.assert_allclose(pi.sum(1), 1.0)
        assert (mu > 0).all()  # the behaviour always has full support
        if divergence == "equal":
            np.testing.assert_array_equal(mu, pi)
        elif divergence == "deterministic":
            assert set(np.unique(pi)) <= {0.0, 1.0} and (pi.max(1) == 1).all()
        elif divergence == "near_deterministic":
            np.testing.assert_allclose(pi.max(1), 1 - 1e-3)
            np.testing.assert_allclose(np.sort(pi, 1)[:, :-1], 1e-3 / 2)
        elif divergence == "tiny_mu":
            assert (pi > 0).all()
        else:
            assert (pi > 0).all() and not np.array_equal(mu, pi)


def test_policy_pairs_tiny_mu_draws_tiny_behaviour_probabilities():
    tiny = sum(mu.min() < 0.0101 for mu, _ in draws(strategies.policy_pairs(3, 3, "tiny_mu"), 30))
    assert tiny >= 20  # each entry is tiny with probability 1/2: 9 entries per draw


@pytest.mark.parametrize("kind", strategies.ESTIMATE_KINDS)
def test_value_and_q_estimates_every_kind(kind):
    P = np.zeros((2, 2, 2))
    P[0, 0, 1] = P[0, 1, 0] = P[1, :, 1] = 1.0
    R = np.zeros((2, 2, 2))
    R[0, 0, 1], R[0, 1, 0] = 1.0, -1.0
    m = mdp.TabularMDP(P, R, 0.5, terminal=[1])
    pol = np.array([[0.25, 0.75], [0.5, 0.5]])
    # V^pi(0) = 0.25*1 + 0.75*(-1 + 0.5 V(0)) -> V(0) = -0.5 / 0.625 = -0.8; V(terminal) = 0
    np.testing.assert_allclose(exact.v_pi(m, pol), [-0.8, 0.0], atol=1e-12)
    for v in draws(strategies.value_estimates(m, pol, kind=kind), 10):
        if kind == "exact":
            np.testing.assert_allclose(v, [-0.8, 0.0], atol=1e-12)
        elif kind == "noisy":
            assert not np.allclose(v, [-0.8, 0.0])
        else:  # V of another full-support policy q: V(0) = (2q - 1) / (1 - 0.5 (1 - q))
            q0 = np.linspace(1e-9, 1 - 1e-9, 10001)
            assert v[1] == 0.0 and np.min(np.abs((2 * q0 - 1) / (0.5 + 0.5 * q0) - v[0])) < 1e-3
    for q in draws(strategies.q_estimates(m, pol, kind=kind), 10):
        assert q.shape == (2, 2)
        if kind == "exact":  # Q(0,0) = 1, Q(0,1) = -1 + 0.5 V(0) = -1.4
            np.testing.assert_allclose(q, [[1.0, -1.4], [0.0, 0.0]], atol=1e-12)


def test_mdps_every_option_is_obeyed():
    for m in draws(strategies.mdps(min_states=2, max_states=4, terminal=True, gamma=0.7,
                                   noise=0.3), 30):
        assert m.terminal.any() and m.gamma == 0.7
        np.testing.assert_allclose(m.reward_std[~m.terminal], 0.3)
        np.testing.assert_allclose(m.P.sum(-1), 1.0)
    for m in draws(strategies.mdps(terminal=False, min_gamma=0.9, noise=0.0), 30):
        assert not m.terminal.any() and 0.9 <= m.gamma <= 0.99 and (m.reward_std == 0).all()


def test_estimator_configs_draw_every_entry_with_exactly_its_parameters():
    seen = set()
    for est, out, params in draws(strategies.estimator_configs(), 300):
        seen.add((est, out))
        info = registry.lookup(est)
        want = {"lam"} & set(info.params)
        if "rho_clip" in info.params:
            want |= {"rho_clip", "c_clip"} | ({"pg_rho_clip"} if out == "pg_advantage" else set())
        if "n" in info.params:
            want |= {"n"}
        if info.kind == "reward":
            want |= {"weights", "means"}
            assert params["means"].shape == (8, params["weights"].shape[0])
            assert ((params["weights"] >= 0) & (params["weights"] <= 1)).all()
        assert set(params) == want, (est, out, params)
        if "lam" in params:
            assert params["lam"] in (0.0, 0.5, 0.9, 1.0)
        if "n" in params:
            assert 1 <= params["n"] <= 4
    assert seen == set(strategies.ESTIMATOR_OUTPUTS)


# ---- CLI helpers at their edges -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_parse_names_rejects_an_empty_list_naming_the_flag(text):
    with pytest.raises(_cli.UsageError, match=r"^--mdps: unknown \(empty\); known: a, b$"):
        _cli.parse_names(text, ("a", "b"), "--mdps")


def test_parse_names_maps_aliases_keeps_order_and_names_every_unknown():
    assert _cli.parse_names(" b ,x,a", ("a", "b"), "--e", aliases={"x": "a"}) == ("b", "a", "a")
    with pytest.raises(_cli.UsageError, match=r"^--e: unknown c, d; known: a, b$"):
        _cli.parse_names("a,c,d", ("a", "b"), "--e", aliases={"c": "zz"})


@pytest.mark.parametrize("text,ok", [("1", 1), ("7", 7), ("0", None), ("-3", None),
                                     ("x", None), ("1.5", None)])
def test_positive_int_edges(text, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            _cli.positive_int(text)
    else:
        assert _cli.positive_int(text) == ok


def test_writable_file_and_dir_edges(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    assert _cli.writable_file(str(f), "--json") is None
    assert _cli.writable_file(str(tmp_path / "new.json"), "--json") is None
    assert _cli.writable_file(str(tmp_path), "--json") == f"--json: {tmp_path} is a directory"
    assert _cli.writable_file(str(tmp_path / "no" / "x"), "--json") == \
        f"--json: directory {tmp_path / 'no'} does not exist"
    assert _cli.writable_dir(str(f), "--out") == f"--out {f}: exists and is not a directory"
    assert _cli.writable_dir(str(tmp_path / "a" / "b")) is None
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())


def test_parsers_and_usage_error_exit_codes(capsys):
    p = _cli.OneLineParser(prog="prog")
    p.add_argument("--n", type=_cli.positive_int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error: argument --n: must be >= 1")
    r = _cli.RaisingParser(prog="p")
    r.add_argument("x")
    with pytest.raises(_cli.UsageError):
        r.parse_args([])
    assert _cli.usage_error("prog", "--x: bad") == 2
    assert capsys.readouterr().err == "prog: error: --x: bad\n"


# ---- the mutation CLI's exit status (suite runs stubbed: only the bookkeeping is tested) ---------


@pytest.fixture
def stub_suite(monkeypatch):
    """run_suite replaced: the unmutated copy passes, a mutant is killed unless named in
    ``survive``."""
    survive = set()

    def fake(package_dir, tests, pytest_args, first=()):
        text = (package_dir / "estimators" / "numpy.py").read_text()
        if text == mutation.reference_source():
            return True, 0.0, ""
        alive = any(all(new in text for _, new in mutation.by_name(n).edits) for n in survive)
        return alive, 0.0, "FAILED tests/x.py::test_y"

    monkeypatch.setattr(mutation, "run_suite", fake)
    return survive


def _first_two():
    return [m.name for m in mutation.CATALOGUE[:2]]


# the property suite the check runs, named: from an installed wheel the CLI cannot find it
TESTS = ["--tests", str(Path(__file__).resolve().parent)]


def test_mutation_cli_all_killed_exits_0(stub_suite, capsys):
    assert mutation.main([*TESTS, "--only", *_first_two()]) == 0
    assert "2/2 mutants killed" in capsys.readouterr().out


def test_mutation_cli_a_survivor_exits_1(stub_suite, capsys):
    stub_suite.add(_first_two()[1])
    assert mutation.main([*TESTS, "--only", *_first_two()]) == 1
    assert "SURVIVED" in capsys.readouterr().out


def test_mutation_cli_a_stale_patch_exits_1(stub_suite, monkeypatch, capsys):
    first = mutation.CATALOGUE[0]
    src = mutation.reference_source().replace(first.edits[0][0], "# edited away\n")
    monkeypatch.setattr(mutation, "reference_source", lambda: src)
    assert mutation.main([*TESTS, "--only", first.name, _first_two()[1]]) == 1
    out = capsys.readouterr().out
    assert "STALE" in out and "1/2 mutants killed" in out


def test_mutation_cli_unknown_name_exits_2(capsys):
    assert mutation.main(["--only", "no_such_bug"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_mutation_cli_failing_unmutated_copy_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(mutation, "run_suite", lambda *a, **k: (False, 0.0, "boom"))
    assert mutation.main([*TESTS, "--only", _first_two()[0]]) == 2


# ---- the messages themselves (each names what was wrong) ----------------------------------------


def test_cli_helper_messages_name_the_problem(tmp_path, monkeypatch):
    r = _cli.RaisingParser(prog="p")
    r.add_argument("x")
    with pytest.raises(_cli.UsageError, match="the following arguments are required: x"):
        r.parse_args([])
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected an integer, got 'x'$"):
        _cli.positive_int("x")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be >= 1, got 0$"):
        _cli.positive_int("0")
    monkeypatch.chdir(tmp_path)
    assert _cli.writable_file("bare.json", "--json") is None  # a bare name: the current dir
    f = tmp_path / "f.txt"
    f.write_text("x")
    assert _cli.writable_dir(str(f)) == f"--out {f}: exists and is not a directory"


def test_writable_file_refuses_an_unwritable_directory_or_file(tmp_path, monkeypatch):
    """os.access is stubbed (a root user writes through permission bits)."""
    f = tmp_path / "f.json"
    f.write_text("{}")
    real = _cli.os.access
    monkeypatch.setattr(_cli.os, "access", lambda p, m: str(p) != str(tmp_path))
    assert _cli.writable_file(str(tmp_path / "new.json"), "--json") == \
        f"--json: {tmp_path / 'new.json'} is not writable"
    monkeypatch.setattr(_cli.os, "access", lambda p, m: str(p) != str(f))
    assert _cli.writable_file(str(f), "--json") == f"--json: {f} is not writable"
    monkeypatch.setattr(_cli.os, "access", real)


def test_unknown_estimator_lists_every_known_name():
    with pytest.raises(ValueError) as e:
        registry.lookup("nope")
    known = [*registry.ESTIMATORS, *registry.ALIASES, *registry.OUTPUT_ALIASES]
    assert str(e.value) == f"estimator: unknown 'nope'; known: {', '.join(known)}"


@pytest.mark.parametrize("kind", registry.KINDS)
def test_estimator_info_accepts_every_kind_and_a_consistent_entry(kind):
    e = registry.EstimatorInfo("x", kind, ("rewards",), ("a", "b"), ("gamma",),
                               {"a": "advantage", "b": "value"}, None, "b")
    assert e.all_names == ("x",) and e.output_for("value") == "b"


@pytest.mark.parametrize("change,message", [
    (dict(kind="bogus"), r"^kind: one of \('state', 'action', 'reward'\), got 'bogus'$"),
    (dict(quantities={"a": "advantage"}), r"^x: quantities/default_output must name its"),
    (dict(default_output="c"), r"^x: quantities/default_output must name its outputs$"),
])
def test_estimator_info_refuses_an_inconsistent_entry(change, message):
    fields = dict(name="x", kind="state", inputs=("rewards",), outputs=("a", "b"),
                  params=("gamma",), quantities={"a": "advantage", "b": "value"},
                  moments_name=None, default_output="a")
    with pytest.raises(ValueError, match=message):
        registry.EstimatorInfo(**{**fields, **change})


def test_writable_dir_probes_inside_the_directory_and_names_the_os_error(tmp_path, monkeypatch):
    seen = []
    real = _cli.tempfile.TemporaryFile

    def probe(**kw):
        seen.append(kw.get("dir"))
        return real(**kw)

    monkeypatch.setattr(_cli.tempfile, "TemporaryFile", probe)
    assert _cli.writable_dir(str(tmp_path / "d")) is None
    assert seen == [str(tmp_path / "d")]

    def refuse(err):
        def fn(**kw):
            raise err
        return fn

    monkeypatch.setattr(_cli.tempfile, "TemporaryFile", refuse(PermissionError(13, "Denied")))
    assert _cli.writable_dir(str(tmp_path), "--out") == \
        f"--out {tmp_path}: cannot write there (Denied)"
    monkeypatch.setattr(_cli.tempfile, "TemporaryFile", refuse(OSError()))
    assert _cli.writable_dir(str(tmp_path), "--out") == \
        f"--out {tmp_path}: cannot write there (OSError)"
