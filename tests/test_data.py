"""The MS MARCO loader: same features in both profiles, seeded sizes, malformed rows skipped."""

import json
import warnings
from pathlib import Path

import datasets
import pytest
import yaml
from datasets import Dataset, DatasetDict, Features

from course_utils import data
from course_utils.config import FULL, TINY

FIXTURE = Path(__file__).parent / "fixtures" / "ms_marco_v1.1_dataset_info.yaml"


def make_row(query_id, selected=1, answer=None):
    """A row in hub form with three passages; passage `selected` holds the answer."""
    answer = answer or f"answer {query_id}"
    texts = [f"passage {query_id}-{p}" + (f" says {answer}" if p == selected else "")
             for p in range(3)]
    return {"answers": [answer],
            "passages": {"is_selected": [int(p == selected) for p in range(3)],
                         "passage_text": texts,
                         "url": [f"https://x.example/{query_id}/{p}" for p in range(3)]},
            "query": f"question {query_id}", "query_id": query_id, "query_type": "entity",
            "wellFormedAnswers": []}


def write_split(folder, name, rows, extra_lines=()):
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def test_features_match_the_hub_dataset_card():
    info = yaml.safe_load(FIXTURE.read_text())
    assert info["config_name"] == "v1.1"
    assert data.MSMARCO_FEATURES == Features._from_yaml_list(info["features"])


def test_tiny_profile_loads_offline_with_seeded_sizes():
    first = data.load_msmarco(TINY)
    assert list(first) == ["train", "validation", "test"]
    for split in first.values():
        assert split.features == data.MSMARCO_FEATURES
    assert len(first["test"]) == TINY.test_size
    assert len(first["train"]) <= TINY.train_size
    assert len(first["validation"]) <= TINY.validation_size
    second = data.load_msmarco(TINY)
    assert first["test"].to_list() == second["test"].to_list()
    assert first["train"]["query_id"] == second["train"]["query_id"]


def test_malformed_rows_are_skipped_with_one_warning(tmp_path):
    good = [make_row(i) for i in range(80)]  # 32 train, 8 validation, 40 test: the minimums
    bad = [
        {**make_row(100), "query": ""},
        {**make_row(101), "answers": []},
        {**make_row(102), "passages": {"is_selected": [1], "passage_text": ["a", "b"],
                                       "url": ["u", "v"]}},
        {**make_row(103), "passages": {**make_row(103)["passages"], "is_selected": [2, 0, 0]}},
        {k: v for k, v in make_row(104).items() if k != "query_type"},
    ]
    write_split(tmp_path, "train", good[:32] + bad, extra_lines=["{not json"])
    write_split(tmp_path, "validation", good[32:40])
    write_split(tmp_path, "test", good[40:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = data._load_from_folder(tmp_path, TINY)
    messages = [str(w.message) for w in caught if str(w.message).startswith("skipped")]
    assert len(messages) == 1
    assert "skipped 6 malformed rows in split 'train'" in messages[0]
    assert "empty query" in messages[0] and "is_selected is not 0/1" in messages[0]
    assert sorted(loaded["train"]["query_id"]) == list(range(32))
    assert len(loaded["validation"]) == 8 and len(loaded["test"]) == 40


def test_an_all_bad_split_raises_a_clear_error(tmp_path):
    write_split(tmp_path, "train", [make_row(i) for i in range(32)])
    write_split(tmp_path, "validation", [{**make_row(32), "answers": "not a list"}])
    write_split(tmp_path, "test", [make_row(3)])
    with pytest.raises(ValueError, match="'validation' has no usable rows"), \
            pytest.warns(UserWarning, match="skipped 1 malformed"):
        data._load_from_folder(tmp_path, TINY)


def test_a_missing_file_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m course_tools\.mini_msmarco build"):
        data._load_from_folder(tmp_path, TINY)


def hub_form():
    """A small DatasetDict shaped like microsoft/ms_marco v1.1 (validation has one bad row)."""
    def split(ids):
        return Dataset.from_list([make_row(i) for i in ids], features=data.MSMARCO_FEATURES)

    validation = [make_row(i) for i in range(1000, 1130)]
    validation[5]["answers"] = []  # v1.1 has rows like this
    return DatasetDict({
        "train": split(range(60)),
        "validation": Dataset.from_list(validation, features=data.MSMARCO_FEATURES),
        "test": split(range(2000, 2010)),
    })


def test_full_profile_samples_the_hub_with_the_same_features(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, **kwargs: calls.append(args) or hub_form())
    # validation asks for more rows than are left, so every row is read (and the bad one seen)
    profile = FULL.with_overrides(train_size=20, validation_size=40, test_size=100)
    with pytest.warns(UserWarning, match="split '(test|validation)'"):
        loaded = data.load_msmarco(profile)
    assert calls == [("microsoft/ms_marco", "v1.1")]
    tiny = data.load_msmarco(TINY)
    for name in data.SPLITS:
        assert loaded[name].features == tiny[name].features == data.MSMARCO_FEATURES
    assert [len(loaded[n]) for n in data.SPLITS] == [20, 29, 100]
    test_ids, validation_ids = set(loaded["test"]["query_id"]), set(loaded["validation"]["query_id"])
    assert not test_ids & validation_ids and test_ids <= set(range(1000, 1130))
    assert loaded["test"]["query_id"] == sorted(loaded["test"]["query_id"])  # stable order
    with pytest.warns(UserWarning):
        again = data.load_msmarco(profile)
    assert again["test"].to_list() == loaded["test"].to_list()


def test_a_folder_in_the_hubs_layout_loads_through_the_hub_path(tmp_path, monkeypatch):
    """microsoft/ms_marco's layout (README.md YAML: the v1.1 config's parquet files per split,
    the card's features), as the full dry run builds it from the mini MS MARCO: the loader
    reads it with datasets.load_dataset(folder, "v1.1") and samples it like the hub."""
    from course_tools.full_dry_run import build_ms_marco

    folder = tmp_path / "ms_marco"
    build_ms_marco(folder)
    calls = []
    load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, **kwargs: calls.append(args) or load(*args, **kwargs))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    profile = FULL.with_overrides(dataset=str(folder), train_size=16, validation_size=8,
                                  test_size=40)
    loaded = data.load_msmarco(profile)
    assert calls == [(str(folder), "v1.1")]
    assert [len(loaded[n]) for n in data.SPLITS] == [16, 8, 40]
    for name in data.SPLITS:
        assert loaded[name].features == data.MSMARCO_FEATURES
    mini = {name: {json.loads(line)["query_id"] for line in
                   (data.MINI_DIR / f"{name}.jsonl").read_text().splitlines()}
            for name in data.SPLITS}
    assert set(loaded["train"]["query_id"]) <= mini["train"]
    test_ids, validation_ids = set(loaded["test"]["query_id"]), set(loaded["validation"]["query_id"])
    assert not test_ids & validation_ids
    assert test_ids | validation_ids <= mini["validation"] | mini["test"]  # the hub's validation
    assert loaded["test"].to_list() == data.load_msmarco(profile)["test"].to_list()


def test_a_hub_data_set_without_ms_marcos_columns_says_so(monkeypatch):
    hub = hub_form()
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, **kwargs: DatasetDict({**hub, "validation": hub[
                            "validation"].remove_columns("query_type")}))
    with pytest.raises(ValueError, match=r"split 'validation', lacks the MS MARCO v1.1 columns "
                                         r"\['query_type'\]"):
        data.load_msmarco(FULL)
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, **kwargs: DatasetDict({"train": hub["train"]}))
    with pytest.raises(ValueError, match="has no 'validation' split"):
        data.load_msmarco(FULL)


def test_offline_hub_error_points_to_the_tiny_profile(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'microsoft/ms_marco' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(data.DatasetUnavailableError, match="COURSE_PROFILE=tiny"):
        data.load_msmarco(FULL)


def test_row_helpers():
    row = make_row(7, selected=2)
    assert data.selected_passage(row) == "passage 7-2 says answer 7"
    assert data.reference_answer(row) == "answer 7"
    unanswerable = {**row, "passages": {**row["passages"], "is_selected": [0, 0, 0]}}
    assert data.selected_passage(unanswerable) == "passage 7-0"  # the first, when none is
    split = Dataset.from_list([make_row(1), make_row(1), make_row(2)],
                              features=data.MSMARCO_FEATURES)
    assert data.passage_texts(split) == [
        "passage 1-0", "passage 1-1 says answer 1", "passage 1-2",
        "passage 2-0", "passage 2-1 says answer 2", "passage 2-2"]
    assert data.NO_ANSWER == "No Answer Present."
