"""Results records: written atomically, read back as the same dataclasses, and refused with a
message naming the file and the notebook to rerun when they are missing, damaged or foreign."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from fixtures.records import synthetic_records

from course_utils.results import (
    SCHEMA_VERSION,
    ComparisonRecord,
    FineTuneRecord,
    Memory,
    RagRecord,
    ResultsFileError,
    Scores,
    SetupRecord,
    Training,
    load_record,
    read_record,
    results_path,
    save_record,
    write_json_atomic,
)

HINT = "rerun notebooks/02_full_finetuning.ipynb in the tiny profile"


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))


@pytest.fixture
def lora() -> FineTuneRecord:
    return synthetic_records()["03_lora"]


def saved_file(record) -> tuple:
    """(path, the JSON in it) of a saved record."""
    path = save_record(record)
    return path, json.loads(path.read_text())


def test_save_and_load_round_trip(tmp_path, lora):
    path = save_record(lora)
    assert path == tmp_path / "results" / "tiny" / "03_lora.json"
    loaded = load_record("03_lora", "tiny")
    assert loaded == lora
    assert isinstance(loaded, FineTuneRecord)
    assert isinstance(loaded.base, Scores) and isinstance(loaded.tuned, Scores)
    assert isinstance(loaded.training, Training) and isinstance(loaded.memory, Memory)
    assert loaded.training.history == lora.training.history
    assert loaded.versions["torch"] == torch.__version__
    assert load_record("03_lora", "tiny", FineTuneRecord) == lora
    data = json.loads(path.read_text())
    assert (data["schema"], data["kind"]) == (SCHEMA_VERSION, "finetune")


def test_every_kind_round_trips():
    rag = synthetic_records()["05_rag"]
    save_record(rag)
    assert load_record("05_rag", "tiny", RagRecord) == rag
    setup = SetupRecord(notebook="00_setup_check", profile="tiny", models={}, settings={},
                        notebook_seconds=3.0, device="cpu", dtype="float32", parameters=10,
                        model_mib=1.0, load_seconds=1.0, generate_seconds=1.0, answer="Paris",
                        similar_cosine=0.9, different_cosine=0.1)
    save_record(setup)
    assert load_record("00_setup_check", "tiny") == setup
    comparison = ComparisonRecord(notebook="06_comparison", profile="tiny", models={},
                                  settings={}, notebook_seconds=1.0,
                                  rows=[{"method": "LoRA", "token_f1": 0.5, "model_mib": None}],
                                  missing={"05_rag": "run notebooks/05_rag.ipynb"})
    save_record(comparison)
    assert load_record("06_comparison", "tiny", ComparisonRecord) == comparison


def test_the_rag_record_keeps_the_share_of_forced_answers():
    rag = dataclasses.replace(synthetic_records()["05_rag"],
                              forced_share={"closed_book": 0.25, "rag": 0.1})
    path, data = saved_file(rag)
    assert data["forced_share"] == {"closed_book": 0.25, "rag": 0.1}
    assert load_record("05_rag", "tiny", RagRecord).forced_share == rag.forced_share
    # a record written before the share was measured still loads, with no share
    rewrite(path, lambda data: data.pop("forced_share"))
    assert load_record("05_rag", "tiny", RagRecord).forced_share == {}


def test_the_few_shot_scores_are_an_optional_nested_record():
    """RagRecord.few_shot is `Scores | None`: it loads back as Scores, not as a dict; null and
    a record written before the field existed load as None; a damaged one names the field."""
    rag = synthetic_records()["05_rag"]
    path, data = saved_file(rag)
    loaded = load_record("05_rag", "tiny", RagRecord)
    assert isinstance(loaded.few_shot, Scores) and loaded.few_shot == rag.few_shot
    assert loaded.few_shot.interval("token_f1").n == rag.few_shot.n     # usable as Scores
    rewrite(path, lambda data: data.update(few_shot=None))
    assert load_record("05_rag", "tiny", RagRecord).few_shot is None
    rewrite(path, lambda data: (data.pop("few_shot"), data.pop("few_shot_model_mib")))
    old = load_record("05_rag", "tiny", RagRecord)
    assert old.few_shot is None and old.few_shot_model_mib is None
    rewrite(path, lambda data: data.update(few_shot={"n": 3}))
    with pytest.raises(ResultsFileError, match="05_rag.json.few_shot lacks the field"):
        load_record("05_rag", "tiny", RagRecord)


def test_numpy_and_torch_values_become_plain_json(lora):
    lora.settings = {"learning_rate": np.float32(0.25), "steps": torch.tensor(3),
                     "modules": ("q_proj", "v_proj"), "nan": float("nan"), "dtype": torch.float32}
    path, data = saved_file(lora)
    assert data["settings"] == {"learning_rate": 0.25, "steps": 3, "modules": ["q_proj", "v_proj"],
                                "nan": None, "dtype": "torch.float32"}
    assert load_record("03_lora", "tiny").settings == data["settings"]


def test_summary_reads_the_record_by_field(lora):
    text = lora.summary()
    assert text.startswith("LoRA of packaged:smollm2-135m-instruct: 3,317,760 of 134,515,008")
    assert "8 steps at learning rate 0.0001" in text
    assert "exact match 10.0% -> 40.0%" in text and "token F1 0.200 -> 0.500" in text
    assert "1,400 MiB measured, 1,540 MiB predicted" in text


# --- refused files ------------------------------------------------------------------------------


def rewrite(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def expect_refusal(path, match: str, kind=None):
    with pytest.raises(ResultsFileError) as error:
        load_record("02_full_finetuning", "tiny", kind)
    message = str(error.value)
    assert str(path) in message, "the message names the file"
    assert HINT in message and "--profile tiny --only 02" in message
    assert match in message, message


@pytest.fixture
def full_ft():
    return save_record(synthetic_records()["02_full_finetuning"])


def test_another_schema_is_refused(full_ft):
    rewrite(full_ft, lambda data: data.update(schema=1))
    expect_refusal(full_ft, f"schema 1, this course_utils reads schema {SCHEMA_VERSION}")


def test_another_profile_is_refused(full_ft):
    rewrite(full_ft, lambda data: data.update(profile="full"))
    expect_refusal(full_ft, "written by the 'full' profile, not 'tiny'")


def test_another_kind_is_refused(full_ft):
    expect_refusal(full_ft, "kind 'finetune', expected rag", kind=RagRecord)
    rewrite(full_ft, lambda data: data.update(kind="poem"))
    expect_refusal(full_ft, "kind 'poem', expected one of setup")


def test_truncated_json_is_refused(full_ft):
    full_ft.write_text(full_ft.read_text()[:200])
    expect_refusal(full_ft, "cannot be read (JSONDecodeError")


def test_a_list_is_refused(full_ft):
    full_ft.write_text("[]")
    expect_refusal(full_ft, "holds list, not a results record")


def test_a_missing_field_is_named(full_ft):
    rewrite(full_ft, lambda data: data.pop("tuned"))
    expect_refusal(full_ft, "lacks the field(s) tuned")


def test_a_missing_nested_field_is_named(full_ft):
    rewrite(full_ft, lambda data: data["training"].pop("steps"))
    expect_refusal(full_ft, "02_full_finetuning.json.training lacks the field(s) steps")
    rewrite(full_ft, lambda data: data.update(memory=[1, 2], training={**data["training"],
                                                                       "steps": 8}))
    expect_refusal(full_ft, "memory is list, expected an object")


def test_a_missing_file_names_the_notebook_to_run():
    with pytest.raises(FileNotFoundError, match=r"Run notebooks/03_lora\.ipynb first .*"
                                                r"--profile tiny --only 03"):
        load_record("03_lora", "tiny")


def test_read_record_takes_the_profile_from_the_folder(full_ft):
    assert read_record(full_ft).notebook == "02_full_finetuning"
    assert results_path("02_full_finetuning", "tiny") == full_ft


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"ok": 1})

    def crash_halfway(data, handle, **kwargs):
        handle.write('{"half": ')
        raise KeyboardInterrupt  # e.g. the kernel is stopped mid-write

    monkeypatch.setattr(json, "dump", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(target, {"new": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_records_are_dataclasses_written_by_field_name(lora):
    _, data = saved_file(lora)
    names = {f.name for f in dataclasses.fields(FineTuneRecord)}
    assert set(data) == names | {"schema", "kind"}


def test_a_difference_can_be_taken_on_one_group_of_questions():
    """A gain on answerable questions and a loss on unanswerable ones show apart; the overall
    difference mixes them."""
    groups = ["unanswerable"] * 2 + ["answerable"] * 4
    base = dataclasses.replace(synthetic_records()["03_lora"].base, n=6, groups=groups,
                               per_question={"token_f1": [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]})
    tuned = dataclasses.replace(base, per_question={"token_f1": [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]})
    assert tuned.difference(base, "token_f1", group="answerable").estimate == pytest.approx(1.0)
    assert tuned.difference(base, "token_f1", group="unanswerable").estimate == pytest.approx(-1.0)
    assert tuned.difference(base, "token_f1").estimate == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="no 'other' questions.*answerable, unanswerable"):
        tuned.difference(base, "token_f1", group="other")
    regrouped = dataclasses.replace(tuned, groups=list(reversed(groups)))
    with pytest.raises(ValueError, match="not scored on the same questions"):
        regrouped.difference(base, "token_f1", group="answerable")
