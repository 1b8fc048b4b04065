"""The torch backend: the estimators of ``estimators.numpy``, batched, on any device, with autograd.

Same functions, arguments and conventions as the numpy reference (see its module docstring and
docs/DESIGN.md section 2). Differences:

* outputs keep the inputs' floating dtype (the promotion of the float inputs; integer or bool
  inputs give ``torch.get_default_dtype()``) and device; numpy arrays and python lists are
  converted with ``torch.as_tensor`` onto the device of the first tensor argument;
* gradients flow to rewards, values, next_values, q_taken, next_expected_q, log_rhos, traces,
  target_probs_taken, reward_mean and reward_std wherever the output depends on them (through
  ``min`` clips the gradient is that of the selected branch); entries that are never read
  (``next_values`` under ``terminated``) get a zero gradient, even when they hold NaN;
* the two recurrences over T (``y_t = a_t + c_t y_{t+1}``) run as a scan in O(log T) or
  O(sqrt T) torch calls, chosen by size (``_scan_form``: a loop, Hillis-Steele doubling, or a
  chunked two-level scan); the windowed estimators loop over the window offset k (vectorised
  over T and B); no operation writes into a tensor in place. A scan multiplies trace factors
  together, so where a factor may exceed 1 (per-decision IS, ``q_trace``, ``c_clip > 1``) the
  largest factor bounds how many may be multiplied (one reduction), which shortens the
  chunks, down to the loop where even two could overflow;
* ``gamma`` and ``lam`` may be per-step tensors (or numpy arrays) broadcastable to the rewards'
  shape (see ``estimators.numpy``); a tensor ``gamma``/``lam`` (also 0-d) keeps autograd, so
  gradients flow to it. They are cast to the compute dtype and do not take part in choosing it;
* a log-ratio whose ``exp`` overflows the compute dtype (above ~709.78 in float64, ~88.72 in
  float32) raises ``ValueError`` naming ``log_rhos`` where the ratio is read unclipped (as in
  the reference); where it is clipped or never read the output and the gradients stay finite
  (``exp`` is evaluated on a masked input there, so its backward never computes 0 * inf).

Validation is ``estimators._validate``, shared with every backend (one device sync per check).

**CPU threads.** A call on CPU tensors runs single-threaded (``torch.set_num_threads(1)`` for
the call, restored after it) when this process may use at most 2 CPUs or the batch has at most
``SINGLE_THREAD_MAX`` elements (T*B), and otherwise on at most as many threads as the 1-minute
load average leaves idle: the scan's operations are small, and an intra-op parallel operation
waits at its barrier for a thread the scheduler has parked, so on a busy machine more threads
made a call many times slower. Elementwise operations give the same bytes on any number of
threads. (``torch.set_num_threads`` is process-wide: calls from several Python threads at once
may see the lower count.)
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import numpy.typing as npt
import torch

from . import _validate
from ._types import GAEOutput, PDISOutput, VTraceOutput

__all__ = [
    "gae",
    "vtrace",
    "puff_advantage",
    "per_decision_is",
    "nstep_returns",
    "q_trace",
    "retrace",
    "tree_backup",
    "q_lambda",
    "importance_sampling_q",
    "p3o_advantage",
]


# ---------------------------------------------------------------------------------------------
# CPU threads

# at or below this many elements (T*B) a CPU call runs on one thread
SINGLE_THREAD_MAX = 1 << 16
_CPUS: list[int] = []


def _usable_cpus() -> int:
    if not _CPUS:
        try:
            _CPUS.append(max(1, len(os.sched_getaffinity(0))))
        except AttributeError:  # pragma: no cover - not Linux
            _CPUS.append(max(1, os.cpu_count() or 1))
    return _CPUS[0]


def _cpu_threads(n: int, have: int) -> int:
    """Threads for a CPU call on ``n`` elements when torch is set to ``have``."""
    cpus = _usable_cpus()
    if cpus <= 2 or n <= SINGLE_THREAD_MAX:
        return 1
    try:
        idle = int(cpus - os.getloadavg()[0])
    except OSError:  # pragma: no cover - no load average on this platform
        idle = cpus
    return max(1, min(have, idle))


def _threads_chosen(fn):
    """Run ``fn`` (an estimator; its first argument the rewards) with the CPU threads of
    ``_cpu_threads``; a call on a GPU, or nested in another, keeps torch's setting."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        r = args[0] if args else kwargs.get("rewards")
        if isinstance(r, torch.Tensor):
            if r.device.type != "cpu":
                return fn(*args, **kwargs)
            n = r.numel()
        else:
            n = int(np.size(r))
        have = torch.get_num_threads()
        want = _cpu_threads(n, have)
        if want >= have:
            return fn(*args, **kwargs)
        torch.set_num_threads(want)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(have)
    return wrapper


# ---------------------------------------------------------------------------------------------
# input conversion


def _tensors(**named):
    """Tensors stay as they are; anything else becomes a tensor on the first tensor's device."""
    device = next((x.device for x in named.values() if isinstance(x, torch.Tensor)), None)
    out = []
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x)
            _validate.check_real(name, x)  # strings, objects, complex: TypeError naming x
            x = torch.as_tensor(x, device=device)
        out.append(x)
    return out


def _float_dtype(*xs) -> torch.dtype:
    dtype = None
    for x in xs:
        if x.dtype.is_floating_point:
            dtype = x.dtype if dtype is None else torch.promote_types(dtype, x.dtype)
    return torch.get_default_dtype() if dtype is None else dtype


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    """[T] -> [T, 1]; [T, B] unchanged."""
    return x.reshape(x.shape[0], -1) if x.dim() == 1 else x


def _floats(dtype, *xs):
    return [_as_2d(x if x.dtype == dtype else x.to(dtype)) for x in xs]


def _bools(*xs):
    return [_as_2d(x if x.dtype == torch.bool else x != 0) for x in xs]


def _per_step(x, checked, dtype, rewards) -> torch.Tensor | float:
    """gamma or lam: a python float when given as a python or numpy scalar (no graph to keep,
    and a scalar operand costs no pass over memory), else a [T,B] tensor of the compute dtype
    on the rewards' device. ``x`` is the argument as given (a tensor, also 0-d, keeps its
    graph), ``checked`` its validated value."""
    if not isinstance(x, torch.Tensor):
        if isinstance(checked, float):
            # rounded to the compute dtype as a tensor would be, so that every product and
            # difference of scalars below rounds exactly as the tensor operations would
            return _round_to(checked, dtype)
        x = torch.as_tensor(checked)
    x = torch.as_tensor(x, dtype=dtype, device=rewards.device)
    return _as_2d(torch.broadcast_to(x, tuple(rewards.shape)))


_NUMPY_FLOATS = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


def _round_to(value: float, dtype) -> float:
    """``value`` rounded to ``dtype`` (a numpy scalar where numpy has the type: no torch call)."""
    as_numpy = _NUMPY_FLOATS.get(dtype)
    return float(as_numpy(value) if as_numpy is not None else torch.tensor(value, dtype=dtype))


def _where_or_zero(mask, value, like):
    """``torch.where(mask, value, 0)`` in ``like``'s dtype and device; ``value`` a tensor or a
    python float (a bare float would give ``torch.get_default_dtype()``)."""
    if not isinstance(value, torch.Tensor):
        value = like.new_tensor(value)
    return torch.where(mask, value, 0.0)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _finite(outputs, log_rhos=None, culprit="rewards"):
    outputs_seen = [x.detach() for x in outputs]
    # a finite sum of sums means every entry is finite (an inf or NaN makes any sum inf or
    # NaN): one read of each output; an overflowing sum of finite entries falls through
    total = outputs_seen[0].sum()
    for x in outputs_seen[1:]:
        total = total + x.sum()
    if bool(torch.isfinite(total)):
        return outputs
    _validate.check_outputs_finite(outputs_seen,
                                   dtype_name=_dtype_name(outputs[0].dtype),
                                   log_rhos=None if log_rhos is None else log_rhos.detach(),
                                   culprit=culprit)
    return outputs


# ---------------------------------------------------------------------------------------------
# the conventions, each written once (as in estimators.numpy)


def _masks(terminated, truncated):
    """kappa_t (the trace continues into t+1) and beta_t (bootstrap from s'_t allowed), [T,B]."""
    done = terminated | truncated
    kappa = torch.cat([~done[:-1], torch.zeros_like(done[-1:])])  # segment end cuts the trace
    beta = ~terminated  # a terminal s'_t has value 0: no bootstrap
    return kappa, beta


def _ratio(log_rhos):
    """exp(log_rhos), inf where it overflows; there exp's input is masked so that its backward
    (grad * exp(x)) gives 0, not 0 * inf = NaN, where the ratio is clipped or never read.
    Where no log-ratio comes near the limit (the usual case: one reduction) exp is taken as
    is."""
    near_limit = math.log(torch.finfo(log_rhos.dtype).max) - 0.01
    if log_rhos.numel() == 0 or float(log_rhos.detach().max()) < near_limit:
        return torch.exp(log_rhos)
    with torch.no_grad():
        overflows = torch.isinf(torch.exp(log_rhos)) & (log_rhos > 0)
    safe = torch.exp(torch.where(overflows, 0.0, log_rhos))
    return torch.where(overflows, torch.inf, safe)


def _clip(rho, level: float):
    return torch.clamp(rho, max=level)


def _shift(x, k: int):
    """x_{t+k} at index t, zero (False) past the end of the segment."""
    if k == 0:
        return x
    return torch.cat([x[k:], torch.zeros_like(x[:k])])


# ---------------------------------------------------------------------------------------------
# the first-order linear recurrence y_t = a_t + c_t y_{t+1} (y_T = 0), without a loop over T
#
# Both core recurrences are this recurrence over T (vectorised over B), and the pairs (c, a)
# compose associatively: (c1, a1) after (c2, a2) = (c1 c2, a1 + c1 a2). A Python loop over T
# costs T torch calls (~2-3 us of dispatch each on a CPU; one kernel launch each on a GPU);
# the scans below take O(log T) or O(sqrt T) calls. Unlike the loop they multiply factors
# together: a product may underflow to 0 (harmless), but it must never overflow to inf (then
# inf * 0 = NaN, forward or backward), so where a factor may exceed 1 ``_scan`` bounds the
# number of factors a product may hold by the largest factor, and picks its form to match.
# Every form reads c_t for t < T-1 only where it matters; c_{T-1} must be finite (the masks
# make it 0). No form writes in place, so autograd sees plain out-of-place operations.


def _scan_loop(a, c):
    """One call per step: the fastest form for short T or wide B (the per-call cost is paid T
    times, but the work is one pass)."""
    steps = []
    y = None
    for a_t, c_t in zip(reversed(a.unbind(0)), reversed(c.unbind(0)), strict=True):
        y = a_t if y is None else torch.addcmul(a_t, c_t, y)  # y_{T-1} = a_{T-1}
        steps.append(y)
    return torch.stack(steps[::-1])


def _scan_doubling(a, c):
    """Hillis-Steele doubling: after the step with shift k, (c_t, a_t) composes the 2k pairs
    from t on; ceil(log2 T) steps of two calls each, O(T B log T) work. The arrays are padded
    once past T with (0, 0) pairs (y past T is 0), by the sum of all shifts, so that each step
    reads rows t + k and drops its last k rows: no step concatenates."""
    T = a.shape[0]
    pad = (1 << (T - 1).bit_length()) - 1  # 1 + 2 + 4 + ... over the shifts below T
    if pad:
        zeros = a.new_zeros((pad,) + tuple(a.shape[1:]))
        a, c = torch.cat([a, zeros]), torch.cat([c, zeros])
    k = 1
    while k < T:
        rows = a.shape[0] - k
        a = torch.addcmul(a[:rows], c[:rows], a[k:])
        if 2 * k < T:  # the last step needs no products
            c = c[:rows] * c[k:]
        k *= 2
    return a


def _scan_chunked(a, c, chunk: int | None = None):
    """Two levels, O(T B) work in about 3 sqrt(T) calls: T is cut into n chunks of L steps
    (padded with (0, 0) pairs); a loop over the L offsets, vectorised over chunks and B, gives
    each step's value from inside its chunk (A) and the product of its factors to the chunk's
    end (C); a loop over the n chunks carries the values between chunks (Y_k, y at the start of
    chunk k); then y = A + C Y_{k+1}."""
    T = a.shape[0]
    rest = tuple(a.shape[1:])
    L = chunk or _default_chunk(T)
    n = -(-T // L)
    if n * L > T:
        zeros = a.new_zeros((n * L - T,) + rest)
        a, c = torch.cat([a, zeros]), torch.cat([c, zeros])
    a_steps = a.reshape((n, L) + rest).unbind(1)  # L views of [n, *rest]
    c_steps = c.reshape((n, L) + rest).unbind(1)
    inside, products = [a_steps[-1]], [c_steps[-1]]
    for j in range(L - 2, -1, -1):
        inside.append(torch.addcmul(a_steps[j], c_steps[j], inside[-1]))
        products.append(c_steps[j] * products[-1])
    carries = [torch.zeros_like(inside[-1][0])]  # Y_n = 0, then Y_{n-1} ... Y_1
    for k in range(n - 1, 0, -1):
        carries.append(torch.addcmul(inside[-1][k], products[-1][k], carries[-1]))
    A = torch.stack(inside[::-1], dim=1)
    C = torch.stack(products[::-1], dim=1)
    Y = torch.stack(carries[::-1]).unsqueeze(1)  # Y_{k+1} for chunk k
    return torch.addcmul(A, C, Y).reshape((n * L,) + rest)[:T]


_SCANS = {"loop": _scan_loop, "doubling": _scan_doubling, "chunked": _scan_chunked}


def _scan_form(T: int, B: int, device_type: str) -> str:
    """The fastest form for [T, B], measured on a 2-core x86 CPU, float32, one thread (the
    benchmark's sizes; see offpolicy.bench): the loop for T <= 12 or B >= 1536 (there T calls
    cost less than the extra passes over memory the scans make), doubling below 32768
    entries (fewest calls), chunked above (least work). On a GPU a call is a kernel launch
    and the work is cheap: doubling, or chunked for very large arrays (doubling's autograd
    keeps log2 T arrays of [T, B])."""
    if T <= 4:
        return "loop"
    if device_type != "cpu":
        return "doubling" if T * B <= 1 << 24 else "chunked"
    if T <= 12 or B >= 1536:
        return "loop"
    return "doubling" if T * B < 32768 else "chunked"


def _safe_span(c) -> int | None:
    """The most consecutive factors of ``c`` whose product cannot overflow c's dtype (2 bits
    of margin), from the largest factor alone (one reduction and a device sync); None: any
    number (every factor <= 1, or no factor at all); 0 where a factor is inf."""
    if c.numel() == 0:
        return None
    largest = float(c.detach().max())
    if largest <= 1.0:
        return None
    if not math.isfinite(largest):
        return 0
    return int((math.log2(torch.finfo(c.dtype).max) - 2.0) // math.log2(largest))


def _default_chunk(T: int) -> int:
    return math.isqrt(T - 1) + 1  # ceil(sqrt(T))


def _scan(a, c, *, bounded: bool, form: str | None = None):
    """y_t = a_t + c_t y_{t+1} over the rows of [T, B] tensors, y_T = 0, in the form
    ``_scan_form`` picks (``form`` forces one, for the tests). ``bounded``: every c_t is known
    to be <= 1. Otherwise the products a form builds must stay finite: doubling multiplies up
    to T - 1 consecutive factors, the chunked form at most one chunk's L (its carries multiply
    values, not products), the loop none; so with ``_safe_span`` factors at most, doubling
    gives way to chunks of at most that length, and chunks shorter than 2 to the loop."""
    T = a.shape[0]
    chunk = None
    if form is None:
        form = _scan_form(T, a[0].numel(), a.device.type)
        span = None if form == "loop" or bounded else _safe_span(c)
        if span is not None:
            if form == "doubling" and T - 1 > span:
                form = "chunked"
            if form == "chunked":
                chunk = min(_default_chunk(T), span)
                form = "chunked" if chunk >= 2 else "loop"
    if form == "chunked":
        return _scan_chunked(a, c, chunk)
    return _SCANS[form](a, c)


# ---------------------------------------------------------------------------------------------
# the two core recurrences


def _trace_factor(kappa, gamma_lam, c, like):
    """gamma_t lam_t kappa_t c_t (``c`` None: 1), exactly 0 where the trace is cut or weighted
    by gamma_t lam_t = 0, even where c_t is inf (masked before multiplying, so the backward
    pass never sees 0 * inf either; a finite c_t is kept where gamma_t lam_t = 0: the gradient
    w.r.t. lam_t there is not 0). ``gamma_lam`` is a [T,B] tensor or a python float."""
    if c is None:
        return _where_or_zero(kappa, gamma_lam, like)
    if isinstance(gamma_lam, torch.Tensor):
        read = kappa & ~((gamma_lam == 0) & torch.isinf(c))
    elif gamma_lam == 0:
        read = kappa & ~torch.isinf(c)
    else:
        read = kappa
    return gamma_lam * torch.where(read, c, 0.0)


def _state_value_trace(rewards, values, next_values, kappa, beta, rho_hat, c_hat, gamma, lam,
                       *, c_at_most_1: bool):
    """delta_t = rho_hat_t (r_t + gamma_t beta_t V(s'_t) - V(s_t)),
    A_t = delta_t + gamma_t lam_t c_hat_t kappa_t A_{t+1} (gamma, lam: [T,B] tensors or python
    floats; ``kappa, beta = _masks(...)``); ``rho_hat`` / ``c_hat`` None means 1 (GAE);
    ``c_at_most_1``: c_hat <= 1 everywhere (see ``_scan``)."""
    bootstrap = torch.where(beta, next_values, 0.0)
    delta = rewards + gamma * bootstrap - values
    if rho_hat is not None:
        delta = rho_hat * delta
    factor = _trace_factor(kappa, gamma * lam, c_hat, delta)
    return _scan(delta, factor, bounded=c_at_most_1)


def _action_value_trace(rewards, q_taken, next_expected_q, terminated, truncated, traces,
                        gamma, lam, *, c_at_most_1: bool):
    """G_t = r_t + gamma_t beta_t E_pi Q(s'_t)
    + gamma_t lam_t kappa_t c_{t+1} (G_{t+1} - Q_{t+1}) (gamma, lam: [T,B] or floats), that is
    G_t = a_t + f_t G_{t+1} with f_t = gamma_t lam_t kappa_t c_{t+1} and
    a_t = r_t + gamma_t beta_t E_pi Q(s'_t) - f_t Q_{t+1}; ``traces`` None means c = 1 (the
    first action is never corrected: c_{t+1})."""
    kappa, beta = _masks(terminated, truncated)
    bootstrap = torch.where(beta, next_expected_q, 0.0)
    next_traces = None if traces is None else _shift(traces, 1)
    factor = _trace_factor(kappa, gamma * lam, next_traces, rewards)
    own = rewards + gamma * bootstrap - factor * _shift(q_taken, 1)
    return _scan(own, factor, bounded=c_at_most_1)


# ---------------------------------------------------------------------------------------------
# state-value estimators


def _state_arrays(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam):
    named = dict(rewards=rewards, values=values, next_values=next_values,
                 terminated=terminated, truncated=truncated)
    if log_rhos is not None:
        named["log_rhos"] = log_rhos
    xs = _tensors(**named)
    lr = xs[5] if log_rhos is not None else None
    g, l = _validate.state_inputs(*xs[:5], gamma=gamma, lam=lam, log_rhos=lr)
    floats = [xs[0], xs[1], xs[2]] + ([lr] if lr is not None else [])
    dtype = _float_dtype(*floats)
    r, v, nv = _floats(dtype, *xs[:3])
    term, trunc = _bools(*xs[3:5])
    lr = None if lr is None else _floats(dtype, lr)[0]
    gamma, lam = _per_step(gamma, g, dtype, xs[0]), _per_step(lam, l, dtype, xs[0])
    return xs[0].shape, r, v, nv, term, trunc, lr, gamma, lam


@_threads_chosen
def gae(rewards: torch.Tensor | npt.ArrayLike, values: torch.Tensor | npt.ArrayLike,
        next_values: torch.Tensor | npt.ArrayLike, terminated: torch.Tensor | npt.ArrayLike,
        truncated: torch.Tensor | npt.ArrayLike, *, gamma: torch.Tensor | npt.ArrayLike,
        lam: torch.Tensor | npt.ArrayLike) -> GAEOutput:
    """GAE(gamma, lam) (Schulman et al. 2016): ``A_t = delta_t + gamma lam kappa_t A_{t+1}``,
    ``delta_t = r_t + gamma beta_t V(s'_t) - V(s_t)``; returns ``GAEOutput(advantages,
    returns = V + A)``, tensors of the rewards' shape, input dtype and device."""
    shape, r, v, nv, term, trunc, _, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, None, gamma, lam)
    kappa, beta = _masks(term, trunc)
    adv = _state_value_trace(r, v, nv, kappa, beta, None, None, gamma, lam, c_at_most_1=True)
    adv, ret = _finite((adv, v + adv))
    return GAEOutput(adv.reshape(shape), ret.reshape(shape))


def _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
            rho_clip, c_clip, pg_rho_clip):
    shape, r, v, nv, term, trunc, lr, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam)
    rho_clip = _validate.check_clip("rho_clip", rho_clip)
    c_clip = _validate.check_clip("c_clip", c_clip)
    pg_rho_clip = _validate.check_clip("pg_rho_clip", pg_rho_clip)
    rho = _ratio(lr)
    kappa, beta = _masks(term, trunc)
    adv = _state_value_trace(r, v, nv, kappa, beta, _clip(rho, rho_clip), _clip(rho, c_clip),
                             gamma, lam, c_at_most_1=c_clip <= 1.0)
    value_targets = v + adv
    bootstrap = torch.where(beta, nv, 0.0)  # beta_t V(s'_t); kappa_t implies beta_t
    v_next = _shift(value_targets, 1)
    q = r + gamma * torch.where(kappa, lam * v_next + (1 - lam) * bootstrap, bootstrap)
    pg = _clip(rho, pg_rho_clip) * (q - v)
    adv, value_targets, pg = _finite((adv, value_targets, pg), log_rhos=lr)
    return VTraceOutput(adv.reshape(shape), value_targets.reshape(shape), pg.reshape(shape))


@_threads_chosen
def vtrace(rewards: torch.Tensor | npt.ArrayLike, values: torch.Tensor | npt.ArrayLike,
           next_values: torch.Tensor | npt.ArrayLike, terminated: torch.Tensor | npt.ArrayLike,
           truncated: torch.Tensor | npt.ArrayLike, log_rhos: torch.Tensor | npt.ArrayLike, *,
           gamma: torch.Tensor | npt.ArrayLike, lam: torch.Tensor | npt.ArrayLike = 1.0,
           rho_clip: float = 1.0, c_clip: float = 1.0, pg_rho_clip: float = 1.0) -> VTraceOutput:
    """V-trace (Espeholt et al. 2018) with lambda: ``delta_t = min(rho_clip, rho_t) (r_t +
    gamma beta_t V(s'_t) - V(s_t))``, ``A_t = delta_t + gamma lam min(c_clip, rho_t) kappa_t
    A_{t+1}``, ``v_t = V + A``, ``pg_t = min(pg_rho_clip, rho_t) (q_t - V(s_t))`` with
    ``q_t = r_t + gamma beta_t [kappa_t (lam v_{t+1} + (1-lam) V(s'_t)) + (1-kappa_t) V(s'_t)]``.
    Returns ``VTraceOutput(advantages, value_targets, pg_advantages)`` (input dtype/device)."""
    return _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
                   rho_clip, c_clip, pg_rho_clip)


@_threads_chosen
def puff_advantage(rewards: torch.Tensor | npt.ArrayLike, values: torch.Tensor | npt.ArrayLike,
                   next_values: torch.Tensor | npt.ArrayLike,
                   terminated: torch.Tensor | npt.ArrayLike,
                   truncated: torch.Tensor | npt.ArrayLike, log_rhos: torch.Tensor | npt.ArrayLike,
                   *, gamma: torch.Tensor | npt.ArrayLike, lam: torch.Tensor | npt.ArrayLike = 1.0,
                   rho_clip: float = 1.0, c_clip: float = 1.0) -> torch.Tensor:
    """PufferLib's puff advantage: V-trace's ``A_t = v_t - V(s_t)`` (see ``vtrace``)."""
    return _vtrace(rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam,
                   rho_clip, c_clip, 1.0).advantages


@_threads_chosen
def per_decision_is(rewards: torch.Tensor | npt.ArrayLike, values: torch.Tensor | npt.ArrayLike,
                    next_values: torch.Tensor | npt.ArrayLike,
                    terminated: torch.Tensor | npt.ArrayLike,
                    truncated: torch.Tensor | npt.ArrayLike, log_rhos: torch.Tensor | npt.ArrayLike,
                    *, gamma: torch.Tensor | npt.ArrayLike,
                    lam: torch.Tensor | npt.ArrayLike) -> PDISOutput:
    """Per-decision IS with control variates (Precup et al. 2000): the state-value trace with
    ``rho_hat_t = c_t = rho_t``. Returns ``PDISOutput(advantages, value_targets)``."""
    shape, r, v, nv, term, trunc, lr, gamma, lam = _state_arrays(
        rewards, values, next_values, terminated, truncated, log_rhos, gamma, lam)
    rho = _ratio(lr)
    kappa, beta = _masks(term, trunc)
    adv = _state_value_trace(r, v, nv, kappa, beta, rho, rho, gamma, lam, c_at_most_1=False)
    adv, targets = _finite((adv, v + adv), log_rhos=lr)
    return PDISOutput(adv.reshape(shape), targets.reshape(shape))


# ---------------------------------------------------------------------------------------------
# n-step returns


@_threads_chosen
def nstep_returns(rewards: torch.Tensor | npt.ArrayLike, next_values: torch.Tensor | npt.ArrayLike,
                  terminated: torch.Tensor | npt.ArrayLike, truncated: torch.Tensor | npt.ArrayLike,
                  *, gamma: torch.Tensor | npt.ArrayLike, n: int) -> torch.Tensor:
    """``G_t = sum_{k<m} D_{t,k} r_{t+k} + D_{t,m} beta_{t+m-1} V(s'_{t+m-1})``,
    ``D_{t,k} = prod_{j<k} gamma_{t+j}``, ``m = min(n, T-t, 1 + steps to the first done at or
    after t)``."""
    xs = _tensors(rewards=rewards, next_values=next_values, terminated=terminated,
                  truncated=truncated)
    g, n = _validate.nstep_inputs(*xs, gamma=gamma, n=n)
    dtype = _float_dtype(*xs[:2])
    r, nv = _floats(dtype, *xs[:2])
    term, trunc = _bools(*xs[2:])
    discounts = _per_step(gamma, g, dtype, xs[0])
    kappa, beta = _masks(term, trunc)
    bootstrap = torch.where(beta, nv, 0.0)
    total = torch.zeros_like(r)
    discount = torch.ones_like(r)  # D_{t,k}, multiplied up step by step
    is_open = torch.ones_like(kappa)  # the window from t still covers step t+k
    for k in range(min(n, r.shape[0])):
        total = total + torch.where(is_open, discount * _shift(r, k), 0.0)
        discount = discount * (_shift(discounts, k) if isinstance(discounts, torch.Tensor)
                               else discounts)
        closes = is_open & (~_shift(kappa, k) | (k == n - 1))
        total = total + torch.where(closes, discount * _shift(bootstrap, k), 0.0)
        is_open = is_open & ~closes
    (total,) = _finite((total,))
    return total.reshape(xs[0].shape)


# ---------------------------------------------------------------------------------------------
# action-value estimators


def _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
             coefficient_name=None, coefficient_input=None, coefficient=None,
             c_at_most_1=True):
    named = dict(rewards=rewards, q_taken=q_taken, next_expected_q=next_expected_q,
                 terminated=terminated, truncated=truncated)
    if coefficient_name is not None:
        named[coefficient_name] = coefficient_input
    xs = _tensors(**named)
    extra = {} if coefficient_name is None else {coefficient_name: xs[5]}
    g, l = _validate.action_inputs(*xs[:5], gamma=gamma, lam=lam, **extra)
    dtype = _float_dtype(*xs[:3], *extra.values())
    r, q, nq = _floats(dtype, *xs[:3])
    term, trunc = _bools(*xs[3:5])
    gamma, lam = _per_step(gamma, g, dtype, xs[0]), _per_step(lam, l, dtype, xs[0])
    traces = None if coefficient_name is None else coefficient(_floats(dtype, xs[5])[0])
    targets = _action_value_trace(r, q, nq, term, trunc, traces, gamma, lam,
                                  c_at_most_1=c_at_most_1)
    log_rhos = _floats(dtype, xs[5])[0] if coefficient_name == "log_rhos" else None
    (targets,) = _finite((targets,), log_rhos=log_rhos)
    return targets.reshape(xs[0].shape)


@_threads_chosen
def q_trace(rewards: torch.Tensor | npt.ArrayLike, q_taken: torch.Tensor | npt.ArrayLike,
            next_expected_q: torch.Tensor | npt.ArrayLike, terminated: torch.Tensor | npt.ArrayLike,
            truncated: torch.Tensor | npt.ArrayLike, traces: torch.Tensor | npt.ArrayLike, *,
            gamma: torch.Tensor | npt.ArrayLike, lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """``G_t = r_t + gamma beta_t next_expected_q_t + gamma lam kappa_t c_{t+1} (G_{t+1} -
    Q(s_{t+1}, a_{t+1}))`` with ``c = traces`` (Munos et al. 2016)."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "traces", traces, lambda c: c, c_at_most_1=False)


@_threads_chosen
def retrace(rewards: torch.Tensor | npt.ArrayLike, q_taken: torch.Tensor | npt.ArrayLike,
            next_expected_q: torch.Tensor | npt.ArrayLike, terminated: torch.Tensor | npt.ArrayLike,
            truncated: torch.Tensor | npt.ArrayLike, log_rhos: torch.Tensor | npt.ArrayLike, *,
            gamma: torch.Tensor | npt.ArrayLike, lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """Retrace(lambda) (Munos et al. 2016): ``q_trace`` with ``c_t = min(1, rho_t)``."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "log_rhos", log_rhos, lambda lr: _clip(_ratio(lr), 1.0))


@_threads_chosen
def tree_backup(rewards: torch.Tensor | npt.ArrayLike, q_taken: torch.Tensor | npt.ArrayLike,
                next_expected_q: torch.Tensor | npt.ArrayLike,
                terminated: torch.Tensor | npt.ArrayLike, truncated: torch.Tensor | npt.ArrayLike,
                target_probs_taken: torch.Tensor | npt.ArrayLike, *,
                gamma: torch.Tensor | npt.ArrayLike,
                lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """Tree-backup(lambda) (Precup et al. 2000): ``q_trace`` with ``c_t = pi(a_t|s_t)``."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "target_probs_taken", target_probs_taken, lambda p: p)


@_threads_chosen
def q_lambda(rewards: torch.Tensor | npt.ArrayLike, q_taken: torch.Tensor | npt.ArrayLike,
             next_expected_q: torch.Tensor | npt.ArrayLike,
             terminated: torch.Tensor | npt.ArrayLike, truncated: torch.Tensor | npt.ArrayLike, *,
             gamma: torch.Tensor | npt.ArrayLike,
             lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """Q^pi(lambda) (Harutyunyan et al. 2016): ``q_trace`` with ``c_t = 1``."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam)


@_threads_chosen
def importance_sampling_q(rewards: torch.Tensor | npt.ArrayLike,
                          q_taken: torch.Tensor | npt.ArrayLike,
                          next_expected_q: torch.Tensor | npt.ArrayLike,
                          terminated: torch.Tensor | npt.ArrayLike,
                          truncated: torch.Tensor | npt.ArrayLike,
                          log_rhos: torch.Tensor | npt.ArrayLike, *,
                          gamma: torch.Tensor | npt.ArrayLike,
                          lam: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    """Per-decision importance sampling for Q: ``q_trace`` with ``c_t = rho_t``."""
    return _q_trace(rewards, q_taken, next_expected_q, terminated, truncated, gamma, lam,
                    "log_rhos", log_rhos, _ratio, c_at_most_1=False)


# ---------------------------------------------------------------------------------------------
# P3O


def _p3o_weights(reward_std, batch_reward_std, normalize):
    """As ``estimators.numpy._p3o_weights``: normalised over all H offsets; all-zero rows -> 0."""
    weights = torch.clamp(reward_std**-2.0 - batch_reward_std**-2.0, min=0.0)
    if normalize == "max":
        scale = weights.amax(dim=-1, keepdim=True)
    elif normalize == "sum":
        scale = weights.sum(dim=-1, keepdim=True)
    else:
        scale = torch.ones_like(weights[..., :1])
    return weights / torch.where(scale > 0, scale, 1.0)


@_threads_chosen
def p3o_advantage(rewards: torch.Tensor | npt.ArrayLike, reward_mean: torch.Tensor | npt.ArrayLike,
                  reward_std: torch.Tensor | npt.ArrayLike,
                  terminated: torch.Tensor | npt.ArrayLike, truncated: torch.Tensor | npt.ArrayLike,
                  *, batch_reward_std: float, normalize: str = "max") -> torch.Tensor:
    """P3O variance-weighted advantage: ``A_t = sum_{k<m} w_{t,k} (r_{t+k} - mu_{t,k})``,
    ``w_{t,k} = max(0, sigma_{t,k}^-2 - batch_reward_std^-2)`` normalised per t, ``m = min(H,
    T-t, 1 + steps to the first done at or after t)``. Predictions ``[T,(B,)H]``."""
    xs = _tensors(rewards=rewards, reward_mean=reward_mean, reward_std=reward_std,
                  terminated=terminated, truncated=truncated)
    batch_reward_std, normalize = _validate.p3o_inputs(
        *xs, batch_reward_std=batch_reward_std, normalize=normalize)
    dtype = _float_dtype(*xs[:3])
    (r,) = _floats(dtype, xs[0])
    mean, std = (x.to(dtype).reshape(r.shape + x.shape[-1:]) for x in xs[1:3])
    term, trunc = _bools(*xs[3:])
    weights = _p3o_weights(std, batch_reward_std, normalize)
    kappa, _ = _masks(term, trunc)
    total = torch.zeros_like(r)
    is_open = torch.ones_like(kappa)  # the window from t still covers step t+k
    for k in range(min(mean.shape[-1], r.shape[0])):
        term_k = weights[..., k] * (_shift(r, k) - mean[..., k])
        total = total + torch.where(is_open, term_k, 0.0)
        is_open = is_open & _shift(kappa, k)
    (total,) = _finite((total,), culprit="reward_std")
    return total.reshape(xs[0].shape)
