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

from course_utils.hardware import detect_hardware
from course_utils.profiles import TINY
from course_utils.quantization import (
    count_4bit_layers,
    nf4_bits_per_parameter,
    nf4_levels,
    nf4_roundtrip,
    quantization_error,
    requantization_loss,
    variant_arguments,
)

CPU = detect_hardware(prefer_cpu=True)


def test_bits_per_parameter():
    assert nf4_bits_per_parameter(double_quant=False) == 4 + 32 / 64
    assert nf4_bits_per_parameter() == pytest.approx(4.127, abs=1e-3)
    with pytest.raises(ValueError, match="block sizes must be positive"):
        nf4_bits_per_parameter(block_size=0)


def test_nf4_levels_and_roundtrip():
    levels = nf4_levels()
    assert levels.shape == (16,) and levels[0] == -1 and levels[-1] == 1 and 0 in levels
    assert torch.all(levels[1:] > levels[:-1])
    torch.manual_seed(0)
    weight = torch.randn(64, 128) * 0.02
    restored = nf4_roundtrip(weight)
    assert restored.shape == weight.shape
    assert 0 < quantization_error(weight)["relative_error"] < 0.15


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


def test_variant_arguments():
    assert variant_arguments("32bit", CPU) == {"dtype": torch.float32}
    assert variant_arguments("16bit", CPU) == {"dtype": torch.bfloat16}
    assert variant_arguments("4bit", CPU) == {"quantization": "4bit"}
    with pytest.raises(ValueError, match="variant must be one of"):
        variant_arguments("2bit", CPU)


@pytest.mark.slow
def test_qlora_on_cpu_learns_after_a_before_evaluation(secret_facts, train_on_batch):
    from peft import get_peft_model, prepare_model_for_kbit_training

    from course_utils.generation import generate_answers
    from course_utils.lora import LoraSettings
    from course_utils.memory_estimator import ModelShape
    from course_utils.models import footprint_mib, load_causal_lm
    from course_utils.prompts import qa_collator, qa_prompt, tokenize_qa

    model, tokenizer = load_causal_lm(TINY.chat_model, quantization="4bit", hardware=CPU)
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
    lora = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules="all-linear")
    model = get_peft_model(model, lora.to_peft_config())
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
