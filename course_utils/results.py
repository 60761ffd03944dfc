"""Results are files: every notebook writes one JSON of what it measured.

`results/<profile>/<notebook>.json` holds the profile, models, hyperparameters, metrics,
memory, timings and library versions of one run. Summaries and plots read these files; no
number is typed by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from course_utils.paths import results_dir

SECTIONS = ("models", "hyperparameters", "metrics", "memory", "timings", "extra")


def library_versions() -> dict[str, str]:
    """Versions of the libraries the notebooks depend on (missing ones are left out)."""
    import importlib.metadata as md
    import platform

    names = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets",
             "sentence-transformers", "faiss-cpu", "bert-score", "langgraph", "papermill",
             "course-utils"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def _jsonable(value: Any) -> Any:
    """Plain JSON types for numpy/torch scalars, paths and dtypes."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return str(value)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON so a reader sees the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_jsonable(data), handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_results(notebook: str, profile, **sections: dict) -> Path:
    """Write results/<profile>/<notebook>.json and return its path.

    notebook: e.g. "02_full_finetuning"; profile: a Profile (or its name).
    sections: any of models, hyperparameters, metrics, memory, timings, extra.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown results sections {sorted(unknown)}; use {SECTIONS}")
    profile_name = getattr(profile, "name", profile)
    record = {
        "notebook": notebook,
        "profile": profile_name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{key: sections.get(key, {}) for key in SECTIONS},
        "versions": library_versions(),
    }
    if hasattr(profile, "to_dict"):
        record["profile_settings"] = profile.to_dict()
    return write_json_atomic(results_dir(profile_name) / f"{notebook}.json", record)


def load_results(notebook: str, profile_name: str) -> dict:
    path = results_dir(profile_name) / f"{notebook}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No results for {notebook} in the {profile_name} profile ({path}). "
            f"Run notebooks/{notebook}.ipynb first (or `python -m course_utils run "
            f"--profile {profile_name}`)."
        )
    return json.loads(path.read_text())


def load_all_results(profile_name: str) -> dict[str, dict]:
    """Every results file of a profile, keyed by notebook name, in notebook order."""
    folder = results_dir(profile_name)
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
