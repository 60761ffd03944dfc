"""Full fine-tuning, LoRA, QLoRA (and RAG) side by side, from their results files.

Each method's notebook wrote results/<profile>/<notebook>.json; this module turns them into one
table (a row per method, the base model first as the row to beat) and a figure. Every number
comes from a results file; a missing file is reported with the notebook to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from course_utils.results import load_results

# notebook stem -> what it trains (notebook 05 contributes two rows: closed-book and RAG)
METHODS = {"02_full_finetuning": "full fine-tuning", "03_lora": "LoRA", "04_qlora": "QLoRA"}
RAG_NOTEBOOK = "05_rag"
BASE_ROW = "base model"
QUALITY = {"exact_match": "exact match", "token_f1": "token F1",
           "bertscore_precision": "BERTScore P", "bertscore_recall": "BERTScore R",
           "bertscore_f1": "BERTScore F1"}
COST = {"trainable_parameters": "trainable parameters", "trainable_share": "trainable share",
        "training_mib": "training memory (MiB)", "predicted_mib": "predicted memory (MiB)",
        "peak_mib": "process peak (MiB)", "model_mib": "model weights (MiB)",
        "seconds_per_step": "seconds per step", "tokens_per_second": "tokens per second"}


@dataclass
class Collected:
    """Results files found for a profile, and what to run for the missing ones."""

    profile: str
    results: dict[str, dict] = field(default_factory=dict)   # notebook stem -> results dict
    missing: dict[str, str] = field(default_factory=dict)    # notebook stem -> how to make it

    def report(self) -> str:
        found = ", ".join(self.results) or "none"
        lines = [f"results found ({self.profile} profile): {found}"]
        lines += [f"missing {stem}: {hint}" for stem, hint in self.missing.items()]
        return "\n".join(lines)


def run_hint(stem: str, profile: str) -> str:
    return (f"run notebooks/{stem}.ipynb, or `python -m course_utils run --profile {profile} "
            f"--only {stem[:2]}`")


def collect_results(profile: str, notebooks=(*METHODS, RAG_NOTEBOOK)) -> Collected:
    """Load the results files of the compared notebooks; note the missing ones."""
    collected = Collected(profile=profile)
    for stem in notebooks:
        try:
            collected.results[stem] = load_results(stem, profile)
        except FileNotFoundError:
            collected.missing[stem] = run_hint(stem, profile)
    return collected


def _quality(scores: dict | None) -> dict:
    scores = scores or {}
    return {label: scores.get(key) for key, label in QUALITY.items()}


def _no_cost() -> dict:
    """The cost columns of a row that trains nothing (the base model, notebook 05)."""
    return {label: None for label in COST.values()}


def _cost(results: dict) -> dict:
    memory, timings, extra = (results.get(k, {}) for k in ("memory", "timings", "extra"))
    trainable, total = extra.get("trainable_parameters"), extra.get("total_parameters")
    values = {
        "trainable_parameters": trainable,
        "trainable_share": trainable / total if trainable is not None and total else None,
        "training_mib": memory.get("training_mib"),
        "predicted_mib": memory.get("predicted_peak_mib"),
        "peak_mib": memory.get("peak_mib"),
        "model_mib": memory.get("model_footprint_mib"),
        "seconds_per_step": timings.get("seconds_per_step"),
        "tokens_per_second": timings.get("tokens_per_second"),
    }
    return {COST[key]: value for key, value in values.items()}


def comparison_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per method, quality on the shared test split and training cost.

    The first row is the base model before any training (from the first fine-tuning notebook
    found, in course order), the row every method has to beat. Notebook 05 adds the
    generator without retrieval ("closed-book") and with it ("RAG"); they train nothing.
    """
    rows: dict[str, dict] = {}
    for stem in METHODS:
        if stem in results and "base" in results[stem].get("metrics", {}):
            base = results[stem]
            rows[BASE_ROW] = {"notebook": stem, **_quality(base["metrics"]["base"]),
                              **_no_cost()}
            rows[BASE_ROW][COST["model_mib"]] = base.get("memory", {}).get("model_footprint_mib")
            break
    for stem, method in METHODS.items():
        if stem in results:
            metrics = results[stem].get("metrics", {})
            rows[method] = {"notebook": stem, **_quality(metrics.get("finetuned")),
                            **_cost(results[stem])}
    if RAG_NOTEBOOK in results:
        rag = results[RAG_NOTEBOOK]
        for key, label in (("closed_book", "closed-book (05)"), ("rag", "RAG (05)")):
            if key in rag.get("metrics", {}):
                rows[label] = {"notebook": RAG_NOTEBOOK, **_quality(rag["metrics"][key]),
                               **_no_cost()}
                rows[label][COST["trainable_parameters"]] = 0
                rows[label][COST["model_mib"]] = rag.get("memory", {}).get("model_footprint_mib")
    if not rows:
        raise ValueError("no results to compare: run notebooks 02-05 first "
                         "(`python -m course_utils run --profile tiny`)")
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table[["notebook", *QUALITY.values(), *COST.values()]]


def gains_over_base(results: dict[str, dict], metric: str = "token_f1") -> pd.Series:
    """Each fine-tuning method's gain in `metric` over ITS OWN base model (QLoRA's base is
    the 4-bit model, so this separates what training added from what quantization cost)."""
    gains = {}
    for stem, method in METHODS.items():
        metrics = results.get(stem, {}).get("metrics", {})
        if "base" in metrics and "finetuned" in metrics:
            gains[method] = metrics["finetuned"][metric] - metrics["base"][metric]
    return pd.Series(gains, name=f"{QUALITY.get(metric, metric)} gain over its base",
                     dtype=float)


def plot_comparison(table: pd.DataFrame):
    """Bars of quality (top row) and cost (bottom row) per method. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    quality = table[list(QUALITY.values())].astype(float)
    quality.plot.bar(ax=axes[0, 0], rot=20, width=0.8)
    axes[0, 0].set_title("answer quality on the shared test split (higher is better)")
    axes[0, 0].legend(fontsize=8, loc="upper left", ncol=3, frameon=False)
    axes[0, 0].set_ylim(0, 1.2)  # room above the bars for the legend; scores stop at 1
    axes[0, 0].set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes[0, 1].axis("off")
    axes[0, 2].axis("off")
    panels = [(axes[0, 1], COST["trainable_parameters"], True),
              (axes[0, 2], COST["training_mib"], False),
              (axes[1, 0], COST["model_mib"], False),
              (axes[1, 1], COST["seconds_per_step"], False),
              (axes[1, 2], COST["tokens_per_second"], False)]
    for ax, column, log in panels:
        values = table[column].dropna().astype(float)
        if log:
            values = values[values > 0]  # methods that train nothing have no bar on a log axis
        ax.axis("on")
        if values.empty:
            ax.set_title(f"{column}: not measured")
            continue
        ax.bar(values.index, values.values, color="tab:gray" if log else "tab:blue")
        ax.set_title(column)
        ax.tick_params(axis="x", rotation=20)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
