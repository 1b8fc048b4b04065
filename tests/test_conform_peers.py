"""The peers table (offpolicy.conform.peers) without any peer library installed.

The peer libraries are an optional extra; CI does not install them. These tests check that the
table is well formed against what ``offpolicy.conform`` knows (estimators, outputs, layouts,
parameter names), that every adapter asks only for what its layout provides, and that
``run_peers`` turns a peer that does not import into a ``not run`` row and writes its reports.
"""

import csv
import functools
import inspect
import json
import sys
import types
from unittest import mock

import pytest

from offpolicy.conform import ESTIMATORS, FAMILIES, LAYOUTS, peers
from offpolicy.conform.layouts import Layout

ENTRIES = [pytest.param(p, id=f"{p.library}:{p.attr}:{p.estimator}:{p.output}:"
                              f"{p.make_layout().describe()}")
           for p in peers.PEERS]


@pytest.mark.parametrize("peer", ENTRIES)
def test_entry_names_what_conform_knows(peer):
    spec = ESTIMATORS[peer.estimator]
    layout = peer.make_layout()
    assert isinstance(layout, Layout) and layout.name in LAYOUTS
    assert spec.kind in layout.kinds, f"{layout.name} cannot express {peer.estimator}"
    assert peer.output in spec.outputs
    assert set(peer.params) <= set(spec.params), f"unknown fixed params {peer.params}"
    assert peer.array in (None, "numpy", "torch", "jax")
    assert peer.dtype in (None, "float64", "float32")
    assert peer.library and peer.distribution and peer.module and peer.attr


def _stand_in_jax(monkeypatch):
    """A stand-in ``jax`` for building the rlax adapters where JAX is not installed: ``jit``
    wraps the function keeping its signature (as jax.jit does), ``jax.numpy`` is a mock."""
    try:
        import jax  # noqa: F401
    except ImportError:
        fake = types.ModuleType("jax")
        fake.jit = lambda fn, static_argnames=(): functools.wraps(fn)(
            lambda *args, **kwargs: fn(*args, **kwargs))
        fake.numpy = mock.MagicMock(name="jax.numpy")
        monkeypatch.setitem(sys.modules, "jax", fake)
        monkeypatch.setitem(sys.modules, "jax.numpy", fake.numpy)


@pytest.mark.parametrize("peer", [p for p in ENTRIES if p.values[0].adapter is not None])
def test_adapter_asks_only_for_what_the_layout_gives(peer, monkeypatch):
    """Build each adapter around a stand-in library object (the adapters import only torch,
    gymnasium and jax helpers at build time) and compare its parameter names with the layout's
    inputs and the keywords of the parameters the runner passes."""
    spec = ESTIMATORS[peer.estimator]
    layout = peer.make_layout()
    _stand_in_jax(monkeypatch)
    fn = peer.adapter(mock.MagicMock(name=peer.attr))
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        # a pass-through (output picker, gamma as a tensor): it shows the library function's
        # own signature, here the stand-in's (*args, **kwargs)
        assert hasattr(fn, "__wrapped__"), "an adapter taking **kwargs must wrap the function"
        return
    names = {p.name for p in parameters}
    if layout.name == "contract":
        offered = set(spec.inputs)
    else:
        offered = layout.provided(spec)
    params = {layout.keyword_for(p) for p in spec.params if p not in layout.folded_params}
    assert names <= offered | params, f"asks for {sorted(names - offered - params)}"
    missing = {layout.keyword_for(p) for p in spec.params
               if p not in layout.folded_params and p not in peer.params} - names
    assert not missing, f"drawn parameters it does not take: {sorted(missing)}"


def test_every_library_of_the_issue_is_listed():
    listed = {p.library for p in peers.PEERS}
    assert {"TorchRL", "rlax", "Stable-Baselines3", "tianshou", "skrl", "rl-games", "CleanRL",
            "PufferLib", "TRL"} <= listed


def _fail_import(name, *args, **kwargs):
    raise ImportError(f"No module named {name!r} (blocked by the test)")


def test_uninstalled_peers_are_not_run(tmp_path, monkeypatch):
    """Every distribution reported missing: each entry is one 'not run' row saying why."""
    def no_version(distribution):
        raise peers.importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(peers.importlib.metadata, "version", no_version)
    monkeypatch.setattr(peers.importlib, "import_module", _fail_import)
    rows = peers.run_peers(tmp_path, progress=None)
    assert len(rows) == len(peers.PEERS)
    assert {r["verdict"] for r in rows} == {"not run"}
    for peer, row in zip(peers.PEERS, rows, strict=True):
        assert row["library"] == peer.library
        if peer.unavailable:
            assert row["reason"] == peer.unavailable
        else:
            assert f"{peer.distribution} is not installed" in row["reason"]


def test_installed_but_not_importable_is_not_run(tmp_path, monkeypatch):
    """A distribution whose metadata exists but whose module fails to import (PufferLib's CUDA
    extension on CPU torch) is 'not run' with the import error, and the run goes on."""
    monkeypatch.setattr(peers.importlib.metadata, "version", lambda d: "9.9.9")
    monkeypatch.setattr(peers.importlib, "import_module", _fail_import)
    subset = tuple(p for p in peers.PEERS if p.setup is None)[:3] + tuple(
        p for p in peers.PEERS if p.unavailable)
    rows = peers.run_peers(tmp_path, peers=subset, progress=None)
    assert [r["verdict"] for r in rows] == ["not run"] * len(subset)
    assert all(r["version"] == "9.9.9" for r in rows)
    assert all("does not import: ImportError" in r["reason"]
               for r, p in zip(rows, subset, strict=True) if not p.unavailable)


def test_reports_are_written(tmp_path):
    rows = [
        peers.row(peers.PEERS[0], "1.0", family=f, verdict=v, reason="r", seconds=1.5,
                   diagnosis="bug" if v == "fail" else "",
                   repro='{"T":1}' if f == "no_dones" else "")
        for f, v in zip(FAMILIES[:3], ("fail", "pass", "n/a"), strict=True)
    ] + [peers.row(peers.PEERS[-1], None, verdict="not run", reason="why | not")]
    paths = peers.write_peer_reports(rows, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["peers.csv", "peers.json", "peers.md"]
    with open(tmp_path / "out" / "peers.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["verdict"] for r in table] == ["fail", "pass", "n/a", "not run"]
    assert tuple(table[0]) == peers.ROW_FIELDS
    entries = json.loads((tmp_path / "out" / "peers.json").read_text())["entries"]
    assert len(entries) == 2
    assert entries[0]["verdict"] == f"DOES NOT CONFORM ({FAMILIES[0]})"
    assert entries[0]["diagnosis"] == "bug" and entries[0]["repro"] == {"T": 1}
    assert entries[1]["verdict"] == "not run"
    md = (tmp_path / "out" / "peers.md").read_text()
    assert "why \\| not" in md and "DOES NOT CONFORM" in md


def test_cli_peers_writes_under_offpolicy_out_by_default(tmp_path, monkeypatch):
    """``--peers`` without ``--out`` writes under ./offpolicy-out/peers (git-ignored), never
    into reports/peers/; the rows come from ``run_peers`` (here: every peer not installed)."""
    from offpolicy.conform import __main__ as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(peers.importlib, "import_module", _fail_import)
    monkeypatch.setattr(peers.table, "PEERS", peers.PEERS[-2:])  # the two not-importable entries
    assert cli.main(["--peers"]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    assert written == ["offpolicy-out/peers/peers.csv", "offpolicy-out/peers/peers.json",
                       "offpolicy-out/peers/peers.md"]
    rows = list(csv.DictReader(open(tmp_path / "offpolicy-out/peers/peers.csv")))
    assert [r["verdict"] for r in rows] == ["not run", "not run"]


# ---------------------------------------------------------------------------------------------
# failure classes


def test_finding_needs_a_known_kind_and_a_section_only_for_a_convention():
    assert peers.Finding("bug", "x").design is None
    with pytest.raises(ValueError, match="kind"):
        peers.Finding("convention difference", "x")
    with pytest.raises(ValueError, match="design"):
        peers.Finding("convention", "x")
    with pytest.raises(ValueError, match="design"):
        peers.Finding("bug", "x", design="§1")


def test_a_failing_row_takes_its_class_from_the_entry():
    peer = peers.Peer("L", "l", "m", "f", "gae", findings={
        "lambda_0": peers.Finding("layout limit", "why"), "*": peers.Finding("bug", "other")})
    assert peers.row(peer, "1", family="lambda_0", verdict="fail")["failure_class"] == \
        "layout limit"
    assert peers.row(peer, "1", family="T_equals_1", verdict="fail")["failure_class"] == "bug"
    assert peers.row(peer, "1", family="T_equals_1", verdict="pass")["failure_class"] == ""
    bare = peers.Peer("L", "l", "m", "f", "gae")
    assert peers.row(bare, "1", family="x", verdict="fail")["failure_class"] == "unclassified"


def _design_headings():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md").read_text()
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def test_every_convention_names_a_design_section_that_exists():
    """A convention finding cites docs/DESIGN.md by the heading of the section that documents
    it ("§1 X: Y" is heading X, then the bold paragraph title Y under it)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md").read_text()
    for section in peers.table.DESIGN_SECTIONS.values():
        heading, _, paragraph = section.partition(": ")
        title = heading.split(" ", 1)[1]
        assert any(h.endswith(title) for h in _design_headings()), section
        assert f"**{paragraph}.**" in text, section
    for peer in peers.PEERS:
        for finding in peer.findings.values():
            if finding.kind == "convention":
                assert finding.design in peers.table.DESIGN_SECTIONS.values()


def test_committed_table_classifies_every_failing_family():
    """reports/peers/peers.json (the committed run): every failing family carries a class, and
    a convention its DESIGN.md section."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "reports" / "peers" / "peers.json"
    entries = json.loads(path.read_text())["entries"]
    failing = [(e["function"], c) for e in entries for c in e["cases"] if c["verdict"] == "fail"]
    assert failing, "the committed run has failures to classify"
    for function, case in failing:
        assert case["class"] in peers.FAILURE_CLASSES, (function, case["family"])
        assert case["why"], (function, case["family"])
        assert (case["class"] == "convention") == ("design_section" in case)


# ---------------------------------------------------------------------------------------------
# each adapter against its library's own pipeline, worked by hand. These run where the library
# is installed (the [peers] extra; CI does not install it) and skip otherwise.
#
# The common input, one stream, gamma 0.5, lambda 0.5, rewards 0:
#   step 0 times out (truncated, not terminated): V(s_0) = 1, V(final obs) = 5;
#   step 1 is the segment's open end: V(s_1) = 2 (the reset state), V(s'_1) = 3.
# The contract: A_1 = 0.5*3 - 2 = -0.5, A_0 = 0.5*5 - 1 = 1.5 (cut at the time-out), so the
# returns A + V are 1.5 and 2.5.
# The both-flags input, T = 1: terminated and truncated, V(s_0) = 1, V(s'_0) = 5, gamma 0.7:
# the contract gives A = -1, return 0 (no bootstrap).

def _one_stream(torch_module):
    t = torch_module
    return dict(rewards=t.zeros(2, 1, dtype=t.float64),
                values=t.tensor([[1.0], [2.0]], dtype=t.float64),
                next_values=t.tensor([[5.0], [3.0]], dtype=t.float64),
                terminated=t.tensor([[False], [False]]),
                truncated=t.tensor([[True], [False]]), gamma=0.5, lam=0.5)


def _both_flags(torch_module):
    t = torch_module
    return dict(rewards=t.zeros(1, 1, dtype=t.float64), values=t.tensor([[1.0]], dtype=t.float64),
                next_values=t.tensor([[5.0]], dtype=t.float64), terminated=t.tensor([[True]]),
                truncated=t.tensor([[True]]), gamma=0.7, lam=0.9)


def test_contract_on_the_worked_inputs():
    """The hand figures above are the reference's (so the library figures below are compared
    with the contract, not just with themselves)."""
    import numpy as np

    from estimators.numpy import gae

    torch = pytest.importorskip("torch")
    x = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in _one_stream(torch).items()}
    adv, ret = gae(x["rewards"], x["values"], x["next_values"], x["terminated"], x["truncated"],
                   gamma=0.5, lam=0.5)
    assert np.allclose(adv[:, 0], [1.5, -0.5]) and np.allclose(ret[:, 0], [2.5, 1.5])
    y = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in _both_flags(torch).items()}
    adv, ret = gae(y["rewards"], y["values"], y["next_values"], y["terminated"], y["truncated"],
                   gamma=0.7, lam=0.9)
    assert np.allclose(adv, [[-1.0]]) and np.allclose(ret, [[0.0]])


def _through(peer_entry, fn, x, array="torch"):
    """Run ``fn`` in ``peer_entry``'s layout (its fold included) on the contract inputs ``x``
    (numpy, one column), as the runner does; the output as numpy [T]."""
    import numpy as np

    from offpolicy.conform.cases import Case
    from offpolicy.conform.layouts import Arrays

    inputs = {k: np.asarray(v) for k, v in x.items() if k not in ("gamma", "lam")}
    inputs["log_rhos"] = np.zeros_like(inputs["rewards"])
    params = {"gamma": x["gamma"], "lam": x["lam"]}
    layout = peer_entry.make_layout()
    y = layout.run(fn, Case("worked", inputs, params), ESTIMATORS["gae"], params,
                   Arrays(array), peer_entry.output)
    return np.asarray(y, dtype=float)[:, 0]


def _numpy_inputs(make):
    torch = pytest.importorskip("torch")
    return {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in make(torch).items()}


def _entry(library, note_start):
    (entry,) = [p for p in peers.PEERS if p.library == library and p.note.startswith(note_start)]
    return entry


def test_skrl_time_limit_bootstrap_as_its_pipeline():
    """skrl, time_limit_bootstrap=True: record_transition stores r_0 + gamma * V(next obs) =
    0 + 0.5 * 5 = 2.5 on the time-out; compute_gae cuts there (not_done = ~(terminated |
    truncated)): A_1 = 0.5*3 - 2 = -0.5, A_0 = 2.5 - 1 = 1.5; returns 2.5 and 1.5 (the
    contract's). Both flags: 0 + 0.7 * 5 = 3.5 stored, return 3.5 (the contract: 0, no
    bootstrap after a termination: the bug)."""
    ppo = pytest.importorskip("skrl.agents.torch.ppo.ppo")
    from offpolicy.conform.peers import skrl

    entry = _entry("skrl", "time_limit_bootstrap=True:")
    fn = skrl.ppo_gae(True)(ppo.compute_gae)
    assert _through(entry, fn, _numpy_inputs(_one_stream)).tolist() == pytest.approx([2.5, 1.5])
    assert _through(entry, fn, _numpy_inputs(_both_flags)).tolist() == pytest.approx([3.5])


def test_skrl_default_as_its_pipeline():
    """skrl's default (time_limit_bootstrap=False): nothing folded, not_done = ~terminated, so
    the time-out runs on: A_1 = -0.5, A_0 = 0 - 1 + 0.5 * (2 + 0.5 * -0.5) = -0.125; returns
    0.875 and 1.5. Both flags: terminated, return 0 (as the contract)."""
    ppo = pytest.importorskip("skrl.agents.torch.ppo.ppo")
    from offpolicy.conform.peers import skrl

    entry = _entry("skrl", "default time_limit_bootstrap=False")
    fn = skrl.ppo_gae(False)(ppo.compute_gae)
    assert _through(entry, fn, _numpy_inputs(_one_stream)).tolist() == pytest.approx(
        [0.875, 1.5])
    assert _through(entry, fn, _numpy_inputs(_both_flags)).tolist() == pytest.approx([0.0])


def test_rl_games_play_steps_as_its_pipeline():
    """rl-games: play_steps stores 0 + 0.5 * V(s_0) = 0.5 on the time-out and the episode-start
    flags [0, 1]; discount_values: A_1 = 0.5*3 - 2 = -0.5, A_0 = 0.5 - 1 = -0.5 (the contract:
    1.5). Both flags: 0.7 * 1 folded, done: A = 0.7 - 1 = -0.3 (contract -1)."""
    a2c = pytest.importorskip("rl_games.common.a2c_common")
    from offpolicy.conform.peers import rl_games

    entry = _entry("rl-games", "with play_steps")
    fn = rl_games.discount_values(a2c.A2CBase.discount_values)
    assert _through(entry, fn, _numpy_inputs(_one_stream)).tolist() == pytest.approx(
        [-0.5, -0.5])
    assert _through(entry, fn, _numpy_inputs(_both_flags)).tolist() == pytest.approx([-0.3])


def test_rl_games_discount_values_under_sb3s_fold():
    """The GAE alone given SB3's fold: 0 + 0.5 * 5 = 2.5 stored on the time-out, cut there:
    A_0 = 1.5, A_1 = -0.5 (the contract); both flags: nothing folded, A = -1."""
    a2c = pytest.importorskip("rl_games.common.a2c_common")
    from offpolicy.conform.peers import rl_games

    entry = _entry("rl-games", "the GAE alone")
    fn = rl_games.discount_values(a2c.A2CBase.discount_values)
    assert _through(entry, fn, _numpy_inputs(_one_stream)).tolist() == pytest.approx(
        [1.5, -0.5])
    assert _through(entry, fn, _numpy_inputs(_both_flags)).tolist() == pytest.approx([-1.0])


def test_sb3_as_its_pipeline():
    """SB3: collect_rollouts adds gamma * V(terminal_observation) where TimeLimit.truncated,
    which its VecEnvs set to `truncated and not terminated`; the buffer's GAE then cuts at the
    done. Time-out: 0 + 0.5*5 = 2.5 stored, A_0 = 2.5 - 1 = 1.5, A_1 = -0.5 (the contract).
    Both flags: nothing folded (terminated), A = -1 (the contract). float32 buffers."""
    buffers = pytest.importorskip("stable_baselines3.common.buffers")
    from offpolicy.conform.peers import sb3

    (entry,) = [p for p in peers.PEERS if p.library == "Stable-Baselines3"]
    fn = sb3.rollout_buffer(buffers.RolloutBuffer.compute_returns_and_advantage)
    assert _through(entry, fn, _numpy_inputs(_one_stream)).tolist() == pytest.approx(
        [1.5, -0.5], abs=1e-6)
    assert _through(entry, fn, _numpy_inputs(_both_flags)).tolist() == pytest.approx(
        [-1.0], abs=1e-6)


def test_sb3_vecenv_writes_timelimit_truncated_only_without_termination():
    """The fold's `timeout_not_terminated` is SB3's own: DummyVecEnv sets
    info["TimeLimit.truncated"] = truncated and not terminated."""
    pytest.importorskip("stable_baselines3")
    import inspect as _inspect

    from stable_baselines3.common.vec_env import dummy_vec_env

    source = _inspect.getsource(dummy_vec_env.DummyVecEnv.step_wait)
    assert '["TimeLimit.truncated"] = truncated and not terminated' in source


def test_tianshou_as_its_pipeline():
    """tianshou's buffer keeps both flags; compute_episodic_return bootstraps V(obs_next)
    unless terminated and cuts at any done: A = [1.5, -0.5] (the contract); both flags:
    A = -1."""
    torch = pytest.importorskip("torch")
    base = pytest.importorskip("tianshou.algorithm.algorithm_base")
    from offpolicy.conform.peers import tianshou

    fn = tianshou.episodic_return(base.Algorithm.compute_episodic_return)
    x = {k: (v.numpy()[:, 0] if hasattr(v, "numpy") else v) for k, v in _one_stream(torch).items()}
    got = fn(**x)
    assert list(got["advantages"]) == pytest.approx([1.5, -0.5])
    y = {k: (v.numpy()[:, 0] if hasattr(v, "numpy") else v) for k, v in _both_flags(torch).items()}
    assert list(fn(**y)["advantages"]) == pytest.approx([-1.0])


def test_tianshou_nstep_as_its_pipeline():
    """n = 2 from step 0: the window stops at the time-out, target r_0 + 0.5 * V(obs_next_0)
    = 2.5; from step 1 (open end): 0.5 * 3 = 1.5."""
    torch = pytest.importorskip("torch")
    base = pytest.importorskip("tianshou.algorithm.algorithm_base")
    from offpolicy.conform.peers import tianshou

    fn = tianshou.nstep_return(base.Algorithm.compute_nstep_return)
    x = {k: (v.numpy()[:, 0] if hasattr(v, "numpy") else v) for k, v in _one_stream(torch).items()}
    got = fn(x["rewards"], x["next_values"], x["terminated"], x["truncated"], 0.5, 2)
    assert list(got) == pytest.approx([2.5, 1.5])


def test_torchrl_gamma_as_tensor():
    """TorchRL GAE, T = 1, gamma 0.9, next value -1.7: -1.53 exactly with gamma as a float64
    tensor; with a Python float gamma is rounded to float32 (the finding)."""
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchrl.objectives.value.functional")
    from offpolicy.conform.peers import torchrl

    f64 = dict(dtype=torch.float64)
    kw = dict(state_value=torch.zeros(1, 1, 1, **f64),
              next_state_value=torch.full((1, 1, 1), -1.7, **f64),
              reward=torch.zeros(1, 1, 1, **f64), done=torch.zeros(1, 1, 1, dtype=torch.bool),
              terminated=torch.zeros(1, 1, 1, dtype=torch.bool), lmbda=0.5)
    fn = torchrl.gamma_as_tensor()(functional.generalized_advantage_estimate)
    adv, _ = fn(gamma=0.9, **kw)
    assert adv.item() == -1.7 * 0.9
    adv, _ = functional.generalized_advantage_estimate(gamma=0.9, **kw)
    assert adv.item() == pytest.approx(-1.53, rel=1e-7) and adv.item() != -1.7 * 0.9


def _rlax():
    pytest.importorskip("rlax")
    from offpolicy.conform.peers import rlax as adapters

    adapters.float64()
    import jax.numpy as jnp
    import rlax

    return rlax, adapters, jnp


def test_rlax_vtrace_pg_advantage_ignores_v_t():
    """vtrace_td_error_and_advantage, T = 2, lambda [0, 1] (the trace cut after step 0, the
    rlax layout's time-out), rho 1, gamma 0.5, r 0, v_tm1 [1, 2], v_t [5, 3]. The contract's pg
    advantage at step 0: r + gamma V(s'_0) - V(s_0) = 2.5 - 1 = 1.5. rlax's q_t bootstraps
    the (1 - lambda) part from v_tm1[1] = 2: q_0 = 0.5 * 2 = 1, pg advantage 1 - 1 = 0. The
    value targets use v_t: vs_0 = 2.5."""
    rlax, adapters, jnp = _rlax()
    out = rlax.vtrace_td_error_and_advantage(
        jnp.array([1.0, 2.0]), jnp.array([5.0, 3.0]), jnp.zeros(2), jnp.array([0.5, 0.5]),
        jnp.ones(2), lambda_=jnp.array([0.0, 1.0]))
    assert float(out.pg_advantage[0]) == pytest.approx(0.0)
    assert float(out.errors[0]) + 1.0 == pytest.approx(2.5)
    picked = adapters.pg_advantage(rlax.vtrace_td_error_and_advantage)(
        jnp.array([1.0, 2.0]), jnp.array([5.0, 3.0]), jnp.zeros(2), jnp.array([0.5, 0.5]),
        jnp.ones(2), lambda_=jnp.array([0.0, 1.0]))
    assert float(picked["pg_advantages"][0]) == pytest.approx(0.0)


def test_rlax_retrace_adapter():
    """Retrace, T = 2, lambda 1, gamma 0.5: step 1 (last) g_1 = 1 + 0.5 * E_pi q_t[1] =
    1 + 0.5 * 2 = 2; step 0, a_t[0] = 1, pi = 0.75, mu = 0.5: c = min(1, 1.5) = 1,
    g_0 = 0 + 0.5 * (E_pi q_t[0] - c q_t[0][1] + c g_1) = 0.5 * (3.75 - 4 + 2) = 0.875.
    The adapter returns the targets g (rlax returns g - q_tm1[a_tm1])."""
    rlax, adapters, jnp = _rlax()
    q_tm1 = jnp.array([[7.0, 9.0], [1.0, 1.0]])
    args = dict(q_tm1=q_tm1, q_t=jnp.array([[3.0, 4.0], [2.0, 2.0]]), a_tm1=jnp.array([1, 0]),
                a_t=jnp.array([1, 0]), r_t=jnp.array([0.0, 1.0]), discount_t=jnp.array([0.5, 0.5]),
                pi_t=jnp.array([[0.25, 0.75], [0.5, 0.5]]),
                mu_t=jnp.array([[0.5, 0.5], [0.5, 0.5]]), lambda_=1.0)
    for fn in (adapters.retrace(rlax.retrace), adapters.retrace(rlax.retrace, eps=0.0)):
        assert [float(g) for g in fn(**args)] == pytest.approx([0.875, 2.0])
    general = adapters.general_off_policy("retrace")(
        rlax.general_off_policy_returns_from_action_values)
    got = general(args["q_t"], args["a_t"], args["r_t"], args["discount_t"], args["pi_t"],
                  args["mu_t"], jnp.ones(2))
    assert [float(g) for g in got] == pytest.approx([0.875, 2.0])


def test_rlax_n_step_adapter():
    """n-step, n = 2, r [1, 1], discount [0.5, 0.5], v_t [4, 8], lambda_t [1, 1]: from step 0
    1 + 0.5 * (1 + 0.5 * 8) = 3.5; from step 1 (open end) 1 + 0.5 * 8 = 5. lambda_t = 0 at
    step 0 cuts there: 1 + 0.5 * 4 = 3."""
    rlax, adapters, jnp = _rlax()
    fn = adapters.n_step(rlax.n_step_bootstrapped_returns)
    r, d, v = jnp.array([1.0, 1.0]), jnp.array([0.5, 0.5]), jnp.array([4.0, 8.0])
    assert [float(g) for g in fn(r, d, v, jnp.ones(2), 2)] == pytest.approx([3.5, 5.0])
    assert [float(g) for g in fn(r, d, v, jnp.array([0.0, 1.0]), 2)] == pytest.approx([3.0, 5.0])


def test_pufferlib_kernel_adapter():
    """The kernel on one row, T = 2 (+1 column), no dones, rho 1, gamma 0.5, lambda 0.5:
    values [1, 2, 3], rewards stored one column later [_, 0, 0]. delta_0 = 0 + 0.5*2 - 1 = 0,
    delta_1 = 0.5*3 - 2 = -0.5; A_1 = -0.5, A_0 = 0 + 0.25 * -0.5 = -0.125."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pufferlib")
    from offpolicy.conform.peers import pufferlib

    try:
        pufferlib.build_kernel()
    except Exception as e:  # no compiler here: say so, do not pass
        pytest.skip(f"the PufferLib CPU kernel does not build here: {e}")
    fn = pufferlib.advantage(torch.ops.pufferlib.compute_puff_advantage)
    row = lambda xs: torch.tensor([xs], dtype=torch.float32)  # noqa: E731
    out = row([0.0, 0.0, 0.0])
    fn(row([1.0, 2.0, 3.0]), row([0.0, 0.0, 0.0]), row([0.0, 0.0, 0.0]), row([1.0, 1.0, 1.0]),
       out, 0.5, 0.5, 1.0, 1.0)
    assert out[0, :2].tolist() == pytest.approx([-0.125, -0.5])


def test_pufferlib_trainer_as_its_pipeline():
    """The trainer stores terminals only: the time-out at step 0 is not stored, so the kernel
    sees rows values [1, 2, 3], no dones, and gives the figures of the kernel test above,
    A = [-0.125, -0.5] (the contract: [1.5, -0.5])."""
    import numpy as np

    torch = pytest.importorskip("torch")
    pytest.importorskip("pufferlib")
    from offpolicy.conform.cases import Case
    from offpolicy.conform.layouts import Arrays
    from offpolicy.conform.peers import pufferlib

    try:
        pufferlib.build_kernel()
    except Exception as e:  # no compiler here: say so, do not pass
        pytest.skip(f"the PufferLib CPU kernel does not build here: {e}")
    (entry,) = [p for p in peers.PEERS if p.note.startswith("as PufferLib's trainer")]
    x = _numpy_inputs(_one_stream)
    inputs = {k: np.asarray(v) for k, v in x.items() if k not in ("gamma", "lam")}
    inputs["log_rhos"] = np.zeros_like(inputs["rewards"])
    params = {"gamma": 0.5, "lam": 0.5, "rho_clip": 1.0, "c_clip": 1.0}
    y = entry.make_layout().run(pufferlib.advantage(torch.ops.pufferlib.compute_puff_advantage),
                                Case("worked", inputs, params), ESTIMATORS["puff_advantage"],
                                params, Arrays("torch", "float32"), "advantages")
    assert y[:, 0].tolist() == pytest.approx([-0.125, -0.5])


def test_mushroom_rl_as_its_pipeline():
    """compute_gae with absorbing = terminated, last = terminated or time limit: the time-out
    is `last` and not absorbing, so it bootstraps from V(ss_0) = 5 and cuts: A = [1.5, -0.5],
    v_target = [2.5, 1.5] (the contract); both flags: absorbing, A = -1."""
    value_functions = pytest.importorskip("mushroom_rl.utils.value_functions")
    from offpolicy.conform.peers import mushroom_rl

    fn = mushroom_rl.gae(value_functions.compute_gae)
    x = {k: (v[:, 0] if hasattr(v, "shape") else v) for k, v in
         _numpy_inputs(_one_stream).items()}
    got = fn(**x)
    assert got["advantages"].tolist() == pytest.approx([1.5, -0.5])
    assert got["returns"].tolist() == pytest.approx([2.5, 1.5])
    y = {k: (v[:, 0] if hasattr(v, "shape") else v) for k, v in
         _numpy_inputs(_both_flags).items()}
    assert fn(**y)["advantages"].tolist() == pytest.approx([-1.0])


def test_sample_factory_as_its_pipeline():
    """gym's done on the time-out, nothing folded, values [1, 2] + bootstrap 3: delta_0 =
    0 - 1 (no bootstrap after a done), delta_1 = 0.5*3 - 2 = -0.5; A = [-1, -0.5] (the
    contract: 1.5 at step 0). The APPO learner's fake last value (2 - 0)/0.5 = 4 makes
    delta_1 = 0.5*4 - 2 = 0: A = [-1, 0]."""
    algo_utils = pytest.importorskip("sample_factory.algorithms.utils.algo_utils")
    from offpolicy.conform.peers import sample_factory

    alone, learner = [p for p in peers.PEERS if p.library == "Sample Factory"]
    x = _numpy_inputs(_one_stream)
    got = _through(alone, sample_factory.calculate_gae(algo_utils.calculate_gae), x, "numpy")
    assert got.tolist() == pytest.approx([-1.0, -0.5])
    got = _through(learner, sample_factory.learner_gae(algo_utils.calculate_gae), x, "numpy")
    assert got.tolist() == pytest.approx([-1.0, 0.0])


def test_rsl_rl_as_its_pipeline():
    """process_env_step adds 0.5 * V(s_0) = 0.5 on the time-out, dones [1, 0], last value 3:
    A_1 = 0.5*3 - 2 = -0.5, A_0 = 0.5 - 1 = -0.5 (the contract: 1.5); both flags: 0.7 * 1
    folded, done: A = -0.3 (contract -1)."""
    ppo = pytest.importorskip("rsl_rl.algorithms.ppo")
    from offpolicy.conform.peers import rsl_rl

    (entry,) = [p for p in peers.PEERS if p.library == "rsl_rl"]
    fn = rsl_rl.compute_returns(ppo.PPO.compute_returns)
    assert _through(entry, fn, _numpy_inputs(_one_stream)).tolist() == pytest.approx(
        [-0.5, -0.5])
    assert _through(entry, fn, _numpy_inputs(_both_flags)).tolist() == pytest.approx([-0.3])
