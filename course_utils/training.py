"""What does the Trainer not measure for us, and where does an interrupted run resume?

The notebooks build `TrainingArguments` and `Trainer` themselves. This module adds what the
stack lacks:

- `StepStats`, a `TrainerCallback` that writes, per optimizer step, the step's seconds, its
  real (non-padding) tokens per second and the peak memory into `trainer.state.log_history`,
  beside the losses the Trainer logs there. The Trainer saves that history in every checkpoint
  and restores it on resume, so a resumed run keeps the records of the steps before it.
- `resume_checkpoint`, which picks the newest COMPLETE checkpoint (`get_last_checkpoint` finds
  the newest folder; one that a crash left half-written or cut short is set aside with a
  warning and the one before it is tried), and `checkpoint_plan`,
  the line StepStats prints when training begins: where checkpoints go, how many are kept,
  how large each is and whether the disk holds them.
- Safe resume: StepStats records in every checkpoint the settings that produced it
  (`run_settings`: learning rate, steps, batch, accumulation, seed, model, LoRA config,
  training rows) and refuses to resume a checkpoint made with other settings
  (ResumeSettingsError names the differences and how to start fresh) instead of silently
  continuing the old run under the new settings' name.
- `StopOnNonFiniteLoss`, a `TrainerCallback` that stops a run whose logged loss turns NaN or
  inf (an fp16 overflow on a T4, most often) with a message that says what to do.
- `logging_arguments`, the TrainingArguments that only carry data around (logging, reporting,
  token counting), and `training_summary`, the totals of a run from its log history.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import shutil
import struct
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import get_last_checkpoint

from course_utils import memory

STATE_FILE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
SET_ASIDE_PREFIX = "incomplete-"


class StepStats(TrainerCallback, ExportableState):
    """Adds one record per optimizer step to `state.log_history`:

        {"step": 3, "step_seconds": 1.9, "tokens": 412, "tokens_per_second": 216.8,
         "peak_mib": 4810.0}

    step_seconds: forward, backward and optimizer of the step (no evaluation, no saving);
    tokens: non-padding input tokens (needs `include_num_input_tokens_seen="non_padding"`);
    peak_mib: peak memory since training began in this session (GPU: allocated by PyTorch;
    CPU: the process's resident memory). When training begins it also records
    {"step": n, "train_start_mib": ...}, the memory in use at that moment, and prints
    `checkpoint_plan`: where this run's checkpoints go and how many are kept.

    It also records this run's `run_settings`, which the Trainer saves in every checkpoint's
    trainer_state.json (under "stateful_callbacks"), and refuses with ResumeSettingsError to
    mix two runs in one folder: a Trainer built over an output folder whose newest complete
    checkpoint was made with other arguments or another model stops when it is built (before
    the Trainer would load weights that do not fit), and a resumed run whose training data
    differ stops before its first step. Either way nothing is trained or written.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.run_settings = None
        self._step_start = 0.0
        self._tokens_start = 0

    def state(self) -> dict:
        """What the Trainer saves of this callback in each checkpoint (ExportableState)."""
        return {"args": {"device": self.device},
                "attributes": {"run_settings": self.run_settings}}

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_init_end(self, args, state, control, model=None, **kwargs):
        # The Trainer loads a checkpoint's weights and optimizer before training begins, and a
        # model of another shape or method fails there with a raw error: compare what is known
        # now (arguments, model) with the newest complete checkpoint in the output folder.
        checkpoint = newest_complete_checkpoint(args.output_dir)
        recorded = checkpoint_settings(checkpoint) if checkpoint else None
        if recorded:
            differences = _differences(recorded, run_settings(args, model))
            if differences:
                raise ResumeSettingsError(_refusal(checkpoint, args.output_dir, differences))

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None,
                       **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        self.run_settings = run_settings(args, model, dataset)
        if state.global_step > 0:  # resuming: the state was read from the checkpoint
            check_resume_settings(args, state, self.run_settings)
        state.stateful_callbacks[type(self).__name__] = self.state()
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


# --- the settings a checkpoint was made with --------------------------------------------------

# TrainingArguments that decide what a run trains: resuming with another value of any of them
# would continue the old run (its scheduler, steps and data order) under the new settings' name.
RESUME_ARGUMENTS = ("learning_rate", "max_steps", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "seed", "data_seed", "warmup_steps",
                    "lr_scheduler_type", "weight_decay", "optim")
LORA_FIELDS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora",
               "use_dora", "bias")
QUANTIZATION_FIELDS = ("quant_method", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type",
                       "bnb_4bit_use_double_quant")
DIGEST_ROWS = 64  # rows of the training data hashed into its fingerprint, spread evenly


class ResumeSettingsError(ValueError):
    """A checkpoint was made with other settings than the run that would resume it."""


def _plain(value):
    """JSON types for a row's values (tensors and arrays become lists), for hashing."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _setting(value):
    """A setting as JSON keeps it: collections as sorted lists, enums and others as text."""
    if isinstance(value, enum.Enum):   # before str: some of transformers' enums are strs
        return _setting(value.value)
    if isinstance(value, (set, list, tuple)):
        return sorted(str(v) for v in value)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return str(getattr(value, "value", value))


def data_fingerprint(dataset) -> str | None:
    """A short hash of up to DIGEST_ROWS rows spread over the data set (None if unreadable):
    the same rows give the same hash in every session; other rows almost surely another."""
    try:
        n = len(dataset)
        digest = hashlib.sha256(str(n).encode())
        for i in sorted({int(i) for i in np.linspace(0, n - 1, min(n, DIGEST_ROWS))}):
            digest.update(json.dumps(_plain(dataset[i]), sort_keys=True, default=str).encode())
        return digest.hexdigest()[:16]
    except Exception:  # a data set without len or indexing: not fingerprinted
        return None


def _model_name(name_or_path: str) -> str:
    """A hub id as it is; a local folder by its last part (the cache may move)."""
    return Path(name_or_path).name if Path(name_or_path).exists() else name_or_path


def run_settings(args, model=None, train_dataset=None) -> dict:
    """The settings that decide what a run trains, as plain JSON: the TrainingArguments in
    RESUME_ARGUMENTS, the model (name, quantization, LoRA config, trainable parameters) and
    the training data (rows and a fingerprint of them)."""
    settings = {}
    for name in RESUME_ARGUMENTS:
        settings[name] = _setting(getattr(args, name, None))
    if model is not None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = getattr(base, "config", None)
        settings["model"] = _model_name(str(getattr(config, "_name_or_path", "") or ""))
        quantization = getattr(config, "quantization_config", None)
        if quantization is not None:
            values = quantization if isinstance(quantization, dict) else quantization.to_dict()
            settings["quantization"] = {k: _setting(values[k]) for k in QUANTIZATION_FIELDS
                                        if k in values}
        peft_config = getattr(model, "peft_config", None)
        if peft_config:
            adapter = next(iter(peft_config.values())).to_dict()
            settings["lora"] = {k: _setting(adapter[k]) for k in LORA_FIELDS if k in adapter}
        settings["trainable_parameters"] = sum(p.numel() for p in model.parameters()
                                               if p.requires_grad)
    if train_dataset is not None:
        try:
            settings["train_rows"] = len(train_dataset)
        except TypeError:
            pass
        settings["train_data"] = data_fingerprint(train_dataset)
    return settings


def checkpoint_settings(checkpoint) -> dict | None:
    """The run_settings recorded in a checkpoint, or None when it records none (a checkpoint
    from before this check, or one trained without StepStats)."""
    try:
        state = json.loads((Path(checkpoint) / STATE_FILE).read_text(encoding="utf-8"))
        return state["stateful_callbacks"]["StepStats"]["attributes"]["run_settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{name}: {old.get(name)!r} in the checkpoint, {new.get(name)!r} now"
            for name in sorted(set(old) | set(new), key=lambda n: (n not in RESUME_ARGUMENTS, n))
            if old.get(name) != new.get(name) and name in old and name in new]


def _refusal(checkpoint, output_dir, differences: list[str]) -> str:
    return (f"Cannot resume {checkpoint}: it was trained with other settings than this run "
            f"({'; '.join(differences)}). Resuming would report the old run under the new "
            f"settings. To start fresh, run the notebook with RESUME = False (papermill: `-p "
            f"RESUME False`), which deletes the run folder, or move {Path(output_dir)} away; to "
            f"continue the old run instead, set the settings back to the checkpoint's.")


def check_resume_settings(args, state, settings: dict) -> None:
    """Raise ResumeSettingsError when the checkpoint being resumed (its state is `state`) was
    made with other settings than `settings`; warn when it records none to compare."""
    checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
    recorded = state.stateful_callbacks.get("StepStats", {})
    recorded = recorded.get("attributes", {}).get("run_settings") \
        if isinstance(recorded, dict) else None
    if not recorded:
        # the state file of any checkpoint keeps the steps and batch size (the state in memory
        # already holds this run's steps)
        try:
            saved = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        old = {name: saved.get(key) for name, key in (("max_steps", "max_steps"), (
            "per_device_train_batch_size", "train_batch_size")) if saved.get(key) is not None}
        differences = _differences(old, {k: settings.get(k) for k in old})
        if not differences:
            warnings.warn(f"{checkpoint} records no training settings (saved by an older "
                          f"course_utils): resuming it without checking that its learning "
                          f"rate, model and data match this run's.", stacklevel=2)
            return
    else:
        differences = _differences(recorded, settings)
    if differences:
        raise ResumeSettingsError(_refusal(checkpoint, args.output_dir, differences))


# --- checkpoints ------------------------------------------------------------------------------


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole, or None: its header says how long it must be."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{path.name} is cut short ({size} bytes)"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"{path.name} is cut short (its header alone needs {8 + length:,} bytes)"
        try:
            header = json.loads(handle.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return f"{path.name} has an unreadable header"
    if 8 + length + end > size:
        return f"{path.name} is cut short ({size:,} of {8 + length + end:,} bytes)"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Why a torch.save file (a zip archive) is not whole, or None: a file cut short loses the
    archive's directory, which is written last."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            for item in archive.infolist():
                if item.header_offset + item.compress_size > size:
                    return f"{path.name} is cut short"
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"{path.name} is cut short or damaged (not a complete torch file)"
    return None


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        return _torch_file_problem(path)
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{path.name} is not valid JSON"
    return None


def checkpoint_problem(folder) -> str | None:
    """Why a checkpoint folder cannot be resumed, or None when it holds everything whole.

    Trainer writes weights, optimizer, scheduler and RNG state first and trainer_state.json last;
    a folder whose state file is missing, cut short or names another step was interrupted. A
    weights or optimizer file cut short (a full disk, a copy stopped midway) is found from the
    file's own layout: a safetensors header gives its length, a torch file ends with a directory.
    """
    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        step = int(folder.name.rsplit("-", 1)[-1])
    except (OSError, ValueError) as error:
        return f"{STATE_FILE} is missing or unreadable ({type(error).__name__})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"{STATE_FILE} is not the state of step {step}"
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        return "it holds no weights file"
    files = [folder / "optimizer.pt", folder / "scheduler.pt"]
    files += [path for path in folder.iterdir() if path.name in ("rng_state.pth", "scaler.pt")]
    for index in [w for w in weights if w.name.endswith(".index.json")]:
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is not a valid index of weight files"
        files += [folder / name for name in sorted(shards)]
    for path in [*weights, *files]:
        problem = _file_problem(path)
        if problem:
            return problem
    return None


def newest_complete_checkpoint(output_dir) -> Path | None:
    """The complete checkpoint-N folder with the highest N in output_dir (nothing renamed)."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*")
               if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True):
        if checkpoint_problem(folder) is None:
            return folder
    return None


def checkpoint_is_complete(folder: Path) -> bool:
    """True when a checkpoint folder holds everything a resume needs (see checkpoint_problem)."""
    return checkpoint_problem(folder) is None


def resume_checkpoint(output_dir) -> str | None:
    """The newest complete checkpoint-N folder in output_dir, for
    `trainer.train(resume_from_checkpoint=...)`; None when there is none (start fresh).

    A checkpoint a crash left half-written, or with a file cut short, is renamed to
    incomplete-checkpoint-N with a warning that says what is wrong (kept for inspection, never
    resumed nor rotated by the Trainer), and the next newest is tried. When none is left,
    training starts from the beginning, with a warning. That the checkpoint was made with this
    run's settings is checked when training begins (StepStats, check_resume_settings).
    """
    output_dir = Path(output_dir)
    set_aside = []
    while output_dir.is_dir() and (last := get_last_checkpoint(str(output_dir))) is not None:
        last = Path(last)
        problem = checkpoint_problem(last)
        if problem is None:
            return str(last)
        aside = last.with_name(SET_ASIDE_PREFIX + last.name)
        if aside.exists():
            aside = last.with_name(f"{SET_ASIDE_PREFIX}{last.name}-{int(time.time())}")
        last.rename(aside)
        set_aside.append(aside.name)
        warnings.warn(f"{last} is incomplete ({problem}; interrupted while saving?); set aside "
                      f"as {aside.name}, and the checkpoint before it is tried", stacklevel=2)
    if set_aside:
        warnings.warn(f"No complete checkpoint left in {output_dir}: training starts from the "
                      f"beginning (the damaged ones are kept as {', '.join(set_aside)}).",
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
