"""benchmarks/gpu_check.py (`make gpu-check`) without a GPU.

1. `--cpu-smoke` runs every check of the T4 emulation on the CPU with shrunk shapes and writes
   a results file holding each check with its numbers.
2. Without CUDA and without `--cpu-smoke` the script stops with a one-line message and a
   non-zero exit code.
3. The parts that decide a verdict: the runner's progress lines read per notebook, a missing
   planner recorded as "plan unavailable", measured peaks judged against predictions.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
T4_CHECKS = ("t4_02_training", "t4_05_generation", "t4_05_qlora_step")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@pytest.mark.slow
def test_cpu_smoke_writes_every_check_with_numbers(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--output", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-smoke"
    assert report["verdict"] == "smoke: every code path ran"
    assert report["versions"]["torch"] and report["versions"]["bitsandbytes"]
    assert report["checks"]["notebooks"]["status"] == "skipped"
    for name in T4_CHECKS:
        check = report["checks"][name]
        assert check["status"] == "ran", (name, check.get("error"))
        for key in ("measured_peak_mib", "seconds", "seconds_per_step", "tokens_per_second"):
            assert positive_number(check[key]), (name, key, check[key])
        assert check["shape"]["num_hidden_layers"] == 2
        assert check["prediction"]["source"]
    for name in ("t4_02_training", "t4_05_qlora_step"):  # the estimator sizes the shrunk models
        check = report["checks"][name]
        assert positive_number(check["predicted_mib"]) and positive_number(check["ratio"])
    assert report["checks"]["t4_05_generation"]["predicted_mib"] is None
    training = report["checks"]["t4_02_training"]
    assert training["steps"] == 2 and training["optimizer_state_mib"] > 0  # AdamW states exist
    qlora = report["checks"]["t4_05_qlora_step"]
    assert qlora["trainable_parameters"] > 0 and qlora["optimizer_state_mib"] > 0
    assert "T4 emulation" in done.stdout and "verdict" in done.stdout   # the printed table
    assert not list((ROOT / "benchmarks" / "results").glob(".gpu-check-*"))  # no leftovers


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_stops_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--output", str(tmp_path / "x.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0
    message = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and "needs a CUDA GPU" in message[0] and "--cpu-smoke" in message[0]
    assert not (tmp_path / "x.json").exists()


def test_runner_output_is_read_per_notebook(gpu_check):
    log = "\n".join(["[1/3] 00_setup_check.ipynb (tiny)", "    done in 12 s",
                     "[2/3] 01_first_finetune.ipynb (tiny)", "    done in 40.5 s",
                     "[3/3] 02_full_finetuning.ipynb (tiny)",
                     "ERROR: 02_full_finetuning.ipynb failed in cell 7"])
    assert gpu_check.parse_runner_output(log) == [
        {"notebook": "00_setup_check.ipynb", "status": "pass", "seconds": 12.0},
        {"notebook": "01_first_finetune.ipynb", "status": "pass", "seconds": 40.5},
        {"notebook": "02_full_finetuning.ipynb", "status": "fail", "seconds": None}]


def test_a_missing_planner_is_recorded_not_raised(gpu_check, monkeypatch):
    monkeypatch.setitem(sys.modules, "course_utils.plan", None)  # import fails
    predicted = gpu_check.planned_peak("02", "training")
    assert predicted["peak_mib"] is None
    assert predicted["unavailable"].startswith("plan unavailable")
    check = gpu_check.compare({"measured_peak_mib": 9000.0}, predicted, 0.2, smoke=False)
    assert check["status"] == "no prediction" and check["ratio"] is None
    assert gpu_check.verdict({"t4_02_training": check}, smoke=False).startswith("incomplete")


@pytest.mark.parametrize("measured, extra, status", [
    (11_000.0, {}, "pass"),                                   # ratio 1.10
    (13_000.0, {}, "fail"),                                   # ratio 1.30
    (15_000.0, {"error": "OutOfMemoryError", "out_of_memory": True}, "fail"),
    (None, {"error": "timed out after 240 s"}, "error"),
])
def test_a_peak_is_judged_against_its_prediction(gpu_check, measured, extra, status):
    check = gpu_check.compare({"measured_peak_mib": measured, **extra},
                              {"source": "test", "peak_mib": 10_000.0}, 0.2, smoke=False)
    assert check["status"] == status
    verdict = gpu_check.verdict({"check": check, "notebooks": {"status": "pass"}}, smoke=False)
    assert verdict == ("pass" if status == "pass" else "fail")
