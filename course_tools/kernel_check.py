"""The first code cell of every notebook: is this the course's kernel? Standard library only.

    python -m course_tools.kernel_check notebooks/*.ipynb   # put the cell in (or update it)

A student who opens a notebook in JupyterLab with another kernel (the system Python, another
project's environment) would otherwise meet `ModuleNotFoundError: No module named
'course_utils'` in the imports cell. This cell says instead how to switch to the kernel
"Python 3 (course)" that `make setup` registers. It runs before any import of the course, costs
one module lookup when all is well, and prints nothing then. A standalone copy (Kaggle, Colab)
puts its install cell before it, so the check finds course_utils installed there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

TAG = "kernel-check"

SOURCE = '''\
# Is this the course's kernel? (standard library only, so it runs in any kernel)
import importlib.util
import sys

if importlib.util.find_spec("course_utils") is None:
    raise ModuleNotFoundError(
        f"This kernel ({sys.executable}) does not have the course's packages. In JupyterLab "
        "choose the menu Kernel > Change Kernel... > 'Python 3 (course)', then run the notebook "
        "again from the top. Not in the list? Run `make setup` in the course folder, then start "
        "JupyterLab with `.venv/bin/jupyter lab notebooks/`.")'''


def kernel_check_cell():
    cell = nbformat.v4.new_code_cell(SOURCE)
    cell.metadata["tags"] = [TAG]
    return cell


def insert_kernel_check(nb):
    """The notebook with the check as its first code cell (an older copy of it replaced)."""
    old = next((i for i, c in enumerate(nb.cells) if TAG in c.metadata.get("tags", [])), None)
    if old is not None:
        nb.cells[old].source = SOURCE
        return nb
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    cell = kernel_check_cell()
    cell.id = "kernel-check"
    nb.cells.insert(first_code, cell)
    return nb


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.splitlines()[2].strip())
        return 2
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)  # read, change and write at once
        nbformat.write(insert_kernel_check(nb), path)
        print(f"{path}: kernel check in place")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
