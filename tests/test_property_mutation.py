"""The mutation run (python -m offpolicy.mutation): every bug class of the catalogue, injected
into a copy of the reference, must be killed by the property suite, and no patch may be stale.
Slow (a few minutes on 2 cores): ``python -m pytest -m slow``."""

import subprocess
import sys
from pathlib import Path

import pytest

from offpolicy import mutation

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mutation_every_mutant_killed():
    proc = subprocess.run([sys.executable, "-m", "offpolicy.mutation"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = len(mutation.CATALOGUE)
    assert f"{n}/{n} mutants killed" in proc.stdout, proc.stdout
    assert "STALE" not in proc.stdout and "SURVIVED" not in proc.stdout
