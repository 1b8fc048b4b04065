"""What every command line shares: exit codes and one-line usage errors.

Exit codes: 0 success, 1 the check found a failure, 2 usage or malformed input (one line on
stderr naming the argument, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: ...``) and exit 2."""

    def error(self, message: str):  # noqa: D401 (argparse's signature)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (--help for usage)\n")


def writable_dir(path: str, flag: str = "--out") -> str | None:
    """The problem with writing files into directory ``path`` (created if missing), as one
    line naming ``flag``, or None. Probes by creating and removing a file, so it is right
    for root and read-only mounts alike."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{flag} {path}: exists and is not a directory"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".offpolicy-probe-"):
            pass
    except OSError as e:
        return f"{flag} {path}: cannot write there ({e.strerror or type(e).__name__})"
    return None


def usage_error(prog: str, message: str) -> int:
    """Print ``prog: error: message`` on stderr; the usage exit code."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USAGE_ERROR
