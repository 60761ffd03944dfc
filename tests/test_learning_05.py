"""What notebook 05 must show in the tiny profile: retrieval finds the passages, RAG beats the
closed-book model, and off-topic questions are refused.

The first tests read the results file a tiny run of the notebook writes; run it first with
    python -m course_utils run --profile tiny --only 05
The last one checks the routing directly on the real tiny pipeline (packaged models, mini data).
"""

import pytest

from course_utils.data import NO_ANSWER, load_msmarco
from course_utils.models import load_causal_lm, load_embedding_model
from course_utils.paths import cache_dir
from course_utils.profiles import TINY
from course_utils.rag import RagSettings, create_rag_graph
from course_utils.results import load_results
from course_utils.retrieval import build_corpus, load_or_build

RUN_COMMAND = "python -m course_utils run --profile tiny --only 05"
OFF_TOPIC = "what is the airspeed velocity of an unladen swallow"


@pytest.fixture(scope="module")
def results():
    try:
        return load_results("05_rag", "tiny")
    except FileNotFoundError as error:
        pytest.fail(f"{error}\nRun the notebook in the tiny profile first: {RUN_COMMAND}",
                    pytrace=False)


def test_retrieval_finds_the_marked_passage(results):
    retrieval = results["metrics"]["retrieval"]
    assert retrieval["recall@3"] >= 0.9, retrieval
    assert retrieval["recall@1"] <= retrieval["recall@3"] <= retrieval["recall@10"]
    assert 0 < retrieval["mrr@10"] <= 1


def test_rag_beats_closed_book(results):
    closed, rag = results["metrics"]["closed_book"], results["metrics"]["rag"]
    assert rag["n"] == closed["n"] >= TINY.test_size
    assert rag["token_f1"] > closed["token_f1"], (rag["token_f1"], closed["token_f1"])
    assert rag["bertscore_f1"] > closed["bertscore_f1"], (rag["bertscore_f1"],
                                                          closed["bertscore_f1"])


def test_results_file_has_the_shared_structure(results):
    assert results["extra"]["corpus_size"] > 0
    for key in ("closed_book_seconds_per_query", "rag_seconds_per_query", "notebook_seconds"):
        assert results["timings"][key] > 0
    assert "per_example" not in results["metrics"]["rag"]


def test_notebook_routed_the_off_topic_question_to_no_answer(results):
    off_topic = results["extra"]["off_topic"]
    assert off_topic["retrieved"] is False and off_topic["answer"] == NO_ANSWER
    assert off_topic["best_score"] < results["hyperparameters"]["threshold"]


def test_real_tiny_pipeline_routes_off_topic_and_on_topic_questions(tmp_path):
    data = load_msmarco(TINY)
    embedder = load_embedding_model(TINY.embedding_model)
    # the notebook's saved index when it exists (checked against this corpus), else a new one
    retriever, _ = load_or_build(cache_dir() / "rag_index" / "tiny-flat", build_corpus(data, TINY),
                                 embedder, TINY.embedding_model, progress=False)
    model, tokenizer = load_causal_lm(TINY.rag_model)
    rag_app = create_rag_graph(model, tokenizer, retriever.index, embedder, retriever.store,
                               settings=RagSettings(max_new_tokens=TINY.rag_max_new_tokens))

    def ask(query):
        return rag_app.invoke({"query": query, "context": [], "answer": "", "retrieved": False})

    refused = ask(OFF_TOPIC)
    assert refused["answer"] == NO_ANSWER and not refused["retrieved"]
    on_topic = next(row for row in data["test"] if 1 in row["passages"]["is_selected"])
    answered = ask(on_topic["query"])
    assert answered["retrieved"] and answered["context"]
    assert "short_answer" in answered and answered["answer"]
