"""The setup every notebook runs first: resolve the profile, pick hardware, seed, print versions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from course_utils.hardware import Hardware, detect_hardware
from course_utils.profiles import Profile, get_profile
from course_utils.results import library_versions


@dataclass
class NotebookContext:
    name: str                                 # notebook file stem, e.g. "03_lora"
    profile: Profile                          # models, data and sizes of this run
    hardware: Hardware                        # device and dtype of this run
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds since setup, for the results file."""
        return time.perf_counter() - self.started


def setup_notebook(name: str, requested_profile: str = "auto", seed: int | None = None,
                   verbose: bool = True) -> NotebookContext:
    """Resolve the profile ("auto" reads COURSE_PROFILE, then the hardware), seed everything
    and print what this run uses, so a bug report names it."""
    from transformers import set_seed

    profile = get_profile(requested_profile)
    hardware = detect_hardware()
    set_seed(profile.seed if seed is None else seed)
    if verbose:
        versions = library_versions()
        print("Library versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        print(f"Profile: {profile.name}" + (" (offline, packaged models)" if profile.offline else ""))
        print(f"Hardware: {hardware.describe()}")
    return NotebookContext(name=name, profile=profile, hardware=hardware)
