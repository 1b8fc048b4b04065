"""Layouts: how a library's function receives a segment, written as small declarative adapters.

A layout turns a contract-form :class:`~offpolicy.conform.cases.Case` into the keyword
arguments a function of that convention takes, and its result back into the contract's
``[T, B]`` array. What a layout cannot hold (a truncation inside the segment where the
convention has no way to say it, ``next_values[t] != values[t+1]`` where only ``values`` is
passed) is declared in its :class:`~offpolicy.conform.cases.Constraints`; those case families
are reported ``n/a`` with the reason, never ``fail``.

Functions receive inputs **by keyword**, filtered to the names their signature accepts (the
``contract`` layout alone calls positionally, as the reference's own signatures do). A thin
lambda renames or reorders when a library's names differ.

==================  ==================================================  ========================
layout              arrays                                              used by
==================  ==================================================  ========================
contract            ``[T,B]``, flags of the step itself                 offpolicy, rlax-style
done_next           ``[T,B]`` + ``last_values``/``last_dones``,         SB3, CleanRL, rl-games
                    ``dones[t]`` = done of step t-1 (episode start)
rlax                one sequence ``[T]`` per call, ``discount_t``,      rlax
                    per-step ``lambda_``, ``v_tm1``/``v_t`` or
                    ``values[T+1]``
torchrl             batch-major ``[B,T,1]`` tensors, ``done`` and       TorchRL
                    ``terminated``
puffer_rows         ``[B, T+1]`` rows, reward/done stored one column    PufferLib
                    later
single_episode_rows ``[B,T]`` rows, each one episode that terminates    TRL (token-level RLHF)
                    at its last column; no flags
q_tables            full Q tables and policies ``[T,B,A]``             Q-learning code
==================  ==================================================  ========================
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from .cases import Case, Constraints
from .registry import ConformUsageError, EstimatorSpec

__all__ = [
    "LayoutProtocol", "Layout", "Contract", "DoneNext", "StoredValues", "Rlax", "TorchRL",
    "PufferRows", "SingleEpisodeRows", "QTables", "LAYOUTS", "get_layout", "ConformUsageError",
    "ModifiedInput", "WrongReturn", "OutputPick", "Fold", "FOLD_NAMES", "FOLD_ADDS",
    "FOLD_STEPS", "as_fold", "rollout", "received", "Rollout", "Arrays",
]


# ---------------------------------------------------------------------------------------------
# arrays in and out


@dataclasses.dataclass(frozen=True)
class Arrays:
    """Converts the runner's float64 numpy arrays to the function's array type and back."""

    kind: str = "numpy"  # numpy | torch | jax
    dtype: str = "float64"

    def floats(self, x):
        return self._to_kind(np.array(x, dtype=self.dtype))  # a copy: fn may write into it

    def flags(self, x, *, as_float: bool = False):
        x = np.array(x, dtype=bool)
        return self._to_kind(x.astype(self.dtype) if as_float else x)

    def ints(self, x):
        return self._to_kind(np.array(x, dtype=np.int64))

    def _to_kind(self, x: np.ndarray):
        if self.kind == "numpy":
            return x
        if self.kind == "torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(x))
        import jax.numpy as jnp

        return jnp.asarray(x)

    @staticmethod
    def back(y) -> np.ndarray:
        """Any array-like (numpy, torch, jax, list) as a numpy array, dtype kept."""
        if hasattr(y, "detach"):  # torch
            y = y.detach().cpu().numpy()
        return np.asarray(y)


class OutputPick(NamedTuple):
    """Which contract output is checked (``name``) and where it is in what the function
    returns (``pick``: a dict key, a namedtuple field or attribute, or a tuple index;
    None: ``name`` or its singular/plural twin, else the contract's position in a tuple)."""

    name: str
    pick: str | int | None = None


class WrongReturn(TypeError):
    """What the function returned is not the checked output (a verdict on the function; with
    ``by_pick``, the caller's ``pick`` named something that is not there)."""

    def __init__(self, message: str, by_pick: bool = False):
        super().__init__(message)
        self.by_pick = by_pick


def _twins(name: str) -> tuple[str, ...]:
    return (name, name[:-1]) if name.endswith("s") else (name, name + "s")


def select_output(raw: Any, output: str | OutputPick, spec: EstimatorSpec) -> Any:
    """The checked output out of what the function returned (array, tuple, namedtuple, dict,
    object with attributes)."""
    name, pick = (output.name, output.pick) if isinstance(output, OutputPick) else (output, None)
    by_pick = pick is not None
    if raw is None or isinstance(raw, (str, bytes)):
        raise WrongReturn(f"returned {raw!r:.40}, not an array")
    if isinstance(pick, int):
        if not isinstance(raw, (tuple, list)):
            raise WrongReturn(f"returned {type(raw).__name__}, not a tuple to index with {pick}",
                              by_pick)
        if not -len(raw) <= pick < len(raw):
            raise WrongReturn(f"returned a tuple of {len(raw)}, no index {pick}", by_pick)
        return _array_like(raw[pick])
    keys = (pick,) if pick is not None else _twins(name)
    if isinstance(raw, dict):
        for key in keys:
            if key in raw:
                return _array_like(raw[key])
        raise WrongReturn(f"returned a dict without {' or '.join(map(repr, keys))} "
                          f"(keys: {sorted(map(str, raw))}); pass pick=<key>", by_pick)
    fields = getattr(raw, "_fields", None)
    if fields is not None or (not hasattr(raw, "shape") and not isinstance(raw, (list, tuple))):
        for key in keys:
            if isinstance(key, str) and hasattr(raw, key):
                return _array_like(getattr(raw, key))
        if fields is not None:  # never a silent positional guess for named fields
            raise WrongReturn(f"returned {type(raw).__name__} with fields {tuple(fields)}, none "
                              f"named {' or '.join(map(repr, keys))}; pass pick=<field or "
                              f"index>", by_pick)
        if by_pick:
            raise WrongReturn(f"returned {type(raw).__name__}, which has no {pick!r}", by_pick)
    if isinstance(raw, (tuple, list)) and not hasattr(raw, "shape"):
        if pick is not None:
            raise WrongReturn(f"returned a tuple; pass pick=<index>, not {pick!r}", by_pick)
        index = spec.outputs.index(name)
        if index < len(raw):
            return _array_like(raw[index])
        raise WrongReturn(f"returned a tuple of {len(raw)}; pass pick=<index>")
    if by_pick:
        raise WrongReturn(f"returned one {type(raw).__name__}, which has no {pick!r}", by_pick)
    return raw


def _array_like(x):
    if x is None or isinstance(x, (str, bytes)):
        raise WrongReturn(f"returned {x!r:.40} as the output, not an array")
    return x


class ModifiedInput(Exception):
    """The function wrote into one of its input arrays."""


def _snapshot(kwargs: dict) -> dict:
    return {k: Arrays.back(v).copy() for k, v in kwargs.items()
            if hasattr(v, "shape") and k != "advantages"}  # PufferLib's output buffer


def _check_unchanged(before: dict, kwargs: dict):
    for k, old in before.items():
        new = Arrays.back(kwargs[k])
        if new.shape != old.shape or not np.array_equal(new, old, equal_nan=old.dtype.kind == "f"):
            raise ModifiedInput(f"modified its input {k!r} in place")


# ---------------------------------------------------------------------------------------------
# calling with the names a function accepts


def accepted_names(fn) -> tuple[set[str] | None, set[str]]:
    """(names fn accepts by keyword, or None for **kwargs; names it requires)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins / C extensions without a signature
        return None, set()
    names, required, var_kw = set(), set(), False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
            if p.default is p.empty:
                required.add(p.name)
    return (None if var_kw else names), required


def call_with_keywords(fn, kwargs: dict):
    """``fn(**kwargs)`` with the names it accepts; ``ModifiedInput`` if it wrote into one."""
    names, _ = accepted_names(fn)
    if names is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    before = _snapshot(kwargs)
    raw = fn(**kwargs)
    _check_unchanged(before, kwargs)
    return raw


# ---------------------------------------------------------------------------------------------
# layouts


@runtime_checkable
class LayoutProtocol(Protocol):
    """What the runner needs of a layout (any object with these members is one; subclassing
    :class:`Layout` gives the defaults)."""

    @property
    def name(self) -> str: ...

    @property
    def kinds(self) -> tuple[str, ...]:
        """Estimator kinds it can express: "state", "action"."""
        ...

    @property
    def default_array(self) -> str:
        """numpy | torch | jax."""
        ...

    @property
    def folded_params(self) -> tuple:
        """Contract parameters put into the arrays, never passed."""
        ...

    def constraints_for(self, spec: EstimatorSpec, fn: Callable[..., Any]) -> Constraints:
        """What the layout cannot hold for ``spec`` and ``fn`` (families outside it: n/a)."""
        ...

    def provided(self, spec: EstimatorSpec) -> set[str]:
        """Input keywords this layout offers for ``spec``."""
        ...

    def keyword_for(self, param: str) -> str:
        """The keyword under which contract parameter ``param`` is passed."""
        ...

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        """Call ``fn`` on ``case``; the selected output as numpy ``[T, B]``."""
        ...

    def describe(self) -> str:
        ...


@dataclasses.dataclass(frozen=True)
class Layout:
    """Base: a name, what it can hold, the parameter names its functions use."""

    name = "base"
    kinds: ClassVar[tuple[str, ...]] = ("state", "action")  # estimator kinds it can express
    default_array = "numpy"
    param_names: dict = dataclasses.field(default_factory=dict, kw_only=True)  # contract -> kw
    folded_params: tuple = dataclasses.field(default=(), kw_only=True)  # put into the arrays

    def constraints(self, spec: EstimatorSpec) -> Constraints:
        return Constraints()

    def constraints_for(self, spec: EstimatorSpec, fn: Callable[..., Any]) -> Constraints:
        """What it cannot hold for ``spec`` (and, where the form depends on it, ``fn``)."""
        return self.constraints(spec)

    def with_fold(self, fold: Fold | str | dict | None) -> Layout:
        """This layout with the rollout's time-out ``fold`` (layouts that store a rollout)."""
        raise ConformUsageError(f"fold: the {self.name} layout receives its flags as they "
                                f"are; a fold is for stored_values, done_next, puffer_rows")

    def provided(self, spec: EstimatorSpec) -> set[str]:
        """Input keywords this layout offers for ``spec``."""
        raise NotImplementedError

    def keyword_for(self, param: str) -> str:
        return self.param_names.get(param, param)

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        """Call ``fn`` on ``case``; return the selected output as numpy ``[T, B]`` (its dtype
        kept). ``params`` are the keyword parameters to pass (already renamed)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


FOLD_ADDS = ("gamma_final_value", "final_value", "gamma_current_value", "current_value",
             "nothing", "last_value")
FOLD_STEPS = ("timeout_not_terminated", "every_timeout")


@dataclasses.dataclass(frozen=True)
class Fold:
    """What a rollout loop does with a time-out (a time-limit truncation) before the estimator
    sees the data: ``add`` is added to the time-out step's reward — ``gamma_final_value``
    (γ·V(final observation): SB3), ``final_value`` (V(final obs), no γ),
    ``gamma_current_value`` (γ·V(s_t): rsl_rl), ``current_value`` (V(s_t)), ``nothing``
    (CleanRL) — or, for per-trajectory calls, ``last_value`` (V(final obs) handed to the
    function as the trajectory's last value, no reward change: Spinning Up's ``finish_path``);
    ``on`` says on which steps: ``timeout_not_terminated`` or ``every_timeout`` (the time-out
    flag alone, so a step both terminated and timed out is folded too; with ``last_value``
    the segment's end counts as a time-out, as in a loop that checks "time-out or epoch end"
    before "terminated"); ``done``: the rollout
    stores the time-out step as done (False: it stores terminations only, PufferLib's trainer).
    """

    add: str = "gamma_final_value"
    on: str = "timeout_not_terminated"
    done: bool = True

    def __post_init__(self):
        if self.add not in FOLD_ADDS:
            raise ConformUsageError(f"fold: add must be one of {', '.join(FOLD_ADDS)}; "
                                    f"got {self.add!r}")
        if self.on not in FOLD_STEPS:
            raise ConformUsageError(f"fold: on must be one of {', '.join(FOLD_STEPS)}; "
                                    f"got {self.on!r}")
        if not isinstance(self.done, bool):
            raise ConformUsageError(f"fold: done must be True or False, got {self.done!r}")

    def describe(self) -> str:
        parts = [self.add] + ([] if self.on == "timeout_not_terminated" else [self.on]) + \
            ([] if self.done else ["not_done"])
        return ":".join(parts)


#: the historical names of folds (``truncation_fold=``), by what they do
FOLD_NAMES = {
    "bootstrap_reward": Fold("gamma_final_value"),  # SB3
    "as_done": Fold("nothing"),  # CleanRL
    "ignored": Fold("nothing", done=False),  # PufferLib's trainer
    "current_value_reward": Fold("gamma_current_value"),  # rsl_rl
}
TRUNCATION_FOLDS = (None, *FOLD_NAMES)


def as_fold(fold: Fold | str | dict | None) -> Fold | None:
    """A :class:`Fold` from a Fold, None, a name of :data:`FOLD_NAMES`, a dict of Fold's
    fields, or ``"add[:every_timeout][:not_done]"``; ``ConformUsageError`` naming ``fold``."""
    if fold is None or isinstance(fold, Fold):
        return fold
    if isinstance(fold, dict):
        try:
            return Fold(**fold)
        except TypeError as e:
            raise ConformUsageError(f"fold: {e}") from None
    if isinstance(fold, str):
        if fold in FOLD_NAMES:
            return FOLD_NAMES[fold]
        add, *rest = fold.split(":")
        on = "every_timeout" if "every_timeout" in rest else "timeout_not_terminated"
        unknown = set(rest) - {"every_timeout", "timeout_not_terminated", "not_done"}
        if unknown or add not in FOLD_ADDS:
            raise ConformUsageError(
                f"fold: expected one of {', '.join(FOLD_NAMES)} or ADD[:every_timeout]"
                f"[:not_done] with ADD in {', '.join(FOLD_ADDS)}; got {fold!r}")
        return Fold(add, on, "not_done" not in rest)
    raise ConformUsageError(f"fold: expected a Fold, a name or None, got {type(fold).__name__}")


class Rollout(NamedTuple):
    """A segment as a rollout loop stores it (every array ``[T, B]``)."""

    rewards: np.ndarray  # with the fold's additions
    done: np.ndarray  # the stored done flag (terminations, and time-outs the fold marks done)
    terminated: np.ndarray  # the environment's termination flag
    time_outs: np.ndarray  # the environment's time-out flag (terminated or not)
    folded: np.ndarray  # the steps the fold added to


def rollout(case: Case, fold: Fold | None) -> Rollout:
    """What a rollout loop stores under ``fold`` (None: nothing is folded; a time-out is
    stored as a time-out flag only, and the segment's last step bootstraps from its last
    value)."""
    x = case.inputs
    term, trunc = x["terminated"], x["truncated"]
    rewards = x["rewards"].copy()
    if fold is None or fold.add == "last_value":
        folded = np.zeros_like(term) if fold is None else (
            trunc & ~term if fold.on == "timeout_not_terminated" else trunc.copy())
        done = term | (trunc if fold is not None and fold.done else False)
        return Rollout(rewards, done, term.copy(), trunc.copy(), folded)
    folded = trunc & ~term if fold.on == "timeout_not_terminated" else trunc.copy()
    gamma = case.params.get("gamma", 1.0)
    gamma = gamma if np.ndim(gamma) == 0 else np.asarray(gamma)
    final = np.where(folded, x["next_values"], 0.0)  # never read elsewhere: NaN stays out
    add = {"gamma_final_value": gamma * final, "final_value": final,
           "gamma_current_value": gamma * x["values"], "current_value": x["values"],
           "nothing": np.zeros_like(rewards)}[fold.add]
    rewards = rewards + np.where(folded, add, 0.0)
    done = term | trunc if fold.done else term.copy()
    return Rollout(rewards, done, term.copy(), trunc.copy(), folded)


def received(case: Case, fold: Fold | None) -> Case | None:
    """The contract case a function of a rollout layout effectively receives under ``fold``:
    the fold's additions in the rewards, a time-out the rollout stores as done as a
    termination, one it does not store dropped (None: the case itself, nothing folded). A bug
    *in the function* behaves on this case as the catalogue's patch does."""
    if fold is None or fold.add == "last_value":
        return None
    r = rollout(case, fold)
    x = case.inputs
    # a time-out not stored as done: inside, the episode reads on into values[t+1]; at the
    # segment's end, it is the end's bootstrap
    dropped = x["truncated"] & ~r.done
    truncated = np.zeros_like(dropped)
    truncated[-1] = dropped[-1]
    dropped[-1] = False
    following = np.concatenate([x["values"][1:], x["values"][:1]], axis=0)
    return case.replace_inputs(rewards=r.rewards, terminated=r.done.copy(), truncated=truncated,
                               next_values=np.where(dropped, following, x["next_values"]))


def _done_flags(case: Case, fold):
    """The done flags a rollout loop stores under ``fold``, and the rewards it stores."""
    r = rollout(case, as_fold(fold))
    return r.done, r.rewards


@dataclasses.dataclass(frozen=True)
class Contract(Layout):
    """The contract's own signature: ``fn(*inputs, **params)`` exactly as ``estimators.numpy``."""

    name = "contract"
    batched: bool | str = "auto"  # False: fn takes one stream [T] (the layout loops over
    # columns); "auto": decided by a probe before the check (see runner._probe_contract)
    flags: str = "auto"  # "bool" or "float" (0/1) terminated/truncated; "auto": probed

    def describe(self) -> str:
        options = ([] if self.batched in (True, "auto") else ["batched=False"]) + \
            ([f"flags={self.flags!r}"] if self.flags == "float" else [])
        return f"{self.name}({', '.join(options)})" if options else self.name

    def __post_init__(self):
        if self.batched not in (True, False, "auto"):
            raise ConformUsageError(f"batched: expected True, False or 'auto', "
                                    f"got {self.batched!r}")
        if self.flags not in ("bool", "float", "auto"):
            raise ConformUsageError(f"flags: expected 'bool', 'float' or 'auto', "
                                    f"got {self.flags!r}")

    def provided(self, spec: EstimatorSpec) -> set[str]:
        return set(spec.inputs)

    def _call(self, fn, inputs, spec, params, arrays, output):
        as_float = self.flags == "float"
        args = [arrays.flags(inputs[n], as_float=as_float) if n in ("terminated", "truncated")
                else arrays.floats(inputs[n]) for n in spec.inputs]
        named = dict(zip(spec.inputs, args, strict=True))  # messages name inputs by name
        before = _snapshot(named)
        raw = fn(*args, **params)
        _check_unchanged(before, named)
        return Arrays.back(select_output(raw, output, spec))

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        if self.batched:
            return self._call(fn, case.inputs, spec, params, arrays, output)
        columns = []
        for b in range(case.B):
            y = self._call(fn, {k: v[:, b] for k, v in case.inputs.items()}, spec, params,
                           arrays, output)
            if y.shape != (case.T,):
                raise WrongReturn(f"returned shape {y.shape} for one stream, expected ({case.T},)")
            columns.append(y)
        return np.stack(columns, axis=1)


_CONSISTENT = "this layout reads V(s_{t+1}) from values[t+1]: it cannot hold next_values[t] " \
              "!= values[t+1]"


@dataclasses.dataclass(frozen=True)
class _RolloutFold(Layout):
    """What the layouts that store a rollout the way a trainer does share: V(s_{t+1}) is the
    next stored value, and ``truncation_fold`` says what the rollout loop did with a
    time-limit truncation (a :class:`Fold`, one of :data:`FOLD_NAMES`, or None; see
    :class:`DoneNext`)."""

    kinds = ("state",)
    truncation_fold: Fold | str | None = None

    def __post_init__(self):
        if self.truncation_fold is not None and not isinstance(self.truncation_fold, Fold) \
                and self.truncation_fold not in FOLD_NAMES:
            raise ConformUsageError(f"truncation_fold: expected a Fold or one of "
                                    f"{TRUNCATION_FOLDS}, got {self.truncation_fold!r}")
        if as_fold(self.truncation_fold) is not None and \
                as_fold(self.truncation_fold).add == "last_value":
            raise ConformUsageError("truncation_fold: 'last_value' is for per-trajectory calls "
                                    "(StoredValues(calls='trajectory'))")

    @property
    def fold(self) -> Fold | None:
        return as_fold(self.truncation_fold)

    def received(self, case: Case) -> Case | None:
        """The contract case the function effectively receives (see :func:`received`)."""
        return received(case, self.fold)

    def with_fold(self, fold: Fold | str | dict | None) -> Layout:
        return dataclasses.replace(self, truncation_fold=as_fold(fold))

    def describe(self) -> str:
        f = self.truncation_fold
        return f"{self.name}(truncation_fold={f.describe() if isinstance(f, Fold) else f})"

    def constraints(self, spec: EstimatorSpec) -> Constraints:
        return Constraints(truncations_inside=self.truncation_fold is not None,
                           inconsistent_next_values=_CONSISTENT,
                           nan_slot="no slot holds the value after a termination inside "
                                    "the segment (values[t+1] is the next episode's start)")


@dataclasses.dataclass(frozen=True)
class DoneNext(_RolloutFold):
    """SB3 / CleanRL / rl-games: ``dones[t]`` is the done of step ``t-1`` (an episode-start
    flag), ``last_values``/``last_dones`` close the segment; V(s_{t+1}) is ``values[t+1]``.

    ``truncation_fold`` says what the rollout loop does with a time-limit truncation:
    ``None`` (it cannot say; truncations inside are n/a), ``"bootstrap_reward"`` (SB3: adds
    ``gamma V(final obs)`` to the reward and flags done), ``"as_done"`` (CleanRL: flags done,
    folds nothing), ``"ignored"`` (PufferLib's trainer: stores terminations only).
    """

    name = "done_next"

    def provided(self, spec: EstimatorSpec) -> set[str]:
        return {"rewards", "values", "dones", "last_values", "last_dones", "log_rhos"}

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        x = case.inputs
        done, rewards = _done_flags(case, self.truncation_fold)
        starts = np.vstack([np.zeros_like(done[:1]), done[:-1]])
        kwargs = dict(rewards=arrays.floats(rewards), values=arrays.floats(x["values"]),
                      dones=arrays.flags(starts, as_float=True),
                      last_values=arrays.floats(x["next_values"][-1]),
                      last_dones=arrays.flags(done[-1], as_float=True),
                      log_rhos=arrays.floats(x["log_rhos"]))
        raw = call_with_keywords(fn, {**kwargs, **params})
        return Arrays.back(select_output(raw, output, spec))


def _kappa(case: Case) -> np.ndarray:
    x = case.inputs
    kappa = ~(x["terminated"] | x["truncated"])
    kappa[-1] = False
    return kappa


@dataclasses.dataclass(frozen=True)
class Rlax(Layout):
    """rlax: one sequence ``[T]`` per call (the layout loops over the batch), ``discount_t =
    gamma (1 - terminated_t)``, per-step ``lambda_`` (``lam``, 0 where the trace is cut), and
    either ``v_tm1``/``v_t`` or one ``values`` array ``[T+1]``.

    ``values_form="values"`` (functions taking ``values[T+1]``) cannot hold a truncation
    inside the segment nor ``next_values[t] != values[t+1]``: the bootstrap after step t and the
    next state's value are one slot. ``"auto"`` picks it when the function takes ``values``.
    Q side: ``q_tm1, a_tm1, q_t, a_t, r_t, discount_t, pi_t, mu_t, lambda_`` (the tables after
    step t are ``q_t[t]``, ``pi_t[t]``, ``mu_t[t]`` with the next action ``a_t[t]``).
    """

    name = "rlax"
    default_array = "numpy"
    values_form: str = "auto"  # auto | v_t | values
    param_names: dict = dataclasses.field(default_factory=lambda: {
        "rho_clip": "clip_rho_threshold", "pg_rho_clip": "clip_pg_rho_threshold"}, kw_only=True)
    folded_params: tuple = dataclasses.field(default=("gamma", "lam"), kw_only=True)

    def _form(self, fn) -> str:
        if self.values_form != "auto":
            return self.values_form
        names, _ = accepted_names(fn)
        return "values" if names is not None and "values" in names and "v_t" not in names \
            else "v_t"

    def constraints_for(self, spec: EstimatorSpec, fn: Callable[..., Any]) -> Constraints:
        if spec.kind == "action":  # one q_t row is both the bootstrap and Q(s_{t+1}, .)
            return Constraints(inconsistent_next_values=(
                "rlax's Q side reads the bootstrap table of s'_t and Q(s_{t+1}, .) from one "
                "row of q_t"))
        if spec.kind == "state" and self._form(fn) == "values":
            return Constraints(truncations_inside=False, inconsistent_next_values=_CONSISTENT,
                               nan_slot="values[t+1] after a termination is the next "
                                        "episode's start, not the terminal value")
        return Constraints()

    def provided(self, spec: EstimatorSpec) -> set[str]:
        if spec.kind == "state":
            return {"r_t", "discount_t", "v_tm1", "v_t", "values", "lambda_", "rho_tm1",
                    "log_rhos"}
        return {"q_tm1", "a_tm1", "q_t", "a_t", "r_t", "discount_t", "pi_t", "mu_t", "lambda_"}

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        x, w = case.inputs, case.world
        gamma, lam = case.params["gamma"], case.params.get("lam", 1.0)
        discount = gamma * (1.0 - x["terminated"])
        lambdas = lam * _kappa(case)
        columns = []
        for b in range(case.B):
            if spec.kind == "state":
                kw = dict(r_t=x["rewards"][:, b], discount_t=discount[:, b],
                          v_tm1=x["values"][:, b], v_t=x["next_values"][:, b],
                          values=np.append(x["values"][:, b], x["next_values"][-1, b]),
                          lambda_=lambdas[:, b], rho_tm1=np.exp(x["log_rhos"][:, b]),
                          log_rhos=x["log_rhos"][:, b])
                kw = {k: arrays.floats(v) for k, v in kw.items()}
            else:
                kw = dict(q_tm1=arrays.floats(w["q_values"][:, b]),
                          a_tm1=arrays.ints(w["actions"][:, b]),
                          q_t=arrays.floats(w["next_q_values"][:, b]),
                          a_t=arrays.ints(w["next_actions"][:, b]),
                          r_t=arrays.floats(x["rewards"][:, b]),
                          discount_t=arrays.floats(discount[:, b]),
                          pi_t=arrays.floats(w["next_target_probs"][:, b]),
                          mu_t=arrays.floats(w["next_behaviour_probs"][:, b]),
                          lambda_=arrays.floats(lambdas[:, b]))
            raw = call_with_keywords(fn, {**kw, **params})
            col = Arrays.back(select_output(raw, output, spec))
            if col.shape != (case.T,):
                raise WrongReturn(f"returned shape {col.shape} for one sequence, expected "
                                f"({case.T},)")
            columns.append(col)
        return np.stack(columns, axis=1)


@dataclasses.dataclass(frozen=True)
class TorchRL(Layout):
    """TorchRL's functional estimators: batch-major ``[B, T, 1]`` tensors with ``time_dim=-2``;
    ``done = terminated | truncated`` and ``terminated``; ``log_pi``/``log_mu`` for ratios."""

    name = "torchrl"
    kinds = ("state",)
    default_array = "torch"
    param_names: dict = dataclasses.field(default_factory=lambda: {
        "lam": "lmbda", "rho_clip": "rho_thresh", "c_clip": "c_thresh"}, kw_only=True)

    def provided(self, spec: EstimatorSpec) -> set[str]:
        return {"state_value", "next_state_value", "reward", "done", "terminated", "log_pi",
                "log_mu"}

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        x = case.inputs
        bt1 = lambda a: np.ascontiguousarray(a.T[..., None])  # noqa: E731  [T,B] -> [B,T,1]
        log_mu = case.world["log_mu"]
        kw = dict(state_value=arrays.floats(bt1(x["values"])),
                  next_state_value=arrays.floats(bt1(x["next_values"])),
                  reward=arrays.floats(bt1(x["rewards"])),
                  done=arrays.flags(bt1(x["terminated"] | x["truncated"])),
                  terminated=arrays.flags(bt1(x["terminated"])),
                  log_pi=arrays.floats(bt1(log_mu + x["log_rhos"])),
                  log_mu=arrays.floats(bt1(log_mu)))
        raw = call_with_keywords(fn, {**kw, **params})
        y = Arrays.back(select_output(raw, output, spec))
        if y.shape != (case.B, case.T, 1):
            raise WrongReturn(f"returned shape {y.shape}, expected {(case.B, case.T, 1)}")
        return y[..., 0].T


@dataclasses.dataclass(frozen=True)
class PufferRows(_RolloutFold):
    """PufferLib's rows ``[B, T+1]``: column j holds ``V(o_j)`` and the ratio of the action
    taken at ``o_j``; the reward and done *returned with* ``o_j`` (for the action at column
    j-1). ``advantages`` is a zero buffer the kernel may fill in place (read back when the
    function returns None); the result is column j for the action at column j.
    ``truncation_fold`` as in :class:`DoneNext` (PufferLib's trainer: ``"ignored"``)."""

    name = "puffer_rows"

    def provided(self, spec: EstimatorSpec) -> set[str]:
        return {"values", "rewards", "dones", "importance", "advantages"}

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        x = case.inputs
        done, rewards = _done_flags(case, self.truncation_fold)
        B, T = case.B, case.T
        z = np.zeros((B, 1))
        kw = dict(values=np.hstack([x["values"].T, x["next_values"][-1:].T]),
                  rewards=np.hstack([z, rewards.T]),
                  dones=np.hstack([z, done.T.astype(float)]),
                  importance=np.hstack([np.exp(x["log_rhos"]).T, z + 1.0]))
        kw = {k: arrays.floats(v) for k, v in kw.items()}
        buffer = arrays.floats(np.zeros((B, T + 1)))
        raw = call_with_keywords(fn, {**kw, "advantages": buffer, **params})
        y = Arrays.back(buffer if raw is None else select_output(raw, output, spec))
        if y.shape != (B, T + 1):
            raise WrongReturn(f"returned shape {y.shape}, expected rows {(B, T + 1)}")
        return y[:, :T].T


@dataclasses.dataclass(frozen=True)
class SingleEpisodeRows(Layout):
    """Token-level RLHF rows (TRL's PPO): ``rewards``, ``values`` ``[B, T]``, each row one
    episode that terminates after its last column; no flags."""

    name = "single_episode_rows"
    kinds = ("state",)

    def constraints(self, spec: EstimatorSpec) -> Constraints:
        return Constraints(flags_inside=False, truncations_inside=False, terminal_last=True,
                           inconsistent_next_values=_CONSISTENT,
                           nan_slot="there is no value after the terminal token")

    def provided(self, spec: EstimatorSpec) -> set[str]:
        return {"rewards", "values", "log_rhos"}

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        x = case.inputs
        kw = dict(rewards=arrays.floats(x["rewards"].T), values=arrays.floats(x["values"].T),
                  log_rhos=arrays.floats(x["log_rhos"].T))
        raw = call_with_keywords(fn, {**kw, **params})
        y = Arrays.back(select_output(raw, output, spec))
        if y.shape != (case.B, case.T):
            raise WrongReturn(f"returned shape {y.shape}, expected rows {(case.B, case.T)}")
        return y.T


@dataclasses.dataclass(frozen=True)
class QTables(Layout):
    """Full tables, time-major: ``q_values``/``next_q_values`` ``[T,B,A]`` (Q(s_t,.) and
    Q(s'_t,.)), ``actions``/``next_actions`` ``[T,B]``, ``target_probs``/``next_target_probs``,
    ``behaviour_probs``/``next_behaviour_probs`` ``[T,B,A]``, ``rewards``, ``terminated``,
    ``truncated``."""

    name = "q_tables"
    kinds = ("action",)

    def constraints(self, spec: EstimatorSpec) -> Constraints:
        return Constraints(inconsistent_next_values=(
            "the tables after a step that continues are those of s_{t+1}: a function may read "
            "Q(s_{t+1}, a_{t+1}) from either"))

    def provided(self, spec: EstimatorSpec) -> set[str]:
        return {"rewards", "q_values", "next_q_values", "actions", "next_actions",
                "target_probs", "next_target_probs", "behaviour_probs",
                "next_behaviour_probs", "terminated", "truncated"}

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        x, w = case.inputs, case.world
        kw = {k: arrays.floats(v) for k, v in w.items() if k not in ("actions", "next_actions")}
        kw.update(actions=arrays.ints(w["actions"]), next_actions=arrays.ints(w["next_actions"]),
                  rewards=arrays.floats(x["rewards"]),
                  terminated=arrays.flags(x["terminated"]),
                  truncated=arrays.flags(x["truncated"]))
        raw = call_with_keywords(fn, {**kw, **params})
        return Arrays.back(select_output(raw, output, spec))


_FLAG_FORMS = ("terminated_timeouts", "dones", "masks", "episode_starts", "indices")
_CALLS = ("segment", "stream", "trajectory")
_BOOTSTRAPS = ("last_values", "values_plus_one")


@dataclasses.dataclass(frozen=True)
class StoredValues(Layout):
    """A rollout buffer as trainers store it: ``values[t]`` = V(s_t) of each stored step, and
    V(s_{t+1}) read from ``values[t+1]``, with one bootstrap value per segment end (and, with
    ``calls="trajectory"``, per finished trajectory).

    ``flags`` — how terminations and time-outs reach the function (every form gets
    ``rewards``, ``values`` and the bootstrap as ``last_values``, ``last_value`` or
    ``next_value``):

    * ``"terminated_timeouts"``: per-step ``terminated`` (also ``terminations``,
      ``terminals``) and ``time_outs`` (also ``timeouts``, ``truncated``, ``truncations``)
      kept apart, plus ``dones`` (either);
    * ``"dones"``: one per-step ``dones`` flag: the steps the rollout stores as done;
    * ``"masks"``: pytorch-a2c-ppo-acktr's ``masks`` and ``bad_masks`` ``[T+1, B]``
      (``masks[t+1] = 0`` after any done of step t, ``bad_masks[t+1] = 0`` after a time-out
      that did not terminate, as gym's ``TimeLimit.truncated``; with a fold ``on`` every
      time-out, after every step at the limit, as that repository's ``TimeLimitMask``);
    * ``"episode_starts"``: SB3/CleanRL's ``episode_starts`` (also ``dones``) ``[T, B]``, the
      done of step t-1, with ``last_dones`` (also ``next_done``) ``[B]`` for the last step;
    * ``"indices"``: ``terminal_indices`` and ``timeout_indices``: the steps as index lists
      (``[K, 2]`` rows ``(t, b)``; ``[K]`` step indices with ``calls="stream"``).

    ``calls``: ``"segment"`` (one call, ``[T, B]``), ``"stream"`` (one call per column,
    ``[T]`` arrays and a scalar ``last_value``/``last_values``), ``"trajectory"`` (one call
    per finished trajectory and per unfinished piece at the segment's end: ``rewards``,
    ``values`` ``[L]`` and the scalar ``last_value``: 0 after a termination, V(final
    observation) after a time-out, the bootstrap value at the segment's end; no flags).
    ``bootstrap``: ``"last_values"`` (a separate ``[B]`` array) or ``"values_plus_one"``
    (``values`` has ``T+1`` rows, the last the bootstrap). ``next_values=True``: the per-step
    form: ``next_values[t]`` = V(s'_t) is passed too (the value of the observation after
    step t, also after a time-out), so inconsistent critics and NaN after a termination can
    be checked. ``fold``: what the rollout loop did with time-outs (:class:`Fold`, a name of
    :data:`FOLD_NAMES`, or None).

    What it cannot receive is n/a: ``next_values[t] != values[t+1]`` without
    ``next_values``; a time-out before the last step where nothing carries V(final
    observation) (no fold, no ``next_values`` with separate time-out flags, not per
    trajectory).
    """

    name = "stored_values"
    kinds = ("state",)
    flags: str = "terminated_timeouts"
    calls: str = "segment"
    bootstrap: str = "last_values"
    next_values: bool = False
    fold: Fold | None = None  # also a name of FOLD_NAMES or "add[:every_timeout][:not_done]"

    def __post_init__(self):
        for field, value, allowed in (("flags", self.flags, _FLAG_FORMS),
                                      ("calls", self.calls, _CALLS),
                                      ("bootstrap", self.bootstrap, _BOOTSTRAPS)):
            if value not in allowed:
                raise ConformUsageError(f"{field}: expected one of {', '.join(allowed)}, "
                                        f"got {value!r}")
        if not isinstance(self.next_values, bool):
            raise ConformUsageError(f"next_values: expected True or False, "
                                    f"got {self.next_values!r}")
        fold = as_fold(self.fold)
        object.__setattr__(self, "fold", fold)
        if fold is not None and fold.add == "last_value" and self.calls != "trajectory":
            raise ConformUsageError("fold: add='last_value' needs calls='trajectory' (a "
                                    "function called once per trajectory with its last value)")

    def with_fold(self, fold: Fold | str | dict | None) -> Layout:
        return dataclasses.replace(self, fold=as_fold(fold))

    def received(self, case: Case) -> Case | None:
        """The contract case the function effectively receives (see :func:`received`)."""
        return received(case, self.fold)

    def describe(self) -> str:
        default = StoredValues()
        options = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if f.name in ("flags", "calls", "bootstrap", "next_values")
                   and getattr(self, f.name) != getattr(default, f.name)]
        if self.fold is not None:
            options.append(f"fold={self.fold.describe()}")
        return f"{self.name}({', '.join(options)})" if options else self.name

    def _carries_timeouts(self) -> bool:
        """Whether a time-out before the segment's end can be said (and its V(final obs)
        received) in this form."""
        if self.fold is not None or self.calls == "trajectory":
            return True
        return self.next_values and self.flags != "dones"

    def constraints(self, spec: EstimatorSpec) -> Constraints:
        return Constraints(
            truncations_inside=self._carries_timeouts(),
            inconsistent_next_values=None if self.next_values else _CONSISTENT,
            nan_slot=None if self.next_values else (
                "no slot holds the value after a termination inside the segment (values[t+1] "
                "is the next episode's start)"))

    def provided(self, spec: EstimatorSpec) -> set[str]:
        names = {"rewards", "values", "last_values", "last_value", "next_value", "log_rhos"}
        if self.next_values:
            names.add("next_values")
        if self.calls == "trajectory":
            return names
        names |= {
            "terminated_timeouts": {"terminated", "terminations", "terminals", "time_outs",
                                    "timeouts", "truncated", "truncations", "dones"},
            "dones": {"dones"},
            "masks": {"masks", "bad_masks"},
            "episode_starts": {"episode_starts", "dones", "last_dones", "next_done"},
            "indices": {"terminal_indices", "timeout_indices"},
        }[self.flags]
        return names

    # the arrays of one call: every input [T, B] (or [T] for one stream)
    def _keywords(self, r: Rollout, x: dict, last_values, arrays: Arrays) -> dict:
        values = x["values"]
        if self.bootstrap == "values_plus_one":
            values = np.concatenate([values, np.asarray(last_values)[None]], axis=0)
        kw = dict(rewards=arrays.floats(r.rewards), values=arrays.floats(values),
                  last_values=arrays.floats(last_values), last_value=arrays.floats(last_values),
                  next_value=arrays.floats(last_values), log_rhos=arrays.floats(x["log_rhos"]))
        if self.next_values:
            kw["next_values"] = arrays.floats(x["next_values"])
        if self.flags == "terminated_timeouts":
            terminal = r.done & ~(r.time_outs & ~r.terminated) if self.fold is None else r.done
            # a folded time-out the rollout stores as done reads as a terminal step
            for k in ("terminated", "terminations", "terminals"):
                kw[k] = arrays.flags(terminal)
            for k in ("time_outs", "timeouts", "truncated", "truncations"):
                kw[k] = arrays.flags(r.time_outs)
            kw["dones"] = arrays.flags(terminal | r.time_outs)
        elif self.flags == "dones":
            kw["dones"] = arrays.flags(r.done)
        elif self.flags == "masks":
            ones = np.ones_like(r.done[:1], dtype=float)
            any_done = r.done | (r.time_outs if self.fold is None else False)
            kw["masks"] = arrays.floats(np.concatenate([ones, 1.0 - any_done], axis=0))
            # bad_masks as gym's TimeLimit sets it: a time-out where the episode did not end
            # on its own (TimeLimit.truncated = not done); with a fold on every time-out, every
            # step at the limit, terminal or not (pytorch-a2c-ppo-acktr's TimeLimitMask marks
            # `done and elapsed == max_episode_steps`)
            every = self.fold is not None and self.fold.on == "every_timeout"
            kw["bad_masks"] = arrays.floats(np.concatenate(
                [ones, 1.0 - (r.time_outs if every else r.time_outs & ~r.terminated)], axis=0))
        elif self.flags == "episode_starts":
            starts = np.concatenate([np.zeros_like(r.done[:1]), r.done[:-1]], axis=0)
            kw["episode_starts"] = kw["dones"] = arrays.flags(starts, as_float=True)
            kw["last_dones"] = kw["next_done"] = arrays.flags(r.done[-1], as_float=True)
        else:
            only_timeout = r.time_outs & ~r.done
            kw["terminal_indices"] = arrays.ints(np.argwhere(r.done).reshape(-1, r.done.ndim))
            kw["timeout_indices"] = arrays.ints(
                np.argwhere(only_timeout if self.fold is None else r.time_outs & ~r.done)
                .reshape(-1, r.done.ndim))
            if r.done.ndim == 1:
                kw["terminal_indices"] = arrays.ints(np.flatnonzero(r.done))
                kw["timeout_indices"] = arrays.ints(np.flatnonzero(only_timeout))
        return kw

    def run(self, fn: Callable[..., Any], case: Case, spec: EstimatorSpec, params: dict,
            arrays: Arrays, output: str | OutputPick) -> np.ndarray:
        x, r = case.inputs, rollout(case, self.fold)
        last = x["next_values"][-1]
        if self.calls == "segment":
            kw = self._keywords(r, x, last, arrays)
            y = Arrays.back(select_output(call_with_keywords(fn, {**kw, **params}), output,
                                          spec))
            if self.bootstrap == "values_plus_one" and y.shape == (case.T + 1, case.B):
                y = y[:-1]  # a result in the values' shape: its last row is no step
            return y
        columns = []
        for b in range(case.B):
            rb = Rollout(*(a[:, b] for a in r))
            xb = {k: v[:, b] for k, v in x.items()}
            if self.calls == "stream":
                kw = self._keywords(rb, xb, last[b], arrays)
                y = Arrays.back(select_output(call_with_keywords(fn, {**kw, **params}),
                                              output, spec))
                if self.bootstrap == "values_plus_one" and y.shape == (case.T + 1,):
                    y = y[:-1]
                if y.shape != (case.T,):
                    raise WrongReturn(f"returned shape {y.shape} for one stream, expected "
                                    f"({case.T},)")
                columns.append(y)
            else:
                columns.append(self._trajectories(fn, rb, xb, spec, params, arrays, output))
        return np.stack(columns, axis=1)

    def _trajectories(self, fn, r: Rollout, x: dict, spec, params, arrays, output):
        """One column, one call per trajectory: split after every step stored as done."""
        fold = self.fold
        ends = r.done | (r.time_outs if fold is None else False)
        ends[-1] = True
        out, start = [], 0
        # Fold("last_value", "every_timeout"): the loop checks 'time-out or segment end' before
        # 'terminated' (Spinning Up's finish_path call), so both bootstrap even where the
        # episode terminated
        timeout_first = fold is not None and fold.add == "last_value" and \
            fold.on == "every_timeout"
        for end in np.flatnonzero(ends):
            if timeout_first and (r.time_outs[end] or end == len(ends) - 1):
                last = x["next_values"][end]
            elif r.terminated[end]:
                last = 0.0  # a terminal state has value 0
            elif r.time_outs[end] and (fold is None or fold.add == "last_value"):
                last = x["next_values"][end]  # V(final observation)
            elif r.done[end]:
                last = 0.0  # the fold put what it adds into the reward
            else:
                last = x["next_values"][end]  # the segment's end: bootstrap
            piece = slice(start, end + 1)
            values = x["values"][piece]
            if self.bootstrap == "values_plus_one":
                values = np.append(values, last)
            kw = dict(rewards=arrays.floats(r.rewards[piece]), values=arrays.floats(values),
                      last_value=arrays.floats(last), last_values=arrays.floats(last),
                      next_value=arrays.floats(last), log_rhos=arrays.floats(x["log_rhos"][piece]))
            if self.next_values:
                kw["next_values"] = arrays.floats(x["next_values"][piece])
            y = Arrays.back(select_output(call_with_keywords(fn, {**kw, **params}), output,
                                          spec))
            n = end + 1 - start
            if self.bootstrap == "values_plus_one" and y.shape == (n + 1,):
                y = y[:-1]
            if y.shape != (n,):
                raise WrongReturn(f"returned shape {y.shape} for a trajectory of {n} steps, "
                                f"expected ({n},)")
            out.append(y)
            start = end + 1
        return np.concatenate(out)


LAYOUTS = {cls.name: cls for cls in (Contract, DoneNext, StoredValues, Rlax, TorchRL,
                                     PufferRows, SingleEpisodeRows, QTables)}


def get_layout(layout) -> LayoutProtocol:
    """A layout instance from a name or an instance; ``ConformUsageError`` naming ``layout``."""
    if isinstance(layout, (Layout, LayoutProtocol)):
        return layout
    if isinstance(layout, str) and layout in LAYOUTS:
        return LAYOUTS[layout]()
    raise ConformUsageError(f"layout: unknown {layout!r}; known: {', '.join(LAYOUTS)}")
