"""The losses a learner builds from the estimators' outputs (docs/DESIGN.md section 6).

``estimators.losses.numpy`` is the float64 reference: every loss returns its value *and* its
exact derivative with respect to what the learner differentiates (the log-probabilities of
the taken actions, or the value predictions), so :mod:`offpolicy.gradients` can turn a loss
into an exact expected gradient without autograd. ``estimators.losses.torch`` computes the
same losses as scalar tensors, for autograd. Importing this package imports no backend.
"""
