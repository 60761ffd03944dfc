"""Training throughput and training memory of `make bench` (parts 1 and 2 of benchmarks/bench.py).

Throughput: the course's data path (tokenize_qa_split rows, qa_collator's dynamic padding, a
Trainer with StepStats and StopOnNonFiniteLoss and logging_arguments) against the original
recipe (every row padded to 512 tokens, a plain Trainer) and against a plain Trainer on the
course's rows (no course callbacks, default logging), on the same rows in the same order, for
full fine-tuning, LoRA and QLoRA, in fp32 and with bf16 autocast. Tokens per second counts real
(non-padding) tokens only: the padded recipe processes more tokens but learns from the same ones.

Memory: one fresh process per method trains two optimizer steps of the tiny recipe and
compares its peak with course_utils.estimator, measured as tests/test_estimator.py measures it.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

METHODS = ("full", "lora", "qlora")
PIPELINES = ("course", "plain", "pad512")   # the course's path, a plain Trainer, the original
ORIGINAL_LENGTH = 512                       # the original recipe pads every row to this


@dataclass(frozen=True)
class TrainingSizes:
    model_id: str = "packaged:smollm2-135m-instruct"
    batch_size: int = 4          # rows per step: the tiny recipe's per_device_train_batch_size
    warmup_steps: int = 1        # steps run, not timed, at the start of every Trainer run
    steps: int = 3               # timed steps per Trainer run (course and plain)
    padded_steps: int = 1        # timed steps per run of the padded recipe (3.5x the tokens)
    rounds: int = 3              # Trainer runs per pipeline, interleaved (course, plain, pad512, ...)
    padded_rounds: int = 1       # runs of the padded recipe (its ratio leaves a wide margin)
    methods: tuple[str, ...] = METHODS
    precisions: tuple[str, ...] | None = None   # None: fp32, and bf16 where it is native
    memory_methods: tuple[str, ...] = METHODS
    memory_steps: int = 2        # optimizer steps in each memory process

    def __post_init__(self):
        for name in ("batch_size", "warmup_steps", "steps", "padded_steps", "rounds",
                     "padded_rounds", "memory_steps"):
            if getattr(self, name) < 1:   # a warm-up step also starts the first timed step's clock
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def cpu_bf16_native() -> bool:
    """True where the CPU computes bf16 natively (avx512_bf16 or AMX): autocast is worth it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def precisions(hardware) -> tuple[str, ...]:
    if hardware.device == "cuda":
        return ("fp32", "bf16") if hardware.supports_bf16 else ("fp32",)
    return ("fp32", "bf16") if cpu_bf16_native() else ("fp32",)


def autocast_probe(model_id: str, hardware, batch: int = 1, length: int = 64,
                   repeats: int = 2) -> dict:
    """Seconds of one forward and backward pass of the full model on (batch, length) random
    tokens, in fp32 and under bf16 autocast (fastest of `repeats`), and whether bf16 is faster.

    A CPU that computes bf16 natively is not enough: where PyTorch's CPU kernels fall back to
    slow paths, a bf16 step takes many times longer than fp32 (measured here: forward 5x,
    backward 40x slower with torch 2.13 on a 2-core Zen 4), and a bench that timed it would run
    for hours. The probe decides whether the bf16 configurations are worth timing."""
    import torch

    from course_utils.models import load_causal_lm

    model, _ = load_causal_lm(model_id, hardware=hardware, dtype=torch.float32)
    model.train()
    tokens = torch.randint(0, model.config.vocab_size, (batch, length), device=hardware.device)
    seconds = {}
    for precision in ("fp32", "bf16"):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.autocast(hardware.device, dtype=torch.bfloat16,
                                enabled=precision == "bf16"):
                loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        seconds[precision] = min(times)
    del model
    gc.collect()
    return {"batch": batch, "length": length, "fp32_s": seconds["fp32"],
            "bf16_s": seconds["bf16"], "bf16_over_fp32": seconds["bf16"] / seconds["fp32"],
            "bf16_faster": seconds["bf16"] < seconds["fp32"]}


def quiet_transformers() -> None:
    """No progress bars and no advice from transformers and peft: the bench prints its own."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


# --- throughput -------------------------------------------------------------------------------


def _callbacks():
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """The time at the end of every optimizer step; the same in every pipeline, so the
        interval between two ends holds everything a step costs: collation, forward, backward,
        optimizer, callbacks and logging."""

        def __init__(self):
            self.ends, self.cpu_ends = [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends, self.cpu_ends = [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())   # this process's CPU seconds

    return StepClock


class CountingCollator:
    """Wraps a collator and records each batch's real tokens and padded shape, in order."""

    def __init__(self, collate):
        self.collate = collate
        self.batches: list[tuple[int, int, int]] = []   # (real tokens, rows, padded length)

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch["attention_mask"]                   # (rows, T)
        self.batches.append((int(mask.sum()), int(mask.shape[0]), int(mask.shape[1])))
        return batch


def padded_rows(rows, length: int, pad_id: int):
    """The original recipe's rows: every row padded on the right to `length` tokens."""
    from datasets import Dataset

    from course_utils.data import IGNORE_INDEX

    def pad(values, fill):
        return [list(v) + [fill] * (length - len(v)) for v in values]

    return Dataset.from_dict({"input_ids": pad(rows["input_ids"], pad_id),
                              "attention_mask": pad(rows["attention_mask"], 0),
                              "labels": pad(rows["labels"], IGNORE_INDEX)})


def load_method(method: str, precision: str, model_id: str, hardware):
    """(model, tokenizer): the notebooks' model for a method. LoRA: notebook 03's adapters on
    the fp32 base; QLoRA: notebook 04's NF4 base (compute dtype bf16 under bf16 autocast)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from course_utils.config import get_profile
    from course_utils.models import load_causal_lm

    torch.manual_seed(0)
    quantization = None
    if method == "qlora":
        compute = torch.bfloat16 if precision == "bf16" else torch.float32
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
    model, tokenizer = load_causal_lm(model_id, hardware=hardware, dtype=torch.float32,
                                      quantization_config=quantization)
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if method != "full":
        model = with_notebook_adapter(model, method, get_profile("tiny"))
    return model, tokenizer


def with_notebook_adapter(model, method: str, profile):
    """`model` with the LoRA adapter of notebook 03 (method "lora") or 04 ("qlora") in that
    profile's recipe, as the notebooks configure it."""
    from peft import get_peft_model

    from course_utils.config import recipe
    from course_utils.train_cli import adapter_config

    return get_peft_model(model, adapter_config(recipe("03" if method == "lora" else "04",
                                                       profile)))


def run_pipeline(pipeline: str, model, tokenizer, rows, padded, hardware, precision: str,
                 sizes: TrainingSizes) -> dict:
    """One Trainer run of a pipeline: warm-up steps, then timed steps. Returns its real tokens,
    seconds and per-step numbers over the timed steps."""
    from transformers import PrinterCallback, Trainer, TrainingArguments, default_data_collator

    from course_utils.data import qa_collator
    from course_utils.training import StepStats, StopOnNonFiniteLoss, logging_arguments

    timed = sizes.padded_steps if pipeline == "pad512" else sizes.steps
    common = dict(output_dir=tempfile.mkdtemp(prefix="bench-"),
                  max_steps=sizes.warmup_steps + timed,
                  per_device_train_batch_size=sizes.batch_size, gradient_accumulation_steps=1,
                  learning_rate=1e-5, save_strategy="no", bf16=precision == "bf16",
                  disable_tqdm=True)
    clock = _callbacks()()
    if pipeline == "course":     # as notebooks 02-04 build it
        args = TrainingArguments(**common, **logging_arguments(hardware, 42))
        collate = CountingCollator(qa_collator(tokenizer))
        callbacks = [StepStats(hardware.device), StopOnNonFiniteLoss(hardware), clock]
        data = rows
    else:                        # a plain Trainer: default logging, no course callbacks
        args = TrainingArguments(**common, report_to="none", seed=42, data_seed=42,
                                 use_cpu=hardware.device != "cuda")
        callbacks = [clock]
        if pipeline == "plain":
            collate, data = CountingCollator(qa_collator(tokenizer)), rows
        else:
            collate, data = CountingCollator(default_data_collator), padded
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate,
                      callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # no log lines printed, in any pipeline
    with contextlib.redirect_stdout(io.StringIO()):     # StepStats's checkpoint line
        trainer.train()
    # batch k of the collator is step k's (one batch per step; the loader may fetch one ahead)
    steps = collate.batches[:len(clock.ends)]
    first = sizes.warmup_steps     # the timed steps run from the end of the last warm-up step
    seconds = clock.ends[-1] - clock.ends[first - 1]
    tokens = sum(real for real, _, _ in steps[first:])
    cpu_seconds = clock.cpu_ends[-1] - clock.cpu_ends[first - 1]
    record = {"pipeline": pipeline, "steps": len(steps) - first, "real_tokens": tokens,
              "seconds": seconds, "tokens_per_second": tokens / seconds,
              "cpu_seconds": cpu_seconds, "tokens_per_cpu_second": tokens / cpu_seconds,
              "step_seconds": [b - a for a, b in zip(clock.ends[first - 1:-1],
                                                     clock.ends[first:], strict=True)],
              "step_tokens": [real for real, _, _ in steps[first:]],
              "padded_tokens": sum(rows_ * length for _, rows_, length in steps[first:]),
              "loss_finite": all(math.isfinite(r.get("loss", 0.0))
                                 for r in trainer.state.log_history)}
    if pipeline == "course":     # what StepStats itself recorded over the same steps
        stats = [r for r in trainer.state.log_history if "step_seconds" in r][first:]
        record["stepstats_tokens_per_second"] = (sum(r["tokens"] for r in stats)
                                                 / sum(r["step_seconds"] for r in stats))
    del trainer
    gc.collect()
    return record


def paired_ratio(runs: list[dict], other: str) -> tuple[float, int]:
    """Median over matched steps of (other's seconds / course's seconds): the course's
    throughput relative to `other`, robust to a step that something else on the machine slowed.
    Step k of every run trains the same rows (same real tokens), so each timed step of a course
    run is paired with the step of the same number in each run of `other`."""
    import statistics

    def steps(pipeline):
        return [(k, seconds, tokens) for r in runs if r["pipeline"] == pipeline
                for k, (seconds, tokens) in enumerate(zip(r["step_seconds"], r["step_tokens"],
                                                          strict=True))]

    ratios = [theirs / mine for k, mine, tokens in steps("course")
              for j, theirs, their_tokens in steps(other) if j == k and their_tokens == tokens]
    if not ratios:
        raise ValueError(f"no course step trained the same rows as a {other} step")
    return statistics.median(ratios), len(ratios)


def measure_throughput(sizes: TrainingSizes, log=print) -> dict:
    """Part 1: real tokens per second of the three pipelines, per method and precision."""
    import torch

    from course_utils.config import get_profile
    from course_utils.data import load_msmarco, tokenize_qa_split
    from course_utils.hardware import detect_hardware

    quiet_transformers()
    hardware = detect_hardware()
    profile = get_profile("tiny")
    split = load_msmarco(profile)["train"]
    configs, started = [], time.perf_counter()
    rows = pad = None
    chosen = sizes.precisions or precisions(hardware)
    probe = None
    if "bf16" in chosen and hardware.device == "cpu":
        probe = autocast_probe(sizes.model_id, hardware)
        log(f"  bf16 autocast probe: one forward+backward {probe['bf16_s']:.2f} s in bf16, "
            f"{probe['fp32_s']:.2f} s in fp32 (x{probe['bf16_over_fp32']:.1f})"
            + ("" if probe["bf16_faster"] else ": bf16 is slower here, its configurations "
               "are not timed"))
        if not probe["bf16_faster"]:
            chosen = tuple(p for p in chosen if p != "bf16")
    for method in sizes.methods:
        for precision in chosen:
            model, tokenizer = load_method(method, precision, sizes.model_id, hardware)
            if rows is None:         # the same rows for every configuration
                rows = tokenize_qa_split(tokenizer, split, profile.max_length)
                pad = padded_rows(rows, ORIGINAL_LENGTH, tokenizer.pad_token_id)
            runs = []
            for round_ in range(max(sizes.rounds, sizes.padded_rounds)):
                turn = round_ % len(PIPELINES)     # each round starts with the next pipeline
                order = PIPELINES[turn:] + PIPELINES[:turn]
                for pipeline in order:
                    limit = sizes.padded_rounds if pipeline == "pad512" else sizes.rounds
                    if sum(r["pipeline"] == pipeline for r in runs) >= limit:
                        continue
                    run = run_pipeline(pipeline, model, tokenizer, rows, pad, hardware,
                                       precision, sizes)
                    runs.append({**run, "round": round_})
            pooled = {}
            for pipeline in PIPELINES:
                mine = [r for r in runs if r["pipeline"] == pipeline]
                tokens, seconds = sum(r["real_tokens"] for r in mine), sum(r["seconds"] for r in mine)
                cpu = sum(r["cpu_seconds"] for r in mine)
                pooled[pipeline] = {"tokens_per_second": tokens / seconds, "real_tokens": tokens,
                                    "seconds": seconds, "steps": sum(r["steps"] for r in mine),
                                    "tokens_per_cpu_second": tokens / cpu, "cpu_seconds": cpu,
                                    "padded_tokens": sum(r["padded_tokens"] for r in mine)}
            course = pooled["course"]["tokens_per_second"]
            cpu_course = pooled["course"]["tokens_per_cpu_second"]
            (over_pad, pad_pairs), (over_plain, plain_pairs) = (
                paired_ratio(runs, "pad512"), paired_ratio(runs, "plain"))
            config = {"method": method, "precision": precision, "pipelines": pooled,
                      "course_over_pad512": over_pad, "course_over_plain": over_plain,
                      "pairs": {"pad512": pad_pairs, "plain": plain_pairs},
                      "pooled_ratios": {  # total real tokens / total seconds, per pipeline
                          "course_over_pad512": course / pooled["pad512"]["tokens_per_second"],
                          "course_over_plain": course / pooled["plain"]["tokens_per_second"]},
                      "cpu_time_ratios": {  # the same in tokens per CPU second of this process
                          "course_over_pad512": cpu_course / pooled["pad512"]["tokens_per_cpu_second"],
                          "course_over_plain": cpu_course / pooled["plain"]["tokens_per_cpu_second"]},
                      "runs": runs}
            configs.append(config)
            log(f"  {method:<5} {precision}: course {course:6.0f} tok/s, "
                f"x{config['course_over_pad512']:.2f} pad-to-512, "
                f"x{config['course_over_plain']:.3f} plain Trainer")
            del model
            gc.collect()
    return {"configs": configs, "batch_size": sizes.batch_size, "rows": len(rows),
            "warmup_steps": sizes.warmup_steps, "steps": sizes.steps,
            "padded_steps": sizes.padded_steps, "rounds": sizes.rounds,
            "padded_rounds": sizes.padded_rounds, "model": sizes.model_id,
            "torch_threads": torch.get_num_threads(), "device": hardware.device,
            "bf16_autocast_probe": probe, "seconds": time.perf_counter() - started}


# --- memory -----------------------------------------------------------------------------------
# A child process per method, as in tests/test_estimator.py: RSS before the model is loaded,
# parameters copied out of the memory-mapped checkpoint, glibc returning freed blocks above
# 64 KiB to the system (MALLOC_MMAP_THRESHOLD_), the peak as StepStats records it.

MEMORY_CHILD = r"""
import json, sys, tempfile
import torch
import peft, transformers
from transformers import Trainer, TrainingArguments
sys.path.insert(0, sys.argv[4])
from bench_training import CountingCollator, load_method, quiet_transformers
from course_utils import memory
from course_utils.config import get_profile, recipe
from course_utils.data import load_msmarco, qa_collator, tokenize_qa_split
from course_utils.hardware import detect_hardware
from course_utils.models import load_tokenizer
from course_utils.training import StepStats, logging_arguments, training_summary

quiet_transformers()
method, model_id, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cpu = detect_hardware(prefer_cpu=True)
profile = get_profile("tiny")
settings = recipe({"full": "02", "lora": "03", "qlora": "04"}[method], profile)
rows = tokenize_qa_split(load_tokenizer(model_id), load_msmarco(profile)["train"],
                         profile.max_length)
before = memory.current_memory_mib("cpu")   # everything but the model is loaded
model, tokenizer = load_method(method, "fp32", model_id, cpu)
for p in model.parameters():  # out of the memory-mapped checkpoint file
    if type(p).__name__ != "Params4bit":
        p.data = p.data.clone()
collate = CountingCollator(qa_collator(tokenizer))
args = TrainingArguments(
    output_dir=tempfile.mkdtemp(), learning_rate=1e-5, max_steps=steps,
    per_device_train_batch_size=settings["per_device_train_batch_size"],
    gradient_accumulation_steps=settings["gradient_accumulation_steps"],
    optim="adamw_torch", save_strategy="no", disable_tqdm=True, **logging_arguments(cpu, 42))
trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                  callbacks=[StepStats(cpu.device)])
trainer.train()
peak = training_summary(trainer.state.log_history)["peak_mib"]
print(json.dumps({"before_mib": before, "peak_mib": peak,
                  "batch_size": settings["per_device_train_batch_size"],
                  "gradient_accumulation_steps": settings["gradient_accumulation_steps"],
                  "seq_len": max(length for _, _, length in collate.batches),
                  "micro_batches": len(collate.batches)}))
"""


def memory_estimate(method: str, model_id: str, run: dict):
    """course_utils.estimator's prediction for the batches the child trained on."""
    import transformers

    from course_utils.config import get_profile, recipe
    from course_utils.estimator import estimate_training_memory
    from course_utils.models import resolve_model_path

    config = transformers.AutoConfig.from_pretrained(resolve_model_path(model_id))
    lora = None if method == "full" else recipe("03" if method == "lora" else "04",
                                                get_profile("tiny"))
    targets = None if lora is None else lora["target_modules"]
    return estimate_training_memory(
        config, method, run["batch_size"], run["seq_len"], "fp32", "adamw",
        lora_rank=None if lora is None else lora["r"],
        lora_targets=targets if isinstance(targets, str) or targets is None else list(targets),
        lora_dropout=0.0 if lora is None else lora["lora_dropout"], device="cpu",
        gradient_accumulation_steps=run["gradient_accumulation_steps"])


def measure_memory(sizes: TrainingSizes, log=print) -> dict:
    """Part 2: measured training peak per method (fresh process each) against the estimate."""
    started, methods = time.perf_counter(), []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    here = str(Path(__file__).resolve().parent)
    for method in sizes.memory_methods:
        done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, method, sizes.model_id,
                               str(sizes.memory_steps), here],
                              capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"the {method} memory run failed:\n{done.stderr[-3000:]}")
        run = json.loads(done.stdout.strip().splitlines()[-1])
        estimate = memory_estimate(method, sizes.model_id, run)
        measured = run["peak_mib"] - run["before_mib"]
        methods.append({"method": method, **run, "measured_mib": measured,
                        "estimated_mib": estimate.total_mib,
                        "estimate_over_measured": estimate.total_mib / measured,
                        "estimate_parts_mib": estimate.components()})
        log(f"  {method:<5}: measured {measured:7.0f} MiB, estimated "
            f"{estimate.total_mib:7.0f} MiB ({estimate.total_mib / measured - 1:+.1%})")
    return {"methods": methods, "steps": sizes.memory_steps, "model": sizes.model_id,
            "seconds": time.perf_counter() - started}
