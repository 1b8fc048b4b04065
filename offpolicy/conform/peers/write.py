"""Writing the peers table: ``peers.csv`` (one row per entry and case family), ``peers.json``
(one object per entry with its case families, each failing one with its class) and
``peers.md`` (the same for reading)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .run import ROW_FIELDS, entry_verdict

__all__ = ["write_peer_reports"]


def _entries(rows: list[dict]) -> list[list[dict]]:
    """Rows grouped by entry, in order."""
    groups: list[list[dict]] = []
    keys: list[tuple] = []
    for r in rows:
        key = (r["library"], r["function"], r["estimator"], r["layout"], r["output"],
               r["fixed_params"], r.get("note", ""))
        if not keys or keys[-1] != key:
            keys.append(key)
            groups.append([])
        groups[-1].append(r)
    return groups


def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _case(r: dict) -> dict:
    case = {"family": r["family"], "verdict": r["verdict"], "reason": r["reason"]}
    if r["verdict"] == "fail":
        case["class"] = r.get("failure_class") or "unclassified"
        case["why"] = r.get("failure_why", "")
        if r.get("design_section"):
            case["design_section"] = r["design_section"]
    return case


def _classes(cases: list[dict]) -> dict:
    counts: dict = {}
    for c in cases:
        if "class" in c:
            counts[c["class"]] = counts.get(c["class"], 0) + 1
    return counts


def write_peer_reports(rows: list[dict], out_dir) -> list[Path]:
    """Write ``peers.csv``, ``peers.json`` and ``peers.md`` into ``out_dir``; return the
    paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "peers.csv", out / "peers.json", out / "peers.md"]

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in ROW_FIELDS})
    paths[0].write_text(buffer.getvalue())

    entries = []
    for group in _entries(rows):
        head = group[0]
        entry = {k: head.get(k, "") for k in ("library", "distribution", "version", "function",
                                              "estimator", "layout", "output", "note")}
        entry["fixed_params"] = json.loads(head["fixed_params"])
        entry["verdict"] = entry_verdict(group)
        entry["seconds"] = head["seconds"]
        entry["diagnosis"] = next((r["diagnosis"] for r in group if r["diagnosis"]), None)
        repro = next((r["repro"] for r in group if r["repro"]), "")
        entry["repro"] = json.loads(repro) if repro else None
        entry["cases"] = [_case(r) for r in group]
        entry["failure_classes"] = _classes(entry["cases"])
        entries.append(entry)
    paths[1].write_text(json.dumps({"entries": entries}, indent=1) + "\n")
    paths[2].write_text(_markdown(entries))
    return paths


def _verdict_cell(entry: dict) -> str:
    if entry["verdict"] in ("not run", "error"):
        return f"{entry['verdict']}: {entry['cases'][0]['reason']}"
    return entry["verdict"]


def _classes_cell(entry: dict) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(entry["failure_classes"].items())) or "—"


def _markdown(entries: list[dict]) -> str:
    lines = ["# Peer libraries through `offpolicy.conform`", "",
             "Written by `python -m offpolicy.conform --peers`. One line per peer entry (a "
             "function, the layout and output it is checked in, and the parameters it "
             "hard-codes); each entry's case families follow. `n/a`: the layout cannot hold "
             "the case. `classes`: how many failing families are a bug, a documented "
             "convention (docs/DESIGN.md) or a layout limit. `s`: seconds the verdict took.", "",
             "| # | library | version | function | estimator / output | layout | fixed | note | "
             "verdict | classes | diagnosis | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(entries, 1):
        fixed = ", ".join(f"{k}={v}" for k, v in e["fixed_params"].items()) or "—"
        lines.append("| " + " | ".join(_md_escape(x) for x in (
            i, e["library"], e["version"] or "—", f"`{e['function']}`",
            f"{e['estimator']} / {e['output']}", e["layout"] or "—", fixed, e["note"] or "—",
            _verdict_cell(e), _classes_cell(e), e["diagnosis"] or "—",
            e["seconds"] if e["seconds"] != "" else "—")) + " |")
    lines += ["", "## Case families", ""]
    for i, e in enumerate(entries, 1):
        lines.append(f"### {i}. {e['library']} `{e['function']}` ({e['estimator']} / "
                     f"{e['output']}, {e['layout']})")
        lines.append("")
        if e["note"]:
            lines += [e["note"], ""]
        if len(e["cases"]) == 1 and not e["cases"][0]["family"]:
            lines += [f"{e['verdict']}: {e['cases'][0]['reason']}", ""]
            continue
        lines += ["| family | verdict | class | reason |", "|---|---|---|---|"]
        for c in e["cases"]:
            cls = c.get("class", "")
            if c.get("design_section"):
                cls += f" (DESIGN {c['design_section']})"
            if c.get("why"):
                cls += f": {c['why']}"
            lines.append(f"| {c['family']} | {c['verdict']} | {_md_escape(cls)} | "
                         f"{_md_escape(c['reason'])} |")
        if e["diagnosis"]:
            lines += ["", f"diagnosis: **{e['diagnosis']}**"]
        if e["repro"]:
            lines += ["", "minimal repro:", "", "```json",
                      json.dumps(e["repro"], separators=(", ", ": ")), "```"]
        lines.append("")
    return "\n".join(lines)
