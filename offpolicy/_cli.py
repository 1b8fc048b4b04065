"""What every command line shares: exit codes, one-line usage errors and argument checks.

Exit codes: 0 success, 1 the check found a failure, 2 usage or malformed input (one line on
stderr naming the argument, no traceback), 130 interrupted.

Used by ``python -m offpolicy.report``, ``offpolicy.mutation``, ``offpolicy.conform``,
``offpolicy.harness`` and ``offpolicy.bench``: :class:`OneLineParser` (or
:class:`RaisingParser`, whose errors are :class:`UsageError` for the caller to report),
:func:`positive_int` (``--jobs``, ``--repeats``), :func:`parse_names` (comma-separated
subsets, aliases mapped to their one name), :func:`writable_dir` (``--out``) and
:func:`writable_file` (``--json``), all checked before anything is computed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence

USAGE_ERROR = 2


class UsageError(ValueError):
    """A bad command-line argument; the message is one line and names it."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: ...``) and exit 2."""

    def error(self, message: str):  # noqa: D401 (argparse's signature)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (--help for usage)\n")


class RaisingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`UsageError` (no exit, no usage dump),
    for a ``main`` that reports every usage error in one place."""

    def error(self, message: str):  # noqa: D401 (argparse's signature)
        raise UsageError(message)


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (``--jobs``, ``--repeats``); argparse names the
    flag in the one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_names(text: str, known: Sequence[str], flag: str, *,
                aliases: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The comma-separated names in ``text`` (blanks dropped), each one of ``known`` or a key
    of ``aliases`` (replaced by the name it stands for); :class:`UsageError` naming ``flag``,
    the unknown names and the known ones otherwise, or when none is given."""
    aliases = aliases or {}
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in known and aliases.get(x) not in known]
    if bad or not names:
        raise UsageError(f"{flag}: unknown {', '.join(bad) or '(empty)'}; known: "
                         f"{', '.join(known)}")
    return tuple(x if x in known else aliases[x] for x in names)


def writable_file(path: str, flag: str) -> str | None:
    """The problem with writing the file ``path`` (its directory must exist), as one line
    naming ``flag``, or None."""
    parent = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return f"{flag}: {path} is a directory"
    if not os.path.isdir(parent):
        return f"{flag}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{flag}: {path} is not writable"
    return None


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
