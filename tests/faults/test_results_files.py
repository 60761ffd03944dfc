"""Results files under faults: cut short at random offsets, empty, `[]`, a field missing, null
or of another type, another schema, kind or profile, a byte-order mark, UTF-16 and Latin-1,
a folder in the file's place, and a write killed with SIGKILL.

Every refusal is one ResultsFileError that names the file, what is wrong and the notebook to
rerun; notebook 06's collect_records skips such a file with that message and compares the rest.
The files are real records (tests/fixtures/records.py) written by save_record, then damaged.
"""

import json
import math

import pytest
from fault_helpers import cut_short, run_killed
from fixtures.records import save_synthetic_records, synthetic_records

from course_utils.results import (
    SCHEMA_VERSION,
    FineTuneRecord,
    ResultsFileError,
    collect_records,
    comparison_table,
    load_record,
    save_record,
)

NOTEBOOK = "02_full_finetuning"
HINT = f"rerun notebooks/{NOTEBOOK}.ipynb in the tiny profile"


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """The records of 02-05 in a fresh results folder; returns the path of 02's file."""
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    save_synthetic_records("tiny")
    return tmp_path / "tiny" / f"{NOTEBOOK}.json"


def refusal(path) -> str:
    """The message load_record gives for the damaged file; checks it names file and remedy."""
    with pytest.raises(ResultsFileError) as error:
        load_record(NOTEBOOK, "tiny")
    message = str(error.value)
    assert str(path) in message, "the message names the file"
    assert HINT in message and "--profile tiny --only 02" in message, "and how to remake it"
    return message


def edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("seed", range(6))
def test_a_file_cut_short_at_a_random_offset(saved, seed):
    length = cut_short(saved, seed, low=0.0, high=0.99)
    message = refusal(saved)
    assert "cannot be read (JSONDecodeError: the file is cut short" in message, (length, message)


def test_an_empty_file(saved):
    saved.write_bytes(b"")
    assert "the file is empty" in refusal(saved)


def test_a_list_instead_of_a_record(saved):
    saved.write_text("[]")
    assert "holds list, not a results record" in refusal(saved)


def test_a_missing_field(saved):
    edit(saved, lambda data: data.pop("tuned"))
    assert "lacks the field(s) tuned" in refusal(saved)


@pytest.mark.parametrize("field, value, said", [
    ("method", None, "02_full_finetuning.json.method is null, expected a string"),
    ("trainable_parameters", "many", "trainable_parameters is str 'many', expected an integer"),
    ("settings", None, "settings is null, expected an object"),
    ("memory", None, "memory is NoneType, expected an object"),
    ("examples", {"a": 1}, "examples is dict {'a': 1}, expected a list"),
])
def test_a_null_or_a_value_of_another_type(saved, field, value, said):
    edit(saved, lambda data: data.__setitem__(field, value))
    assert said in refusal(saved)


def test_a_null_in_a_nested_number(saved):
    edit(saved, lambda data: data["tuned"].__setitem__("n", None))
    assert "02_full_finetuning.json.tuned.n is null, expected an integer" in refusal(saved)


def test_nan_is_written_as_null_and_read_back_as_nan(saved):
    """_jsonable writes NaN as null (JSON has no NaN): such a null is not damage."""
    record = synthetic_records("tiny")[NOTEBOOK]
    record.memory.model_mib = float("nan")
    save_record(record)
    assert math.isnan(load_record(NOTEBOOK, "tiny").memory.model_mib)


@pytest.mark.parametrize("field, value, said", [
    ("schema", SCHEMA_VERSION - 1, f"is of results schema {SCHEMA_VERSION - 1}"),
    ("schema", None, "is of results schema None"),
    ("profile", "full", "written by the 'full' profile, not 'tiny'"),
    ("kind", "rag", "lacks the field(s) closed_book"),  # read as a RAG record
    ("kind", "poem", "kind 'poem', expected one of setup"),
])
def test_another_schema_profile_or_kind(saved, field, value, said):
    edit(saved, lambda data: data.__setitem__(field, value))
    assert said in refusal(saved)


def test_a_utf8_byte_order_mark_is_read(saved):
    """A Windows editor's UTF-8 BOM leaves the content intact: the record reads the same."""
    before = load_record(NOTEBOOK, "tiny")
    saved.write_bytes(b"\xef\xbb\xbf" + saved.read_bytes())
    assert load_record(NOTEBOOK, "tiny") == before


@pytest.mark.parametrize("encoding, said", [
    ("utf-16", "the file is saved as UTF-16, not UTF-8"),
    ("latin-1", "the file is not UTF-8 text (byte 0xe9 at offset"),
])
def test_another_encoding(saved, encoding, said):
    data = json.loads(saved.read_text())
    data["examples"][0]["question"] = "café au lait?"   # as an editor saves it: é unescaped
    saved.write_bytes(json.dumps(data, ensure_ascii=False).encode(encoding))
    assert said in refusal(saved)


def test_non_ascii_text_round_trips(saved):
    record = synthetic_records("tiny")[NOTEBOOK]
    record.examples[0]["question"] = "Что такое «café»? 日本語 ✓"
    save_record(record)
    assert load_record(NOTEBOOK, "tiny").examples[0]["question"] == "Что такое «café»? 日本語 ✓"


def test_a_folder_in_the_files_place(saved):
    saved.unlink()
    saved.mkdir()
    assert "is a folder, not a results file" in refusal(saved)


def test_a_write_killed_midway_keeps_the_previous_record(saved):
    """SIGKILL while the new record is half written: the old file is untouched (the write goes
    to a temporary file that replaces it only when complete), so nothing is lost."""
    before = saved.read_bytes()
    script = f"""
import json, os, signal
from course_utils import results
from course_utils.results import FineTuneRecord, read_record
record = read_record({str(saved)!r}, "tiny", FineTuneRecord)
record.method = "a newer run"
def dying_dump(data, handle, **kwargs):
    text = json.dumps(data, **kwargs)
    handle.write(text[: len(text) // 2])
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
results.json.dump = dying_dump
results.save_record(record)
"""
    result = run_killed(script, env={"COURSE_RESULTS_DIR": str(saved.parent.parent)})
    assert result.returncode == -9, result.stderr[-2000:]
    assert saved.read_bytes() == before
    assert load_record(NOTEBOOK, "tiny", FineTuneRecord).method == "full fine-tuning"
    assert collect_records("tiny").damaged == {}, "the half-written temporary file is not read"


def test_the_comparison_skips_a_damaged_record_and_goes_on(saved):
    cut_short(saved, seed=7)
    collected = collect_records("tiny")
    assert NOTEBOOK not in collected.records and len(collected.records) == 3
    message = collected.damaged[NOTEBOOK]
    assert str(saved) in message and "cut short" in message and HINT in message
    report = collected.report()
    assert f"damaged {NOTEBOOK}, skipped: {message}" in report
    assert NOTEBOOK in collected.missing, "06's record lists it among the missing"
    table = comparison_table(collected.records)
    assert "full fine-tuning" not in set(table.index) and "LoRA" in set(table.index)
