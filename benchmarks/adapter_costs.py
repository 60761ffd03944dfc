"""Full fine-tuning, LoRA and QLoRA side by side: time per step and training memory, as ratios.

    .venv/bin/python benchmarks/adapter_costs.py            # tiny model, CPU, about 3 minutes
    .venv/bin/python benchmarks/adapter_costs.py --steps 6 --batch-size 8

Each method runs in its own process (so one method's freed memory cannot hide another's peak)
on the same batch of mini MS MARCO training rows: the tiny profile's chat model, the adapters of
notebooks 03 (LoRA: r=32 on q/k/v/o) and 04 (QLoRA: 4-bit NF4 base, r=32 on all linear layers),
AdamW, plain PyTorch steps. It prints one table with each method's numbers and their ratio to
full fine-tuning, and the targets the course's claims rest on, measured in this same run:

- LoRA (r=32 on q/k/v/o) trains under 5 % of the parameters that full fine-tuning trains,
  QLoRA (r=32 on all linear layers) under 10 %;
- QLoRA's model weights take at most 0.35x the memory of the fp32 model;
- LoRA and QLoRA need less training memory than full fine-tuning.

The results go to benchmarks/results/adapter_costs-<device>.json. Ratios, not absolute
numbers, are what carries over from one machine to another.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("full", "lora", "qlora")


def measure(method: str, steps: int, batch_size: int) -> dict:
    """One method in this process: load, build a fixed batch, time `steps` optimizer steps."""
    import torch
    from bench_training import with_notebook_adapter  # this folder: run as a script
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from course_utils.config import get_profile
    from course_utils.data import load_msmarco, qa_collator, tokenize_qa_split
    from course_utils.estimator import measured_training_mib
    from course_utils.hardware import detect_hardware
    from course_utils.memory import track_peak_memory
    from course_utils.models import footprint_mib, load_causal_lm

    torch.manual_seed(0)
    profile = get_profile("tiny")
    hardware = detect_hardware()
    quantization = None
    if method == "qlora":  # notebook 04's base: NF4 with double quantization
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=hardware.dtype if hardware.device == "cuda" else torch.float32)
    model, tokenizer = load_causal_lm(profile.chat_model, hardware=hardware,
                                      quantization_config=quantization)
    weights_mib = footprint_mib(model)
    if method != "full":
        if method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = with_notebook_adapter(model, method, profile)  # the notebooks' adapters
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = tokenize_qa_split(tokenizer, load_msmarco(profile)["train"], profile.max_length)
    batch = qa_collator(tokenizer)([rows[i] for i in range(batch_size)])  # (batch, T) tensors
    batch = {k: v.to(model.device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    seconds = []
    with track_peak_memory(hardware.device) as memory:  # see course_utils/memory.py
        for _ in range(steps):
            start = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - start)
    return {"method": method, "device": hardware.device, "trainable_parameters": trainable,
            "weights_mib": weights_mib,
            "training_mib": measured_training_mib(memory.peak_mib, memory.start_mib, weights_mib),
            "seconds_per_step": statistics.median(seconds[1:] or seconds),
            "batch": list(batch["input_ids"].shape)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per method")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per step")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.steps < 2 or args.batch_size < 1:
        parser.error("--steps must be at least 2 (the first step is a warm-up), "
                     "--batch-size at least 1")
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.batch_size)))
        return 0

    runs = {}
    for method in METHODS:
        done = subprocess.run([sys.executable, __file__, "--one", method, "--steps",
                               str(args.steps), "--batch-size", str(args.batch_size)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            print(f"ERROR: the {method} run failed (its error is above)", file=sys.stderr)
            return 1
        runs[method] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"measured {method}", file=sys.stderr)

    full = runs["full"]
    columns = ("trainable_parameters", "weights_mib", "training_mib", "seconds_per_step")
    print(f"batch {full['batch'][0]} rows x {full['batch'][1]} tokens, {args.steps} steps, "
          f"device {full['device']}; ratio = method / full fine-tuning")
    print(f"{'method':<7}" + "".join(f"{c:>22}" for c in columns))
    for method, run in runs.items():
        cells = "".join(f"{run[c]:>13,.1f} ({run[c] / full[c]:5.3f})" for c in columns)
        print(f"{method:<7}{cells}")
    targets = {
        "LoRA trains < 5 % of full FT's parameters":
            runs["lora"]["trainable_parameters"] < 0.05 * full["trainable_parameters"],
        "QLoRA trains < 10 % of full FT's parameters":
            runs["qlora"]["trainable_parameters"] < 0.10 * full["trainable_parameters"],
        "QLoRA weights <= 0.35 x fp32 weights": runs["qlora"]["weights_mib"]
            <= 0.35 * full["weights_mib"] if full["device"] == "cpu" else None,
        "LoRA training memory < full FT": runs["lora"]["training_mib"] < full["training_mib"],
        "QLoRA training memory < full FT": runs["qlora"]["training_mib"] < full["training_mib"],
    }
    for name, met in targets.items():
        print(f"  {'n/a ' if met is None else 'met ' if met else 'MISSED'}  {name}")
    out = Path(__file__).resolve().parent / "results" / f"adapter_costs-{full['device']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"runs": runs, "targets": targets, "steps": args.steps}, indent=1))
    print(f"written to {out}")
    return 0 if all(met is not False for met in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
