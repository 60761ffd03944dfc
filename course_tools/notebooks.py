"""How do notebooks stay clean in git? Strip outputs, keep the checked cells' outputs.

Notebooks are committed without outputs, except the cells nbval checks on purpose: cells whose
first line is `# NBVAL_CHECK_OUTPUT` keep their stored output and execution count (nbval
compares only cells with a count). Two commands:

    python -m course_tools strip notebooks/*.ipynb
    python -m course_tools store-checked notebooks/03_lora.ipynb runs/<run>/03_lora.ipynb

`store-checked` copies the outputs of the checked cells from an executed copy (a papermill run
in the tiny profile) into the source notebook and strips everything else.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
# Output types worth comparing; rich displays and widgets are not compared.
KEPT_OUTPUT_TYPES = ("stream", "execute_result")


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def strip_notebook(nb, keep_checked: bool = True):
    """Remove outputs and counts, except on checked cells; drop papermill's injected cell."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if keep_checked and is_checked(cell):
            continue
        cell.outputs = []
        cell.execution_count = None
    nb.metadata.pop("papermill", None)
    return nb


def _clean_output(output):
    if output.output_type == "stream" and output.name == "stderr":
        return None  # warnings and progress bars
    if output.output_type not in KEPT_OUTPUT_TYPES:
        return None
    if output.output_type == "execute_result":
        output.data = {k: v for k, v in output.data.items() if k == "text/plain"}
        output.metadata = {}
    return output


def store_checked_outputs(source, executed):
    """Copy the checked cells' outputs from an executed notebook into the source notebook."""
    executed_cells = {c.source: c for c in executed.cells if c.cell_type == "code"}
    count = 0
    for cell in source.cells:
        if not is_checked(cell):
            continue
        done = executed_cells.get(cell.source)
        if done is None:
            raise ValueError(f"checked cell not found in the executed notebook:\n{cell.source[:200]}")
        count += 1
        cell.outputs = [o for o in (_clean_output(o) for o in done.outputs) if o is not None]
        cell.execution_count = count
    return strip_notebook(source)


def strip_files(paths: list[Path]) -> None:
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.write(strip_notebook(nb), path)
        print(f"stripped {path}")


def store_checked_files(source_path: Path, executed_path: Path) -> None:
    source = nbformat.read(source_path, as_version=4)
    executed = nbformat.read(executed_path, as_version=4)
    nbformat.write(store_checked_outputs(source, executed), source_path)
    print(f"stored checked outputs of {executed_path} in {source_path}")
