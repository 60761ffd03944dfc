"""Notebooks in git are clean and follow the course skeleton."""

import ast
from pathlib import Path

import nbformat
import pytest

from course_tools.notebooks import is_checked, store_checked_outputs, strip_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup_check.ipynb"


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def notebook(request):
    return nbformat.read(request.param, as_version=4)


def test_no_outputs_except_checked_cells(notebook):
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            assert cell.execution_count is not None, "checked cells keep their count for nbval"
        else:
            assert cell.outputs == [], f"stored output in an unchecked cell:\n{cell.source[:80]}"
            assert cell.execution_count is None


def test_no_papermill_leftovers(notebook):
    for cell in notebook.cells:
        assert "injected-parameters" not in cell.metadata.get("tags", [])
        assert "papermill" not in cell.metadata
    assert "papermill" not in notebook.metadata


def test_parameters_cell_holds_only_annotated_literals(notebook):
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    statements = ast.parse(tagged[0].source).body
    assert statements, "the parameters cell is empty"
    for statement in statements:
        assert isinstance(statement, ast.AnnAssign), ast.unparse(statement)
        assert isinstance(statement.value, ast.Constant), ast.unparse(statement)
    assert statements[0].target.id == "PROFILE"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_sees_every_parameter_with_its_help(path):
    """`papermill --help-notebook` lists each parameter (a second `=` in a comment hides it)."""
    import papermill

    notebook = nbformat.read(path, as_version=4)
    tagged = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    names = [s.target.id for s in ast.parse(tagged.source).body]
    inferred = papermill.inspect_notebook(str(path))
    assert list(inferred) == names
    assert all(p["help"] for p in inferred.values()), "every parameter has a comment saying what it is"


def test_skeleton(notebook):
    markdown = [c.source for c in notebook.cells if c.cell_type == "markdown"]
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert markdown[0].startswith("# "), "a title first"
    headings = "\n".join(markdown)
    for heading in ("Learning objectives", "## Setup", "## Summary", "## Exercises"):
        assert heading in headings
    assert "setup_notebook(" in code and "save_record(" in code
    assert "sys.path" not in code, "import course_utils as an installed package"


def test_strip_keeps_only_checked_outputs():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", execution_count=3,
                                  outputs=[nbformat.v4.new_output("stream", text="1\n")]),
        nbformat.v4.new_code_cell("print(2)", execution_count=4,
                                  outputs=[nbformat.v4.new_output("stream", text="2\n")]),
    ])
    injected = nbformat.v4.new_code_cell("PROFILE = 'tiny'")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(0, injected)
    stripped = strip_notebook(nb)
    assert len(stripped.cells) == 2
    assert stripped.cells[0].outputs and stripped.cells[0].execution_count == 3
    assert stripped.cells[1].outputs == [] and stripped.cells[1].execution_count is None


def test_store_checked_outputs_copies_from_an_executed_copy():
    source = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(7)"),
        nbformat.v4.new_code_cell("print(8)")])
    executed = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(7)", execution_count=5, outputs=[
            nbformat.v4.new_output("stream", text="7\n"),
            nbformat.v4.new_output("stream", name="stderr", text="warning\n")]),
        nbformat.v4.new_code_cell("print(8)", execution_count=6,
                                  outputs=[nbformat.v4.new_output("stream", text="8\n")])])
    result = store_checked_outputs(source, executed)
    assert [o.text for o in result.cells[0].outputs] == ["7\n"]
    assert result.cells[0].execution_count == 1
    assert result.cells[1].outputs == []
