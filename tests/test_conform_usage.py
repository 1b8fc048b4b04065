"""Usage errors are usage errors; whatever the function returns or does is a verdict.

And the folds and stored-values forms say, on hand-built inputs, exactly what a rollout loop
stores (worked out by hand below)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from estimators import numpy as ref
from offpolicy import conform
from offpolicy.conform import Fold, StoredValues
from offpolicy.conform.__main__ import main as cli_main
from offpolicy.conform.cases import Case
from offpolicy.conform.layouts import as_fold, rollout

FAST = dict(examples=4, moments=False)


def good(rewards, values, next_values, terminated, truncated, *, gamma, lam):
    return ref.gae(rewards, values, next_values, terminated, truncated, gamma=gamma, lam=lam)


# ---------------------------------------------------------------------------------------------
# odd returns and behaviours: verdicts with their reason


def _string(*a, **k):
    return "advantages"


def _none(*a, **k):
    return None


def _wrong_key(*a, **k):
    return {"adv": good(*a, **k).advantages}


def _exits(*a, **k):
    raise SystemExit(3)


def _nan_everywhere(rewards, *a, **k):
    return np.full(rewards.shape, np.nan)


@pytest.mark.parametrize("fn, name, words", [
    (_string, "wrong_return", "returned 'advantages', not an array"),
    (_none, "wrong_return", "returned None"),
    (_wrong_key, "wrong_return", "without 'advantages'"),
    (_exits, "raises", "sys.exit(3)"),
    (_nan_everywhere, "returns_nonfinite", "NaN/inf on finite inputs"),
])
def test_odd_returns_are_verdicts_with_their_reason(fn, name, words):
    report = conform.check(fn, "gae", examples=3)  # moments too: its path must not crash
    assert not report.ok
    assert report.diagnosis == name, str(report)
    assert words in report.diagnosis_detail, str(report)
    assert report.case("exact_moments").verdict == "fail"


def test_in_place_write_names_the_input():
    def in_place(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        rewards *= 1.0
        rewards[...] = rewards + 0.5
        return good(rewards - 0.5, values, next_values, terminated, truncated, gamma=gamma,
                    lam=lam).advantages

    report = conform.check(in_place, "gae", **FAST)
    assert report.diagnosis == "modifies_inputs_in_place"
    assert "'rewards'" in report.diagnosis_detail and "input 0" not in report.diagnosis_detail


def test_exact_moment_failure_prints_numbers_that_differ():
    """A function off by 1e-7 at t = 0: the exact-moment reason must print two different
    means (6 significant digits would print the same number twice)."""
    def off(rewards, values, next_values, terminated, truncated, *, gamma, lam):
        adv = good(rewards, values, next_values, terminated, truncated, gamma=gamma,
                   lam=lam).advantages.copy()
        adv[0] += 1e-7
        return adv

    report = conform.check(off, "gae", examples=2)
    reason = report.case("exact_moments").reason
    assert report.case("exact_moments").verdict == "fail"
    mean, exact = reason.split("mean ")[1].split(" (off by")[0].split(" vs exact ")
    assert mean != exact and "off by 1e-07" in reason, reason


def test_wrong_pick_is_a_usage_error_naming_pick():
    with pytest.raises(conform.ConformUsageError, match=r"^pick: 7"):
        conform.check(good, "gae", pick=7, **FAST)
    with pytest.raises(conform.ConformUsageError, match=r"^pick: 'nope'"):
        conform.check(good, "gae", pick="nope", **FAST)
    assert conform.check(good, "gae", pick="advantages", **FAST).ok
    assert conform.check(good, "gae", pick=1, output="returns", **FAST).ok


# ---------------------------------------------------------------------------------------------
# the CLI


def test_cli_usage_errors_and_folds(tmp_path, monkeypatch, capsys):
    (tmp_path / "rollout_code.py").write_text(
        "import numpy as np\n"
        "from estimators import numpy as ref\n"
        "def good(rewards, values, next_values, terminated, truncated, *, gamma, lam):\n"
        "    return ref.gae(rewards, values, next_values, terminated, truncated,\n"
        "                   gamma=gamma, lam=lam)\n"
        "def cleanrl(rewards, values, dones, next_value, next_done, gamma, lam):\n"
        "    T = rewards.shape[0]\n"
        "    adv = np.zeros_like(rewards); last = 0.0\n"
        "    for t in reversed(range(T)):\n"
        "        nnt = 1.0 - (next_done if t == T - 1 else dones[t + 1])\n"
        "        nv = next_value if t == T - 1 else values[t + 1]\n"
        "        delta = rewards[t] + gamma * nv * nnt - values[t]\n"
        "        adv[t] = last = delta + gamma * lam * nnt * last\n"
        "    return adv\n"
        "def exits(*a, **k):\n"
        "    raise SystemExit(3)\n"
        "def text(*a, **k):\n"
        "    return 'x'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["--estimator", "gae", "--examples", "4"]
    stored = ["--layout", "stored_values", "--flags", "episode_starts"]
    assert cli_main(["rollout_code:cleanrl", *base, *stored, "--fold",
                     "gamma_final_value"]) == 0
    out = tmp_path / "r.json"
    assert cli_main(["rollout_code:cleanrl", *base, *stored, "--fold", "nothing",
                     "--json", str(out)]) == 1
    assert json.loads(out.read_text())["diagnosis"] == "truncation_as_termination"
    assert cli_main(["rollout_code:exits", *base]) == 1  # a verdict, not the function's 3
    assert cli_main(["rollout_code:text", *base]) == 1
    capsys.readouterr()
    for argv, name in ((["rollout_code:good", *base, "--pick", "7"], "pick"),
                       (["rollout_code:good", *base, "--pick", "nope"], "pick"),
                       (["rollout_code:cleanrl", *base, *stored, "--fold", "bogus"], "--fold"),
                       (["rollout_code:cleanrl", *base, *stored, "--fold-on",
                         "every_timeout"], "--fold"),
                       (["rollout_code:good", *base, "--fold", "nothing"], "--fold"),
                       (["rollout_code:good", *base, "--flags", "masks"], "--flags"),
                       (["rollout_code:cleanrl", *base, "--layout", "stored_values",
                         "--calls", "bogus"], "--calls")):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, (argv, err)
        assert name in err, (argv, err)


# ---------------------------------------------------------------------------------------------
# folds and stored forms, by hand


def _case():
    """Two steps, one column: step 0 timed out (V(final obs) = 3), step 1 terminated and
    timed out at once (V after it = 7, never to be read); values 1, 2; rewards 10, 20."""
    inputs = dict(rewards=np.array([[10.0], [20.0]]), values=np.array([[1.0], [2.0]]),
                  next_values=np.array([[3.0], [7.0]]),
                  terminated=np.array([[False], [True]]), truncated=np.array([[True], [True]]),
                  log_rhos=np.zeros((2, 1)))
    return Case("hand", inputs, {"gamma": 0.5, "lam": 1.0})


@pytest.mark.parametrize("fold, rewards, done", [
    (None, [10.0, 20.0], [False, True]),
    (Fold("gamma_final_value"), [10.0 + 0.5 * 3.0, 20.0], [True, True]),
    (Fold("final_value"), [13.0, 20.0], [True, True]),
    (Fold("gamma_current_value"), [10.5, 20.0], [True, True]),
    (Fold("current_value"), [11.0, 20.0], [True, True]),
    (Fold("nothing"), [10.0, 20.0], [True, True]),
    (Fold("gamma_final_value", "every_timeout"), [11.5, 20.0 + 0.5 * 7.0], [True, True]),
    (Fold("nothing", done=False), [10.0, 20.0], [False, True]),
])
def test_folds_store_what_the_rollout_loop_does(fold, rewards, done):
    r = rollout(_case(), fold)
    assert r.rewards[:, 0].tolist() == rewards
    assert r.done[:, 0].tolist() == done
    assert r.time_outs[:, 0].tolist() == [True, True]


def test_fold_names_and_strings():
    assert as_fold("bootstrap_reward") == Fold("gamma_final_value")
    assert as_fold("as_done") == Fold("nothing")
    assert as_fold("ignored") == Fold("nothing", done=False)
    assert as_fold("final_value:every_timeout:not_done") == Fold("final_value",
                                                                 "every_timeout", False)
    for bad in ("bogus", "nothing:sometimes", 3):
        with pytest.raises(conform.ConformUsageError, match="^fold"):
            as_fold(bad)
    with pytest.raises(conform.ConformUsageError, match="^fold"):
        StoredValues(fold="last_value")  # per-trajectory calls only


def _record(layout):
    """What a function in ``layout`` is called with on the hand case."""
    calls = []

    def spy(**kw):
        calls.append({k: np.asarray(v).tolist() if hasattr(v, "shape") else v
                      for k, v in kw.items()})
        n = len(kw["rewards"])
        return np.zeros((n, 1) if np.ndim(kw["rewards"]) == 2 else n)

    from offpolicy.conform.layouts import Arrays, OutputPick
    from offpolicy.conform.registry import spec_for

    layout.run(spy, _case(), spec_for("gae"), {}, Arrays(), OutputPick("advantages"))
    return calls


def test_stored_forms_by_hand():
    masks = _record(StoredValues(flags="masks", bootstrap="values_plus_one",
                                 fold="bootstrap_reward"))[0]
    assert masks["values"] == [[1.0], [2.0], [7.0]]  # the last row: the bootstrap slot
    assert masks["masks"] == [[1.0], [0.0], [0.0]]
    assert masks["bad_masks"] == [[1.0], [0.0], [1.0]]  # step 1 terminated: not "bad"
    assert masks["rewards"] == [[11.5], [20.0]]
    starts = _record(StoredValues(flags="episode_starts", fold="bootstrap_reward"))[0]
    assert starts["episode_starts"] == [[0.0], [1.0]] and starts["last_dones"] == [1.0]
    apart = _record(StoredValues(next_values=True))[0]
    assert apart["terminated"] == [[False], [True]] and apart["time_outs"] == [[True], [True]]
    assert apart["next_values"] == [[3.0], [7.0]] and apart["last_values"] == [7.0]
    indices = _record(StoredValues(flags="indices", calls="stream"))[0]
    assert indices["terminal_indices"] == [1] and indices["timeout_indices"] == [0]
    # per trajectory: [step 0] ends in a time-out (last value V(final) = 3), [step 1] in a
    # termination (0); Spinning Up's every-time-out fold hands 7 to the second
    trajectories = _record(StoredValues(calls="trajectory"))
    assert [(c["rewards"], c["last_value"]) for c in trajectories] == [([10.0], 3.0),
                                                                       ([20.0], 0.0)]
    spinning = _record(StoredValues(calls="trajectory",
                                    fold=Fold("last_value", "every_timeout")))
    assert [c["last_value"] for c in spinning] == [3.0, 7.0]


def test_every_layout_satisfies_the_public_protocol():
    for name, cls in conform.LAYOUTS.items():
        assert isinstance(cls(), conform.LayoutProtocol), name
