"""The GPU plan and the method chooser: every `full` notebook fits a T4 by the plan, the plan's
new estimator parts count what PyTorch really holds, and the chooser answers for every shipped
model shape."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import files

import pytest
import torch
import transformers

from course_utils import plan
from course_utils.config import FULL, recipe
from course_utils.estimator import (
    ModelShape,
    estimate_inference_memory,
    estimate_training_memory,
    shipped_config,
    weights_mib,
)

SHAPES = sorted(p.name.removesuffix(".json")
                for p in (files("course_utils") / "resources" / "model_shapes").iterdir()
                if p.name.endswith(".json"))
SMALL_QWEN3 = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, head_dim=32,
                   tie_word_embeddings=True)


# --- the course on a T4 ----------------------------------------------------------------------


def test_every_full_notebook_fits_a_t4_with_headroom():
    plans = plan.plan_course("t4")
    assert [p.notebook for p in plans] == ["01", "02", "03", "04", "05"]
    for notebook_plan in plans:
        assert notebook_plan.fits, plan.course_table([notebook_plan])
        assert notebook_plan.peak_gib <= 0.9 * (plan.GPUS["t4"].memory_gib - plan.CUDA_CONTEXT_GIB)
        low, high = notebook_plan.minutes
        assert 0 < low <= high


def test_the_plan_can_say_no():
    """An 8 GB GPU cannot hold full fine-tuning of Qwen3-0.6B with AdamW (8.9 GiB of weights,
    gradients and optimizer states): the plan must say so."""
    plans = {p.notebook: p for p in plan.plan_course(8)}
    assert not plans["02"].fits
    assert plans["01"].fits
    assert plans["02"].largest.name == "training"


def test_the_recipe_fits_where_the_original_batch_would_not():
    """The `full` recipe trains one 512-token row per pass on a T4; two rows would leave less
    than the 10 % headroom (the reason written in the recipe)."""
    shape = ModelShape.from_config(shipped_config(FULL.chat_model))
    settings = recipe("02", FULL)
    budget_mib = plan.GPUS["t4"].budget_gib * 1024

    def peak(batch):
        return estimate_training_memory(
            shape, "full", batch, FULL.max_length, dtype=torch.float16,
            param_dtype=torch.float32, device="cuda",
            gradient_accumulation_steps=settings["gradient_accumulation_steps"]).total_mib

    assert peak(settings["per_device_train_batch_size"]) <= budget_mib < peak(2)


def test_phases_name_what_they_hold():
    notebook_plan = plan.plan_notebook("02", "t4")
    training = notebook_plan.phase("training")
    for part in ("weights", "gradients", "optimizer states", "activations", "logits (loss)",
                 "autocast copies"):
        assert part in training.parts
    assert "BERTScore model" in notebook_plan.phase("base evaluation").parts
    assert "BERTScore model" not in training.parts          # released before training
    with pytest.raises(KeyError, match="no phase 'nope'"):
        notebook_plan.phase("nope")
    generation = plan.plan_notebook("05", "t4").phase("generation")
    assert generation.new_tokens == recipe("05", FULL)["max_new_tokens"]
    assert generation.batch_size == recipe("05", FULL)["generation_batch_size"]


def test_native_bf16_gpus_plan_a_16_bit_lora_base():
    t4, a100 = plan.plan_notebook("03", "t4"), plan.plan_notebook("03", "a100")
    assert "fp32 base" in t4.title and "bf16 base" in a100.title
    assert a100.phase("load").peak_mib == pytest.approx(t4.phase("load").peak_mib / 2)
    assert a100.minutes[1] < t4.minutes[1]


def test_gpu_names_and_sizes():
    assert plan.gpu_spec("T4").key == "t4"
    assert plan.gpu_spec("24").memory_gib == pytest.approx(24 * 0.93)
    assert plan.gpu_spec("24gb").native_bf16
    assert plan.plan_notebook("02", 24).minutes is None   # memory only: no time estimate
    for bad in ("v100", "0", "-3"):
        with pytest.raises(ValueError, match="GPU"):
            plan.gpu_spec(bad)
    with pytest.raises(ValueError, match="no plan for notebook"):
        plan.plan_notebook("06")


def test_command_line_json():
    done = subprocess.run([sys.executable, "-m", "course_utils", "plan", "--gpu", "t4", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    assert [e["notebook"] for e in entries] == ["01", "02", "03", "04", "05"]
    for entry in entries:
        assert {"notebook", "peak_gib", "fits", "minutes"} <= set(entry)
        assert entry["fits"] is True
        assert entry["peak_gib"] > 0 and len(entry["minutes"]) == 2
    table = subprocess.run([sys.executable, "-m", "course_utils", "plan", "--gpu", "8"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 1 and "NO" in table.stdout     # does not fit: non-zero exit
    bad = subprocess.run([sys.executable, "-m", "course_utils", "plan", "--gpu", "v100"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown GPU 'v100'" in bad.stderr
    assert "Traceback" not in bad.stderr


# --- the method chooser ------------------------------------------------------------------------


@pytest.mark.parametrize("model", SHAPES)
def test_the_chooser_answers_for_every_shipped_shape(model):
    if ModelShape.from_config(shipped_config(model)).gated_mlp is False:
        pytest.skip("GPT-2 has no LoRA target names of the Llama family")
    previous = 0
    for gpu in ("t4", "24", "a100", "h100"):
        choices = plan.choose_method(gpu, model)
        assert [c.method for c in choices] == ["full", "lora", "qlora"]
        fitting = sum(c.fits for c in choices)
        assert fitting >= previous          # more memory never fits fewer methods
        previous = fitting
        for choice in choices:
            assert choice.reason
            if choice.fits:
                assert choice.peak_gib <= plan.gpu_spec(gpu).budget_gib
                assert choice.batch_size >= 1
        assert plan.recommend(choices)


def test_chooser_matches_the_textbook_cases():
    on_t4 = {c.method: c for c in plan.choose_method("t4", "Qwen/Qwen3-8B")}
    assert not on_t4["full"].fits and not on_t4["lora"].fits and on_t4["qlora"].fits
    assert "GiB of weights, gradients and optimizer states" in on_t4["full"].reason
    small = {c.method: c for c in plan.choose_method("t4", "Qwen/Qwen3-0.6B")}
    assert all(c.fits for c in small.values())
    on_h100 = {c.method: c for c in plan.choose_method("h100", "meta-llama/Llama-3.1-8B")}
    assert on_h100["lora"].fits and not on_h100["full"].fits   # 8B x 16 bytes > 80 GB
    done = subprocess.run([sys.executable, "-m", "course_utils", "plan", "--gpu", "24",
                           "--model", "Qwen/Qwen3-8B", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [c["method"] for c in answer["choices"]] == ["full", "lora", "qlora"]
    assert answer["recommended"]


# --- the estimator's new parts against real tensors -----------------------------------------


def test_gpt2_parameters_match_a_real_model():
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500,
                                     n_positions=128)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert ModelShape.from_config(config).parameter_count() == sum(
        p.numel() for p in model.parameters())
    distilgpt2 = ModelShape.from_config(shipped_config("distilgpt2"))
    assert distilgpt2.parameter_count() == 81_912_576   # DistilGPT2's published 82M


def test_key_value_cache_matches_the_model_cache():
    config = transformers.Qwen3Config(**SMALL_QWEN3)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    batch, seq = 3, 17
    with torch.no_grad():
        cache = model(torch.randint(0, 1000, (batch, seq)), use_cache=True).past_key_values
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    estimate = estimate_inference_memory(config, batch, seq, 0, weights="fp32",
                                         dtype=torch.float32, device="cpu")
    assert estimate.kv_cache_mib * 2**20 == pytest.approx(held)


def test_inference_logits_and_weights():
    config = transformers.Qwen3Config(**SMALL_QWEN3)
    loss = estimate_inference_memory(config, 4, 64, loss=True, dtype=torch.float16)
    generate = estimate_inference_memory(config, 4, 64, new_tokens=8, dtype=torch.float16)
    assert loss.logits_mib == pytest.approx(4 * 64 * 1000 * (2 + 4 + 4) / 2**20)
    assert generate.logits_mib < loss.logits_mib / 10      # last position only
    assert weights_mib(config, "nf4") < weights_mib(config, "fp16") < weights_mib(config, "fp32")
    with pytest.raises(ValueError, match="weights must be one of"):
        weights_mib(config, "int4")


def test_accumulation_and_autocast_are_counted():
    shape = ModelShape.from_config(shipped_config(FULL.chat_model))
    common = dict(dtype=torch.float16, param_dtype=torch.float32, device="cuda")
    one = estimate_training_memory(shape, "full", 1, 512, **common)
    accumulating = estimate_training_memory(shape, "full", 1, 512,
                                            gradient_accumulation_steps=16, **common)
    assert accumulating.accumulating and not one.accumulating
    assert accumulating.forward_mib == pytest.approx(one.forward_mib + one.gradients_mib)
    assert accumulating.total_mib > one.total_mib
    linear_and_output = shape.linear_parameters() + shape.vocab_size * shape.hidden_size
    assert one.autocast_mib == pytest.approx(linear_and_output * 2 / 2**20)
    on_cpu = estimate_training_memory(shape, "full", 1, 512, dtype="fp32", device="cpu")
    assert on_cpu.autocast_mib == 0
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        estimate_training_memory(shape, "full", 1, 512, gradient_accumulation_steps=0)
    assert "gradients (accumulating)" in accumulating.as_table()


def test_readme_states_the_t4_plan():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- plan:t4 -->\n", 1)[1].split("\n<!-- /plan:t4 -->", 1)[0]
    assert block == plan.markdown_table(plan.plan_course("t4")), (
        "README's T4 table differs from the plan: paste the output of "
        "`python -c 'from course_utils import plan; "
        "print(plan.markdown_table(plan.plan_course(\"t4\")))'`")
