"""Optional dependencies: one-line errors naming the extra that brings them.

The bare install (numpy, hypothesis) serves the conformance runner, the numpy reference, the
exact ground truth and the strategies; the report, the harness and the torch/Taichi backends
need an extra (``pyproject.toml``). :func:`require` is called where a part needing one is
imported, before any of its imports can fail with a bare ``No module named ...``.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["MissingExtra", "require"]


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(feature: str, extra: str, *modules: str) -> None:
    """Check that the top-level ``modules`` can be imported (found, not imported: cheap);
    else :class:`MissingExtra` with one line naming ``extra``.

    Under ``python -m PACKAGE`` the package is imported before its ``__main__`` runs (while
    ``sys.argv[0]`` is still ``"-m"``), so no ``main`` could catch the error there: the line
    goes to stderr and the process exits 2 (usage), without a traceback.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = (f'{feature} needs the [{extra}] extra: pip install "offpolicy[{extra}]" '
               f"(not installed: {', '.join(missing)})")
    if sys.argv[:1] == ["-m"]:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise MissingExtra(message, name=missing[0])
