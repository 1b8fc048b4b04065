"""Taichi kernels behind ``estimators.taichi`` (imported lazily, after ``ti.init``).

Every kernel works on time-major memory, ``[T, B]`` flattened row by row (index ``t*B + b``),
and never loops over T or B in Python. Kernels are built per float dtype (``ti.f32`` or
``ti.f64``) and per estimator family by the ``build_*`` factories, and cached (``common``):
``state`` (one factory per form over the helpers of ``state_funcs``), ``action``,
``windowed`` (n-step, P3O) and ``scan`` (the adjoint scan of the autograd path).

Conventions (docs/DESIGN.md sections 1-2), written once in the ``@ti.func`` helpers:

* ``kappa_t = not (terminated_t or truncated_t) and t < T-1`` (the trace continues into t+1);
* ``beta_t = not terminated_t``: ``next_values`` under ``terminated`` is replaced by 0 with a
  select, never multiplied, so NaN or inf there cannot reach any output.

The forms of the state-value trace ``A_t = delta_t + gamma lam c_t kappa_t A_{t+1}``:

* ``vec4``  (CPU fast form): blocks of streams run in parallel (one block per core); inside a
  block the loop walks t downwards and, at each t, sweeps the block's streams in groups of 4
  contiguous lanes held in LLVM vector registers, also downwards: the whole walk is then one
  backward stream through each array, which the hardware prefetcher follows (sweeping each row
  upwards while t goes down was measured slower). Every CPU form also has a
  ``serial`` build (``build_state(..., serial=True)``), the same code with its blocks run on
  the calling thread, for small batches. ``A_{t+1}`` is re-read from the output row
  just written (it is still in L1/L2). Needs 16-byte aligned arrays and B % 4 == 0; the
  compile option ``real_matrix_scalarize=False`` makes Taichi emit real ``<4 x float>`` loads,
  stores and arithmetic. (Vector compares, selects and casts crash Taichi 1.7's LLVM codegen in
  that mode, so per-lane flags are handled as scalars and assembled into vectors.)
* ``vec8``  (the CPU fast form of the log-ratio modes, V-trace and PDIS, when B % 8 == 0): as
  ``vec4`` with 8 lanes per step, loaded as two aligned 4-vectors and joined, so the arithmetic
  runs on AVX ``<8 x float>`` (32-byte aligned loads would need 32-byte aligned arrays, which
  numpy does not give). The exp polynomial makes these modes compute-bound, and 8 lanes pay there;
  GAE stays on ``vec4`` (8 lanes measured slower: it is bound by loads/stores, not arithmetic;
  the measurements are in ``reports/bench/taichi_notes.md``). V-trace's pg advantage is
  computed as ``min(pg_clip, rho) (delta0 + gamma lam kappa (v_{t+1} - V(s'_t)))`` with
  ``delta0 = r + gamma beta V(s') - V(s)`` (the same q_t - V(s_t), fewer operations).
* ``rows``  (CPU fallback for any alignment / B): the same lockstep walk, one lane at a time.
* ``naive`` (one thread per stream walking T): the natural GPU form; slow on a CPU because the
  carried dependency along T leaves the vector units idle and strides through memory. Kept for
  the benchmark and used on GPUs.
* ``chunked`` (GPU form for few, long streams): T is cut into chunks; since the recurrence is an
  affine map ``A -> d + g A``, each chunk is first reduced to one map (parallel over chunks and
  streams), the maps are composed serially over chunks (per stream), and each chunk is finally
  re-walked from its now-known carry-in.

Every state/action kernel also checks the element-wise input rules of ``estimators._validate``
in the same pass (non-finite rewards/values, non-finite bootstrap values where not terminated,
NaN/+inf log-ratios, traces outside their range) and raises a per-block flag in ``err``; the
Python wrapper then re-runs ``_validate`` to raise the exact error the other backends raise.
The same flag is raised by a non-finite *output* (``x * 0`` is NaN iff x is not finite): with
valid inputs only an overflow (``exp(log_rhos)`` read unclipped, a product of ratios) makes
one, and the wrapper raises ``ValueError`` naming ``log_rhos`` (``_validate.check_outputs_finite``).
The vector forms check ``A_{t+1}`` as they load it (and row 0 after the walk), which costs
nothing on the critical path; ``v_t = V(s_t) + A_t`` itself is not re-checked there (checking it
was measured to cost a few percent on GAE): it overflows with finite V and A only within a
factor 2 of the dtype's max.

Per-step ``gamma``/``lam``: ``build_state``, ``build_action`` and ``build_nstep`` take
``per_step``; their kernels take two more arrays ``gam``, ``lm`` after ``err`` (``gam`` only for
n-step; flat ``[T*B]`` arrays of the compute dtype, or 4-vector arrays in the vector forms).
With ``per_step=False`` they are 1-element dummies and never read: the scalar kernels compute
exactly as before (``steps*`` below select, at compile time, either the scalars or the array
entries), so their outputs are bit-identical.

Autograd: ``build_scan_backward`` is the adjoint of the scan ``y_t = a_t + c_t y_{t+1}``, the
backward pass of ``estimators.taichi``'s differentiable path (``rows`` on a CPU, ``naive`` on a
GPU).
"""


from .action import build_action
from .common import CACHE, GAE, PDIS, Q_IS, Q_ONES, Q_RETRACE, Q_TRACES, VTRACE
from .scan import build_scan_backward
from .state import FORMS, build_state
from .windowed import build_nstep, build_p3o

__all__ = ["CACHE", "FORMS", "GAE", "PDIS", "Q_IS", "Q_ONES", "Q_RETRACE", "Q_TRACES", "VTRACE",
           "build_action", "build_nstep", "build_p3o", "build_scan_backward", "build_state"]
