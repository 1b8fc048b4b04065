"""offpolicy: exact tabular ground truth and property tests for RL return/advantage estimators.

See DESIGN.md (shipped beside the repository as ``shared/DESIGN.md``) for the contract.
"""

__version__ = "0.1.0"
