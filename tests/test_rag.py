"""RAG answers: parsing raw outputs into cited answers, and the graph's steps run one question
at a time (the LangGraph graph) or many at once (run_batched) with the same result.

The step functions below are written like notebook 05's. A scripted fake generator (prompts ->
canned outputs and forced flags) stands in for the language model, so these tests need only the
small embedding model and the tiny tokenizer for its chat template. The cleaning of answers is
checked on the lead-ins and markdown reasoning models write, and on answers it must keep.
"""

import pytest
from langgraph.graph import END, START, StateGraph

from course_utils.config import TINY, recipe
from course_utils.data import NO_ANSWER, closed_book_prompt, rag_prompt
from course_utils.models import load_embedding_model, load_tokenizer
from course_utils.rag import (
    RAGState,
    answer_fields,
    answer_with_sources,
    clean_answer,
    draw_graph,
    parse_answer,
    run_batched,
)
from course_utils.retrieval import PassageStore, Retriever

MINILM = "packaged:all-minilm-l6-v2"
SMOLLM = "packaged:smollm2-135m-instruct"
THRESHOLD = recipe("05", TINY)["threshold"]

PASSAGES = [
    "Mars is the fourth planet from the Sun. A day on Mars lasts about 24 hours and 37 minutes.",
    "Vitamin D is a fat-soluble vitamin that the skin produces when exposed to sunlight.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
    "Honey bees communicate the direction of flowers to each other with a waggle dance.",
]
ON_TOPIC = "how long is a day on mars"
OFF_TOPIC = "what is the airspeed velocity of an unladen swallow"
EIFFEL = "when was the eiffel tower completed"

# Recorded DeepSeek-R1-Distill outputs: its chat template writes <think> into the prompt, so
# the output usually holds only the closing tag; sometimes the model repeats the opening one.
R1_WITHOUT_OPEN = ("Okay, the user asks about the length of a day on Mars. Source [1] says a "
                   "day on Mars lasts about 24 hours and 37 minutes.\n</think>\n\n"
                   "About 24 hours and 37 minutes [1].")
R1_WITH_OPEN = ("<think>\nLooking at source [1], it gives the length directly.\n</think>\n\n"
                "about 24 hours and 37 minutes [1]")
R1_CUT_MID_THOUGHT = "Okay, let me look at the sources. Source [1] mentions Mars and"


class FakeGenerator:
    """Scripted outputs: a fixed text, or a function of the prompt, and the forced flags, as
    generate_with_thinking_budget returns them. Remembers every call."""

    def __init__(self, output="about 24 hours and 37 minutes [1]", forced=False):
        self.output, self.forced, self.calls = output, forced, []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        outputs = [self.output(p) if callable(self.output) else self.output for p in prompts]
        return outputs, [self.forced] * len(prompts)

    @property
    def prompts(self):
        return [p for call in self.calls for p in call]


class R1StyleTokenizer:
    """Renders prompts like DeepSeek-R1's chat template: the prompt ends in an open <think>."""

    chat_template = "deepseek-r1-like"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kw):
        user = "".join(f"<｜User｜>{m['content']}" for m in messages if m["role"] == "user")
        return f"<｜begin▁of▁sentence｜>{user}<｜Assistant｜><think>\n"


def make_steps(retriever, tokenizer, generator, k=1, threshold=THRESHOLD, system=True):
    """retrieve_many, route, generate_many and no_answer, written like notebook 05's."""

    def retrieve_many(queries):
        updates = []
        for found in retriever.retrieve_batch(queries, k=k):
            best = found[0].score if found else -1.0
            updates.append({"context": [p.to_dict() for p in found], "best_score": best,
                            "retrieved": best >= threshold})
        return updates

    def route(state):
        return "generate" if state["retrieved"] else "no_answer"

    def generate_many(states):
        prompts = [rag_prompt(tokenizer, s["query"], s["context"], system=system) for s in states]
        outputs, forced = generator(prompts)
        return [{**answer_fields(raw, s["context"], prompt), "forced": was_forced}
                for raw, was_forced, s, prompt in zip(outputs, forced, states, prompts,
                                                      strict=True)]

    def no_answer(state):
        return {"answer": NO_ANSWER, "short_answer": NO_ANSWER, "sources": [], "reasoning": "",
                "forced": False}

    return retrieve_many, route, generate_many, no_answer


def make_graph(retrieve_many, route, generate_many, no_answer):
    """The graph notebook 05 builds: nodes are the batch steps called with one question."""
    graph = StateGraph(RAGState)
    graph.add_node("retrieve", lambda state: retrieve_many([state["query"]])[0])
    graph.add_node("generate", lambda state: generate_many([state])[0])
    graph.add_node("no_answer", no_answer)
    graph.add_edge(START, "retrieve")
    graph.add_conditional_edges("retrieve", route,
                                {"generate": "generate", "no_answer": "no_answer"})
    graph.add_edge("generate", END)
    graph.add_edge("no_answer", END)
    return graph.compile()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(SMOLLM)


@pytest.fixture(scope="module")
def retriever():
    store = PassageStore.from_texts(PASSAGES, [f"https://example.org/{i}" for i in range(4)])
    return Retriever.build(store, load_embedding_model(MINILM), MINILM, progress=False)


def ask(retriever, tokenizer, generator, query, **options):
    """One question through the graph."""
    app = make_graph(*make_steps(retriever, tokenizer, generator, **options))
    return app.invoke({"query": query})


# --- parsing raw outputs -----------------------------------------------------------------------


def test_parsing_answers():
    assert clean_answer("Paris [1]\nSources: [1] https://x") == "Paris [1]"
    assert clean_answer('"Paris"\nThe capital of France is Paris.') == "Paris"
    assert clean_answer("The answer is: Paris") == "Paris"
    assert clean_answer("I'm sorry. No answer present.") == NO_ANSWER
    parsed = parse_answer("cobalt [2, 3] and [9]", n_sources=3)
    assert parsed == {"short_answer": "cobalt and", "sources": [2, 3], "reasoning": ""}
    context = [{"url": "u1", "id": "a"}, {"url": "", "id": "b"}]
    assert answer_with_sources("x", [1, 2], context) == "x\n\nSources: [1] u1; [2] b"
    assert answer_with_sources(NO_ANSWER, [1], context) == NO_ANSWER


# Lead-ins and markdown that reasoning models put around an answer, and what must survive.
LEAD_INS = [
    ("**Answer:** Paris [1]", "Paris [1]"),
    ("**Answer**: Paris", "Paris"),
    ("Answer: Paris", "Paris"),
    ("Final answer: Paris", "Paris"),
    ("Final Answer: **Paris**", "Paris"),
    ("The answer is Paris.", "Paris."),
    ("So, the short answer is: 24 hours", "24 hours"),
    ("The answer to the question is: yes", "yes"),
    ("A: Paris", "Paris"),
    ("**Answer:**\n\nParis [1]", "Paris [1]"),              # the answer on the next line
    ("### Final Answer\nAbout 24 hours", "About 24 hours"),
    ("**Final Answer**\n---\n- *about 24 hours*", "about 24 hours"),
    ("The final answer is $\\boxed{1889}$", "1889"),
    ("\\boxed{\\text{Paris}}", "Paris"),
    ("A day on Mars lasts **24 hours 37 minutes** [1].", "A day on Mars lasts 24 hours 37 minutes [1]."),
    ("`pip install faiss-cpu`", "pip install faiss-cpu"),
    ("'Paris'.", "Paris."),
    ("Final answer: No answer present.", NO_ANSWER),
]
KEPT = ["Answering machines record calls.", "Answers vary by state.", "The answer key is on page 3.",
        "A", "Vitamin A: found in carrots", "-5 degrees Celsius", ">50 percent", "#1 hit single",
        "__init__", "snake_case_name", "the students'", "rock 'n' roll", "*italic* and *bold*",
        "It is the answer: 42", "about 24 hours and 37 minutes", "$5 per hour"]


@pytest.mark.parametrize(("raw", "expected"), LEAD_INS)
def test_lead_ins_and_markdown_are_dropped(raw, expected):
    assert clean_answer(raw) == expected
    # the same after reasoning, as DeepSeek-R1 writes it
    assert clean_answer(f"Let me check the source.\n</think>\n\n{raw}") == expected


@pytest.mark.parametrize("answer", KEPT)
def test_answers_that_only_look_like_lead_ins_are_kept(answer):
    assert clean_answer(answer) == answer


def test_a_forced_answer_is_parsed_like_any_other():
    forced = ("Okay, source [1] mentions Mars and\n</think>\n\nFinal answer: about 24 hours and "
              "37 minutes [1]")
    parsed = parse_answer(forced, 3, prompt_opens_thinking=True)
    assert parsed == {"short_answer": "about 24 hours and 37 minutes", "sources": [1],
                      "reasoning": "Okay, source [1] mentions Mars and"}
    assert parse_answer("Final answer:", 3)["short_answer"] == ""  # a lead-in with no answer


def test_answer_cut_mid_thought_is_empty_not_the_thoughts():
    parsed = parse_answer(R1_CUT_MID_THOUGHT, 3, prompt_opens_thinking=True)
    assert parsed["short_answer"] == "" and parsed["reasoning"].startswith("Okay")
    # a model that does not reason: the same text is its answer
    assert parse_answer("about 24 hours [2]", 3)["short_answer"] == "about 24 hours"


def test_answer_fields_cite_what_the_answer_rests_on():
    context = [{"id": "a", "url": "https://example.org/0"}, {"id": "b", "url": ""}]
    cited = answer_fields("about 24 hours [2]", context, "prompt")
    assert cited == {"answer": "about 24 hours\n\nSources: [2] b", "short_answer": "about 24 hours",
                     "sources": [2], "reasoning": ""}
    # nothing cited: every passage it was shown; a refusal rests on none
    assert answer_fields("24 hours", context, "prompt")["sources"] == [1, 2]
    refusal = answer_fields(NO_ANSWER, context, "prompt")
    assert refusal["answer"] == NO_ANSWER and refusal["sources"] == []
    # a closed-book prompt shows no sources: the answer is the short answer alone
    closed = answer_fields(R1_WITH_OPEN, [], "prompt")
    assert closed["answer"] == closed["short_answer"] == "about 24 hours and 37 minutes"


# --- the steps through the graph ------------------------------------------------------------


def test_on_topic_question_is_answered_from_numbered_sources(retriever, tokenizer):
    fake = FakeGenerator()
    state = ask(retriever, tokenizer, fake, ON_TOPIC, k=2)
    assert state["retrieved"] and state["best_score"] >= THRESHOLD
    assert state["context"][0]["text"] == PASSAGES[0] and len(state["context"]) == 2
    (prompt,) = fake.prompts
    assert f"[1] {PASSAGES[0]}" in prompt and "[2] " in prompt and "[3] " not in prompt
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert state["short_answer"] == "about 24 hours and 37 minutes"
    assert state["sources"] == [1]
    assert state["answer"] == ("about 24 hours and 37 minutes\n\n"
                               "Sources: [1] https://example.org/0")


def test_off_topic_question_takes_the_no_answer_branch(retriever, tokenizer):
    fake = FakeGenerator()
    state = ask(retriever, tokenizer, fake, OFF_TOPIC)
    assert not state["retrieved"] and state["best_score"] < THRESHOLD
    assert state["answer"] == state["short_answer"] == NO_ANSWER
    assert state["sources"] == [] and fake.calls == []   # the model was never called


def test_threshold_decides_the_route(retriever, tokenizer):
    fake = FakeGenerator()
    assert ask(retriever, tokenizer, fake, ON_TOPIC, threshold=1.0)["answer"] == NO_ANSWER
    answered = ask(retriever, tokenizer, fake, OFF_TOPIC, threshold=-1.0)
    assert answered["short_answer"] == "about 24 hours and 37 minutes"


@pytest.mark.parametrize("raw", [R1_WITHOUT_OPEN, R1_WITH_OPEN])
def test_reasoning_is_removed_with_or_without_the_opening_tag(retriever, tokenizer, raw):
    state = ask(retriever, tokenizer, FakeGenerator(raw), ON_TOPIC)
    assert state["short_answer"].lower().rstrip(".") == "about 24 hours and 37 minutes"
    assert "think" not in state["answer"] and "Source [1] says" not in state["answer"]
    assert state["sources"] == [1]
    assert "day on Mars" in state["reasoning"] or "source [1]" in state["reasoning"]


def test_r1_prompt_with_open_think_tag_through_the_graph(retriever):
    tokenizer = R1StyleTokenizer()
    fake = FakeGenerator(R1_WITHOUT_OPEN)
    state = ask(retriever, tokenizer, fake, ON_TOPIC, system=False)
    assert fake.prompts[0].endswith("<think>\n") and "[1] Mars" in fake.prompts[0]
    assert state["short_answer"].rstrip(".") == "About 24 hours and 37 minutes"
    assert state["reasoning"].startswith("Okay, the user asks")
    # generation stopped before </think>: no answer yet, and the thoughts are not shown as one
    cut = ask(retriever, tokenizer, FakeGenerator(R1_CUT_MID_THOUGHT), ON_TOPIC, system=False)
    assert cut["short_answer"] == "" and cut["answer"] == "" and cut["sources"] == []
    assert cut["reasoning"].startswith("Okay, let me look")
    # closed-book answers are cleaned the same way
    prompt = closed_book_prompt(tokenizer, ON_TOPIC, system=False)
    assert answer_fields(R1_WITH_OPEN, [], prompt)["short_answer"] == (
        "about 24 hours and 37 minutes")


def test_a_forced_answer_is_marked_in_the_state(retriever):
    forced = ("Okay, let me look at the sources. Source [1] mentions Mars and\n</think>\n\n"
              "Final answer: about 24 hours and 37 minutes [1]")
    state = ask(retriever, R1StyleTokenizer(), FakeGenerator(forced, forced=True), ON_TOPIC,
                system=False)
    assert state["forced"] is True and state["sources"] == [1]
    assert state["short_answer"] == "about 24 hours and 37 minutes"
    refused = ask(retriever, R1StyleTokenizer(), FakeGenerator(forced, forced=True), OFF_TOPIC)
    assert refused["forced"] is False  # no_answer never calls the model


# --- the same steps over many questions -------------------------------------------------------


def test_batched_run_matches_the_graph_and_generates_once(retriever, tokenizer):
    def script(prompt):  # a different answer per question, so a mix-up of the order shows
        return "in 1889 [1]" if "Eiffel" in prompt else R1_WITHOUT_OPEN

    batch_fake, graph_fake = FakeGenerator(script), FakeGenerator(script)
    questions = [ON_TOPIC, OFF_TOPIC, EIFFEL]
    batched = run_batched(questions, *make_steps(retriever, tokenizer, batch_fake, k=2))
    assert len(batch_fake.calls) == 1 and len(batch_fake.calls[0]) == 2  # one call, 2 routed
    app = make_graph(*make_steps(retriever, tokenizer, graph_fake, k=2))
    for question, state in zip(questions, batched, strict=True):
        single = app.invoke({"query": question})
        assert state["query"] == question
        for key in ("answer", "short_answer", "sources", "retrieved", "reasoning", "forced"):
            assert state[key] == single[key], (question, key)
        # batched embedding may differ from single in the last float digit
        assert [p["id"] for p in state["context"]] == [p["id"] for p in single["context"]]
        assert state["best_score"] == pytest.approx(single["best_score"], abs=1e-5)
    assert [s["short_answer"] for s in batched] == [
        "About 24 hours and 37 minutes.", NO_ANSWER, "in 1889"]
    assert sorted(batch_fake.prompts) == sorted(graph_fake.prompts)


def test_batched_run_without_routed_questions_never_generates(retriever, tokenizer):
    fake = FakeGenerator()
    states = run_batched([OFF_TOPIC, OFF_TOPIC], *make_steps(retriever, tokenizer, fake))
    assert [s["answer"] for s in states] == [NO_ANSWER, NO_ANSWER] and fake.calls == []
    assert run_batched([], *make_steps(retriever, tokenizer, fake)) == []


def test_batched_run_says_which_step_broke_its_contract(retriever, tokenizer):
    retrieve_many, route, generate_many, no_answer = make_steps(retriever, tokenizer,
                                                                FakeGenerator())
    with pytest.raises(ValueError, match="generate_many must return one dict .* got 0 items"):
        run_batched([ON_TOPIC], retrieve_many, route, lambda states: [], no_answer)
    with pytest.raises(ValueError, match="retrieve_many must return one dict"):
        run_batched([ON_TOPIC, EIFFEL], lambda qs: retrieve_many(qs[:1]), route,
                    generate_many, no_answer)
    with pytest.raises(ValueError, match=r"route returned \['answer'\]"):
        run_batched([ON_TOPIC], retrieve_many, lambda state: "answer", generate_many, no_answer)


def test_graph_draws_offline(retriever, tokenizer):
    mermaid, ascii_art = draw_graph(make_graph(*make_steps(retriever, tokenizer,
                                                           FakeGenerator())))
    for node in ("retrieve", "generate", "no_answer"):
        assert node in mermaid and node in ascii_art
    assert mermaid.lstrip().startswith(("graph", "---", "%%"))
