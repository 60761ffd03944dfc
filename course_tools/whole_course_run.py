"""The code of standalone/whole_course.ipynb, which carries this file verbatim in one cell.

It runs the course's notebooks in order with papermill on the machine the notebook is uploaded
to, and keeps everything in one folder:

    <folder>/notebooks/   the notebooks it carries, as in the repository
    <folder>/executed/    each notebook as it ran (and NN.finished.json once it finished)
    <folder>/results/     the results records (COURSE_RESULTS_DIR), which notebook 06 compares
    <folder>/runs/        checkpoints, adapters and merged models (the kernels start here)

It needs papermill, nbformat and IPython (the notebook's install cell brings what is missing)
and course_utils; nothing from course_tools.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill
from IPython.display import Markdown, display
from papermill.exceptions import PapermillExecutionError


class CourseNotebookFailed(RuntimeError):
    """A notebook of the course raised an error; the message names it and its cell."""


@dataclass
class Course:
    profile: str                 # the resolved profile every notebook runs in
    folder: Path                 # the one folder of this run (see the module's docstring)
    notebooks: list[Path]        # the selected notebooks, in course order
    available: list[Path]        # every notebook carried, written to <folder>/notebooks

    @property
    def executed(self) -> Path:
        return self.folder / "executed"

    @property
    def results(self) -> Path:
        return self.folder / "results"


def course_folder(requested: str = "auto") -> Path:
    """The run's folder: `requested`, or by platform where it is "auto"."""
    if requested and requested.strip().lower() != "auto":
        return Path(requested).expanduser().resolve()
    if "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
        return Path("/kaggle/working/llm-course")  # the notebook's Output, kept after the session
    if "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ:
        return Path("/content/llm-course")          # gone with the runtime: download the zip
    return Path.cwd().resolve() / "llm-course"


def select_notebooks(names: list[str], wanted: str) -> list[str]:
    """The names (sorted) that `wanted` picks: "all", or numbers or names such as "00 03 06"."""
    words = wanted.replace(",", " ").split()
    if not words or [w.lower() for w in words] == ["all"]:
        return sorted(names)
    unknown = [w for w in words if not any(n.startswith(w) for n in names)]
    if unknown:
        raise ValueError(f"NOTEBOOKS names {', '.join(unknown)}: no such notebook here. "
                         f"Available: {', '.join(sorted(names))}")
    return sorted(n for n in names if any(n.startswith(w) for w in words))


def prepare_course(embedded: dict[str, str], profile: str, wanted: str,
                   folder: str = "auto") -> Course:
    """Resolve the profile, write the selected notebooks into the run's folder and point the
    kernels at it (COURSE_RESULTS_DIR and COURSE_PROFILE are inherited by every kernel)."""
    from course_utils.config import PROFILE_ENV_VAR, RESULTS_ENV_VAR, resolve_profile_name

    profile = resolve_profile_name(profile)
    root = course_folder(folder)
    if str(root).startswith("/content/drive/") and not Path("/content/drive/MyDrive").is_dir():
        from google.colab import drive  # the folder is on Google Drive: mount it first

        drive.mount("/content/drive")
    names = select_notebooks(list(embedded), wanted)
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    course = Course(profile=profile, folder=root, notebooks=[], available=[])
    for name in sorted(embedded):
        path = root / "notebooks" / name
        path.write_bytes(base64.b64decode(embedded[name]))
        course.available.append(path)
        if name in names:
            course.notebooks.append(path)
    course.executed.mkdir(exist_ok=True)
    os.environ[RESULTS_ENV_VAR] = str(course.results)
    os.environ[PROFILE_ENV_VAR] = profile
    print(f"Profile {profile}; notebooks {', '.join(p.stem[:2] for p in course.notebooks)}.\n"
          f"Everything goes to {root}: executed notebooks in executed/, results in results/, "
          f"checkpoints and adapters in runs/.")
    return course


def notebook_parameters(course: Course, max_steps: int = 0, n_test: int = 0,
                        extra: dict | None = None) -> dict[str, dict]:
    """The parameters each selected notebook gets: PROFILE, MAX_STEPS and N_TEST (when not 0)
    and `extra`, each only where the notebook's parameters cell has it. A name in `extra` that
    no notebook of the course has is refused: it is a typo."""
    wanted = {"PROFILE": course.profile, **({"MAX_STEPS": max_steps} if max_steps else {}),
              **({"N_TEST": n_test} if n_test else {}), **(extra or {})}
    declared = {p.name: papermill.inspect_notebook(str(p)) for p in course.available}
    unknown = [k for k in extra or {} if not any(k in names for names in declared.values())]
    if unknown:
        raise ValueError(f"PARAMETERS names {', '.join(unknown)}, which no notebook has")
    return {p.name: {k: v for k, v in wanted.items() if k in declared[p.name]}
            for p in course.notebooks}


def _finished_marker(course: Course, notebook: Path, parameters: dict) -> dict:
    return {"profile": course.profile, "parameters": parameters,
            "notebook_sha256": hashlib.sha256(notebook.read_bytes()).hexdigest()}


def _failed_cell(output: Path) -> tuple[int, int, dict]:
    """(index among the notebook's own cells, count of them, the cell) of the cell that failed
    or was running when the kernel died, read from the executed copy papermill saved (none
    when the kernel never started)."""
    cells = [c for c in (nbformat.read(output, as_version=4).cells if output.is_file() else [])
             if not {"injected-parameters", "papermill-error-cell-tag"}
             & set(c.metadata.get("tags", []))]
    states = [cell.metadata.get("papermill", {}) for cell in cells]
    failed = [i for i, state in enumerate(states) if state.get("exception")]
    started = [i for i, state in enumerate(states) if state.get("start_time")]
    index = failed[0] if failed else started[-1] if started else -1
    return index, len(cells), cells[index] if index >= 0 else {}


def _failure(name: str, output: Path, error: Exception) -> CourseNotebookFailed:
    index, total, cell = _failed_cell(output)
    first = next((line for line in cell.get("source", "").splitlines() if line.strip()), "")
    count = f" (In [{cell['execution_count']}])" if cell.get("execution_count") else ""
    where = (f"in its cell {index + 1} of {total}{count}, the cell that starts `{first[:80]}`"
             if index >= 0 else "before any cell ran")
    if isinstance(error, PapermillExecutionError):
        what = f"{error.ename}: {error.evalue}"
        trace = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback or []))
        print("\n".join(trace.splitlines()[-25:]))
    else:  # the kernel died or did not start
        what = (f"{type(error).__name__}: {error} (a kernel dies most often when memory runs "
                f"out)")
    return CourseNotebookFailed(
        f"{name} failed {where}: {what}\nIts executed copy, up to the failure (with the "
        f"traceback), is {output}. Fix the cause and run this notebook again: notebooks that "
        f"finished are skipped (SKIP_FINISHED) and training resumes from its last checkpoint.")


def run_course(course: Course, parameters: dict[str, dict], skip_finished: bool = True,
               keep_checkpoints: bool = False) -> list[dict]:
    """Execute the notebooks in order; stop at the first that fails (CourseNotebookFailed).

    A notebook that finished earlier in this folder with the same profile, parameters and
    source is skipped while skip_finished holds and no notebook before it ran again. Without
    keep_checkpoints a finished notebook's checkpoint-N folders are deleted: they only serve to
    resume it (its adapters and merged models stay).
    """
    runs, ran = [], False
    for position, notebook in enumerate(course.notebooks, start=1):
        name, given = notebook.name, parameters.get(notebook.name, {})
        output = course.executed / name
        marker = course.executed / f"{notebook.stem}.finished.json"
        expected = _finished_marker(course, notebook, given)
        header = f"[{position}/{len(course.notebooks)}] {name}"
        if skip_finished and not ran and marker.is_file() and output.is_file():
            earlier = json.loads(marker.read_text())
            if {k: earlier.get(k) for k in expected} == expected:
                print(f"{header}: finished earlier in this folder, skipped "
                      f"(SKIP_FINISHED = False runs it again)", flush=True)
                runs.append({"notebook": name, "status": "finished earlier",
                             "minutes": earlier.get("seconds", 0) / 60})
                continue
        print(f"{header}, parameters {given}", flush=True)
        marker.unlink(missing_ok=True)
        ran, started = True, time.perf_counter()
        try:
            papermill.execute_notebook(str(notebook), str(output), parameters=given,
                                       kernel_name="python3", cwd=str(course.folder),
                                       progress_bar=True)
        except Exception as error:
            raise _failure(name, output, error) from None
        seconds = time.perf_counter() - started
        marker.write_text(json.dumps({**expected, "seconds": seconds}, indent=1))
        freed = 0 if keep_checkpoints else _delete_checkpoints(course, notebook.stem)
        print(f"    done in {seconds / 60:.1f} min"
              + (f"; its checkpoints deleted ({freed / 1e9:.1f} GB)" if freed else ""),
              flush=True)
        runs.append({"notebook": name, "status": "ran", "minutes": seconds / 60})
    return runs


def _delete_checkpoints(course: Course, stem: str) -> int:
    """Delete the checkpoint folders of a finished notebook; the bytes freed."""
    freed = 0
    folder = course.folder / "runs" / course.profile / stem
    for checkpoint in sorted(folder.rglob("*checkpoint-*")) if folder.is_dir() else []:
        if checkpoint.is_dir():
            freed += sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
            shutil.rmtree(checkpoint)
    return freed


def show_executed(path: Path):
    """A notebook's outputs as it ran, under the section headings that have any: printed text,
    tables and plots (warnings and progress bars, written to stderr, are left out)."""
    heading = None
    for cell in nbformat.read(path, as_version=4).cells:
        tags = set(cell.metadata.get("tags", []))
        if tags & {"parameters", "injected-parameters", "papermill-error-cell-tag"}:
            continue
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            heading = cell.source.splitlines()[0]
        for output in cell.get("outputs", []):
            shown = output.output_type in ("display_data", "execute_result") or (
                output.output_type == "stream" and output.name == "stdout")
            if shown and heading:
                display(Markdown(heading))
                heading = None
            if output.output_type == "stream" and shown:
                print(output.text, end="")
            elif shown:
                display(output.data, raw=True, metadata=output.get("metadata") or None)


def show_comparison(course: Course, runs: list[dict], comparison: str = "06_comparison.ipynb"):
    """The run's table, notebook 06's outputs (the comparison) and a zip of what to download."""
    rows = ["| notebook | status | minutes | results record |", "|---|---|---|---|"]
    for run in runs:
        record = course.results / course.profile / f"{Path(run['notebook']).stem}.json"
        rows.append(f"| {run['notebook']} | {run['status']} | {run['minutes']:.1f} | "
                    f"{record if record.is_file() else '-'} |")
    display(Markdown("\n".join(rows)))
    executed = course.executed / comparison
    if executed.is_file():
        display(Markdown(f"### {comparison}, as it ran"))
        show_executed(executed)
    else:
        print(f"{comparison} was not among the notebooks run: no comparison to show.")
    archive = course.folder / f"course-{course.profile}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for folder in (course.executed, course.results):
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    bundle.write(file, file.relative_to(course.folder))
    print(f"\nExecuted notebooks and results records, zipped: {archive}")
    return archive
