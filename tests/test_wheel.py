"""Packaging: one version everywhere, type hints shipped, and the suite tests what is installed.

CI runs this suite twice over: against the editable install, and against the built wheel in a
fresh virtual environment from a directory outside the checkout, with
``OFFPOLICY_EXPECT_INSTALL=wheel`` (``.ci/run``). Then the packages must come from that
environment's site-packages, never from the checkout, or the wheel run would test the source tree.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import estimators
import offpolicy

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^\[project\][^\[]*?^version = "([^"]+)"', text, flags=re.M | re.S)
    assert match, "no version in [project]"
    return match.group(1)


def test_one_version_in_pyproject_package_metadata_and_changelog():
    version = _pyproject_version()
    assert offpolicy.__version__ == version
    assert importlib.metadata.version("offpolicy") == version
    assert f"## {version}" in (ROOT / "CHANGELOG.md").read_text()


def test_both_packages_ship_py_typed():
    for package in (offpolicy, estimators):
        assert (Path(package.__file__).parent / "py.typed").is_file(), package.__name__


def test_the_packages_come_from_where_this_run_expects():
    expect = os.environ.get("OFFPOLICY_EXPECT_INSTALL", "any")
    assert expect in ("any", "wheel", "editable"), expect
    places = {Path(p.__file__).resolve().parent.parent for p in (offpolicy, estimators)}
    assert len(places) == 1, f"offpolicy and estimators come from different places: {places}"
    (place,) = places
    in_checkout = place == ROOT
    if expect == "wheel":
        assert not in_checkout, f"the wheel run imported the checkout: {offpolicy.__file__}"
        assert place.name == "site-packages" and Path(sys.prefix) in place.parents, place
        # a tool started from outside the checkout imports the wheel too
        code = "import offpolicy; print(offpolicy.__file__)"
        child = subprocess.run([sys.executable, "-c", code], cwd=Path.cwd(), capture_output=True,
                               text=True, check=True).stdout
        assert Path(child.strip()).resolve().parent.parent == place, child
    elif expect == "editable":
        assert in_checkout, f"the editable run imported {offpolicy.__file__}"


PUBLIC_MODULES = ("estimators.numpy", "estimators.torch", "estimators.taichi", "estimators.layout",
                  "offpolicy.mdp", "offpolicy.policies", "offpolicy.exact", "offpolicy.moments",
                  "offpolicy.strategies", "offpolicy.conform")


def _unannotated(fn) -> list[str]:
    import inspect

    sig = inspect.signature(fn)
    missing = [name for name, p in sig.parameters.items()
               if p.annotation is inspect.Parameter.empty and name not in ("self", "cls")]
    if sig.return_annotation is inspect.Signature.empty and fn.__name__ != "__init__":
        missing.append("return")
    return missing


def test_every_public_name_is_exported_and_annotated():
    """``__all__`` in each public module names what exists; every function it exports, and every
    public method (and ``__init__``) of every class it exports, has annotated parameters and
    return (mypy checks the annotations; this checks that nothing public is left out)."""
    import importlib
    import inspect

    unannotated = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        assert isinstance(module.__all__, list | tuple) and module.__all__, module_name
        for name in module.__all__:
            obj = getattr(module, name)  # AttributeError: __all__ names something missing
            if inspect.isfunction(obj):
                functions = [(name, obj)]
            elif inspect.isclass(obj):
                # a typing.Protocol's __init__ is typing's own placeholder, not ours
                functions = [(f"{name}.{k}", v) for k, v in vars(obj).items()
                             if inspect.isfunction(v)
                             and (not k.startswith("_") or k == "__init__")
                             and not (k == "__init__" and getattr(obj, "_is_protocol", False))]
            else:
                continue
            for qualified, fn in functions:
                if _unannotated(fn):
                    unannotated.append(f"{module_name}.{qualified}: {_unannotated(fn)}")
    assert not unannotated, "\n".join(unannotated)


def test_the_annotation_check_can_fail():
    def f(x, *, y: int):
        return x

    assert _unannotated(f) == ["x", "return"]


# --- the bare install's footprint -------------------------------------------------------------

# the extras' packages: none may be imported by the bare install's modules
_EXTRAS_ONLY = ("torch", "taichi", "pandas", "matplotlib", "tqdm", "gymnasium", "scipy", "ray")


def _imported_after(code: str) -> set[str]:
    """Top-level modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def test_the_bare_modules_import_no_extra():
    """The conformance runner, the reference, the exact ground truth and the strategies are the
    bare install (numpy, hypothesis): importing them imports no extra's package."""
    code = ("import offpolicy.conform, offpolicy.exact, offpolicy.moments, offpolicy.strategies, "
            "offpolicy.registry, offpolicy.mdp, offpolicy.policies, estimators.numpy")
    assert not _imported_after(code) & set(_EXTRAS_ONLY)


def test_the_pytest_plugin_imports_nothing_until_the_fixture_is_used():
    """pytest imports the plugin at every start wherever offpolicy is installed: it must not
    import the runner (hypothesis, numpy); ``offpolicy`` itself holds only the version."""
    imported = _imported_after("import pytest\nimport offpolicy._pytest_plugin")
    assert not imported & {"hypothesis", "numpy", *_EXTRAS_ONLY}, imported
    baseline = _imported_after("import pytest")
    assert imported - baseline == {"offpolicy"}


def test_the_pytest_entry_point_names_the_light_plugin():
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^\[project\.entry-points\.pytest11\]\n[\w-]+ = "([\w.]+)"', text, re.M)
    assert match and match.group(1) == "offpolicy._pytest_plugin"


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    """Imported from code: ``MissingExtra`` (a ``ModuleNotFoundError``) naming the extra. Under
    ``python -m``: that line on stderr, exit 2, no traceback."""
    import pytest

    from offpolicy._extras import MissingExtra, require

    require("x", "report", "numpy")  # present: nothing happens
    with pytest.raises(MissingExtra) as info:
        require("offpolicy.report", "report", "numpy", "no_such_module_offpolicy_test")
    assert str(info.value) == ('offpolicy.report needs the [report] extra: pip install '
                               '"offpolicy[report]" (not installed: no_such_module_offpolicy_test)')
    assert isinstance(info.value, ModuleNotFoundError)

    package = tmp_path / "needs_extra"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from offpolicy._extras import require\n"
        "require('needs_extra', 'harness', 'no_such_module_offpolicy_test')\n")
    (package / "__main__.py").write_text("print('ran')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    child = subprocess.run([sys.executable, "-m", "needs_extra"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert child.returncode == 2
    assert child.stdout == ""
    assert child.stderr == ('error: needs_extra needs the [harness] extra: pip install '
                            '"offpolicy[harness]" (not installed: no_such_module_offpolicy_test)\n')
