"""What every command line shares: exit codes, one-line usage errors and argument checks.

Exit codes: 0 success, 1 the check found a failure, 2 usage or malformed input (one line on
stderr naming the argument, no traceback), 130 interrupted.

Used by ``python -m offpolicy.report``, ``offpolicy.mutation``, ``offpolicy.conform``,
``offpolicy.harness`` and ``offpolicy.bench``: :func:`run_main` (each entry point's one line:
exit code, and Ctrl-C as one line, exit 130, no child process left), :class:`OneLineParser` (or
:class:`RaisingParser`, whose errors are :class:`UsageError` for the caller to report),
:func:`positive_int` (``--jobs``, ``--repeats``), :func:`parse_names` (comma-separated
subsets, aliases mapped to their one name), :func:`writable_dir` (``--out``) and
:func:`writable_file` (``--json``), all checked before anything is computed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

USAGE_ERROR = 2
INTERRUPTED = 130


class UsageError(ValueError):
    """A bad command-line argument; the message is one line and names it."""


def one_line(message: str) -> str:
    """``message`` with its control characters escaped (``\\r``, ``\\n``, ``\\x00``): an
    argument that holds one still gives a one-line error."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: ...``) and exit 2."""

    def error(self, message: str):  # noqa: D401 (argparse's signature)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {one_line(message)} (--help for usage)\n")


class RaisingParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`UsageError` (no exit, no usage dump),
    for a ``main`` that reports every usage error in one place."""

    def error(self, message: str):  # noqa: D401 (argparse's signature)
        raise UsageError(one_line(message))


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
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


# ---- Ctrl-C ----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux ``/proc``; elsewhere none are found)."""
    try:  # each thread's children are listed under that thread
        found = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
        return found
    except FileNotFoundError as e:
        if not e.filename or not e.filename.endswith("children"):
            return []  # the process is gone (or no /proc): nothing below it
    except (OSError, ValueError):
        pass
    found = []  # kernels without the children file: scan every process's parent
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return found


def descendants(pid: int | None = None) -> list[int]:
    """Every live process below ``pid`` (default: this one), children first."""
    out, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def kill_descendants(spare: frozenset[int] = frozenset()) -> None:
    """SIGKILL every process below this one but those in ``spare``."""
    for pid in descendants():
        if pid not in spare:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # already gone


class _Interrupt:
    """SIGINT and SIGTERM handling of :func:`run_main`. The first signal raises
    KeyboardInterrupt in the main thread, so the command unwinds as usual (its own ``except
    KeyboardInterrupt`` says what was kept, its pools kill their workers, temporary
    directories go), and from then on a thread kills every process started after the signal:
    a thread pool still holding queued work (the mutation check's suites) must not start new
    ones while the command unwinds. Ctrl-C reached the children that run already (it goes to
    the terminal's whole process group), so they stop their own way; ``kill`` reached only
    this process, so they are killed. A second signal ends the process at once, its children
    with it."""

    def __init__(self, prog: str):
        self.prog = prog
        self.count = 0
        self.stop = threading.Event()

    def __call__(self, signum, frame):
        self.count += 1
        if self.count > 1:
            kill_descendants()
            finish(self.prog)
        spare = frozenset(descendants()) if signum == signal.SIGINT else frozenset()
        kill_descendants(spare)
        threading.Thread(target=self._reap_new, args=(spare,), daemon=True,
                         name="offpolicy-interrupt-reaper").start()
        raise KeyboardInterrupt

    def _reap_new(self, spare: frozenset[int]) -> None:
        while not self.stop.wait(0.02):
            kill_descendants(spare)


def finish(prog: str, detail: str | None = "") -> NoReturn:
    """Print ``prog: interrupted`` (and ``detail``) as one line on stderr (nothing for
    ``detail=None``: the command said it already) and end the process at once, exit code
    130, without the interpreter's shutdown (whose thread joins and finalizers could block
    or print about pipes a killed worker left behind)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        if detail is not None:  # after a progress bar: on a line of its own
            sys.stderr.write(f"\n{prog}: interrupted{detail}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(INTERRUPTED)


def run_main(main: Callable[[], object], prog: str) -> NoReturn:
    """End the process with ``main()``'s exit code (an int; anything else counts as 0): the
    one line under a command line's ``if __name__ == "__main__":``.

    Ctrl-C (SIGINT, unless the command was started with it ignored, as a shell's background
    job is) or ``kill`` (SIGTERM) ends it with one line on stderr, exit 130 and no child
    process left, wherever it lands; a ``main`` that catches KeyboardInterrupt, prints its
    own line and returns 130 keeps that line."""
    handler = _Interrupt(prog)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, handler)
    try:
        code = main()
    except KeyboardInterrupt:
        handler.stop.set()
        kill_descendants()
        finish(prog)
    code = code if isinstance(code, int) else 0
    if handler.count or code == INTERRUPTED:  # main caught the interrupt
        handler.stop.set()
        kill_descendants()
        finish(prog, None if code == INTERRUPTED else "")  # 130: main said so itself
    sys.exit(code)
