"""How long does the tiny course take, notebook by notebook, with and without the answer cache?

    .venv/bin/python benchmarks/course_run.py                 # both runs (~40 min on 2 cores)
    .venv/bin/python benchmarks/course_run.py --only 01 02 03 # the notebooks that share answers

The course runner (`python -m course_tools run --profile tiny`) runs twice, one run after the
other on the same machine: first with the answer cache off (COURSE_ANSWER_CACHE=off: every
notebook generates every answer), then with an empty cache folder, which notebooks 01 and 02
fill and 02 and 03 read (course_utils/answer_cache.py). Each notebook's seconds come from the
runner's summary.json; the record gives both runs side by side, their ratio, the total against
the issue's target (6 minutes for the whole course on 2 CPU cores) and the load average, since
a busy machine slows every notebook. Results: benchmarks/results/course-run-<machine>.json
(not committed: the numbers belong to the machine).

Run it on a quiet machine: two processes that both compute with PyTorch on 2 cores slow each
other down many times over.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gpu_check import OFFLINE_ENV  # the tiny profile, offline (this folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET_SECONDS = 6 * 60


def run_course(run_dir: Path, answer_cache: str, only: list[str] | None) -> dict:
    """One course run in its own process; {notebook: seconds} from the runner's summary."""
    env = {**os.environ, **OFFLINE_ENV, "COURSE_ANSWER_CACHE": answer_cache,
           "COURSE_RESULTS_DIR": str(run_dir / "results")}
    command = [sys.executable, "-m", "course_tools", "run", "--profile", "tiny",
               "--run-dir", str(run_dir / "notebooks"), "--no-progress"]
    if only:
        command += ["--only", *only]
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    summary = json.loads((run_dir / "notebooks" / "summary.json").read_text())
    return {entry["notebook"]: entry["seconds"] for entry in summary["notebooks"]}


def compare(without: dict, with_cache: dict) -> dict:
    """Per notebook and in total: seconds without and with the cache, and their ratio."""
    rows = [{"notebook": name, "without_cache_s": without[name], "with_cache_s": with_cache[name],
             "ratio": round(with_cache[name] / without[name], 3)}
            for name in without if name in with_cache]
    total_without = sum(row["without_cache_s"] for row in rows)
    total_with = sum(row["with_cache_s"] for row in rows)
    return {"notebooks": rows,
            "total": {"without_cache_s": round(total_without, 1),
                      "with_cache_s": round(total_with, 1),
                      "ratio": round(total_with / total_without, 3) if total_without else None},
            "target": {"name": "the tiny course in at most 6 minutes on 2 CPU cores",
                       "seconds": TARGET_SECONDS, "met": total_with <= TARGET_SECONDS}}


def table(result: dict) -> str:
    lines = [f"{'notebook':<26} {'no cache, s':>11} {'cache, s':>9} {'ratio':>6}"]
    for row in result["notebooks"]:
        lines.append(f"{row['notebook']:<26} {row['without_cache_s']:>11.0f} "
                     f"{row['with_cache_s']:>9.0f} {row['ratio']:>6.2f}")
    total = result["total"]
    lines.append(f"{'total':<26} {total['without_cache_s']:>11.0f} {total['with_cache_s']:>9.0f} "
                 f"{total['ratio'] or 0:>6.2f}")
    target = result["target"]
    lines.append(f"target ({target['name']}): {'met' if target['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="notebooks to run, by number (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from install_cost import (
        machine,  # the machine in words and a short name (its folder is on sys.path)
    )

    started = _dt.datetime.now()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="course-run-") as scratch:
        scratch = Path(scratch)
        without = run_course(scratch / "without", "off", args.only)
        with_cache = run_course(scratch / "with", str(scratch / "answer-cache"), args.only)
    result = {"date": started.isoformat(timespec="seconds"), "machine": machine(),
              "load_average": {"start": load_start, "end": os.getloadavg()},
              "only": args.only, **compare(without, with_cache)}
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"course-run-{result['machine']['name']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"written to {path}")
    return 0 if result["target"]["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
