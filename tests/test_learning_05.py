"""What notebook 05 must show in the tiny profile: retrieval finds the passages, RAG beats the
closed-book model where the paired interval shows it, the few-shot baseline ran on the same
questions, and the notebook's graph refuses off-topic questions and answers on-topic ones.

The checks read the RagRecord of a tiny run of the notebook (the `tiny_record` fixture of
tests/conftest.py: the records `make test` just wrote, or a run made here).

The routing checks read what the notebook's own graph did with an off-topic and an on-topic
question (details["off_topic"], details["on_topic"]): the graph is built in the notebook from
its step functions, so the notebook's record is the evidence, and no second copy of the
graph is built here. tests/test_rag.py checks the same kind of graph with a scripted model.
"""

import pytest

from course_utils.config import TINY
from course_utils.data import NO_ANSWER, load_msmarco
from course_utils.results import RagRecord
from course_utils.uncertainty import paired_difference


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


def test_closed_book_and_rag_are_scored_like_with_like(record):
    """The same generator and weights, the same questions in the same order, the same options
    (both prompts allow "No Answer Present."); only the context differs."""
    closed, rag = record.closed_book, record.rag
    assert rag.n == closed.n >= TINY.test_size and rag.groups == closed.groups
    assert (closed.model, closed.context) == (TINY.rag_model, "none")
    assert (rag.model, rag.context) == (TINY.rag_model, "retrieved passages")
    assert closed.weights == rag.weights == "fp32"
    assert record.settings["split"] == "test"
    assert set(closed.by_group) == set(rag.by_group) == {"answerable", "unanswerable"}


def test_rag_beats_closed_book_where_the_paired_interval_shows_it(record):
    """RAG - closed book on the same test questions, with a paired bootstrap 95 % interval:
    the whole interval lies above 0 for exact match, token F1 and BERTScore F1, and for token
    F1 on the answerable questions alone (where a source can help). Exact match on the
    answerable questions alone is not checked: RAG gets 2 of 32 exactly right in tiny, too few
    for an interval that excludes 0."""
    for metric in ("exact_match", "token_f1", "bertscore_f1"):
        gap = record.rag.difference(record.closed_book, metric)
        assert gap.low > 0, f"RAG - closed book, {metric}: {gap.signed()} does not show RAG ahead"
    answerable = [i for i, g in enumerate(record.rag.groups) if g == "answerable"]
    gap = paired_difference([record.closed_book.per_question["token_f1"][i] for i in answerable],
                            [record.rag.per_question["token_f1"][i] for i in answerable])
    assert gap.low > 0, (f"answerable questions, RAG - closed book, token F1: {gap.signed()} "
                         "does not show RAG ahead")


def test_the_few_shot_baseline_is_the_chat_model_on_the_same_questions(record):
    """Few-shot prompting, the zero-training baseline: the chat model of 02-04 with the gold
    passage and three solved training examples, on the same test questions."""
    few_shot = record.few_shot
    assert few_shot is not None and few_shot.n == record.rag.n
    assert few_shot.groups == record.rag.groups
    assert (few_shot.model, few_shot.context) == (TINY.chat_model, "gold passage + 3 examples")
    assert record.few_shot_model_mib > 0 and 0 <= few_shot.token_f1 <= 1
    shown = record.details["few_shot_examples"]
    test_questions = set(load_msmarco(TINY)["test"]["query"])
    assert len(shown) == 3 and not set(shown) & test_questions   # examples never from test


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
