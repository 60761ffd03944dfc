"""What a student sees in the wrong kernel, or in a notebook run before the ones it reads."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_tools.kernel_check import SOURCE, TAG, insert_kernel_check
from course_tools.standalone import INSTALL_TAG, make_standalone

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_kernel_check(path):
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert code[0].source == SOURCE, f"run `python -m course_tools.kernel_check {path}`"
    assert TAG in code[0].metadata.get("tags", [])
    assert sum(TAG in c.metadata.get("tags", []) for c in code) == 1


def test_the_message_names_the_kernel_make_setup_registers():
    registered = re.search(r'--display-name "([^"]+)"', (ROOT / "Makefile").read_text())[1]
    assert f"'{registered}'" in SOURCE


def run_check(*python_options: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_options, "-c", SOURCE], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_another_kernel_is_told_how_to_switch(tmp_path):
    """An interpreter without the course's packages: -I -S leaves out site-packages, where
    course_utils is installed (what a kernel of another Python sees)."""
    done = run_check("-I", "-S", cwd=tmp_path)
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("ModuleNotFoundError: This kernel (")
    assert "Kernel > Change Kernel... > 'Python 3 (course)'" in message
    assert "make setup" in message


def test_the_course_kernel_passes_silently(tmp_path):
    done = run_check(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_insert_is_idempotent_and_goes_before_the_first_code_cell():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"),
                                         nbformat.v4.new_code_cell("import os")])
    once = insert_kernel_check(nb)
    twice = insert_kernel_check(once)
    assert [c.source for c in twice.cells] == ["# Title", SOURCE, "import os"]


def test_a_standalone_copy_installs_before_it_checks():
    """On Kaggle and Colab the install cell puts course_utils in place, then the check passes."""
    copy = make_standalone(ROOT / "notebooks" / "00_setup_check.ipynb", "print('install')")
    tags = [c.metadata.get("tags", []) for c in copy.cells]
    install = next(i for i, t in enumerate(tags) if INSTALL_TAG in t)
    check = next(i for i, t in enumerate(tags) if TAG in t)
    assert install < check
