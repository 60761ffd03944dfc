"""Which GPU does each notebook need, how long will it run, and which method fits a given GPU?

Two questions answered from the memory estimator (course_utils/estimator.py), never from a run:

- `plan_course("t4")`: for every notebook of the `full` profile, the predicted peak memory of
  each phase (load, base evaluation, training, evaluation, generation, ...), whether the largest
  fits the GPU with 10 % headroom, and a time range;
- `choose_method(24, "Qwen/Qwen3-8B")`: which of full fine-tuning, LoRA and QLoRA fit a GPU, at
  which batch size and sequence length, and why not where they do not.

Both are on the command line: `python -m course_utils plan --gpu t4 [--json]`,
`python -m course_utils plan --gpu 24 --model Qwen/Qwen3-8B`.

A phase lists what is held at its peak: the model, optimizer states, another model still
loaded (the BERTScore model, a second copy for the rank sweep), and the estimator's parts.
Precision follows the GPU as in the notebooks (course_utils/hardware.py): bf16 where the GPU
computes it natively, fp16 otherwise.

Times are ranges, not measurements: spec-sheet throughput (table GPUS, sources cited) times an
assumed efficiency (EFFICIENCY), on token counts from the recipes. `make gpu-check` measures
the real numbers on a GPU (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from course_utils.config import FULL, Profile, get_profile, recipe
from course_utils.estimator import (
    MIB,
    ModelShape,
    estimate_inference_memory,
    estimate_training_memory,
    lora_parameter_count,
    shipped_config,
    weights_mib,
)
from course_utils.hardware import Hardware

GIB = 1024  # MiB
HEADROOM = 0.10          # a phase fits when its peak is at most 90 % of the usable memory
CUDA_CONTEXT_GIB = 0.5   # CUDA context and library workspaces, outside PyTorch's allocator


@dataclass(frozen=True)
class Gpu:
    """A GPU as the plan sees it: memory, native bf16, and spec-sheet throughput."""

    key: str                     # "t4", "l4", ...; "24gb" for a GPU given by its memory only
    name: str
    memory_gib: float            # total memory as `torch.cuda.get_device_properties` reports it
    native_bf16: bool            # compute capability 8.0 or newer
    tensor_tflops: float | None  # dense fp16/bf16 tensor-core throughput, TFLOP/s
    bandwidth_gbs: float | None  # memory bandwidth, GB/s
    source: str = ""             # where the numbers come from

    @property
    def usable_gib(self) -> float:
        return self.memory_gib - CUDA_CONTEXT_GIB

    @property
    def budget_gib(self) -> float:
        """The largest peak that still leaves HEADROOM of the usable memory free."""
        return self.usable_gib * (1 - HEADROOM)

    def hardware(self) -> Hardware:
        """The Hardware a notebook would detect on this GPU (same precision decisions)."""
        dtype = torch.bfloat16 if self.native_bf16 else torch.float16
        return Hardware(device="cuda", dtype=dtype, device_name=self.name, gpu_count=1,
                        supports_bf16=self.native_bf16,
                        compute_capability=(8, 0) if self.native_bf16 else (7, 5))


# Spec sheets (dense throughput, no sparsity). Memory: the total PyTorch reports, which is a
# little below the marketed size (ECC and driver reservations).
GPUS: dict[str, Gpu] = {g.key: g for g in (
    Gpu("t4", "Tesla T4 (16 GB)", 14.75, False, 65.0, 320.0,
        "NVIDIA T4 datasheet: 65 TFLOPS fp16 tensor, 320 GB/s; 15,360 MiB in nvidia-smi "
        "on Colab and Kaggle, 14.75 GiB for PyTorch"),
    Gpu("l4", "NVIDIA L4 (24 GB)", 22.0, True, 121.0, 300.0,
        "NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity (121 dense), 300 GB/s"),
    Gpu("a100", "NVIDIA A100 (40 GB)", 39.4, True, 312.0, 1555.0,
        "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, 1,555 GB/s (40 GB SXM)"),
    Gpu("h100", "NVIDIA H100 (80 GB)", 79.1, True, 989.0, 3350.0,
        "NVIDIA H100 datasheet: 989 TFLOPS bf16 dense, 3.35 TB/s (SXM)"),
)}

# Share of the spec-sheet numbers a course run reaches (low, high): assumptions, to be replaced
# by what `make gpu-check` measures.
EFFICIENCY = {
    "training": (0.10, 0.35),      # model FLOP utilization of small-batch Trainer steps
    "bandwidth": (0.40, 0.70),     # share of memory bandwidth one decoding step reaches
    "download": (50.0, 200.0),     # MB/s from the hub on Kaggle/Colab (first run only)
    "disk": (100.0, 400.0),        # MB/s writing a checkpoint to the notebook's disk
}
STEP_OVERHEAD_MS_PER_LAYER = (0.8, 0.3)  # eager decoding launches ~15 kernels per layer per
#                                          token; (slow, fast) in ms, an assumption
# Token counts the recipes do not fix (assumptions; the memory plan uses the worst case,
# profile.max_length, and only the time range uses these):
TYPICAL_ROW_TOKENS = 160       # a QA training row: template, question, one passage, answer
TYPICAL_ANSWER_TOKENS = 24     # an MS MARCO answer and the end token
PASSAGE_TOKENS = 256           # the longest retrieved passage the plan allows for (RAG prompt)
PROMPT_OVERHEAD_TOKENS = 96    # chat template, instruction and question around the passages
# Models the notebooks load besides the one they adapt (parameter counts from the model cards)
BERTSCORE_PARAMETERS = {"roberta-large": 355_000_000}
EMBEDDING_PARAMETERS = {"sentence-transformers/all-MiniLM-L6-v2": 22_700_000}


def gpu_spec(gpu: str | float | int | Gpu) -> Gpu:
    """A Gpu from a key ("t4", "l4", "a100", "h100") or a memory size in GB ("24", 24).

    A GPU given by its memory alone is assumed to compute bf16 natively and has no throughput,
    so it gets no time estimate.
    """
    if isinstance(gpu, Gpu):
        return gpu
    text = str(gpu).strip().lower().removesuffix("gb").strip()
    if text in GPUS:
        return GPUS[text]
    try:
        memory = float(text)
    except ValueError:
        raise ValueError(f"unknown GPU {gpu!r}: use one of {', '.join(GPUS)} or a memory size "
                         "in GB such as 24") from None
    if not 1 <= memory <= 1024:
        raise ValueError(f"a GPU memory size is between 1 and 1024 GB, got {gpu!r}")
    # a card sold as N GB shows about 93 % of N GiB to PyTorch (T4: 16 GB -> 14.75 GiB)
    return Gpu(f"{memory:g}gb", f"a {memory:g} GB GPU", round(memory * 0.93, 2), True, None, None,
               "memory only: 93 % of the marketed size, as for the T4")


# --- phases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One stage of a notebook: what is held in GPU memory at its peak, and how long it runs."""

    name: str                                  # "training", "generation", ...
    parts: dict[str, float]                    # MiB held at the peak, by what holds them
    seconds: tuple[float, float] = (0.0, 0.0)  # time range (fast, slow); (0, 0) when unknown
    batch_size: int = 0                        # rows per forward pass in this phase
    seq_len: int = 0                           # padded row (or prompt) length the peak assumes
    new_tokens: int = 0                        # tokens generated per row (generation phases)
    note: str = ""

    @property
    def peak_mib(self) -> float:
        return sum(self.parts.values())

    def to_dict(self) -> dict:
        return {"name": self.name, "peak_gib": round(self.peak_mib / GIB, 2),
                "parts_mib": {k: round(v) for k, v in self.parts.items()},
                "minutes": [round(s / 60, 1) for s in self.seconds],
                "batch_size": self.batch_size, "seq_len": self.seq_len,
                "new_tokens": self.new_tokens, "note": self.note}


@dataclass(frozen=True)
class NotebookPlan:
    notebook: str                 # "02"
    title: str                    # what the notebook does in the profile
    gpu: Gpu
    phases: list[Phase] = field(default_factory=list)
    note: str = ""

    def phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(f"notebook {self.notebook} has no phase {name!r}; it has: "
                       f"{', '.join(p.name for p in self.phases)}")

    @property
    def largest(self) -> Phase:
        return max(self.phases, key=lambda p: p.peak_mib)

    @property
    def peak_gib(self) -> float:
        return self.largest.peak_mib / GIB

    @property
    def fits(self) -> bool:
        """The largest phase leaves at least HEADROOM of the usable memory free."""
        return self.peak_gib <= self.gpu.budget_gib

    @property
    def minutes(self) -> tuple[float, float] | None:
        """(fast, slow) minutes for the whole notebook; None without throughput figures."""
        if self.gpu.tensor_tflops is None:
            return None
        return (sum(p.seconds[0] for p in self.phases) / 60,
                sum(p.seconds[1] for p in self.phases) / 60)

    def to_dict(self) -> dict:
        minutes = self.minutes
        return {"notebook": self.notebook, "title": self.title, "gpu": self.gpu.key,
                "peak_gib": round(self.peak_gib, 2), "largest_phase": self.largest.name,
                "budget_gib": round(self.gpu.budget_gib, 2), "fits": self.fits,
                "minutes": [round(m) for m in minutes] if minutes else None,
                "phases": [p.to_dict() for p in self.phases], "note": self.note}


# --- time ----------------------------------------------------------------------------------


def _compute_seconds(gpu: Gpu, flops: float) -> tuple[float, float]:
    """(fast, slow) seconds for this many FLOPs at the training efficiency range."""
    if gpu.tensor_tflops is None or flops <= 0:
        return (0.0, 0.0)
    low, high = EFFICIENCY["training"]
    peak = gpu.tensor_tflops * 1e12
    return (flops / (peak * high), flops / (peak * low))


def _decode_seconds(gpu: Gpu, shape: ModelShape, bytes_per_step: float, steps: int
                    ) -> tuple[float, float]:
    """(fast, slow) seconds for `steps` decoding steps that each read `bytes_per_step`."""
    if gpu.bandwidth_gbs is None or steps <= 0:
        return (0.0, 0.0)
    low, high = EFFICIENCY["bandwidth"]
    slow_ms, fast_ms = STEP_OVERHEAD_MS_PER_LAYER
    per_step = [bytes_per_step / (gpu.bandwidth_gbs * 1e9 * share) for share in (high, low)]
    overhead = [shape.num_layers * ms / 1000 for ms in (fast_ms, slow_ms)]
    return (steps * (per_step[0] + overhead[0]), steps * (per_step[1] + overhead[1]))


def _add(*ranges: tuple[float, float]) -> tuple[float, float]:
    return (sum(r[0] for r in ranges), sum(r[1] for r in ranges))


def _generation_seconds(gpu: Gpu, shape: ModelShape, weights: str, prompts: int,
                        batch_size: int, prompt_tokens: int, new_tokens: tuple[int, int]
                        ) -> tuple[float, float]:
    """Prefill (compute-bound) plus decoding (bandwidth-bound) of `prompts` prompts.

    new_tokens: (typical, budget) tokens per batch: a batch runs until its longest row stops.
    4-bit weights at batch > 1 are dequantized to 16 bits for every matmul: each step then
    reads the 4-bit weights, writes and reads their 16-bit copy.
    """
    batches = math.ceil(prompts / batch_size)
    parameters = shape.parameter_count()
    prefill = _compute_seconds(gpu, 2 * parameters * prompts * prompt_tokens)
    quantized = shape.linear_parameters()
    stored = weights_mib(shape, weights) * MIB
    per_step = stored + (4 * quantized if weights == "nf4" and batch_size > 1 else 0)
    fast = _decode_seconds(gpu, shape, per_step, batches * new_tokens[0])[0]
    slow = _decode_seconds(gpu, shape, per_step, batches * new_tokens[1])[1]
    return _add(prefill, (fast, slow))


def _download_seconds(mib: float) -> tuple[float, float]:
    slow, fast = EFFICIENCY["download"]
    return (mib * MIB / (fast * 1e6), mib * MIB / (slow * 1e6))


def _checkpoint_seconds(settings, checkpoint_mib: float) -> tuple[float, float]:
    """Writing every checkpoint of a run (save_steps) to disk."""
    if not settings.values.get("save_steps"):
        return (0.0, 0.0)
    saves = settings["max_steps"] // settings["save_steps"]
    slow, fast = EFFICIENCY["disk"]
    return (saves * checkpoint_mib * MIB / (fast * 1e6), saves * checkpoint_mib * MIB / (slow * 1e6))


# --- one function per notebook -------------------------------------------------------------


def _bertscore_mib(profile: Profile) -> float:
    return BERTSCORE_PARAMETERS.get(profile.bertscore_model, 0) * 4 / MIB  # fp32, as bert-score loads


def _name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _training_phase(gpu: Gpu, shape, method: str, settings, seq_len: int, *, held: dict,
                    param_dtype, rows: int, typical_tokens: int, **options) -> Phase:
    """The Trainer's training loop: the estimator's parts plus what else is held."""
    hardware = gpu.hardware()
    batch = settings["per_device_train_batch_size"]
    accumulation = settings.values.get("gradient_accumulation_steps", 1)
    estimate = estimate_training_memory(
        shape, method, batch_size=batch, seq_len=seq_len, dtype=hardware.dtype,
        param_dtype=param_dtype, device="cuda", gradient_accumulation_steps=accumulation,
        **options)
    parts = {**held, **{k: v for k, v in estimate.components().items() if v}}
    # the phase holds only the larger of its two moments (estimator docstring)
    if estimate.forward_mib >= estimate.gradients_mib + estimate.step_scratch_mib:
        parts.pop("step scratch", None)
        if not estimate.accumulating:
            parts.pop("gradients", None)
    else:
        for name in ("activations", "logits (loss)", "autocast copies"):
            parts.pop(name, None)
    tokens = rows * typical_tokens
    worst_tokens = rows * seq_len
    passes = 6 if method == "full" else 4            # forward 2P, backward 2P (+2P weight grads)
    if options.get("gradient_checkpointing"):
        passes += 2                                  # the forward runs twice
    parameters = shape.parameter_count()
    fast = _compute_seconds(gpu, passes * parameters * tokens)[0]
    slow = _compute_seconds(gpu, passes * parameters * worst_tokens)[1]
    if method == "qlora" and gpu.bandwidth_gbs:      # dequantize every 4-bit layer per pass
        micro_batches = rows / batch
        traffic = micro_batches * (passes // 2) * shape.linear_parameters() * 4.5
        fast += traffic / (gpu.bandwidth_gbs * 1e9 * EFFICIENCY["bandwidth"][1])
        slow += traffic / (gpu.bandwidth_gbs * 1e9 * EFFICIENCY["bandwidth"][0])
    # a checkpoint holds the trainable weights and their optimizer states
    saved = _checkpoint_seconds(settings, estimate.gradients_mib + estimate.optimizer_mib
                                + (estimate.weights_mib if method == "full" else 0.0))
    fast, slow = fast + saved[0], slow + saved[1]
    return Phase("training", parts, (fast, slow), batch, seq_len,
                 note=f"{method}, micro-batch {batch} x {seq_len} tokens, accumulation "
                      f"{accumulation}, {_name(hardware.dtype)} compute")


def _loss_phase(gpu: Gpu, shape, settings, seq_len: int, weights: str, *, held: dict,
                evaluations: int, rows: int, autocast: bool) -> Phase:
    """The Trainer's evaluation loss on the validation rows, `evaluations` times."""
    hardware = gpu.hardware()
    batch = settings["per_device_eval_batch_size"]
    estimate = estimate_inference_memory(shape, batch, seq_len, weights=weights,
                                         dtype=hardware.dtype, loss=True)
    parts = {**held, **{k: v for k, v in estimate.components().items() if v}}
    if autocast:   # fp32 weights that need gradients: autocast keeps their 16-bit copies
        linear = shape.linear_parameters() + shape.vocab_size * shape.hidden_size
        parts["autocast copies"] = linear * 2 / MIB
    seconds = _compute_seconds(gpu, 2 * shape.parameter_count() * evaluations * rows * seq_len)
    fast = _compute_seconds(gpu, 2 * shape.parameter_count() * evaluations * rows
                            * TYPICAL_ROW_TOKENS)[0]
    return Phase("evaluation", parts, (fast, seconds[1]), batch, seq_len,
                 note=f"loss on {rows} validation rows, {evaluations} times, batch {batch}")


def _generation_phase(gpu: Gpu, shape, name: str, weights: str, prompts: int, batch: int,
                      prompt_tokens: int, new_tokens: int, typical_new: int, *, held: dict
                      ) -> Phase:
    hardware = gpu.hardware()
    dtype = torch.float32 if weights == "fp32" else hardware.dtype
    estimate = estimate_inference_memory(shape, batch, prompt_tokens, new_tokens,
                                         weights=weights, dtype=dtype)
    parts = {**held, **{k: v for k, v in estimate.components().items() if v}}
    seconds = _generation_seconds(gpu, shape, weights, prompts, batch, prompt_tokens,
                                  (typical_new, new_tokens))
    return Phase(name, parts, seconds, batch, prompt_tokens, new_tokens,
                 note=f"{prompts} prompts of up to {prompt_tokens} tokens, batch {batch}, "
                      f"up to {new_tokens} new tokens, {weights} weights")


def _load_phase(name: str, model_mib: float, download_mib: float, held: dict | None = None
                ) -> Phase:
    return Phase(name, {**(held or {}), "weights": model_mib}, _download_seconds(download_mib),
                 note="download on the first run, then load")


def _plan_01(gpu: Gpu, profile: Profile) -> NotebookPlan:
    shape = ModelShape.from_config(shipped_config(profile.lm_model))
    settings = recipe("01", profile)
    block = settings["block_size"]
    weights = weights_mib(shape, "fp32")
    rows = settings["max_steps"] * settings["per_device_train_batch_size"]
    evaluations = settings["max_steps"] // settings["eval_steps"] + 1
    phases = [
        _load_phase("load", weights, shape.parameter_count() * 4 / MIB),
        _training_phase(gpu, shape, "full", settings, block, held={}, param_dtype=torch.float32,
                        rows=rows, typical_tokens=block),
        _loss_phase(gpu, shape, settings, block, "fp32", evaluations=evaluations + 2,
                    rows=settings["eval_blocks"], autocast=True,
                    held={"optimizer states": weights * 2}),
    ]
    return NotebookPlan("01", f"full fine-tuning of {profile.lm_model} on passages", gpu, phases)


def _qa_generation(gpu, shape, profile, settings, name, weights, held) -> Phase:
    return _generation_phase(gpu, shape, name, weights, profile.test_size,
                             settings["generation_batch_size"], profile.max_length,
                             settings["max_new_tokens"],
                             min(TYPICAL_ANSWER_TOKENS, settings["max_new_tokens"]), held=held)


def _qa_rows(profile, settings) -> tuple[int, int]:
    """(training rows seen, evaluations of the validation loss)."""
    rows = (settings["max_steps"] * settings["per_device_train_batch_size"]
            * settings["gradient_accumulation_steps"])
    return rows, settings["max_steps"] // settings["eval_steps"] + 1


def _plan_02(gpu: Gpu, profile: Profile) -> NotebookPlan:
    shape = ModelShape.from_config(shipped_config(profile.chat_model))
    settings = recipe("02", profile)
    seq = profile.max_length
    weights = weights_mib(shape, "fp32")
    bertscore = {"BERTScore model": _bertscore_mib(profile)}
    rows, evaluations = _qa_rows(profile, settings)
    optimizer = {"optimizer states": 2 * weights}
    phases = [
        _load_phase("load", weights, shape.parameter_count() * 2 / MIB),
        _qa_generation(gpu, shape, profile, settings, "base evaluation", "fp32", bertscore),
        _training_phase(gpu, shape, "full", settings, seq, held={},
                        param_dtype=torch.float32, rows=rows, typical_tokens=TYPICAL_ROW_TOKENS),
        _loss_phase(gpu, shape, settings, seq, "fp32", evaluations=evaluations,
                    rows=profile.validation_size, autocast=True, held=optimizer),
        _qa_generation(gpu, shape, profile, settings, "generation", "fp32",
                       {**optimizer, **bertscore}),
    ]
    return NotebookPlan("02", f"full fine-tuning of {profile.chat_model}", gpu, phases,
                        note="fp32 weights, mixed-precision Trainer; the BERTScore model is "
                             "released before training")


def _plan_03(gpu: Gpu, profile: Profile) -> NotebookPlan:
    shape = ModelShape.from_config(shipped_config(profile.chat_model))
    settings = recipe("03", profile)
    seq = profile.max_length
    base_dtype = gpu.hardware().lora_base_dtype  # see course_utils/hardware.py
    base = _name(base_dtype)
    weights = weights_mib(shape, base)
    bertscore = {"BERTScore model": _bertscore_mib(profile)}
    rows, evaluations = _qa_rows(profile, settings)
    lora = dict(lora_rank=settings["r"], lora_targets=settings["target_modules"],
                lora_dropout=settings["lora_dropout"])
    adapter_states = 2 * lora_parameter_count(shape, settings["r"], settings["target_modules"]) \
        * 4 / MIB
    # the sweep trains each rank at the recipe's alpha and at alpha = 2 r, less the main run
    alpha = settings["lora_alpha"]
    sweep_runs = {(r, a) for r in settings["sweep_ranks"] for a in (alpha, 2 * r)} \
        - {(settings["r"], alpha)}
    sweep = sorted({r for r, _ in sweep_runs})
    training = _training_phase(gpu, shape, "lora", settings, seq, held={},
                               param_dtype=base_dtype, rows=rows,
                               typical_tokens=TYPICAL_ROW_TOKENS, **lora)
    phases = [
        _load_phase("load", weights, shape.parameter_count() * 2 / MIB),
        _qa_generation(gpu, shape, profile, settings, "base evaluation", base, bertscore),
        training,
        _loss_phase(gpu, shape, settings, seq, base, evaluations=evaluations,
                    rows=profile.validation_size, autocast=False,
                    held={"adapter optimizer states": adapter_states}),
        _qa_generation(gpu, shape, profile, settings, "generation", base,
                       {"adapter optimizer states": adapter_states, **bertscore}),
    ]
    if sweep:   # each rank trains a fresh base while the main model stays loaded
        sweep_phase = _training_phase(gpu, shape, "lora", settings, seq,
                                      held={"main adapted model": weights},
                                      param_dtype=base_dtype, rows=rows * len(sweep_runs),
                                      typical_tokens=TYPICAL_ROW_TOKENS,
                                      **{**lora, "lora_rank": max(sweep)})
        phases.append(replace(sweep_phase, name="rank sweep",
                              note=f"{len(sweep_runs)} adapters: ranks {', '.join(map(str, sweep))} "
                                   f"at alpha {alpha} and at alpha = 2 r, {settings['max_steps']} "
                                   f"steps each"))
    phases.append(Phase("merge", {"adapted model": weights, "merged copy": weights}))
    return NotebookPlan("03", f"LoRA on {profile.chat_model} ({base} base)", gpu, phases)


def _plan_04(gpu: Gpu, profile: Profile, show_7b: bool = False) -> NotebookPlan:
    shape = ModelShape.from_config(shipped_config(profile.chat_model))
    settings = recipe("04", profile)
    seq = profile.max_length
    hardware = gpu.hardware()
    half = _name(hardware.half_dtype)
    compute = _name(hardware.four_bit_compute_dtype)
    bertscore = {"BERTScore model": _bertscore_mib(profile)}
    rows, evaluations = _qa_rows(profile, settings)
    optimizer = "adamw_8bit" if "8bit" in settings["optim"] else "adamw"
    lora = dict(lora_rank=settings["r"], lora_targets=settings["target_modules"],
                lora_dropout=settings["lora_dropout"],
                gradient_checkpointing=settings["activation_checkpointing"])
    nf4 = weights_mib(shape, "nf4")
    # prepare_model_for_kbit_training upcasts every non-quantized weight to fp32
    prepared = nf4 + (shape.parameter_count() - shape.linear_parameters()) * 2 / MIB
    adapter = lora_parameter_count(shape, settings["r"], settings["target_modules"])
    states = adapter * (2 if optimizer == "adamw_8bit" else 8) / MIB
    phases = [
        Phase("bit widths", {"fp32 copy (largest variant)": weights_mib(shape, "fp32")},
              _download_seconds(shape.parameter_count() * 2 / MIB),
              note="fp32, 16-bit and 8-bit copies loaded one at a time"),
        _qa_generation(gpu, shape, profile, settings, "base evaluation", "nf4", bertscore),
        _training_phase(gpu, shape, "qlora", settings, seq, held={}, param_dtype=None,
                        rows=rows, typical_tokens=TYPICAL_ROW_TOKENS, optimizer=optimizer,
                        **lora),
        _loss_phase(gpu, shape, settings, seq, "nf4", evaluations=evaluations,
                    rows=profile.validation_size, autocast=False,
                    held={"upcast non-quantized weights": prepared - nf4,
                          "adapter optimizer states": states}),
        _qa_generation(gpu, shape, profile, settings, "generation", "nf4",
                       {"upcast non-quantized weights": prepared - nf4,
                        "adapter optimizer states": states, **bertscore}),
        Phase("merge", {"4-bit model": prepared, f"{half} base": weights_mib(shape, half),
                        f"reloaded {half} merged model": weights_mib(shape, half)}),
    ]
    if show_7b:
        big = ModelShape.from_config(shipped_config(profile.rag_model))
        upcast = (big.parameter_count() - big.linear_parameters()) * 4 / MIB
        phases.append(Phase("7B in 4 bits", {
            "4-bit linear layers": weights_mib(big, "nf4")
            - (big.parameter_count() - big.linear_parameters()) * 2 / MIB,
            "fp32 embeddings, norms, output layer": upcast},
            _download_seconds(big.parameter_count() * 2 / MIB),
            note="SHOW_7B = True: the RAG generator loaded and prepared for QLoRA"))
    return NotebookPlan("04", f"QLoRA on {profile.chat_model} (NF4, {compute} compute)", gpu,
                        phases)


def rag_prompt_tokens(k: int) -> int:
    """The longest RAG prompt the plan allows for: k passages of PASSAGE_TOKENS and the rest."""
    return k * PASSAGE_TOKENS + PROMPT_OVERHEAD_TOKENS


FORCE_TOKENS = 8   # "\n</think>\n\n" and the short lead a forced answer starts with
FEW_SHOT_EXAMPLES = 3   # solved examples before each question in 05's few-shot baseline


def _plan_05(gpu: Gpu, profile: Profile) -> NotebookPlan:
    """Closed book, then RAG: each a pass of up to max_new_tokens (the thinking budget), then
    a pass that forces the answers still thinking (course_utils.evaluation.
    generate_with_thinking_budget), planned as if every answer needed it. Then the generator
    is freed and the chat model of 02-04 answers few-shot prompts (the examples and the
    question, each with its passage: up to FEW_SHOT_EXAMPLES + 1 prompts of max_length),
    decoded as notebook 02 decodes."""
    shape = ModelShape.from_config(shipped_config(profile.rag_model))
    settings = recipe("05", profile)
    weights = "nf4" if profile.rag_quantization == "4bit" else (
        "int8" if profile.rag_quantization == "8bit" else _name(gpu.hardware().half_dtype))
    embedder = {"embedding model": EMBEDDING_PARAMETERS.get(profile.embedding_model, 0) * 4 / MIB}
    thinking, answer = settings["max_new_tokens"], settings["answer_budget"]
    batch, answer_batch = settings["generation_batch_size"], settings["answer_batch_size"]
    questions = profile.test_size
    passes = []
    for first_name, forced_name, prompt in (
            ("closed-book generation", "closed-book forced", PROMPT_OVERHEAD_TOKENS),
            ("generation", "RAG forced", rag_prompt_tokens(settings["k"]))):
        first = _generation_phase(gpu, shape, first_name, weights, questions, batch, prompt,
                                  thinking, thinking, held=embedder)
        forced = _generation_phase(gpu, shape, forced_name, weights,
                                   questions, answer_batch, prompt + thinking + FORCE_TOKENS,
                                   answer, answer, held=embedder)
        passes += [first, replace(forced, note=forced.note + "; every question counted as "
                                               "forced: its prompt and thoughts read again")]
    phases = [
        _load_phase("load", weights_mib(shape, weights), shape.parameter_count() * 2 / MIB,
                    held=embedder),
        Phase("index", embedder, note="passages embedded once and cached; FAISS runs on the CPU"),
        *passes,
        Phase("scoring", {**embedder, "generator": weights_mib(shape, weights),
                          "BERTScore model": _bertscore_mib(profile)}),
    ]
    chat = ModelShape.from_config(shipped_config(profile.chat_model))
    chat_weights = _name(gpu.hardware().dtype)          # load_causal_lm's default dtype
    decoding = recipe("02", profile)                    # 02's greedy budget and batch
    held = {**embedder, "BERTScore model": _bertscore_mib(profile)}
    phases += [
        _load_phase("few-shot load", weights_mib(chat, chat_weights),
                    chat.parameter_count() * 2 / MIB, held=held),
        _generation_phase(gpu, chat, "few-shot generation", chat_weights, questions,
                          decoding["generation_batch_size"],
                          (FEW_SHOT_EXAMPLES + 1) * profile.max_length,
                          decoding["max_new_tokens"],
                          min(TYPICAL_ANSWER_TOKENS, decoding["max_new_tokens"]), held=held),
    ]
    return NotebookPlan("05", f"RAG with {profile.rag_model} ({weights} weights)", gpu, phases,
                        note=f"reasoning models fill their budget: every batch is planned at "
                             f"{thinking} new tokens, then {answer} for forced answers")


NOTEBOOK_PLANS = {"01": _plan_01, "02": _plan_02, "03": _plan_03, "04": _plan_04, "05": _plan_05}


def plan_notebook(notebook: str, gpu: str | float | Gpu = "t4",
                  profile: str | Profile = FULL) -> NotebookPlan:
    """The plan of one notebook ("02" or "02_full_finetuning") on one GPU."""
    key = notebook[:2]
    if key not in NOTEBOOK_PLANS:
        raise ValueError(f"no plan for notebook {notebook!r}; notebooks that train or generate: "
                         f"{', '.join(NOTEBOOK_PLANS)}")
    return NOTEBOOK_PLANS[key](gpu_spec(gpu), get_profile(profile))


def plan_course(gpu: str | float | Gpu = "t4", profile: str | Profile = FULL) -> list[NotebookPlan]:
    """Every notebook that trains or generates (01-05), in order."""
    return [plan_notebook(key, gpu, profile) for key in NOTEBOOK_PLANS]


def course_table(plans: list[NotebookPlan]) -> str:
    """A plain-text table: one line per notebook, then its phases indented."""
    gpu = plans[0].gpu
    lines = [f"{gpu.name}: {gpu.memory_gib:.2f} GiB, {gpu.usable_gib:.2f} usable "
             f"(CUDA context {CUDA_CONTEXT_GIB} GiB); a notebook fits when its largest phase "
             f"is at most {gpu.budget_gib:.2f} GiB ({HEADROOM:.0%} headroom)",
             f"{'notebook':<10}{'peak GiB':>9}  {'fits':<5}{'minutes':>10}   largest phase"]
    for plan in plans:
        minutes = plan.minutes
        when = f"{minutes[0]:.0f}-{minutes[1]:.0f}" if minutes else "?"
        lines.append(f"{plan.notebook:<10}{plan.peak_gib:>9.2f}  {'yes' if plan.fits else 'NO':<5}"
                     f"{when:>10}   {plan.largest.name}: {plan.title}")
        for phase in plan.phases:
            parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in phase.parts.items() if v >= 1)
            lines.append(f"{'':<4}{phase.name:<24}{phase.peak_mib / GIB:>6.2f} GiB   {parts}")
    total = [plan.minutes for plan in plans if plan.minutes]
    if total:
        lines.append(f"whole course: {sum(m[0] for m in total):.0f}-{sum(m[1] for m in total):.0f}"
                     " minutes (spec-sheet throughput x assumed efficiency; see course_utils/plan.py)")
    return "\n".join(lines)


def markdown_table(plans: list[NotebookPlan]) -> str:
    """The README's table of a course plan: one row per notebook, then the whole course."""
    lines = ["| notebook | largest phase | predicted peak | fits | minutes |",
             "|---|---|---|---|---|"]
    for plan in plans:
        minutes = plan.minutes
        when = f"{minutes[0]:.0f}–{minutes[1]:.0f}" if minutes else "?"
        lines.append(f"| {plan.notebook} | {plan.largest.name} | {plan.peak_gib:.1f} GiB | "
                     f"{'yes' if plan.fits else 'no'} | {when} |")
    total = [plan.minutes for plan in plans if plan.minutes]
    if total:
        lines.append(f"| all | | | | {sum(m[0] for m in total):.0f}–"
                     f"{sum(m[1] for m in total):.0f} |")
    return "\n".join(lines)


# --- beyond the course: which method fits a GPU? -----------------------------------------------


METHOD_SETUPS = {   # how each method is usually run on a memory-limited GPU
    "full": dict(optimizer="adamw", param_dtype=torch.float32),
    "lora": dict(optimizer="adamw", lora_rank=16, lora_targets="all-linear"),
    "qlora": dict(optimizer="adamw_8bit", lora_rank=16, lora_targets="all-linear"),
}
SEQ_LENS = (2048, 1024, 512, 256)
BATCH_SIZES = (16, 8, 4, 2, 1)


@dataclass(frozen=True)
class MethodChoice:
    method: str                   # "full", "lora" or "qlora"
    fits: bool
    batch_size: int               # the largest micro-batch that fits at seq_len (0: none fits)
    seq_len: int
    gradient_checkpointing: bool
    peak_gib: float               # predicted peak at that setting (or at batch 1 x 256 if none)
    reason: str

    def to_dict(self) -> dict:
        return {"method": self.method, "fits": self.fits, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "gradient_checkpointing": self.gradient_checkpointing,
                "peak_gib": round(self.peak_gib, 2), "reason": self.reason}


def _model_config(model):
    return shipped_config(model) if isinstance(model, str) else model


def choose_method(gpu: str | float | Gpu, model: str = "Qwen/Qwen3-8B") -> list[MethodChoice]:
    """For each of full fine-tuning, LoRA and QLoRA: does it fit this GPU, and how?

    Tries the longest sequence first (SEQ_LENS), then the largest micro-batch (BATCH_SIZES),
    first without and then with gradient checkpointing; a setting fits when its predicted peak
    leaves HEADROOM free. Full fine-tuning keeps fp32 weights with AdamW (mixed precision);
    LoRA a 16-bit base, rank 16 on every linear layer; QLoRA a 4-bit NF4 base with paged 8-bit
    AdamW.
    """
    gpu = gpu_spec(gpu)
    config = _model_config(model)
    shape = ModelShape.from_config(config)
    dtype = gpu.hardware().dtype
    choices = []
    for method, setup in METHOD_SETUPS.items():
        found = None
        for seq_len in SEQ_LENS:
            for checkpointing in (False, True):
                for batch in BATCH_SIZES:
                    estimate = estimate_training_memory(
                        shape, method, batch, seq_len, dtype=dtype, device="cuda",
                        gradient_checkpointing=checkpointing, **setup)
                    if estimate.total_mib / GIB <= gpu.budget_gib:
                        found = (batch, seq_len, checkpointing, estimate)
                        break
                if found:
                    break
            if found:
                break
        if found:
            batch, seq_len, checkpointing, estimate = found
            reason = (f"{estimate.total_mib / GIB:.1f} GiB at batch {batch} x {seq_len} tokens"
                      + (" with gradient checkpointing" if checkpointing else ""))
            choices.append(MethodChoice(method, True, batch, seq_len, checkpointing,
                                        estimate.total_mib / GIB, reason))
            continue
        smallest = estimate_training_memory(shape, method, 1, SEQ_LENS[-1], dtype=dtype,
                                            device="cuda", gradient_checkpointing=True, **setup)
        fixed = (smallest.weights_mib + smallest.optimizer_mib + smallest.gradients_mib) / GIB
        choices.append(MethodChoice(
            method, False, 0, SEQ_LENS[-1], True, smallest.total_mib / GIB,
            f"needs {smallest.total_mib / GIB:.1f} GiB even at batch 1 x {SEQ_LENS[-1]} tokens "
            f"with gradient checkpointing ({fixed:.1f} GiB of weights, gradients and optimizer "
            f"states alone); the budget is {gpu.budget_gib:.1f} GiB"))
    return choices


def recommend(choices: list[MethodChoice]) -> str:
    """One sentence: the method to use (the least approximate that fits with a useful batch)."""
    fitting = [c for c in choices if c.fits]
    if not fitting:
        return "none fits: use a larger GPU, a smaller model, or several GPUs"
    for choice in fitting:      # full, then LoRA, then QLoRA: the first that fits comfortably
        if choice.seq_len >= 512:
            return (f"{choice.method}: the most faithful method that fits at {choice.seq_len} "
                    f"tokens ({choice.reason})")
    best = fitting[-1]
    return f"{best.method}: {best.reason}"


def choice_table(gpu, model: str) -> str:
    gpu = gpu_spec(gpu)
    shape = ModelShape.from_config(_model_config(model))
    choices = choose_method(gpu, model)
    lines = [f"{model} ({shape.parameter_count() / 1e9:.2f} B parameters) on {gpu.name} "
             f"(budget {gpu.budget_gib:.1f} GiB)",
             f"{'method':<8}{'fits':<6}{'batch':>6}{'tokens':>8}  {'ckpt':<6}{'peak GiB':>9}  reason"]
    for c in choices:
        lines.append(f"{c.method:<8}{'yes' if c.fits else 'no':<6}{c.batch_size:>6}{c.seq_len:>8}  "
                     f"{'yes' if c.gradient_checkpointing else 'no':<6}{c.peak_gib:>9.1f}  {c.reason}")
    lines.append("recommended: " + recommend(choices))
    return "\n".join(lines)


__all__ = ["GPUS", "Gpu", "MethodChoice", "NotebookPlan", "Phase", "choice_table",
           "choose_method", "course_table", "gpu_spec", "markdown_table", "plan_course",
           "plan_notebook", "recommend"]
