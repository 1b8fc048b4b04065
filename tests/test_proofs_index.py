"""proofs/ and the property suite name each other (rule in proofs/README.md).

Every property test is named ``test_Tnn_...`` for an existing ``proofs/Tnn_*.md``; every
theorem file is named by at least one collected property test; each file's ``## Tests`` list is
exactly the collected tests that name it; proofs/README.md links every file.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROOFS = ROOT / "proofs"
NAME = re.compile(r"^test_(T\d\d)_")


@pytest.fixture(scope="module")
def collected():
    """{test id without parameters} of every collected property test."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "property",
         "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert ids, "no property tests collected"
    return ids


def theorem_files():
    files = {p.name[:3]: p for p in PROOFS.glob("T[0-9][0-9]_*.md")}
    assert len(files) == len(list(PROOFS.glob("T[0-9][0-9]_*.md"))), "two files per theorem"
    return files


def test_theorem_files_cover_design_section_4():
    assert sorted(theorem_files()) == [f"T{i:02d}" for i in range(1, 26)]


def test_every_property_test_names_a_theorem_file(collected):
    files = theorem_files()
    for test_id in collected:
        m = NAME.match(test_id.split("::")[-1])
        assert m, f"{test_id}: a property test must be named test_Tnn_... (proofs/README.md)"
        assert m.group(1) in files, f"{test_id}: no proofs/{m.group(1)}_*.md"


def test_every_theorem_file_is_checked_and_lists_its_tests(collected):
    for key, path in theorem_files().items():
        named = {t for t in collected if t.split("::")[-1].startswith(f"test_{key}_")}
        assert named, f"{path.name}: named by no collected property test"
        text = path.read_text()
        assert "## Tests" in text, f"{path.name}: no '## Tests' section"
        listed = set(re.findall(r"^- (tests/\S+::test_\w+)", text.split("## Tests")[1], re.M))
        assert listed == named, (f"{path.name}: ## Tests lists {sorted(listed - named)} "
                                 f"that are not collected; misses {sorted(named - listed)}")


def test_readme_links_every_theorem_file():
    readme = (PROOFS / "README.md").read_text()
    for path in theorem_files().values():
        assert f"]({path.name})" in readme, f"proofs/README.md does not link {path.name}"
