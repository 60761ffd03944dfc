"""Retrieval numbers of `make bench` (parts 3 and 4 of benchmarks/bench.py).

Embedding: the course's encoding path (course_utils.retrieval.embed_texts, what
Retriever.build calls) against sentence-transformers' `encode` called directly, on the same
mini MS MARCO passages with the same model object, interleaved.

FAISS: exact search (IndexFlatIP, fp32) against fp16 and 8-bit scalar quantization
(IndexScalarQuantizer) and HNSW (IndexHNSWFlat) at 10k, 100k and 1M vectors of dimension 384:
build time, single-query latency (one query per `search` call, as a RAG step asks) and recall@10
against the exact top 10. The vectors are synthetic, shaped like real embeddings (see
`VectorModel`), and the memory-bandwidth floor of exact search is measured in the same run.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import numpy as np

K = 10                             # recall@10 against the exact top 10
DIM = 384                          # all-MiniLM-L6-v2's dimension
EF_SEARCH = (16, 32, 64, 128, 256, 512)   # HNSW efSearch values swept on each built graph


@dataclass(frozen=True)
class RetrievalSizes:
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    dim: int = DIM
    queries: int = 200             # queries for recall (a batched search each)
    latency_queries: int = 100     # most single-query searches timed per index
    latency_seconds: float = 2.0   # ... or fewer, once an index has been timed this long
    hnsw_m: int | None = None      # links per vector; None: the course's (IndexSettings)
    ef_construction: int = 40      # HNSW build effort (the course's 200 takes ~5x longer)
    topics: int = 500              # clusters of the synthetic vectors
    passages: int = 512            # passages embedded in the embedding comparison
    embedding_rounds: int = 3      # interleaved encodings per path (pairs of the two paths)
    bandwidth_mib: int = 512       # size of the array copied to measure memory bandwidth

    def __post_init__(self):
        if not self.sizes or min(self.sizes) < 2 * K:
            raise ValueError(f"sizes must hold vector counts of at least {2 * K}")
        if self.queries < 1 or self.latency_queries < 1 or self.passages < 2:
            raise ValueError("queries and latency_queries must be at least 1, passages at least 2")


# --- part 4: embedding throughput --------------------------------------------------------------


def measure_embedding(sizes: RetrievalSizes, log=print) -> tuple[dict, np.ndarray]:
    """Passages per second of the course's path and of sentence-transformers directly.
    Returns the record and the course path's embeddings (they shape the synthetic vectors)."""
    from course_utils.config import get_profile
    from course_utils.models import load_embedding_model
    from course_utils.retrieval import (
        IndexSettings,
        PassageStore,
        all_source_rows,
        embed_texts,
        row_passages,
    )

    profile = get_profile("tiny")
    store = PassageStore.from_texts(t for row in all_source_rows(profile)
                                    for t, _, _ in row_passages(row))
    texts = list(store.texts[:sizes.passages])
    model = load_embedding_model(profile.embedding_model)
    batch = IndexSettings().batch_size
    paths = {
        "course": lambda: embed_texts(model, texts, batch, progress=False),
        "sentence_transformers": lambda: model.encode(
            texts, batch_size=batch, show_progress_bar=False, normalize_embeddings=True,
            convert_to_numpy=True),
    }
    model.encode(texts[:batch], batch_size=batch, show_progress_bar=False)   # warm-up
    seconds = {name: [] for name in paths}
    vectors = {}
    for round_ in range(sizes.embedding_rounds):
        order = list(paths) if round_ % 2 == 0 else list(paths)[::-1]
        for name in order:
            start = time.perf_counter()
            vectors[name] = paths[name]()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: len(texts) * len(s) / sum(s) for name, s in seconds.items()}
    same = float(np.abs(vectors["course"] - vectors["sentence_transformers"]).max())
    # paired: each round's two encodings of the same passages, back to back
    paired = [direct / course for course, direct in
              zip(seconds["course"], seconds["sentence_transformers"], strict=True)]
    record = {"passages": len(texts), "batch_size": batch, "rounds": sizes.embedding_rounds,
              "mean_words": float(np.mean([len(t.split()) for t in texts])),
              "model": profile.embedding_model, "seconds": seconds,
              "passages_per_second": rate,
              "course_over_direct": float(np.median(paired)), "paired_ratios": paired,
              "pooled_course_over_direct": rate["course"] / rate["sentence_transformers"],
              "max_abs_difference": same}
    log(f"  course {rate['course']:.0f} passages/s, sentence-transformers "
        f"{rate['sentence_transformers']:.0f} passages/s "
        f"(x{record['course_over_direct']:.3f}; same vectors within {same:.1e})")
    return record, vectors["course"]


# --- synthetic vectors ---------------------------------------------------------------------------


class VectorModel:
    """Unit vectors shaped like sentence embeddings, in any number.

    Real embeddings are anisotropic (a shared mean direction, variance concentrated in a few
    hundred directions) and clustered by topic. Both are taken from real embeddings when given
    (the embedding part's MiniLM vectors of mini MS MARCO passages): their mean and principal
    directions with each direction's spread. A topic centre is the mean plus a random draw with
    that spread; a vector is its topic's centre plus a draw with `within` times that spread,
    then normalized. Queries are drawn the same way (new draws, not copies of indexed vectors).
    Without real embeddings the spread falls off as a power law in random directions.
    """

    def __init__(self, dim: int, topics: int, seed: int = 0, real: np.ndarray | None = None,
                 within: float = 0.8):
        rng = np.random.default_rng(seed)
        if real is not None and len(real) > 2:
            real = real.astype(np.float64)
            self.mean = real.mean(axis=0)
            _, singular, basis = np.linalg.svd(real - self.mean, full_matrices=False)
            self.scales = singular / np.sqrt(len(real) - 1)          # std along each direction
            self.basis = basis                                      # (components, dim)
            self.source = f"mean and {len(self.scales)} principal directions of {len(real)} " \
                          "real embeddings"
        else:
            self.mean = rng.standard_normal(dim) * 0.5 / np.sqrt(dim)
            self.basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T
            self.scales = 0.15 * np.arange(1, dim + 1) ** -0.5
            self.source = "power-law spread in random directions (no real embeddings given)"
        self.within = within
        self.centres = self.mean + (rng.standard_normal((topics, len(self.scales)))
                                    * self.scales) @ self.basis            # (topics, dim)
        self.seed = seed

    def sample(self, n: int, stream: int, chunk: int = 100_000) -> np.ndarray:
        """n unit vectors (float32, (n, dim)); `stream` picks an independent random stream."""
        rng = np.random.default_rng([self.seed, stream])
        out = np.empty((n, self.centres.shape[1]), dtype=np.float32)
        basis = self.basis.astype(np.float32)
        scales = (self.scales * self.within).astype(np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            topic = rng.integers(len(self.centres), size=m)
            draw = rng.standard_normal((m, len(scales)), dtype=np.float32) * scales
            block = self.centres[topic].astype(np.float32) + draw @ basis
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start:start + m] = block
        return out


def neighbour_statistics(vectors: np.ndarray, n: int = 500) -> dict:
    """Mean cosine of each of n vectors with its nearest other vector, and of random pairs:
    compared between real and synthetic embeddings, it says how alike their structure is."""
    n = min(n, len(vectors))
    sims = vectors[:n] @ vectors.T                                         # (n, N)
    sims[np.arange(n), np.arange(n)] = -np.inf
    rng = np.random.default_rng(1)
    pairs = rng.integers(len(vectors), size=(2000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    random = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    return {"nearest_cosine": float(sims.max(axis=1).mean()),
            "random_pair_cosine": float(random.mean()), "vectors": int(len(vectors))}


# --- part 3: FAISS ------------------------------------------------------------------------------


def copy_bandwidth(mib: int, repeats: int = 5) -> dict:
    """Memory bandwidth of one core, from numpy copies of an array larger than the caches:
    (bytes read + bytes written) / seconds, the best of `repeats`."""
    source = np.ones(mib * 2**20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)              # touch every page first
    best = min(_timed(lambda: np.copyto(target, source)) for _ in range(repeats))
    return {"bytes": int(source.nbytes), "seconds": best,
            "gb_per_second": 2 * source.nbytes / best / 1e9, "repeats": repeats,
            "counted": "bytes read + bytes written, best of the repeats, one thread"}


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def single_query_latency(index, queries: np.ndarray, most: int, budget: float) -> dict:
    """p50 and p95 of one-query searches on one thread, in milliseconds (a first search is not
    timed). One thread: a server answers concurrent queries one per core, and FAISS's threads
    on a busy 2-core machine wait for each other longer than a small search takes."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:1], K)
        times, started = [], time.perf_counter()
        for i in range(min(most, len(queries))):
            times.append(_timed(lambda i=i: index.search(queries[i:i + 1], K)))
            if time.perf_counter() - started > budget and len(times) >= 10:
                break
    finally:
        faiss.omp_set_num_threads(threads)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "timed_queries": len(times)}


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)]))


def index_builders(dim: int, m: int, ef_construction: int):
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT

    def hnsw():
        index = faiss.IndexHNSWFlat(dim, m, ip)
        index.hnsw.efConstruction = ef_construction
        return index

    return {
        "flat_fp32": (lambda: faiss.IndexFlatIP(dim), 4),   # bytes per dimension read per query
        "flat_fp16": (lambda: faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, ip), 2),
        "sq8": (lambda: faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, ip), 1),
        "hnsw": (hnsw, None),
    }


def measure_faiss(sizes: RetrievalSizes, real: np.ndarray | None = None, log=print) -> dict:
    """Part 3: every index kind at every size; build, latency, recall, the bandwidth floor."""
    import faiss

    from course_utils.retrieval import IndexSettings

    settings = IndexSettings()
    m = sizes.hnsw_m or settings.hnsw_neighbors
    ef_values = sorted({*EF_SEARCH, settings.ef_search})     # the course's value among them
    started = time.perf_counter()
    bandwidth = copy_bandwidth(sizes.bandwidth_mib)
    log(f"  memory bandwidth (numpy copy, one thread): {bandwidth['gb_per_second']:.1f} GB/s")
    if real is not None and real.shape[1] != sizes.dim:
        real = None                                  # e.g. the smoke test's small dimension
    model = VectorModel(sizes.dim, sizes.topics, real=real)
    largest = max(sizes.sizes)
    base = model.sample(largest, stream=1)          # smaller sizes are its first n vectors
    queries = model.sample(sizes.queries, stream=2)
    realism = {"synthetic": neighbour_statistics(base[:len(real) if real is not None else 1000])}
    if real is not None:
        realism["real"] = neighbour_statistics(real.astype(np.float32))
    results, graph, in_graph, graph_seconds = [], None, 0, 0.0
    for n in sorted(sizes.sizes):
        vectors = base[:n]
        exact = None
        for name, (build, width) in index_builders(sizes.dim, m, sizes.ef_construction).items():
            if name == "hnsw":     # one graph grows through the sizes: adding is building
                graph = graph or build()
                index, start = graph, time.perf_counter()
                index.add(base[in_graph:n])
                graph_seconds += time.perf_counter() - start
                in_graph, build_seconds = n, graph_seconds
            else:
                index, start = build(), time.perf_counter()
                index.train(vectors)
                index.add(vectors)
                build_seconds = time.perf_counter() - start
            found = index.search(queries, K)[1] if name != "hnsw" else None
            if name == "flat_fp32":
                exact = found
            variants = [("", None)] if name != "hnsw" else [(f"_ef{ef}", ef) for ef in ef_values]
            for suffix, ef in variants:
                if ef is not None:
                    index.hnsw.efSearch = ef
                    found = index.search(queries, K)[1]
                row = {"size": n, "index": name + suffix, "kind": name, "ef_search": ef,
                       "build_seconds": build_seconds, "recall_at_10": recall_at_k(found, exact),
                       **single_query_latency(index, queries, sizes.latency_queries,
                                              sizes.latency_seconds)}
                if width is not None:   # exact scans read every stored vector once
                    row["bytes_per_query"] = n * sizes.dim * width
                    row["bandwidth_floor_ms"] = row["bytes_per_query"] / (
                        bandwidth["gb_per_second"] * 1e9) * 1e3
                results.append(row)
                floor = (f", floor {row['bandwidth_floor_ms']:.2f} ms"
                         if "bandwidth_floor_ms" in row else "")
                log(f"  {n:>9,} {row['index']:<12} build {build_seconds:6.2f} s, p50 "
                    f"{row['p50_ms']:8.3f} ms, p95 {row['p95_ms']:8.3f} ms{floor}, "
                    f"recall@10 {row['recall_at_10']:.3f}")
            if index is not graph:
                del index
                gc.collect()
    del graph
    return {"results": results, "bandwidth": bandwidth, "dim": sizes.dim,
            "queries": sizes.queries, "k": K, "hnsw": {
                "m": m, "ef_construction": sizes.ef_construction, "ef_search": ef_values,
                "course_settings": {"m": settings.hnsw_neighbors,
                                    "ef_construction": settings.ef_construction,
                                    "ef_search": settings.ef_search},
                "course_approximate_from": _approximate_from()},
            "vectors": {"made_by": model.source, "topics": sizes.topics,
                        "within_topic_spread": model.within, "realism": realism},
            "faiss_threads": faiss.omp_get_max_threads(),
            "seconds": time.perf_counter() - started}


def _approximate_from() -> int:
    from course_utils.retrieval import APPROXIMATE_FROM

    return APPROXIMATE_FROM


def recommended_index(size: int) -> str:
    """The index the course builds for a corpus of this size (IndexSettings' "auto")."""
    from course_utils.retrieval import IndexSettings

    settings = IndexSettings()
    kind = settings.resolved_kind(size)
    return "flat_fp32" if kind == "flat" else f"hnsw_ef{settings.ef_search}"
