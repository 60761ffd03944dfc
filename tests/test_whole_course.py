"""The code the whole-course notebook runs (course_tools/whole_course_run.py), on three small
notebooks of its own in this environment: one that writes a results record and a checkpoint,
one that fails, and a stand-in for notebook 06. The real notebook, in a fresh environment, is
tested in test_standalone.py."""

import base64
import json
import zipfile

import nbformat
import pytest

from course_tools import whole_course_run as run

PARAMETERS = 'PROFILE: str = "auto"  # profile\nMAX_STEPS: int = 0  # steps\n'
WRITES = """\
import json, os, pathlib
folder = pathlib.Path(os.environ["COURSE_RESULTS_DIR"]) / PROFILE
folder.mkdir(parents=True, exist_ok=True)
(folder / "00_writes.json").write_text(json.dumps({"max_steps": MAX_STEPS, "cwd": os.getcwd()}))
checkpoint = pathlib.Path("runs", PROFILE, "00_writes", "checkpoint-1")
checkpoint.mkdir(parents=True, exist_ok=True)
(checkpoint / "optimizer.pt").write_bytes(b"x" * 1000)
"""


def notebook(*sources: str, parameters: str = PARAMETERS) -> str:
    """base64 of a notebook: a parameters cell, then one code cell per source."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# a test notebook"), cell,
                *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return base64.b64encode(nbformat.writes(nb).encode()).decode()


EMBEDDED = {
    "00_writes.ipynb": notebook(WRITES),
    "01_fails.ipynb": notebook("x = 1", "raise ValueError('broken on purpose')",
                               parameters='PROFILE: str = "auto"\n'),
    "06_comparison.ipynb": notebook("print('TABLE OF METHODS')",
                                    parameters='PROFILE: str = "auto"\n'),
}


@pytest.fixture
def clean_environment(monkeypatch):
    """prepare_course sets these for the kernels; monkeypatch puts them back afterwards."""
    monkeypatch.setenv("COURSE_RESULTS_DIR", "unused")
    monkeypatch.setenv("COURSE_PROFILE", "tiny")


def test_select_notebooks_by_number_or_name():
    names = list(EMBEDDED)
    assert run.select_notebooks(names, "all") == sorted(names)
    assert run.select_notebooks(names, "06, 00") == ["00_writes.ipynb", "06_comparison.ipynb"]
    assert run.select_notebooks(names, "01_fails") == ["01_fails.ipynb"]
    with pytest.raises(ValueError, match="NOTEBOOKS names 09.*Available: 00_writes.ipynb"):
        run.select_notebooks(names, "00 09")


def test_course_folder_by_platform(monkeypatch, tmp_path):
    for name in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert run.course_folder("auto") == tmp_path / "llm-course"
    assert run.course_folder(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release")
    assert str(run.course_folder()) == "/content/llm-course"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert str(run.course_folder()) == "/kaggle/working/llm-course"


def test_parameters_go_only_to_notebooks_that_have_them(tmp_path, clean_environment):
    course = run.prepare_course(EMBEDDED, "tiny", "all", str(tmp_path))
    given = run.notebook_parameters(course, max_steps=3, n_test=4)
    assert given == {"00_writes.ipynb": {"PROFILE": "tiny", "MAX_STEPS": 3},
                     "01_fails.ipynb": {"PROFILE": "tiny"},
                     "06_comparison.ipynb": {"PROFILE": "tiny"}}
    assert run.notebook_parameters(course)["00_writes.ipynb"] == {"PROFILE": "tiny"}
    course = run.prepare_course(EMBEDDED, "tiny", "06", str(tmp_path))
    assert run.notebook_parameters(course, extra={"MAX_STEPS": 2}) == \
        {"06_comparison.ipynb": {"PROFILE": "tiny"}}, "a parameter of an unselected notebook"
    with pytest.raises(ValueError, match="PARAMETERS names SWEEP, which no notebook has"):
        run.notebook_parameters(course, extra={"SWEEP": False})


def test_a_run_stops_at_the_failing_cell_and_resumes_after_it(tmp_path, clean_environment,
                                                              capsys):
    """One folder holds everything; a failure names the notebook and its cell; the next run
    skips what finished, and the comparison is shown from notebook 06's executed copy."""
    course = run.prepare_course(EMBEDDED, "tiny", "00 01", str(tmp_path / "course"))
    with pytest.raises(run.CourseNotebookFailed) as failure:
        run.run_course(course, run.notebook_parameters(course, max_steps=3))
    message = str(failure.value)
    assert "01_fails.ipynb failed in its cell 4 of 4" in message
    assert "the cell that starts `raise ValueError('broken on purpose')`" in message
    assert "ValueError: broken on purpose" in message
    assert str(course.executed / "01_fails.ipynb") in message

    record = json.loads((course.results / "tiny" / "00_writes.json").read_text())
    assert record["max_steps"] == 3 and record["cwd"] == str(course.folder)
    assert (course.executed / "00_writes.ipynb").is_file()
    assert (course.executed / "00_writes.finished.json").is_file()
    assert not (course.folder / "runs" / "tiny" / "00_writes" / "checkpoint-1").exists(), \
        "a finished notebook's checkpoints are deleted"

    capsys.readouterr()
    course = run.prepare_course(EMBEDDED, "tiny", "00 06", str(tmp_path / "course"))
    parameters = run.notebook_parameters(course, max_steps=3)
    runs = run.run_course(course, parameters)
    assert [r["status"] for r in runs] == ["finished earlier", "ran"]
    archive = run.show_comparison(course, runs)
    shown = capsys.readouterr().out
    assert "TABLE OF METHODS" in shown and str(archive) in shown
    with zipfile.ZipFile(archive) as bundle:
        assert {"executed/06_comparison.ipynb", "results/tiny/00_writes.json"} \
            <= set(bundle.namelist())

    changed = run.run_course(course, run.notebook_parameters(course, max_steps=5))
    assert [r["status"] for r in changed] == ["ran", "ran"], "other parameters: run again"


def test_a_kernel_that_dies_is_named_with_the_cell_it_ran(tmp_path, clean_environment):
    embedded = {"00_dies.ipynb": notebook("x = 2", "import os; os._exit(1)", "y = 3",
                                          parameters='PROFILE: str = "auto"\n')}
    course = run.prepare_course(embedded, "tiny", "all", str(tmp_path))
    with pytest.raises(run.CourseNotebookFailed,
                       match=r"00_dies.ipynb failed in its cell 4 of 5( \(In \[4\]\))?, the cell that starts "
                             r"`import os; os._exit\(1\)`: DeadKernelError"):
        run.run_course(course, run.notebook_parameters(course))
