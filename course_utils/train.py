"""The training layer every fine-tuning notebook shares: a thin wrapper over `transformers.Trainer`.

- `TrainSettings`: the hyperparameters, validated on creation, turned into `TrainingArguments`.
- `TrainingRecorder`: a callback that records, per optimizer step, the training loss, the
  evaluation loss, the step time, the REAL tokens per second (padding is not counted) and the
  peak memory (reset when training begins).
- `train(...)`: builds the Trainer, resumes from the newest complete checkpoint in the run
  folder when there is one, and returns a `TrainingRun`.

`default_settings(notebook, profile)` gives the per-profile defaults of notebooks 01 and 02.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from course_utils import memory
from course_utils.hardware import Hardware, detect_hardware

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float = 2e-5             # peak learning rate of the optimizer
    max_steps: int = 100                    # optimizer steps to train for
    per_device_batch_size: int = 2          # rows in one forward/backward pass
    gradient_accumulation_steps: int = 8    # passes whose gradients add up to one optimizer step
    warmup_ratio: float = 0.0               # share of max_steps over which the lr rises from 0
    warmup_steps: int = 0                   # or an exact number of warmup steps (not both)
    lr_scheduler_type: str = "linear"       # how the lr falls after warmup: linear, cosine, constant
    weight_decay: float = 0.0               # AdamW's decoupled weight decay
    max_grad_norm: float = 1.0              # clip the gradient to this L2 norm (0 = no clipping)
    optim: str = "adamw_torch"              # optimizer name understood by TrainingArguments
    logging_steps: int = 1                  # record the training loss every this many steps
    eval_steps: int = 10                    # evaluation loss every this many steps (0 = never)
    eval_on_start: bool = True              # evaluation loss before the first step too
    eval_batch_size: int = 8                # rows per evaluation forward pass
    save_steps: int = 0                     # checkpoint every this many steps (0 = no checkpoints)
    save_total_limit: int = 2               # newest checkpoints kept on disk
    seed: int = 42                          # seeds the data order, dropout and sampling
    deterministic: bool = False             # torch deterministic algorithms (slower on GPU)
    gradient_checkpointing: bool = False    # recompute activations in backward to save memory
    group_by_length: bool = False           # batch rows of similar length to waste less padding

    def __post_init__(self):
        positive = ("learning_rate", "max_steps", "per_device_batch_size",
                    "gradient_accumulation_steps", "logging_steps", "eval_batch_size",
                    "save_total_limit")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {name}={getattr(self, name)}")
        for name in ("eval_steps", "save_steps", "warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set warmup_ratio or warmup_steps, not both "
                             f"(got warmup_ratio={self.warmup_ratio}, warmup_steps={self.warmup_steps})")
        if self.learning_rate > 1e-2:
            raise ValueError(f"learning_rate={self.learning_rate} is far too high for fine-tuning "
                             "a pretrained LLM (typical: 1e-5 to 1e-3)")

    @property
    def effective_batch_size(self) -> int:
        """Rows behind one optimizer step."""
        return self.per_device_batch_size * self.gradient_accumulation_steps

    def replace(self, **changes) -> TrainSettings:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_training_arguments(self, output_dir, hardware: Hardware | None = None,
                              **extra) -> TrainingArguments:
        """`TrainingArguments` for these settings on this hardware (extra kwargs pass through)."""
        hardware = hardware or detect_hardware()
        kwargs = dict(
            output_dir=str(output_dir),
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_batch_size,
            per_device_eval_batch_size=self.eval_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            # transformers 5 reads a warmup_steps below 1 as a share of the training steps
            warmup_steps=self.warmup_steps or self.warmup_ratio,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            optim=self.optim,
            logging_strategy="steps",
            logging_steps=self.logging_steps,
            eval_strategy="steps" if self.eval_steps else "no",
            eval_steps=self.eval_steps or None,
            eval_on_start=self.eval_on_start and self.eval_steps > 0,
            # evaluation keeps the loss only: otherwise the Trainer gathers every logit of the
            # evaluation set, (rows, T, vocab) floats (Qwen3: 152k per token), into memory
            prediction_loss_only=True,
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            save_total_limit=self.save_total_limit,
            seed=self.seed,
            data_seed=self.seed,
            full_determinism=self.deterministic,
            use_cpu=hardware.device != "cuda",
            activation_checkpointing=self.gradient_checkpointing,
            train_sampling_strategy="group_by_length" if self.group_by_length else "random",
            include_num_input_tokens_seen="non_padding",   # attention-mask sums: real tokens only
            report_to="none",
            dataloader_num_workers=0,
            **hardware.trainer_precision,                  # bf16 / fp16 flags (all off on CPU)
        )
        kwargs.update(extra)
        return TrainingArguments(**kwargs)


class TrainingRecorder(TrainerCallback, ExportableState):
    """Records one dict per optimizer step into `history`.

    A record holds `step`, and where measured: `loss` (training), `eval_loss`, `learning_rate`,
    `grad_norm`, `step_seconds` (forward+backward+optimizer, without evaluation or saving),
    `tokens` (non-padding input tokens of the step), `tokens_per_second` and `peak_mib` (peak
    memory since training began in this session). The history travels inside checkpoints, so a
    resumed run keeps the records of the steps before the interruption.
    """

    def __init__(self, device: str = "cpu", history: list | None = None):
        self.device = device
        self.history: list[dict] = list(history or [])
        self.start_mib = 0.0     # memory in use when training began (this session)
        self._step_start = 0.0
        self._tokens_start = 0

    # ExportableState: what goes into trainer_state.json at each checkpoint
    def state(self) -> dict:
        return {"args": {"device": self.device}, "attributes": {"history": self.history}}

    def _record(self, step: int) -> dict:
        for record in reversed(self.history):
            if record["step"] == step:
                return record
            if record["step"] < step:
                break
        self.history.append({"step": step})
        return self.history[-1]

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        memory.reset_peak_memory(self.device)
        self.start_mib = memory.current_memory_mib(self.device)

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._step_start = time.perf_counter()
        self._tokens_start = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        seconds = time.perf_counter() - self._step_start
        tokens = int(state.num_input_tokens_seen - self._tokens_start)
        self._record(state.global_step).update(
            step_seconds=seconds, tokens=tokens, tokens_per_second=tokens / max(seconds, 1e-9),
            peak_mib=memory.peak_memory_mib(self.device),
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        wanted = ("loss", "eval_loss", "learning_rate", "grad_norm")
        values = {k: float(v) for k, v in (logs or {}).items() if k in wanted}
        if values:
            self._record(state.global_step).update(values)

    # summaries -------------------------------------------------------------------------------
    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one recorded quantity, e.g. series("eval_loss")."""
        pairs = [(r["step"], r[key]) for r in self.history if key in r]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def summary(self) -> dict:
        """Totals over all recorded steps (all sessions of a resumed run)."""
        timed = [r for r in self.history if "step_seconds" in r]
        seconds = sum(r["step_seconds"] for r in timed)
        tokens = sum(r["tokens"] for r in timed)
        losses, evals = self.series("loss")[1], self.series("eval_loss")[1]
        return {
            "steps": max((r["step"] for r in self.history), default=0),
            "train_seconds": seconds,                       # step time only, no evaluation
            "seconds_per_step": seconds / len(timed) if timed else None,
            "tokens_seen": tokens,                          # non-padding input tokens
            "tokens_per_second": tokens / seconds if seconds else None,
            "peak_mib": max((r["peak_mib"] for r in timed), default=None),
            "start_mib": self.start_mib,                    # in use when this session began
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
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        step = int(folder.name[len(CHECKPOINT_PREFIX):])
    except (OSError, ValueError):
        return False
    has_weights = any((folder / name).is_file() for name in WEIGHT_FILES)
    has_optimizer = (folder / "optimizer.pt").is_file() and (folder / "scheduler.pt").is_file()
    return state.get("global_step") == step and has_weights and has_optimizer


def find_resumable_checkpoint(output_dir, remove_incomplete: bool = True) -> Path | None:
    """The newest complete checkpoint-N folder in output_dir, or None.

    Incomplete checkpoint folders (a run killed while saving) are removed with a warning, so
    neither this function nor Trainer's own checkpoint rotation ever picks one.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    folders = [p for p in output_dir.iterdir()
               if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
               and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    folders.sort(key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), reverse=True)
    newest = None
    for folder in folders:
        if checkpoint_is_complete(folder):
            newest = newest or folder
        elif remove_incomplete:
            warnings.warn(f"Removing incomplete checkpoint {folder} (interrupted while saving)",
                          stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
    return newest


def _recorded_history(checkpoint: Path) -> list[dict]:
    state = json.loads((checkpoint / STATE_FILE).read_text())
    saved = state.get("stateful_callbacks", {}).get(TrainingRecorder.__name__, {})
    if isinstance(saved, list):
        saved = saved[0] if saved else {}
    return list(saved.get("attributes", {}).get("history", []))


# --- training ---------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    trainer: Trainer                 # the Trainer, for evaluate() or save_model()
    recorder: TrainingRecorder       # per-step history
    metrics: dict                    # Trainer's end-of-training metrics plus the recorder summary
    resumed_from: str | None = None  # checkpoint this session continued from
    wall_seconds: float = 0.0        # wall time of this session's trainer.train(), evaluation included

    @property
    def history(self) -> list[dict]:
        return self.recorder.history


def train(model, tokenizer, train_dataset, eval_dataset, settings: TrainSettings, output_dir,
          data_collator=None, callbacks=(), hardware: Hardware | None = None,
          resume: bool = True) -> TrainingRun:
    """Train `model` with Trainer and return the run.

    Resumes from the newest complete checkpoint in output_dir when `resume` is true and one
    exists (checkpoints are written only when settings.save_steps > 0).
    """
    hardware = hardware or detect_hardware()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = find_resumable_checkpoint(output_dir) if resume else None
    args = settings.to_training_arguments(output_dir, hardware)
    if args.n_gpu > 1:
        # one GPU, as everywhere in the course (hardware.single_device_map): on a 2-GPU Kaggle
        # machine Trainer would wrap the model in DataParallel and double the batch size
        args._n_gpu = 1
    history = _recorded_history(checkpoint) if checkpoint else []
    if checkpoint:
        args.eval_on_start = False  # that evaluation is already in the history
        log.warning("Resuming from %s (step %s)", checkpoint, checkpoint.name.split("-")[-1])
    recorder = TrainingRecorder(device=hardware.device, history=history)
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset,
                      eval_dataset=eval_dataset if settings.eval_steps else None,
                      data_collator=data_collator, processing_class=tokenizer,
                      callbacks=[recorder, *callbacks])
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - started
    metrics = {**output.metrics, **recorder.summary()}
    return TrainingRun(trainer=trainer, recorder=recorder, metrics=metrics,
                       resumed_from=str(checkpoint) if checkpoint else None,
                       wall_seconds=wall)


# --- per-profile defaults of the notebooks ------------------------------------------------------

def _full_qa_steps(profile, batch: int, accumulation: int, epochs: int = 1) -> int:
    """Optimizer steps for `epochs` passes over the profile's QA training rows."""
    return epochs * -(-profile.train_size // (batch * accumulation))


def default_settings(notebook: str, profile) -> TrainSettings:
    """The training settings a notebook uses in a profile ("01_first_finetune", "02", ...).

    full: the original course on a GPU. tiny: sized for about two minutes per notebook on a
    2-core CPU, with a learning rate high enough to learn the task in a handful of steps.
    """
    from course_utils.profiles import get_profile

    profile = get_profile(profile) if isinstance(profile, str) else profile
    key = (notebook[:2], profile.name)
    if key == ("01", "full"):    # DistilGPT2, blocks of 128 tokens of passage text
        return TrainSettings(learning_rate=5e-5, max_steps=1000, per_device_batch_size=8,
                             gradient_accumulation_steps=1, warmup_ratio=0.05,
                             eval_steps=100, save_steps=250, eval_batch_size=16)
    if key == ("01", "tiny"):    # SmolLM2-135M, a few steps of passage text
        return TrainSettings(learning_rate=1e-4, max_steps=8, per_device_batch_size=8,
                             gradient_accumulation_steps=1, eval_steps=4)
    if key == ("02", "full"):    # Qwen3-0.6B: batch 2 x accumulation 8, lr 2e-5, one epoch
        return TrainSettings(learning_rate=2e-5, max_steps=_full_qa_steps(profile, 2, 8),
                             per_device_batch_size=2, gradient_accumulation_steps=8,
                             warmup_ratio=0.05, eval_steps=25,
                             save_steps=50, save_total_limit=1)  # a checkpoint is ~7 GB
    if key == ("02", "tiny"):    # SmolLM2-135M: batch 4 x accumulation 2, a few steps
        return TrainSettings(learning_rate=2e-4, max_steps=8, per_device_batch_size=4,
                             gradient_accumulation_steps=2, eval_steps=4)
    raise ValueError(f"no default training settings for notebook {notebook!r} in the "
                     f"{profile.name!r} profile; known notebooks: 01, 02")
