"""pytest start-up with and without offpolicy installed (issue 23's 20 ms goal).

    python reports/footprint/pytest_startup.py VENV_WITHOUT VENV_WITH [--pairs 81]

Both virtual environments hold the same pytest, hypothesis, numpy and scipy; VENV_WITH also
holds the offpolicy wheel (``pip install --no-deps dist/offpolicy-*.whl``), so its pytest loads
offpolicy's ``pytest11`` entry point. Each pair runs ``python -m pytest -q -p no:cacheprovider``
on a one-test project in both, back to back; the figure is the median of the paired
differences with a bootstrap 95 % interval (2,000 resamples, seed 0), since the machine's
load moves both runs of a pair together.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("without")
    p.add_argument("with_")
    p.add_argument("--pairs", type=int, default=81)
    a = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "test_one.py"), "w") as f:
            f.write("def test_one():\n    assert 1 + 1 == 2\n")
        res = {"without": [], "with": []}
        for _ in range(a.pairs):
            for key, venv in (("without", a.without), ("with", a.with_)):
                t = time.perf_counter()
                subprocess.run([os.path.join(os.path.abspath(venv), "bin", "python"), "-m", "pytest", "-q",
                                "-p", "no:cacheprovider", "test_one.py"], cwd=d, env=env,
                               check=True, stdout=subprocess.DEVNULL)
                res[key].append(time.perf_counter() - t)
    for key, v in res.items():
        print(f"{key:8s} median {1e3 * statistics.median(v):.1f} ms  min {1e3 * min(v):.1f} ms")
    diff = [b - w for w, b in zip(res["without"], res["with"])]
    rng = random.Random(0)
    boots = sorted(statistics.median(rng.choices(diff, k=len(diff))) for _ in range(2000))
    print(f"paired difference (with - without): median {1e3 * statistics.median(diff):.1f} ms, "
          f"bootstrap 95 % interval {1e3 * boots[50]:.1f} .. {1e3 * boots[1949]:.1f} ms "
          f"({a.pairs} pairs; load average {os.getloadavg()[0]:.2f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
