"""The losses of ``estimators.losses.numpy`` as torch scalars, for autograd.

Same arguments and conventions (see that module's docstring); each returns the loss only,
and ``loss.backward()`` gives the gradients the reference returns in closed form. Advantages,
reference log-probabilities, importance weights and targets are detached here, as every
learner treats them. One difference: at an exact tie of ``clipped_value_loss``'s two
branches outside the clip range torch's ``max`` splits the gradient in half, where the
reference follows the plain branch (a set of measure zero).
"""

from __future__ import annotations

import torch

from .numpy import NORMALIZE_EPS, aggregation_weights

__all__ = ["ppo_clip", "prox_clip", "impala_pg", "squared_value_loss", "clipped_value_loss",
           "td_loss"]


def _weights(like: torch.Tensor, mask, aggregation: str, constant) -> torch.Tensor:
    """The reference's aggregation weights (``aggregation_weights``: the same checks and
    messages), as a constant tensor like ``like``."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask
    w = aggregation_weights(tuple(like.shape), mask=m, aggregation=aggregation,
                            constant=constant)
    return torch.as_tensor(w, dtype=like.dtype, device=like.device)


def _const(x, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device).detach()
    if t.shape != like.shape:
        raise ValueError(f"{name}: shape {tuple(t.shape)} differs from logp's {tuple(like.shape)}")
    return t


def _normalize(adv: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    sel = adv[w > 0]
    if sel.numel() < 2:
        raise ValueError("advantages: normalising needs at least 2 counted elements")
    return torch.where(w > 0, (adv - sel.mean()) / (sel.std() + NORMALIZE_EPS), adv)


def _clipped_surrogate(logp, logp_ref, advantages, *, clip_coef, is_weights, normalize, mask,
                       aggregation, constant) -> torch.Tensor:
    ref = _const(logp_ref, logp, "logp_ref")
    adv = _const(advantages, logp, "advantages")
    w_is = torch.ones_like(logp) if is_weights is None else _const(is_weights, logp,
                                                                     "is_weights")
    w = _weights(logp, mask, aggregation, constant)
    if normalize:
        adv = _normalize(adv, w)
    r = torch.exp(logp - ref)
    surrogate = torch.min(r * adv, r.clamp(1.0 - clip_coef, 1.0 + clip_coef) * adv)
    return (w * -w_is * surrogate).sum()


def ppo_clip(logp: torch.Tensor, logp_behaviour, advantages, *, clip_coef: float = 0.2,
             normalize: bool = False, mask=None, aggregation: str = "token_mean",
             constant: float | None = None) -> torch.Tensor:
    """PPO's clipped surrogate, ``r = pi / mu`` (``estimators.losses.numpy.ppo_clip``)."""
    return _clipped_surrogate(logp, logp_behaviour, advantages, clip_coef=clip_coef,
                              is_weights=None, normalize=normalize, mask=mask,
                              aggregation=aggregation, constant=constant)


def prox_clip(logp: torch.Tensor, logp_prox, advantages, *, is_weights=None,
              clip_coef: float = 0.2, normalize: bool = False, mask=None,
              aggregation: str = "token_mean", constant: float | None = None) -> torch.Tensor:
    """The proximal clipped surrogate (``estimators.losses.numpy.prox_clip``)."""
    return _clipped_surrogate(logp, logp_prox, advantages, clip_coef=clip_coef,
                              is_weights=is_weights, normalize=normalize, mask=mask,
                              aggregation=aggregation, constant=constant)


def impala_pg(logp: torch.Tensor, advantages, *, is_weights=None, normalize: bool = False,
              mask=None, aggregation: str = "token_mean",
              constant: float | None = None) -> torch.Tensor:
    """IMPALA's policy gradient loss (``estimators.losses.numpy.impala_pg``)."""
    adv = _const(advantages, logp, "advantages")
    w_is = torch.ones_like(logp) if is_weights is None else _const(is_weights, logp,
                                                                     "is_weights")
    w = _weights(logp, mask, aggregation, constant)
    if normalize:
        adv = _normalize(adv, w)
    return (w * -w_is * adv * logp).sum()


def squared_value_loss(values: torch.Tensor, targets, *, mask=None,
                       aggregation: str = "token_mean",
                       constant: float | None = None) -> torch.Tensor:
    """``sum w * 0.5 (V - G)^2`` (``estimators.losses.numpy.squared_value_loss``)."""
    g = _const(targets, values, "targets")
    w = _weights(values, mask, aggregation, constant)
    return (w * 0.5 * (values - g) ** 2).sum()


def clipped_value_loss(values: torch.Tensor, old_values, targets, *, clip_coef: float = 0.2,
                       mask=None, aggregation: str = "token_mean",
                       constant: float | None = None) -> torch.Tensor:
    """PPO's clipped value loss (``estimators.losses.numpy.clipped_value_loss``)."""
    v_old = _const(old_values, values, "old_values")
    g = _const(targets, values, "targets")
    w = _weights(values, mask, aggregation, constant)
    v_clipped = v_old + (values - v_old).clamp(-clip_coef, clip_coef)
    return (w * 0.5 * torch.max((values - g) ** 2, (v_clipped - g) ** 2)).sum()


def td_loss(q_taken: torch.Tensor, targets, *, mask=None, aggregation: str = "token_mean",
            constant: float | None = None) -> torch.Tensor:
    """The TD loss on a multi-step target (``estimators.losses.numpy.td_loss``)."""
    return squared_value_loss(q_taken, targets, mask=mask, aggregation=aggregation,
                              constant=constant)
