"""rlax adapters: one sequence per call, jax arrays, in the ``rlax`` layout (DESIGN §1, "Time
indices against rlax"). rlax has no rollout loop of its own; the adapters only rename, index
the behaviour probability of the action taken, and compile with ``jax.jit``."""

from __future__ import annotations

from .base import pick_field

__all__ = ["n_step", "retrace", "general_off_policy", "jit", "float64", "pg_advantage"]


def n_step(fn):
    """rlax's ``n_step_bootstrapped_returns(r_t, discount_t, v_t, n, lambda_t)``: the layout's
    per-step ``lambda_`` (1 inside an episode, 0 where the trace is cut) goes to ``lambda_t``,
    rlax's way to cut the window (DESIGN §1)."""

    def rlax_n_step(r_t, discount_t, v_t, lambda_, n):
        return fn(r_t, discount_t, v_t, n, lambda_t=lambda_)

    return rlax_n_step


def retrace(fn, eps=None):
    """``rlax.retrace`` takes ``mu_t`` as the behaviour probability of the action taken
    (rank 1) and returns ``target - q_tm1[a_tm1]``: index the layout's table and add
    ``q_tm1[a_tm1]`` back to get the target. ``eps``: rlax's ``mu_t + eps`` guard (default
    1e-8)."""
    import jax.numpy as jnp

    def rlax_retrace(q_tm1, q_t, a_tm1, a_t, r_t, discount_t, pi_t, mu_t, lambda_):
        rows = jnp.arange(a_t.shape[0])
        extra = {} if eps is None else {"eps": eps}
        errors = fn(q_tm1, q_t, a_tm1, a_t, r_t, discount_t, pi_t, mu_t[rows, a_t], lambda_,
                    **extra)
        return errors + q_tm1[rows, a_tm1]

    return rlax_retrace


def general_off_policy(trace):
    """rlax's ``general_off_policy_returns_from_action_values(q_t, a_t, r_t, discount_t, c_t,
    pi_t)`` with ``c_t`` as its docstring lists it for each algorithm (``trace``), times the
    layout's per-step ``lambda_`` (0 where the trace is cut)."""

    def adapter(fn):
        import jax.numpy as jnp

        coefficient = {
            "retrace": lambda pi, mu: jnp.minimum(1.0, pi / mu),
            "tree_backup": lambda pi, mu: pi,
            "q_lambda": lambda pi, mu: jnp.ones_like(pi),
            "importance_sampling_q": lambda pi, mu: pi / mu,
        }[trace]

        def rlax_general_off_policy(q_t, a_t, r_t, discount_t, pi_t, mu_t, lambda_):
            rows = jnp.arange(a_t.shape[0])
            c_t = lambda_ * coefficient(pi_t[rows, a_t], mu_t[rows, a_t])
            return fn(q_t, a_t, r_t, discount_t, c_t, pi_t)

        return rlax_general_off_policy

    return adapter


def jit(adapter=None, static=()):
    """Compile the (adapted) rlax function with ``jax.jit``, as rlax is meant to be used: called
    eagerly, each ``lax.scan`` re-traces and compiles its freshly made body on every call
    (minutes per verdict); jitted, it compiles once per shape."""

    def wrap(fn):
        import jax

        inner = adapter(fn) if adapter is not None else fn
        return jax.jit(inner, static_argnames=static)

    return wrap


def float64():
    """JAX computes in float32 unless told otherwise; the peers run it in float64 so that the
    float64 family means something (rlax's own tests do the same)."""
    import jax

    jax.config.update("jax_enable_x64", True)


# vtrace_td_error_and_advantage returns VTraceOutput(errors, pg_advantage, q_estimate)
pg_advantage = pick_field(lambda out: out.pg_advantage, "pg_advantages")
