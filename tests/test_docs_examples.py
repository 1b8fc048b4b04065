"""Every ```python block of the documentation site and the README runs and prints what it says.

Pages: ``README.md``, ``docs/**/*.md`` and the files the site renders from outside ``docs/``
(``proofs/``, the reports' READMEs, ``CHANGELOG.md``). The blocks of one page run in order in one
namespace, in a temporary working directory (a page reads like one session). A line
``print(...)  # comment`` is checked against what that call printed:

* by default the comment is the literal output: both are compared with runs of whitespace
  collapsed to one space (numpy pads its columns);
* ``# ~X`` (X a number, e.g. the README's ``# ~1e-15`` for a round-off error) is an order of
  magnitude: the printed number must be finite with ``|printed| <= 100 * X``. Two decades of
  slack absorb another CPU's rounding; a real error (a dropped trace, a wrong bootstrap) is
  many decades larger;
* a few comments describe a value rather than spell it (``DESCRIPTIONS``): the call must print
  something.

A commented print that never ran fails the test. Blocks that are not run are listed in
``NOT_RUN`` with the reason, and each entry must still match a block (no stale exemptions).
"""

from __future__ import annotations

import io
import math
import re
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (page, a line the block contains) -> why it is not run here
NOT_RUN = {
    ("README.md", "report = conform.check(my_gae.gae"):
        "covered by tests/test_conform.py::test_the_readme_conformance_example_prints_what_it_says "
        "(it writes my_gae.py from the README first)",
    ("docs/getting-started.md", "from my_gae import my_gae"):
        "a test file importing the page's loop from my_gae.py; .ci/bare_wheel runs the fixture "
        "on a numpy GAE the same way, from a fresh environment",
    ("docs/conformance.md", 'report = conform.check(fn, "vtrace", layout="rlax"'):
        "an API sketch: `fn` is the reader's function and `...` stands for its parameters",
}

# (page, comment) -> the comment describes the printed value instead of spelling it out
DESCRIPTIONS = {
    ("README.md", "exact variance of A_0 given s_0"),
}

MAGNITUDE = re.compile(r"~\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)")


def _pages() -> list[str]:
    paths = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "proofs").glob("*.md")),
             *sorted((ROOT / "reports").rglob("README.md"))]
    return [str(p.relative_to(ROOT)) for p in paths if p.exists()]


def _blocks(page: str) -> list[str]:
    text = (ROOT / page).read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _runnable(page: str, block: str) -> bool:
    return not any(p == page and line in block for p, line in NOT_RUN)


PAGES_WITH_CODE = [p for p in _pages() if any(_runnable(p, b) for b in _blocks(p))]


def _commented_prints(block: str) -> dict[int, str]:
    """Line number (1-based) -> comment, for every line that starts a ``print(`` call and ends in a
    comment."""
    lines = block.splitlines()
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(block).readline):
        if tok.type == tokenize.COMMENT:
            line_no = tok.start[0]
            if lines[line_no - 1].lstrip().startswith("print("):
                out[line_no] = tok.string[1:].strip()
    return out


def _check(page: str, comment: str, printed: str) -> str | None:
    """None if ``printed`` is what ``comment`` promises, else why not."""
    if (page, comment) in DESCRIPTIONS:
        return None if printed.strip() else "printed nothing"
    magnitude = MAGNITUDE.fullmatch(comment)
    if magnitude:
        try:
            value = float(printed)
        except ValueError:
            return f"printed {printed!r}, not a number"
        bound = 100 * float(magnitude.group(1))
        if not (math.isfinite(value) and abs(value) <= bound):
            return f"printed {value!r}, not of the order of {comment} (|x| <= {bound:g})"
        return None
    if " ".join(printed.split()) != " ".join(comment.split()):
        return f"printed {printed.strip()!r}, the page says {comment!r}"
    return None


def test_there_are_examples_to_run():
    assert "README.md" in PAGES_WITH_CODE
    assert "docs/getting-started.md" in PAGES_WITH_CODE


def test_every_exemption_names_a_block_that_exists():
    for page, line in NOT_RUN:
        assert any(line in block for block in _blocks(page)), (page, line)
    for page, comment in DESCRIPTIONS:
        assert any(comment in c for b in _blocks(page) for c in _commented_prints(b).values()), \
            (page, comment)


def test_the_comparison_can_fail():
    assert _check("x.md", "[1.39325 1.185   0.7    ]", "[1.39325 1.185 0.7 ]") is None
    assert _check("x.md", "[1.39325 1.185   0.7    ]", "[1.39325 1.185 0.75]") is not None
    assert _check("x.md", "~1e-15", "3.3e-16") is None
    assert _check("x.md", "~1e-15", "0.0") is None
    assert _check("x.md", "~1e-15", "2e-12") is not None  # a real error, not round-off
    assert _check("x.md", "~1e-15", "nan") is not None
    assert _check("x.md", "~1e-15", "[0.]") is not None
    assert _check("README.md", "exact variance of A_0 given s_0", "") is not None


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_page_examples_run_and_print_what_they_say(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_example_{re.sub(r'[^a-z0-9]', '_', page.lower())}"}
    ran = 0
    for index, block in enumerate(_blocks(page)):
        if not _runnable(page, block):
            continue
        filename = f"<{page} block {index}>"
        printed: dict[int, list[str]] = {}

        def recording_print(*args, sep=" ", end="\n", file=None, flush=False, _name=filename,
                            _printed=printed):
            text = sep.join(str(a) for a in args)
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename != _name:
                frame = frame.f_back
            if frame is not None:
                _printed.setdefault(frame.f_lineno, []).append(text)

        namespace["print"] = recording_print
        exec(compile(block, filename, "exec"), namespace)
        ran += 1
        for line_no, comment in _commented_prints(block).items():
            assert line_no in printed, f"{filename} line {line_no}: print never ran"
            problem = _check(page, comment, "\n".join(printed[line_no]))
            assert problem is None, f"{filename} line {line_no}: {problem}"
    assert ran, f"{page}: no block ran"
