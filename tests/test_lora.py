"""LoRA helpers on the tiny SmolLM2 (CPU, fp32): settings, parameter counts, merging, adapters."""

from __future__ import annotations

import copy

import pytest
import torch

from course_utils.hardware import detect_hardware
from course_utils.lora import (
    ATTENTION_MODULES,
    LoraSettings,
    count_parameters,
    default_recipe,
    expected_lora_parameters,
    folder_size_mib,
    logits_of,
    lora_parameter_table,
    max_logit_difference,
)
from course_utils.profiles import FULL, TINY

CPU = detect_hardware(prefer_cpu=True)


@pytest.fixture(scope="module")
def base():
    from course_utils.models import load_causal_lm

    return load_causal_lm(TINY.chat_model, hardware=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def batch(base, secret_facts):
    from course_utils.prompts import qa_collator, tokenize_qa

    _, tokenizer = base
    rows = [tokenize_qa(tokenizer, q, c, a, 128) for q, c, a in secret_facts[:4]]
    return qa_collator(tokenizer)(rows)


def adapted(model, settings: LoraSettings, seed: int = 0):
    from peft import get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(copy.deepcopy(model), settings.to_peft_config())


def randomize_b(peft_model, seed: int, adapter: str = "default"):
    """Give every B matrix random values, as training would (B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if f"lora_B.{adapter}." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


# --- settings and recipes -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), "rank must be positive"),
    (dict(alpha=-1), "alpha must be positive"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(target_modules=()), "target_modules is empty"),
    (dict(target_modules=("q_proj", "attention")), "unknown LoRA target"),
])
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraSettings(**kwargs)


def test_settings_to_peft_config():
    settings = LoraSettings(r=8, alpha=32, dropout=0.05, target_modules=["q_proj", "v_proj"])
    assert settings.target_modules == ("q_proj", "v_proj") and settings.scaling == 4.0
    config = settings.to_peft_config()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 32, 0.05)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert LoraSettings(target_modules="all-linear").modules[-1] == "down_proj"


def test_full_recipes_match_the_original_course():
    lora = default_recipe("03_lora", FULL, device="cuda")
    assert (lora.lora.r, lora.lora.alpha, lora.lora.dropout) == (32, 64, 0.1)
    assert lora.lora.target_modules == ATTENTION_MODULES
    assert lora.train.learning_rate == 1e-4 and lora.sweep_ranks == (4, 8, 16, 32)
    qlora = default_recipe("04_qlora", FULL, device="cuda")
    assert (qlora.lora.r, qlora.lora.alpha, qlora.lora.dropout) == (32, 64, 0.05)
    assert qlora.lora.target_modules == "all-linear"
    assert qlora.train.learning_rate == 2e-4 and qlora.train.optim == "paged_adamw_8bit"
    assert default_recipe("04_qlora", TINY, device="cpu").train.optim == "adamw_torch"
    assert len(default_recipe("03_lora", TINY).sweep_ranks) == 2
    with pytest.raises(ValueError, match="known: 03"):
        default_recipe("02_full_finetuning", TINY)


# --- counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [LoraSettings(r=32),
                                      LoraSettings(r=4, target_modules="all-linear")])
def test_trainable_parameters_match_the_formula(base, settings):
    model, _ = base
    peft_model = adapted(model, settings)
    trainable, total = count_parameters(peft_model)
    assert trainable == expected_lora_parameters(model.config, settings)
    table = lora_parameter_table(model.config, settings)
    per_layer = sum(row["LoRA r*(d_in+d_out)"] for row in table)
    assert trainable == model.config.num_hidden_layers * per_layer
    assert total == trainable + sum(p.numel() for p in model.parameters())


# --- behaviour ------------------------------------------------------------------------------


def test_new_adapter_starts_equal_to_the_base(base, batch):
    model, _ = base
    peft_model = adapted(model, LoraSettings(r=8))
    assert max_logit_difference(peft_model, model, batch) == 0.0  # B = 0: B A x = 0


def test_merged_model_gives_the_same_logits(base, batch):
    model, _ = base
    peft_model = adapted(model, LoraSettings(r=8))
    randomize_b(peft_model, seed=1)
    assert max_logit_difference(peft_model, model, batch) > 1e-2  # the adapter changes outputs
    before = logits_of(peft_model, batch)
    merged = peft_model.merge_and_unload()  # W <- W + (alpha / r) B A, adapters removed
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(logits_of(merged, batch), before, atol=1e-3, rtol=1e-3)


def test_two_adapters_on_one_base_switch(base, batch, tmp_path):
    from peft import PeftModel

    model, _ = base
    for name, seed in (("first", 1), ("second", 2)):
        peft_model = adapted(model, LoraSettings(r=8))
        randomize_b(peft_model, seed)
        peft_model.save_pretrained(tmp_path / name)
    assert folder_size_mib(tmp_path / "first") == pytest.approx(
        expected_lora_parameters(model.config, LoraSettings(r=8)) * 4 / 2**20, rel=0.05)

    served = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "first",
                                       adapter_name="first")
    served.load_adapter(tmp_path / "second", adapter_name="second")

    served.set_adapter("first")
    first = logits_of(served, batch)
    served.set_adapter("second")
    second = logits_of(served, batch)
    with served.disable_adapter():
        plain = logits_of(served, batch)
    assert (first - second).abs().max() > 1e-2
    torch.testing.assert_close(plain, logits_of(model, batch))


def test_folder_size_needs_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no files"):
        folder_size_mib(tmp_path)


def test_lora_training_lowers_the_loss(base, batch, train_on_batch):
    model, _ = base
    peft_model = adapted(model, LoraSettings(r=8, alpha=16, dropout=0.0,
                                             target_modules=("q_proj", "v_proj")))
    losses = train_on_batch(peft_model, batch, steps=6, lr=2e-3)
    assert losses[-1] < 0.5 * losses[0], losses
    # only the adapters moved: the frozen base weights are untouched
    for name, param in peft_model.named_parameters():
        if "lora_" not in name:
            assert not param.requires_grad
