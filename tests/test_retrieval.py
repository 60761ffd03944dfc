"""Retrieval: cosine scores, save/load with integrity checks, HNSW, the corpus, recall and MRR."""

import json

import faiss
import numpy as np
import pytest

from course_utils.config import FULL, TINY
from course_utils.models import load_embedding_model
from course_utils.retrieval import (
    IndexMismatchError,
    IndexSettings,
    PassageStore,
    Retriever,
    build_corpus,
    load_or_build,
    passage_id,
    retrieval_metrics,
    selected_passage_ids,
)

MINILM = "packaged:all-minilm-l6-v2"

PASSAGES = [
    "Mars is the fourth planet from the Sun. A day on Mars lasts about 24 hours and 37 minutes.",
    "Vitamin D is a fat-soluble vitamin that the skin produces when exposed to sunlight.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
    "Python is a programming language created by Guido van Rossum in the early 1990s.",
    "The Great Wall of China is a series of fortifications built across northern China.",
    "Honey bees communicate the direction of flowers to each other with a waggle dance.",
]
QUESTIONS = [  # (question, index of the passage that answers it)
    ("how long is a day on mars", 0),
    ("what vitamin does the skin make from sunlight", 1),
    ("when was the eiffel tower completed", 2),
    ("who created the python programming language", 3),
    ("how do bees tell each other where flowers are", 5),
]


@pytest.fixture(scope="module")
def embedder():
    return load_embedding_model(MINILM)


@pytest.fixture(scope="module")
def store():
    return PassageStore.from_texts(PASSAGES, [f"https://example.org/{i}" for i in range(6)])


@pytest.fixture(scope="module")
def retriever(embedder, store):
    return Retriever.build(store, embedder, MINILM, progress=False)


def test_right_passage_comes_first_with_cosine_scores(retriever):
    for question, gold in QUESTIONS:
        found = retriever.retrieve(question, k=3)
        assert found[0].text == PASSAGES[gold], question
        assert all(-1.0 <= p.score <= 1.0 for p in found)
        assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
    assert isinstance(retriever.index, faiss.IndexFlatIP)


def test_scores_are_cosine_similarities(retriever, embedder):
    found = retriever.retrieve("how long is a day on mars", k=1)[0]
    q, p = embedder.encode(["how long is a day on mars", found.text])
    cosine = float(q @ p / (np.linalg.norm(q) * np.linalg.norm(p)))
    assert found.score == pytest.approx(cosine, abs=1e-4)


def test_batched_retrieval_matches_single_and_k_is_capped(retriever):
    questions = [q for q, _ in QUESTIONS]
    batched = retriever.retrieve_batch(questions, k=2)
    for question, results in zip(questions, batched, strict=True):
        single = retriever.retrieve(question, k=2)
        assert [p.id for p in results] == [p.id for p in single]
    assert len(retriever.retrieve("mars", k=50)) == len(PASSAGES)  # never -1 rows
    with pytest.raises(ValueError, match="k must be positive"):
        retriever.retrieve("mars", k=0)


def test_ids_are_stable_hashes_and_duplicates_dropped():
    store = PassageStore.from_texts(["a text", "another", "a text"], ["u1", "u2", "u3"])
    assert store.texts == ("a text", "another")
    assert store.ids[0] == passage_id("a text") == passage_id("a text")
    assert store.urls == ("u1", "u2")


def test_save_and_load_round_trip(retriever, embedder, tmp_path):
    folder = retriever.save(tmp_path / "index")
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss", "manifest.json",
                                                         "passages.jsonl"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == len(PASSAGES) and manifest["dimension"] == 384
    assert manifest["embedding_model"] == MINILM
    loaded = Retriever.load(folder, embedder, MINILM)
    assert loaded.store == retriever.store
    for question, _ in QUESTIONS:
        a, b = retriever.retrieve(question, 3), loaded.retrieve(question, 3)
        assert [p.id for p in a] == [p.id for p in b]
        assert [p.score for p in a] == pytest.approx([p.score for p in b])
    # saving again over the folder replaces it whole and leaves no staging folders
    retriever.save(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def _edit_lines(path, edit):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_changed_passage_is_a_clear_error(retriever, embedder, tmp_path):
    folder = retriever.save(tmp_path / "index")

    def change_text(lines):
        row = json.loads(lines[2])
        row["text"] = row["text"].replace("1889", "1901")
        return lines[:2] + [json.dumps(row)] + lines[3:]

    _edit_lines(folder / "passages.jsonl", change_text)
    with pytest.raises(IndexMismatchError, match="changed since the index was built"):
        Retriever.load(folder, embedder, MINILM)


def test_wrong_count_is_a_clear_error(retriever, embedder, tmp_path):
    folder = retriever.save(tmp_path / "index")
    _edit_lines(folder / "passages.jsonl", lambda lines: lines[:-1])
    with pytest.raises(IndexMismatchError, match="holds 5 passages, the manifest says 6"):
        Retriever.load(folder, embedder, MINILM)
    # a store that does not match the index is refused when building a Retriever, too
    short = PassageStore.from_texts(PASSAGES[:4])
    with pytest.raises(IndexMismatchError, match="6 vectors but the passage store 4"):
        Retriever(retriever.index, embedder, short)


def test_other_embedding_model_is_a_clear_error(retriever, embedder, tmp_path):
    folder = retriever.save(tmp_path / "index")
    with pytest.raises(IndexMismatchError, match="built with the embedding model"):
        Retriever.load(folder, embedder, "sentence-transformers/all-mpnet-base-v2")


def test_missing_index_is_a_clear_error(embedder, tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved index"):
        Retriever.load(tmp_path / "nothing", embedder, MINILM)


def test_load_or_build_reuses_only_a_matching_index(embedder, store, tmp_path):
    folder = tmp_path / "cached"
    first, built = load_or_build(folder, store, embedder, MINILM)
    assert built
    again, built = load_or_build(folder, store, embedder, MINILM)
    assert not built and again.store == store
    other = PassageStore.from_texts(PASSAGES[:3])
    rebuilt, built = load_or_build(folder, other, embedder, MINILM)
    assert built and len(rebuilt.store) == 3


def test_hnsw_index_finds_the_same_passages(embedder, store, tmp_path):
    settings = IndexSettings(kind="hnsw", hnsw_neighbors=8, ef_search=16)
    hnsw = Retriever.build(store, embedder, MINILM, settings, progress=False)
    assert isinstance(hnsw.index, faiss.IndexHNSWFlat)
    assert hnsw.index.metric_type == faiss.METRIC_INNER_PRODUCT
    for question, gold in QUESTIONS:
        found = hnsw.retrieve(question, 2)
        assert found[0].text == PASSAGES[gold]
        assert all(-1.0 <= p.score <= 1.0 for p in found)
    loaded = Retriever.load(hnsw.save(tmp_path / "hnsw"), embedder, MINILM, ef_search=32)
    assert loaded.manifest()["index_kind"] == "hnsw" and loaded.index.hnsw.efSearch == 32


def test_auto_picks_hnsw_from_a_hundred_thousand_passages():
    assert IndexSettings().resolved_kind(50_000) == "flat"   # the full profile's corpus
    assert IndexSettings().resolved_kind(99_999) == "flat"
    assert IndexSettings().resolved_kind(100_000) == "hnsw"
    assert IndexSettings().resolved_kind(1_000_000) == "hnsw"
    assert IndexSettings(kind="flat").resolved_kind(5_000_000) == "flat"
    with pytest.raises(ValueError, match="index kind"):
        IndexSettings(kind="ivf-pq")


def test_recall_and_mrr_on_a_hand_made_example():
    retrieved = [["a", "b", "c"], ["x", "g", "y"], ["p", "q", "r"], ["n", "o"]]
    relevant = [{"a"}, {"g"}, {"z"}, set()]  # the last query has no answer: left out
    metrics = retrieval_metrics(retrieved, relevant, ks=(1, 3), mrr_at=3)
    assert metrics["n"] == 3
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@3"] == pytest.approx(2 / 3)
    assert metrics["mrr@3"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    # two relevant passages, one found: half recalled
    assert retrieval_metrics([["a", "x"]], [{"a", "b"}], ks=(2,))["recall@2"] == 0.5
    with pytest.raises(ValueError, match="no query has a relevant passage"):
        retrieval_metrics([["a"]], [set()])
    with pytest.raises(ValueError, match="result lists"):
        retrieval_metrics([["a"]], [{"a"}, {"b"}])


def _row(query, texts, selected):
    return {"query": query, "passages": {"passage_text": texts,
                                         "url": [f"u-{t}" for t in texts],
                                         "is_selected": [int(i == selected) for i in
                                                         range(len(texts))]}}


def test_corpus_holds_every_test_passage_plus_distractors():
    test = [_row("q1", ["t1", "t2"], 0), _row("q2", ["t3", "t1"], 1)]
    train = [_row("q3", [f"d{i}", f"e{i}"], 0) for i in range(10)]
    splits = {"test": test, "train": train}
    small = FULL.with_overrides(rag_corpus_size=6)
    corpus = build_corpus(splits, small, extra_rows=[])
    assert corpus.texts[:3] == ("t1", "t2", "t3")   # test passages first, deduplicated
    assert len(corpus) == 6
    assert selected_passage_ids(test[1]) == {passage_id("t1")} <= set(corpus.ids)
    # the test passages are never cut, even past the size
    assert len(build_corpus(splits, FULL.with_overrides(rag_corpus_size=2), extra_rows=[])) == 3
    with pytest.raises(ValueError, match="only 23 unique passages"):
        build_corpus(splits, FULL, extra_rows=[])
    # distractors from extra rows when the splits run out
    extra = [_row("q9", [f"x{i}"], 0) for i in range(30)]
    assert len(build_corpus(splits, FULL.with_overrides(rag_corpus_size=40),
                            extra_rows=extra)) == 40


def test_mini_corpus_is_every_passage_of_the_mini_data_set():
    from course_utils.data import MINI_DIR, load_msmarco

    data = load_msmarco(TINY)
    corpus = build_corpus(data, TINY)
    every = set()
    for split in ("train", "validation", "test"):
        for line in (MINI_DIR / f"{split}.jsonl").read_text().splitlines():
            every.update(json.loads(line)["passages"]["passage_text"])
    assert set(corpus.texts) == every and len(corpus) == len(every)
    for row in data["test"]:
        assert selected_passage_ids(row) <= set(corpus.ids)
