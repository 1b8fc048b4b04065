"""Multi-step return and advantage estimators, one module per backend.

``estimators.numpy`` is the float64 reference (the oracle); ``estimators.torch`` and
``estimators.taichi`` expose the same functions with the same keyword arguments.
Import the backend module you need: importing this package imports no backend.
"""
