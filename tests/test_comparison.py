"""The comparison of notebook 06, built from synthetic records of notebooks 02-05."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from fixtures.records import (  # noqa: E402
    TOTAL_PARAMETERS,
    save_synthetic_records,
    synthetic_records,
)

from course_utils.results import (  # noqa: E402
    BASE_ROW,
    COLUMN_LABELS,
    COST,
    DESCRIBE,
    FEW_SHOT_ROW,
    QUALITY,
    bertscore_label,
    by_group_table,
    collect_records,
    comparison_rows,
    comparison_table,
    differences,
    forgetting_table,
    gains_over_base,
    plot_comparison,
    plot_forgetting,
    quality_intervals,
)

METHODS = [BASE_ROW, FEW_SHOT_ROW, "full fine-tuning", "LoRA", "QLoRA", "closed-book (05)",
           "RAG (05)"]


@pytest.fixture
def records():
    return synthetic_records()


def test_rows_have_the_base_first_and_one_row_per_method(records):
    rows = comparison_rows(records)
    assert [row["method"] for row in rows] == METHODS
    assert all(list(row) == ["method", "notebook", *DESCRIBE, *QUALITY, *COST] for row in rows)
    base, few_shot, full, lora, qlora, closed, rag = rows
    assert base["notebook"] == "02_full_finetuning" and base["token_f1"] == 0.2
    # the zero-training baseline: the base model prompted with solved examples (notebook 05)
    assert few_shot["notebook"] == "05_rag" and few_shot["token_f1"] == 0.3
    assert few_shot["trainable_parameters"] == 0 and few_shot["model_mib"] == 513.0
    assert few_shot["context"] == "gold passage + 3 examples"
    assert base["trainable_parameters"] is None and base["model_mib"] == 513.0
    assert full["trainable_share"] == 1.0
    assert lora["trainable_parameters"] == 3_317_760
    assert lora["trainable_share"] == pytest.approx(3_317_760 / TOTAL_PARAMETERS)
    assert lora["seconds_per_step"] == 2.0 and lora["tokens_per_second"] == 200.0
    assert qlora["training_mib"] == 1300 and qlora["predicted_mib"] == pytest.approx(1430)
    assert qlora["token_f1"] == 0.48
    assert qlora["model_mib"] == 159.0  # 4-bit weights
    assert rag["trainable_parameters"] == 0 and rag["bertscore_f1"] == 0.6
    assert rag["training_mib"] is None and closed["notebook"] == "05_rag"


def test_table_is_indexed_by_method_with_field_names_as_columns(records):
    table = comparison_table(records)
    assert list(table.index) == METHODS
    assert list(table.columns) == ["notebook", *DESCRIBE, *QUALITY, *COST]
    assert set(COLUMN_LABELS) == set(QUALITY) | set(COST), "every column has a display name"
    assert table.loc["QLoRA", "training_mib"] == 1300
    assert table.loc[BASE_ROW, "exact_match"] == 0.1


def test_rows_work_with_some_files_missing(records):
    rows = comparison_rows({"04_qlora": records["04_qlora"]})
    assert [row["method"] for row in rows] == [BASE_ROW, "QLoRA"]
    assert rows[0]["notebook"] == "04_qlora"  # the base comes from what exists
    assert rows[0]["token_f1"] == 0.18
    only_rag = comparison_rows({"05_rag": records["05_rag"]})
    assert [row["method"] for row in only_rag] == [FEW_SHOT_ROW, "closed-book (05)", "RAG (05)"]
    without_few_shot = {"05_rag": dataclasses.replace(records["05_rag"], few_shot=None)}
    assert [row["method"] for row in comparison_rows(without_few_shot)] == \
        ["closed-book (05)", "RAG (05)"]
    with pytest.raises(ValueError, match="run notebooks 02-05"):
        comparison_rows({})


def test_gains_are_measured_against_each_methods_own_base(records):
    gains = gains_over_base(records, "token_f1")
    assert list(gains.index) == ["full fine-tuning", "LoRA", "QLoRA"]
    assert gains["full fine-tuning"] == pytest.approx(0.4)
    assert gains["QLoRA"] == pytest.approx(0.48 - 0.18)  # not 0.48 - 0.2: its base is 4-bit
    assert gains.name == "token F1 gain over its base"
    assert gains_over_base({"05_rag": records["05_rag"]}).empty


def test_collect_names_the_notebook_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    save_synthetic_records("tiny", ["03_lora"])
    collected = collect_records("tiny")
    assert list(collected.records) == ["03_lora"]
    assert list(collected.missing) == ["02_full_finetuning", "04_qlora", "05_rag"]
    assert "run notebooks/04_qlora.ipynb" in collected.missing["04_qlora"]
    report = collected.report()
    assert "results found (tiny profile): 03_lora" in report
    assert "--profile tiny --only 04" in report
    assert collect_records("full").report().startswith("results found (full profile): none")


def test_collect_reads_every_record_and_skips_a_damaged_one(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    save_synthetic_records("tiny")
    collected = collect_records("tiny")
    assert not collected.missing
    expected = synthetic_records("tiny")
    assert list(collected.records) == list(expected)
    for stem, record in collected.records.items():
        assert record == dataclasses.replace(expected[stem], created=record.created)
    (tmp_path / "tiny" / "04_qlora.json").write_text("{")
    damaged = collect_records("tiny")
    assert "04_qlora" not in damaged.records and len(damaged.records) == len(expected) - 1
    assert "rerun notebooks/04_qlora.ipynb" in damaged.damaged["04_qlora"]
    assert "04_qlora.json cannot be read (JSONDecodeError: the file is cut short" in \
        damaged.report()


def test_plot_has_quality_and_cost_panels(records):
    figure = plot_comparison(comparison_table(records))
    titles = [ax.get_title() for ax in figure.axes]
    assert any("quality" in t for t in titles)
    for column in ("trainable_parameters", "training_mib", "model_mib", "seconds_per_step",
                   "tokens_per_second"):
        assert COLUMN_LABELS[column] in titles
    quality = figure.axes[0]
    assert [t.get_text() for t in quality.get_legend().get_texts()] == \
        [COLUMN_LABELS[c] for c in ("exact_match", "token_f1")]
    plt.close(figure)


def test_bertscore_has_its_own_labelled_axis_and_bars_have_intervals(records):
    label = bertscore_label(records)
    assert label == "BERTScore F1 (all-minilm-l6-v2, layer 4, raw, not rescaled)"
    intervals = quality_intervals(records)
    figure = plot_comparison(comparison_table(records), bertscore=label, intervals=intervals)
    bert_axis = figure.axes[1]
    assert bert_axis.get_title() == label
    assert bert_axis.get_ylim() != figure.axes[0].get_ylim()        # not the 0-1 overlap axis
    assert figure.axes[0].containers and any(
        getattr(c, "errorbar", None) for c in figure.axes[0].containers)  # error bars drawn
    plt.close(figure)
    mixed = dict(records)
    mixed["05_rag"] = dataclasses.replace(
        records["05_rag"], rag=dataclasses.replace(records["05_rag"].rag, bertscore_rescaled=True))
    with pytest.raises(ValueError, match="different BERTScore settings"):
        bertscore_label(mixed)


def test_forgetting_plot_and_table():
    from fixtures.records import synthetic_records as make

    records = make()
    report = {"kl_to_base": {"estimate": 0.2, "low": 0.1, "high": 0.3},
              "perplexity": {"base": 10.0, "tuned": 12.0},
              "trivia_accuracy": {"difference": {"estimate": -0.1}},
              "format_bleed": {"difference": {"estimate": 0.3}}}
    records["02_full_finetuning"] = dataclasses.replace(records["02_full_finetuning"],
                                                        forgetting=report)
    table = forgetting_table(records)
    assert list(table.index) == ["full fine-tuning"]
    assert table.loc["full fine-tuning", "KL to base"] == 0.2
    ax = plot_forgetting(records)
    assert "learns more vs forgets more" in ax.get_title()
    plt.close(ax.figure)
    assert "not measured" in plot_forgetting(make()).get_title()


def test_plot_says_which_costs_were_not_measured(records):
    figure = plot_comparison(comparison_table({"05_rag": records["05_rag"]}))
    titles = [ax.get_title() for ax in figure.axes]
    assert "training memory (MiB): not measured" in titles
    assert "trainable parameters: not measured" in titles  # zero has no bar on a log axis
    plt.close(figure)


def test_notebook_06_compares_the_records_it_finds(tmp_path, monkeypatch):
    """Notebook 06 on records of 03 and 05 only: it writes a ComparisonRecord of what it found
    and names the notebooks still to run."""
    import nbformat
    import papermill

    from course_utils.results import ComparisonRecord, load_record

    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    save_synthetic_records("tiny", ["03_lora", "05_rag"])
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    papermill.execute_notebook(str(notebooks / "06_comparison.ipynb"), str(tmp_path / "06.ipynb"),
                               parameters={"PROFILE": "tiny"}, kernel_name="python3",
                               cwd=str(notebooks), progress_bar=False)
    saved = load_record("06_comparison", "tiny", ComparisonRecord)
    assert saved.rows == comparison_rows(collect_records("tiny").records)
    assert [row["method"] for row in saved.rows] == [BASE_ROW, FEW_SHOT_ROW, "LoRA",
                                                     "closed-book (05)", "RAG (05)"]
    assert list(saved.missing) == ["02_full_finetuning", "04_qlora"]
    text = "".join(output.get("text", "") for cell in nbformat.read(tmp_path / "06.ipynb", 4).cells
                   for output in cell.get("outputs", []))
    assert "Highest token F1 among the fine-tuning methods: LoRA (0.500, base model 0.200)" in text
    assert "- Missing 04_qlora: run notebooks/04_qlora.ipynb in the tiny profile" in text


def test_rows_say_what_produced_them():
    rows = {row["method"]: row for row in comparison_rows(synthetic_records())}
    assert rows["RAG (05)"]["context"] == "retrieved passages"
    assert rows["closed-book (05)"]["context"] == "none"
    assert rows["LoRA"]["model"] and rows["LoRA"]["weights"] == "fp32"


def test_differences_carry_paired_intervals():
    table = differences(synthetic_records(), "token_f1")
    full = table.loc["full fine-tuning - its base"]
    assert full["difference"] == pytest.approx(0.6 - 0.2)
    assert full["low"] <= full["difference"] <= full["high"] and full["shows a difference"]
    assert "RAG - closed book (05)" in table.index
    assert "full fine-tuning - LoRA" in table.index
    few_shot = table.loc[f"{FEW_SHOT_ROW} - {BASE_ROW}"]        # what the examples add
    assert few_shot["difference"] == pytest.approx(0.3 - 0.2)
    records = synthetic_records()
    records["05_rag"] = dataclasses.replace(
        records["05_rag"], few_shot=dataclasses.replace(records["05_rag"].few_shot,
                                                        model="another/model"))
    assert f"{FEW_SHOT_ROW} - {BASE_ROW}" not in differences(records).index  # not like with like
    assert (table["n"] == 40).all()


def test_answerable_and_unanswerable_apart():
    table = by_group_table(synthetic_records(), "exact_match")
    assert {"answerable", "unanswerable", "all", "n answerable", "n unanswerable"} <= set(table)
    assert (table["n unanswerable"] == 8).all()
    overall = (table["answerable"] * 32 + table["unanswerable"] * 8) / 40
    # the fixture rounds exact match to whole questions, so "all" may differ by under 1 question
    assert overall.to_numpy() == pytest.approx(table["all"].to_numpy(), abs=1 / 40)
