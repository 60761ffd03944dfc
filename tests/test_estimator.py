"""The training-memory estimator: counts checked against real models, autograd and measured runs.

1. Parameter counts from a config equal those of randomly initialised small models.
2. The activation count equals the bytes autograd really saves in a forward pass (a
   saved-tensors hook sums them), for full fine-tuning and LoRA with and without dropout.
3. The predicted peak is within 20 % of the MEASURED peak of two real training steps of the
   tiny model (SmolLM2-135M on the CPU) for full fine-tuning, LoRA and QLoRA. Each run is a
   fresh Python process, so nothing else lives in its memory. What is compared:
   peak resident memory (VmHWM) during `Trainer.train`, as StepStats records it, minus the
   resident memory before the model was loaded. Two details keep that number honest:
   parameters are copied out of the memory-mapped checkpoint (otherwise the checkpoint's file
   pages, read once to quantize, stay counted in RSS), and glibc returns every freed block above
   64 KiB to the system (MALLOC_MMAP_THRESHOLD_), so freed memory does not hide later
   allocations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

from course_utils.estimator import (
    MemoryEstimate,
    ModelShape,
    activation_elements_per_token,
    estimate_training_memory,
    expected_lora_parameters,
    lora_parameter_count,
    lora_parameter_table,
    measured_training_mib,
    nf4_bits_per_parameter,
    shipped_config,
)

SMALL = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1000, head_dim=32, tie_word_embeddings=True)
CONFIGS = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "qwen3": transformers.Qwen3Config}


def small_config(model_type: str = "llama"):
    return CONFIGS[model_type](**SMALL)


def random_model(config):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def smollm2_config():
    from course_utils.models import resolve_model_path

    return transformers.AutoConfig.from_pretrained(resolve_model_path(
        "packaged:smollm2-135m-instruct"))


# --- 1. parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_parameter_count_matches_a_real_model(model_type):
    config = small_config(model_type)
    model = random_model(config)
    assert ModelShape.from_config(config).parameter_count() == sum(
        p.numel() for p in model.parameters())


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear"])
def test_lora_parameter_count_matches_peft(targets):
    from peft import LoraConfig, get_peft_model

    config = small_config()
    model = get_peft_model(random_model(config),
                           LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameter_count(ModelShape.from_config(config), 8, targets) == trainable


@pytest.mark.parametrize("rank, targets", [(32, ["q_proj", "k_proj", "v_proj", "o_proj"]),
                                           (4, "all-linear")])
def test_lora_formula_matches_peft_on_the_tiny_model(rank, targets, tmp_path):
    """The count notebook 03 derives by hand, r * (d_in + d_out) per adapted layer, is the
    number peft trains; the saved adapter holds that many fp32 values."""
    from peft import LoraConfig, get_peft_model

    from course_utils.models import folder_size_mib

    config = smollm2_config()
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = transformers.AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                  target_modules=targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert expected_lora_parameters(config, rank, targets) == trainable
    table = lora_parameter_table(config, rank, targets)
    assert [row["module"] for row in table] == (
        list(targets) if isinstance(targets, list) else
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    per_layer = sum(row["LoRA r*(d_in+d_out)"] for row in table)
    assert config.num_hidden_layers * per_layer == trainable
    for row in table:
        assert row["share"] == pytest.approx(row["LoRA r*(d_in+d_out)"]
                                             / row["full update d_out*d_in"])
    assert ModelShape.from_config(config).parameter_count() == total
    if rank == 4:  # save one adapter: the folder is the trainable parameters in fp32
        adapter = get_peft_model(random_model(config), LoraConfig(r=rank, target_modules=targets))
        adapter.save_pretrained(tmp_path)
        assert folder_size_mib(tmp_path) == pytest.approx(trainable * 4 / 2**20, rel=0.02)


def test_nf4_bits_per_parameter():
    assert nf4_bits_per_parameter(double_quant=False) == 4 + 32 / 64
    assert nf4_bits_per_parameter() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert nf4_bits_per_parameter() == pytest.approx(4.127, abs=1e-3)
    with pytest.raises(ValueError, match="block sizes must be positive"):
        nf4_bits_per_parameter(block_size=0)


# --- 2. activations against what autograd saves ------------------------------------------------


def saved_bytes(model, input_ids, attention_mask) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves in one forward pass."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
    return sum(seen.values())


CASES = [  # method, lora dropout, lora targets, padded batch
    ("full", 0.0, None, True),
    ("full", 0.0, None, False),
    ("lora", 0.1, ["q_proj", "k_proj", "v_proj", "o_proj"], True),
    ("lora", 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"], True),
    ("lora", 0.05, "all-linear", True),
    ("lora", 0.0, "all-linear", False),
]


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
@pytest.mark.parametrize("method, dropout, targets, padded", CASES)
def test_activation_count_matches_autograd(model_type, method, dropout, targets, padded):
    from peft import LoraConfig, get_peft_model

    config = small_config(model_type)
    model = random_model(config)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                                                 target_modules=targets))
    model.train()
    batch, seq = 2, 40
    input_ids = torch.randint(0, SMALL["vocab_size"], (batch, seq))
    attention_mask = torch.ones_like(input_ids)
    if padded:
        attention_mask[1, 30:] = 0
    measured = saved_bytes(model, input_ids, attention_mask)
    estimate = estimate_training_memory(
        config, method, batch, seq, "fp32", lora_rank=8 if method == "lora" else None,
        lora_targets=targets, lora_dropout=dropout, device="cpu", padded=padded)
    # autograd also saves the loss's log-softmax output, one (tokens x vocab) fp32 tensor
    predicted = estimate.activations_mib * 2**20 + batch * seq * SMALL["vocab_size"] * 4
    assert predicted == pytest.approx(measured, rel=0.05)


# --- arguments, structure, relations ------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="prefix"), "method must be one of"),
    (dict(method="full", optimizer="adam"), "optimizer must be one of"),
    (dict(method="lora"), "needs a positive lora_rank"),
    (dict(method="full", lora_rank=8), "not full fine-tuning"),
    (dict(method="full", dtype="int8"), "unknown dtype"),
    (dict(method="full", batch_size=0), "must be positive"),
    (dict(method="lora", lora_rank=8, lora_targets=["attn"]), "unknown LoRA target"),
    (dict(method="full", device="tpu"), "device must be one of"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    arguments = {"config": small_config(), "batch_size": 2, "seq_len": 16} | kwargs
    with pytest.raises(ValueError, match=message):
        estimate_training_memory(**arguments)


def test_unsupported_architecture_is_named():
    with pytest.raises(ValueError, match="bert"):
        estimate_training_memory(transformers.BertConfig(), "full", 1, 8)


def test_relations_between_methods_and_options():
    config = smollm2_config()

    def estimate(method, **kwargs):
        rank = None if method == "full" else 16
        return estimate_training_memory(config, method, 8, 128, lora_rank=rank, **kwargs)

    full, lora, qlora = estimate("full"), estimate("lora"), estimate("qlora")
    assert qlora.weights_mib < 0.4 * lora.weights_mib
    assert lora.gradients_mib < 0.05 * full.gradients_mib
    assert full.total_mib > lora.total_mib > qlora.total_mib
    assert estimate("full", gradient_checkpointing=True).activations_mib < 0.3 * full.activations_mib
    assert estimate("full", optimizer="adamw_8bit").optimizer_mib == pytest.approx(
        full.optimizer_mib / 4)
    assert estimate("full", optimizer="sgd").optimizer_mib == 0
    assert estimate("full", dtype="bf16").weights_mib == pytest.approx(full.weights_mib / 2)
    per_token = activation_elements_per_token(ModelShape.from_config(config), "full")
    assert full.activations_mib > 8 * 128 * 30 * per_token * 4 / 2**20 * 0.99


def test_table_and_dict():
    estimate = estimate_training_memory(small_config(), "lora", 2, 16, lora_rank=4)
    assert isinstance(estimate, MemoryEstimate)
    table = estimate.as_table(measured_mib=estimate.total_mib * 1.1)
    for word in ("weights", "gradients", "optimizer states", "activations", "logits",
                 "overhead", "predicted peak", "measured peak"):
        assert word in table
    assert estimate.to_dict()["total_mib"] == estimate.total_mib
    assert measured_training_mib(peak_mib=3000, start_mib=1500, model_mib=500) == 2000


# --- 3. against measured peaks of real training steps -------------------------------------------

MEASURE = r"""
import json, sys, tempfile
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, Trainer, TrainingArguments
from course_utils import memory
from course_utils.data import qa_collator
from course_utils.hardware import detect_hardware
from course_utils.models import load_causal_lm
from course_utils.training import StepStats, logging_arguments, training_summary

method, batch, seq, targets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
ids = torch.randint(100, 40000, (4 * batch, seq)).tolist()
rows = Dataset.from_dict({"input_ids": ids, "labels": ids,
                          "attention_mask": [[1] * (seq - 1) + [0] for _ in ids]})  # padded
before = memory.current_memory_mib("cpu")
cpu = detect_hardware(prefer_cpu=True)
nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                         bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
model, tokenizer = load_causal_lm("packaged:smollm2-135m-instruct", hardware=cpu,
                                  quantization_config=nf4 if method == "qlora" else None)
for p in model.parameters():  # out of the memory-mapped checkpoint file
    if type(p).__name__ != "Params4bit":
        p.data = p.data.clone()
if method == "qlora":
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
if method != "full":
    model = get_peft_model(model, LoraConfig(
        r=32, lora_alpha=64, lora_dropout=0.1, task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else targets.split(",")))
args = TrainingArguments(output_dir=tempfile.mkdtemp(), learning_rate=1e-4, max_steps=2,
                         per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                         optim="adamw_torch", save_strategy="no", **logging_arguments(cpu, 42))
trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=qa_collator(tokenizer),
                  callbacks=[StepStats(cpu.device)])
trainer.train()
peak = training_summary(trainer.state.log_history)["peak_mib"]
print(json.dumps({"before_mib": before, "peak_mib": peak}))
"""

RUNS = [("full", None), ("lora", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("qlora", "all-linear")]


@pytest.mark.slow
@pytest.mark.parametrize("method, targets", RUNS)
def test_estimate_within_20_percent_of_measured_cpu_peak(method, targets):
    batch, seq = 4, 96
    arg = targets if isinstance(targets, str) else ",".join(targets or ["none"])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", MEASURE, method, str(batch), str(seq), arg],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    measured = run["peak_mib"] - run["before_mib"]
    estimate = estimate_training_memory(
        smollm2_config(), method, batch, seq, "fp32", "adamw",
        lora_rank=None if method == "full" else 32, lora_targets=targets,
        lora_dropout=0.0 if method == "full" else 0.1, device="cpu")
    print(f"\n{method}:\n{estimate.as_table(measured_mib=measured)}")
    assert estimate.total_mib == pytest.approx(measured, rel=0.20)


def test_shipped_7b_config_sizes_the_rag_generator():
    from course_utils.config import FULL

    config = shipped_config(FULL.rag_model)
    parameters = ModelShape.from_config(config).parameter_count()
    assert 7.5e9 < parameters < 7.7e9  # "7B": 7.6 billion parameters with untied embeddings
    qlora = estimate_training_memory(config, "qlora", batch_size=1, seq_len=512,
                                     dtype=torch.float16, device="cuda", lora_rank=16,
                                     lora_targets="all-linear", optimizer="adamw_8bit",
                                     gradient_checkpointing=True)
    full = estimate_training_memory(config, "full", batch_size=1, seq_len=512,
                                    dtype=torch.float16, device="cuda",
                                    param_dtype=torch.float32, gradient_checkpointing=True)
    assert qlora.total_mib < 15 * 1024 < full.total_mib  # QLoRA fits a T4, full FT does not
    with pytest.raises(ValueError, match="no shipped config"):
        shipped_config("someone/unknown-model")
