"""How much memory did a phase use? Peak memory, with a counter you can reset per phase.

On a GPU the number is what PyTorch's allocator handed out (`torch.cuda.max_memory_allocated`):
weights, gradients, optimizer states and activations, without the allocator's cache. On a CPU
there is no such allocator, so the number is the peak resident memory (RSS) of the whole Python
process: it also holds the libraries, the data and any other model loaded. On Linux the kernel
keeps that peak (VmHWM in /proc/self/status) and lets a process reset it by writing "5" to
/proc/self/clear_refs; where that is not possible a background thread samples the RSS instead.

A peak counter that is never reset reports the largest phase so far, not the one you measure:
call `reset_peak_memory` (or use `track_peak_memory`) when a phase begins.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

MIB = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _device_type(device) -> str:
    """'cuda' or 'cpu' from a string, a torch.device or a Hardware."""
    device = getattr(device, "device", device)  # a Hardware carries its device as a string
    kind = torch.device(device).type if device is not None else "cpu"
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"memory is measured on 'cuda' or 'cpu', got device {device!r}")
    return kind


def _cuda_index(device) -> int:
    device = getattr(device, "device", device)
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


# --- CPU: the process's resident memory ------------------------------------------------------


def _status_kib(field: str) -> int | None:
    """A 'kB' line of /proc/self/status (VmRSS, VmHWM), or None where there is no such file."""
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def _can_reset_hwm() -> bool:
    """True where the kernel lets this process reset its own peak RSS (Linux)."""
    if _status_kib("VmHWM") is None:
        return False
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class _RssSampler:
    """Fallback peak RSS: a daemon thread reads the RSS every `interval` seconds."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = _rss_bytes()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-peak-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        rss = _rss_bytes()
        with self._lock:
            self.peak = max(self.peak, rss)
            return self.peak

    def reset(self) -> None:
        with self._lock:
            self.peak = _rss_bytes()


_method: str | None = None          # "vmhwm" or "sampling", chosen on first use
_sampler: _RssSampler | None = None


def cpu_peak_method(force_sampling: bool = False) -> str:
    """How CPU peaks are measured here: "vmhwm" (kernel counter) or "sampling" (thread)."""
    global _method, _sampler
    if force_sampling:
        _method = "sampling"
    if _method is None:
        _method = "vmhwm" if _can_reset_hwm() else "sampling"
    if _method == "sampling" and _sampler is None:
        _sampler = _RssSampler()
    return _method


# --- the public API ---------------------------------------------------------------------------


def release_free_heap() -> bool:
    """Give memory the process freed back to the operating system (glibc's `malloc_trim`).

    glibc keeps freed blocks (from generation, or from a model loaded and deleted earlier) in
    the process, so they still count in the RSS. A later phase reuses them without raising the
    RSS, and would look smaller than it is. Returns False where glibc is not available.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (TypeError, OSError, AttributeError):  # no C library found, or not glibc
        return False
    return True


def reset_peak_memory(device="cpu") -> None:
    """Start a new measuring phase: from now on the peak is at most the current use.

    On a CPU the freed heap is first given back (`release_free_heap`), so that the current
    use, the phase's starting point, counts live memory only."""
    if _device_type(device) == "cuda":
        torch.cuda.synchronize(_cuda_index(device))
        torch.cuda.reset_peak_memory_stats(_cuda_index(device))
        return
    release_free_heap()
    if cpu_peak_method() == "vmhwm":
        _CLEAR_REFS.write_text("5")  # the kernel sets VmHWM back to the current RSS
    else:
        _sampler.reset()


def peak_memory_mib(device="cpu") -> float:
    """The largest memory use since the last reset, in MiB (GPU: allocated; CPU: process RSS)."""
    if _device_type(device) == "cuda":
        torch.cuda.synchronize(_cuda_index(device))
        return torch.cuda.max_memory_allocated(_cuda_index(device)) / MIB
    if cpu_peak_method() == "vmhwm":
        return (_status_kib("VmHWM") or 0) * 1024 / MIB
    return _sampler.sample() / MIB


def current_memory_mib(device="cpu") -> float:
    """Memory in use right now, in MiB (GPU: allocated; CPU: process RSS)."""
    if _device_type(device) == "cuda":
        return torch.cuda.memory_allocated(_cuda_index(device)) / MIB
    return _rss_bytes() / MIB


@dataclass
class PeakMemory:
    """What one measured phase used, in MiB. Filled in when the `with` block ends."""

    device: str                 # "cuda" or "cpu"
    start_mib: float            # in use when the phase began
    peak_mib: float = 0.0       # largest use during the phase
    end_mib: float = 0.0        # in use when the phase ended

    @property
    def added_mib(self) -> float:
        """How far the phase pushed memory above where it started."""
        return self.peak_mib - self.start_mib

    def to_dict(self) -> dict:
        return {"device": self.device, "start_mib": self.start_mib, "peak_mib": self.peak_mib,
                "end_mib": self.end_mib, "added_mib": self.added_mib}


@contextmanager
def track_peak_memory(device="cpu") -> Iterator[PeakMemory]:
    """Measure the peak of one phase:

        with track_peak_memory("cuda") as mem:
            trainer.train()
        print(mem.peak_mib)

    Resets the peak counter on entry, so phases do not see each other's peaks. Do not nest two
    phases on the same device: the inner reset would hide the outer phase's earlier peak.
    """
    kind = _device_type(device)
    reset_peak_memory(device)
    record = PeakMemory(device=kind, start_mib=current_memory_mib(device))
    try:
        yield record
    finally:
        record.peak_mib = peak_memory_mib(device)
        record.end_mib = current_memory_mib(device)
