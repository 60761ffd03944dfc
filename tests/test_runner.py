"""The headless runner executes notebooks in order and names a failing notebook and cell."""

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course_utils.__main__ import main
from course_utils.runner import NotebookFailed, find_notebooks, run_course


def _notebook(path, *sources):
    cells = [new_code_cell('PROFILE: str = "auto"')]
    cells[0].metadata["tags"] = ["parameters"]
    cells += [new_code_cell(s) for s in sources]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def course(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_writes_results.ipynb",
              "from course_utils.results import save_results\n"
              "save_results('01_writes_results', PROFILE, metrics={'answer': 42.0})")
    _notebook(notebooks / "02_fails.ipynb", "x = 1", "raise ValueError('boom')")
    return notebooks


def test_notebooks_are_found_in_course_order(course):
    assert [p.name for p in find_notebooks(course)] == ["01_writes_results.ipynb",
                                                        "02_fails.ipynb"]
    assert [p.name for p in find_notebooks(course, ["02"])] == ["02_fails.ipynb"]
    with pytest.raises(ValueError, match="Available: 01_writes_results, 02_fails"):
        find_notebooks(course, ["07"])


def test_runner_writes_the_summary(course, tmp_path):
    report = run_course("tiny", only=["01"], notebooks_dir=course, run_dir=tmp_path / "run",
                        progress=False)
    assert (tmp_path / "run" / "01_writes_results.ipynb").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["results"]["01_writes_results"]["metrics"] == {"answer": 42.0}
    assert "| metrics.answer | 42 |" in (tmp_path / "run" / "summary.md").read_text()
    assert report.runs[0].notebook == "01_writes_results.ipynb"
    # papermill injected the profile into the executed copy, not into the source
    executed = nbformat.read(tmp_path / "run" / "01_writes_results.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    source = nbformat.read(course / "01_writes_results.ipynb", as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in source.cells)


def test_failing_notebook_names_notebook_and_cell(course, tmp_path):
    with pytest.raises(NotebookFailed) as error:
        run_course("tiny", notebooks_dir=course, run_dir=tmp_path / "run", progress=False)
    message = str(error.value)
    assert "02_fails.ipynb" in message and "cell" in message
    assert "ValueError: boom" in message


def test_command_line_exits_non_zero_on_failure(course, tmp_path, capsys):
    code = main(["run", "--profile", "tiny", "--notebooks", str(course), "--only", "02",
                 "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 1
    assert "02_fails.ipynb" in capsys.readouterr().err


def test_command_line_rejects_an_unknown_profile(course, capsys):
    assert main(["run", "--profile", "huge", "--notebooks", str(course)]) == 2
    assert "Valid profiles" in capsys.readouterr().err
