"""How does a notebook's training run as one command, on one GPU or several? `python -m course_utils train`.

    python -m course_utils train --method lora --profile tiny --steps 4
    accelerate launch --multi_gpu --num_processes 2 -m course_utils train --method lora --profile full
    torchrun --nproc_per_node 2 -m course_utils train --method qlora --profile full
    accelerate launch --config_file course_utils/resources/accelerate/fsdp_7b.yaml \\
        -m course_utils train --method lora --profile full \\
        --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B

The same helpers and recipe rows as the notebooks (course_utils.data, models, training and
RECIPES["02"|"03"|"04"]), and the Trainer they build. Several processes need nothing of ours:
a launcher (accelerate launch, torchrun) sets WORLD_SIZE, RANK and LOCAL_RANK, the Trainer
then wraps the model in DistributedDataParallel (NCCL on GPUs, gloo on CPUs), gives each
process its share of every batch through a distributed sampler, averages the gradients, and
saves from the first process only. On a machine with one GPU or none, accelerate launch
starts several processes only with --multi_gpu (on a CPU they then use gloo). Under an accelerate config with FSDP it shards parameters,
gradients and optimizer states across the GPUs instead (the 7B case).

Each process writes <output>/ranks/rank-<r>.json: the losses the Trainer logged (averaged over
the processes, so every rank holds the same numbers) and a checksum of its trainable weights
(equal on every rank when DDP kept the copies in step).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from course_utils.hardware import Hardware

METHOD_NOTEBOOK = {"full": "02", "lora": "03", "qlora": "04"}   # whose recipe a method trains


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where this process stands among the processes a launcher started (1 of 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    fsdp: bool = False        # accelerate launch with an FSDP config sets ACCELERATE_USE_FSDP

    @classmethod
    def from_environment(cls, environ=os.environ) -> Launch:
        def number(name, default):
            value = environ.get(name, "")
            try:
                return int(value) if value != "" else default
            except ValueError:
                raise ValueError(f"the environment variable {name} must be a whole number, got "
                                 f"{value!r}: start several processes with accelerate launch "
                                 f"or torchrun, which set it") from None
        return cls(rank=number("RANK", 0), local_rank=number("LOCAL_RANK", 0),
                   world_size=number("WORLD_SIZE", 1),
                   fsdp=environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"))


class RankHardware(Hardware):
    """The detected hardware, with each process's model on its own GPU (GPU LOCAL_RANK), or on
    the CPU for FSDP to shard. Hardware.device_map puts a model whole on GPU 0, right for one
    process and wrong for several."""

    local_rank: int = 0
    fsdp: bool = False

    @property
    def device_map(self) -> dict | None:
        if self.device != "cuda" or self.fsdp:
            return None
        return {"": self.local_rank}


def rank_hardware(launch: Launch) -> Hardware:
    from course_utils.hardware import detect_hardware

    found = detect_hardware()
    if found.device == "cuda" and launch.world_size > found.gpu_count and not launch.fsdp:
        raise ValueError(f"{launch.world_size} processes but {found.gpu_count} GPU(s): DDP needs "
                         f"one GPU per process. Start --num_processes {found.gpu_count} (or "
                         f"--nproc_per_node {found.gpu_count}), or hide the GPUs "
                         f"(CUDA_VISIBLE_DEVICES=) to train on the CPU.")
    hardware = RankHardware(**{f.name: getattr(found, f.name) for f in dataclasses.fields(found)})
    object.__setattr__(hardware, "local_rank", launch.local_rank)
    object.__setattr__(hardware, "fsdp", launch.fsdp)
    return hardware


def load_model(method: str, model_id: str, settings, hardware: Hardware, fsdp: bool = False):
    """(model, tokenizer) as notebooks 02-04 build them: full fine-tuning on fp32 weights,
    LoRA adapters on the frozen base (notebook 03), NF4 base with adapters (notebook 04)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from course_utils.models import load_causal_lm

    if method == "full":
        return load_causal_lm(model_id, hardware=hardware, dtype=hardware.full_finetuning_dtype)
    if method == "lora":
        model, tokenizer = load_causal_lm(model_id, hardware=hardware,
                                          dtype=hardware.lora_base_dtype)
    else:
        compute = hardware.four_bit_compute_dtype
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            # FSDP shards flat tensors of one dtype: the 4-bit codes are stored in that dtype
            **({"bnb_4bit_quant_storage": compute} if fsdp else {}))
        model, tokenizer = load_causal_lm(model_id, hardware=hardware,
                                          quantization_config=quantization)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings["activation_checkpointing"])
    return get_peft_model(model, adapter_config(settings)), tokenizer


def adapter_config(settings):
    """The LoraConfig of notebook 03's or 04's recipe row (`settings`), as the notebooks
    write it."""
    from peft import LoraConfig

    targets = settings["target_modules"]
    return LoraConfig(
        r=settings["r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none", task_type="CAUSAL_LM")


def trainable_checksum(model) -> float:
    """The sum of every trainable weight in float64: equal on every DDP rank after training."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().sum().item()
                         for p in model.parameters() if p.requires_grad))


def train(method: str, profile="auto", steps: int | None = None, output: str | Path | None = None,
          learning_rate: float | None = None, model_id: str | None = None,
          batch_size: int | None = None, log=print) -> dict:
    """Train one method with its notebook's recipe in `profile`; save the adapter (LoRA, QLoRA)
    or the model (full) under output; return what this process recorded."""
    from transformers import Trainer, TrainingArguments

    from course_utils.config import get_profile, recipe, run_dir
    from course_utils.data import load_msmarco, qa_collator, tokenize_qa_split
    from course_utils.training import (
        StepStats,
        StopOnNonFiniteLoss,
        logging_arguments,
        series,
        training_summary,
    )

    if method not in METHOD_NOTEBOOK:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHOD_NOTEBOOK)}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    launch = Launch.from_environment()
    if launch.fsdp and method == "qlora":
        raise ValueError("QLoRA under FSDP is not supported by this command: a 7B model in 4 bits "
                         "fits one 16 GiB GPU, so train it with DDP (accelerate launch "
                         "--multi_gpu, or torchrun), or use --method lora with the FSDP config")
    profile = get_profile(profile)
    hardware = rank_hardware(launch)
    settings = recipe(METHOD_NOTEBOOK[method], profile).with_overrides(
        max_steps=steps, learning_rate=learning_rate, per_device_train_batch_size=batch_size)
    model_id = model_id or profile.chat_model
    output = Path(output) if output else run_dir(profile.name, f"train-{method}")
    arguments = settings.training_arguments()
    if arguments.get("optim", "").startswith("paged") and hardware.device != "cuda":
        arguments["optim"] = "adamw_torch"   # paged optimizers need CUDA (notebook 04)
    args = TrainingArguments(
        output_dir=str(output / "trainer"), **arguments, save_strategy="no",
        bf16=hardware.bf16, fp16=hardware.fp16,             # mixed precision on a GPU only
        ddp_find_unused_parameters=False,                   # every trainable weight gets a gradient
        **logging_arguments(hardware, profile.seed))
    model, tokenizer = load_model(method, model_id, settings, hardware, fsdp=launch.fsdp)
    with args.main_process_first(desc="tokenizing"):        # one download on a fresh machine
        rows = tokenize_qa_split(tokenizer, load_msmarco(profile)["train"], profile.max_length)
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=qa_collator(tokenizer), processing_class=tokenizer,
                      callbacks=[StepStats(hardware.device), StopOnNonFiniteLoss(hardware)])
    if args.world_size != launch.world_size:
        raise RuntimeError(f"the launcher started {launch.world_size} processes but the Trainer "
                           f"sees {args.world_size}: is torch.distributed available?")
    trainer.train()
    saved = output / ("model" if method == "full" else "adapter")
    if trainer.is_fsdp_enabled:   # gather the shards into one file; sharded, nothing is saved
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(saved))                           # the first process writes it
    record = {"method": method, "profile": profile.name, "model": model_id,
              "rank": launch.rank, "world_size": args.world_size,
              "backend": str(args.distributed_state.backend) if args.world_size > 1 else None,
              "device": hardware.device, "fsdp": launch.fsdp,
              "rows_per_optimizer_step": (args.per_device_train_batch_size
                                          * args.gradient_accumulation_steps * args.world_size),
              "losses": series(trainer.state.log_history, "loss")[1],
              "trainable_checksum": None if launch.fsdp else trainable_checksum(model),
              "summary": training_summary(trainer.state.log_history), "saved": str(saved)}
    ranks = output / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    (ranks / f"rank-{launch.rank}.json").write_text(json.dumps(record, indent=1) + "\n")
    if launch.rank == 0:
        summary = record["summary"]
        log(f"{method} on {profile.name} ({model_id}), {args.world_size} process(es) on "
            f"{hardware.device}{', FSDP' if launch.fsdp else ''}: {summary['steps']} steps of "
            f"{record['rows_per_optimizer_step']} rows, loss {summary['first_loss']:.3f} -> "
            f"{summary['last_loss']:.3f}; saved in {saved}")
    return record
