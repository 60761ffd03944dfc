"""Prompts and training rows (course_utils.data), on the real SmolLM2 tokenizer and a copy
without chat template."""

import copy

import pytest
from datasets import Dataset, DatasetDict

from course_utils import data
from course_utils.data import MSMARCO_FEATURES
from course_utils.models import load_tokenizer

QUESTION = "how long is a day on mars"
CONTEXT = "Mars is the fourth planet from the Sun. A day on Mars lasts about 24 hours and 37 minutes."
ANSWER = "about 24 hours and 37 minutes"


@pytest.fixture(scope="module")
def chat():
    return load_tokenizer("packaged:smollm2-135m-instruct")


@pytest.fixture(scope="module")
def plain(chat):
    tokenizer = copy.deepcopy(chat)
    tokenizer.chat_template = None
    return tokenizer


def labelled(tokenizer, row):
    """Token ids that carry a label, checking they match input_ids at the same positions."""
    positions = [i for i, label in enumerate(row["labels"]) if label != -100]
    assert positions == list(range(positions[0], len(row["labels"])))  # one run, at the end
    assert [row["input_ids"][i] for i in positions] == [row["labels"][i] for i in positions]
    return [row["labels"][i] for i in positions]


def test_smollm2_ends_replies_with_im_end(chat):
    assert chat.eos_token == "<|im_end|>" and chat.pad_token_id == chat.eos_token_id


@pytest.mark.parametrize("which, spoken", [("chat", ANSWER), ("plain", " " + ANSWER)])
def test_only_answer_and_end_token_carry_labels(chat, plain, which, spoken):
    tokenizer = chat if which == "chat" else plain
    row = data.tokenize_qa(tokenizer, QUESTION, CONTEXT, ANSWER, max_length=256)
    ids = labelled(tokenizer, row)
    assert ids[-1] == tokenizer.eos_token_id  # the end token keeps its label: the model learns to stop
    assert tokenizer.decode(ids[:-1]) == spoken
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    prompt = data.qa_prompt(tokenizer, QUESTION, CONTEXT)
    n_prompt = len(row["labels"]) - len(ids)
    assert row["input_ids"][:n_prompt] == data.prompt_token_ids(tokenizer, prompt)


def test_chat_and_plain_templates(chat, plain):
    chat_prompt = data.qa_prompt(chat, QUESTION, CONTEXT)
    assert chat_prompt.startswith("<|im_start|>system\n" + data.SYSTEM_PROMPT)
    assert f"Question: {QUESTION}\nContext: {CONTEXT}" in chat_prompt
    assert chat_prompt.endswith("<|im_start|>assistant\n")
    assert data.qa_prompt(plain, QUESTION, CONTEXT) == \
        f"{data.SYSTEM_PROMPT}\n\nQuestion: {QUESTION}\nContext: {CONTEXT}\nAnswer:"
    assert "No Answer Present." in data.SYSTEM_PROMPT


def test_collator_pads_each_batch_to_its_longest_row(chat):
    rows = [data.tokenize_qa(chat, QUESTION, CONTEXT[:n], ANSWER, max_length=256)
            for n in (20, 90, 50)]
    chat.padding_side = "left"  # as a generation cell leaves it; training still pads right
    try:
        batch = data.qa_collator(chat)(rows)
    finally:
        chat.padding_side = "right"
    longest = max(len(row["input_ids"]) for row in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, longest) and longest < 256
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["labels"][i, :n].tolist() == row["labels"]
        assert batch["labels"][i, n:].tolist() == [-100] * (longest - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)


def test_the_selected_passage_is_the_context(chat):
    row = {"query": QUESTION, "answers": [ANSWER], "query_id": 1, "query_type": "numeric",
           "wellFormedAnswers": [],
           "passages": {"is_selected": [0, 1, 0],
                        "passage_text": ["Venus is hot and cloudy.", CONTEXT,
                                         "Jupiter is the largest planet."],
                        "url": ["u0", "u1", "u2"]}}
    split = Dataset.from_list([row], features=MSMARCO_FEATURES)
    train = data.tokenize_qa_split(chat, split, max_length=256)
    assert train.column_names == ["input_ids", "attention_mask", "labels"]
    text = chat.decode(train[0]["input_ids"])
    assert CONTEXT in text and "Venus" not in text and "Jupiter" not in text
    assert chat.decode(labelled(chat, train[0])) == ANSWER + "<|im_end|>"


@pytest.mark.parametrize("which", ["chat", "plain"])
def test_truncation_cuts_the_context_and_keeps_the_answer(chat, plain, which):
    tokenizer = chat if which == "chat" else plain
    long_context = CONTEXT + " " + "Mars has red dust and thin air. " * 100
    row = data.tokenize_qa(tokenizer, QUESTION, long_context, ANSWER, max_length=120)
    assert len(row["input_ids"]) <= 120
    assert tokenizer.decode(labelled(tokenizer, row)[:-1]).strip() == ANSWER
    text = tokenizer.decode(row["input_ids"])
    assert QUESTION in text and "Mars is the fourth planet" in text
    with pytest.raises(ValueError, match="max_length=20 is too small"):
        data.tokenize_qa(tokenizer, QUESTION, long_context, ANSWER, max_length=20)


def test_group_texts_makes_equal_blocks(chat):
    texts = [f"Passage number {i} talks about the planets of the solar system." for i in range(20)]
    blocks = data.group_texts(chat, texts, block_size=32)
    total = sum(len(chat(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert len(blocks) == total // 32
    assert all(len(ids) == 32 for ids in blocks["input_ids"])
    assert blocks["labels"] == blocks["input_ids"]
    assert chat.eos_token_id in blocks["input_ids"][0]  # documents are separated by the end token
    with pytest.raises(ValueError, match="less than one block"):
        data.group_texts(chat, texts[:1], block_size=1024)


SOURCES = [{"text": "Mars has two moons."}, {"text": CONTEXT}]


def test_one_chat_template_helper_for_every_prompt(chat, plain):
    as_system = data.chat_prompt(chat, "Be brief.", "Hi?")
    assert as_system.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert as_system.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    in_user_turn = data.chat_prompt(chat, "Be brief.", "Hi?", system=False)
    assert "<|im_start|>user\nBe brief.\n\nHi?<|im_end|>" in in_user_turn
    assert data.chat_prompt(plain, "Be brief.", "Hi?") == "Be brief.\n\nHi?\nAnswer:"


def test_rag_prompt_numbers_the_sources(chat):
    assert data.format_sources(SOURCES) == f"[1] Mars has two moons.\n\n[2] {CONTEXT}"
    prompt = data.rag_prompt(chat, QUESTION, SOURCES)
    assert prompt.startswith("<|im_start|>system\n" + data.RAG_INSTRUCTION)
    assert f"Sources:\n[1] Mars has two moons.\n\n[2] {CONTEXT}\n\nQuestion: {QUESTION}" in prompt
    assert data.NO_ANSWER in data.RAG_INSTRUCTION and "[1]" in data.RAG_INSTRUCTION
    no_system = data.rag_prompt(chat, QUESTION, SOURCES, system=False)
    assert "<|im_start|>user\n" + data.RAG_INSTRUCTION in no_system  # DeepSeek-R1's way


def test_closed_book_prompt_has_no_sources(chat):
    prompt = data.closed_book_prompt(chat, QUESTION)
    assert data.CLOSED_BOOK_INSTRUCTION in prompt and f"Question: {QUESTION}" in prompt
    assert "Sources" not in prompt and CONTEXT not in prompt


def test_closed_book_may_say_it_does_not_know_like_rag(chat):
    """Like with like: both prompts offer the same reply for a question without an answer."""
    for instruction in (data.CLOSED_BOOK_INSTRUCTION, data.RAG_INSTRUCTION):
        assert instruction.endswith("reply exactly: " + data.NO_ANSWER)
    assert data.NO_ANSWER in data.closed_book_prompt(chat, QUESTION, system=False)


def msmarco_row(query: str, answer: str, gold: str) -> dict:
    return {"query": query, "answers": [answer], "query_id": 1, "query_type": "entity",
            "wellFormedAnswers": [], "passages": {"is_selected": [0, 1],
                                                  "passage_text": [f"other {query}", gold],
                                                  "url": ["u0", "u1"]}}


EXAMPLE_ROWS = [
    msmarco_row("what is the capital of france", "Paris", "Paris is the capital of France."),
    msmarco_row("who wrote hamlet", "William Shakespeare",
                "Hamlet is a tragedy written by William Shakespeare around 1600 in London."),
    msmarco_row("what colour is a unicorn's wallet", data.NO_ANSWER, "Unicorns are myths."),
    msmarco_row("how tall is everest", "8,849 metres",
                "Mount Everest is 8,849 metres tall, the highest mountain above sea level on "
                "Earth, on the border of Nepal and China."),
]


def test_few_shot_examples_are_the_shortest_with_one_refusal():
    split = Dataset.from_list(EXAMPLE_ROWS, features=MSMARCO_FEATURES)
    chosen = data.few_shot_examples(split, n=3, unanswerable=1)
    assert [row["query"] for row in chosen] == ["what is the capital of france",
                                                "who wrote hamlet",
                                                "what colour is a unicorn's wallet"]
    with pytest.raises(ValueError, match="too few rows"):
        data.few_shot_examples(split, n=3, unanswerable=2)
    with pytest.raises(ValueError, match="between 0 and n"):
        data.few_shot_examples(split, n=2, unanswerable=3)


def test_few_shot_prompt_shows_the_examples_as_earlier_turns(chat, plain):
    examples = EXAMPLE_ROWS[:3]
    prompt = data.few_shot_prompt(chat, QUESTION, CONTEXT, examples)
    # the examples, in order, then the question: the same system message and user turn as qa_prompt
    assert prompt.startswith("<|im_start|>system\n" + data.SYSTEM_PROMPT)
    assert prompt.endswith(data.qa_prompt(chat, QUESTION, CONTEXT).split("<|im_end|>\n", 1)[1])
    positions = [prompt.index("<|im_start|>user\nQuestion: " + row["query"]) for row in examples]
    assert positions == sorted(positions) and positions[-1] < prompt.index(QUESTION)
    for row in examples:
        turn = (f"Question: {row['query']}\nContext: {data.selected_passage(row)}<|im_end|>\n"
                f"<|im_start|>assistant\n{row['answers'][0]}<|im_end|>")
        assert turn in prompt
    assert prompt.count("<|im_start|>assistant\n") == len(examples) + 1
    assert data.few_shot_prompt(chat, QUESTION, CONTEXT, []) == data.qa_prompt(chat, QUESTION, CONTEXT)
    text = data.few_shot_prompt(plain, QUESTION, CONTEXT, examples)
    assert "Question: who wrote hamlet\nContext: Hamlet" in text
    assert "\nAnswer: William Shakespeare\n" in text and text.endswith(f"{CONTEXT}\nAnswer:")


def test_the_shared_test_set(chat):
    rows = [{"query": f"question {i}", "answers": [f"answer {i}"], "query_id": i,
             "query_type": "entity", "wellFormedAnswers": [],
             "passages": {"is_selected": [0, 1], "passage_text": [f"other {i}", f"gold {i}"],
                          "url": ["u0", "u1"]}} for i in range(5)]
    split = DatasetDict({"test": Dataset.from_list(rows, features=MSMARCO_FEATURES)})
    test, prompts, references = data.qa_test_set(chat, split)
    assert len(test) == len(prompts) == 5 and references == [f"answer {i}" for i in range(5)]
    assert prompts[3] == data.qa_prompt(chat, "question 3", "gold 3")  # the selected passage
    test, prompts, references = data.qa_test_set(chat, split, n_test=2)
    assert test["query"] == ["question 0", "question 1"] and len(prompts) == 2
    assert len(data.qa_test_set(chat, split, n_test=50)[0]) == 5


def test_rows_need_an_end_token(chat):
    tokenizer = copy.deepcopy(chat)
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="no eos_token_id"):
        data.tokenize_qa(tokenizer, QUESTION, CONTEXT, ANSWER, max_length=256)
    with pytest.raises(ValueError, match="block_size must be positive"):
        data.group_texts(chat, ["text"], block_size=0)
