"""4-bit helpers, and the bitsandbytes CPU trap: QLoRA must really learn after a "before" evaluation.

The trap (see NOTES): on CPUs with avx512_bf16, a 4-bit forward pass in eval mode repacks the
weights into a layout that only the inference kernel reads correctly. Training afterwards runs
on wrongly dequantized weights, silently. `load_causal_lm` turns the repacking off for 4-bit
models on CPU. The test below evaluates with `generate` first, exactly like a notebook's "before"
evaluation, then checks that the first training loss equals the evaluation loss of the same
batch (same model, same function) and that training then teaches the answers. On CPUs without
avx512_bf16 it passes either way; on CPUs with it, it fails if the protection is removed.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BitsAndBytesConfig

from course_utils.config import TINY
from course_utils.hardware import detect_hardware
from course_utils.models import (
    count_4bit_layers,
    nf4_levels,
    nf4_roundtrip,
    quantization_error,
    requantization_loss,
)

CPU = detect_hardware(prefer_cpu=True)


def nf4_config() -> BitsAndBytesConfig:
    """QLoRA's 4-bit format as notebook 04 builds it (fp32 compute on a CPU)."""
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def test_nf4_levels_and_roundtrip():
    levels = nf4_levels()
    assert levels.shape == (16,) and levels[0] == -1 and levels[-1] == 1 and 0 in levels
    assert torch.all(levels[1:] > levels[:-1])
    torch.manual_seed(0)
    weight = torch.randn(64, 128) * 0.02
    restored = nf4_roundtrip(weight)
    assert restored.shape == weight.shape
    assert 0 < quantization_error(weight)["relative_error"] < 0.15
    # every restored value is a level times its block's absmax (the largest |weight| of 64)
    block = weight.flatten()[:64]
    scaled = levels * block.abs().max()
    restored_block = restored.flatten()[:64]
    assert torch.all((restored_block[:, None] - scaled[None, :]).abs().min(dim=1).values < 1e-3)
    assert nf4_roundtrip(restored).sub(restored).abs().max() < 1e-3, "NF4 values stay put"


def test_a_small_update_is_lost_when_requantized():
    torch.manual_seed(0)
    weight = torch.randn(128, 128) * 0.02
    lora_like = (torch.randn(128, 8) * 0.002) @ (torch.randn(8, 128) * 0.02)
    small = requantization_loss(weight, lora_like)
    assert small["rounding_to_update"] > 1 and small["update_error"] > 0.5
    large = requantization_loss(weight, 100 * lora_like)
    assert large["update_error"] < 0.3
    with pytest.raises(ValueError, match="differ"):
        requantization_loss(weight, lora_like[:, :5])


def test_a_4bit_model_on_cpu_loads_without_repacking(tmp_path):
    """load_causal_lm switches the CPU repacking off on every 4-bit layer, before any forward."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from course_utils.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(TINY.chat_model)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_causal_lm(str(tmp_path), hardware=CPU, quantization_config=nf4_config())
    assert count_4bit_layers(model) == (2 * 7, 0)
    plain, _ = load_causal_lm(str(tmp_path), hardware=CPU)
    assert count_4bit_layers(plain) == (0, 0)


@pytest.mark.slow
def test_qlora_on_cpu_learns_after_a_before_evaluation(secret_facts, train_on_batch):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from course_utils.data import qa_collator, qa_prompt, tokenize_qa
    from course_utils.estimator import ModelShape
    from course_utils.evaluation import generate_answers
    from course_utils.models import footprint_mib, load_causal_lm

    model, tokenizer = load_causal_lm(TINY.chat_model, hardware=CPU,
                                      quantization_config=nf4_config())
    layers, repacking = count_4bit_layers(model)
    assert layers > 0 and repacking == 0
    fp32_mib = ModelShape.from_config(model.config).parameter_count() * 4 / 2**20
    assert footprint_mib(model) < 0.35 * fp32_mib

    prompts = [qa_prompt(tokenizer, q, c) for q, c, _ in secret_facts]
    before = generate_answers(model, tokenizer, prompts, max_new_tokens=6, progress=False)
    batch = qa_collator(tokenizer)([tokenize_qa(tokenizer, q, c, a, 128) for q, c, a in secret_facts])
    model.eval()
    with torch.no_grad():
        eval_loss = model(**batch).loss.item()  # what inference computes for this batch

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    losses = train_on_batch(model, batch, steps=10, lr=2e-3)
    # B starts at zero, so the first training forward is the base model: the same loss as
    # the evaluation above. Repacked weights give a very different loss here.
    assert losses[0] == pytest.approx(eval_loss, rel=0.02), (losses[0], eval_loss)
    assert losses[-1] < 0.1 * losses[0], losses

    after = generate_answers(model, tokenizer, prompts, max_new_tokens=6, progress=False)
    words = [answer for _, _, answer in secret_facts]
    assert correct(before, words) == 0 and correct(after, words) >= len(words) - 1, (before, after)


def correct(answers: list[str], words: list[str]) -> int:
    """How many answers are the secret word of their fact."""
    return sum(a.strip(" .").lower() == word for a, word in zip(answers, words, strict=True))
