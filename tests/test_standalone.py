"""Standalone copies: one extra cell installs the embedded wheel (course_utils and its runtime
dependencies only); nothing else is needed to run a notebook."""

import base64
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from course_tools.standalone import INSTALL_TAG, badge_table, build_standalone
from course_utils import __version__

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def standalone_copies(tmp_path_factory):
    out = tmp_path_factory.mktemp("standalone-all")
    return {path.name: path for path in build_standalone(out, ROOT / "notebooks", ROOT)}


@pytest.fixture(scope="module")
def standalone_00(standalone_copies):
    return standalone_copies["00_setup_check.ipynb"]


def test_copy_starts_with_the_install_cell_and_keeps_the_rest(standalone_00):
    copy = nbformat.read(standalone_00, as_version=4)
    source = nbformat.read(ROOT / "notebooks" / standalone_00.name, as_version=4)
    install = [c for c in copy.cells if INSTALL_TAG in c.metadata.get("tags", [])]
    assert len(install) == 1
    assert copy.cells.index(install[0]) == 1  # right after the title
    assert [c.source for c in copy.cells if c is not install[0]] == [c.source for c in source.cells]
    assert "import course_utils" in install[0].source
    compile(install[0].source, "install-cell", "exec")  # valid Python


def _embedded_wheel(copy: Path) -> zipfile.ZipFile:
    cell = nbformat.read(copy, as_version=4).cells[1].source
    payload = re.search(r'WHEEL_BASE64 = "([A-Za-z0-9+/=]+)"', cell).group(1)
    return zipfile.ZipFile(io.BytesIO(base64.b64decode(payload)))


def test_embedded_wheel_holds_the_package_and_its_data(standalone_00):
    wheel = _embedded_wheel(standalone_00)
    names = set(wheel.namelist())
    assert "course_utils/config.py" in names
    assert "course_utils/resources/mini_msmarco/test.jsonl" in names
    assert "course_utils/resources/model_shapes/DeepSeek-R1-Distill-Qwen-7B.json" in names
    # developer tooling and the mini MS MARCO builder's source stay in the checkout
    assert not any(n.startswith("course_tools/") for n in names)
    assert not any("/mini_msmarco/source/" in n for n in names)
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Version: {__version__}" in metadata


def test_embedded_wheel_requires_only_what_the_notebooks_run_on(standalone_00):
    wheel = _embedded_wheel(standalone_00)
    metadata = wheel.read(next(n for n in wheel.namelist()
                               if n.endswith(".dist-info/METADATA"))).decode()
    required = {Requirement(line.split(":", 1)[1]).name for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert {"torch", "transformers", "peft", "bitsandbytes", "langgraph"} <= required
    assert not required & {"papermill", "nbformat", "ipykernel", "ipywidgets", "pytest",
                           "nbval", "ruff", "jupyterlab"}
    assert "Provides-Extra: dev" in metadata  # the tools are an extra, not a requirement


def test_badges_open_the_committed_copies():
    table = badge_table(["03_lora.ipynb"], "someone/llm-course", branch="v1")
    assert ("https://colab.research.google.com/github/someone/llm-course/blob/v1/"
            "standalone/03_lora.ipynb") in table
    assert ("https://kaggle.com/kernels/welcome?src=https://github.com/someone/llm-course/blob/v1/"
            "standalone/03_lora.ipynb") in table
    with pytest.raises(ValueError, match="owner/name"):
        badge_table(["03_lora.ipynb"], "https://github.com/someone/llm-course")


def _base_python() -> str:
    """The interpreter the project's venv was made from: it has none of the course packages."""
    candidate = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(candidate if candidate.exists() else Path(sys.base_prefix) / "bin" / "python3")


# Short settings for the fresh-environment runs: they prove that each copy runs alone, not
# that it learns (the nbval run of the notebooks and the learning checks do that).
SMOKE_PARAMETERS = {"MAX_STEPS": 2, "N_TEST": 4, "SWEEP": False, "EVAL_BLOCKS": 8, "N_EXAMPLES": 2}
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
# `make test` (CI) runs the copies of 00 (it installs everything) and 05 (the most libraries);
# `make test-standalone` (COURSE_STANDALONE=all) runs every copy, about 9 minutes.
SMOKE_COPIES = ("00_setup_check.ipynb", "05_rag.ipynb")


def copies_to_run() -> list:
    everything = os.environ.get("COURSE_STANDALONE", "") == "all"
    return [name if everything or name in SMOKE_COPIES else
            pytest.param(name, marks=pytest.mark.skip(
                reason="run every copy with `make test-standalone`"))
            for name in NOTEBOOKS]


@pytest.fixture(scope="module")
def fresh_environment(tmp_path_factory):
    """Like Kaggle or Colab: a fresh venv that has torch and Jupyter (as those platforms do)
    and never saw the repository. papermill and ipykernel, which run the copies here, are
    installed by this fixture: the wheel does not bring them (they are dev tools). The first
    copy that runs installs course_utils and its runtime dependencies into it."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["torch==2.13.0", "papermill", "ipykernel"], check=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PYTHON", "COURSE_RESULTS"))}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["COURSE_PROFILE"] = "tiny"
    return venv, env


@pytest.mark.slow
@pytest.mark.parametrize("name", copies_to_run())
def test_copy_runs_alone_in_a_fresh_environment(name, standalone_copies, fresh_environment,
                                                tmp_path):
    """Each copy, uploaded alone: an empty folder holding only the notebook, run with papermill
    in the fresh environment, with short settings."""
    import papermill

    venv, env = fresh_environment
    copy = standalone_copies[name]
    work = tmp_path / "upload"
    work.mkdir()
    (work / name).write_bytes(copy.read_bytes())
    declared = papermill.inspect_notebook(str(copy))
    arguments = [f"-p {key} {value}" for key, value in SMOKE_PARAMETERS.items() if key in declared]
    done = subprocess.run([str(venv / "bin" / "papermill"), name, "out.ipynb", "-k", "python3",
                           "--no-progress-bar", *" ".join(arguments).split()],
                          cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stem = name.removesuffix(".ipynb")
    if stem != "06_comparison":  # alone, the comparison finds no results to compare
        assert (work / "results" / "tiny" / f"{stem}.json").is_file()
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import course_utils, sys; print(course_utils.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert str(ROOT) not in check.stdout  # installed from the embedded wheel, not the checkout
