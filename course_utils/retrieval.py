"""Which passages answer a question? Sentence embeddings in a FAISS index, saved with them.

Passages and queries are embedded with a sentence-transformers model and normalized to unit
length, so the inner product FAISS computes IS the cosine similarity (in [-1, 1]). The index is
exact (`IndexFlatIP`, every passage compared) unless asked for, or the corpus reaches a million
passages: then HNSW, a graph index that visits only a few thousand passages per query.

An index on disk is a folder of three files written together (atomically):
  index.faiss      the vectors
  passages.jsonl   one {"id", "text", "url"} per vector, in vector order
  manifest.json    embedding model, dimension, count, a checksum of the passages (ids, texts
                   and the urls shown as citations) and one of index.faiss
Loading checks all three agree, so an index can never silently answer with the wrong passages
or cite the wrong source. load_or_build sets a saved index that cannot be used aside (renamed,
with a warning naming it) and builds a new one; it never fails on a damaged cache.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Corpus size from which "auto" picks HNSW over the exact index: at 100k vectors an exact scan
# took 11 ms per question on 2 CPU cores and HNSW (M 32, efSearch 128) 0.16 ms at recall@10
# 0.99 (make bench, benchmarks/results/bench-amd-epyc-2c.json).
APPROXIMATE_FROM = 100_000
INDEX_KINDS = ("auto", "flat", "hnsw")
MANIFEST_FORMAT = 2            # 2: the checksum covers urls; index.faiss has its own
MANIFEST_FIELDS = {"format": int, "embedding_model": str, "dimension": int, "count": int,
                   "checksum": str, "index_sha256": str, "index_kind": str}


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
        """SHA-256 over ids, texts and urls in order: changes if any passage or the source it
        is cited by (its url, or its id when it has none) changes or moves."""
        digest = hashlib.sha256()
        for row in zip(self.ids, self.texts, self.urls, strict=True):
            digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
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
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-{os.getpid()}-",
                                        dir=folder.parent))
        try:
            faiss.write_index(self.index, str(staging / "index.faiss"))
            with open(staging / "passages.jsonl", "w", encoding="utf-8") as handle:
                for pid, text, url in zip(self.store.ids, self.store.texts, self.store.urls,
                                          strict=True):
                    handle.write(json.dumps({"id": pid, "text": text, "url": url}) + "\n")
            # the manifest goes last: a folder without one is never loaded
            manifest = {**self.manifest(), "index_sha256": _file_sha256(staging / "index.faiss")}
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
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
        """Load a saved index; raises IndexMismatchError naming the file if anything is
        damaged or disagrees, FileNotFoundError if there is no saved index.

        model_name: the embedding model the caller embeds queries with (e.g.
        profile.embedding_model); it must be the one the passages were embedded with.
        """
        import faiss

        folder = Path(folder)
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            raise FileNotFoundError(f"{folder} holds no saved index (manifest.json missing)")
        manifest = _read_manifest(folder)
        if model_name and manifest["embedding_model"] != model_name:
            raise IndexMismatchError(
                f"{folder} was built with the embedding model {manifest['embedding_model']!r}, "
                f"but queries would be embedded with {model_name!r}: their vectors are not "
                f"comparable. Rebuild the index with this model.")
        store = _read_passages(folder / "passages.jsonl")
        if len(store) != manifest["count"]:
            raise IndexMismatchError(f"{folder}/passages.jsonl holds {len(store)} passages, "
                                     f"the manifest says {manifest['count']}")
        if store.checksum() != manifest["checksum"]:
            raise IndexMismatchError(f"the passages in {folder}/passages.jsonl changed since the "
                                     f"index was built (checksum mismatch over ids, texts and "
                                     f"urls): rebuild the index")
        path = folder / "index.faiss"
        if not path.is_file():
            raise IndexMismatchError(f"{path} is missing: rebuild the index")
        if _file_sha256(path) != manifest["index_sha256"]:
            raise IndexMismatchError(f"{path} changed since the index was built (checksum "
                                     f"mismatch; damaged or cut short): rebuild the index")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:  # faiss's error for a file it cannot parse
            raise IndexMismatchError(f"{path} cannot be read by FAISS "
                                     f"({str(error).strip().splitlines()[-1][:200]})") from None
        if index.d != manifest["dimension"]:
            raise IndexMismatchError(f"index dimension {index.d} != manifest "
                                     f"{manifest['dimension']}")
        if ef_search is not None and index_kind(index) == "hnsw":
            index.hnsw.efSearch = ef_search
        return cls(index, embedding_model, store, manifest["embedding_model"])


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict:
    """manifest.json as a dict of MANIFEST_FIELDS; IndexMismatchError naming what is wrong."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise IndexMismatchError(f"{path} is missing (a save was cut short?): rebuild the index")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IndexMismatchError(f"{path} cannot be read ({type(error).__name__}: "
                                 f"{error}): rebuild the index") from None
    if not isinstance(manifest, dict):
        raise IndexMismatchError(f"{path} holds a {type(manifest).__name__}, not a manifest")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise IndexMismatchError(f"{path} has format {manifest.get('format')!r}, this course "
                                 f"reads format {MANIFEST_FORMAT}: rebuild the index")
    wrong = [f"{name} (expected {kind.__name__}, found {manifest.get(name)!r})"
             for name, kind in MANIFEST_FIELDS.items()
             if not isinstance(manifest.get(name), kind) or isinstance(manifest.get(name), bool)]
    if wrong:
        raise IndexMismatchError(f"{path} has wrong or missing fields: {', '.join(wrong)}")
    return manifest


def _read_passages(path: Path) -> PassageStore:
    """passages.jsonl as a PassageStore; IndexMismatchError naming the line that is wrong."""
    ids, texts, urls = [], [], []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise IndexMismatchError(f"{path}, line {number}: not JSON ({error.msg}); "
                                             f"the file is damaged or cut short") from None
                if not (isinstance(row, dict) and isinstance(row.get("id"), str)
                        and isinstance(row.get("text"), str)
                        and isinstance(row.get("url", ""), str)):
                    raise IndexMismatchError(f"{path}, line {number}: expected "
                                             f'{{"id", "text", "url"}} strings')
                ids.append(row["id"])
                texts.append(row["text"])
                urls.append(row.get("url", ""))
    except FileNotFoundError:
        raise IndexMismatchError(f"{path} is missing: rebuild the index") from None
    except (OSError, UnicodeDecodeError) as error:
        raise IndexMismatchError(f"{path} cannot be read ({type(error).__name__}: "
                                 f"{error})") from None
    return PassageStore(tuple(ids), tuple(texts), tuple(urls))


def _remove_stale_staging(folder: Path) -> None:
    """Delete staging folders of saves whose process is gone (killed mid-save)."""
    for staging in folder.parent.glob(f".{folder.name}.staging-*"):
        try:
            pid = int(staging.name.split("staging-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)                      # raises if no such process
            if pid != os.getpid():
                continue                         # another process is saving right now
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:                  # a live process of another user
            continue
        shutil.rmtree(staging, ignore_errors=True)
    for old in sorted(folder.parent.glob(f".{folder.name}.old-*")):  # a swap cut short
        if not folder.exists():
            try:
                os.rename(old, folder)           # the complete earlier index comes back
                continue
            except OSError:
                pass
        shutil.rmtree(old, ignore_errors=True)


def set_aside(folder: Path, reason: str) -> Path | None:
    """Rename an unusable saved index to <folder>.set-aside-<time>, with a warning naming both;
    returns the new name (None if it could not be renamed, which the warning says too)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    aside = folder.with_name(f"{folder.name}.set-aside-{stamp}")
    try:
        os.rename(folder, aside)
    except OSError as error:
        warnings.warn(f"The saved index {folder} cannot be used ({reason}) and cannot be set "
                      f"aside ({error.strerror or error}); a new index is built in memory. "
                      f"Delete {folder} by hand.", stacklevel=3)
        return None
    warnings.warn(f"The saved index {folder} cannot be used ({reason}). It was set aside as "
                  f"{aside} and a new index is built; delete that folder when you no longer "
                  f"need it.", stacklevel=3)
    return aside


def load_or_build(folder: str | Path, store: PassageStore, embedding_model, model_name: str,
                  settings: IndexSettings = IndexSettings(), progress: bool = True):
    """Reuse the index saved in `folder` if it holds exactly `store`, else build and save one.

    Returns (retriever, built) where built is False when the saved index was reused. A saved
    index that is damaged (a manifest, passage file or index.faiss that cannot be read or
    does not match), or was built by another embedding model or over other passages, is set
    aside with a warning naming it (set_aside) and rebuilt: this never raises for the cache.
    """
    folder = Path(folder)
    if folder.parent.is_dir():
        _remove_stale_staging(folder)
    reason = None
    try:
        retriever = Retriever.load(folder, embedding_model, model_name, settings.ef_search)
        wanted = settings.resolved_kind(len(store))
        if retriever.store.checksum() != store.checksum():
            reason = (f"its {len(retriever.store)} passages differ from the {len(store)} "
                      f"asked for in their texts, order or urls")
        elif index_kind(retriever.index) != wanted:
            reason = f"it is a {index_kind(retriever.index)} index, {wanted} is asked for"
        else:
            return retriever, False
    except FileNotFoundError:
        pass                                     # nothing saved yet
    except (IndexMismatchError, OSError) as error:
        reason = str(error)
    if reason is not None:
        set_aside(folder, reason)
    retriever = Retriever.build(store, embedding_model, model_name, settings, progress)
    try:
        retriever.save(folder)
    except OSError as error:
        warnings.warn(f"The new index could not be saved to {folder} "
                      f"({error.strerror or error}); it is used from memory and built again "
                      f"next time. Set COURSE_CACHE_DIR to a writable folder to keep it.",
                      stacklevel=2)
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
