"""What does the Trainer not measure for us, and where does an interrupted run resume?

The notebooks build `TrainingArguments` and `Trainer` themselves. This module adds what the
stack lacks:

- `StepStats`, a `TrainerCallback` that writes, per optimizer step, the step's seconds, its
  real (non-padding) tokens per second and the peak memory into `trainer.state.log_history`,
  beside the losses the Trainer logs there. The Trainer saves that history in every checkpoint
  and restores it on resume, so a resumed run keeps the records of the steps before it.
- `resume_checkpoint`, which picks the newest COMPLETE checkpoint (`get_last_checkpoint` finds
  the newest folder; one that a crash left half-written is set aside), and `checkpoint_plan`,
  the line StepStats prints when training begins: where checkpoints go, how many are kept,
  how large each is and whether the disk holds them.
- `StopOnNonFiniteLoss`, a `TrainerCallback` that stops a run whose logged loss turns NaN or
  inf (an fp16 overflow on a T4, most often) with a message that says what to do.
- `logging_arguments`, the TrainingArguments that only carry data around (logging, reporting,
  token counting), and `training_summary`, the totals of a run from its log history.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from course_utils import memory

STATE_FILE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
SET_ASIDE_PREFIX = "incomplete-"


class StepStats(TrainerCallback):
    """Adds one record per optimizer step to `state.log_history`:

        {"step": 3, "step_seconds": 1.9, "tokens": 412, "tokens_per_second": 216.8,
         "peak_mib": 4810.0}

    step_seconds: forward, backward and optimizer of the step (no evaluation, no saving);
    tokens: non-padding input tokens (needs `include_num_input_tokens_seen="non_padding"`);
    peak_mib: peak memory since training began in this session (GPU: allocated by PyTorch;
    CPU: the process's resident memory). When training begins it also records
    {"step": n, "train_start_mib": ...}, the memory in use at that moment, and prints
    `checkpoint_plan`: where this run's checkpoints go and how many are kept.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._step_start = 0.0
        self._tokens_start = 0

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            print(checkpoint_plan(args, model, resumed_step=state.global_step))
        memory.reset_peak_memory(self.device)
        state.log_history.append({"step": state.global_step,
                                  "train_start_mib": memory.current_memory_mib(self.device)})

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._step_start = time.perf_counter()
        self._tokens_start = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        seconds = time.perf_counter() - self._step_start
        tokens = int(state.num_input_tokens_seen - self._tokens_start)
        state.log_history.append({
            "step": state.global_step, "step_seconds": seconds, "tokens": tokens,
            "tokens_per_second": tokens / max(seconds, 1e-9),
            "peak_mib": memory.peak_memory_mib(self.device)})


class NonFiniteLossError(RuntimeError):
    """Training logged a loss that is NaN or inf."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops training, with a message that says why and what to do, as soon as a logged
    training or evaluation loss is NaN or inf.

    Once a loss is NaN the weights turn NaN at the next optimizer step and every later step,
    evaluation and generation is garbage; stopping at once keeps the last checkpoint good.
    The Trainer's default `logging_nan_inf_filter=True` would hide such a loss behind the
    average of the previous ones: `logging_arguments` turns that filter off.
    """

    def __init__(self, hardware):
        self.hardware = hardware

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            value = (logs or {}).get(key)
            if value is None or math.isfinite(value):
                continue
            control.should_training_stop = True
            if self.hardware.fp16 or args.fp16:
                cause = (f"This run computes in fp16 (mixed precision on "
                         f"{self.hardware.device_name}, which has no native bf16), and fp16 "
                         f"overflows above 65,504: most likely an activation overflowed. Load "
                         f"the weights in fp32 (`hardware.lora_base_dtype`, "
                         f"`hardware.full_finetuning_dtype`; a 4-bit model: check it with "
                         f"`course_utils.models.check_numerics`), lower the learning rate, or "
                         f"use a GPU with native bf16 (L4, A100, H100).")
            else:
                cause = ("Lower the learning rate (or raise warmup_steps), and check the model "
                         "with `course_utils.models.check_numerics` before training.")
            raise NonFiniteLossError(
                f"Training stopped at step {state.global_step}: the logged {key} is {value}. "
                f"The model in memory may hold NaN weights from here on; checkpoints saved "
                f"before this step are good. {cause}")


def logging_arguments(hardware, seed: int) -> dict:
    """The TrainingArguments every notebook shares that only carry data around:

    the training loss at every step, evaluation that keeps the loss only (otherwise the
    Trainer gathers every logit of the evaluation set, rows x T x vocab floats, into memory),
    real-token counts for StepStats, one seed for data order and dropout, no reporting service,
    the CPU when there is no GPU, and every loss logged as it is, NaN and inf included
    (StopOnNonFiniteLoss needs to see them; the default hides them behind an average).
    """
    return dict(logging_strategy="steps", logging_steps=1, prediction_loss_only=True,
                logging_nan_inf_filter=False,
                include_num_input_tokens_seen="non_padding", seed=seed, data_seed=seed,
                report_to="none", dataloader_num_workers=0, use_cpu=hardware.device != "cuda")


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged quantity, e.g. "loss", "eval_loss" or "step_seconds"."""
    pairs = [(r["step"], r[key]) for r in log_history if r.get(key) is not None]
    return [s for s, _ in pairs], [float(v) for _, v in pairs]


def training_summary(log_history: list[dict]) -> dict:
    """Totals over every recorded step (all sessions of a resumed run)."""
    timed = [r for r in log_history if "step_seconds" in r]
    seconds = sum(r["step_seconds"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    losses, evals = series(log_history, "loss")[1], series(log_history, "eval_loss")[1]
    starts = series(log_history, "train_start_mib")[1]
    return {
        "steps": max((r["step"] for r in timed), default=0),
        "train_seconds": seconds,                       # step time only, no evaluation
        "seconds_per_step": seconds / len(timed) if timed else None,
        "tokens_seen": tokens,                          # non-padding input tokens
        "tokens_per_second": tokens / seconds if seconds else None,
        "peak_mib": max((r["peak_mib"] for r in timed), default=None),
        "start_mib": starts[-1] if starts else None,    # in use when the last session began
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "first_eval_loss": evals[0] if evals else None,
        "last_eval_loss": evals[-1] if evals else None,
    }


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_is_complete(folder: Path) -> bool:
    """True when a checkpoint folder holds everything a resume needs.

    Trainer writes weights, optimizer, scheduler and RNG state first and trainer_state.json last;
    a folder whose state file is missing, cut short or names another step was interrupted.
    """
    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        step = int(folder.name.rsplit("-", 1)[-1])
    except (OSError, ValueError):
        return False
    has_weights = any((folder / name).is_file() for name in WEIGHT_FILES)
    has_optimizer = (folder / "optimizer.pt").is_file() and (folder / "scheduler.pt").is_file()
    return state.get("global_step") == step and has_weights and has_optimizer


def resume_checkpoint(output_dir) -> str | None:
    """The newest complete checkpoint-N folder in output_dir, for
    `trainer.train(resume_from_checkpoint=...)`; None when there is none (start fresh).

    A checkpoint a crash left half-written is renamed to incomplete-checkpoint-N with a
    warning (kept for inspection, never resumed nor rotated by the Trainer), and the next
    newest is tried.
    """
    output_dir = Path(output_dir)
    while output_dir.is_dir() and (last := get_last_checkpoint(str(output_dir))) is not None:
        last = Path(last)
        if checkpoint_is_complete(last):
            return str(last)
        aside = last.with_name(SET_ASIDE_PREFIX + last.name)
        if aside.exists():
            aside = last.with_name(f"{SET_ASIDE_PREFIX}{last.name}-{int(time.time())}")
        last.rename(aside)
        warnings.warn(f"{last} is incomplete (interrupted while saving); set aside as {aside.name}",
                      stacklevel=2)
    return None


# Kaggle keeps a notebook's output folder, /kaggle/working, to 20 GB.
KAGGLE_WORKING = ("/kaggle/working", 20e9)


def checkpoint_bytes(model, optim: str = "adamw_torch") -> tuple[int, int | None]:
    """(weights, optimizer states) in bytes of one checkpoint of `model`, from its parameters.

    Weights: every parameter once (tied ones are shared), or only the trainable ones of a PEFT
    model, whose checkpoints hold the adapters. Optimizer states: AdamW keeps two per trainable
    parameter in its dtype, an 8-bit optimizer two bytes; None for an optimizer not known here.
    """
    parameters = list({p.data_ptr(): p for p in model.parameters()}.values())
    trainable = [p for p in parameters if p.requires_grad]
    saved = trainable if hasattr(model, "peft_config") else parameters
    weights = sum(p.numel() * p.element_size() for p in saved)
    optim = str(getattr(optim, "value", optim))
    if "8bit" in optim:
        states = sum(2 * p.numel() for p in trainable)
    elif "adam" in optim:
        states = sum(2 * p.numel() * p.element_size() for p in trainable)
    else:
        states = None
    return weights, states


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.0f} MB"


def checkpoint_plan(args, model=None, resumed_step: int = 0) -> str:
    """One paragraph on this run's checkpoints: the folder, how often, how many are kept, the
    size of one (from `model`), what the disk must hold at once, and a warning when it has less
    free space than that. StepStats prints it when training begins.

    The Trainer writes a new checkpoint before it deletes the oldest, so with
    save_total_limit=n up to n + 1 exist for a moment.
    """
    folder = Path(args.output_dir).resolve()
    strategy = str(getattr(args.save_strategy, "value", args.save_strategy))
    resumed = f" Resuming from step {resumed_step}." if resumed_step else ""
    if strategy == "no":
        return (f"Checkpoints: none in this run (save_strategy='no'): an interrupted run trains "
                f"again from the start. Output folder: {folder}.{resumed}")
    every = f"every {args.save_steps} steps" if strategy == "steps" else f"at each {strategy}"
    limit = args.save_total_limit
    kept = f"the newest {limit} kept (save_total_limit)" if limit else "all kept"
    text = f"Checkpoints: {every} into {folder}, {kept}."
    if model is not None:
        weights, states = checkpoint_bytes(model, args.optim)
        one = weights + (states or 0)
        parts = f"weights {_size(weights)}" + (f", optimizer states {_size(states)}"
                                               if states else "")
        text += f" Each is about {_size(one)} ({parts})"
        if limit:
            at_once = (limit + 1) * one
            text += (f"; the next is written before the oldest is deleted, so up to "
                     f"{_size(at_once)} at once.")
            free = shutil.disk_usage(_existing(folder)).free
            if free < at_once:
                text += (f" WARNING: {_existing(folder)} has {_size(free)} free, less than that: "
                         f"free space, lower save_total_limit or save elsewhere (output_dir).")
            root, quota = KAGGLE_WORKING
            if str(folder).startswith(root) and at_once > quota / 4:
                text += f" Kaggle keeps {root} to {_size(quota)} in all."
        else:
            text += "."
    return text + resumed


def _existing(folder: Path) -> Path:
    """The folder, or its nearest parent that exists (the Trainer creates it when it saves)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder
