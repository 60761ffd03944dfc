"""Helpers of the fault-injection tests (imported by them, not a test file): damage files the way crashes do, and a tiny training run.

The tests run as root in CI, where chmod does not stop a write: a folder that cannot be written
is made by putting a file where the folder should be, or by a patched call that raises the
PermissionError a read-only disk gives. Subprocesses are killed with SIGKILL, which no handler
can catch, so what they leave is what a killed session or a full disk leaves.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

FAULTS_DIR = Path(__file__).resolve().parent
ROOT = FAULTS_DIR.parent.parent


def cut_short(path: Path, seed: int, low: float = 0.05, high: float = 0.95) -> int:
    """Truncate a file at a seeded random offset between low and high of its length, as a
    killed write or an interrupted copy leaves it; returns the new length."""
    data = Path(path).read_bytes()
    offset = random.Random(seed).randint(int(len(data) * low), int(len(data) * high))
    Path(path).write_bytes(data[:offset])
    return offset


def run_killed(script: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a Python script in a fresh interpreter (the repository and this folder importable)
    and return its result; the script is expected to SIGKILL itself midway."""
    import os

    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{FAULTS_DIR}",
                   "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, "-c", script], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# --- a tiny training run ------------------------------------------------------------------------


def tiny_gpt2(seed: int = 0):
    """A randomly initialised two-layer GPT-2 small enough to train and checkpoint in a second."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=32)
    model = GPT2LMHeadModel(config)
    model.config._name_or_path = "tiny-gpt2"
    return model


def token_rows(n: int = 12, length: int = 16, seed: int = 0):
    """n rows of random token ids, labels equal to the inputs (a causal-LM data set)."""
    from datasets import Dataset

    rng = random.Random(seed)
    ids = [[rng.randrange(97) for _ in range(length)] for _ in range(n)]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n,
                              "labels": [list(row) for row in ids]})


def tiny_trainer(output_dir, model=None, data=None, **changes):
    """A Trainer as the notebooks build one (logging_arguments, StepStats), saving every step."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from course_utils.hardware import detect_hardware
    from course_utils.training import StepStats, logging_arguments

    hardware = detect_hardware(prefer_cpu=True)
    arguments = dict(max_steps=3, learning_rate=1e-3, per_device_train_batch_size=4, optim="adamw_torch",
                     gradient_accumulation_steps=1, warmup_steps=0, save_strategy="steps",
                     save_steps=1, **logging_arguments(hardware, 42))
    arguments.update(changes)
    args = TrainingArguments(output_dir=str(output_dir), **arguments)
    return Trainer(model=model if model is not None else tiny_gpt2(), args=args,
                   train_dataset=data if data is not None else token_rows(),
                   data_collator=default_data_collator, callbacks=[StepStats(hardware.device)])

