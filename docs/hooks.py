"""MkDocs hook: pages whose single source lives outside ``docs/``; generated tables.

The theorems (``proofs/*.md``), the report's README and plots (``reports/``) and the CHANGELOG are
added to the site as generated files at build time, so each stays one file in the repository;
their relative links to ``../docs/X`` are rewritten to ``../X`` (where the page lands in the
site). ``<!-- peers: NAME -->`` in a page becomes the table of ``offpolicy.conform.peers.PEERS``
for that estimator. The "Theorems" nav entry is filled with every ``proofs/Tnn_*.md`` after
the index.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def _proof_pages() -> list[Path]:
    return sorted((ROOT / "proofs").glob("T[0-9][0-9]_*.md"))


def _title(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    return first.lstrip("# ").strip()


def on_config(config):
    nav = config["nav"]
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and entry.get("Theorems") == "proofs/README.md":
            pages = [{"Index": "proofs/README.md"}]
            pages += [{_title(p): f"proofs/{p.name}"} for p in _proof_pages()]
            nav[i] = {"Theorems": pages}
    return config


def on_files(files, config):
    def page(src_uri: str, source: Path, rewrite: tuple[str, str]) -> None:
        text = source.read_text().replace(*rewrite)
        files.append(File.generated(config, src_uri, content=text))

    page("proofs/README.md", ROOT / "proofs" / "README.md", ("](../docs/", "](../"))
    for path in _proof_pages():
        page(f"proofs/{path.name}", path, ("](../docs/", "](../"))
    page("reports/README.md", ROOT / "reports" / "README.md", ("](../docs/", "](../"))
    page("reports/harness/README.md", ROOT / "reports" / "harness" / "README.md",
         ("](../../docs/", "](../../"))
    for folder in ("full", "harness"):
        for png in sorted((ROOT / "reports" / folder).glob("*.png")):
            files.append(File.generated(config, f"reports/{folder}/{png.name}",
                                        abs_src_path=str(png)))
    page("changelog.md", ROOT / "CHANGELOG.md", ("](docs/", "]("))
    return files


def _peers_table(estimator: str) -> str:
    """The rows of ``offpolicy.conform.peers.PEERS`` for one estimator, as a Markdown table."""
    from offpolicy.conform.peers import PEERS

    rows = [p for p in PEERS if p.estimator == estimator]
    if not rows:
        return "*(none in the table yet)*"
    lines = ["| library | function | layout | output | fixed parameters | note |",
             "|---|---|---|---|---|---|"]
    for p in rows:
        layout = p.layout if isinstance(p.layout, str) else _layout_name(p.make_layout())
        fixed = ", ".join(f"{k} = {v}" for k, v in sorted(p.params.items())) or "—"
        note = (p.unavailable or p.note or "—").replace("|", "\\|")
        lines.append(f"| {p.library} | `{p.function}` | `{layout}` | {p.output or '—'} | {fixed} "
                     f"| {note} |")
    return "\n".join(lines)


def _layout_name(layout) -> str:
    fold = getattr(layout, "truncation_fold", None)
    if fold is not None:
        return f"{type(layout).__name__}({fold})"
    if getattr(layout, "batched", True) is False:
        return f"{type(layout).__name__}(batched=False)"
    return type(layout).__name__


_PEERS_MARK = re.compile(r"<!-- peers: (\w+) -->")


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "DESIGN.md":
        # In the repository the contract links ../proofs/ (docs/ and proofs/ are siblings); in the
        # site the theorems are generated under proofs/ next to it.
        markdown = markdown.replace("](../proofs/", "](proofs/")
    return _PEERS_MARK.sub(lambda m: _peers_table(m.group(1)), markdown)
