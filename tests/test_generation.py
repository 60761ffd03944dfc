"""Reasoning removal on recorded outputs; batched greedy generation on the tiny SmolLM2."""

from __future__ import annotations

import pytest
import torch

from course_utils.generation import generate_answers, sample_answers, strip_reasoning

# ---------------------------------------------------------------- strip_reasoning


def test_strip_reasoning_removes_a_full_think_block():
    text = "<think>\nThe user asks for the capital of France.\n</think>\n\nParis is the capital."
    assert strip_reasoning(text) == "Paris is the capital."


def test_strip_reasoning_without_opening_tag():
    # DeepSeek-R1's chat template puts <think> in the prompt: outputs hold only the closing tag
    text = "The user asks for the capital of France.\n</think>\n\nParis is the capital."
    assert strip_reasoning(text) == "Paris is the capital."


def test_strip_reasoning_keeps_text_after_the_last_closing_tag():
    text = "<think>first</think> draft <think>second</think>\n Final answer. "
    assert strip_reasoning(text) == "Final answer."


def test_strip_reasoning_leaves_untagged_text_alone():
    assert strip_reasoning("  Paris is the capital.\n") == "Paris is the capital."


def test_strip_reasoning_returns_nothing_for_cut_off_reasoning():
    assert strip_reasoning("<think>\nThe user asks about France. Let me recall") == ""


# ---------------------------------------------------------------- generate_answers


@pytest.fixture(scope="module")
def tiny_chat():
    from course_utils.models import load_causal_lm

    return load_causal_lm("packaged:smollm2-135m-instruct", dtype=torch.float32)


QUESTIONS = [
    "What is the capital of France?",
    "Explain in one short sentence why the sky looks blue during the day, for a child.",
    "Name a fruit.",
]


def _prompts(tokenizer):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                          add_generation_prompt=True, tokenize=False)
            for q in QUESTIONS]


@pytest.fixture(scope="module")
def batched_and_single(tiny_chat):
    model, tokenizer = tiny_chat
    prompts = _prompts(tokenizer)
    tokenizer.padding_side = "right"
    model.train()
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3,
                               progress=False)
    state = (tokenizer.padding_side, model.training)
    model.eval()
    single = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=1,
                              progress=False)
    return prompts, batched, single, state


def test_prompts_have_different_lengths(tiny_chat):
    _, tokenizer = tiny_chat
    lengths = {len(tokenizer(p, add_special_tokens=False)["input_ids"])
               for p in _prompts(tokenizer)}
    assert len(lengths) == 3


def test_batched_greedy_answers_match_one_by_one(batched_and_single):
    _, batched, single, _ = batched_and_single
    assert len(batched) == 3 and all(isinstance(a, str) and a for a in batched)
    # left padding must not change greedy results; allow one numeric near-tie to flip
    assert sum(b == s for b, s in zip(batched, single, strict=True)) >= 2
    assert all(b[:10] == s[:10] for b, s in zip(batched, single, strict=True))


def test_answers_come_back_in_input_order(batched_and_single):
    _, batched, _, _ = batched_and_single
    assert "paris" in batched[0].lower()  # the capital question is first


def test_answers_do_not_contain_the_prompt(batched_and_single):
    prompts, batched, _, _ = batched_and_single
    for prompt, answer, question in zip(prompts, batched, QUESTIONS, strict=True):
        assert question not in answer
        assert prompt not in answer


def test_padding_side_and_training_mode_are_restored(batched_and_single):
    _, _, _, (padding_side, training) = batched_and_single
    assert padding_side == "right"
    assert training is True


def test_sampling_is_repeatable_with_a_seed(tiny_chat):
    model, tokenizer = tiny_chat
    prompts = _prompts(tokenizer)[:1]
    first = sample_answers(model, tokenizer, prompts, max_new_tokens=6, seed=7, progress=False)
    again = sample_answers(model, tokenizer, prompts, max_new_tokens=6, seed=7, progress=False)
    assert first == again


def test_bad_arguments_raise(tiny_chat):
    model, tokenizer = tiny_chat
    assert generate_answers(model, tokenizer, [], progress=False) == []
    with pytest.raises(ValueError, match="list of strings"):
        generate_answers(model, tokenizer, "What is the capital of France?")
    with pytest.raises(ValueError, match="batch_size"):
        generate_answers(model, tokenizer, ["hi"], batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        generate_answers(model, tokenizer, ["hi"], do_sample=True, temperature=0.0)
