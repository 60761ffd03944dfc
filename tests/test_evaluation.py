"""How answers are produced and judged: reasoning removal on recorded outputs, batched greedy
generation on the tiny SmolLM2, the thinking budget with a scripted model (and SmolLM2),
metrics on hand-checked strings, BERTScore on the packaged MiniLM, perplexity on SmolLM2, and
the calls notebooks 02-04 make to answer and score."""

from __future__ import annotations

import math
import random
import socket
from types import SimpleNamespace

import pytest
import torch

from course_utils import evaluation
from course_utils.config import TINY
from course_utils.evaluation import (
    SCORE_COLUMNS,
    answer_and_score,
    bertscore,
    bertscore_baseline_file,
    compare_scores,
    evaluate_answers,
    exact_match,
    generate_answers,
    generate_with_thinking_budget,
    logits_of,
    mean_token_nll,
    normalize_answer,
    perplexity_from_loss,
    sample_answers,
    still_thinking,
    strip_reasoning,
    token_f1,
)
from course_utils.rag import answer_fields

MINILM = "packaged:all-minilm-l6-v2"


@pytest.fixture(scope="module")
def tiny_chat():
    """(model, tokenizer) of the packaged SmolLM2 in fp32, shared by every test here."""
    from course_utils.models import load_causal_lm

    return load_causal_lm("packaged:smollm2-135m-instruct", dtype=torch.float32)


# ---------------------------------------------------------------- exact match and token F1


def test_normalize_answer_follows_squad():
    assert normalize_answer("  The Cat, an  Owl & a dog!  ") == "cat owl dog"
    assert normalize_answer("No Answer Present.") == "no answer present"


def test_identical_strings_score_one():
    assert exact_match("about 24 hours", "about 24 hours") == 1.0
    assert token_f1("about 24 hours", "about 24 hours") == 1.0


def test_disjoint_strings_score_zero():
    assert exact_match("Paris", "Berlin") == 0.0
    assert token_f1("Paris France", "Berlin Germany") == 0.0


def test_normalization_makes_case_punctuation_and_articles_irrelevant():
    assert exact_match("The Cat!", "cat") == 1.0


def test_partial_overlap_f1_matches_hand_computation():
    # normalized: [quick, brown, fox] vs [quick, brown, dog, jumps]: 2 shared words
    precision, recall = 2 / 3, 2 / 4
    expected = 2 * precision * recall / (precision + recall)  # = 4/7
    assert token_f1("the quick brown fox", "quick brown dog jumps") == pytest.approx(expected)
    assert 0 < expected < 1
    assert exact_match("the quick brown fox", "quick brown dog jumps") == 0.0


def test_repeated_words_count_once_per_match():
    # "paris paris" shares only one "paris" with "paris": P = 1/2, R = 1
    assert token_f1("paris paris", "paris") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_multiple_references_take_the_best():
    assert exact_match("Paris", ["London", "paris."]) == 1.0
    assert token_f1("quick brown fox", ["slow dog", "quick brown fox"]) == 1.0
    assert token_f1("quick fox", ["slow dog", "quick brown fox"]) == pytest.approx(0.8)


def test_empty_strings():
    assert exact_match("", "") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "Paris") == 0.0
    with pytest.raises(ValueError, match="non-empty list"):
        token_f1("Paris", [])


# ---------------------------------------------------------------- BERTScore and evaluate_answers

PREDICTIONS = ["The capital of France is Paris.", "A day on Mars lasts about 24 hours 37 minutes.",
               "Water boils at 100 degrees Celsius at sea level."]
UNRELATED = ["Bananas are rich in potassium.", "The violin has four strings.",
             "Tokyo hosted the Olympic Games."]
KEYS = {"n", "exact_match", "token_f1", "bertscore_precision", "bertscore_recall",
        "bertscore_f1", "bertscore_rescaled", "bertscore_model"}


def test_evaluate_answers_returns_every_key_and_ranks_identical_above_unrelated():
    same = evaluate_answers(PREDICTIONS, PREDICTIONS, profile=TINY)
    other = evaluate_answers(PREDICTIONS, UNRELATED, profile=TINY)
    assert KEYS <= set(same)
    assert same["n"] == 3
    assert same["exact_match"] == 1.0 and same["token_f1"] == 1.0
    assert other["exact_match"] == 0.0
    assert same["bertscore_f1"] == pytest.approx(1.0, abs=1e-4)
    assert same["bertscore_f1"] > other["bertscore_f1"]
    assert same["bertscore_model"] == TINY.bertscore_model
    assert set(same["per_example"]) == {"exact_match", "token_f1", "bertscore_f1"}
    assert len(same["per_example"]["token_f1"]) == 3


def test_empty_prediction_scores_zero_instead_of_crashing():
    # bert-score 0.3.13 crashes on "" with transformers 5; the wrapper scores it as 0
    result = evaluate_answers(["", PREDICTIONS[0]], [PREDICTIONS[0], [PREDICTIONS[0], ""]],
                              bertscore_model=MINILM, bertscore_num_layers=4)
    assert result["per_example"]["bertscore_f1"][0] == 0.0
    assert result["per_example"]["bertscore_f1"][1] == pytest.approx(1.0, abs=1e-4)


def test_minilm_bertscore_runs_without_network_and_is_not_rescaled(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"BERTScore tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    evaluation._scorer.cache_clear()  # load the encoder again, under the network block
    result = bertscore(PREDICTIONS, UNRELATED, MINILM, num_layers=4)
    assert result["rescaled"] is False
    assert result["model"] == MINILM
    assert 0 < result["f1"] < 1


def test_scorer_is_cached_per_model_and_layer():
    assert evaluation._scorer(MINILM, 4) is evaluation._scorer(MINILM, 4)


def test_baselines_exist_for_roberta_large_only_among_course_models():
    assert bertscore_baseline_file("roberta-large") is not None
    assert bertscore_baseline_file(MINILM) is None


def test_rescaling_maps_identical_to_one_and_empty_to_below_zero(tmp_path):
    from bert_score import BERTScorer

    from course_utils.models import resolve_model_path

    baseline = tmp_path / "baseline.tsv"
    baseline.write_text("LAYER,P,R,F\n" + "".join(f"{i},0.6,0.6,0.6\n" for i in range(7)))
    scorer = BERTScorer(model_type=resolve_model_path(MINILM), num_layers=4, lang="en",
                        rescale_with_baseline=True, baseline_path=str(baseline))
    scores = evaluation._score_pairs(scorer, [PREDICTIONS[0], ""], [[PREDICTIONS[0]], ["Paris"]])
    assert scores[0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    assert scores[1].tolist() == pytest.approx([-1.5, -1.5, -1.5])  # (0 - 0.6) / (1 - 0.6)


def test_folder_model_without_layer_is_refused():
    with pytest.raises(ValueError, match="num_layers"):
        bertscore(["a"], ["b"], MINILM, num_layers=None)


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        (["a", "b"], ["a"], "2 predictions but 1 references"),
        ([], [], "empty"),
        ("abc", ["a", "b", "c"], "single string"),
        ([None], ["a"], "not a string"),
    ],
)
def test_bad_inputs_raise_clear_errors(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        evaluate_answers(predictions, references, profile=TINY)


def test_evaluate_answers_needs_a_bertscore_model():
    with pytest.raises(ValueError, match="profile= or bertscore_model="):
        evaluate_answers(["a"], ["a"])


# ---------------------------------------------------------------- perplexity


def test_perplexity_from_loss():
    assert perplexity_from_loss(0.0) == 1.0
    assert perplexity_from_loss(math.log(10)) == pytest.approx(10.0)
    assert perplexity_from_loss(1e6) == math.inf


def _rows(tokenizer, texts):
    return [{"input_ids": tokenizer(t)["input_ids"]} for t in texts]


def _make_collator(pad_id):
    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, :len(r["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": ids.masked_fill(mask == 0, -100)}
    return collate


SENTENCES = ["The sun rises in the east and sets in the west.",
             "Cats like to sleep in warm places.",
             "Paris is the capital city of France, famous for the Eiffel Tower."]


def perplexity(model, rows, collator) -> float:
    return perplexity_from_loss(mean_token_nll(model, rows, collator))


def test_perplexity_is_finite_above_one_and_restores_training_mode(tiny_chat):
    model, tokenizer = tiny_chat
    model.train()
    value = perplexity(model, _rows(tokenizer, SENTENCES), _make_collator(tokenizer.pad_token_id))
    assert model.training
    model.eval()
    assert math.isfinite(value) and value > 1


def test_mean_nll_matches_model_loss_and_ignores_padding(tiny_chat):
    model, tokenizer = tiny_chat
    collate = _make_collator(tokenizer.pad_token_id)
    rows = _rows(tokenizer, SENTENCES)
    one = collate(rows[:1])
    with torch.inference_mode():
        expected = model(**one).loss.item()  # the model's own shifted mean
    assert mean_token_nll(model, rows[:1], collate) == pytest.approx(expected, rel=1e-4)
    batched = mean_token_nll(model, rows, collate, batch_size=3)
    single = mean_token_nll(model, rows, collate, batch_size=1)
    assert batched == pytest.approx(single, rel=1e-3)


def test_repeated_text_is_less_perplexing_than_shuffled_words(tiny_chat):
    model, tokenizer = tiny_chat
    repeated = " ".join(["The cat sat on the mat and looked at the door."] * 6)
    words = repeated.split()
    random.Random(0).shuffle(words)
    collate = _make_collator(tokenizer.pad_token_id)
    low = perplexity(model, _rows(tokenizer, [repeated]), collate)
    high = perplexity(model, _rows(tokenizer, [" ".join(words)]), collate)
    assert low < high


def test_all_masked_labels_raise(tiny_chat):
    model, tokenizer = tiny_chat

    def collate(rows):
        batch = _make_collator(tokenizer.pad_token_id)(rows)
        batch["labels"][:] = -100
        return batch

    with pytest.raises(ValueError, match="no label tokens"):
        mean_token_nll(model, _rows(tokenizer, SENTENCES[:1]), collate)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        mean_token_nll(model, _rows(tokenizer, SENTENCES[:1]), collate, batch_size=0)


# ---------------------------------------------------------------- generation



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


# ---------------------------------------------------------------- the thinking budget


class ScriptedModel:
    """Stands in for a causal LM: `generate` continues each row with a scripted text.

    script(question) is the whole output the "model" writes for a question (the question is the
    prompt's last line); a row whose prompt already holds part of that output gets the rest,
    and a row whose thoughts were closed for it (its prompt then holds more than a part of that
    output) gets forced_answer(question). Every row ends with the end token unless max_new_tokens cuts it;
    rows are padded like real generate output. Each call is recorded.
    """

    def __init__(self, tokenizer, script, forced_answer):
        self.tokenizer, self.script, self.forced_answer = tokenizer, script, forced_answer
        self.training, self.device, self.calls = False, torch.device("cpu"), []
        self.generation_config = SimpleNamespace(eos_token_id=tokenizer.eos_token_id)

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def continuation(self, prompt: str) -> str:
        base, _, written = prompt.partition(THINKING)  # the opening tag splits prompt / output
        question = base.rstrip().splitlines()[-1]
        full = self.script(question)
        if full.startswith(written):                       # the first pass, or a continuation
            return full[len(written):]
        assert evaluation.FORCE_CLOSE in written, written  # else only a forced close is allowed
        return self.forced_answer(question)

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **options):
        eos = self.tokenizer.eos_token_id
        prompts = [self.tokenizer.decode(ids[mask.bool()])
                   for ids, mask in zip(input_ids, attention_mask, strict=True)]
        rows = [(self.tokenizer(self.continuation(p), add_special_tokens=False)["input_ids"]
                 + [eos])[:max_new_tokens] for p in prompts]
        width = max(len(row) for row in rows)
        self.calls.append({"prompts": prompts, "max_new_tokens": max_new_tokens,
                           "options": options})
        new = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows])
        return torch.cat([input_ids, new], dim=1)


THINKING = "<think>\n"  # how DeepSeek-R1's chat template ends its prompts
LONG_THOUGHTS = "Let me think about this. " * 20          # never closes within the budget
SCRIPT = {
    "quick": "Easy: it is Paris.\n</think>\n\nParis [1]",
    "endless": LONG_THOUGHTS,
    "late": "Short thoughts.\n</think>\n\nThe answer is a rather long sentence that the "
            "budget cuts off before it ends [2]",
}


def _script(question):
    return SCRIPT[question]


@pytest.fixture(scope="module")
def tokenizer(tiny_chat):
    return tiny_chat[1]


def _thinking_prompts(names):
    return [f"User asks:\n{name}\n{THINKING}" for name in names]


def test_still_thinking_reads_the_prompt_and_the_output():
    assert still_thinking("prompt <think>\n", "I wonder")
    assert still_thinking("prompt", "<think>I wonder")
    assert not still_thinking("prompt <think>\n", "I wonder</think> Paris")
    assert still_thinking("prompt", "<think>a</think> b <think>again")
    assert not still_thinking("prompt", "Paris")  # a model that does not think


def test_thinking_budget_forces_only_the_rows_still_thinking(tokenizer):
    model = ScriptedModel(tokenizer, _script, lambda question: " 42 [1]")
    prompts = _thinking_prompts(["quick", "endless", "late"])
    quick_tokens = len(tokenizer(SCRIPT["quick"])["input_ids"])
    budget = quick_tokens + 4                       # "quick" ends in time, the others do not
    outputs, forced = generate_with_thinking_budget(
        model, tokenizer, prompts, thinking_budget=budget, answer_budget=16, batch_size=3,
        answer_batch_size=2, answer_lead="Final answer:", progress=False, do_sample=True,
        temperature=0.6, top_p=0.95, seed=0)
    assert forced == [False, True, False]
    assert outputs[0] == SCRIPT["quick"]                       # one pass was enough
    assert outputs[2] == SCRIPT["late"]                        # cut inside its answer: continued
    thoughts, closing, answer = outputs[1].partition(evaluation.FORCE_CLOSE)
    assert closing and LONG_THOUGHTS.startswith(thoughts)      # the thoughts so far, then </think>
    assert answer == "Final answer: 42 [1]"
    first, second = model.calls                                # two batched passes, no more
    assert first["max_new_tokens"] == budget and len(first["prompts"]) == 3
    assert second["max_new_tokens"] == 16
    forced_prompt, continued_prompt = sorted(second["prompts"], key=lambda p: "late" in p)
    assert forced_prompt == prompts[1] + thoughts + closing + "Final answer:"
    written = continued_prompt.removeprefix(prompts[2])        # the late row's first pass
    assert "</think>" in written and SCRIPT["late"].startswith(written)
    for call in model.calls:                                   # the model card's sampling
        assert call["options"]["do_sample"] and call["options"]["temperature"] == 0.6
        assert call["options"]["top_p"] == 0.95
    # what notebook 05 scores: the forced answer, cleaned like any other
    fields = answer_fields(outputs[1], [{"id": "a", "url": "u"}], prompts[1])
    assert fields["short_answer"] == "42" and fields["sources"] == [1]
    assert fields["reasoning"].startswith("Let me think")
    assert answer_fields(outputs[2], [{"id": "a", "url": "u"}] * 2, prompts[2])[
        "short_answer"] == "a rather long sentence that the budget cuts off before it ends"


def test_forced_rows_are_batched_by_the_answer_batch_size(tokenizer):
    model = ScriptedModel(tokenizer, _script, lambda question: " 42")
    outputs, forced = generate_with_thinking_budget(
        model, tokenizer, _thinking_prompts(["endless"] * 5 + ["quick"]), thinking_budget=24,
        answer_budget=4, batch_size=6, answer_batch_size=2, progress=False)
    assert forced == [True] * 5 + [False]
    assert [len(call["prompts"]) for call in model.calls] == [6, 2, 2, 1]
    assert all(o.endswith("</think>\n\n 42") for o in outputs[:5])


def test_a_model_that_does_not_think_gets_one_pass(tokenizer):
    answers = {"capital": "Paris", "long": "a very long answer " * 10}
    model = ScriptedModel(tokenizer, lambda q: answers[q], lambda q: pytest.fail("forced"))
    prompts = ["Question:\ncapital\n", "Question:\nlong\n"]
    outputs, forced = generate_with_thinking_budget(model, tokenizer, prompts,
                                                    thinking_budget=8, answer_budget=8,
                                                    progress=False)
    assert forced == [False, False] and len(model.calls) == 1   # cut, but never continued
    assert outputs[0] == "Paris" and answers["long"].startswith(outputs[1])
    assert generate_with_thinking_budget(model, tokenizer, [], 8, 8) == ([], [])
    with pytest.raises(ValueError, match="answer_budget must be positive"):
        generate_with_thinking_budget(model, tokenizer, prompts, 8, 0)
    with pytest.raises(ValueError, match="thinking_budget must be positive"):
        generate_with_thinking_budget(model, tokenizer, prompts, 0, 8)


def test_thinking_budget_on_a_real_model(tiny_chat):
    """SmolLM2 never writes <think>: its outputs are generate_answers' own. Opened for it in
    the prompt, thoughts of 4 tokens never close, so every row is forced and still answers."""
    model, tokenizer = tiny_chat
    prompts = _prompts(tokenizer)[:2]
    outputs, forced = generate_with_thinking_budget(model, tokenizer, prompts,
                                                    thinking_budget=12, answer_budget=6,
                                                    batch_size=2, progress=False)
    assert forced == [False, False]
    assert outputs == generate_answers(model, tokenizer, prompts, max_new_tokens=12,
                                       batch_size=2, progress=False, remove_reasoning=False)
    opened = [p + THINKING for p in prompts]
    outputs, forced = generate_with_thinking_budget(model, tokenizer, opened, thinking_budget=4,
                                                    answer_budget=6, answer_lead="Final answer:",
                                                    progress=False)
    assert forced == [True, True]
    for output in outputs:
        thoughts, closing, answer = output.partition(evaluation.FORCE_CLOSE)
        assert closing and thoughts and answer.startswith("Final answer:")


# ---------------------------------------------------------------- what notebooks 02-04 call


def test_answer_and_score_scores_the_greedy_answers(tiny_chat):
    model, tokenizer = tiny_chat
    prompts = _prompts(tokenizer)[:2]
    references = ["Paris", "Because of Rayleigh scattering."]
    answers, scores = answer_and_score(model, tokenizer, prompts, references, TINY,
                                       max_new_tokens=8, batch_size=2, desc="test")
    assert answers == generate_answers(model, tokenizer, prompts, max_new_tokens=8,
                                       progress=False)
    assert scores["n"] == 2
    assert scores["per_example"]["token_f1"] == [token_f1(a, r)
                                                 for a, r in zip(answers, references, strict=True)]


def test_compare_scores_tables_the_change():
    before = {m: 0.2 for m in SCORE_COLUMNS}
    after = {**{m: 0.5 for m in SCORE_COLUMNS}, "n": 40, "bertscore_model": "x"}
    table = compare_scores(before, after, names=("base", "LoRA"))
    assert list(table.index) == list(SCORE_COLUMNS)
    assert list(table.columns) == ["base", "LoRA", "change"]
    assert table["change"].tolist() == pytest.approx([0.3] * len(SCORE_COLUMNS))


def test_logits_of_runs_in_eval_mode_and_restores_the_mode(tiny_chat):
    model, tokenizer = tiny_chat
    batch = tokenizer(["The sky is", "Paris is the capital of"], return_tensors="pt",
                      padding=True)
    batch["labels"] = batch["input_ids"].clone()  # ignored: logits only
    model.train()
    logits = logits_of(model, batch)
    assert model.training
    model.eval()
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert logits.shape == (*batch["input_ids"].shape, model.config.vocab_size)
    torch.testing.assert_close(logits, logits_of(model, batch))  # no dropout: repeatable
