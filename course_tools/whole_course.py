"""How does the whole course run in one upload? standalone/whole_course.ipynb.

A standalone copy uploaded alone to Kaggle or Colab runs on a machine of its own, where the
results of the other notebooks never are: notebook 06 would compare nothing. This notebook
carries them all (base64 of the repository's files), installs course_utils like the copies do
(plus papermill, which runs the notebooks, and ipykernel when missing), runs them in order in
one folder with the code of course_tools/whole_course_run.py (carried verbatim) and shows
notebook 06's comparison at the end. `python -m course_tools standalone` builds it.
"""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat

from course_tools.standalone import install_cell

COURSE_NOTEBOOK = "whole_course.ipynb"
TOOLS = ("papermill", "ipykernel")  # what runs notebooks: installed here only, when missing
NOTEBOOKS_TAG = "course-notebooks"
RUN_CODE_TAG = "course-run-code"
RUN_CODE = Path(__file__).with_name("whole_course_run.py")

INTRO = """\
# The whole course in one upload

A copy of a single notebook, uploaded alone to Kaggle or Colab, runs on a machine of its own:
the results of the other notebooks are not there, so notebook 06 has nothing to compare. This
notebook carries all of them (00-06, as in the repository) and runs them in order, with
papermill, on the machine it is uploaded to. Everything lands in one folder (`COURSE_DIR`
below); at the end you see notebook 06's comparison, and every executed notebook is kept for
download.

- **Kaggle**: *Create -> New notebook -> File -> Import notebook*, pick this file, turn on a GPU
  accelerator and internet, then *Run all* (or *Save Version -> Save & Run All*, which runs it
  without the browser open and keeps `/kaggle/working` as the version's output).
- **Colab**: *File -> Upload notebook*, *Runtime -> Change runtime type -> T4 GPU*, *Run all*.
  Colab deletes `/content` with the runtime: set `COURSE_DIR` to a Drive folder (e.g.
  `"/content/drive/MyDrive/llm-course"`, mounted on first use) to keep results and checkpoints
  across sessions, or download the zip at the end.

On a T4 the `full` profile takes one to two hours after the installation (the course's plan:
`python -m course_utils plan --gpu t4`). When a session ends midway, run this notebook again with
the same `COURSE_DIR`: notebooks that finished are skipped and training resumes from the last
checkpoint. Disk: a checkpoint of notebook 02 (Qwen3-0.6B, full fine-tuning, with AdamW
states) is about 7 GB and two exist while the next is written, out of the 20 GB Kaggle keeps in
`/kaggle/working`; a finished notebook's checkpoints are deleted unless `KEEP_CHECKPOINTS`.
"""

PARAMETERS = """\
PROFILE: str = "auto"  # tiny | full | auto (auto: COURSE_PROFILE, else GPU -> full, CPU -> tiny)
NOTEBOOKS: str = "all"  # which notebooks, by number: "all", or e.g. "00 03 06"
COURSE_DIR: str = "auto"  # one folder for everything; auto: /kaggle/working/llm-course, /content/llm-course, else ./llm-course
MAX_STEPS: int = 0  # optimizer steps of every notebook that trains; 0 keeps each recipe's
N_TEST: int = 0  # test questions of every notebook that evaluates; 0 keeps the whole shared test split
PARAMETERS: dict = {}  # more parameters by name, for every notebook that has them, e.g. {"SWEEP": False}
SKIP_FINISHED: bool = True  # skip notebooks that finished in COURSE_DIR (same profile, parameters, source)
KEEP_CHECKPOINTS: bool = False  # keep a finished notebook's checkpoints (they only serve to resume it)
"""

RUN = """\
course = prepare_course(NOTEBOOK_FILES, PROFILE, NOTEBOOKS, COURSE_DIR)
parameters = notebook_parameters(course, MAX_STEPS, N_TEST, PARAMETERS)
runs = run_course(course, parameters, SKIP_FINISHED, KEEP_CHECKPOINTS)
"""


def embedded_notebooks_source(notebooks: list[Path]) -> str:
    """A cell that defines NOTEBOOK_FILES: file name -> base64 of the notebook's bytes."""
    lines = ["# The course's notebooks, byte for byte as in the repository (base64).",
             "NOTEBOOK_FILES = {"]
    lines += [f'    "{p.name}": "{base64.b64encode(p.read_bytes()).decode("ascii")}",'
              for p in notebooks]
    return "\n".join([*lines, "}"]) + "\n"


def _hidden(source: str, tag: str):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = [tag]
    cell.metadata["jupyter"] = {"source_hidden": True}
    return cell


def make_whole_course(notebooks: list[Path], install_source: str):
    """The whole-course notebook: intro, install cell, the notebooks, the run code, the
    parameters cell, then the run and the comparison."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    parameters = code(PARAMETERS)
    parameters.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        md(INTRO),
        install_cell(install_source),
        _hidden(embedded_notebooks_source(notebooks), NOTEBOOKS_TAG),
        _hidden(RUN_CODE.read_text(), RUN_CODE_TAG),
        md("## Parameters\n\npapermill can set them too "
           "(`papermill whole_course.ipynb out.ipynb -p NOTEBOOKS \"00 06\"`)."),
        parameters,
        md("## Run the notebooks\n\nOne line per notebook, then papermill's progress over its "
           "cells. A notebook that fails stops the run with its name and cell; its executed "
           "copy, in `executed/`, holds the full traceback."),
        code(RUN),
        md("## The comparison\n\nNotebook 06 as it ran here, and a zip of the executed notebooks "
           "and results records to download."),
        code("archive = show_comparison(course, runs)"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:02d}"
    return nb
