"""The contract lives in the repository (docs/DESIGN.md) and every reference to it resolves.

Two checks over the tracked files (``git ls-files``): nothing points at the old location outside
the repository (the ``shared`` folder beside it), and every relative markdown link in the
top-level README, docs/, proofs/ and reports/README.md names a tracked file.
"""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the old, out-of-repository home of the contract
# (spelled in two parts so that a plain grep for them over the repository finds nothing)
_STALE = ("shared" + "/DESIGN.md", "../" + "shared")
# [text](target) and ![alt](target); the target stops at whitespace or ')'
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_EXTERNAL = ("http://", "https://", "mailto:", "#")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _tracked() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    return [p for p in listing.decode().split("\0") if p]


def _linking_docs(tracked: list[str]) -> list[str]:
    return [
        p
        for p in tracked
        if p == "README.md"
        or p == "reports/README.md"
        or (p.endswith(".md") and (p.startswith("docs/") or p.startswith("proofs/")))
    ]


def relative_links(text: str) -> list[str]:
    """The relative link targets of a markdown text, without their ``#fragment``; code (fenced
    blocks and inline spans, where ``[x](y)`` is math, not a link) is skipped."""
    text = _FENCE.sub("", text)
    text = _CODE_SPAN.sub("", text)
    targets = []
    for target in _LINK.findall(text):
        if target.startswith(_EXTERNAL):
            continue
        path = target.split("#", 1)[0]
        if path:
            targets.append(path)
    return targets


def test_relative_links_parser():
    text = (
        "see [a](docs/A.md), ![b](x/b.png \"t\"), [c](https://e.org/c), [d](#sec), "
        "[e](../proofs/T01.md#proof), `[P e](s,a)` is code\n```\n[f](g)\n```\n"
    )
    assert relative_links(text) == ["docs/A.md", "x/b.png", "../proofs/T01.md"]


def test_design_doc_is_tracked():
    assert "docs/DESIGN.md" in _tracked()


def test_no_reference_to_the_old_shared_location():
    offenders = []
    for rel in _tracked():
        try:
            text = (ROOT / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary or deleted in the work tree
        for lineno, line in enumerate(text.splitlines(), 1):
            if any(stale in line for stale in _STALE):
                offenders.append(f"{rel}:{lineno}: {line.strip()}")
    assert not offenders, "references to the old contract location:\n" + "\n".join(offenders)


def test_relative_markdown_links_resolve():
    tracked = _tracked()
    tracked_set = set(tracked)
    tracked_dirs = {str(Path(p).parent) for p in tracked} | {
        str(parent) for p in tracked for parent in Path(p).parents
    }
    docs = _linking_docs(tracked)
    assert "README.md" in docs and any(p.startswith("proofs/") for p in docs)
    broken = []
    for rel in docs:
        text = (ROOT / rel).read_text(encoding="utf-8")
        for target in relative_links(text):
            resolved = (ROOT / Path(rel).parent / target).resolve()
            try:
                key = resolved.relative_to(ROOT).as_posix()
            except ValueError:  # escapes the repository
                broken.append(f"{rel}: {target} (outside the repository)")
                continue
            if key not in tracked_set and key.rstrip("/") not in tracked_dirs:
                broken.append(f"{rel}: {target}")
    assert not broken, "relative links to files that are not tracked:\n" + "\n".join(broken)


def test_time_index_convention_against_rlax_is_stated_and_linked():
    """Issue 12: the contract says how its subscripts relate to rlax's (our r_t is rlax's
    r_{t+1}; its discount_t is our gamma_t (1 - terminated_t); arrays are not shifted), and the
    conformance page links there."""
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    head = "### Time indices against rlax"
    assert head in design
    section = design.split(head, 1)[1].split("\n## ", 1)[0]
    for needle in ("our `r_t` is rlax's `r_{t+1}`", "`discount_t[t]`", "`v_tm1[t]`",
                   "`v_t[t]`", "`rho_tm1[t]`", "**not shifted**"):
        assert needle in section, needle
    assert "DESIGN.md#time-indices-against-rlax" in (ROOT / "docs" / "conformance.md").read_text()
