"""Standalone copies: one extra cell installs the embedded wheel; nothing else is needed."""

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

from course_utils import __version__
from course_utils.standalone import INSTALL_TAG, build_standalone

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def standalone_00(tmp_path_factory):
    out = tmp_path_factory.mktemp("standalone")
    [path] = build_standalone(out, ROOT / "notebooks", ROOT, only=["00"])
    return path


def test_copy_starts_with_the_install_cell_and_keeps_the_rest(standalone_00):
    copy = nbformat.read(standalone_00, as_version=4)
    source = nbformat.read(ROOT / "notebooks" / standalone_00.name, as_version=4)
    install = [c for c in copy.cells if INSTALL_TAG in c.metadata.get("tags", [])]
    assert len(install) == 1
    assert copy.cells.index(install[0]) == 1  # right after the title
    assert [c.source for c in copy.cells if c is not install[0]] == [c.source for c in source.cells]
    assert "import course_utils" in install[0].source
    compile(install[0].source, "install-cell", "exec")  # valid Python


def test_embedded_wheel_holds_the_package_and_its_data(standalone_00):
    cell = nbformat.read(standalone_00, as_version=4).cells[1].source
    payload = re.search(r'WHEEL_BASE64 = "([A-Za-z0-9+/=]+)"', cell).group(1)
    wheel = zipfile.ZipFile(io.BytesIO(base64.b64decode(payload)))
    names = set(wheel.namelist())
    assert "course_utils/profiles.py" in names
    assert "course_utils/resources/mini_msmarco/test.jsonl" in names
    assert any(n.endswith(".dist-info/METADATA") for n in names)
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Version: {__version__}" in metadata


def _base_python() -> str:
    """The interpreter the project's venv was made from: it has none of the course packages."""
    candidate = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(candidate if candidate.exists() else Path(sys.base_prefix) / "bin" / "python3")


@pytest.mark.slow
def test_copy_runs_alone_in_a_fresh_environment(standalone_00, tmp_path):
    """Like an upload to Kaggle or Colab: a fresh venv that has torch and Jupyter (as those
    platforms do) and never saw the repository; an empty folder holding only the notebook."""
    venv = tmp_path / "venv"
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["torch==2.13.0", "papermill", "ipykernel"], check=True)
    work = tmp_path / "upload"
    work.mkdir()
    (work / standalone_00.name).write_bytes(standalone_00.read_bytes())
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PYTHON", "COURSE_RESULTS"))}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["COURSE_PROFILE"] = "tiny"
    done = subprocess.run([str(venv / "bin" / "papermill"), standalone_00.name, "out.ipynb",
                           "-k", "python3", "--no-progress-bar"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (work / "results" / "tiny" / "00_setup_check.json").is_file()
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import course_utils, sys; print(course_utils.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert str(ROOT) not in check.stdout  # installed from the embedded wheel, not the checkout
