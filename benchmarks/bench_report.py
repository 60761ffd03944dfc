"""What `make bench` shows: the printed summary, the plots and README's table, all drawn from
the results record bench.py writes (never from numbers typed by hand)."""

from __future__ import annotations

from pathlib import Path

README_START, README_END = "<!-- bench -->", "<!-- /bench -->"
PIPELINE_LABELS = {"course": "course (dynamic padding + callbacks)", "plain": "plain Trainer",
                   "pad512": "original: pad to 512"}


def summary(result: dict) -> str:
    """The run in a few lines, then each target: met, MISSED or n/a."""
    hw = result["hardware"]
    load = result["load_average"]
    lines = [f"bench {result['date']} on {hw['cpu']} ({hw['cores']} cores), "
             f"{result['seconds'] / 60:.1f} min, load average {load['start'][0]:.2f} at the "
             f"start, {load['end'][0]:.2f} at the end"]
    if "training" in result:
        probe = result["training"].get("bf16_autocast_probe")
        if probe:
            lines.append(f"bf16 autocast probe (forward+backward, {probe['batch']} x "
                         f"{probe['length']} tokens): {probe['bf16_s']:.2f} s vs fp32 "
                         f"{probe['fp32_s']:.2f} s"
                         + ("" if probe["bf16_faster"] else ", so bf16 was not timed"))
        lines.append("training, real tokens/s (course | plain Trainer | pad to 512):")
        for c in result["training"]["configs"]:
            p = c["pipelines"]
            lines.append(f"  {c['method']:<5} {c['precision']}: {p['course']['tokens_per_second']:7.0f}"
                         f" | {p['plain']['tokens_per_second']:7.0f}"
                         f" | {p['pad512']['tokens_per_second']:7.0f}")
    if "memory" in result:
        lines.append("training memory, MiB (measured | estimated):")
        for m in result["memory"]["methods"]:
            lines.append(f"  {m['method']:<5}: {m['measured_mib']:7.0f} | {m['estimated_mib']:7.0f}"
                         f"  ({m['estimate_over_measured'] - 1:+.1%})")
    if "embedding" in result:
        rate = result["embedding"]["passages_per_second"]
        lines.append(f"embedding, passages/s: course {rate['course']:.0f}, sentence-transformers "
                     f"{rate['sentence_transformers']:.0f}")
    if "faiss" in result:
        lines.append("FAISS single query p50 ms (recall@10), flat floor from "
                     f"{result['faiss']['bandwidth']['gb_per_second']:.1f} GB/s:")
        for row in result["faiss"]["results"]:
            floor = (f"  floor {row['bandwidth_floor_ms']:.2f} ms"
                     if "bandwidth_floor_ms" in row else "")
            lines.append(f"  {row['size']:>9,} {row['index']:<12} {row['p50_ms']:8.3f} "
                         f"({row['recall_at_10']:.3f}){floor}")
    lines.append("targets:")
    for t in result["targets"]:
        mark = "n/a   " if t["met"] is None else "met   " if t["met"] else "MISSED"
        detail = f" ({t['detail']})" if t["detail"] else ""
        lines.append(f"  {mark} {t['name']}: {_short(t['measured'])}{detail}")
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- plots --------------------------------------------------------------------------------------


def plot_all(result: dict, folder: Path) -> list[Path]:
    """One PNG per part that ran: bench-<machine>-<part>.png. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    for part, draw in (("training", _plot_training), ("memory", _plot_memory),
                       ("faiss", _plot_faiss), ("embedding", _plot_embedding)):
        if part not in result:
            continue
        fig = draw(result[part], plt)
        fig.suptitle(f"{fig.axes[0].get_title()}\n{result['hardware']['cpu']}, "
                     f"{result['hardware']['cores']} cores, {result['date'][:10]}", fontsize=10)
        fig.axes[0].set_title("")
        fig.tight_layout()
        path = Path(folder) / f"bench-{result['hardware']['slug']}-{part}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        drawn.append(path)
    return drawn


def _plot_training(training: dict, plt):
    configs = training["configs"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for i, pipeline in enumerate(PIPELINE_LABELS):
        values = [c["pipelines"][pipeline]["tokens_per_second"] for c in configs]
        xs = [x + (i - 1) * width for x in range(len(configs))]
        ax.bar(xs, values, width, label=PIPELINE_LABELS[pipeline])
    for x, c in enumerate(configs):
        top = max(p["tokens_per_second"] for p in c["pipelines"].values())
        ax.text(x, top * 1.02, f"x{c['course_over_pad512']:.1f} pad\nx{c['course_over_plain']:.2f} "
                "plain", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(configs)), [f"{c['method']}\n{c['precision']}" for c in configs])
    ax.set_ylabel("real (non-padding) tokens per second")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    ax.set_title("Training throughput: the course's data path against the original recipe")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    return fig


def _plot_memory(memory: dict, plt):
    methods = memory["methods"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(methods))
    ax.bar([x - 0.2 for x in xs], [m["measured_mib"] for m in methods], 0.4, label="measured peak")
    ax.bar([x + 0.2 for x in xs], [m["estimated_mib"] for m in methods], 0.4,
           label="course_utils.estimator")
    for x, m in zip(xs, methods, strict=True):
        ax.text(x, max(m["measured_mib"], m["estimated_mib"]) * 1.02,
                f"{m['estimate_over_measured'] - 1:+.0%}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [m["method"] for m in methods])
    ax.set_ylabel("training memory above the process before loading (MiB)")
    ax.set_title("Training memory: measured against the estimate")
    ax.legend(fontsize=8)
    return fig


def _plot_faiss(faiss: dict, plt):
    rows = faiss["results"]
    sizes = sorted({r["size"] for r in rows})
    ef = faiss["hnsw"]["course_settings"]["ef_search"]
    shown = ["flat_fp32", "flat_fp16", "sq8", f"hnsw_ef{ef}"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in shown:
        points = [(r["size"], r["p50_ms"]) for r in rows if r["index"] == name]
        if points:
            left.plot(*zip(*points, strict=True), "o-", label=name)
    floor = [(r["size"], r["bandwidth_floor_ms"]) for r in rows if r["index"] == "flat_fp32"]
    left.plot(*zip(*floor, strict=True), "k--", label="flat fp32 bandwidth floor")
    left.axhline(2.0, color="grey", lw=0.8, ls=":")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("vectors in the index")
    left.set_ylabel("single-query latency, p50 (ms)")
    left.set_title("FAISS: single-query latency and recall@10")
    left.legend(fontsize=8)
    for size, marker in zip(sizes, "os^Dv", strict=False):
        mine = [r for r in rows if r["size"] == size]
        right.scatter([r["p50_ms"] for r in mine], [r["recall_at_10"] for r in mine],
                      marker=marker, label=f"{size:,}")
        for r in mine:
            right.annotate(r["index"], (r["p50_ms"], r["recall_at_10"]), fontsize=6,
                           xytext=(3, 2), textcoords="offset points")
    right.axhline(0.95, color="grey", lw=0.8, ls=":")
    right.set_xscale("log")
    right.set_xlabel("single-query latency, p50 (ms)")
    right.set_ylabel("recall@10 against exact search")
    right.legend(fontsize=8, title="vectors")
    return fig


def _plot_embedding(embedding: dict, plt):
    rate = embedding["passages_per_second"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(["course_utils.retrieval\n(embed_texts)", "sentence-transformers\n(encode)"],
           [rate["course"], rate["sentence_transformers"]], color=["tab:blue", "tab:grey"])
    ax.set_ylabel("passages per second")
    ax.set_title(f"Embedding {embedding['passages']} passages: x{embedding['course_over_direct']:.2f}")
    return fig


# --- README -------------------------------------------------------------------------------------


def readme_table(result: dict, source) -> str:
    """The Markdown block README shows between its bench markers."""
    hw = result["hardware"]
    threads = result.get("training", {}).get("torch_threads")
    lines = [f"Measured {result['date'][:10]} on {hw['cpu']} ({hw['cores']} cores), "
             f"load average {result['load_average']['start'][0]:.1f} at the start, "
             f"{result['seconds'] / 60:.0f} minutes"
             f"{' (--quick: fewer repeats)' if result.get('quick') else ''}"
             f"{', torch threads ' + str(threads) if threads else ''}"
             f"; every number in `{source}`.",
             "", "| what | measured | target | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        met = "n/a" if t["met"] is None else "yes" if t["met"] else "**no**"
        cells = (t["name"], _readme_value(t), t["threshold"], met)
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")  # | in a cell ends it
    return "\n".join(lines)


def _readme_value(t: dict) -> str:
    m = t["measured"]
    if t["part"] == "training":
        return f"{min(m.values()):.2f}x to {max(m.values()):.2f}x over {len(m)} configurations"
    if t["part"] == "memory":
        return ", ".join(f"{k} {v:+.0%}" for k, v in m.items())
    if t["part"] == "faiss" and "p50_ms" in m:
        return f"{m['index']}: {m['p50_ms']:.2f} ms, recall {m['recall_at_10']:.2f}"
    if t["part"] == "faiss":
        return f"{m['index']}: {m['speedup']:.0f}x, recall {m['recall_at_10']:.2f}"
    return f"{m:.2f}x" if isinstance(m, float) else str(m)


def update_readme(readme: Path, result: dict, source) -> bool:
    """Put the table between README's bench markers; True when the file changed."""
    text = Path(readme).read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block to fill")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_table(result, source)}\n{README_END}{tail}"
    if new != text:
        Path(readme).write_text(new)
    return new != text


def readme_block(readme: Path) -> str:
    """What README holds between its bench markers now."""
    text = Path(readme).read_text()
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip("\n")
