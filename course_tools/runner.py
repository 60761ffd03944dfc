"""Did every notebook run, and what did each measure? Execute them in order with papermill.

    python -m course_tools run --profile tiny [--only 03] [--run-dir runs/my-run]

Each notebook is executed into the run folder (the source notebooks stay clean). Then the
results record of each notebook this run executed (notebook NN_name writes
results/<profile>/NN_name.json) is read with course_utils.results.read_record and summarised
by its dataclass fields into summary.md and summary.json there. A results file that cannot be
read gets one line naming the file and what is wrong with it.

Every notebook is read before the first one runs, so a damaged one stops the run at once. On
Ctrl-C the notebook being executed is stopped, its partial copy in the run folder is marked as
interrupted (metadata and a note at its top; the cells after the one running never ran), and a
summary of what finished is still written, marked interrupted (RunInterrupted).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course_utils.config import PROFILE_ENV_VAR, project_root, resolve_profile_name, results_dir
from course_utils.results import Record, ResultsFileError, read_record, write_json_atomic

# Record fields left out of the summary: the run's inputs (settings, library versions) and the
# long lists (training history, example answers, generated texts, per-example scores).
SKIPPED_FIELDS = ("settings", "versions", "history", "examples", "generations")


class NotebookFailed(RuntimeError):
    """A notebook raised an error under the runner."""


class RunFolderError(ValueError):
    """The run folder cannot be created or written."""


class RunInterrupted(Exception):
    """Ctrl-C stopped the run; the partial copy is marked and the summary written."""

    def __init__(self, notebook: str, partial: Path | None, report: RunReport):
        self.notebook, self.partial, self.report = notebook, partial, report
        where = (f"its partial copy, marked as interrupted, is {partial}" if partial
                 else "it left no readable partial copy")
        super().__init__(f"Interrupted while running {notebook}: {where}; the summary of the "
                         f"{len(report.runs)} notebook(s) that finished is in "
                         f"{report.run_dir / 'summary.md'}")


@dataclass
class NotebookRun:
    notebook: str          # file name, e.g. "03_lora.ipynb"
    seconds: float         # wall time of the papermill execution
    output: Path           # executed copy in the run folder
    started: float = 0.0   # time.time() when its execution began


@dataclass
class NotebookResult:
    """The results file of one executed notebook: its record, or why there is none."""

    notebook: str                  # file stem, e.g. "03_lora"
    path: Path                     # results/<profile>/<notebook>.json
    record: Record | None = None
    problem: str | None = None     # set when the record could not be read

    def measures(self) -> dict[str, int | float]:
        return record_measures(self.record) if self.record is not None else {}


@dataclass
class RunReport:
    profile: str
    run_dir: Path
    runs: list[NotebookRun] = field(default_factory=list)
    results: dict[str, NotebookResult] = field(default_factory=dict)   # notebook stem -> result
    interrupted: str | None = None     # the notebook Ctrl-C stopped, if any
    failed: str | None = None          # the notebook that raised an error, if any
    partial: Path | None = None        # its partial executed copy


INTERRUPTED_NOTE = ("**This run was interrupted (Ctrl-C) in cell {cell} of this copy.** Cells "
                    "after it never ran; cell {cell} may not have finished. Run the notebook "
                    "again for complete results.")


def _number(stem: str) -> str | None:
    """The number a notebook's name starts with ("03" of "03_lora"), if any."""
    head = stem.split("_", 1)[0]
    return head if head.isdigit() else None


def _names(path: Path) -> set[str]:
    """What --only accepts for a notebook: its number, its name with or without the number."""
    number = _number(path.stem)
    return {path.stem} | ({number, path.stem.split("_", 1)[1]} if number and "_" in path.stem
                          else set())


def find_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """Notebooks in `folder` in course order (by file name).

    only: numbers ("03"), names ("03_lora", "lora") or file names; each must pick a notebook,
    and none twice.
    """
    notebooks = sorted(p for p in Path(folder).glob("*.ipynb") if not p.name.startswith("."))
    if not notebooks:
        raise ValueError(f"No notebooks (*.ipynb files) in {folder}: pass --notebooks with "
                         f"the course's notebooks/ folder.")
    if not only:
        return notebooks
    available = ", ".join(p.stem for p in notebooks)
    chosen: dict[Path, str] = {}
    for given in only:
        wanted = given.strip().removesuffix(".ipynb")
        if not wanted:
            raise ValueError(f"--only got an empty name {given!r}: give notebook numbers or "
                             f"names, e.g. --only 00 03. Available: {available}")
        matches = [p for p in notebooks if wanted in _names(p)]
        if not matches:
            padded = wanted.zfill(2) if wanted.isdigit() else ""
            hint = (f" (did you mean {padded}?)" if padded != wanted and
                    any(padded in _names(p) for p in notebooks) else "")
            raise ValueError(f"--only {given} matches no notebook{hint}. Available: {available}")
        for path in matches:
            if path in chosen:
                raise ValueError(f"--only names {path.stem} twice ({chosen[path]!r} and "
                                 f"{given!r}): give each notebook once. Available: {available}")
            chosen[path] = given
    return [p for p in notebooks if p in chosen]


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """A notebook file as nbformat reads it (a UTF-8 byte-order mark is allowed); a file that
    is no readable notebook raises ValueError naming it and what to do."""
    fix = f"Restore it (git checkout -- {path.name} in a clone) or remove it from {path.parent}."
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a notebook file. {fix}") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error}). {fix}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start} is "
                         f"{raw[error.start:error.start + 1]!r}): save it as UTF-8. "
                         f"{fix}") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a notebook: invalid JSON at line {error.lineno}, "
                         f"column {error.colno} ({error.msg}); it may be cut short. "
                         f"{fix}") from None
    try:
        notebook = nbformat.reads(text, as_version=4)
        nbformat.validate(notebook)
    except Exception as error:  # nbformat's errors: not a notebook, or an invalid one
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{path} is not a valid notebook ({type(error).__name__}: "
                         f"{first[:200]}). {fix}") from None
    return notebook


def execute_notebook(notebook: Path, output: Path, profile: str, progress: bool = True,
                     parameters: dict | None = None) -> float:
    """Run one notebook with papermill; raise NotebookFailed naming the notebook and cell.
    parameters: values for its parameters cell besides PROFILE."""
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    started = time.perf_counter()
    kernel_log = output.with_name(f".{output.stem}.kernel.log")
    try:
        with open(kernel_log, "wb") as log:
            papermill.execute_notebook(
                read_notebook(notebook), str(output),
                parameters={**(parameters or {}), "PROFILE": profile},
                kernel_name="python3",
                cwd=str(notebook.parent),
                progress_bar=progress,
                kernel_manager_class=_kernel_manager_logging_to(log),
            )
    except PapermillExecutionError as error:
        if error.ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel first
            raise KeyboardInterrupt from None
        first_line = next((line for line in (error.source or "").splitlines() if line.strip()),
                          "")
        raise NotebookFailed(
            f"{notebook.name} failed in cell {error.cell_index} of the executed copy (execution "
            f"count {error.exec_count}), the cell that starts `{first_line[:80]}`: "
            f"{error.ename}: {error.evalue}\n"
            f"The executed notebook with the full traceback is at {output}"
        ) from error
    except DeadKernelError as error:  # the kernel process ended: killed, out of memory
        raise NotebookFailed(
            f"{notebook.name}: its kernel died while running ({error}); it may have run out of "
            f"memory or been killed. The partial executed copy is {output}; the kernel's own "
            f"messages are in {kernel_log}") from None
    finally:
        if kernel_log.is_file() and kernel_log.stat().st_size == 0:
            kernel_log.unlink()
    kernel_log.unlink(missing_ok=True)  # a notebook that finished needs none of it
    return time.perf_counter() - started


def _kernel_manager_logging_to(log):
    """A kernel manager whose kernel writes its own messages (not the cells' output, which
    goes into the notebook) to `log`: a kernel stopped by Ctrl-C prints tracebacks of its
    shutdown there instead of into the terminal."""
    from jupyter_client.manager import AsyncKernelManager

    class LoggingKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw.setdefault("stdout", log)
            kw.setdefault("stderr", log)
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggingKernelManager


def record_measures(record: Record) -> dict[str, int | float]:
    """The numbers of a record by field path, e.g. {"tuned.token_f1": 0.41, "training.steps": 8}.

    Walks dataclasses.asdict(record): nested records and dicts are followed, lists (histories,
    examples, per-example scores, table rows) and SKIPPED_FIELDS are left out, and so are
    strings, flags and missing values. Nothing is parsed from display text.
    """
    def walk(value, path: str) -> Iterator[tuple[str, int | float]]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key not in SKIPPED_FIELDS and "per_example" not in str(key):
                    yield from walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path, value

    return dict(walk(dataclasses.asdict(record), ""))


def file_state(path: Path) -> tuple[int, int, int] | None:
    """(inode, modification time in ns, size) of a file, None when there is none: a file
    written again since (atomically or in place) has another state."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def read_results(folder: Path, notebooks: list[str], profile: str,
                 not_before: dict[str, float] | None = None,
                 before: dict[str, tuple | None] | None = None) -> dict[str, NotebookResult]:
    """The results file of each of `notebooks` (stems) in `folder`, read as a record.

    before: notebook stem -> file_state of its results file before it ran; a file still in
    that state was not written by this run and is reported as such instead of summarised.
    not_before: the same by clock, notebook stem -> time.time() its execution began.
    """
    results = {}
    for stem in notebooks:
        path = Path(folder) / f"{stem}.json"
        result = NotebookResult(notebook=stem, path=path)
        if not path.is_file():
            result.problem = (f"{path} was not written: the notebook saved no results record"
                              + (" (a folder is in its place)" if path.is_dir() else ""))
        elif (before and before.get(stem) is not None and file_state(path) == before[stem]) or \
                (not_before and path.stat().st_mtime < not_before.get(stem, 0.0) - 1):
            result.problem = (f"{path} was not rewritten by this run (it dates from "
                              f"{_dt.datetime.fromtimestamp(path.stat().st_mtime):%Y-%m-%d %H:%M})"
                              ": the notebook saved no results record")
        else:
            try:
                result.record = read_record(path, profile)
            except ResultsFileError as error:
                result.problem = str(error)
            except (OSError, ValueError) as error:  # unreadable in a way read_record missed
                result.problem = (f"{path} cannot be read ({type(error).__name__}: {error}); "
                                  f"rerun the notebook with --only {stem.split('_')[0]}")
        results[stem] = result
    return results


def _shown(value: int | float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summarise(results: dict[str, NotebookResult], runs: list[NotebookRun],
              interrupted: str | None = None, partial: Path | None = None) -> str:
    """A Markdown summary: the notebooks' run times, then one section per results record with
    its numbers by field; an unreadable results file gets one line saying why. interrupted:
    the notebook Ctrl-C stopped (and its partial copy): the summary says so first."""
    lines = ["# Course run summary", ""]
    if interrupted:
        lines += [f"**Interrupted (Ctrl-C) while running {interrupted}**: this summary covers "
                  f"only the {len(runs)} notebook(s) that finished before it. The partial copy "
                  f"is {partial or 'missing'}; notebooks after it did not run.", ""]
    if runs:
        lines += ["| notebook | seconds |", "|---|---|"]
        lines += [f"| {r.notebook} | {r.seconds:.0f} |" for r in runs]
        lines.append("")
    for stem, result in results.items():
        if result.record is None:
            lines += [f"## {stem}", "", f"**{result.path.name}**: {result.problem}", ""]
            continue
        record = result.record
        lines += [f"## {stem} ({record.kind} record, {record.profile} profile)", ""]
        measures = result.measures()
        if not measures:
            lines += ["(no numeric results)", ""]
            continue
        lines += ["| measure | value |", "|---|---|"]
        lines += [f"| {name} | {_shown(value)} |" for name, value in measures.items()]
        lines.append("")
    return "\n".join(lines)


def summary_data(report: RunReport) -> dict:
    """What summary.json holds: run times, and each notebook's measures or its problem."""
    results = {}
    for stem, result in report.results.items():
        entry: dict = {"file": str(result.path)}
        if result.record is None:
            entry["problem"] = result.problem
        else:
            entry.update(kind=result.record.kind, profile=result.record.profile,
                         created=result.record.created, measures=result.measures())
        results[stem] = entry
    return {
        "profile": report.profile,
        "failed": report.failed,
        "interrupted": ({"notebook": report.interrupted,
                         "partial_copy": str(report.partial) if report.partial else None}
                        if report.interrupted else None),
        "notebooks": [{"notebook": r.notebook, "seconds": round(r.seconds, 1)}
                      for r in report.runs],
        "results": results,
    }


def mark_interrupted(output: Path) -> Path | None:
    """Mark a partial executed copy as interrupted; returns it, or None if there is none (or
    it was cut off mid-write and cannot be read).

    papermill ends an interrupted execution by calling every pending cell "completed". Here
    the cells that never started get "pending" back, the last cell that started gets
    "interrupted", the notebook's metadata says so and a note goes on top.
    """
    try:
        notebook = nbformat.read(output, as_version=4)
    except (OSError, ValueError):  # none written yet, or cut off mid-write
        return None
    started = [i for i, cell in enumerate(notebook.cells)
               if cell.metadata.get("papermill", {}).get("start_time")]
    last = started[-1] if started else 0
    for i, cell in enumerate(notebook.cells):
        state = cell.metadata.setdefault("papermill", {})
        if i == last and started:
            state["status"] = "interrupted"
        elif i > last or not started:
            state["status"] = "pending"
    notebook.metadata["course_runner"] = {
        "interrupted": True,
        "interrupted_cell": last + 2 if started else None,  # counted from 1, after the note
        "at": _dt.datetime.now().isoformat(timespec="seconds")}
    notebook.metadata.setdefault("papermill", {})["exception"] = True
    note = nbformat.v4.new_markdown_cell(
        INTERRUPTED_NOTE.format(cell=last + 2) if started else
        "**This run was interrupted (Ctrl-C) before any cell ran.** Run the notebook again.")
    note.metadata["tags"] = ["course-runner-interrupted"]
    notebook.cells.insert(0, note)
    staging = output.with_name(f".{output.name}.marking")
    nbformat.write(notebook, staging)
    os.replace(staging, output)
    return output


@contextmanager
def _no_second_interrupt():
    """Ignore further Ctrl-C while the interrupted run is being written up."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals cannot be changed there
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def prepare_run_folder(run_dir: Path, names: list[str]) -> None:
    """Create the run folder and check it can be written; say which earlier files a run
    writes over. Raises RunFolderError with what to do."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        reason = ("a file is in the way" if isinstance(error, (FileExistsError,
                                                                NotADirectoryError))
                  else error.strerror or str(error))
        raise RunFolderError(
            f"Cannot write the run folder {run_dir} ({reason}: {error.filename or run_dir}). "
            f"Pass --run-dir with a writable folder, or leave it out for "
            f"runs/<date>-<profile> in the checkout.") from None
    earlier = [name for name in names if (run_dir / name).exists()]
    if earlier:
        print(f"Note: {run_dir} already holds {', '.join(earlier)} from an earlier run; this "
              f"run replaces them.", flush=True)


def run_course(profile: str = "tiny", only: list[str] | None = None,
               notebooks_dir: Path | None = None, run_dir: Path | None = None,
               progress: bool = True) -> RunReport:
    """Execute the notebooks in order, then write summary.md and summary.json.

    Raises RunInterrupted on Ctrl-C, after marking the partial copy and writing the summary.
    """
    profile = resolve_profile_name(profile)
    root = project_root()
    notebooks_dir = Path(notebooks_dir or (root / "notebooks" if root else "notebooks"))
    if not notebooks_dir.is_dir():
        what = "is a file, not a folder" if notebooks_dir.exists() else "does not exist"
        raise FileNotFoundError(
            f"No notebooks folder at {notebooks_dir} (it {what}). Run from the course checkout "
            f"or pass --notebooks PATH."
        )
    notebooks = find_notebooks(notebooks_dir, only)
    for notebook in notebooks:  # a damaged notebook stops the run before any runs
        read_notebook(notebook)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(run_dir or (root or Path.cwd()) / "runs" / f"{stamp}-{profile}")
    if run_dir.resolve() == notebooks_dir.resolve():
        raise RunFolderError(f"--run-dir {run_dir} is the notebooks folder: the executed copies "
                             f"would overwrite the notebooks themselves. Pass another folder.")
    prepare_run_folder(run_dir, [p.name for p in notebooks] + ["summary.md", "summary.json"])
    os.environ[PROFILE_ENV_VAR] = profile  # the kernels inherit it too
    try:
        results_folder = results_dir(profile, start=notebooks_dir)
    except OSError as error:
        raise RunFolderError(
            f"Cannot create the results folder {error.filename or ''} "
            f"({error.strerror or error}; COURSE_RESULTS_DIR="
            f"{os.environ.get('COURSE_RESULTS_DIR', '(not set)')}). Point COURSE_RESULTS_DIR "
            f"at a writable folder, or unset it for results/ in the checkout.") from None

    report = RunReport(profile=profile, run_dir=run_dir)
    before: dict[str, tuple | None] = {}
    for position, notebook in enumerate(notebooks, start=1):
        print(f"[{position}/{len(notebooks)}] {notebook.name} ({profile})", flush=True)
        before[notebook.stem] = file_state(results_folder / f"{notebook.stem}.json")
        started = time.time()
        output = run_dir / notebook.name
        try:
            seconds = execute_notebook(notebook, output, profile, progress)
        except KeyboardInterrupt:
            with _no_second_interrupt():
                report.interrupted, report.partial = notebook.name, mark_interrupted(output)
                write_summary(report, results_folder, before, echo=False)
            raise RunInterrupted(notebook.name, report.partial, report) from None
        except NotebookFailed:
            report.failed = notebook.name
            write_summary(report, results_folder, before, echo=False)
            raise
        except OSError as error:
            raise RunFolderError(
                f"{notebook.name} could not be executed into {output} ({type(error).__name__}: "
                f"{error}). Check that the run folder is writable and the disk not full, or "
                f"pass another --run-dir.") from None
        report.runs.append(NotebookRun(notebook.name, seconds, output, started))
        print(f"    done in {seconds:.0f} s", flush=True)

    write_summary(report, results_folder, before)
    print(times_table(report.runs))
    print(f"Executed notebooks, summary.md and summary.json are in {run_dir}")
    return report


def times_table(runs: list[NotebookRun]) -> str:
    """Each notebook's seconds and the total, printed last, where a long summary cannot hide
    them (benchmarks/course_run.py compares runs with and without the answer cache)."""
    total = sum(run.seconds for run in runs)
    lines = ["Notebook times:"]
    lines += [f"  {run.notebook:<28} {run.seconds:7.0f} s" for run in runs]
    lines.append(f"  {'total':<28} {total:7.0f} s ({total / 60:.1f} min)")
    return "\n".join(lines)


def write_summary(report: RunReport, results_folder: Path, before: dict[str, tuple | None],
                  echo: bool = True) -> None:
    """Read the results files of the notebooks this run executed; write summary.md and
    summary.json into the run folder."""
    report.results = read_results(results_folder, [Path(r.notebook).stem for r in report.runs],
                                  report.profile, before=before)
    summary = summarise(report.results, report.runs, report.interrupted, report.partial)
    if report.failed:
        summary = summary.replace("# Course run summary\n", f"# Course run summary\n\n**Stopped: "
                                  f"{report.failed} failed**; notebooks after it did not run.\n", 1)
    try:
        write_json_atomic(report.run_dir / "summary.json", summary_data(report))
        staging = report.run_dir / ".summary.md.partial"
        staging.write_text(summary, encoding="utf-8")
        os.replace(staging, report.run_dir / "summary.md")
    except OSError as error:
        raise RunFolderError(f"Cannot write the summary into {report.run_dir} "
                             f"({error.strerror or error}). The executed notebooks are there; "
                             f"free space or pass another --run-dir.") from None
    if echo:
        print(summary)
