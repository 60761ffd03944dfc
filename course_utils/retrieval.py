"""Which passages answer a question? Sentence embeddings in a FAISS index, saved with them.

Passages and queries are embedded with a sentence-transformers model and normalized to unit
length, so the inner product FAISS computes IS the cosine similarity (in [-1, 1]). The index is
exact (`IndexFlatIP`, every passage compared) unless asked for, or the corpus reaches a million
passages: then HNSW, a graph index that visits only a few thousand passages per query.

An index on disk is a folder of three files written together (atomically):
  index.faiss      the vectors
  passages.jsonl   one {"id", "text", "url"} per vector, in vector order
  manifest.json    embedding model, dimension, count and a checksum of the passages
Loading checks all three agree, so an index can never silently answer with the wrong passages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

APPROXIMATE_FROM = 1_000_000   # corpus size from which "auto" picks HNSW over the exact index
INDEX_KINDS = ("auto", "flat", "hnsw")
MANIFEST_FORMAT = 1


class IndexMismatchError(ValueError):
    """An index, its passage store and its manifest (or the embedding model) disagree."""


@dataclass(frozen=True)
class IndexSettings:
    kind: str = "auto"             # "flat" (exact), "hnsw" (approximate) or "auto" (by corpus size)
    hnsw_neighbors: int = 32       # HNSW: links per vector (M); more = better recall, more memory
    ef_construction: int = 200     # HNSW: candidates explored while inserting a vector
    ef_search: int = 128           # HNSW: candidates explored per query (recall vs speed)
    batch_size: int = 64           # passages embedded per forward pass

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        for name in ("hnsw_neighbors", "ef_construction", "ef_search", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def resolved_kind(self, n_passages: int) -> str:
        """The index kind for a corpus of this size: exact below APPROXIMATE_FROM passages."""
        if self.kind != "auto":
            return self.kind
        return "hnsw" if n_passages >= APPROXIMATE_FROM else "flat"


@dataclass(frozen=True)
class RetrievedPassage:
    id: str        # stable passage id (hash of its text)
    text: str      # the passage itself
    url: str       # where it came from
    score: float   # cosine similarity with the query, in [-1, 1]

    def to_dict(self) -> dict:
        return asdict(self)


def passage_id(text: str) -> str:
    """A stable id for a passage: the first 16 hex digits of the SHA-1 of its text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PassageStore:
    """The passages behind an index: row i of the index is passage i here."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    urls: tuple[str, ...]

    def __post_init__(self):
        if not len(self.ids) == len(self.texts) == len(self.urls):
            raise ValueError(f"ids, texts and urls differ in length: "
                             f"{len(self.ids)}, {len(self.texts)}, {len(self.urls)}")

    @classmethod
    def from_texts(cls, texts: Iterable[str], urls: Iterable[str] | None = None) -> PassageStore:
        """A store of unique passages (later duplicates of a text are dropped)."""
        texts = list(texts)
        urls = list(urls) if urls is not None else [""] * len(texts)
        seen, keep = set(), []
        for text, url in zip(texts, urls, strict=True):
            if text not in seen:
                seen.add(text)
                keep.append((passage_id(text), text, url))
        ids, texts, urls = zip(*keep, strict=True) if keep else ((), (), ())
        return cls(tuple(ids), tuple(texts), tuple(urls))

    def __len__(self) -> int:
        return len(self.ids)

    def checksum(self) -> str:
        """SHA-256 over ids and texts in order: changes if any passage changes or moves."""
        digest = hashlib.sha256()
        for pid, text in zip(self.ids, self.texts, strict=True):
            digest.update(pid.encode() + b"\t" + text.encode("utf-8") + b"\n")
        return digest.hexdigest()

    def passage(self, i: int, score: float) -> RetrievedPassage:
        return RetrievedPassage(self.ids[i], self.texts[i], self.urls[i], score)


def embedding_dimension(embedding_model) -> int:
    get = getattr(embedding_model, "get_embedding_dimension", None) or \
        embedding_model.get_sentence_embedding_dimension
    return int(get())


def embed_texts(embedding_model, texts: Sequence[str], batch_size: int = 64,
                progress: bool = True, kind: str = "document") -> np.ndarray:
    """Unit-length float32 embeddings, shape (len(texts), dim). kind: "document" or "query"."""
    encode = getattr(embedding_model, f"encode_{kind}", None) or embedding_model.encode
    vectors = encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                     normalize_embeddings=True, convert_to_numpy=True)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_faiss_index(vectors: np.ndarray, settings: IndexSettings = IndexSettings()):
    """A FAISS inner-product index over unit vectors (so scores are cosine similarities)."""
    import faiss

    dim = vectors.shape[1]                                   # vectors: (n, dim)
    if settings.resolved_kind(len(vectors)) == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_neighbors, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = settings.ef_search
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def index_kind(index) -> str:
    import faiss

    return "hnsw" if isinstance(index, faiss.IndexHNSW) else "flat"


class Retriever:
    """Finds the k passages most similar to a query."""

    def __init__(self, index, embedding_model, store: PassageStore, model_name: str = ""):
        self.index, self.embedding_model, self.store = index, embedding_model, store
        self.model_name = model_name     # e.g. profile.embedding_model, kept in the manifest
        if index.ntotal != len(store):
            raise IndexMismatchError(f"the index holds {index.ntotal} vectors but the passage "
                                     f"store {len(store)} passages: they were not built together")
        dim = embedding_dimension(embedding_model)
        if index.d != dim:
            raise IndexMismatchError(f"the index has {index.d}-dimensional vectors but the "
                                     f"embedding model makes {dim}-dimensional ones")

    @classmethod
    def build(cls, store: PassageStore, embedding_model, model_name: str = "",
              settings: IndexSettings = IndexSettings(), progress: bool = True) -> Retriever:
        vectors = embed_texts(embedding_model, store.texts, settings.batch_size, progress)
        return cls(build_faiss_index(vectors, settings), embedding_model, store, model_name)

    def retrieve(self, query: str, k: int = 3) -> list[RetrievedPassage]:
        return self.retrieve_batch([query], k)[0]

    def retrieve_batch(self, queries: Sequence[str], k: int = 3, batch_size: int = 64,
                       progress: bool = False) -> list[list[RetrievedPassage]]:
        """The top k passages for each query, best first."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        k = min(k, len(self.store))
        if k == 0:                                           # an empty corpus finds nothing
            return [[] for _ in queries]
        vectors = embed_texts(self.embedding_model, queries, batch_size, progress, kind="query")
        scores, rows = self.index.search(vectors, k)         # both (n_queries, k)
        scores = np.clip(scores, -1.0, 1.0)                  # float rounding can pass 1 a hair
        return [[self.store.passage(int(i), float(s))
                 for s, i in zip(srow, irow, strict=True) if i >= 0]   # -1: no passage
                for srow, irow in zip(scores, rows, strict=True)]

    def manifest(self) -> dict:
        return {"format": MANIFEST_FORMAT, "embedding_model": self.model_name,
                "dimension": int(self.index.d), "count": len(self.store),
                "checksum": self.store.checksum(), "index_kind": index_kind(self.index)}

    def save(self, folder: str | Path) -> Path:
        """Write index, passages and manifest into `folder`, replacing it whole.

        Everything is written to a staging folder first, then swapped in by renaming, so a
        reader finds the complete old folder, the complete new one, or (for an instant) none.
        """
        import faiss

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            faiss.write_index(self.index, str(staging / "index.faiss"))
            with open(staging / "passages.jsonl", "w", encoding="utf-8") as handle:
                for pid, text, url in zip(self.store.ids, self.store.texts, self.store.urls,
                                          strict=True):
                    handle.write(json.dumps({"id": pid, "text": text, "url": url}) + "\n")
            # the manifest goes last: a folder without one is never loaded
            (staging / "manifest.json").write_text(json.dumps(self.manifest(), indent=2))
            for attempt in range(3):  # another process may swap the same folder meanwhile
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{attempt}")
                try:
                    if folder.exists():
                        os.rename(folder, old)
                    os.rename(staging, folder)
                    break
                except OSError:
                    if attempt == 2:
                        raise
                finally:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, embedding_model, model_name: str = "",
             ef_search: int | None = None) -> Retriever:
        """Load a saved index; raises IndexMismatchError if anything disagrees.

        model_name: the embedding model the caller embeds queries with (e.g.
        profile.embedding_model); it must be the one the passages were embedded with.
        """
        import faiss

        folder = Path(folder)
        if not (folder / "manifest.json").is_file():
            raise FileNotFoundError(f"{folder} holds no saved index (manifest.json missing)")
        manifest = json.loads((folder / "manifest.json").read_text())
        if model_name and manifest["embedding_model"] != model_name:
            raise IndexMismatchError(
                f"{folder} was built with the embedding model {manifest['embedding_model']!r}, "
                f"but queries would be embedded with {model_name!r}: their vectors are not "
                f"comparable. Rebuild the index with this model.")
        with open(folder / "passages.jsonl", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        store = PassageStore(tuple(r["id"] for r in rows), tuple(r["text"] for r in rows),
                             tuple(r.get("url", "") for r in rows))
        if len(store) != manifest["count"]:
            raise IndexMismatchError(f"{folder}/passages.jsonl holds {len(store)} passages, "
                                     f"the manifest says {manifest['count']}")
        if store.checksum() != manifest["checksum"]:
            raise IndexMismatchError(f"the passages in {folder}/passages.jsonl changed since the "
                                     f"index was built (checksum mismatch): rebuild the index")
        index = faiss.read_index(str(folder / "index.faiss"))
        if index.d != manifest["dimension"]:
            raise IndexMismatchError(f"index dimension {index.d} != manifest "
                                     f"{manifest['dimension']}")
        if ef_search is not None and index_kind(index) == "hnsw":
            index.hnsw.efSearch = ef_search
        return cls(index, embedding_model, store, manifest["embedding_model"])


def load_or_build(folder: str | Path, store: PassageStore, embedding_model, model_name: str,
                  settings: IndexSettings = IndexSettings(), progress: bool = True):
    """Reuse the index saved in `folder` if it holds exactly `store`, else build and save one.

    Returns (retriever, built) where built is False when the saved index was reused.
    """
    try:
        retriever = Retriever.load(folder, embedding_model, model_name, settings.ef_search)
        same_kind = index_kind(retriever.index) == settings.resolved_kind(len(store))
        if same_kind and retriever.store.checksum() == store.checksum():
            return retriever, False
    except (FileNotFoundError, IndexMismatchError):
        pass
    retriever = Retriever.build(store, embedding_model, model_name, settings, progress)
    retriever.save(folder)
    return retriever, True


# --- the corpus and how well retrieval finds the right passage --------------------------------

def row_passages(row: dict) -> list[tuple[str, str, bool]]:
    """(text, url, is_selected) for each passage of an MS MARCO row."""
    p = row["passages"]
    return [(t, u, bool(s)) for t, u, s in
            zip(p["passage_text"], p["url"], p["is_selected"], strict=True)]


def selected_passage_ids(row: dict) -> set[str]:
    """Ids of the passages MS MARCO's annotators marked as answering the query."""
    return {passage_id(text) for text, _, selected in row_passages(row) if selected}


def all_source_rows(profile) -> Iterable[dict]:
    """Every MS MARCO row the profile's data comes from, to draw distractors from.

    mini: all rows of the shipped train/validation/test files (load_msmarco caps each split
    at the profile's size); hub: the hub's whole train split (already cached by load_msmarco).
    """
    if profile.dataset == "mini":
        from course_utils.data import MINI_DIR, SPLITS

        for split in SPLITS:
            with open(MINI_DIR / f"{split}.jsonl", encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line) if line.strip() else None
                    if isinstance(row, dict) and isinstance(row.get("passages"), dict):
                        yield row
    else:
        import datasets

        yield from datasets.load_dataset(profile.dataset, profile.dataset_config, split="train")


def build_corpus(dataset_dict, profile, evaluated_split: str = "test",
                 extra_rows: Iterable[dict] | None = None) -> PassageStore:
    """The passages to index: every passage of the evaluated queries, then distractors.

    The evaluated queries' own passages (the gold one and the others MS MARCO returned for that
    query) always go in, so retrieval can find the answer. Distractors come from the other
    splits, then from `extra_rows` (default: all_source_rows(profile)), until the corpus holds
    profile.rag_corpus_size passages. The mini data set (profile.dataset == "mini") is indexed
    whole. Texts are deduplicated; ids are hashes of the text, so they are stable.
    """
    limit = None if profile.dataset == "mini" else profile.rag_corpus_size
    texts: list[str] = []
    urls: list[str] = []
    seen: set[str] = set()

    def add(rows, cap: int | None) -> bool:
        for row in rows:
            for text, url, _ in row_passages(row):
                if cap is not None and len(texts) >= cap:
                    return True
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
                    urls.append(url)
        return cap is not None and len(texts) >= cap

    add(dataset_dict[evaluated_split], None)   # never cut: the gold passages must all be there
    full = limit is not None and len(texts) >= limit
    for name in dataset_dict:
        if name != evaluated_split and not full:
            full = add(dataset_dict[name], limit)
    if not full:
        full = add(all_source_rows(profile) if extra_rows is None else extra_rows, limit)
    if limit is not None and not full:
        raise ValueError(f"only {len(texts)} unique passages available, the profile asks for "
                         f"rag_corpus_size={limit}: pass more MS MARCO rows as extra_rows")
    return PassageStore.from_texts(texts, urls)


def retrieval_metrics(retrieved_ids: Sequence[Sequence[str]],
                      relevant_ids: Sequence[set[str]],
                      ks: Sequence[int] = (1, 3, 10), mrr_at: int = 10) -> dict:
    """Recall@k and MRR@k over the queries that have at least one relevant passage.

    recall@k: share of a query's relevant passages found in its top k, averaged over queries
    (MS MARCO marks one passage for most queries, so this is mostly "was it in the top k").
    mrr@k: mean of 1 / rank of the first relevant passage (0 when it is not in the top k).
    """
    if len(retrieved_ids) != len(relevant_ids):
        raise ValueError(f"{len(retrieved_ids)} result lists for {len(relevant_ids)} queries")
    pairs = [(list(r), set(rel)) for r, rel in zip(retrieved_ids, relevant_ids, strict=True)
             if rel]
    if not pairs:
        raise ValueError("no query has a relevant passage: nothing to measure")
    metrics = {}
    for k in ks:
        hits = [len(rel & set(r[:k])) / len(rel) for r, rel in pairs]
        metrics[f"recall@{k}"] = float(np.mean(hits))
    reciprocal = [next((1 / rank for rank, pid in enumerate(r[:mrr_at], 1) if pid in rel), 0.0)
                  for r, rel in pairs]
    metrics[f"mrr@{mrr_at}"] = float(np.mean(reciprocal))
    metrics["n"] = len(pairs)
    return metrics
