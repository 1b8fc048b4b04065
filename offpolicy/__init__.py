"""offpolicy: exact tabular ground truth and property tests for RL return/advantage estimators.

See ``docs/DESIGN.md`` (in the repository) for the contract.
"""

__version__ = "0.2.0"
