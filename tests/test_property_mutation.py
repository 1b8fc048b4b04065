"""The mutation run (python -m offpolicy.mutation): every injected real-world bug must be
killed by the property suite. Slow (about 2 minutes): ``python -m pytest -m slow``."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mutation_every_mutant_killed():
    proc = subprocess.run([sys.executable, "-m", "offpolicy.mutation"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mutants killed" in proc.stdout
