"""Peak-memory measurement: the counter goes up with an allocation and comes down on reset."""

import time

import pytest
import torch

from course_utils import memory

BLOB_MIB = 300


def _touch_blob(mib: int = BLOB_MIB) -> torch.Tensor:
    """A tensor whose pages are really written (so they count in the RSS)."""
    return torch.ones(mib * 2**20 // 4, dtype=torch.float32)


@pytest.fixture(params=["vmhwm", "sampling"])
def cpu_method(request, monkeypatch):
    """Run a test with the kernel counter and again with the sampling-thread fallback."""
    if request.param == "vmhwm" and not memory._can_reset_hwm():
        pytest.skip("this system cannot reset VmHWM")
    monkeypatch.setattr(memory, "_method", request.param)
    monkeypatch.setattr(memory, "_sampler", None)
    yield request.param
    if memory._sampler is not None:
        memory._sampler._stop.set()  # end this test's sampling thread


def test_current_memory_is_positive():
    assert memory.current_memory_mib("cpu") > 10


def test_peak_rises_with_an_allocation_and_falls_on_reset(cpu_method):
    memory.reset_peak_memory("cpu")
    start = memory.current_memory_mib("cpu")
    blob = _touch_blob()
    time.sleep(0.05)  # the sampling thread reads every 5 ms
    peak_with_blob = memory.peak_memory_mib("cpu")
    assert peak_with_blob >= start + 0.8 * BLOB_MIB
    del blob
    memory.reset_peak_memory("cpu")
    assert memory.peak_memory_mib("cpu") < peak_with_blob - 0.5 * BLOB_MIB


def test_track_peak_memory_measures_each_phase_on_its_own(cpu_method):
    with memory.track_peak_memory("cpu") as big:
        blob = _touch_blob()
        time.sleep(0.05)
        del blob
    with memory.track_peak_memory("cpu") as small:
        time.sleep(0.05)
    assert big.added_mib >= 0.8 * BLOB_MIB
    assert small.peak_mib < big.peak_mib - 0.5 * BLOB_MIB, "the second phase saw the first's peak"
    assert small.to_dict()["device"] == "cpu"


def test_device_can_be_given_as_torch_device_or_hardware():
    from course_utils.hardware import detect_hardware

    assert memory.current_memory_mib(torch.device("cpu")) > 0
    assert memory.peak_memory_mib(detect_hardware(prefer_cpu=True)) > 0


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="'cuda' or 'cpu'"):
        memory.peak_memory_mib("meta")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_is_reset_between_phases():
    with memory.track_peak_memory("cuda") as big:
        blob = torch.ones(BLOB_MIB * 2**20 // 4, device="cuda")
        del blob
    with memory.track_peak_memory("cuda") as small:
        pass
    assert big.added_mib >= BLOB_MIB * 0.99
    assert small.peak_mib < big.peak_mib - 0.9 * BLOB_MIB


def test_freed_heap_goes_back_before_a_phase_starts():
    """Freed memory that glibc keeps would hide a later phase's growth; the reset returns it."""
    from course_utils.memory import current_memory_mib, release_free_heap, reset_peak_memory

    if not release_free_heap():
        pytest.skip("no glibc malloc_trim here")
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # ~250 MiB in small heap blocks
    survivors = blocks[::100]  # a few live blocks across the heap: it cannot shrink from its top
    del blocks
    kept = current_memory_mib()  # freed, but still in the process
    reset_peak_memory("cpu")
    assert current_memory_mib() < kept - 150
    assert len(survivors) == 40
