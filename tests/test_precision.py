"""Precision by capability: every dtype the notebooks use, per device, and the overflow guards.

The GPUs are mocked: torch reports a T4 (compute capability 7.5, whose `is_bf16_supported()`
says True because bf16 can be emulated), an L4 (8.9) or an A100 (8.0), or no GPU. The overflow
checks run for real, on small random models in fp16 and fp32 on the CPU.
"""

import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments

from course_utils.config import TINY, setup_notebook
from course_utils.data import qa_collator
from course_utils.hardware import Hardware, detect_hardware
from course_utils.models import check_numerics, load_causal_lm, load_tokenizer
from course_utils.training import NonFiniteLossError, StopOnNonFiniteLoss, logging_arguments

FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int], count: int = 1):
    """torch reports one CUDA GPU; `is_bf16_supported` says True, as emulation makes it on a T4."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.fixture
def t4(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), count=2)
    return detect_hardware()


@pytest.fixture(params=[("NVIDIA L4", (8, 9)), ("NVIDIA A100-SXM4-40GB", (8, 0))],
                ids=["L4", "A100"])
def bf16_gpu(monkeypatch, request):
    fake_gpu(monkeypatch, *request.param)
    return detect_hardware()


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return detect_hardware()


# --- the choices, per device -------------------------------------------------------------------


def test_a_t4_computes_in_fp16_and_keeps_trained_weights_in_fp32(t4):
    assert (t4.device, t4.compute_capability, t4.supports_bf16) == ("cuda", (7, 5), False)
    assert t4.fp16 and not t4.bf16 and t4.mixed_precision == "fp16"
    assert t4.full_finetuning_dtype == FP32
    assert t4.lora_base_dtype == FP32, "fp16 weights put the residual stream in fp16"
    assert t4.four_bit_compute_dtype == FP16
    assert t4.half_dtype == FP16
    assert t4.device_map == {"": 0}


def test_native_bf16_gpus_compute_and_keep_frozen_weights_in_bf16(bf16_gpu):
    assert bf16_gpu.supports_bf16 and bf16_gpu.compute_capability[0] == 8
    assert bf16_gpu.bf16 and not bf16_gpu.fp16 and bf16_gpu.mixed_precision == "bf16"
    assert bf16_gpu.full_finetuning_dtype == FP32, "AdamW updates fp32 master weights"
    assert bf16_gpu.lora_base_dtype == BF16
    assert bf16_gpu.four_bit_compute_dtype == BF16
    assert bf16_gpu.half_dtype == BF16
    assert bf16_gpu.device_map == {"": 0}


def test_a_cpu_computes_in_fp32(cpu):
    assert (cpu.device, cpu.dtype, cpu.compute_capability) == ("cpu", FP32, None)
    assert not cpu.bf16 and not cpu.fp16 and cpu.mixed_precision == "no"
    assert cpu.full_finetuning_dtype == cpu.lora_base_dtype == cpu.four_bit_compute_dtype == FP32
    assert cpu.half_dtype == BF16, "notebook 04's 16-bit variant on a CPU, as before"
    assert cpu.device_map is None


def test_trainer_flags_match_the_hardware(t4, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), bf16=t4.bf16, fp16=t4.fp16,
                             **{**logging_arguments(t4, 1), "use_cpu": True})
    assert args.fp16 and not args.bf16


def test_a_hardware_built_by_hand_still_works():
    by_hand = Hardware(device="cuda", dtype=FP16, device_name="Tesla T4", gpu_count=1,
                       supports_bf16=False)
    assert by_hand.compute_capability is None and by_hand.fp16
    assert by_hand.lora_base_dtype == FP32 and by_hand.four_bit_compute_dtype == FP16
    assert "this GPU has no native bf16" in by_hand.precision_summary()


# --- what is printed and recorded ----------------------------------------------------------------


def test_the_t4_summary_says_fp16_and_why(t4):
    text = t4.precision_summary()
    assert text.startswith("Precision on Tesla T4, compute capability 7.5:")
    assert "Trainer mixed precision: fp16 (fp16=True): compute capability 7.5 has no native bf16" \
        in text
    assert "frozen base under LoRA: fp32: fp16 weights would overflow" in text
    assert "4-bit compute dtype: fp16" in text and "16-bit model: fp16" in text
    assert "compute capability 7.5" in t4.describe()


def test_the_bf16_and_cpu_summaries_say_why(bf16_gpu, monkeypatch):
    text = bf16_gpu.precision_summary()
    assert "Trainer mixed precision: bf16 (bf16=True)" in text and "computes bf16 natively" in text
    assert "frozen base under LoRA: bf16" in text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    text = detect_hardware().precision_summary()
    assert "Trainer mixed precision: none (fp32): a CPU computes in fp32" in text
    assert "16-bit model: bf16" in text


def test_the_precision_record_holds_every_choice_and_reason(t4):
    record = t4.precision()
    assert record == {**record, "device": "cuda", "device_name": "Tesla T4",
                      "compute_capability": "7.5", "native_bf16": False, "bf16": False,
                      "fp16": True, "mixed_precision": "fp16", "full_finetuning_dtype": "float32",
                      "lora_base_dtype": "float32", "four_bit_compute_dtype": "float16",
                      "half_dtype": "float16"}
    assert set(record["why"]) == {"mixed_precision", "full_finetuning_dtype", "lora_base_dtype",
                                  "four_bit_compute_dtype", "half_dtype"}
    assert "no native bf16" in record["why"]["mixed_precision"]
    assert json.loads(json.dumps(record)) == record, "plain JSON for a results file"


def test_setup_prints_the_precision_choices(t4, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    ctx = setup_notebook("02_full_finetuning")
    out = capsys.readouterr().out
    assert ctx.hardware == t4
    assert t4.precision_summary() in out
    assert "compute capability 7.5 has no native bf16" in out


# --- overflow: the numerics check ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY.chat_model)


def small_model(tokenizer, dtype=FP32):
    """A random 2-layer Llama (with biases) that shares the packaged chat model's tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         attention_bias=True, mlp_bias=True)
    return AutoModelForCausalLM.from_config(config).to(dtype)


def test_the_numerics_check_passes_a_healthy_model(tokenizer, cpu):
    for dtype in (FP32, FP16):
        checked = check_numerics(small_model(tokenizer, dtype), tokenizer, cpu)
        assert checked["dtype"] == str(dtype).replace("torch.", "")
        assert 0 < checked["largest_activation"] < 1e3 and checked["fp16_headroom"] > 60


def test_the_numerics_check_names_an_fp16_overflow_and_what_to_do(tokenizer, t4):
    weights = {}
    for dtype in (FP32, FP16):
        model = small_model(tokenizer, dtype)
        layer = model.model.layers[0]
        with torch.no_grad():  # attention and MLP each add 40,000: 80,000 is above fp16's 65,504
            layer.self_attn.o_proj.bias.fill_(40_000.0)
            layer.mlp.down_proj.bias.fill_(40_000.0)
        weights[dtype] = model
    assert check_numerics(weights[FP32], tokenizer, t4)["fp16_headroom"] < 1  # fine in fp32
    with pytest.raises(RuntimeError) as error:
        check_numerics(weights[FP16], tokenizer, t4)
    message = str(error.value)
    assert "computing in float16 on Tesla T4" in message and "compute capability 7.5" in message
    assert "the output of decoder layer 0 holds" in message and "inf" in message
    assert "load the model in fp32" in message and "native bf16" in message


def test_the_numerics_check_says_when_fp32_weights_are_broken(tokenizer, cpu):
    model = small_model(tokenizer)
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(math.inf)
    with pytest.raises(RuntimeError, match="the token embeddings holds .* no 16-bit overflow"):
        check_numerics(model, tokenizer, cpu)


def test_the_numerics_check_reads_the_4bit_compute_dtype(tokenizer, cpu, tmp_path):
    from transformers import BitsAndBytesConfig

    small_model(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_compute_dtype=cpu.four_bit_compute_dtype)
    model, _ = load_causal_lm(str(tmp_path), hardware=cpu, quantization_config=nf4)
    assert check_numerics(model, tokenizer, cpu)["dtype"] == "float32"


# --- overflow: the training guard ---------------------------------------------------------------


def test_a_nan_loss_stops_training_with_the_reason(tokenizer, tmp_path, cpu):
    model = small_model(tokenizer)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = math.nan
    ids = [tokenizer("The Moon orbits the Earth.")["input_ids"]] * 4
    rows = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids],
                              "labels": ids})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                             learning_rate=1e-3, save_strategy="no", **logging_arguments(cpu, 1))
    trainer = Trainer(model=model, args=args, train_dataset=rows,
                      data_collator=qa_collator(tokenizer), callbacks=[StopOnNonFiniteLoss(cpu)])
    with pytest.raises(NonFiniteLossError, match="stopped at step 1: the logged loss is nan"):
        trainer.train()
    assert trainer.state.global_step == 1


def test_the_loss_guard_blames_fp16_on_a_t4(t4, tmp_path):
    from transformers import TrainerControl, TrainerState

    guard, state, control = StopOnNonFiniteLoss(t4), TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    state.global_step = 7
    guard.on_log(args, state, control, logs={"loss": 2.5, "eval_loss": 2.4})  # finite: goes on
    assert not control.should_training_stop
    with pytest.raises(NonFiniteLossError) as error:
        guard.on_log(args, state, control, logs={"eval_loss": math.inf})
    message = str(error.value)
    assert "step 7: the logged eval_loss is inf" in message
    assert "fp16" in message and "Tesla T4" in message and "lora_base_dtype" in message
    assert control.should_training_stop
