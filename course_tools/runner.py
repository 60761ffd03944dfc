"""Headless runner: execute the notebooks in order with papermill and summarise their results.

    python -m course_utils run --profile tiny [--only 03] [--run-dir runs/my-run]

Each notebook is executed into the run folder (the source notebooks stay clean), then the
results files the notebooks wrote are collected into summary.md and summary.json there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_utils.paths import project_root, results_dir
from course_utils.profiles import PROFILE_ENV_VAR, resolve_profile_name
from course_utils.results import flatten, write_json_atomic


class NotebookFailed(RuntimeError):
    """A notebook raised an error under the runner."""


@dataclass
class NotebookRun:
    notebook: str          # file name, e.g. "03_lora.ipynb"
    seconds: float         # wall time of the papermill execution
    output: Path           # executed copy in the run folder


@dataclass
class RunReport:
    profile: str
    run_dir: Path
    runs: list[NotebookRun] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)


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


def execute_notebook(notebook: Path, output: Path, profile: str, progress: bool = True) -> float:
    """Run one notebook with papermill; raise NotebookFailed naming the notebook and cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook), str(output),
            parameters={"PROFILE": profile},
            kernel_name="python3",
            cwd=str(notebook.parent),
            progress_bar=progress,
        )
    except PapermillExecutionError as error:
        raise NotebookFailed(
            f"{notebook.name} failed in cell {error.cell_index} (execution count "
            f"{error.exec_count}): {error.ename}: {error.evalue}\n"
            f"The executed notebook with the full traceback is at {output}"
        ) from error
    return time.perf_counter() - started


def summarise(results: dict[str, dict], runs: list[NotebookRun]) -> str:
    """A Markdown summary: one section per results file, its headline numbers."""
    lines = ["# Course run summary", ""]
    if runs:
        lines += ["| notebook | seconds |", "|---|---|"]
        lines += [f"| {r.notebook} | {r.seconds:.0f} |" for r in runs]
        lines.append("")
    for name, record in results.items():
        lines += [f"## {name} ({record.get('profile', '?')} profile)", ""]
        flat = flatten({k: record.get(k, {}) for k in ("metrics", "memory", "timings")})
        flat = {k: v for k, v in flat.items()
                if isinstance(v, (int, float, bool)) and "per_example" not in k}
        if not flat:
            lines += ["(no numeric results)", ""]
            continue
        lines += ["| measure | value |", "|---|---|"]
        for key, value in flat.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        lines.append("")
    return "\n".join(lines)


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
    run_started = time.time()
    for position, notebook in enumerate(notebooks, start=1):
        print(f"[{position}/{len(notebooks)}] {notebook.name} ({profile})", flush=True)
        seconds = execute_notebook(notebook, run_dir / notebook.name, profile, progress)
        report.runs.append(NotebookRun(notebook.name, seconds, run_dir / notebook.name))
        print(f"    done in {seconds:.0f} s", flush=True)

    folder = results_dir(profile)
    for path in sorted(folder.glob("*.json")):
        if path.stat().st_mtime >= run_started - 1:
            report.results[path.stem] = json.loads(path.read_text())
    summary = summarise(report.results, report.runs)
    (run_dir / "summary.md").write_text(summary)
    write_json_atomic(run_dir / "summary.json", {
        "profile": profile,
        "notebooks": [{"notebook": r.notebook, "seconds": round(r.seconds, 1)}
                      for r in report.runs],
        "results": report.results,
    })
    print(summary)
    print(f"Executed notebooks, summary.md and summary.json are in {run_dir}")
    return report
