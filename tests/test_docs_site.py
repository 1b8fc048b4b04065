"""The documentation site as a browser shows it: built with ``mkdocs build --strict`` into a
temporary directory, then every HTML page crawled for markup that did not render.

* a Sphinx role (``:func:`x```) left in a docstring shows as ``:func:`` followed by code:
  ``docs/hooks.py`` turns each into a link to the object's anchor, or into code;
* a backtick outside code is Markdown shown raw (the theorem titles in the navigation were).

Skipped only when mkdocs is not installed (the ``[docs]`` extra).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")

ROOT = Path(__file__).resolve().parent.parent

_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):")
# code, preformatted text and scripts show their characters as written
_VERBATIM = re.compile(r"<(pre|code|script|style|textarea)\b.*?</\1>", re.S)


def _unrendered(html: str) -> list[str]:
    """Literal roles and backticks in the text a reader sees (outside code and scripts)."""
    text = _VERBATIM.sub("", html)
    return [text[max(0, m.start() - 40):m.end() + 40]
            for m in re.finditer(f"{_ROLE.pattern}|`", text)]


def test_the_crawl_finds_what_did_not_render():
    assert _unrendered("<p>see :func:<code>x</code></p>") == ["<p>see :func:</p>"]
    assert _unrendered("<nav><a>T19 — `η_IS ≤ γ`</a></nav>") != []
    assert _unrendered("<p>see <a><code>x</code></a>; <code>`a`</code></p><pre>:func:`y`</pre>") \
        == []


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                            "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_every_page_renders_its_roles_and_markup(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 40  # every docs page, theorem and API page
    bad = {str(p.relative_to(site)): found for p in pages if (found := _unrendered(p.read_text()))}
    assert not bad, bad


def test_the_api_cross_references_are_links(site):
    """``:func:`exact_moments``` in a docstring of offpolicy.moments becomes a link to its
    anchor; the search index shows no roles either."""
    html = (site / "api" / "moments" / "index.html").read_text()
    assert '<a href="./#offpolicy.moments.exact_moments"><code>exact_moments</code></a>' in html
    assert not _ROLE.search((site / "search" / "search_index.json").read_text())


def test_theorem_titles_in_the_navigation_are_plain_text(site):
    html = (site / "index.html").read_text()
    assert "T19 — Trace efficiency: η_IS ≤ η_Retrace ≤ η_TB ≤ γ per state-action pair" in html


def test_estimator_pages_carry_their_registry_passport(site):
    """The header of each estimator page is written from offpolicy.registry: tree-backup's
    links the theorems about its traces (T06, T07, T19), the puff advantage's V-trace's (T04,
    T05), and the exact counterparts link to their API anchors."""
    tree = (site / "estimators" / "tree_backup" / "index.html").read_text()
    for proof in ("T06_retrace_fixed_point", "T07_qtrace_truncated_operator",
                  "T19_trace_efficiency_order"):
        assert f'href="../../proofs/{proof}/"' in tree, proof
    assert 'href="../../api/exact/#offpolicy.exact.tree_backup_traces"' in tree
    puff = (site / "estimators" / "puff_advantage" / "index.html").read_text()
    for proof in ("T04_vtrace_on_policy", "T05_vtrace_fixed_point"):
        assert f'href="../../proofs/{proof}/"' in puff, proof
