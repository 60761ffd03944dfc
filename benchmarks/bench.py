"""`make bench`: the course's speed and memory claims, measured side by side in one run.

    .venv/bin/python benchmarks/bench.py              # everything (see benchmarks/README.md for its time)
    .venv/bin/python benchmarks/bench.py --quick      # every part, fewer repeats
    .venv/bin/python benchmarks/bench.py --only faiss embedding
    .venv/bin/python benchmarks/bench.py --readme     # README's table from the latest results
    .venv/bin/python benchmarks/bench.py --smoke --output /tmp/bench   # seconds: tests the code

Five parts, each one function, in one process (the memory part starts one process per method):

1. training throughput (bench_training.measure_throughput): real tokens per second of the
   course's data path against the original pad-to-512 recipe and a plain Trainer;
2. training memory (bench_training.measure_memory): measured peak against the estimator;
3. FAISS (bench_retrieval.measure_faiss): flat fp32, fp16, SQ8 and HNSW at 10k, 100k and 1M
   vectors, with the memory-bandwidth floor of exact search;
4. embedding throughput (bench_retrieval.measure_embedding): the course's encoding path against
   sentence-transformers called directly.

Results: benchmarks/results/bench-<machine>.json (date, hardware, load average, versions, every
measurement, the targets and whether each was met) and bench-<machine>-<part>.png next to it
(bench_report.py draws them). The exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
PARTS = ("training", "memory", "embedding", "faiss")   # embedding first: it shapes faiss's vectors
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets",
            "sentence-transformers", "faiss-cpu", "numpy")

import bench_report  # noqa: E402
from bench_retrieval import (  # noqa: E402
    RetrievalSizes,
    measure_embedding,
    measure_faiss,
    recommended_index,
)
from bench_training import TrainingSizes, measure_memory, measure_throughput  # noqa: E402


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return [float("nan")] * 3


def hardware() -> dict:
    """The machine in words and numbers, and a short name for the results file."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE).group(1).strip()
        flags = set(re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE).group(1).split())
    except (OSError, AttributeError):
        flags = set()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        memory_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
    except (OSError, TypeError):
        memory_kib = 0
    record = {"cpu": model, "cores": cores, "memory_gib": round(memory_kib / 2**20, 1),
              "bf16_native": bool(flags & {"avx512_bf16", "amx_bf16"}),
              "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
              "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    name = record["gpu"] or f"{model} {cores}c"
    words = re.sub(r"\((r|tm)\)|cpu|processor|@.*", " ", name.lower())
    record["slug"] = "-".join(re.findall(r"[a-z0-9]+", words))[:60]
    return record


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


# --- targets ----------------------------------------------------------------------------------


def target(name: str, part: str, measured, threshold: str, met: bool | None, detail: str = ""):
    return {"name": name, "part": part, "measured": measured, "threshold": threshold,
            "met": met, "detail": detail}


def targets(result: dict) -> list[dict]:
    """Each target, judged on this run's numbers (parts not run are left out)."""
    found = []
    if "training" in result:
        configs = result["training"]["configs"]
        for key, floor, label in (("course_over_pad512", 2.0, "the pad-to-512 recipe"),
                                  ("course_over_plain", 0.95, "a plain Trainer")):
            worst = min(configs, key=lambda c: c[key])
            found.append(target(
                f"training tokens/s: course >= {floor:g}x {label}", "training",
                {f"{c['method']}-{c['precision']}": round(c[key], 3) for c in configs},
                f">= {floor:g} in every configuration", worst[key] >= floor,
                f"worst {worst[key]:.2f}x ({worst['method']}, {worst['precision']})"))
    if "memory" in result:
        methods = result["memory"]["methods"]
        errors = {m["method"]: round(m["estimate_over_measured"] - 1, 3) for m in methods}
        found.append(target("training memory: estimate within 15 % of measured peak", "memory",
                            errors, "|estimate / measured - 1| <= 0.15",
                            all(abs(e) <= 0.15 for e in errors.values())))
    if "faiss" in result:
        rows = {(r["size"], r["index"]): r for r in result["faiss"]["results"]}
        sizes = sorted({r["size"] for r in result["faiss"]["results"]})
        if 100_000 in sizes:
            chosen = rows[(100_000, recommended_index(100_000))]
            found.append(target(
                "FAISS 100k: recommended index p50 <= 2 ms at recall@10 >= 0.95", "faiss",
                {"index": chosen["index"], "p50_ms": round(chosen["p50_ms"], 3),
                 "recall_at_10": round(chosen["recall_at_10"], 3)},
                "p50 <= 2 ms and recall@10 >= 0.95",
                chosen["p50_ms"] <= 2.0 and chosen["recall_at_10"] >= 0.95,
                _fastest_meeting(result["faiss"]["results"], 100_000)))
        if 1_000_000 in sizes:
            chosen = rows[(1_000_000, recommended_index(1_000_000))]
            flat = rows[(1_000_000, "flat_fp32")]
            speedup = flat["p50_ms"] / chosen["p50_ms"]
            found.append(target(
                "FAISS 1M: recommended index >= 5x faster than flat", "faiss",
                {"index": chosen["index"], "speedup": round(speedup, 1),
                 "recall_at_10": round(chosen["recall_at_10"], 3)},
                "flat p50 / index p50 >= 5", speedup >= 5.0))
    if "embedding" in result:
        ratio = result["embedding"]["course_over_direct"]
        found.append(target("embedding: course path >= 0.95x sentence-transformers", "embedding",
                            round(ratio, 3), ">= 0.95", ratio >= 0.95))
    return found


def _fastest_meeting(rows: list[dict], size: int) -> str:
    good = [r for r in rows if r["size"] == size and r["recall_at_10"] >= 0.95]
    if not good:
        return "no index reached recall@10 0.95"
    best = min(good, key=lambda r: r["p50_ms"])
    return (f"fastest index with recall@10 >= 0.95: {best['index']}, p50 {best['p50_ms']:.3f} ms, "
            f"recall {best['recall_at_10']:.3f}")


# --- the run ----------------------------------------------------------------------------------


def smoke_sizes(folder: Path) -> tuple[TrainingSizes, RetrievalSizes]:
    """Sizes that run in seconds: a 2-layer random model with SmolLM2's tokenizer, tiny indexes."""
    return (TrainingSizes(model_id=str(tiny_model(folder)), batch_size=2, warmup_steps=1, steps=1,
                          padded_steps=1, rounds=1, padded_rounds=1, methods=("qlora",),
                          memory_methods=("lora",),
                          memory_steps=1),
            RetrievalSizes(sizes=(500, 2_000), dim=32, queries=20, latency_queries=10,
                           latency_seconds=0.2, topics=20, passages=16, embedding_rounds=1,
                           bandwidth_mib=16, ef_construction=16))


def tiny_model(folder: Path) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's tokenizer, saved in folder/model."""
    import torch
    import transformers

    from course_utils.models import load_tokenizer

    target_folder = folder / "model"
    if (target_folder / "config.json").is_file():
        return target_folder
    tokenizer = load_tokenizer("packaged:smollm2-135m-instruct")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(target_folder)
    tokenizer.save_pretrained(target_folder)
    return target_folder


def run(parts, training_sizes: TrainingSizes, retrieval_sizes: RetrievalSizes,
        log=print) -> dict:
    """Measure the chosen parts; returns the whole results record (targets included)."""
    started = time.perf_counter()
    result = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "hardware": hardware(), "versions": versions(),
              "load_average": {"start": load_average()}, "parts": list(parts)}
    real = None
    for part in PARTS:
        if part not in parts:
            continue
        log(f"{part}:")
        begun = time.perf_counter()
        if part == "training":
            result[part] = measure_throughput(training_sizes, log)
        elif part == "memory":
            result[part] = measure_memory(training_sizes, log)
        elif part == "embedding":
            result[part], real = measure_embedding(retrieval_sizes, log)
        else:
            result[part] = measure_faiss(retrieval_sizes, real, log)
        result["load_average"][part] = load_average()
        log(f"  ({time.perf_counter() - begun:.0f} s, load average "
            f"{result['load_average'][part][0]:.2f})")
    result["load_average"]["end"] = load_average()
    result["seconds"] = time.perf_counter() - started
    result["targets"] = targets(result)
    return result


def write(result: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench-{result['hardware']['slug']}.json"
    path.write_text(json.dumps(result, indent=1, allow_nan=False, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def latest_results(folder: Path = RESULTS) -> Path:
    """The newest full (not smoke) bench-*.json in folder, by the date it records."""
    files = [p for p in sorted(folder.glob("bench-*.json"))
             if not json.loads(p.read_text()).get("smoke")]
    if not files:
        raise FileNotFoundError(f"no bench-*.json in {folder}: run `make bench` first")
    return max(files, key=lambda p: json.loads(p.read_text())["date"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument("--output", type=Path, help="folder for JSON and plots (default "
                        "benchmarks/results; build/bench-smoke with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and a random 2-layer model: checks the code in seconds")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats (2 timed steps x 2 runs per pipeline, 1 padded step) "
                             "and shorter latency timing: every part, about half the time")
    parser.add_argument("--readme", action="store_true",
                        help="write README.md's benchmark table from the latest results, then stop")
    args = parser.parse_args(argv)
    if args.readme:
        source = latest_results(args.output or RESULTS)
        readme = HERE.parent / "README.md"
        changed = bench_report.update_readme(readme, json.loads(source.read_text()),
                                             source.relative_to(HERE.parent)
                                             if source.is_relative_to(HERE.parent) else source)
        print(f"{readme}: table {'updated' if changed else 'already up to date'} from {source}")
        return 0
    parts = args.only or PARTS
    if args.smoke:
        sizes = smoke_sizes(Path(tempfile.mkdtemp(prefix="bench-smoke-")))
    elif args.quick:
        sizes = (TrainingSizes(steps=2, rounds=2, padded_steps=1, padded_rounds=1),
                 RetrievalSizes(latency_seconds=1.0))
    else:
        sizes = (TrainingSizes(), RetrievalSizes())
    result = run(parts, *sizes)
    result["smoke"], result["quick"] = args.smoke, args.quick
    folder = args.output or (HERE.parent / "build" / "bench-smoke" if args.smoke else RESULTS)
    path = write(result, folder)
    plots = bench_report.plot_all(result, folder)
    print(bench_report.summary(result))
    print(f"written: {path}" + "".join(f"\n         {p}" for p in plots))
    return 0 if all(t["met"] is not False for t in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
