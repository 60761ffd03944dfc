"""The answer cache: the same model and prompts read back, anything else generated afresh."""

from __future__ import annotations

import json

import pytest
import torch

from course_utils import answer_cache
from course_utils.evaluation import generate_answers

PROMPTS = ["<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def tiny_chat():
    from course_utils.models import load_causal_lm

    return load_causal_lm("packaged:smollm2-135m-instruct", dtype=torch.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The cache on, in an empty folder; counts the model's generate calls."""
    monkeypatch.setenv(answer_cache.ENV_VAR, str(tmp_path))
    return tmp_path


@pytest.fixture
def generate_calls(tiny_chat, monkeypatch):
    model, _ = tiny_chat
    calls = []
    original = model.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counting)
    return calls


def test_the_same_model_and_prompts_are_read_back_with_the_same_answers(
        tiny_chat, cache, generate_calls):
    model, tokenizer = tiny_chat
    first = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    assert generate_calls and len(list(cache.glob("*.json"))) == 1
    generate_calls.clear()
    second = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    assert second == first and not generate_calls
    fresh = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False,
                             cache=False)
    assert fresh == first and generate_calls  # what the cache returned is what the model says


def test_other_prompts_options_or_weights_are_generated_again(tiny_chat, cache, generate_calls):
    model, tokenizer = tiny_chat
    generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    for changed in (dict(prompts=PROMPTS[:1]), dict(max_new_tokens=7), dict(batch_size=1)):
        generate_calls.clear()
        generate_answers(model, tokenizer, **{"prompts": PROMPTS, "max_new_tokens": 6,
                                              "progress": False, **changed})
        assert generate_calls, f"{changed} was answered from the cache"
    before = answer_cache.weights_fingerprint(model)
    weight = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        weight[0, 0] += 1e-3  # one weight of 135 million, moved a little
    try:
        assert answer_cache.weights_fingerprint(model) != before
        generate_calls.clear()
        generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
        assert generate_calls, "a changed model was answered from the cache"
    finally:
        with torch.no_grad():
            weight[0, 0] -= 1e-3


def test_sampling_is_never_cached(tiny_chat, cache, generate_calls):
    model, tokenizer = tiny_chat
    for _ in range(2):
        generate_answers(model, tokenizer, PROMPTS, max_new_tokens=4, progress=False,
                         do_sample=True, temperature=0.8, seed=1)
    assert len(generate_calls) == 2 and not list(cache.glob("*.json"))


@pytest.mark.parametrize("damage", ["not json {", '{"key": 1}', "", "\x00\x01"])
def test_a_damaged_entry_is_set_aside_and_generated_again(tiny_chat, cache, generate_calls,
                                                          damage):
    model, tokenizer = tiny_chat
    first = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    (entry,) = cache.glob("*.json")
    entry.write_text(damage, encoding="utf-8")
    generate_calls.clear()
    with pytest.warns(UserWarning, match="set aside"):
        again = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    assert again == first and generate_calls
    assert (cache / (entry.stem + ".damaged")).is_file()
    assert json.loads(entry.read_text())["texts"]  # rewritten whole


def test_an_entry_with_the_wrong_number_of_answers_is_not_trusted(tiny_chat, cache):
    model, tokenizer = tiny_chat
    generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    (entry,) = cache.glob("*.json")
    stored = json.loads(entry.read_text())
    stored["texts"], stored["cut"] = stored["texts"][:1], stored["cut"][:1]
    entry.write_text(json.dumps(stored), encoding="utf-8")
    with pytest.warns(UserWarning, match="set aside"):
        answers = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, progress=False)
    assert len(answers) == len(PROMPTS)


def test_off_and_an_unwritable_folder_only_cost_time(tiny_chat, tmp_path, monkeypatch):
    model, tokenizer = tiny_chat
    monkeypatch.setenv(answer_cache.ENV_VAR, "off")
    assert answer_cache.cache_folder() is None
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(answer_cache.ENV_VAR, str(blocker / "answers"))
    with pytest.warns(UserWarning, match="could not be cached.*COURSE_ANSWER_CACHE"):
        answers = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=4, progress=False)
    assert len(answers) == len(PROMPTS)


def test_the_fingerprint_covers_bytes_and_dtypes():
    first = torch.nn.Linear(3, 2)
    second = torch.nn.Linear(3, 2)
    second.load_state_dict(first.state_dict())
    assert answer_cache.weights_fingerprint(first) == answer_cache.weights_fingerprint(second)
    with torch.no_grad():
        first.bias[0] = torch.nextafter(first.bias[0], torch.tensor(1.0))  # one ulp
    assert answer_cache.weights_fingerprint(first) != answer_cache.weights_fingerprint(second)
    first.load_state_dict(second.state_dict())
    assert answer_cache.weights_fingerprint(first) != \
        answer_cache.weights_fingerprint(second.to(torch.bfloat16))
