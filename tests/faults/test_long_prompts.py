"""Prompts longer than the model's context: checked before generating, with one message that
names the prompt, its length, the limit and the setting to change; inside a batch evaluation a
warning per prompt and a count in the scores instead of a silent empty answer. Prompts at the
limit still run.

A one-layer model with a 64-position context (random weights, MiniLM's tokenizer) makes the
limit small and the test fast."""

import time

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from course_utils import evaluation
from course_utils.config import TINY
from course_utils.evaluation import (
    PromptTooLongError,
    answer_and_score,
    context_limit,
    generate_answers,
    generate_with_thinking_budget,
)
from course_utils.models import resolve_model_path

LIMIT = 64
NEW = 8


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(TINY.embedding_model))
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # no BERT segment ids
    return tokenizer


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=LIMIT, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def _prompt(tokenizer, tokens: int, word: str = "word") -> str:
    """A prompt of exactly `tokens` tokens."""
    text = " ".join([word] * tokens)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    prompt = tokenizer.decode(ids)
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == tokens
    return prompt


def test_the_limit_is_the_smaller_of_config_and_tokenizer(model, tokenizer):
    assert tokenizer.model_max_length == 512 and context_limit(model, tokenizer) == LIMIT

    class Unlimited:  # transformers' "no limit" sentinel is ignored
        model_max_length = int(1e30)

    assert context_limit(model, Unlimited()) == LIMIT


def test_a_prompt_at_the_limit_runs_one_past_it_is_refused(model, tokenizer):
    fits = _prompt(tokenizer, LIMIT - NEW)
    assert len(generate_answers(model, tokenizer, [fits], max_new_tokens=NEW,
                                progress=False)) == 1
    past = _prompt(tokenizer, LIMIT - NEW + 1)
    with pytest.raises(PromptTooLongError) as error:
        generate_answers(model, tokenizer, [fits, past], max_new_tokens=NEW, progress=False,
                         desc="closed book")
    message = str(error.value)
    assert f"closed book: prompt 1 (of 2) is {LIMIT - NEW + 1} tokens" in message
    assert f"with max_new_tokens={NEW} it needs {LIMIT + 1} positions" in message
    assert f"takes at most {LIMIT} (config.max_position_embeddings" in message
    assert "TOP_K in notebook 05" in message and "a smaller max_new_tokens" in message
    assert "It starts 'word word" in message


@pytest.mark.parametrize("prompt", ["日本語の文章" * 2000, "naïve café " * 20_000])
def test_a_huge_prompt_is_refused_before_generating(model, tokenizer, monkeypatch, prompt):
    def never(*args, **kwargs):
        raise AssertionError("generate must not run for a prompt that cannot fit")

    monkeypatch.setattr(model, "generate", never)
    start = time.perf_counter()
    with pytest.raises(PromptTooLongError, match=r"prompt 0 \(of 1\) is \d+ tokens"):
        generate_answers(model, tokenizer, [prompt], max_new_tokens=NEW, progress=False)
    assert time.perf_counter() - start < 10


def test_the_thinking_budget_counts_too(model, tokenizer):
    # fits without new tokens, not with the thinking budget: refused, naming the budget
    prompt = _prompt(tokenizer, LIMIT - 4)
    with pytest.raises(PromptTooLongError, match=f"max_new_tokens={NEW} it needs {LIMIT + 4}"):
        generate_with_thinking_budget(model, tokenizer, [prompt], thinking_budget=NEW,
                                      answer_budget=4, progress=False)


def test_a_batch_evaluation_warns_per_prompt_and_counts_them(model, tokenizer, monkeypatch):
    # BERTScore is replaced by a stand-in: what is checked here is which answers were attempted
    def stand_in(predictions, references, model_id, num_layers):
        n = len(predictions)
        return {"precision": 0.5, "recall": 0.5, "f1": 0.5, "rescaled": False,
                "model": model_id, "num_layers": num_layers, "per_example_f1": [0.5] * n}

    monkeypatch.setattr(evaluation, "bertscore", stand_in)
    generated_for = []
    real = evaluation.generate_answers

    def spy(model_, tokenizer_, prompts, **kwargs):
        generated_for.extend(prompts)
        return real(model_, tokenizer_, prompts, progress=False, **kwargs)

    monkeypatch.setattr(evaluation, "generate_answers", spy)
    prompts = [_prompt(tokenizer, 10), _prompt(tokenizer, LIMIT, "long"),
               _prompt(tokenizer, 12), _prompt(tokenizer, 2 * LIMIT, "longer")]
    with pytest.warns(UserWarning) as caught:
        answers, scores = answer_and_score(model, tokenizer, prompts, ["a", "b", "c", "d"],
                                           TINY, max_new_tokens=NEW, desc="base")
    too_long = [str(w.message) for w in caught if "scored as an empty answer" in str(w.message)]
    assert len(too_long) == 2
    assert f"base: prompt 1 (of 4) is {LIMIT} tokens" in too_long[0]
    assert f"base: prompt 3 (of 4) is {2 * LIMIT} tokens" in too_long[1]
    assert scores["too_long"] == {"count": 2, "rows": [1, 3], "limit": LIMIT}
    assert generated_for == [prompts[0], prompts[2]]  # only the prompts that fit ran
    assert answers[1] == answers[3] == "" and len(answers) == 4
    assert scores["n"] == 4 and scores["exact_match"] == 0.0
