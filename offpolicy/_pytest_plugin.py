"""pytest plugin: the ``conform_check`` fixture (entry point ``pytest11``).

pytest imports this module at every start in any environment where offpolicy is installed, so
it imports nothing but pytest (already loaded) and the light ``offpolicy`` package:
``offpolicy.conform`` (hypothesis, the reference, the exact moments) is imported when a test
first requests the fixture. One test checks a whole estimator::

    def test_my_gae_conforms(conform_check):
        conform_check(my_package.gae, "gae", layout="done_next", gamma=0.99)

The fixture calls `offpolicy.conform.assert_conforms` (seeded, deterministic) and fails the
test with the report: verdict per case family, minimal counterexample, diagnosis.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def conform_check():
    """``conform_check(fn, estimator, **kw)``: assert that ``fn`` conforms; returns the report."""
    from offpolicy.conform import assert_conforms

    def run(fn, estimator, **kw):
        __tracebackhide__ = True
        return assert_conforms(fn, estimator, **kw)

    return run
