"""Did every notebook run, and what did each measure? Execute them in order with papermill.

    python -m course_tools run --profile tiny [--only 03] [--run-dir runs/my-run]

Each notebook is executed into the run folder (the source notebooks stay clean). Then the
results record of each notebook this run executed (notebook NN_name writes
results/<profile>/NN_name.json) is read with course_utils.results.read_record and summarised
by its dataclass fields into summary.md and summary.json there. A results file that cannot be
read gets one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from course_utils.config import PROFILE_ENV_VAR, project_root, resolve_profile_name, results_dir
from course_utils.results import Record, ResultsFileError, read_record, write_json_atomic

# Record fields left out of the summary: the run's inputs (settings, library versions) and the
# long lists (training history, example answers, generated texts, per-example scores).
SKIPPED_FIELDS = ("settings", "versions", "history", "examples", "generations")


class NotebookFailed(RuntimeError):
    """A notebook raised an error under the runner."""


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


def find_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """Notebooks in `folder` in course order (by file name); `only` filters by prefix or stem."""
    notebooks = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if only:
        wanted = [o.removesuffix(".ipynb") for o in only]
        notebooks = [p for p in notebooks
                     if any(p.stem == w or p.stem.startswith(w + "_") or p.stem.startswith(w)
                            for w in wanted)]
        if not notebooks:
            names = ", ".join(p.stem for p in sorted(folder.glob("*.ipynb")))
            raise ValueError(f"--only {' '.join(only)} matches no notebook. Available: {names}")
    return notebooks


def execute_notebook(notebook: Path, output: Path, profile: str, progress: bool = True,
                     parameters: dict | None = None) -> float:
    """Run one notebook with papermill; raise NotebookFailed naming the notebook and cell.
    parameters: values for its parameters cell besides PROFILE."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook), str(output),
            parameters={**(parameters or {}), "PROFILE": profile},
            kernel_name="python3",
            cwd=str(notebook.parent),
            progress_bar=progress,
        )
    except PapermillExecutionError as error:
        first_line = next((line for line in (error.source or "").splitlines() if line.strip()),
                          "")
        raise NotebookFailed(
            f"{notebook.name} failed in cell {error.cell_index} of the executed copy (execution "
            f"count {error.exec_count}), the cell that starts `{first_line[:80]}`: "
            f"{error.ename}: {error.evalue}\n"
            f"The executed notebook with the full traceback is at {output}"
        ) from error
    return time.perf_counter() - started


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


def read_results(folder: Path, notebooks: list[str], profile: str,
                 not_before: dict[str, float] | None = None) -> dict[str, NotebookResult]:
    """The results file of each of `notebooks` (stems) in `folder`, read as a record.

    not_before: notebook stem -> time.time() its execution began; a file older than that was
    not written by this run and is reported as such instead of summarised.
    """
    results = {}
    for stem in notebooks:
        path = Path(folder) / f"{stem}.json"
        result = NotebookResult(notebook=stem, path=path)
        if not path.is_file():
            result.problem = f"{path} was not written: the notebook saved no results record"
        elif not_before and path.stat().st_mtime < not_before.get(stem, 0.0) - 1:
            result.problem = (f"{path} was not rewritten by this run (it dates from "
                              f"{_dt.datetime.fromtimestamp(path.stat().st_mtime):%Y-%m-%d %H:%M})"
                              ": the notebook saved no results record")
        else:
            try:
                result.record = read_record(path, profile)
            except ResultsFileError as error:
                result.problem = str(error)
        results[stem] = result
    return results


def _shown(value: int | float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summarise(results: dict[str, NotebookResult], runs: list[NotebookRun]) -> str:
    """A Markdown summary: the notebooks' run times, then one section per results record with
    its numbers by field; an unreadable results file gets one line saying why."""
    lines = ["# Course run summary", ""]
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
        "notebooks": [{"notebook": r.notebook, "seconds": round(r.seconds, 1)}
                      for r in report.runs],
        "results": results,
    }


def run_course(profile: str = "tiny", only: list[str] | None = None,
               notebooks_dir: Path | None = None, run_dir: Path | None = None,
               progress: bool = True) -> RunReport:
    """Execute the notebooks in order, then write summary.md and summary.json."""
    profile = resolve_profile_name(profile)
    root = project_root()
    notebooks_dir = Path(notebooks_dir or (root / "notebooks" if root else "notebooks"))
    if not notebooks_dir.is_dir():
        raise FileNotFoundError(
            f"No notebooks folder at {notebooks_dir}. Run from the course checkout or pass "
            f"--notebooks PATH."
        )
    notebooks = find_notebooks(notebooks_dir, only)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(run_dir or (root or Path.cwd()) / "runs" / f"{stamp}-{profile}")
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[PROFILE_ENV_VAR] = profile  # the kernels inherit it too

    report = RunReport(profile=profile, run_dir=run_dir)
    for position, notebook in enumerate(notebooks, start=1):
        print(f"[{position}/{len(notebooks)}] {notebook.name} ({profile})", flush=True)
        started = time.time()
        seconds = execute_notebook(notebook, run_dir / notebook.name, profile, progress)
        report.runs.append(NotebookRun(notebook.name, seconds, run_dir / notebook.name, started))
        print(f"    done in {seconds:.0f} s", flush=True)

    report.results = read_results(results_dir(profile, start=notebooks_dir),
                                  [Path(r.notebook).stem for r in report.runs], profile,
                                  not_before={Path(r.notebook).stem: r.started
                                              for r in report.runs})
    summary = summarise(report.results, report.runs)
    (run_dir / "summary.md").write_text(summary)
    write_json_atomic(run_dir / "summary.json", summary_data(report))
    print(summary)
    print(f"Executed notebooks, summary.md and summary.json are in {run_dir}")
    return report
