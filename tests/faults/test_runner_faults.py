"""The runner under faults: Ctrl-C mid-notebook, bad --only/--profile/--notebooks/--run-dir,
damaged notebooks (cut short, another encoding, a byte-order mark, a folder in a file's place),
and results files this run did not write. Each case ends in one message naming the file or
argument and what to do, and loses nothing that finished.

The tests run as root, where chmod does not stop writes: an unwritable run folder is made by
putting a file where the folder (or one of its parents) should be."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from fixtures.notebooks import write_notebook
from nbformat.v4 import new_code_cell, new_notebook

from course_tools.__main__ import main
from course_tools.runner import (
    RunFolderError,
    find_notebooks,
    read_notebook,
    read_results,
    run_course,
)
from course_utils.results import SCHEMA_VERSION, SetupRecord, save_record, write_json_atomic

ROOT = Path(__file__).resolve().parents[2]

# Notebook 01 writes a valid record the way save_record does (a whole file put in place); the
# record is made here, so the kernel need not import torch and the test stays fast.
WRITES_A_RECORD = """\
import os, shutil
shutil.copy({prepared!r}, os.path.join(os.environ["COURSE_RESULTS_DIR"], PROFILE, "01_writes.json"))
"""


def _prepared_record(folder: Path) -> Path:
    record = SetupRecord(
        notebook="01_writes", profile="tiny", models={"chat_model": "m"},
        settings={"max_new_tokens": 24}, notebook_seconds=3.5, device="cpu", dtype="float32",
        parameters=42, model_mib=1.5, load_seconds=0.25, generate_seconds=0.5,
        answer="forty-two", similar_cosine=0.75, different_cosine=0.125)
    path = folder / "prepared-01_writes.json"
    write_json_atomic(path, {"schema": SCHEMA_VERSION, "kind": record.kind,
                             **dataclasses.asdict(record)})  # what save_record writes
    return path


@pytest.fixture()
def course(tmp_path, monkeypatch):
    """01 writes a record; 02 says it started (a file), then sleeps; 03 is trivial."""
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_writes.ipynb",
                   WRITES_A_RECORD.format(prepared=str(_prepared_record(tmp_path))))
    started = tmp_path / "02-started"
    write_notebook(notebooks / "02_sleeps.ipynb", "x = 1",
                   f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(120)",
                   "y = 2")
    write_notebook(notebooks / "03_quick.ipynb", "z = 3")
    return notebooks


def _run(argv, capsys):
    code = main(["run", "--profile", "tiny", "--no-progress", *argv])
    return code, capsys.readouterr().err


# --- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_stops_cleanly_marks_the_partial_copy_and_writes_the_summary(course, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    # Its own process group, like a terminal's foreground job: Ctrl-C reaches the runner and
    # the notebook's kernel alike.
    runner = subprocess.Popen(
        [sys.executable, "-m", "course_tools", "run", "--profile", "tiny", "--no-progress",
         "--notebooks", str(course), "--run-dir", str(run_dir)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "02-started").exists():
            assert runner.poll() is None and time.time() < deadline, runner.communicate()
            time.sleep(0.1)
        # Ctrl-C once the cell is asleep: sent in the instant the file appears, it failed to stop
        # the runner within a minute in two of this project's full test runs (a race, not yet
        # understood, between the signal and the runner reading the kernel's messages)
        time.sleep(1.0)
        os.killpg(runner.pid, signal.SIGINT)
        out, err = runner.communicate(timeout=60)
    finally:
        try:
            os.killpg(runner.pid, signal.SIGKILL)  # nothing of it may outlive the test
        except ProcessLookupError:
            pass
    assert runner.returncode == 130, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    partial = run_dir / "02_sleeps.ipynb"
    assert "Interrupted while running 02_sleeps.ipynb" in lines[0]
    assert f"its partial copy, marked as interrupted, is {partial}" in lines[0]

    # the partial copy says it was interrupted and no longer claims every cell completed
    executed = nbformat.read(partial, as_version=4)
    assert executed.metadata["course_runner"]["interrupted"] is True
    assert executed.cells[0].cell_type == "markdown"
    assert "interrupted (Ctrl-C)" in executed.cells[0].source
    statuses = {c.source.splitlines()[-1]: c.metadata["papermill"]["status"]
                for c in executed.cells[1:]}
    assert statuses["time.sleep(120)"] == "interrupted"
    assert statuses["y = 2"] == "pending"
    assert statuses["x = 1"] == "completed"
    nbformat.validate(executed)

    # the summary is written, marked interrupted, and keeps what finished
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] == {"notebook": "02_sleeps.ipynb",
                                      "partial_copy": str(partial)}
    assert [n["notebook"] for n in summary["notebooks"]] == ["01_writes.ipynb"]
    assert summary["results"]["01_writes"]["measures"]["parameters"] == 42
    assert list(summary["results"]) == ["01_writes"]  # exactly the notebooks that finished
    markdown = (run_dir / "summary.md").read_text()
    assert "**Interrupted (Ctrl-C) while running 02_sleeps.ipynb**" in markdown
    assert (run_dir / "01_writes.ipynb").is_file()
    assert not (run_dir / "03_quick.ipynb").exists()


# --- --only, --profile, --notebooks --------------------------------------------------------------


@pytest.mark.parametrize("only, message", [
    (["0"], "--only 0 matches no notebook. Available: 01_writes, 02_sleeps, 03_quick"),
    (["1"], "--only 1 matches no notebook (did you mean 01?). Available: 01_writes"),
    ([""], "--only got an empty name ''"),
    (["  "], "--only got an empty name '  '"),
    (["99"], "--only 99 matches no notebook. Available: 01_writes"),
    (["01", "01"], "--only names 01_writes twice ('01' and '01')"),
    (["01", "writes"], "--only names 01_writes twice ('01' and 'writes')"),
    (["01_writes.ipynb", "01_writes"], "names 01_writes twice"),
    (["0*"], "--only 0* matches no notebook"),
])
def test_bad_only_is_refused_and_lists_the_notebooks(course, tmp_path, capsys, only, message):
    with pytest.raises(ValueError, match="Available: 01_writes, 02_sleeps, 03_quick"):
        find_notebooks(course, only)
    code, err = _run(["--notebooks", str(course), "--run-dir", str(tmp_path / "run"),
                      "--only", *only], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was created


def test_only_accepts_numbers_names_and_file_names_in_course_order(course):
    picked = find_notebooks(course, ["03_quick.ipynb", "writes", " 02 "])
    assert [p.name for p in picked] == ["01_writes.ipynb", "02_sleeps.ipynb", "03_quick.ipynb"]


@pytest.mark.parametrize("profile", ["huge", "ful", "tiny,full", "tiny full"])
def test_bad_profile_lists_the_profiles(course, tmp_path, capsys, profile):
    code = main(["run", "--profile", profile, "--notebooks", str(course),
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and f"Unknown profile {profile!r}" in err
    assert "Valid profiles: full, " in err and "tiny" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_empty_or_missing_notebooks_folder_exits_non_zero(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a notebook")
    code, err = _run(["--notebooks", str(empty)], capsys)
    assert code == 2 and f"No notebooks (*.ipynb files) in {empty}" in err
    assert "--notebooks" in err
    code, err = _run(["--notebooks", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "(it does not exist)" in err
    code, err = _run(["--notebooks", str(empty / "notes.txt")], capsys)
    assert code == 2 and "(it is a file, not a folder)" in err


# --- the run folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file_at_run_dir", "file_at_parent"])
def test_unwritable_run_folder_is_one_clear_message(course, tmp_path, capsys, where):
    # As root, chmod cannot make a folder unwritable, so a file stands where a folder must go.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    run_dir = blocker if where == "file_at_run_dir" else blocker / "run"
    code, err = _run(["--notebooks", str(course), "--only", "03", "--run-dir", str(run_dir)],
                     capsys)
    assert code == 2 and "Traceback" not in err
    assert f"Cannot write the run folder {run_dir} (a file is in the way" in err
    assert "Pass --run-dir with a writable folder" in err
    with pytest.raises(RunFolderError, match="a file is in the way"):
        run_course("tiny", only=["03"], notebooks_dir=course, run_dir=run_dir, progress=False)
    assert blocker.read_text() == "a file, not a folder"  # left as it was


def test_a_results_folder_that_cannot_be_made_is_one_message(course, tmp_path, capsys,
                                                             monkeypatch):
    blocker = tmp_path / "results-file"
    blocker.write_text("a file where the results folder should be")
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(blocker))
    code, err = _run(["--notebooks", str(course), "--only", "03", "--run-dir",
                      str(tmp_path / "run")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"Cannot create the results folder {blocker / 'tiny'}" in err
    assert f"COURSE_RESULTS_DIR={blocker})" in err and "writable folder" in err


def test_the_notebooks_folder_as_run_folder_is_refused(course, capsys):
    before = {p.name: p.read_bytes() for p in course.iterdir()}
    code, err = _run(["--notebooks", str(course), "--only", "03", "--run-dir", str(course)],
                     capsys)
    assert code == 2 and "is the notebooks folder" in err and "Pass another folder" in err
    assert {p.name: p.read_bytes() for p in course.iterdir()} == before


def test_earlier_files_in_the_run_folder_are_named_before_being_replaced(course, tmp_path,
                                                                         capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.md").write_text("an earlier summary")
    report = run_course("tiny", only=["03"], notebooks_dir=course, run_dir=run_dir,
                        progress=False)
    assert f"Note: {run_dir} already holds summary.md from an earlier run" in \
        capsys.readouterr().out
    assert report.runs[0].notebook == "03_quick.ipynb"
    assert not any(p.name.startswith(".write-check") for p in run_dir.iterdir())


# --- damaged notebooks ---------------------------------------------------------------------------


def _damage(course, how, seed=0):
    path = course / "02_sleeps.ipynb"
    raw = path.read_bytes()
    if how == "truncated":  # cut at a seeded random offset, as a crash mid-save does
        path.write_bytes(raw[:random.Random(seed).randrange(1, len(raw) - 1)])
    elif how == "latin-1":
        text = raw.decode("utf-8").replace("x = 1", "x = 'café'")
        path.write_bytes(text.encode("latin-1"))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not a notebook":
        path.write_text(json.dumps({"cells": "none"}))
    elif how == "folder":
        path.unlink()
        path.mkdir()
    return path


@pytest.mark.parametrize("how, message", [
    ("truncated", "is not a notebook: invalid JSON at line"),
    ("latin-1", "is not UTF-8 text (byte"),
    ("empty", "is not a notebook: invalid JSON at line 1, column 1"),
    ("not a notebook", "is not a valid notebook"),
    ("folder", "is a folder, not a notebook file"),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_damaged_notebook_stops_the_run_before_anything_runs(course, tmp_path, capsys, how,
                                                             message, seed):
    if seed and how != "truncated":
        pytest.skip("one seed is enough for a fault that has no offset")
    path = _damage(course, how, seed)
    with pytest.raises(ValueError, match="Restore it"):
        read_notebook(path)
    code, err = _run(["--notebooks", str(course), "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and f"{path} {message}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # 01 did not run first only to stop at 02


def test_notebook_with_a_byte_order_mark_runs(course, tmp_path):
    path = course / "03_quick.ipynb"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as some Windows editors save
    report = run_course("tiny", only=["03"], notebooks_dir=course, run_dir=tmp_path / "run",
                        progress=False)
    assert report.runs[0].notebook == "03_quick.ipynb"
    assert nbformat.read(tmp_path / "run" / "03_quick.ipynb", as_version=4).cells


# --- results files the run did not write ---------------------------------------------------------


def test_summary_reports_only_results_this_run_wrote(course, tmp_path, monkeypatch):
    # A results file left by an earlier run, even with a newer clock time, is not this run's.
    from fixtures.records import synthetic_records

    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    stale = save_record(synthetic_records("tiny")["03_lora"])
    stale = stale.rename(stale.with_name("03_quick.json"))
    os.utime(stale, (time.time() + 3600, time.time() + 3600))  # from the future
    report = run_course("tiny", only=["03"], notebooks_dir=course, run_dir=tmp_path / "run",
                        progress=False)
    assert list(report.results) == ["03_quick"]
    assert "was not rewritten by this run" in report.results["03_quick"].problem
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["results"]) == ["03_quick"] and "measures" not in \
        summary["results"]["03_quick"]


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"[]",
                                     b"null", b'{"schema": 2, "kind": "fine'])
def test_damaged_results_file_is_one_line_in_the_summary(tmp_path, content):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "04_qlora.json").write_bytes(content)
    write_json_atomic(folder / "keep.json", {"a": 1})
    results = read_results(folder, ["04_qlora"], "tiny")
    problem = results["04_qlora"].problem
    assert results["04_qlora"].record is None and "04_qlora.json" in problem
    assert "--only 04" in problem  # what to rerun
    assert (folder / "04_qlora.json").read_bytes() == content  # left for a look


# --- a kernel that dies --------------------------------------------------------------------------


def test_a_kernel_killed_mid_notebook_is_named_and_the_summary_kept(course, tmp_path, capsys):
    write_notebook(course / "04_dies.ipynb",
                   "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "never = True")
    code, err = _run(["--notebooks", str(course), "--only", "03", "04",
                      "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 1 and "Traceback" not in err
    assert "04_dies.ipynb: its kernel died while running" in err
    assert f"The partial executed copy is {tmp_path / 'run' / '04_dies.ipynb'}" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["failed"] == "04_dies.ipynb"
    assert [n["notebook"] for n in summary["notebooks"]] == ["03_quick.ipynb"]
    assert "**Stopped: 04_dies.ipynb failed**" in (tmp_path / "run" / "summary.md").read_text()
    assert (tmp_path / "run" / "03_quick.ipynb").is_file()


def test_marking_a_copy_interrupted_before_any_cell_or_cut_mid_write(tmp_path):
    from course_tools.runner import mark_interrupted

    path = tmp_path / "05_rag.ipynb"
    nb = new_notebook(cells=[new_code_cell("a = 1"), new_code_cell("b = 2")])
    for cell in nb.cells:  # what papermill leaves when stopped before the first cell
        cell.metadata["papermill"] = {"status": "completed", "start_time": None}
    nbformat.write(nb, path)
    assert mark_interrupted(path) == path
    marked = nbformat.read(path, as_version=4)
    assert "interrupted (Ctrl-C) before any cell ran" in marked.cells[0].source
    assert [c.metadata["papermill"]["status"] for c in marked.cells[1:]] == ["pending"] * 2
    assert marked.metadata["course_runner"]["interrupted_cell"] is None
    path.write_text('{"cells": [')  # cut off while papermill wrote it
    assert mark_interrupted(path) is None and path.read_text() == '{"cells": ['
    assert mark_interrupted(tmp_path / "never-written.ipynb") is None
