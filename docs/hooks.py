"""MkDocs hook: pages whose single source lives outside ``docs/``; links; generated tables.

* The theorems (``proofs/*.md``), the reports' READMEs and plots (``reports/``) and the CHANGELOG
  are added to the site as generated files at build time, so each stays one file in the
  repository.
* Every page is written with links that resolve *in the repository* (``tests/test_design_doc.py``
  checks that); a link to a file that the site places elsewhere (``../proofs/T03_...md`` from
  ``docs/DESIGN.md``, ``../docs/DESIGN.md`` from a proof) is rewritten to where it lands.
* ``<!-- peers: NAME -->`` in a page becomes the table of ``offpolicy.conform.peers.PEERS`` for
  that estimator.
* The "Theorems" nav entry is filled with every ``proofs/Tnn_*.md`` after the index.
* Each estimator page (``docs/estimators/<name>.md``) gets its header from
  ``offpolicy.registry``: names, inputs, outputs, parameters, theorems, exact counterparts.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# repository file -> its path in the site (outside docs/ only; docs/X is X)
_GENERATED: dict[Path, str] = {}
# site path -> repository file, for every generated page
_SOURCES: dict[str, Path] = {}


def _proof_pages() -> list[Path]:
    return sorted((ROOT / "proofs").glob("T[0-9][0-9]_*.md"))


def _outside_docs() -> dict[Path, str]:
    out = {ROOT / "proofs" / "README.md": "proofs/README.md",
           ROOT / "reports" / "README.md": "reports/README.md",
           ROOT / "reports" / "harness" / "README.md": "reports/harness/README.md",
           ROOT / "CHANGELOG.md": "changelog.md"}
    out.update({p: f"proofs/{p.name}" for p in _proof_pages()})
    for folder in ("full", "harness"):
        out.update({p: f"reports/{folder}/{p.name}"
                    for p in sorted((ROOT / "reports" / folder).glob("*.png"))})
    return out


def _title(path: Path) -> str:
    return path.read_text().splitlines()[0].lstrip("# ").strip()


def on_config(config):
    nav = config["nav"]
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and entry.get("Theorems") == "proofs/README.md":
            pages = [{"Index": "proofs/README.md"}]
            # nav titles are plain text: a code span would show its backticks
            pages += [{_title(p).replace("`", ""): f"proofs/{p.name}"} for p in _proof_pages()]
            nav[i] = {"Theorems": pages}
    return config


def on_files(files, config):
    _GENERATED.clear()
    _SOURCES.clear()
    for source, uri in _outside_docs().items():
        _GENERATED[source] = uri
        _SOURCES[uri] = source
        if source.suffix == ".md":
            files.append(File.generated(config, uri, content=source.read_text()))
        else:
            files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s#]+)((?:#[^)\s]*)?(?:\s+\"[^\"]*\")?\))")
_FENCE = re.compile(r"^(```|~~~)")


def _site_path(target: Path) -> str | None:
    if target in _GENERATED:
        return _GENERATED[target]
    try:
        return target.relative_to(DOCS).as_posix()
    except ValueError:
        return None


def _rewrite_links(markdown: str, page_uri: str) -> str:
    """Links written relative to the page's repository file, rewritten relative to its site
    path (code blocks untouched)."""
    source = _SOURCES.get(page_uri, DOCS / page_uri)
    here = posixpath.dirname(page_uri)

    def fix(match: re.Match) -> str:
        link = match.group(2)
        if "://" in link or link.startswith("mailto:"):
            return match.group(0)
        target = Path(os.path.normpath(source.parent / link))
        site = _site_path(target)
        if site is None:
            return match.group(0)
        return match.group(1) + posixpath.relpath(site, here or ".") + match.group(3)

    out, in_fence = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
        out.append(line if in_fence else _LINK.sub(fix, line))
    return "\n".join(out)


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


def _passport(name: str) -> str:
    """The header of an estimator's page, from its registry entry (links written relative to
    the page's repository file, as every link here; ``_rewrite_links`` places them)."""
    from offpolicy import registry

    e = registry.ESTIMATORS[name]
    theorems = {p.name[:3]: p for p in _proof_pages()}
    code = lambda names: ", ".join(f"`{n}`" for n in names)
    lines = [f"`estimators.numpy.{e.name}`" + (f" (also {code(e.aliases)})" if e.aliases else "")
             + f": inputs {code(e.inputs)}; keyword parameters {code(e.params)}; outputs "
             + ", ".join(f"`{o}` ({e.quantities[o]})" for o in e.outputs) + ".",
             "",
             "**Theorems**:",
             "",
             *(f"- [{_title(theorems[t])}](../../proofs/{theorems[t].name})"
               for t in sorted(e.theorems)),
             "",
             "**Exact counterparts**: " + ", ".join(
                 f"[`{q}`][offpolicy.{q}]" for q in e.exact)
             + (f"; exact moments: `moments.exact_moments(mdp, \"{e.name}\", ...)`"
                if e.moments_name else "; no exact moments (its traces are an input)") + "."]
    return "\n".join(lines)


_H1 = re.compile(r"\A(# [^\n]*\n)")


def on_page_markdown(markdown, page, config, files):
    name = page.file.src_uri.removeprefix("estimators/").removesuffix(".md")
    if page.file.src_uri.startswith("estimators/") and name != "index":
        markdown = _H1.sub(lambda m: m.group(1) + "\n" + _passport(name) + "\n", markdown, 1)
    markdown = _rewrite_links(markdown, page.file.src_uri)
    return _PEERS_MARK.sub(lambda m: _peers_table(m.group(1)), markdown)


# --- Sphinx roles in docstrings ---------------------------------------------------------------
# The docstrings cross-reference with Sphinx roles (:func:`exact_moments`, :class:`~x.Y`), which
# mkdocstrings leaves as text. Every page's content is rendered before any page is written, so
# the anchors of every documented object are known by on_page_context: there a role becomes a
# link to the object's anchor (a full name, or the one documented name ending with it), else code
# (before the search plugin indexes the page, so its results show no roles either).

_ANCHORS: dict[str, str] = {}  # documented object's full name -> its page's URL
_ANCHOR = re.compile(r'id="((?:offpolicy|estimators)(?:\.\w+)+)"')
_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):<code>([^<]+)</code>")


def on_pre_build(config):
    _ANCHORS.clear()


def on_page_content(html, page, config, files):
    for name in _ANCHOR.findall(html):
        _ANCHORS.setdefault(name, page.url)
    return html


def _target(name: str) -> str | None:
    """The documented full name ``name`` refers to: itself, or the one anchor ending with it
    (a name relative to its module, ``exact_moments`` or ``.grid``)."""
    if name in _ANCHORS:
        return name
    tail = "." + name.lstrip(".")
    found = [a for a in _ANCHORS if a.endswith(tail)]
    return found[0] if len(found) == 1 else None


def _render_role(match: re.Match, page_url: str) -> str:
    from mkdocs.utils import get_relative_url

    written = match.group(1).strip()
    name = written.lstrip("~").removesuffix("()")
    shown = name.rsplit(".", 1)[-1] if written.startswith("~") else name.lstrip(".")
    target = _target(name)
    if target is None:
        return f"<code>{shown}</code>"
    href = get_relative_url(_ANCHORS[target], page_url or ".") + "#" + target
    return f'<a href="{href}"><code>{shown}</code></a>'


@event_priority(100)
def on_page_context(context, page, config, nav):
    page.content = _ROLE.sub(lambda m: _render_role(m, page.url), page.content)
    return context
