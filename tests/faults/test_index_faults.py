"""The saved RAG index under faults: a manifest cut short or of another schema, a garbage or
truncated index.faiss, a missing file, a file where the folder should be, an index of another
embedding model or passage set, an edited citation, and a save killed with SIGKILL. Loading
names the file; load_or_build sets the folder aside with a warning naming it, builds a new
index and never raises.

A stand-in embedding model (vectors from a hash of each text) keeps these tests fast; the real
model's behaviour is in tests/test_retrieval.py."""

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from course_utils.retrieval import (
    IndexMismatchError,
    PassageStore,
    Retriever,
    load_or_build,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "packaged:all-minilm-l6-v2"


class HashEmbedder:
    """Unit vectors from a hash of each text: the same text always gets the same vector."""

    dimension = 16

    def get_sentence_embedding_dimension(self):
        return self.dimension

    def encode(self, texts, **_):
        rows = [np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16))
                .standard_normal(self.dimension) for t in texts]
        vectors = np.asarray(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


TEXTS = [f"passage {i}: a fact about topic {i % 7} that a question may need" for i in range(40)]
URLS = [f"https://example.org/{i}" for i in range(40)]


@pytest.fixture()
def saved(tmp_path):
    """(folder, store) of an index saved the way notebook 05 saves it."""
    store = PassageStore.from_texts(TEXTS, URLS)
    folder = tmp_path / "rag_index" / "tiny-flat"
    retriever, built = load_or_build(folder, store, HashEmbedder(), MODEL, progress=False)
    assert built and (folder / "manifest.json").is_file()
    return folder, store


def _rebuilds(folder, store, reason):
    """load_or_build warns naming the folder and the reason, sets it aside and rebuilds."""
    before = {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else None
    with pytest.warns(UserWarning, match="set aside") as caught:
        retriever, built = load_or_build(folder, store, HashEmbedder(), MODEL, progress=False)
    message = str(caught[0].message)
    assert built and f"The saved index {folder} cannot be used" in message
    assert reason in message
    [aside] = [p for p in folder.parent.iterdir()
               if p.name.startswith(f"{folder.name}.set-aside-") and f"{p} " in message]
    if before is not None:  # what was there is kept, untouched, for a look
        assert {p.name: p.read_bytes() for p in aside.iterdir()} == before
    # the new index works and is reused next time without a warning
    assert retriever.retrieve(TEXTS[3], k=1)[0].url == URLS[3]
    again, built = load_or_build(folder, store, HashEmbedder(), MODEL, progress=False)
    assert not built and again.store == store
    return message


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["manifest.json", "passages.jsonl", "index.faiss"])
def test_a_file_cut_short_is_set_aside_and_rebuilt(saved, name, seed):
    folder, store = saved
    path = folder / name
    raw = path.read_bytes()
    path.write_bytes(raw[:random.Random(seed).randrange(0, len(raw) - 1)])
    with pytest.raises(IndexMismatchError, match=name):
        Retriever.load(folder, HashEmbedder(), MODEL)
    _rebuilds(folder, store, name)


@pytest.mark.parametrize("manifest, reason", [
    ([], "holds a list, not a manifest"),
    ({"format": 1}, "has format 1, this course reads format 2"),
    ({"format": 2, "embedding_model": MODEL}, "wrong or missing fields: dimension"),
    ("count-as-text", "wrong or missing fields: count (expected int, found '40')"),
    ("bom", "manifest.json cannot be read"),
])
def test_a_manifest_of_another_schema_is_set_aside(saved, manifest, reason):
    folder, store = saved
    path = folder / "manifest.json"
    if manifest == "count-as-text":
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "count": str(data["count"])}))
    elif manifest == "bom":  # saved again by an editor in UTF-16
        path.write_bytes(path.read_text().encode("utf-16"))
    else:
        path.write_text(json.dumps(manifest))
    _rebuilds(folder, store, reason)


def test_garbage_index_faiss_of_the_same_size_is_caught(saved):
    folder, store = saved
    path = folder / "index.faiss"
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))
    _rebuilds(folder, store, "index.faiss changed since the index was built")


@pytest.mark.parametrize("name", ["manifest.json", "passages.jsonl", "index.faiss"])
def test_a_missing_file_is_set_aside_and_rebuilt(saved, name):
    folder, store = saved
    (folder / name).unlink()
    _rebuilds(folder, store, f"{name} is missing")


def test_a_file_where_the_folder_should_be(tmp_path):
    store = PassageStore.from_texts(TEXTS, URLS)
    folder = tmp_path / "tiny-flat"
    folder.write_text("not an index")
    _rebuilds(folder, store, "manifest.json is missing")
    aside = next(tmp_path.glob("tiny-flat.set-aside-*"))
    assert aside.read_text() == "not an index"


def test_another_embedding_model_or_passage_set_is_set_aside(saved):
    folder, store = saved
    other = "sentence-transformers/all-mpnet-base-v2"
    with pytest.warns(UserWarning, match="built with the embedding model"):
        load_or_build(folder, store, HashEmbedder(), other, progress=False)
    _rebuilds(folder, store, f"built with the embedding model {other!r}")  # and back
    fewer = PassageStore.from_texts(TEXTS[:30], URLS[:30])
    message = _rebuilds(folder, fewer, "passages differ from the 30 asked for")
    assert "its 40 passages" in message


@pytest.mark.parametrize("field, edit", [
    ("url", lambda row: {**row, "url": "https://evil.example/"}),   # the citation shown
    ("id", lambda row: {**row, "id": "0" * 16}),                     # shown when there is no url
    ("text", lambda row: {**row, "text": row["text"] + " (edited)"}),
])
def test_an_edited_citation_is_caught(saved, field, edit):
    folder, store = saved
    path = folder / "passages.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[5] = edit(rows[5])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(IndexMismatchError, match="checksum mismatch over ids, texts and urls"):
        Retriever.load(folder, HashEmbedder(), MODEL)
    _rebuilds(folder, store, "changed since the index was built")


def test_a_passage_line_of_another_shape_names_the_line(saved):
    folder, store = saved
    path = folder / "passages.jsonl"
    lines = path.read_text().splitlines()
    lines[6] = json.dumps({"id": 7, "text": None})
    path.write_text("\n".join(lines) + "\n")
    _rebuilds(folder, store, "passages.jsonl, line 7: expected")


SAVER = """
import sys, numpy as np, faiss
sys.path.insert(0, {root!r})
from course_utils.retrieval import PassageStore, Retriever
class Dim:
    def get_sentence_embedding_dimension(self): return 384
texts = [f"passage {{i}} " + "words " * 40 for i in range(20000)]
vectors = np.random.default_rng(0).standard_normal((len(texts), 384)).astype("float32")
index = faiss.IndexFlatIP(384); index.add(vectors)
retriever = Retriever(index, Dim(), PassageStore.from_texts(texts), "other-model")
while True:
    retriever.save({folder!r})
    print("saved", flush=True)
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_during_saving_loses_nothing_and_leaves_no_staging(tmp_path, seed):
    # Another process saves a large index into the folder over and over; it is killed at a
    # seeded random moment, mid-write or mid-swap. Then the folder is either a complete saved
    # index or missing; load_or_build recovers either way and clears the staging folders.
    folder = tmp_path / "rag_index" / "tiny-flat"
    saver = subprocess.Popen([sys.executable, "-c", SAVER.format(root=str(ROOT),
                                                                  folder=str(folder))],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline().strip() == "saved"
        time.sleep(random.Random(seed).uniform(0.0, 0.4))
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait(timeout=30)
    store = PassageStore.from_texts(TEXTS, URLS)
    with pytest.warns(UserWarning) as caught:  # the other model's index is set aside
        retriever, built = load_or_build(folder, store, HashEmbedder(), MODEL, progress=False)
    assert built and retriever.retrieve(TEXTS[0], k=1)[0].url == URLS[0]
    assert any("built with the embedding model 'other-model'" in str(w.message)
               for w in caught)
    leftovers = [p.name for p in folder.parent.iterdir() if ".staging-" in p.name or
                 ".old-" in p.name]
    assert leftovers == []
    assert Retriever.load(folder, HashEmbedder(), MODEL).store == store


def test_an_unwritable_cache_still_gives_a_retriever(tmp_path):
    # As root chmod does not stop writes, so a file stands where the cache folder should be.
    blocker = tmp_path / "cache"
    blocker.write_text("a file")
    store = PassageStore.from_texts(TEXTS, URLS)
    with pytest.warns(UserWarning, match="could not be saved to .*COURSE_CACHE_DIR"):
        retriever, built = load_or_build(blocker / "rag_index" / "tiny-flat", store,
                                         HashEmbedder(), MODEL, progress=False)
    assert built and retriever.retrieve(TEXTS[1], k=1)[0].url == URLS[1]
    assert blocker.read_text() == "a file"
