"""Does the course run on a GPU, and do the planner's memory predictions hold on a T4?

    make gpu-check                                   # a CUDA machine (sized for < 8 min on an H200)
    .venv/bin/python benchmarks/gpu_check.py --skip-notebooks          # the T4 emulation only
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke --output /tmp/smoke.json   # no GPU

Two parts, nothing downloaded (models are built from the shapes the course ships, with random
weights; the tiny profile's models and data come with the installed packages):

1. notebooks: notebooks 00-06 in the tiny profile on the GPU, through the course runner
   (`python -m course_tools run`), offline, with a time cap; a notebook that fails or runs past
   the cap is a failure of this check, not a crash of the script.
2. T4 emulation, each part in its own process with fp16 forced and PyTorch's allocator capped
   at 14.25 GiB (`torch.cuda.set_per_process_memory_fraction`), what a 16 GB T4 leaves PyTorch:
   - 02 training: Qwen3-0.6B in fp32 weights, fp16 autocast with a GradScaler, the Trainer's
     default fused AdamW, the `full` recipe's micro-batch and accumulation, full-length rows of
     `FULL.max_length` tokens, two optimizer steps (so the AdamW states exist);
   - 05 generation: DeepSeek-R1-Distill-Qwen-7B in 4-bit NF4 with double quantization and fp16
     compute, the recipe's generation batch of prompts as long as the plan's (3 passages and a
     question; 1100 tokens without a plan), every row generating the recipe's `max_new_tokens`;
   - 05 QLoRA step: one training step on that model (r=16 on all linear layers, gradient
     checkpointing, paged 8-bit AdamW), batch 1 x 512 tokens.
   Each peak (`torch.cuda.max_memory_allocated`) is compared with the planner's prediction
   (`course_utils.plan`) or, for the QLoRA step, with `estimate_training_memory`; a check passes
   when it fits the cap and its peak is within the tolerance (20 %) of the prediction. Step
   times and tokens per second are recorded too: they are the measuring GPU's, not a T4's.

The results go to benchmarks/results/gpu-check-<gpu>.json (e.g. gpu-check-nvidia-h200.json).
Without CUDA the script stops with a one-line message; `--cpu-smoke` instead runs part 2 on the
CPU with the shapes shrunk to 2 layers (no fp16, no cap) to exercise the code: its numbers say
nothing about a GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NOTEBOOKS = ("00", "01", "02", "03", "04", "05", "06")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "COURSE_PROFILE": "tiny", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}
T4_MEMORY_GIB = 14.25       # what PyTorch can allocate on a 16 GB T4: 14.75 GiB less the CUDA
#                             context (course_utils.plan.GPUS['t4'].usable_gib)
TOLERANCE = 0.20            # |measured / predicted - 1| a check accepts (the estimator's own tests)
CHAT_MODEL = "Qwen/Qwen3-0.6B"                           # notebooks 02-04, `full` profile
RAG_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"    # notebook 05, `full` profile
PROMPT_TOKENS = 1100        # a notebook 05 prompt (3 passages and the question) without a plan
OTHER_MODELS = ("embedding model", "BERTScore model")   # plan parts this check does not load
LORA_RANK, QLORA_TOKENS = 16, 512
# --cpu-smoke: every shape shrunk to this, and the token counts below
SMOKE_SHAPE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512)
SMOKE_TOKENS = dict(seq_len=64, prompt_tokens=48, max_new_tokens=8)
CHILDREN = {"train-02": ("t4_02_training",),
            "rag-05": ("t4_05_generation", "t4_05_qlora_step")}


# --- predictions ------------------------------------------------------------------------------


def planned_peak(notebook: str, phase: str) -> dict:
    """The planner's predicted peak of one phase of a notebook on a T4, or why there is none.

    The plan counts models the notebook keeps loaded beside the one measured here (the
    retrieval embedder in 05): those parts are left out of the prediction compared.
    """
    source = f"course_utils.plan.plan_notebook({notebook!r}, gpu='t4').phase({phase!r})"
    try:
        from course_utils.plan import plan_notebook

        planned = plan_notebook(notebook, gpu="t4").phase(phase)
        parts = dict(getattr(planned, "parts", {}))
        excluded = {name: parts[name] for name in OTHER_MODELS if name in parts}
        return {"source": source, "peak_mib": float(planned.peak_mib) - sum(excluded.values()),
                "plan_peak_mib": float(planned.peak_mib), "excluded_parts_mib": excluded,
                "parts_mib": parts, "batch_size": getattr(planned, "batch_size", None),
                "seq_len": getattr(planned, "seq_len", None),
                "new_tokens": getattr(planned, "new_tokens", None)}
    except Exception as error:  # the planner is optional: say why, keep measuring
        return {"source": source, "peak_mib": None,
                "unavailable": f"plan unavailable: {type(error).__name__}: {error}"}


def full_estimate(config, smoke: bool) -> dict:
    """estimate_training_memory for notebook 02's step (fp32 weights, fp16 activations)."""
    import torch

    from course_utils.config import FULL, recipe
    from course_utils.estimator import estimate_training_memory

    settings = recipe("02", "full")
    seq_len = SMOKE_TOKENS["seq_len"] if smoke else FULL.max_length
    batch, accumulation = (settings["per_device_train_batch_size"],
                           settings["gradient_accumulation_steps"])
    estimate = estimate_training_memory(
        config, "full", batch_size=batch, seq_len=seq_len,
        dtype=torch.float32 if smoke else torch.float16, param_dtype=torch.float32,
        optimizer="adamw", device="cpu" if smoke else "cuda",
        gradient_accumulation_steps=accumulation)
    return {"source": f"course_utils.estimator.estimate_training_memory(config, 'full', "
                      f"batch_size={batch}, seq_len={seq_len}, "
                      f"gradient_accumulation_steps={accumulation}, ...).total_mib",
            "peak_mib": estimate.total_mib}


def qlora_estimate(config, smoke: bool) -> dict:
    """estimate_training_memory for the QLoRA step of notebook 05's generator."""
    import torch

    from course_utils.estimator import estimate_training_memory

    seq_len = SMOKE_TOKENS["seq_len"] if smoke else QLORA_TOKENS
    estimate = estimate_training_memory(
        config, "qlora", batch_size=1, seq_len=seq_len,
        dtype=torch.float32 if smoke else torch.float16, optimizer="adamw_8bit",
        lora_rank=LORA_RANK, lora_targets="all-linear", gradient_checkpointing=True,
        device="cpu" if smoke else "cuda")
    return {"source": f"course_utils.estimator.estimate_training_memory(config, 'qlora', "
                      f"batch_size=1, seq_len={seq_len}, dtype={'fp32' if smoke else 'fp16'}, "
                      f"optimizer='adamw_8bit', "
                      f"lora_rank={LORA_RANK}, lora_targets='all-linear', "
                      f"gradient_checkpointing=True).total_mib", "peak_mib": estimate.total_mib}


def estimated(estimate, config, smoke: bool) -> dict:
    """full_estimate or qlora_estimate, or why it could not be computed."""
    try:
        return estimate(config, smoke)
    except Exception as error:  # a changed estimator must not stop the measurements
        return {"source": estimate.__name__, "peak_mib": None,
                "unavailable": f"estimate unavailable: {type(error).__name__}: {error}"}


def compare(result: dict, predicted: dict, tolerance: float, smoke: bool) -> dict:
    """Fill in predicted_mib, ratio, within_tolerance and status of one measured check."""
    result["prediction"] = predicted
    result["predicted_mib"] = predicted.get("peak_mib")
    measured = result.get("measured_peak_mib")
    result["ratio"] = (measured / result["predicted_mib"]
                       if measured is not None and result["predicted_mib"] else None)
    result["within_tolerance"] = (None if result["ratio"] is None or smoke
                                  else abs(result["ratio"] - 1) <= tolerance)
    if result.get("error"):
        result["status"] = "fail" if result.get("out_of_memory") else "error"
    elif smoke:
        result["status"] = "ran"
    elif result["within_tolerance"] is None:
        result["status"] = "no prediction"
    else:
        result["status"] = "pass" if result["within_tolerance"] else "fail"
    return result


# --- the T4 emulation (child processes) -------------------------------------------------------


def _setup_device(smoke: bool, memory_gib: float) -> dict:
    """Pick the device and cap CUDA memory like a T4; returns what was set."""
    import torch

    torch.manual_seed(0)
    if smoke:
        return {"device": "cpu", "amp": False, "cap_mib": None}
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, memory_gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    return {"device": "cuda", "amp": True, "cap_mib": fraction * total / 2**20}


def _shape(model_id: str, smoke: bool):
    from course_utils.estimator import shipped_config

    config = shipped_config(model_id)
    for name, value in (SMOKE_SHAPE.items() if smoke else ()):
        setattr(config, name, value)
    return config


def _peak(memory, device: str, model_mib: float) -> float:
    """The phase's peak in MiB: CUDA's allocated peak (weights included); on a CPU the resident
    peak minus what the process held besides the model (see measured_training_mib)."""
    from course_utils.estimator import measured_training_mib

    if device == "cuda":
        return memory.peak_mib
    return measured_training_mib(memory.peak_mib, memory.start_mib, model_mib)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _reserved_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_reserved() / 2**20 if device == "cuda" else None


def _failure(error: Exception, device: str) -> dict:
    """What a phase that raised leaves in its result: the error, whether it ran out of memory
    (on a T4 it would not fit) and the peak reached before it did."""
    import torch

    out_of_memory = (isinstance(error, torch.OutOfMemoryError)
                     or "out of memory" in str(error).lower())
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"error": f"{type(error).__name__}: {error}"[:500], "out_of_memory": out_of_memory,
            "measured_peak_mib": peak}


def train_02(smoke: bool, memory_gib: float) -> dict:
    """Notebook 02's training on a T4: fp32 Qwen3-0.6B, fp16 autocast, GradScaler, fused AdamW."""
    import torch
    from transformers import AutoModelForCausalLM

    from course_utils.config import FULL, recipe
    from course_utils.memory import track_peak_memory
    from course_utils.models import footprint_mib

    setup = _setup_device(smoke, memory_gib)
    device, amp = setup["device"], setup["amp"]
    settings = recipe("02", "full")
    rows, accumulation = settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]
    seq_len = SMOKE_TOKENS["seq_len"] if smoke else FULL.max_length
    config = _shape(CHAT_MODEL, smoke)
    config.use_cache = False
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    model.train()
    model_mib = footprint_mib(model)
    # the Trainer's defaults: adamw_torch_fused (on CUDA), no weight decay, clipping at 1.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0, fused=amp)
    scaler = torch.amp.GradScaler(device, enabled=amp)
    result = {"what": f"{CHAT_MODEL} full fine-tuning: fp32 weights, "
                      f"{'fp16 autocast + GradScaler' if amp else 'fp32 compute'}, "
                      f"AdamW{' (fused)' if amp else ''}, {rows} x {seq_len} tokens per pass, "
                      f"{accumulation} passes per optimizer step, 2 optimizer steps",
              "cap_mib": setup["cap_mib"], "model_mib": model_mib,
              "shape": {k: getattr(config, k) for k in SMOKE_SHAPE}}
    step_seconds, skipped = [], 0
    try:
        with track_peak_memory(device) as memory:  # see course_utils/memory.py
            for _ in range(2):
                scale = scaler.get_scale()
                _sync(device)
                start = time.perf_counter()
                for _ in range(accumulation):
                    ids = torch.randint(0, config.vocab_size, (rows, seq_len), device=device)
                    with torch.autocast(device, dtype=torch.float16, enabled=amp):
                        loss = model(input_ids=ids, labels=ids).loss / accumulation
                    scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                scaler.step(optimizer)
                scaler.update()
                skipped += amp and scaler.get_scale() < scale  # fp16 overflow: step skipped
                optimizer.zero_grad(set_to_none=True)
                _sync(device)
                step_seconds.append(time.perf_counter() - start)
        result["measured_peak_mib"] = _peak(memory, device, model_mib)
    except Exception as error:  # recorded, so that the report shows it
        result.update(_failure(error, device))
    result["measured_peak_reserved_mib"] = _reserved_mib(device)
    states = sum(t.nbytes for s in optimizer.state.values() for t in s.values()
                 if torch.is_tensor(t) and t.dim() > 0)
    tokens = rows * accumulation * seq_len
    result.update(optimizer_state_mib=states / 2**20, steps=len(step_seconds),
                  skipped_steps=int(skipped),
                  seconds=sum(step_seconds), tokens_per_step=tokens,
                  seconds_per_step=step_seconds[-1] if step_seconds else None,
                  tokens_per_second=tokens / step_seconds[-1] if step_seconds else None)
    return {"t4_02_training": result}


def _build_4bit_model(config, device: str, compute_dtype):
    """A causal LM with random weights: decoder linear layers in NF4 with double quantization
    (quantized one at a time on `device`, so the fp16 model never exists whole), embeddings,
    output layer and norms in fp16. Nothing is downloaded."""
    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # the skeleton: shapes only, no memory
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, linear in list(parent.named_children()):
                if type(linear) is not nn.Linear:
                    continue
                quantized = bnb.nn.Linear4bit(
                    linear.in_features, linear.out_features, bias=linear.bias is not None,
                    compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                    device="meta")
                weight = torch.randn(linear.out_features, linear.in_features,
                                     dtype=torch.float16, device=device) * config.initializer_range
                quantized.weight = bnb.nn.Params4bit(  # .to() quantizes: 4-bit codes + scales
                    weight, requires_grad=False, compress_statistics=True, quant_type="nf4",
                    module=quantized).to(device)
                if linear.bias is not None:
                    quantized.bias = nn.Parameter(torch.zeros(linear.out_features,
                                                              dtype=torch.float16, device=device),
                                                  requires_grad=False)
                setattr(parent, name, quantized)
    for module_name, module in model.named_modules():  # what stays fp16: embeddings, norms
        for name, param in list(module.named_parameters(recurse=False)):
            if param.device.type == "meta":
                value = (torch.ones(param.shape, dtype=torch.float16, device=device)
                         if "norm" in module_name else
                         torch.randn(param.shape, dtype=torch.float16, device=device)
                         * config.initializer_range)
                setattr(module, name, nn.Parameter(value, requires_grad=False))
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(device)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.is_loaded_in_4bit = True  # what transformers sets after a 4-bit load; peft reads it
    return model


def rag_05(smoke: bool, memory_gib: float, save, prompt_tokens: int = PROMPT_TOKENS) -> dict:
    """Notebook 05's generator on a T4 (4-bit, fp16 compute), then one QLoRA step on it.
    `save(results)` is called after each phase, so a timeout keeps the first one."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from course_utils.config import recipe
    from course_utils.memory import track_peak_memory
    from course_utils.models import disable_cpu_4bit_repacking, footprint_mib

    setup = _setup_device(smoke, memory_gib)
    device, amp = setup["device"], setup["amp"]
    settings = recipe("05", "full")
    batch = settings["generation_batch_size"]
    new_tokens = SMOKE_TOKENS["max_new_tokens"] if smoke else settings["max_new_tokens"]
    prompt_tokens = SMOKE_TOKENS["prompt_tokens"] if smoke else prompt_tokens
    qlora_tokens = SMOKE_TOKENS["seq_len"] if smoke else QLORA_TOKENS
    config = _shape(RAG_MODEL, smoke)
    shape = {k: getattr(config, k) for k in SMOKE_SHAPE}
    start = time.perf_counter()
    model = _build_4bit_model(config, device, torch.float16 if amp else torch.float32)
    disable_cpu_4bit_repacking(model)  # before any forward (see course_utils/models.py)
    build_seconds = time.perf_counter() - start
    model_mib = footprint_mib(model)

    generation = {"what": f"{RAG_MODEL} in NF4 (double quantization), "
                          f"{'fp16' if amp else 'fp32'} compute: {batch} prompts x "
                          f"{prompt_tokens} tokens, {new_tokens} new tokens each (greedy)",
                  "cap_mib": setup["cap_mib"], "model_mib": model_mib, "shape": shape,
                  "build_seconds": build_seconds}
    results = {"t4_05_generation": generation}
    model.eval()
    ids = torch.randint(0, config.vocab_size, (batch, prompt_tokens), device=device)
    try:
        with track_peak_memory(device) as memory, torch.no_grad():
            _sync(device)
            start = time.perf_counter()
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False, pad_token_id=0)
            _sync(device)
            seconds = time.perf_counter() - start
        produced = batch * (output.shape[1] - prompt_tokens)  # every row runs to the budget
        generation.update(measured_peak_mib=_peak(memory, device, model_mib), seconds=seconds,
                          new_tokens=produced, tokens_per_second=produced / seconds,
                          seconds_per_step=seconds / new_tokens)
        del output
    except Exception as error:  # recorded, so that the report shows it
        generation.update(_failure(error, device))
    generation["measured_peak_reserved_mib"] = _reserved_mib(device)
    save(results)
    if device == "cuda":
        torch.cuda.empty_cache()

    qlora = {"what": f"one QLoRA step: r={LORA_RANK} on all linear layers, gradient "
                     f"checkpointing, paged 8-bit AdamW, 1 x {qlora_tokens} tokens",
             "cap_mib": setup["cap_mib"], "shape": shape}
    results["t4_05_qlora_step"] = qlora
    optimizer = None
    try:
        # norms and embeddings upcast to fp32, adapters on every linear layer
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK,
                                                 lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = bnb.optim.PagedAdamW8bit(trainable, lr=2e-4)
        scaler = torch.amp.GradScaler(device, enabled=amp)
        model.train()
        qlora.update(trainable_parameters=sum(p.numel() for p in trainable),
                     model_mib=footprint_mib(model))
        ids = torch.randint(0, config.vocab_size, (1, qlora_tokens), device=device)
        with track_peak_memory(device) as memory:
            scale = scaler.get_scale()
            _sync(device)
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.float16, enabled=amp):
                loss = model(input_ids=ids, labels=ids).loss
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, max_norm=1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            seconds = time.perf_counter() - start
        qlora.update(measured_peak_mib=_peak(memory, device, qlora["model_mib"]),
                     seconds=seconds, seconds_per_step=seconds,
                     tokens_per_second=qlora_tokens / seconds, loss=loss.item(),
                     skipped_steps=int(amp and scaler.get_scale() < scale))
    except Exception as error:  # recorded, so that the report shows it
        qlora.update(_failure(error, device))
    qlora["measured_peak_reserved_mib"] = _reserved_mib(device)
    # paged states live in CUDA managed memory, outside the allocator's count
    qlora["optimizer_state_mib"] = sum(
        t.nbytes for s in (optimizer.state.values() if optimizer else ()) for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0) / 2**20
    save(results)
    return results


def run_child(which: str, smoke: bool, memory_gib: float, timeout: float,
              prompt_tokens: int) -> dict:
    """Run one part of the emulation in a fresh process (its own allocator and cap)."""
    out = RESULTS / f".gpu-check-{which}-{os.getpid()}.json"
    command = [sys.executable, __file__, "--child", which, "--child-output", str(out),
               "--memory-gib", str(memory_gib), "--prompt-tokens", str(prompt_tokens)]
    command += ["--cpu-smoke"] if smoke else []
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
        problem = None if done.returncode == 0 else f"exit code {done.returncode}: " \
                                                   f"{done.stderr.strip()[-1500:]}"
    except subprocess.TimeoutExpired:
        problem = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    results = json.loads(out.read_text()) if out.is_file() else {}  # what it saved, if anything
    out.unlink(missing_ok=True)
    for name in CHILDREN[which]:
        result = results.setdefault(name, {})
        if "measured_peak_mib" not in result and "error" not in result:
            result["error"] = problem or "the process wrote no result"
        result["process_seconds"] = seconds
    return results


# --- the notebooks ----------------------------------------------------------------------------


def parse_runner_output(text: str) -> list[dict]:
    """Per notebook, from the runner's progress lines ("[3/7] 02_x.ipynb (tiny)", then
    "    done in 41 s"): passed with its seconds, or started and not finished (failed)."""
    notebooks, current = [], None
    for line in text.splitlines():
        started = re.match(r"\[\d+/\d+\] (\S+\.ipynb) \(", line.strip())
        finished = re.match(r"done in ([\d.]+) s", line.strip())
        if started:
            current = {"notebook": started.group(1), "status": "fail", "seconds": None}
            notebooks.append(current)
        elif finished and current is not None:
            current.update(status="pass", seconds=float(finished.group(1)))
    return notebooks


def run_notebooks(run_dir: Path, timeout: float) -> dict:
    """Notebooks 00-06 in the tiny profile, offline, through the course runner, capped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "runner.log"
    env = {**os.environ, **OFFLINE_ENV, "COURSE_RESULTS_DIR": str(run_dir / "results")}
    command = [sys.executable, "-m", "course_tools", "run", "--profile", "tiny", "--run-dir",
               str(run_dir), "--no-progress", "--only", *NOTEBOOKS]
    start = time.perf_counter()
    with open(log, "w") as sink:  # its own process group: a timeout ends the kernels too
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   cwd=ROOT, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    notebooks = parse_runner_output(text)
    summary = run_dir / "summary.json"
    if summary.is_file():  # the runner's own record of the seconds, when it got that far
        timed = {n["notebook"]: n["seconds"] for n in json.loads(summary.read_text())["notebooks"]}
        for notebook in notebooks:
            notebook["seconds"] = timed.get(notebook["notebook"], notebook["seconds"])
    ran = {n["notebook"][:2] for n in notebooks}
    notebooks += [{"notebook": nn, "status": "not run", "seconds": None}
                  for nn in NOTEBOOKS if nn not in ran]
    error = None
    if code is None:
        error = f"timed out after {timeout:.0f} s"
        for notebook in notebooks:
            if notebook["status"] == "fail":
                notebook["status"] = "timeout"
    elif code != 0:
        error = next((line for line in text.splitlines() if line.startswith("ERROR")),
                     f"the runner exited with code {code}")
    passed = code == 0 and all(n["status"] == "pass" for n in notebooks)
    return {"status": "pass" if passed else "fail", "seconds": seconds, "timeout_s": timeout,
            "run_dir": str(run_dir), "log": str(log), "notebooks": notebooks, "error": error}


# --- the report -------------------------------------------------------------------------------


def environment(smoke: bool, memory_gib: float) -> dict:
    import torch

    from course_utils.config import library_versions

    versions = {**library_versions(), "cuda": torch.version.cuda}
    if smoke:
        return {"versions": versions, "gpu": None}
    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    return {"versions": versions,
            "gpu": {"name": name, "slug": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"),
                    "capability": list(torch.cuda.get_device_capability(0)),
                    "total_mib": props.total_memory / 2**20},
            "emulated": {"gpu": "T4", "memory_cap_gib": memory_gib, "compute_dtype": "fp16"}}


def verdict(checks: dict, smoke: bool) -> str:
    statuses = [c.get("status") for c in checks.values() if c.get("status") != "skipped"]
    if any(s in ("fail", "error", "timeout") for s in statuses):
        return "fail"
    if smoke:
        return "smoke: every code path ran"
    if "no prediction" in statuses:
        return "incomplete: ran, but some predictions were unavailable"
    return "pass"


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(report: dict) -> str:
    columns = f"{'check':<24}{'status':<15}{'peak MiB':>10}{'predicted':>11}{'ratio':>7}" \
              f"{'seconds':>9}{'s/step':>8}{'tokens/s':>10}"
    lines = [columns, "-" * len(columns)]
    for name, check in report["checks"].items():
        lines.append(f"{name:<24}{check.get('status', '?'):<15}"
                     f"{_cell(check.get('measured_peak_mib'), ',.0f'):>10}"
                     f"{_cell(check.get('predicted_mib'), ',.0f'):>11}"
                     f"{_cell(check.get('ratio'), '.2f'):>7}"
                     f"{_cell(check.get('seconds'), '.1f'):>9}"
                     f"{_cell(check.get('seconds_per_step'), '.3f'):>8}"
                     f"{_cell(check.get('tokens_per_second'), ',.0f'):>10}")
        for notebook in check.get("notebooks", []):
            lines.append(f"  {notebook['notebook']:<22}{notebook['status']:<15}{'':>28}"
                         f"{_cell(notebook['seconds'], '.1f'):>9}")
        for key in ("error", "reason"):
            if check.get(key):
                lines.append(f"  {key}: {check[key]}"[:300])
        unavailable = check.get("prediction", {}).get("unavailable")
        if unavailable:
            lines.append(f"  {unavailable}"[:300])
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="no GPU: run the T4 checks on the CPU with shapes shrunk to 2 layers")
    parser.add_argument("--output", type=Path, help="results file (default: "
                        "benchmarks/results/gpu-check-<gpu>.json)")
    parser.add_argument("--skip-notebooks", action="store_true", help="only the T4 emulation")
    parser.add_argument("--notebook-timeout", type=float, default=300,
                        help="seconds the notebook run may take (default 300)")
    parser.add_argument("--check-timeout", type=float, default=240,
                        help="seconds each emulation process may take (default 240)")
    parser.add_argument("--memory-gib", type=float, default=T4_MEMORY_GIB,
                        help=f"GPU memory cap of the emulation (default {T4_MEMORY_GIB:g})")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"accepted |measured/predicted - 1| (default {TOLERANCE:g})")
    parser.add_argument("--prompt-tokens", type=int,
                        help="notebook 05 prompt length (default: the plan's, else "
                             f"{PROMPT_TOKENS})")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU and this machine has none (torch.cuda.is_available() "
              "is False); use --cpu-smoke to exercise the code on the CPU", file=sys.stderr)
        return 2
    if args.child:
        def save(results):
            args.child_output.write_text(json.dumps(results))

        if args.child == "train-02":
            save(train_02(args.cpu_smoke, args.memory_gib))
        else:
            rag_05(args.cpu_smoke, args.memory_gib, save, args.prompt_tokens or PROMPT_TOKENS)
        return 0

    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"check": "gpu-check", "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
              "created": _dt.datetime.now().isoformat(timespec="seconds"),
              "tolerance": args.tolerance, **environment(args.cpu_smoke, args.memory_gib),
              "checks": {}, "verdict": "running"}
    slug = "cpu-smoke" if args.cpu_smoke else report["gpu"]["slug"]
    out = args.output or RESULTS / f"gpu-check-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every part, so an interrupted run keeps what it measured
        out.write_text(json.dumps(report, indent=1))

    print(f"gpu-check ({report['mode']}): results go to {out}", flush=True)
    checks, smoke = report["checks"], args.cpu_smoke
    plans = {"t4_02_training": planned_peak("02", "training"),
             "t4_05_generation": planned_peak("05", "generation")}
    # generate from prompts as long as the plan's, so that the two compare
    prompt_tokens = (args.prompt_tokens or plans["t4_05_generation"].get("seq_len")
                     or PROMPT_TOKENS)
    for which in CHILDREN:
        print(f"  T4 emulation: {which} ...", flush=True)
        checks.update(run_child(which, smoke, args.memory_gib, args.check_timeout,
                                prompt_tokens))
        save()
    checks["t4_05_generation"]["prompt_tokens_from"] = (
        "smoke shape" if smoke else "--prompt-tokens" if args.prompt_tokens
        else "the plan" if plans["t4_05_generation"].get("seq_len") else "the default")
    estimates = {"t4_02_training": estimated(full_estimate, _shape(CHAT_MODEL, smoke), smoke),
                 "t4_05_qlora_step": estimated(qlora_estimate, _shape(RAG_MODEL, smoke), smoke)}
    if smoke:  # the plan sizes the full models: kept for reference, not compared
        predictions = {**estimates, "t4_05_generation": {
            "source": "none: the plan sizes the full model, the smoke run's is shrunk",
            "peak_mib": None}}
        for name, plan in plans.items():
            checks[name]["plan_for_the_full_model"] = plan
    else:  # the plan where it predicts; the estimator for the QLoRA step
        predictions = {**plans, "t4_05_qlora_step": estimates["t4_05_qlora_step"]}
        training = checks["t4_02_training"]
        training["estimator"] = estimates["t4_02_training"]
        measured, reference = training.get("measured_peak_mib"), estimates["t4_02_training"]
        training["estimator_ratio"] = (measured / reference["peak_mib"]
                                       if measured is not None and reference["peak_mib"]
                                       else None)
    for name, predicted in predictions.items():
        compare(checks[name], predicted, args.tolerance, smoke)

    if args.cpu_smoke or args.skip_notebooks:
        checks["notebooks"] = {"status": "skipped", "reason": "--cpu-smoke" if args.cpu_smoke
                               else "--skip-notebooks"}
    else:
        print(f"  notebooks 00-06, tiny profile (at most {args.notebook_timeout:.0f} s) ...",
              flush=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        checks["notebooks"] = run_notebooks(ROOT / "build" / "gpu-check" / stamp,
                                            args.notebook_timeout)
    report["verdict"] = verdict(checks, smoke)
    save()
    print(table(report))
    print(f"written to {out}")
    return 0 if report["verdict"] != "fail" else 1


if __name__ == "__main__":
    sys.exit(main())
