"""`python -m course_utils train` in two processes on the CPU (gloo), as a multi-GPU run would start.

accelerate launch starts two processes of the tiny profile's LoRA training (notebook 03's recipe,
shorter rows and batches so that it takes seconds); the Trainer wraps the model in DDP over
gloo. Checked: both ranks log the same losses and end with the same adapter weights (DDP
averaged their gradients), each optimizer step saw both ranks' rows, and the adapter the first
rank saved loads in one process and answers a test question.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STEPS = 3
PROFILE = {   # the tiny profile with short rows and small batches: seconds per step
    "name": "tiny-ddp", "based_on": "tiny", "max_length": 128, "train_size": 24,
    "recipes": {"03": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}}}


def launch(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps({"profiles": [PROFILE]}))
    env = {**os.environ, "COURSE_PROFILES_FILE": str(profiles), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1",   # one thread per process: two processes share 2 cores
           "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_DISABLE_RICH": "1"}
    done = subprocess.run(command + ["-m", "course_utils", "train", "--method", "lora",
                                     "--profile", "tiny-ddp", "--steps", str(STEPS),
                                     "--output", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_accelerate_train_in_step_and_save_a_working_adapter(tmp_path):
    accelerate = shutil.which("accelerate", path=str(BIN)) or "accelerate"
    # --multi_gpu: several processes through torch.distributed.run; on a CPU they use gloo
    launch([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())],
           tmp_path)
    ranks = [json.loads((tmp_path / "run" / "ranks" / f"rank-{r}.json").read_text())
             for r in (0, 1)]
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["backend"] == "gloo"
        assert len(rank["losses"]) == STEPS
        assert rank["rows_per_optimizer_step"] == 2 * 2   # both ranks' rows in every step
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["trainable_checksum"] == pytest.approx(ranks[1]["trainable_checksum"],
                                                           rel=1e-9, abs=1e-9)

    from peft import PeftModel

    from course_utils.config import get_profile
    from course_utils.data import load_msmarco, qa_test_set
    from course_utils.evaluation import generate_answers
    from course_utils.hardware import detect_hardware
    from course_utils.models import load_causal_lm

    profile = get_profile("tiny")
    hardware = detect_hardware(prefer_cpu=True)
    base, tokenizer = load_causal_lm(profile.chat_model, hardware=hardware,
                                     dtype=hardware.lora_base_dtype)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    trained = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert trained and any(p.abs().max() > 0 for p in trained)   # B starts at 0: it trained
    _, prompts, _ = qa_test_set(tokenizer, load_msmarco(profile), n_test=1)
    answer = generate_answers(model, tokenizer, prompts, max_new_tokens=16, progress=False)[0]
    assert answer.strip(), "the adapter loaded but the model answered nothing"
