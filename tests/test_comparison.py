"""The comparison table and figure, built from synthetic results dicts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest

from course_utils.comparison import (
    BASE_ROW,
    collect_results,
    comparison_table,
    gains_over_base,
    plot_comparison,
)
from course_utils.results import save_results


def scores(em: float, f1: float, bert: float) -> dict:
    return {"n": 40, "exact_match": em, "token_f1": f1, "bertscore_precision": bert + 0.01,
            "bertscore_recall": bert - 0.01, "bertscore_f1": bert, "bertscore_rescaled": False,
            "bertscore_model": "packaged:all-minilm-l6-v2"}


def method_results(base: dict, tuned: dict, trainable: int, training_mib: float) -> dict:
    return {"metrics": {"base": base, "finetuned": tuned},
            "memory": {"peak_mib": training_mib + 1500, "training_mib": training_mib,
                       "predicted_peak_mib": training_mib * 1.1, "model_footprint_mib": 513.0},
            "timings": {"seconds_per_step": 5.0, "tokens_per_second": 200.0},
            "extra": {"trainable_parameters": trainable, "total_parameters": 134_515_008}}


@pytest.fixture
def results():
    base = scores(0.1, 0.2, 0.4)
    return {
        "02_full_finetuning": method_results(base, scores(0.5, 0.6, 0.7), 134_515_008, 2600),
        "03_lora": method_results(base, scores(0.4, 0.5, 0.65), 3_317_760, 1400),
        "04_qlora": method_results(scores(0.08, 0.18, 0.38), scores(0.38, 0.48, 0.6),
                                   4_884_480, 1300),
        "05_rag": {"metrics": {"closed_book": scores(0.05, 0.1, 0.3), "rag": scores(0.3, 0.4, 0.6)},
                   "memory": {"model_footprint_mib": 513.0}},
    }


def test_table_has_the_base_first_and_one_row_per_method(results):
    table = comparison_table(results)
    assert list(table.index) == [BASE_ROW, "full fine-tuning", "LoRA", "QLoRA",
                                 "closed-book (05)", "RAG (05)"]
    assert table.loc[BASE_ROW, "token F1"] == 0.2
    assert table.loc["LoRA", "trainable parameters"] == 3_317_760
    assert table.loc["LoRA", "trainable share"] == pytest.approx(3_317_760 / 134_515_008)
    assert table.loc["QLoRA", "training memory (MiB)"] == 1300
    assert table.loc["RAG (05)", "trainable parameters"] == 0
    assert table.loc["RAG (05)", "BERTScore F1"] == 0.6


def test_table_works_with_some_files_missing(results):
    table = comparison_table({"04_qlora": results["04_qlora"]})
    assert list(table.index) == [BASE_ROW, "QLoRA"]
    assert table.loc[BASE_ROW, "notebook"] == "04_qlora"  # the base comes from what exists
    with pytest.raises(ValueError, match="run notebooks 02-05"):
        comparison_table({})


def test_gains_are_measured_against_each_methods_own_base(results):
    gains = gains_over_base(results, "token_f1")
    assert gains["full fine-tuning"] == pytest.approx(0.4)
    assert gains["QLoRA"] == pytest.approx(0.48 - 0.18)


def test_collect_names_the_notebook_to_run(tmp_path, monkeypatch, results):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    save_results("03_lora", "tiny", **{k: v for k, v in results["03_lora"].items()})
    collected = collect_results("tiny")
    assert list(collected.results) == ["03_lora"]
    assert set(collected.missing) == {"02_full_finetuning", "04_qlora", "05_rag"}
    assert "notebooks/04_qlora.ipynb" in collected.missing["04_qlora"]
    assert "--profile tiny --only 04" in collected.report()


def test_plot_has_quality_and_cost_panels(results):
    figure = plot_comparison(comparison_table(results))
    titles = [ax.get_title() for ax in figure.axes]
    assert any("quality" in t for t in titles)
    for column in ("trainable parameters", "training memory (MiB)", "seconds per step",
                   "tokens per second"):
        assert column in titles
