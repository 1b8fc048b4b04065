"""Resumable result store and atomic file writes.

Each computed cell is appended to ``<run dir>/cells.jsonl`` as one complete line (a single
``write`` of the encoded record followed by a flush), so a run stopped by Ctrl-C or ``kill``
leaves at worst one partial last line. :class:`CellStore` drops such a line when it reopens the
file and the run carries on from the cells already there. Final files are written to a temporary
name beside the target and renamed over it (:func:`write_atomic`), so a reader never sees half a
file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile


def encode(obj) -> str:
    """Canonical JSON: sorted keys, shortest round-trip floats, NaN/inf as strings."""
    return json.dumps(_clean(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _clean(x):
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):  # numpy scalar
        return _clean(x.item())
    return x


def decode_float(x):
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    return x


def write_atomic(path: str, data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CellStore:
    """Append-only JSON-lines store of finished cells, keyed by ``record['id']``."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.records: dict[str, dict] = {}
        if os.path.exists(path):
            self._load()
        self._f = open(path, "ab")

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        good = data.rfind(b"\n") + 1  # a line without its newline is an interrupted write
        for line in data[:good].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # cannot happen with whole lines, but never fail a resume on it
            self.records[rec["id"]] = rec
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def __contains__(self, cid: str) -> bool:
        return cid in self.records

    def add(self, rec: dict) -> None:
        self.records[rec["id"]] = rec
        self._f.write((encode(rec) + "\n").encode())
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
