"""What notebook 05 must show in the tiny profile: retrieval finds the passages, RAG beats the
closed-book model, and the notebook's graph refuses off-topic questions and answers on-topic
ones.

The checks read the RagRecord of a tiny run of the notebook (the `tiny_record` fixture of
tests/conftest.py: the records `make test` just wrote, or a run made here).

The routing checks read what the notebook's own graph did with an off-topic and an on-topic
question (details["off_topic"], details["on_topic"]): the graph is built in the notebook from
its step functions, so the notebook's record is the evidence, and no second copy of the
graph is built here. tests/test_rag.py checks the same kind of graph with a scripted model.
"""

import pytest

from course_utils.config import TINY
from course_utils.data import NO_ANSWER
from course_utils.results import RagRecord


@pytest.fixture(scope="module")
def record(tiny_record) -> RagRecord:
    found = tiny_record("05_rag")
    assert isinstance(found, RagRecord), type(found)
    return found


def test_retrieval_finds_the_marked_passage(record):
    retrieval = record.retrieval
    assert retrieval["recall@3"] >= 0.9, retrieval
    assert retrieval["recall@1"] <= retrieval["recall@3"] <= retrieval["recall@10"]
    assert 0 < retrieval["mrr@10"] <= 1


def test_rag_beats_closed_book(record):
    closed, rag = record.closed_book, record.rag
    assert rag.n == closed.n >= TINY.test_size
    assert rag.token_f1 > closed.token_f1, (rag.token_f1, closed.token_f1)
    assert rag.bertscore_f1 > closed.bertscore_f1, (rag.bertscore_f1, closed.bertscore_f1)


def test_record_holds_the_run(record):
    assert record.details["corpus_size"] > 0 and record.model_mib > 0
    assert record.closed_book_seconds_per_query > 0 and record.rag_seconds_per_query > 0
    assert record.notebook_seconds > 0
    assert record.settings["k"] >= 1 and record.settings["index_kind"] in ("flat", "hnsw")
    assert record.models["generator"] == TINY.rag_model
    # a few test questions may be refused, but not the answerable ones wholesale
    assert 0 <= record.details["routed_to_no_answer"] < record.details["answerable_questions"]


def test_record_holds_the_share_of_forced_answers(record):
    """SmolLM2 never opens <think>: the thinking budget forces nothing in the tiny profile."""
    assert record.forced_share == {"closed_book": 0.0, "rag": 0.0}
    assert record.settings["answer_budget"] > 0 and record.settings["do_sample"] is False
    assert all(example["forced"] is False for example in record.details["examples"])


def test_notebook_graph_routed_the_off_topic_question_to_no_answer(record):
    off_topic = record.details["off_topic"]
    assert off_topic["retrieved"] is False and off_topic["answer"] == NO_ANSWER
    assert off_topic["best_score"] < record.settings["threshold"]


def test_notebook_graph_answered_the_on_topic_question_from_a_source(record):
    on_topic = record.details["on_topic"]
    assert on_topic["retrieved"] is True
    assert on_topic["best_score"] >= record.settings["threshold"]
    assert on_topic["answer"]  # what the generator said; a refusal would still be routed right
