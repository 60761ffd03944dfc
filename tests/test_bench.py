"""benchmarks/bench.py (`make bench`) without the full run.

1. README's benchmark table is what `python benchmarks/bench.py --readme` generates from the
   committed results (benchmarks/results/bench-<machine>.json).
2. The committed results hold every part, their plots draw and their summary prints.
3. Small calls of the bench's parts, a few seconds in all (no benchmark runs here; the whole
   bench with tiny sizes is `python benchmarks/bench.py --smoke`): FAISS on small indexes, one
   step of each training pipeline on a random 2-layer model. No timing is asserted.
4. The parts that decide a verdict: targets judged on given numbers, the pairing of steps,
   the padded recipe's rows, the synthetic vectors.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
import bench_report  # noqa: E402
import bench_retrieval  # noqa: E402
from bench_training import paired_ratio  # noqa: E402


def committed_results() -> Path | None:
    """The newest full results in benchmarks/results, or None before the first `make bench`."""
    try:
        return bench.latest_results()
    except FileNotFoundError:
        return None


def latest_or_skip() -> dict:
    source = committed_results()
    if source is None:
        pytest.skip("no make bench results in benchmarks/results yet: run `make bench`, then "
                    "`make bench-table`, and commit both (see benchmarks/README.md)")
    return json.loads(source.read_text())


def test_readme_table_is_generated_from_the_latest_results():
    source = committed_results()
    block = bench_report.readme_block(ROOT / "README.md")
    if source is None:   # no results: no table, never one typed by hand
        assert block == "", "README shows a benchmark table but no results back it"
        return
    expected = bench_report.readme_table(json.loads(source.read_text()), source.relative_to(ROOT))
    assert block == expected, "README's benchmark table is out of date: run `make bench-table`"


def test_committed_results_hold_every_part_and_target():
    result = latest_or_skip()
    for key in ("date", "hardware", "versions", "load_average", "training", "memory",
                "embedding", "faiss", "targets"):
        assert key in result
    assert {t["part"] for t in result["targets"]} == {"training", "memory", "faiss", "embedding"}
    assert all(isinstance(t["met"], bool) for t in result["targets"])


def test_plots_and_summary_from_the_committed_results(tmp_path):
    result = latest_or_skip()
    assert result["embedding"]["max_abs_difference"] < 1e-5   # both paths embed alike
    plots = bench_report.plot_all(result, tmp_path)
    assert [p.name.rsplit("-", 1)[1] for p in plots] == ["training.png", "memory.png",
                                                         "faiss.png", "embedding.png"]
    assert all(p.stat().st_size > 10_000 for p in plots)
    text = bench_report.summary(result)
    assert "targets:" in text and "recall@10" in text


def test_smoke_results_never_feed_the_readme(tmp_path):
    (tmp_path / "bench-x.json").write_text(json.dumps({"smoke": True, "date": "2026-01-01"}))
    with pytest.raises(FileNotFoundError, match="make bench"):
        bench.latest_results(tmp_path)


SMALL = bench_retrieval.RetrievalSizes(sizes=(200, 1_000), dim=16, queries=20, latency_queries=5,
                                       latency_seconds=0.01, topics=10, bandwidth_mib=4,
                                       ef_construction=16)


def test_faiss_part_on_small_indexes():
    record = bench_retrieval.measure_faiss(SMALL, log=lambda *_: None)
    rows = record["results"]
    assert {r["index"] for r in rows} >= {"flat_fp32", "flat_fp16", "sq8", "hnsw_ef128"}
    assert {r["size"] for r in rows} == {200, 1_000}
    assert all(r["recall_at_10"] == 1.0 for r in rows if r["index"] == "flat_fp32")
    assert all(0.0 <= r["recall_at_10"] <= 1.0 and r["p95_ms"] >= r["p50_ms"] > 0 for r in rows)
    flat = {r["size"]: r for r in rows if r["index"] == "flat_fp32"}
    assert flat[1_000]["bytes_per_query"] == 1_000 * 16 * 4          # fp32 reads 4 bytes a value
    assert flat[1_000]["bandwidth_floor_ms"] == pytest.approx(
        5 * flat[200]["bandwidth_floor_ms"])                          # the floor grows with n
    hnsw = [r for r in rows if r["kind"] == "hnsw"]
    assert hnsw[-1]["build_seconds"] >= hnsw[0]["build_seconds"]      # one graph grows


def test_training_pipelines_see_the_same_real_tokens(tmp_path):
    """One timed step of the course's pipeline and of the padded recipe on a random 2-layer
    model: the same rows, padded to 512, carry the same real tokens in more padded ones."""
    from dataclasses import replace

    from bench_training import load_method, padded_rows, run_pipeline

    from course_utils.config import get_profile
    from course_utils.data import load_msmarco, tokenize_qa_split
    from course_utils.hardware import detect_hardware

    sizes = replace(bench.smoke_sizes(tmp_path)[0], batch_size=2)
    hardware = detect_hardware(prefer_cpu=True)
    model, tokenizer = load_method("lora", "fp32", sizes.model_id, hardware)
    profile = get_profile("tiny")
    rows = tokenize_qa_split(tokenizer, load_msmarco(profile)["train"].select(range(4)),
                             profile.max_length)
    padded = padded_rows(rows, 512, tokenizer.pad_token_id)
    runs = [run_pipeline(pipeline, model, tokenizer, rows, padded, hardware, "fp32", sizes)
            for pipeline in ("course", "pad512")]
    course, pad512 = runs
    assert course["real_tokens"] == pad512["real_tokens"] > 0
    assert pad512["padded_tokens"] == 2 * 512 > course["padded_tokens"]
    assert all(r["seconds"] > 0 and r["loss_finite"] for r in runs)
    assert course["stepstats_tokens_per_second"] > 0
    ratio, pairs = paired_ratio([{**r, "pipeline": p} for r, p in
                                 zip(runs, ("course", "pad512"), strict=True)], "pad512")
    assert pairs == 1 and ratio == pytest.approx(pad512["seconds"] / course["seconds"])


def test_autocast_probe_times_both_precisions_and_says_which_is_faster(tmp_path):
    """The probe that decides whether bf16 configurations are timed, on a random 2-layer model."""
    from bench_training import autocast_probe

    from course_utils.hardware import detect_hardware

    probe = autocast_probe(str(bench.tiny_model(tmp_path)), detect_hardware(prefer_cpu=True),
                           length=16, repeats=1)
    assert probe["fp32_s"] > 0 and probe["bf16_s"] > 0
    assert probe["bf16_over_fp32"] == pytest.approx(probe["bf16_s"] / probe["fp32_s"])
    assert probe["bf16_faster"] == (probe["bf16_s"] < probe["fp32_s"])
    summary = bench_report.summary({
        "hardware": {"cpu": "x", "cores": 2}, "seconds": 60, "targets": [],
        "load_average": {"start": [0.1], "end": [0.2]}, "date": "2026-12-02",
        "training": {"configs": [], "bf16_autocast_probe": {**probe, "bf16_faster": False}}})
    assert "bf16 was not timed" in summary


def test_paired_ratio_is_the_median_over_steps_of_the_same_rows():
    runs = [{"pipeline": "course", "step_seconds": [1.0, 2.0, 1.0], "step_tokens": [10, 20, 30]},
            {"pipeline": "course", "step_seconds": [1.0, 9.0, 1.0], "step_tokens": [10, 20, 30]},
            {"pipeline": "plain", "step_seconds": [2.0, 2.0, 1.0], "step_tokens": [10, 20, 30]}]
    ratio, pairs = paired_ratio(runs, "plain")
    assert pairs == 6                       # each course step with the plain step of its rows
    assert ratio == pytest.approx(1.0)      # ratios 2, 1, 1, 2, 2/9, 1: median 1
    runs[2]["step_tokens"] = [11, 21, 31]   # other rows: nothing to pair
    with pytest.raises(ValueError, match="same rows"):
        paired_ratio(runs, "plain")


def fake_result(pad=3.0, plain=0.99, memory=0.05, p50_100k=12.0, recall=1.0, flat_1m=120.0,
                hnsw_1m=0.3, embedding=1.0, hnsw_recall_100k=0.97):
    configs = [{"method": m, "precision": p, "course_over_pad512": pad, "course_over_plain": plain}
               for m in ("full", "lora", "qlora") for p in ("fp32", "bf16")]
    rows = [{"size": 100_000, "index": "flat_fp32", "p50_ms": p50_100k, "recall_at_10": recall},
            {"size": 100_000, "index": "hnsw_ef128", "p50_ms": 0.2,
             "recall_at_10": hnsw_recall_100k},
            {"size": 1_000_000, "index": "flat_fp32", "p50_ms": flat_1m, "recall_at_10": 1.0},
            {"size": 1_000_000, "index": "hnsw_ef128", "p50_ms": hnsw_1m, "recall_at_10": 0.96}]
    return {"training": {"configs": configs},
            "memory": {"methods": [{"method": "full", "estimate_over_measured": 1 + memory}]},
            "faiss": {"results": rows}, "embedding": {"course_over_direct": embedding}}


def test_targets_judge_the_numbers():
    met = {t["name"]: t["met"] for t in bench.targets(fake_result())}
    assert list(met.values()) == [True] * 6            # at 100k the course builds HNSW
    assert "hnsw_ef128" in bench.targets(fake_result())[3]["detail"]
    missed = bench.targets(fake_result(pad=1.9, plain=0.9, memory=-0.2, flat_1m=1.0,
                                       embedding=0.8, hnsw_recall_100k=0.9))
    assert [t["met"] for t in missed] == [False] * 6


def test_readme_table_lists_each_target(tmp_path):
    result = {"date": "2026-01-02T03:04:05+00:00", "seconds": 600.0,
              "hardware": {"cpu": "Some CPU", "cores": 2}, "load_average": {"start": [0.5]},
              **fake_result()}
    result["targets"] = bench.targets(result)
    table = bench_report.readme_table(result, "benchmarks/results/bench-x.json")
    assert "2026-01-02" in table and "Some CPU" in table
    assert table.count("\n| ") == 1 + len(result["targets"])   # the header, then one per target
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert all(len(re.findall(r"(?<!\\)\|", row)) == 5 for row in rows)  # a | in a cell is escaped
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- bench -->\nold\n<!-- /bench -->\n\n## Next\n")
    assert bench_report.update_readme(readme, result, "benchmarks/results/bench-x.json")
    assert bench_report.readme_block(readme) == table
    assert readme.read_text().endswith("<!-- /bench -->\n\n## Next\n")
    assert not bench_report.update_readme(readme, result, "benchmarks/results/bench-x.json")


def test_padded_rows_keep_the_real_tokens():
    from bench_training import padded_rows
    from datasets import Dataset

    rows = Dataset.from_dict({"input_ids": [[5, 6, 7], [8]], "attention_mask": [[1, 1, 1], [1]],
                              "labels": [[-100, 6, 7], [8]]})
    padded = padded_rows(rows, 6, pad_id=0)
    assert padded["input_ids"] == [[5, 6, 7, 0, 0, 0], [8, 0, 0, 0, 0, 0]]
    assert [sum(m) for m in padded["attention_mask"]] == [3, 1]
    assert padded["labels"][1] == [8] + [-100] * 5


def test_synthetic_vectors_are_unit_length_and_clustered():
    model = bench_retrieval.VectorModel(dim=48, topics=10)
    vectors = model.sample(2_000, stream=1)
    assert vectors.shape == (2_000, 48) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, model.sample(2_000, stream=1))      # seeded
    stats = bench_retrieval.neighbour_statistics(vectors)
    assert stats["nearest_cosine"] > stats["random_pair_cosine"] + 0.3  # topics, not noise
    real = model.sample(300, stream=3)                                  # "real" embeddings
    shaped = bench_retrieval.VectorModel(48, 10, real=real)
    assert "300 real embeddings" in shaped.source
    assert math.isclose(float(np.linalg.norm(shaped.sample(5, 4)[0])), 1.0, rel_tol=1e-5)
