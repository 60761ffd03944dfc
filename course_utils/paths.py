"""Where the course keeps its cache, results and run folders."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "COURSE_CACHE_DIR"
RESULTS_ENV_VAR = "COURSE_RESULTS_DIR"


def project_root(start: Path | None = None) -> Path | None:
    """The checkout this code runs in (the folder holding pyproject.toml and notebooks/), if any."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return None


def cache_dir() -> Path:
    """Converted models and other derived files: $COURSE_CACHE_DIR or ~/.cache/course_utils."""
    folder = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "course_utils")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def results_dir(profile_name: str) -> Path:
    """results/<profile>/ in the checkout (or the current folder outside one).

    $COURSE_RESULTS_DIR replaces the `results` folder.
    """
    base = os.environ.get(RESULTS_ENV_VAR)
    if base:
        root = Path(base)
    else:
        root = (project_root() or Path.cwd()) / "results"
    folder = root / profile_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
