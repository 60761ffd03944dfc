"""The RAG graph: routing on the relevance score, numbered sources, reasoning removal.

A fake generator (prompts -> recorded outputs) stands in for the language model, so these
tests need only the small embedding model and the tiny tokenizer for its chat template.
"""

import pytest

from course_utils.data import NO_ANSWER
from course_utils.models import load_embedding_model, load_tokenizer
from course_utils.rag import (
    RagPipeline,
    RagSettings,
    answer_closed_book,
    answer_with_sources,
    build_rag_graph,
    clean_answer,
    closed_book_prompt,
    create_rag_graph,
    draw_graph,
    parse_answer,
    rag_prompt,
)
from course_utils.retrieval import PassageStore, Retriever

MINILM = "packaged:all-minilm-l6-v2"
SMOLLM = "packaged:smollm2-135m-instruct"

PASSAGES = [
    "Mars is the fourth planet from the Sun. A day on Mars lasts about 24 hours and 37 minutes.",
    "Vitamin D is a fat-soluble vitamin that the skin produces when exposed to sunlight.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
    "Honey bees communicate the direction of flowers to each other with a waggle dance.",
]
ON_TOPIC = "how long is a day on mars"
OFF_TOPIC = "what is the airspeed velocity of an unladen swallow"

# Recorded DeepSeek-R1-Distill outputs: its chat template writes <think> into the prompt, so
# the output usually holds only the closing tag; sometimes the model repeats the opening one.
R1_WITHOUT_OPEN = ("Okay, the user asks about the length of a day on Mars. Source [1] says a "
                   "day on Mars lasts about 24 hours and 37 minutes.\n</think>\n\n"
                   "About 24 hours and 37 minutes [1].")
R1_WITH_OPEN = ("<think>\nLooking at source [1], it gives the length directly.\n</think>\n\n"
                "about 24 hours and 37 minutes [1]")
R1_CUT_MID_THOUGHT = "Okay, let me look at the sources. Source [1] mentions Mars and"


class FakeGenerator:
    """Returns canned outputs and remembers the prompts it was given."""

    def __init__(self, output="about 24 hours and 37 minutes [1]"):
        self.output, self.prompts = output, []

    def __call__(self, prompts):
        self.prompts.extend(prompts)
        return [self.output] * len(prompts)


@pytest.fixture(scope="module")
def embedder():
    return load_embedding_model(MINILM)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(SMOLLM)


@pytest.fixture(scope="module")
def retriever(embedder):
    store = PassageStore.from_texts(PASSAGES, [f"https://example.org/{i}" for i in range(4)])
    return Retriever.build(store, embedder, MINILM, progress=False)


def make_app(retriever, embedder, tokenizer, generator, **settings):
    return create_rag_graph(None, tokenizer, retriever.index, embedder, retriever.store,
                            settings=RagSettings(**settings), generate_fn=generator)


def invoke(app, query):
    return app.invoke({"query": query, "context": [], "answer": "", "retrieved": False})


def test_on_topic_question_is_answered_from_numbered_sources(retriever, embedder, tokenizer):
    fake = FakeGenerator()
    state = invoke(make_app(retriever, embedder, tokenizer, fake, k=2), ON_TOPIC)
    assert state["retrieved"] and state["best_score"] >= RagSettings().threshold
    assert state["context"][0]["text"] == PASSAGES[0] and len(state["context"]) == 2
    (prompt,) = fake.prompts
    assert f"[1] {PASSAGES[0]}" in prompt and "[2] " in prompt and "[3] " not in prompt
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert state["short_answer"] == "about 24 hours and 37 minutes"
    assert state["sources"] == [1]
    assert state["answer"] == ("about 24 hours and 37 minutes\n\n"
                               "Sources: [1] https://example.org/0")


def test_off_topic_question_takes_the_no_answer_branch(retriever, embedder, tokenizer):
    fake = FakeGenerator()
    state = invoke(make_app(retriever, embedder, tokenizer, fake), OFF_TOPIC)
    assert not state["retrieved"] and state["best_score"] < RagSettings().threshold
    assert state["answer"] == state["short_answer"] == NO_ANSWER
    assert state["sources"] == [] and fake.prompts == []   # the model was never called


def test_threshold_decides_the_route(retriever, embedder, tokenizer):
    fake = FakeGenerator()
    never = make_app(retriever, embedder, tokenizer, fake, threshold=1.0)
    assert invoke(never, ON_TOPIC)["answer"] == NO_ANSWER
    always = make_app(retriever, embedder, tokenizer, fake, threshold=-1.0)
    assert invoke(always, OFF_TOPIC)["short_answer"] == "about 24 hours and 37 minutes"
    with pytest.raises(ValueError, match="threshold"):
        RagSettings(threshold=1.5)


@pytest.mark.parametrize("raw", [R1_WITHOUT_OPEN, R1_WITH_OPEN])
def test_reasoning_is_removed_with_or_without_the_opening_tag(retriever, embedder, tokenizer,
                                                              raw):
    state = invoke(make_app(retriever, embedder, tokenizer, FakeGenerator(raw)), ON_TOPIC)
    assert state["short_answer"].lower().rstrip(".") == "about 24 hours and 37 minutes"
    assert "think" not in state["answer"] and "Source [1] says" not in state["answer"]
    assert state["sources"] == [1]
    assert "day on Mars" in state["reasoning"] or "source [1]" in state["reasoning"]


class R1StyleTokenizer:
    """Renders prompts like DeepSeek-R1's chat template: the prompt ends in an open <think>."""

    chat_template = "deepseek-r1-like"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kw):
        user = "".join(f"<｜User｜>{m['content']}" for m in messages if m["role"] == "user")
        return f"<｜begin▁of▁sentence｜>{user}<｜Assistant｜><think>\n"


def test_r1_prompt_with_open_think_tag_through_the_graph(retriever, embedder):
    tokenizer = R1StyleTokenizer()
    fake = FakeGenerator(R1_WITHOUT_OPEN)
    state = invoke(make_app(retriever, embedder, tokenizer, fake), ON_TOPIC)
    assert fake.prompts[0].endswith("<think>\n") and "[1] Mars" in fake.prompts[0]
    assert state["short_answer"].rstrip(".") == "About 24 hours and 37 minutes"
    assert state["reasoning"].startswith("Okay, the user asks")
    # generation stopped before </think>: no answer yet, and the thoughts are not shown as one
    cut = invoke(make_app(retriever, embedder, tokenizer, FakeGenerator(R1_CUT_MID_THOUGHT)),
                 ON_TOPIC)
    assert cut["short_answer"] == "" and cut["answer"] == "" and cut["sources"] == []
    assert cut["reasoning"].startswith("Okay, let me look")
    # closed-book answers are cleaned the same way
    assert answer_closed_book(FakeGenerator(R1_WITH_OPEN), tokenizer, [ON_TOPIC]) == [
        "about 24 hours and 37 minutes"]


def test_answer_cut_mid_thought_is_empty_not_the_thoughts():
    parsed = parse_answer(R1_CUT_MID_THOUGHT, 3, prompt_opens_thinking=True)
    assert parsed["short_answer"] == "" and parsed["reasoning"].startswith("Okay")
    # a model that does not reason: the same text is its answer
    assert parse_answer("about 24 hours [2]", 3)["short_answer"] == "about 24 hours"


def test_parsing_answers():
    assert clean_answer("Paris [1]\nSources: [1] https://x") == "Paris [1]"
    assert clean_answer('"Paris"\nThe capital of France is Paris.') == "Paris"
    assert clean_answer("I'm sorry. No answer present.") == NO_ANSWER
    parsed = parse_answer("cobalt [2, 3] and [9]", n_sources=3)
    assert parsed == {"short_answer": "cobalt and", "sources": [2, 3], "reasoning": ""}
    context = [{"url": "u1", "id": "a"}, {"url": "", "id": "b"}]
    assert answer_with_sources("x", [1, 2], context) == "x\n\nSources: [1] u1; [2] b"
    assert answer_with_sources(NO_ANSWER, [1], context) == NO_ANSWER


def test_uncited_answer_lists_every_source_it_was_shown(retriever, embedder, tokenizer):
    state = invoke(make_app(retriever, embedder, tokenizer, FakeGenerator("24 hours"), k=2),
                   ON_TOPIC)
    assert state["short_answer"] == "24 hours" and state["sources"] == [1, 2]
    refusal = invoke(make_app(retriever, embedder, tokenizer, FakeGenerator(NO_ANSWER)),
                     ON_TOPIC)
    assert refusal["answer"] == NO_ANSWER and refusal["sources"] == []


def test_batch_path_matches_the_graph(retriever, embedder, tokenizer):
    fake = FakeGenerator(R1_WITHOUT_OPEN)
    pipeline = RagPipeline(retriever, tokenizer, fake, RagSettings(k=2))
    app = build_rag_graph(pipeline)
    questions = [ON_TOPIC, OFF_TOPIC, "when was the eiffel tower completed"]
    batched = pipeline.answer_batch(questions, progress=False)
    for question, state in zip(questions, batched, strict=True):
        single = invoke(app, question)
        for key in ("answer", "short_answer", "sources", "retrieved"):
            assert state[key] == single[key], (question, key)
        # batched embedding may differ from single in the last float digit
        assert [p["id"] for p in state["context"]] == [p["id"] for p in single["context"]]
        assert state["best_score"] == pytest.approx(single["best_score"], abs=1e-5)


def test_prompts_go_through_the_chat_template(tokenizer):
    context = [{"text": "Paris is the capital of France.", "url": "u", "id": "p"}]
    prompt = rag_prompt(tokenizer, "what is the capital of france", context)
    assert "<|im_start|>user" in prompt and "[1] Paris is the capital" in prompt
    closed = closed_book_prompt(tokenizer, "what is the capital of france")
    assert "[1]" not in closed and closed.endswith("<|im_start|>assistant\n")


def test_graph_draws_offline(retriever, embedder, tokenizer):
    mermaid, ascii_art = draw_graph(make_app(retriever, embedder, tokenizer, FakeGenerator()))
    for node in ("retrieve", "generate", "no_answer"):
        assert node in mermaid and node in ascii_art
    assert mermaid.lstrip().startswith(("graph", "---", "%%"))
