"""The headless runner executes notebooks in order, names a failing notebook and cell, and
summarises the records of the notebooks it ran by their fields."""

import json
import re

import nbformat
import pytest
from fixtures.notebooks import write_notebook
from fixtures.records import synthetic_records

from course_tools.__main__ import main
from course_tools.runner import (
    NotebookFailed,
    NotebookRun,
    find_notebooks,
    read_results,
    record_measures,
    run_course,
    summarise,
)
from course_utils.results import save_record, write_json_atomic

# A notebook that writes a small, valid record the way the course notebooks do.
WRITES_A_RECORD = """\
from course_utils.results import SetupRecord, save_record
save_record(SetupRecord(
    notebook="01_writes_results", profile=PROFILE, models={"chat_model": "m"},
    settings={"max_new_tokens": 24}, notebook_seconds=3.5, device="cpu", dtype="float32",
    parameters=42, model_mib=1.5, load_seconds=0.25, generate_seconds=0.5,
    answer="forty-two", similar_cosine=0.75, different_cosine=0.125))
"""


@pytest.fixture()
def course(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_writes_results.ipynb", WRITES_A_RECORD)
    write_notebook(notebooks / "02_fails.ipynb", "x = 1", "raise ValueError('boom')")
    return notebooks


def test_notebooks_are_found_in_course_order(course):
    assert [p.name for p in find_notebooks(course)] == ["01_writes_results.ipynb",
                                                        "02_fails.ipynb"]
    assert [p.name for p in find_notebooks(course, ["02"])] == ["02_fails.ipynb"]


def test_unknown_only_lists_the_notebooks(course, tmp_path, capsys):
    with pytest.raises(ValueError, match="Available: 01_writes_results, 02_fails"):
        find_notebooks(course, ["07"])
    assert main(["run", "--profile", "tiny", "--notebooks", str(course), "--only", "07",
                 "--run-dir", str(tmp_path / "run")]) == 2
    assert "--only 07 matches no notebook" in capsys.readouterr().err


def test_runner_writes_the_summary(course, tmp_path, capsys):
    report = run_course("tiny", only=["01"], notebooks_dir=course, run_dir=tmp_path / "run",
                        progress=False)
    printed = capsys.readouterr().out
    assert printed.index("## 01_writes_results") < printed.rindex("Notebook times:")
    times = printed[printed.rindex("Notebook times:"):]  # last, after the long summary
    seconds = report.runs[0].seconds
    assert re.search(rf"01_writes_results\.ipynb +{seconds:.0f} s", times)
    assert re.search(rf"total +{seconds:.0f} s \({seconds / 60:.1f} min\)", times)
    assert (tmp_path / "run" / "01_writes_results.ipynb").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    result = summary["results"]["01_writes_results"]
    assert result["kind"] == "setup"
    assert result["measures"]["load_seconds"] == 0.25 and result["measures"]["parameters"] == 42
    assert "settings.max_new_tokens" not in result["measures"]  # inputs are not results
    markdown = (tmp_path / "run" / "summary.md").read_text()
    assert "## 01_writes_results (setup record, tiny profile)" in markdown
    assert "| similar_cosine | 0.75 |" in markdown
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
    assert "02_fails.ipynb failed in cell 3 of the executed copy" in message  # after papermill's
    assert "the cell that starts `raise ValueError('boom')`" in message     # injected cell
    assert "ValueError: boom" in message


def test_command_line_exits_non_zero_on_failure(course, tmp_path, capsys):
    code = main(["run", "--profile", "tiny", "--notebooks", str(course), "--only", "02",
                 "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 1
    assert "02_fails.ipynb" in capsys.readouterr().err


def test_command_line_rejects_an_unknown_profile(course, capsys):
    assert main(["run", "--profile", "huge", "--notebooks", str(course)]) == 2
    assert "Valid profiles" in capsys.readouterr().err


# --- the summary, from records on disk (no notebook runs) ----------------------------------------


@pytest.fixture()
def results_folder(tmp_path, monkeypatch):
    """results/tiny holding a valid LoRA record, a corrupt file and a schema-1 file."""
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    path = save_record(synthetic_records("tiny")["03_lora"])
    (path.parent / "04_qlora.json").write_text('{"schema": 2, "kind": "fine')  # cut short
    write_json_atomic(path.parent / "05_rag.json", {"notebook": "05_rag", "profile": "tiny",
                                                    "metrics": {"token_f1": 0.4}})  # schema 1
    return path.parent


def test_summary_reads_records_by_field(results_folder):
    record = synthetic_records("tiny")["03_lora"]
    measures = record_measures(record)
    assert measures["tuned.token_f1"] == record.tuned.token_f1
    assert measures["base.exact_match"] == record.base.exact_match
    assert measures["training.steps"] == record.training.steps
    assert measures["memory.training_mib"] == record.memory.training_mib
    assert measures["memory.predicted.weights"] == 513.0
    assert measures["trainable_parameters"] == record.trainable_parameters
    # no lists (history, examples), no inputs (settings, versions), no strings or flags
    assert not any(name.startswith(("training.history", "examples", "settings", "versions"))
                   for name in measures)
    assert "tuned.bertscore_rescaled" not in measures and "method" not in measures

    results = read_results(results_folder, ["03_lora"], "tiny")
    markdown = summarise(results, [NotebookRun("03_lora.ipynb", 12.0, results_folder)])
    assert "## 03_lora (finetune record, tiny profile)" in markdown
    assert f"| tuned.token_f1 | {record.tuned.token_f1:.4g} |" in markdown
    assert "| 03_lora.ipynb | 12 |" in markdown


def test_summary_names_an_unreadable_results_file(results_folder):
    results = read_results(results_folder, ["03_lora", "04_qlora", "05_rag", "06_comparison"],
                           "tiny")
    assert results["03_lora"].record is not None
    markdown = summarise(results, [])
    lines = markdown.splitlines()
    corrupt = [line for line in lines if line.startswith("**04_qlora.json**")]
    assert len(corrupt) == 1 and "cannot be read (JSONDecodeError" in corrupt[0]
    assert "--only 04" in corrupt[0]  # what to rerun
    schema = [line for line in lines if line.startswith("**05_rag.json**")]
    assert len(schema) == 1 and "results schema None" in schema[0]
    missing = [line for line in lines if line.startswith("**06_comparison.json**")]
    assert len(missing) == 1 and "was not written" in missing[0]
    assert "## 03_lora (finetune record" in markdown  # the good record is still summarised


def test_a_results_file_older_than_the_run_is_not_summarised(results_folder):
    results = read_results(results_folder, ["03_lora"], "tiny",
                           not_before={"03_lora": 4_000_000_000.0})  # the run began later
    assert results["03_lora"].record is None
    assert "not rewritten by this run" in results["03_lora"].problem
